//! Data: source -> corpus (hashed) -> deterministic split -> tokenizer -> token files.
//!
//! Layout under `data.dir`:
//! ```text
//! <dataset>/corpus.txt                     built-in corpus (file/url sources stay where they are)
//! <dataset>/tok-v<vocab>-<key>/tokenizer.json, train.bin, val.bin, meta.json
//! ```
//! `<key>` hashes every input of the tokenizer and token files (corpus hash, split, vocab), so a
//! changed input lands in a new directory and unchanged inputs reuse the files, after their
//! hashes are checked against meta.json.
//!
//! A `files` source (`data.paths`: files, directories, globs; see `sources`) is streamed: it
//! lands in `files-<pin>/tok-v<vocab>-<key>/`, beside a copy of its listing (`files.sha256`).
//!
//! The split of a one-file source: the last `val_fraction` of the corpus bytes is validation,
//! with the cut moved forward to the next line start. The split of a files source: whole
//! documents, each by a hash of (listing path, index in its file) (`sources::val_key`), so it
//! depends on neither thread count nor file system. Token ids are little-endian u16 while the
//! vocabulary fits 65,536, u32 above (`tokens`).

use crate::config::Config;
use crate::corpus;
use crate::error::{Error, IoContext, Result};
use crate::rng;
use crate::sources;
use crate::tokenizer::{self, Tok};
use crate::tokens::{self, Dtype, Tokens};
use crate::util::{sha256_file, sha256_hex, temp_sibling, write_atomic};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

const PREP_FORMAT: u32 = 1;
const TOKENIZER_JSON: &str = "tokenizer.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitMeta {
    pub tokens: u64,
    pub bytes: u64,
    pub sha256: String,
}

/// The meta file beside the token files; also what the manifest records of the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub format: u32,
    pub corpus_sha256: String,
    pub corpus_bytes: u64,
    pub val_fraction: f64,
    pub vocab_size: u64,
    /// The vocabulary the tokenizer really has: `vocab_size`, or fewer when the corpus ran out
    /// of pairs to merge (0 in files written before this was recorded).
    #[serde(default)]
    pub tokenizer_vocab_size: u64,
    /// `tokenizer::RECIPE` and the `tokenizers` crate version that made these files; files
    /// from another recipe or version are rebuilt, never reused.
    #[serde(default)]
    pub tokenizer_recipe: String,
    #[serde(default)]
    pub tokenizers_version: String,
    pub tokenizer_sha256: String,
    pub dtype: String,
    pub train: SplitMeta,
    pub val: SplitMeta,
    /// A files source: every file, in listing order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileRecord>,
}

/// One file of a files source, as prepared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRecord {
    /// The listing path (`sources::list`).
    pub path: String,
    /// Size and SHA-256 as stored (compressed files: of the compressed bytes).
    pub bytes: u64,
    pub sha256: String,
    pub documents: u64,
    pub val_documents: u64,
    /// Tokens it contributed to each split, each document's closing `<|endoftext|>` included.
    pub train_tokens: u64,
    pub val_tokens: u64,
}

/// What a run's manifest records of its data: the corpus pin, the tokenizer and the token
/// files, and for a files source every file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataRecord {
    pub source: String,
    pub corpus_sha256: String,
    pub corpus_bytes: u64,
    pub tokenizer_sha256: String,
    pub train_tokens_sha256: String,
    pub val_tokens_sha256: String,
    pub train_tokens: u64,
    pub val_tokens: u64,
    #[serde(default = "u16le", skip_serializing_if = "is_u16le")]
    pub token_dtype: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileRecord>,
}

fn u16le() -> String {
    "u16le".into()
}
fn is_u16le(s: &str) -> bool {
    s == "u16le"
}

impl DataRecord {
    pub fn from_meta(source: &str, m: &Meta) -> DataRecord {
        DataRecord {
            source: source.to_string(),
            corpus_sha256: m.corpus_sha256.clone(),
            corpus_bytes: m.corpus_bytes,
            tokenizer_sha256: m.tokenizer_sha256.clone(),
            train_tokens_sha256: m.train.sha256.clone(),
            val_tokens_sha256: m.val.sha256.clone(),
            train_tokens: m.train.tokens,
            val_tokens: m.val.tokens,
            token_dtype: m.dtype.clone(),
            files: m.files.clone(),
        }
    }
}

/// Prepared data, ready to train on.
pub struct Prepared {
    pub dir: PathBuf,
    pub meta: Meta,
}

impl Prepared {
    pub fn tokenizer_path(&self) -> PathBuf {
        self.dir.join(TOKENIZER_JSON)
    }
    pub fn split_path(&self, split: &str) -> PathBuf {
        split_file(&self.dir, split)
    }
    /// The ids of a split, memory-mapped.
    pub fn load_tokens(&self, split: &str) -> Result<Tokens> {
        let p = self.split_path(split);
        Tokens::open(&p, Dtype::parse(&self.meta.dtype, &self.dir.join("meta.json"))?)
    }
}

/// The token file of one split in a prepared directory.
fn split_file(dir: &Path, split: &str) -> PathBuf {
    dir.join(format!("{split}.bin"))
}

