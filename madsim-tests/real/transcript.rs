//! Recorded etcdctl transcripts: `transcripts/*.txt` hold etcdctl command sequences with the
//! output real etcd 3.4.23 gave, and detcd must give the same.
//!
//! Format (one file = one fresh server):
//!
//! ```text
//! # a comment (kept when re-recording)
//! $ put foo bar                      <- an etcdctl command; 'single quotes' group, '' is empty
//! < mod("foo") > "0"                 <- a line of its standard input (optional, repeatable;
//! <                                     `<` alone is an empty line)
//! OK                                 <- what etcd printed: stdout, stderr without the client's
//! exit 0                                JSON log lines, and the exit code
//! ```
//!
//! Cluster and member IDs and the endpoint address are normalised (`<id>`, `ENDPOINT`); nothing
//! else. `DETCD_RECORD_TRANSCRIPTS=1` re-records every file against a real etcd the test starts.
//!
//! Long-running commands (`watch`) run in the background:
//!
//! ```text
//! $ & watch foo --rev 2              <- starts etcdctl in the background (numbered from 1) and
//! (background 1)                        waits half a second for it to connect; `<` lines are
//!                                       written to its stdin, which stays open
//! $ put foo bar
//! OK
//! exit 0
//! $ %stop 1                          <- waits until its output has been quiet for 400ms, closes
//! PUT                                   its stdin, and kills it (by PID) if it is still running
//! foo                                   a second later; prints what it printed, then `exit N`
//! bar                                   if it exited by itself or `killed`
//! killed
//! ```
//!
//! Leases: the server picks their IDs, so the N-th lease a transcript sees granted
//! (`lease <16 hex digits> granted ...`) is `$LEASE<N>` in later commands and `<leaseN>` in
//! output (hex or decimal). `remaining(97s)` depends on timing and reads `remaining(<n>s)`.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{etcdctl_with_input, normalise_ids, split_words};

/// One command of a transcript with the output it must give.
#[derive(Debug, Clone)]
pub struct Step {
    /// Comment lines before the command, kept when re-recording.
    pub comments: Vec<String>,
    pub command: String,
    pub stdin: Vec<String>,
    pub expected: String,
}

impl Step {
    pub fn input(&self) -> Vec<u8> {
        let mut input = String::new();
        for line in &self.stdin {
            input.push_str(line);
            input.push('\n');
        }
        input.into_bytes()
    }
}

/// A parsed transcript file: its steps and trailing comments.
pub struct Transcript {
    pub steps: Vec<Step>,
    pub trailing_comments: Vec<String>,
}

/// Parses a transcript. `#` lines are always comments (no recorded output starts with `#`);
/// `<` lines right after a command are its input; every other line is output.
pub fn parse(text: &str) -> Transcript {
    let mut steps: Vec<Step> = Vec::new();
    let mut comments = Vec::new();
    for line in text.lines() {
        if let Some(command) = line.strip_prefix("$ ") {
            steps.push(Step {
                comments: std::mem::take(&mut comments),
                command: command.trim().to_string(),
                stdin: Vec::new(),
                expected: String::new(),
            });
        } else if line.starts_with('#') {
            comments.push(line.to_string());
        } else if let Some(step) = steps.last_mut() {
            match line.strip_prefix('<') {
                Some(input) if step.expected.is_empty() && comments.is_empty() => {
                    step.stdin
                        .push(input.strip_prefix(' ').unwrap_or(input).to_string());
                }
                _ => {
                    step.expected.push_str(line);
                    step.expected.push('\n');
                }
            }
        } else if !line.trim().is_empty() {
            panic!("transcript line before any command: {line:?}");
        }
    }
    Transcript {
        steps,
        trailing_comments: comments,
    }
}

pub fn render(transcript: &Transcript) -> String {
    let mut out = String::new();
    for step in &transcript.steps {
        for comment in &step.comments {
            out.push_str(comment);
            out.push('\n');
        }
        out.push_str("$ ");
        out.push_str(&step.command);
        out.push('\n');
        for line in &step.stdin {
            out.push('<');
            if !line.is_empty() {
                out.push(' ');
                out.push_str(line);
            }
            out.push('\n');
        }
        out.push_str(&step.expected);
    }
    for comment in &transcript.trailing_comments {
        out.push_str(comment);
        out.push('\n');
    }
    out
}

/// An etcdctl started with `$ & ...`.
struct Background {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// Runs the steps of one transcript against `endpoint`, with its background commands.
pub struct Session {
    endpoint: String,
    dir: PathBuf,
    background: Vec<Background>,
    /// Lease IDs in the order the transcript saw them granted.
    leases: Vec<i64>,
}

impl Session {
    /// A session whose background commands keep their output in `dir`.
    pub fn new(endpoint: &str, dir: &Path) -> Session {
        Session {
            endpoint: endpoint.to_string(),
            dir: dir.to_path_buf(),
            background: Vec::new(),
            leases: Vec::new(),
        }
    }

