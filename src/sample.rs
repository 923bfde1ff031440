//! Text generation: temperature and top-k sampling from our own seeded stream, so the same
//! seed gives the same text. Used by `tinylm sample` and by evaluation during training.

use crate::checkpoint::{self, CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::model::{Dims, Llama};
use crate::rng::{self, Stream};
use crate::tokenizer::Tok;
use candle_core::{Device, Tensor};
use std::path::{Path, PathBuf};

/// Pick the next token from logits: greedy at temperature 0, else top-k then a draw.
pub fn pick(logits: &[f32], temperature: f64, top_k: usize, rng: &mut Stream) -> u32 {
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    // Highest logit first; ties broken by id, so the order never depends on the sort algorithm.
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if temperature <= 0.0 {
        return idx[0] as u32;
    }
    if top_k > 0 {
        idx.truncate(top_k);
    }
    let max = logits[idx[0]] as f64;
    let weights: Vec<f64> = idx.iter().map(|&i| libm::exp((logits[i] as f64 - max) / temperature)).collect();
    let total: f64 = weights.iter().sum();
    let mut u = rng::unit(rng) * total;
    for (k, w) in weights.iter().enumerate() {
        if u < *w {
            return idx[k] as u32;
        }
        u -= w;
    }
    idx[idx.len() - 1] as u32
}

/// How to decode: up to `tokens` new tokens, `temperature` (0 is greedy), `top_k` (0 is all),
/// and the model's context length `ctx` (older tokens are dropped from the window).
#[derive(Clone, Copy)]
pub struct Decode {
    pub tokens: usize,
    pub temperature: f64,
    pub top_k: usize,
    pub ctx: usize,
}

/// Continue `prompt` (stopping at `<|endoftext|>`); returns prompt + text.
pub fn generate(model: &Llama, tok: &Tok, prompt: &str, d: &Decode, rng: &mut Stream) -> Result<String> {
    let Decode { tokens: n, temperature, top_k, ctx } = *d;
    let mut ids = tok.encode(prompt)?;
    if ids.is_empty() {
        ids.push(tok.eot());
    }
    let start = ids.len();
    for _ in 0..n {
        let window = &ids[ids.len().saturating_sub(ctx)..];
        let x = Tensor::new(window, &Device::Cpu)?.unsqueeze(0)?; // (1, T)
        let logits = model.forward(&x)?; // (1, T, V)
        let last = logits.narrow(1, window.len() - 1, 1)?.flatten_all()?.to_vec1::<f32>()?;
        let next = pick(&last, temperature, top_k, rng);
        if next == tok.eot() {
            break;
        }
        ids.push(next);
    }
    let mut text = tok.decode(&ids[..start])?;
    if ids[..start] == [tok.eot()] {
        text.clear();
    }
    Ok(text + &tok.decode(&ids[start..])?)
}

/// Options of `tinylm sample`.
pub struct SampleArgs {
    pub checkpoint: PathBuf,
    pub prompt: String,
    pub tokens: usize,
    pub temperature: f64,
    pub top_k: usize,
    pub seed: u64,
}

/// A checkpoint directory, or a run directory (its newest checkpoint).
pub fn resolve_checkpoint(path: &Path) -> Result<PathBuf> {
    if path.join(MODEL_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    match checkpoint::list(path)?.pop() {
        Some((_, dir)) => Ok(dir),
        None => Err(Error::hint(
            format!("{} is neither a checkpoint nor a run directory with checkpoints", path.display()),
            "pass a step-NNNNNNNN directory, e.g. checkpoints/tiny/step-00000800",
        )),
    }
}

/// Load a checkpoint's model and tokenizer, each checked against state.json (the optimizer
/// state is not needed).
pub fn load_model(dir: &Path) -> Result<(Config, Llama, Tok)> {
    let (_, weights, config_toml) = checkpoint::load_inference(dir)?;
    let cfg = Config::from_source(&config_toml, &dir.join(CONFIG_FILE), &[])?;
    let tok = Tok::from_file(&dir.join(TOKENIZER_FILE))?;
    let dims = Dims::new(&cfg.model, tok.vocab_size());
    let model = Llama::from_tensors(dims, &weights, &dir.join(MODEL_FILE).display().to_string())?;
    Ok((cfg, model, tok))
}

pub fn run(a: &SampleArgs) -> Result<String> {
    let dir = resolve_checkpoint(&a.checkpoint)?;
    let (cfg, model, tok) = load_model(&dir)?;
    let mut r = rng::stream(a.seed, "sample-cli", "");
    let d = Decode {
        tokens: a.tokens,
        temperature: a.temperature,
        top_k: a.top_k,
        ctx: cfg.train.context as usize,
    };
    generate(&model, &tok, &a.prompt, &d, &mut r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_is_greedy_at_zero_and_respects_top_k() {
        let logits = [0.1f32, 3.0, 2.0, -1.0];
        let mut r = rng::stream(0, "t", "");
        assert_eq!(pick(&logits, 0.0, 0, &mut r), 1);
        for _ in 0..200 {
            let p = pick(&logits, 1.0, 2, &mut r);
            assert!(p == 1 || p == 2, "top-2 only, got {p}");
        }
        let a: Vec<u32> = {
            let mut r = rng::stream(5, "t", "");
            (0..20).map(|_| pick(&logits, 1.0, 0, &mut r)).collect()
        };
        let b: Vec<u32> = {
            let mut r = rng::stream(5, "t", "");
            (0..20).map(|_| pick(&logits, 1.0, 0, &mut r)).collect()
        };
        assert_eq!(a, b);
    }
}
