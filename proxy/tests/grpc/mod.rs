//! A gRPC endpoint for the proxy's tests, and a gRPC client that sends through a proxy.
//!
//! The endpoint serves the shape of Fulcrum's own Raft service (any service would do):
//! `ReadIndex` answers with the endpoint's marker, `Propose` echoes its command back, so
//! that a message of any size can be sent both ways. Served by tonic, as a real gRPC
//! server; its answers end with trailers (`grpc-status`) or, for an error, are
//! trailers-only.
//!
//! A second endpoint streams: it serves the status API's `WatchEvents` (a server stream),
//! sending each event when the test gives it one. A third answers streams with streams:
//! it serves the control API's `Subscribe` (both ways), answering each ACK as it comes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fulcrum_proto::control::v1 as control;
use fulcrum_proto::control::v1::proxy_control_client::ProxyControlClient;
use fulcrum_proto::control::v1::proxy_control_server::ProxyControlServer;
use fulcrum_proto::raft::v1::raft_client::RaftClient;
use fulcrum_proto::raft::v1::raft_server::{Raft, RaftServer};
use fulcrum_proto::raft::v1::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    PreVoteResponse, ProposeRequest, ProposeResponse, ReadIndexRequest, ReadIndexResponse,
    VoteRequest, VoteResponse,
};
use fulcrum_proto::status::v1 as status;
use fulcrum_proto::status::v1::status_client::StatusClient;
use fulcrum_proto::status::v1::status_server::StatusServer;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

/// What a test endpoint does with the calls it gets.
#[derive(Debug, Clone, Copy)]
pub enum Behaviour {
    /// Answers, with this marker as `ReadIndex`'s index and `Propose`'s.
    Answer(u64),
    /// Fails every call as UNAVAILABLE (a trailers-only answer).
    Unavailable,
}

/// A running test endpoint.
pub struct GrpcEndpoint {
    pub address: SocketAddr,
    /// Calls it has had.
    pub calls: Arc<AtomicU64>,
    /// The `x-fulcrum-hop` field of the last call, when it had one.
    pub hop: Arc<Mutex<Option<String>>>,
}

struct Service {
    behaviour: Behaviour,
    calls: Arc<AtomicU64>,
    hop: Arc<Mutex<Option<String>>>,
}

impl Service {
    /// Counts a call and notes its hop mark; the marker to answer with, or the failure.
    fn take<T>(&self, request: &Request<T>) -> Result<u64, Status> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let hop = request.metadata().get("x-fulcrum-hop");
        if let Ok(mut seen) = self.hop.lock() {
            *seen = hop.and_then(|v| v.to_str().ok()).map(str::to_string);
        }
        match self.behaviour {
            Behaviour::Answer(marker) => Ok(marker),
            Behaviour::Unavailable => Err(Status::unavailable("draining")),
        }
    }
}

#[tonic::async_trait]
impl Raft for Service {
    async fn append_entries(
        &self,
        _: Request<AppendEntriesRequest>,
    ) -> Result<Response<AppendEntriesResponse>, Status> {
        Err(Status::unimplemented("not a Raft node"))
    }

    async fn vote(&self, _: Request<VoteRequest>) -> Result<Response<VoteResponse>, Status> {
        Err(Status::unimplemented("not a Raft node"))
    }

    async fn pre_vote(&self, _: Request<VoteRequest>) -> Result<Response<PreVoteResponse>, Status> {
        Err(Status::unimplemented("not a Raft node"))
    }

    async fn install_snapshot(
        &self,
        _: Request<InstallSnapshotRequest>,
    ) -> Result<Response<InstallSnapshotResponse>, Status> {
        Err(Status::unimplemented("not a Raft node"))
    }

    async fn propose(
        &self,
        request: Request<ProposeRequest>,
    ) -> Result<Response<ProposeResponse>, Status> {
        let marker = self.take(&request)?;
        Ok(Response::new(ProposeResponse {
            index: marker,
            result: request.into_inner().command,
        }))
    }

