//! The training loop: data, model, then per step: lr, batch, forward, loss, backward, clip,
//! update, log; every `eval.every` steps evaluate; every `checkpoint.every` steps checkpoint.

use crate::checkpoint::{self, State, CONFIG_FILE, MODEL_FILE, OPTIM_FILE, TOKENIZER_FILE};
use crate::config::{is_result_neutral, Config};
use crate::data::{self, Prepared};
use crate::engine::Engine;
use crate::error::{Error, IoContext, Result};
use crate::manifest::{self, DataRecord, Manifest, Session};
use crate::model::{Dims, Llama};
use crate::optim::{self, AdamW};
use crate::rng;
use crate::run::{self, shell_quote, RunDir};
use crate::sample;
use crate::tokenizer::Tok;
use crate::tokens::Tokens;
use crate::util::{sha256_hex, write_atomic};
use candle_core::Tensor;
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

pub use crate::run::METRICS_FILE;

/// Where a resume starts: the newest complete checkpoint of the run directory, or a given
/// checkpoint directory.
#[derive(Clone)]
pub enum Resume {
    Latest,
    From(PathBuf),
}

pub struct TrainArgs {
    pub cfg: Config,
    pub overrides: Vec<String>,
    pub run_dir: PathBuf,
    pub resume: Option<Resume>,
    /// The model `[init]` names, loaded and checked (`init::load_config`).
    pub parent: Option<crate::init::Parent>,
}

pub enum Outcome {
    Finished {
        step: u64,
        val: EvalResult,
    },
    Interrupted {
        step: u64,
        checkpoint: PathBuf,
    },
    /// A rank other than 0 ended (rank 0 reports for the job).
    Follower {
        interrupted: bool,
    },
}

/// The command that continues a run: the run directory alone holds its config.
pub fn resume_command(run_dir: &Path) -> String {
    format!("tinylm train --resume {}", shell_quote(&run_dir.display().to_string()))
}

/// The same for a job of `world` ranks: under mpirun (any number of ranks resumes it).
pub fn resume_command_for(run_dir: &Path, world: usize) -> String {
    match world {
        1 => resume_command(run_dir),
        w => format!("mpirun -np {w} {}", resume_command(run_dir)),
    }
}

/// What a rank tells rank 0 before training: what must be equal, and what is recorded.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct RankCheck {
    record: manifest::RankRecord,
    /// Every config key that can change the weights, resolved.
    config: BTreeMap<String, String>,
    data: [String; 3],
    build: [String; 3],
}

impl RankCheck {
    fn of(cfg: &Config, prepared: &Prepared, link: &dyn crate::dist::Link) -> RankCheck {
        let b = manifest::build_info();
        let (lo, hi) = crate::dist::block(cfg.train.grad_accum, link.size(), link.rank());
        RankCheck {
            record: manifest::RankRecord {
                rank: link.rank(),
                host: link.host(),
                cpu_model: manifest::cpu_model(),
                kernels: crate::kernels::dispatch_path().into(),
                threads: cfg.threads(),
                micro_batches: [lo, hi],
            },
            config: cfg.flat().into_iter().filter(|(k, _)| !is_result_neutral(k)).collect(),
            data: [
                prepared.meta.tokenizer_sha256.clone(),
                prepared.meta.train.sha256.clone(),
                prepared.meta.val.sha256.clone(),
            ],
            build: [b.git_commit, b.git_dirty.to_string(), b.cargo_lock_sha256],
        }
    }

    /// The first difference from rank 0's, in words.
    fn differs(&self, zero: &RankCheck) -> Option<String> {
        if let Some((k, v)) = self.config.iter().find(|(k, v)| zero.config.get(*k) != Some(v)) {
            return Some(format!(
                "its config has {k} = {v}, rank 0's {}",
                zero.config.get(k).map_or("nothing", |s| s)
            ));
        }
        if let Some(k) = zero.config.keys().find(|k| !self.config.contains_key(*k)) {
            return Some(format!("its config lacks {k}"));
        }
        let names = ["tokenizer", "train tokens", "val tokens"];
        for (i, n) in names.iter().enumerate() {
            if self.data[i] != zero.data[i] {
                return Some(format!("its {n} hash to {}, rank 0's to {}", self.data[i], zero.data[i]));
            }
        }
        if self.build != zero.build {
            return Some(format!(
                "it runs another build (commit {}, dirty {}, Cargo.lock {}) than rank 0 ({}, {}, {})",
                self.build[0],
                self.build[1],
                &self.build[2][..12],
                zero.build[0],
                zero.build[1],
                &zero.build[2][..12]
            ));
        }
        None
    }
}

