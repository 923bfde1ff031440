//! The `tinylm` binary: parse arguments, call the library, print errors, return exit codes.
//! Exit codes: 0 success; 1 verify found a mismatch; 2 error; 130 interrupted (checkpointed).

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tinylm::config::Config;
use tinylm::train::{Outcome, Resume, TrainArgs};
use tinylm::{sample, threads, verify, Error, Result};

#[derive(Parser)]
#[command(
    name = "tinylm",
    version,
    about = "Train a small language model from raw text to weights, reproducibly, bit for bit.",
    after_help = "Examples:
  tinylm train --config configs/tiny.toml              train; writes checkpoints/tiny/
  tinylm train --resume checkpoints/tiny               continue a run after a stop
  tinylm sample --checkpoint checkpoints/tiny --prompt \"Once upon a time\" --seed 1
  tinylm verify checkpoints/tiny                       retrain and compare every recorded hash
  tinylm release checkpoints/tiny release/tiny         publish: HF layout, cards, licences, MOF record
  tinylm audit release/tiny                            check hashes, licences and the MOF class
  tinylm eval --checkpoint release/tiny --text my.txt  loss, perplexity, bits/byte on any text
  tinylm export checkpoints/tiny --gguf tiny.gguf      a GGUF file for llama.cpp
  tinylm prepare --config configs/files.toml           your own folder of txt/jsonl/parquet (prints its pin)
  mpirun -np 4 tinylm train --config FILE              several ranks, same bits (a build with --features mpi)
  mpirun -np 4 tinylm verify checkpoints/tiny          the run's segments shared among the ranks

