//! Watch through etcd's Rust client against etcd 3.4 and detcd: what etcdctl does not show
//! (watch IDs, created / canceled responses and their reasons, headers, progress, several
//! watches on one stream, cancel, compacted and future start revisions, fragments) must be equal
//! once cluster and member IDs are set aside.

use std::time::Duration;

use etcd_client::{
    Client, CompactionOptions, DeleteOptions, EventType, PutOptions, WatchFilterType, WatchOptions,
    WatchResponse, WatchStream,
};

use crate::harness::{block_on, same_as_etcd, Process, TempDir};

fn kv(kv: Option<&etcd_client::KeyValue>) -> String {
    match kv {
        Some(kv) => format!(
            "{}={} c{} m{} v{}",
            kv.key_str().unwrap_or("?"),
            if kv.value().len() > 64 {
                format!("<{} bytes>", kv.value().len())
            } else {
                kv.value_str().unwrap_or("?").to_string()
            },
            kv.create_revision(),
            kv.mod_revision(),
            kv.version()
        ),
        None => "-".to_string(),
    }
}

fn response(response: &WatchResponse) -> String {
    let events: Vec<String> = response
        .events()
        .iter()
        .map(|e| {
            let kind = match e.event_type() {
                EventType::Put => "PUT",
                EventType::Delete => "DELETE",
            };
            format!("{kind} {} prev {}", kv(e.kv()), kv(e.prev_kv()))
        })
        .collect();
    format!(
        "id={} created={} canceled={} reason={:?} compact={} header_rev={} ids_set={} events=[{}]",
        response.watch_id(),
        response.created(),
        response.canceled(),
        response.cancel_reason(),
        response.compact_revision(),
        response.header().map_or(-1, |h| h.revision()),
        response
            .header()
            .is_some_and(|h| h.cluster_id() != 0 && h.member_id() != 0),
        events.join("; ")
    )
}

/// The next `count` responses of `stream` (or a timeout line), sorted: etcd sends the responses
/// of different watchers for one revision in no fixed order.
async fn next(stream: &mut WatchStream, count: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for _ in 0..count {
        match tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
            Ok(Ok(Some(r))) => lines.push(response(&r)),
            Ok(Ok(None)) => lines.push("stream ended".to_string()),
            Ok(Err(e)) => lines.push(format!("error: {e}")),
            Err(_) => lines.push("timeout".to_string()),
        }
    }
    lines.sort();
    lines
}

/// Nothing more arrives within a short while.
async fn nothing_more(stream: &mut WatchStream) -> String {
    match tokio::time::timeout(Duration::from_millis(400), stream.message()).await {
        Err(_) => "nothing more".to_string(),
        Ok(Ok(Some(r))) => format!("unexpected: {}", response(&r)),
        Ok(other) => format!("unexpected: {other:?}"),
    }
}

