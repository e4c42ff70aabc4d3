//! One watch: its keys, filters and position in history, and how the events it is owed become
//! etcd's `WatchResponse`s.
//!
//! A watcher's position is `next`, the first revision it has not been sent. It is owed every
//! revision from `next` to the applied one; after a batch is sent, `next` moves past it, so a
//! revision is sent at most once, and since nothing moves `next` but sending, at least once.
//! Events of one revision always travel in one response (unless the watcher asked for
//! `fragment`, and then in consecutive fragments of one logical response).

use prost::Message;

use crate::apply::key_value;
use crate::env::bugs::{self, Bug};
use crate::mvcc::{Change, HistoryEvent, KeyRange};
use crate::pb::etcdserverpb::watch_create_request::FilterType;
use crate::pb::etcdserverpb::{WatchCreateRequest, WatchResponse};
use crate::pb::mvccpb::{event::EventType, Event};

/// At most this many revisions go into one response (etcd's `watchBatchMaxRevs`).
pub const MAX_REVISIONS_PER_RESPONSE: i64 = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watcher {
    pub id: i64,
    pub range: KeyRange,
    /// The first revision not yet sent.
    pub next: i64,
    pub prev_kv: bool,
    pub progress_notify: bool,
    pub fragment: bool,
    /// Live (etcd's synced group): sent each new revision on its own, with that revision in
    /// the header. Otherwise catching up: sent batches of history with the current revision.
    pub synced: bool,
    /// Sent events since the last progress tick (etcd then skips that tick's notification).
    pub sent_since_tick: bool,
    no_put: bool,
    no_delete: bool,
}

impl Watcher {
    /// The watcher `request` asks for, with id `id`, on a store at revision `current`:
    /// `start_revision` 0 means "from the next revision"; an empty key is `"\0"` (as etcd).
    pub fn new(id: i64, request: &WatchCreateRequest, current: i64) -> Self {
        let key = if request.key.is_empty() {
            vec![0]
        } else {
            request.key.clone()
        };
        let filters = request.filters();
        let (mut no_put, mut no_delete) = (false, false);
        for filter in filters {
            match filter {
                FilterType::Noput => no_put = true,
                FilterType::Nodelete => no_delete = true,
            }
        }
        Self {
            id,
            range: KeyRange::new(key, request.range_end.clone()),
            next: if request.start_revision > 0 {
                let past = request.start_revision <= current;
                if past && bugs::enabled(Bug::WatchSkipsOnResume) {
                    request.start_revision + 1
                } else if past
                    && request.start_revision > 1
                    && bugs::enabled(Bug::WatchRepeatsOnResume)
                {
                    request.start_revision - 1
                } else {
                    request.start_revision
                }
            } else {
                current + 1
            },
            synced: request.start_revision <= 0 || request.start_revision > current,
            sent_since_tick: false,
            prev_kv: request.prev_kv,
            progress_notify: request.progress_notify,
            fragment: request.fragment,
            no_put,
            no_delete,
        }
    }

    /// etcd refuses a watch whose `range_end` is neither empty, `"\0"`, nor after its key.
    pub fn is_empty_range(request: &WatchCreateRequest) -> bool {
        let key: &[u8] = if request.key.is_empty() {
            &[0]
        } else {
            &request.key
        };
        let end = request.range_end.as_slice();
        !end.is_empty() && end != [0] && key >= end
    }

    /// Whether this watcher is sent `change`.
    pub fn wants(&self, change: &Change) -> bool {
        match &change.event {
            HistoryEvent::Put(kv) => !self.no_put && self.range.contains(&kv.key),
            HistoryEvent::Delete(kv) => !self.no_delete && self.range.contains(&kv.key),
        }
    }

    /// The events this watcher is sent for `changes` (in revision order) on a store compacted
    /// at `compacted`. etcd reads `prev_kv` at the revision before the event, so an event right
    /// after the compaction revision (or at it) goes without one, even if it is still known.
    pub fn events<'a>(
        &self,
        changes: impl IntoIterator<Item = &'a Change>,
        compacted: i64,
    ) -> Vec<Event> {
        changes
            .into_iter()
            .filter(|change| self.wants(change))
            .map(|change| event(change, self.prev_kv && change.revision.main > compacted))
            .collect()
    }
}

