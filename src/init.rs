//! `[init]`: a run that starts from another model (a fine-tune), and the record of that model.
//!
//! `init.from` names a tinylm checkpoint, a run directory (its newest checkpoint), a release
//! (its `model/`), or a Hugging Face Llama folder. The parent is pinned by `init.sha256`, the
//! SHA-256 of its `model.safetensors`. Its tokenizer is used as is (none is trained), its
//! dimensions fill the `[model]` keys and `tokenizer.vocab_size` the config leaves out, and a
//! given key that disagrees is refused. `init.optimizer = "carry"` continues a tinylm
//! checkpoint's AdamW moments and step: a resume under another name, with the same bits.

use crate::checkpoint::{self, MODEL_FILE, OPTIM_FILE, TOKENIZER_FILE};
use crate::config::Config;
use crate::error::{Error, IoContext, Result};
use crate::model::Dims;
use crate::modeldir::Kind;
use crate::tokenizer::Tok;
use crate::util::sha256_hex;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The manifest's record of the model a run started from. The chain goes on in `parent`
/// where the parent was itself a tinylm fine-tune.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParentRecord {
    /// "checkpoint", "run", "release" or "huggingface".
    pub kind: String,
    /// `init.from` as given.
    pub path: String,
    pub weights_sha256: String,
    pub tokenizer_sha256: String,
    /// "reset" or "carry".
    pub optimizer: String,
    /// The AdamW state carried over (`carry` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer_sha256: Option<String>,
    /// The parent checkpoint's step (a tinylm parent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u64>,
    /// SHA-256 of the parent run's manifest.json, its run name and numerics contract (a tinylm
    /// run or release whose manifest is at hand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numerics: Option<String>,
    /// The name a model card gives it (`base_model:`): an HF folder's `_name_or_path` when it
    /// has one, else the run name or the folder's name.
    pub name: String,
    /// The parent's weights licence where it is known (a release's record, an HF card), else
    /// empty.
    #[serde(default)]
    pub license: String,
    /// The parent's own parent, where it was a tinylm fine-tune.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Box<ParentRecord>>,
}

impl ParentRecord {
    /// Names of the chain, nearest first: this parent, its parent, ...
    pub fn chain(&self) -> Vec<&ParentRecord> {
        let mut out = vec![self];
        while let Some(p) = &out[out.len() - 1].parent {
            out.push(p);
        }
        out
    }

    pub fn is_tinylm(&self) -> bool {
        self.kind != "huggingface"
    }
}

/// A loaded parent: what training starts from.
pub struct Parent {
    pub record: ParentRecord,
    pub dims: Dims,
    /// The weights, by tinylm's (= Hugging Face's) names, in f32.
    pub tensors: BTreeMap<String, Tensor>,
    /// The bytes of its tokenizer.json.
    pub tokenizer: Vec<u8>,
    /// The bytes of its model.safetensors (shipped under a release's `parent/`).
    pub weights: Vec<u8>,
    /// AdamW state and step (`carry`): the optimizer tensors and their file's bytes.
    pub optim: Option<(BTreeMap<String, Tensor>, Vec<u8>, u64)>,
    /// The directory the weights were read from.
    pub dir: PathBuf,
}

/// Where the parent's files are: (kind, weights directory, the run record's directory).
fn locate(path: &Path) -> Result<(Kind, PathBuf, Option<PathBuf>)> {
    let (kind, wdir) = crate::modeldir::locate(path, "init.from: ")?;
    let has_manifest = |d: &Path| d.join(crate::manifest::FILE).is_file();
    let owner = match kind {
        Kind::Checkpoint => path.parent().filter(|o| has_manifest(o)).map(PathBuf::from),
        Kind::Release => Some(path.join("run")).filter(|r| has_manifest(r)),
        Kind::Run => Some(path.to_path_buf()),
        Kind::HuggingFace => None,
    };
    Ok((kind, wdir, owner))
}

/// The tokenizer of a parent: byte-level BPE with `<|endoftext|>` (documents are joined with
/// it), and exactly one token per row of the embedding.
fn check_tokenizer(path: &Path, vocab: usize) -> Result<Vec<u8>> {
    let tok = Tok::from_file_any(path)?;
    if tok.eot() == u32::MAX {
        return Err(Error::hint(
            format!("{}: the tokenizer has no {} token", path.display(), crate::corpus::EOT),
            "tinylm joins documents with <|endoftext|>; fine-tune from a model whose tokenizer has it",
        ));
    }
    if tok.vocab_size() != vocab {
        return Err(Error::hint(
            format!(
                "{}: the tokenizer has {} tokens, the model's embedding {vocab} rows",
                path.display(),
                tok.vocab_size()
            ),
            "tinylm needs one embedding row per token; this parent's tokenizer and weights do not match that",
        ));
    }
    fs::read(path).at(path)
}