Exit codes: 0 ok, 1 verify mismatch or audit failed, 2 error, 130 interrupted (a checkpoint was written)."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train a model as the config says, writing checkpoints, metrics and a manifest into the
    /// run directory. `--resume RUN_DIR` alone continues a run with its own recorded config.
    Train {
        /// The run's TOML config, e.g. configs/tiny.toml. Optional with --resume: the run
        /// directory's config.toml (the resolved config, overrides included) is used.
        #[arg(long, required_unless_present = "resume")]
        config: Option<PathBuf>,
        /// Run directory (default: the one --resume names, else checkpoints/<run.name>).
        #[arg(long)]
        run_dir: Option<PathBuf>,
        /// Override a config value: --set train.steps=100 (repeatable; typed and checked).
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        set: Vec<String>,
        /// Continue a run: from the newest complete checkpoint of the run directory, or from
        /// PATH (a run directory, or one of its step-NNNNNNNN checkpoints).
        #[arg(long, value_name = "PATH", num_args = 0..=1, default_missing_value = "")]
        resume: Option<String>,
        /// Check the config and print the plan (parameters, memory estimate, run directory);
        /// write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Only the data and tokenizer steps: corpus, split, tokenizer.json, token files. For a
    /// files source without data.sha256, prints the value that pins its files (exit 2).
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
        #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
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
        /// Stop at this recorded checkpoint: with --from, one segment of the run, so a long
        /// run can be checked in pieces (by several people, or machines).
        #[arg(long, value_name = "STEP")]
        to: Option<u64>,
        /// Only check the files on disk against the manifest (no retraining).
        #[arg(long)]
        files_only: bool,
        /// Where to rebuild the data for the re-execution: a new or empty directory (default: a
        /// new temp directory). Verify removes only what it creates there.
        #[arg(long)]
        scratch: Option<PathBuf>,
        /// Keep the scratch directory afterwards.
        #[arg(long)]
        keep_scratch: bool,
        /// Threads for the re-execution (default: the run's run.threads; 0 = all cores). Never
        /// changes results.
        #[arg(long)]
        threads: Option<usize>,
        /// The corpus file, when the run's own is not at hand (a release that does not ship
        /// it); for a files source, the directory its data.paths are relative to. It must
        /// match the run's pin (data.sha256).
        #[arg(long, value_name = "PATH")]
        corpus: Option<PathBuf>,
        /// Allow fetching a `url` corpus that is not here, into the scratch directory only.
        /// Without it verify never touches the network.
        #[arg(long)]
        allow_download: bool,
        /// The parent model of a fine-tune (a checkpoint, run, release or Hugging Face
        /// folder), when neither the release's parent/ nor the run's init.from holds it. It
        /// must be the one the manifest records.
        #[arg(long, value_name = "DIR")]
        parent: Option<PathBuf>,
    },
    /// Publish a finished run as a self-contained release: HF model layout, model card, data
    /// card, technical report, every checkpoint, data, source, licences, mof.yml, SHA256SUMS.
    Release {
        run_dir: PathBuf,
        /// Must not exist, or be empty.
        out_dir: PathBuf,
        /// Licence of the code (SPDX expression).
        #[arg(long, default_value = tinylm::release::CODE_LICENSE)]
        code_license: String,
        /// Licence of the corpus. Default: CC0-1.0 for the built-in corpus; a file or URL
        /// corpus without it is left out of the release ("unlicensed").
        #[arg(long)]
        data_license: Option<String>,
        /// Licence of the weights (final and intermediate) and model metadata.
        #[arg(long, default_value = "Apache-2.0")]
        weights_license: String,
        /// Licence of the cards and report.
        #[arg(long, default_value = "CC-BY-4.0")]
        doc_license: String,
        /// Publish a run trained by a build with uncommitted changes (marked in the card).
        #[arg(long)]
        allow_dirty: bool,
        /// Leave out source/ (the code components are then missing).
        #[arg(long)]
        no_source: bool,
        /// Git repository holding the run's commit (default: this directory's, else the one
        /// tinylm was built from).
        #[arg(long)]
        repo: Option<PathBuf>,
        /// The corpus file of a file/URL source (default: data.path from the run's config); for
        /// a files source, the directory its data.paths are relative to (default: here).
        #[arg(long)]
        corpus: Option<PathBuf>,
        /// Release date, YYYY-MM-DD (default: today, UTC): the only date in the release.
        #[arg(long)]
        date: Option<String>,
        /// Contact for mof.yml and the cards.
        #[arg(long, default_value = "")]
        contact: String,
        /// Release a run that stopped before train.steps (it is marked as partial in the
        /// cards and release.json).
        #[arg(long)]
        allow_partial: bool,
        /// A fine-tune's parent (checkpoint, run, release or Hugging Face folder), when the run's
        /// init.from no longer holds it; it must be the one the manifest records.
        #[arg(long, value_name = "DIR")]
        parent: Option<PathBuf>,
    },
    /// Check a model directory (a tinylm release or any HF model folder): hashes, weights vs
    /// config.json, licences, mof.yml, data replay; print the MOF class met.
    /// Exit 0 when the claimed class is met and every hash matches, 1 when not, 2 on error.
    Audit {
        dir: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        /// The class that must be met (1, 2 or 3); default: the class mof.yml's components claim.
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=3))]
        require: Option<u8>,
        /// Do not re-prepare a release's data to check its token hashes (reported as skipped).
        #[arg(long)]
        skip_data_replay: bool,
        /// Pass a folder that has no SHA256SUMS (its files are then not checked against a
        /// published list); without it a missing SHA256SUMS fails the audit.
        #[arg(long)]
        no_sums: bool,
        /// The release of a fine-tune's parent: audited too, and the fine-tune is rated no
        /// higher than it (without it a tinylm parent caps the class at II, a Hugging Face
        /// parent at III).
        #[arg(long, value_name = "DIR")]
        parent: Option<PathBuf>,
    },
    /// Loss, perplexity and bits per byte of a model on any text, in non-overlapping windows
    /// of its context (each token but a window's first predicted from those before it, as
    /// transformers computes it).
    Eval {
        /// A tinylm checkpoint or run directory (its newest checkpoint), a release, or a
        /// Hugging Face Llama folder (config.json, model.safetensors, tokenizer.json).
        #[arg(long, value_name = "MODEL")]
        checkpoint: PathBuf,
        /// A UTF-8 text file (repeatable); each is tokenized with the model's tokenizer.
        #[arg(long, value_name = "FILE", required = true)]
        text: Vec<PathBuf>,
        /// Window length in tokens (default: the model's context; at most that).
        #[arg(long, value_name = "T")]
        context: Option<usize>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a model as a GGUF file that llama.cpp loads and runs (f32; --f16 halves it).
    Export {
        /// A tinylm checkpoint or run directory, a release, or a Hugging Face Llama folder.
        model: PathBuf,
        /// The GGUF file to write (replaced atomically if it exists).
        #[arg(long, value_name = "OUT.gguf")]
        gguf: PathBuf,
        /// Store the matrices as f16 (norms stay f32); the default f32 is exact.
        #[arg(long)]
        f16: bool,
    },
    /// Print the exact token windows training step N saw (JSON lines), from a release or run.
    Batches {
        path: PathBuf,
        /// 1-based step, as in metrics.jsonl.
        #[arg(long)]
        step: u64,
        /// Keep the rebuilt token files here (default: a temp directory).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The corpus file, when the run's own is not at hand (for a files source, the
        /// directory its data.paths are relative to); it must match data.sha256.
        #[arg(long, value_name = "PATH")]
        corpus: Option<PathBuf>,
        /// Allow fetching a `url` corpus that is not here, into the data directory only.
        #[arg(long)]
        allow_download: bool,
    },
}

