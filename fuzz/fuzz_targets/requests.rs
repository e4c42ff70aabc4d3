//! Fuzz target: arbitrary bytes as etcd requests through validation and apply (see `src/lib.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| detcd_fuzz::requests(data));
