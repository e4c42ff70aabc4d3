//! THE seam between detcd and the operating system.
//!
//! Everything that is nondeterministic — time, disk, randomness, threads — reaches the rest of
//! `src/` only through this module. In real mode it is tokio, files and OS randomness; under
//! `--cfg madsim` the very same calls are madsim's simulated time, the in-memory [`SimDisk`] and the
//! simulation's seeded RNG, so a run is a pure function of its seed.
//!
//! Architecture Invariant: no file outside `src/env/` names `std::time`, `std::thread`, `std::fs`,
//! `std::net`, `rand` or `spawn_blocking` (enforced by `.clippy.toml` and the tidy test).

#[cfg(not(madsim))]
pub mod authority;
pub mod bugs;
pub mod clock;
pub mod disk;
#[cfg(not(madsim))]
pub mod idle;
pub mod net;
pub mod probe;
pub mod rng;
pub mod runtime;
pub mod sim_disk;
pub mod watch;

pub use clock::{Clock, Instant};
pub use disk::Disk;
pub use sim_disk::SimDisk;

/// A span of time. Re-exported so the rest of `src/` never names `std::time`.
pub type Duration = std::time::Duration;

/// A network address (a plain value; all sockets are opened by tonic, which madsim simulates).
pub type SocketAddr = std::net::SocketAddr;

/// Runs a blocking closure (redb I/O) without stalling the async request path.
///
/// Real mode hands it to tokio's blocking pool. madsim refuses threads, and simulated I/O is
/// instantaneous anyway, so in simulation the closure runs inline.
pub async fn blocking<F, T>(f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    #[cfg(not(madsim))]
    {
        #[allow(clippy::disallowed_methods)]
        match tokio::task::spawn_blocking(f).await {
            Ok(value) => value,
            Err(join_error) => std::panic::resume_unwind(join_error.into_panic()),
        }
    }
    #[cfg(madsim)]
    {
        f()
    }
}

/// Runs short blocking I/O right here, on the async task that needs it: a write and fsync of
/// the log (its one writer task), a non-durable redb commit. Real mode blocks the member's
/// runtime thread (`main.rs`: one thread runs every task) for the duration, which costs less
/// than the two thread hops of [`blocking`] (a third of a single-client put's latency; README,
/// "Performance"): requests that arrive meanwhile wait in their sockets and are read together
/// afterwards. Only these callers use it. Anything that may take long (a read, a durable redb
/// commit, a compaction, a snapshot, opening the database) goes through [`blocking`].
pub fn inline_io<T>(f: impl FnOnce() -> T) -> T {
    f()
}

/// Sets up the process's allocator for a long-running server; call once, first thing in `main`.
///
/// glibc serves an allocation over its mmap threshold (128 KiB at first) with a mapping of its
/// own, returned to the system when freed, but raises the threshold to the size of every such
/// block freed, up to 32 MiB: after one large range, later ones come from the heap, whose free
/// space glibc keeps. A keys-only range over 100,000 keys left the member 20 MB larger (its
/// result, a few MB, is built and converted twice); with the threshold fixed at 128 KiB, 3 MB.
/// Requests and Raft entries are far smaller, so the hot path never maps.
pub fn tune_allocator() {
    #[cfg(all(not(madsim), target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes a tuning parameter of glibc's allocator; it is called
        // before the runtime starts any thread.
        let set = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10) };
        debug_assert_eq!(set, 1, "mallopt(M_MMAP_THRESHOLD) refused");
    }
}

/// Gives the free memory of every allocator arena back to the system (glibc's `malloc_trim`).
///
/// Called once a member has started: opening it builds the key index and replays the log on
/// the blocking pool's threads, and glibc keeps what their temporaries freed in those threads'
/// own arenas, out of reach of the runtime thread. Without it, one restart in three or four
/// (100,000 keys) held ~20 MB more (92 against 72 MB; README, "Performance").
pub fn trim_allocator() {
    #[cfg(all(not(madsim), target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only returns free memory of glibc's heaps to the system.
        unsafe { libc::malloc_trim(0) };
    }
}

/// Spawns a task on the current node's runtime (a simulated node's executor under madsim).
pub fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(future)
}

/// Resolves when the process is asked to stop (SIGINT or SIGTERM). Real mode only: a simulated
/// node is stopped by the harness.
#[cfg(not(madsim))]
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(stream) => stream,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        biased;
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