/// Get the corpus text from the configured source and check its pin.
/// Returns (text, dataset name for the data directory).
fn corpus_text(cfg: &Config, data_dir: &Path, log: &dyn Fn(&str)) -> Result<(String, String)> {
    let d = &cfg.data;
    match d.source.as_str() {
        "builtin" => {
            let name = format!("builtin-s{}-b{}", d.builtin_seed, d.builtin_bytes);
            log(&format!(
                "generating built-in story corpus ({} bytes, seed {})",
                d.builtin_bytes, d.builtin_seed
            ));
            let text = corpus::generate(d.builtin_seed, d.builtin_bytes);
            let p = data_dir.join(&name).join("corpus.txt");
            let same = fs::read(&p).map(|b| b == text.as_bytes()).unwrap_or(false);
            if !same {
                write_atomic(&p, text.as_bytes())?;
            }
            Ok((text, name))
        }
        "file" | "url" => {
            let want = d.sha256.clone().unwrap_or_default().to_lowercase();
            let path = match (&d.path, &d.url) {
                (Some(p), _) => PathBuf::from(p),
                (None, Some(u)) => Path::new(&d.dir).join(url_file_name(u)),
                (None, None) => return Err(Error::msg("data.path or data.url is required")),
            };
            if d.source == "url" && !path.exists() {
                let url = d.url.as_deref().unwrap_or_default();
                download(url, &path, &want, log)?;
            }
            if !path.exists() {
                return Err(Error::hint(
                    format!("data file {} does not exist (data.path)", path.display()),
                    "fix data.path in the config or pass --set data.path=FILE",
                ));
            }
            let bytes = fs::read(&path).at(&path)?;
            let got = sha256_hex(&bytes);
            if got != want {
                return Err(Error::hint(
                    format!(
                        "sha256 mismatch for {}: expected {want} (data.sha256), found {got}",
                        path.display()
                    ),
                    "the file is not the pinned corpus: restore the right file, or if you mean to change the data, set data.sha256 to the new hash",
                ));
            }
            let text = String::from_utf8(bytes)
                .map_err(|e| Error::msg(format!("{} is not UTF-8 text: {e}", path.display())))?;
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            Ok((text, format!("{stem}-{}", &got[..12])))
        }
        other => Err(Error::msg(format!("unknown data.source {other:?}"))),
    }
}

fn url_file_name(url: &str) -> String {
    let last = url.rsplit('/').next().unwrap_or("");
    if last.is_empty() || last == "." || last == ".." {
        "download.txt".into()
    } else {
        last.to_string()
    }
}

/// Where a replay of someone else's run (`verify`, `batches`, `audit`) may take its corpus from.
/// The run's config is not trusted: a release's author chose it.
pub struct Replay<'a> {
    /// The release directory, when the run is a release: its `data/corpus.txt` is the corpus,
    /// and its config may not name paths outside it.
    pub release: Option<&'a Path>,
    /// A corpus file the user named (`--corpus FILE`); it must still match `data.sha256`.
    pub corpus: Option<&'a Path>,
    /// The user allowed a `url` source to be fetched (`--allow-download`), into `scratch` only.
    pub allow_download: bool,
    /// The replay's own directory: the only place it writes.
    pub scratch: &'a Path,
}

/// A path that is absolute or climbs out with `..`: it names a place outside the folder (or
/// working directory) it is read against.
pub fn leaves_folder(p: &Path) -> bool {
    p.is_absolute() || p.components().any(|c| matches!(c, std::path::Component::ParentDir))
}

/// A release's `data.path` or `data.dir` must be a relative path that stays inside it.
fn check_inside(key: &str, value: &str, config: &Path) -> Result<()> {
    let p = Path::new(value);
    let leaves = leaves_folder(p);
    if leaves {
        return Err(Error::hint(
            format!(
                "{}: {key} = {value:?} is {} the release: a release must not name paths outside itself, so it is refused",
                config.display(),
                if p.is_absolute() { "an absolute path, outside" } else { "a path that leaves" }
            ),
            "this release cannot be replayed as published; ask its author for one whose config names data paths relative to the folder",
        ));
    }
    Ok(())
}

