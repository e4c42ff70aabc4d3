//! What every closed-loop workload shares: the measurement window (warm-up, then `--duration`
//! or `--total`), a per-task tally of latencies and errors, and the one JSON line it ends with.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use detcd::env::{Clock, Duration, Instant};

use crate::options::Options;

/// Decides, request by request, whether another may start and whether it counts.
pub struct Window {
    clock: Clock,
    measure_from: Instant,
    deadline: Option<Instant>,
    total: Option<u64>,
    issued: AtomicU64,
    stopped: AtomicBool,
}

impl Window {
    pub fn new(options: &Options, clock: &Clock) -> Window {
        let start = clock.now();
        let measure_from = start.plus(Duration::from_secs_f64(options.warmup_secs));
        let deadline = options
            .duration_secs
            .map(|secs| measure_from.plus(Duration::from_secs_f64(secs)));
        Window {
            clock: clock.clone(),
            measure_from,
            deadline,
            total: options.total,
            issued: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        }
    }

    /// `None` once the run is over; otherwise whether the next request is measured (`false`
    /// during the warm-up).
    pub fn next(&self) -> Option<bool> {
        if self.stopped.load(Ordering::Relaxed) {
            return None;
        }
        let now = self.clock.now();
        if self.deadline.is_some_and(|deadline| now >= deadline) {
            self.stopped.store(true, Ordering::Relaxed);
            return None;
        }
        let measured = now >= self.measure_from;
        if measured {
            if let Some(total) = self.total {
                if self.issued.fetch_add(1, Ordering::Relaxed) >= total {
                    self.stopped.store(true, Ordering::Relaxed);
                    return None;
                }
            }
        }
        Some(measured)
    }

    pub fn measure_from(&self) -> Instant {
        self.measure_from
    }
}

/// Latencies (microseconds), counts and errors of one task or, merged, of a run.
#[derive(Default)]
pub struct Tally {
    latencies_us: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
    first_measured: Option<Instant>,
    last_done: Option<Instant>,
}

impl Tally {
    /// One measured request that started at `started` and succeeded at `done`.
    pub fn ok(&mut self, started: Instant, done: Instant) {
        self.first_measured = Some(self.first_measured.map_or(started, |at| at.min(started)));
        self.last_done = Some(self.last_done.map_or(done, |at| at.max(done)));
        self.latencies_us
            .push((done.since(started).as_micros() as u64).max(1));
    }

    /// One event whose cause was sent at `sent` and which arrived at `arrived`.
    pub fn event(&mut self, sent_nanos: u64, arrived: Instant) {
        self.first_measured = Some(self.first_measured.map_or(arrived, |at| at.min(arrived)));
        self.last_done = Some(self.last_done.map_or(arrived, |at| at.max(arrived)));
        let micros = arrived.as_nanos().saturating_sub(sent_nanos) / 1000;
        self.latencies_us.push(micros.max(1));
    }

    pub fn error(&mut self, error: impl std::fmt::Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            let text = error.to_string();
            eprintln!("detcd-bench: error: {text}");
            self.first_error = Some(text);
        }
    }

    pub fn ops(&self) -> u64 {
        self.latencies_us.len() as u64
    }

    /// The p50 and p99 of what was measured, in milliseconds.
    pub fn quantiles_ms(&self) -> (f64, f64) {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        (quantile_ms(&sorted, 0.5), quantile_ms(&sorted, 0.99))
    }

    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// `{"n", "p50_ms", "p99_ms", "max_ms"}` of what was measured.
    pub fn summary(&self) -> String {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        format!(
            "{{\"n\":{},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3}}}",
            sorted.len(),
            quantile_ms(&sorted, 0.5),
            quantile_ms(&sorted, 0.99),
            quantile_ms(&sorted, 1.0)
        )
    }

    /// Takes `other`'s errors but not its latencies (a writer's, into its watchers' tally).
    pub fn merge_errors(&mut self, other: Tally) {
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    pub fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.first_measured = match (self.first_measured, other.first_measured) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_done = match (self.last_done, other.last_done) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    /// The run's JSON line: kvbench's fields, then `extra` (already JSON members, or empty).
    pub fn report(mut self, options: &Options, extra: &str) -> String {
        self.latencies_us.sort_unstable();
        let seconds = match (self.first_measured, self.last_done) {
            (Some(first), Some(last)) if last > first => last.since(first).as_secs_f64(),
            _ => 0.0,
        };
        let ops = self.ops();
        let ops_per_sec = if seconds > 0.0 {
            ops as f64 / seconds
        } else {
            0.0
        };
        let mean_ms = if ops == 0 {
            0.0
        } else {
            self.latencies_us.iter().sum::<u64>() as f64 / ops as f64 / 1000.0
        };
        let endpoints: Vec<String> = options.endpoints.iter().map(|e| json_string(e)).collect();
        let total = options.total.map_or("null".to_string(), |t| t.to_string());
        let duration = options
            .duration_secs
            .map_or("null".to_string(), |d| d.to_string());
        let mut line = format!(
            "{{\"workload\":{},\"label\":{},\"params\":{{\"endpoints\":[{}],\"clients\":{},\
             \"conns\":{},\"total\":{total},\"duration\":{duration},\"warmup\":{},\
             \"key_space\":{},\"key_size\":{},\"val_size\":{}}},\"ops\":{ops},\
             \"seconds\":{seconds:.3},\"ops_per_sec\":{ops_per_sec:.1},\"p50_ms\":{:.3},\
             \"p90_ms\":{:.3},\"p99_ms\":{:.3},\"p999_ms\":{:.3},\"max_ms\":{:.3},\
             \"mean_ms\":{mean_ms:.3},\"errors\":{}",
            json_string(options.workload.name()),
            json_string(&options.label),
            endpoints.join(","),
            options.clients,
            options.conns,
            options.warmup_secs,
            options.key_space,
            options.key_size,
            options.val_size,
            quantile_ms(&self.latencies_us, 0.50),
            quantile_ms(&self.latencies_us, 0.90),
            quantile_ms(&self.latencies_us, 0.99),
            quantile_ms(&self.latencies_us, 0.999),
            quantile_ms(&self.latencies_us, 1.0),
            self.errors,
        );
        if let Some(error) = &self.first_error {
            line.push_str(&format!(",\"first_error\":{}", json_string(error)));
        }
        if !extra.is_empty() {
            line.push(',');
            line.push_str(extra);
        }
        line.push('}');
        line
    }
}

/// The `q` quantile of sorted microseconds, in milliseconds (0 when there are none).
pub fn quantile_ms(sorted_us: &[u64], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((sorted_us.len() as f64 * q).ceil() as usize).clamp(1, sorted_us.len());
    sorted_us[rank - 1] as f64 / 1000.0
}

/// `text` as a JSON string literal.
pub fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A value of `size` lowercase letters drawn from `rng`.
pub fn value(size: usize, rng: &mut detcd::env::rng::SplitMix64) -> Vec<u8> {
    (0..size)
        .map(|_| b'a' + (rng.next_u64() % 26) as u8)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_ranks_of_the_sorted_latencies() {
        let sorted: Vec<u64> = (1..=1000).collect();
        assert_eq!(quantile_ms(&sorted, 0.5), 0.5);
        assert_eq!(quantile_ms(&sorted, 0.99), 0.99);
        assert_eq!(quantile_ms(&sorted, 0.999), 0.999);
        assert_eq!(quantile_ms(&sorted, 1.0), 1.0);
        assert_eq!(quantile_ms(&[7000], 0.5), 7.0);
        assert_eq!(quantile_ms(&[], 0.5), 0.0);
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }
}
