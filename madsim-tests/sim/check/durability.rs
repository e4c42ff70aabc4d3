//! Durability: every write the cluster acknowledged is in the committed history, at the revision
//! it was acknowledged with — after every crash, power loss and restart the schedule made (etcd's
//! promise: an acknowledged write was fsynced on a majority).

use super::{Change, Committed};
use crate::history::{Op, Outcome, Record};

/// Checks every acknowledged write of `history` against `committed`; returns how many.
pub fn check(history: &[Record], committed: &Committed) -> usize {
    let mut checked = 0;
    for record in history {
        let Outcome::Ok(answer) = &record.outcome else {
            continue;
        };
        let expected = match &record.op {
            Op::Put { key, value } => Change {
                key: key.clone(),
                value: Some(value.clone()),
            },
            Op::Cas { key, value, .. } if answer.succeeded => Change {
                key: key.clone(),
                value: Some(value.clone()),
            },
            Op::Delete { key } if answer.deleted > 0 => Change {
                key: key.clone(),
                value: None,
            },
            _ => continue,
        };
        let at = usize::try_from(answer.revision).unwrap_or(0);
        let found = committed.changes.get(at).map(Vec::as_slice).unwrap_or(&[]);
        assert!(
            found.contains(&expected),
            "an acknowledged write is lost: {record} was acknowledged at revision {at}, \
             which in the committed history (up to {}) holds {found:?}",
            committed.last()
        );
        checked += 1;
    }
    checked
}