/// Point the data section of an untrusted config at what a replay may use, so that preparing
/// it reads only the named corpus and writes only under `r.scratch`:
/// - `data.dir` becomes `scratch/data`;
/// - a `file` or `url` corpus is `--corpus`, else the release's `data/corpus.txt` (which must
///   stay inside the release), else, for a run directory, the file its config names (read,
///   never written);
/// - a `url` corpus that is nowhere here is fetched only with `allow_download`, and then into
///   `scratch/download/` whatever the config's `data.path` says.
///
/// The pin (`data.sha256`) is kept, so a corpus that is not the run's is refused by `prepare`.
pub fn confine(cfg: &mut Config, config_file: &Path, r: &Replay, log: &dyn Fn(&str)) -> Result<()> {
    if r.release.is_some() {
        if let Some(p) = &cfg.data.path {
            check_inside("data.path", p, config_file)?;
        }
        check_inside("data.dir", &cfg.data.dir, config_file)?;
    }
    let configured = match (&cfg.data.path, &cfg.data.url) {
        (Some(p), _) => Some(PathBuf::from(p)),
        (None, Some(u)) => Some(Path::new(&cfg.data.dir).join(url_file_name(u))),
        (None, None) => None,
    };
    cfg.data.dir = r.scratch.join("data").display().to_string();
    if cfg.data.source == "builtin" {
        return Ok(());
    }
    if cfg.data.source == "files" {
        return confine_files(cfg, config_file, r);
    }
    let shipped = match r.release {
        Some(rel) => {
            let c = rel.join("data").join("corpus.txt");
            if fs::symlink_metadata(&c).is_ok() {
                let (canon, root) = (c.canonicalize().at(&c)?, rel.canonicalize().at(rel)?);
                if !canon.starts_with(&root) || !canon.is_file() {
                    return Err(Error::hint(
                        format!("{} leads outside the release (to {})", c.display(), canon.display()),
                        "a release's corpus must be a file inside it; this one is refused",
                    ));
                }
                Some(canon)
            } else {
                None
            }
        }
        None => None,
    };
    let use_file = |cfg: &mut Config, p: PathBuf| {
        cfg.data.source = "file".into();
        cfg.data.path = Some(p.display().to_string());
    };
    if let Some(c) = r.corpus {
        use_file(cfg, c.to_path_buf());
    } else if let Some(c) = shipped {
        use_file(cfg, c);
    } else if r.release.is_none() && configured.as_ref().is_some_and(|p| p.is_file()) {
        use_file(cfg, configured.unwrap_or_default());
    } else if cfg.data.source == "url" && r.allow_download {
        let dest = r.scratch.join("download").join(url_file_name(cfg.data.url.as_deref().unwrap_or("")));
        log(&format!("--allow-download: fetching the corpus into {}", dest.display()));
        cfg.data.path = Some(dest.display().to_string());
    } else {
        let sha = cfg.data.sha256.clone().unwrap_or_default();
        let hint = match (&cfg.data.url, r.release) {
            (Some(u), _) => format!(
                "pass --corpus FILE (the file with sha256 {sha}), or --allow-download to fetch {u} into the scratch directory"
            ),
            (None, _) => format!("pass --corpus FILE (the file with sha256 {sha})"),
        };
        let what = match (r.release, &configured) {
            (Some(rel), _) => format!("{} does not ship its corpus (no data/corpus.txt)", rel.display()),
            (None, Some(p)) => format!("the run's corpus {} is not here", p.display()),
            (None, None) => "the run's config names no corpus".into(),
        };
        return Err(Error::hint(what, hint));
    }
    Ok(())
}

/// Where a release ships a files source: each file at `data/files/<listing path>`, and the
/// listing beside them at `data/files.sha256`.
pub const RELEASE_FILES: &str = "data/files";

/// `confine` for a files source: `data.paths` are read against `--corpus DIR`, else the
/// release's `data/files/` (every entry must stay inside it, and so must every file it
/// reaches, symlinks followed), else, for a run directory, the working directory.
fn confine_files(cfg: &mut Config, config_file: &Path, r: &Replay) -> Result<()> {
    if r.release.is_some() {
        for p in &cfg.data.paths {
            check_inside("data.paths", p, config_file)?;
        }
    }
    let shipped = r.release.map(|rel| rel.join(RELEASE_FILES)).filter(|p| p.is_dir());
    if let Some(c) = r.corpus {
        if !c.is_dir() {
            return Err(Error::hint(
                format!(
                    "--corpus {}: a files source needs the directory its data.paths are relative to",
                    c.display()
                ),
                "pass --corpus DIR, the directory the run was trained in (or that holds the listed files)",
            ));
        }
        cfg.data.base = Some(c.to_path_buf());
    } else if let (Some(dir), Some(rel)) = (shipped, r.release) {
        let (canon, root) = (dir.canonicalize().at(&dir)?, rel.canonicalize().at(rel)?);
        if !canon.starts_with(&root) {
            return Err(Error::hint(
                format!("{} leads outside the release (to {})", dir.display(), canon.display()),
                "a release's corpus must be inside it; this one is refused",
            ));
        }
        cfg.data.base = Some(canon);
    } else if let Some(rel) = r.release {
        return Err(Error::hint(
            format!("{} does not ship its corpus (no {RELEASE_FILES}/)", rel.display()),
            format!(
                "pass --corpus DIR: a directory holding the files of {}/data/{LISTING}, at the paths it lists",
                rel.display()
            ),
        ));
    }
    Ok(())
}

