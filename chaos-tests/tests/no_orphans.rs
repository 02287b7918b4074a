//! Every process a mesh starts is gone once the mesh is dropped: at the end of a drill,
//! when the task holding it panics (a failing test), and when `fulcrum-drill` is stopped
//! by a signal while its mesh starts.

use std::path::Path;
use std::time::{Duration, Instant};

use fulcrum_chaos::harness::{Binaries, Mesh, MeshSpec};

/// Whether `pid` names a process (the harness reaps what it kills, so a killed one is
/// gone from /proc).
fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_or_panicking_mesh_leaves_no_process_behind() {
    // Built first (a no-op when fresh): `cargo test -p fulcrum-chaos` alone does not
    // rebuild the other packages' binaries, and a drill must not run stale ones.
    let bins = Binaries::locate(true).expect("the mesh's binaries");

    let mesh = Mesh::start(MeshSpec::local(), bins.clone(), None)
        .await
        .expect("the mesh starts");
    let pids = mesh.pids();
    assert_eq!(pids.len(), 3 + 3 + 6, "coordinators, proxies, backends");
    assert!(pids.iter().all(|&p| alive(p)), "{pids:?} all running");
    drop(mesh);
    let left: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
    assert!(left.is_empty(), "still running after the drop: {left:?}");

    let (tell, told) = tokio::sync::oneshot::channel();
    let failing = tokio::spawn(async move {
        let mesh = Mesh::start(MeshSpec::local(), bins, None)
            .await
            .expect("the mesh starts");
        let _ = tell.send(mesh.pids());
        panic!("a drill's assertion fails while its mesh runs");
    });
    let outcome = failing.await;
    assert!(outcome.is_err_and(|e| e.is_panic()), "the task panicked");
    let pids = told.await.expect("the pids, sent before the panic");
    assert_eq!(pids.len(), 12);
    let left: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
    assert!(left.is_empty(), "still running after the panic: {left:?}");
}

/// The processes whose parent is `pid`, from /proc.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let parent = format!("PPid:\t{pid}");
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/status"))
                .is_ok_and(|status| status.lines().any(|line| line == parent))
        })
        .collect()
}

/// What `pid` was started with, its arguments joined by spaces.
fn command_line(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .unwrap_or_default()
}

/// `fulcrum-drill run` stopped by SIGTERM while its mesh is starting (a coordinator up,
/// the rest on the way) stops what has started before it exits: with no handler then,
/// the signal ended it at once and left the mesh running.
#[test]
fn a_drill_stopped_while_its_mesh_starts_leaves_no_process_behind() {
    // Built first, so that the drill's own build is quick.
    Binaries::locate(true).expect("the mesh's binaries");
    let dir = tempfile::tempdir().expect("a directory for the mesh");
    let drill_file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/local/drills/coordinator-partitioned.yaml");
    let mut drill = std::process::Command::new(env!("CARGO_BIN_EXE_fulcrum-drill"))
        .arg("run")
        .arg(&drill_file)
        .arg("--mesh-dir")
        .arg(dir.path())
        .arg("--plain")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("fulcrum-drill starts");
    let pid = drill.id();
    // Its first coordinator up: the mesh is starting.
    let deadline = Instant::now() + Duration::from_secs(120);
    let started = loop {
        let children = children_of(pid);
        let coordinator = |c: u32| {
            let line = command_line(c);
            line.split(' ')
                .next()
                .is_some_and(|program| program.ends_with("/fulcrum-coordinator"))
        };
        if children.iter().any(|&c| coordinator(c)) {
            break children;
        }
        assert!(
            Instant::now() < deadline,
            "no coordinator started within 120 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success(), "SIGTERM sent");
    let deadline = Instant::now() + Duration::from_secs(30);
    while drill.try_wait().expect("the drill's status").is_none() {
        assert!(
            Instant::now() < deadline,
            "the drill did not exit within 30 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let left: Vec<String> = started
        .iter()
        .copied()
        .filter(|&p| alive(p))
        .map(command_line)
        .collect();
    assert!(
        left.is_empty(),
        "still running after the drill exited: {left:?}"
    );
    // Nor any the drill started after that look: each names the mesh's directory, or
    // is one of its backends (children of the drill, gone with it or not).
    let mesh_dir = dir.path().display().to_string();
    let strays: Vec<String> = (std::fs::read_dir("/proc").expect("/proc"))
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .map(command_line)
        .filter(|line| line.contains(&mesh_dir))
        .collect();
    assert!(strays.is_empty(), "the mesh's processes left: {strays:?}");
}
