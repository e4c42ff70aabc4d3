//! Seeded randomness. In simulation every draw comes from madsim's per-run RNG, so a seed fixes
//! every random choice (election jitter, member IDs, crash models); in real mode it is the OS's.

pub use madsim::rand::Rng;

/// The random source for the current context: madsim's seeded RNG in simulation, the thread RNG
/// in real mode.
pub fn thread_rng() -> impl Rng {
    #[allow(clippy::disallowed_methods)]
    madsim::rand::thread_rng()
}

/// A random `u64`.
pub fn random_u64() -> u64 {
    thread_rng().gen()
}

/// A small deterministic generator for places that must not consume the global stream
/// (the disk's crash model is driven from a seed the harness draws once).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..bound` (bound > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }
}

/// A seed for a nested runtime (openraft-rt's conformance suite builds its own runtimes).
#[cfg(madsim)]
pub fn random_seed_for_new_runtime() -> u64 {
    match std::env::var("MADSIM_TEST_SEED") {
        Ok(seed) => seed.parse().unwrap_or(0),
        Err(_) => 0,
    }
}