/// Download `url` to `dest`, verifying the pinned hash before the file appears at `dest`.
/// A failed or mismatching download leaves nothing behind.
pub fn download(url: &str, dest: &Path, want_sha: &str, log: &dyn Fn(&str)) -> Result<()> {
    log(&format!("downloading {url} -> {}", dest.display()));
    let fail = |e: String| {
        Error::hint(
            format!("download of {url} failed: {e}"),
            "check the network or data.url, or place the file at data.path yourself",
        )
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(600)))
        .build()
        .into();
    let mut resp = agent.get(url).call().map_err(|e| fail(e.to_string()))?;
    if let Some(dir) = dest.parent() {
        fs::create_dir_all(dir).at(dir)?;
    }
    let tmp = temp_sibling(dest);
    let result = (|| -> Result<String> {
        let mut f = fs::File::create(&tmp).at(&tmp)?;
        let mut reader = resp.body_mut().as_reader();
        std::io::copy(&mut reader, &mut f).map_err(|e| fail(e.to_string()))?;
        f.flush().at(&tmp)?;
        f.sync_all().at(&tmp)?;
        sha256_file(&tmp)
    })();
    match result {
        Ok(got) if got == want_sha => {
            fs::rename(&tmp, dest).at(dest)?;
            Ok(())
        }
        Ok(got) => {
            let _ = fs::remove_file(&tmp);
            Err(Error::hint(
                format!("sha256 mismatch for download {url}: expected {want_sha} (data.sha256), found {got}"),
                "the server sent different bytes than the pinned corpus; nothing was saved",
            ))
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Where train ends: the last `val_fraction` of bytes is validation, cut at a line start: the
/// next one after the exact point, else the previous one, else (a corpus with no line break
/// near the end) the exact point moved to the next character boundary.
pub fn split_point(text: &str, val_fraction: f64) -> usize {
    let raw = (((text.len() as f64) * (1.0 - val_fraction)).floor() as usize).min(text.len());
    let bytes = text.as_bytes();
    if let Some(i) = bytes[raw..].iter().position(|&b| b == b'\n') {
        if raw + i + 1 < text.len() {
            return raw + i + 1;
        }
    }
    if let Some(i) = bytes[..raw].iter().rposition(|&b| b == b'\n') {
        if i + 1 < text.len() {
            return i + 1;
        }
    }
    let mut cut = raw;
    while cut < text.len() && !text.is_char_boundary(cut) {
        cut += 1;
    }
    cut
}

/// A prepared-data directory, with the error a read-only data.dir gets.
fn create_data_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| {
        Error::hint(
            format!("cannot create data directory {}: {e}", dir.display()),
            "set data.dir to a writable directory",
        )
    })
}

/// The tokenizer of a prepared directory: a given one (a fine-tune's parent's) as is, else
/// the one `train` makes; written to `dir`, loaded, with a note when BPE ran out of merges.
fn write_tokenizer(
    dir: &Path,
    cfg: &Config,
    given: Option<&[u8]>,
    train: impl FnOnce() -> Result<String>,
    log: &dyn Fn(&str),
) -> Result<(String, Tok)> {
    let json = match given {
        Some(t) => {
            log("using the parent's tokenizer (init.from); no tokenizer is trained");
            String::from_utf8(t.to_vec())
                .map_err(|e| Error::msg(format!("the parent's tokenizer.json is not UTF-8: {e}")))?
        }
        None => train()?,
    };
    let tok_path = dir.join(TOKENIZER_JSON);
    write_atomic(&tok_path, json.as_bytes())?;
    let tok = if given.is_some() { Tok::from_file_any(&tok_path)? } else { Tok::from_file(&tok_path)? };
    let real_vocab = tok.vocab_size() as u64;
    if given.is_none() && real_vocab < cfg.tokenizer.vocab_size {
        log(&format!(
            "note: the corpus supports only {real_vocab} tokens, fewer than tokenizer.vocab_size = {} (BPE ran out of pairs to merge); the model's vocabulary is {real_vocab}",
            cfg.tokenizer.vocab_size
        ));
    }
    Ok((json, tok))
}

