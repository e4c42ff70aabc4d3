//! Tidy: source rules that keep detcd deterministic and readable, checked on every test run.
//!
//! - Every `.rs` file in `src/` opens with a `//!` comment saying what it is.
//! - Outside `src/env/`, nothing names `std::time`, `std::thread`, `std::fs`, `std::net`, `rand`
//!   or `spawn_blocking` (the seam; `.clippy.toml` checks calls, this checks names).
//! - No `HashMap`/`HashSet` where iteration order could reach the wire, the log or a hash
//!   (`mvcc/`, `apply.rs`, `lease/`, `watch/`).
//! - No `dbg!`, `todo!` or `unimplemented!` anywhere in `src/`.
//! - Every `select!` in `src/` is `biased`: an unbiased one polls from a branch drawn from
//!   tokio's per-process generator, which no seed controls.
//! - The crates `Cargo.toml` builds at opt-level 0 in test builds are used only at build time: a
//!   crate that detcd or its tests run (what `cargo tree` reaches without build or proc-macro
//!   edges) would silently slow the simulation sweep.

// Tidy reads the source tree: the seam rule (.clippy.toml) is for src/.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

fn sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files.sort();
    assert!(files.len() > 10, "tidy found too few files: {files:?}");
    files
        .into_iter()
        .map(|path| {
            let relative = path
                .strip_prefix(root)
                .expect("under root")
                .display()
                .to_string();
            (
                relative,
                std::fs::read_to_string(&path).expect("read source"),
            )
        })
        .collect()
}

/// Lines that are code, not comments.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim_start().starts_with("//"))
        .map(|(number, line)| (number + 1, line))
}

#[test]
fn every_source_file_says_what_it_is() {
    for (path, text) in sources() {
        assert!(
            text.starts_with("//!"),
            "{path} does not open with a //! comment"
        );
    }
}

#[test]
fn only_env_touches_the_os() {
    let forbidden = [
        "std::time",
        "std::thread",
        "std::fs",
        "std::net",
        "rand::",
        "spawn_blocking",
    ];
    let mut leaks = Vec::new();
    for (path, text) in sources() {
        if path.starts_with("src/env/") {
            continue;
        }
        for (number, line) in code_lines(&text) {
            for name in forbidden {
                if line.contains(name) {
                    leaks.push(format!("{path}:{number}: {}", line.trim()));
                }
            }
        }
    }
    assert!(leaks.is_empty(), "outside src/env/:\n{}", leaks.join("\n"));
}

#[test]
fn deterministic_modules_use_ordered_collections() {
    let ordered_only = ["src/mvcc/", "src/apply.rs", "src/lease/", "src/watch/"];
    for (path, text) in sources() {
        if !ordered_only.iter().any(|prefix| path.starts_with(prefix)) {
            continue;
        }
        for (number, line) in code_lines(&text) {
            assert!(
                !line.contains("HashMap") && !line.contains("HashSet"),
                "{path}:{number}: use BTreeMap/BTreeSet (iteration order reaches the wire)"
            );
        }
    }
}

#[test]
fn no_debugging_leftovers() {
    for (path, text) in sources() {
        for (number, line) in code_lines(&text) {
            for leftover in ["dbg!(", "todo!(", "unimplemented!("] {
                assert!(!line.contains(leftover), "{path}:{number}: {leftover}");
            }
        }
    }
}

#[test]
fn every_select_is_biased() {
    for (path, text) in sources() {
        let lines: Vec<(usize, &str)> = code_lines(&text).collect();
        for (i, (number, line)) in lines.iter().enumerate() {
            if line.contains("select! {") {
                let next = lines.get(i + 1).map(|(_, l)| l.trim()).unwrap_or_default();
                assert_eq!(
                    next, "biased;",
                    "{path}:{number}: a select! that is not biased (its branch order is random)"
                );
            }
        }
    }
}

#[test]
fn unoptimized_crates_only_run_at_build_time() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("read Cargo.toml");
    let unoptimized: Vec<&str> = manifest
        .lines()
        .filter(|line| line.ends_with("= { opt-level = 0 }"))
        .map(|line| {
            line.split('=')
                .next()
                .unwrap_or_default()
                .trim()
                .trim_matches('"')
        })
        .collect();
    assert!(
        unoptimized.contains(&"syn"),
        "no opt-level 0 list found in Cargo.toml"
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let tree = std::process::Command::new(cargo)
        .current_dir(root)
        .args([
            "tree",
            "--offline",
            "--locked",
            "--target",
            "all",
            "--prefix",
            "none",
        ])
        .args(["-e", "normal,dev,no-proc-macro", "--format", "{p}"])
        .output()
        .expect("run cargo tree");
    assert!(
        tree.status.success(),
        "cargo tree: {}",
        String::from_utf8_lossy(&tree.stderr)
    );
    let runtime = String::from_utf8(tree.stdout).expect("cargo tree output");
    let runtime: Vec<&str> = runtime
        .lines()
        .filter_map(|l| l.split(' ').next())
        .collect();
    assert!(
        runtime.contains(&"redb"),
        "cargo tree listed no runtime crates"
    );
    for name in unoptimized {
        assert!(
            !runtime.contains(&name),
            "Cargo.toml builds {name} at opt-level 0, but detcd or its tests run it: remove it \
             from the list of build-time crates"
        );
    }
}
