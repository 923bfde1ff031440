//! A model on disk, of any kind tinylm reads: a tinylm checkpoint (`step-NNNNNNNN/`), a run
//! directory (its newest checkpoint), a release (its `model/`), or a Hugging Face Llama folder
//! (`config.json`, `model.safetensors`, `tokenizer.json`, as `save_pretrained` writes them).
//!
//! An HF config that tinylm's model cannot represent exactly is refused, naming the key: tied
//! embeddings, fewer key/value heads than query heads, biases, RoPE scaling, another
//! activation, another head size. Weights in f16 or bf16 are widened to f32 (exact).

use crate::checkpoint::{self, MODEL_FILE, TOKENIZER_FILE};
use crate::error::{Error, IoContext, Result};
use crate::model::{Dims, Llama};
use crate::tokenizer::Tok;
use candle_core::{DType, Tensor};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// What kind of folder a model came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Checkpoint,
    Run,
    Release,
    HuggingFace,
}

impl Kind {
    /// One word, as the manifest's parent record has it.
    pub fn word(self) -> &'static str {
        match self {
            Kind::Checkpoint => "checkpoint",
            Kind::Run => "run",
            Kind::Release => "release",
            Kind::HuggingFace => "huggingface",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Checkpoint => "tinylm checkpoint",
            Kind::Run => "tinylm run (newest checkpoint)",
            Kind::Release => "tinylm release (model/)",
            Kind::HuggingFace => "Hugging Face Llama folder",
        }
    }
}

pub struct Loaded {
    pub kind: Kind,
    /// The directory the weights were read from.
    pub dir: PathBuf,
    pub model: Llama,
    pub tok: Tok,
    /// The context the model was trained with (`train.context`, or HF
    /// `max_position_embeddings`).
    pub context: usize,
}

/// Where the model at `path` is: its kind and the directory holding its weights. `what`
/// begins the errors (e.g. "init.from: ").
pub fn locate(path: &Path, what: &str) -> Result<(Kind, PathBuf)> {
    let hint = "pass a tinylm checkpoint or run directory, a release, or a Hugging Face Llama folder (config.json, model.safetensors, tokenizer.json)";
    if !path.is_dir() {
        return Err(Error::hint(format!("{what}{} is not a directory", path.display()), hint));
    }
    if path.join(checkpoint::STATE_FILE).is_file() {
        return Ok((Kind::Checkpoint, path.to_path_buf()));
    }
    if path.join(crate::release::RELEASE_JSON).is_file() && path.join("model").join("config.json").is_file() {
        return Ok((Kind::Release, path.join("model")));
    }
    if path.join("config.json").is_file() {
        return Ok((Kind::HuggingFace, path.to_path_buf()));
    }
    match checkpoint::list(path)?.pop() {
        Some((_, dir)) => Ok((Kind::Run, dir)),
        None => Err(Error::hint(
            format!(
                "{what}{} holds no model: no state.json, no config.json, no step-NNNNNNNN checkpoint",
                path.display()
            ),
            hint,
        )),
    }
}

/// Load the model at `path`, whatever kind it is.
pub fn load(path: &Path) -> Result<Loaded> {
    match locate(path, "")? {
        (kind @ (Kind::Checkpoint | Kind::Run), dir) => load_tinylm(&dir, kind),
        (kind, dir) => load_hf(&dir, kind),
    }
}

fn load_tinylm(dir: &Path, kind: Kind) -> Result<Loaded> {
    let (cfg, model, tok) = crate::sample::load_model(dir)?;
    Ok(Loaded { kind, dir: dir.to_path_buf(), model, tok, context: cfg.train.context as usize })
}

