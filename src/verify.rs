//! `tinylm verify RUN_DIR`: prove a run reproduces bit for bit.
//!
//! 1. Files: every file the manifest records (the resolved config and each present checkpoint's
//!    files) is hashed on disk and compared; checkpoints or files on disk that the manifest does
//!    not record are listed as mismatches. `--files-only` stops here (seconds).
//! 2. Re-execution: the run's recorded config (refused if `config.toml` no longer matches the
//!    manifest) is trained again with data and tokenizer rebuilt in a scratch directory, from
//!    scratch or `--from STEP`, up to the last recorded step only, with no evals. At each recorded
//!    step the weights, optimizer state and tokenizer are hashed in memory and compared; nothing
//!    is written but the scratch data. config.toml and state.json inside checkpoints carry run
//!    settings that may legally change on resume (eval cadence, threads), so step 1 covers them.

use crate::checkpoint::{self, MODEL_FILE, OPTIM_FILE, TOKENIZER_FILE};
use crate::config::Config;
use crate::data;
use crate::error::{Error, IoContext, Result};
use crate::manifest::Manifest;
use crate::run::{self, RunDir};
use crate::tokenizer::Tok;
use crate::train::{check_split_sizes, Trainer};
use crate::util::{sha256_file, sha256_hex};
use candle_core::Tensor;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Clone)]
pub struct VerifyArgs {
    pub run_dir: PathBuf,
    pub from: Option<u64>,
    /// The last checkpoint to re-execute to (a segment `from..=to`); default: the newest.
    pub to: Option<u64>,
    pub files_only: bool,
    pub scratch: Option<PathBuf>,
    pub keep_scratch: bool,
    /// The corpus, when the run's (or release's) own is not at hand; checked against its pin.
    pub corpus: Option<PathBuf>,
    /// Fetch a `url` corpus that is nowhere here, into the scratch directory only.
    pub allow_download: bool,
    /// The parent of a fine-tune, when neither the release's `parent/` nor the run's
    /// `init.from` holds it.
    pub parent: Option<PathBuf>,
}

pub struct Row {
    pub artifact: String,
    pub recorded: String,
    pub recomputed: String,
    /// A row that is fine although the two differ (a checkpoint a crash kept from being
    /// recorded); normally false.
    pub tolerated: bool,
}

impl Row {
    fn new(artifact: impl Into<String>, recorded: impl Into<String>, recomputed: impl Into<String>) -> Row {
        Row {
            artifact: artifact.into(),
            recorded: recorded.into(),
            recomputed: recomputed.into(),
            tolerated: false,
        }
    }
    pub fn ok(&self) -> bool {
        self.tolerated || self.recorded == self.recomputed
    }
}

pub struct Report {
    pub rows: Vec<Row>,
    /// First divergence: (step, tensor, max abs diff), when the original weights are on disk.
    pub divergence: Option<String>,
    /// Lines printed above the table: the numerics contract and kernel paths the run recorded
    /// and the ones this binary uses.
    pub notes: Vec<String>,
    /// Checkpoints on disk that the manifest does not record and this verify did not
    /// re-execute (`--files-only`): they match nothing, so they are unverified.
    pub unverified: Vec<String>,
}

/// What the manifest says the run computed under, against this binary.
fn numerics_notes(m: &Manifest) -> Vec<String> {
    let here = crate::kernels::CONTRACT_VERSION;
    let mut seen: Vec<String> = Vec::new();
    for s in &m.sessions {
        let n = if s.numerics.is_empty() {
            "(before numerics contracts)".to_string()
        } else {
            s.numerics.clone()
        };
        let k = if s.kernels.is_empty() { "library kernels".to_string() } else { s.kernels.clone() };
        let line = format!("{n} ({k})");
        if !seen.contains(&line) {
            seen.push(line);
        }
    }
    let mut notes = vec![format!(
        "numerics: the run recorded {}; this binary computes {here} ({})",
        seen.join(", "),
        crate::kernels::dispatch_path()
    )];
    if m.sessions.iter().any(|s| s.numerics != here) {
        notes.push(format!(
            "note: part of this run was computed under another numerics contract than {here}, so re-executed weights are expected to differ; see docs/numerics.md"
        ));
    }
    notes
}

