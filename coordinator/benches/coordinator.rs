//! Coordinator figures, printed (not asserted): digest entries committed per second by a
//! three-node group, push latency from a change to 1,000 subscribed streams, leader
//! failover time (kill -9 the leader until a new leader commits a write; etcd measured the
//! same way in the same run when `etcd` is installed), and the resident memory of a node
//! holding state for 100 clusters x 1,000 services.
//!
//! ```sh
//! cargo bench -p fulcrum-coordinator --bench coordinator            # everything
//! cargo bench -p fulcrum-coordinator --bench coordinator -- failover  # one section
//! ```
//!
//! Everything runs on loopback with real gRPC, real mTLS and real store files; the
//! failover and memory sections run the real `fulcrum-coordinator` binary.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fulcrum_coordinator::app::{Bootstrap, Coordinator, CoordinatorConfig, Security};
use fulcrum_coordinator::mesh::Change;
use fulcrum_coordinator::security::certs::{self, InitPlan};
use fulcrum_coordinator::security::{Credentials, Role};
use fulcrum_coordinator::transport::Dialer;
use fulcrum_policy::Locality;
use fulcrum_policy::engine::HealthDigest;
use fulcrum_policy::engine::digest::{InventorySample, TrafficSample};
use fulcrum_policy::engine::state::Inventory;
use fulcrum_policy::engine::window::Counters;
use fulcrum_proto::common::v1 as common;
use fulcrum_proto::control::v1 as control;
use fulcrum_proto::control::v1::proxy_control_client::ProxyControlClient;
use fulcrum_proto::status::v1 as pb;
use fulcrum_proto::status::v1::admin_client::AdminClient;
use fulcrum_proto::status::v1::status_client::StatusClient;
use hdrhistogram::Histogram;
use tonic::transport::Channel;

/// The allocator the `fulcrum-coordinator` binary ships with, so that the in-process
/// figures measure what a deployed node does (glibc's arenas serialize the many small
/// allocations of decoding and applying digests).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const COORDINATOR: &str = env!("CARGO_BIN_EXE_fulcrum-coordinator");

/// `n` distinct free loopback addresses for processes to bind: each is held until all
/// are chosen, so no two are the same port.
fn free_addresses(n: usize) -> Vec<String> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("addr").to_string())
        .collect()
}

fn make_certs(dir: &Path, coordinators: u64, clusters: &[String]) -> PathBuf {
    let out = dir.join("certs");
    certs::init(
        &InitPlan {
            trust_domain: "bench.fulcrum".into(),
            coordinators,
            clusters: clusters.to_vec(),
            admins: vec!["bench".into()],
            valid_days: 1,
        },
        &out,
    )
    .expect("certs");
    out
}

fn mesh_yaml(clusters: usize, services: usize, per_service: usize) -> String {
    let mut out = String::new();
    for c in 0..clusters {
        out.push_str(&format!(
            "---\napiVersion: fulcrum.dev/v1alpha1\nkind: MeshCluster\nmetadata: {{name: c{c}}}\nspec: {{locality: r{}/z{c}}}\n",
            c % 10
        ));
    }
    for s in 0..services {
        out.push_str(&format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: s{s}, namespace: bench}}\nspec:\n  hosts: [s{s}.bench.svc.cluster.local]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  endpoints:\n"
        ));
        for k in 0..per_service {
            let c = (s + k * 7) % clusters;
            out.push_str(&format!(
                "  - {{address: 10.{}.{}.{}, locality: r{}/z{c}, labels: {{topology.istio.io/cluster: c{c}}}}}\n",
                c,
                s / 250,
                s % 250,
                c % 10
            ));
        }
    }
    out
}

struct Group {
    _dir: tempfile::TempDir,
    certs: PathBuf,
    nodes: BTreeMap<u64, Coordinator>,
}

async fn start_group(n: u64) -> Group {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = make_certs(dir.path(), n, &["c0".into(), "c1".into(), "c2".into()]);
    let mut sockets = BTreeMap::new();
    for id in 1..=n {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        sockets.insert(id, listener);
    }
    let addresses: BTreeMap<u64, String> = sockets
        .iter()
        .map(|(id, l)| (*id, l.local_addr().expect("addr").to_string()))
        .collect();
    let mut nodes = BTreeMap::new();
    for (id, listener) in sockets {
        let mut c = CoordinatorConfig::new(
            id,
            addresses[&id].parse().expect("address"),
            dir.path().join(format!("node-{id}")),
            Security::Certificates(certs.clone()),
        );
        c.bootstrap = Bootstrap::Members(addresses.clone());
        let node = Coordinator::start_on(c, listener).await.expect("starts");
        nodes.insert(id, node);
    }
    let group = Group {
        _dir: dir,
        certs,
        nodes,
    };
    while leader(&group).is_none() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    group
}

