//! Linearizability of KV and txn operations, revision-aware.
//!
//! etcd orders every write by its revision, so the history need not be searched for an order
//! (the NP-hard part of a general checker): the committed history gives it. What remains is to
//! check that the clients' view agrees with it:
//!
//! 1. **Attribution.** Each revision changes exactly one key (the workload writes one key per
//!    operation), and an operation that was invoked and did not certainly fail made that change:
//!    a put or successful txn by its unique value, a delete by the revision it was acknowledged
//!    with or by an unacknowledged delete of that key. No value is committed twice, no failed
//!    operation took effect, and a txn that answered "failed" wrote nothing.
//! 2. **Results.** A read at revision `h` returned exactly the committed state at `h`; a txn's
//!    compare held at the revision before its write, or did not hold at the revision it read.
//! 3. **Real time.** If operation A completed before B was invoked, A's revision is before B's
//!    (a write's) or at most B's (a read's). And a read at `h` completed after the write of `h`
//!    was invoked: nothing is read from the future.
//!
//! Operations whose outcome is unknown take part with the revision the history shows for them,
//! and an infinite completion time. Changes under [`LEASED`] are lease registrations and expiries,
//! which the lease checker times; here they only count as revisions that reads must see.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::Committed;
use crate::history::{Kv, Op, Outcome, Record, LEASED, PREFIX};

/// What the checker counted, for the trace and the log.
#[derive(Debug, Default)]
pub struct Summary {
    pub ok: usize,
    pub unknown_happened: usize,
    pub unknown_not: usize,
    pub failed: usize,
}

/// A point of the real-time check: an operation pinned to a revision.
struct Pinned {
    index: usize,
    invoked: Duration,
    completed: Option<Duration>,
    revision: i64,
    write: bool,
}

fn state_kvs(state: &BTreeMap<String, (String, i64)>, key: Option<&str>) -> Vec<Kv> {
    state
        .iter()
        .filter(|(k, _)| key.map_or(k.starts_with(PREFIX), |key| k.as_str() == key))
        .map(|(k, (v, r))| (k.clone(), v.clone(), *r))
        .collect()
}

fn holds(state: &BTreeMap<String, (String, i64)>, key: &str, expect: &Option<String>) -> bool {
    state.get(key).map(|(value, _)| value) == expect.as_ref()
}

