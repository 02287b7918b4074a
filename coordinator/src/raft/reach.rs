//! Whether a follower can reach its leader, and what it does when it cannot.
//!
//! A leader whose incoming links fail while its outgoing ones work keeps leading under
//! openraft 0.9: its heartbeats go out on its own connections and their answers come
//! back on them, so no follower's election timer runs out; yet every proposal a
//! follower forwards to it is lost, and nothing reported to the other nodes is
//! committed. So each follower watches whether it reaches its leader: the forwards and
//! reads it makes of the leader say so as they go, and when none has for a while, a
//! probe (a read index asked of the leader) does. Once the leader has been out of reach
//! for [`STOP_FOLLOWING_AFTER`] election timeouts, over two calls or more (the last of
//! them recent), the follower refuses its heartbeats and entries
//! ([`LeaderReach::refuses`]), so that its own election timer runs and it stands; the
//! other followers, cut off from the leader alike, do the same, and elect one of
//! themselves. A follower that alone cannot reach the leader stands in vain (its vote
//! requests do not reach the leader either, and the other followers, which still hear
//! the leader, refuse them for its lease), and follows again as soon as a probe reaches
//! the leader.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Election timeouts (the longest) a leader must stay out of reach before a follower
/// stops following it: at least two probes.
pub const STOP_FOLLOWING_AFTER: u32 = 3;

/// Calls to the leader that must go unanswered before a follower stops following it.
const MISSES_TO_STOP_FOLLOWING: u32 = 2;

/// Election timeouts (the longest) between two probes of the leader, when nothing else
/// reached it meanwhile; a probe gives up after as long.
pub const PROBE_EVERY: u32 = 2;

/// Election timeouts (the longest) within which the last unanswered call must be for a
/// follower to refuse the leader: three probes' time.
pub const MISSES_FRESH_FOR: u32 = 3 * PROBE_EVERY;

/// What a follower knows of reaching its leader.
#[derive(Debug, Default)]
pub struct LeaderReach {
    state: Mutex<Reach>,
}

#[derive(Debug, Default)]
struct Reach {
    /// The leader this is about.
    leader: Option<u64>,
    /// When a call to it last got an answer.
    reached_at: Option<Instant>,
    /// Since when every call to it has failed for want of an answer.
    failing_since: Option<Instant>,
    /// How many calls have failed so since.
    misses: u32,
    /// When the last of them failed.
    last_miss: Option<Instant>,
    /// Its heartbeats have been refused since it went out of reach.
    refused: bool,
}

impl Reach {
    /// The record for `leader`, started afresh when the leader changed.
    fn of(&mut self, leader: u64) -> &mut Reach {
        if self.leader != Some(leader) {
            *self = Reach {
                leader: Some(leader),
                ..Reach::default()
            };
        }
        self
    }
}

impl LeaderReach {
    /// A call to `leader` got an answer (any answer: a refusal is an answer).
    pub fn reached(&self, leader: u64) {
        if let Ok(mut state) = self.state.lock() {
            let reach = state.of(leader);
            reach.reached_at = Some(Instant::now());
            reach.failing_since = None;
            reach.misses = 0;
            reach.last_miss = None;
            if std::mem::take(&mut reach.refused) {
                tracing::info!(leader, "the leader answers again: following it again");
            }
        }
    }

    /// A call to `leader` made at `started` got no answer: it could not connect, or it
    /// timed out.
    pub fn missed(&self, leader: u64, started: Instant) {
        self.missed_at(leader, started, Instant::now());
    }

    fn missed_at(&self, leader: u64, started: Instant, now: Instant) {
        if let Ok(mut state) = self.state.lock() {
            let reach = state.of(leader);
            reach.failing_since = Some(reach.failing_since.map_or(started, |s| s.min(started)));
            reach.misses += 1;
            reach.last_miss = Some(reach.last_miss.map_or(now, |l| l.max(now)));
        }
    }

    /// The leader last known here, when it answered within the last `within` and
    /// nothing went unanswered since: where to forward a write while this node knows of
    /// no leader (it stands, cut off from the others' messages but not from the leader).
    pub fn answering(&self, within: Duration) -> Option<u64> {
        let state = self.state.lock().ok()?;
        let recent = state.reached_at.is_some_and(|at| at.elapsed() < within);
        state
            .leader
            .filter(|_| recent && state.failing_since.is_none())
    }