fn leader(group: &Group) -> Option<u64> {
    let l = group.nodes.values().next()?.node().leader()?.0;
    group
        .nodes
        .values()
        .all(|n| n.node().leader().map(|x| x.0) == Some(l))
        .then_some(l)
}

fn channel(certs: &Path, role: Role, address: &str) -> Channel {
    let creds = Credentials::load(certs, &role).expect("credentials");
    Dialer::new(Some(creds.coordinator_client_tls()))
        .channel(address)
        .expect("channel")
}

fn admin_channel(certs: &Path, address: &str) -> Channel {
    channel(certs, Role::Admin("bench".into()), address)
}

async fn apply(channel: Channel, text: String) -> Result<u64, tonic::Status> {
    AdminClient::new(channel)
        .apply(pb::ApplyRequest {
            documents: vec![pb::Document {
                source: "bench.yaml".into(),
                text,
            }],
            dry_run: false,
        })
        .await
        .map(|r| r.into_inner().index)
}

fn sample_digest(i: u64) -> HealthDigest {
    let locality = |c: u64| Locality::new(&format!("r{c}"), &format!("z{c}"), "");
    let mut digest = HealthDigest::default();
    for c in 0..3u64 {
        digest.reporters.push(format!("c{c}"));
        for s in 0..2u64 {
            digest.traffic.push(TrafficSample {
                service: format!("s{s}.bench.svc.cluster.local"),
                source_cluster: format!("c{c}"),
                locality: locality((c + s) % 3),
                counters: Counters {
                    requests: 100 + i % 7,
                    http_5xx: i % 3,
                    gateway_errors: 0,
                    connect_failures: 0,
                },
            });
            digest.inventory.push(InventorySample {
                cluster: format!("c{c}"),
                service: format!("s{s}.bench.svc.cluster.local"),
                locality: locality(c),
                inventory: Inventory {
                    total: 2,
                    ready: 2,
                    ejected: 0,
                },
            });
        }
    }
    digest
}

