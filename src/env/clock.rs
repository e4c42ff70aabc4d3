//! The per-node clock: monotonic time, sleeps and timeouts, with simulated skew.
//!
//! madsim has a single global clock and no skew, so each node's view is ours to build: a node's
//! time is `base + (elapsed * (1 + drift)) + offset`, where `offset` and `drift` are set by the
//! simulation harness (offset jumps included). In real mode both are zero and this is tokio time.
//! Everything time-dependent in a node (election timers excepted — openraft reads the runtime's
//! `Instant`) reads this handle, never the OS.

// This module is the seam: under madsim, tokio's Instant is std's, virtualised by the simulator.
#![allow(clippy::disallowed_methods)]

use std::sync::{Arc, Mutex};

use super::Duration;

/// A point on a node's monotonic clock, as nanoseconds since the clock was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(u64);

impl Instant {
    pub fn since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
    pub fn plus(self, duration: Duration) -> Instant {
        Instant(self.0.saturating_add(duration.as_nanos() as u64))
    }
    pub fn as_nanos(self) -> u64 {
        self.0
    }
}

/// Where a clock's readings start: a day in, so a clock jumped back (by less than a day) still
/// moves on at once instead of sitting at zero until real time catches up with the jump.
const ORIGIN_NANOS: i128 = 86_400 * 1_000_000_000;

#[derive(Debug)]
struct Skew {
    /// Added to every `now` reading; moved by `jump` (a step, as NTP makes).
    offset_nanos: i64,
    /// Added to every reading; keeps both continuous when the drift changes.
    rebase_nanos: i64,
    /// Parts per million by which this clock runs fast (positive) or slow (negative).
    drift_ppm: i64,
}

/// A node's clock. Cheap to clone; clones share skew.
#[derive(Debug, Clone)]
pub struct Clock {
    base: tokio::time::Instant,
    skew: Arc<Mutex<Skew>>,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    pub fn new() -> Self {
        Self {
            base: tokio::time::Instant::now(),
            skew: Arc::new(Mutex::new(Skew {
                offset_nanos: 0,
                rebase_nanos: 0,
                drift_ppm: 0,
            })),
        }
    }

    /// Now, on this node's clock: its rate (drift) and its steps (jumps). For timers that may
    /// follow the clock a machine's operator or NTP sets (deadlines, periodic compaction).
    pub fn now(&self) -> Instant {
        let (monotonic, offset) = self.read();
        Instant((monotonic + offset as i128).max(0) as u64)
    }

    /// Now, on this node's monotonic clock: its rate (drift) but never its steps, as
    /// `CLOCK_MONOTONIC` is slewed but never stepped. Lease expiry is measured on this.
    pub fn monotonic(&self) -> Instant {
        Instant(self.read().0.max(0) as u64)
    }

    fn read(&self) -> (i128, i64) {
        let elapsed = tokio::time::Instant::now()
            .duration_since(self.base)
            .as_nanos() as i128;
        let skew = self.skew.lock().expect("clock skew lock");
        let drifted = elapsed + elapsed * skew.drift_ppm as i128 / 1_000_000;
        (
            ORIGIN_NANOS + drifted + skew.rebase_nanos as i128,
            skew.offset_nanos,
        )
    }

    /// Sleeps for `duration` as measured by this node's clock.
    pub async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(self.to_true_duration(duration)).await
    }

    /// Runs `future` for at most `duration` of this node's time.
    ///
    /// A plain function, not an `async fn`: an async fn keeps its argument and the timeout it
    /// moves the argument into side by side in its state, so every request's future carried
    /// openraft's `client_write` (2 KiB) twice, and the handler's boxed future was copied with it.
    pub fn timeout<F: std::future::Future>(
        &self,
        duration: Duration,
        future: F,
    ) -> impl std::future::Future<Output = Result<F::Output, Elapsed>> {
        use futures::FutureExt;
        tokio::time::timeout(self.to_true_duration(duration), future)
            .map(|result| result.map_err(|_| Elapsed))
    }

    /// Moves this clock by `nanos` (a simulated NTP step). Harness only.
    pub fn jump(&self, nanos: i64) {
        self.skew.lock().expect("clock skew lock").offset_nanos += nanos;
    }

    /// Makes this clock run fast or slow by `ppm` parts per million. Harness only.
    pub fn set_drift_ppm(&self, ppm: i64) {
        // Re-base so both readings are continuous across the drift change.
        let before = self.monotonic();
        self.skew.lock().expect("clock skew lock").drift_ppm = ppm;
        let after = self.monotonic();
        self.skew.lock().expect("clock skew lock").rebase_nanos += before.0 as i64 - after.0 as i64;
    }

    fn to_true_duration(&self, duration: Duration) -> Duration {
        let ppm = self.skew.lock().expect("clock skew lock").drift_ppm;
        let nanos = duration.as_nanos() as i128 * 1_000_000 / (1_000_000 + ppm as i128).max(1);
        Duration::from_nanos(nanos.max(0) as u64)
    }
}

/// The error of [`Clock::timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("deadline has elapsed")
    }
}
impl std::error::Error for Elapsed {}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;

    #[test]
    fn steps_move_now_but_never_the_monotonic_clock() {
        let clock = Clock::new();
        let (now, monotonic) = (clock.now(), clock.monotonic());
        clock.jump(30_000_000_000);
        assert!(clock.now().since(now) >= Duration::from_secs(30));
        assert!(clock.monotonic().since(monotonic) < Duration::from_secs(1));
        clock.jump(-60_000_000_000);
        assert!(
            clock.monotonic() >= monotonic,
            "the monotonic clock never goes back"
        );
        // A drift change keeps both continuous.
        let before = clock.monotonic();
        clock.set_drift_ppm(1000);
        assert!(clock.monotonic().since(before) < Duration::from_secs(1));
    }
}