async fn cases(endpoint: &str) -> Vec<String> {
    let mut client = Client::connect([endpoint], None).await.expect("connect");
    let mut lines = Vec::new();
    client.put("a", "1", None).await.expect("put"); // rev 2

    // Several watches on one stream: server-chosen IDs from 0, a client-chosen one, a duplicate,
    // an empty range.
    let mut stream = client.watch("a", None).await.expect("watch");
    lines.extend(next(&mut stream, 1).await);
    let options = WatchOptions::new().with_prefix().with_watch_id(7);
    stream.watch("b", Some(options.clone())).await.unwrap();
    lines.extend(next(&mut stream, 1).await);
    stream.watch("b", Some(options)).await.unwrap();
    lines.extend(next(&mut stream, 1).await);
    let no_put = WatchOptions::new()
        .with_prev_key()
        .with_filters([WatchFilterType::NoPut]);
    stream.watch("b1", Some(no_put)).await.unwrap();
    lines.extend(next(&mut stream, 1).await);
    stream
        .watch("c", Some(WatchOptions::new().with_range("a")))
        .await
        .unwrap();
    lines.extend(next(&mut stream, 1).await);

    // Events go to the watches that match, filters applied.
    client.put("a", "2", None).await.expect("put"); // 3
    client.put("b1", "x", None).await.expect("put"); // 4
    lines.extend(next(&mut stream, 2).await);
    client.delete("b1", None).await.expect("delete"); // 5
    lines.extend(next(&mut stream, 2).await);
    let txn = etcd_client::Txn::new().and_then([
        etcd_client::TxnOp::put("b2", "y", None),
        etcd_client::TxnOp::put("a", "3", None),
    ]);
    client.txn(txn).await.expect("txn"); // 6
    lines.extend(next(&mut stream, 2).await);

    // Progress: the current revision, watch ID -1.
    stream.request_progress().await.unwrap();
    lines.extend(next(&mut stream, 1).await);
    // Cancel: answered for a live watch, silently ignored for an unknown one.
    stream.cancel(7).await.unwrap();
    lines.extend(next(&mut stream, 1).await);
    stream.cancel(99).await.unwrap();
    lines.push(nothing_more(&mut stream).await);
    client.put("b3", "z", None).await.expect("put"); // 7: watch 7 is gone
    lines.push(nothing_more(&mut stream).await);
    // A canceled ID may be chosen again.
    stream
        .watch(
            "b",
            Some(WatchOptions::new().with_prefix().with_watch_id(7)),
        )
        .await
        .unwrap();
    lines.extend(next(&mut stream, 1).await);

    // History: from a past revision, with prev_kv; a future start revision waits.
    let mut history = client
        .watch(
            "a",
            Some(WatchOptions::new().with_start_revision(2).with_prev_key()),
        )
        .await
        .expect("watch");
    lines.extend(next(&mut history, 2).await);
    history
        .watch("a", Some(WatchOptions::new().with_start_revision(9)))
        .await
        .unwrap();
    lines.extend(next(&mut history, 1).await);
    client.put("a", "4", None).await.expect("put"); // 8: only the first watch
    lines.extend(next(&mut history, 1).await);
    client.put("a", "5", None).await.expect("put"); // 9: both
    lines.extend(next(&mut history, 2).await);

    // Compaction: a watch from before it is created, then canceled with the compact revision.
    client
        .compact(6, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    let mut compacted = client
        .watch("a", Some(WatchOptions::new().with_start_revision(5)))
        .await
        .expect("watch");
    lines.extend(next(&mut compacted, 2).await);
    // From exactly the compact revision is allowed.
    compacted
        .watch(
            "a",
            Some(WatchOptions::new().with_start_revision(6).with_prev_key()),
        )
        .await
        .unwrap();
    lines.extend(next(&mut compacted, 2).await);

    // Fragments: two deletes of big values with prev_kv in one revision exceed the message
    // limit (max-request-bytes + 512 KiB) and come in two pieces.
    let big = vec![b'x'; 1_400_000];
    client.put("big1", big.clone(), None).await.expect("put"); // 10
    client.put("big2", big, None).await.expect("put"); // 11
    let mut fragments = client
        .watch(
            "big",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_prev_key()
                    .with_fragment(),
            ),
        )
        .await
        .expect("watch");
    lines.extend(next(&mut fragments, 1).await);
    client
        .delete("big", Some(DeleteOptions::new().with_prefix()))
        .await
        .expect("delete"); // 12
                           // etcd-client does not merge fragments: two responses of one event each.
    lines.extend(next(&mut fragments, 2).await);

    // A watch on a key with a lease-less put and prev_kv of a re-created key.
    client
        .put("a", "6", Some(PutOptions::new().with_prev_key()))
        .await
        .expect("put");
    lines.extend(next(&mut compacted, 1).await);
    lines
}

#[test]
fn watch_through_etcd_client_as_from_etcd() {
    same_as_etcd(
        "watch-client",
        |endpoint| async move { cases(&endpoint).await },
    );
}

