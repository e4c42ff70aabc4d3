//! What the member's one thread does before it sleeps (real mode): polls for a short while.
//!
//! Every task of a member runs on one thread (`main.rs`). When it has nothing to do, tokio
//! parks it in `epoll_wait`, and the request or Raft message that ends the wait has to wake it.
//! On the 2-vCPU virtual machines we measure on, a wake-up costs about 50 us: a loopback
//! ping-pong takes 74 us per round trip when the echo side sleeps in `recv`, 23 us when it
//! polls; a one-client put waits for a wake-up on every message that reaches the member.
//! So before parking, [`before_park`] polls tokio's epoll instance (readable as soon as any of
//! its sources has an event: a socket, a timer's deadline excepted, the blocking pool's wake-up)
//! for up to [`SPIN`], and yields the CPU between polls so that another runnable thread (the
//! load generator, another member on the same machine) is not held up by it.
//!
//! Polling pays only when the next event comes soon, so it adapts: the thread polls only when
//! its previous idle period (park to wake, polling included) was shorter than [`RECENT`], 1 ms.
//! A member answering one client back to back polls; an idle member, or one serving fewer than
//! a request a millisecond, sleeps at once, after one idle period that tells it so. Between the
//! two (a request every 0.2-1 ms) a member polls in vain, up to [`SPIN`] of CPU per request.
//! A timer's deadline is not an event of the epoll instance: one may fire up to [`SPIN`] late.
//!
//! Measured (README, "Performance": an A/B of the build without it, same run): one node, put
//! at one client 1.09x (1.1x in shorter runs; a serializable range at one client 1.3-1.5x),
//! for ~28 % more CPU per put at one client; three nodes, put at one client 1.08x, at 64 1.14x,
//! watch 1.11x; the other points within noise.

// This module is the seam: it reads the real clock and yields the thread.
#![allow(clippy::disallowed_methods)]

use std::cell::Cell;
use std::os::fd::RawFd;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The longest the thread polls before it sleeps. A one-client put's answer, the client's
/// turn-around and its next request take 60-150 us here; 150 us and 400 us measured the same.
pub const SPIN: Duration = Duration::from_micros(150);

/// An idle period shorter than this makes the thread poll the next time. Longer than [`SPIN`]:
/// an idle period without polling includes the wake-up, and a client's turn-around is not
/// steady, so a rule of `SPIN` itself would turn polling off for good after one late request.
const RECENT: Duration = Duration::from_millis(1);

thread_local! {
    /// When the thread last went idle (set before polling, taken when it runs again).
    static IDLE_SINCE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// How long the last idle period lasted; a thread that has not been idle yet sleeps.
    static LAST_IDLE: Cell<Duration> = const { Cell::new(Duration::MAX) };
}

/// The runtime's epoll instance, set by [`build`]; unset (never poll) when it was not found.
static EPOLL: OnceLock<RawFd> = OnceLock::new();

/// Builds the member's runtime with [`before_park`] and [`after_unpark`] as its park hooks, and
/// finds its epoll instance: the epoll file descriptors that building it opened (mio's, and
/// the copy of it that tokio's I/O driver keeps: both name the same instance).
pub fn build(builder: &mut tokio::runtime::Builder) -> std::io::Result<tokio::runtime::Runtime> {
    let before = epoll_fds();
    let runtime = builder
        .on_thread_park(before_park)
        .on_thread_unpark(after_unpark)
        .build()?;
    if let Some(&fd) = epoll_fds().iter().find(|fd| !before.contains(fd)) {
        let _ = EPOLL.set(fd);
    }
    Ok(runtime)
}

/// The runtime's `on_thread_park` hook: polls for up to [`SPIN`] if the last idle period was
/// shorter, and returns as soon as an event is ready (tokio's park then returns at once).
pub fn before_park() {
    let since = Instant::now();
    IDLE_SINCE.set(Some(since));
    if !worth_polling(LAST_IDLE.get()) {
        return;
    }
    let Some(&epoll) = EPOLL.get() else {
        return;
    };
    while !readable(epoll) && since.elapsed() < SPIN {
        std::thread::yield_now();
    }
}