impl Report {
    pub fn ok(&self) -> bool {
        self.rows.iter().all(Row::ok)
    }

    /// The artifacts whose recomputed hash differs, as the MISMATCH line names them.
    pub fn mismatched(&self) -> String {
        self.rows.iter().filter(|r| !r.ok()).map(|r| r.artifact.as_str()).collect::<Vec<_>>().join(", ")
    }

    pub fn table(&self) -> String {
        let short = |h: &str| match h.get(..16) {
            Some(p) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => p.to_string(),
            _ => h.to_string(),
        };
        let w = self.rows.iter().map(|r| r.artifact.len()).max().unwrap_or(8).max(8);
        let mut s: String = self.notes.iter().map(|n| format!("{n}\n")).collect();
        s += &format!("{:<w$}  {:<16}  {:<16}  match\n", "artifact", "recorded", "recomputed");
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

/// Step 1: the run directory's files against the manifest: every recorded file, plus any
/// checkpoint on disk the manifest does not record and any unlisted file inside a recorded one.
pub fn check_files(run_dir: &Path, m: &Manifest) -> Vec<Row> {
    check_files_in(&Layout::run(run_dir), m)
}

/// Where a run's files are: a run directory, or a release (`tinylm release`), whose run record
/// is `run/` and whose checkpoints are `checkpoints/step-*`, beside the files of the Hugging
/// Face export (covered by the release's SHA256SUMS, which `tinylm audit` checks).
pub struct Layout {
    pub run: PathBuf,
    pub checkpoints: PathBuf,
    /// File names a checkpoint may hold beyond the recorded ones.
    pub extra_ok: &'static [&'static str],
    /// The release directory, for a release: its config is someone else's, not trusted.
    pub release: Option<PathBuf>,
}

/// The files `tinylm release` adds to each checkpoint.
const RELEASE_EXTRAS: &[&str] =
    &["config.json", "generation_config.json", "tokenizer_config.json", "special_tokens_map.json"];

impl Layout {
    pub fn run(dir: &Path) -> Layout {
        Layout { run: dir.to_path_buf(), checkpoints: dir.to_path_buf(), extra_ok: &[], release: None }
    }

    /// A run directory, or a release directory (it has `release.json` and `run/manifest.json`).
    pub fn detect(dir: &Path) -> Layout {
        if dir.join("release.json").is_file() && dir.join("run").join(crate::manifest::FILE).is_file() {
            Layout::release(dir)
        } else {
            Layout::run(dir)
        }
    }

