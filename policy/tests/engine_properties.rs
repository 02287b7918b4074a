//! Properties of the failover engine, each checked over random meshes and random
//! timelines of traffic, errors, readiness, drains and silent clusters.

use std::collections::BTreeMap;

use fulcrum_policy::engine::compute::{EntryNote, ServiceWeights, Standing};
use fulcrum_policy::engine::digest::{HealthDigest, InventorySample, TrafficSample};
use fulcrum_policy::engine::split::{self, Candidate};
use fulcrum_policy::engine::state::{DrainTarget, Inventory};
use fulcrum_policy::engine::window::Counters;
use fulcrum_policy::engine::{self, EngineState, Topology, explain};
use fulcrum_policy::{ConfigSet, Locality, Severity};
use proptest::prelude::*;

const HOST: &str = "svc.ns.svc.cluster.local";

#[derive(Debug, Clone)]
struct Mesh {
    /// Localities `r{region}/z{index}`; cluster `c{index}` runs in each.
    regions: Vec<usize>,
    /// Endpoints per locality (0 = the service is not there), with their weight.
    endpoints: Vec<(u32, u32)>,
    outlier: bool,
    min_health: u32,
    /// `failover` rules as (from region, to region).
    rules: Vec<(usize, usize)>,
    degrade_after_s: u32,
    recover_after_s: u32,
    ramp_percent: u32,
    window_s: u32,
    /// None: as many as there are localities.
    max_drained: Option<u32>,
    never_drain_last: bool,
    capacity: Option<(usize, u64)>,
}

impl Mesh {
    fn locality(&self, i: usize) -> String {
        format!("r{}/z{i}", self.regions[i])
    }

    fn yaml(&self, reversed: bool) -> String {
        let mut docs = Vec::new();
        for i in 0..self.regions.len() {
            docs.push(format!(
                "apiVersion: fulcrum.dev/v1alpha1\nkind: MeshCluster\nmetadata: {{name: c{i}}}\n\
                 spec: {{locality: {}, network: n{i}}}\n",
                self.locality(i)
            ));
        }
        let mut se = format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: svc, namespace: ns}}\n\
             spec:\n  hosts: [{HOST}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  endpoints:\n"
        );
        for (i, (count, weight)) in self.endpoints.iter().enumerate() {
            for k in 0..*count {
                se.push_str(&format!(
                    "  - {{address: 10.{i}.0.{k}, locality: {}, weight: {weight}, network: n{i}}}\n",
                    self.locality(i)
                ));
            }
        }
        docs.push(se);
        let mut policy = String::new();
        if self.outlier {
            policy.push_str(&format!(
                "    outlierDetection: {{consecutive5xxErrors: 5, minHealthPercent: {}}}\n",
                self.min_health
            ));
        }
        if !self.rules.is_empty() {
            policy.push_str("    loadBalancer:\n      localityLbSetting:\n        failover:\n");
            let mut seen = Vec::new();
            for (from, to) in &self.rules {
                if from != to && !seen.contains(from) {
                    seen.push(*from);
                    policy.push_str(&format!("        - {{from: r{from}, to: r{to}}}\n"));
                }
            }
        }
        if !policy.is_empty() {
            docs.push(format!(
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: svc, namespace: ns}}\n\
                 spec:\n  host: {HOST}\n  trafficPolicy:\n{policy}"
            ));
        }
        let mut fp = format!(
            "apiVersion: fulcrum.dev/v1alpha1\nkind: FailoverPolicy\nmetadata: {{name: svc, namespace: ns}}\n\
             spec:\n  host: {HOST}\n  window: {}s\n  minRequestVolume: 10\n\
             \x20 damping: {{degradeAfter: {}s, recoverAfter: {}s, rampStep: \"{}%\"}}\n\
             \x20 guards: {{maxDrained: {}, neverDrainLast: {}}}\n",
            self.window_s,
            self.degrade_after_s,
            self.recover_after_s,
            self.ramp_percent,
            self.max_drained.unwrap_or(self.regions.len() as u32),
            self.never_drain_last
        );
        if let Some((i, rps)) = self.capacity {
            fp.push_str(&format!(
                "  capacity: [{{locality: {}, maxRequestsPerSecond: {rps}}}]\n",
                self.locality(i)
            ));
        }
        docs.push(fp);
        if reversed {
            docs.reverse();
        }
        docs.join("---\n")
    }

    fn topology(&self, reversed: bool) -> Topology {
        let mut config = ConfigSet::new();
        config.add_text("mesh.yaml", &self.yaml(reversed));
        config.check_consistency();
        let errors: Vec<String> = config
            .diagnostics()
            .filter(|d| d.severity == Severity::Error)
            .map(ToString::to_string)
            .collect();
        assert!(errors.is_empty(), "{errors:#?}");
        Topology::build(config.resources())
    }
}

