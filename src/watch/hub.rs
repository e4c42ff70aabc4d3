//! The hub of one member: announces each applied revision to every watch stream and keeps the
//! changes of the most recent revisions in memory, so a watcher that keeps up never reads the
//! store. A watcher further behind than the hub remembers reads history from redb instead
//! (etcd's unsynced watchers); nothing is ever dropped to bound memory, only read later.
//!
//! Order of operations (what makes "no event lost, none twice" hold): the state machine applies
//! a batch, tells the hub it is answering it ([`Hub::answering`]), answers its clients, commits
//! it to redb, then [`Hub::record`]s its changes, which first extends the cache and only then
//! sets the new revision, and [`Hub::announce`]s, which wakes the streams. So every revision a
//! stream learns of is both in the store and, unless evicted, in the cache; and whatever reads
//! the store or takes the current revision first waits, in [`Hub::settled`], for the batches
//! already answered.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::env::bugs::{self, Bug};
use crate::env::watch;
use crate::mvcc::Change;

/// What the state machine has applied and committed: its revision, the last compaction, and
/// the log index of the last entry applied. Reads wait on this index, never on openraft's
/// `last_applied`, which runs ahead while the applier commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub revision: i64,
    pub compacted: i64,
    pub index: u64,
}

/// The changes of one main revision, in `sub` order.
#[derive(Debug)]
pub struct RevisionChanges {
    pub revision: i64,
    pub changes: Vec<Change>,
}

/// How many recent revisions, and how many bytes of their keys and values, the cache holds.
const CACHE_REVISIONS: usize = 16 * 1024;
const CACHE_BYTES: usize = 64 << 20;

pub struct Hub {
    cache: Mutex<Cache>,
    applied: watch::Sender<Applied>,
    /// How many watch streams have a watcher that wants previous key-values ([`PrevInterest`]).
    prev_wanted: AtomicUsize,
    /// The log index of the last batch whose clients were answered, which may be ahead of the
    /// committed `applied` ([`Hub::answering`]).
    answered: AtomicU64,
    /// The state machine stopped with a batch answered and not committed ([`Hub::abandon`]).
    abandoned: AtomicBool,
}

/// A watch stream's interest in previous key-values (a watcher with `prev_kv`), held while it
/// lasts: while any is held the state machine reads the key-value each put replaces
/// ([`crate::mvcc::Change::prev_read`]).
pub struct PrevInterest(Arc<Hub>);

impl Drop for PrevInterest {
    fn drop(&mut self) {
        self.0.prev_wanted.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Recent revisions, contiguous: it answers every revision from `first` to the applied one.
struct Cache {
    revisions: VecDeque<Arc<RevisionChanges>>,
    first: i64,
    bytes: usize,
}

fn size_of(revision: &RevisionChanges) -> usize {
    revision
        .changes
        .iter()
        .map(|change| {
            let kv = change.event.kv();
            let prev = change
                .prev
                .as_ref()
                .map_or(0, |prev| prev.key.len() + prev.value.len());
            64 + kv.key.len() + kv.value.len() + prev
        })
        .sum()
}

impl Hub {
    /// A hub for a store at `applied`, with nothing cached.
    pub fn new(applied: Applied) -> Arc<Self> {
        let (sender, _) = watch::channel(applied);
        Arc::new(Self {
            cache: Mutex::new(Cache {
                revisions: VecDeque::new(),
                first: applied.revision + 1,
                bytes: 0,
            }),
            applied: sender,
            prev_wanted: AtomicUsize::new(0),
            answered: AtomicU64::new(applied.index),
            abandoned: AtomicBool::new(false),
        })
    }

    /// Registers a watch stream's interest in previous key-values, until the result is dropped.
    pub fn want_prev(self: &Arc<Self>) -> PrevInterest {
        self.prev_wanted.fetch_add(1, Ordering::SeqCst);
        PrevInterest(self.clone())
    }

    /// Whether any watch stream wants previous key-values now. Changes applied while none did
    /// have theirs unread, and [`Hub::cached`] does not give them to one that does.
    pub fn wants_prev(&self) -> bool {
        self.prev_wanted.load(Ordering::SeqCst) > 0
    }

    /// What the state machine has applied so far.
    pub fn applied(&self) -> Applied {
        *self.applied.borrow()
    }

    /// Whether any watch stream or read is subscribed to this hub's announcements.
    pub fn has_subscribers(&self) -> bool {
        self.applied.receiver_count() > 0
    }

    /// A receiver woken whenever the applied revision or the compaction changes.
    pub fn subscribe(&self) -> watch::Receiver<Applied> {
        self.applied.subscribe()
    }

    /// The state machine answers the clients of the batch applied up to log index `index`
    /// before committing it: until [`Hub::record`] reports it, [`Hub::settled`] waits.
    pub fn answering(&self, index: u64) {
        self.answered.fetch_max(index, Ordering::SeqCst);
    }

    /// The state machine failed to commit a batch it had answered and stops: nothing waits for
    /// it any more.
    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::SeqCst);
        // A new version of the same value: receivers wake only for a new version.
        self.applied.store_if_modified(|_| true);
        self.announce();
    }

