//! `tinylm export MODEL --gguf OUT.gguf`: the model as a GGUF file that llama.cpp loads and runs.
//!
//! The file is written by candle's GGUF writer (`candle_core::quantized::gguf_file::write`), with
//! llama.cpp's names and metadata:
//! - tensors `token_embd`, `blk.N.attn_{norm,q,k,v,output}`, `blk.N.ffn_{norm,gate,up,down}`,
//!   `output_norm`, `output`, in f32 (or f16 with `--f16`; norms stay f32, as llama.cpp's own
//!   converter keeps them);
//! - the query and key rows of each head permuted from Hugging Face's half-split RoPE layout
//!   (pairs (i, i + d/2)) to llama.cpp's interleaved one (pairs (2i, 2i + 1)), as
//!   `convert_hf_to_gguf.py` does: without it llama.cpp runs and prints garbage;
//! - `llama.*` hyperparameters (context, widths, heads, `rms_norm_eps`, `rope.freq_base`);
//! - the byte-level BPE tokenizer as `tokenizer.ggml.model = "gpt2"` with `pre = "gpt-2"` (the
//!   GPT-2 split tinylm trains with), its tokens, merges and token types, `<|endoftext|>` a
//!   control token and the BOS and EOS id, and no BOS added to prompts (tinylm adds none).

use crate::error::{Error, IoContext, Result};
use crate::modeldir;
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::Tensor;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

pub struct ExportArgs {
    pub model: PathBuf,
    pub out: PathBuf,
    /// Store the matrices as f16 (half the size; not bit-exact).
    pub f16: bool,
}

pub struct Summary {
    pub tensors: usize,
    pub bytes: u64,
    pub kind: &'static str,
}

/// llama.cpp's name for an HF Llama tensor.
pub fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (i, part) = rest.split_once('.')?;
    let i: usize = i.parse().ok()?;
    let p = match part {
        "input_layernorm.weight" => "attn_norm",
        "self_attn.q_proj.weight" => "attn_q",
        "self_attn.k_proj.weight" => "attn_k",
        "self_attn.v_proj.weight" => "attn_v",
        "self_attn.o_proj.weight" => "attn_output",
        "post_attention_layernorm.weight" => "ffn_norm",
        "mlp.gate_proj.weight" => "ffn_gate",
        "mlp.up_proj.weight" => "ffn_up",
        "mlp.down_proj.weight" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{i}.{p}.weight"))
}

/// Rows of a (heads * d, C) projection reordered per head from HF's rotate-half layout to
/// llama.cpp's interleaved one: new row 2i + j of a head is old row j * d/2 + i.
pub fn permute_rope_rows(w: &[f32], n_head: usize, cols: usize) -> Vec<f32> {
    let rows = w.len() / cols;
    let d = rows / n_head;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_head {
        for i in 0..d / 2 {
            for j in 0..2 {
                let (new, old) = (h * d + 2 * i + j, h * d + j * (d / 2) + i);
                out[new * cols..(new + 1) * cols].copy_from_slice(&w[old * cols..(old + 1) * cols]);
            }
        }
    }
    out
}

fn s(v: &str) -> gguf_file::Value {
    gguf_file::Value::String(v.to_string())
}

/// The tokenizer.json's tokens in id order and its merges as "a b" strings.
fn tokens_and_merges(path: &Path) -> Result<(Vec<String>, Vec<String>)> {
    let text = fs::read_to_string(path).at(path)?;
    let j: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::msg(format!("{}: not JSON: {e}", path.display())))?;
    let bad = |what: &str| Error::msg(format!("{}: {what}", path.display()));
    let vocab = j.pointer("/model/vocab").and_then(|v| v.as_object()).ok_or_else(|| bad("no model.vocab"))?;
    let mut by_id: BTreeMap<u64, String> = BTreeMap::new();
    for (tok, id) in vocab {
        by_id.insert(id.as_u64().ok_or_else(|| bad("a vocab id is not a number"))?, tok.clone());
    }
    for t in j.get("added_tokens").and_then(|v| v.as_array()).into_iter().flatten() {
        if let (Some(id), Some(c)) =
            (t.get("id").and_then(|v| v.as_u64()), t.get("content").and_then(|v| v.as_str()))
        {
            by_id.insert(id, c.to_string());
        }
    }
    let n = by_id.len() as u64;
    if by_id.keys().copied().ne(0..n) {
        return Err(bad("token ids are not 0..n without gaps"));
    }
    let merges = j
        .pointer("/model/merges")
        .and_then(|v| v.as_array())
        .ok_or_else(|| bad("no model.merges"))?
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(p) => {
                match (p.first().and_then(|x| x.as_str()), p.get(1).and_then(|x| x.as_str())) {
                    (Some(a), Some(b)) => Some(format!("{a} {b}")),
                    _ => None,
                }
            }
            _ => None,
        })
        .collect::<Option<Vec<String>>>()
        .ok_or_else(|| bad("a merge is neither \"a b\" nor [a, b]"))?;
    Ok((by_id.into_values().collect(), merges))
}