/// The dimensions of an HF Llama `config.json`, or an error naming the first key tinylm
/// cannot represent (with the file).
pub fn hf_dims(cfg: &Value, file: &Path) -> Result<(Dims, usize)> {
    let bad = |key: &str, why: String| {
        Error::hint(
            format!("{}: `{key}` {why}", file.display()),
            "tinylm's model is Llama with untied embeddings, full multi-head attention, no biases, SiLU and plain RoPE; this model is not one",
        )
    };
    let num = |k: &str| -> Result<usize> {
        cfg.get(k)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| bad(k, "is missing or not a whole number".into()))
    };
    let model_type = cfg.get("model_type").and_then(Value::as_str).unwrap_or("");
    if model_type != "llama" {
        return Err(bad("model_type", format!("is {model_type:?}; only \"llama\" is supported")));
    }
    let (h, f, layers, heads, vocab) = (
        num("hidden_size")?,
        num("intermediate_size")?,
        num("num_hidden_layers")?,
        num("num_attention_heads")?,
        num("vocab_size")?,
    );
    if heads == 0 || h % heads != 0 {
        return Err(bad("num_attention_heads", format!("{heads} does not divide hidden_size {h}")));
    }
    if cfg.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false) {
        return Err(bad("tie_word_embeddings", "is true: tied embeddings are not supported yet".into()));
    }
    if let Some(kv) = cfg.get("num_key_value_heads").and_then(Value::as_u64) {
        if kv as usize != heads {
            return Err(bad(
                "num_key_value_heads",
                format!("is {kv}, num_attention_heads {heads}: grouped-query attention is not supported yet"),
            ));
        }
    }
    if let Some(hd) = cfg.get("head_dim").and_then(Value::as_u64) {
        if hd as usize != h / heads {
            return Err(bad(
                "head_dim",
                format!("is {hd}, not hidden_size / num_attention_heads = {}", h / heads),
            ));
        }
    }
    for key in ["attention_bias", "mlp_bias"] {
        if cfg.get(key).and_then(Value::as_bool).unwrap_or(false) {
            return Err(bad(key, "is true: biases are not supported".into()));
        }
    }
    if cfg.get("rope_scaling").is_some_and(|v| !v.is_null()) {
        return Err(bad("rope_scaling", "is set: only plain RoPE is supported".into()));
    }
    let act = cfg.get("hidden_act").and_then(Value::as_str).unwrap_or("silu");
    if act != "silu" {
        return Err(bad("hidden_act", format!("is {act:?}; only \"silu\" is supported")));
    }
    let float = |k: &str, default: f64| cfg.get(k).and_then(Value::as_f64).unwrap_or(default);
    let dims = Dims {
        vocab,
        n_layer: layers,
        n_head: heads,
        d_model: h,
        d_ff: f,
        rope_theta: float("rope_theta", 10000.0),
        norm_eps: float("rms_norm_eps", 1e-6),
    };
    let context = cfg.get("max_position_embeddings").and_then(Value::as_u64).unwrap_or(2048) as usize;
    Ok((dims, context))
}

/// An HF folder's `config.json`, parsed, with its dimensions and context (`hf_dims`).
pub fn hf_config(dir: &Path) -> Result<(Value, Dims, usize)> {
    let cfg_path = dir.join("config.json");
    let text = fs::read_to_string(&cfg_path).at(&cfg_path)?;
    let cfg: Value = serde_json::from_str(&text).map_err(|e| {
        Error::hint(format!("{}: not JSON: {e}", cfg_path.display()), "pass a Hugging Face model folder")
    })?;
    let (dims, context) = hf_dims(&cfg, &cfg_path)?;
    Ok((cfg, dims, context))
}

/// The tensors of a safetensors file's bytes read from `path`, each in f32 (an HF folder may
/// hold f16 or bf16).
pub fn f32_tensors(bytes: &[u8], path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let mut tensors = checkpoint::from_safetensors(bytes, path)?;
    for t in tensors.values_mut() {
        if t.dtype() != DType::F32 {
            *t = t.to_dtype(DType::F32).map_err(|e| Error::msg(format!("{}: {e}", path.display())))?;
        }
    }
    Ok(tensors)
}

fn load_hf(dir: &Path, kind: Kind) -> Result<Loaded> {
    let (_, dims, context) = hf_config(dir)?;
    let wpath = dir.join(MODEL_FILE);
    if !wpath.is_file() {
        return Err(Error::hint(
            format!("{} not found", wpath.display()),
            "tinylm reads the weights from one model.safetensors (sharded or pickle weights are not supported)",
        ));
    }
    let bytes = fs::read(&wpath).at(&wpath)?;
    let tensors = f32_tensors(&bytes, &wpath)?;
    let model = Llama::from_tensors(dims, &tensors, &wpath.display().to_string())?;
    let tok = Tok::from_file_any(&dir.join(TOKENIZER_FILE))?;
    if tok.vocab_size() > dims.vocab {
        return Err(Error::hint(
            format!(
                "{}: the tokenizer has {} tokens, the model's vocab_size is {}",
                dir.display(),
                tok.vocab_size(),
                dims.vocab
            ),
            "the tokenizer and the weights do not belong together",
        ));
    }
    Ok(Loaded { kind, dir: dir.to_path_buf(), model, tok, context })
}
