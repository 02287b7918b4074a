//! Choosing an endpoint inside a locality, by the DestinationRule's `loadBalancer`:
//! `ROUND_ROBIN`, `LEAST_REQUEST` (power of two choices, as Envoy), `RANDOM`, and
//! `consistentHash` over a ring (a header, cookie, source IP or query parameter gives
//! the key; the caller extracts it). Endpoints that are ejected or not ready are never
//! offered here: the caller passes only the eligible ones.
//!
//! With a `warmup` ([`Warmup`], Envoy's slow start, for `ROUND_ROBIN` and
//! `LEAST_REQUEST`), an endpoint new to the picker gets a weight that grows over the
//! warmup's duration, and while the weights differ the endpoints are chosen by a smooth
//! weighted round robin, as Envoy's EDF scheduler chooses them: for least request, by
//! each weight over its endpoint's requests in flight plus one. Endpoints the picker has
//! seen since it began all start together, and so have equal weights, as in Envoy.
//!
//! An endpoint's own `weight` (a ServiceEntry endpoint's or WorkloadEntry's, 1 when
//! unset) counts as in Envoy: round robin and least request choose by weight (the same
//! smooth weighted round robin, a warming endpoint's factor times its weight) when the
//! weights differ, and the hash ring gives each endpoint points in proportion to its
//! weight. Random ignores them, as Envoy's random balancer does.

use std::time::{Duration, Instant};

use crate::FastMap;
use crate::routing::Chance;

/// Virtual nodes per endpoint on the hash ring (Envoy's default minimum ring is 1,024
/// entries; this keeps a three-endpoint ring well spread).
pub const RING_POINTS_PER_ENDPOINT: usize = 128;

/// What the picker chooses among: an endpoint's name (its address), and its weight.
pub trait Weighted: AsRef<str> {
    /// Its load-balancing weight (at least 1).
    fn weight(&self) -> u32 {
        1
    }
}

impl Weighted for String {}
impl Weighted for &str {}

/// Whether `endpoints` do not all have the same weight (then they are chosen by it).
fn weights_differ<S: Weighted>(endpoints: &[S]) -> bool {
    endpoints
        .first()
        .is_some_and(|first| endpoints.iter().any(|e| e.weight() != first.weight()))
}

/// Ring points for an endpoint of `weight`, the lightest being `lightest`: in
/// proportion, at most 64 times as many as the lightest gets.
fn ring_points(weight: u32, lightest: u32) -> usize {
    let share = (weight / lightest.max(1)).clamp(1, 64);
    RING_POINTS_PER_ENDPOINT * share as usize
}

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

/// A DestinationRule's `loadBalancer.warmup`: the weight of an endpoint `age` after it
/// joined is its full weight times `max(minimum, (max(age, 1 s) / duration) ^ (1 /
/// aggression))` until `duration` has passed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Warmup {
    pub duration: Duration,
    /// The least share of its weight an endpoint gets, 0 to 1 (Istio's 10% by default).
    pub minimum: f64,
    /// The ramp's curve: 1 is linear; above 1, faster at first.
    pub aggression: f64,
}

/// Its values are finite (checked where it is read), so equality is an equivalence.
impl Eq for Warmup {}

impl Warmup {
    /// The share of its weight an endpoint gets `age` after it joined.
    pub fn factor(&self, age: Duration) -> f64 {
        if age >= self.duration {
            return 1.0;
        }
        let time = age.max(Duration::from_secs(1)).as_secs_f64() / self.duration.as_secs_f64();
        let ramp = match self.aggression {
            1.0 => time,
            aggression => time.powf(1.0 / aggression),
        };
        ramp.max(self.minimum).min(1.0)
    }
}

/// The endpoint chooser of one (service, subset, locality).
#[derive(Debug, Clone, Default)]
pub struct EndpointPicker {
    policy: LbPolicy,
    next: usize,
    /// Sorted (point, endpoint index) for RingHash, built for `ring_for` endpoints.
    ring: Vec<(u64, usize)>,
    ring_for: Vec<(String, u32)>,
    warmup: Option<Warmup>,
    /// When each endpoint was first offered, for the warmup.
    joined: FastMap<String, Instant>,
    /// Each endpoint's running weight in the smooth weighted round robin.
    running: FastMap<String, f64>,
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

    /// A picker with `policy` and, for round robin and least request, `warmup`.
    pub fn with_warmup(policy: LbPolicy, warmup: Option<Warmup>) -> EndpointPicker {
        let ramps = matches!(policy, LbPolicy::RoundRobin | LbPolicy::LeastRequest);
        EndpointPicker {
            warmup: warmup.filter(|_| ramps),
            ..EndpointPicker::new(policy)
        }
    }

