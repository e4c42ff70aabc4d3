//! A member's configuration, from etcd's command-line flags.
//!
//! detcd takes etcd's flag names and meanings (`--name`, `--data-dir`, the URL flags, the
//! `--initial-cluster*` flags, `--max-request-bytes`, ...), so scripts that start etcd start
//! detcd. With no flags it is one member named `default` with data in `default.detcd/`, clients on
//! 127.0.0.1:2379 and peers on 127.0.0.1:2380. Flags that only shape etcd's logging are accepted
//! and ignored, as they change nothing a client can see.
//!
//! Member and cluster IDs are derived from the names, peer URLs and cluster token, so every member
//! computes the same IDs from the same `--initial-cluster` without talking to the others.

use crate::node::compactor::AutoCompaction;
use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::env::{Duration, SocketAddr};
use crate::fnv::Fnv64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client_urls: Vec<String>,
    pub advertise_client_urls: Vec<String>,
    pub listen_peer_urls: Vec<String>,
    pub initial_advertise_peer_urls: Vec<String>,
    /// `name -> peer URLs`, from `--initial-cluster`.
    pub initial_cluster: BTreeMap<String, Vec<String>>,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    pub max_request_bytes: usize,
    /// `--max-txn-ops`: compares, and ops per branch, of one txn.
    pub max_txn_ops: usize,
    /// `--auto-compaction-mode` with `--auto-compaction-retention`.
    pub auto_compaction: AutoCompaction,
    /// `--experimental-watch-progress-notify-interval`: how often a watcher that asked for
    /// progress notifications and is idle gets one (at least 100ms, as etcd).
    pub watch_progress_notify_interval: Duration,
    /// `--watch-pace-interval` (detcd's own): revisions applied closer together than this are
    /// paced on watch streams (`api/watch.rs`); zero turns pacing off.
    pub watch_pace_interval: Duration,
    pub heartbeat_interval: Duration,
    pub election_timeout: Duration,
    /// `--snapshot-count`: applied entries between two snapshots. A snapshot copies the whole
    /// state machine, so taking one too often costs more than the log it lets us purge.
    pub snapshot_count: u64,
    /// `--experimental-lease-checkpoint-interval`: how long a lease goes without a renewal
    /// before its remaining TTL is written through Raft (so a new leader continues from it).
    /// `None` with `--experimental-enable-lease-checkpoint=false`: a new leader resets every
    /// lease, as etcd does by default.
    pub lease_checkpoint_interval: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        let name = "default".to_string();
        Self {
            data_dir: PathBuf::from(format!("{name}.detcd")),
            listen_client_urls: vec!["http://127.0.0.1:2379".into()],
            advertise_client_urls: vec!["http://127.0.0.1:2379".into()],
            listen_peer_urls: vec!["http://127.0.0.1:2380".into()],
            initial_advertise_peer_urls: vec!["http://127.0.0.1:2380".into()],
            initial_cluster: BTreeMap::from([(
                name.clone(),
                vec!["http://127.0.0.1:2380".to_string()],
            )]),
            initial_cluster_state: ClusterState::New,
            initial_cluster_token: "etcd-cluster".into(),
            name,
            max_request_bytes: 1536 * 1024,
            max_txn_ops: 128,
            auto_compaction: AutoCompaction::Off,
            watch_progress_notify_interval: Duration::from_secs(600),
            watch_pace_interval: DEFAULT_WATCH_PACE_INTERVAL,
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            snapshot_count: 100_000,
            lease_checkpoint_interval: Some(crate::node::lessor::DEFAULT_CHECKPOINT_INTERVAL),
        }
    }
}

pub const HELP: &str = "\
Usage: detcd [flags]

detcd is a distributed key-value store that speaks etcd's v3 API.
With no flags it starts one member named 'default', data in 'default.detcd/',
clients on http://127.0.0.1:2379, peers on http://127.0.0.1:2380.

