//! A drill: traffic through every cluster's proxy, a fault at a set time, its recovery,
//! and what was measured in between.
//!
//! - **time to detect**: fault -> the first weight change toward the failed locality in
//!   any proxy's pushed row (committed by the coordinators and delivered);
//! - **time to shift**: fault -> from then on, under 1% of each 100 ms of answered
//!   requests served by the failed cluster;
//! - **errors during the shift**: requests sent in that span that got no 2xx;
//! - **time to failback**: recovery -> every proxy's row back to its weights before the
//!   fault;
//! - **weight regressions**: a proxy seen on a snapshot version lower than one it had;
//! - **config lost**: the service missing from a proxy's configuration at the end.
//!
//! A drill runs against a [`Target`]: the local mesh the harness starts
//! ([`crate::harness::Mesh`], where every fault and action is possible), or an existing
//! mesh reached through its coordinators' status and admin API
//! ([`crate::remote::RemoteMesh`], where what needs process control is skipped with a
//! note in the report).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::backend::Knobs;
use crate::harness::{HarnessError, Row};
use crate::load::{self, Recorder, Sample};

/// A proxy's row for the drill's service with the coordinators' explanation of each
/// destination's weight.
pub type ExplainedRow = (Row, Vec<String>);

/// Whether a target did what a drill asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Done.
    Done,
    /// Not possible on this target; why.
    Skipped(String),
}

/// What a drill runs against.
pub trait Target {
    /// The clusters, in index order: (name, locality).
    fn clusters(&self) -> Vec<(String, String)>;
    /// The service the traffic goes to and whose weights are watched.
    fn service(&self) -> String;
    /// Where to send traffic: (cluster index, that cluster's proxy's outbound listener).
    fn traffic(&self) -> Vec<(u8, SocketAddr)>;
    /// Each cluster's proxy's row for the service, in index order (`None`: no answer).
    fn rows(&self) -> impl Future<Output = Vec<Option<ExplainedRow>>>;
    /// The clusters whose proxies no longer know the service.
    fn config_lost(&self) -> impl Future<Output = Vec<String>>;
    /// Starts `fault`.
    fn inject(&mut self, fault: &Fault) -> impl Future<Output = Result<Applied, HarnessError>>;
    /// Undoes `fault`.
    fn recover(&mut self, fault: &Fault) -> impl Future<Output = Result<Applied, HarnessError>>;
    /// Does `action`.
    fn act(&mut self, action: &Action) -> impl Future<Output = Applied>;
}

/// Width of a timeline bucket.
pub const BUCKET_MS: u64 = 100;

/// What goes wrong.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Fault {
    /// The cluster's backends answer this share of requests with 503.
    ErrorRate {
        /// Cluster index.
        cluster: usize,
        /// 0 to 1.
        rate: f64,
    },
    /// The cluster's backends wait this long before each answer.
    Latency {
        /// Cluster index.
        cluster: usize,
        /// Added to each answer.
        latency: Duration,
    },
    /// The cluster's backends refuse connections (their listeners close).
    Refuse {
        /// Cluster index.
        cluster: usize,
    },
    /// The cluster's backends accept requests and never answer.
    Hang {
        /// Cluster index.
        cluster: usize,
    },
    /// The cluster's backend processes are killed (`kill -9`), restarted on recovery.
    KillBackends {
        /// Cluster index.
        cluster: usize,
    },
    /// An operator drains the cluster for the drill's service (`fulcrumctl drain`), and
    /// undrains it on recovery: a planned evacuation, through the admin API only.
    Drain {
        /// Cluster index.
        cluster: usize,
    },
}

impl Fault {
    /// The cluster the fault is in.
    pub fn cluster(&self) -> usize {
        match self {
            Fault::ErrorRate { cluster, .. }
            | Fault::Latency { cluster, .. }
            | Fault::Refuse { cluster }
            | Fault::Hang { cluster }
            | Fault::KillBackends { cluster }
            | Fault::Drain { cluster } => *cluster,
        }
    }

    /// The knobs the cluster's test backends take for this fault, when it is one of
    /// theirs.
    pub fn knobs(&self) -> Option<Knobs> {
        let knobs = match self {
            Fault::ErrorRate { rate, .. } => Knobs {
                error_rate: *rate,
                ..Knobs::default()
            },
            Fault::Latency { latency, .. } => Knobs {
                latency_ms: u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
                ..Knobs::default()
            },
            Fault::Refuse { .. } => Knobs {
                refuse: true,
                ..Knobs::default()
            },
            Fault::Hang { .. } => Knobs {
                hang: true,
                ..Knobs::default()
            },
            Fault::KillBackends { .. } | Fault::Drain { .. } => return None,
        };
        Some(knobs)
    }