/// Rank 0's side of the start: every rank prepares (after rank 0, so a shared data directory
/// is reused, not raced), sends its `RankCheck`, and learns whether the job goes on. Returns
/// every rank's record, rank 0 first, or the error naming the first rank that differs.
fn start_ranks(
    cfg: &Config,
    prepared: &Prepared,
    link: &dyn crate::dist::Link,
) -> Result<Vec<manifest::RankRecord>> {
    let mine = RankCheck::of(cfg, prepared, link);
    crate::dist::share_bytes(link, Some(b"go"));
    let mut records = vec![mine.record.clone()];
    let mut problem = None;
    for r in 1..link.size() {
        let bytes = link.recv_bytes(r);
        let theirs = match serde_json::from_slice::<RankCheck>(&bytes) {
            Ok(c) => c,
            Err(_) => {
                // A rank that failed sends its error instead.
                let e = String::from_utf8_lossy(&bytes).into_owned();
                problem.get_or_insert(format!("rank {r} could not start: {e}"));
                continue;
            }
        };
        if let Some(d) = theirs.differs(&mine) {
            problem.get_or_insert(format!("rank {r} differs from rank 0: {d}"));
        }
        records.push(theirs.record);
    }
    let verdict = problem.clone().unwrap_or_default();
    crate::dist::share_bytes(link, Some(verdict.as_bytes()));
    match problem {
        Some(p) => Err(Error::hint(
            p,
            "every rank must run the same build on the same config and data; fix that rank's host",
        )),
        None => Ok(records),
    }
}

/// A rank other than 0: no run directory, no output; it prepares its data, checks in with
/// rank 0, takes rank 0's starting state and runs its share of every step.
fn follow(args: &TrainArgs, stop: &AtomicBool, link: &dyn crate::dist::Link) -> Result<Outcome> {
    let cfg = &args.cfg;
    let go = link.recv_bytes(0);
    if go != b"go" {
        return Err(Error::msg("rank 0 did not start"));
    }
    let checked = (|| -> Result<(Prepared, Tok)> {
        let parent = args.parent.as_ref();
        let p =
            data::prepare(cfg, Path::new(&cfg.data.dir), parent.map(|p| p.tokenizer.as_slice()), &|_| {})?;
        let tok = Tok::from_file(&p.tokenizer_path())?;
        Ok((p, tok))
    })();
    let (prepared, tok) = match checked {
        Ok(x) => {
            let c = RankCheck::of(cfg, &x.0, link);
            link.send_bytes(0, &serde_json::to_vec(&c).map_err(|e| Error::msg(e.to_string()))?);
            x
        }
        Err(e) => {
            link.send_bytes(0, e.to_string().as_bytes());
            let _ = link.recv_bytes(0);
            return Err(e);
        }
    };
    let verdict = link.recv_bytes(0);
    if !verdict.is_empty() {
        return Err(Error::msg(format!("rank 0 stopped the job: {}", String::from_utf8_lossy(&verdict))));
    }
    let train_tokens = prepared.load_tokens("train")?;
    let mut trainer =
        Trainer::new(cfg, tok.vocab_size(), &train_tokens, None, args.parent.as_ref())?.with_link(link, stop);
    trainer.share_state();
    let mut pacer = crate::threads::Pacer::new();
    while trainer.step < cfg.train.steps {
        let st = pacer.run(|| trainer.step())?;
        if st.stop && trainer.step < cfg.train.steps {
            return Ok(Outcome::Follower { interrupted: true });
        }
    }
    Ok(Outcome::Follower { interrupted: false })
}

#[derive(Debug, Clone, Copy)]
pub struct EvalResult {
    pub loss: f64,
    pub ppl: f64,
    pub bpb: f64,
}

/// Mean loss, perplexity and bits per byte over the fixed validation windows.
/// Per-token losses of one evaluation batch: (inputs, targets) -> losses.
pub type BatchLosses<'a> = dyn FnMut(&[u32], &[u32]) -> Result<Vec<f32>> + 'a;

pub fn evaluate(val: &Tokens, tok: &Tok, cfg: &Config, losses_of: &mut BatchLosses) -> Result<EvalResult> {
    let (b, t) = (cfg.train.batch_size as usize, cfg.train.context as usize);
    let offsets = data::eval_offsets(val.len(), b * cfg.eval.batches as usize, t);
    let (mut nats, mut tokens, mut bytes) = (0f64, 0u64, 0u64);
    for chunk in offsets.chunks(b) {
        let (x, y) = batch_ids(val, chunk, t);
        let losses = losses_of(&x, &y)?;
        nats += losses.iter().map(|&l| l as f64).sum::<f64>();
        tokens += losses.len() as u64;
        bytes += y.iter().map(|&id| tok.byte_len(id) as u64).sum::<u64>();
    }
    let loss = nats / tokens as f64;
    Ok(EvalResult { loss, ppl: libm::exp(loss), bpb: nats / std::f64::consts::LN_2 / bytes.max(1) as f64 })
}

/// Settings that differ between a checkpoint's config and ours and would change the weights.
pub fn incompatible(old: &Config, new: &Config) -> Vec<(String, String, String)> {
    let (a, b) = (old.flat(), new.flat());
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let none = "(unset)".to_string();
    let mut out: Vec<(String, String, String)> = keys
        .into_iter()
        .filter(|k| !is_result_neutral(k))
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| (k.clone(), a.get(k).unwrap_or(&none).clone(), b.get(k).unwrap_or(&none).clone()))
        .collect();
    if old.schedule_steps() != new.schedule_steps() {
        out.push((
            "schedule length (optim.schedule_steps, or train.steps when it is 0)".into(),
            old.schedule_steps().to_string(),
            format!(
                "{} (to stop or extend without changing the schedule, add --set optim.schedule_steps={})",
                new.schedule_steps(),
                old.schedule_steps()
            ),
        ));
    }
    out
}