Member:
  --name 'default'                      human-readable name of this member
  --data-dir '${name}.detcd'            path to the data directory
  --listen-client-urls 'http://127.0.0.1:2379'
                                        URLs to listen on for client traffic
  --advertise-client-urls 'http://127.0.0.1:2379'
                                        client URLs advertised to the cluster
  --listen-peer-urls 'http://127.0.0.1:2380'
                                        URLs to listen on for peer traffic
  --initial-advertise-peer-urls 'http://127.0.0.1:2380'
                                        this member's peer URLs, as the cluster knows them
  --heartbeat-interval '100'            time (in milliseconds) of a heartbeat interval
  --election-timeout '1000'             time (in milliseconds) for an election to timeout
  --snapshot-count '100000'             number of committed transactions to trigger a snapshot
  --max-request-bytes '1572864'         maximum client request size in bytes
  --max-txn-ops '128'                   maximum compares, and operations per branch, in a txn
  --auto-compaction-mode 'periodic'     'periodic' (retention is a time: hours if a bare number,
                                        or e.g. '30m') or 'revision' (keep that many revisions)
  --auto-compaction-retention '0'       how much history auto-compaction keeps; 0 disables it
  --experimental-watch-progress-notify-interval '10m0s'
                                        interval of progress notifications to idle watchers
                                        that ask for them (Go duration, at least 100ms)
  --watch-pace-interval '800us'         detcd's own: when revisions come closer together than
                                        this, a watch stream holds each one for the next (up to
                                        a quarter longer) and sends both in one response; 0 off
  --experimental-enable-lease-checkpoint 'true'
                                        keep a lease's remaining TTL across leader changes and
                                        restarts ('false': a new leader resets it, as etcd)
  --experimental-lease-checkpoint-interval '5s'
                                        how long a lease goes unrenewed before its remaining
                                        TTL is checkpointed through Raft (Go duration)

Clustering:
  --initial-cluster 'default=http://127.0.0.1:2380'
                                        initial cluster configuration for bootstrapping
  --initial-cluster-state 'new'         'new' or 'existing'
  --initial-cluster-token 'etcd-cluster'
                                        initial cluster token for the cluster during bootstrap

Logging (accepted for compatibility with etcd's command lines):
  --logger, --log-outputs, --log-level

  -h, --help                            show this help
";

/// Why flags were refused; printed as etcd prints flag errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagError(pub String);

impl std::fmt::Display for FlagError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Invocation {
    Run(Box<Config>),
    Help,
}

fn url_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_string)
        .collect()
}

/// `--watch-pace-interval` by default: writes over ~1,250 revisions a second are paced.
pub const DEFAULT_WATCH_PACE_INTERVAL: Duration = Duration::from_micros(800);

/// etcd raises a shorter `--experimental-watch-progress-notify-interval` to this.
pub const MIN_WATCH_PROGRESS_NOTIFY_INTERVAL: Duration = Duration::from_millis(100);

/// etcd's reading of `--auto-compaction-retention` for `mode`: a bare non-negative integer is
/// hours (periodic) or revisions (revision); anything else is a Go duration such as `30m`
/// (in revision mode, its nanoseconds are the revision count, as etcd). 0 is off.
fn auto_compaction(mode: &str, retention: &str) -> Result<AutoCompaction, FlagError> {
    let periodic = match mode {
        "" | "periodic" => true,
        "revision" => false,
        other => {
            return Err(FlagError(format!(
            "invalid auto-compaction-mode {other:?}: valid values are \"periodic\", \"revision\""
        )))
        }
    };
    let invalid = || FlagError(format!("invalid auto-compaction-retention {retention:?}"));
    let duration = match retention.parse::<i64>() {
        Ok(n) if n >= 0 => {
            if periodic {
                Duration::from_secs(n as u64 * 3600)
            } else {
                return Ok(match n {
                    0 => AutoCompaction::Off,
                    n => AutoCompaction::Revision(n),
                });
            }
        }
        _ => go_duration(retention).ok_or_else(invalid)?,
    };
    Ok(match (duration.is_zero(), periodic) {
        (true, _) => AutoCompaction::Off,
        (false, true) => AutoCompaction::Periodic(duration),
        (false, false) => {
            AutoCompaction::Revision(i64::try_from(duration.as_nanos()).map_err(|_| invalid())?)
        }
    })
}

