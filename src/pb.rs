//! Generated protobuf and gRPC code: etcd's v3 API (`etcdserverpb`, `mvccpb`, `authpb`) and
//! detcd's internal Raft protocol (`detcd.raft`). A leaf module: it depends on nothing of ours.

#![allow(clippy::all, missing_docs)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}
pub mod authpb {
    tonic::include_proto!("authpb");
}
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}
/// `detcd.raft`, nested as its package is so that its references to `etcdserverpb` resolve.
pub mod detcd {
    pub mod raft {
        tonic::include_proto!("detcd.raft");
    }
}
pub use detcd::raft;
