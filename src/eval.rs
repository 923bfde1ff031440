//! `tinylm eval --checkpoint MODEL --text FILE...`: loss, perplexity and bits per byte of any
//! model tinylm reads (`modeldir`) on any text.
//!
//! Each file is tokenized with the model's tokenizer and cut into non-overlapping windows of
//! `context` tokens (the last one shorter); in each window every token but the first is
//! predicted from those before it, as transformers' `model(ids, labels=ids)` computes it. So the
//! loss is the mean over all predicted tokens of -ln p, perplexity its exp, and bits per byte the
//! summed nats / ln 2 over the UTF-8 bytes those predicted tokens spell. The numbers depend on
//! the model, the text and `context` only: never on the thread count.

use crate::error::{Error, IoContext, Result};
use crate::modeldir;
use candle_core::{Device, Tensor};
use serde::Serialize;
use std::path::PathBuf;

pub struct EvalArgs {
    pub model: PathBuf,
    pub texts: Vec<PathBuf>,
    /// Window length in tokens (default: the model's context).
    pub context: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Score {
    /// A file, or "all".
    pub text: String,
    pub windows: u64,
    /// Predicted tokens.
    pub tokens: u64,
    /// UTF-8 bytes the predicted tokens spell.
    pub bytes: u64,
    pub loss: f64,
    pub perplexity: f64,
    pub bits_per_byte: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub model: String,
    pub kind: String,
    pub context: usize,
    pub files: Vec<Score>,
    pub total: Score,
}

fn score(text: String, windows: u64, nats: f64, tokens: u64, bytes: u64) -> Score {
    let loss = if tokens > 0 { nats / tokens as f64 } else { f64::NAN };
    Score {
        text,
        windows,
        tokens,
        bytes,
        loss,
        perplexity: libm::exp(loss),
        bits_per_byte: nats / std::f64::consts::LN_2 / bytes.max(1) as f64,
    }
}

pub fn run(a: &EvalArgs) -> Result<Report> {
    if a.texts.is_empty() {
        return Err(Error::hint("no text to evaluate on", "pass --text FILE (repeatable)"));
    }
    let m = modeldir::load(&a.model)?;
    let t = a.context.unwrap_or(m.context);
    if t < 2 || t > m.context {
        return Err(Error::hint(
            format!("--context {t} is outside 2..={} (the model's context)", m.context),
            format!("pass --context between 2 and {}, or leave it out", m.context),
        ));
    }
    let vocab = m.model.dims.vocab;
    let (mut all_nats, mut all_tokens, mut all_bytes, mut all_windows) = (0f64, 0u64, 0u64, 0u64);
    let mut files = Vec::new();
    for path in &a.texts {
        let bytes = std::fs::read(path).at(path)?;
        let text = String::from_utf8(bytes).map_err(|e| {
            Error::hint(format!("{} is not UTF-8 text: {e}", path.display()), "pass a UTF-8 text file")
        })?;
        let ids = m.tok.encode(&text)?;
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(Error::msg(format!(
                "{}: token id {bad} is outside the model's vocabulary {vocab}",
                path.display()
            )));
        }
        let (mut nats, mut tokens, mut nbytes, mut windows) = (0f64, 0u64, 0u64, 0u64);
        for w in ids.chunks(t).filter(|w| w.len() >= 2) {
            let (x, y) = (&w[..w.len() - 1], &w[1..]);
            let xs = Tensor::from_slice(x, (1, x.len()), &Device::Cpu)?;
            let logits = m.model.forward(&xs)?.reshape((x.len(), vocab))?;
            let ys = Tensor::from_slice(y, y.len(), &Device::Cpu)?;
            let losses = crate::model::token_losses(&logits, &ys)?;
            nats += losses.iter().map(|&l| l as f64).sum::<f64>();
            tokens += y.len() as u64;
            nbytes += y.iter().map(|&id| m.tok.byte_len(id) as u64).sum::<u64>();
            windows += 1;
        }
        if tokens == 0 {
            return Err(Error::hint(
                format!("{} has fewer than 2 tokens: nothing to predict", path.display()),
                "pass a longer text",
            ));
        }
        all_nats += nats;
        all_tokens += tokens;
        all_bytes += nbytes;
        all_windows += windows;
        files.push(score(path.display().to_string(), windows, nats, tokens, nbytes));
    }
    Ok(Report {
        model: m.dir.display().to_string(),
        kind: m.kind.name().to_string(),
        context: t,
        files,
        total: score("all".into(), all_windows, all_nats, all_tokens, all_bytes),
    })
}

impl Report {
    pub fn table(&self) -> String {
        let w = self.files.iter().map(|f| f.text.len()).max().unwrap_or(4).max(4);
        let mut s = format!("eval of {} ({}), windows of {} tokens\n", self.model, self.kind, self.context);
        s += &format!(
            "{:<w$}  {:>8}  {:>10}  {:>8}  {:>10}  {:>9}\n",
            "text", "windows", "tokens", "loss", "perplexity", "bits/byte"
        );
        let rows = self.files.iter().chain((self.files.len() > 1).then_some(&self.total));
        for f in rows {
            s += &format!(
                "{:<w$}  {:>8}  {:>10}  {:>8.4}  {:>10.3}  {:>9.4}\n",
                f.text, f.windows, f.tokens, f.loss, f.perplexity, f.bits_per_byte
            );
        }
        s
    }
}
