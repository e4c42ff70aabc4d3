//! Watch: etcd's event streams over the MVCC history.
//!
//! `hub`: per member, what the state machine applied and a cache of recent changes.
//! `watcher`: one watch's range, filters and position, and the responses it is owed.

pub mod hub;

pub use hub::{Applied, Hub, PrevInterest, RevisionChanges};
pub mod watcher;

pub use watcher::Watcher;
