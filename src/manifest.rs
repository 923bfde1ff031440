//! `manifest.json`: the run's record of every input and output by SHA-256, plus what built and
//! ran it. Rewritten atomically after each checkpoint, so it always describes complete files.

/// The data record lives with the data code (`data.rs`), the one home of what is known of a corpus.
pub use crate::data::DataRecord;
use crate::error::{Error, Result};
use crate::util::{sha256_hex, write_atomic};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

pub const FILE: &str = "manifest.json";
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Build {
    pub tinylm_version: String,
    pub git_commit: String,
    pub git_dirty: bool,
    pub rustc_version: String,
    pub cargo_lock_sha256: String,
    pub candle_version: String,
}

/// One invocation of `train` on this run directory (a fresh start or a resume).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub start_step: u64,
    pub threads: usize,
    pub cpu_model: String,
    pub build: Build,
    pub overrides: Vec<String>,
    /// The numerics contract the session computed under (`kernels::CONTRACT_VERSION`; empty
    /// in manifests written before contracts existed).
    #[serde(default)]
    pub numerics: String,
    /// The kernel dispatch path it took: "avx2-fma", "neon" or "scalar" (same bits on each).
    #[serde(default)]
    pub kernels: String,
    /// A session of several processes (`dist`, MPI): every rank, rank 0 first. Empty for one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranks: Vec<RankRecord>,
}

/// One rank of a multi-process session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankRecord {
    pub rank: usize,
    pub host: String,
    pub cpu_model: String,
    pub kernels: String,
    pub threads: usize,
    /// Its micro-batches of each step, `lo..hi`.
    pub micro_batches: [u64; 2],
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    pub step: u64,
    pub dir: String,
    pub files: BTreeMap<String, String>,
    pub train_loss: f64,
    pub val_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_ppl: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_bpb: Option<f64>,
    /// False once retention deleted the directory.
    pub present: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub run_name: String,
    /// SHA-256 of the resolved `config.toml` in the run directory.
    pub config_sha256: String,
    pub data: DataRecord,
    pub sessions: Vec<Session>,
    /// Checkpoints of the current timeline, by step.
    pub checkpoints: Vec<CheckpointRecord>,
    /// Checkpoints of timelines a resume from an older step left behind, with `dir` pointing
    /// under `abandoned/` (kept, never deleted by tinylm).
    #[serde(default)]
    pub abandoned: Vec<CheckpointRecord>,
    /// The model the run started from (`[init]`); absent for a run from scratch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<crate::init::ParentRecord>,
}

pub fn build_info() -> Build {
    let lock = include_str!("../Cargo.lock");
    Build {
        tinylm_version: env!("CARGO_PKG_VERSION").to_string(),
        git_commit: env!("TINYLM_GIT_COMMIT").to_string(),
        git_dirty: env!("TINYLM_GIT_DIRTY") == "true",
        rustc_version: env!("TINYLM_RUSTC_VERSION").to_string(),
        cargo_lock_sha256: sha256_hex(lock.as_bytes()),
        candle_version: crate::util::lock_version(lock, "candle-core").unwrap_or_else(|| "unknown".into()),
    }
}

pub use crate::tokenizer::tokenizers_version;

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

impl Manifest {
    pub fn load(run_dir: &Path) -> Result<Manifest> {
        let p = run_dir.join(FILE);
        let text = std::fs::read_to_string(&p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::hint(
                    format!("{} not found: {} is not a tinylm run directory", p.display(), run_dir.display()),
                    "pass the directory `tinylm train` wrote, e.g. checkpoints/tiny",
                )
            } else {
                Error::Io { path: p.clone(), source: e }
            }
        })?;
        let m: Manifest = serde_json::from_str(&text).map_err(|e| {
            Error::hint(format!("{}: unreadable manifest: {e}", p.display()), "the run directory is damaged")
        })?;
        if m.format_version != FORMAT_VERSION {
            return Err(Error::msg(format!(
                "{}: manifest format {} is not supported",
                p.display(),
                m.format_version
            )));
        }
        m.check_paths(&p)?;
        Ok(m)
    }

    /// Every path a manifest names is joined to its run directory to read (and release) files:
    /// a checkpoint directory is `step-NNNNNNNN` or `abandoned/<name>/step-NNNNNNNN`, and a file
    /// one of a checkpoint's own names.
    pub fn check_paths(&self, file: &Path) -> Result<()> {
        let plain = |s: &str| !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\\', '\0']);
        let dir_ok = |d: &str| {
            let parts: Vec<&str> = d.split('/').collect();
            let step = |s: &str| {
                s.strip_prefix("step-").is_some_and(|n| n.len() == 8 && n.bytes().all(|b| b.is_ascii_digit()))
            };
            match parts.as_slice() {
                [s] => step(s),
                ["abandoned", name, s] => plain(name) && step(s),
                _ => false,
            }
        };
        for c in self.checkpoints.iter().chain(&self.abandoned) {
            if !dir_ok(&c.dir) {
                return Err(Error::hint(
                    format!(
                        "{}: checkpoint dir {:?} is not a checkpoint directory name",
                        file.display(),
                        c.dir
                    ),
                    "the manifest is damaged or crafted",
                ));
            }
            if let Some(bad) = c.files.keys().find(|n| {
                !crate::checkpoint::FILE_NAMES.contains(&n.as_str())
                    && n.as_str() != crate::checkpoint::STATE_FILE
            }) {
                return Err(Error::hint(
                    format!("{}: {bad:?} in {} is not a checkpoint file name", file.display(), c.dir),
                    "the manifest is damaged or crafted",
                ));
            }
        }
        Ok(())
    }

    pub fn save(&self, run_dir: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(|e| Error::msg(e.to_string()))?;
        write_atomic(&run_dir.join(FILE), json.as_bytes())
    }

    /// Record a checkpoint, replacing any earlier record of the same step.
    pub fn record(&mut self, rec: CheckpointRecord) {
        self.checkpoints.retain(|c| c.step != rec.step);
        self.checkpoints.push(rec);
        self.checkpoints.sort_by_key(|c| c.step);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lock_version_finds_candle() {
        let lock = "[[package]]\nname = \"candle-core\"\nversion = \"0.11.1\"\n";
        assert_eq!(crate::util::lock_version(lock, "candle-core").as_deref(), Some("0.11.1"));
        assert_eq!(super::build_info().candle_version, "0.11.1");
    }
}
