//! The run directory as one type: an exclusive lock, crash recovery, the manifest, the
//! checkpoints of the current timeline, retention and the metrics file.
//!
//! ```text
//! <run>/.lock           held (flock) by the one process that writes the run
//! <run>/config.toml     the resolved config (what `train --resume RUN` trains with)
//! <run>/manifest.json   every input and output by SHA-256
//! <run>/metrics.jsonl   one line per step
//! <run>/step-NNNNNNNN/  checkpoints of the current timeline
//! <run>/abandoned/      timelines left behind by a resume from an older checkpoint
//! ```
//!
//! Everything that can refuse is checked before the first write: `train` validates the config,
//! the data and the resume point, then calls [`RunDir::create`] (or writes into the directory
//! it has already locked). A directory is never half-initialized by a refused command.

use crate::checkpoint::{self, State, STATE_FILE};
use crate::error::{Error, IoContext, Result};
use crate::manifest::{CheckpointRecord, Manifest};
use crate::util::{sha256_file, sync_dir, write_atomic};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const METRICS_FILE: &str = "metrics.jsonl";
pub const LOCK_FILE: &str = ".lock";
pub const ABANDONED_DIR: &str = "abandoned";

pub struct RunDir {
    pub path: PathBuf,
    /// Held for the life of this value; the OS releases it when the process dies.
    _lock: fs::File,
}

/// Open (creating it) and lock `<dir>/.lock`: exclusively for a writer, shared for a reader.
fn lock(dir: &Path, exclusive: bool) -> Result<fs::File> {
    let p = dir.join(LOCK_FILE);
    let f = fs::OpenOptions::new().create(true).truncate(false).write(true).open(&p).at(&p)?;
    acquire(f, dir, exclusive, "wait for it to finish (or stop it), or use another --run-dir")
}

/// Take the lock on an open lock file of `dir`, or say who holds it.
fn acquire(f: fs::File, dir: &Path, exclusive: bool, hint: &str) -> Result<fs::File> {
    let got = if exclusive { f.try_lock() } else { f.try_lock_shared() };
    match got {
        Ok(()) => Ok(f),
        Err(fs::TryLockError::WouldBlock) => Err(Error::hint(
            format!("run directory {} is in use by another tinylm process", dir.display()),
            hint,
        )),
        Err(fs::TryLockError::Error(e)) => Err(Error::Io { path: dir.join(LOCK_FILE), source: e }),
    }
}

/// True when `dir` holds a run (a manifest or a complete checkpoint).
pub fn looks_like_run(dir: &Path) -> bool {
    dir.join(crate::manifest::FILE).is_file() || checkpoint::list(dir).map(|l| !l.is_empty()).unwrap_or(false)
}

/// The manifest of a run directory: `None` when there is none yet; an unreadable one is an
/// error (it is the run's history, never silently replaced).
pub fn read_manifest(dir: &Path) -> Result<Option<Manifest>> {
    let p = dir.join(crate::manifest::FILE);
    if !p.exists() {
        return Ok(None);
    }
    Manifest::load(dir).map(Some).map_err(|e| {
        Error::hint(
            format!("{}: the run manifest cannot be read ({})", p.display(), e.to_string().lines().next().unwrap_or("")),
            format!(
                "restore {} from a backup, or start a new run with --run-dir; tinylm never replaces a damaged manifest",
                p.display()
            ),
        )
    })
}

/// A checkpoint's files hashed and checked against its state.json; returns the state and the
/// hash of every file (state.json included), as the manifest records them.
pub fn verified_hashes(dir: &Path) -> Result<(State, std::collections::BTreeMap<String, String>)> {
    let state = checkpoint::read_state(dir)?;
    let mut hashes = std::collections::BTreeMap::new();
    for (name, want) in &state.files {
        let p = dir.join(name);
        let got = sha256_file(&p)?;
        if &got != want {
            return Err(Error::hint(
                format!("{}: sha256 mismatch (state.json says {want}, file is {got})", p.display()),
                "the checkpoint is corrupt or was modified; use an earlier checkpoint",
            ));
        }
        hashes.insert(name.clone(), got);
    }
    hashes.insert(STATE_FILE.to_string(), sha256_file(&dir.join(STATE_FILE))?);
    Ok((state, hashes))
}

