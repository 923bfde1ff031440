//! `tinylm verify RUN_DIR`: prove a run reproduces bit for bit.
//!
//! 1. Files: every file the manifest records (the resolved config and each present checkpoint's
//!    files) is hashed on disk and compared. `--files-only` stops here (seconds).
//! 2. Re-execution: the run's recorded config is trained again in a scratch directory (from
//!    scratch, or `--from STEP` from that checkpoint on), with data and tokenizer rebuilt there,
//!    checkpointing at every recorded step. Data hashes and each checkpoint's weights, optimizer
//!    state and tokenizer are compared. config.toml and state.json inside checkpoints carry run
//!    settings that may legally change on resume (eval cadence, threads), so step 1 covers them.

use crate::checkpoint::{self, MODEL_FILE, OPTIM_FILE, TOKENIZER_FILE};
use crate::config::Config;
use crate::error::{Error, IoContext, Result};
use crate::manifest::Manifest;
use crate::train::{self, Resume, TrainArgs};
use crate::util::sha256_file;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

pub struct VerifyArgs {
    pub run_dir: PathBuf,
    pub from: Option<u64>,
    pub files_only: bool,
    pub scratch: Option<PathBuf>,
    pub keep_scratch: bool,
}

pub struct Row {
    pub artifact: String,
    pub recorded: String,
    pub recomputed: String,
}

impl Row {
    fn ok(&self) -> bool {
        self.recorded == self.recomputed
    }
}

pub struct Report {
    pub rows: Vec<Row>,
    /// First divergence: (step, tensor, max abs diff), when the original weights are on disk.
    pub divergence: Option<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.rows.iter().all(Row::ok)
    }

    pub fn table(&self) -> String {
        let short = |h: &str| {
            if h.len() == 64 {
                h[..16].to_string()
            } else {
                h.to_string()
            }
        };
        let w = self.rows.iter().map(|r| r.artifact.len()).max().unwrap_or(8).max(8);
        let mut s = format!("{:<w$}  {:<16}  {:<16}  match\n", "artifact", "recorded", "recomputed");
        for r in &self.rows {
            s += &format!(
                "{:<w$}  {:<16}  {:<16}  {}\n",
                r.artifact,
                short(&r.recorded),
                short(&r.recomputed),
                if r.ok() { "yes" } else { "NO" }
            );
        }
        if let Some(d) = &self.divergence {
            s += &format!("first divergence: {d}\n");
        }
        s
    }
}

fn hash_or_missing(p: &Path) -> String {
    if p.is_file() {
        sha256_file(p).unwrap_or_else(|e| format!("unreadable: {e}"))
    } else {
        "missing".into()
    }
}

/// Step 1: the run directory's files against the manifest.
pub fn check_files(run_dir: &Path, m: &Manifest) -> Vec<Row> {
    let mut rows = vec![Row {
        artifact: "config.toml".into(),
        recorded: m.config_sha256.clone(),
        recomputed: hash_or_missing(&run_dir.join(checkpoint::CONFIG_FILE)),
    }];
    for c in m.checkpoints.iter().filter(|c| c.present) {
        for (name, want) in &c.files {
            rows.push(Row {
                artifact: format!("{}/{name}", c.dir),
                recorded: want.clone(),
                recomputed: hash_or_missing(&run_dir.join(&c.dir).join(name)),
            });
        }
    }
    rows
}

/// The first tensor (in sorted name order) that differs between two model files.
fn first_difference(a: &Path, b: &Path) -> Option<String> {
    let load = |p: &Path| fs::read(p).ok().and_then(|bytes| checkpoint::from_safetensors(&bytes, p).ok());
    let (x, y) = (load(a)?, load(b)?);
    for (name, ta) in &x {
        let Some(tb) = y.get(name) else {
            return Some(format!("tensor {name} is missing from the recomputed weights"));
        };
        if ta.dims() != tb.dims() {
            return Some(format!("tensor {name}: shape {:?} vs {:?}", ta.dims(), tb.dims()));
        }
        let (va, vb) =
            (ta.flatten_all().ok()?.to_vec1::<f32>().ok()?, tb.flatten_all().ok()?.to_vec1::<f32>().ok()?);
        if va.iter().zip(&vb).any(|(p, q)| p.to_bits() != q.to_bits()) {
            let max = va.iter().zip(&vb).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
            return Some(format!("tensor {name}, largest absolute difference {max:e}"));
        }
    }
    None
}

