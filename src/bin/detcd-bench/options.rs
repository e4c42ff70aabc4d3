//! Command-line options: kvbench's flags and defaults, plus those of detcd-bench's own workloads.

pub const USAGE: &str = "usage: detcd-bench --workload \
    put|range|range-serializable|txn-put|watch-latency|lease-keepalive|watch-one-stream|lease-expiry|scan-keys|ready \
    [--endpoints a,b] [--clients 1] [--conns 1] [--duration 10] [--warmup 0] [--total N] \
    [--key-space 10000] [--key-size 16] [--val-size 256] [--prefix kvb/] [--no-prefill] \
    [--watchers 100] [--rate 0] [--no-prev-kv] [--leases 1000] [--ttl 60] [--probe-rate 100] \
    [--timeout 30] [--seed 1] [--label text]";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Put,
    Range,
    RangeSerializable,
    TxnPut,
    WatchLatency,
    LeaseKeepalive,
    WatchOneStream,
    LeaseExpiry,
    ScanKeys,
    Ready,
}

impl Workload {
    const ALL: [Workload; 10] = [
        Workload::Put,
        Workload::Range,
        Workload::RangeSerializable,
        Workload::TxnPut,
        Workload::WatchLatency,
        Workload::LeaseKeepalive,
        Workload::WatchOneStream,
        Workload::LeaseExpiry,
        Workload::ScanKeys,
        Workload::Ready,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Range => "range",
            Workload::RangeSerializable => "range-serializable",
            Workload::TxnPut => "txn-put",
            Workload::WatchLatency => "watch-latency",
            Workload::LeaseKeepalive => "lease-keepalive",
            Workload::WatchOneStream => "watch-one-stream",
            Workload::LeaseExpiry => "lease-expiry",
            Workload::ScanKeys => "scan-keys",
            Workload::Ready => "ready",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub workload: Workload,
    pub endpoints: Vec<String>,
    pub clients: usize,
    pub conns: usize,
    /// Measured seconds (after the warm-up); `None` with `--total` alone means "until total".
    pub duration_secs: Option<f64>,
    pub warmup_secs: f64,
    pub total: Option<u64>,
    pub key_space: u64,
    pub key_size: usize,
    pub val_size: usize,
    pub prefix: String,
    pub prefill: bool,
    pub watchers: usize,
    /// Writer puts per second for the watch workloads; 0 = as fast as a serial writer goes.
    pub rate: f64,
    pub prev_kv: bool,
    pub leases: u64,
    pub ttl_seconds: i64,
    pub probe_rate: u64,
    pub timeout_secs: u64,
    pub seed: u64,
    pub label: String,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut workload = None;
        let mut endpoints = vec!["127.0.0.1:2379".to_string()];
        let (mut clients, mut conns, mut duration, mut rate, mut leases) =
            (None, None, None, None, None);
        let mut options = Options {
            workload: Workload::Put,
            endpoints: Vec::new(),
            clients: 1,
            conns: 1,
            duration_secs: None,
            warmup_secs: 0.0,
            total: None,
            key_space: 10_000,
            key_size: 16,
            val_size: 256,
            prefix: "kvb/".to_string(),
            prefill: true,
            watchers: 100,
            rate: 0.0,
            prev_kv: true,
            leases: 1000,
            ttl_seconds: 60,
            probe_rate: 100,
            timeout_secs: 30,
            seed: 1,
            label: String::new(),
        };
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            match flag.as_str() {
                "--no-prefill" => {
                    options.prefill = false;
                    continue;
                }
                "--no-prev-kv" => {
                    options.prev_kv = false;
                    continue;
                }
                _ => {}
            }
            let (name, inline) = match flag.split_once('=') {
                Some((name, value)) => (name, Some(value.to_string())),
                None => (flag.as_str(), None),
            };
            if !name.starts_with("--") {
                return Err(format!("unexpected argument {flag:?}"));
            }
            let value = inline
                .or_else(|| args.next().cloned())
                .ok_or_else(|| format!("{name} needs a value"))?;
            let integer = |value: &str| {
                value
                    .parse::<u64>()
                    .map_err(|_| format!("{name}: {value:?} is not a whole number"))
            };
            let seconds = |value: &str| match value.parse::<f64>() {
                Ok(number) if number.is_finite() && number >= 0.0 => Ok(number),
                _ => Err(format!("{name}: {value:?} is not a number of seconds")),
            };
            match name {
                "--workload" => {
                    let found = Workload::ALL.into_iter().find(|w| w.name() == value);
                    workload = Some(found.ok_or_else(|| format!("unknown workload {value:?}"))?);
                }
                "--endpoints" => {
                    endpoints = value
                        .split(',')
                        .filter(|endpoint| !endpoint.is_empty())
                        .map(str::to_string)
                        .collect()
                }
                "--clients" => clients = Some(integer(&value)?.max(1) as usize),
                "--conns" => conns = Some(integer(&value)?.max(1) as usize),
                "--duration" => duration = Some(seconds(&value)?),
                "--warmup" => options.warmup_secs = seconds(&value)?,
                "--total" => options.total = Some(integer(&value)?),
                "--key-space" => options.key_space = integer(&value)?.max(1),
                "--key-size" => options.key_size = integer(&value)? as usize,
                "--val-size" => options.val_size = integer(&value)? as usize,
                "--prefix" => options.prefix = value,
                "--watchers" => options.watchers = integer(&value)?.max(1) as usize,
                "--rate" => rate = Some(seconds(&value)?),
                "--leases" => leases = Some(integer(&value)?),
                "--ttl" => options.ttl_seconds = integer(&value)?.max(1) as i64,
                "--probe-rate" => options.probe_rate = integer(&value)?.max(1),
                "--timeout" => options.timeout_secs = integer(&value)?.max(1),
                "--seed" => options.seed = integer(&value)?,
                "--label" => options.label = value,
                other => return Err(format!("unknown flag {other}")),
            }
        }
        options.workload = workload.ok_or("--workload is required")?;
        if endpoints.is_empty() {
            return Err("--endpoints needs at least one endpoint".to_string());
        }
        options.endpoints = endpoints;
        // kvbench's defaults, except where a workload of detcd-bench's own needs another.
        let (default_clients, default_conns, default_rate, default_leases) = match options.workload
        {
            Workload::LeaseExpiry => (64, 16, 0.0, 100_000),
            Workload::WatchOneStream => (1, 1, 200.0, 1000),
            _ => (1, 1, 0.0, 1000),
        };
        options.clients = clients.unwrap_or(default_clients);
        options.conns = conns.unwrap_or(default_conns);
        options.rate = rate.unwrap_or(default_rate);
        options.leases = leases.unwrap_or(default_leases);
        options.duration_secs = match (duration, options.total) {
            (Some(duration), _) => Some(duration),
            (None, Some(_)) => None,
            (None, None) => Some(if options.workload == Workload::WatchOneStream {
                12.0
            } else {
                10.0
            }),
        };
        Ok(options)
    }

    /// The key of index `index`: the prefix and the index, zero-padded to `--key-size` bytes.
    pub fn key(&self, prefix: &str, index: u64) -> Vec<u8> {
        let digits = self.key_size.saturating_sub(prefix.len());
        format!("{prefix}{index:0digits$}").into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Options, String> {
        let args: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        Options::parse(&args)
    }

    #[test]
    fn kvbench_command_lines_parse_with_kvbench_defaults() {
        let options = parse("--workload put --endpoints a:1,b:2 --clients 64 --conns 16").unwrap();
        assert_eq!(options.workload, Workload::Put);
        assert_eq!(options.endpoints, ["a:1", "b:2"]);
        assert_eq!((options.clients, options.conns), (64, 16));
        assert_eq!(options.duration_secs, Some(10.0));
        assert_eq!(
            (options.key_space, options.key_size, options.val_size),
            (10_000, 16, 256)
        );
        let options = parse("--workload lease-expiry --leases=5 --warmup 1.5").unwrap();
        assert_eq!(
            (options.clients, options.conns, options.leases),
            (64, 16, 5)
        );
        assert_eq!(options.warmup_secs, 1.5);
        assert_eq!(
            parse("--workload put --total 7").unwrap().duration_secs,
            None
        );
    }

    #[test]
    fn bad_command_lines_say_what_is_wrong() {
        assert_eq!(parse("--clients 2").unwrap_err(), "--workload is required");
        assert!(parse("--workload nope")
            .unwrap_err()
            .contains("unknown workload"));
        assert!(parse("--workload put --clients x")
            .unwrap_err()
            .contains("whole number"));
        assert!(parse("--workload put --duration -1")
            .unwrap_err()
            .contains("seconds"));
        assert!(parse("--workload put --bogus 1")
            .unwrap_err()
            .contains("unknown flag"));
        assert!(parse("--workload put --clients")
            .unwrap_err()
            .contains("needs a value"));
    }

    #[test]
    fn keys_are_padded_to_the_key_size() {
        let options = parse("--workload put").unwrap();
        assert_eq!(options.key("kvb/", 42), b"kvb/000000000042");
        assert_eq!(
            options.key("a-long-prefix-over-16/", 7),
            b"a-long-prefix-over-16/7"
        );
    }
}
