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

use std::path::Path;

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
    pub fn args(&self) -> Vec<String> {
        split_words(&self.command)
    }

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

/// Runs one step against `endpoint`, normalised.
pub fn run(endpoint: &str, step: &Step) -> String {
    let output = etcdctl_with_input(endpoint, &step.args(), &step.input());
    normalise_ids(&output).replace(endpoint, "ENDPOINT")
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
