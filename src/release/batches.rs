//! `tinylm batches RELEASE_OR_RUN --step N`: the exact token windows training step N saw.
//!
//! The batch of a step is a pure function of (seed, step, micro-batch), computed by the same
//! `data::batch_offsets` as training; the token files are rebuilt (from a release's
//! `data/corpus.txt`, or as the run's config says) and checked against the manifest first, so
//! the windows printed are the ones that were trained on.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::manifest::Manifest;
use std::path::{Path, PathBuf};

pub struct BatchesArgs {
    pub path: PathBuf,
    /// 1-based, as `step` in metrics.jsonl: the optimizer step that saw this batch.
    pub step: u64,
    /// Where to rebuild the token files (default: a temp directory, removed afterwards).
    pub data_dir: Option<PathBuf>,
    /// The corpus, when the run's own is not at hand; checked against its pin.
    pub corpus: Option<PathBuf>,
    /// Fetch a `url` corpus that is nowhere here, into the data directory only.
    pub allow_download: bool,
}

pub struct Window {
    pub micro: u64,
    pub row: usize,
    pub offset: usize,
    /// context + 1 tokens: inputs are the first `context`, targets the last `context`.
    pub tokens: Vec<u32>,
}

/// (run dir, release dir) of a release or a run directory.
fn locate(path: &Path) -> Result<(PathBuf, Option<PathBuf>)> {
    if path.join("run").join(crate::checkpoint::CONFIG_FILE).is_file() {
        Ok((path.join("run"), Some(path.to_path_buf())))
    } else if path.join(crate::checkpoint::CONFIG_FILE).is_file() {
        Ok((path.to_path_buf(), None))
    } else {
        Err(Error::hint(
            format!("{} is neither a tinylm release nor a run directory (no config.toml)", path.display()),
            "pass a directory written by `tinylm release` or `tinylm train`",
        ))
    }
}

pub fn batches(a: &BatchesArgs) -> Result<(Config, Vec<Window>)> {
    let (run, release) = locate(&a.path)?;
    let m = Manifest::load(&run)?;
    let cfg_path = run.join(crate::checkpoint::CONFIG_FILE);
    let got = crate::util::sha256_file(&cfg_path)?;
    if got != m.config_sha256 {
        return Err(Error::hint(
            format!(
                "{}: sha256 {got} does not match the run manifest ({})",
                cfg_path.display(),
                m.config_sha256
            ),
            "the run's config was changed after it ran, so its windows would not be the ones trained on",
        ));
    }
    let mut cfg = Config::load(&cfg_path, &[])?;
    if a.step == 0 || a.step > cfg.train.steps {
        return Err(Error::hint(
            format!("--step {} is outside the run (steps 1 to {})", a.step, cfg.train.steps),
            "steps are 1-based, as the `step` field of run/metrics.jsonl",
        ));
    }
    // The release's config is someone else's: the corpus comes from its data/ (or --corpus),
    // and everything is written under the data directory alone (data::confine).
    let tmp = match &a.data_dir {
        Some(_) => None,
        None => Some(tempfile::Builder::new().prefix("tinylm-batches-").tempdir().map_err(|e| {
            Error::hint(
                format!("cannot create a temp directory in {}: {e}", std::env::temp_dir().display()),
                "pass --data-dir DIR, or set TMPDIR to a writable directory",
            )
        })?),
    };
    let scratch: PathBuf = match &a.data_dir {
        Some(d) => d.clone(),
        None => tmp.as_ref().map(|t| t.path().to_path_buf()).unwrap_or_default(),
    };
    let replay = crate::data::Replay {
        release: release.as_deref(),
        corpus: a.corpus.as_deref(),
        allow_download: a.allow_download,
        scratch: &scratch,
    };
    crate::data::confine(&mut cfg, &cfg_path, &replay, &|s| eprintln!("{s}"))?;
    let given_tok = crate::init::data_tokenizer(&m, &run, release.as_deref())?;
    let p = crate::data::prepare(&cfg, &scratch.join("data"), given_tok.as_deref(), &|_| {})?;
    if p.meta.train.sha256 != m.data.train_tokens_sha256 {
        return Err(Error::hint(
            format!(
                "the rebuilt train tokens hash to {}, the run recorded {}",
                p.meta.train.sha256, m.data.train_tokens_sha256
            ),
            "the corpus or the code differs from the run's; use the release's data/ and source/",
        ));
    }
    let tokens = p.load_tokens("train")?;
    let (b, t) = (cfg.train.batch_size as usize, cfg.train.context as usize);
    if tokens.len() < t + 2 {
        return Err(Error::msg(format!("{} train tokens cannot hold a window of {t} + 1", tokens.len())));
    }
    let mut out = Vec::new();
    for micro in 0..cfg.train.grad_accum {
        let offsets = crate::data::batch_offsets(cfg.run.seed, a.step - 1, micro, tokens.len(), b, t);
        for (row, &o) in offsets.iter().enumerate() {
            out.push(Window { micro, row, offset: o, tokens: tokens.range(o, o + t + 1) });
        }
    }
    Ok((cfg, out))
}

/// One JSON object per window.
pub fn to_jsonl(step: u64, w: &[Window]) -> String {
    w.iter()
        .map(|w| {
            serde_json::json!({"step": step, "micro": w.micro, "row": w.row, "offset": w.offset, "tokens": w.tokens})
                .to_string()
                + "\n"
        })
        .collect()
}