/// Run the data and tokenizer steps, reusing earlier results when their inputs are unchanged.
/// Derived files go under `data_dir` (normally `data.dir`; verify uses a scratch directory).
/// A downloaded corpus is always cached at `data.path`, or under `data.dir` when that is unset.
///
/// `tokenizer` is a given tokenizer.json (a fine-tune's parent's): it is used as is, no
/// tokenizer is trained, and its hash is part of the cache key.
pub fn prepare(
    cfg: &Config,
    data_dir: &Path,
    tokenizer: Option<&[u8]>,
    log: &dyn Fn(&str),
) -> Result<Prepared> {
    if cfg.data.source == "files" {
        return prepare_files(cfg, data_dir, tokenizer, log);
    }
    let (text, name) = corpus_text(cfg, data_dir, log)?;
    let corpus_sha = sha256_hex(text.as_bytes());
    // Every input of the tokenizer and token files: the corpus, the split, the vocabulary, our
    // tokenizer recipe and the `tokenizers` crate that executes it; a given tokenizer's hash.
    let mut key_src = format!(
        "tinylm-prep-v{PREP_FORMAT}\n{corpus_sha}\n{}\n{}\n{}\n{}",
        cfg.data.val_fraction,
        cfg.tokenizer.vocab_size,
        tokenizer::RECIPE,
        tokenizer::tokenizers_version()
    );
    if let Some(t) = tokenizer {
        key_src += &format!("\ngiven-tokenizer {}", sha256_hex(t));
    }
    let key = sha256_hex(key_src.as_bytes());
    let dir = data_dir.join(&name).join(format!("tok-v{}-{}", cfg.tokenizer.vocab_size, &key[..12]));
    if let Some(prepared) = reusable(&dir, &corpus_sha)? {
        log(&format!("reusing prepared data in {}", dir.display()));
        return Ok(prepared);
    }
    create_data_dir(&dir)?;

    let cut = split_point(&text, cfg.data.val_fraction);
    let (train_text, val_text) = text.split_at(cut);
    if val_text.is_empty() || train_text.is_empty() {
        return Err(Error::hint(
            format!(
                "the corpus ({} bytes) cannot be split into train and validation at data.val_fraction = {}",
                text.len(),
                cfg.data.val_fraction
            ),
            "use a larger corpus, or a data.val_fraction that leaves text on both sides",
        ));
    }
    let actual = val_text.len() as f64 / text.len() as f64;
    if (actual - cfg.data.val_fraction).abs() > 0.25 * cfg.data.val_fraction {
        log(&format!(
            "note: the validation split is {:.1}% of the corpus (data.val_fraction = {}): the cut moves to a line start, and the lines near it are long",
            actual * 100.0,
            cfg.data.val_fraction
        ));
    }
    let (json, tok) = write_tokenizer(
        &dir,
        cfg,
        tokenizer,
        || {
            log(&format!(
                "training BPE tokenizer (vocab {}) on {} bytes",
                cfg.tokenizer.vocab_size,
                train_text.len()
            ));
            tokenizer::train(train_text, cfg.tokenizer.vocab_size as usize)
        },
        log,
    )?;
    let real_vocab = tok.vocab_size() as u64;

    let dtype = Dtype::for_vocab(real_vocab);
    let write_split = |split: &str, part: &str| -> Result<SplitMeta> {
        let ids = tok.encode(part)?;
        let mut w = tokens::Writer::create(&split_file(&dir, split), dtype)?;
        w.push(&ids)?;
        let (n, sha256) = w.finish()?;
        log(&format!("{split}: {} bytes -> {n} tokens", part.len()));
        Ok(SplitMeta { tokens: n, bytes: part.len() as u64, sha256 })
    };
    let train = write_split("train", train_text)?;
    let val = write_split("val", val_text)?;
    let meta = Meta {
        format: PREP_FORMAT,
        corpus_sha256: corpus_sha,
        corpus_bytes: text.len() as u64,
        val_fraction: cfg.data.val_fraction,
        vocab_size: cfg.tokenizer.vocab_size,
        tokenizer_vocab_size: real_vocab,
        tokenizer_recipe: tokenizer::RECIPE.into(),
        tokenizers_version: tokenizer::tokenizers_version(),
        tokenizer_sha256: sha256_hex(json.as_bytes()),
        dtype: dtype.name().into(),
        train,
        val,
        files: Vec::new(),
    };
    let meta_json = serde_json::to_string_pretty(&meta).map_err(|e| Error::msg(e.to_string()))?;
    // meta.json goes last: its presence with matching hashes is what marks the files complete.
    write_atomic(&dir.join("meta.json"), meta_json.as_bytes())?;
    Ok(Prepared { dir, meta })
}

/// A document on its way from the reader thread: its file, whether it is validation, its text.
struct Doc {
    file: usize,
    val: bool,
    text: String,
}

/// Read the documents of `files` in order on a thread of their own, sending those `keep`
/// accepts in batches of about `batch_bytes`, while `consume` (on this thread) takes the
/// batches. Each file is hashed again on the way and must still match `scans`.
fn stream_docs<T>(
    files: &[sources::Listed],
    scans: &[sources::Scan],
    field: &str,
    batch_bytes: usize,
    keep: &(dyn Fn(usize, u64) -> Option<bool> + Sync),
    consume: impl FnOnce(&mut (dyn Iterator<Item = Vec<Doc>> + Send)) -> Result<T>,
) -> Result<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Doc>>(4);
    std::thread::scope(|sc| {
        let producer = sc.spawn(move || -> Result<()> {
            let mut batch = Vec::new();
            let mut size = 0;
            for (fi, l) in files.iter().enumerate() {
                let scan = sources::read_docs(l, field, &mut |di, text| {
                    if let Some(val) = keep(fi, di) {
                        size += text.len();
                        batch.push(Doc { file: fi, val, text: text.to_string() });
                        if size >= batch_bytes {
                            size = 0;
                            // A closed channel: the consumer stopped (its error is reported).
                            tx.send(std::mem::take(&mut batch)).map_err(|_| Error::msg("stopped"))?;
                        }
                    }
                    Ok(())
                })?;
                if scan.sha256 != scans[fi].sha256 {
                    return Err(Error::hint(
                        format!("{} changed while it was being prepared", l.path),
                        "leave the corpus files alone while tinylm prepares them, then run again",
                    ));
                }
            }
            if !batch.is_empty() {
                let _ = tx.send(batch);
            }
            Ok(())
        });
        let mut it = rx.into_iter();
        let out = consume(&mut it);
        drop(it);
        let produced = producer.join().map_err(|_| Error::msg("the corpus reader thread panicked"))?;
        match (out, produced) {
            (_, Err(e)) if !matches!(&e, Error::Msg(m) if m == "stopped") => Err(e),
            (out, _) => out,
        }
    })
}

