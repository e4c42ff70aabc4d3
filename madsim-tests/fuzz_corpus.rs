//! Replays every file of the fuzz corpora (`fuzz/corpus/<target>/`: small seeds and every crash
//! the fuzzers ever found) through the same drivers the cargo-fuzz targets run, so a fixed bug
//! stays fixed without libFuzzer.

#![cfg(not(madsim))]
// The drivers use the simulated disk; reading the corpus needs the real file system.
#![allow(clippy::disallowed_methods)]

#[path = "../fuzz/src/lib.rs"]
mod drivers;

use std::path::Path;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).expect("read corpus file"))
        })
        .collect()
}

fn replay(target: &str, run: fn(&[u8])) {
    let files = corpus(target);
    assert!(
        files.len() >= 10,
        "{target}: only {} corpus files",
        files.len()
    );
    for (name, data) in &files {
        let result = std::panic::catch_unwind(|| run(data));
        assert!(
            result.is_ok(),
            "{target}: corpus file {name} fails; reproduce with \
             `cd fuzz && cargo +nightly fuzz run {target} corpus/{target}/{name}`"
        );
    }
    println!("{target}: {} corpus files replayed", files.len());
}

#[test]
fn mvcc_ops_corpus_replays() {
    replay("mvcc_ops", drivers::mvcc_ops);
}

#[test]
fn requests_corpus_replays() {
    replay("requests", drivers::requests);
}