/// The data hashes a checkpoint records and a resume compares.
fn data_hashes(d: &DataRecord) -> BTreeMap<String, String> {
    [
        ("corpus".to_string(), d.corpus_sha256.clone()),
        ("tokenizer".to_string(), d.tokenizer_sha256.clone()),
        ("train_tokens".to_string(), d.train_tokens_sha256.clone()),
        ("val_tokens".to_string(), d.val_tokens_sha256.clone()),
    ]
    .into()
}

/// Which checkpoint a resume starts from; a directory that is not a checkpoint but holds them
/// (a run directory) means its newest.
fn resume_dir(r: &Resume, run_dir: &Path) -> Result<PathBuf> {
    let newest = |dir: &Path| -> Result<PathBuf> {
        match checkpoint::list(dir)?.pop() {
            Some((_, d)) => Ok(d),
            None => Err(Error::hint(
                format!("no complete checkpoint in {} to resume from", dir.display()),
                "start without --resume, or pass --resume PATH to a run directory or a step-NNNNNNNN directory",
            )),
        }
    };
    match r {
        Resume::Latest => newest(run_dir),
        Resume::From(p) if p.join(checkpoint::STATE_FILE).is_file() => Ok(p.clone()),
        Resume::From(p) if p.is_dir() && run::looks_like_run(p) => newest(p),
        Resume::From(p) => checkpoint::read_state(p).map(|_| p.clone()),
    }
}

/// Two paths name the same directory (both must exist).
fn same_dir(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Find and check the checkpoint to resume from, writing nothing: its files against its
/// state.json and against the manifest of the run it belongs to, its config against ours, and
/// its data hashes against the prepared data.
fn load_resume(r: &Resume, run_dir: &Path, cfg: &Config, prepared: &Prepared) -> Result<checkpoint::Loaded> {
    let dir = resume_dir(r, run_dir)?;
    let loaded = checkpoint::load(&dir)?;
    let step = loaded.state.step;
    // The manifest of the run that holds the checkpoint must agree with its files (tampering,
    // or a mix-up). A checkpoint it does not record (written just before a crash) checks
    // against its own state.json only, and is recorded when the resume starts.
    let owner = dir.parent().unwrap_or(Path::new("."));
    let old = Config::from_source(&loaded.config_toml, &dir.join(CONFIG_FILE), &[])?;
    if let Some(m) = run::read_manifest(owner)? {
        if !m.checkpoints.iter().any(|c| c.step == step && c.present) {
            check_unrecorded(&dir, step, &old, &loaded.state.data, &m)?;
        }
        if let Some(rec) = m.checkpoints.iter().find(|c| c.step == step && c.present) {
            let (_, files) = run::verified_hashes(&dir)?;
            for (name, want) in &rec.files {
                let got = files.get(name).cloned().unwrap_or_else(|| "missing".into());
                if &got != want {
                    return Err(Error::hint(
                        format!(
                            "{}: sha256 {got} does not match the run manifest ({want})",
                            dir.join(name).display()
                        ),
                        "the checkpoint was modified after it was written; resume from another checkpoint",
                    ));
                }
            }
        }
    }
    let mut diffs: Vec<String> = incompatible(&old, cfg)
        .into_iter()
        .map(|(k, a, b)| format!("  {k}: checkpoint has {a}, now {b}"))
        .collect();
    if loaded.state.numerics != crate::kernels::CONTRACT_VERSION {
        let was = if loaded.state.numerics.is_empty() {
            "(before numerics contracts)"
        } else {
            &loaded.state.numerics
        };
        diffs.push(format!(
            "  numerics contract: checkpoint has {was}, now {} (docs/numerics.md)",
            crate::kernels::CONTRACT_VERSION
        ));
    }
    let now = data_hashes(&DataRecord::from_meta(&cfg.data.source, &prepared.meta));
    for (k, want) in &loaded.state.data {
        let got = now.get(k).cloned().unwrap_or_default();
        if &got != want {
            diffs.push(format!("  data {k} sha256: checkpoint has {want}, now {got}"));
        }
    }
    if !diffs.is_empty() {
        return Err(Error::hint(
            format!("cannot resume from {}: these settings differ and would change the result:\n{}", dir.display(), diffs.join("\n")),
            format!(
                "`{}` resumes with the run's own config; to change these settings start a new run with --run-dir",
                resume_command(owner)
            ),
        ));
    }
    if step >= cfg.train.steps {
        return Err(Error::hint(
            format!("checkpoint {} is at step {step}, and train.steps is {}: nothing to do", dir.display(), cfg.train.steps),
            format!("to train further, raise train.steps and keep the schedule: --set train.steps=N --set optim.schedule_steps={}", old.schedule_steps()),
        ));
    }
    Ok(loaded)
}

/// A checkpoint its run's manifest does not record is what a crash between writing and
/// recording leaves, or something put there by hand (a copy, a forgery). Only the first shape
/// is resumed from: the checkpoint the run would have written next after its newest record (a
/// cadence step, the last step, or an interrupt between them), made from the data the manifest
/// records. It is said so, since nothing vouches for it until `tinylm verify` re-executes it.
fn check_unrecorded(
    dir: &Path,
    step: u64,
    old: &Config,
    data: &BTreeMap<String, String>,
    m: &crate::manifest::Manifest,
) -> Result<()> {
    let newest = m.checkpoints.iter().map(|c| c.step).max().unwrap_or(0);
    // The cadence of the run's own config (pinned by the manifest), not the candidate's: a
    // checkpoint's config.toml may differ in result-neutral keys, checkpoint.every among them.
    let owner_cfg = dir
        .parent()
        .map(|o| o.join(CONFIG_FILE))
        .filter(|p| crate::util::sha256_file(p).is_ok_and(|h| h == m.config_sha256));
    let every = match owner_cfg.and_then(|p| Config::load(&p, &[]).ok()) {
        Some(c) => c.checkpoint.every,
        None => old.checkpoint.every,
    };
    let next = newest.checked_div(every).map_or(u64::MAX, |q| (q + 1).saturating_mul(every));
    let owner = dir.parent().unwrap_or(Path::new("."));
    let recorded = || match newest {
        0 => format!(
            "start again: `tinylm train --resume {}` with no checkpoint recorded starts from step 0",
            owner.display()
        ),
        n => format!(
            "resume from the newest recorded checkpoint: --resume {}",
            owner.join(checkpoint::dir_name(n)).display()
        ),
    };
    if step <= newest || step > next {
        return Err(Error::hint(
            format!(
                "{} is not recorded in the run's manifest, and it is not the checkpoint the run would have written after its newest record (step {newest}; the next is step {next}), so it is not resumed from",
                dir.display()
            ),
            recorded(),
        ));
    }
    let want = data_hashes(&m.data);
    if data != &want {
        return Err(Error::hint(
            format!(
                "{} is not recorded in the run's manifest, and its data hashes are not the run's",
                dir.display()
            ),
            recorded(),
        ));
    }
    eprintln!(
        "warning: {} is not recorded in the manifest (a crash between writing and recording it); resuming from it, and `tinylm verify` re-executes it to check",
        dir.display()
    );
    Ok(())
}

/// One optimizer step's figures.
pub struct StepStats {
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// Some rank was asked to stop (its flag was set when it finished this step's micro-batches):
    /// every rank sees the same value, so all stop after the same step.
    pub stop: bool,
    /// Seconds this rank spent combining gradients with the others (0 for one process).
    pub combine_secs: f64,
}

static SOLO: crate::dist::Solo = crate::dist::Solo;

/// The weights, their optimizer and the training tokens: `step()` runs one optimizer step. Both
/// `train` and `verify` drive it, so they cannot disagree on what a step is. The weights live in
/// one flat buffer (`engine::ParamLayout`); `model()` makes a candle `Llama` of them for
/// evaluation and sampling.
pub struct Trainer<'a> {
    pub cfg: &'a Config,
    pub dims: Dims,
    engine: Engine,
    w: Vec<f32>,
    grad: Vec<f32>,
    /// The sum over micro-batches (empty unless train.grad_accum > 1).
    acc: Vec<f32>,
    opt: AdamW,
    /// Optimizer steps completed.
    pub step: u64,
    tokens: &'a Tokens,
    /// The ranks this step is shared with (`dist`); one process by default.
    link: &'a dyn crate::dist::Link,
    /// This process's stop flag, read when its micro-batches are done.
    stop: Option<&'a AtomicBool>,
    /// A later rank's gradients of its block, one per micro-batch, until they are combined.
    mine: Vec<Vec<f32>>,
}