/// Compare the listing found with the pinned one and say what differs, file by file, when the
/// pinned listing is known (a copy kept by an earlier `prepare` under data.dir, or one shipped
/// beside a release's files).
fn pin_error(want: Option<&str>, pin: &str, listing: &str, known: &[PathBuf]) -> Error {
    let n = listing.lines().count();
    let Some(want) = want else {
        return Error::hint(
            format!("data.sha256 is not set: the {n} files of data.paths hash to {pin}"),
            format!(
                "pin them: set data.sha256 = \"{pin}\" in [data] (the SHA-256 of their `sha256sum` listing; the README shows the shell command)"
            ),
        );
    };
    let parse = |t: &str| -> BTreeMap<String, String> {
        t.lines().filter_map(|l| l.split_once("  ")).map(|(h, p)| (p.to_string(), h.to_string())).collect()
    };
    let now = parse(listing);
    let old = known.iter().find_map(|p| {
        // Only a regular file of sane size (a crafted release could name /dev/zero or a FIFO).
        let md = fs::symlink_metadata(p).ok()?;
        if !md.is_file() || md.len() > 1 << 28 {
            return None;
        }
        let t = fs::read_to_string(p).ok()?;
        (sha256_hex(t.as_bytes()) == want).then(|| parse(&t))
    });
    let mut what = Vec::new();
    match &old {
        Some(old) => {
            for (p, h) in old {
                match now.get(p) {
                    None => what.push(format!("  missing: {p}")),
                    Some(h2) if h2 != h => what.push(format!("  changed: {p} (sha256 {h2}, pinned {h})")),
                    _ => {}
                }
            }
            for p in now.keys().filter(|p| !old.contains_key(*p)) {
                what.push(format!("  added:   {p}"));
            }
        }
        None => what.push(format!(
            "  (no copy of the pinned listing was found to say which files differ; the listing now has {n} files)"
        )),
    }
    if what.len() > 40 {
        let more = what.len() - 40;
        what.truncate(40);
        what.push(format!("  ... and {more} more"));
    }
    Error::hint(
        format!(
            "the files of data.paths hash to {pin}, not the pinned data.sha256 = {want}:\n{}",
            what.join("\n")
        ),
        format!("restore the pinned files, or if you mean to change the data, set data.sha256 = \"{pin}\""),
    )
}

