//! The engine's memory: health windows, endpoint inventory, cluster leases, reachability,
//! drains and the damped verdicts. It is plain data (serde), so the coordinator can put it
//! in a Raft snapshot, and every map is ordered, so it serialises to the same bytes on
//! every replica.
//!
//! Two folds change it: [`apply_digest`] (what proxies saw) and [`tick`] (time passes:
//! windows slide, verdicts step, leases expire). Neither reads a clock.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::engine::digest::HealthDigest;
use crate::engine::topology::{ServiceTopology, Topology};
use crate::engine::verdict::{Assessment, Cause, RateReading, Signal, VerdictState};
use crate::engine::window::{BUCKET_MS, Counters, Window, bucket_of, buckets_for};
use crate::fulcrum::{FailoverSettings, MAX_WINDOW};
use crate::locality::Locality;
use crate::weights::{Signals, TOTAL_BASIS_POINTS, Verdict};

/// How long a cluster's last report vouches for its localities. Proxies report every
/// second; three missed reports make its localities Unknown.
pub const DEFAULT_REPORT_LEASE: Duration = Duration::from_secs(3);

/// Most drains held at once; more are refused.
pub const MAX_DRAINS: usize = 1_000;

/// Engine-wide settings (per-service ones come from FailoverPolicy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineSettings {
    /// See [`DEFAULT_REPORT_LEASE`].
    pub report_lease: Duration,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            report_lease: DEFAULT_REPORT_LEASE,
        }
    }
}

/// Endpoint counts one cluster reported for one (service, locality).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// All endpoints.
    pub total: u32,
    /// Passing readiness.
    pub ready: u32,
    /// Ejected by the reporting proxies' outlier detection.
    pub ejected: u32,
}

impl Inventory {
    /// Endpoints that can take traffic: ready and not ejected.
    pub fn available(&self) -> u32 {
        self.ready.saturating_sub(self.ejected).min(self.total)
    }
}

/// How healthy a locality is: the endpoints that can take traffic, and the share of
/// requests that succeed. Kept as integers so Envoy's host-count arithmetic stays exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Health {
    /// Endpoints ready and not ejected.
    pub available: u32,
    /// All endpoints.
    pub total: u32,
    /// Share of requests that succeed, basis points (10000 when too few to count).
    pub success_bp: u32,
}

impl Health {
    /// Every one of `total` endpoints ready, nothing failing.
    pub fn full(total: u32) -> Self {
        Health {
            available: total,
            total,
            success_bp: TOTAL_BASIS_POINTS,
        }
    }

    /// The healthy fraction, basis points.
    pub fn bp(&self) -> u32 {
        if self.total == 0 {
            return 0;
        }
        (u64::from(self.available.min(self.total)) * u64::from(self.success_bp)
            / u64::from(self.total)) as u32
    }

    /// Healthy hosts out of `hosts`, in ten-thousandths of a host (exact when `hosts` is
    /// the locality's own endpoint count).
    pub fn healthy_units(&self, hosts: u64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let available = u64::from(self.available.min(self.total));
        let units = available * u64::from(self.success_bp.min(TOTAL_BASIS_POINTS));
        if hosts == u64::from(self.total) {
            units
        } else {
            (u128::from(hosts) * u128::from(units) / u128::from(self.total)) as u64
        }
    }
}

/// What the engine remembers about one service in one destination locality.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalityState {
    /// Request outcomes, merged across every reporter.
    pub window: Window,
    /// Endpoint counts, per reporting cluster.
    pub inventory: BTreeMap<String, Inventory>,
    /// The damped verdict.
    pub machine: VerdictState,
    /// The verdict shown (adds Unknown and Drained to the machine's).
    pub shown: Verdict,
    /// When the shown verdict began.
    pub shown_since_ms: u64,
    /// The locality's health as of the last tick its cluster was heard from (frozen while
    /// Unknown); `None` before the first tick.
    pub health: Option<Health>,
    /// The machine's allowance at that time, frozen alike.
    pub allowance_bp: u32,
    /// What the last tick judged it on: the window's counts and the endpoint counts.
    /// Tables read this rather than walking the window again.
    #[serde(default)]
    pub observed: Option<(Counters, Inventory)>,
}

impl LocalityState {
    fn new(now_ms: u64) -> Self {
        LocalityState {
            window: Window::default(),
            inventory: BTreeMap::new(),
            machine: VerdictState::new(now_ms),
            shown: Verdict::Healthy,
            shown_since_ms: now_ms,
            health: None,
            allowance_bp: TOTAL_BASIS_POINTS,
            observed: None,
        }
    }
}