/// Parses a Go `time.ParseDuration` string without a sign: `1h30m`, `5m`, `2.5s`, `100ms`.
fn go_duration(text: &str) -> Option<Duration> {
    if text.is_empty() {
        return None;
    }
    // Go takes a bare zero without a unit.
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * nanos_per_unit;
    }
    Some(Duration::from_nanos(total as u64))
}

fn millis(flag: &str, value: &str) -> Result<Duration, FlagError> {
    value
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| FlagError(format!("invalid value {value:?} for flag --{flag}")))
}

impl Config {
    /// Parses etcd-style flags (`--flag value` or `--flag=value`), without the program name.
    pub fn from_args(args: &[String]) -> Result<Invocation, FlagError> {
        let mut config = Config::default();
        let mut compaction_mode = "periodic".to_string();
        let mut compaction_retention = "0".to_string();
        let mut data_dir_set = false;
        let mut advertise_client_set = false;
        let mut advertise_peer_set = false;
        let mut initial_cluster_set = false;
        let mut lease_checkpoints = true;
        let mut checkpoint_interval = crate::node::lessor::DEFAULT_CHECKPOINT_INTERVAL;
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            if arg == "-h" || arg == "--help" || arg == "-help" {
                return Ok(Invocation::Help);
            }
            let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
                return Err(FlagError(format!(
                    "'{arg}' is not a valid flag (detcd takes no positional arguments)"
                )));
            };
            let (flag, inline_value) = match flag.split_once('=') {
                Some((flag, value)) => (flag, Some(value.to_string())),
                None => (flag, None),
            };
            let mut value = || -> Result<String, FlagError> {
                match &inline_value {
                    Some(value) => Ok(value.clone()),
                    None => args
                        .next()
                        .cloned()
                        .ok_or_else(|| FlagError(format!("flag needs an argument: --{flag}"))),
                }
            };
            match flag {
                "name" => config.name = value()?,
                "data-dir" => {
                    config.data_dir = PathBuf::from(value()?);
                    data_dir_set = true;
                }
                "listen-client-urls" => config.listen_client_urls = url_list(&value()?),
                "advertise-client-urls" => {
                    config.advertise_client_urls = url_list(&value()?);
                    advertise_client_set = true;
                }
                "listen-peer-urls" => config.listen_peer_urls = url_list(&value()?),
                "initial-advertise-peer-urls" => {
                    config.initial_advertise_peer_urls = url_list(&value()?);
                    advertise_peer_set = true;
                }
                "initial-cluster" => {
                    config.initial_cluster = parse_initial_cluster(&value()?)?;
                    initial_cluster_set = true;
                }
                "initial-cluster-state" => {
                    config.initial_cluster_state = match value()?.as_str() {
                        "new" => ClusterState::New,
                        "existing" => ClusterState::Existing,
                        other => {
                            return Err(FlagError(format!(
                                "invalid value {other:?} for flag --initial-cluster-state: valid values are \"new\", \"existing\""
                            )))
                        }
                    }
                }
                "initial-cluster-token" => config.initial_cluster_token = value()?,
                "max-request-bytes" => {
                    let raw = value()?;
                    config.max_request_bytes = raw.parse().map_err(|_| {
                        FlagError(format!("invalid value {raw:?} for flag --max-request-bytes"))
                    })?;
                }
                "snapshot-count" => {
                    let raw = value()?;
                    config.snapshot_count = match raw.parse() {
                        // etcd takes 0 as its default.
                        Ok(0) => Config::default().snapshot_count,
                        Ok(count) => count,
                        Err(_) => {
                            return Err(FlagError(format!(
                                "invalid value {raw:?} for flag --snapshot-count"
                            )))
                        }
                    };
                }
                "max-txn-ops" => {
                    let raw = value()?;
                    config.max_txn_ops = raw.parse().map_err(|_| {
                        FlagError(format!("invalid value {raw:?} for flag --max-txn-ops"))
                    })?;
                }
                "auto-compaction-mode" => compaction_mode = value()?,
                "auto-compaction-retention" => compaction_retention = value()?,
                "experimental-watch-progress-notify-interval" => {
                    let raw = value()?;
                    let interval = go_duration(&raw).ok_or_else(|| {
                        FlagError(format!(
                            "invalid value {raw:?} for flag \
                             --experimental-watch-progress-notify-interval"
                        ))
                    })?;
                    config.watch_progress_notify_interval =
                        interval.max(MIN_WATCH_PROGRESS_NOTIFY_INTERVAL);
                }
                "watch-pace-interval" => {
                    let raw = value()?;
                    config.watch_pace_interval = go_duration(&raw).ok_or_else(|| {
                        FlagError(format!(
                            "invalid value {raw:?} for flag --watch-pace-interval"
                        ))
                    })?;
                }
                "experimental-enable-lease-checkpoint" => {
                    // A Go bool flag: bare means true; a value only with `=`.
                    let raw = inline_value.clone().unwrap_or_else(|| "true".to_string());
                    lease_checkpoints = match raw.as_str() {
                        "true" | "1" | "t" | "T" | "TRUE" | "True" => true,
                        "false" | "0" | "f" | "F" | "FALSE" | "False" => false,
                        _ => {
                            return Err(FlagError(format!(
                                "invalid boolean value {raw:?} for -{flag}: parse error"
                            )))
                        }
                    };
                }
                "experimental-lease-checkpoint-interval" => {
                    let raw = value()?;
                    let interval = go_duration(&raw).filter(|d| !d.is_zero()).ok_or_else(|| {
                        FlagError(format!(
                            "invalid value {raw:?} for flag \
                             --experimental-lease-checkpoint-interval"
                        ))
                    })?;
                    checkpoint_interval = interval;
                }
                "heartbeat-interval" => config.heartbeat_interval = millis(flag, &value()?)?,
                "election-timeout" => config.election_timeout = millis(flag, &value()?)?,
                // etcd's logging flags: accepted so etcd command lines work unchanged.
                "logger" | "log-outputs" | "log-level" => {
                    value()?;
                }
                _ => return Err(FlagError(format!("flag provided but not defined: -{flag}"))),
            }
        }
        config.lease_checkpoint_interval = lease_checkpoints.then_some(checkpoint_interval);
        if !data_dir_set {
            config.data_dir = PathBuf::from(format!("{}.detcd", config.name));
        }
        if !advertise_client_set {
            config.advertise_client_urls = config.listen_client_urls.clone();
        }
        if !advertise_peer_set {
            config.initial_advertise_peer_urls = config.listen_peer_urls.clone();
        }
        if !initial_cluster_set {
            config.initial_cluster = BTreeMap::from([(
                config.name.clone(),
                config.initial_advertise_peer_urls.clone(),
            )]);
        }
        config.auto_compaction = auto_compaction(&compaction_mode, &compaction_retention)?;
        config.validate()?;
        Ok(Invocation::Run(Box::new(config)))
    }

    fn validate(&self) -> Result<(), FlagError> {
        for url in self
            .listen_client_urls
            .iter()
            .chain(&self.listen_peer_urls)
            .chain(&self.advertise_client_urls)
            .chain(&self.initial_advertise_peer_urls)
        {
            socket_addr(url)?;
        }
        if self.listen_client_urls.is_empty() || self.listen_peer_urls.is_empty() {
            return Err(FlagError(
                "at least one client and one peer URL to listen on is required".into(),
            ));
        }
        let Some(own_peer_urls) = self.initial_cluster.get(&self.name) else {
            return Err(FlagError(format!(
                "couldn't find local name {:?} in the initial cluster configuration",
                self.name
            )));
        };
        let mut own_sorted = own_peer_urls.clone();
        own_sorted.sort();
        let mut advertised = self.initial_advertise_peer_urls.clone();
        advertised.sort();
        if own_sorted != advertised {
            return Err(FlagError(format!(
                "--initial-cluster has {}={} but missing from --initial-advertise-peer-urls={}",
                self.name,
                own_peer_urls.join(","),
                self.initial_advertise_peer_urls.join(",")
            )));
        }
        if self.heartbeat_interval.is_zero() || self.election_timeout < self.heartbeat_interval * 5
        {
            return Err(FlagError(
                "--election-timeout must be at least 5 times --heartbeat-interval".into(),
            ));
        }
        Ok(())
    }

    /// This member's Raft node ID (etcd's member ID).
    pub fn member_id(&self) -> u64 {
        member_id(
            &self.name,
            &self.initial_advertise_peer_urls,
            &self.initial_cluster_token,
        )
    }

    /// The cluster ID: derived from every initial member's ID and the token.
    pub fn cluster_id(&self) -> u64 {
        let mut hash = Fnv64::new();
        for (name, urls) in &self.initial_cluster {
            hash.write(&member_id(name, urls, &self.initial_cluster_token).to_be_bytes());
        }
        hash.write(self.initial_cluster_token.as_bytes());
        hash.finish()
    }

    /// `member ID -> (name, peer URLs)` of the initial cluster.
    pub fn initial_members(&self) -> BTreeMap<u64, (String, Vec<String>)> {
        self.initial_cluster
            .iter()
            .map(|(name, urls)| {
                (
                    member_id(name, urls, &self.initial_cluster_token),
                    (name.clone(), urls.clone()),
                )
            })
            .collect()
    }
}