/// etcd's event for a change: a put carries the new key-value, a delete the key and the
/// revision of the delete.
pub fn event(change: &Change, with_prev: bool) -> Event {
    assert!(
        !with_prev
            || change.prev_read
            || crate::env::bugs::enabled(crate::env::bugs::Bug::CachedPrevUnchecked),
        "a change without its previous key-value for a prev_kv watcher: {change:?}"
    );
    let (kind, kv) = match &change.event {
        HistoryEvent::Put(kv) => (EventType::Put, kv),
        HistoryEvent::Delete(kv) => (EventType::Delete, kv),
    };
    Event {
        r#type: kind as i32,
        kv: Some(key_value(kv.clone())),
        prev_kv: if with_prev {
            change.prev.clone().map(key_value)
        } else {
            None
        },
    }
}

/// Splits `response` as etcd's `sendFragments`: whole if it is under `max_bytes` or has fewer
/// than two events; otherwise in pieces under `max_bytes` (each holding at least one event),
/// every piece but the last marked `fragment`.
pub fn fragments(response: WatchResponse, max_bytes: usize) -> Vec<WatchResponse> {
    if response.encoded_len() < max_bytes || response.events.len() < 2 {
        return vec![response];
    }
    let mut template = response.clone();
    template.events = Vec::new();
    template.fragment = true;
    let base = template.encoded_len();
    let mut pieces = Vec::new();
    let mut current = template.clone();
    let mut size = base;
    for event in response.events {
        // An event's share of the message: its bytes plus the field's tag and length prefix.
        let len = event.encoded_len();
        let share = 1 + prost::length_delimiter_len(len) + len;
        if !current.events.is_empty() && size + share >= max_bytes {
            pieces.push(std::mem::replace(&mut current, template.clone()));
            size = base;
        }
        size += share;
        current.events.push(event);
    }
    current.fragment = false;
    pieces.push(current);
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::{KeyValue, Revision};

    fn change(main: i64, key: &str, put: bool, prev: Option<&str>) -> Change {
        let kv = KeyValue {
            key: key.as_bytes().to_vec(),
            mod_revision: main,
            value: if put { b"v".to_vec() } else { Vec::new() },
            ..KeyValue::default()
        };
        Change {
            revision: Revision { main, sub: 0 },
            event: if put {
                HistoryEvent::Put(kv)
            } else {
                HistoryEvent::Delete(kv)
            },
            prev: prev.map(|value| KeyValue {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
                ..KeyValue::default()
            }),
            prev_read: true,
        }
    }

    fn request(key: &str, range_end: &str) -> WatchCreateRequest {
        WatchCreateRequest {
            key: key.as_bytes().to_vec(),
            range_end: range_end.as_bytes().to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn start_revision_zero_means_after_the_current_one() {
        assert_eq!(Watcher::new(0, &request("a", ""), 7).next, 8);
        let mut from_three = request("a", "");
        from_three.start_revision = 3;
        assert_eq!(Watcher::new(0, &from_three, 7).next, 3);
    }

    #[test]
    fn empty_ranges_and_the_empty_key_as_etcd() {
        assert!(!Watcher::is_empty_range(&request("a", "")));
        assert!(!Watcher::is_empty_range(&request("a", "\0")));
        assert!(!Watcher::is_empty_range(&request("a", "b")));
        assert!(Watcher::is_empty_range(&request("b", "a")));
        assert!(Watcher::is_empty_range(&request("a", "a")));
        assert!(!Watcher::is_empty_range(&request("", "a")));
        // The empty key is "\0": alone it names that key, with "\0" every key.
        assert_eq!(Watcher::new(0, &request("", ""), 1).range.key, [0]);
        let all = Watcher::new(0, &request("", "\0"), 1);
        assert!(all.range.contains(b"\x01") && all.range.contains(b"zzz"));
    }

    #[test]
    fn synced_unless_replaying_history() {
        assert!(Watcher::new(0, &request("a", ""), 7).synced);
        let mut past = request("a", "");
        past.start_revision = 7;
        assert!(!Watcher::new(0, &past, 7).synced);
        past.start_revision = 8;
        assert!(Watcher::new(0, &past, 7).synced);
    }

    #[test]
    fn ranges_and_filters_select_events() {
        let changes = [
            change(2, "a", true, None),
            change(3, "ab", true, None),
            change(4, "b", true, None),
            change(5, "a", false, Some("v")),
        ];
        let keys = |watcher: &Watcher| -> Vec<(String, i32)> {
            watcher
                .events(&changes, -1)
                .iter()
                .map(|e| {
                    let kv = e.kv.as_ref().unwrap();
                    (String::from_utf8(kv.key.clone()).unwrap(), e.r#type)
                })
                .collect()
        };
        let one = Watcher::new(0, &request("a", ""), 1);
        assert_eq!(keys(&one), [("a".into(), 0), ("a".into(), 1)]);
        let prefix = Watcher::new(0, &request("a", "b"), 1);
        assert_eq!(keys(&prefix).len(), 3);
        let from_a = Watcher::new(0, &request("a", "\0"), 1);
        assert_eq!(keys(&from_a).len(), 4);
        let mut no_put = request("a", "\0");
        no_put.filters = vec![FilterType::Noput as i32];
        assert_eq!(
            keys(&Watcher::new(0, &no_put, 1)),
            [("a".into(), EventType::Delete as i32)]
        );
        let mut no_delete = request("a", "\0");
        no_delete.filters = vec![FilterType::Nodelete as i32];
        assert_eq!(keys(&Watcher::new(0, &no_delete, 1)).len(), 3);
    }

    #[test]
    fn prev_kv_only_when_asked() {
        let changes = [change(5, "a", false, Some("old"))];
        let plain = Watcher::new(0, &request("a", ""), 1);
        assert_eq!(plain.events(&changes, -1)[0].prev_kv, None);
        let mut with_prev = request("a", "");
        with_prev.prev_kv = true;
        let watcher = Watcher::new(0, &with_prev, 1);
        // Compacted at the event's revision: etcd cannot read the revision before it.
        assert_eq!(watcher.events(&changes, 5)[0].prev_kv, None);
        assert!(watcher.events(&changes, 4)[0].prev_kv.is_some());
        let events = watcher.events(&changes, -1);
        assert_eq!(events[0].prev_kv.as_ref().unwrap().value, b"old");
        // A delete event carries the key and the delete's revision only.
        let kv = events[0].kv.as_ref().unwrap();
        assert_eq!((kv.mod_revision, kv.version, kv.value.len()), (5, 0, 0));
    }

    #[test]
    fn fragments_split_under_the_limit_and_mark_all_but_the_last() {
        let big = |i: i64| Event {
            kv: Some(crate::pb::mvccpb::KeyValue {
                key: format!("k{i}").into_bytes(),
                value: vec![b'x'; 100],
                mod_revision: 9,
                ..Default::default()
            }),
            ..Default::default()
        };
        let response = WatchResponse {
            watch_id: 3,
            events: (0..10).map(big).collect(),
            ..Default::default()
        };
        let whole = fragments(response.clone(), response.encoded_len() + 1);
        assert_eq!(whole, vec![response.clone()]);
        let pieces = fragments(response.clone(), 350);
        assert!(pieces.len() > 1);
        for piece in &pieces {
            assert!(piece.encoded_len() < 350, "{}", piece.encoded_len());
            assert_eq!(piece.watch_id, 3);
        }
        let marks: Vec<bool> = pieces.iter().map(|p| p.fragment).collect();
        assert!(marks[..marks.len() - 1].iter().all(|&f| f));
        assert!(!marks[marks.len() - 1]);
        let rejoined: Vec<Event> = pieces.into_iter().flat_map(|p| p.events).collect();
        assert_eq!(rejoined, response.events);
        // One event too big alone still goes out, alone.
        let single = fragments(
            WatchResponse {
                events: vec![big(1)],
                ..Default::default()
            },
            10,
        );
        assert_eq!(single.len(), 1);
        assert!(!single[0].fragment);
    }
}
