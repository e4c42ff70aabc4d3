//! Build script: compiles etcd's v3 API (`etcdserverpb`, `mvccpb`, `authpb`) and detcd's internal
//! Raft protocol (`detcd.raft`) with a vendored `protoc`, so a fresh machine needs only cargo.
//!
//! madsim-tonic-build emits both the real tonic code and the simulated one; which is compiled is
//! chosen by `--cfg madsim`. No default stubs: the simulated codegen has none, so every RPC is
//! implemented explicitly (those not built yet answer `Unimplemented`, see `api/mod.rs`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY of intent: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let protos = [
        "proto/etcdserverpb/rpc.proto",
        "proto/mvccpb/kv.proto",
        "proto/authpb/auth.proto",
        "proto/detcd/raft.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_build::configure()
        // A put's value travels from the request into the Raft command and, for a follower, on
        // to the leader: as `Bytes` those hand-offs share one buffer instead of copying it.
        .bytes([".etcdserverpb.PutRequest.value"])
        .compile_protos(&protos, &["proto"])?;
    Ok(())
}