/// Prepare a files source: list; read every file once to hash it and check every document
/// (nothing is written until all of them pass and the pin matches); then stream the train
/// documents into the tokenizer trainer and all documents through the encoder into the token
/// files. Memory holds one batch of documents at a time, plus the trainer's word counts.
fn prepare_files(
    cfg: &Config,
    data_dir: &Path,
    tokenizer: Option<&[u8]>,
    log: &dyn Fn(&str),
) -> Result<Prepared> {
    use rayon::prelude::*;
    let d = &cfg.data;
    let base = d.base.clone().unwrap_or_else(|| PathBuf::from("."));
    let files = sources::list(&d.paths, &base, d.base.is_some())?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.threads())
        .build()
        .map_err(|e| Error::msg(format!("cannot start {} threads: {e}", cfg.threads())))?;
    let threshold = sources::val_threshold(d.val_fraction);
    let stored: u64 = files.iter().map(|f| fs::metadata(&f.file).map(|m| m.len()).unwrap_or(0)).sum();
    log(&format!("data.paths: {} files, {:.1} MB as stored", files.len(), stored as f64 / 1e6));

    // Pass 1: hash and check. Per file: its scan, its validation documents and its smallest
    // key (the fallback when no document falls under the threshold).
    let progress = crate::progress::Progress::new("hashing and checking", stored);
    type FileScan = (sources::Scan, u64, (u64, u64));
    let results: Vec<Result<FileScan>> = pool.install(|| {
        files
            .par_iter()
            .map(|l| {
                let (mut val_docs, mut min) = (0u64, (u64::MAX, 0u64));
                let scan = sources::read_docs(l, &d.text_field, &mut |i, _| {
                    let k = sources::val_key(&l.path, i);
                    val_docs += (k < threshold) as u64;
                    if k < min.0 {
                        min = (k, i);
                    }
                    Ok(())
                })?;
                progress.add(scan.bytes);
                Ok((scan, val_docs, min))
            })
            .collect()
    });
    progress.finish();
    let mut scans = Vec::with_capacity(files.len());
    let (mut val_docs, mut min) = (0u64, (u64::MAX, usize::MAX, 0u64));
    for (fi, r) in results.into_iter().enumerate() {
        let (scan, v, (k, i)) = r?;
        val_docs += v;
        if scan.documents > 0 && k < min.0 {
            min = (k, fi, i);
        }
        scans.push(scan);
    }
    let docs: u64 = scans.iter().map(|s| s.documents).sum();
    let text_bytes: u64 = scans.iter().map(|s| s.text_bytes).sum();
    if docs == 0 {
        return Err(Error::hint(
            format!("the {} files of data.paths hold no documents (every one is empty)", files.len()),
            "check data.paths and data.text_field",
        ));
    }
    // No document under the threshold: the one with the smallest key is validation.
    let fallback = (val_docs == 0).then_some((min.1, min.2));
    let val_docs = val_docs.max(1);
    if val_docs >= docs {
        return Err(Error::hint(
            format!(
                "the corpus has {docs} document(s), and the validation split (whole documents) leaves none to train on"
            ),
            "add documents (the split never cuts one), or split a long text file into several",
        ));
    }
    let pairs: Vec<(String, String)> =
        files.iter().zip(&scans).map(|(l, s)| (l.path.clone(), s.sha256.clone())).collect();
    let listing = sources::listing(&pairs);
    let pin = sha256_hex(listing.as_bytes());
    let want = d.sha256.as_deref().map(str::to_lowercase);
    if want.as_deref() != Some(pin.as_str()) {
        let mut known = vec![base.join(LISTING)];
        if let Some(up) = d.base.as_deref().and_then(Path::parent) {
            known.push(up.join(LISTING));
        }
        if let Some(w) = &want {
            known.insert(0, data_dir.join(format!("files-{}", &w[..12.min(w.len())])).join(LISTING));
        }
        return Err(pin_error(want.as_deref(), &pin, &listing, &known));
    }
    let is_val = move |fi: usize, di: u64, path: &str| -> bool {
        fallback == Some((fi, di)) || sources::val_key(path, di) < threshold
    };

    let mut key_src = format!(
        "tinylm-prep-files-v1\n{pin}\n{}\n{}\n{}\n{}\n{}",
        d.text_field,
        d.val_fraction,
        cfg.tokenizer.vocab_size,
        tokenizer::RECIPE,
        tokenizer::tokenizers_version()
    );
    if let Some(t) = tokenizer {
        key_src += &format!("\ngiven-tokenizer {}", sha256_hex(t));
    }
    let key = sha256_hex(key_src.as_bytes());
    let top = data_dir.join(format!("files-{}", &pin[..12]));
    let dir = top.join(format!("tok-v{}-{}", cfg.tokenizer.vocab_size, &key[..12]));
    if let Some(prepared) = reusable(&dir, &pin)? {
        log(&format!("reusing prepared data in {}", dir.display()));
        return Ok(prepared);
    }
    if tokenizer.is_some_and(|t| !String::from_utf8_lossy(t).contains("\"<|endoftext|>\"")) {
        return Err(Error::hint(
            "the parent's tokenizer has no <|endoftext|> token, which a files source needs between documents",
            "use a parent whose tokenizer has <|endoftext|>",
        ));
    }
    create_data_dir(&dir)?;
    // Passes 2 and 3 write; if one fails (a file changed under it), the half-built directory
    // goes, so nothing but complete, hashed results stays under data.dir.
    let built = (|| -> Result<Prepared> {
        write_atomic(&top.join(LISTING), listing.as_bytes())?;
        let paths: Vec<&str> = files.iter().map(|l| l.path.as_str()).collect();

        // Pass 2: the tokenizer, on the train documents' lines.
        let train = || -> Result<String> {
            log(&format!(
                "training BPE tokenizer (vocab {}) on the train documents",
                cfg.tokenizer.vocab_size
            ));
            let progress = crate::progress::Progress::new("training tokenizer", text_bytes);
            let keep = |fi: usize, di: u64| (!is_val(fi, di, paths[fi])).then_some(false);
            let json = stream_docs(&files, &scans, &d.text_field, 1 << 20, &keep, |batches| {
                let lines = batches.flat_map(|b| {
                    progress.add(b.iter().map(|x| x.text.len() as u64).sum());
                    b.into_iter().flat_map(|doc| {
                        doc.text
                            .split(crate::corpus::EOT)
                            .flat_map(|p| p.split_inclusive('\n'))
                            .map(str::to_string)
                            .collect::<Vec<_>>()
                    })
                });
                pool.install(|| tokenizer::train_on(lines, cfg.tokenizer.vocab_size as usize))
            })?;
            progress.finish();
            Ok(json)
        };
        let (json, tok) = write_tokenizer(&dir, cfg, tokenizer, train, log)?;
        let real_vocab = tok.vocab_size() as u64;
        if tok.eot() == u32::MAX {
            return Err(Error::hint(
                "the parent's tokenizer has no <|endoftext|> token, which a files source needs between documents",
                "use a parent whose tokenizer has <|endoftext|>",
            ));
        }

        // Pass 3: encode every document, in order, each followed by <|endoftext|>.
        let dtype = Dtype::for_vocab(real_vocab);
        let mut w_train = tokens::Writer::create(&split_file(&dir, "train"), dtype)?;
        let mut w_val = tokens::Writer::create(&split_file(&dir, "val"), dtype)?;
        let mut records: Vec<FileRecord> = files
            .iter()
            .zip(&scans)
            .map(|(l, s)| FileRecord {
                path: l.path.clone(),
                bytes: s.bytes,
                sha256: s.sha256.clone(),
                documents: s.documents,
                val_documents: 0,
                train_tokens: 0,
                val_tokens: 0,
            })
            .collect();
        let (mut train_bytes, mut val_bytes) = (0u64, 0u64);
        let progress = crate::progress::Progress::new("encoding", text_bytes);
        let keep = |fi: usize, di: u64| Some(is_val(fi, di, paths[fi]));
        stream_docs(&files, &scans, &d.text_field, 8 << 20, &keep, |batches| {
            for b in batches {
                let texts: Vec<&str> = b.iter().map(|x| x.text.as_str()).collect();
                let ids = pool.install(|| tok.encode_docs(&texts))?;
                for (doc, mut ids) in b.iter().zip(ids) {
                    ids.push(tok.eot());
                    let r = &mut records[doc.file];
                    if doc.val {
                        w_val.push(&ids)?;
                        r.val_documents += 1;
                        r.val_tokens += ids.len() as u64;
                        val_bytes += doc.text.len() as u64;
                    } else {
                        w_train.push(&ids)?;
                        r.train_tokens += ids.len() as u64;
                        train_bytes += doc.text.len() as u64;
                    }
                }
                progress.add(texts.iter().map(|t| t.len() as u64).sum());
            }
            Ok(())
        })?;
        progress.finish();
        let (train_n, train_sha) = w_train.finish()?;
        let (val_n, val_sha) = w_val.finish()?;
        log(&format!(
            "train: {train_bytes} bytes -> {train_n} tokens; val: {} documents, {val_bytes} bytes -> {val_n} tokens",
            records.iter().map(|r| r.val_documents).sum::<u64>()
        ));
        let meta = Meta {
            format: PREP_FORMAT,
            corpus_sha256: pin,
            corpus_bytes: text_bytes,
            val_fraction: d.val_fraction,
            vocab_size: cfg.tokenizer.vocab_size,
            tokenizer_vocab_size: real_vocab,
            tokenizer_recipe: tokenizer::RECIPE.into(),
            tokenizers_version: tokenizer::tokenizers_version(),
            tokenizer_sha256: sha256_hex(json.as_bytes()),
            dtype: dtype.name().into(),
            train: SplitMeta { tokens: train_n, bytes: train_bytes, sha256: train_sha },
            val: SplitMeta { tokens: val_n, bytes: val_bytes, sha256: val_sha },
            files: records,
        };
        let meta_json = serde_json::to_string_pretty(&meta).map_err(|e| Error::msg(e.to_string()))?;
        write_atomic(&dir.join("meta.json"), meta_json.as_bytes())?;
        Ok(Prepared { dir: dir.clone(), meta })
    })();
    if built.is_err() {
        let _ = fs::remove_dir_all(&dir);
    }
    built
}

