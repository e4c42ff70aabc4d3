//! A watch channel (latest value + change notification) whose wake-ups are deterministic.
//!
//! tokio's `sync::watch` parks each waiter in one of eight shards chosen by a thread-local RNG
//! that is seeded from a process-global counter, so the order in which waiters wake differs
//! between two simulations run in one process — and with it the whole run. openraft signals its
//! state and metrics through watch channels, so detcd's runtime adapter uses this one instead:
//! waiters park on a `tokio::sync::Notify`, which wakes them in a fixed order and draws no
//! randomness.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use tokio::sync::Notify;

struct Shared<T> {
    value: RwLock<T>,
    /// Bumped on every change; receivers remember the version they saw.
    version: AtomicU64,
    senders: AtomicUsize,
    receivers: AtomicUsize,
    notify: Notify,
}

/// The sending half; clones share the channel. When the last one is dropped, receivers see the
/// channel closed.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// The receiving half; each clone tracks the version it has seen.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
    seen: u64,
}

/// The channel is closed (every sender is gone) and nothing new was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

pub fn channel<T>(initial: T) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        value: RwLock::new(initial),
        version: AtomicU64::new(0),
        senders: AtomicUsize::new(1),
        receivers: AtomicUsize::new(1),
        notify: Notify::new(),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared, seen: 0 },
    )
}

impl<T> Sender<T> {
    /// Replaces the value; fails (returning it) if no receiver is left.
    pub fn send(&self, value: T) -> Result<(), T> {
        if self.shared.receivers.load(Ordering::SeqCst) == 0 {
            return Err(value);
        }
        self.send_if_modified(|current| {
            *current = value;
            true
        });
        Ok(())
    }

    /// Modifies the value in place; notifies receivers if `modify` says it changed it.
    pub fn send_if_modified(&self, modify: impl FnOnce(&mut T) -> bool) -> bool {
        let modified = self.store_if_modified(modify);
        if modified {
            self.notify();
        }
        modified
    }

    /// Modifies the value in place without waking anyone: a receiver that looks (`borrow`,
    /// `changed`) sees the new value at once, one already waiting sleeps on until
    /// [`Sender::notify`]. Answers whether `modify` changed the value.
    pub fn store_if_modified(&self, modify: impl FnOnce(&mut T) -> bool) -> bool {
        let mut value = self.shared.value.write().expect("watch lock");
        let modified = modify(&mut value);
        if modified {
            self.shared.version.fetch_add(1, Ordering::SeqCst);
        }
        modified
    }

    /// Wakes every waiting receiver (after [`Sender::store_if_modified`]).
    pub fn notify(&self) {
        self.shared.notify.notify_waiters();
    }

    pub fn borrow(&self) -> RwLockReadGuard<'_, T> {
        self.shared.value.read().expect("watch lock")
    }

    /// How many receivers are open.
    pub fn receiver_count(&self) -> usize {
        self.shared.receivers.load(Ordering::SeqCst)
    }

    pub fn subscribe(&self) -> Receiver<T> {
        self.shared.receivers.fetch_add(1, Ordering::SeqCst);
        Receiver {
            shared: self.shared.clone(),
            seen: self.shared.version.load(Ordering::SeqCst),
        }
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::SeqCst);
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.shared.notify.notify_waiters();
        }
    }
}

impl<T> Receiver<T> {
    /// Waits for a value newer than the last one seen, and marks it seen.
    pub async fn changed(&mut self) -> Result<(), Closed> {
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            // Register before checking, so a change between the check and the wait is not lost.
            notified.as_mut().enable();
            let version = self.shared.version.load(Ordering::SeqCst);
            if version != self.seen {
                self.seen = version;
                return Ok(());
            }
            if self.shared.senders.load(Ordering::SeqCst) == 0 {
                return Err(Closed);
            }
            notified.await;
        }
    }

    /// Waits until the value satisfies `condition` (checking the current one first).
    pub async fn wait_for(&mut self, mut condition: impl FnMut(&T) -> bool) -> Result<(), Closed> {
        loop {
            if condition(&self.borrow_and_update()) {
                return Ok(());
            }
            self.changed().await?;
        }
    }

    pub fn borrow(&self) -> RwLockReadGuard<'_, T> {
        self.shared.value.read().expect("watch lock")
    }

    pub fn borrow_and_update(&mut self) -> RwLockReadGuard<'_, T> {
        let guard = self.shared.value.read().expect("watch lock");
        self.seen = self.shared.version.load(Ordering::SeqCst);
        guard
    }
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        self.shared.receivers.fetch_add(1, Ordering::SeqCst);
        Self {
            shared: self.shared.clone(),
            seen: self.seen,
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.shared.receivers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// openraft's `Watch` family over this channel.
pub struct DeterministicWatch;

impl openraft_rt::watch::Watch for DeterministicWatch {
    type Sender<T: openraft_rt::OptionalSend + openraft_rt::OptionalSync> = Sender<T>;
    type Receiver<T: openraft_rt::OptionalSend + openraft_rt::OptionalSync> = Receiver<T>;
    type Ref<'a, T: openraft_rt::OptionalSend + 'a> = RwLockReadGuard<'a, T>;

    fn channel<T: openraft_rt::OptionalSend + openraft_rt::OptionalSync>(
        init: T,
    ) -> (Self::Sender<T>, Self::Receiver<T>) {
        channel(init)
    }
}

impl<T> openraft_rt::watch::WatchSender<DeterministicWatch, T> for Sender<T>
where
    T: openraft_rt::OptionalSend + openraft_rt::OptionalSync,
{
    fn send(&self, value: T) -> Result<(), openraft_rt::watch::SendError<T>> {
        Sender::send(self, value).map_err(openraft_rt::watch::SendError)
    }
    fn send_if_modified<F>(&self, modify: F) -> bool
    where
        F: FnOnce(&mut T) -> bool,
    {
        Sender::send_if_modified(self, modify)
    }
    fn borrow_watched(&self) -> RwLockReadGuard<'_, T> {
        self.borrow()
    }
    fn subscribe(&self) -> Receiver<T> {
        Sender::subscribe(self)
    }
}

impl<T> openraft_rt::watch::WatchReceiver<DeterministicWatch, T> for Receiver<T>
where
    T: openraft_rt::OptionalSend + openraft_rt::OptionalSync,
{
    async fn changed(&mut self) -> Result<(), openraft_rt::watch::RecvError> {
        Receiver::changed(self)
            .await
            .map_err(|Closed| openraft_rt::watch::RecvError(()))
    }
    fn borrow_watched(&self) -> RwLockReadGuard<'_, T> {
        self.borrow()
    }
    fn borrow_and_update(&mut self) -> RwLockReadGuard<'_, T> {
        Receiver::borrow_and_update(self)
    }
}
