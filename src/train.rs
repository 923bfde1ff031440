//! The training loop: data, model, then per step: lr, batch, forward, loss, backward, clip,
//! update, log; every `eval.every` steps evaluate; every `checkpoint.every` steps checkpoint.

use crate::checkpoint::{self, State, CONFIG_FILE, MODEL_FILE, OPTIM_FILE, TOKENIZER_FILE};
use crate::config::{is_result_neutral, Config};
use crate::data::{self, Prepared};
use crate::error::{Error, IoContext, Result};
use crate::manifest::{self, CheckpointRecord, DataRecord, Manifest, Session};
use crate::model::{self, Dims, Llama};
use crate::optim::{self, AdamW};
use crate::rng;
use crate::sample;
use crate::tokenizer::Tok;
use crate::util::{sha256_hex, write_atomic};
use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

pub const METRICS_FILE: &str = "metrics.jsonl";

pub enum Resume {
    Latest,
    From(PathBuf),
}

pub struct TrainArgs {
    pub cfg: Config,
    pub overrides: Vec<String>,
    pub run_dir: PathBuf,
    pub resume: Option<Resume>,
    /// Extra steps to checkpoint at (verify uses it to reproduce every recorded checkpoint).
    pub extra_checkpoints: BTreeSet<u64>,
    /// Print progress and samples (off for verify's scratch runs).
    pub verbose: bool,
    /// Where derived data goes instead of `data.dir` (verify rebuilds it in scratch).
    pub data_dir: Option<PathBuf>,
}

pub enum Outcome {
    Finished { step: u64, val: EvalResult },
    Interrupted { step: u64, checkpoint: PathBuf },
}

#[derive(Debug, Clone, Copy)]
pub struct EvalResult {
    pub loss: f64,
    pub ppl: f64,
    pub bpb: f64,
}

/// Mean loss, perplexity and bits per byte over the fixed validation windows.
pub fn evaluate(model: &Llama, val: &[u16], tok: &Tok, cfg: &Config) -> Result<EvalResult> {
    let (b, t) = (cfg.train.batch_size as usize, cfg.train.context as usize);
    let offsets = data::eval_offsets(val.len(), b * cfg.eval.batches as usize, t);
    let (mut nats, mut tokens, mut bytes) = (0f64, 0u64, 0u64);
    for chunk in offsets.chunks(b) {
        let (x, y) = make_batch(val, chunk, t)?;
        let logits = model.forward(&x)?.flatten_to(1)?; // (B*T, V)
        let losses = model::token_losses(&logits, &y)?;
        nats += losses.iter().map(|&l| l as f64).sum::<f64>();
        tokens += losses.len() as u64;
        bytes += y.to_vec1::<u32>()?.iter().map(|&id| tok.byte_len(id) as u64).sum::<u64>();
    }
    let loss = nats / tokens as f64;
    Ok(EvalResult { loss, ppl: libm::exp(loss), bpb: nats / std::f64::consts::LN_2 / bytes.max(1) as f64 })
}

/// Inputs (B, T) and flattened targets (B*T) for windows starting at `offsets`.
fn make_batch(tokens: &[u16], offsets: &[usize], t: usize) -> Result<(Tensor, Tensor)> {
    let mut x = Vec::with_capacity(offsets.len() * t);
    let mut y = Vec::with_capacity(offsets.len() * t);
    for &o in offsets {
        x.extend(tokens[o..o + t].iter().map(|&v| v as u32));
        y.extend(tokens[o + 1..o + t + 1].iter().map(|&v| v as u32));
    }
    Ok((
        Tensor::from_vec(x, (offsets.len(), t), &Device::Cpu)?,
        Tensor::from_vec(y, offsets.len() * t, &Device::Cpu)?,
    ))
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

struct Run<'a> {
    cfg: &'a Config,
    dir: &'a Path,
    config_bytes: Vec<u8>,
    tokenizer_bytes: Vec<u8>,
    manifest: Manifest,
}