/// Digest entries committed per second through the leader, with many in flight.
async fn digest_throughput() {
    let group = start_group(3).await;
    let l = leader(&group).expect("leader");
    let address = group.nodes[&l].address().to_string();
    apply(admin_channel(&group.certs, &address), mesh_yaml(3, 2, 3))
        .await
        .expect("mesh");
    let node = group.nodes[&l].node().clone();
    for in_flight in [64usize, 256, 1024] {
        let committed = Arc::new(AtomicU64::new(0));
        let stop_at = Instant::now() + Duration::from_secs(5);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..in_flight {
            let node = node.clone();
            let committed = committed.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = t as u64;
                while Instant::now() < stop_at {
                    if node
                        .propose(Change::Digest {
                            digest: sample_digest(i),
                        })
                        .await
                        .is_ok()
                    {
                        committed.fetch_add(1, Ordering::Relaxed);
                    }
                    i += in_flight as u64;
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        let secs = start.elapsed().as_secs_f64();
        let n = committed.load(Ordering::Relaxed);
        println!(
            "digest throughput: {:>7.0} entries/s committed ({n} in {secs:.1}s, {in_flight} in flight, 3 nodes, fsync per append)",
            n as f64 / secs
        );
    }
    for (_, n) in group.nodes {
        n.stop().await;
    }
}

/// From sending a change to each of 1,000 subscribed streams receiving it.
async fn push_fanout() {
    let group = start_group(3).await;
    let l = leader(&group).expect("leader");
    let addresses: Vec<String> = group
        .nodes
        .values()
        .map(|n| n.address().to_string())
        .collect();
    apply(
        admin_channel(&group.certs, &addresses[0]),
        mesh_yaml(3, 2, 3),
    )
    .await
    .expect("mesh");
    let streams = 1_000usize;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let mut keep = Vec::new();
    // One HTTP/2 connection per node per 100 streams, as a few proxy replicas would.
    let mut channels = Vec::new();
    for i in 0..streams / 100 {
        let c = i % 3;
        channels.push((
            c,
            channel(&group.certs, Role::Proxy(format!("c{c}")), &addresses[c]),
        ));
    }
    for s in 0..streams {
        let (c, ch) = channels[s % channels.len()].clone();
        let (hello_tx, hello_rx) = tokio::sync::mpsc::channel(4);
        hello_tx
            .send(control::SubscribeRequest {
                message: Some(control::subscribe_request::Message::Hello(control::Hello {
                    cluster: format!("c{c}"),
                    locality: Some(common::Locality {
                        region: format!("r{c}"),
                        zone: format!("z{c}"),
                        subzone: String::new(),
                    }),
                    proxy_id: format!("p{s}"),
                    last_version: 0,
                })),
            })
            .await
            .expect("hello");
        let mut stream = ProxyControlClient::new(ch)
            .subscribe(tokio_stream::wrappers::ReceiverStream::new(hello_rx))
            .await
            .expect("subscribe")
            .into_inner();
        let tx = tx.clone();
        keep.push(hello_tx);
        tokio::spawn(async move {
            while let Ok(Some(snapshot)) = stream.message().await {
                let _ = tx.send((snapshot.version, Instant::now()));
            }
        });
    }
    // Wait for every stream's first snapshot.
    let mut first = 0;
    while first < streams {
        if rx.recv().await.is_some() {
            first += 1;
        }
    }
    let mut histogram = Histogram::<u64>::new(3).expect("histogram");
    let leader_address = group.nodes[&l].address().to_string();
    for round in 0..20 {
        let sent = Instant::now();
        let index = apply(
            admin_channel(&group.certs, &leader_address),
            format!("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: round-{round}, namespace: bench}}\nspec: {{host: s0.bench.svc.cluster.local}}\n"),
        )
        .await
        .expect("change");
        let mut got = 0;
        while got < streams {
            let Some((version, at)) = rx.recv().await else {
                break;
            };
            if version >= index {
                histogram
                    .record(at.duration_since(sent).as_micros() as u64)
                    .expect("record");
                got += 1;
            }
        }
    }
    println!(
        "push fan-out: change sent -> received by each of {streams} streams: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} deliveries, 3 nodes, mTLS)",
        histogram.value_at_quantile(0.5) as f64 / 1000.0,
        histogram.value_at_quantile(0.99) as f64 / 1000.0,
        histogram.max() as f64 / 1000.0,
        histogram.len()
    );
    drop(keep);
    for (_, n) in group.nodes {
        n.stop().await;
    }
}

/// Kills `child` with SIGKILL.
fn kill9(child: &mut Child) {
    // Quietly: the process may have gone already.
    let _ = Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .stderr(Stdio::null())
        .status();
    let _ = child.wait();
}

struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            kill9(c);
        }
    }
}

fn spawn_coordinator(
    dir: &Path,
    certs: &Path,
    (id, address): (u64, &str),
    members: &str,
    timing: &[String],
) -> Child {
    Command::new(COORDINATOR)
        .args([
            "--node-id",
            &id.to_string(),
            "--listen",
            address,
            "--data-dir",
        ])
        .arg(dir.join(format!("node-{id}")))
        .arg("--certs")
        .arg(certs)
        .args(["--members", members])
        .args(timing)
        .env(
            "RUST_LOG",
            std::env::var("FULCRUM_BENCH_LOG").unwrap_or("error".into()),
        )
        .stdout(node_log(id))
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn fulcrum-coordinator")
}

/// Where a node's log goes: nowhere, unless `FULCRUM_BENCH_LOG=FILTER` (e.g.
/// `info,openraft=info`) asks for it, then appended to `fulcrum-bench-logs/node-N.log` in
/// the temp directory (to see what an election did).
fn node_log(id: u64) -> Stdio {
    if std::env::var_os("FULCRUM_BENCH_LOG").is_none() {
        return Stdio::null();
    }
    let dir = std::env::temp_dir().join("fulcrum-bench-logs");
    let file = std::fs::create_dir_all(&dir).and_then(|()| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("node-{id}.log")))
    });
    file.map_or_else(|_| Stdio::null(), Stdio::from)
}

