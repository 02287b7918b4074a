//! Compiles Fulcrum's .proto files with protox (pure Rust: no protoc on the machine) and
//! generates tonic clients and servers, plus the descriptor set gRPC reflection serves.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "fulcrum/common/v1/common.proto",
    "fulcrum/control/v1/control.proto",
    "fulcrum/status/v1/status.proto",
    "fulcrum/raft/v1/raft.proto",
    "fulcrum/raft/v1/command.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }
    let descriptors = protox::compile(PROTOS, [&root])?;
    std::fs::write(
        out_dir.join("fulcrum_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::codec::FulcrumCodec")
        // A log entry's command is shared, not copied, between the store, the decoded
        // log tail and every AppendEntries that carries it.
        .bytes(".fulcrum.raft.v1.Entry.normal")
        .compile_fds(descriptors)?;
    Ok(())
}