/// The manifest record of a checkpoint on disk whose files check against its state.json.
pub fn record_of(run: &Path, step: u64) -> Result<CheckpointRecord> {
    let dir = run.join(checkpoint::dir_name(step));
    let (state, files) = verified_hashes(&dir)?;
    Ok(CheckpointRecord {
        step,
        dir: checkpoint::dir_name(step),
        files,
        train_loss: state.train_loss,
        val_loss: state.val_loss,
        val_ppl: state.val_ppl,
        val_bpb: state.val_bpb,
        present: true,
    })
}

impl RunDir {
    /// Lock an existing run directory for writing and tidy what a crash left in it.
    pub fn open(path: &Path) -> Result<RunDir> {
        let lock = lock(path, true)?;
        checkpoint::recover(path)?;
        Ok(RunDir { path: path.to_path_buf(), _lock: lock })
    }

    /// Create the directory (and parents) and lock it. Call only once every check has passed.
    pub fn create(path: &Path) -> Result<RunDir> {
        fs::create_dir_all(path).map_err(|e| {
            Error::hint(
                format!("cannot write run directory {}: {e}", path.display()),
                "choose a writable location with --run-dir DIR",
            )
        })?;
        if let Some(parent) = path.parent() {
            sync_dir(Some(parent));
        }
        RunDir::open(path)
    }

    /// A shared lock for a reader (verify): no writer can start while it is held.
    pub fn open_shared(path: &Path) -> Result<RunDir> {
        if !path.is_dir() {
            return Err(Error::hint(
                format!("run directory {} does not exist", path.display()),
                "pass the directory `tinylm train` wrote, e.g. checkpoints/tiny",
            ));
        }
        // Only a directory some `train` has written has a lock file; verify never creates one
        // (a release or a read-only copy stays byte for byte as it was).
        let p = path.join(LOCK_FILE);
        match fs::OpenOptions::new().read(true).open(&p) {
            Ok(f) => Ok(RunDir {
                path: path.to_path_buf(),
                _lock: acquire(
                    f,
                    path,
                    false,
                    "wait for the training to finish (or stop it), then try again",
                )?,
            }),
            Err(_) => Ok(RunDir { path: path.to_path_buf(), _lock: fs::File::open(path).at(path)? }),
        }
    }

    pub fn checkpoints(&self) -> Result<Vec<(u64, PathBuf)>> {
        checkpoint::list(&self.path)
    }

    /// Bring the manifest in line with the disk for a resume from `start`: checkpoints beyond
    /// it (an abandoned timeline) move to `abandoned/`, with their records and metrics; a
    /// checkpoint on disk that a crash kept from being recorded is recorded once its files
    /// check; a record whose directory is gone is marked absent. Returns log lines.
    pub fn reconcile(&self, m: &mut Manifest, start: u64) -> Result<Vec<String>> {
        let mut log = Vec::new();
        let on_disk = self.checkpoints()?;
        let beyond: Vec<u64> = on_disk.iter().map(|(s, _)| *s).filter(|&s| s > start).collect();
        let mut recorded_beyond: Vec<u64> =
            m.checkpoints.iter().map(|c| c.step).filter(|&s| s > start).collect();
        recorded_beyond.retain(|s| !beyond.contains(s));
        if !beyond.is_empty() || !recorded_beyond.is_empty() {
            let name = format!("after-step-{start:08}-session-{}", m.sessions.len());
            let dest = self.path.join(ABANDONED_DIR).join(&name);
            let rel = format!("{ABANDONED_DIR}/{name}");
            for c in m.checkpoints.iter().filter(|c| c.step > start) {
                let mut c = c.clone();
                c.present = beyond.contains(&c.step);
                c.dir = format!("{rel}/{}", checkpoint::dir_name(c.step));
                m.abandoned.push(c);
            }
            m.checkpoints.retain(|c| c.step <= start);
            // The manifest first, then the moves (newest first, so a kill half-way leaves the
            // old timeline a contiguous prefix).
            m.save(&self.path)?;
            fs::create_dir_all(&dest).at(&dest)?;
            let metrics = self.path.join(METRICS_FILE);
            if metrics.is_file() {
                fs::copy(&metrics, dest.join(METRICS_FILE)).at(&dest)?;
            }
            for &s in beyond.iter().rev() {
                let from = self.path.join(checkpoint::dir_name(s));
                let to = dest.join(checkpoint::dir_name(s));
                fs::rename(&from, &to).at(&from)?;
            }
            sync_dir(Some(&self.path));
            log.push(format!(
                "resuming from step {start}: the later checkpoints ({}) belong to an abandoned timeline and were moved to {}",
                if beyond.is_empty() {
                    "none on disk".to_string()
                } else {
                    beyond.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")
                },
                dest.display()
            ));
        }
        for (s, _) in self.checkpoints()? {
            let known = m.checkpoints.iter().any(|c| c.step == s && c.present);
            // Only the resume point, which `train` checked as the crash-window checkpoint, is
            // recorded; a record is never replaced (one marked deleted stays so), and any
            // other unrecorded directory is left alone, unrecorded, so nothing rewrites the
            // run's history.
            if !known && (s != start || m.checkpoints.iter().any(|c| c.step == s)) {
                log.push(format!(
                    "warning: {} is on disk but {}; left as it is, not recorded",
                    checkpoint::dir_name(s),
                    if m.checkpoints.iter().any(|c| c.step == s) {
                        "its record says it was deleted"
                    } else {
                        "not recorded"
                    }
                ));
                continue;
            }
            if !known {
                match record_of(&self.path, s) {
                    Ok(rec) => {
                        log.push(format!("recorded {} in the manifest (written before a crash)", rec.dir));
                        m.record(rec);
                    }
                    Err(e) => log.push(format!(
                        "warning: {} is not recorded and does not check ({}); left as it is",
                        checkpoint::dir_name(s),
                        e.to_string().lines().next().unwrap_or("")
                    )),
                }
            }
        }
        for c in m.checkpoints.iter_mut() {
            if c.present && !self.path.join(&c.dir).join(STATE_FILE).is_file() {
                c.present = false;
            }
        }
        Ok(log)
    }