    /// The layout `tinylm release` writes.
    pub fn release(dir: &Path) -> Layout {
        Layout {
            run: dir.join("run"),
            checkpoints: dir.join("checkpoints"),
            extra_ok: RELEASE_EXTRAS,
            release: Some(dir.to_path_buf()),
        }
    }
}

pub fn check_files_in(l: &Layout, m: &Manifest) -> Vec<Row> {
    let (run_dir, ckpts) = (l.run.as_path(), l.checkpoints.as_path());
    let mut rows = vec![Row::new(
        "config.toml",
        m.config_sha256.clone(),
        hash_or_missing(&run_dir.join(checkpoint::CONFIG_FILE)),
    )];
    for c in m.checkpoints.iter().filter(|c| c.present) {
        for (name, want) in &c.files {
            rows.push(Row::new(
                format!("{}/{name}", c.dir),
                want.clone(),
                hash_or_missing(&ckpts.join(&c.dir).join(name)),
            ));
        }
        if let Ok(entries) = fs::read_dir(ckpts.join(&c.dir)) {
            let mut extra: Vec<String> = entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !c.files.contains_key(n) && !l.extra_ok.contains(&n.as_str()))
                .collect();
            extra.sort();
            for n in extra {
                rows.push(Row::new(
                    format!("{}/{n}", c.dir),
                    "not recorded",
                    hash_or_missing(&ckpts.join(&c.dir).join(&n)),
                ));
            }
        }
    }
    // Checkpoints on disk the manifest does not know. One newer than every record that checks
    // against its own state.json may be the crash window between writing a checkpoint and
    // recording it, or a forgery: nothing vouches for it, so it is shown as unverified (a full
    // verify re-executes to it and compares). A record marked absent whose directory is still
    // there is a retention a kill interrupted: harmless.
    let every =
        Config::load(&run_dir.join(checkpoint::CONFIG_FILE), &[]).map(|c| c.checkpoint.every).unwrap_or(0);
    for step in unrecorded_newest(ckpts, m, every) {
        let mut row = Row::new(
            format!("{} (on disk)", checkpoint::dir_name(step)),
            "not recorded",
            "unverified: not recorded (a full verify re-executes it)",
        );
        row.tolerated = true;
        rows.push(row);
    }
    rows.extend(broken_newer(ckpts, m, every));
    let newest = newest_record(m);
    for (step, _) in checkpoint::list(ckpts).unwrap_or_default() {
        let rec = m.checkpoints.iter().find(|c| c.step == step);
        if step > newest && (every == 0 || step <= next_cadence(newest, every)) {
            continue;
        }
        match rec {
            None => rows.push(Row::new(
                format!("{} (on disk)", checkpoint::dir_name(step)),
                "not recorded",
                "present",
            )),
            // A release holds only what its manifest records as present: a directory whose
            // record says deleted was put there afterwards.
            Some(c) if !c.present && l.release.is_some() => rows.push(Row::new(
                format!("{} (on disk)", checkpoint::dir_name(step)),
                "recorded as deleted",
                "present",
            )),
            Some(_) => {}
        }
    }
    rows
}

/// The step a run checkpointing every `every` steps writes next after `newest`.
fn next_cadence(newest: u64, every: u64) -> u64 {
    newest.checked_div(every).map_or(u64::MAX, |q| (q + 1).saturating_mul(every))
}

/// A release's Hugging Face files against its run record: `model/model.safetensors` and
/// `model/tokenizer.json` are the newest present checkpoint's (release copies them byte for
/// byte), and every `*.json` beside them and in each checkpoint is what `tinylm release`
/// writes for this config and tokenizer. These are what a reader loads, so they are checked
/// with the rest.
pub fn release_rows(l: &Layout, m: &Manifest) -> Vec<Row> {
    let Some(rel) = &l.release else { return Vec::new() };
    let mut rows = Vec::new();
    let Some(last) = m.checkpoints.iter().filter(|c| c.present).max_by_key(|c| c.step) else {
        return rows;
    };
    for name in [MODEL_FILE, TOKENIZER_FILE] {
        let want = last.files.get(name).cloned().unwrap_or_else(|| "not recorded".into());
        rows.push(Row::new(
            format!("model/{name} (= {}/{name})", last.dir),
            want,
            hash_or_missing(&rel.join("model").join(name)),
        ));
    }
    let side = (|| -> Result<Vec<(&'static str, Vec<u8>)>> {
        let cfg = Config::load(&l.run.join(checkpoint::CONFIG_FILE), &[])?;
        let tok = Tok::from_file(&rel.join("model").join(TOKENIZER_FILE))?;
        crate::release::hf::side_files(&crate::release::hf::HfModel {
            cfg: &cfg,
            vocab: tok.vocab_size(),
            eot: tok.eot(),
        })
    })();
    match side {
        Ok(files) => {
            let dirs = std::iter::once("model".to_string())
                .chain(m.checkpoints.iter().filter(|c| c.present).map(|c| format!("checkpoints/{}", c.dir)));
            for d in dirs {
                for (name, bytes) in &files {
                    rows.push(Row::new(
                        format!("{d}/{name}"),
                        sha256_hex(bytes),
                        hash_or_missing(&rel.join(&d).join(name)),
                    ));
                }
            }
        }
        Err(e) => rows.push(Row::new(
            "model/*.json",
            "what tinylm release writes",
            format!("cannot be rebuilt: {e}"),
        )),
    }
    rows
}