fn mesh() -> impl Strategy<Value = Mesh> {
    (2usize..=5).prop_flat_map(|n| {
        (
            prop::collection::vec(0usize..3, n),
            prop::collection::vec((1u32..=3, 1u32..=3), n),
            any::<bool>(),
            prop::sample::select(vec![0u32, 50]),
            prop::collection::vec((0usize..3, 0usize..3), 0..3),
            (1u32..=3, 2u32..=20, 10u32..=50, 2u32..=10),
            prop::option::of(1u32..=2),
            any::<bool>(),
            prop::option::of((0..n, 50u64..2_000)),
        )
            .prop_map(
                |(
                    regions,
                    endpoints,
                    outlier,
                    min_health,
                    rules,
                    damping,
                    max_drained,
                    never_drain_last,
                    capacity,
                )| {
                    Mesh {
                        regions,
                        endpoints,
                        outlier,
                        min_health,
                        rules,
                        degrade_after_s: damping.0,
                        recover_after_s: damping.1,
                        ramp_percent: damping.2,
                        window_s: damping.3,
                        max_drained,
                        never_drain_last,
                        capacity,
                    }
                },
            )
    })
}

/// One second of inputs.
#[derive(Debug, Clone)]
struct Second {
    /// Per locality: requests, error share (percent), ready, total.
    localities: Vec<(u64, u64, u32, u32)>,
    drain: Option<usize>,
    undrain: Option<usize>,
    silence: Option<usize>,
    wake: Option<usize>,
}

fn seconds(n: usize) -> impl Strategy<Value = Vec<Second>> {
    let locality = (
        prop::sample::select(vec![0u64, 5, 100, 400]),
        prop::sample::select(vec![0u64, 5, 30, 60, 100]),
        0u32..=3,
    )
        .prop_map(|(requests, errors, ready)| (requests, errors, ready, 3));
    let event = prop::option::weighted(0.1, 0usize..6);
    prop::collection::vec(
        (
            prop::collection::vec(locality, n),
            event.clone(),
            event.clone(),
            event.clone(),
            event,
        )
            .prop_map(|(localities, drain, undrain, silence, wake)| Second {
                localities,
                drain,
                undrain,
                silence,
                wake,
            }),
        5..40,
    )
}