    /// The fault in words, on a mesh with `clusters` (name, locality).
    pub fn describe(&self, clusters: &[(String, String)]) -> String {
        let name = clusters
            .get(self.cluster())
            .map_or("?", |(n, _)| n.as_str());
        match self {
            Fault::ErrorRate { rate, .. } => {
                format!(
                    "{name}'s backends answer {:.0}% of requests with 503",
                    rate * 100.0
                )
            }
            Fault::Latency { latency, .. } => {
                format!("{name}'s backends answer {} ms late", latency.as_millis())
            }
            Fault::Refuse { .. } => format!("{name}'s backends refuse connections"),
            Fault::Hang { .. } => format!("{name}'s backends never answer"),
            Fault::KillBackends { .. } => format!("{name}'s backend processes killed (kill -9)"),
            Fault::Drain { .. } => format!("{name} drained by an operator (fulcrumctl drain)"),
        }
    }
}

/// Something done to the mesh's processes at a set time, besides the fault.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Action {
    /// `kill -9` the Raft leader.
    KillLeader,
    /// `kill -9` this many coordinators, the leader first.
    KillCoordinators {
        /// How many.
        count: usize,
    },
    /// Start every killed coordinator again.
    RestartCoordinators,
    /// `kill -9` a cluster's proxy and start it again.
    RestartProxy {
        /// Cluster index.
        cluster: usize,
    },
    /// Freezes a coordinator (SIGSTOP): it holds its connections open and answers
    /// nothing, as a node cut off by a partition does.
    PauseCoordinator {
        /// Node id.
        node: u64,
    },
    /// Thaws it (SIGCONT).
    ResumeCoordinator {
        /// Node id.
        node: u64,
    },
    /// Partitions a coordinator away, both ways: its inbound links from the other nodes
    /// and from every proxy swallow everything, and the other nodes' relays swallow what
    /// it sends them (fault relays).
    Partition {
        /// Node id.
        node: u64,
    },
    /// Partitions away a coordinator that is not the leader, as `Partition` does.
    PartitionFollower,
    /// Makes the leader deaf: what reaches it is swallowed, while its own links to the
    /// other nodes still pass (its heartbeats go out and their answers come back).
    PartitionLeader,
    /// Cuts a follower off from the other coordinators only: what they send it is
    /// swallowed, while the proxies still reach it.
    IsolateFollower,
    /// Every link passes again.
    Heal,
    /// Sets the knobs of a cluster's backends (a flapping backend is a list of these).
    SetErrorRate {
        /// Cluster index.
        cluster: usize,
        /// 0 to 1.
        rate: f64,
    },
}

/// A drill's timing and traffic.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// Its name.
    pub name: String,
    /// Traffic before the fault.
    pub warmup: Duration,
    /// The fault, or none (traffic only).
    pub fault: Option<Fault>,
    /// How long the fault lasts.
    pub fault_for: Duration,
    /// Traffic after the recovery.
    pub after: Duration,
    /// Requests per second.
    pub rate: u32,
    /// Actions at times from the start.
    pub actions: Vec<(Duration, Action)>,
}

/// A proxy's row as seen at one moment.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WeightSeen {
    /// Milliseconds from the start.
    pub t_ms: u64,
    /// Which proxy (cluster index).
    pub proxy: usize,
    /// Its snapshot version.
    pub version: u64,
    /// (destination locality, basis points).
    pub weights: Vec<(String, u32)>,
    /// The coordinators' explanation of each destination's weight.
    pub explanations: Vec<String>,
}

/// One 100 ms bucket of the timeline.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Bucket {
    /// Bucket start, milliseconds from the start.
    pub t_ms: u64,
    /// Answered 2xx, by serving cluster.
    pub served: Vec<u64>,
    /// Not 2xx or no answer.
    pub errors: u64,
}

