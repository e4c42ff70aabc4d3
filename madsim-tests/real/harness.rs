//! Processes, ports, temporary directories and etcdctl for the real-mode tests. Everything
//! listens on 127.0.0.1; every process is started here and stopped by its PID.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "detcd-real-{}-{label}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free TCP port on 127.0.0.1 for a server to take. Tests run in parallel in this process, so
/// ports come from a counter (never the same twice in a run), in a range below the kernel's
/// ephemeral ports (32768 and up, which clients' connections use), and are checked bindable.
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let base = 20_000 + (std::process::id() as usize % 500) * 20;
    loop {
        let offset = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = 20_000 + (base - 20_000 + offset) % 12_000;
        if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
}

/// A server process (detcd or etcd) that can be killed and restarted with the same flags.
pub struct Process {
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    pub client_endpoint: String,
}

fn etcd_program() -> PathBuf {
    let path = PathBuf::from("/usr/bin/etcd");
    assert!(
        path.exists(),
        "real etcd is not installed: the test command installs it (apt-get install etcd-server etcd-client)"
    );
    path
}

/// etcd-style flags for member `name` of `cluster` (name -> peer port), data under `dir`.
fn member_flags(
    dir: &TempDir,
    name: &str,
    client_port: u16,
    peer_port: u16,
    cluster: &str,
) -> Vec<String> {
    let client = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    [
        "--name",
        name,
        "--data-dir",
        &dir.0.join(name).display().to_string(),
        "--listen-client-urls",
        &client,
        "--advertise-client-urls",
        &client,
        "--listen-peer-urls",
        &peer,
        "--initial-advertise-peer-urls",
        &peer,
        "--initial-cluster",
        cluster,
        "--initial-cluster-state",
        "new",
        "--initial-cluster-token",
        "detcd-real-test",
        "--logger",
        "zap",
        "--log-outputs",
        "stderr",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

impl Process {
    fn start(program: PathBuf, args: Vec<String>, log: PathBuf, client_port: u16) -> Process {
        let mut process = Process {
            program,
            args,
            log,
            child: None,
            client_endpoint: format!("127.0.0.1:{client_port}"),
        };
        process.spawn();
        process
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open process log");
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.program.display()));
        self.child = Some(child);
    }

    fn wait_healthy(&self) {
        let health = vec!["endpoint".to_string(), "health".to_string()];
        wait_until(
            &format!("{} is healthy", self.program.display()),
            Duration::from_secs(20),
            || etcdctl(&self.client_endpoint, &health).ends_with("exit 0\n"),
        );
    }

    /// One detcd member on fresh loopback ports, ready to serve.
    pub fn detcd_single(dir: &TempDir, name: &str) -> Process {
        let (client, peer) = (free_port(), free_port());
        let cluster = format!("{name}=http://127.0.0.1:{peer}");
        let args = member_flags(dir, name, client, peer, &cluster);
        let process = Process::start(
            env!("CARGO_BIN_EXE_detcd").into(),
            args,
            dir.0.join(format!("{name}.log")),
            client,
        );
        process.wait_healthy();
        process
    }

    /// One real etcd member on fresh loopback ports, ready to serve.
    pub fn etcd_single(dir: &TempDir, name: &str) -> Process {
        let (client, peer) = (free_port(), free_port());
        let cluster = format!("{name}=http://127.0.0.1:{peer}");
        let args = member_flags(dir, name, client, peer, &cluster);
        let process = Process::start(
            etcd_program(),
            args,
            dir.0.join(format!("{name}.log")),
            client,
        );
        process.wait_healthy();
        process
    }

    /// A detcd cluster of `size` members started from etcd's flags.
    pub fn detcd_cluster(dir: &TempDir, size: usize) -> Vec<Process> {
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        ports
            .iter()
            .enumerate()
            .map(|(i, &(client, peer))| {
                let name = format!("m{i}");
                let args = member_flags(dir, &name, client, peer, &cluster);
                Process::start(
                    env!("CARGO_BIN_EXE_detcd").into(),
                    args,
                    dir.0.join(format!("{name}.log")),
                    client,
                )
            })
            .collect()
    }

    /// SIGKILL, by PID.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP (`stop: true`) or SIGCONT, by PID: the process freezes, its sockets stay open.
    pub fn freeze(&mut self, stop: bool) {
        let pid = self.child.as_ref().expect("running").id();
        let signal = if stop { "-STOP" } else { "-CONT" };
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Starts the process again with the same flags and data directory.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running process");
        self.spawn();
    }

    /// SIGTERM by PID; the exit code if it exits within `timeout`.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let pid = self.child.as_ref()?.id();
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        self.wait_exit(timeout)
    }

    /// Waits for the process to exit by itself; its exit code if it does within `timeout`,
    /// else it is killed.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().expect("wait") {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Everything the process wrote to stdout and stderr, over all its starts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `etcdctl --endpoints=endpoint args`; returns stdout, stderr (without the client's own
/// JSON log lines, which carry timestamps) and the exit code, as one normalisable text.
pub fn etcdctl(endpoint: &str, args: &[String]) -> String {
    etcdctl_with_input(endpoint, args, &[])
}

/// [`etcdctl`] with `input` on its standard input (how etcdctl takes values too large for an
/// argument).
pub fn etcdctl_with_input(endpoint: &str, args: &[String], input: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run etcdctl (apt-get install etcd-client)");
    let mut stdin = child.stdin.take().expect("etcdctl stdin");
    // etcdctl may exit before reading all of it (e.g. on a usage error); that is its answer.
    let _ = stdin.write_all(input);
    drop(stdin);
    let output = child.wait_with_output().expect("wait for etcdctl");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    for line in String::from_utf8_lossy(&output.stderr).lines() {
        if !line.starts_with("{\"level\":") {
            text.push_str(line);
            text.push('\n');
        }
    }
    text.push_str(&format!("exit {}\n", output.status.code().unwrap_or(-1)));
    text
}