pub fn export(a: &ExportArgs) -> Result<Summary> {
    let m = modeldir::load(&a.model)?;
    let d = m.model.dims;
    let (tokens, merges) = tokens_and_merges(&m.dir.join(crate::checkpoint::TOKENIZER_FILE))?;
    if tokens.len() > d.vocab {
        return Err(Error::msg(format!("{} tokens for a vocabulary of {}", tokens.len(), d.vocab)));
    }
    let eot = (m.tok.eot() != u32::MAX).then(|| m.tok.eot());
    let token_type: Vec<gguf_file::Value> =
        (0..tokens.len() as u32).map(|i| gguf_file::Value::I32(if Some(i) == eot { 3 } else { 1 })).collect();
    let u32v = |x: usize| gguf_file::Value::U32(x as u32);
    let mut meta: Vec<(&str, gguf_file::Value)> = vec![
        ("general.architecture", s("llama")),
        ("general.name", s("tinylm")),
        ("general.file_type", u32v(if a.f16 { 1 } else { 0 })),
        ("general.alignment", u32v(32)),
        ("llama.context_length", u32v(m.context)),
        ("llama.embedding_length", u32v(d.d_model)),
        ("llama.block_count", u32v(d.n_layer)),
        ("llama.feed_forward_length", u32v(d.d_ff)),
        ("llama.rope.dimension_count", u32v(d.head_dim())),
        ("llama.attention.head_count", u32v(d.n_head)),
        ("llama.attention.head_count_kv", u32v(d.n_head)),
        ("llama.attention.layer_norm_rms_epsilon", gguf_file::Value::F32(d.norm_eps as f32)),
        ("llama.rope.freq_base", gguf_file::Value::F32(d.rope_theta as f32)),
        ("llama.vocab_size", u32v(d.vocab)),
        ("tokenizer.ggml.model", s("gpt2")),
        ("tokenizer.ggml.pre", s("gpt-2")),
        ("tokenizer.ggml.tokens", gguf_file::Value::Array(tokens.iter().map(|t| s(t)).collect())),
        ("tokenizer.ggml.token_type", gguf_file::Value::Array(token_type)),
        ("tokenizer.ggml.merges", gguf_file::Value::Array(merges.iter().map(|t| s(t)).collect())),
        ("tokenizer.ggml.add_bos_token", gguf_file::Value::Bool(false)),
        ("tokenizer.ggml.add_eos_token", gguf_file::Value::Bool(false)),
    ];
    if let Some(e) = eot {
        meta.push(("tokenizer.ggml.bos_token_id", gguf_file::Value::U32(e)));
        meta.push(("tokenizer.ggml.eos_token_id", gguf_file::Value::U32(e)));
    }

    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    for (hf, t) in m.model.tensors() {
        let gname = gguf_name(&hf).ok_or_else(|| Error::msg(format!("internal: no GGUF name for {hf}")))?;
        let t = if hf.ends_with("q_proj.weight") || hf.ends_with("k_proj.weight") {
            let (rows, cols) = t.dims2()?;
            let w = t.flatten_all()?.to_vec1::<f32>()?;
            Tensor::from_vec(permute_rope_rows(&w, d.n_head, cols), (rows, cols), t.device())?
        } else {
            t
        };
        let dtype = if a.f16 && t.rank() == 2 { GgmlDType::F16 } else { GgmlDType::F32 };
        tensors.push((gname, QTensor::quantize(&t, dtype)?));
    }
    // llama.cpp does not care about the order; a fixed one keeps the file's bytes fixed.
    tensors.sort_by(|x, y| x.0.cmp(&y.0));

    let tmp = crate::util::temp_sibling(&a.out);
    if let Some(dir) = a.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(dir).at(dir)?;
    }
    let written = (|| -> Result<u64> {
        let mut f = std::io::BufWriter::new(fs::File::create(&tmp).at(&tmp)?);
        let md: Vec<(&str, &gguf_file::Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
        let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        gguf_file::write(&mut f, &md, &ts).map_err(|e| Error::msg(format!("{}: {e}", a.out.display())))?;
        let f = f.into_inner().map_err(|e| Error::msg(format!("{}: {e}", a.out.display())))?;
        f.sync_all().at(&tmp)?;
        Ok(f.metadata().at(&tmp)?.len())
    })();
    match written {
        Ok(bytes) => {
            fs::rename(&tmp, &a.out).at(&a.out)?;
            Ok(Summary { tensors: tensors.len(), bytes, kind: m.kind.name() })
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_permutation_interleaves_each_heads_halves() {
        // 2 heads of d = 4, one column: rows are h*4 + k.
        let w: Vec<f32> = (0..8).map(|x| x as f32).collect();
        // Head 0: pairs (0, 2) and (1, 3) become rows (0, 1) and (2, 3).
        assert_eq!(permute_rope_rows(&w, 2, 1), vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
        assert_eq!(
            gguf_name("model.layers.3.mlp.down_proj.weight").as_deref(),
            Some("blk.3.ffn_down.weight")
        );
        assert_eq!(gguf_name("lm_head.weight").as_deref(), Some("output.weight"));
        assert_eq!(gguf_name("model.layers.x.mlp.down_proj.weight"), None);
    }
}
