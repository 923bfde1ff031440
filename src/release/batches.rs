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
}

pub struct Window {
    pub micro: u64,
    pub row: usize,
    pub offset: usize,
    /// context + 1 tokens: inputs are the first `context`, targets the last `context`.
    pub tokens: Vec<u16>,
}

/// (run dir, corpus override) of a release or a run directory.
fn locate(path: &Path) -> Result<(PathBuf, Option<PathBuf>)> {
    if path.join("run").join(crate::checkpoint::CONFIG_FILE).is_file() {
        let corpus = path.join("data/corpus.txt");
        Ok((path.join("run"), corpus.is_file().then_some(corpus)))
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
    let (run, corpus) = locate(&a.path)?;
    let m = Manifest::load(&run)?;
    let tmp = std::env::temp_dir().join(format!("tinylm-batches-{}", std::process::id()));
    let data_dir = a.data_dir.clone().unwrap_or_else(|| tmp.clone());
    let mut sets = vec![format!("data.dir={:?}", data_dir.display().to_string())];
    if let Some(c) = &corpus {
        let c = c.canonicalize().unwrap_or(c.clone());
        sets.push("data.source=\"file\"".into());
        sets.push(format!("data.path={:?}", c.display().to_string()));
        sets.push(format!("data.sha256=\"{}\"", m.data.corpus_sha256));
    }
    let cfg = Config::load(&run.join(crate::checkpoint::CONFIG_FILE), &sets)?;
    if a.step == 0 || a.step > cfg.train.steps {
        return Err(Error::hint(
            format!("--step {} is outside the run (steps 1 to {})", a.step, cfg.train.steps),
            "steps are 1-based, as the `step` field of run/metrics.jsonl",
        ));
    }
    let prepared = crate::data::prepare(&cfg, &data_dir, &|_| {});
    let result = (|| {
        let p = prepared?;
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
                out.push(Window { micro, row, offset: o, tokens: tokens[o..o + t + 1].to_vec() });
            }
        }
        Ok(out)
    })();
    if a.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok((cfg, result?))
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