impl<'a> Trainer<'a> {
    /// Fresh weights, or the state of a loaded checkpoint.
    pub fn new(
        cfg: &'a Config,
        vocab: usize,
        tokens: &'a Tokens,
        from: Option<&checkpoint::Loaded>,
        parent: Option<&crate::init::Parent>,
    ) -> Result<Self> {
        let dims = Dims::new(&cfg.model, vocab);
        let engine = Engine::new(dims, cfg.train.batch_size as usize, cfg.train.context as usize)?;
        let layout = &engine.layout;
        let (w, opt, step) = match from {
            Some(l) => {
                let origin = l.dir.display().to_string();
                // Checks every name and shape, with errors that name the checkpoint.
                let model = Llama::from_tensors(dims, &l.model, &origin)?;
                let opt = AdamW::from_state(layout, &l.optim, &origin)?;
                if opt.step != l.state.step {
                    return Err(Error::hint(
                        format!("{origin}: optimizer step {} != checkpoint step {}", opt.step, l.state.step),
                        "the checkpoint is inconsistent; resume from another one",
                    ));
                }
                (layout.flatten(&model.tensors(), "")?, opt, l.state.step)
            }
            None => match parent {
                // A fine-tune: the parent's weights, and a fresh optimizer or its carried state.
                Some(p) => {
                    let origin = p.dir.display().to_string();
                    if p.dims != dims {
                        return Err(Error::msg(format!(
                            "{origin}: the parent's dimensions {:?} are not the run's {dims:?}",
                            p.dims
                        )));
                    }
                    let model = Llama::from_tensors(dims, &p.tensors, &origin)?;
                    let (opt, step) = match &p.optim {
                        Some((t, _, step)) => {
                            let opt = AdamW::from_state(layout, t, &origin)?;
                            if opt.step != *step {
                                return Err(Error::hint(
                                    format!(
                                        "{origin}: optimizer step {} != checkpoint step {step}",
                                        opt.step
                                    ),
                                    "the parent checkpoint is inconsistent; start from another one",
                                ));
                            }
                            (opt, *step)
                        }
                        None => (AdamW::new(layout), 0),
                    };
                    (layout.flatten(&model.tensors(), "")?, opt, step)
                }
                None => {
                    let model = Llama::init(dims, cfg.run.seed)?;
                    (layout.flatten(&model.tensors(), "")?, AdamW::new(layout), 0)
                }
            },
        };
        let acc = if cfg.train.grad_accum > 1 { vec![0f32; w.len()] } else { Vec::new() };
        Ok(Trainer {
            cfg,
            dims,
            grad: vec![0f32; w.len()],
            acc,
            engine,
            w,
            opt,
            step,
            tokens,
            link: &SOLO,
            stop: None,
            mine: Vec::new(),
        })
    }