/// A watcher whose client stops reading blocks only its own stream: another stream keeps
/// getting every event while the first is stalled, and when the slow one reads again it gets
/// everything, in order, once — partly caught up from history in redb, because 20,000 revisions
/// (80 MB) are more than a member keeps in memory (16,384 revisions or 64 MiB).
#[test]
fn a_slow_watcher_loses_nothing_and_stalls_no_one() {
    const PUTS: usize = 20_000;
    let dir = TempDir::new("slow-watcher");
    let detcd = Process::detcd_single(&dir, "detcd");
    let endpoint = detcd.client_endpoint.clone();
    block_on(async move {
        let mut client = Client::connect([endpoint.as_str()], None)
            .await
            .expect("connect");
        let prefix = WatchOptions::new().with_prefix();
        let mut slow = client
            .watch("s/", Some(prefix.clone()))
            .await
            .expect("watch");
        let mut fast = client.watch("s/", Some(prefix)).await.expect("watch");
        assert!(slow.message().await.expect("created").is_some());
        assert!(fast.message().await.expect("created").is_some());
        let fast_reader = tokio::spawn(async move {
            let mut seen = 0;
            let mut last = 0;
            while seen < PUTS {
                let response = tokio::time::timeout(Duration::from_secs(30), fast.message())
                    .await
                    .expect("the fast watcher is never starved")
                    .expect("message")
                    .expect("stream open");
                for event in response.events() {
                    let revision = event.kv().expect("kv").mod_revision();
                    assert!(revision > last, "fast watcher: {revision} after {last}");
                    last = revision;
                    seen += 1;
                }
            }
            seen
        });
        let value = vec![b'v'; 4096];
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let mut client = client.clone();
                let value = value.clone();
                tokio::spawn(async move {
                    for i in (w..PUTS).step_by(8) {
                        client
                            .put(format!("s/{i:05}"), value.clone(), None)
                            .await
                            .expect("put");
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.expect("writer");
        }
        assert_eq!(fast_reader.await.expect("fast reader"), PUTS);
        // Now the slow one reads: every put, in revision order, once.
        let mut seen = 0;
        let mut last = 0;
        while seen < PUTS {
            let response = tokio::time::timeout(Duration::from_secs(30), slow.message())
                .await
                .expect("the slow watcher catches up")
                .expect("message")
                .expect("stream open");
            for event in response.events() {
                let revision = event.kv().expect("kv").mod_revision();
                assert_eq!(revision, last.max(1) + 1, "slow watcher: a gap or a repeat");
                last = revision;
                seen += 1;
            }
        }
        assert_eq!(last, PUTS as i64 + 1);
    });
}

/// etcd#15220's kind: a progress notification is a promise that every event up to its revision
/// has been sent. A watch from revision 1 over a 5,000-revision history is caught up in batches
/// of 1,000 revisions, and the progress request sent right behind its create reaches the member
/// while it is still catching up: the answer must wait until every backlog event is out.
#[test]
fn a_progress_answer_waits_for_a_catching_up_watch() {
    const PUTS: usize = 5_000;
    let dir = TempDir::new("progress-catching-up");
    let detcd = Process::detcd_single(&dir, "detcd");
    let endpoint = detcd.client_endpoint.clone();
    block_on(async move {
        let client = Client::connect([endpoint.as_str()], None)
            .await
            .expect("connect");
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let mut client = client.clone();
                tokio::spawn(async move {
                    for i in (w..PUTS).step_by(8) {
                        client
                            .put(format!("p/{}", i % 100), format!("{i}"), None)
                            .await
                            .expect("put");
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.expect("writer");
        }
        let last = PUTS as i64 + 1;
        // Several streams, each a fresh chance for the request to overtake the catch-up.
        for attempt in 0..4 {
            let options = WatchOptions::new().with_prefix().with_start_revision(1);
            let mut stream = client
                .clone()
                .watch("p/", Some(options))
                .await
                .expect("watch");
            stream.request_progress().await.expect("progress request");
            let mut newest = 0;
            let progress = loop {
                let response = tokio::time::timeout(Duration::from_secs(30), stream.message())
                    .await
                    .expect("a response within 30 s")
                    .expect("message")
                    .expect("stream open");
                if response.created() {
                    continue;
                }
                match response.events().last() {
                    Some(event) => newest = event.kv().expect("kv").mod_revision(),
                    None => break response.header().expect("header").revision(),
                }
            };
            assert_eq!(
                (progress, newest),
                (last, last),
                "attempt {attempt}: progress notified at {progress} with events sent only up \
                 to {newest}"
            );
        }
    });
}

/// The client listener hands h2 many small frames at once and lets it coalesce them into one
/// write per connection (`src/env/net.rs`): 40 watch streams on each of two connections, and
/// every put's events become ready together. Each watcher must get every event, in order, whole,
/// with values on both sides of h2's 1 KiB copy threshold (copied into its write buffer below
/// it, written apart from it above).
#[test]
fn many_watch_streams_on_few_connections_get_every_event_whole() {
    const STREAMS_PER_CONNECTION: usize = 40;
    const PUTS: usize = 150;
    let sizes = [10usize, 300, 700, 1000, 1100, 3000];
    let dir = TempDir::new("coalesced-watchers");
    let detcd = Process::detcd_single(&dir, "detcd");
    let endpoint = detcd.client_endpoint.clone();
    block_on(async move {
        let mut readers = Vec::new();
        for _ in 0..2 {
            let mut client = Client::connect([endpoint.as_str()], None)
                .await
                .expect("connect");
            for _ in 0..STREAMS_PER_CONNECTION {
                let options = WatchOptions::new().with_prefix();
                let mut stream = client.watch("c/", Some(options)).await.expect("watch");
                assert!(stream.message().await.expect("created").is_some());
                readers.push(tokio::spawn(async move {
                    let mut seen = Vec::new();
                    while seen.len() < PUTS {
                        let response =
                            tokio::time::timeout(Duration::from_secs(30), stream.message())
                                .await
                                .expect("every event arrives")
                                .expect("message")
                                .expect("stream open");
                        for event in response.events() {
                            let kv = event.kv().expect("kv");
                            seen.push((kv.mod_revision(), kv.key().to_vec(), kv.value().to_vec()));
                        }
                    }
                    seen
                }));
            }
        }
        let mut writer = Client::connect([endpoint.as_str()], None)
            .await
            .expect("connect");
        let mut expected = Vec::new();
        for i in 0..PUTS {
            let key = format!("c/{i:03}").into_bytes();
            let value = vec![b'a' + (i % 26) as u8; sizes[i % sizes.len()]];
            let put = writer
                .put(key.clone(), value.clone(), None)
                .await
                .expect("put");
            let revision = put.header().expect("header").revision();
            expected.push((revision, key, value));
        }
        for reader in readers {
            let seen = reader.await.expect("reader");
            assert!(
                seen == expected,
                "a watcher saw {} events, not the {} puts in order and whole",
                seen.len(),
                expected.len()
            );
        }
    });
}