fn newest_record(m: &Manifest) -> u64 {
    m.checkpoints.iter().map(|c| c.step).max().unwrap_or(0)
}

/// Checkpoints newer than every record whose files check against their own state.json (the
/// shape a crash between writing and recording leaves). Newer ones that do not check are
/// mismatches like any unrecorded checkpoint.
/// Only the checkpoint the run would have written next can be in that state: beyond the next
/// cadence step (by the run's own config, which the manifest pins) it is a mismatch like any
/// unrecorded checkpoint, and a full verify does not re-execute that far.
fn unrecorded_newest(ckpts: &Path, m: &Manifest, every: u64) -> Vec<u64> {
    let newest = newest_record(m);
    checkpoint::list(ckpts)
        .unwrap_or_default()
        .into_iter()
        .map(|(s, _)| s)
        .filter(|&s| s > newest && (every == 0 || s <= next_cadence(newest, every)))
        .filter(|&s| run::verified_hashes(&ckpts.join(checkpoint::dir_name(s))).is_ok())
        .collect()
}

/// Rows of unrecorded checkpoints newer than every record that do not check against their
/// own state.json.
fn broken_newer(ckpts: &Path, m: &Manifest, every: u64) -> Vec<Row> {
    let newest = newest_record(m);
    checkpoint::list(ckpts)
        .unwrap_or_default()
        .into_iter()
        .filter(|&(s, _)| s > newest && (every == 0 || s <= next_cadence(newest, every)))
        .filter(|(_, d)| run::verified_hashes(d).is_err())
        .map(|(s, _)| {
            Row::new(
                format!("{} (on disk)", checkpoint::dir_name(s)),
                "not recorded",
                "present, and its files do not match its own state.json",
            )
        })
        .collect()
}

/// The first tensor (in sorted name order) that differs between a model file and tensors.
fn first_difference(a: &Path, y: &BTreeMap<String, Tensor>) -> Option<String> {
    let bytes = fs::read(a).ok()?;
    let x = checkpoint::from_safetensors(&bytes, a).ok()?;
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

/// The scratch directory of a re-execution: a new one in the system temp dir, or `--scratch
/// DIR`, which must be absent or empty. Only what verify created is removed, also on an error.
struct Scratch {
    dir: PathBuf,
    /// True when verify created `dir` itself (else only its contents are ours).
    created: bool,
    keep: bool,
}

impl Scratch {
    fn new(given: Option<&Path>, keep: bool) -> Result<Scratch> {
        let (dir, created) = match given {
            Some(d) if d.exists() => {
                let empty = fs::read_dir(d).map(|mut r| r.next().is_none()).unwrap_or(false);
                if !d.is_dir() || !empty {
                    return Err(Error::hint(
                        format!("scratch directory {} exists and is not empty", d.display()),
                        "pass --scratch a new or empty directory (verify deletes only what it creates)",
                    ));
                }
                (d.to_path_buf(), false)
            }
            Some(d) => (d.to_path_buf(), true),
            // A fresh directory with a random name, created exclusively (tempfile), so no other
            // user can have prepared it; removed by our Drop below.
            None => {
                let t = tempfile::Builder::new().prefix("tinylm-verify-").tempdir().map_err(|e| {
                    Error::hint(
                        format!(
                            "cannot create a scratch directory in {}: {e}",
                            std::env::temp_dir().display()
                        ),
                        "pass --scratch DIR, or set TMPDIR to a writable directory",
                    )
                })?;
                (t.keep(), true)
            }
        };
        fs::create_dir_all(&dir).at(&dir)?;
        Ok(Scratch { dir, created, keep })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if self.created {
            let _ = fs::remove_dir_all(&self.dir);
        } else if let Ok(entries) = fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let _ = fs::remove_dir_all(e.path()).or_else(|_| fs::remove_file(e.path()));
            }
        }
    }
}