    /// Share every step with the other ranks of `link`, and report `stop` in `StepStats`.
    pub fn with_link(mut self, link: &'a dyn crate::dist::Link, stop: &'a AtomicBool) -> Self {
        self.link = link;
        self.stop = Some(stop);
        self
    }

    /// Rank 0's weights, optimizer state and step, copied to every other rank: they start where
    /// rank 0 starts (fresh, resumed or a parent's), whatever they loaded themselves.
    pub fn share_state(&mut self) {
        if self.link.size() == 1 {
            return;
        }
        crate::dist::share_f32(self.link, &mut self.w);
        let (step, m, v) = self.opt.buffers_mut();
        crate::dist::share_f32(self.link, m);
        crate::dist::share_f32(self.link, v);
        let bytes = crate::dist::share_bytes(self.link, Some(&step.to_le_bytes()));
        *step = u64::from_le_bytes(bytes.try_into().unwrap_or([0; 8]));
        self.step = *step;
    }

    /// The weights as named tensors.
    pub fn model_tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        self.engine.layout.to_tensors(&self.w, "")
    }

    /// The weights as a candle model (a copy), for evaluation and sampling.
    pub fn model(&self) -> Result<Llama> {
        Llama::from_tensors(self.dims, &self.model_tensors()?, "trainer")
    }

    pub fn num_params(&self) -> usize {
        self.w.len()
    }

    /// Validation loss of the current weights (`evaluate`), through the training forward pass.
    pub fn evaluate(&mut self, val: &Tokens, tok: &Tok) -> Result<EvalResult> {
        let cfg = self.cfg;
        self.evaluate_as(val, tok, cfg)
    }

    /// As `evaluate`, with the eval settings (`eval.batches`) of `cfg`: those of the session
    /// that made a checkpoint, which may differ from the run's first config.
    pub fn evaluate_as(&mut self, val: &Tokens, tok: &Tok, cfg: &Config) -> Result<EvalResult> {
        let (engine, w, vocab) = (&mut self.engine, &self.w, self.dims.vocab);
        evaluate(val, tok, cfg, &mut |x: &[u32], y: &[u32]| {
            check_ids(x.iter().chain(y), vocab)?;
            let mut out = vec![0f32; y.len()];
            engine.token_losses(w, x, y, &mut out);
            Ok(out)
        })
    }

    /// The optimizer state as named tensors.
    pub fn opt_state(&self) -> Result<BTreeMap<String, Tensor>> {
        self.opt.state()
    }

    /// lr, batch, forward, loss, backward, clip, update. A non-finite loss or gradient norm
    /// stops before the weights change, so no checkpoint ever holds them.
    pub fn step(&mut self) -> Result<StepStats> {
        let cfg = self.cfg;
        let lr = optim::lr_at(self.step, &cfg.optim, cfg.schedule_steps());
        let (loss, stop, combine_secs) = self.forward_backward()?;
        let layout = &self.engine.layout;
        let grads = if self.acc.is_empty() { &mut self.grad } else { &mut self.acc };
        let grad_norm = optim::clip(layout, grads, cfg.optim.grad_clip);
        if !loss.is_finite() || !grad_norm.is_finite() {
            let what = if loss.is_finite() {
                format!("gradient norm is {grad_norm}")
            } else {
                format!("loss is {loss}")
            };
            return Err(Error::hint(
                format!("training diverged at step {}: {what}; the weights were not updated", self.step + 1),
                format!(
                    "checkpoints up to step {} are intact. A lower optim.lr, a longer optim.warmup_steps or optim.grad_clip change the run, so start a new one with them: --run-dir NEW --set optim.lr=...",
                    self.step
                ),
            ));
        }
        self.opt.update(&mut self.w, grads, lr, &cfg.optim);
        self.step += 1;
        Ok(StepStats { loss, lr, grad_norm, stop, combine_secs })
    }

    /// Forward and backward over `grad_accum` micro-batches of this step: the mean loss, and
    /// the gradients in `grad` (one micro-batch) or summed in micro-batch order in `acc`.
    /// With several ranks, this one runs its block of micro-batches and `dist::combine` adds
    /// the blocks in order, so every rank ends with the single-process sum.
    fn forward_backward(&mut self) -> Result<(f64, bool, f64)> {
        let cfg = self.cfg;
        let (b, t, accum) = (cfg.train.batch_size as usize, cfg.train.context as usize, cfg.train.grad_accum);
        let gscale = (1.0 / accum as f64) as f32;
        let (rank, world) = (self.link.rank(), self.link.size());
        let (lo, hi) = crate::dist::block(accum, world, rank);
        let mut loss_sum = 0f64;
        let mut losses = Vec::new();
        if rank > 0 && self.mine.len() != (hi - lo) as usize {
            self.mine = vec![vec![0f32; self.w.len()]; (hi - lo) as usize];
        }
        for micro in lo..hi {
            let offsets = data::batch_offsets(cfg.run.seed, self.step, micro, self.tokens.len(), b, t);
            let (x, y) = batch_ids(self.tokens, &offsets, t);
            check_ids(x.iter().chain(&y), self.dims.vocab)?;
            let loss = self.engine.forward_backward(&self.w, &x, &y, gscale, &mut self.grad);
            if rank > 0 {
                losses.push(loss as f64);
                self.mine[(micro - lo) as usize].copy_from_slice(&self.grad);
                continue;
            }
            loss_sum += loss as f64;
            if micro == 0 && !self.acc.is_empty() {
                self.acc.copy_from_slice(&self.grad);
            } else if micro > 0 {
                for (a, g) in self.acc.iter_mut().zip(&self.grad) {
                    *a += *g;
                }
            }
        }
        let mut stop = self.stop.is_some_and(|s| s.load(Ordering::SeqCst));
        let mut secs = 0.0;
        if world > 1 {
            let t = Instant::now();
            let mut head = [loss_sum, stop as u8 as f64];
            crate::dist::combine(self.link, &mut self.acc, &self.mine, &losses, &mut head);
            loss_sum = head[0];
            stop = head[1] != 0.0;
            secs = t.elapsed().as_secs_f64();
        }
        Ok((loss_sum / accum as f64, stop, secs))
    }

    /// The checkpoint files of the current state: (name, bytes), config and tokenizer given.
    pub fn files(&self, config: &[u8], tokenizer: &[u8]) -> Result<Vec<(&'static str, Vec<u8>)>> {
        Ok(vec![
            (MODEL_FILE, checkpoint::raw_to_safetensors(self.engine.layout.raw(&self.w, ""))?),
            (OPTIM_FILE, self.opt.state_safetensors()?),
            (CONFIG_FILE, config.to_vec()),
            (TOKENIZER_FILE, tokenizer.to_vec()),
        ])
    }
}