/// Load the parent `init.from` names and check it against `init.sha256`. Nothing is written.
pub fn load(cfg: &Config, config_file: &Path) -> Result<Option<Parent>> {
    let Some(from) = &cfg.init.from else { return Ok(None) };
    load_from(cfg, Path::new(from), from, config_file).map(Some)
}

/// As `load`, reading the parent at `path` (a release's shipped `parent/`, or `--parent DIR`)
/// while recording `init.from` as given.
pub fn load_from(cfg: &Config, path: &Path, given: &str, config_file: &Path) -> Result<Parent> {
    let (kind, wdir, owner) = locate(path)?;
    let wpath = wdir.join(MODEL_FILE);
    if !wpath.is_file() {
        return Err(Error::hint(
            format!("init.from: {} not found", wpath.display()),
            "tinylm reads a parent's weights from one model.safetensors",
        ));
    }
    let weights = fs::read(&wpath).at(&wpath)?;
    let got = sha256_hex(&weights);
    match cfg.init.sha256.as_deref().map(str::to_lowercase) {
        None => {
            return Err(Error::Config {
                file: config_file.to_path_buf(),
                problems: vec![format!(
                    "`init.sha256` is required with init.from (pin the parent): its model.safetensors has sha256 {got}; add `sha256 = \"{got}\"` under [init], or --set init.sha256={got}"
                )],
            })
        }
        Some(want) if want != got => {
            return Err(Error::hint(
                format!(
                    "sha256 mismatch for the parent {}: expected {want} (init.sha256), found {got}",
                    wpath.display()
                ),
                "init.from is not the pinned parent: restore it, or if you mean to start from this model, set init.sha256 to its hash",
            ))
        }
        Some(_) => {}
    }
    let carry = cfg.init.optimizer == "carry";
    let mut record = ParentRecord {
        kind: kind.word().into(),
        path: given.to_string(),
        weights_sha256: got,
        tokenizer_sha256: String::new(),
        optimizer: cfg.init.optimizer.clone(),
        optimizer_sha256: None,
        step: None,
        manifest_sha256: None,
        run_name: None,
        numerics: None,
        name: path
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| given.to_string()),
        license: String::new(),
        parent: None,
    };
    if let Some(o) = &owner {
        let mp = o.join(crate::manifest::FILE);
        let m = crate::manifest::Manifest::load(o)?;
        record.manifest_sha256 = Some(crate::util::sha256_file(&mp)?);
        record.run_name = Some(m.run_name.clone());
        record.name = format!("tinylm-{}", m.run_name);
        record.numerics = m.sessions.last().map(|s| s.numerics.clone());
        record.parent = m.parent.clone().map(Box::new);
    }
    let (dims, tensors, optim) = match kind {
        Kind::Checkpoint | Kind::Run => {
            let l = checkpoint::load(&wdir)?;
            let pcfg = Config::from_source(&l.config_toml, &wdir.join(checkpoint::CONFIG_FILE), &[])?;
            let tok = Tok::from_file_any(&wdir.join(TOKENIZER_FILE))?;
            let dims = Dims::new(&pcfg.model, tok.vocab_size());
            record.step = Some(l.state.step);
            record.numerics = Some(l.state.numerics.clone());
            let optim = if carry {
                let op = wdir.join(OPTIM_FILE);
                let bytes = fs::read(&op).at(&op)?;
                record.optimizer_sha256 = Some(sha256_hex(&bytes));
                Some((l.optim, bytes, l.state.step))
            } else {
                None
            };
            (dims, l.model, optim)
        }
        Kind::Release | Kind::HuggingFace => {
            if carry {
                return Err(Error::Config {
                    file: config_file.to_path_buf(),
                    problems: vec![format!(
                        "`init.optimizer` = \"carry\": {} is a {}, which holds no optimizer state; only a tinylm checkpoint can give it (a release's checkpoints/step-NNNNNNNN, or a run directory), or use \"reset\"",
                        path.display(),
                        kind.name()
                    )],
                });
            }
            let (j, dims, _) = crate::modeldir::hf_config(&wdir)?;
            if kind == Kind::HuggingFace {
                if let Some(n) = j.get("_name_or_path").and_then(|v| v.as_str()).filter(|n| !n.is_empty()) {
                    record.name = n.to_string();
                }
                if let Some(l) = fs::read_to_string(path.join("README.md"))
                    .ok()
                    .and_then(|r| crate::release::card::card_license(&r))
                {
                    record.license = l;
                }
            } else if let Some(r) = fs::read(path.join(crate::release::RELEASE_JSON))
                .ok()
                .and_then(|b| serde_json::from_slice::<crate::release::ReleaseRecord>(&b).ok())
            {
                record.license = r.licenses.get("weights").cloned().unwrap_or_default();
            }
            (dims, crate::modeldir::f32_tensors(&weights, &wpath)?, None)
        }
    };
    let tokenizer = check_tokenizer(&wdir.join(TOKENIZER_FILE), dims.vocab)?;
    record.tokenizer_sha256 = sha256_hex(&tokenizer);
    // Every name and shape, with an error that names the file.
    crate::model::Llama::from_tensors(dims, &tensors, &wpath.display().to_string())?;
    Ok(Parent { record, dims, tensors, tokenizer, weights, optim, dir: wdir })
}