/// Runs a timeline, calling `check` after every tick with the time and the weights.
fn run(
    mesh: &Mesh,
    timeline: &[Second],
    reversed: bool,
    mut check: impl FnMut(u64, &EngineState, &Topology, &ServiceWeights),
) -> EngineState {
    let topology = mesh.topology(reversed);
    let n = mesh.regions.len();
    let mut state = EngineState::default();
    let mut silent = vec![false; n];
    for (t, second) in timeline.iter().enumerate() {
        let now_ms = (t as u64 + 1) * 1_000;
        if let Some(i) = second.drain.filter(|i| *i < n) {
            state
                .drain(
                    DrainTarget::Locality(mesh.locality(i).parse().unwrap()),
                    None,
                    "test",
                    now_ms,
                )
                .unwrap();
        }
        if let Some(i) = second.undrain.filter(|i| *i < n) {
            state.undrain(
                &DrainTarget::Locality(mesh.locality(i).parse().unwrap()),
                None,
                now_ms,
            );
        }
        if let Some(i) = second.silence.filter(|i| *i < n) {
            silent[i] = true;
        }
        if let Some(i) = second.wake.filter(|i| *i < n) {
            silent[i] = false;
        }
        let reporter = (0..n).find(|i| !silent[*i]);
        let mut digest = HealthDigest {
            reporters: (0..n)
                .filter(|i| !silent[*i])
                .map(|i| format!("c{i}"))
                .collect(),
            ..HealthDigest::default()
        };
        for (i, (requests, errors, ready, total)) in second.localities.iter().enumerate() {
            let locality: Locality = mesh.locality(i).parse().unwrap();
            if let Some(r) = reporter {
                digest.traffic.push(TrafficSample {
                    service: HOST.into(),
                    source_cluster: format!("c{r}"),
                    locality: locality.clone(),
                    counters: Counters {
                        requests: *requests,
                        http_5xx: requests * errors / 100,
                        gateway_errors: 0,
                        connect_failures: 0,
                    },
                });
            }
            if !silent[i] {
                digest.inventory.push(InventorySample {
                    cluster: format!("c{i}"),
                    service: HOST.into(),
                    locality,
                    inventory: Inventory {
                        total: *total,
                        ready: *ready,
                        ejected: 0,
                    },
                });
            }
        }
        if reversed {
            digest.traffic.reverse();
            digest.inventory.reverse();
            digest.reporters.reverse();
        }
        engine::apply_digest(&mut state, &digest, now_ms);
        engine::tick(&mut state, &topology, now_ms);
        for weights in engine::compute(&state, &topology) {
            check(now_ms, &state, &topology, &weights);
        }
    }
    state
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn weights_sum_to_10000_or_route_nothing(
        (mesh, timeline) in mesh().prop_flat_map(|m| { let n = m.regions.len(); (Just(m), seconds(n)) })
    ) {
        run(&mesh, &timeline, false, |now, _, topology, weights| {
            for subset in &weights.subsets {
                for row in &subset.rows {
                    let total = row.total_bp();
                    assert!(total == 0 || total == 10_000, "at {now}ms: {row:?}");
                }
            }
            let service = &topology.services[&weights.service];
            for row in explain::weight_rows(weights, service, 0) {
                assert_eq!(row.check(), Ok(()), "at {now}ms");
            }
        });
    }

    #[test]
    fn same_inputs_give_the_same_bytes_in_any_order(
        (mesh, timeline) in mesh().prop_flat_map(|m| { let n = m.regions.len(); (Just(m), seconds(n)) })
    ) {
        let mut first = Vec::new();
        let state_a = run(&mesh, &timeline, false, |_, _, topology, w| {
            let service = &topology.services[&w.service];
            first.push(serde_json::to_string(&explain::weight_rows(w, service, 0)).unwrap());
        });
        let mut second = Vec::new();
        let state_b = run(&mesh, &timeline, true, |_, _, topology, w| {
            let service = &topology.services[&w.service];
            second.push(serde_json::to_string(&explain::weight_rows(w, service, 0)).unwrap());
        });
        prop_assert_eq!(first, second);
        prop_assert_eq!(
            serde_json::to_string(&state_a).unwrap(),
            serde_json::to_string(&state_b).unwrap()
        );
    }

    #[test]
    fn never_routes_to_a_drained_or_unready_locality_unless_in_panic(
        (mesh, timeline) in mesh().prop_flat_map(|m| { let n = m.regions.len(); (Just(m), seconds(n)) })
    ) {
        run(&mesh, &timeline, false, |now, _, _, weights| {
            for subset in &weights.subsets {
                for row in &subset.rows {
                    for e in row.entries.iter().filter(|e| e.weight_bp > 0) {
                        let status = &weights.localities[e.locality];
                        assert!(
                            !matches!(status.standing, Standing::Drained(_)),
                            "at {now}ms {} is drained but has {}bp from {}",
                            weights.destination(e.locality), e.weight_bp, row.source
                        );
                        let panic = row.priorities.get(e.priority as usize).is_some_and(|p| p.panic);
                        assert!(
                            status.health.available > 0
                                || panic
                                || matches!(e.note, EntryNote::Shed { .. }),
                            "at {now}ms {} has no ready endpoint but {}bp from {} ({:?})",
                            weights.destination(e.locality), e.weight_bp, row.source, e.note
                        );
                    }
                }
            }
        });
    }

    #[test]
    fn worsening_one_locality_never_raises_its_weight(
        (mesh, timeline, victim, extra_errors, fewer_ready) in mesh()
            .prop_map(|mut m| {
                // Guards and capacity move weight between localities on purpose; this
                // property is about health alone.
                m.max_drained = None;
                m.never_drain_last = false;
                m.capacity = None;
                // Panic spreads load over unhealthy hosts on purpose, too.
                m.outlier = true;
                m.min_health = 0;
                m
            })
            .prop_flat_map(|m| {
                let n = m.regions.len();
                (Just(m), seconds(n), 0..n, 0u64..=100, 0u32..=3)
            })
    ) {
        let quiet: Vec<Second> = timeline
            .iter()
            .map(|s| Second { silence: None, wake: None, ..s.clone() })
            .collect();
        let worse: Vec<Second> = quiet
            .iter()
            .map(|s| {
                let mut s = s.clone();
                let (_, errors, ready, _) = &mut s.localities[victim];
                *errors = (*errors + extra_errors).min(100);
                *ready = ready.saturating_sub(fewer_ready);
                s
            })
            .collect();
        let victim_locality: Locality = mesh.locality(victim).parse().unwrap();
        let weights_of = |timeline: &[Second]| {
            let mut out: Vec<BTreeMap<(String, Locality), u32>> = Vec::new();
            run(&mesh, timeline, false, |_, _, _, w| {
                let mut at = BTreeMap::new();
                for subset in &w.subsets {
                    for row in &subset.rows {
                        for e in &row.entries {
                            if *w.destination(e.locality) == victim_locality {
                                at.insert((subset.subset.clone(), row.source.clone()), e.weight_bp);
                            }
                        }
                    }
                }
                out.push(at);
            });
            out
        };
        let better = weights_of(&quiet);
        let worse = weights_of(&worse);
        for (t, (b, w)) in better.iter().zip(&worse).enumerate() {
            for (key, weight) in w {
                let before = b.get(key).copied().unwrap_or(0);
                prop_assert!(*weight <= before, "second {}: {:?} got {} instead of {}", t + 1, key, weight, before);
            }
        }
    }

    #[test]
    fn failback_never_faster_than_the_ramp(
        bad_s in 1u64..20,
        errors in 60u64..=100,
        recover_after_s in 2u32..20,
        ramp_percent in 5u32..=60,
        tick_ms in prop::sample::select(vec![250u64, 500, 1_000, 2_000]),
    ) {
        let mesh = two_regions(recover_after_s, ramp_percent);
        let weights = home_weights(&mesh, tick_ms, 120_000, |now_ms| {
            // At least one whole tick of errors, whatever the tick.
            if now_ms > 2_000 && now_ms <= 2_000 + (bad_s * 1_000).max(tick_ms) { errors } else { 0 }
        });
        let ramp_bp = u64::from(ramp_percent) * 100;
        let first_failed = weights.iter().position(|(_, w)| *w == 0);
        let failed = first_failed.is_some();
        // Over any span after the failure, at most one ramp step per started second.
        for (i, &(t0, w0)) in weights.iter().enumerate().skip(first_failed.unwrap_or(weights.len())) {
            for &(t1, w1) in weights[i + 1..].iter().take_while(|(t, _)| *t <= t0 + 5_000) {
                let allowed = ramp_bp * (t1 - t0).div_ceil(1_000) + 1;
                prop_assert!(
                    u64::from(w1.saturating_sub(w0)) <= allowed,
                    "from {}ms to {}ms the weight rose {} -> {}, more than {}", t0, t1, w0, w1, allowed
                );
            }
        }
        prop_assert!(failed, "the outage was never detected: {:?}", weights);
        prop_assert_eq!(weights.last().map(|w| w.1), Some(10_000), "never came back");
    }

    #[test]
    fn no_oscillation_while_inputs_flap_faster_than_recover_after(
        bad_s in 1u64..4,
        good_s in 1u64..6,
        recover_after_s in 8u32..20,
    ) {
        let mesh = two_regions(recover_after_s, 20);
        let period = bad_s + good_s;
        let flapping_until = 60_000;
        let weights = home_weights(&mesh, 1_000, flapping_until, |now_ms| {
            let s = now_ms.div_ceil(1_000);
            if s > 5 && (s - 5) % period < bad_s { 100 } else { 0 }
        });
        let mut dropped = false;
        for pair in weights.windows(2) {
            let ((_, w0), (t1, w1)) = (pair[0], pair[1]);
            dropped |= w1 < 10_000;
            if dropped && t1 <= flapping_until {
                prop_assert!(w1 <= w0, "weight rose {} -> {} at {}ms while flapping", w0, w1, t1);
            }
        }
    }

    #[test]
    fn envoy_split_never_rewards_a_worse_locality(
        candidates in prop::collection::vec((0u32..3, 1u64..5, 1u64..5, 0u64..=10_000), 1..6),
        victim in 0usize..6,
        loss in 1u64..=10_000,
    ) {
        let cands: Vec<Candidate> = candidates
            .iter()
            .map(|(priority, weight, hosts, health)| Candidate {
                priority: *priority,
                weight: *weight,
                hosts: *hosts,
                healthy: hosts * health,
            })
            .collect();
        let victim = victim % cands.len();
        let mut worse = cands.clone();
        worse[victim].healthy = worse[victim].healthy.saturating_sub(loss * worse[victim].hosts);
        let before = split::split(&cands, 0).weights_bp[victim];
        let after = split::split(&worse, 0).weights_bp[victim];
        prop_assert!(after <= before, "{} -> {}", before, after);
    }
}