    /// Whether it picks as `policy` and `warmup` say (a new rule needs a new picker).
    pub fn is_for(&self, policy: LbPolicy, warmup: Option<Warmup>) -> bool {
        let ramps = matches!(policy, LbPolicy::RoundRobin | LbPolicy::LeastRequest);
        self.policy == policy && self.warmup == warmup.filter(|_| ramps)
    }

    /// The index into `endpoints` (their addresses) of the next one, or `None` when
    /// there is none. `in_flight(i)` is endpoint `i`'s requests in flight; `key` is the
    /// consistent-hash key (a request without one is treated as RANDOM would).
    pub fn pick<S: Weighted>(
        &mut self,
        endpoints: &[S],
        in_flight: impl Fn(usize) -> u32,
        key: Option<&[u8]>,
        chance: &mut dyn Chance,
    ) -> Option<usize> {
        match self.warmup.is_some() || weights_differ(endpoints) {
            true => self.pick_at(Instant::now(), endpoints, in_flight, key, chance),
            false => self.pick_plain(endpoints, in_flight, key, chance),
        }
    }

    /// Starts `endpoint`'s warmup again at `at`, unless it joined later.
    pub fn rejoined(&mut self, endpoint: &str, at: Instant) {
        if let Some(joined) = self.joined.get_mut(endpoint) {
            *joined = (*joined).max(at);
        }
    }

    /// [`EndpointPicker::pick`], the time being `now`.
    pub fn pick_at<S: Weighted>(
        &mut self,
        now: Instant,
        endpoints: &[S],
        in_flight: impl Fn(usize) -> u32,
        key: Option<&[u8]>,
        chance: &mut dyn Chance,
    ) -> Option<usize> {
        if endpoints.is_empty() {
            return None;
        }
        if let Some(mut weights) = self.weighing(now, endpoints) {
            if self.policy == LbPolicy::LeastRequest {
                for (i, weight) in weights.iter_mut().enumerate() {
                    *weight /= f64::from(in_flight(i)) + 1.0;
                }
            }
            return Some(self.by_weight(endpoints, &weights));
        }
        self.pick_plain(endpoints, in_flight, key, chance)
    }

    /// For round robin and least request, the endpoints' weights when they differ: each
    /// one's own weight, times its warmup factor under a warmup.
    fn weighing<S: Weighted>(&mut self, now: Instant, endpoints: &[S]) -> Option<Vec<f64>> {
        if !matches!(self.policy, LbPolicy::RoundRobin | LbPolicy::LeastRequest) {
            return None;
        }
        let weighted = weights_differ(endpoints);
        let warming = match self.warmup {
            Some(warmup) => self.warming(warmup, now, endpoints),
            None => None,
        };
        match (warming, weighted) {
            (None, false) => None,
            (Some(mut factors), true) => {
                for (factor, e) in factors.iter_mut().zip(endpoints) {
                    *factor *= f64::from(e.weight());
                }
                Some(factors)
            }
            (Some(factors), false) => Some(factors),
            (None, true) => Some(endpoints.iter().map(|e| f64::from(e.weight())).collect()),
        }
    }