impl Run<'_> {
    fn checkpoint(
        &mut self,
        step: u64,
        model: &Llama,
        opt: &AdamW,
        train_loss: f64,
        val_loss: Option<f64>,
        keep: bool,
    ) -> Result<PathBuf> {
        let state = State {
            format_version: checkpoint::FORMAT_VERSION,
            step,
            config_sha256: sha256_hex(&self.config_bytes),
            train_loss,
            val_loss,
            files: BTreeMap::new(),
            data: data_hashes(&self.manifest.data),
        };
        let files = [
            (MODEL_FILE, checkpoint::to_safetensors(&model.tensors())?),
            (OPTIM_FILE, checkpoint::to_safetensors(&opt.state()?)?),
            (CONFIG_FILE, self.config_bytes.clone()),
            (TOKENIZER_FILE, self.tokenizer_bytes.clone()),
        ];
        let (dir, files) = checkpoint::write(self.dir, state, &files)?;
        self.manifest.record(CheckpointRecord {
            step,
            dir: checkpoint::dir_name(step),
            files,
            train_loss,
            val_loss,
            present: true,
        });
        if !keep {
            self.retain()?;
        }
        self.manifest.save(self.dir)?;
        Ok(dir)
    }

    /// Apply the retention policy; a directory is renamed away before it is removed so a crash
    /// mid-delete never leaves a partial `step-*` directory.
    fn retain(&mut self) -> Result<()> {
        let steps: Vec<u64> = checkpoint::list(self.dir)?.into_iter().map(|(s, _)| s).collect();
        let c = &self.cfg.checkpoint;
        for step in checkpoint::to_delete(&steps, c.keep_last, c.keep_every) {
            let d = self.dir.join(checkpoint::dir_name(step));
            let gone = self.dir.join(format!(".del-{}-{}", checkpoint::dir_name(step), std::process::id()));
            fs::rename(&d, &gone).at(&d)?;
            fs::remove_dir_all(&gone).at(&gone)?;
            for r in self.manifest.checkpoints.iter_mut().filter(|r| r.step == step) {
                r.present = false;
            }
        }
        Ok(())
    }
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

fn create_run_dir(dir: &Path) -> Result<()> {
    let unwritable = |e: std::io::Error| {
        Error::hint(
            format!("cannot write run directory {}: {e}", dir.display()),
            "choose a writable location with --run-dir DIR",
        )
    };
    fs::create_dir_all(dir).map_err(unwritable)?;
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    fs::write(&probe, b"").map_err(unwritable)?;
    let _ = fs::remove_file(&probe);
    Ok(())
}

/// Find and check the checkpoint to resume from.
fn load_resume(r: &Resume, run_dir: &Path, cfg: &Config, prepared: &Prepared) -> Result<checkpoint::Loaded> {
    let dir = match r {
        Resume::From(p) => p.clone(),
        Resume::Latest => match checkpoint::list(run_dir)?.pop() {
            Some((_, d)) => d,
            None => {
                return Err(Error::hint(
                    format!("no complete checkpoint in {} to resume from", run_dir.display()),
                    "start without --resume, or pass --resume PATH to a step-NNNNNNNN directory",
                ))
            }
        },
    };
    let loaded = checkpoint::load(&dir)?;
    // The manifest's record of this checkpoint must match the files (tampering or a mix-up).
    if let Ok(m) = Manifest::load(run_dir) {
        if let Some(rec) =
            m.checkpoints.iter().find(|c| c.step == loaded.state.step && run_dir.join(&c.dir) == dir)
        {
            // checkpoint::load has checked the files against state.json; state.json itself
            // is hashed here.
            for (name, want) in &rec.files {
                let got = match loaded.state.files.get(name) {
                    Some(h) => h.clone(),
                    None => crate::util::sha256_file(&dir.join(name))?,
                };
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
    let old = Config::from_source(&loaded.config_toml, &dir.join(CONFIG_FILE), &[])?;
    let mut diffs: Vec<String> = incompatible(&old, cfg)
        .into_iter()
        .map(|(k, a, b)| format!("  {k}: checkpoint has {a}, now {b}"))
        .collect();
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
            "resume with the config the run was started with (the checkpoint's config.toml), or start a new run with --run-dir",
        ));
    }
    if loaded.state.step >= cfg.train.steps {
        return Err(Error::hint(
            format!("checkpoint {} is at step {}, and train.steps is {}: nothing to do", dir.display(), loaded.state.step, cfg.train.steps),
            format!("to train further, raise train.steps and keep the schedule: --set train.steps=N --set optim.schedule_steps={}", old.schedule_steps()),
        ));
    }
    Ok(loaded)
}

/// Keep the metrics of steps up to `step` (a resume rewrites what follows).
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    write_atomic(path, kept.as_bytes())
}

