//! Known bugs, put back on demand, so that the simulator can show it catches each of them (the
//! sensitivity test in `madsim-tests/sim/sensitivity.rs`).
//!
//! Every one is a mistake that Raft or etcd implementations have really made, at the line of detcd
//! where it would be made. They exist only under `--cfg madsim`: in a real build [`enabled`] is a
//! constant `false` and every check folds away. A simulation turns one on for its own thread
//! (madsim runs a whole simulated cluster on one thread), so parallel tests never see each other's.

/// A re-introducible bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// The log store tells Raft an append is flushed before it is fsynced: a leader counts itself
    /// in a majority with entries a power loss can take back.
    AckBeforeDurable,
    /// Votes never reach the disk (kept in memory only): a restarted member is back in its first
    /// term, forgets whom it voted for, and can vote again in a term it already voted in.
    VoteNotDurable,
    /// A linearizable read on a follower is served from its own state machine, without a
    /// ReadIndex barrier through the leader.
    StaleFollowerRead,
    /// A restarted leader resumes its old term from the commit index it remembers, which may
    /// predate writes it acknowledged (openraft's `enable_leader_restore`).
    LeaderRestore,
    /// A watch from a past revision starts one revision late: a client that resumes after a
    /// failure misses the event at its resume revision.
    WatchSkipsOnResume,
    /// A watch from a past revision starts one revision early: a client that resumes after a
    /// failure gets the event before its resume revision a second time.
    WatchRepeatsOnResume,
    /// A keep-alive is answered by a leader that has lost its quorum (etcd#15247's kind): a new
    /// leader elsewhere may let the lease expire while the client believes it renewed.
    KeepAliveWithoutQuorum,
    /// A renewal of a checkpointed lease is acknowledged without resetting the checkpoint through
    /// Raft: the next leader starts from the stale remaining time and expires the lease early.
    CheckpointNotReset,
    /// A leader serves a linearizable read from its own state without confirming through a
    /// quorum that it still leads: a deposed leader cut off by a partition answers stale data.
    LeaderReadWithoutQuorum,
    /// Recovery takes a write-ahead log sector that fails its checksum for one that was never
    /// written: a flipped bit in the newest entries passes for a torn write and they are
    /// dropped, so the member has forgotten entries it acknowledged. (The same mistake in redb's
    /// single-phase commit was found by `corrupted_disk_is_fenced`.)
    CorruptWalTakenForTorn,
    /// A stream goes on catching up a watcher that is behind only when a new revision is
    /// applied (the "more is owed" round is lost): under a write lull a watcher that started
    /// from old history stays stuck one batch in, starved while the live watchers are served.
    CatchUpWaitsForWrites,
    /// A follower's linearizable read gets the leader's read index but reads its own state
    /// machine without waiting to have applied that far: it misses writes the leader had
    /// acknowledged before the read began.
    FollowerReadBeforeApplied,
    /// A linearizable read waits for openraft's `last_applied`, which counts the entries handed
    /// to the state machine's applier, not the ones it has committed: the read misses writes
    /// that were acknowledged (by whichever member applied them first) before it began.
    ReadBeforeCommitted,
    /// The leader's replication stream reports each AppendEntries as accepted when it is sent,
    /// not when the follower answers (pipelining mistaken for acknowledgement): the leader
    /// counts followers that have not got, or not fsynced, the entries in its majority, and an
    /// old leader cut off by a partition commits alone.
    AckOnSend,
    /// The leader's replication stream waits on its oldest unanswered request however long it
    /// takes: a stream to a follower behind a partition hangs (over TCP for minutes), and the
    /// follower gets nothing new until the old stream's backlog drains.
    StalledStreamKept,
    /// A snapshot install replaces the store but keeps the old key index (a cache not
    /// invalidated with what it caches): the member's reads look for keys where its old state
    /// had them, missing what the snapshot brought and finding what it removed.
    InstallKeepsIndex,
    /// The watch cache gives a watcher that wants previous key-values changes that were
    /// applied without them (while no watcher wanted them): its events lack `prev_kv`.
    CachedPrevUnchecked,
    /// A follower keeps its stream of forwarded requests to the leader after a request on it
    /// went unanswered for the request timeout: a partition can leave such a stream open with
    /// its messages held (over TCP for minutes), and after the heal every request the follower
    /// forwards waits behind them.
    ForwardLinkKept,
    /// The state machine answers a batch's clients before committing it, and reads do not
    /// wait for that commit: a client's serializable read (or a watch it creates) on the member
    /// that just answered its put sees the store from before the put.
    AnswerNotFenced,
    /// A watch stream that holds a revision to send it with the next one (pacing) waits for
    /// that next revision only: the last revision of a burst of writes is not delivered until
    /// something else is written.
    HeldWithoutDeadline,
    /// A follower passes the leader's answer to a write it forwarded on at once, before it has
    /// applied that write itself: a serializable read through the same follower right after
    /// the answer sees the store from before the write (etcd's follower waits for its own
    /// apply).
    ForwardedAnswerNotApplied,
    /// The state machine answers a batch of plain puts before applying it, from a revision it
    /// keeps apart from the store (here one behind it), and does not check those answers
    /// against what the entries apply as: a client is told its put made a revision it did not.
    EarlyAnswerStale,
}

impl Bug {
    pub const ALL: [Bug; 22] = [
        Bug::AckBeforeDurable,
        Bug::VoteNotDurable,
        Bug::StaleFollowerRead,
        Bug::LeaderRestore,
        Bug::WatchSkipsOnResume,
        Bug::WatchRepeatsOnResume,
        Bug::KeepAliveWithoutQuorum,
        Bug::CheckpointNotReset,
        Bug::LeaderReadWithoutQuorum,
        Bug::CorruptWalTakenForTorn,
        Bug::CatchUpWaitsForWrites,
        Bug::FollowerReadBeforeApplied,
        Bug::ReadBeforeCommitted,
        Bug::AckOnSend,
        Bug::StalledStreamKept,
        Bug::InstallKeepsIndex,
        Bug::CachedPrevUnchecked,
        Bug::ForwardLinkKept,
        Bug::AnswerNotFenced,
        Bug::HeldWithoutDeadline,
        Bug::ForwardedAnswerNotApplied,
        Bug::EarlyAnswerStale,
    ];

    #[cfg(madsim)]
    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

#[cfg(madsim)]
thread_local! {
    static ENABLED: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Turns `bug` on for the rest of this thread's simulation (`None`: every bug off).
#[cfg(madsim)]
pub fn enable(bug: Option<Bug>) {
    ENABLED.with(|enabled| enabled.set(bug.map_or(0, Bug::bit)));
}

/// Whether `bug` is on. Always `false` outside the simulation.
#[inline]
pub fn enabled(bug: Bug) -> bool {
    #[cfg(madsim)]
    {
        ENABLED.with(|enabled| enabled.get() & bug.bit() != 0)
    }
    #[cfg(not(madsim))]
    {
        let _ = bug;
        false
    }
}
