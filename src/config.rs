//! The run's configuration: one TOML file fully determines a run.
//!
//! Loading is done in one pass that collects every problem: syntax (with the line toml gives),
//! unknown sections and keys, wrong types and bad values, each naming the key and the line.
//! `--set section.key=value` overrides are typed and checked exactly like the file.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub run: RunConfig,
    pub data: DataConfig,
    pub tokenizer: TokenizerConfig,
    pub model: ModelConfig,
    pub optim: OptimConfig,
    pub train: TrainConfig,
    pub eval: EvalConfig,
    pub checkpoint: CheckpointConfig,
    /// Start from another model (a fine-tune); absent from a from-scratch run's resolved config.
    #[serde(skip_serializing_if = "InitConfig::is_unset")]
    pub init: InitConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InitConfig {
    /// A tinylm checkpoint or run directory, a release, or a Hugging Face Llama folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// SHA-256 of that model's model.safetensors (required with `from`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// "reset" (a fresh AdamW) or "carry" (a tinylm checkpoint's moments and step).
    pub optimizer: String,
}

impl Default for InitConfig {
    fn default() -> Self {
        Self { from: None, sha256: None, optimizer: "reset".into() }
    }
}

impl InitConfig {
    pub fn is_unset(&self) -> bool {
        *self == InitConfig::default()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Names the run directory `checkpoints/<name>/`.
    pub name: String,
    /// Root of every random stream (init, batches, samples).
    pub seed: u64,
    /// Threads for matrix multiplies; 0 means all cores. Never changes the weights.
    pub threads: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// "builtin" (generated stories), "file" (data.path), "url" (data.url cached at data.path)
    /// or "files" (data.paths: files, directories and globs; see docs/data.md).
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The files source's entries: files, directories (walked recursively) and globs, relative
    /// to the working directory, in the order given.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// The field of a JSONL line, or the column of a Parquet file, that holds the text.
    pub text_field: String,
    /// Where prepared data (corpus cache, tokenizer, token files) lives.
    pub dir: String,
    /// The last `val_fraction` of the corpus (cut at a line start) is the validation split.
    pub val_fraction: f64,
    /// Seed of the built-in story generator (independent of run.seed).
    pub builtin_seed: u64,
    /// Size of the built-in corpus in bytes (whole stories, at least this many bytes).
    pub builtin_bytes: u64,
    /// The directory `data.paths` are read against when it is not the working directory: a
    /// release's or `--corpus` folder in a replay, which also confines the files to it. Never
    /// in a config file.
    #[serde(skip)]
    pub base: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenizerConfig {
    /// Byte-level BPE vocabulary size, including 256 byte tokens and `<|endoftext|>`.
    pub vocab_size: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub n_layer: u64,
    pub n_head: u64,
    pub d_model: u64,
    /// Hidden width of the SwiGLU MLP.
    pub d_ff: u64,
    pub rope_theta: f64,
    pub norm_eps: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub lr: f64,
    /// Floor of the cosine decay.
    pub min_lr: f64,
    pub warmup_steps: u64,
    /// Length of the cosine schedule; 0 means train.steps. Set it to stop or extend a run
    /// at a different train.steps without changing the schedule (and so the weights).
    pub schedule_steps: u64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay, applied to matrices only (not norm gains).
    pub weight_decay: f64,
    /// Clip the global gradient norm to this; 0 disables clipping.
    pub grad_clip: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub steps: u64,
    /// Sequences per micro-batch.
    pub batch_size: u64,
    /// Context length in tokens.
    pub context: u64,
    /// Micro-batches per optimizer step.
    pub grad_accum: u64,
    /// Plain progress line cadence when stderr is not a terminal.
    pub log_every: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Evaluate every N steps (and always at the end); 0 means only at the end.
    pub every: u64,
    /// Number of fixed validation batches (each train.batch_size x train.context).
    pub batches: u64,
    pub prompt: String,
    pub sample_tokens: u64,
    pub temperature: f64,
    pub top_k: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Write a checkpoint every N steps (and always at the end); 0 means only at the end.
    pub every: u64,
    /// Keep the newest N checkpoints; 0 keeps all.
    pub keep_last: u64,
    /// Also keep every checkpoint whose step is a multiple of this; 0 disables.
    pub keep_every: u64,
}

/// Ranks of this job on this host (`dist`): `run.threads = 0` then means this host's cores
/// split among them, not all of them for each.
pub static RANKS_ON_HOST: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);

/// The largest vocabulary: ids past 65,536 are stored as u32 (`tokens`).
pub const MAX_VOCAB: u64 = 1 << 20;

impl Default for RunConfig {
    fn default() -> Self {
        Self { name: "tiny".into(), seed: 1337, threads: 0 }
    }
}
impl Default for DataConfig {
    fn default() -> Self {
        Self {
            source: "builtin".into(),
            path: None,
            sha256: None,
            url: None,
            paths: Vec::new(),
            text_field: "text".into(),
            dir: "data".into(),
            val_fraction: 0.1,
            builtin_seed: 0,
            builtin_bytes: 3_000_000,
            base: None,
        }
    }
}
impl Default for TokenizerConfig {
    fn default() -> Self {
        Self { vocab_size: 512 }
    }
}
impl Default for ModelConfig {
    fn default() -> Self {
        Self { n_layer: 4, n_head: 4, d_model: 128, d_ff: 352, rope_theta: 10000.0, norm_eps: 1e-5 }
    }
}
impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            min_lr: 1e-4,
            warmup_steps: 100,
            schedule_steps: 0,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            grad_clip: 1.0,
        }
    }
}
impl Default for TrainConfig {
    fn default() -> Self {
        Self { steps: 2000, batch_size: 16, context: 128, grad_accum: 1, log_every: 10 }
    }
}
impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            every: 200,
            batches: 16,
            prompt: "Once upon a time".into(),
            sample_tokens: 80,
            temperature: 0.8,
            top_k: 40,
        }
    }
}
impl Default for CheckpointConfig {
    fn default() -> Self {
        Self { every: 500, keep_last: 0, keep_every: 0 }
    }
}
/// Largest `train.steps`: checkpoint directories are named `step-` + 8 digits.
pub const MAX_STEPS: u64 = 99_999_999;
/// Largest built-in corpus (1 GiB).
pub const MAX_BUILTIN_BYTES: u64 = 1 << 30;