pub fn verify(a: &VerifyArgs, stop: &AtomicBool) -> Result<Report> {
    let m = Manifest::load(&a.run_dir)?;
    let mut rows = check_files(&a.run_dir, &m);
    if a.files_only {
        return Ok(Report { rows, divergence: None });
    }
    let cfg_path = a.run_dir.join(checkpoint::CONFIG_FILE);
    let cfg = Config::load(&cfg_path, &[])?;
    let scratch = a
        .scratch
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("tinylm-verify-{}", std::process::id())));
    if scratch.exists() {
        fs::remove_dir_all(&scratch).at(&scratch)?;
    }
    let run = scratch.join("run");
    fs::create_dir_all(&run).at(&run)?;

    let resume = match a.from {
        None => None,
        Some(step) => {
            let rec = m.checkpoints.iter().find(|c| c.step == step && c.present).ok_or_else(|| {
                let have: Vec<String> =
                    m.checkpoints.iter().filter(|c| c.present).map(|c| c.step.to_string()).collect();
                Error::hint(
                    format!("no checkpoint at step {step} in {}", a.run_dir.display()),
                    format!("--from takes one of: {}", have.join(", ")),
                )
            })?;
            let bad: Vec<&Row> =
                rows.iter().filter(|r| r.artifact.starts_with(&format!("{}/", rec.dir)) && !r.ok()).collect();
            if !bad.is_empty() {
                return Err(Error::hint(
                    format!(
                        "checkpoint {} does not match the manifest ({}), so it cannot be the starting point",
                        rec.dir,
                        bad.iter().map(|r| r.artifact.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                    "verify from scratch (drop --from) or from another checkpoint",
                ));
            }
            let dst = run.join(&rec.dir);
            fs::create_dir_all(&dst).at(&dst)?;
            for name in rec.files.keys() {
                fs::copy(a.run_dir.join(&rec.dir).join(name), dst.join(name)).at(&dst.join(name))?;
            }
            Some(Resume::From(dst))
        }
    };
    let start = a.from.unwrap_or(0);
    let recorded: Vec<_> = m.checkpoints.iter().filter(|c| c.step > start).collect();
    let args = TrainArgs {
        cfg: cfg.clone(),
        overrides: Vec::new(),
        run_dir: run.clone(),
        resume,
        extra_checkpoints: recorded.iter().map(|c| c.step).collect::<BTreeSet<u64>>(),
        verbose: false,
        data_dir: Some(scratch.join("data")),
    };
    eprintln!(
        "re-executing {} from step {start} to {} in {}",
        a.run_dir.display(),
        cfg.train.steps,
        scratch.display()
    );
    if let train::Outcome::Interrupted { step, .. } = train::train(args, stop)? {
        return Err(Error::msg(format!("verify interrupted at step {step}; nothing was compared")));
    }

    // Data: what the scratch run's manifest recomputed.
    let again = Manifest::load(&run)?;
    let (d0, d1) = (&m.data, &again.data);
    for (name, x, y) in [
        ("data: corpus", &d0.corpus_sha256, &d1.corpus_sha256),
        ("data: tokenizer.json", &d0.tokenizer_sha256, &d1.tokenizer_sha256),
        ("data: train tokens", &d0.train_tokens_sha256, &d1.train_tokens_sha256),
        ("data: val tokens", &d0.val_tokens_sha256, &d1.val_tokens_sha256),
    ] {
        rows.push(Row { artifact: name.into(), recorded: x.clone(), recomputed: y.clone() });
    }
    let mut divergence = None;
    for c in recorded {
        for name in [MODEL_FILE, OPTIM_FILE, TOKENIZER_FILE] {
            let Some(want) = c.files.get(name) else {
                continue;
            };
            let rerun = run.join(&c.dir).join(name);
            let got = hash_or_missing(&rerun);
            // The first step where the re-execution disagrees with the record, or with the file
            // on disk (a tampered checkpoint): name the first tensor that differs.
            let on_disk = a.run_dir.join(&c.dir).join(name);
            let disk_differs = c.present && on_disk.is_file() && hash_or_missing(&on_disk) != got;
            if name == MODEL_FILE && divergence.is_none() && (&got != want || disk_differs) {
                divergence = Some(match first_difference(&on_disk, &rerun) {
                    Some(d) => {
                        format!("step {}: {}/{name} vs the re-execution: {d}", c.step, c.dir)
                    }
                    None => {
                        format!("step {} (the original weights are not on disk to compare tensors)", c.step)
                    }
                });
            }
            rows.push(Row {
                artifact: format!("rerun {}/{name}", c.dir),
                recorded: want.clone(),
                recomputed: got,
            });
        }
    }
    if !a.keep_scratch {
        let _ = fs::remove_dir_all(&scratch);
    }
    Ok(Report { rows, divergence })
}