/// What the engine remembers about one service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceState {
    /// The topology layout stamp the locality states were last lined up with (see
    /// [`ServiceTopology::layout`]); 0 when a report added a locality since.
    #[serde(default)]
    pub layout: u64,
    /// Per destination locality.
    pub localities: BTreeMap<Locality, LocalityState>,
    /// Requests each source cluster sent to the service (for capacity).
    pub demand: BTreeMap<String, Window>,
}

/// What the engine remembers about one reporting cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Leader time of its last report.
    pub last_report_ms: u64,
    /// Clusters whose east-west gateway it last reported unreachable.
    pub unreachable: BTreeSet<String>,
}

/// What a drain takes out of service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DrainTarget {
    /// Every locality of a cluster.
    Cluster(String),
    /// One locality.
    Locality(Locality),
}

impl std::fmt::Display for DrainTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DrainTarget::Cluster(c) => write!(f, "cluster {c}"),
            DrainTarget::Locality(l) => write!(f, "{l}"),
        }
    }
}

/// A manual drain.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Drain {
    /// What it drains.
    pub target: DrainTarget,
    /// Only this service; every service when `None`.
    pub service: Option<String>,
    /// The operator's reason.
    pub reason: String,
    /// Leader time it began.
    pub since_ms: u64,
}

/// Why a drain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DrainError {
    /// No reason given.
    #[error("a drain needs a reason (it is shown in every explanation)")]
    NoReason,
    /// Too many drains.
    #[error("{MAX_DRAINS} drains are already in place; undrain something first")]
    TooMany,
}

/// A verdict change, with the detail an operator needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Leader time, in milliseconds.
    pub at_ms: u64,
    /// The service.
    pub service: String,
    /// The destination locality.
    pub locality: Locality,
    /// The verdict before.
    pub from: Verdict,
    /// The verdict now.
    pub to: Verdict,
    /// Why, in words.
    pub detail: String,
}

/// The engine's whole memory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineState {
    /// Leader time of the last fold, in milliseconds; never goes backwards.
    pub now_ms: u64,
    /// Engine-wide settings.
    pub settings: EngineSettings,
    /// Per service.
    pub services: BTreeMap<String, ServiceState>,
    /// Per reporting cluster.
    pub clusters: BTreeMap<String, ClusterState>,
    /// Manual drains, sorted.
    pub drains: BTreeSet<Drain>,
}

impl EngineState {
    /// An empty state.
    pub fn new(settings: EngineSettings) -> Self {
        EngineState {
            settings,
            ..EngineState::default()
        }
    }

    fn advance(&mut self, now_ms: u64) -> u64 {
        self.now_ms = self.now_ms.max(now_ms);
        self.now_ms
    }

    /// Adds a drain (replacing one with the same target and service).
    pub fn drain(
        &mut self,
        target: DrainTarget,
        service: Option<String>,
        reason: &str,
        now_ms: u64,
    ) -> Result<(), DrainError> {
        if reason.trim().is_empty() {
            return Err(DrainError::NoReason);
        }
        let now_ms = self.advance(now_ms);
        let existing = self
            .drains
            .iter()
            .find(|d| d.target == target && d.service == service)
            .cloned();
        if existing.is_none() && self.drains.len() >= MAX_DRAINS {
            return Err(DrainError::TooMany);
        }
        let since_ms = existing.as_ref().map_or(now_ms, |d| d.since_ms);
        if let Some(old) = existing {
            self.drains.remove(&old);
        }
        self.drains.insert(Drain {
            target,
            service,
            reason: reason.trim().to_string(),
            since_ms,
        });
        Ok(())
    }

    /// Removes drains of `target` (for `service`, or every drain of it when `None`).
    /// Returns how many were removed.
    pub fn undrain(&mut self, target: &DrainTarget, service: Option<&str>, now_ms: u64) -> usize {
        self.advance(now_ms);
        let before = self.drains.len();
        self.drains.retain(|d| {
            !(&d.target == target && (service.is_none() || d.service.as_deref() == service))
        });
        before - self.drains.len()
    }

    /// The drain in force for a service's locality, if any.
    pub fn drain_of(
        &self,
        topology: &Topology,
        service: &str,
        locality: &Locality,
    ) -> Option<&Drain> {
        self.drains.iter().find(|d| {
            d.service.as_deref().is_none_or(|s| s == service)
                && match &d.target {
                    DrainTarget::Locality(l) => l == locality,
                    DrainTarget::Cluster(c) => topology
                        .clusters
                        .get(c)
                        .is_some_and(|info| &info.locality == locality),
                }
        })
    }

