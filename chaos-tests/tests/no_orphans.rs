//! Every process a mesh starts is gone once the mesh is dropped: at the end of a drill,
//! and when the task holding it panics (a failing test).

use std::path::Path;

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
