//! Raft's invariants, from what every member's storage reported (`detcd::env::probe`):
//!
//! - **Election safety**: at most one leader per term — every committed vote of a term, on any
//!   member, names the same leader.
//! - **One vote per term**: no member grants votes to two candidates in one term, across its
//!   restarts (a vote it forgot on a power loss would let it).
//! - **Log matching and leader completeness**: every member applies the same entry (term and
//!   content) at each log index, across restarts; a committed entry never changes or vanishes
//!   from under a later apply.
//! - **Terms never go back**: the term of a member's votes never decreases, across restarts
//!   (`currentTerm` is persistent state).
//! - **Applied index monotonic** on each member between restarts, snapshot installs included
//!   (a snapshot moves a member forward, never back).

use std::collections::{BTreeMap, HashMap};

use detcd::env::probe::Probe;

/// What was checked, for the trace and the log.
#[derive(Debug, Default)]
pub struct Summary {
    pub terms_with_leader: usize,
    pub votes: usize,
    pub applied: usize,
    pub indexes: usize,
    pub snapshots_installed: usize,
}

/// Checks `probes` (madsim host id and observation, in order); `name` names a host.
pub fn check(probes: &[(u64, Probe)], name: impl Fn(u64) -> String) -> Summary {
    let mut leaders: BTreeMap<u64, u64> = BTreeMap::new();
    let mut granted: HashMap<(u64, u64), u64> = HashMap::new();
    let mut entries: HashMap<u64, (u64, u64, u64)> = HashMap::new();
    let mut last_applied: HashMap<u64, u64> = HashMap::new();
    let mut term_of: HashMap<u64, u64> = HashMap::new();
    let mut summary = Summary::default();
    for (host, probe) in probes {
        match *probe {
            Probe::Started => {
                last_applied.remove(host);
            }
            Probe::Vote {
                term,
                voted_for,
                committed,
            } => {
                summary.votes += 1;
                let newest = term_of.entry(*host).or_default();
                assert!(
                    term >= *newest,
                    "{}'s term went back from {newest} to {term}",
                    name(*host)
                );
                *newest = term;
                if committed {
                    if let Some(&leader) = leaders.get(&term) {
                        assert_eq!(
                            leader,
                            voted_for,
                            "two leaders in term {term}: members {leader} and {voted_for} (seen \
                             on {})",
                            name(*host)
                        );
                    }
                    leaders.insert(term, voted_for);
                } else if let Some(&earlier) = granted.get(&(*host, term)) {
                    assert_eq!(
                        earlier,
                        voted_for,
                        "{} voted twice in term {term}: for member {earlier}, then {voted_for}",
                        name(*host)
                    );
                } else {
                    granted.insert((*host, term), voted_for);
                }
            }
            Probe::Applied {
                index,
                term,
                digest,
            } => {
                summary.applied += 1;
                if let Some(&previous) = last_applied.get(host) {
                    assert!(
                        index > previous,
                        "{} applied index {index} after {previous}",
                        name(*host)
                    );
                }
                last_applied.insert(*host, index);
                match entries.get(&index) {
                    Some(&(first_host, first_term, first_digest)) => assert!(
                        (first_term, first_digest) == (term, digest),
                        "log index {index} differs: {} applied term {first_term} digest \
                         {first_digest:016x}, {} applied term {term} digest {digest:016x}",
                        name(first_host),
                        name(*host)
                    ),
                    None => {
                        entries.insert(index, (*host, term, digest));
                    }
                }
            }
            Probe::SnapshotInstalled { index } => {
                summary.snapshots_installed += 1;
                if let Some(&previous) = last_applied.get(host) {
                    assert!(
                        index > previous,
                        "{} installed a snapshot of index {index} after applying {previous}",
                        name(*host)
                    );
                }
                last_applied.insert(*host, index);
            }
        }
    }
    summary.terms_with_leader = leaders.len();
    summary.indexes = entries.len();
    summary
}