/// Checks `history` against `committed`; panics with the offending operation on a violation.
pub fn check(history: &[Record], committed: &Committed) -> Summary {
    let fail = |index: usize, why: String| -> ! {
        panic!("not linearizable: {why}\n  operation: {}", history[index])
    };
    // 1. Attribution.
    let by_value: HashMap<&str, usize> = history
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.op.written().map(|(_, value)| (value, i)))
        .collect();
    let mut revision_of: HashMap<usize, i64> = HashMap::new();
    let mut unclaimed_deletes: HashMap<&str, usize> = HashMap::new();
    for record in history {
        if let (Op::Delete { key }, Outcome::Unknown) = (&record.op, &record.outcome) {
            *unclaimed_deletes.entry(key).or_default() += 1;
        }
    }
    let acked_deletes: HashMap<(i64, &str), usize> = history
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match (&r.op, &r.outcome) {
            (Op::Delete { key }, Outcome::Ok(a)) if a.deleted > 0 => {
                Some(((a.revision, key.as_str()), i))
            }
            _ => None,
        })
        .collect();
    let mut writer_of: HashMap<i64, usize> = HashMap::new();
    for (revision, changes) in committed.changes.iter().enumerate().skip(2) {
        let revision = revision as i64;
        assert!(
            changes.len() == 1,
            "revision {revision} changed {changes:?}, but every operation changes one key"
        );
        let change = &changes[0];
        if change.key.starts_with(LEASED) {
            continue;
        }
        let writer = match &change.value {
            Some(value) => {
                let Some(&writer) = by_value.get(value.as_str()) else {
                    panic!("not linearizable: revision {revision} put {change:?}, which no client wrote");
                };
                if history[writer].op.written().map(|(key, _)| key) != Some(change.key.as_str()) {
                    fail(
                        writer,
                        format!("its value was committed under {}", change.key),
                    );
                }
                if revision_of.insert(writer, revision).is_some() {
                    fail(
                        writer,
                        format!("its value was committed twice, again at {revision}"),
                    );
                }
                writer
            }
            None => match acked_deletes.get(&(revision, change.key.as_str())) {
                Some(&writer) => writer,
                None => {
                    let left = unclaimed_deletes.entry(&change.key).or_default();
                    if *left == 0 {
                        panic!(
                            "not linearizable: revision {revision} deleted {}, but no delete of it \
                             was acknowledged there or left unanswered",
                            change.key
                        );
                    }
                    *left -= 1;
                    continue;
                }
            },
        };
        let record = &history[writer];
        match (&record.op, &record.outcome) {
            (_, Outcome::Failed) => {
                fail(writer, format!("it failed, yet took effect at {revision}"))
            }
            (Op::Cas { .. }, Outcome::Ok(answer)) if !answer.succeeded => fail(
                writer,
                format!("it answered failed, yet wrote at {revision}"),
            ),
            (Op::Cas { key, expect, .. }, _) => {
                let before = committed
                    .state(revision - 1)
                    .expect("the previous revision");
                if !holds(before, key, expect) {
                    fail(
                        writer,
                        format!(
                            "it wrote at {revision}, but at {} {key} was {:?}",
                            revision - 1,
                            before.get(key)
                        ),
                    );
                }
            }
            _ => {}
        }
        if let Outcome::Ok(answer) = &record.outcome {
            if answer.revision != revision {
                fail(writer, format!("it was committed at {revision}"));
            }
        }
        writer_of.insert(revision, writer);
    }

    // 2. Results, and the revision each operation is pinned to.
    let mut summary = Summary::default();
    let mut pinned = Vec::new();
    for (index, record) in history.iter().enumerate() {
        let answer = match &record.outcome {
            Outcome::Failed => {
                summary.failed += 1;
                continue;
            }
            Outcome::Unknown => {
                match revision_of.get(&index) {
                    Some(&revision) => {
                        summary.unknown_happened += 1;
                        pinned.push(Pinned {
                            index,
                            invoked: record.invoked,
                            completed: None,
                            revision,
                            write: true,
                        });
                    }
                    None => summary.unknown_not += 1,
                }
                continue;
            }
            Outcome::Ok(answer) => answer,
        };
        summary.ok += 1;
        let h = answer.revision;
        let Some(state) = committed.state(h) else {
            fail(
                index,
                format!(
                    "it answered revision {h}, beyond the committed {}",
                    committed.last()
                ),
            );
        };
        let write = match &record.op {
            Op::Put { .. } => true,
            Op::Delete { .. } => answer.deleted > 0,
            Op::Cas { .. } => answer.succeeded,
            Op::Get { .. } | Op::Scan => false,
        };
        if !write {
            let expected = match &record.op {
                Op::Get { key } => Some(state_kvs(state, Some(key))),
                Op::Scan => Some(state_kvs(state, None)),
                Op::Cas { key, expect, .. } => {
                    if holds(state, key, expect) {
                        fail(index, format!("its compare failed, but held at {h}"));
                    }
                    Some(state_kvs(state, Some(key)))
                }
                Op::Delete { key } => {
                    if state.contains_key(key) {
                        fail(
                            index,
                            format!("it deleted nothing, but {key} existed at {h}"),
                        );
                    }
                    None
                }
                Op::Put { .. } => None,
            };
            if let Some(expected) = expected {
                if expected != answer.kvs {
                    fail(
                        index,
                        format!(
                            "it read {:?}, but at {h} the state was {expected:?}",
                            answer.kvs
                        ),
                    );
                }
            }
            if let Some(&writer) = writer_of.get(&h) {
                if record
                    .completed
                    .is_some_and(|done| done <= history[writer].invoked)
                {
                    fail(
                        index,
                        format!(
                            "it read revision {h} before its write was invoked: {}",
                            history[writer]
                        ),
                    );
                }
            }
        }
        pinned.push(Pinned {
            index,
            invoked: record.invoked,
            completed: record.completed,
            revision: h,
            write,
        });
    }

    // 3. Real time: sweep invocations in order, knowing the newest revision completed before.
    let mut completions: Vec<(Duration, i64, usize)> = pinned
        .iter()
        .filter_map(|p| p.completed.map(|done| (done, p.revision, p.index)))
        .collect();
    completions.sort();
    pinned.sort_by_key(|p| (p.invoked, p.index));
    let mut next = 0;
    let mut newest: Option<(i64, usize)> = None;
    for p in &pinned {
        while next < completions.len() && completions[next].0 <= p.invoked {
            let (_, revision, index) = completions[next];
            if newest.is_none_or(|(r, _)| revision > r) {
                newest = Some((revision, index));
            }
            next += 1;
        }
        if let Some((revision, before)) = newest {
            let violated = if p.write {
                p.revision <= revision
            } else {
                p.revision < revision
            };
            if violated {
                fail(
                    p.index,
                    format!(
                        "it is at revision {}, but an operation that completed before it was \
                         invoked is at {revision}: {}",
                        p.revision, history[before]
                    ),
                );
            }
        }
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Answer;
    use crate::watch::Seen;

    fn put_event(key: &str, value: &str, revision: i64) -> Seen {
        Seen {
            delete: false,
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            create_revision: revision,
            mod_revision: revision,
            version: 1,
            prev: None,
        }
    }

    fn record(op: Op, invoked: u64, completed: Option<u64>, outcome: Outcome) -> Record {
        Record {
            client: 0,
            member: 0,
            op,
            invoked: Duration::from_millis(invoked),
            completed: completed.map(Duration::from_millis),
            outcome,
        }
    }

    fn put(value: &str, invoked: u64, completed: u64, revision: i64) -> Record {
        let op = Op::Put {
            key: "k/0".into(),
            value: value.into(),
        };
        let answer = Answer {
            revision,
            ..Default::default()
        };
        record(op, invoked, Some(completed), Outcome::Ok(answer))
    }

    fn get(invoked: u64, completed: u64, revision: i64, value: Option<(&str, i64)>) -> Record {
        let answer = Answer {
            revision,
            kvs: value
                .map(|(v, r)| vec![("k/0".to_string(), v.to_string(), r)])
                .unwrap_or_default(),
            ..Default::default()
        };
        record(
            Op::Get { key: "k/0".into() },
            invoked,
            Some(completed),
            Outcome::Ok(answer),
        )
    }

    fn committed() -> Committed {
        Committed::from_events(&[put_event("k/0", "a", 2), put_event("k/0", "b", 3)])
    }

    #[test]
    fn a_history_in_revision_and_real_time_order_passes() {
        let history = vec![
            put("a", 0, 10, 2),
            get(11, 12, 2, Some(("a", 2))),
            put("b", 13, 20, 3),
            get(15, 25, 3, Some(("b", 3))),
        ];
        let summary = check(&history, &committed());
        assert_eq!(summary.ok, 4);
    }

    #[test]
    #[should_panic(expected = "an operation that completed before it was invoked")]
    fn a_stale_read_after_a_completed_write_fails() {
        let history = vec![
            put("a", 0, 10, 2),
            put("b", 11, 20, 3),
            get(21, 22, 2, Some(("a", 2))),
        ];
        check(&history, &committed());
    }

    #[test]
    #[should_panic(expected = "but at 3 the state was")]
    fn a_read_that_does_not_match_its_revision_fails() {
        let history = vec![
            put("a", 0, 10, 2),
            put("b", 11, 20, 3),
            get(21, 22, 3, Some(("a", 2))),
        ];
        check(&history, &committed());
    }

    #[test]
    #[should_panic(expected = "which no client wrote")]
    fn a_committed_value_nobody_wrote_fails() {
        check(&[put("a", 0, 10, 2)], &committed());
    }

    #[test]
    #[should_panic(expected = "it failed, yet took effect")]
    fn a_failed_write_that_took_effect_fails() {
        let failed = record(
            Op::Put {
                key: "k/0".into(),
                value: "b".into(),
            },
            11,
            Some(12),
            Outcome::Failed,
        );
        check(&[put("a", 0, 10, 2), failed], &committed());
    }

    #[test]
    fn an_unknown_write_may_or_may_not_have_happened() {
        let unknown = record(
            Op::Put {
                key: "k/0".into(),
                value: "b".into(),
            },
            11,
            None,
            Outcome::Unknown,
        );
        let summary = check(&[put("a", 0, 10, 2), unknown.clone()], &committed());
        assert_eq!(summary.unknown_happened, 1);
        let only_a = Committed::from_events(&[put_event("k/0", "a", 2)]);
        let summary = check(&[put("a", 0, 10, 2), unknown], &only_a);
        assert_eq!(summary.unknown_not, 1);
    }
}
