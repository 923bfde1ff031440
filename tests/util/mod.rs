//! Shared helpers for the integration tests: each test gets a fresh directory and runs the
//! real `tinylm` binary on a tiny config (2 layers, d_model 32, tens of steps).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const TINY: &str = r#"
[run]
name = "t"
seed = 7
threads = 1

[data]
source = "builtin"
builtin_bytes = 150000

[tokenizer]
vocab_size = 300

[model]
n_layer = 2
n_head = 2
d_model = 32
d_ff = 64

[optim]
lr = 3e-3
min_lr = 3e-4
warmup_steps = 5

[train]
steps = 20
batch_size = 4
context = 32
log_every = 5

[eval]
every = 10
batches = 2
sample_tokens = 8

[checkpoint]
every = 5
"#;

pub struct Dir(pub PathBuf);

impl Dir {
    /// A fresh, empty directory for one test, with the tiny config written as `tiny.toml`.
    pub fn new(name: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("tinylm-it-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("tiny.toml"), TINY).unwrap();
        Dir(p)
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
    pub fn config(&self) -> String {
        self.path("tiny.toml").display().to_string()
    }
    /// `tinylm ARGS` in this directory (so data/ and checkpoints/ land here).
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tinylm"));
        c.args(args).current_dir(&self.0);
        c
    }
    /// Train the tiny config into `run_dir` with extra args, whatever the outcome.
    pub fn try_train(&self, run_dir: &str, extra: &[&str]) -> Output {
        let cfg = self.config();
        let mut args = vec!["train", "--config", &cfg, "--run-dir", run_dir];
        args.extend_from_slice(extra);
        self.run(&args)
    }
    /// As `try_train`, and panics with stderr on failure.
    pub fn train(&self, run_dir: &str, extra: &[&str]) -> Output {
        let out = self.try_train(run_dir, extra);
        assert!(out.status.success(), "train failed:\n{}", stderr(&out));
        out
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

pub fn weights(run: &Path, step: u64) -> Vec<u8> {
    bytes(&run.join(format!("step-{step:08}")).join("model.safetensors"))
}

/// An error run: exit code 2, stderr starts with one `error:` line containing `needle`, no panic.
pub fn assert_clean_error(o: &Output, needle: &str) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(2), "want exit 2, stderr:\n{e}");
    assert!(!e.contains("panicked"), "panicked:\n{e}");
    let first = e.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("no error line:\n{e}"));
    assert!(e.contains(needle), "want {needle:?} in:\n{e}\n(first line: {first})");
}

/// As `assert_clean_error`, and the first `error:` line alone names the cause.
pub fn assert_one_line_error(o: &Output, needle: &str) {
    assert_clean_error(o, needle);
    let e = stderr(o);
    let first = e.lines().find(|l| l.starts_with("error:")).unwrap_or_default();
    assert!(first.contains(needle), "want {needle:?} in the first error line: {first}");
}

/// Copy a directory tree.
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), to).unwrap();
        }
    }
}

/// Wait until `p` exists, at most `limit`.
pub fn wait_for(p: &Path, limit: std::time::Duration) {
    let t = std::time::Instant::now();
    while !p.exists() {
        assert!(t.elapsed() < limit, "{} never appeared", p.display());
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
