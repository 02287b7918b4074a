//! Choosing an endpoint inside a locality, by the DestinationRule's `loadBalancer`:
//! `ROUND_ROBIN`, `LEAST_REQUEST` (power of two choices, as Envoy), `RANDOM`, and
//! `consistentHash` over a ring (a header, cookie, source IP or query parameter gives
//! the key; the caller extracts it). Endpoints that are ejected or not ready are never
//! offered here: the caller passes only the eligible ones.

use crate::routing::Chance;

/// Virtual nodes per endpoint on the hash ring (Envoy's default minimum ring is 1,024
/// entries; this keeps a three-endpoint ring well spread).
pub const RING_POINTS_PER_ENDPOINT: usize = 128;

/// A DestinationRule simple or consistent-hash load balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LbPolicy {
    /// In turn. Istio's default is LEAST_REQUEST; ROUND_ROBIN when asked.
    RoundRobin,
    /// Two endpoints drawn at random, the one with fewer requests in flight.
    #[default]
    LeastRequest,
    /// One at random.
    Random,
    /// The same key goes to the same endpoint while the set does not change.
    RingHash,
}

/// The endpoint chooser of one (service, subset, locality).
#[derive(Debug, Clone, Default)]
pub struct EndpointPicker {
    policy: LbPolicy,
    next: usize,
    /// Sorted (point, endpoint index) for RingHash, built for `ring_for` endpoints.
    ring: Vec<(u64, usize)>,
    ring_for: Vec<String>,
}

/// FNV-1a, 64 bits, then MurmurHash3's finalizer: stable across processes and Rust
/// versions, so every proxy replica hashes a key to the same endpoint. FNV-1a alone
/// leaves the high bits of keys that differ in their last bytes (`user-1`, `user-2`)
/// nearly equal, and the ring is searched by them: such keys all landed on one endpoint.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h = bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

impl EndpointPicker {
    /// A picker with `policy`.
    pub fn new(policy: LbPolicy) -> EndpointPicker {
        EndpointPicker {
            policy,
            ..EndpointPicker::default()
        }
    }

    /// The index into `endpoints` (their addresses) of the next one, or `None` when
    /// there is none. `in_flight(i)` is endpoint `i`'s requests in flight; `key` is the
    /// consistent-hash key (a request without one is treated as RANDOM would).
    pub fn pick<S: AsRef<str>>(
        &mut self,
        endpoints: &[S],
        in_flight: impl Fn(usize) -> u32,
        key: Option<&[u8]>,
        chance: &mut dyn Chance,
    ) -> Option<usize> {
        let n = endpoints.len();
        if n == 0 {
            return None;
        }
        let random = |chance: &mut dyn Chance| chance.below(n as u64) as usize;
        Some(match self.policy {
            LbPolicy::RoundRobin => {
                let i = self.next % n;
                self.next = self.next.wrapping_add(1);
                i
            }
            LbPolicy::Random => random(chance),
            LbPolicy::LeastRequest => {
                let a = random(chance);
                if n == 1 {
                    return Some(a);
                }
                // A second draw among the others, so the two are distinct.
                let b = (a + 1 + chance.below(n as u64 - 1) as usize) % n;
                if in_flight(b) < in_flight(a) { b } else { a }
            }
            LbPolicy::RingHash => match key {
                None => random(chance),
                Some(key) => self.on_ring(endpoints, stable_hash(key)),
            },
        })
    }

    fn on_ring<S: AsRef<str>>(&mut self, endpoints: &[S], hash: u64) -> usize {
        let same = self.ring_for.len() == endpoints.len()
            && self
                .ring_for
                .iter()
                .zip(endpoints)
                .all(|(a, b)| a == b.as_ref());
        if !same {
            self.ring = endpoints
                .iter()
                .enumerate()
                .flat_map(|(i, address)| {
                    let address = address.as_ref();
                    (0..RING_POINTS_PER_ENDPOINT)
                        .map(move |p| (stable_hash(format!("{address}#{p}").as_bytes()), i))
                })
                .collect();
            self.ring.sort_unstable();
            self.ring_for = endpoints.iter().map(|e| e.as_ref().to_string()).collect();
        }
        let at = self.ring.partition_point(|(point, _)| *point < hash);
        self.ring[at % self.ring.len()].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cycles through 0, 1, 2, ... modulo each bound.
    struct Counter(u64);
    impl Chance for Counter {
        fn below(&mut self, bound: u64) -> u64 {
            self.0 += 1;
            (self.0 * 7919) % bound
        }
    }

    fn endpoints(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:8080")).collect()
    }

    #[test]
    fn round_robin_takes_each_in_turn() {
        let mut p = EndpointPicker::new(LbPolicy::RoundRobin);
        let e = endpoints(3);
        let picks: Vec<_> = (0..6)
            .map(|_| p.pick(&e, |_| 0, None, &mut Counter(0)).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn least_request_prefers_the_less_busy_of_two() {
        let mut p = EndpointPicker::new(LbPolicy::LeastRequest);
        let e = endpoints(2);
        // Endpoint 1 is busy: whichever pair is drawn, 0 wins.
        for seed in 0..20 {
            let i = p.pick(
                &e,
                |i| if i == 1 { 50 } else { 0 },
                None,
                &mut Counter(seed),
            );
            assert_eq!(i, Some(0));
        }
    }

    #[test]
    fn a_ring_sends_a_key_to_the_same_endpoint_and_moves_few_keys_when_one_leaves() {
        let mut p = EndpointPicker::new(LbPolicy::RingHash);
        let five = endpoints(5);
        let keys: Vec<String> = (0..1_000).map(|k| format!("user-{k}")).collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|k| {
                p.pick(&five, |_| 0, Some(k.as_bytes()), &mut Counter(0))
                    .unwrap()
            })
            .collect();
        let again: Vec<usize> = keys
            .iter()
            .map(|k| {
                p.pick(&five, |_| 0, Some(k.as_bytes()), &mut Counter(9))
                    .unwrap()
            })
            .collect();
        assert_eq!(before, again);
        // Every endpoint gets a fair part of the keys.
        for i in 0..5 {
            let share = before.iter().filter(|&&b| b == i).count();
            assert!(
                (100..=320).contains(&share),
                "endpoint {i}: {share} of 1000"
            );
        }
        // Drop the last endpoint: only its keys move.
        let four = endpoints(4);
        for (k, &b) in keys.iter().zip(&before) {
            let now = p
                .pick(&four, |_| 0, Some(k.as_bytes()), &mut Counter(0))
                .unwrap();
            if b != 4 {
                assert_eq!(now, b, "{k} moved although its endpoint stayed");
            }
        }
    }

    #[test]
    fn keys_that_differ_only_at_the_end_spread_over_the_ring() {
        let mut p = EndpointPicker::new(LbPolicy::RingHash);
        let e = endpoints(4);
        let mut counts = [0usize; 4];
        for user in 0..400 {
            let key = format!("user-{user}");
            let i = p
                .pick(&e, |_| 0, Some(key.as_bytes()), &mut Counter(0))
                .unwrap();
            counts[i] += 1;
        }
        // 100 each on a perfect ring; 128 points per endpoint keep each within a third.
        assert!(
            counts.iter().all(|&n| (67..=133).contains(&n)),
            "{counts:?}"
        );
    }

    #[test]
    fn nothing_to_pick_from_is_none() {
        let mut p = EndpointPicker::new(LbPolicy::Random);
        assert_eq!(p.pick::<&str>(&[], |_| 0, None, &mut Counter(0)), None);
    }
}