/// A run name becomes a directory name: no separators, no `.`/`..`, no leading dot (hidden,
/// and the prefix tinylm uses for its temp files), no control characters.
pub fn check_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > 200 {
        return Err("must be a name of 1 to 200 bytes".into());
    }
    if name.starts_with('.') {
        return Err(format!("must not start with a dot, found {name:?}"));
    }
    if name.contains(['/', '\\']) || name.chars().any(char::is_control) {
        return Err(format!("must be a plain name without slashes or control characters, found {name:?}"));
    }
    Ok(())
}

/// Physical memory in bytes (MemTotal), or 16 GiB where it cannot be read.
pub fn available_memory() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map(|kib| kib * 1024.0)
        .unwrap_or(16.0 * (1u64 << 30) as f64)
}

/// Keys that may be absent (no default value); all strings.
const OPTIONAL_KEYS: &[&str] =
    &["data.path", "data.sha256", "data.url", "init.from", "init.sha256", "init.optimizer"];

/// Every known `section.key` with the TOML type it takes, derived from the defaults so the
/// schema can never drift from the structs.
fn schema() -> BTreeMap<String, &'static str> {
    let mut out = BTreeMap::new();
    let table = toml::Table::try_from(Config::default()).unwrap_or_default();
    for (section, v) in &table {
        if let toml::Value::Table(t) = v {
            for (k, v) in t {
                out.insert(format!("{section}.{k}"), v.type_str());
            }
        }
    }
    for k in OPTIONAL_KEYS {
        out.insert((*k).to_string(), "string");
    }
    // Absent by default (empty), so not in the defaults' table.
    out.insert("data.paths".to_string(), "array");
    out
}

/// Where `[section] key = ...` sits in the source, 1-based, for error messages.
fn line_of(src: &str, section: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    for (i, line) in src.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') && t.ends_with(']') {
            current = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            if key.is_empty() && current == section {
                return Some(i + 1);
            }
            continue;
        }
        if !key.is_empty() && current == section {
            if let Some((k, _)) = t.split_once('=') {
                if k.trim() == key {
                    return Some(i + 1);
                }
            }
        }
    }
    None
}