    /// True when the cluster's last report is within the lease.
    pub fn is_leased(&self, cluster: &str) -> bool {
        let lease = self.settings.report_lease.as_millis().max(0) as u64;
        self.clusters
            .get(cluster)
            .is_some_and(|c| self.now_ms.saturating_sub(c.last_report_ms) <= lease)
    }
}

/// The state of a service's locality, created (and the layout stamp cleared) when new.
fn locality_state<'a>(
    service: &'a mut ServiceState,
    locality: &Locality,
    now_ms: u64,
) -> &'a mut LocalityState {
    if !service.localities.contains_key(locality) {
        service.layout = 0;
    }
    service
        .localities
        .entry(locality.clone())
        .or_insert_with(|| LocalityState::new(now_ms))
}

/// Folds one digest into the state at leader time `now_ms`.
pub fn apply_digest(state: &mut EngineState, digest: &HealthDigest, now_ms: u64) {
    let now_ms = state.advance(now_ms);
    let bucket = bucket_of(now_ms);
    for cluster in &digest.reporters {
        state
            .clusters
            .entry(cluster.clone())
            .or_default()
            .last_report_ms = now_ms;
    }
    for sample in &digest.traffic {
        let service = state.services.entry(sample.service.clone()).or_default();
        locality_state(service, &sample.locality, now_ms)
            .window
            .add(bucket, &sample.counters);
        service
            .demand
            .entry(sample.source_cluster.clone())
            .or_default()
            .add(
                bucket,
                &Counters {
                    requests: sample.counters.requests,
                    ..Counters::default()
                },
            );
    }
    for sample in &digest.inventory {
        let service = state.services.entry(sample.service.clone()).or_default();
        locality_state(service, &sample.locality, now_ms)
            .inventory
            .insert(sample.cluster.clone(), sample.inventory);
    }
    for sample in &digest.reachability {
        let cluster = state
            .clusters
            .entry(sample.source_cluster.clone())
            .or_default();
        if sample.reachable {
            cluster.unreachable.remove(&sample.target_cluster);
        } else {
            cluster.unreachable.insert(sample.target_cluster.clone());
        }
    }
}

/// The rates of a window against a set of thresholds.
fn readings(
    counts: &Counters,
    limits: &crate::fulcrum::SignalLimits,
    span_ms: u64,
    degrade: bool,
) -> [RateReading; 3] {
    let reading = |signal, part, limit: crate::percent::Percent| RateReading {
        signal,
        rate_bp: counts.rate_bp(part),
        requests: counts.requests,
        span_ms,
        threshold_bp: limit.basis_points(),
        degrade,
    };
    [
        reading(Signal::Http5xx, counts.http_5xx, limits.http_5xx),
        reading(
            Signal::GatewayErrors,
            counts.gateway_errors,
            limits.gateway_errors,
        ),
        reading(
            Signal::ConnectFailures,
            counts.connect_failures,
            limits.connect_failures,
        ),
    ]
}

/// Judges one locality's signals, before damping. With `counted_from_ms`, the window
/// starts no earlier than that time: a locality coming back from a failure is judged on
/// what it did since its ramp began, not on the errors that failed it, which would
/// otherwise still sit in the window and pull its weight back down mid-ramp or just after.
pub fn assess(
    window: &Window,
    inventory: Inventory,
    settings: &FailoverSettings,
    now_ms: u64,
    counted_from_ms: Option<u64>,
) -> Assessment {
    let last = bucket_of(now_ms);
    let min_volume = u64::from(settings.min_request_volume);
    let window_ms = settings.window.as_millis().max(0) as u64;
    let mut window_buckets = buckets_for(window_ms);
    if let Some(from) = counted_from_ms {
        // The buckets after the one `from` falls in.
        window_buckets = window_buckets.min(last.saturating_sub(bucket_of(from)));
    }
    let whole = if window_buckets == 0 {
        Counters::default()
    } else {
        window.sum(last, window_buckets)
    };
    let above_recover = if whole.requests >= min_volume.max(1) {
        readings(&whole, &settings.recover, window_ms, false)
            .into_iter()
            .filter(|r| r.rate_bp > r.threshold_bp)
            .max_by_key(|r| (r.rate_bp, std::cmp::Reverse(r.signal as u8)))
    } else {
        None
    };
    // Sustained failure: every bucket of the degrade span at or over the threshold, and
    // enough requests in the span for the rate to mean something.
    let span_buckets = buckets_for(settings.degrade_after.as_millis().max(0) as u64);
    let span = window.sum(last, span_buckets);
    let tripped = if span.requests >= min_volume.max(1) {
        let span_ms = span_buckets * BUCKET_MS;
        readings(&span, &settings.degrade, span_ms, true)
            .into_iter()
            .filter(|r| r.threshold_bp <= TOTAL_BASIS_POINTS)
            .filter(|r| {
                (0..span_buckets).all(|k| {
                    let b = window.bucket(last.saturating_sub(k));
                    let part = match r.signal {
                        Signal::Http5xx => b.http_5xx,
                        Signal::GatewayErrors => b.gateway_errors,
                        Signal::ConnectFailures => b.connect_failures,
                    };
                    b.requests > 0 && b.rate_bp(part) >= r.threshold_bp
                })
            })
            .max_by_key(|r| (r.rate_bp, std::cmp::Reverse(r.signal as u8)))
    } else {
        None
    };
    let counted = whole.requests >= min_volume.max(1);
    Assessment {
        tripped,
        above_recover,
        no_ready_endpoints: inventory.total > 0 && inventory.available() == 0,
        success_bp: if settings.auto_failover && counted {
            TOTAL_BASIS_POINTS - whole.failure_bp()
        } else {
            TOTAL_BASIS_POINTS
        },
        available_bp: match inventory.total {
            0 => TOTAL_BASIS_POINTS,
            total => {
                (u64::from(inventory.available()) * u64::from(TOTAL_BASIS_POINTS)
                    / u64::from(total)) as u32
            }
        },
    }
}