    /// Whether `leader` answered within the last `within`.
    pub fn reached_within(&self, leader: u64, within: Duration) -> bool {
        let Ok(state) = self.state.lock() else {
            return false;
        };
        state.leader == Some(leader) && state.reached_at.is_some_and(|at| at.elapsed() < within)
    }

    /// Whether this node should refuse heartbeats and entries from `leader`: how long
    /// it has been out of reach, when that is at least `patience`, more than one call
    /// went unanswered (one slow answer is not enough), and the last of them within
    /// `fresh` (what was seen of a leader long gone, which may lead again since, no
    /// longer counts). Said in the log when it begins.
    pub fn refuses(&self, leader: u64, patience: Duration, fresh: Duration) -> Option<Duration> {
        self.refuses_at(leader, (patience, fresh), Instant::now())
    }

    fn refuses_at(
        &self,
        leader: u64,
        (patience, fresh): (Duration, Duration),
        now: Instant,
    ) -> Option<Duration> {
        let mut state = self.state.lock().ok()?;
        let recent = state
            .last_miss
            .is_some_and(|at| now.saturating_duration_since(at) <= fresh);
        let since = (state.failing_since).filter(|_| {
            state.leader == Some(leader) && state.misses >= MISSES_TO_STOP_FOLLOWING && recent
        })?;
        let out = Some(now.saturating_duration_since(since)).filter(|d| *d >= patience)?;
        if !std::mem::replace(&mut state.refused, true) {
            tracing::warn!(
                leader,
                out_of_reach_ms = out.as_millis() as u64,
                "the leader has not answered this node: refusing its heartbeats, to elect one that can be reached"
            );
        }
        Some(out)
    }

    /// The leader whose heartbeats this node refuses, if any: to be probed even while
    /// this node stands and knows no leader.
    pub fn refused_leader(&self) -> Option<u64> {
        let state = self.state.lock().ok()?;
        state.leader.filter(|_| state.refused)
    }
}

/// Whether this node is in touch with its Raft group: as a follower, when a leader last
/// reached it; as the leader, when a majority of the voters (itself among them) last
/// answered it. A node out of touch for long holds a stale state and cannot commit what
/// is reported to it: it sends proxies elsewhere ([`crate::api::control`]).
#[derive(Debug)]
pub struct GroupContact {
    started: Instant,
    /// When a leader's heartbeat, entries or snapshot were last taken here.
    from_leader: Mutex<Option<Instant>>,
    /// When each peer last answered a Raft call of this node's.
    answers: Mutex<BTreeMap<u64, Instant>>,
}

impl Default for GroupContact {
    fn default() -> Self {
        GroupContact {
            started: Instant::now(),
            from_leader: Mutex::default(),
            answers: Mutex::default(),
        }
    }
}

impl GroupContact {
    /// A leader reached this node.
    pub fn heard_leader(&self) {
        if let Ok(mut at) = self.from_leader.lock() {
            *at = Some(Instant::now());
        }
    }

    /// How long no leader has reached this node (since it started, when none ever has).
    pub fn leader_silent_for(&self) -> Duration {
        let at = self.from_leader.lock().ok().and_then(|at| *at);
        at.unwrap_or(self.started).elapsed()
    }

    /// `peer` answered a Raft call of this node's (any answer).
    pub fn answered_by(&self, peer: u64) {
        self.answered_at(peer, Instant::now());
    }

    fn answered_at(&self, peer: u64, at: Instant) {
        if let Ok(mut answers) = self.answers.lock() {
            answers.insert(peer, at);
        }
    }

    /// How long this node has been out of touch with the group made of `voters`: as the
    /// leader (`leading`), since the last time a majority of them, this node `me` among
    /// them, had answered; otherwise since a leader last reached it. Zero for a group of
    /// one.
    pub fn out_of_touch(&self, leading: bool, voters: &[u64], me: u64) -> Duration {
        self.out_of_touch_at(leading, voters, me, Instant::now())
    }

    fn out_of_touch_at(&self, leading: bool, voters: &[u64], me: u64, now: Instant) -> Duration {
        if voters.iter().all(|v| *v == me) {
            return Duration::ZERO;
        }
        if !leading {
            let at = self.from_leader.lock().ok().and_then(|at| *at);
            return now.saturating_duration_since(at.unwrap_or(self.started));
        }
        let Ok(answers) = self.answers.lock() else {
            return Duration::ZERO;
        };
        let mut latest: Vec<Instant> = (voters.iter())
            .filter(|v| **v != me)
            .map(|v| answers.get(v).copied().unwrap_or(self.started))
            .collect();
        latest.sort_unstable_by(|a, b| b.cmp(a));
        // A majority of the voters, this node being one of them.
        let peers_needed = (voters.len() / 2 + 1).saturating_sub(usize::from(voters.contains(&me)));
        match peers_needed.checked_sub(1).and_then(|i| latest.get(i)) {
            Some(at) => now.saturating_duration_since(*at),
            None => Duration::ZERO,
        }
    }
}