/// The runtime's `on_thread_unpark` hook: records how long the thread was idle.
pub fn after_unpark() {
    if let Some(since) = IDLE_SINCE.take() {
        LAST_IDLE.set(since.elapsed());
    }
}

/// Whether to poll before sleeping, given how long the previous idle period lasted.
fn worth_polling(last_idle: Duration) -> bool {
    last_idle < RECENT
}

/// Whether `fd` has an event ready now (an error counts as ready: never poll on a broken fd).
fn readable(fd: RawFd) -> bool {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, a zero timeout.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    ready != 0
}

/// The process's open epoll file descriptors.
fn epoll_fds() -> Vec<RawFd> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| {
            std::fs::read_link(entry.path())
                .is_ok_and(|target| target.as_os_str() == "anon_inode:[eventpoll]")
        })
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_only_after_a_short_idle_period() {
        assert!(
            !worth_polling(Duration::MAX),
            "a thread never idle yet sleeps at once"
        );
        assert!(
            !worth_polling(RECENT),
            "an idle period of a millisecond: sleep"
        );
        assert!(!worth_polling(Duration::from_millis(100)));
        // An idle period longer than the poll (it included a wake-up) still polls next time.
        assert!(worth_polling(SPIN * 2));
        assert!(worth_polling(Duration::from_micros(20)));
    }

    #[test]
    fn an_epoll_instance_is_readable_once_a_source_has_an_event() {
        // SAFETY: plain syscalls on fds this test creates and closes.
        unsafe {
            let epoll = libc::epoll_create1(libc::EPOLL_CLOEXEC);
            assert!(epoll >= 0);
            let mut pipe = [0; 2];
            assert_eq!(libc::pipe(pipe.as_mut_ptr()), 0);
            let mut event = libc::epoll_event {
                events: (libc::EPOLLIN | libc::EPOLLET) as u32,
                u64: 7,
            };
            assert_eq!(
                libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, pipe[0], &mut event),
                0
            );
            assert!(!readable(epoll), "no source has an event");
            assert_eq!(libc::write(pipe[1], b"x".as_ptr().cast(), 1), 1);
            assert!(readable(epoll), "the pipe has a byte");
            let mut out = [libc::epoll_event { events: 0, u64: 0 }];
            assert_eq!(libc::epoll_wait(epoll, out.as_mut_ptr(), 1, 0), 1);
            assert_eq!({ out[0].u64 }, 7);
            // Edge-triggered, as mio registers: once taken, the event is no longer ready.
            assert!(!readable(epoll), "the event was taken");
            assert!(
                readable(i32::MAX),
                "an fd never opened (POLLNVAL) counts as ready"
            );
            libc::close(pipe[0]);
            libc::close(pipe[1]);
            libc::close(epoll);
        }
    }

    #[test]
    fn building_the_runtime_finds_its_epoll_instance() {
        let runtime = build(tokio::runtime::Builder::new_current_thread().enable_all()).unwrap();
        let fd = *EPOLL.get().expect("the runtime's epoll instance was found");
        let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        assert_eq!(target.as_os_str(), "anon_inode:[eventpoll]");
        // The hooks run on the runtime's thread: it parks (sleeping 1 ms), then runs again.
        runtime.block_on(async { tokio::time::sleep(std::time::Duration::from_millis(1)).await });
        assert!(
            LAST_IDLE.get() < Duration::from_secs(1),
            "an idle period was recorded"
        );
    }

    #[test]
    fn an_idle_period_is_recorded_from_park_to_unpark() {
        std::thread::spawn(|| {
            assert_eq!(LAST_IDLE.get(), Duration::MAX);
            before_park();
            after_unpark();
            assert!(LAST_IDLE.get() < Duration::from_secs(1));
            assert!(IDLE_SINCE.get().is_none());
        })
        .join()
        .unwrap();
    }
}