    /// Returns once every batch answered so far is committed and recorded: what a client was
    /// told is written before it asked is then readable (a serializable read on this member,
    /// a watch from the current revision, a response header's revision). Returns at once when
    /// nothing answered is pending, which is nearly always: the commit follows the answer
    /// within tens of microseconds.
    pub async fn settled(&self) {
        if bugs::enabled(Bug::AnswerNotFenced) {
            return;
        }
        let _ = self.reached(self.answered.load(Ordering::SeqCst)).await;
    }

    /// Returns `true` once the recorded log index is at least `index`, or `false` if it never
    /// will be: the state machine stopped ([`Hub::abandon`]) or is gone.
    pub async fn reached(&self, index: u64) -> bool {
        self.reached_when(|applied| applied.index >= index).await
    }

    /// Returns `true` once the recorded revision is at least `revision`, or `false` if it never
    /// will be (as [`Hub::reached`]).
    pub async fn reached_revision(&self, revision: i64) -> bool {
        self.reached_when(|applied| applied.revision >= revision)
            .await
    }

    async fn reached_when(&self, done: impl Fn(&Applied) -> bool) -> bool {
        if done(&self.applied()) {
            return true;
        }
        let mut applied = self.subscribe();
        loop {
            if done(&applied.borrow_and_update()) {
                return true;
            }
            if self.abandoned.load(Ordering::SeqCst) || applied.changed().await.is_err() {
                return false;
            }
        }
    }

    /// Records the changes of a committed batch (revisions after the last recorded one, in
    /// order) and makes `applied` what the hub reports, waking nobody yet: the state machine
    /// [`Hub::announce`]s it next. With no watch stream open
    /// nothing is cached: a stream opened later reads what it needs of the past from the store.
    ///
    /// A watch a client creates after its put's answer waits for this ([`Hub::settled`]), so
    /// it starts after that put, and a read that waits for the put's index finds it applied.
    pub fn record(&self, changes: Vec<Change>, applied: Applied) {
        if !self.has_subscribers() {
            self.store(applied);
            return;
        }
        {
            let mut cache = self.cache.lock().expect("watch cache");
            let mut grouped: Vec<RevisionChanges> = Vec::new();
            for change in changes {
                match grouped.last_mut() {
                    Some(last) if last.revision == change.revision.main => {
                        last.changes.push(change)
                    }
                    _ => grouped.push(RevisionChanges {
                        revision: change.revision.main,
                        changes: vec![change],
                    }),
                }
            }
            for revision in grouped {
                let expected = cache.first + cache.revisions.len() as i64;
                if revision.revision != expected {
                    // Not contiguous (cannot happen: every revision has a change). Stay correct
                    // anyway: forget the cache, readers go to the store.
                    cache.revisions.clear();
                    cache.bytes = 0;
                    cache.first = revision.revision;
                }
                cache.bytes += size_of(&revision);
                cache.revisions.push_back(Arc::new(revision));
            }
            while cache.revisions.len() > CACHE_REVISIONS || cache.bytes > CACHE_BYTES {
                let Some(oldest) = cache.revisions.pop_front() else {
                    break;
                };
                cache.bytes -= size_of(&oldest);
                cache.first = oldest.revision + 1;
            }
            if cache.revisions.is_empty() {
                cache.first = applied.revision + 1;
            }
        }
        self.applied.store_if_modified(|current| {
            let changed = *current != applied;
            *current = applied;
            changed
        });
    }

    /// Wakes every watch stream and read waiting for what [`Hub::record`] recorded.
    pub fn announce(&self) {
        self.applied.notify();
    }

    /// After a snapshot replaced the store: nothing cached is valid any more.
    pub fn reset(&self, applied: Applied) {
        self.store(applied);
        self.announce();
    }

