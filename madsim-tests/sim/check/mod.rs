//! The property checkers, one file each. Every chaos seed runs all of them:
//!
//! - [`linearizable`]: KV and txn operations, revision-aware (each write's revision pins its
//!   place in the order);
//! - [`durability`]: every acknowledged write is in the committed history after every crash;
//! - [`raft`]: at most one leader and one vote per member per term, the same entry at each log
//!   index on every member, applied indexes increasing;
//! - [`state`]: equal `HashKV` on every member at equal revision;
//! - [`liveness`]: after the faults stop, a leader and every member serving within a bound.
//!
//! The watch checker (ordered, unique, atomic, reliable, resumable, correct `prev_kv`) is
//! `crate::watch::check`, and the lease checker (never early, bounded late, against true
//! simulated time) is `crate::lease::check`; the chaos scenario runs both too.

pub mod durability;
pub mod linearizable;
pub mod liveness;
pub mod raft;
pub mod state;

use std::collections::BTreeMap;

use crate::watch::Seen;

/// One committed change: a put of `key` to `value`, or its delete (`value` is `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    pub value: Option<String>,
}

/// The committed history, from a watch of every key from revision 1: the changes of each
/// revision and the state after it.
pub struct Committed {
    /// `changes[r]`: what revision `r` changed (revisions 0 and 1 change nothing).
    pub changes: Vec<Vec<Change>>,
    /// `states[r]`: every key's value and mod revision after revision `r`.
    pub states: Vec<BTreeMap<String, (String, i64)>>,
}

impl Committed {
    /// Builds the history from `events` (a watch from revision 1, in order), checking that every
    /// revision from 2 to the last has at least one change and that deletes delete something.
    pub fn from_events(events: &[Seen]) -> Committed {
        let last = events.last().map_or(1, |e| e.mod_revision);
        let mut changes: Vec<Vec<Change>> = vec![Vec::new(); last as usize + 1];
        let mut states = vec![BTreeMap::new(); 2];
        let mut state: BTreeMap<String, (String, i64)> = BTreeMap::new();
        for event in events {
            let revision = event.mod_revision;
            assert!(
                revision as usize >= states.len() - 1,
                "the reference watch went back to revision {revision}"
            );
            while states.len() <= revision as usize {
                states.push(state.clone());
            }
            let key = String::from_utf8_lossy(&event.key).into_owned();
            if event.delete {
                assert!(
                    state.remove(&key).is_some(),
                    "revision {revision} deletes {key}, which did not exist"
                );
                changes[revision as usize].push(Change { key, value: None });
            } else {
                let value = String::from_utf8_lossy(&event.value).into_owned();
                state.insert(key.clone(), (value.clone(), revision));
                changes[revision as usize].push(Change {
                    key,
                    value: Some(value),
                });
            }
            states[revision as usize] = state.clone();
        }
        for (revision, changed) in changes.iter().enumerate().skip(2) {
            assert!(
                !changed.is_empty(),
                "revision {revision} changed nothing in the reference history"
            );
        }
        Committed { changes, states }
    }

    /// The newest revision.
    pub fn last(&self) -> i64 {
        self.states.len() as i64 - 1
    }

    /// The state after `revision`, if it exists.
    pub fn state(&self, revision: i64) -> Option<&BTreeMap<String, (String, i64)>> {
        usize::try_from(revision)
            .ok()
            .and_then(|r| self.states.get(r))
    }
}