/// What a drill measured.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The plan.
    pub plan: Plan,
    /// The fault, in words.
    pub fault: String,
    /// The clusters, in index order.
    pub clusters: Vec<String>,
    /// When the fault began and ended, milliseconds from the start.
    pub fault_at_ms: Option<u64>,
    /// When it was undone.
    pub recovered_at_ms: Option<u64>,
    /// Requests sent.
    pub requests: u64,
    /// Of those, not 2xx.
    pub errors: u64,
    /// Latency over the run, microseconds: p50, p99, max.
    pub latency_us: (u64, u64, u64),
    /// Requests that needed more than one try (retried by the proxy).
    pub retried: u64,
    /// Fault -> first weight change.
    pub time_to_detect_ms: Option<u64>,
    /// Fault -> under 1% served by the failed cluster for good.
    pub time_to_shift_ms: Option<u64>,
    /// Errors among requests sent during the shift.
    pub errors_during_shift: u64,
    /// Errors among requests sent while the fault lasted.
    pub errors_during_fault: u64,
    /// Recovery -> every row back to its weights before the fault.
    pub time_to_failback_ms: Option<u64>,
    /// Times a proxy was seen on an older version than before.
    pub weight_regressions: u64,
    /// Proxies whose configuration lost the service.
    pub config_lost: Vec<String>,
    /// What the target could not do (faults or actions that need process control on a
    /// mesh reached through its API), and other remarks.
    pub notes: Vec<String>,
    /// The fault was skipped: the measurements about it mean nothing.
    pub fault_skipped: bool,
    /// The timeline.
    pub timeline: Vec<Bucket>,
    /// Every row seen.
    pub weights_seen: Vec<WeightSeen>,
}

/// Live figures for a progress view.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Seconds from the start.
    pub t: f64,
    /// The phase (`warm-up`, `fault`, `recovery`).
    pub phase: &'static str,
    /// Share of the last second's 2xx answers by serving cluster, percent.
    pub share: Vec<f64>,
    /// Errors in the last second.
    pub errors: u64,
    /// Each proxy's current row.
    pub weights: Vec<Option<Row>>,
}