/// Forward and backward over `grad_accum` micro-batches of step `step`; returns the mean loss
/// and the gradients summed by parameter name.
fn forward_backward(
    model: &Llama,
    tokens: &[u16],
    cfg: &Config,
    step: u64,
) -> Result<(f64, BTreeMap<String, Tensor>)> {
    let (b, t, accum) = (cfg.train.batch_size as usize, cfg.train.context as usize, cfg.train.grad_accum);
    let mut grads: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut loss_sum = 0f64;
    for micro in 0..accum {
        let offsets = data::batch_offsets(cfg.run.seed, step, micro, tokens.len(), b, t);
        let (x, y) = make_batch(tokens, &offsets, t)?; // (B, T), (B*T)
        let logits = model.forward(&x)?.flatten_to(1)?; // (B*T, V)
        let loss = model::cross_entropy(&logits, &y)?;
        loss_sum += loss.to_scalar::<f32>()? as f64;
        let store = (loss / accum as f64)?.backward()?;
        for (name, var) in &model.params {
            let g = store
                .get(var.as_tensor())
                .ok_or_else(|| Error::msg(format!("internal: no gradient for {name}")))?;
            let acc = match grads.remove(name) {
                Some(prev) => (prev + g)?,
                None => g.clone(),
            };
            grads.insert(name.clone(), acc);
        }
    }
    Ok((loss_sum / accum as f64, grads))
}

/// Evaluate, then sample from `eval.prompt` with a stream keyed by step (its own purpose, so
/// sampling never touches the training streams).
fn eval_and_sample(
    model: &Llama,
    val: &[u16],
    tok: &Tok,
    cfg: &Config,
    step: u64,
) -> Result<(EvalResult, String)> {
    let ev = evaluate(model, val, tok, cfg)?;
    let mut r = rng::stream(cfg.run.seed, "eval-sample", &step.to_string());
    let e = &cfg.eval;
    let d = sample::Decode {
        tokens: e.sample_tokens as usize,
        temperature: e.temperature,
        top_k: e.top_k as usize,
        ctx: cfg.train.context as usize,
    };
    let text = sample::generate(model, tok, &e.prompt, &d, &mut r)?;
    Ok((ev, text))
}