/// Every token id must index the embedding table.
fn check_ids<'b>(mut ids: impl Iterator<Item = &'b u32>, vocab: usize) -> Result<()> {
    match ids.find(|&&id| id as usize >= vocab) {
        Some(bad) => Err(Error::msg(format!(
            "token id {bad} is outside the vocabulary of {vocab}; the data cache does not match the tokenizer"
        ))),
        None => Ok(()),
    }
}

/// Inputs and targets (B*T each) of the windows starting at `offsets`.
fn batch_ids(tokens: &Tokens, offsets: &[usize], t: usize) -> (Vec<u32>, Vec<u32>) {
    let mut x = Vec::with_capacity(offsets.len() * t);
    let mut y = Vec::with_capacity(offsets.len() * t);
    for &o in offsets {
        tokens.extend_into(&mut x, o, o + t);
        tokens.extend_into(&mut y, o + 1, o + t + 1);
    }
    (x, y)
}

/// Evaluate, then sample from `eval.prompt` with a stream keyed by step (its own purpose, so
/// sampling never touches the training streams).
fn eval_and_sample(
    trainer: &mut Trainer,
    val: &Tokens,
    tok: &Tok,
    cfg: &Config,
    step: u64,
) -> Result<(EvalResult, String)> {
    let ev = trainer.evaluate(val, tok)?;
    let model = trainer.model()?;
    let mut r = rng::stream(cfg.run.seed, "eval-sample", &step.to_string());
    let e = &cfg.eval;
    let d = sample::Decode {
        tokens: e.sample_tokens as usize,
        temperature: e.temperature,
        top_k: e.top_k as usize,
        ctx: cfg.train.context as usize,
    };
    let text = sample::generate(&model, tok, &e.prompt, &d, &mut r)?;
    Ok((ev, text))
}

/// Both splits must hold at least one window of `train.context + 1` tokens.
pub fn check_split_sizes(cfg: &Config, train: usize, val: usize) -> Result<()> {
    let t = cfg.train.context as usize;
    for (split, n) in [("train", train), ("val", val)] {
        if n < t + 2 {
            return Err(Error::hint(
                format!("the {split} split has {n} tokens, fewer than train.context + 2 = {}", t + 2),
                if split == "val" {
                    "raise data.val_fraction, use a larger corpus, or a smaller train.context"
                } else {
                    "use a larger corpus or a smaller train.context"
                },
            ));
        }
    }
    Ok(())
}