    /// Runs one step; answers its output, normalised.
    pub fn run(&mut self, step: &Step) -> String {
        let mut command = step.command.clone();
        for (i, id) in self.leases.iter().enumerate().rev() {
            command = command.replace(&format!("$LEASE{}", i + 1), &format!("{id:x}"));
        }
        let output = if let Some(command) = command.strip_prefix("& ") {
            self.start(command, &step.input())
        } else if let Some(number) = command.strip_prefix("%stop ") {
            self.stop(number.trim().parse().expect("%stop N"))
        } else {
            etcdctl_with_input(&self.endpoint, &split_words(&command), &step.input())
        };
        self.learn_leases(&output);
        let mut output = normalise_ids(&output).replace(&self.endpoint, "ENDPOINT");
        for (i, id) in self.leases.iter().enumerate() {
            let name = format!("<lease{}>", i + 1);
            output = output
                .replace(&format!("{id:016x}"), &name)
                .replace(&id.to_string(), &name);
        }
        normalise_remaining(&output)
    }

    /// Records the IDs of leases granted in `output`.
    fn learn_leases(&mut self, output: &str) {
        for line in output.lines() {
            let Some(rest) = line.strip_prefix("lease ") else {
                continue;
            };
            let Some((hex, tail)) = rest.split_once(' ') else {
                continue;
            };
            if tail.starts_with("granted with TTL") && !tail.contains("remaining") {
                if let Ok(id) = i64::from_str_radix(hex, 16) {
                    self.leases.push(id);
                }
            }
        }
    }

    fn start(&mut self, command: &str, input: &[u8]) -> String {
        let number = self.background.len() + 1;
        let stdout = self.dir.join(format!("background-{number}.out"));
        let stderr = self.dir.join(format!("background-{number}.err"));
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint))
            .args(split_words(command))
            .stdin(Stdio::piped())
            .stdout(File::create(&stdout).expect("background stdout"))
            .stderr(File::create(&stderr).expect("background stderr"))
            .spawn()
            .expect("run etcdctl (apt-get install etcd-client)");
        let mut stdin = child.stdin.take();
        if let Some(pipe) = stdin.as_mut() {
            let _ = pipe.write_all(input);
            let _ = pipe.flush();
        }
        self.background.push(Background {
            child,
            stdin,
            stdout,
            stderr,
        });
        // Time to connect and create its watches before the next command writes.
        std::thread::sleep(Duration::from_millis(500));
        format!("(background {number})\n")
    }

    fn stop(&mut self, number: usize) -> String {
        let background = &mut self.background[number - 1];
        let size = |path: &Path| std::fs::metadata(path).map_or(0, |m| m.len());
        let mut last = (size(&background.stdout), size(&background.stderr));
        let mut quiet_since = Instant::now();
        while quiet_since.elapsed() < Duration::from_millis(400) {
            std::thread::sleep(Duration::from_millis(50));
            let now = (size(&background.stdout), size(&background.stderr));
            if now != last {
                last = now;
                quiet_since = Instant::now();
            }
        }
        drop(background.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(1);
        let status = loop {
            if let Some(status) = background.child.try_wait().expect("background status") {
                break Some(status);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let ending = match status {
            Some(status) => format!("exit {}\n", status.code().unwrap_or(-1)),
            None => {
                let _ = background.child.kill();
                let _ = background.child.wait();
                "killed\n".to_string()
            }
        };
        let mut text = std::fs::read_to_string(&background.stdout).unwrap_or_default();
        let errors = std::fs::read_to_string(&background.stderr).unwrap_or_default();
        for line in errors.lines() {
            if !line.starts_with("{\"level\":") {
                text.push_str(line);
                text.push('\n');
            }
        }
        text.push_str(&ending);
        text
    }
}

/// `remaining(97s)` -> `remaining(<n>s)`: how much is left depends on when the command ran.
fn normalise_remaining(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("remaining(") {
        let (head, tail) = rest.split_at(at + "remaining(".len());
        out.push_str(head);
        let digits = tail.chars().take_while(|c| c.is_ascii_digit()).count();
        if digits > 0 && tail[digits..].starts_with("s)") {
            out.push_str("<n>");
            rest = &tail[digits..];
        } else {
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

impl Drop for Session {
    fn drop(&mut self) {
        for background in &mut self.background {
            let _ = background.child.kill();
            let _ = background.child.wait();
        }
    }
}

pub fn transcript_files() -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("madsim-tests/real/transcripts");
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .expect("transcripts dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    paths.sort();
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcripts_parse_and_render_back() {
        let text = "# head\n$ put a 1\nOK\nexit 0\n# next\n$ txn\n< value(\"a\") = \"1\"\n<\n< get a\n<\n<\nSUCCESS\n\na\n1\nexit 0\n";
        let transcript = parse(text);
        assert_eq!(transcript.steps.len(), 2);
        assert_eq!(
            transcript.steps[1].stdin,
            ["value(\"a\") = \"1\"", "", "get a", "", ""]
        );
        assert_eq!(transcript.steps[1].expected, "SUCCESS\n\na\n1\nexit 0\n");
        assert_eq!(transcript.steps[1].comments, ["# next"]);
        assert_eq!(render(&transcript), text);
    }
}
