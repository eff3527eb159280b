//! Loopback pod IPs, one per pod, unique across every node program on the
//! machine. An address is taken by holding an exclusive `flock` on a file
//! named after it in a shared folder; the kernel drops the lock when the
//! holder exits, so a crashed node program frees its addresses.
//!
//! Addresses come from 127.16.0.0/12's loopback part: 127.16.0.2 onwards,
//! leaving 127.0.0.0/16 to the control plane and tools.

use std::fs::{File, OpenOptions};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

/// A held pod IP; released on drop.
#[derive(Debug)]
pub struct Lease {
    pub ip: Ipv4Addr,
    _file: File,
}

/// Allocates loopback addresses.
#[derive(Debug, Clone)]
pub struct Ipam {
    dir: PathBuf,
}

const FIRST: u32 = u32::from_be_bytes([127, 16, 0, 2]);
const LAST: u32 = u32::from_be_bytes([127, 31, 255, 254]);

impl Ipam {
    /// Uses `$STEWARD_IPAM_DIR` or `/tmp/steward-ipam`.
    pub fn new() -> anyhow::Result<Ipam> {
        let dir = std::env::var_os("STEWARD_IPAM_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("steward-ipam"));
        Ipam::in_dir(dir)
    }

    /// Uses `dir` for the lock files.
    pub fn in_dir(dir: PathBuf) -> anyhow::Result<Ipam> {
        std::fs::create_dir_all(&dir)?;
        Ok(Ipam { dir })
    }

    /// Takes the first free address, starting from a random offset so
    /// concurrent node programs rarely contend.
    pub fn allocate(&self) -> anyhow::Result<Lease> {
        let span = LAST - FIRST;
        let start = rand::random::<u32>() % span;
        for k in 0..span.min(1 << 16) {
            let n = FIRST + (start + k) % span;
            let ip = Ipv4Addr::from(n);
            if ip.octets()[3] == 0 || ip.octets()[3] == 255 {
                continue;
            }
            if let Some(lease) = self.lock(ip)? {
                return Ok(lease);
            }
        }
        anyhow::bail!("no free loopback pod IP in {}", self.dir.display())
    }

    /// Takes exactly `ip` (a pod's address from before a node program
    /// restart: a pod keeps its IP for its whole life); an error when
    /// another holder has it or it is outside the pod range.
    pub fn take(&self, ip: Ipv4Addr) -> anyhow::Result<Lease> {
        let n = u32::from(ip);
        anyhow::ensure!((FIRST..=LAST).contains(&n), "{ip} is not a local pod IP");
        self.lock(ip)?
            .ok_or_else(|| anyhow::anyhow!("{ip} is held by another pod"))
    }

    /// The lease of `ip` if nobody holds it.
    fn lock(&self, ip: Ipv4Addr) -> anyhow::Result<Option<Lease>> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(ip.to_string()))?;
        // SAFETY: flock on an fd we own.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        Ok((r == 0).then_some(Lease { ip, _file: f }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_leases_never_share_an_address() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ipam = Ipam::in_dir(dir.path().to_path_buf()).expect("ipam");
        let a = ipam.allocate().expect("a");
        let b = ipam.allocate().expect("b");
        assert_ne!(a.ip, b.ip);
        assert_eq!(a.ip.octets()[0], 127);
    }

    #[test]
    fn a_pod_ip_is_taken_again_only_once_its_holder_let_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ipam = Ipam::in_dir(dir.path().to_path_buf()).expect("ipam");
        let a = ipam.allocate().expect("a");
        let ip = a.ip;
        assert!(ipam.take(ip).is_err(), "held");
        drop(a);
        assert_eq!(ipam.take(ip).expect("free again").ip, ip);
        assert!(ipam.take(Ipv4Addr::new(10, 0, 0, 1)).is_err());
    }
}
