//! Byte-level BPE, trained with HF `tokenizers` on the train split and saved as a standard
//! `tokenizer.json`. Byte-level means every byte has a token, so any text encodes and bits per
//! byte can be computed exactly from each token's byte length.

use crate::corpus::EOT;
use crate::error::{Error, Result};
use std::path::Path;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

fn tk_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

/// The recipe below and in `Tok::encode`, versioned: part of the prepared-data cache key, so a
/// change to how the tokenizer is trained or applied rebuilds the token files. Bump it with any
/// such change.
pub const RECIPE: &str = "bytelevel-bpe-gpt2-split-eot-lines-64k-pieces-v1";

/// The version of the `tokenizers` crate this binary was built with (from Cargo.lock).
pub fn tokenizers_version() -> String {
    crate::util::lock_version(include_str!("../Cargo.lock"), "tokenizers").unwrap_or_else(|| "unknown".into())
}

/// Train a tokenizer on `text` and return its JSON. Documents are split on `<|endoftext|>` so
/// the marker itself is never merged; lines keep their newline so whitespace merges are learned.
pub fn train(text: &str, vocab_size: usize) -> Result<String> {
    train_on(text.split(EOT).flat_map(|doc| doc.split_inclusive('\n')), vocab_size)
}

/// Train on a stream of sequences (lines, each with its newline; never containing
/// `<|endoftext|>`), as `train` does on one text: the trainer only keeps its word counts, so a
/// corpus streamed from files is never held whole.
pub fn train_on<I, S>(sequences: I, vocab_size: usize) -> Result<String>
where
    I: Iterator<Item = S> + Send,
    S: AsRef<str> + Send,
{
    // GPT-2 style: no prefix space, the standard split regex.
    let byte_level = ByteLevel::new(false, true, true);
    let mut tok = Tokenizer::new(BPE::default());
    tok.with_pre_tokenizer(Some(byte_level));
    tok.with_decoder(Some(byte_level));
    let mut trainer: tokenizers::models::TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(0)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(vec![AddedToken::from(EOT, true)])
        .build()
        .into();
    tok.train(&mut trainer, sequences).map_err(tk_err)?;
    tok.add_special_tokens([AddedToken::from(EOT, true)]).map_err(tk_err)?;
    tok.to_string(true).map_err(tk_err)
}

/// A loaded tokenizer plus what tinylm needs of it.
pub struct Tok {
    inner: Tokenizer,
    /// Bytes of original text each token stands for (for bits per byte).
    byte_len: Vec<u32>,
    eot: u32,
}

impl Tok {
    pub fn from_file(path: &Path) -> Result<Tok> {
        let tok = Self::load(path)?;
        if tok.eot == u32::MAX {
            return Err(Error::msg(format!("{}: no {EOT} token", path.display())));
        }
        Ok(tok)
    }

    /// Any byte-level BPE tokenizer (GPT-2 style, as tinylm's own and many HF models use), with
    /// or without `<|endoftext|>`: what `tinylm eval` needs. Another kind is refused, since
    /// bits per byte count the bytes each token spells.
    pub fn from_file_any(path: &Path) -> Result<Tok> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::Io { path: path.to_path_buf(), source: e })?;
        let j: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::msg(format!("{}: not a tokenizer.json: {e}", path.display())))?;
        let model = j.pointer("/model/type").and_then(|v| v.as_str()).unwrap_or("");
        let decoder = j.pointer("/decoder/type").and_then(|v| v.as_str()).unwrap_or("");
        if model != "BPE" || decoder != "ByteLevel" {
            return Err(Error::hint(
                format!(
                    "{}: a {model} tokenizer with a {decoder:?} decoder; tinylm reads byte-level BPE tokenizers only",
                    path.display()
                ),
                "use a model whose tokenizer.json is byte-level BPE (GPT-2 style)",
            ));
        }
        Self::load(path)
    }

    fn load(path: &Path) -> Result<Tok> {
        let inner = Tokenizer::from_file(path).map_err(|e| {
            Error::hint(
                format!("cannot load tokenizer {}: {e}", path.display()),
                "rerun `tinylm prepare` to rebuild it",
            )
        })?;
        let n = inner.get_vocab_size(true);
        let mut byte_len = vec![0u32; n];
        for (token, id) in inner.get_vocab(true) {
            // Byte-level tokens spell one char per byte; the special token spells itself.
            if let Some(slot) = byte_len.get_mut(id as usize) {
                *slot = if token == EOT { EOT.len() as u32 } else { token.chars().count() as u32 };
            }
        }
        // u32::MAX: none (only `from_file_any` lets that through).
        let eot = inner.token_to_id(EOT).unwrap_or(u32::MAX);
        Ok(Tok { inner, byte_len, eot })
    }

    pub fn vocab_size(&self) -> usize {
        self.byte_len.len()
    }

    pub fn eot(&self) -> u32 {
        self.eot
    }

    pub fn byte_len(&self, id: u32) -> u32 {
        self.byte_len.get(id as usize).copied().unwrap_or(0)
    }

    /// Encode a large text. It is cut into ~64 KiB pieces at line ends (a fixed rule, so the
    /// ids never depend on thread count) and the pieces are encoded in parallel.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encs = self.inner.encode_batch(pieces(text), false).map_err(tk_err)?;
        Ok(encs.iter().flat_map(|e| e.get_ids().iter().copied()).collect())
    }

    /// Encode several documents at once (each cut into pieces as `encode` does), one id list
    /// per document.
    pub fn encode_docs(&self, docs: &[&str]) -> Result<Vec<Vec<u32>>> {
        let mut all = Vec::new();
        let mut counts = Vec::with_capacity(docs.len());
        for d in docs {
            let p = pieces(d);
            counts.push(p.len());
            all.extend(p);
        }
        let encs = self.inner.encode_batch(all, false).map_err(tk_err)?;
        let mut it = encs.iter();
        Ok(counts
            .into_iter()
            .map(|n| it.by_ref().take(n).flat_map(|e| e.get_ids().iter().copied()).collect())
            .collect())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(tk_err)
    }
}

/// A text cut into ~64 KiB pieces, each ending at a line end (or the text's end).
fn pieces(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + 65536).min(text.len());
        while end < text.len() && !text.is_char_boundary(end) {
            end += 1;
        }
        if end < text.len() {
            if let Some(nl) = text[end..].find('\n') {
                end += nl + 1;
            } else {
                end = text.len();
            }
        }
        out.push(&text[start..end]);
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_twice_is_byte_identical_and_round_trips() {
        let text = crate::corpus::generate(3, 60_000);
        let a = train(&text, 400).unwrap();
        let b = train(&text, 400).unwrap();
        assert_eq!(a, b, "tokenizer training must be deterministic");
        let dir = std::env::temp_dir().join(format!("tinylm-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("tokenizer.json");
        std::fs::write(&p, &a).unwrap();
        let tok = Tok::from_file(&p).unwrap();
        assert_eq!(tok.vocab_size(), 400);
        let sample = &text[..2000];
        let ids = tok.encode(sample).unwrap();
        assert!(ids.len() < sample.len() / 2, "BPE should compress: {} ids", ids.len());
        assert_eq!(tok.decode(&ids).unwrap(), sample);
        let bytes: u64 = ids.iter().map(|&i| tok.byte_len(i) as u64).sum();
        assert_eq!(bytes, sample.len() as u64, "byte lengths must add up to the text");
        assert!(ids.contains(&tok.eot()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