pub fn verify(a: &VerifyArgs, stop: &AtomicBool) -> Result<Report> {
    if !a.run_dir.is_dir() {
        return Err(Error::hint(
            format!("run directory {} does not exist", a.run_dir.display()),
            "pass the directory `tinylm train` wrote (e.g. checkpoints/tiny) or a release directory",
        ));
    }
    crate::util::refuse_special_files(&a.run_dir)?;
    let layout = Layout::detect(&a.run_dir);
    let run_dir = layout.run.clone();
    let _lock = RunDir::open_shared(&run_dir)?;
    let m = run::read_manifest(&run_dir)?.ok_or_else(|| {
        Error::hint(
            format!("{} has no manifest.json: it is not a tinylm run directory", a.run_dir.display()),
            "pass the directory `tinylm train` wrote, e.g. checkpoints/tiny",
        )
    })?;
    let mut rows = check_files_in(&layout, &m);
    rows.extend(release_rows(&layout, &m));
    let every =
        Config::load(&run_dir.join(checkpoint::CONFIG_FILE), &[]).map(|c| c.checkpoint.every).unwrap_or(0);
    let unrecorded = unrecorded_newest(&layout.checkpoints, &m, every);
    if a.files_only {
        let unverified = unrecorded.iter().map(|&s| checkpoint::dir_name(s)).collect();
        return Ok(Report { rows, divergence: None, notes: numerics_notes(&m), unverified });
    }
    if !rows[0].ok() {
        return Err(Error::hint(
            format!(
                "{}: sha256 {} does not match the manifest ({}); the run's config was changed after it ran",
                run_dir.join(checkpoint::CONFIG_FILE).display(),
                rows[0].recomputed,
                rows[0].recorded
            ),
            "restore the run's config.toml (each checkpoint holds a copy), then verify again",
        ));
    }
    let cfg_path = run_dir.join(checkpoint::CONFIG_FILE);
    let mut cfg = Config::load(&cfg_path, &[])?;
    let start = a.from.unwrap_or(0);
    let loaded = match a.from {
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
                // A tampered start fails the segment (exit 1), as a tampered end does: nothing
                // is re-executed from bytes the manifest does not vouch for.
                let what = format!(
                    "the starting checkpoint {} does not match the manifest ({}); nothing was re-executed",
                    rec.dir,
                    bad.iter().map(|r| r.artifact.as_str()).collect::<Vec<_>>().join(", ")
                );
                return Ok(Report {
                    rows,
                    divergence: Some(what),
                    notes: numerics_notes(&m),
                    unverified: Vec::new(),
                });
            }
            Some(checkpoint::load(&layout.checkpoints.join(&rec.dir))?)
        }
    };
    // The recorded checkpoints, then any newer unrecorded one that checks against its own
    // state.json: re-executed too, and compared with its files, so it is verified or refuted
    // rather than tolerated.
    let mut extra = Vec::new();
    for s in unrecorded.iter().filter(|&&s| s > start) {
        // The record a resume would write for it (run::record_of), compared on what a
        // re-execution recomputes.
        let mut rec = run::record_of(&layout.checkpoints, *s)?;
        rec.files.retain(|n, _| [MODEL_FILE, OPTIM_FILE, TOKENIZER_FILE].contains(&n.as_str()));
        extra.push(rec);
    }
    if let Some(to) = a.to {
        if !m.checkpoints.iter().any(|c| c.step == to && c.present) || to <= start {
            let have: Vec<String> = m
                .checkpoints
                .iter()
                .filter(|c| c.present && c.step > start)
                .map(|c| c.step.to_string())
                .collect();
            return Err(Error::hint(
                format!("--to {to}: no recorded checkpoint at that step after step {start}"),
                format!("--to takes one of: {}", have.join(", ")),
            ));
        }
    }
    let end = a.to.unwrap_or(u64::MAX);
    let targets: Vec<_> = m
        .checkpoints
        .iter()
        .filter(|c| c.step > start && c.step <= end)
        .chain(extra.iter().filter(|c| c.step <= end))
        .collect();
    let last = targets.iter().map(|c| c.step).max().unwrap_or(start);
    cfg.check_memory(&cfg_path)?;

    // Data and tokenizer, rebuilt from the recorded config in scratch: the corpus comes from the
    // release or --corpus (never a path the config names, for a release), and nothing is
    // written or downloaded outside scratch (data::confine).
    let scratch = Scratch::new(a.scratch.as_deref(), a.keep_scratch)?;
    let say = |s: &str| eprintln!("{s}");
    let replay = data::Replay {
        release: layout.release.as_deref(),
        corpus: a.corpus.as_deref(),
        allow_download: a.allow_download,
        scratch: &scratch.dir,
    };
    data::confine(&mut cfg, &cfg_path, &replay, &say)?;
    // A fine-tune re-executes from its pinned parent (from scratch) and encodes with its
    // tokenizer; from a checkpoint, only the tokenizer is needed.
    let parent = match (&m.parent, &loaded) {
        (Some(rec), None) => {
            let p = crate::init::for_verify(&cfg, rec, a.parent.as_deref(), layout.release.as_deref())?;
            rows.push(Row::new(
                "parent: model.safetensors",
                rec.weights_sha256.clone(),
                sha256_hex(&p.weights),
            ));
            rows.push(Row::new(
                "parent: tokenizer.json",
                rec.tokenizer_sha256.clone(),
                sha256_hex(&p.tokenizer),
            ));
            if let (Some(want), Some((_, b, _))) = (&rec.optimizer_sha256, &p.optim) {
                rows.push(Row::new("parent: optimizer.safetensors", want.clone(), sha256_hex(b)));
            }
            Some(p)
        }
        _ => None,
    };
    let given_tok = match &parent {
        Some(p) => Some(p.tokenizer.clone()),
        None => crate::init::data_tokenizer(&m, &run_dir, layout.release.as_deref())?,
    };
    let quiet = |_: &str| {};
    let prepared = data::prepare(&cfg, &scratch.dir.join("data"), given_tok.as_deref(), &quiet)?;
    let (d0, d1) = (&m.data, &prepared.meta);
    for (name, x, y) in [
        ("data: corpus", &d0.corpus_sha256, &d1.corpus_sha256),
        ("data: tokenizer.json", &d0.tokenizer_sha256, &d1.tokenizer_sha256),
        ("data: train tokens", &d0.train_tokens_sha256, &d1.train.sha256),
        ("data: val tokens", &d0.val_tokens_sha256, &d1.val.sha256),
    ] {
        rows.push(Row::new(name, x.clone(), y.clone()));
    }
    let tok = Tok::from_file(&prepared.tokenizer_path())?;
    let tokenizer_sha = sha256_file(&prepared.tokenizer_path())?;
    let train_tokens = prepared.load_tokens("train")?;
    let val_tokens = prepared.load_tokens("val")?;
    // What the run published of its evaluations (the model card is built from these): each is
    // recomputed below at its recorded checkpoint.
    type Published = (Option<f64>, Option<f64>, Option<f64>);
    let metrics: BTreeMap<u64, Published> = fs::read_to_string(run_dir.join(crate::train::METRICS_FILE))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("val_loss").is_some())
        .filter_map(|v| {
            let f = |k: &str| v.get(k).and_then(|x| x.as_f64());
            Some((v.get("step")?.as_u64()?, (f("val_loss"), f("val_ppl"), f("val_bpb"))))
        })
        .collect();
    check_split_sizes(&cfg, train_tokens.len(), prepared.meta.val.tokens as usize)?;

    // Re-execution: only to the last recorded step, no evals, nothing written; each recorded
    // checkpoint is compared in memory as the step is reached.
    let mut trainer = Trainer::new(&cfg, tok.vocab_size(), &train_tokens, loaded.as_ref(), parent.as_ref())?;
    eprintln!(
        "re-executing {} from step {start} to {last} ({} steps; data rebuilt in {})",
        a.run_dir.display(),
        last - start,
        scratch.dir.display()
    );
    let mut divergence = None;
    let mut pacer = crate::threads::Pacer::new();
    for c in &targets {
        while trainer.step < c.step {
            if stop.load(Ordering::SeqCst) {
                return Err(Error::msg(format!(
                    "verify interrupted at step {}; nothing was compared",
                    trainer.step
                )));
            }
            pacer.run(|| trainer.step())?;
        }
        let model = trainer.model_tensors()?;
        let got = [
            (MODEL_FILE, sha256_hex(&checkpoint::to_safetensors(&model)?)),
            (OPTIM_FILE, sha256_hex(&checkpoint::to_safetensors(&trainer.opt_state()?)?)),
            (TOKENIZER_FILE, tokenizer_sha.clone()),
        ];
        for (name, got) in got {
            let Some(want) = c.files.get(name) else { continue };
            // The first step where the re-execution disagrees with the record, or with the
            // file on disk (a tampered checkpoint): name the first tensor that differs.
            let on_disk = layout.checkpoints.join(&c.dir).join(name);
            let disk_differs = c.present && on_disk.is_file() && hash_or_missing(&on_disk) != got;
            if name == MODEL_FILE && divergence.is_none() && (*want != got || disk_differs) {
                divergence = Some(match c.present.then(|| first_difference(&on_disk, &model)).flatten() {
                    Some(d) => format!("step {}: {}/{name} vs the re-execution: {d}", c.step, c.dir),
                    None => {
                        format!("step {} (the original weights are not on disk to compare tensors)", c.step)
                    }
                });
            }
            let unrecorded = if extra.iter().any(|e| e.step == c.step) { " (not recorded)" } else { "" };
            rows.push(Row::new(format!("rerun {}/{name}{unrecorded}", c.dir), want.clone(), got));
        }
        // The evaluation the manifest records for this checkpoint, and the metrics.jsonl line
        // at its step, against a re-run of the evaluation (deterministic, and cheap), under
        // the eval settings of the session that wrote the checkpoint.
        // Only where the checkpoint's own config.toml is on disk (checked above) are its eval
        // settings known; a deleted checkpoint's evaluation is left alone.
        if let Some(want) = c
            .val_loss
            .filter(|_| c.present && layout.checkpoints.join(&c.dir).join(checkpoint::CONFIG_FILE).is_file())
        {
            let own = layout.checkpoints.join(&c.dir).join(checkpoint::CONFIG_FILE);
            let Some(ecfg) =
                fs::read_to_string(&own).ok().and_then(|t| Config::from_source(&t, &own, &[]).ok()).filter(
                    |e| e.train.batch_size == cfg.train.batch_size && e.train.context == cfg.train.context,
                )
            else {
                continue;
            };
            let ev = trainer.evaluate_as(&val_tokens, &tok, &ecfg)?;
            let bits = |x: f64| format!("{x:?}");
            rows.push(Row::new(format!("rerun {} val_loss", c.dir), bits(want), bits(ev.loss)));
            if let Some(b) = c.val_bpb {
                rows.push(Row::new(format!("rerun {} val_bpb", c.dir), bits(b), bits(ev.bpb)));
            }
            if let Some((l, p, b)) = metrics.get(&c.step) {
                let show = |l: &Option<f64>, p: &Option<f64>, b: &Option<f64>| {
                    let o = |x: &Option<f64>| x.map(bits).unwrap_or_else(|| "missing".into());
                    format!("loss {} ppl {} bpb {}", o(l), o(p), o(b))
                };
                rows.push(Row::new(
                    format!("metrics.jsonl step {} eval", c.step),
                    show(l, p, b),
                    show(&Some(ev.loss), &Some(ev.ppl), &Some(ev.bpb)),
                ));
            }
        }
    }
    Ok(Report { rows, divergence, notes: numerics_notes(&m), unverified: Vec::new() })
}