fn main() -> ExitCode {
    tinylm::alloc::tune();
    let cli = Cli::parse();
    // MPI starts here (a build with `--features mpi`) and ends when `link` drops.
    let link = match tinylm::dist::init() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if link.size() > 1 {
        tinylm::config::RANKS_ON_HOST
            .store(tinylm::dist::ranks_on_host(), std::sync::atomic::Ordering::Relaxed);
    }
    match run(cli, &*link) {
        Ok(code) => code,
        Err(e) if link.size() > 1 => {
            // Every rank's errors name it; the job ends at once instead of leaving peers
            // waiting on this rank.
            eprintln!("error: rank {}: {e}", link.rank());
            link.abort(2)
        }
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

fn run(cli: Cli, link: &dyn tinylm::dist::Link) -> Result<ExitCode> {
    tinylm::kernels::configure()?; // a bad TINYLM_KERNELS fails here, before any work
    if link.size() > 1 && !matches!(cli.cmd, Cmd::Train { .. } | Cmd::Verify { .. }) {
        return Err(Error::hint(
            format!(
                "only `tinylm train` and `tinylm verify` run as several ranks (this is rank {} of {})",
                link.rank(),
                link.size()
            ),
            "run the other commands without mpirun",
        ));
    }
    match cli.cmd {
        Cmd::Train { config, run_dir, set, resume, dry_run } => {
            if link.rank() == 0 {
                tinylm::progress::enable();
            }
            let resume =
                resume.map(|p| if p.is_empty() { Resume::Latest } else { Resume::From(PathBuf::from(p)) });
            // The run a --resume PATH names: the directory itself, or the one holding a checkpoint.
            let named_run = match &resume {
                Some(Resume::From(p)) if p.join(tinylm::checkpoint::STATE_FILE).is_file() => {
                    p.parent().map(PathBuf::from)
                }
                Some(Resume::From(p)) => Some(p.clone()),
                _ => None,
            };
            let (cfg, parent, run_dir, cfg_path) = match config {
                Some(config) => {
                    let mut cfg = Config::load(&config, &set)?;
                    let run_dir = run_dir.or(named_run.clone()).unwrap_or_else(|| cfg.default_run_dir());
                    let parent = match &named_run {
                        Some(n) if resume.is_some() => {
                            tinylm::init::attach_resume(&mut cfg, &config, &set, &[&run_dir, n])?
                        }
                        None if resume.is_some() => {
                            tinylm::init::attach_resume(&mut cfg, &config, &set, &[&run_dir])?
                        }
                        _ => tinylm::init::attach(&mut cfg, &config, &set)?,
                    };
                    (cfg, parent, run_dir, config)
                }
                None => {
                    let run_dir = run_dir.or_else(|| named_run.clone()).ok_or_else(|| {
                        Error::hint(
                            "--resume without --config needs the run directory",
                            "pass it: tinylm train --resume RUN_DIR (e.g. checkpoints/tiny)",
                        )
                    })?;
                    // `--resume OTHER[/step-N] --run-dir NEW`: a new run directory has no
                    // config yet, so what --resume names gives it: the checkpoint's own
                    // config.toml (hash-checked against its state.json when loaded), or the
                    // run directory's.
                    let from = match &resume {
                        Some(Resume::From(p)) if !run_dir.join(tinylm::checkpoint::CONFIG_FILE).is_file() => {
                            p.clone()
                        }
                        _ => run_dir.clone(),
                    };
                    let path = from.join(tinylm::checkpoint::CONFIG_FILE);
                    if from != run_dir {
                        foreign_data_paths(&path, &set)?;
                    }
                    let mut cfg = run_config(&from, &set)?;
                    let parent = {
                        let mut runs = vec![run_dir.as_path(), from.as_path()];
                        runs.extend(named_run.as_deref());
                        tinylm::init::attach_resume(&mut cfg, &path, &set, &runs)?
                    };
                    (cfg, parent, run_dir, path)
                }
            };
            cfg.check_memory(&cfg_path)?;
            if dry_run {
                print!("{}", plan(&cfg, &run_dir, resume.is_some()));
                return Ok(ExitCode::SUCCESS);
            }
            threads::configure(cfg.threads());
            let stop = stop_flag();
            let args = TrainArgs { cfg, overrides: set, run_dir: run_dir.clone(), resume, parent };
            match tinylm::train::train(args, &stop, link)? {
                Outcome::Follower { interrupted: true } => Ok(ExitCode::from(130)),
                Outcome::Follower { interrupted: false } => Ok(ExitCode::SUCCESS),
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
                        "interrupted after step {step}; checkpoint {} written.\nresume with: {}",
                        checkpoint.display(),
                        tinylm::train::resume_command_for(&run_dir, link.size())
                    );
                    Ok(ExitCode::from(130))
                }
            }
        }
        Cmd::Prepare { config, set } => {
            let (cfg, parent) = tinylm::init::load_config(&config, &set)?;
            cfg.check_memory(&config)?;
            threads::configure(cfg.threads());
            let say = |s: &str| eprintln!("{s}");
            tinylm::progress::enable();
            let tokenizer = parent.as_ref().map(|p| p.tokenizer.as_slice());
            let p = tinylm::data::prepare(&cfg, std::path::Path::new(&cfg.data.dir), tokenizer, &say)?;
            let m = &p.meta;
            println!("prepared {}", p.dir.display());
            println!("corpus    sha256 {} ({} bytes)", m.corpus_sha256, m.corpus_bytes);
            println!("tokenizer sha256 {}", m.tokenizer_sha256);
            println!("train     sha256 {} ({} tokens)", m.train.sha256, m.train.tokens);
            println!("val       sha256 {} ({} tokens)", m.val.sha256, m.val.tokens);
            println!("token ids {}", m.dtype);
            if !m.files.is_empty() {
                println!(
                    "{} files, listing {}",
                    m.files.len(),
                    p.dir.with_file_name(tinylm::data::LISTING).display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Sample { checkpoint, prompt, tokens, temperature, top_k, seed } => {
            if !(temperature.is_finite() && temperature >= 0.0) {
                return Err(Error::hint(
                    format!("--temperature must be a finite number >= 0, found {temperature}"),
                    "use 0 for greedy decoding, or e.g. --temperature 0.8",
                ));
            }
            threads::configure(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
            let text =
                sample::run(&sample::SampleArgs { checkpoint, prompt, tokens, temperature, top_k, seed })?;
            println!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Verify {
            run_dir,
            from,
            to,
            files_only,
            scratch,
            keep_scratch,
            threads: n,
            corpus,
            allow_download,
            parent,
        } => {
            let cfg_path = verify::Layout::detect(&run_dir).run.join(tinylm::checkpoint::CONFIG_FILE);
            let n = match n {
                Some(0) => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
                Some(n) => n.min(1024),
                None => Config::load(&cfg_path, &[]).map(|c| c.threads()).unwrap_or(1),
            };
            threads::configure(n);
            let stop = stop_flag();
            let args = verify::VerifyArgs {
                run_dir,
                from,
                to,
                files_only,
                scratch,
                keep_scratch,
                corpus,
                allow_download,
                parent,
            };
            if link.size() > 1 {
                if args.files_only || args.scratch.is_some() {
                    return Err(Error::hint(
                        "--files-only and --scratch are for a verify in one process",
                        "run them without mpirun",
                    ));
                }
                return verify_segments(&args, &stop, link);
            }
            let report = verify::verify(&args, &stop)?;
            print!("{}", report.table());
            if report.ok() {
                println!("verified: every recorded hash matches");
                for u in &report.unverified {
                    println!(
                        "unverified: {u} is on disk but not recorded in the manifest, so nothing vouches for it (a full verify re-executes it and compares)"
                    );
                }
                Ok(ExitCode::SUCCESS)
            } else {
                println!("MISMATCH: {}", report.mismatched());
                Ok(ExitCode::from(1))
            }
        }
        Cmd::Release {
            run_dir,
            out_dir,
            code_license,
            data_license,
            weights_license,
            doc_license,
            allow_dirty,
            no_source,
            repo,
            corpus,
            date,
            contact,
            allow_partial,
            parent,
        } => {
            threads::configure(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
            let args = tinylm::release::ReleaseArgs {
                run_dir,
                out_dir,
                code_license,
                data_license,
                weights_license,
                doc_license,
                allow_dirty,
                no_source,
                repo,
                corpus,
                date: date.unwrap_or_else(tinylm::release::today),
                contact,
                allow_partial,
                parent,
            };
            let s = tinylm::release::release(&args, &|m| eprintln!("{m}"))?;
            println!(
                "released {} ({} files): {}",
                s.out_dir.display(),
                s.files,
                tinylm::release::mof::class_label(s.class)
            );
            for (name, why) in &s.missing {
                println!("  not included: {name}: {why}");
            }
            if s.dirty {
                println!("WARNING: the run was trained by a build with uncommitted changes (--allow-dirty)");
            }
            println!("check it with: tinylm audit {}", s.out_dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Audit { dir, json, require, skip_data_replay, no_sums, parent } => {
            threads::configure(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
            let a = tinylm::release::audit::audit(&tinylm::release::audit::AuditArgs {
                dir,
                require,
                skip_data_replay,
                no_sums,
                parent,
            })?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&a).map_err(|e| tinylm::Error::msg(e.to_string()))?
                );
            } else {
                print!("{}", a.table());
            }
            Ok(if a.passed { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Cmd::Eval { checkpoint, text, context, json } => {
            threads::configure(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
            let r = tinylm::eval::run(&tinylm::eval::EvalArgs { model: checkpoint, texts: text, context })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r).map_err(|e| Error::msg(e.to_string()))?);
            } else {
                print!("{}", r.table());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Export { model, gguf, f16 } => {
            let s = tinylm::gguf::export(&tinylm::gguf::ExportArgs {
                model: model.clone(),
                out: gguf.clone(),
                f16,
            })?;
            println!(
                "wrote {} ({} tensors, {} bytes) from {} ({})",
                gguf.display(),
                s.tensors,
                s.bytes,
                model.display(),
                s.kind
            );
            println!("run it: llama-cli -m {} -p \"Once upon a time\" -n 40 --temp 0", gguf.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Batches { path, step, data_dir, corpus, allow_download } => {
            let (_, w) = tinylm::release::batches::batches(&tinylm::release::batches::BatchesArgs {
                path,
                step,
                data_dir,
                corpus,
                allow_download,
            })?;
            print!("{}", tinylm::release::batches::to_jsonl(step, &w));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `mpirun -np N tinylm verify RUN`: the run's recorded checkpoints cut it into segments
/// (from one checkpoint to the next), rank r re-executes segments r, r + N, ... each from its
/// own starting checkpoint, and rank 0 prints every segment's report. Exit 0 when all match,
/// 1 when one does not, 2 when one could not run.
fn verify_segments(
    base: &verify::VerifyArgs,
    stop: &AtomicBool,
    link: &dyn tinylm::dist::Link,
) -> Result<ExitCode> {
    let layout = verify::Layout::detect(&base.run_dir);
    let m = tinylm::run::read_manifest(&layout.run)?.ok_or_else(|| {
        Error::hint(
            format!("{} has no manifest.json: it is not a tinylm run directory", base.run_dir.display()),
            "pass the directory `tinylm train` wrote, e.g. checkpoints/tiny",
        )
    })?;
    let start = base.from.unwrap_or(0);
    let end = base.to.unwrap_or(u64::MAX);
    let mut points = vec![start];
    points.extend(
        m.checkpoints.iter().filter(|c| c.present && c.step > start && c.step <= end).map(|c| c.step),
    );
    let segments: Vec<(u64, u64)> = points.windows(2).map(|w| (w[0], w[1])).collect();
    let (r, w) = (link.rank(), link.size());
    let mut mine = Vec::new();
    for (i, &(a, b)) in segments.iter().enumerate().filter(|(i, _)| i % w == r) {
        let args = verify::VerifyArgs { from: (a > 0).then_some(a), to: Some(b), ..base.clone() };
        let (code, text) = match verify::verify(&args, stop) {
            Ok(rep) if rep.ok() => (0, rep.table()),
            Ok(rep) => (1, format!("{}MISMATCH: {}\n", rep.table(), rep.mismatched())),
            Err(e) => (2, format!("error: {e}\n")),
        };
        mine.push(
            serde_json::json!({"segment": i, "from": a, "to": b, "rank": r, "code": code, "text": text}),
        );
    }
    let bytes = serde_json::to_vec(&mine).map_err(|e| Error::msg(e.to_string()))?;
    if r > 0 {
        link.send_bytes(0, &bytes);
        return Ok(ExitCode::SUCCESS);
    }
    let mut all = mine;
    for from in 1..w {
        let got: Vec<serde_json::Value> = serde_json::from_slice(&link.recv_bytes(from)).unwrap_or_default();
        all.extend(got);
    }
    all.sort_by_key(|v| v["segment"].as_u64().unwrap_or(0));
    let mut worst = 0;
    for v in &all {
        let code = v["code"].as_u64().unwrap_or(2);
        worst = worst.max(code);
        println!(
            "== segment {}: steps {} -> {} (rank {}): {}",
            v["segment"],
            v["from"],
            v["to"],
            v["rank"],
            ["ok", "MISMATCH", "error"][code.min(2) as usize]
        );
        print!("{}", v["text"].as_str().unwrap_or(""));
    }
    if all.len() != segments.len() {
        println!("error: {} of {} segments reported", all.len(), segments.len());
        worst = 2;
    }
    match worst {
        0 => {
            println!("verified: {} segments on {w} ranks, every recorded hash matches", segments.len());
            Ok(ExitCode::SUCCESS)
        }
        1 => Ok(ExitCode::from(1)),
        _ => Ok(ExitCode::from(2)),
    }
}

/// A config taken from another run's checkpoint (`--resume OTHER/step-N --run-dir NEW`) names
/// where training writes its prepared data and downloads a corpus: such paths outside the
/// working directory are refused unless the user names them with --set (as a release's are by
/// verify).
fn foreign_data_paths(path: &std::path::Path, set: &[String]) -> Result<()> {
    let cfg = Config::load(path, &[])?;
    let given = |key: &str| set.iter().any(|s| s.split_once('=').is_some_and(|(k, _)| k.trim() == key));
    // A `file` corpus is only read (and pinned by data.sha256); data.dir, and a `url` corpus's
    // data.path, are written to.
    let written_path = if cfg.data.source == "url" { cfg.data.path.clone() } else { None };
    for (key, val) in [("data.path", written_path), ("data.dir", Some(cfg.data.dir.clone()))] {
        let Some(v) = val else { continue };
        let p = std::path::Path::new(&v);
        let outside = tinylm::data::leaves_folder(p);
        if outside && !given(key) {
            return Err(Error::hint(
                format!(
                    "{}: {key} = {v:?} leaves the working directory, and this config is another run's",
                    path.display()
                ),
                format!("name the path yourself: --set {key}=PATH (or pass your own --config FILE)"),
            ));
        }
    }
    Ok(())
}

/// The config of an existing run for a resume without --config: its config.toml, which must
/// still be the one its manifest records, plus the new overrides.
fn run_config(run_dir: &std::path::Path, set: &[String]) -> Result<Config> {
    let path = run_dir.join(tinylm::checkpoint::CONFIG_FILE);
    if !path.is_file() {
        return Err(Error::hint(
            format!("{} not found: {} is not a tinylm run directory", path.display(), run_dir.display()),
            "pass the directory `tinylm train` wrote, or give the config with --config FILE",
        ));
    }
    if let Some(m) = tinylm::run::read_manifest(run_dir)? {
        let got = tinylm::util::sha256_file(&path)?;
        if got != m.config_sha256 {
            return Err(Error::hint(
                format!("{}: sha256 {got} does not match the run manifest ({})", path.display(), m.config_sha256),
                "the run's config was changed after it ran: restore it (each checkpoint holds a copy), or pass --config",
            ));
        }
    }
    Config::load(&path, set)
}

/// What `train --dry-run` prints: the derived numbers a user wants before a run starts.
fn plan(cfg: &Config, run_dir: &std::path::Path, resume: bool) -> String {
    let (params, acts, corpus) = cfg.memory_estimate();
    let gib = |x: f64| format!("{:.2} GiB", x / (1u64 << 30) as f64);
    let t = &cfg.train;
    format!(
        "config ok\nrun directory  {}{}\nparameters     {:.0} (vocab {}, {} layers, d_model {}, d_ff {})\ntokens/step    {}\nsteps          {} (schedule {})\nmemory         about {} (parameters and optimizer {}, activations {}, corpus {})\n",
        run_dir.display(),
        if resume { " (resume)" } else { "" },
        cfg.param_count(),
        cfg.tokenizer.vocab_size,
        cfg.model.n_layer,
        cfg.model.d_model,
        cfg.model.d_ff,
        t.batch_size * t.context * t.grad_accum,
        t.steps,
        cfg.schedule_steps(),
        gib(params + acts + corpus),
        gib(params),
        gib(acts),
        gib(corpus)
    )
}