    /// Write a checkpoint, record it, apply retention, save the manifest. The checkpoint just
    /// written is never deleted, and retention only sees the current timeline.
    pub fn checkpoint(
        &self,
        m: &mut Manifest,
        state: State,
        files: &[(&str, Vec<u8>)],
        keep_last: u64,
        keep_every: u64,
    ) -> Result<PathBuf> {
        let step = state.step;
        let (train_loss, val_loss, val_ppl, val_bpb) =
            (state.train_loss, state.val_loss, state.val_ppl, state.val_bpb);
        let (dir, hashes) = checkpoint::write(&self.path, state, files)?;
        m.record(CheckpointRecord {
            step,
            dir: checkpoint::dir_name(step),
            files: hashes,
            train_loss,
            val_loss,
            val_ppl,
            val_bpb,
            present: true,
        });
        let steps: Vec<u64> = self.checkpoints()?.into_iter().map(|(s, _)| s).collect();
        let doomed: Vec<u64> =
            checkpoint::to_delete(&steps, keep_last, keep_every).into_iter().filter(|&s| s < step).collect();
        for r in m.checkpoints.iter_mut().filter(|r| doomed.contains(&r.step)) {
            r.present = false;
        }
        // The manifest first: a kill from here on leaves it describing the checkpoints to keep.
        m.save(&self.path)?;
        for s in doomed {
            let d = self.path.join(checkpoint::dir_name(s));
            let gone = self.path.join(format!(".del-{}-{}", checkpoint::dir_name(s), std::process::id()));
            fs::rename(&d, &gone).at(&d)?;
            fs::remove_dir_all(&gone).at(&gone)?;
        }
        Ok(dir)
    }

    /// The metrics file, reset to step `start` (a resume rewrites what follows), for appending.
    pub fn metrics(&self, start: u64) -> Result<Metrics> {
        let path = self.path.join(METRICS_FILE);
        let kept: String = match fs::read(&path) {
            Ok(bytes) if start > 0 => String::from_utf8_lossy(&bytes)
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                        .is_some_and(|s| s <= start)
                })
                .map(|l| format!("{l}\n"))
                .collect(),
            _ => String::new(),
        };
        write_atomic(&path, kept.as_bytes())?;
        let file = fs::OpenOptions::new().append(true).open(&path).at(&path)?;
        Ok(Metrics { path, file })
    }
}

/// `metrics.jsonl`, appended one whole line per write (a kill never leaves half a line behind
/// a complete one).
pub struct Metrics {
    path: PathBuf,
    file: fs::File,
}

impl Metrics {
    pub fn append(&mut self, line: &serde_json::Value) -> Result<()> {
        let mut s = line.to_string();
        s.push('\n');
        self.file.write_all(s.as_bytes()).at(&self.path)
    }
}

/// Quote a path for a shell command line when it needs it.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:+@%".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}