    async fn read_index(
        &self,
        request: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexResponse>, Status> {
        let marker = self.take(&request)?;
        Ok(Response::new(ReadIndexResponse { index: marker }))
    }
}

/// Starts an endpoint that behaves as `behaviour`, on a port of its own.
pub async fn grpc_endpoint(behaviour: Behaviour) -> GrpcEndpoint {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let calls = Arc::new(AtomicU64::new(0));
    let hop = Arc::new(Mutex::new(None));
    let service = Service {
        behaviour,
        calls: calls.clone(),
        hop: hop.clone(),
    };
    let server = tonic::transport::Server::builder()
        .add_service(RaftServer::new(service).max_decoding_message_size(8 * 1024 * 1024));
    tokio::spawn(server.serve_with_incoming(TcpIncoming::from(listener)));
    GrpcEndpoint {
        address,
        calls,
        hop,
    }
}

/// A gRPC client of `service` (the `:authority` of its calls) through the outbound
/// listener of the proxy at `proxy`.
pub async fn client_through(proxy: SocketAddr, service: &str) -> RaftClient<Channel> {
    RaftClient::new(channel_through(proxy, service).await)
        .max_decoding_message_size(8 * 1024 * 1024)
}

/// A connection to the outbound listener of the proxy at `proxy` whose calls name
/// `service` as their `:authority`.
async fn channel_through(proxy: SocketAddr, service: &str) -> Channel {
    Endpoint::from_shared(format!("http://{proxy}"))
        .expect("endpoint")
        .origin(format!("http://{service}").parse().expect("origin"))
        .connect()
        .await
        .expect("connect to the proxy")
}

/// The event endpoint's service: its one `WatchEvents` call streams what the test sends.
struct Events {
    given: Mutex<Option<mpsc::Receiver<Result<status::Event, Status>>>>,
}

#[tonic::async_trait]
impl status::status_server::Status for Events {
    async fn get_mesh(
        &self,
        _: Request<status::GetMeshRequest>,
    ) -> Result<Response<status::Mesh>, Status> {
        Err(Status::unimplemented("events only"))
    }

    async fn get_service(
        &self,
        _: Request<status::GetServiceRequest>,
    ) -> Result<Response<status::ServiceStatus>, Status> {
        Err(Status::unimplemented("events only"))
    }

    async fn list_proxies(
        &self,
        _: Request<status::ListProxiesRequest>,
    ) -> Result<Response<status::ListProxiesResponse>, Status> {
        Err(Status::unimplemented("events only"))
    }

    type WatchEventsStream = ReceiverStream<Result<status::Event, Status>>;

    async fn watch_events(
        &self,
        _: Request<status::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let given = self.given.lock().ok().and_then(|mut g| g.take());
        let events = given.ok_or_else(|| Status::resource_exhausted("one watch only"))?;
        Ok(Response::new(ReceiverStream::new(events)))
    }

    async fn get_raft(
        &self,
        _: Request<status::GetRaftRequest>,
    ) -> Result<Response<status::RaftStatus>, Status> {
        Err(Status::unimplemented("events only"))
    }
}

/// Starts an endpoint whose first `WatchEvents` call streams each event sent on the
/// returned sender, as it is sent; the stream ends (OK) when the sender is dropped.
pub async fn event_endpoint() -> (SocketAddr, mpsc::Sender<Result<status::Event, Status>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (send, events) = mpsc::channel(4);
    let service = Events {
        given: Mutex::new(Some(events)),
    };
    let server = tonic::transport::Server::builder().add_service(StatusServer::new(service));
    tokio::spawn(server.serve_with_incoming(TcpIncoming::from(listener)));
    (address, send)
}

/// A watch of the event endpoint's events, through the outbound listener of the proxy at
/// `proxy`, as `service`; with the client, for more calls.
pub async fn watch_through(
    proxy: SocketAddr,
    service: &str,
) -> (StatusClient<Channel>, tonic::Streaming<status::Event>) {
    let mut client = status_client_through(proxy, service).await;
    let stream = client
        .watch_events(status::WatchEventsRequest::default())
        .await
        .expect("the watch is answered")
        .into_inner();
    (client, stream)
}

/// Sends three events through `events` (the event endpoint's), one at a time, and checks
/// that each reaches `stream` (a watch on it) while the stream is still open.
pub async fn check_events_through(
    events: &mpsc::Sender<Result<status::Event, Status>>,
    stream: &mut tonic::Streaming<status::Event>,
) {
    for index in [1, 2, 3] {
        let event = status::Event {
            index,
            ..Default::default()
        };
        events.send(Ok(event)).await.expect("the endpoint streams");
        let received = tokio::time::timeout(std::time::Duration::from_secs(5), stream.message())
            .await
            .expect("each message arrives while the stream is still open")
            .expect("a message, not an error")
            .expect("not the end");
        assert_eq!(received.index, index);
    }
}

/// A status API client of `service` through the outbound listener of the proxy at
/// `proxy`.
pub async fn status_client_through(proxy: SocketAddr, service: &str) -> StatusClient<Channel> {
    StatusClient::new(channel_through(proxy, service).await)
}

/// The echo endpoint's service: `Subscribe` answers each ACK of version `v` with a
/// snapshot of version `10 v` at once, and ends when the client's stream ends. It says
/// each version it is sent on its sender, when it has one.
struct Echo(Option<mpsc::UnboundedSender<u64>>);

#[tonic::async_trait]
impl control::proxy_control_server::ProxyControl for Echo {
    async fn report(
        &self,
        _: Request<tonic::Streaming<control::HealthReport>>,
    ) -> Result<Response<control::ReportSummary>, Status> {
        Err(Status::unimplemented("echo only"))
    }

