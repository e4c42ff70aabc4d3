//! Fuzz target: MVCC operations and crashes against the reference model (see `src/lib.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| detcd_fuzz::mvcc_ops(data));
