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

/// The binary under test: this build's, or `TINYLM_TEST_BIN` (to run the suite against another
/// build, e.g. to see a regression test fail on the commit before its fix).
pub fn bin() -> PathBuf {
    std::env::var_os("TINYLM_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_tinylm").into())
}

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
        let mut c = Command::new(bin());
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

/// Wait until the run in `run_dir` has a checkpoint at `step` or later (progress, not time),
/// while `child` runs. Returns the newest step seen, or None when the child exited first. The
/// limit guards against a hang only: no machine is that slow.
pub fn wait_for_step(child: &mut std::process::Child, run_dir: &Path, step: u64) -> Option<u64> {
    let t = std::time::Instant::now();
    loop {
        let newest = tinylm::checkpoint::list(run_dir).unwrap_or_default().last().map_or(0, |c| c.0);
        if newest >= step {
            return Some(newest);
        }
        if child.try_wait().unwrap().is_some() {
            return None;
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(600),
            "step {step} never came in {}",
            run_dir.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Send `sig` (e.g. "INT", "STOP") to a process.
pub fn signal(pid: u32, sig: &str) {
    let s = std::process::Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status();
    assert!(s.is_ok_and(|s| s.success()), "kill -{sig} {pid}");
}

/// Run a command to its end, failing the test (and killing it) if it has not ended within
/// `limit`: a guard against a hang, such as a process waiting on a lock it should refuse.
pub fn run_bounded(mut c: Command, limit: std::time::Duration) -> Output {
    let mut child =
        c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let t = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > limit {
            let _ = child.kill();
            panic!("{c:?} did not end within {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// Serve `body` for every GET until the test ends; count the requests.
pub fn serve(body: Vec<u8>) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = std::sync::Arc::clone(&hits);
    std::thread::spawn(move || {
        use std::io::{BufRead, Write};
        for stream in listener.incoming().take(20) {
            let Ok(mut s) = stream else { continue };
            let mut r = std::io::BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                if line == "\r\n" {
                    break;
                }
                line.clear();
            }
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let head =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
        }
    });
    (format!("http://{addr}/corpus/input.txt"), hits)
}

/// `tinylm audit DIR EXTRA...`: (exit code, stdout + stderr), never a panic.
pub fn audit(d: &Dir, dir: &str, extra: &[&str]) -> (Option<i32>, String) {
    let mut args = vec!["audit", dir];
    args.extend_from_slice(extra);
    let o = d.run(&args);
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    (o.status.code(), stdout(&o) + &stderr(&o))
}

/// A JSON file, parsed.
pub fn json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&bytes(p)).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}