    /// [`EndpointPicker::pick`] by its policy alone.
    fn pick_plain<S: Weighted>(
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

    /// The endpoints' weights under `warmup` at `now`, when they differ (one of them is
    /// still warming up, and not all joined together). An endpoint offered for the first
    /// time joins now.
    fn warming<S: Weighted>(
        &mut self,
        warmup: Warmup,
        now: Instant,
        endpoints: &[S],
    ) -> Option<Vec<f64>> {
        // Those gone long enough to be many are forgotten (rejoining later, they warm up
        // again).
        if self.joined.len() > 2 * endpoints.len() + 16 {
            let current: Vec<&str> = endpoints.iter().map(AsRef::as_ref).collect();
            self.joined
                .retain(|address, _| current.contains(&address.as_str()));
            self.running
                .retain(|address, _| current.contains(&address.as_str()));
        }
        let weights: Vec<f64> = endpoints
            .iter()
            .map(|e| {
                let joined = match self.joined.get(e.as_ref()) {
                    Some(at) => *at,
                    None => *self.joined.entry(e.as_ref().to_string()).or_insert(now),
                };
                warmup.factor(now.saturating_duration_since(joined))
            })
            .collect();
        let differ = weights.iter().any(|w| *w != weights[0]);
        differ.then_some(weights)
    }

    /// An endpoint chosen by `weights` in a smooth weighted round robin: each pick, every
    /// endpoint's running weight grows by its weight, and the largest is picked and set
    /// back by the total.
    fn by_weight<S: Weighted>(&mut self, endpoints: &[S], weights: &[f64]) -> usize {
        let total: f64 = weights.iter().sum();
        let mut best = (0, f64::MIN);
        for (i, (endpoint, weight)) in endpoints.iter().zip(weights).enumerate() {
            let running = self
                .running
                .entry(endpoint.as_ref().to_string())
                .or_insert(0.0);
            *running += weight;
            if *running > best.1 {
                best = (i, *running);
            }
        }
        if let Some(running) = self.running.get_mut(endpoints[best.0].as_ref()) {
            *running -= total;
        }
        best.0
    }

    fn on_ring<S: Weighted>(&mut self, endpoints: &[S], hash: u64) -> usize {
        let same = self.ring_for.len() == endpoints.len()
            && (self.ring_for.iter())
                .zip(endpoints)
                .all(|((name, weight), e)| name == e.as_ref() && *weight == e.weight());
        if !same {
            let lightest = endpoints.iter().map(Weighted::weight).min().unwrap_or(1);
            self.ring = endpoints
                .iter()
                .enumerate()
                .flat_map(|(i, e)| {
                    let address = e.as_ref();
                    (0..ring_points(e.weight(), lightest))
                        .map(move |p| (stable_hash(format!("{address}#{p}").as_bytes()), i))
                })
                .collect();
            self.ring.sort_unstable();
            self.ring_for = (endpoints.iter())
                .map(|e| (e.as_ref().to_string(), e.weight()))
                .collect();
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

    /// A 10 s linear warmup from a tenth of the weight.
    const TEN_SECONDS: Warmup = Warmup {
        duration: Duration::from_secs(10),
        minimum: 0.1,
        aggression: 1.0,
    };

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
    fn a_warmup_ramps_an_endpoints_weight_over_its_duration() {
        let linear = Warmup {
            duration: Duration::from_secs(10),
            minimum: 0.1,
            aggression: 1.0,
        };
        let at = Duration::from_secs_f64;
        // A second at least: a new endpoint starts at a tenth of the ten seconds.
        assert_eq!(linear.factor(at(0.0)), 0.1);
        assert_eq!(linear.factor(at(5.0)), 0.5);
        assert_eq!(linear.factor(at(10.0)), 1.0);
        assert_eq!(linear.factor(at(60.0)), 1.0);
        let steep = Warmup {
            aggression: 2.0,
            minimum: 0.3,
            ..linear
        };
        assert_eq!(steep.factor(at(2.5)), 0.5, "the square root of a quarter");
        assert_eq!(
            steep.factor(at(0.5)),
            0.316_227_766_016_837_94,
            "the root of a tenth"
        );
        let flat = Warmup {
            aggression: 0.0,
            ..linear
        };
        assert_eq!(
            flat.factor(at(9.0)),
            0.1,
            "no ramp: the minimum until the end"
        );
    }

    #[test]
    fn round_robin_gives_a_warming_endpoint_its_weighted_share() {
        let warmup = TEN_SECONDS;
        let mut p = EndpointPicker::with_warmup(LbPolicy::RoundRobin, Some(warmup));
        let (three, four) = (endpoints(3), endpoints(4));
        let start = Instant::now();
        // Offered together from the start: all warm up together, so in turn.
        let picks: Vec<_> = (0..6)
            .map(|_| {
                p.pick_at(start, &three, |_| 0, None, &mut Counter(0))
                    .unwrap()
            })
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        // A minute on, a fourth joins: a tenth of a weight, then half, then a whole one.
        let joins = start + Duration::from_secs(60);
        for (after, rounds, expected) in [(0, 3_100, 100), (5, 3_500, 500), (10, 4_000, 1_000)] {
            let now = joins + Duration::from_secs(after);
            let new = (0..rounds)
                .filter(|_| p.pick_at(now, &four, |_| 0, None, &mut Counter(0)) == Some(3))
                .count();
            assert!(
                new.abs_diff(expected) <= 1,
                "{after} s after it joined: {new} of {rounds}, not {expected}"
            );
        }
    }

    /// An endpoint by name, with a weight.
    struct Heavy(&'static str, u32);
    impl AsRef<str> for Heavy {
        fn as_ref(&self) -> &str {
            self.0
        }
    }
    impl Weighted for Heavy {
        fn weight(&self) -> u32 {
            self.1
        }
    }

    #[test]
    fn endpoints_are_chosen_in_proportion_to_their_weights() {
        let endpoints = [Heavy("a:1", 1), Heavy("b:1", 3)];
        let share = |policy: LbPolicy, key: fn(u32) -> Option<String>| {
            let mut p = EndpointPicker::new(policy);
            let mut second = 0;
            for n in 0..4_000 {
                let key = key(n);
                let key = key.as_ref().map(String::as_bytes);
                let i = p.pick(&endpoints, |_| 0, key, &mut Counter(u64::from(n)));
                second += usize::from(i == Some(1));
            }
            second
        };
        // Smooth: 3 of every 4, whatever the draw.
        assert_eq!(share(LbPolicy::RoundRobin, |_| None), 3_000);
        assert_eq!(share(LbPolicy::LeastRequest, |_| None), 3_000);
        // The ring: three times the points, about three times the keys.
        let hashed = share(LbPolicy::RingHash, |n| Some(format!("user-{n}")));
        assert!((2_700..=3_300).contains(&hashed), "{hashed} of 4000");
        // Random ignores weights, as Envoy's does.
        let random = share(LbPolicy::Random, |_| None);
        assert!((1_700..=2_300).contains(&random), "{random} of 4000");
    }

    #[test]
    fn an_endpoint_that_rejoins_warms_up_again() {
        let warmup = TEN_SECONDS;
        let mut p = EndpointPicker::with_warmup(LbPolicy::RoundRobin, Some(warmup));
        let two = endpoints(2);
        let start = Instant::now();
        let share = |p: &mut EndpointPicker, now: Instant| {
            (0..1_100)
                .filter(|_| p.pick_at(now, &two, |_| 0, None, &mut Counter(0)) == Some(1))
                .count()
        };
        // Joined together: in turn.
        assert_eq!(share(&mut p, start), 550);
        // The second back (from failing its health checks) a minute on: a tenth again.
        let back = start + Duration::from_secs(60);
        p.rejoined(two[1].as_str(), back);
        let new = share(&mut p, back);
        assert!(new.abs_diff(100) <= 1, "{new} of 1100");
        // A rejoin before it last joined changes nothing.
        p.rejoined(two[1].as_str(), start);
        let new = share(&mut p, back);
        assert!(new.abs_diff(100) <= 1, "{new} of 1100");
    }

    #[test]
    fn least_request_weighs_a_warming_endpoint_and_the_requests_in_flight() {
        let warmup = TEN_SECONDS;
        let mut p = EndpointPicker::with_warmup(LbPolicy::LeastRequest, Some(warmup));
        let (three, four) = (endpoints(3), endpoints(4));
        let start = Instant::now();
        p.pick_at(start, &three, |_| 0, None, &mut Counter(0));
        let now = start + Duration::from_secs(60);
        let share = |p: &mut EndpointPicker, busy: u32| {
            let in_flight = |i: usize| if i == 0 { busy } else { 0 };
            let picks: Vec<usize> = (0..3_100)
                .filter_map(|_| p.pick_at(now, &four, in_flight, None, &mut Counter(0)))
                .collect();
            [0, 3].map(|i| picks.iter().filter(|&&p| p == i).count())
        };
        // Idle: by weight alone, a tenth for the new one (100 of 3,100).
        let [_, new] = share(&mut p, 0);
        assert!(new.abs_diff(100) <= 1, "{new} of 3100");
        // The first one busy with 9 requests: a tenth of its weight for it.
        let [busy, new] = share(&mut p, 9);
        assert!(
            busy.abs_diff(141) <= 2 && new.abs_diff(141) <= 2,
            "{busy}, {new} of 3100"
        );
    }

    #[test]
    fn a_picker_is_for_its_rules_policy_and_warmup_only() {
        let warmup = Some(Warmup {
            duration: Duration::from_secs(10),
            minimum: 0.1,
            aggression: 1.0,
        });
        let p = EndpointPicker::with_warmup(LbPolicy::RoundRobin, warmup);
        assert!(p.is_for(LbPolicy::RoundRobin, warmup));
        assert!(!p.is_for(LbPolicy::RoundRobin, None));
        assert!(!p.is_for(LbPolicy::LeastRequest, warmup));
        // A consistent hash has no warmup, as in Istio.
        let ring = EndpointPicker::with_warmup(LbPolicy::RingHash, warmup);
        assert!(ring.is_for(LbPolicy::RingHash, None));
    }

    #[test]
    fn nothing_to_pick_from_is_none() {
        let mut p = EndpointPicker::new(LbPolicy::Random);
        assert_eq!(p.pick::<&str>(&[], |_| 0, None, &mut Counter(0)), None);
    }
}