pub fn train(args: TrainArgs, stop: &AtomicBool, link: &dyn crate::dist::Link) -> Result<Outcome> {
    let cfg = &args.cfg;
    let say = |s: &str| eprintln!("{s}");
    let world = link.size();
    crate::dist::check_world(world, cfg.train.grad_accum)?;
    if link.rank() > 0 {
        return follow(&args, stop, link);
    }

    // 1. Every check, before anything is written into the run directory. An existing run
    //    directory is locked first, so no other process can change it under the checks.
    let locked = if args.run_dir.is_dir() { Some(RunDir::open(&args.run_dir)?) } else { None };
    let refuse_existing = || {
        Error::hint(
            format!("run directory {} already holds a run", args.run_dir.display()),
            format!(
                "continue it with `{}`, or start a new one with --run-dir DIR (or --set run.name=NAME)",
                resume_command(&args.run_dir)
            ),
        )
    };
    let old_manifest = match &locked {
        Some(_) => run::read_manifest(&args.run_dir)?,
        None => None,
    };
    // A manifest without checkpoints (a crash before the first one) holds nothing to keep.
    let holds_run = !checkpoint::list(&args.run_dir)?.is_empty()
        || old_manifest.as_ref().is_some_and(|m| !m.checkpoints.is_empty() || !m.abandoned.is_empty());
    if args.resume.is_none() && holds_run {
        return Err(refuse_existing());
    }
    // `--resume` of a run stopped before its first checkpoint starts it again from step 0 (so
    // the command printed at start always works).
    let resume = match &args.resume {
        Some(Resume::Latest) if locked.is_some() && !holds_run => {
            say(&format!("no checkpoint yet in {}: starting from step 0", args.run_dir.display()));
            None
        }
        other => other.clone(),
    };
    let old_manifest = if resume.is_some() { old_manifest } else { None };
    if cfg.init.from.is_some() != args.parent.is_some() {
        return Err(Error::msg("internal: [init] is set but its parent was not loaded"));
    }
    let parent = args.parent.as_ref();
    let prepared =
        data::prepare(cfg, Path::new(&cfg.data.dir), parent.map(|p| p.tokenizer.as_slice()), &say)?;
    let tok = Tok::from_file(&prepared.tokenizer_path())?;
    let train_tokens = prepared.load_tokens("train")?;
    let val_tokens = prepared.load_tokens("val")?;
    check_split_sizes(cfg, train_tokens.len(), val_tokens.len())?;
    let tokenizer_bytes = fs::read(prepared.tokenizer_path()).at(&prepared.tokenizer_path())?;
    let loaded = match &resume {
        Some(r) => Some(load_resume(r, &args.run_dir, cfg, &prepared)?),
        None => None,
    };
    let ranks = if world > 1 { start_ranks(cfg, &prepared, link)? } else { Vec::new() };
    let mut trainer =
        Trainer::new(cfg, tok.vocab_size(), &train_tokens, loaded.as_ref(), parent)?.with_link(link, stop);
    trainer.share_state();
    let start = trainer.step;
    if let Some(l) = &loaded {
        say(&format!("resuming from {} at step {start}", l.dir.display()));
    } else if let Some(p) = parent {
        say(&format!(
            "starting from {} ({}, sha256 {}), optimizer {}{}",
            p.record.path,
            p.record.kind,
            &p.record.weights_sha256[..16],
            p.record.optimizer,
            if start > 0 { format!(", at the parent's step {start}") } else { String::new() }
        ));
    }

    // 2. The writes. A new directory is created and locked only now.
    let rd = match locked {
        Some(rd) => rd,
        None => RunDir::create(&args.run_dir)?,
    };
    if resume.is_none() && !rd.checkpoints()?.is_empty() {
        return Err(refuse_existing());
    }
    let config_bytes = cfg.to_toml().into_bytes();
    write_atomic(&rd.path.join(CONFIG_FILE), &config_bytes)?;
    let data_record = DataRecord::from_meta(&cfg.data.source, &prepared.meta);
    let mut manifest = old_manifest.unwrap_or_else(|| Manifest {
        format_version: manifest::FORMAT_VERSION,
        run_name: cfg.run.name.clone(),
        config_sha256: String::new(),
        data: data_record.clone(),
        sessions: Vec::new(),
        checkpoints: Vec::new(),
        abandoned: Vec::new(),
        parent: None,
    });
    if let Some(l) = &loaded {
        // A checkpoint from another run directory starts this one: copy it in first, so the
        // run directory alone holds its whole history.
        let here = rd.path.join(checkpoint::dir_name(start));
        if !(here.is_dir() && same_dir(&here, &l.dir)) {
            let files: Vec<(String, Vec<u8>)> = l
                .state
                .files
                .keys()
                .map(|n| fs::read(l.dir.join(n)).at(&l.dir.join(n)).map(|b| (n.clone(), b)))
                .collect::<Result<_>>()?;
            let files: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
            checkpoint::write(&rd.path, l.state.clone(), &files)?;
            say(&format!("copied the starting checkpoint {} into {}", l.dir.display(), rd.path.display()));
        }
        for line in rd.reconcile(&mut manifest, start)? {
            say(&line);
        }
    }
    manifest.config_sha256 = sha256_hex(&config_bytes);
    manifest.data = data_record;
    manifest.parent = parent.map(|p| p.record.clone());
    manifest.sessions.push(Session {
        start_step: start,
        threads: cfg.threads(),
        cpu_model: manifest::cpu_model(),
        build: manifest::build_info(),
        overrides: args.overrides.clone(),
        numerics: crate::kernels::CONTRACT_VERSION.into(),
        kernels: crate::kernels::dispatch_path().into(),
        ranks,
    });
    manifest.save(&rd.path)?;
    let mut metrics = rd.metrics(start)?;
    let state_for = |step: u64, train_loss: f64, ev: Option<EvalResult>, m: &Manifest| State {
        format_version: checkpoint::FORMAT_VERSION,
        step,
        config_sha256: sha256_hex(&config_bytes),
        train_loss,
        val_loss: ev.map(|e| e.loss),
        val_ppl: ev.map(|e| e.ppl),
        val_bpb: ev.map(|e| e.bpb),
        files: BTreeMap::new(),
        data: data_hashes(&m.data),
        numerics: crate::kernels::CONTRACT_VERSION.into(),
    };

    // 3. The loop.
    let steps = cfg.train.steps;
    let (b, t, accum) = (cfg.train.batch_size as usize, cfg.train.context as usize, cfg.train.grad_accum);
    let tokens_per_step = (b * t) as u64 * accum;
    let dims = trainer.dims;
    say(&format!(
        "model: {} parameters ({} layers, d_model {}, {} heads, vocab {}); {} tokens/step; {} train tokens; threads {}; numerics {} ({})",
        trainer.num_params(), dims.n_layer, dims.d_model, dims.n_head, dims.vocab, tokens_per_step, train_tokens.len(), cfg.threads(),
        crate::kernels::CONTRACT_VERSION, crate::kernels::dispatch_path()
    ));
    say(&format!(
        "run directory {}; if stopped, continue with: {}{}",
        rd.path.display(),
        resume_command_for(&rd.path, world),
        if world > 1 {
            format!(" ({world} ranks; any number of ranks up to train.grad_accum resumes it)")
        } else {
            String::new()
        }
    ));
    let bar = std::io::stderr().is_terminal().then(|| {
        let pb = ProgressBar::new(steps);
        pb.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb.set_position(start);
        pb
    });
    let log = |s: &str| match &bar {
        Some(pb) => pb.println(s),
        None => say(s),
    };

    let t0 = Instant::now();
    let mut last_val = None;
    let mut pacer = crate::threads::Pacer::new();
    while trainer.step < steps {
        let ts = Instant::now();
        let st = pacer.run(|| trainer.step())?;
        let done = trainer.step;
        let dt = ts.elapsed().as_secs_f64();
        let tps = tokens_per_step as f64 / dt.max(1e-9);

        let mut line = serde_json::json!({
            "step": done, "loss": st.loss, "lr": st.lr, "grad_norm": st.grad_norm,
            "tokens": done * tokens_per_step, "tokens_per_sec": tps,
            "threads": pacer.last_threads(),
        });
        if world > 1 {
            // Rank 0's wait for the others plus the exchange itself: where the ranks' speeds differ.
            line["combine_secs"] = st.combine_secs.into();
        }
        let last = done == steps;
        let mut val_ev = None;
        if last || (cfg.eval.every > 0 && done % cfg.eval.every == 0) {
            let (ev, text) = eval_and_sample(&mut trainer, &val_tokens, &tok, cfg, done)?;
            log(&format!(
                "step {done}: val loss {:.4} | ppl {:.2} | bits/byte {:.4}\n  sample: {}",
                ev.loss,
                ev.ppl,
                ev.bpb,
                text.replace('\n', "\n          ")
            ));
            line["val_loss"] = ev.loss.into();
            line["val_ppl"] = ev.ppl.into();
            line["val_bpb"] = ev.bpb.into();
            line["sample"] = text.into();
            val_ev = Some(ev);
            last_val = Some(ev);
        }
        metrics.append(&line)?;

        let elapsed = t0.elapsed().as_secs_f64();
        let eta = elapsed / (done - start) as f64 * (steps - done) as f64;
        let status = format!("loss {:.4} | lr {:.2e} | {tps:.0} tok/s", st.loss, st.lr);
        match &bar {
            Some(pb) => {
                pb.set_position(done);
                pb.set_message(status);
            }
            None if done % cfg.train.log_every == 0 || last => {
                say(&format!("step {done}/{steps} | {status} | eta {}", fmt_secs(eta)))
            }
            None => {}
        }

        // Several ranks stop together, after the step in which one of them was asked to.
        let interrupted = if world > 1 { st.stop } else { stop.load(Ordering::SeqCst) };
        let due = last || (cfg.checkpoint.every > 0 && done % cfg.checkpoint.every == 0);
        if due || interrupted {
            let state = state_for(done, st.loss, val_ev, &manifest);
            let files = trainer.files(&config_bytes, &tokenizer_bytes)?;
            let c = &cfg.checkpoint;
            let dir = rd.checkpoint(&mut manifest, state, &files, c.keep_last, c.keep_every)?;
            log(&format!("checkpoint {}", dir.display()));
            if interrupted && !last {
                if let Some(pb) = &bar {
                    pb.abandon();
                }
                return Ok(Outcome::Interrupted { step: done, checkpoint: dir });
            }
        }
    }
    if let Some(pb) = &bar {
        pb.finish();
    }
    match last_val {
        Some(val) => Ok(Outcome::Finished { step: steps, val }),
        None => Err(Error::msg("internal: no final evaluation")),
    }
}

fn fmt_secs(s: f64) -> String {
    let s = s.max(0.0) as u64;
    format!("{}m{:02}s", s / 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incompatible_lists_weight_changing_keys_only() {
        let a = Config::default();
        let mut b = a.clone();
        b.eval.every = 7;
        b.checkpoint.every = 3;
        b.run.threads = 2;
        assert!(incompatible(&a, &b).is_empty());
        b.optim.lr = 0.5;
        b.model.d_model = 64;
        let keys: Vec<String> = incompatible(&a, &b).into_iter().map(|d| d.0).collect();
        assert_eq!(keys, vec!["model.d_model", "optim.lr"]);
        // Changing train.steps changes the schedule unless schedule_steps pins it.
        let mut c = a.clone();
        c.train.steps = 5000;
        assert_eq!(incompatible(&a, &c).len(), 1);
        c.optim.schedule_steps = a.train.steps;
        assert!(incompatible(&a, &c).is_empty());
    }
}
