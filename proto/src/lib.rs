//! Fulcrum's gRPC contract, generated from `proto/fulcrum/**.proto` by protox and
//! tonic-prost-build, and the conversions between wire messages and fulcrum-policy types.
//!
//! Wire types stop at the edge: every message that comes from a peer is turned into a
//! domain type with `TryFrom`, which checks it and says which field is wrong
//! ([`convert::WireError`]). Nothing here holds logic beyond that.

#![forbid(unsafe_code)]

/// Types shared by every service (`fulcrum.common.v1`).
pub mod common {
    /// Version 1.
    pub mod v1 {
        #![allow(missing_docs, clippy::all)]
        tonic::include_proto!("fulcrum.common.v1");
    }
}

/// Proxy reports and snapshot subscriptions (`fulcrum.control.v1`).
pub mod control {
    /// Version 1.
    pub mod v1 {
        #![allow(missing_docs, clippy::all)]
        tonic::include_proto!("fulcrum.control.v1");
    }
}

/// Status reads and admin changes (`fulcrum.status.v1`).
pub mod status {
    /// Version 1.
    pub mod v1 {
        #![allow(missing_docs, clippy::all)]
        tonic::include_proto!("fulcrum.status.v1");
    }
}

/// The Raft transport between coordinator nodes (`fulcrum.raft.v1`).
pub mod raft {
    /// Version 1.
    pub mod v1 {
        #![allow(missing_docs, clippy::all)]
        tonic::include_proto!("fulcrum.raft.v1");
    }
}

pub mod codec;
pub mod convert;

/// The encoded `FileDescriptorSet` of every Fulcrum service, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/fulcrum_descriptor.bin"));