fn ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Runs `plan` on `target`, calling `progress` about once a second.
pub async fn run<T: Target>(
    target: &mut T,
    plan: Plan,
    mut progress: impl FnMut(&Progress),
    mut stop: watch::Receiver<bool>,
) -> Result<Report, HarnessError> {
    let started = Instant::now();
    let recorder = Arc::new(Recorder::default());
    let places = target.clusters();
    let clusters: Vec<String> = places.iter().map(|(name, _)| name.clone()).collect();
    let mut notes = Vec::new();
    let mut fault_skipped = false;
    let (stop_load, load_stopped) = watch::channel(false);
    let load = tokio::spawn(load::run(
        target.traffic(),
        target.service(),
        clusters.clone(),
        plan.rate,
        started,
        recorder.clone(),
        load_stopped,
    ));
    let seen: Arc<Mutex<Vec<WeightSeen>>> = Arc::default();
    let fault_at = plan.warmup;
    let recover_at = plan.warmup + plan.fault_for;
    let end_at = recover_at + plan.after;
    let (mut fault_ms, mut recovered_ms) = (None, None);
    let mut next_progress = Duration::from_secs(1);
    let mut actions_done = 0;
    let mut result = Ok(());
    loop {
        let now = started.elapsed();
        if now >= end_at || *stop.borrow() {
            break;
        }
        if let Some(fault) = &plan.fault {
            if fault_ms.is_none() && now >= fault_at {
                fault_ms = Some(ms(started));
                tracing::info!("fault: {}", fault.describe(&places));
                match target.inject(fault).await {
                    Ok(Applied::Done) => {}
                    Ok(Applied::Skipped(why)) => {
                        notes.push(format!("fault skipped: {why}"));
                        fault_skipped = true;
                    }
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            if fault_ms.is_some() && recovered_ms.is_none() && now >= recover_at {
                recovered_ms = Some(ms(started));
                tracing::info!("recovery: the fault is undone");
                if !fault_skipped && let Err(e) = target.recover(fault).await {
                    result = Err(e);
                    break;
                }
            }
        }
        while let Some((at, action)) = plan.actions.get(actions_done) {
            if now < *at {
                break;
            }
            tracing::info!(?action, "action");
            if let Applied::Skipped(why) = target.act(action).await {
                notes.push(format!(
                    "at {:.1}s, {action:?} skipped: {why}",
                    at.as_secs_f64()
                ));
            }
            actions_done += 1;
        }
        let mut rows = Vec::new();
        for (p, explained) in target.rows().await.into_iter().enumerate() {
            if let (Some(((version, weights), explanations)), Ok(mut s)) = (&explained, seen.lock())
            {
                s.push(WeightSeen {
                    t_ms: ms(started),
                    proxy: p,
                    version: *version,
                    weights: weights.clone(),
                    explanations: explanations.clone(),
                });
            }
            rows.push(explained.map(|(row, _)| row));
        }
        if started.elapsed() >= next_progress {
            next_progress += Duration::from_secs(1);
            let t = ms(started);
            let last = recorder.since(t.saturating_sub(1_000));
            let mut served = vec![0u64; clusters.len()];
            let mut errors = 0;
            for s in &last {
                match s.served {
                    Some(c) if s.ok() => served[usize::from(c)] += 1,
                    _ if !s.ok() => errors += 1,
                    _ => {}
                }
            }
            let total: u64 = served.iter().sum();
            let phase = match (fault_ms, recovered_ms) {
                (None, _) => "warm-up",
                (Some(_), None) => "fault",
                (Some(_), Some(_)) => "recovery",
            };
            progress(&Progress {
                t: t as f64 / 1000.0,
                phase: if plan.fault.is_none() {
                    "traffic"
                } else {
                    phase
                },
                share: served
                    .iter()
                    .map(|&n| {
                        if total == 0 {
                            0.0
                        } else {
                            n as f64 * 100.0 / total as f64
                        }
                    })
                    .collect(),
                errors,
                weights: rows,
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stop.changed() => {}
        }
    }
    let _ = stop_load.send(true);
    let _ = load.await;
    if let (Some(fault), Some(_), None, false) =
        (&plan.fault, fault_ms, recovered_ms, fault_skipped)
    {
        // Stopped early: undo the fault anyway, so the mesh is left as found.
        let _ = target.recover(fault).await;
    }
    result?;
    let config_lost = target.config_lost().await;
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    let mut report = measure(
        plan,
        &places,
        recorder.samples(),
        seen,
        fault_ms,
        recovered_ms,
        config_lost,
    );
    report.notes = notes;
    report.fault_skipped = fault_skipped;
    Ok(report)
}

fn measure(
    plan: Plan,
    places: &[(String, String)],
    samples: Vec<Sample>,
    seen: Vec<WeightSeen>,
    fault_ms: Option<u64>,
    recovered_ms: Option<u64>,
    config_lost: Vec<String>,
) -> Report {
    let clusters: Vec<String> = places.iter().map(|(name, _)| name.clone()).collect();
    let end = samples.iter().map(|s| s.sent_ms).max().unwrap_or(0);
    let buckets = usize::try_from(end / BUCKET_MS + 1).unwrap_or(0);
    let mut timeline: Vec<Bucket> = (0..buckets)
        .map(|i| Bucket {
            t_ms: i as u64 * BUCKET_MS,
            served: vec![0; clusters.len()],
            errors: 0,
        })
        .collect();
    for s in &samples {
        let b = &mut timeline[usize::try_from(s.sent_ms / BUCKET_MS).unwrap_or(0)];
        match s.served {
            Some(c) if s.ok() => b.served[usize::from(c)] += 1,
            _ => b.errors += 1,
        }
    }
    let failed = plan.fault.as_ref().map(Fault::cluster);
    let failed_locality = failed.and_then(|f| places.get(f)).map(|(_, l)| l.clone());
    let weight_of = |w: &WeightSeen, locality: &str| {
        w.weights
            .iter()
            .find(|(l, _)| l == locality)
            .map_or(0, |(_, bp)| *bp)
    };
    // Each proxy's row just before the fault.
    let baseline: Vec<Option<&WeightSeen>> = (0..clusters.len())
        .map(|p| {
            seen.iter()
                .rfind(|w| w.proxy == p && fault_ms.is_some_and(|f| w.t_ms < f))
        })
        .collect();
    let time_to_detect_ms = match (fault_ms, &failed_locality) {
        (Some(f), Some(l)) => seen
            .iter()
            .filter(|w| w.t_ms >= f)
            .find(|w| baseline[w.proxy].is_some_and(|b| weight_of(w, l) < weight_of(b, l)))
            .map(|w| w.t_ms - f),
        _ => None,
    };
    let time_to_shift_ms = match (fault_ms, failed) {
        (Some(f), Some(c)) => {
            let until = recovered_ms.unwrap_or(end);
            let span: Vec<&Bucket> = timeline
                .iter()
                .filter(|b| b.t_ms >= f / BUCKET_MS * BUCKET_MS && b.t_ms + BUCKET_MS <= until)
                .collect();
            let under = |b: &Bucket| {
                let total: u64 = b.served.iter().sum();
                total == 0 || b.served[c] * 100 < total
            };
            // The first bucket from which every later one is under 1%.
            let mut first = None;
            for (i, b) in span.iter().enumerate().rev() {
                if under(b) {
                    first = Some(i);
                } else {
                    break;
                }
            }
            first.map(|i| span[i].t_ms.saturating_sub(f))
        }
        _ => None,
    };
    let count_errors = |from: u64, to: u64| {
        samples
            .iter()
            .filter(|s| s.sent_ms >= from && s.sent_ms < to && !s.ok())
            .count() as u64
    };
    let errors_during_shift = match (fault_ms, time_to_shift_ms) {
        (Some(f), Some(t)) => count_errors(f, f + t + BUCKET_MS),
        (Some(f), None) => count_errors(f, recovered_ms.unwrap_or(end + 1)),
        _ => 0,
    };
    let errors_during_fault =
        fault_ms.map_or(0, |f| count_errors(f, recovered_ms.unwrap_or(end + 1)));
    let time_to_failback_ms = match (recovered_ms, &failed_locality) {
        (Some(r), Some(l)) => {
            // The first moment from which every proxy is back at its baseline weight.
            let mut back_at = None;
            let mut last_for: Vec<Option<u32>> = vec![None; clusters.len()];
            for w in seen.iter().filter(|w| w.t_ms >= r) {
                last_for[w.proxy] = Some(weight_of(w, l));
                let all_back = (0..clusters.len()).all(|p| match (last_for[p], baseline[p]) {
                    (Some(now), Some(b)) => now >= weight_of(b, l),
                    (_, None) => true,
                    (None, Some(_)) => false,
                });
                if all_back {
                    back_at.get_or_insert(w.t_ms - r);
                } else {
                    back_at = None;
                }
            }
            back_at
        }
        _ => None,
    };
    let mut weight_regressions = 0;
    for p in 0..clusters.len() {
        let mut highest = 0;
        for w in seen.iter().filter(|w| w.proxy == p) {
            if w.version < highest {
                weight_regressions += 1;
            }
            highest = highest.max(w.version);
        }
    }
    let errors = samples.iter().filter(|s| !s.ok()).count() as u64;
    Report {
        fault: plan
            .fault
            .as_ref()
            .map_or_else(|| "none".to_string(), |f| f.describe(places)),
        plan,
        clusters,
        fault_at_ms: fault_ms,
        recovered_at_ms: recovered_ms,
        requests: samples.len() as u64,
        errors,
        latency_us: load::latency(&samples),
        retried: samples.iter().filter(|s| s.attempts > 1).count() as u64,
        time_to_detect_ms,
        time_to_shift_ms,
        errors_during_shift,
        errors_during_fault,
        time_to_failback_ms,
        weight_regressions,
        config_lost,
        notes: Vec::new(),
        fault_skipped: false,
        timeline,
        weights_seen: seen,
    }
}

fn seconds(ms: Option<u64>) -> String {
    ms.map_or_else(
        || "never".to_string(),
        |m| format!("{:.1} s", m as f64 / 1000.0),
    )
}

impl Report {
    /// The human summary.
    pub fn summary(&self) -> String {
        let mut s = format!("drill {}: {}\n", self.plan.name, self.fault);
        let line = |s: &mut String, what: &str, value: String| {
            s.push_str(&format!("  {what:<28} {value}\n"));
        };
        line(
            &mut s,
            "requests",
            format!("{} at {}/s", self.requests, self.plan.rate),
        );
        line(&mut s, "errors (whole run)", self.errors.to_string());
        line(&mut s, "retried by the proxies", self.retried.to_string());
        line(
            &mut s,
            "latency p50 / p99 / max",
            format!(
                "{:.1} / {:.1} / {:.1} ms",
                self.latency_us.0 as f64 / 1000.0,
                self.latency_us.1 as f64 / 1000.0,
                self.latency_us.2 as f64 / 1000.0
            ),
        );
        if self.fault_at_ms.is_some() {
            line(&mut s, "time to detect", seconds(self.time_to_detect_ms));
            line(
                &mut s,
                "time to shift (<1% served)",
                seconds(self.time_to_shift_ms),
            );
            line(
                &mut s,
                "errors during the shift",
                self.errors_during_shift.to_string(),
            );
            line(
                &mut s,
                "errors during the fault",
                self.errors_during_fault.to_string(),
            );
            line(
                &mut s,
                "time to failback",
                seconds(self.time_to_failback_ms),
            );
        }
        line(
            &mut s,
            "weight regressions",
            self.weight_regressions.to_string(),
        );
        line(
            &mut s,
            "configuration lost",
            if self.config_lost.is_empty() {
                "none".to_string()
            } else {
                self.config_lost.join(", ")
            },
        );
        for note in &self.notes {
            s.push_str(&format!("  note: {note}\n"));
        }
        s
    }

    /// The timeline as an SVG: each cluster's share of answers over time, errors in red,
    /// the fault and the recovery marked.
    pub fn svg(&self) -> String {
        let (width, height, left, top) = (900.0, 300.0, 50.0, 20.0);
        let n = self.timeline.len().max(1) as f64;
        let x = |i: f64| left + i * (width - left - 20.0) / n;
        let y = |share: f64| top + (1.0 - share) * (height - top - 40.0);
        let colors = ["#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];
        let mut out = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{left}\" y=\"14\">{}: share of answers by serving cluster, per 100 ms</text>\n",
            xml(&self.plan.name)
        );
        // One point per bucket: `part` of the bucket's requests as a share of them all.
        let points = |part: &dyn Fn(&Bucket) -> u64| {
            self.timeline
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let total = b.served.iter().sum::<u64>() + b.errors;
                    let share = if total == 0 {
                        0.0
                    } else {
                        part(b) as f64 / total as f64
                    };
                    format!("{:.1},{:.1}", x(i as f64), y(share))
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        for (c, name) in self.clusters.iter().enumerate() {
            let color = colors[c % colors.len()];
            out += &format!(
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>\n<text x=\"{}\" y=\"{}\" fill=\"{color}\">{}</text>\n",
                points(&|b: &Bucket| b.served[c]),
                left + 10.0 + 110.0 * c as f64,
                height - 8.0,
                xml(name)
            );
        }
        let errors = points(&|b: &Bucket| b.errors);
        out += &format!(
            "<polyline fill=\"none\" stroke=\"#d62728\" stroke-width=\"1\" stroke-dasharray=\"3,2\" points=\"{}\"/>\n<text x=\"{}\" y=\"{}\" fill=\"#d62728\">errors</text>\n",
            errors,
            left + 10.0 + 110.0 * self.clusters.len() as f64,
            height - 8.0
        );
        for (label, at) in [
            ("fault", self.fault_at_ms),
            ("recovery", self.recovered_at_ms),
        ] {
            if let Some(at) = at {
                let xi = x(at as f64 / BUCKET_MS as f64);
                out += &format!(
                    "<line x1=\"{xi:.1}\" y1=\"{top}\" x2=\"{xi:.1}\" y2=\"{:.1}\" stroke=\"black\" stroke-dasharray=\"4,3\"/>\n<text x=\"{:.1}\" y=\"{:.1}\">{label}</text>\n",
                    height - 40.0,
                    xi + 3.0,
                    top + 12.0
                );
            }
        }
        // Weight changes toward the failed locality: ticks along the top.
        if let Some(f) = self.plan.fault.as_ref().map(Fault::cluster) {
            let mut last: Vec<Option<Vec<(String, u32)>>> = vec![None; self.clusters.len()];
            for w in &self.weights_seen {
                if last[w.proxy].as_ref() != Some(&w.weights) {
                    if last[w.proxy].is_some() {
                        let xi = x(w.t_ms as f64 / BUCKET_MS as f64);
                        out += &format!(
                            "<line x1=\"{xi:.1}\" y1=\"{top}\" x2=\"{xi:.1}\" y2=\"{:.1}\" stroke=\"{}\" stroke-width=\"2\"/>\n",
                            top + 8.0,
                            colors[f % colors.len()]
                        );
                    }
                    last[w.proxy] = Some(w.weights.clone());
                }
            }
        }
        for (share, label) in [(0.0, "0%"), (0.5, "50%"), (1.0, "100%")] {
            out += &format!("<text x=\"8\" y=\"{:.1}\">{label}</text>\n", y(share) + 4.0);
        }
        out += "</svg>\n";
        out
    }

    /// Writes `report.json`, `summary.txt` and `timeline.svg` into `dir`.
    pub fn write(&self, dir: &std::path::Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(dir.join("report.json"), json)?;
        std::fs::write(dir.join("summary.txt"), self.summary())?;
        std::fs::write(dir.join("timeline.svg"), self.svg())
    }
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
