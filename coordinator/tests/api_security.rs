//! Who may call what, and what bad input gets: wrong identities are refused with the
//! right codes, garbage protobuf is InvalidArgument (and nothing breaks), a proxy cannot
//! speak for another cluster, and a subscriber never goes backwards.

mod support;

use std::time::Duration;

use bytes::{Buf, BufMut};
use fulcrum_coordinator::raft::network::{TARGET_HEADER, WRONG_NODE_CODE};
use fulcrum_coordinator::security::Role;
use fulcrum_coordinator::security::certs::{self, Credentials, InitPlan};
use fulcrum_coordinator::transport::Dialer;
use fulcrum_proto::common::v1::Locality;
use fulcrum_proto::control::v1 as control;
use fulcrum_proto::control::v1::proxy_control_client::ProxyControlClient;
use fulcrum_proto::raft::v1 as raft;
use fulcrum_proto::raft::v1::raft_client::RaftClient;
use fulcrum_proto::status::v1 as pb;
use fulcrum_proto::status::v1::admin_client::AdminClient;
use fulcrum_proto::status::v1::status_client::StatusClient;
use prost::Message;
use support::{Group, MESH, eventually};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

/// Sends raw bytes as a gRPC message body.
#[derive(Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

async fn raw_call(
    channel: Channel,
    path: &'static str,
    body: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    grpc.unary(
        tonic::Request::new(body),
        http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(|r| r.into_inner())
}

fn apply_request(text: &str) -> pb::ApplyRequest {
    pb::ApplyRequest {
        documents: vec![pb::Document {
            source: "test.yaml".into(),
            text: text.into(),
        }],
        dry_run: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_identity_gets_only_its_own_rights() {
    let group = Group::start(3).await;
    let east = Role::Proxy("east".into());
    // A proxy cannot change the mesh.
    let denied = AdminClient::new(group.channel_as(1, east.clone()))
        .apply(apply_request(MESH))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    // An admin cannot speak Raft, nor ask for a pre-vote.
    let denied = RaftClient::new(group.admin(1))
        .vote(raft::VoteRequest::default())
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    let denied = RaftClient::new(group.admin(1))
        .pre_vote(raft::VoteRequest::default())
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    // Anyone of the trust domain may read.
    StatusClient::new(group.channel_as(1, east))
        .get_mesh(pb::GetMeshRequest::default())
        .await
        .expect("a proxy may read status");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_cannot_connect() {
    let group = Group::start(1).await;
    let other = tempfile::tempdir().expect("tempdir");
    certs::init(
        &InitPlan {
            trust_domain: support::TRUST_DOMAIN.into(),
            coordinators: 1,
            clusters: vec![],
            admins: vec!["ops".into()],
            valid_days: 1,
        },
        other.path(),
    )
    .expect("another CA");
    let stranger = Credentials::first_admin(other.path()).expect("stranger");
    let channel = Dialer::new(Some(stranger.coordinator_client_tls()))
        .channel(&group.addresses[&1])
        .expect("channel");
    let refused = StatusClient::new(channel)
        .get_mesh(pb::GetMeshRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
}

/// A connection that never finishes its TLS handshake, sending nothing or a byte now and
/// then, is closed once the handshake timeout passes rather than held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_finishes_its_handshake_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let group = Group::start(1).await;
    let address = group.addresses[&1].clone();
    // Reads until the server closes, writing `trickle` a byte at a time meanwhile; how
    // long that took, or `None` if still open after three handshake timeouts.
    let until_closed = |trickle: &'static [u8]| {
        let address = address.clone();
        async move {
            // Timed from before the connect: the server may accept (and start its timer)
            // before this task sees the connect complete.
            let started = std::time::Instant::now();
            let mut stream = tokio::net::TcpStream::connect(address)
                .await
                .expect("connect");
            let mut sent = 0;
            while started.elapsed() < certs::HANDSHAKE_TIMEOUT * 3 {
                let mut buf = [0u8; 512];
                let wait = Duration::from_millis(200);
                match tokio::time::timeout(wait, stream.read(&mut buf)).await {
                    Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
                    Ok(Ok(_)) => {}
                    Err(_) if sent < trickle.len() => {
                        if stream.write_all(&trickle[sent..=sent]).await.is_err() {
                            return Some(started.elapsed());
                        }
                        sent += 1;
                    }
                    Err(_) => {}
                }
            }
            None
        }
    };
    // The start of a ClientHello record, long enough to outlast the timeout a byte at a
    // time.
    let mut hello = vec![0x16, 0x03, 0x01, 0x02, 0x00];
    hello.resize(200, 0x01);
    let hello: &'static [u8] = hello.leak();
    let (silent, trickled) = tokio::join!(until_closed(b""), until_closed(hello));
    for (what, took) in [("silent", silent), ("trickled", trickled)] {
        let took = took.unwrap_or_else(|| panic!("a {what} connection is still open"));
        assert!(
            took >= certs::HANDSHAKE_TIMEOUT,
            "{what}: closed after {took:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_truncated_protobuf_are_invalid_argument() {
    let group = Group::start(1).await;
    let garbage = raw_call(
        group.admin(1),
        "/fulcrum.status.v1.Admin/Apply",
        vec![0xff; 64],
    )
    .await
    .unwrap_err();
    assert_eq!(garbage.code(), tonic::Code::InvalidArgument, "{garbage:?}");
    assert!(garbage.message().contains("ApplyRequest"), "{garbage:?}");

    let whole = apply_request(MESH).encode_to_vec();
    let truncated = raw_call(
        group.admin(1),
        "/fulcrum.status.v1.Admin/Apply",
        whole[..whole.len() / 2].to_vec(),
    )
    .await
    .unwrap_err();
    assert_eq!(
        truncated.code(),
        tonic::Code::InvalidArgument,
        "{truncated:?}"
    );

    let raft_garbage = raw_call(
        group.channel_as(1, Role::Coordinator(2)),
        "/fulcrum.raft.v1.Raft/AppendEntries",
        vec![0x0a, 0x05, 0x01],
    )
    .await
    .unwrap_err();
    assert_eq!(
        raft_garbage.code(),
        tonic::Code::InvalidArgument,
        "{raft_garbage:?}"
    );

    // The node is still fine.
    AdminClient::new(group.admin(1))
        .apply(apply_request(MESH))
        .await
        .expect("a good request after bad ones");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_well_formed_raft_message_with_wrong_content_is_invalid_argument() {
    let group = Group::start(1).await;
    let request = raft::AppendEntriesRequest {
        vote: None,
        ..Default::default()
    };
    let refused = RaftClient::new(group.channel_as(1, Role::Coordinator(2)))
        .append_entries(meant_for(1, request))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("vote"), "{refused:?}");
}

/// A Raft call addressed to node `target`, as a node's Raft client sends it.
fn meant_for<T>(target: u64, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert(TARGET_HEADER, target.to_string().parse().expect("metadata"));
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raft_call_for_another_node_or_for_none_is_refused_before_raft_sees_it() {
    let group = Group::start(1).await;
    let mut raft = RaftClient::new(group.channel_as(1, Role::Coordinator(2)));
    let elsewhere = raft
        .vote(meant_for(3, raft::VoteRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(elsewhere.code(), WRONG_NODE_CODE, "{elsewhere:?}");
    assert!(
        elsewhere.message().contains("this is node 1, not node 3"),
        "{elsewhere:?}"
    );
    let unnamed = raft
        .append_entries(raft::AppendEntriesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(unnamed.code(), tonic::Code::InvalidArgument, "{unnamed:?}");
    assert!(unnamed.message().contains(TARGET_HEADER), "{unnamed:?}");
    let garbled = raft
        .install_snapshot({
            let mut r = tonic::Request::new(raft::InstallSnapshotRequest::default());
            r.metadata_mut()
                .insert(TARGET_HEADER, "one".parse().expect("metadata"));
            r
        })
        .await
        .unwrap_err();
    assert_eq!(garbled.code(), tonic::Code::InvalidArgument, "{garbled:?}");
    assert!(garbled.message().contains("not a node id"), "{garbled:?}");
    let refused = group.nodes[&1].node().metrics.raft_calls_misaddressed.get();
    assert_eq!(refused, 1, "only the call for another node is counted");
}

fn report(cluster: &str) -> control::HealthReport {
    control::HealthReport {
        cluster: cluster.into(),
        proxy_id: "p1".into(),
        locality: Some(Locality {
            region: "us-east".into(),
            zone: "us-east-1a".into(),
            subzone: String::new(),
        }),
        interval_ms: 1_000,
        sequence: 1,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_for_another_cluster_is_permission_denied() {
    let group = Group::start(1).await;
    let mut client = ProxyControlClient::new(group.channel_as(1, Role::Proxy("east".into())));
    let denied = client
        .report(tokio_stream::iter(vec![report("west")]))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    let summary = client
        .report(tokio_stream::iter(vec![report("east")]))
        .await
        .expect("its own cluster")
        .into_inner();
    assert_eq!(summary.accepted, 1);
}

/// Subscribes to `node` as the east proxy holding `held`; returns the stream.
async fn subscribe(
    group: &Group,
    node: u64,
    held: u64,
) -> (
    tokio::sync::mpsc::Sender<control::SubscribeRequest>,
    tonic::Streaming<control::Snapshot>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(control::SubscribeRequest {
        message: Some(control::subscribe_request::Message::Hello(control::Hello {
            cluster: "east".into(),
            locality: Some(Locality {
                region: "us-east".into(),
                zone: "us-east-1a".into(),
                subzone: String::new(),
            }),
            proxy_id: "east-1".into(),
            last_version: held,
        })),
    })
    .await
    .expect("hello");
    let stream = ProxyControlClient::new(group.channel_as(node, Role::Proxy("east".into())))
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("subscribe")
        .into_inner();
    (tx, stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_moved_between_nodes_never_goes_backwards() {
    let group = Group::start(3).await;
    AdminClient::new(group.admin(1))
        .apply(apply_request(MESH))
        .await
        .expect("mesh");
    let (ack_a, mut from_a) = subscribe(&group, 1, 0).await;
    let first = tokio::time::timeout(Duration::from_secs(5), from_a.message())
        .await
        .expect("a snapshot in time")
        .expect("stream ok")
        .expect("a snapshot");
    assert!(first.version > 0);
    assert_eq!(first.weights.len(), 1, "one row: api from us-east");
    ack_a
        .send(control::SubscribeRequest {
            message: Some(control::subscribe_request::Message::Ack(control::Ack {
                version: first.version,
            })),
        })
        .await
        .expect("ack");
    // The ACK shows in ListProxies as SYNCED.
    eventually(
        Duration::from_secs(5),
        "the proxy listed SYNCED",
        || async {
            let list = StatusClient::new(group.admin(2))
                .list_proxies(pb::ListProxiesRequest::default())
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            match list.proxies.first() {
                Some(p)
                    if p.state == pb::SyncState::Synced as i32
                        && p.acked_version >= first.version =>
                {
                    Ok(())
                }
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    drop(from_a);
    drop(ack_a);

    // Moved to another node, holding the version it had: nothing at or below it comes.
    let (_ack_b, mut from_b) = subscribe(&group, 2, first.version).await;
    AdminClient::new(group.admin(3))
        .apply(apply_request(&format!(
            "{MESH}---\napiVersion: fulcrum.dev/v1alpha1\nkind: MeshCluster\nmetadata: {{name: north}}\nspec: {{locality: eu-north/eu-north-1a}}\n"
        )))
        .await
        .expect("a change");
    let next = tokio::time::timeout(Duration::from_secs(5), from_b.message())
        .await
        .expect("a snapshot in time")
        .expect("stream ok")
        .expect("a snapshot");
    assert!(
        next.version > first.version,
        "went from {} to {}",
        first.version,
        next.version
    );
}