/// Home in r0 (priority 0 for its own clients) and a failover target in r1.
fn two_regions(recover_after_s: u32, ramp_percent: u32) -> Mesh {
    Mesh {
        regions: vec![0, 1],
        endpoints: vec![(2, 1), (2, 1)],
        outlier: true,
        min_health: 0,
        rules: vec![(0, 1)],
        degrade_after_s: 1,
        recover_after_s,
        ramp_percent,
        window_s: 5,
        max_drained: None,
        never_drain_last: false,
        capacity: None,
    }
}

/// The weight r0's clients give r0 after every tick, with r0's error share over time.
fn home_weights(
    mesh: &Mesh,
    tick_ms: u64,
    until_ms: u64,
    errors_at: impl Fn(u64) -> u64,
) -> Vec<(u64, u32)> {
    let topology = mesh.topology(false);
    let home: Locality = mesh.locality(0).parse().unwrap();
    let mut state = EngineState::default();
    let mut out = Vec::new();
    let mut now_ms = 0;
    while now_ms < until_ms + 60_000 {
        now_ms += tick_ms;
        let errors = if now_ms <= until_ms {
            errors_at(now_ms)
        } else {
            0
        };
        let requests = 100 * tick_ms / 1_000;
        let digest = HealthDigest {
            reporters: vec!["c0".into(), "c1".into()],
            traffic: vec![TrafficSample {
                service: HOST.into(),
                source_cluster: "c0".into(),
                locality: home.clone(),
                counters: Counters {
                    requests,
                    http_5xx: requests * errors / 100,
                    ..Counters::default()
                },
            }],
            ..HealthDigest::default()
        };
        engine::apply_digest(&mut state, &digest, now_ms);
        engine::tick(&mut state, &topology, now_ms);
        let weights = engine::compute(&state, &topology);
        let row = weights[0].subsets[0]
            .rows
            .iter()
            .find(|r| r.source == home)
            .expect("home row");
        let w = row
            .entries
            .iter()
            .find(|e| *weights[0].destination(e.locality) == home)
            .map_or(0, |e| e.weight_bp);
        out.push((now_ms, w));
    }
    out
}
