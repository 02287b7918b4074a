//! The gRPC services a node serves besides Raft: proxy control, status and admin.

pub mod admin;
pub mod control;
pub mod status;
