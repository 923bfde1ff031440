//! The Hugging Face layout of a checkpoint: `config.json`, `generation_config.json`,
//! `tokenizer_config.json` and `special_tokens_map.json` beside `model.safetensors` and
//! `tokenizer.json`, so `AutoModelForCausalLM.from_pretrained(dir)` and
//! `AutoTokenizer.from_pretrained(dir)` need nothing else.
//!
//! tinylm's model is HF Llama exactly: RMSNorm, rotate_half RoPE, SwiGLU (silu), no biases,
//! untied head, full multi-head attention (as many key/value heads as query heads), fp32.

use crate::config::Config;
use crate::corpus::EOT;
use crate::error::{Error, Result};
use serde_json::{json, Value};

/// What the HF files need to know about a model besides its config.
pub struct HfModel<'a> {
    pub cfg: &'a Config,
    /// Rows of `model.embed_tokens.weight` (= the tokenizer's vocabulary).
    pub vocab: usize,
    /// Id of `<|endoftext|>`: the document separator, so both BOS and EOS.
    pub eot: u32,
}

pub fn config_json(m: &HfModel) -> Value {
    let md = &m.cfg.model;
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": md.d_model,
        "intermediate_size": md.d_ff,
        "num_hidden_layers": md.n_layer,
        "num_attention_heads": md.n_head,
        "num_key_value_heads": md.n_head,
        "head_dim": md.d_model / md.n_head.max(1),
        "max_position_embeddings": m.cfg.train.context,
        "vocab_size": m.vocab,
        "rope_theta": md.rope_theta,
        "rope_scaling": null,
        "rms_norm_eps": md.norm_eps,
        "tie_word_embeddings": false,
        "hidden_act": "silu",
        "attention_bias": false,
        "attention_dropout": 0.0,
        "mlp_bias": false,
        "pretraining_tp": 1,
        "initializer_range": 0.02,
        "torch_dtype": "float32",
        "use_cache": true,
        "bos_token_id": m.eot,
        "eos_token_id": m.eot,
    })
}

/// The decoding settings the run used for its own samples.
pub fn generation_config_json(m: &HfModel) -> Value {
    let e = &m.cfg.eval;
    let mut v = json!({
        "bos_token_id": m.eot,
        "eos_token_id": m.eot,
        "do_sample": e.temperature > 0.0,
        "temperature": if e.temperature > 0.0 { e.temperature } else { 1.0 },
        "top_k": e.top_k,
    });
    // transformers refuses `max_new_tokens: 0` (GenerationConfig.validate); a run that took no
    // samples (eval.sample_tokens = 0) leaves the length to the caller.
    if e.sample_tokens > 0 {
        v["max_new_tokens"] = e.sample_tokens.into();
    }
    v
}

pub fn tokenizer_config_json(m: &HfModel) -> Value {
    json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOT,
        "eos_token": EOT,
        "unk_token": EOT,
        "add_bos_token": false,
        "add_eos_token": false,
        "add_prefix_space": false,
        "clean_up_tokenization_spaces": false,
        "model_max_length": m.cfg.train.context,
        "added_tokens_decoder": {
            m.eot.to_string(): {
                "content": EOT, "lstrip": false, "normalized": false, "rstrip": false,
                "single_word": false, "special": true
            }
        },
    })
}

pub fn special_tokens_map_json() -> Value {
    json!({ "bos_token": EOT, "eos_token": EOT, "unk_token": EOT })
}

pub fn pretty(v: &Value) -> Result<Vec<u8>> {
    let mut s = serde_json::to_string_pretty(v).map_err(|e| Error::msg(e.to_string()))?;
    s.push('\n');
    Ok(s.into_bytes())
}

/// The four HF side files of a model directory: (name, bytes).
pub fn side_files(m: &HfModel) -> Result<Vec<(&'static str, Vec<u8>)>> {
    Ok(vec![
        ("config.json", pretty(&config_json(m))?),
        ("generation_config.json", pretty(&generation_config_json(m))?),
        ("tokenizer_config.json", pretty(&tokenizer_config_json(m))?),
        ("special_tokens_map.json", pretty(&special_tokens_map_json())?),
    ])
}

/// Expected tensor shapes of an HF Llama from its `config.json`; the audit checks weights
/// against it. Err names the first missing or malformed key.
pub fn llama_shapes(
    cfg: &Value,
) -> std::result::Result<std::collections::BTreeMap<String, Vec<usize>>, String> {
    let get = |k: &str| -> std::result::Result<usize, String> {
        cfg.get(k).and_then(Value::as_u64).map(|v| v as usize).ok_or_else(|| format!("config.json lacks {k}"))
    };
    let (h, f, layers, heads, v) = (
        get("hidden_size")?,
        get("intermediate_size")?,
        get("num_hidden_layers")?,
        get("num_attention_heads")?,
        get("vocab_size")?,
    );
    let kv = get("num_key_value_heads").unwrap_or(heads);
    if heads == 0 {
        return Err("config.json: num_attention_heads is 0".into());
    }
    let hd = get("head_dim").unwrap_or(h / heads);
    let tied = cfg.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false);
    let mut m = std::collections::BTreeMap::new();
    m.insert("model.embed_tokens.weight".to_string(), vec![v, h]);
    m.insert("model.norm.weight".to_string(), vec![h]);
    if !tied {
        m.insert("lm_head.weight".to_string(), vec![v, h]);
    }
    for i in 0..layers {
        let p = format!("model.layers.{i}");
        m.insert(format!("{p}.input_layernorm.weight"), vec![h]);
        m.insert(format!("{p}.post_attention_layernorm.weight"), vec![h]);
        m.insert(format!("{p}.self_attn.q_proj.weight"), vec![heads * hd, h]);
        m.insert(format!("{p}.self_attn.k_proj.weight"), vec![kv * hd, h]);
        m.insert(format!("{p}.self_attn.v_proj.weight"), vec![kv * hd, h]);
        m.insert(format!("{p}.self_attn.o_proj.weight"), vec![h, heads * hd]);
        m.insert(format!("{p}.mlp.gate_proj.weight"), vec![f, h]);
        m.insert(format!("{p}.mlp.up_proj.weight"), vec![f, h]);
        m.insert(format!("{p}.mlp.down_proj.weight"), vec![h, f]);
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Dims;

    #[test]
    fn exported_config_predicts_tinylm_shapes() {
        let cfg = Config::default();
        let m = HfModel { cfg: &cfg, vocab: 512, eot: 256 };
        let j = config_json(&m);
        assert_eq!(j["model_type"], "llama");
        assert_eq!(j["max_position_embeddings"], cfg.train.context);
        let ours = Dims::new(&cfg.model, 512).param_shapes();
        assert_eq!(llama_shapes(&j).unwrap(), ours);
    }
}
