//! The `tinylm` binary: parse arguments, call the library, print errors, return exit codes.
//! Exit codes: 0 success; 1 verify found a mismatch; 2 error; 130 interrupted (checkpointed).

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tinylm::config::Config;
use tinylm::train::{Outcome, Resume, TrainArgs};
use tinylm::{sample, threads, verify, Result};

#[derive(Parser)]
#[command(
    name = "tinylm",
    version,
    about = "Train a small language model from raw text to weights, reproducibly, bit for bit.",
    after_help = "Examples:
  tinylm train --config configs/tiny.toml              train; writes checkpoints/tiny/
  tinylm train --config configs/tiny.toml --resume     continue after a stop
  tinylm sample --checkpoint checkpoints/tiny --prompt \"Once upon a time\" --seed 1
  tinylm verify checkpoints/tiny                       retrain and compare every recorded hash

Exit codes: 0 ok, 1 verify mismatch, 2 error, 130 interrupted (a checkpoint was written)."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train a model as the config says, writing checkpoints, metrics and a manifest into the
    /// run directory.
    Train {
        /// The run's TOML config, e.g. configs/tiny.toml.
        #[arg(long)]
        config: PathBuf,
        /// Run directory (default: checkpoints/<run.name>).
        #[arg(long)]
        run_dir: Option<PathBuf>,
        /// Override a config value: --set train.steps=100 (repeatable; typed and checked).
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        set: Vec<String>,
        /// Continue from the newest complete checkpoint in the run directory, or from PATH.
        #[arg(long, value_name = "PATH", num_args = 0..=1, default_missing_value = "")]
        resume: Option<String>,
    },
    /// Only the data and tokenizer steps: corpus, split, tokenizer.json, token files.
    Prepare {
        #[arg(long)]
        config: PathBuf,
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        set: Vec<String>,
    },
    /// Generate text from a checkpoint (or a run directory's newest checkpoint).
    Sample {
        #[arg(long)]
        checkpoint: PathBuf,
        #[arg(long, default_value = "")]
        prompt: String,
        /// Tokens to generate (stops early at <|endoftext|>).
        #[arg(long, default_value_t = 100)]
        tokens: usize,
        /// 0 is greedy.
        #[arg(long, default_value_t = 0.8)]
        temperature: f64,
        /// Sample from the k most likely tokens; 0 means all.
        #[arg(long, default_value_t = 40)]
        top_k: usize,
        /// Same seed, same text.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Prove a run reproduces: check files against the manifest, then retrain and compare
    /// every recorded hash. Exit 0 if all match, 1 on a mismatch, 2 on an error.
    Verify {
        run_dir: PathBuf,
        /// Re-execute from this recorded checkpoint instead of from scratch.
        #[arg(long, value_name = "STEP")]
        from: Option<u64>,
        /// Only check the files on disk against the manifest (no retraining).
        #[arg(long)]
        files_only: bool,
        /// Scratch directory for the re-execution (default: a temp directory).
        #[arg(long)]
        scratch: Option<PathBuf>,
        /// Keep the scratch directory afterwards.
        #[arg(long)]
        keep_scratch: bool,
        /// Threads for the re-execution (default: the run's run.threads). Never changes results.
        #[arg(long)]
        threads: Option<usize>,
    },
}

fn main() -> ExitCode {
    tinylm::alloc::tune();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// SIGINT/SIGTERM set a flag the training loop checks after each step; a second signal exits
/// at once (the last complete checkpoint stays usable).
fn stop_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&flag));
        let _ = signal_hook::flag::register(sig, Arc::clone(&flag));
    }
    flag
}

fn run(cli: Cli) -> Result<ExitCode> {
    tinylm::kernels::configure()?; // a bad TINYLM_KERNELS fails here, before any work
    match cli.cmd {
        Cmd::Train { config, run_dir, set, resume } => {
            let cfg = Config::load(&config, &set)?;
            threads::configure(cfg.threads());
            let run_dir = run_dir.unwrap_or_else(|| cfg.default_run_dir());
            let resume =
                resume.map(|p| if p.is_empty() { Resume::Latest } else { Resume::From(PathBuf::from(p)) });
            let stop = stop_flag();
            let args = TrainArgs {
                cfg,
                overrides: set,
                run_dir: run_dir.clone(),
                resume,
                extra_checkpoints: Default::default(),
                verbose: true,
                data_dir: None,
            };
            match tinylm::train::train(args, &stop)? {
                Outcome::Finished { step, val } => {
                    eprintln!(
                        "done: {step} steps; val loss {:.4}, perplexity {:.2}, {:.4} bits/byte; run in {}",
                        val.loss,
                        val.ppl,
                        val.bpb,
                        run_dir.display()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Outcome::Interrupted { step, checkpoint } => {
                    eprintln!(
                        "interrupted after step {step}; checkpoint {} written.\nresume with: tinylm train --config {} --run-dir {} --resume",
                        checkpoint.display(),
                        config.display(),
                        run_dir.display()
                    );
                    Ok(ExitCode::from(130))
                }
            }
        }
        Cmd::Prepare { config, set } => {
            let cfg = Config::load(&config, &set)?;
            threads::configure(cfg.threads());
            let say = |s: &str| eprintln!("{s}");
            let p = tinylm::data::prepare(&cfg, std::path::Path::new(&cfg.data.dir), &say)?;
            let m = &p.meta;
            println!("prepared {}", p.dir.display());
            println!("corpus    sha256 {} ({} bytes)", m.corpus_sha256, m.corpus_bytes);
            println!("tokenizer sha256 {}", m.tokenizer_sha256);
            println!("train     sha256 {} ({} tokens)", m.train.sha256, m.train.tokens);
            println!("val       sha256 {} ({} tokens)", m.val.sha256, m.val.tokens);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Sample { checkpoint, prompt, tokens, temperature, top_k, seed } => {
            threads::configure(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
            let text =
                sample::run(&sample::SampleArgs { checkpoint, prompt, tokens, temperature, top_k, seed })?;
            println!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Verify { run_dir, from, files_only, scratch, keep_scratch, threads: n } => {
            let cfg_path = run_dir.join(tinylm::checkpoint::CONFIG_FILE);
            let n = match n {
                Some(n) => n,
                None => Config::load(&cfg_path, &[]).map(|c| c.threads()).unwrap_or(1),
            };
            threads::configure(n);
            let stop = stop_flag();
            let report = verify::verify(
                &verify::VerifyArgs { run_dir, from, files_only, scratch, keep_scratch },
                &stop,
            )?;
            print!("{}", report.table());
            if report.ok() {
                println!("verified: every recorded hash matches");
                Ok(ExitCode::SUCCESS)
            } else {
                let bad: Vec<&str> = report
                    .rows
                    .iter()
                    .filter(|r| r.recorded != r.recomputed)
                    .map(|r| r.artifact.as_str())
                    .collect();
                println!("MISMATCH: {}", bad.join(", "));
                Ok(ExitCode::from(1))
            }
        }
    }
}
