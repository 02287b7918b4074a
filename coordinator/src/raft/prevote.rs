//! Pre-vote (the Raft thesis, §9.6; etcd's `PreVote`): a node asks the others whether they
//! would vote for it before it stands.
//!
//! openraft 0.9 has none. A node that stops hearing its group (a partition, a frozen
//! process) stands again and again, each time one term higher, and when it comes back its
//! term deposes a leader that was serving everyone else well: an election, and a pause in
//! commits, that nothing called for. So openraft's own election timer is off
//! (`enable_elect: false`, see [`super::RaftSettings::to_config`]) and [`run`] takes its
//! place: once no leader has reached this node for the lease plus a random election
//! timeout (openraft's own wait), it asks every voter; it stands, through openraft's
//! `elect()`, only when a majority, itself among them, says it would vote for it.
//!
//! A node says yes ([`answer`]) only as a real vote would and without moving its own term:
//! it does not lead, no leader has reached it within the lease (openraft refuses votes
//! within it too), the candidate would stand at a term above its own, and the candidate's
//! log ends no earlier than its own. A node cut off from the others hears no yes, never
//! stands, and comes back at the term it left with.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fulcrum_proto::raft::v1 as pb;
use fulcrum_proto::raft::v1::raft_client::RaftClient;
use openraft::{LogId, ServerState, Vote};
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Request;
use tonic::transport::Channel;

use super::network::{self, TARGET_HEADER};
use super::{RaftSettings, wire};
use crate::node::Node;

/// What a node asked for a pre-vote knows of itself.
#[derive(Debug, Clone)]
pub struct Here {
    /// It is the leader.
    pub leads: bool,
    /// How long since a leader last reached it.
    pub silent_for: Duration,
    /// How long a leader's heartbeat holds off elections: the longest election timeout,
    /// openraft's lease on votes.
    pub lease: Duration,
    /// Its term.
    pub term: u64,
    /// Its last log entry.
    pub last_log_id: Option<LogId<u64>>,
}

/// Whether a node that knows `here` would vote for a candidate standing at `term` with
/// its log ending at `last_log_id`: `Ok`, or why not.
pub fn answer(here: &Here, term: u64, last_log_id: Option<&LogId<u64>>) -> Result<(), String> {
    if here.leads {
        return Err("this node leads".into());
    }
    if here.silent_for < here.lease {
        return Err(format!(
            "a leader reached this node {} ms ago",
            here.silent_for.as_millis()
        ));
    }
    if term <= here.term {
        return Err(format!(
            "term {term} is not above this node's term {}",
            here.term
        ));
    }
    if last_log_id < here.last_log_id.as_ref() {
        let ends = |l: Option<&LogId<u64>>| l.map_or("nothing".to_string(), ToString::to_string);
        return Err(format!(
            "the candidate's log ends at {}, before this node's at {}",
            ends(last_log_id),
            ends(here.last_log_id.as_ref())
        ));
    }
    Ok(())
}

/// How long a follower waits without a leader before it asks: the lease, then a random
/// point of the election timeout range, as openraft's own timer waits.
fn patience(settings: &RaftSettings) -> Duration {
    let spread = settings.election_max.saturating_sub(settings.election_min);
    let share = (rand::random::<u32>() % 1_000) as f64 / 1_000.0;
    settings.election_max + settings.election_min + spread.mul_f64(share)
}

/// The election timer of `node`, in openraft's stead, until `shutdown`: asks for
/// pre-votes when its leader has been silent too long, and stands when a majority would
/// vote for it.
pub async fn run(node: Arc<Node>, mut shutdown: watch::Receiver<bool>) {
    let settings = node.settings;
    // How long until the next look: as long as the wait has left to run, but never
    // longer than the shortest election timeout (the leader may go quiet meanwhile).
    let mut next = settings.election_min;
    let mut wait = patience(&settings);
    // When this node last asked, so that it asks again only after another wait.
    let mut asked: Option<Instant> = None;
    // A client per peer address, kept: a failover should not wait for new connections.
    let mut clients: BTreeMap<String, RaftClient<Channel>> = BTreeMap::new();
    loop {
        tokio::select! {
            () = tokio::time::sleep(next) => {}
            _ = shutdown.changed() => return,
        }
        next = settings.election_min;
        let (state, term, voters) = {
            let metrics = node.raft.metrics();
            let metrics = metrics.borrow();
            let voters: Vec<u64> = metrics.membership_config.membership().voter_ids().collect();
            (metrics.state, metrics.current_term, voters)
        };
        if matches!(state, ServerState::Leader | ServerState::Shutdown)
            || !voters.contains(&node.id)
        {
            continue;
        }
        // The only voter wins at once, as openraft would have it.
        if voters.len() == 1 {
            if state != ServerState::Candidate {
                let _ = node.raft.trigger().elect().await;
            }
            continue;
        }
        let quiet = node.contact.leader_silent_for();
        let quiet = asked.map_or(quiet, |at| quiet.min(at.elapsed()));
        if quiet < wait {
            next = (wait - quiet).clamp(Duration::from_millis(1), settings.election_min);
            continue;
        }
        // Said once a silence: a node cut off for an hour asks thousands of times.
        let silent_for = node.contact.leader_silent_for();
        if asked.is_none_or(|at| silent_for < at.elapsed()) {
            tracing::info!(
                term = term + 1,
                leader_silent_ms = silent_for.as_millis() as u64,
                "no leader heard for the election timeout: asking for pre-votes"
            );
        }
        asked = Some(Instant::now());
        wait = patience(&settings);
        if !ask(&node, term + 1, &voters, &mut clients).await {
            node.metrics.pre_votes_lost.inc();
            continue;
        }
        // While it asked, this node may have voted for another candidate at that term (two
        // nodes asking at once each say yes to the other), or heard a new leader: standing
        // now would depose the one just elected.
        let term_now = node.raft.metrics().borrow().current_term;
        if term_now != term || node.contact.leader_silent_for() < settings.election_max {
            node.metrics.pre_votes_lost.inc();
            continue;
        }
        node.metrics.pre_votes_won.inc();
        tracing::info!(
            term = term + 1,
            "a majority would vote for this node: standing"
        );
        let _ = node.raft.trigger().elect().await;
    }
}