/// The inventory of a locality: what its clusters reported, or the configured endpoints
/// (all assumed ready) when nobody has.
pub fn inventory_of(state: &LocalityState, configured: u32) -> Inventory {
    if state.inventory.is_empty() {
        return Inventory {
            total: configured,
            ready: configured,
            ejected: 0,
        };
    }
    state
        .inventory
        .values()
        .fold(Inventory::default(), |acc, i| Inventory {
            total: acc.total.saturating_add(i.total),
            ready: acc.ready.saturating_add(i.ready),
            ejected: acc.ejected.saturating_add(i.ejected),
        })
}

/// The signals a locality was judged on: its window's counts and its endpoints.
pub fn signals_of(counts: &Counters, inventory: Inventory, window: Duration) -> Signals {
    Signals {
        ready_endpoints: inventory.available(),
        total_endpoints: inventory.total,
        requests: counts.requests,
        http_5xx: counts.http_5xx,
        gateway_errors: counts.gateway_errors,
        connect_failures: counts.connect_failures,
        window,
    }
}

/// Time passes: windows slide, verdicts step, leases expire. Returns the verdict changes.
pub fn tick(state: &mut EngineState, topology: &Topology, now_ms: u64) -> Vec<Event> {
    let now_ms = state.advance(now_ms);
    // Forget services the configuration no longer has, so reports about unknown hosts
    // cannot grow the state.
    state
        .services
        .retain(|host, _| topology.services.contains_key(host));
    let oldest_kept = bucket_of(now_ms).saturating_sub(buckets_for(MAX_WINDOW.as_millis() as u64));
    // Leases once per cluster, not once per locality.
    let leased_clusters: Vec<bool> = topology
        .clusters
        .keys()
        .map(|c| state.is_leased(c))
        .collect();
    let mut events = Vec::new();
    for (host, service) in &topology.services {
        let drained: Vec<bool> = if state.drains.is_empty() {
            vec![false; service.localities.len()]
        } else {
            service
                .localities
                .iter()
                .map(|d| state.drain_of(topology, host, &d.locality).is_some())
                .collect()
        };
        let entry = match state.services.get_mut(host) {
            Some(entry) => entry,
            None => state.services.entry(host.clone()).or_default(),
        };
        sync_layout(entry, service, now_ms);
        let window_keep = bucket_of(now_ms)
            .saturating_sub(buckets_for(
                service.settings.window.as_millis().max(0) as u64
            ))
            .max(oldest_kept);
        for w in entry.demand.values_mut() {
            w.trim(window_keep);
        }
        entry.demand.retain(|_, w| !w.is_empty());
        for ((i, dest), loc) in service
            .localities
            .iter()
            .enumerate()
            .zip(entry.localities.values_mut())
        {
            let leased =
                dest.owners.is_empty() || dest.owner_positions.iter().any(|&c| leased_clusters[c]);
            let change = step_locality(
                loc,
                service,
                dest.endpoints,
                drained[i],
                leased,
                window_keep,
                now_ms,
            );
            if let Some((from, to)) = change {
                let (counts, inventory) = loc.observed.unwrap_or_default();
                let signals = signals_of(&counts, inventory, service.settings.window);
                events.push(Event {
                    at_ms: now_ms,
                    service: host.clone(),
                    locality: dest.locality.clone(),
                    from,
                    to,
                    detail: crate::engine::explain::verdict_detail(
                        to,
                        &loc.machine,
                        &signals,
                        &service.settings,
                    ),
                });
            }
        }
    }
    events
}

