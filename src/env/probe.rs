//! What a simulation observes inside each member for its Raft checker: every vote a member makes
//! durable, and every log entry its state machine applies, tagged with the simulated host.
//!
//! Under `--cfg madsim` the observations go to a list on the simulation's thread, which the
//! harness reads with [`take`]; in a real build [`record`] is empty and its closure never runs.

/// One observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// The member's Raft started on its disk (a boot or a restart).
    Started,
    /// The member made this vote durable: for `voted_for` in `term`; `committed` once a quorum
    /// granted it (the vote of a leader, and of its followers once they hear from it).
    Vote {
        term: u64,
        voted_for: u64,
        committed: bool,
    },
    /// The member's state machine applied the entry at `index`, written in `term`, whose
    /// encoding hashes to `digest`.
    Applied { index: u64, term: u64, digest: u64 },
    /// The member's state machine was replaced by a snapshot of everything up to `index`.
    SnapshotInstalled { index: u64 },
}

#[cfg(madsim)]
thread_local! {
    static PROBES: std::cell::RefCell<Vec<(u64, Probe)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Records what `probe` returns, as seen on the current simulated host.
#[inline]
pub fn record(probe: impl FnOnce() -> Probe) {
    #[cfg(madsim)]
    {
        let host = madsim::plugin::node();
        let probe = probe();
        let host: u64 = host
            .to_string()
            .parse()
            .expect("a madsim node id is a number");
        PROBES.with(|probes| probes.borrow_mut().push((host, probe)));
    }
    #[cfg(not(madsim))]
    {
        let _ = probe;
    }
}

/// Every observation since the last call, with the madsim node id of its host.
#[cfg(madsim)]
pub fn take() -> Vec<(u64, Probe)> {
    PROBES.with(|probes| std::mem::take(&mut *probes.borrow_mut()))
}