/// Whether a failed call to another node means it did not answer (rather than answered
/// with an error).
pub fn unanswered(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
    ) && !status
        .metadata()
        .contains_key(crate::node::LEADER_ID_HEADER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_out_of_reach_is_refused_only_after_the_patience_and_until_it_answers() {
        let reach = LeaderReach::default();
        let (t0, second) = (Instant::now(), Duration::from_secs(1));
        let refuses = |leader, patience, now| reach.refuses_at(leader, (patience, 5 * second), now);
        assert_eq!(refuses(1, Duration::ZERO, t0), None, "nothing known");
        reach.missed_at(1, t0, t0 + second);
        assert_eq!(refuses(1, 2 * second, t0 + second), None);
        // One call unanswered, however long ago: a slow answer, not yet a leader gone.
        assert_eq!(refuses(1, second, t0 + 3 * second), None);
        assert_eq!(reach.refused_leader(), None);
        // Another miss does not restart the count.
        reach.missed_at(1, t0 + second, t0 + 2 * second);
        assert_eq!(refuses(1, 2 * second, t0 + 2 * second), Some(2 * second));
        assert_eq!(reach.refused_leader(), Some(1));
        // Old news: nothing missed for longer than the freshness.
        assert_eq!(refuses(1, 2 * second, t0 + 8 * second), None);
        // Another leader: nothing is known of it yet.
        assert_eq!(refuses(2, Duration::ZERO, t0 + 2 * second), None);
        assert!(!reach.reached_within(1, Duration::from_secs(60)));
        reach.reached(2);
        assert!(reach.reached_within(2, Duration::from_secs(60)));
        assert_eq!(reach.refused_leader(), None);
        assert_eq!(reach.answering(Duration::from_secs(60)), Some(2));
        assert_eq!(reach.answering(Duration::ZERO), None, "not lately");
        // An answer ends it.
        reach.missed_at(2, t0, t0 + second);
        reach.missed_at(2, t0 + second, t0 + 2 * second);
        assert!(refuses(2, second, t0 + 2 * second).is_some());
        assert_eq!(
            reach.answering(Duration::from_secs(60)),
            None,
            "it stopped answering"
        );
        reach.reached(2);
        assert_eq!(refuses(2, Duration::ZERO, t0 + 2 * second), None);
    }

    #[test]
    fn an_answer_with_an_error_is_an_answer() {
        assert!(unanswered(&tonic::Status::unavailable("connect refused")));
        assert!(unanswered(&tonic::Status::deadline_exceeded("timed out")));
        assert!(!unanswered(&tonic::Status::failed_precondition(
            "not leader"
        )));
        let mut moved = tonic::Status::unavailable("this node does not lead");
        moved
            .metadata_mut()
            .insert(crate::node::LEADER_ID_HEADER, "2".parse().expect("value"));
        assert!(!unanswered(&moved), "a node that says who leads answered");
    }
    #[test]
    fn a_leader_is_in_touch_while_a_majority_answers_and_a_follower_while_a_leader_reaches_it() {
        let contact = GroupContact::default();
        let t0 = contact.started;
        let s = Duration::from_secs;
        let at = |n| t0 + s(n);
        assert_eq!(
            contact.out_of_touch_at(true, &[1], 1, at(99)),
            s(0),
            "alone"
        );
        // Three voters: one peer's answer and this node make a majority.
        contact.answered_at(2, at(10));
        assert_eq!(contact.out_of_touch_at(true, &[1, 2, 3], 1, at(12)), s(2));
        contact.answered_at(3, at(11));
        assert_eq!(contact.out_of_touch_at(true, &[1, 2, 3], 1, at(12)), s(1));
        // Five: two peers needed; 4 and 5 never answered (counted from the start).
        assert_eq!(
            contact.out_of_touch_at(true, &[1, 2, 3, 4, 5], 1, at(12)),
            s(2)
        );
        // A follower: since a leader last reached it, else since the start.
        assert_eq!(contact.out_of_touch_at(false, &[1, 2, 3], 1, at(12)), s(12));
        contact.heard_leader();
        assert!(contact.leader_silent_for() < s(1));
    }
}