/// The copy of a files source's listing kept beside its prepared data (and shipped in a
/// release's data/): `sha256sum -c` checks the files against it.
pub const LISTING: &str = "files.sha256";

/// The existing meta, if the prepared files are complete and untouched.
fn reusable(dir: &Path, corpus_sha: &str) -> Result<Option<Prepared>> {
    let Ok(text) = fs::read_to_string(dir.join("meta.json")) else { return Ok(None) };
    let Ok(meta) = serde_json::from_str::<Meta>(&text) else { return Ok(None) };
    if meta.format != PREP_FORMAT
        || meta.corpus_sha256 != corpus_sha
        || meta.tokenizer_recipe != tokenizer::RECIPE
        || meta.tokenizers_version != tokenizer::tokenizers_version()
    {
        return Ok(None);
    }
    let p = Prepared { dir: dir.to_path_buf(), meta };
    let checks = [
        (p.tokenizer_path(), &p.meta.tokenizer_sha256),
        (p.split_path("train"), &p.meta.train.sha256),
        (p.split_path("val"), &p.meta.val.sha256),
    ];
    for (path, want) in checks {
        if !path.exists() || &sha256_file(&path)? != want {
            return Ok(None);
        }
    }
    Ok(Some(p))
}

/// Start offsets of the training windows for (step, micro-batch): a pure function of
/// (seed, step, micro), so the data position never needs to be saved.
pub fn batch_offsets(
    seed: u64,
    step: u64,
    micro: u64,
    n_tokens: usize,
    batch: usize,
    ctx: usize,
) -> Vec<usize> {
    let mut r = rng::stream(seed, "batch", &format!("{step}/{micro}"));
    let span = (n_tokens - ctx - 1) as u64 + 1;
    (0..batch).map(|_| rng::below(&mut r, span) as usize).collect()
}

/// Start offsets of the fixed validation windows: evenly spaced over the split, no randomness.
pub fn eval_offsets(n_tokens: usize, count: usize, ctx: usize) -> Vec<usize> {
    let last = n_tokens - ctx - 1;
    if count <= 1 {
        return vec![0];
    }
    (0..count).map(|i| i * last / (count - 1)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_cuts_at_a_line_start() {
        let text = "aaaa\nbbbb\ncccc\ndddd\n";
        let cut = split_point(text, 0.3);
        assert_eq!(&text[cut..], "dddd\n");
        // No line break after the point: the previous line start.
        assert_eq!(split_point("aaaa\nbbbbbbbbbbbbbbbb", 0.3), 5);
        // No line break at all: the exact point, at a character boundary.
        assert_eq!(split_point("abcdefghij", 0.3), 7);
        assert_eq!(split_point("ééééé", 0.3), 8);
    }

    #[test]
    fn batches_are_a_pure_function_of_step() {
        let a = batch_offsets(1, 5, 0, 1000, 8, 16);
        assert_eq!(a, batch_offsets(1, 5, 0, 1000, 8, 16));
        assert_ne!(a, batch_offsets(1, 6, 0, 1000, 8, 16));
        assert_ne!(a, batch_offsets(1, 5, 1, 1000, 8, 16));
        assert!(a.iter().all(|&o| o + 16 < 1000));
        let e = eval_offsets(1000, 4, 16);
        assert_eq!(e, vec![0, 327, 655, 983]);
        assert!(e.iter().all(|&o| o + 16 < 1000));
    }
}
