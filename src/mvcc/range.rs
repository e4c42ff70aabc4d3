//! The options of a range read and how they shape its answer: filters, sort, limit, count.

use super::{KeyValue, Revision};
use crate::storage::StorageError;

/// The answer to a range read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// Every key in the range, whatever the limit.
    pub count: i64,
    /// Whether the limit left keys out.
    pub more: bool,
}

/// How results are ordered (etcd's `RangeRequest.SortOrder`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortOrder {
    #[default]
    None,
    Ascend,
    Descend,
}

/// What results are ordered by (etcd's `RangeRequest.SortTarget`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortTarget {
    #[default]
    Key,
    Version,
    Create,
    Mod,
    Value,
}

/// The options of a range read that shape its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RangeOptions {
    /// At most this many key-values (0: no limit).
    pub limit: i64,
    /// Only count: no key-values are fetched, so `more` is false (as etcd).
    pub count_only: bool,
    /// Key-values without their values. Unless the sort needs them, a value is dropped as soon
    /// as it is read, so a keys-only scan of a large store never holds every value at once.
    pub keys_only: bool,
    pub sort_order: SortOrder,
    pub sort_target: SortTarget,
    /// Each filter is off when 0.
    pub min_mod_revision: i64,
    pub max_mod_revision: i64,
    pub min_create_revision: i64,
    pub max_create_revision: i64,
}

impl RangeOptions {
    fn has_filters(&self) -> bool {
        self.min_mod_revision != 0
            || self.max_mod_revision != 0
            || self.min_create_revision != 0
            || self.max_create_revision != 0
    }

    /// etcd sorts ascending when a target other than the key is named without an order.
    fn effective_order(&self) -> SortOrder {
        match (self.sort_order, self.sort_target) {
            (SortOrder::None, SortTarget::Key) => SortOrder::None,
            (SortOrder::None, _) => SortOrder::Ascend,
            (order, _) => order,
        }
    }

    fn keeps(&self, kv: &KeyValue) -> bool {
        let within = |value: i64, min: i64, max: i64| {
            (min == 0 || value >= min) && (max == 0 || value <= max)
        };
        within(
            kv.mod_revision,
            self.min_mod_revision,
            self.max_mod_revision,
        ) && within(
            kv.create_revision,
            self.min_create_revision,
            self.max_create_revision,
        )
    }
}

/// Chooses the key-values a range read answers, in etcd's order of operations
/// (`v3_server.go` `Range`):
///
/// 1. fetch: every key if an order was requested or a filter is set, otherwise the first
///    `limit + 1` keys in key order (all of them without a limit);
/// 2. drop keys outside the min/max mod and create revision filters;
/// 3. sort (stably: ties stay in key order) by the target, ascending if a target other than the
///    key is named with order NONE — which, as in etcd, sorts only the keys fetched in step 1;
/// 4. cut to `limit`, with `more` if that cut any.
///
/// `count` is every key in the range, whatever the limit and the filters. With `count_only` no
/// key-value is fetched at all, so nothing is cut and `more` is false.
///
/// `revisions` names the put of each key live in the range, in key order (from the key
/// index); `fetch` reads one from history. Only what step 1 needs is fetched.
pub(crate) fn select(
    revisions: &[Revision],
    mut fetch: impl FnMut(Revision) -> Result<KeyValue, StorageError>,
    options: &RangeOptions,
) -> Result<RangeResult, StorageError> {
    let limit = options.limit;
    let fetch_all = options.sort_order != SortOrder::None || options.has_filters() || limit <= 0;
    let mut result = RangeResult {
        count: revisions.len() as i64,
        ..RangeResult::default()
    };
    if options.count_only {
        return Ok(result);
    }
    // Without filters every fetched key is kept, so the first `limit + 1` tell `more`.
    let fetched = if fetch_all {
        revisions.len()
    } else {
        revisions.len().min(limit as usize + 1)
    };
    for &revision in &revisions[..fetched] {
        let mut kv = fetch(revision)?;
        if options.keeps(&kv) {
            if options.keys_only && options.sort_target != SortTarget::Value {
                kv.value = Vec::new();
            }
            result.kvs.push(kv);
        }
    }
    let compare = |a: &KeyValue, b: &KeyValue| match options.sort_target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    };
    match options.effective_order() {
        SortOrder::Ascend => result.kvs.sort_by(compare),
        SortOrder::Descend => result.kvs.sort_by(|a, b| compare(b, a)),
        SortOrder::None => {}
    }
    if limit > 0 && result.kvs.len() as i64 > limit {
        result.kvs.truncate(limit as usize);
        result.more = true;
    }
    // A sort by value kept the values until now.
    if options.keys_only && options.sort_target == SortTarget::Value {
        for kv in &mut result.kvs {
            kv.value = Vec::new();
        }
    }
    Ok(result)
}