/// Makes a service's locality states exactly the topology's localities, in the same order,
/// and records that with the topology's layout stamp so readers can walk both side by side
/// without comparing names.
fn sync_layout(entry: &mut ServiceState, service: &ServiceTopology, now_ms: u64) {
    let matches = entry.layout == service.layout
        && entry.localities.len() == service.localities.len()
        && entry
            .localities
            .keys()
            .zip(&service.localities)
            .all(|(l, d)| l == &d.locality);
    if !matches {
        entry
            .localities
            .retain(|l, _| service.locality_index(l).is_some());
        for dest in &service.localities {
            if !entry.localities.contains_key(&dest.locality) {
                entry
                    .localities
                    .insert(dest.locality.clone(), LocalityState::new(now_ms));
            }
        }
    }
    entry.layout = service.layout;
}

fn step_locality(
    loc: &mut LocalityState,
    service: &ServiceTopology,
    configured: u32,
    drained: bool,
    leased: bool,
    window_keep: u64,
    now_ms: u64,
) -> Option<(Verdict, Verdict)> {
    loc.window.trim(window_keep);
    let settings = &service.settings;
    let inventory = inventory_of(loc, configured);
    let window_ms = settings.window.as_millis().max(0) as u64;
    // Back from a failure: judged on what it did since, until a whole window has passed.
    let counted_from = loc
        .machine
        .counted_from_ms
        .filter(|from| now_ms.saturating_sub(*from) < window_ms);
    let assessment = assess(&loc.window, inventory, settings, now_ms, counted_from);
    loc.observed = Some((
        loc.window.sum(bucket_of(now_ms), buckets_for(window_ms)),
        inventory,
    ));
    loc.machine.step(&assessment, settings, now_ms);
    let failed = loc.machine.verdict == Verdict::Failed;
    if leased || failed {
        // As many endpoints as the damped share allows (rounded up: the share was rounded
        // down from a count), of those available now.
        let allowed = (u64::from(inventory.total) * u64::from(loc.machine.available_bp))
            .div_ceil(u64::from(TOTAL_BASIS_POINTS)) as u32;
        loc.health = Some(Health {
            available: inventory.available().min(allowed),
            total: inventory.total,
            success_bp: loc.machine.success_bp,
        });
        loc.allowance_bp = loc.machine.allowance_bp();
    }
    let shown = if drained {
        Verdict::Drained
    } else if !leased && !failed {
        Verdict::Unknown
    } else {
        loc.machine.verdict
    };
    if shown == loc.shown {
        return None;
    }
    let from = loc.shown;
    loc.shown = shown;
    loc.shown_since_ms = now_ms;
    Some((from, shown))
}

/// A cause that counts as the engine taking a locality out (as opposed to the locality
/// having no endpoint to send to).
pub fn is_engine_failure(machine: &VerdictState) -> bool {
    machine.verdict == Verdict::Failed
        && matches!(machine.cause, Cause::Rate(_) | Cause::HoldDown { .. })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fulcrum::FailoverSettings;

    #[test]
    fn a_ramping_locality_is_judged_on_what_it_did_since_the_ramp_began() {
        let settings = FailoverSettings::default();
        let mut window = Window::default();
        // Failing hard at 10 s (what failed it), then good traffic from the ramp on.
        let bad = Counters {
            requests: 100,
            http_5xx: 100,
            ..Counters::default()
        };
        let good = Counters {
            requests: 100,
            ..Counters::default()
        };
        window.add(bucket_of(10_000), &bad);
        for s in 15..=17u64 {
            window.add(bucket_of(s * 1_000), &good);
        }
        let inventory = Inventory {
            total: 2,
            ready: 2,
            ejected: 0,
        };
        // Over the whole window the old errors still count: 25% 5xx, above recover.
        let whole = assess(&window, inventory, &settings, 17_000, None);
        assert!(whole.above_recover.is_some(), "{whole:?}");
        // Since the ramp began at 14 s only the good traffic counts.
        let ramping = assess(&window, inventory, &settings, 17_000, Some(14_000));
        assert!(ramping.above_recover.is_none(), "{ramping:?}");
        assert_eq!(ramping.success_bp, TOTAL_BASIS_POINTS);
        // Right at the ramp's start nothing is counted yet.
        let start = assess(&window, inventory, &settings, 14_000, Some(14_000));
        assert!(start.above_recover.is_none() && start.tripped.is_none());
    }
}