/// A parent shipped in a release's `parent/` (or named with `--parent`) by its files alone:
/// `model.safetensors`, `tokenizer.json`, and `optimizer.safetensors` for `carry`, checked
/// against the record; the dimensions are the run's own (they equal the parent's).
pub fn load_shipped(cfg: &Config, dir: &Path, rec: &ParentRecord) -> Result<Parent> {
    let read = |name: &str| -> Result<Vec<u8>> {
        let p = dir.join(name);
        if !p.is_file() {
            return Err(Error::hint(
                format!("the parent's {} is not in {}", name, dir.display()),
                "pass --parent DIR: the parent the run's manifest records",
            ));
        }
        fs::read(&p).at(&p)
    };
    let weights = read(MODEL_FILE)?;
    let tokenizer = read(TOKENIZER_FILE)?;
    for (what, got, want) in [
        (MODEL_FILE, sha256_hex(&weights), &rec.weights_sha256),
        (TOKENIZER_FILE, sha256_hex(&tokenizer), &rec.tokenizer_sha256),
    ] {
        if &got != want {
            return Err(Error::hint(
                format!(
                    "{}: sha256 {got} is not the parent the manifest records ({want})",
                    dir.join(what).display()
                ),
                "the parent was changed or is another model; pass --parent DIR with the recorded one",
            ));
        }
    }
    let tok_path = dir.join(TOKENIZER_FILE);
    let tok = Tok::from_file_any(&tok_path)?;
    let dims = Dims::new(&cfg.model, tok.vocab_size());
    let tensors = crate::modeldir::f32_tensors(&weights, &dir.join(MODEL_FILE))?;
    let optim = match (&rec.optimizer_sha256, rec.step) {
        (Some(want), Some(step)) => {
            let bytes = read(OPTIM_FILE)?;
            if &sha256_hex(&bytes) != want {
                return Err(Error::hint(
                    format!(
                        "{}: not the optimizer state the manifest records",
                        dir.join(OPTIM_FILE).display()
                    ),
                    "pass --parent DIR with the recorded parent",
                ));
            }
            Some((checkpoint::from_safetensors(&bytes, &dir.join(OPTIM_FILE))?, bytes, step))
        }
        _ => None,
    };
    Ok(Parent { record: rec.clone(), dims, tensors, tokenizer, weights, optim, dir: dir.to_path_buf() })
}

/// The parent's value of each key `[init]` may fill: the `[model]` keys and
/// `tokenizer.vocab_size`.
fn parent_values(d: &Dims) -> Vec<(&'static str, toml::Value)> {
    use toml::Value::{Float, Integer};
    vec![
        ("model.n_layer", Integer(d.n_layer as i64)),
        ("model.n_head", Integer(d.n_head as i64)),
        ("model.d_model", Integer(d.d_model as i64)),
        ("model.d_ff", Integer(d.d_ff as i64)),
        ("model.rope_theta", Float(d.rope_theta)),
        ("model.norm_eps", Float(d.norm_eps)),
        ("tokenizer.vocab_size", Integer(d.vocab as i64)),
    ]
}

