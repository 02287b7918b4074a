//! A three-node coordinator group in-process: election, failover without losing
//! committed config, restart from the store, forwarding, catch-up by snapshot.

mod support;

use std::time::Duration;

use fulcrum_coordinator::app::{Bootstrap, Coordinator};
use fulcrum_proto::status::v1 as pb;
use fulcrum_proto::status::v1::admin_client::AdminClient;
use fulcrum_proto::status::v1::status_client::StatusClient;
use support::{Group, MESH, eventually};

fn destination_rule(name: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: shop}}
spec:
  host: api.shop.svc.cluster.local
  trafficPolicy:
    outlierDetection: {{consecutive5xxErrors: 5}}
"#
    )
}

async fn apply(group: &Group, node: u64, text: &str) -> Result<pb::ApplyResponse, tonic::Status> {
    AdminClient::new(group.admin(node))
        .apply(pb::ApplyRequest {
            documents: vec![pb::Document {
                source: "test.yaml".into(),
                text: text.into(),
            }],
            dry_run: false,
        })
        .await
        .map(|r| r.into_inner())
}

/// The DestinationRules node `id` holds.
fn rules_on(group: &Group, id: u64) -> Vec<String> {
    group.nodes[&id].node().state.read(|a| {
        a.mesh
            .objects()
            .filter(|(s, _)| s.key.kind == "DestinationRule")
            .map(|(s, _)| s.key.name.clone())
            .collect()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_one_leader() {
    let group = Group::start(3).await;
    let leader = group.leader().await;
    assert!((1..=3).contains(&leader));
    let raft = StatusClient::new(group.admin(1))
        .get_raft(pb::GetRaftRequest {})
        .await
        .expect("get raft")
        .into_inner();
    assert_eq!(raft.leader_id, leader);
    assert_eq!(raft.members.iter().filter(|m| m.voter).count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_to_a_follower_is_forwarded_and_reaches_every_node() {
    let group = Group::start(3).await;
    let leader = group.leader().await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let response = apply(
        &group,
        follower,
        &format!("{MESH}---{}", destination_rule("r1")),
    )
    .await
    .expect("apply through a follower");
    assert!(response.index > 0);
    for id in 1..=3 {
        eventually(Duration::from_secs(5), "the rule on every node", || async {
            let rules = rules_on(&group, id);
            if rules == ["r1"] {
                Ok(())
            } else {
                Err(format!("node {id}: {rules:?}"))
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_elects_another_and_loses_nothing_committed() {
    let mut group = Group::start(3).await;
    apply(&group, 1, MESH).await.expect("mesh");
    for i in 0..5 {
        apply(&group, 1 + i % 3, &destination_rule(&format!("before-{i}")))
            .await
            .expect("apply before");
    }
    let old = group.leader().await;
    group.stop(old).await;
    let new = group.leader().await;
    assert_ne!(new, old);
    let survivor = *group.nodes.keys().next().expect("a node");
    apply(&group, survivor, &destination_rule("after"))
        .await
        .expect("writes continue under the new leader");
    let mut expected: Vec<String> = (0..5).map(|i| format!("before-{i}")).collect();
    expected.push("after".into());
    expected.sort();
    for id in group.nodes.keys().copied().collect::<Vec<_>>() {
        eventually(Duration::from_secs(5), "every committed rule", || async {
            let mut rules = rules_on(&group, id);
            rules.sort();
            if rules == expected {
                Ok(())
            } else {
                Err(format!("node {id}: {rules:?}"))
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_recovers_from_its_file_and_catches_up() {
    let mut group = Group::start(3).await;
    apply(&group, 1, MESH).await.expect("mesh");
    apply(&group, 1, &destination_rule("early"))
        .await
        .expect("early");
    let leader = group.leader().await;
    let victim = (1..=3).find(|id| *id != leader).expect("a follower");
    eventually(
        Duration::from_secs(5),
        "the victim has the early rule",
        || async {
            let rules = rules_on(&group, victim);
            if rules == ["early"] {
                Ok(())
            } else {
                Err(format!("{rules:?}"))
            }
        },
    )
    .await;
    group.stop(victim).await;
    // Enough entries while it is away that the others snapshot and compact.
    for i in 0..60 {
        apply(&group, leader, &destination_rule(&format!("late-{i}")))
            .await
            .expect("apply while a node is down");
    }
    group.restart(victim).await;
    eventually(
        Duration::from_secs(10),
        "the restarted node has every rule",
        || async {
            let rules = rules_on(&group, victim);
            if rules.len() == 61 {
                Ok(())
            } else {
                Err(format!("{} rules", rules.len()))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_joins_and_catches_up_by_snapshot() {
    let mut group = Group::start(3).await;
    apply(&group, 1, MESH).await.expect("mesh");
    for i in 0..60 {
        apply(&group, 1, &destination_rule(&format!("r{i}")))
            .await
            .expect("apply");
    }
    let (listener, address) = support::reserve().await;
    let mut c = support::config(group.dir.path(), 4, &address);
    c.bootstrap = Bootstrap::Join(group.addresses[&1].clone());
    let joined = Coordinator::start_on(c, listener)
        .await
        .expect("node 4 starts");
    group.addresses.insert(4, address);
    group.nodes.insert(4, joined);
    eventually(
        Duration::from_secs(15),
        "node 4 is a voter with every rule",
        || async {
            let voters: Vec<u64> = group.nodes[&4]
                .node()
                .raft_metrics()
                .borrow()
                .membership_config
                .membership()
                .voter_ids()
                .collect();
            let rules = rules_on(&group, 4).len();
            if voters.contains(&4) && rules == 60 {
                Ok(())
            } else {
                Err(format!("voters {voters:?}, {rules} rules"))
            }
        },
    )
    .await;
    let snapshot = group.nodes[&4].node().raft_metrics().borrow().snapshot;
    assert!(snapshot.is_some(), "node 4 caught up from a snapshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_cannot_be_reused_by_another_node_id() {
    let mut group = Group::start(3).await;
    group.stop(3).await;
    let (listener, address) = support::reserve().await;
    let mut c = support::config(group.dir.path(), 2, &address);
    c.data_dir = group.dir.path().join("node-3");
    let err = Coordinator::start_on(c, listener)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("belongs to node 3"), "{err}");
}

/// An address list that gives node 3 node 1's address: node 1 is sent the calls meant
/// for node 3. It must refuse them rather than answer (or vote) for node 3, and, when it
/// leads, rather than take its own heartbeats for another leader's, which stops Raft.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_raft_calls_meant_for_another() {
    let dir = tempfile::tempdir().expect("tempdir");
    support::make_certs(dir.path(), 3);
    let (first, a1) = support::reserve().await;
    let (second, a2) = support::reserve().await;
    let members = [(1, a1.clone()), (2, a2), (3, a1)].into();
    let group = Group::start_on(dir, [(1, first), (2, second)].into(), members).await;
    let leader = group.leader().await;
    apply(&group, leader, MESH)
        .await
        .expect("committed by 1 and 2");
    eventually(
        Duration::from_secs(10),
        "node 1 refuses calls meant for node 3",
        || async {
            let refused = group.nodes[&1].node().metrics.raft_calls_misaddressed.get();
            if refused >= 3 {
                Ok(())
            } else {
                Err(format!("{refused} refused"))
            }
        },
    )
    .await;
    for (id, node) in &group.nodes {
        let running = node.node().raft_metrics().borrow().running_state.clone();
        assert!(running.is_ok(), "Raft on node {id}: {running:?}");
    }
    assert_eq!(group.leader().await, leader, "the leader kept leading");
    let matched = group.nodes[&leader]
        .node()
        .raft_metrics()
        .borrow()
        .replication
        .clone()
        .expect("the leader replicates");
    assert_eq!(matched.get(&3), Some(&None), "nothing reached node 3");
}

/// A node left alone (the others stopped) asks for pre-votes and, answered by no one,
/// never stands: its term stays where it was, so that when the others come back it
/// cannot depose whoever they elect. Without pre-vote it stood every election timeout,
/// a term higher each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_left_alone_never_stands_and_keeps_its_term() {
    let mut group = Group::start(3).await;
    let leader = group.leader().await;
    let alone = (1..=3).find(|id| *id != leader).expect("a follower");
    let node = group.nodes[&alone].node().clone();
    // The other follower first: with the leader stopped first, the two left would rightly
    // elect one of themselves before the second stop.
    let other = (1..=3)
        .find(|id| *id != alone && *id != leader)
        .expect("a follower");
    group.stop(other).await;
    group.stop(leader).await;
    // Alone from here: only the node itself could move its term.
    let term = node.raft.metrics().borrow().current_term;
    let (won, lost) = (
        node.metrics.pre_votes_won.get(),
        node.metrics.pre_votes_lost.get(),
    );
    // Three rounds of asking, each after the lease and an election timeout (0.45-0.6 s).
    eventually(Duration::from_secs(10), "three pre-votes lost", || async {
        match node.metrics.pre_votes_lost.get() - lost {
            more if more >= 3 => Ok(()),
            more => Err(format!("{more} lost")),
        }
    })
    .await;
    assert_eq!(node.metrics.pre_votes_won.get(), won, "it never stood");
    assert_eq!(
        node.raft.metrics().borrow().current_term,
        term,
        "the term of a node that never stood"
    );
    // The others back: a leader again, which the node follows at the new term.
    for other in (1..=3).filter(|id| *id != alone) {
        group.restart(other).await;
    }
    let leader = group.leader().await;
    eventually(Duration::from_secs(10), "the node follows", || async {
        let metrics = node.raft.metrics().borrow().clone();
        match metrics.current_leader {
            Some(l) if l == leader => Ok(()),
            other => Err(format!("leader {other:?}, term {}", metrics.current_term)),
        }
    })
    .await;
}