/// The `section.key`s a config file and its overrides name (not the defaults): what `[init]`
/// may fill from a parent.
pub fn given_keys(src: &str, overrides: &[String]) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    if let Ok(t) = toml::from_str::<toml::Table>(src) {
        for (s, v) in &t {
            if let toml::Value::Table(t) = v {
                out.extend(t.keys().map(|k| format!("{s}.{k}")));
            }
        }
    }
    for o in overrides {
        if let Ok((s, k, _)) = parse_override(o) {
            out.insert(format!("{s}.{k}"));
        }
    }
    out
}

/// One `--set section.key=value`. The value is read as a TOML value (so `3`, `1e-3`, `true`,
/// `"x"` have their TOML types); anything that is not valid TOML is taken as a bare string.
pub fn parse_override(s: &str) -> std::result::Result<(String, String, toml::Value), String> {
    let (key, raw) = s.split_once('=').ok_or_else(|| format!("--set {s:?}: expected section.key=value"))?;
    let key = key.trim();
    let (section, name) = key
        .split_once('.')
        .ok_or_else(|| format!("--set {s:?}: key must be section.key, e.g. train.steps"))?;
    let raw = raw.trim();
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    };
    Ok((section.to_string(), name.to_string(), value))
}

impl Config {
    /// Read, override, check and validate a config file. All problems come back together.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Config> {
        let src = std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::hint(
                    format!("config file {} not found", path.display()),
                    "pass an existing file to --config, e.g. configs/tiny.toml",
                )
            } else {
                Error::Io { path: path.to_path_buf(), source: e }
            }
        })?;
        Self::from_source(&src, path, overrides)
    }

    pub fn from_source(src: &str, path: &Path, overrides: &[String]) -> Result<Config> {
        let bad = |problems: Vec<String>| Error::Config { file: path.to_path_buf(), problems };
        let mut table: toml::Table = toml::from_str(src)
            .map_err(|e| bad(vec![format!("TOML syntax: {}", e.to_string().trim_end())]))?;
        let schema = schema();
        let mut problems = Vec::new();
        let at = |section: &str, key: &str| match line_of(src, section, key) {
            Some(l) => format!(" (line {l})"),
            None => String::new(),
        };

        // Overrides first, so they are checked by the same code as the file.
        let mut from_cli = BTreeMap::new();
        for o in overrides {
            match parse_override(o) {
                Ok((section, key, value)) => {
                    let entry = table
                        .entry(section.clone())
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                    match entry {
                        toml::Value::Table(t) => {
                            t.insert(key.clone(), value);
                            from_cli.insert(format!("{section}.{key}"), ());
                        }
                        _ => problems.push(format!("--set {o}: [{section}] is not a table")),
                    }
                }
                Err(e) => problems.push(e),
            }
        }

        let sections: std::collections::BTreeSet<&str> =
            schema.keys().filter_map(|k| k.split_once('.').map(|(s, _)| s)).collect();
        // Keys already reported are dropped (their defaults stand in), so the value checks
        // below still run and every problem of the file is reported in one go.
        let mut reported: std::collections::BTreeSet<String> = Default::default();
        let mut drop_sections = Vec::new();
        let mut drop_keys = Vec::new();
        for (section, v) in table.iter_mut() {
            if !sections.contains(section.as_str()) {
                problems.push(format!(
                    "unknown section [{section}]{}; known sections: {}",
                    at(section, ""),
                    sections.iter().copied().collect::<Vec<_>>().join(", ")
                ));
                drop_sections.push(section.clone());
                continue;
            }
            let toml::Value::Table(t) = v else {
                problems.push(format!("`{section}` must be a table [{section}]"));
                drop_sections.push(section.clone());
                continue;
            };
            for (key, value) in t.iter_mut() {
                let full = format!("{section}.{key}");
                let origin =
                    if from_cli.contains_key(&full) { " (from --set)".to_string() } else { at(section, key) };
                match schema.get(&full) {
                    None => {
                        let known: Vec<&str> = schema
                            .keys()
                            .filter(|k| k.starts_with(&format!("{section}.")))
                            .map(|k| &k[section.len() + 1..])
                            .collect();
                        problems.push(format!(
                            "unknown key `{full}`{origin}; known keys in [{section}]: {}",
                            known.join(", ")
                        ));
                        drop_keys.push((section.clone(), key.clone()));
                    }
                    Some(&want) => {
                        // An integer is fine where a float is expected (lr = 1).
                        if want == "float" {
                            if let toml::Value::Integer(i) = value {
                                *value = toml::Value::Float(*i as f64);
                            }
                        }
                        let got = value.type_str();
                        if got != want {
                            let quote = if want == "string" && from_cli.contains_key(&full) {
                                format!(" (quote it: --set '{full}=\"{value}\"')")
                            } else {
                                String::new()
                            };
                            problems.push(format!(
                                "`{full}`{origin}: expected {want}, found {got} `{value}`{quote}"
                            ));
                            drop_keys.push((section.clone(), key.clone()));
                        } else if want == "integer" && value.as_integer().is_some_and(|i| i < 0) {
                            problems.push(format!("`{full}`{origin}: must not be negative, found {value}"));
                            drop_keys.push((section.clone(), key.clone()));
                        }
                    }
                }
            }
        }
        for s in &drop_sections {
            table.remove(s);
        }
        for (s, k) in &drop_keys {
            if let Some(toml::Value::Table(t)) = table.get_mut(s) {
                t.remove(k);
            }
            reported.insert(format!("{s}.{k}"));
        }
        let cfg: Config = match toml::Value::Table(table).try_into() {
            Ok(c) => c,
            Err(e) => {
                let e: toml::de::Error = e;
                problems.push(e.to_string().trim_end().to_string());
                return Err(bad(problems));
            }
        };
        for (key, msg) in cfg.validate() {
            if reported.contains(key) {
                continue;
            }
            let (s, k) = key.split_once('.').unwrap_or((key, ""));
            let origin = if from_cli.contains_key(key) { " (from --set)".to_string() } else { at(s, k) };
            problems.push(format!("`{key}`{origin}: {msg}"));
        }
        if !problems.is_empty() {
            return Err(bad(problems));
        }
        Ok(cfg)
    }

    /// Value checks, all at once: (key, problem). Float checks are written `!(x > 0.0)` on
    /// purpose: NaN fails them; every float must also be finite as an f32, since that is the
    /// precision it is used in.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut p: Vec<(&'static str, String)> = Vec::new();
        // Integers: at least 1 and at most a bound far beyond any CPU run (so sizes never
        // overflow and the memory estimate below can speak).
        let mut range = |key: &'static str, v: u64, lo: u64, hi: u64| {
            if v < lo || v > hi {
                p.push((key, format!("must be in {lo}..={hi}, found {v}")));
            }
        };
        range("model.n_layer", self.model.n_layer, 1, 1024);
        range("model.n_head", self.model.n_head, 1, 1024);
        range("model.d_model", self.model.d_model, 1, 65536);
        range("model.d_ff", self.model.d_ff, 1, 1 << 20);
        // Checkpoint directories are named with 8 digits.
        range("train.steps", self.train.steps, 1, MAX_STEPS);
        range("train.batch_size", self.train.batch_size, 1, 1 << 20);
        range("train.context", self.train.context, 1, 1 << 20);
        range("train.grad_accum", self.train.grad_accum, 1, 1 << 20);
        range("train.log_every", self.train.log_every, 1, MAX_STEPS);
        range("eval.batches", self.eval.batches, 1, 1 << 20);
        range("eval.sample_tokens", self.eval.sample_tokens, 0, 1 << 20);
        range("run.threads", self.run.threads, 0, 1024);
        range("optim.warmup_steps", self.optim.warmup_steps, 0, MAX_STEPS);
        range("optim.schedule_steps", self.optim.schedule_steps, 0, MAX_STEPS);
        let m = &self.model;
        if m.n_head > 0 && !m.d_model.is_multiple_of(m.n_head) {
            p.push((
                "model.d_model",
                format!("{} is not divisible by model.n_head = {}", m.d_model, m.n_head),
            ));
        } else if m.n_head > 0 && !(m.d_model / m.n_head).is_multiple_of(2) {
            p.push(("model.d_model", "head size d_model / n_head must be even for rotary embeddings".into()));
        }
        let finite = |v: f64| v.is_finite() && (v as f32).is_finite();
        let mut float = |key: &'static str, v: f64, ok: bool, want: &str| {
            if !(ok && finite(v)) {
                p.push((key, format!("must be {want}, found {v}")));
            }
        };
        float("model.rope_theta", m.rope_theta, m.rope_theta > 0.0, "a finite number > 0");
        float("model.norm_eps", m.norm_eps, m.norm_eps > 0.0 && m.norm_eps < 1.0, "in (0, 1)");
        let o = &self.optim;
        float("optim.lr", o.lr, o.lr > 0.0, "a finite number > 0");
        float("optim.min_lr", o.min_lr, o.min_lr >= 0.0 && o.min_lr <= o.lr, "in [0, optim.lr]");
        float("optim.beta1", o.beta1, (0.0..1.0).contains(&o.beta1), "in [0, 1)");
        float("optim.beta2", o.beta2, (0.0..1.0).contains(&o.beta2), "in [0, 1)");
        float("optim.eps", o.eps, o.eps > 0.0 && o.eps < 1.0, "in (0, 1)");
        float("optim.weight_decay", o.weight_decay, o.weight_decay >= 0.0, "a finite number >= 0");
        float(
            "optim.grad_clip",
            o.grad_clip,
            o.grad_clip >= 0.0,
            "a finite number >= 0 (0 disables clipping)",
        );
        let d = &self.data;
        float(
            "data.val_fraction",
            d.val_fraction,
            d.val_fraction > 0.0 && d.val_fraction < 0.5,
            "in (0, 0.5)",
        );
        let t = self.eval.temperature;
        float("eval.temperature", t, t >= 0.0, "a finite number >= 0 (0 is greedy)");
        let v = self.tokenizer.vocab_size;
        if !(258..=MAX_VOCAB).contains(&v) {
            p.push((
                "tokenizer.vocab_size",
                format!("{v} is out of range 258..={MAX_VOCAB} (256 bytes + <|endoftext|> + merges)"),
            ));
        }
        match d.source.as_str() {
            "builtin" => {
                if !(10_000..=MAX_BUILTIN_BYTES).contains(&d.builtin_bytes) {
                    p.push((
                        "data.builtin_bytes",
                        format!("must be in 10000..={MAX_BUILTIN_BYTES}, found {}", d.builtin_bytes),
                    ));
                }
            }
            "file" => {
                if d.path.is_none() {
                    p.push(("data.path", "is required when data.source = \"file\"".into()));
                }
                if d.sha256.is_none() {
                    p.push((
                        "data.sha256",
                        "is required when data.source = \"file\" (pin the corpus: run `sha256sum FILE`)"
                            .into(),
                    ));
                }
            }
            "url" => {
                if d.url.is_none() {
                    p.push(("data.url", "is required when data.source = \"url\"".into()));
                }
                if d.sha256.is_none() {
                    p.push(("data.sha256", "is required when data.source = \"url\"".into()));
                }
            }
            "files" => {
                if d.paths.is_empty() {
                    p.push((
                        "data.paths",
                        "is required when data.source = \"files\" (files, directories or globs)".into(),
                    ));
                }
                if d.paths.iter().any(|x| x.is_empty() || x.contains('\0')) {
                    p.push(("data.paths", "must hold non-empty paths".into()));
                }
                if d.text_field.is_empty() {
                    p.push(("data.text_field", "must name a JSONL field or Parquet column".into()));
                }
            }
            other => p.push((
                "data.source",
                format!("must be \"builtin\", \"file\", \"url\" or \"files\", found {other:?}"),
            )),
        }
        if let Some(h) = &d.sha256 {
            if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
                p.push(("data.sha256", "must be 64 hex digits".into()));
            }
        }
        if let Some(u) = &d.url {
            if !(u.starts_with("http://") || u.starts_with("https://")) || u.chars().any(char::is_control) {
                p.push(("data.url", format!("must be an http:// or https:// address, found {u:?}")));
            }
        }
        for (key, val) in [("data.path", d.path.as_deref()), ("data.dir", Some(d.dir.as_str()))] {
            if let Some(v) = val {
                if v.is_empty() || v.contains('\0') {
                    p.push((key, "must be a non-empty path".into()));
                }
            }
        }
        let i = &self.init;
        if !["reset", "carry"].contains(&i.optimizer.as_str()) {
            p.push(("init.optimizer", format!("must be \"reset\" or \"carry\", found {:?}", i.optimizer)));
        }
        match (&i.from, &i.sha256) {
            (None, Some(_)) => p.push(("init.sha256", "is set without init.from".into())),
            (None, None) if i.optimizer != "reset" => {
                p.push(("init.optimizer", "is set without init.from".into()))
            }
            (Some(f), _) if f.is_empty() || f.contains('\0') => {
                p.push(("init.from", "must be a non-empty path".into()))
            }
            _ => {}
        }
        if let Some(h) = &i.sha256 {
            if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
                p.push(("init.sha256", "must be 64 hex digits".into()));
            }
        }
        if let Err(why) = check_name(&self.run.name) {
            p.push(("run.name", why));
        }
        p
    }

    /// The training memory estimate against this machine, for the commands that train or
    /// re-execute training (`train`, `prepare`, `verify`). Reading a config (to sample,
    /// release, audit or replay batches) never checks it: those need far less, and a run
    /// trained on a bigger machine must stay usable on a smaller one.
    pub fn check_memory(&self, file: &Path) -> Result<()> {
        match self.memory_problem(available_memory()) {
            None => Ok(()),
            Some((key, msg)) => {
                Err(Error::Config { file: file.to_path_buf(), problems: vec![format!("`{key}`: {msg}")] })
            }
        }
    }

    /// Parameters of the model (with a vocabulary of `tokenizer.vocab_size`).
    pub fn param_count(&self) -> f64 {
        let m = &self.model;
        let (v, c, f, l) =
            (self.tokenizer.vocab_size as f64, m.d_model as f64, m.d_ff as f64, m.n_layer as f64);
        2.0 * v * c + c + l * (4.0 * c * c + 3.0 * c * f + 2.0 * c)
    }

    /// A rough estimate of peak memory in bytes, by part: (parameters with gradients, AdamW
    /// moments and checkpoint serialization; activations kept for backward of one
    /// micro-batch; corpus and tokenizer training).
    pub fn memory_estimate(&self) -> (f64, f64, f64) {
        let m = &self.model;
        let (b, t) = (self.train.batch_size as f64, self.train.context as f64);
        let (c, f, h, l) = (m.d_model as f64, m.d_ff as f64, m.n_head as f64, m.n_layer as f64);
        let v = self.tokenizer.vocab_size as f64;
        let params = self.param_count() * 4.0 * 7.0;
        // Per token and layer: ~16 d_model-wide and ~6 d_ff-wide tensors plus ~4 attention rows
        // of length T per head; plus ~4 vocab-wide tensors for logits and the loss.
        let acts = b * t * (l * (16.0 * c + 6.0 * f + 4.0 * h * t) + 4.0 * v) * 4.0;
        let corpus = match self.data.source.as_str() {
            "builtin" => self.data.builtin_bytes as f64 * 24.0,
            _ => 0.0,
        };
        (params, acts, corpus)
    }

    /// The memory estimate against what the machine has, naming the key that dominates.
    fn memory_problem(&self, avail: f64) -> Option<(&'static str, String)> {
        let (params, acts, corpus) = self.memory_estimate();
        let total = params + acts + corpus;
        if total <= avail {
            return None;
        }
        let gib = |x: f64| format!("{:.1} GiB", x / (1u64 << 30) as f64);
        let key = if params >= acts && params >= corpus {
            "model.d_model"
        } else if acts >= corpus {
            "train.batch_size"
        } else {
            "data.builtin_bytes"
        };
        Some((
            key,
            format!(
                "this run needs about {} (parameters and optimizer {}, activations {}, corpus {}) but the machine has {}; make the model, train.batch_size x train.context or the corpus smaller",
                gib(total),
                gib(params),
                gib(acts),
                gib(corpus),
                gib(avail)
            ),
        ))
    }

    /// The resolved config as TOML: every key explicit, so the file alone reproduces the run.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// Steps of the cosine schedule.
    pub fn schedule_steps(&self) -> u64 {
        if self.optim.schedule_steps == 0 {
            self.train.steps
        } else {
            self.optim.schedule_steps
        }
    }

    pub fn threads(&self) -> usize {
        if self.run.threads == 0 {
            let all = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
            match RANKS_ON_HOST.load(std::sync::atomic::Ordering::Relaxed) {
                0 | 1 => all,
                n => (all / n).max(1),
            }
        } else {
            self.run.threads as usize
        }
    }

    /// Flattened `section.key -> value` view, for diffs between configs.
    pub fn flat(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        if let Ok(t) = toml::Table::try_from(self) {
            for (s, v) in t {
                if let toml::Value::Table(t) = v {
                    for (k, v) in t {
                        out.insert(format!("{s}.{k}"), v.to_string());
                    }
                }
            }
        }
        out
    }

    pub fn default_run_dir(&self) -> PathBuf {
        Path::new("checkpoints").join(&self.run.name)
    }
}