fn slot_int<'a>(c: &'a mut Config, name: &str) -> Option<&'a mut u64> {
    match name {
        "n_layer" => Some(&mut c.model.n_layer),
        "n_head" => Some(&mut c.model.n_head),
        "d_model" => Some(&mut c.model.d_model),
        "d_ff" => Some(&mut c.model.d_ff),
        "vocab_size" => Some(&mut c.tokenizer.vocab_size),
        _ => None,
    }
}

/// Fill the keys the config leaves out from the parent, and refuse those it gives that
/// disagree, each named with both values. `given` holds the `section.key`s the file and
/// `--set` name.
pub fn apply(cfg: &mut Config, given: &BTreeSet<String>, parent: &Parent, config_file: &Path) -> Result<()> {
    let mut problems = Vec::new();
    for (key, want) in parent_values(&parent.dims) {
        let (_, name) = key.split_once('.').unwrap_or_default();
        match want {
            toml::Value::Integer(w) => {
                let w = w as u64;
                let Some(slot) = slot_int(cfg, name) else { continue };
                if given.contains(key) && *slot != w {
                    problems.push(format!(
                        "`{key}` is {} here, but the parent ({}) has {w}; leave it out to take the parent's",
                        slot, parent.record.path
                    ));
                }
                *slot = w;
            }
            toml::Value::Float(w) => {
                let slot =
                    if name == "rope_theta" { &mut cfg.model.rope_theta } else { &mut cfg.model.norm_eps };
                if given.contains(key) && *slot != w {
                    problems.push(format!(
                        "`{key}` is {} here, but the parent ({}) has {w}; leave it out to take the parent's",
                        slot, parent.record.path
                    ));
                }
                *slot = w;
            }
            _ => {}
        }
    }
    if problems.is_empty() {
        for (key, msg) in cfg.validate() {
            problems.push(format!("`{key}` (from the parent): {msg}"));
        }
    }
    if !problems.is_empty() {
        return Err(Error::Config { file: config_file.to_path_buf(), problems });
    }
    if let Some((_, _, step)) = &parent.optim {
        if *step >= cfg.train.steps {
            return Err(Error::Config {
                file: config_file.to_path_buf(),
                problems: vec![format!(
                    "`train.steps` = {} is not past the parent's step {step}: with init.optimizer = \"carry\" the run continues the parent's step count",
                    cfg.train.steps
                )],
            });
        }
    }
    Ok(())
}

/// Load a config for a command that trains or prepares: the file, the overrides, and, with
/// `[init]`, the parent (checked and applied). The parent comes back for the trainer.
pub fn load_config(path: &Path, overrides: &[String]) -> Result<(Config, Option<Parent>)> {
    let mut cfg = Config::load(path, overrides)?;
    let parent = attach(&mut cfg, path, overrides)?;
    Ok((cfg, parent))
}

/// The parent of a config loaded from `path` with `overrides`, applied to it (`apply`).
pub fn attach(cfg: &mut Config, path: &Path, overrides: &[String]) -> Result<Option<Parent>> {
    let Some(parent) = load(cfg, path)? else { return Ok(None) };
    let src = fs::read_to_string(path).at(path)?;
    let given = crate::config::given_keys(&src, overrides);
    apply(cfg, &given, &parent, path)?;
    Ok(Some(parent))
}

/// The tokenizer a fine-tune's data was encoded with (its parent's), for commands that
/// rebuild the token files without loading the parent's weights (audit, batches, verify
/// `--from`): the first of the release's `parent/` and `model/`, and the run's checkpoints,
/// whose tokenizer.json hashes to the recorded one. `None` for a run from scratch.
pub fn data_tokenizer(
    m: &crate::manifest::Manifest,
    run: &Path,
    release: Option<&Path>,
) -> Result<Option<Vec<u8>>> {
    let Some(rec) = &m.parent else { return Ok(None) };
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(r) = release {
        candidates.push(r.join("parent").join(TOKENIZER_FILE));
        candidates.push(r.join("model").join(TOKENIZER_FILE));
        candidates.extend(
            checkpoint::list(&r.join("checkpoints"))
                .unwrap_or_default()
                .into_iter()
                .map(|(_, d)| d.join(TOKENIZER_FILE)),
        );
    }
    candidates
        .extend(checkpoint::list(run).unwrap_or_default().into_iter().map(|(_, d)| d.join(TOKENIZER_FILE)));
    for c in &candidates {
        if let Ok(b) = fs::read(c) {
            if sha256_hex(&b) == rec.tokenizer_sha256 {
                return Ok(Some(b));
            }
        }
    }
    Err(Error::hint(
        format!(
            "{}: the run is a fine-tune of {} and no tokenizer.json with the parent's sha256 {} is at hand",
            run.display(),
            rec.path,
            rec.tokenizer_sha256
        ),
        "restore a checkpoint of the run, or the release's model/ or parent/",
    ))
}