pub fn train(args: TrainArgs, stop: &AtomicBool) -> Result<Outcome> {
    let cfg = &args.cfg;
    let say = |s: &str| {
        if args.verbose {
            eprintln!("{s}");
        }
    };
    create_run_dir(&args.run_dir)?;
    checkpoint::recover(&args.run_dir)?;
    if args.resume.is_none() && !checkpoint::list(&args.run_dir)?.is_empty() {
        return Err(Error::hint(
            format!("run directory {} already holds checkpoints", args.run_dir.display()),
            "pass --resume to continue that run, or --run-dir DIR (or --set run.name=NAME) to start a new one",
        ));
    }
    let data_dir = args.data_dir.clone().unwrap_or_else(|| PathBuf::from(&cfg.data.dir));
    let prepared = data::prepare(cfg, &data_dir, &say)?;
    let tok = Tok::from_file(&prepared.tokenizer_path())?;
    let train_tokens = prepared.load_tokens("train")?;
    let val_tokens = prepared.load_tokens("val")?;
    let (b, t, accum) = (cfg.train.batch_size as usize, cfg.train.context as usize, cfg.train.grad_accum);
    for (split, n) in [("train", train_tokens.len()), ("val", val_tokens.len())] {
        if n < t + 2 {
            return Err(Error::hint(
                format!("the {split} split has {n} tokens, fewer than train.context + 2 = {}", t + 2),
                "use a larger corpus or a smaller train.context",
            ));
        }
    }

    // The resolved config goes into the run directory before step 0.
    let config_bytes = cfg.to_toml().into_bytes();
    write_atomic(&args.run_dir.join(CONFIG_FILE), &config_bytes)?;
    let tokenizer_bytes = fs::read(prepared.tokenizer_path()).at(&prepared.tokenizer_path())?;

    let dims = Dims::new(&cfg.model, tok.vocab_size());
    let (model, mut opt, start) = match &args.resume {
        Some(r) => {
            let loaded = load_resume(r, &args.run_dir, cfg, &prepared)?;
            let origin = loaded.dir.display().to_string();
            let model = Llama::from_tensors(dims, &loaded.model, &origin)?;
            let opt = AdamW::from_state(&model.params, &loaded.optim, &origin)?;
            if opt.step != loaded.state.step {
                return Err(Error::msg(format!(
                    "{origin}: optimizer step {} != checkpoint step {}",
                    opt.step, loaded.state.step
                )));
            }
            say(&format!("resuming from {origin} at step {}", loaded.state.step));
            (model, opt, loaded.state.step)
        }
        None => {
            let model = Llama::init(dims, cfg.run.seed)?;
            let opt = AdamW::new(&model.params)?;
            (model, opt, 0)
        }
    };

    let data_record = DataRecord::from_meta(&cfg.data.source, &prepared.meta);
    let mut manifest = match (&args.resume, Manifest::load(&args.run_dir)) {
        (Some(_), Ok(m)) => m,
        _ => Manifest {
            format_version: manifest::FORMAT_VERSION,
            run_name: cfg.run.name.clone(),
            config_sha256: String::new(),
            data: data_record.clone(),
            sessions: Vec::new(),
            checkpoints: Vec::new(),
        },
    };
    manifest.config_sha256 = sha256_hex(&config_bytes);
    manifest.data = data_record;
    manifest.checkpoints.retain(|c| c.step <= start);
    manifest.sessions.push(Session {
        start_step: start,
        threads: cfg.threads(),
        cpu_model: manifest::cpu_model(),
        build: manifest::build_info(),
        overrides: args.overrides.clone(),
    });
    manifest.save(&args.run_dir)?;
    let mut run = Run { cfg, dir: &args.run_dir, config_bytes, tokenizer_bytes, manifest };

    let metrics_path = args.run_dir.join(METRICS_FILE);
    if start == 0 {
        write_atomic(&metrics_path, b"")?;
    } else {
        truncate_metrics(&metrics_path, start)?;
    }
    let mut metrics =
        fs::OpenOptions::new().append(true).create(true).open(&metrics_path).at(&metrics_path)?;

    let steps = cfg.train.steps;
    let total = cfg.schedule_steps();
    let tokens_per_step = (b * t) as u64 * accum;
    say(&format!(
        "model: {} parameters ({} layers, d_model {}, {} heads, vocab {}); {} tokens/step; {} train tokens; threads {}",
        model.num_params(), dims.n_layer, dims.d_model, dims.n_head, dims.vocab, tokens_per_step, train_tokens.len(), cfg.threads()
    ));
    let bar = (args.verbose && std::io::stderr().is_terminal()).then(|| {
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
    for step in start..steps {
        let ts = Instant::now();
        let lr = optim::lr_at(step, &cfg.optim, total);
        let (train_loss, mut grads) = forward_backward(&model, &train_tokens, cfg, step)?;
        if !train_loss.is_finite() {
            return Err(Error::hint(
                format!("training diverged at step {step}: loss is {train_loss}"),
                "lower optim.lr or raise optim.warmup_steps, then resume from the last checkpoint",
            ));
        }
        let norm = optim::clip(&mut grads, cfg.optim.grad_clip)?;
        opt.update(&model.params, &grads, lr, &cfg.optim)?;
        let done = step + 1;
        let dt = ts.elapsed().as_secs_f64();
        let tps = tokens_per_step as f64 / dt.max(1e-9);

        let mut line = serde_json::json!({
            "step": done, "loss": train_loss, "lr": lr, "grad_norm": norm, "tokens_per_sec": tps,
        });
        let last = done == steps;
        let mut val_loss = None;
        if last || (cfg.eval.every > 0 && done % cfg.eval.every == 0) {
            let (ev, text) = eval_and_sample(&model, &val_tokens, &tok, cfg, done)?;
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
            val_loss = Some(ev.loss);
            last_val = Some(ev);
        }
        writeln!(metrics, "{line}").at(&metrics_path)?;

        let elapsed = t0.elapsed().as_secs_f64();
        let eta = elapsed / (done - start) as f64 * (steps - done) as f64;
        let status = format!("loss {train_loss:.4} | lr {lr:.2e} | {tps:.0} tok/s");
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

        let interrupted = stop.load(Ordering::SeqCst);
        let due = last
            || (cfg.checkpoint.every > 0 && done % cfg.checkpoint.every == 0)
            || args.extra_checkpoints.contains(&done);
        if due || interrupted {
            let dir =
                run.checkpoint(done, &model, &opt, train_loss, val_loss, !args.extra_checkpoints.is_empty())?;
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