/// Keys that cannot change the weights and may differ between a run and its resume.
pub fn is_result_neutral(key: &str) -> bool {
    matches!(
        key,
        "run.name" | "run.threads" | "data.dir" | "data.path" | "data.url" | "train.log_every" | "init.from"
    ) || key.starts_with("eval.")
        || key.starts_with("checkpoint.")
        // train.steps only says where to stop; the schedule length is compared separately.
        || key == "train.steps"
        || key == "optim.schedule_steps"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(src: &str, sets: &[&str]) -> Result<Config> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Config::from_source(src, Path::new("test.toml"), &sets)
    }

    fn problems(src: &str, sets: &[&str]) -> Vec<String> {
        match load(src, sets) {
            Err(Error::Config { problems, .. }) => problems,
            other => panic!("expected config error, got {other:?}"),
        }
    }

    #[test]
    fn every_shipped_config_parses_and_validates() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                Config::load(&p, &[]).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                n += 1;
            }
        }
        assert!(n >= 2, "expected configs/tiny.toml and configs/shakespeare.toml");
    }

    #[test]
    fn empty_file_gives_defaults_and_resolved_round_trips() {
        let c = load("", &[]).unwrap();
        assert_eq!(c, Config::default());
        let again = load(&c.to_toml(), &[]).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn all_problems_are_reported_together_with_lines() {
        let src = "[run]\nseed = 1\nbogus = 2\n\n[train]\nsteps = \"many\"\n\n[nope]\nx = 1\n";
        let p = problems(src, &[]);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p.iter().any(|m| m.contains("`run.bogus` (line 3)")), "{p:?}");
        assert!(
            p.iter().any(|m| m.contains("`train.steps` (line 6): expected integer, found string")),
            "{p:?}"
        );
        assert!(p.iter().any(|m| m.contains("unknown section [nope] (line 8)")), "{p:?}");
    }

    #[test]
    fn value_problems_are_reported_together() {
        let p = problems("[model]\nn_head = 3\n[optim]\nlr = -1.0\n", &[]);
        assert!(
            p.iter().any(|m| m.starts_with("`model.d_model`: 128 is not divisible by model.n_head = 3")),
            "{p:?}"
        );
        assert!(p.iter().any(|m| m.starts_with("`optim.lr` (line 4)")), "{p:?}");
    }

    #[test]
    fn overrides_are_typed_and_checked() {
        let c = load("", &["train.steps=7", "optim.lr=0.01", "run.name=abc", "data.path=x/y.txt"]).unwrap();
        assert_eq!(c.train.steps, 7);
        assert_eq!(c.optim.lr, 0.01);
        assert_eq!(c.run.name, "abc");
        assert_eq!(c.data.path.as_deref(), Some("x/y.txt"));
        let p = problems("", &["train.steps=lots", "train.nope=1", "noequals"]);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p.iter().any(|m| m.contains("`train.steps` (from --set): expected integer")), "{p:?}");
        // An integer where a float is expected is accepted.
        assert_eq!(load("", &["optim.lr=1"]).unwrap().optim.lr, 1.0);
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let p = problems("[run]\nseed = = 3\n", &[]);
        assert!(p[0].contains("line 2"), "{p:?}");
    }
}
