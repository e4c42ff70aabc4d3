//! openraft's `AsyncRuntime` over madsim-tokio.
//!
//! openraft's default `TokioRuntime` spawns and sleeps on real tokio, which does not exist inside
//! madsim. This adapter routes spawn, sleep, timeouts and `Instant` through `tokio` as this crate
//! sees it (madsim-tokio: real tokio for real, madsim under `--cfg madsim`), draws randomness from
//! the seeded RNG of [`super::rng`], and runs `spawn_blocking` inline in simulation (madsim refuses
//! threads). mpsc, oneshot and the mutex are openraft-rt-tokio's plain `tokio::sync` wrappers,
//! which need no runtime and draw no randomness; the watch channel is our own
//! ([`super::watch`]), because tokio's wakes waiters in a randomly chosen order.
//!
//! Conformance: `openraft_rt::testing::Suite::<DetcdRuntime>::test_all()` runs in this module's
//! tests, in both modes.

// This module is the seam: under madsim, tokio's Instant is std's, virtualised by the simulator.
#![allow(clippy::disallowed_methods)]

use std::fmt;
use std::future::Future;
use std::io;
use std::ops::{Add, AddAssign, Sub, SubAssign};
use std::pin::Pin;
use std::task::{Context, Poll};

use openraft_rt::{AsyncRuntime, OptionalSend};

use super::Duration;

/// The runtime openraft runs on in detcd.
pub struct DetcdRuntime {
    #[cfg(not(madsim))]
    runtime: tokio::runtime::Runtime,
    #[cfg(madsim)]
    runtime: madsim::runtime::Runtime,
}

impl fmt::Debug for DetcdRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DetcdRuntime")
    }
}

/// A point in time on the runtime's monotonic clock (simulated time under madsim).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuntimeInstant(tokio::time::Instant);

impl Add<Duration> for RuntimeInstant {
    type Output = Self;
    fn add(self, rhs: Duration) -> Self {
        Self(self.0 + rhs)
    }
}
impl AddAssign<Duration> for RuntimeInstant {
    fn add_assign(&mut self, rhs: Duration) {
        self.0 += rhs;
    }
}
impl Sub<Duration> for RuntimeInstant {
    type Output = Self;
    fn sub(self, rhs: Duration) -> Self {
        Self(self.0 - rhs)
    }
}
impl Sub<RuntimeInstant> for RuntimeInstant {
    type Output = Duration;
    fn sub(self, rhs: RuntimeInstant) -> Duration {
        self.0.saturating_duration_since(rhs.0)
    }
}
impl SubAssign<Duration> for RuntimeInstant {
    fn sub_assign(&mut self, rhs: Duration) {
        self.0 -= rhs;
    }
}
impl openraft_rt::Instant for RuntimeInstant {
    fn now() -> Self {
        Self(tokio::time::Instant::now())
    }
}

/// A boxed sleep: madsim's and tokio's sleep types differ, and openraft only polls it.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The timeout error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeoutElapsed;

impl fmt::Display for TimeoutElapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline has elapsed")
    }
}
impl std::error::Error for TimeoutElapsed {}

/// Our own timeout future (madsim's is not nameable): the inner future, raced against a sleep.
pub struct Timeout<T> {
    future: Pin<Box<T>>,
    sleep: Sleep,
}

impl<R, T: Future<Output = R>> Future for Timeout<T> {
    type Output = Result<R, TimeoutElapsed>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(value) = self.future.as_mut().poll(cx) {
            return Poll::Ready(Ok(value));
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(TimeoutElapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// openraft's random source: the seeded RNG, behind rand 0.10's traits.
#[derive(Debug, Default, Clone, Copy)]
pub struct SeededRng;

impl rand_core::TryRng for SeededRng {
    type Error = std::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(super::rng::random_u64() as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(super::rng::random_u64())
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in dst.chunks_mut(8) {
            let bytes = super::rng::random_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        Ok(())
    }
}

impl AsyncRuntime for DetcdRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = tokio::task::JoinHandle<T>;
    type Sleep = Sleep;
    type Instant = RuntimeInstant;
    type TimeoutError = TimeoutElapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = Timeout<T>;
    type ThreadLocalRng = SeededRng;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        tokio::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        Box::pin(tokio::time::sleep(duration))
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        Box::pin(tokio::time::sleep_until(deadline.0))
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        Timeout {
            future: Box::pin(future),
            sleep: Self::sleep(duration),
        }
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        Timeout {
            future: Box::pin(future),
            sleep: Self::sleep_until(deadline),
        }
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        SeededRng
    }

    type Mpsc = openraft_rt_tokio::TokioMpsc;
    type Watch = super::watch::DeterministicWatch;
    type Oneshot = openraft_rt_tokio::TokioOneshot;
    type Mutex<T: OptionalSend + 'static> = openraft_rt_tokio::TokioMutex<T>;

    fn new(threads: usize) -> Self {
        #[cfg(not(madsim))]
        {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads.max(1))
                .enable_all()
                .build()
                .expect("build tokio runtime");
            Self { runtime }
        }
        #[cfg(madsim)]
        {
            let _ = threads;
            Self {
                runtime: madsim::runtime::Runtime::with_seed_and_config(
                    super::rng::random_seed_for_new_runtime(),
                    madsim::Config::default(),
                ),
            }
        }
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.runtime.block_on(future)
    }

    async fn spawn_blocking<F, T>(f: F) -> Result<T, io::Error>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        Ok(super::blocking(f).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// openraft-rt's conformance suite: spawn, sleep, timeouts, instants, select, channels.
    #[test]
    fn openraft_runtime_conformance_suite() {
        openraft_rt::testing::Suite::<DetcdRuntime>::test_all();
    }
}