    /// Forgets everything cached and makes `applied` what the hub reports, waking nobody.
    fn store(&self, applied: Applied) {
        {
            let mut cache = self.cache.lock().expect("watch cache");
            if !cache.revisions.is_empty() {
                cache.revisions.clear();
                cache.bytes = 0;
            }
            cache.first = applied.revision + 1;
        }
        self.applied.store_if_modified(|current| {
            let changed = *current != applied;
            *current = applied;
            changed
        });
    }

    /// The cached changes of revisions `from..=to`, or `None` if the cache no longer holds
    /// `from`, or (`with_prev`) if one of them was applied without its previous key-value:
    /// read the store.
    pub fn cached(&self, from: i64, to: i64, with_prev: bool) -> Option<Vec<Arc<RevisionChanges>>> {
        let cache = self.cache.lock().expect("watch cache");
        if from < cache.first {
            return None;
        }
        let skip = (from - cache.first) as usize;
        let revisions: Vec<Arc<RevisionChanges>> = cache
            .revisions
            .iter()
            .skip(skip)
            .take_while(|revision| revision.revision <= to)
            .cloned()
            .collect();
        let unread = |revision: &Arc<RevisionChanges>| {
            revision.changes.iter().any(|change| !change.prev_read)
        };
        let checked = !crate::env::bugs::enabled(crate::env::bugs::Bug::CachedPrevUnchecked);
        if with_prev && checked && revisions.iter().any(unread) {
            return None;
        }
        Some(revisions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::{HistoryEvent, KeyValue, Revision};
    use std::future::Future;

    fn put(main: i64, sub: i64, key: &str) -> Change {
        Change {
            revision: Revision { main, sub },
            event: HistoryEvent::Put(KeyValue {
                key: key.as_bytes().to_vec(),
                mod_revision: main,
                ..KeyValue::default()
            }),
            prev: None,
            prev_read: true,
        }
    }

    fn applied(revision: i64) -> Applied {
        Applied {
            revision,
            compacted: -1,
            index: revision as u64,
        }
    }

    fn revisions(cached: Option<Vec<Arc<RevisionChanges>>>) -> Option<Vec<(i64, usize)>> {
        cached.map(|all| all.iter().map(|r| (r.revision, r.changes.len())).collect())
    }

    /// A hub with one watch stream subscribed (the cache only fills while one is).
    fn watched_hub() -> (Arc<Hub>, watch::Receiver<Applied>) {
        let hub = Hub::new(applied(1));
        let stream = hub.subscribe();
        (hub, stream)
    }

    #[test]
    fn groups_by_revision_and_answers_ranges() {
        let (hub, _stream) = watched_hub();
        assert_eq!(revisions(hub.cached(2, 5, false)), Some(vec![]));
        assert_eq!(
            revisions(hub.cached(1, 5, false)),
            None,
            "revision 1 is in the store"
        );
        hub.record(
            vec![put(2, 0, "a"), put(3, 0, "a"), put(3, 1, "b")],
            applied(3),
        );
        assert_eq!(hub.applied(), applied(3));
        assert_eq!(
            revisions(hub.cached(2, 3, false)),
            Some(vec![(2, 1), (3, 2)])
        );
        assert_eq!(revisions(hub.cached(3, 3, false)), Some(vec![(3, 2)]));
        assert_eq!(revisions(hub.cached(2, 2, false)), Some(vec![(2, 1)]));
        assert_eq!(revisions(hub.cached(4, 9, false)), Some(vec![]));
    }

    #[test]
    fn evicts_the_oldest_and_sends_readers_to_the_store() {
        let (hub, _stream) = watched_hub();
        let last = CACHE_REVISIONS as i64 + 11;
        for revision in 2..=last {
            hub.record(vec![put(revision, 0, "k")], applied(revision));
        }
        assert_eq!(revisions(hub.cached(11, 11, false)), None);
        assert_eq!(revisions(hub.cached(12, 12, false)), Some(vec![(12, 1)]));
        assert_eq!(
            hub.cached(12, last, false).map(|all| all.len()),
            Some(CACHE_REVISIONS)
        );
    }

    #[test]
    fn reset_forgets_everything_cached() {
        let (hub, _stream) = watched_hub();
        hub.record(vec![put(2, 0, "a")], applied(2));
        hub.reset(applied(9));
        assert_eq!(revisions(hub.cached(2, 9, false)), None);
        assert_eq!(revisions(hub.cached(10, 10, false)), Some(vec![]));
        hub.record(vec![put(10, 0, "a")], applied(10));
        assert_eq!(revisions(hub.cached(10, 10, false)), Some(vec![(10, 1)]));
    }

    /// Counts its wake-ups.
    struct Wakes(AtomicUsize);

    impl futures::task::ArcWake for Wakes {
        fn wake_by_ref(this: &Arc<Self>) {
            this.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A waker that counts its wakes.
    fn counting_waker() -> (Arc<Wakes>, std::task::Waker) {
        let wakes = Arc::new(Wakes(AtomicUsize::new(0)));
        let waker = futures::task::waker(wakes.clone());
        (wakes, waker)
    }

    #[test]
    fn record_wakes_nobody_until_announced_but_shows_at_once() {
        let (hub, mut stream) = watched_hub();
        let (wakes, waker) = counting_waker();
        let mut context = std::task::Context::from_waker(&waker);
        let mut waiting = Box::pin(stream.changed());
        assert!(waiting.as_mut().poll(&mut context).is_pending());
        hub.record(vec![put(2, 0, "a")], applied(2));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0, "recorded, not announced");
        assert_eq!(hub.applied(), applied(2), "a reader that looks sees it");
        assert_eq!(hub.subscribe().borrow().revision, 2);
        hub.announce();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert!(waiting.as_mut().poll(&mut context).is_ready());
    }

    #[test]
    fn settled_waits_for_the_commit_of_what_was_answered() {
        let hub = Hub::new(applied(1));
        let (_wakes, waker) = counting_waker();
        let mut context = std::task::Context::from_waker(&waker);
        assert!(
            Box::pin(hub.settled())
                .as_mut()
                .poll(&mut context)
                .is_ready(),
            "nothing answered: ready at once"
        );
        hub.answering(3);
        let mut waiting = Box::pin(hub.settled());
        assert!(waiting.as_mut().poll(&mut context).is_pending());
        hub.record(vec![put(2, 0, "a")], applied(2));
        hub.announce();
        assert!(
            waiting.as_mut().poll(&mut context).is_pending(),
            "an earlier batch committed, not the answered one"
        );
        hub.record(vec![put(3, 0, "b")], applied(3));
        hub.announce();
        assert!(waiting.as_mut().poll(&mut context).is_ready());
        hub.answering(2);
        assert!(
            Box::pin(hub.settled())
                .as_mut()
                .poll(&mut context)
                .is_ready(),
            "what was answered never goes back"
        );
    }

    #[test]
    fn settled_gives_up_once_the_commit_is_abandoned() {
        let hub = Hub::new(applied(1));
        let (wakes, waker) = counting_waker();
        let mut context = std::task::Context::from_waker(&waker);
        hub.answering(2);
        let mut waiting = Box::pin(hub.settled());
        assert!(waiting.as_mut().poll(&mut context).is_pending());
        hub.abandon();
        assert!(wakes.0.load(Ordering::SeqCst) > 0, "the waiter is woken");
        assert!(waiting.as_mut().poll(&mut context).is_ready());
    }

    #[test]
    fn nothing_is_cached_while_no_stream_watches() {
        let hub = Hub::new(applied(1));
        hub.record(vec![put(2, 0, "a")], applied(2));
        assert_eq!(hub.applied(), applied(2));
        assert_eq!(
            revisions(hub.cached(2, 2, false)),
            None,
            "revision 2 is in the store"
        );
        let _stream = hub.subscribe();
        hub.record(vec![put(3, 0, "a")], applied(3));
        assert_eq!(revisions(hub.cached(3, 3, false)), Some(vec![(3, 1)]));
    }

    #[test]
    fn changes_without_their_previous_key_values_go_only_to_watchers_without_prev_kv() {
        let (hub, _stream) = watched_hub();
        assert!(!hub.wants_prev());
        let unread = Change {
            prev_read: false,
            ..put(2, 0, "a")
        };
        hub.record(vec![unread], applied(2));
        hub.record(vec![put(3, 0, "a")], applied(3));
        assert_eq!(
            revisions(hub.cached(2, 3, false)),
            Some(vec![(2, 1), (3, 1)])
        );
        assert_eq!(revisions(hub.cached(2, 3, true)), None, "read the store");
        assert_eq!(revisions(hub.cached(3, 3, true)), Some(vec![(3, 1)]));
        let interest = hub.want_prev();
        let second = hub.want_prev();
        assert!(hub.wants_prev());
        drop(interest);
        assert!(hub.wants_prev());
        drop(second);
        assert!(!hub.wants_prev());
    }
}
