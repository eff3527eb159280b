//! Pure routing decisions: which revision, then which endpoint.
//!
//! * Revision: weighted by `status.traffic`, among revisions that have at
//!   least one available endpoint (a canary with no ready pod must not turn
//!   its share into errors). A session key replaces the random roll with its
//!   hash, so a session stays on one revision while the weights hold.
//! * Endpoint: with a session key, rendezvous hashing over the available
//!   endpoints (same endpoint while it stays healthy); otherwise
//!   power-of-two-choices on the load score, optionally steered to the
//!   prompt-prefix owner when its load is within a tolerance of the best.
//!
//! Every input is a plain value; randomness comes in as numbers.

use std::net::SocketAddr;

use crate::hashing::rendezvous;

/// An endpoint as the picker sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    pub addr: SocketAddr,
    pub score: f64,
    pub available: bool,
}

/// One revision as the picker sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct RevisionChoice {
    pub weight: u32,
    pub endpoints: Vec<Candidate>,
}

/// Keys that steer the endpoint choice.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Affinity {
    /// Hash of the session header: sticky revision and endpoint.
    pub session: Option<u64>,
    /// Hash of the prompt's first block, when prefix affinity is on.
    pub prefix: Option<u64>,
    /// How much worse (in score units) the prefix owner may be than the best.
    pub prefix_tolerance: f64,
}

/// Picks a revision index. `roll` is uniform random, or the session hash.
pub fn pick_revision(
    revisions: &[RevisionChoice],
    roll: u64,
    usable: impl Fn(&Candidate) -> bool,
) -> Option<usize> {
    let eligible = |r: &RevisionChoice| r.weight > 0 && r.endpoints.iter().any(&usable);
    let total: u64 = revisions
        .iter()
        .filter(|r| eligible(r))
        .map(|r| u64::from(r.weight))
        .sum();
    if total == 0 {
        return None;
    }
    let mut point = roll % total;
    for (i, r) in revisions.iter().enumerate() {
        if !eligible(r) {
            continue;
        }
        let w = u64::from(r.weight);
        if point < w {
            return Some(i);
        }
        point -= w;
    }
    None
}

/// Picks an endpoint index among `cands` for which `usable` holds.
/// `rand_a` and `rand_b` are two uniform random numbers.
pub fn pick_endpoint(
    cands: &[Candidate],
    affinity: &Affinity,
    rand_a: u64,
    rand_b: u64,
    usable: impl Fn(&Candidate) -> bool,
) -> Option<usize> {
    let live: Vec<usize> = (0..cands.len()).filter(|&i| usable(&cands[i])).collect();
    if live.is_empty() {
        return None;
    }
    if let Some(key) = affinity.session {
        return owner(cands, &live, key);
    }
    let best = if live.len() == 1 {
        live[0]
    } else {
        let n = live.len() as u64;
        let a = (rand_a % n) as usize;
        // A second, distinct index.
        let b = (a + 1 + (rand_b % (n - 1)) as usize) % live.len();
        let (ia, ib) = (live[a], live[b]);
        if cands[ib].score < cands[ia].score {
            ib
        } else {
            ia
        }
    };
    if let Some(key) = affinity.prefix {
        if let Some(pref) = owner(cands, &live, key) {
            if cands[pref].score <= cands[best].score + affinity.prefix_tolerance {
                return Some(pref);
            }
        }
    }
    Some(best)
}

