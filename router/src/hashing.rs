//! Stable hashing for stickiness and affinity.
//!
//! Router replicas must make the same choice for the same session key, so
//! nothing here uses a per-process random seed: FNV-1a for keys, a
//! splitmix64 finaliser to mix, and rendezvous (highest random weight)
//! hashing to pick among endpoints, which moves only the keys of an endpoint
//! that leaves.

use std::net::SocketAddr;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a over bytes.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// splitmix64 finaliser: spreads low-entropy inputs over all 64 bits.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A stable hash of an endpoint address.
pub fn addr_hash(addr: &SocketAddr) -> u64 {
    match addr {
        SocketAddr::V4(v4) => {
            fnv1a(&[&v4.ip().octets()[..], &v4.port().to_be_bytes()[..]].concat())
        }
        SocketAddr::V6(v6) => {
            fnv1a(&[&v6.ip().octets()[..], &v6.port().to_be_bytes()[..]].concat())
        }
    }
}

/// Rendezvous weight of `addr` for `key`: the endpoint with the highest
/// weight owns the key.
pub fn rendezvous(key: u64, addr: &SocketAddr) -> u64 {
    mix(key ^ addr_hash(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_is_stable_across_processes() {
        // The published FNV-1a 64 test vector: replicas must agree on it.
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
    }

    #[test]
    fn rendezvous_keeps_keys_when_another_endpoint_leaves() {
        let addrs: Vec<SocketAddr> = (1..=5)
            .map(|i| SocketAddr::from(([127, 0, 0, i], 8000)))
            .collect();
        let owner = |set: &[SocketAddr], key: u64| {
            *set.iter()
                .max_by_key(|a| rendezvous(key, a))
                .expect("non-empty")
        };
        let mut moved = 0;
        for k in 0..1000u64 {
            let key = fnv1a(&k.to_le_bytes());
            let before = owner(&addrs, key);
            let remaining: Vec<_> = addrs.iter().copied().filter(|a| *a != addrs[0]).collect();
            let after = owner(&remaining, key);
            if before != addrs[0] {
                assert_eq!(
                    before, after,
                    "a key not owned by the removed endpoint moved"
                );
            } else {
                moved += 1;
            }
        }
        assert!(
            moved > 100 && moved < 300,
            "about a fifth of keys were owned by one of five: {moved}"
        );
    }
}