/// Whether a majority of `voters` (this node among them) would vote for this node at
/// `term`; each is given the shortest election timeout to answer. `clients` keeps a
/// client per address.
async fn ask(
    node: &Node,
    term: u64,
    voters: &[u64],
    clients: &mut BTreeMap<String, RaftClient<Channel>>,
) -> bool {
    let request = pb::VoteRequest {
        vote: Some(wire::vote(&Vote::new(term, node.id))),
        last_log_id: node.last_log.get().as_ref().map(wire::log_id),
    };
    let limit = node.settings.election_min;
    let mut peers = Vec::new();
    for peer in voters.iter().copied().filter(|v| *v != node.id) {
        let Some(address) = node.address_of(peer) else {
            continue;
        };
        let client = match clients.get(&address) {
            Some(client) => client.clone(),
            None => match network::client(&node.dialer, &address) {
                Ok(client) => clients.entry(address).or_insert(client).clone(),
                Err(_) => continue,
            },
        };
        peers.push((peer, client));
    }
    let asks = peers.into_iter().map(|(peer, mut client)| async move {
        let mut request = Request::new(request);
        let target = peer.to_string().parse().map_err(|_| "no header")?;
        request.metadata_mut().insert(TARGET_HEADER, target);
        match tokio::time::timeout(limit, client.pre_vote(request)).await {
            Ok(Ok(answer)) => Ok((peer, answer.into_inner())),
            Ok(Err(_)) | Err(_) => Err("no answer"),
        }
    });
    let mut yes = 1;
    for answered in futures::future::join_all(asks).await {
        match answered {
            Ok((_, answer)) if answer.granted => yes += 1,
            Ok((peer, answer)) => {
                tracing::debug!(peer, term, reason = %answer.reason, "pre-vote refused");
            }
            Err(_) => {}
        }
    }
    yes * 2 > voters.len()
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    fn log(term: u64, index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn follower() -> Here {
        Here {
            leads: false,
            silent_for: Duration::from_millis(400),
            lease: Duration::from_millis(300),
            term: 4,
            last_log_id: Some(log(4, 20)),
        }
    }

    #[test]
    fn a_follower_whose_leader_is_silent_would_vote_for_an_up_to_date_candidate() {
        assert_eq!(answer(&follower(), 5, Some(&log(4, 20))), Ok(()));
        assert_eq!(answer(&follower(), 5, Some(&log(4, 25))), Ok(()));
        assert_eq!(answer(&follower(), 9, Some(&log(5, 3))), Ok(()));
    }

    #[test]
    fn a_pre_vote_is_refused_as_a_vote_would_be() {
        let leader = Here {
            leads: true,
            ..follower()
        };
        assert!(answer(&leader, 5, Some(&log(4, 20))).is_err());
        let heard = Here {
            silent_for: Duration::from_millis(100),
            ..follower()
        };
        let why = answer(&heard, 5, Some(&log(4, 20))).unwrap_err();
        assert!(why.contains("100 ms ago"), "{why}");
        let why = answer(&follower(), 4, Some(&log(4, 20))).unwrap_err();
        assert!(why.contains("not above"), "{why}");
        let why = answer(&follower(), 5, Some(&log(4, 19))).unwrap_err();
        assert!(why.contains("before this node's"), "{why}");
        assert!(answer(&follower(), 5, Some(&log(3, 90))).is_err());
        assert!(answer(&follower(), 5, None).is_err());
    }

    #[test]
    fn a_follower_waits_the_lease_and_an_election_timeout_before_it_asks() {
        let settings = RaftSettings::default();
        for _ in 0..100 {
            let wait = patience(&settings);
            assert!(wait >= settings.election_max + settings.election_min);
            assert!(wait <= settings.election_max * 2);
        }
    }
}
