//! Child processes that cannot outlive their parent.
//!
//! Every process the local cluster or the local node starts goes through
//! [`spawn`]. Each child asks the kernel for `SIGKILL` when its parent dies
//! (`PR_SET_PDEATHSIG`), so a test binary killed mid-run leaves nothing
//! behind. The kernel ties that signal to the *thread* that forked, not the
//! process, so all forks happen on one spawner thread that lives as long as
//! the process; async worker threads come and go and must never fork.
//!
//! Each child also gets its own process group, so [`Supervised::terminate`]
//! reaches everything the child started.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

type Job = (Command, mpsc::Sender<io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<Job>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("steward-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("the spawner thread must start; the OS refused a new thread");
        Mutex::new(tx)
    })
}

/// Starts `cmd` on the spawner thread with parent-death and process-group
/// settings applied.
pub fn spawn(mut cmd: Command) -> io::Result<Supervised> {
    // SAFETY: only async-signal-safe calls (prctl, setpgid) run between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::setpgid(0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    spawner()
        .lock()
        .map_err(|_| io::Error::other("the spawner lock was poisoned by a panic"))?
        .send((cmd, tx))
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    let child = rx
        .recv()
        .map_err(|_| io::Error::other("the spawner thread dropped the request"))??;
    Ok(Supervised { child })
}

/// A running child process and its process group.
#[derive(Debug)]
pub struct Supervised {
    child: Child,
}

impl Supervised {
    /// The child's pid (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Non-blocking: the exit status if the child has ended.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Sends `sig` to the child's whole process group.
    pub fn signal_group(&self, sig: i32) {
        // SAFETY: kill(2) with a negative pid addresses the group we created.
        unsafe {
            libc::kill(-(self.child.id() as i32), sig);
        }
    }

    /// SIGTERM to the group, up to `grace` to exit, then SIGKILL. Returns how
    /// the child ended. Blocks; call from a blocking context.
    pub fn terminate(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        if let Some(st) = self.child.try_wait()? {
            self.signal_group(libc::SIGKILL);
            return Ok(st);
        }
        self.signal_group(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait()? {
                self.signal_group(libc::SIGKILL);
                return Ok(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.signal_group(libc::SIGKILL);
        self.child.wait()
    }
}

/// True while a process with this pid exists (zombies included).
pub fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminate_kills_a_child_that_ignores_sigterm() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "trap '' TERM; sleep 30"]);
        let mut child = spawn(cmd).expect("sh starts");
        let pid = child.pid();
        let started = Instant::now();
        let st = child
            .terminate(Duration::from_millis(300))
            .expect("terminate");
        assert!(!st.success());
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(!pid_alive(pid), "pid {pid} still exists");
    }
}