/// Replaces the decimal number after every `prefix` in `text` with `replacement`.
pub fn replace_number_after(text: &str, prefix: &str, replacement: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        let (head, tail) = rest.split_at(at + prefix.len());
        out.push_str(head);
        let digits = tail.chars().take_while(|c| c.is_ascii_digit()).count();
        // Zero is not an ID but its absence (etcd leaves nested txn headers empty): kept.
        out.push_str(match &tail[..digits] {
            "" => "",
            "0" => "0",
            _ => replacement,
        });
        rest = &tail[digits..];
    }
    out.push_str(rest);
    out
}

/// Cluster and member IDs differ between any two clusters; nothing else may.
pub fn normalise_ids(text: &str) -> String {
    let mut text = text.to_string();
    for prefix in [
        "\"cluster_id\":",
        "\"member_id\":",
        "\"ClusterID\" : ",
        "\"MemberID\" : ",
    ] {
        text = replace_number_after(&text, prefix, "<id>");
    }
    text
}

/// Splits a transcript line into words: whitespace separates, 'single quotes' group, '' is an
/// empty word.
pub fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// Runs `future` on a fresh current-thread tokio runtime (the `etcd-client` crate needs one).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(future)
}

/// Runs `cases` (one line per response) against a fresh etcd 3.4 and a fresh detcd: the lines
/// must be equal, one for one.
pub fn same_as_etcd<F, Fut>(label: &str, cases: F)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Vec<String>>,
{
    let dir = TempDir::new(label);
    let detcd = Process::detcd_single(&dir, "detcd");
    let etcd = Process::etcd_single(&dir, "etcd");
    let expected = block_on(cases(etcd.client_endpoint.clone()));
    let actual = block_on(cases(detcd.client_endpoint.clone()));
    assert_same_lines(&expected, &actual);
}

/// The lines detcd gave (`actual`) must be the lines etcd gave (`expected`), one for one; the
/// failure lists every pair that differs.
pub fn assert_same_lines(expected: &[String], actual: &[String]) {
    println!("{}", actual.join("\n"));
    assert_eq!(expected.len(), actual.len(), "different numbers of lines");
    let differences: Vec<String> = expected
        .iter()
        .zip(actual)
        .filter(|(e, a)| e != a)
        .map(|(e, a)| format!("etcd:  {e}\ndetcd: {a}"))
        .collect();
    assert!(
        differences.is_empty(),
        "{} of {} differ:\n{}",
        differences.len(),
        expected.len(),
        differences.join("\n")
    );
}

/// Polls `condition` every 100 ms; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn number_after(text: &str, prefix: &str) -> Option<u64> {
    let at = text.find(prefix)? + prefix.len();
    let digits: String = text[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// A 3-member detcd cluster whose members agree on a leader.
pub struct Trio {
    pub members: Vec<Process>,
    /// The members' client endpoints, in member order.
    pub endpoints: Vec<String>,
    pub leader: usize,
    /// A member other than the leader.
    pub follower: usize,
}

impl Trio {
    pub fn start(dir: &TempDir) -> Trio {
        let members = Process::detcd_cluster(dir, 3);
        let endpoints: Vec<String> = members.iter().map(|m| m.client_endpoint.clone()).collect();
        let leader = wait_for_leader(&endpoints);
        Trio {
            members,
            endpoints,
            leader,
            follower: (leader + 1) % 3,
        }
    }

    /// etcd's Rust client, connected to the follower only.
    pub async fn follower_client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.endpoints[self.follower].as_str()], None)
            .await
            .expect("connect to the follower")
    }
}

/// Waits until every endpoint reports the same leader; returns the index of the leader's
/// endpoint.
pub fn wait_for_leader(endpoints: &[String]) -> usize {
    let status = ["endpoint", "status", "-w", "json"].map(String::from);
    let mut leader = None;
    wait_until(
        "the members agree on a leader",
        Duration::from_secs(30),
        || {
            let reports: Vec<Option<(u64, u64)>> = endpoints
                .iter()
                .map(|endpoint| {
                    let out = etcdctl(endpoint, &status);
                    Some((
                        number_after(&out, "\"member_id\":")?,
                        number_after(&out, "\"leader\":")?,
                    ))
                })
                .collect();
            let Some(Some((_, first_leader))) = reports.first().cloned() else {
                return false;
            };
            if first_leader == 0
                || reports
                    .iter()
                    .any(|r| r.map(|(_, l)| l) != Some(first_leader))
            {
                return false;
            }
            leader = reports
                .iter()
                .position(|r| r.map(|(id, _)| id) == Some(first_leader));
            leader.is_some()
        },
    );
    leader.expect("leader found")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_normalised_and_nothing_else() {
        let json = r#"{"header":{"cluster_id":123,"member_id":456,"revision":7,"raft_term":2}}"#;
        assert_eq!(
            normalise_ids(json),
            r#"{"header":{"cluster_id":<id>,"member_id":<id>,"revision":7,"raft_term":2}}"#
        );
    }

    #[test]
    fn words_split_like_a_shell() {
        assert_eq!(split_words("put a 'b c' ''"), ["put", "a", "b c", ""]);
        assert_eq!(split_words("get ''"), ["get", ""]);
    }
}