    type SubscribeStream = ReceiverStream<Result<control::Snapshot, Status>>;

    async fn subscribe(
        &self,
        request: Request<tonic::Streaming<control::SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let mut asked = request.into_inner();
        let (answer, answers) = mpsc::channel(4);
        let noted = self.0.clone();
        tokio::spawn(async move {
            while let Ok(Some(message)) = asked.message().await {
                let Some(control::subscribe_request::Message::Ack(ack)) = message.message else {
                    continue;
                };
                if let Some(noted) = &noted {
                    let _ = noted.send(ack.version);
                }
                let snapshot = control::Snapshot {
                    version: ack.version * 10,
                    ..Default::default()
                };
                if answer.send(Ok(snapshot)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(answers)))
    }
}

/// Starts an endpoint whose `Subscribe` echoes each ACK as it comes (a stream both ways).
pub async fn echo_endpoint() -> SocketAddr {
    serve_echo(Echo(None)).await
}

/// [`echo_endpoint`], also saying on the receiver it returns each version it is sent.
#[allow(
    dead_code,
    reason = "the outbound tests use it; the east-west tests do not"
)]
pub async fn noting_echo_endpoint() -> (SocketAddr, mpsc::UnboundedReceiver<u64>) {
    let (noted, versions) = mpsc::unbounded_channel();
    (serve_echo(Echo(Some(noted))).await, versions)
}

async fn serve_echo(echo: Echo) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let server = tonic::transport::Server::builder().add_service(ProxyControlServer::new(echo));
    tokio::spawn(server.serve_with_incoming(TcpIncoming::from(listener)));
    address
}

/// Whether a call to `service` through the proxy at `proxy` reaches the echo endpoint
/// (which refuses `Report` itself).
pub async fn echo_reachable_through(proxy: SocketAddr, service: &str) -> Result<(), String> {
    let mut client = ProxyControlClient::new(channel_through(proxy, service).await);
    match client.report(tokio_stream::empty()).await {
        Err(status) if status.message() == "echo only" => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

/// Calls `Subscribe` on `service` through the outbound listener of the proxy at `proxy`
/// and checks that each ACK sent is answered while both streams are open (the next is
/// sent only once the answer to the one before has come back), and that the answers end
/// when the ACKs do.
pub async fn check_echo_through(proxy: SocketAddr, service: &str) {
    let mut client = ProxyControlClient::new(channel_through(proxy, service).await);
    let (ask, asked) = mpsc::channel(4);
    let mut answers = client
        .subscribe(ReceiverStream::new(asked))
        .await
        .expect("the subscription is answered")
        .into_inner();
    for version in [1, 2, 3] {
        let ack = control::SubscribeRequest {
            message: Some(control::subscribe_request::Message::Ack(control::Ack {
                version,
            })),
        };
        ask.send(ack).await.expect("the client streams");
        let snapshot = tokio::time::timeout(std::time::Duration::from_secs(5), answers.message())
            .await
            .expect("each answer comes while the client's stream is still open")
            .expect("a message, not an error")
            .expect("not the end");
        assert_eq!(snapshot.version, version * 10);
    }
    drop(ask);
    let end = tokio::time::timeout(std::time::Duration::from_secs(5), answers.message())
        .await
        .expect("the end arrives");
    assert!(matches!(end, Ok(None)), "{end:?}");
}