fn parse_initial_cluster(value: &str) -> Result<BTreeMap<String, Vec<String>>, FlagError> {
    let mut cluster: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, url) = part.split_once('=').ok_or_else(|| {
            FlagError(format!(
                "invalid --initial-cluster entry {part:?}: want name=url"
            ))
        })?;
        socket_addr(url)?;
        cluster
            .entry(name.to_string())
            .or_default()
            .push(url.to_string());
    }
    if cluster.is_empty() {
        return Err(FlagError("--initial-cluster is empty".into()));
    }
    Ok(cluster)
}

/// The socket address of an `http://host:port` URL (hosts must be IP literals or `localhost`).
pub fn socket_addr(url: &str) -> Result<SocketAddr, FlagError> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        FlagError(format!(
            "URL scheme must be http: {url:?} (TLS is not supported yet)"
        ))
    })?;
    let host_port = rest.trim_end_matches('/');
    let host_port = host_port.replacen("localhost:", "127.0.0.1:", 1);
    host_port
        .parse()
        .map_err(|_| FlagError(format!("invalid URL {url:?}: want http://IP:port")))
}

fn member_id(name: &str, peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut hash = Fnv64::new();
    hash.write(name.as_bytes());
    for url in &urls {
        hash.write(b"\n");
        hash.write(url.as_bytes());
    }
    hash.write(b"\n");
    hash.write(token.as_bytes());
    // Raft reserves no ID, but etcd never uses 0 for a member; neither do we.
    hash.finish().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, FlagError> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        match Config::from_args(&args)? {
            Invocation::Run(config) => Ok(*config),
            Invocation::Help => panic!("unexpected help"),
        }
    }

    #[test]
    fn auto_compaction_reads_retention_as_etcd() {
        let hour = Duration::from_secs(3600);
        let cases: [(&[&str], AutoCompaction); 7] = [
            (&[], AutoCompaction::Off),
            (
                &["--auto-compaction-retention", "1"],
                AutoCompaction::Periodic(hour),
            ),
            (
                &["--auto-compaction-retention=1h30m"],
                AutoCompaction::Periodic(hour + hour / 2),
            ),
            (
                &[
                    "--auto-compaction-mode",
                    "periodic",
                    "--auto-compaction-retention",
                    "2.5s",
                ],
                AutoCompaction::Periodic(Duration::from_millis(2500)),
            ),
            (
                &[
                    "--auto-compaction-mode=revision",
                    "--auto-compaction-retention=1000",
                ],
                AutoCompaction::Revision(1000),
            ),
            (
                &[
                    "--auto-compaction-retention=0",
                    "--auto-compaction-mode=revision",
                ],
                AutoCompaction::Off,
            ),
            (
                &[
                    "--auto-compaction-mode=revision",
                    "--auto-compaction-retention=1us",
                ],
                AutoCompaction::Revision(1000),
            ),
        ];
        for (args, expected) in cases {
            assert_eq!(parse(args).unwrap().auto_compaction, expected, "{args:?}");
        }
        assert!(parse(&["--auto-compaction-mode=daily"]).is_err());
        assert!(parse(&["--auto-compaction-retention=soon"]).is_err());
        assert_eq!(
            parse(&["--experimental-watch-progress-notify-interval=2s"])
                .unwrap()
                .watch_progress_notify_interval,
            Duration::from_secs(2)
        );
        assert_eq!(
            parse(&["--experimental-watch-progress-notify-interval", "1ms"])
                .unwrap()
                .watch_progress_notify_interval,
            MIN_WATCH_PROGRESS_NOTIFY_INTERVAL
        );
        assert!(parse(&["--experimental-watch-progress-notify-interval=often"]).is_err());
        assert_eq!(
            parse(&[]).unwrap().watch_pace_interval,
            Duration::from_micros(800)
        );
        assert_eq!(
            parse(&["--watch-pace-interval=5ms"])
                .unwrap()
                .watch_pace_interval,
            Duration::from_millis(5)
        );
        assert_eq!(
            parse(&["--watch-pace-interval", "0"])
                .unwrap()
                .watch_pace_interval,
            Duration::ZERO
        );
        assert!(parse(&["--watch-pace-interval=soon"]).is_err());
        assert_eq!(parse(&["--snapshot-count=20"]).unwrap().snapshot_count, 20);
        assert_eq!(
            parse(&["--snapshot-count=0"]).unwrap().snapshot_count,
            100_000
        );
        assert!(parse(&["--snapshot-count=many"]).is_err());
        assert!(parse(&["--auto-compaction-retention=-1"]).is_err());
    }

    #[test]
    fn lease_checkpoints_are_on_by_default() {
        let interval = |args: &[&str]| parse(args).unwrap().lease_checkpoint_interval;
        let five = Some(Duration::from_secs(5));
        assert_eq!(interval(&[]), five);
        // A Go bool flag: bare is true, and a following word is not its value.
        assert_eq!(interval(&["--experimental-enable-lease-checkpoint"]), five);
        assert_eq!(
            interval(&["--experimental-enable-lease-checkpoint=false"]),
            None
        );
        assert_eq!(
            interval(&["--experimental-lease-checkpoint-interval", "1m"]),
            Some(Duration::from_secs(60))
        );
        assert!(parse(&["--experimental-lease-checkpoint-interval=0s"]).is_err());
        assert!(parse(&["--experimental-enable-lease-checkpoint=maybe"]).is_err());
    }

    #[test]
    fn no_flags_is_one_default_member() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.name, "default");
        assert_eq!(config.data_dir, PathBuf::from("default.detcd"));
        assert_eq!(config.listen_client_urls, ["http://127.0.0.1:2379"]);
        assert_eq!(config.initial_members().len(), 1);
    }

    #[test]
    fn etcd_cluster_flags_give_every_member_the_same_ids() {
        let cluster = "a=http://127.0.0.1:12380,b=http://127.0.0.1:22380,c=http://127.0.0.1:32380";
        let member = |name: &str, port: u16| {
            parse(&[
                "--name",
                name,
                "--initial-cluster",
                cluster,
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{port}"),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{port}"),
                "--listen-client-urls=http://127.0.0.1:1",
                "--logger",
                "zap",
                "--log-outputs=stderr",
            ])
            .unwrap()
        };
        let (a, b) = (member("a", 12380), member("b", 22380));
        assert_eq!(a.cluster_id(), b.cluster_id());
        assert_eq!(a.initial_members(), b.initial_members());
        assert_ne!(a.member_id(), b.member_id());
        assert!(a.initial_members().contains_key(&b.member_id()));
        assert_eq!(a.data_dir, PathBuf::from("a.detcd"));
    }

    #[test]
    fn bad_flags_are_refused_with_a_reason() {
        assert!(parse(&["--bogus", "1"])
            .unwrap_err()
            .0
            .contains("not defined"));
        assert!(parse(&["--name"])
            .unwrap_err()
            .0
            .contains("needs an argument"));
        // As etcd: --name alone is fine (the initial cluster defaults to this member), but a name
        // missing from an explicit --initial-cluster is refused.
        assert!(parse(&["--name", "x"]).is_ok());
        assert!(parse(&[
            "--name",
            "x",
            "--initial-cluster",
            "y=http://127.0.0.1:2380"
        ])
        .unwrap_err()
        .0
        .contains("local name"));
        assert!(parse(&["--initial-cluster-state", "old"]).is_err());
        assert!(parse(&["--listen-client-urls", "https://1.2.3.4:1"]).is_err());
    }
}