/// The election timings to measure, as (label, flags): the binary's defaults and the
/// LAN profile the docs advise, or only `FULCRUM_BENCH_TIMING=HEARTBEAT,MIN,MAX` (e.g.
/// `20ms,60ms,120ms`) when given.
fn timings() -> Vec<(String, Vec<String>)> {
    let flags = |t: &str| -> Vec<String> {
        let parts: Vec<&str> = t.split(',').collect();
        match parts.as_slice() {
            [h, min, max] => [
                "--heartbeat",
                h,
                "--election-min",
                min,
                "--election-max",
                max,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            _ => panic!("FULCRUM_BENCH_TIMING: expected HEARTBEAT,MIN,MAX, got {t:?}"),
        }
    };
    match std::env::var("FULCRUM_BENCH_TIMING") {
        Ok(t) => vec![(t.clone(), flags(&t))],
        Err(_) => vec![
            ("defaults 50/150-300 ms".to_string(), Vec::new()),
            (
                "LAN profile 10/30-60 ms".to_string(),
                flags("10ms,30ms,60ms"),
            ),
        ],
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// kill -9 the leader, then write through the survivors until one commits.
async fn fulcrum_failover(rounds: usize, timing: &[String]) -> Vec<f64> {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = make_certs(dir.path(), 3, &[]);
    let addresses = free_addresses(3);
    let members = addresses
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut procs = Processes(
        (0..3)
            .map(|i| {
                let node = (i as u64 + 1, addresses[i].as_str());
                spawn_coordinator(dir.path(), &certs, node, &members, timing)
            })
            .collect(),
    );
    let mut times = Vec::new();
    for round in 0..rounds {
        // Everyone up and agreeing on a leader.
        let leader = loop {
            let mut seen = Vec::new();
            for a in &addresses {
                let r = StatusClient::new(admin_channel(&certs, a))
                    .get_raft(pb::GetRaftRequest {})
                    .await;
                seen.push(r.ok().map(|r| r.into_inner().leader_id));
            }
            if let Some(Some(l)) = seen.first()
                && *l != 0
                && seen.iter().all(|s| *s == Some(*l))
            {
                break *l;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let li = (leader - 1) as usize;
        // Warm: a write commits before the kill.
        apply(
            admin_channel(&certs, &addresses[(li + 1) % 3]),
            failover_rule(round, "warm"),
        )
        .await
        .expect("warm write");
        let killed_at = Instant::now();
        kill9(&mut procs.0[li]);
        let survivors: Vec<&String> = addresses
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != li)
            .map(|(_, a)| a)
            .collect();
        let watcher = {
            let (certs, watched) = (certs.clone(), survivors[0].clone());
            tokio::spawn(async move {
                let mut client = StatusClient::new(admin_channel(&certs, &watched));
                loop {
                    if let Ok(r) = client.get_raft(pb::GetRaftRequest {}).await {
                        let l = r.into_inner().leader_id;
                        if l != 0 && l != leader {
                            return killed_at.elapsed();
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        let mut attempt = 0usize;
        loop {
            let mut request = tonic::Request::new(pb::ApplyRequest {
                documents: vec![pb::Document {
                    source: "f.yaml".into(),
                    text: failover_rule(round, "after"),
                }],
                dry_run: false,
            });
            request.set_timeout(Duration::from_millis(300));
            let target = survivors[attempt % survivors.len()];
            attempt += 1;
            if AdminClient::new(admin_channel(&certs, target))
                .apply(request)
                .await
                .is_ok()
            {
                break;
            }
        }
        times.push(killed_at.elapsed().as_secs_f64());
        if let Ok(elected) = watcher.await
            && std::env::var_os("FULCRUM_BENCH_VERBOSE").is_some()
        {
            println!(
                "  round {round}: new leader seen after {elected:?}, write committed after {:.3}s",
                times[times.len() - 1]
            );
        }
        let node = (leader, addresses[li].as_str());
        procs.0[li] = spawn_coordinator(dir.path(), &certs, node, &members, timing);
    }
    times
}

fn failover_rule(round: usize, tag: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: failover-{round}-{tag}, namespace: bench}}\nspec: {{host: s0.bench.svc.cluster.local}}\n"
    )
}

/// etcd's v3 JSON gateway: one put, with a timeout. True when it committed.
fn etcd_put(address: &str, key: &str, timeout: Duration) -> bool {
    let Ok(addr) = address.parse() else {
        return false;
    };
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let b64 = |s: &str| {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let bytes = s.as_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    };
    let body = format!("{{\"key\":\"{}\",\"value\":\"{}\"}}", b64(key), b64("v"));
    let request = format!(
        "POST /v3/kv/put HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200") && response.contains("\"header\"")
}

/// This member's id and the leader's id, from etcd's maintenance status.
fn etcd_status(client: &str) -> Option<(String, String)> {
    let addr = client.parse().ok()?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let request = format!(
        "POST /v3/maintenance/status HTTP/1.1\r\nhost: {client}\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let field = |name: &str| -> Option<String> {
        let at = response.find(&format!("\"{name}\":\""))? + name.len() + 4;
        Some(response[at..].split('"').next()?.to_string())
    };
    Some((field("member_id")?, field("leader")?))
}

async fn etcd_failover(
    etcd: &str,
    rounds: usize,
    heartbeat_ms: u64,
    election_ms: u64,
) -> Option<Vec<f64>> {
    let dir = tempfile::tempdir().ok()?;
    let mut peers = free_addresses(6);
    let clients = peers.split_off(3);
    let cluster = (0..3)
        .map(|i| format!("e{i}=http://{}", peers[i]))
        .collect::<Vec<_>>()
        .join(",");
    let spawn = |i: usize, state: &str| -> Option<Child> {
        Command::new(etcd)
            .args(["--name", &format!("e{i}")])
            .arg("--data-dir")
            .arg(dir.path().join(format!("e{i}")))
            .args(["--listen-peer-urls", &format!("http://{}", peers[i])])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://{}", peers[i]),
            ])
            .args(["--listen-client-urls", &format!("http://{}", clients[i])])
            .args(["--advertise-client-urls", &format!("http://{}", clients[i])])
            .args([
                "--initial-cluster",
                &cluster,
                "--initial-cluster-state",
                state,
            ])
            .args([
                "--heartbeat-interval",
                &heartbeat_ms.to_string(),
                "--election-timeout",
                &election_ms.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()
    };
    let mut procs = Processes(
        (0..3)
            .map(|i| spawn(i, "new"))
            .collect::<Option<Vec<_>>>()?,
    );
    let mut times = Vec::new();
    for round in 0..rounds {
        // Wait for a leader everyone agrees on, and a write through each member.
        let deadline = Instant::now() + Duration::from_secs(30);
        let leader_index = loop {
            let statuses: Vec<Option<(String, String)>> =
                clients.iter().map(|c| etcd_status(c)).collect();
            let leaders: Vec<Option<String>> = statuses
                .iter()
                .map(|s| s.as_ref().map(|s| s.1.clone()))
                .collect();
            let ids: Vec<Option<String>> = statuses
                .iter()
                .map(|s| s.as_ref().map(|s| s.0.clone()))
                .collect();
            if let Some(Some(l)) = leaders.first()
                && leaders.iter().all(|x| x.as_ref() == Some(l))
                && clients
                    .iter()
                    .all(|c| etcd_put(c, "warm", Duration::from_millis(500)))
                && let Some(i) = ids.iter().position(|id| id.as_ref() == Some(l))
            {
                break i;
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let killed_at = Instant::now();
        kill9(&mut procs.0[leader_index]);
        let survivors: Vec<&String> = clients
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != leader_index)
            .map(|(_, c)| c)
            .collect();
        let mut attempt = 0usize;
        while !etcd_put(
            survivors[attempt % 2],
            &format!("after-{round}"),
            Duration::from_millis(300),
        ) {
            attempt += 1;
            if killed_at.elapsed() > Duration::from_secs(30) {
                return None;
            }
        }
        times.push(killed_at.elapsed().as_secs_f64());
        procs.0[leader_index] = spawn(leader_index, "existing")?;
    }
    Some(times)
}

async fn failover() {
    let rounds = std::env::var("FULCRUM_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10);
    for (label, timing) in timings() {
        let ours = fulcrum_failover(rounds, &timing).await;
        println!(
            "leader failover, fulcrum ({label}): median {:.3} s, min {:.3} s, max {:.3} s over {rounds} kill -9s",
            median(ours.clone()),
            ours.iter().copied().fold(f64::MAX, f64::min),
            ours.iter().copied().fold(0.0, f64::max)
        );
    }
    let etcd = ["etcd", "/usr/bin/etcd"].into_iter().find(|p| {
        Command::new(p)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    });
    if std::env::var_os("FULCRUM_BENCH_NO_ETCD").is_some() {
        return;
    }
    let Some(etcd) = etcd else {
        println!(
            "leader failover, etcd: skipped (no etcd binary; `apt install etcd-server` to compare)"
        );
        return;
    };
    for (heartbeat, election, label) in [
        (100, 1000, "defaults 100/1000 ms"),
        (50, 250, "50/250 ms"),
        (10, 100, "tuned 10/100 ms"),
    ] {
        match etcd_failover(etcd, rounds, heartbeat, election).await {
            Some(times) => println!(
                "leader failover, etcd ({label}): median {:.3} s, min {:.3} s, max {:.3} s over {rounds} kill -9s",
                median(times.clone()),
                times.iter().copied().fold(f64::MAX, f64::min),
                times.iter().copied().fold(0.0, f64::max)
            ),
            None => println!("leader failover, etcd ({label}): did not converge"),
        }
    }
}

fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Resident memory of one node holding 100 clusters x 1,000 services, fed reports.
async fn memory() {
    let clusters = 100usize;
    let services = 1_000usize;
    let dir = tempfile::tempdir().expect("tempdir");
    let names: Vec<String> = (0..clusters).map(|c| format!("c{c}")).collect();
    let certs = make_certs(dir.path(), 1, &names);
    let address = free_addresses(1).remove(0);
    let child = Command::new(COORDINATOR)
        .args(["--node-id", "1", "--listen", &address, "--data-dir"])
        .arg(dir.path().join("node-1"))
        .arg("--certs")
        .arg(&certs)
        .arg("--init")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut procs = Processes(vec![child]);
    let pid = procs.0[0].id();
    let start = Instant::now();
    loop {
        if apply(
            admin_channel(&certs, &address),
            mesh_yaml(clusters, services, 3),
        )
        .await
        .is_ok()
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the node never took the mesh"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (after_config, _) = rss_kib(pid).unwrap_or((0, 0));
    // Every cluster's proxy reports every service it calls, each second, for 20 s.
    let channels: Vec<Channel> = names
        .iter()
        .map(|c| channel(&certs, Role::Proxy(c.clone()), &address))
        .collect();
    for second in 0..20u64 {
        let mut sends = Vec::new();
        for (c, ch) in channels.iter().enumerate() {
            let mut report = control::HealthReport {
                cluster: format!("c{c}"),
                proxy_id: format!("c{c}-proxy"),
                locality: Some(common::Locality {
                    region: format!("r{}", c % 10),
                    zone: format!("z{c}"),
                    subzone: String::new(),
                }),
                interval_ms: 1_000,
                sequence: second + 1,
                ..Default::default()
            };
            for s in 0..services {
                // Toward one of the three localities the service runs in.
                let to = (s + (c % 3) * 7) % clusters;
                report.destinations.push(control::DestinationCounters {
                    service: format!("s{s}.bench.svc.cluster.local"),
                    cluster: format!("c{to}"),
                    locality: Some(common::Locality {
                        region: format!("r{}", to % 10),
                        zone: format!("z{to}"),
                        subzone: String::new(),
                    }),
                    requests: 50,
                    http_5xx: u64::from(s % 13 == 0) * 20,
                    ..Default::default()
                });
            }
            let mut client = ProxyControlClient::new(ch.clone());
            sends.push(tokio::spawn(async move {
                client
                    .report(tokio_stream::iter(vec![report]))
                    .await
                    .is_ok()
            }));
        }
        for s in sends {
            let _ = s.await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        if std::env::var_os("FULCRUM_BENCH_VERBOSE").is_some() {
            let (now, _) = rss_kib(pid).unwrap_or((0, 0));
            println!(
                "  after {}s of reports: RSS {:.0} MiB",
                second + 1,
                now as f64 / 1024.0
            );
        }
    }
    let (rss, hwm) = rss_kib(pid).unwrap_or((0, 0));
    println!(
        "memory: one node holding {clusters} clusters x {services} services (3 localities each), 20 s of reports from {clusters} proxies: RSS {:.0} MiB (after the configuration alone {:.0} MiB), peak {:.0} MiB",
        rss as f64 / 1024.0,
        after_config as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    kill9(&mut procs.0[0]);
}

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    // In-process nodes log to stderr when asked (processes: see `node_log`).
    if let Ok(directives) = std::env::var("FULCRUM_BENCH_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(directives))
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        if wanted("digest") {
            digest_throughput().await;
        }
        if wanted("push") {
            push_fanout().await;
        }
        if wanted("failover") {
            failover().await;
        }
        if wanted("memory") {
            memory().await;
        }
    });
}