/// The parent of a run being verified, from `--parent DIR`, a release's `parent/`, or the
/// run's `init.from`, in that order: its files checked against the manifest's record.
pub fn for_verify(
    cfg: &Config,
    rec: &ParentRecord,
    given: Option<&Path>,
    release: Option<&Path>,
) -> Result<Parent> {
    let dir: PathBuf = match (given, release, &cfg.init.from) {
        (Some(d), _, _) => d.to_path_buf(),
        (None, Some(r), _) => {
            let d = r.join("parent");
            if !d.join(MODEL_FILE).is_file() {
                return Err(Error::hint(
                    format!(
                        "{}: the release ships no parent/, and it is a fine-tune of {} (sha256 {})",
                        r.display(),
                        rec.path,
                        rec.weights_sha256
                    ),
                    "get that parent and pass --parent DIR (its checkpoint, run, release or Hugging Face folder)",
                ));
            }
            d
        }
        (None, None, Some(f)) => PathBuf::from(f),
        (None, None, None) => {
            return Err(Error::msg("the run's config has no init.from, but its manifest records a parent"))
        }
    };
    if !dir.is_dir() {
        return Err(Error::hint(
            format!(
                "the parent {} is not here (the run is a fine-tune of it, sha256 {})",
                dir.display(),
                rec.weights_sha256
            ),
            "pass --parent DIR with the parent the manifest records",
        ));
    }
    let wdir = if dir.join(MODEL_FILE).is_file() { dir } else { locate(&dir)?.1 };
    load_shipped(cfg, &wdir, rec)
}

/// `attach` for a resume. The weights come from the checkpoint resumed, so a parent that is no
/// longer at `init.from` is not needed: the parent then comes from the record in the manifest
/// of one of `runs` (the run resumed) with the tokenizer from its checkpoints, checked against
/// that record, and its dimensions from the run's resolved config.
pub fn attach_resume(
    cfg: &mut Config,
    path: &Path,
    overrides: &[String],
    runs: &[&Path],
) -> Result<Option<Parent>> {
    let err = match attach(cfg, path, overrides) {
        Ok(p) => return Ok(p),
        Err(e) => e,
    };
    // The parent of a resumed checkpoint's own run (`--resume RUN/step-N`).
    let owners: Vec<PathBuf> = runs.iter().filter_map(|r| r.parent().map(PathBuf::from)).collect();
    let runs: Vec<&Path> = runs.iter().copied().chain(owners.iter().map(PathBuf::as_path)).collect();
    let pin = cfg.init.sha256.as_deref().map(str::to_lowercase);
    for run in runs {
        let Ok(m) = crate::manifest::Manifest::load(run) else { continue };
        let Some(rec) = m.parent.clone() else { continue };
        if pin.as_deref() != Some(rec.weights_sha256.as_str()) {
            continue;
        }
        let Ok(Some(tokenizer)) = data_tokenizer(&m, run, None) else { continue };
        let Ok(rcfg) = Config::load(&run.join(checkpoint::CONFIG_FILE), &[]) else { continue };
        let dims = Dims::new(&rcfg.model, rcfg.tokenizer.vocab_size as usize);
        let parent = Parent {
            record: rec,
            dims,
            tensors: BTreeMap::new(),
            tokenizer,
            weights: Vec::new(),
            optim: None,
            dir: run.to_path_buf(),
        };
        let src = fs::read_to_string(path).at(path)?;
        apply(cfg, &crate::config::given_keys(&src, overrides), &parent, path)?;
        eprintln!(
            "note: the parent {} cannot be loaded from init.from; the checkpoint holds the weights, so the run resumes with the parent as {} records it",
            parent.record.path,
            run.join(crate::manifest::FILE).display()
        );
        return Ok(Some(parent));
    }
    Err(err)
}