fn owner(cands: &[Candidate], live: &[usize], key: u64) -> Option<usize> {
    live.iter()
        .copied()
        .max_by_key(|&i| rendezvous(key, &cands[i].addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(last: u8, score: f64) -> Candidate {
        Candidate {
            addr: SocketAddr::from(([127, 0, 0, last], 8000)),
            score,
            available: true,
        }
    }

    fn rev(weight: u32, eps: Vec<Candidate>) -> RevisionChoice {
        RevisionChoice {
            weight,
            endpoints: eps,
        }
    }

    fn avail(c: &Candidate) -> bool {
        c.available
    }

    #[test]
    fn revision_pick_follows_weights_exactly_over_all_rolls() {
        let revs = vec![rev(75, vec![cand(2, 0.0)]), rev(25, vec![cand(3, 0.0)])];
        let mut counts = [0u32; 2];
        for roll in 0..100 {
            counts[pick_revision(&revs, roll, avail).expect("pick")] += 1;
        }
        assert_eq!(counts, [75, 25]);
    }

    #[test]
    fn revision_without_available_endpoints_gives_its_share_to_the_others() {
        let mut down = cand(3, 0.0);
        down.available = false;
        let revs = vec![
            rev(75, vec![cand(2, 0.0)]),
            rev(25, vec![down]),
            rev(10, vec![]),
        ];
        for roll in 0..200 {
            assert_eq!(pick_revision(&revs, roll, avail), Some(0));
        }
        let none = vec![rev(100, vec![])];
        assert_eq!(pick_revision(&none, 7, avail), None);
    }

    #[test]
    fn power_of_two_choices_never_picks_the_worse_of_its_two() {
        let cands = vec![cand(2, 5.0), cand(3, 1.0)];
        for a in 0..10 {
            for b in 0..10 {
                assert_eq!(
                    pick_endpoint(&cands, &Affinity::default(), a, b, avail),
                    Some(1)
                );
            }
        }
    }

    #[test]
    fn power_of_two_choices_avoids_the_most_loaded_of_many() {
        let cands = vec![cand(2, 1.0), cand(3, 9.0), cand(4, 2.0), cand(5, 3.0)];
        for a in 0..50 {
            for b in 0..50 {
                assert_ne!(
                    pick_endpoint(&cands, &Affinity::default(), a, b, avail),
                    Some(1)
                );
            }
        }
    }

    #[test]
    fn session_key_sticks_to_one_endpoint_regardless_of_load_and_moves_only_when_it_fails() {
        let mut cands = vec![cand(2, 0.0), cand(3, 0.0), cand(4, 0.0)];
        let aff = Affinity {
            session: Some(42),
            ..Default::default()
        };
        let first = pick_endpoint(&cands, &aff, 1, 2, avail).expect("pick");
        for (a, b) in [(0, 0), (5, 9), (17, 3)] {
            cands[(first + 1) % 3].score = 100.0;
            assert_eq!(pick_endpoint(&cands, &aff, a, b, avail), Some(first));
        }
        cands[first].available = false;
        let moved = pick_endpoint(&cands, &aff, 1, 2, avail).expect("pick");
        assert_ne!(moved, first);
    }

    #[test]
    fn session_key_keeps_one_revision() {
        let revs = vec![rev(50, vec![cand(2, 0.0)]), rev(50, vec![cand(3, 0.0)])];
        let key = crate::hashing::fnv1a(b"conversation-7");
        let r = pick_revision(&revs, key, avail);
        for _ in 0..10 {
            assert_eq!(pick_revision(&revs, key, avail), r);
        }
    }

    #[test]
    fn prefix_affinity_wins_only_when_loads_are_close() {
        let cands = vec![cand(2, 1.0), cand(3, 1.0), cand(4, 1.0)];
        let key = 99;
        let owner_idx = (0..3)
            .max_by_key(|&i| rendezvous(key, &cands[i].addr))
            .expect("owner");
        let aff = Affinity {
            session: None,
            prefix: Some(key),
            prefix_tolerance: 1.0,
        };
        for a in 0..10 {
            assert_eq!(
                pick_endpoint(&cands, &aff, a, a + 3, avail),
                Some(owner_idx)
            );
        }
        let mut busy = cands.clone();
        busy[owner_idx].score = 10.0;
        for a in 0..10 {
            assert_ne!(pick_endpoint(&busy, &aff, a, a + 3, avail), Some(owner_idx));
        }
    }

    #[test]
    fn excluded_endpoints_are_never_picked() {
        let cands = vec![cand(2, 0.0), cand(3, 5.0)];
        let tried = cands[0].addr;
        for a in 0..10 {
            assert_eq!(
                pick_endpoint(&cands, &Affinity::default(), a, a, |c| c.available
                    && c.addr != tried),
                Some(1)
            );
        }
    }
}
