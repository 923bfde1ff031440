//! `tinylm audit DIR`: how open is a model directory, in Model Openness Framework terms, and is
//! it intact? Works on a tinylm release and on any downloaded Hugging Face model folder.
//!
//! 1. Integrity: every line of `SHA256SUMS` matches, and no file is unlisted.
//! 2. Components: from `mof.yml` when there is one (names must be the 17 exact MOF names), else
//!    inferred from conventional file names with the model card's licence. Each component is
//!    included, missing, unlicensed (no licence) or invalid (a non-open licence, a file that
//!    fails its checks, a listed path that is absent).
//! 3. Checks: weights load and match `config.json`, tokenizer files are present, at least two
//!    intermediate checkpoints, the card's licence agrees with `mof.yml`; for a tinylm release
//!    the data is re-prepared from `data/corpus.txt` and must give the recorded token hashes.
//! 4. Verdict: the best class met, progress per class, and the OSI Open Source AI Definition 1.0
//!    checks apart. Exit 0 when the class claimed (by mof.yml's components, or --require, or
//!    Class III for a folder without a record) is met and every hash matches, else 1.

use super::{card, hf, license, mof, walk, MOF_FILE, RELEASE_JSON, SUMS_FILE};
use crate::error::{Error, IoContext, Result};
use crate::util::sha256_file;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

pub struct AuditArgs {
    pub dir: PathBuf,
    /// The class that must be met (1, 2 or 3); default: what mof.yml claims.
    pub require: Option<u8>,
    /// Skip re-preparing the data of a tinylm release (it trains a tokenizer: seconds to minutes).
    pub skip_data_replay: bool,
    /// Accept a folder without SHA256SUMS (its files are then not checked against a list).
    pub no_sums: bool,
    /// The release of a fine-tune's parent, audited in turn (`parent_cap`).
    pub parent: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Included,
    Missing,
    Unlicensed,
    Invalid,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Included => "included",
            Status::Missing => "missing",
            Status::Unlicensed => "unlicensed",
            Status::Invalid => "invalid",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ComponentStatus {
    pub name: String,
    pub class: u8,
    pub optional: bool,
    pub status: Status,
    pub license: String,
    pub path: String,
    /// Why it is not included, and warnings (a licence of the wrong kind).
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassProgress {
    pub class: String,
    pub included: usize,
    pub required: usize,
    pub percent: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Audit {
    pub dir: String,
    /// Hash mismatches, missing and unlisted files: each fails the audit.
    pub integrity: Vec<String>,
    pub record: Option<String>,
    pub components: Vec<ComponentStatus>,
    pub checks: Vec<Check>,
    pub class_met: u8,
    pub label: String,
    pub class_claimed: u8,
    pub progress: Vec<ClassProgress>,
    pub osi: Vec<Check>,
    pub passed: bool,
}

fn roman(c: u8) -> &'static str {
    ["-", "I", "II", "III"].get(c as usize).copied().unwrap_or("-")
}

/// A path as `sha256sum` and `mof.yml` write it, normalised: `./` and `.` components dropped,
/// `/` separators. None when it is absolute, empty or climbs out with `..`.
fn normal(rel: &str) -> Option<String> {
    let p = Path::new(rel);
    if rel.is_empty() || p.is_absolute() {
        return None;
    }
    let mut parts = Vec::new();
    for c in p.components() {
        match c {
            std::path::Component::Normal(x) => parts.push(x.to_string_lossy().into_owned()),
            std::path::Component::CurDir => {}
            _ => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// The folder's own view of a path named inside it (in SHA256SUMS, mof.yml or a licence
/// path): it must be relative, must not climb out, and must resolve, symlinks followed, to a
/// place inside the folder. Err: why not.
fn resolve_inside(root: &Path, rel: &str) -> std::result::Result<PathBuf, String> {
    let n = normal(rel).ok_or_else(|| format!("{rel:?} is not a path inside the folder"))?;
    let p = root.join(&n);
    let canon = p.canonicalize().map_err(|_| format!("{n} does not exist"))?;
    let base = root.canonicalize().map_err(|e| format!("{}: {e}", root.display()))?;
    if !canon.starts_with(&base) {
        return Err(format!("{n} leads outside the folder (to {})", canon.display()));
    }
    Ok(canon)
}

/// True when `p` holds something: a non-empty file, or a directory with a non-empty file
/// somewhere below it that stays inside `base`.
fn has_content(p: &Path, base: &Path) -> bool {
    if p.is_file() {
        return p.metadata().is_ok_and(|m| m.len() > 0);
    }
    walkdir::WalkDir::new(p).follow_links(false).into_iter().flatten().any(|e| {
        let f = e.path();
        let real = f.canonicalize().ok();
        real.is_some_and(|r| r.starts_with(base) && r.is_file() && r.metadata().is_ok_and(|m| m.len() > 0))
    })
}

/// Parse SHA256SUMS and compare; returns the problems and the number of listed files (None
/// when there is no SHA256SUMS). Symlinks that lead outside the folder are problems wherever
/// they are, listed or not.
fn check_sums(dir: &Path) -> Result<(Vec<String>, Option<usize>)> {
    let mut problems = Vec::new();
    let base = dir.canonicalize().at(dir)?;
    for e in walkdir::WalkDir::new(dir).follow_links(false).into_iter().flatten() {
        if e.path_is_symlink() {
            let rel = e.path().strip_prefix(dir).unwrap_or(e.path()).display().to_string();
            match e.path().canonicalize() {
                Ok(t) if t.starts_with(&base) => {}
                Ok(t) => {
                    problems.push(format!("symlink {rel} leads outside the folder (to {})", t.display()))
                }
                Err(_) => problems.push(format!("symlink {rel} leads nowhere")),
            }
        }
    }
    let p = dir.join(SUMS_FILE);
    if !p.is_file() {
        return Ok((problems, None));
    }
    let text = fs::read_to_string(&p).at(&p)?;
    let mut listed = BTreeSet::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let parsed = line.split_once("  ").or_else(|| line.split_once(" *"));
        let Some((hash, rel)) =
            parsed.filter(|(h, _)| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
        else {
            problems.push(format!("{SUMS_FILE} line {}: not `<sha256>  <path>`", i + 1));
            continue;
        };
        let Some(rel) = normal(rel) else {
            problems.push(format!("{SUMS_FILE} line {}: path {rel} leaves the directory", i + 1));
            continue;
        };
        listed.insert(rel.clone());
        if fs::symlink_metadata(dir.join(&rel)).is_err() {
            problems.push(format!("missing file: {rel} (listed in {SUMS_FILE})"));
            continue;
        }
        let f = match resolve_inside(dir, &rel) {
            Ok(f) if f.is_file() => f,
            Ok(_) => {
                problems.push(format!("not a file: {rel} (listed in {SUMS_FILE})"));
                continue;
            }
            Err(e) => {
                problems.push(format!("outside the folder: {rel} ({e})"));
                continue;
            }
        };
        let got = sha256_file(&f)?;
        if !got.eq_ignore_ascii_case(hash) {
            problems.push(format!("hash mismatch: {rel} ({SUMS_FILE} says {hash}, the file is {got})"));
        }
    }
    for rel in walk(dir)? {
        if rel != SUMS_FILE && !listed.contains(&rel) {
            problems.push(format!("unlisted file: {rel} (not in {SUMS_FILE})"));
        }
    }
    Ok((problems, Some(listed.len())))
}

/// The tensors of a safetensors file: name -> (dtype, shape), parsed and validated by the
/// `safetensors` crate (offsets contiguous and non-overlapping, sizes that match each dtype,
/// the file exactly as long as its header says): what loading it would accept.
pub fn safetensors_header(p: &Path) -> std::result::Result<BTreeMap<String, (String, Vec<usize>)>, String> {
    let f = fs::File::open(p).map_err(|e| e.to_string())?;
    // SAFETY: the map is only read, here, and dropped before returning. Another process that
    // truncates the file meanwhile makes the read fault (SIGBUS), as it would for any mmap
    // reader such as candle's loader; one that rewrites it gives the parser other bytes.
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| e.to_string())?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&map).map_err(|e| format!("not valid safetensors: {e}"))?;
    Ok(meta.tensors().into_iter().map(|(name, t)| (name, (t.dtype.to_string(), t.shape.clone()))).collect())
}

/// Check one model directory: config.json, weights against it, tokenizer. Err: what is wrong.
fn check_model_dir(d: &Path) -> std::result::Result<String, String> {
    let cfg_p = d.join("config.json");
    let text = fs::read_to_string(&cfg_p).map_err(|e| format!("config.json: {e}"))?;
    let cfg: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("config.json is not JSON: {e}"))?;
    let mut weights = BTreeMap::new();
    let mut files = 0;
    let mut names: Vec<PathBuf> = fs::read_dir(d)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    names.sort();
    // optimizer.safetensors beside the weights in a checkpoint is not part of the model.
    names.retain(|p| p.file_name().is_some_and(|n| n != "optimizer.safetensors"));
    for p in &names {
        let h = safetensors_header(p)
            .map_err(|e| format!("{}: {e}", p.file_name().unwrap_or_default().to_string_lossy()))?;
        weights.extend(h);
        files += 1;
    }
    if files == 0 {
        let pickle = fs::read_dir(d)
            .map(|r| r.flatten().any(|e| e.path().extension().is_some_and(|x| x == "bin")))
            .unwrap_or(false);
        return Err(if pickle {
            "weights only as pickle (*.bin), which the audit does not load: convert them to safetensors"
                .into()
        } else {
            "no *.safetensors weights".into()
        });
    }
    let tok = ["tokenizer.json", "tokenizer.model"].iter().any(|t| d.join(t).is_file());
    if !tok {
        return Err("no tokenizer (tokenizer.json or tokenizer.model)".into());
    }
    if d.join("tokenizer.json").is_file() {
        tokenizers::Tokenizer::from_file(d.join("tokenizer.json"))
            .map_err(|e| format!("tokenizer.json does not load: {e}"))?;
    }
    let mt = cfg.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
    if mt != "llama" {
        return Ok(format!(
            "{} tensors in {files} file(s); model_type {mt:?}: shapes not checked (only llama is)",
            weights.len()
        ));
    }
    let want = hf::llama_shapes(&cfg)?;
    let mut problems = Vec::new();
    for (name, shape) in &want {
        match weights.get(name) {
            None => problems.push(format!("missing tensor {name}")),
            Some((_, got)) if got != shape => {
                problems.push(format!("{name} is {got:?}, config.json implies {shape:?}"))
            }
            _ => {}
        }
    }
    for name in weights.keys().filter(|n| !want.contains_key(*n)) {
        problems.push(format!("unexpected tensor {name}"));
    }
    if problems.is_empty() {
        Ok(format!("{} tensors match config.json; tokenizer present", weights.len()))
    } else {
        Err(problems.into_iter().take(5).collect::<Vec<_>>().join("; "))
    }
}

/// The checkpoint directories under `checkpoints/` (or `DIR` itself for a run-like folder).
fn checkpoint_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir.join("checkpoints"))
        .map(|r| r.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    out.sort();
    out
}

/// Components of a folder without mof.yml, from conventional names, under the card's licence.
fn infer(dir: &Path, card_lic: &str) -> Vec<(String, String, String)> {
    let base = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let first = |cands: &[&str]| {
        cands
            .iter()
            .find(|c| resolve_inside(dir, c).is_ok_and(|p| has_content(&p, &base)))
            .map(|c| c.to_string())
    };
    let mut out = Vec::new();
    let mut add = |name: &str, path: Option<String>| {
        if let Some(p) = path {
            out.push((name.to_string(), card_lic.to_string(), p));
        }
    };
    let weights = if dir.join("model").join("config.json").is_file() {
        Some("model".to_string())
    } else {
        fs::read_dir(dir)
            .ok()
            .and_then(|r| {
                let mut w: Vec<PathBuf> = r
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "safetensors" || x == "bin"))
                    .filter(|p| p.canonicalize().is_ok_and(|c| c.starts_with(&base)) && has_content(p, &base))
                    .collect();
                w.sort();
                w.into_iter().next()
            })
            .map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned())
    };
    add("Model parameters (Final)", weights);
    add("Model card", first(&["README.md"]));
    add("Data card", first(&["DATA_CARD.md", "data_card.md", "DATASHEET.md"]));
    add("Technical report", first(&["REPORT.md", "technical_report.md", "technical_report.pdf"]));
    add("Research paper", first(&["PAPER.md", "paper.pdf"]));
    add(
        "Evaluation results",
        first(&["eval_results.json", "evaluation"]).or_else(|| {
            let readme = fs::read_to_string(dir.join("README.md")).unwrap_or_default();
            card::front_matter(&readme)
                .filter(|fm| fm.contains("model-index"))
                .map(|_| "README.md".to_string())
        }),
    );
    add("Training code", first(&["source", "train.py", "training"]));
    add("Inference code", first(&["source", "inference.py", "modeling.py"]));
    add("Model architecture", first(&["source", "modeling.py"]));
    add(
        "Model parameters (Intermediate)",
        (checkpoint_dirs(dir).len() >= 2).then(|| "checkpoints".to_string()),
    );
    add("Datasets", first(&["data/corpus.txt", "data"]));
    out
}

pub fn audit(a: &AuditArgs) -> Result<Audit> {
    let dir = &a.dir;
    if !dir.is_dir() {
        return Err(Error::hint(
            format!("{} is not a directory", dir.display()),
            "pass a model directory, e.g. a tinylm release",
        ));
    }
    crate::util::refuse_special_files(dir)?;
    let mut checks: Vec<Check> = Vec::new();
    let mut check =
        |name: &str, ok: bool, detail: String| checks.push(Check { name: name.into(), ok, detail });

    // 1. Integrity.
    let (mut integrity, listed) = check_sums(dir)?;
    if listed.is_none() && !a.no_sums {
        integrity.push(format!(
            "no {SUMS_FILE}: the files cannot be checked against a published list (pass --no-sums to audit the folder anyway)"
        ));
    }
    match listed {
        Some(n) => check(
            "SHA256SUMS",
            integrity.is_empty(),
            if integrity.is_empty() {
                format!("{n} files match, none unlisted")
            } else {
                format!("{} problem(s)", integrity.len())
            },
        ),
        None if a.no_sums => check(
            "SHA256SUMS",
            true,
            "none, accepted with --no-sums: the files are not checked against a published list".into(),
        ),
        None => check("SHA256SUMS", false, "missing (see below)".into()),
    }
    let bad_files: BTreeSet<String> = integrity
        .iter()
        .filter_map(|p| p.split_once(": ").map(|(_, r)| r.split(" (").next().unwrap_or("").to_string()))
        .collect();

    // 2. Components.
    let readme = fs::read_to_string(dir.join("README.md")).ok();
    let card_lic = readme.as_deref().and_then(card::card_license);
    let mut record_err = None;
    let record = match fs::read_to_string(dir.join(MOF_FILE)) {
        Ok(t) => match (mof::Record::parse(&t), mof::schema_problems(&t)) {
            (Ok(r), p) if p.is_empty() => Some(r),
            (Ok(_), p) => {
                record_err = Some(format!(
                    "{MOF_FILE} fails the Model Openness Tool schema: {}",
                    p.into_iter().take(5).collect::<Vec<_>>().join("; ")
                ));
                None
            }
            (Err(e), _) => {
                record_err = Some(format!("{MOF_FILE} is not a valid MOT record: {e}"));
                None
            }
        },
        Err(_) => None,
    };
    if let Some(e) = &record_err {
        check("mof.yml", false, e.clone());
    } else if let Some(r) = &record {
        check(
            "mof.yml",
            true,
            format!(
                "valid MOT record (the Tool's schema), {} components, framework {} {}",
                r.release.components.len(),
                r.framework.name,
                r.framework.version
            ),
        );
    }
    // (name, licence, path, licence path)
    let listed_comps: Vec<(String, String, String, Option<String>)> = match &record {
        Some(r) => r
            .release
            .components
            .iter()
            .map(|c| {
                (c.name.clone(), c.license.clone(), c.component_path.clone(), Some(c.license_path.clone()))
            })
            .collect(),
        None => infer(dir, card_lic.as_deref().unwrap_or(license::UNLICENSED))
            .into_iter()
            .map(|(n, l, p)| (n, l, p, None))
            .collect(),
    };
    let base = dir.canonicalize().at(dir)?;
    let mut components: Vec<ComponentStatus> = mof::COMPONENTS
        .iter()
        .map(|mc| {
            let Some((_, lic, path, lic_path)) = listed_comps.iter().find(|(n, ..)| n == mc.name) else {
                return ComponentStatus {
                    name: mc.name.into(),
                    class: mc.class,
                    optional: mc.optional,
                    status: Status::Missing,
                    license: String::new(),
                    path: String::new(),
                    notes: vec![if record.is_some() {
                        "not in mof.yml".into()
                    } else {
                        "no such file in the folder".into()
                    }],
                };
            };
            let mut notes = Vec::new();
            let resolved = resolve_inside(dir, path).and_then(|p| {
                if has_content(&p, &base) {
                    Ok(p)
                } else {
                    Err(format!("{path} is empty"))
                }
            });
            let mut status = if let Err(why) = &resolved {
                notes.push(why.clone());
                Status::Invalid
            } else {
                let verdict = match license::judge(lic, mc.kind) {
                    license::Verdict::WrongKind(_) if mof::accepts_code_licence(mc.name) => {
                        license::judge(lic, license::Kind::Code)
                    }
                    v => v,
                };
                match verdict {
                    license::Verdict::Open => Status::Included,
                    license::Verdict::WrongKind(w) => {
                        notes.push(format!("warning: {w}"));
                        Status::Included
                    }
                    license::Verdict::NotOpen(w) => {
                        notes.push(w);
                        Status::Invalid
                    }
                    license::Verdict::Unlicensed => {
                        notes.push("no licence: the component does not count until one is given".into());
                        Status::Unlicensed
                    }
                }
            };
            if let Some(lp) = lic_path {
                let text_ok = resolve_inside(dir, lp).is_ok_and(|p| p.is_file() && has_content(&p, &base));
                if status == Status::Included && !text_ok {
                    notes.push(format!("licence text {lp:?} is not in the folder"));
                    status = Status::Unlicensed;
                }
            }
            // A component whose files failed the hash check is not what was published.
            let prefix = format!("{}/", path.trim_end_matches('/'));
            let broken: Vec<&String> =
                bad_files.iter().filter(|f| *f == path || f.starts_with(&prefix)).collect();
            if !broken.is_empty() {
                notes.push(format!(
                    "fails the hash check: {}",
                    broken.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                ));
                status = Status::Invalid;
            }
            ComponentStatus {
                name: mc.name.into(),
                class: mc.class,
                optional: mc.optional,
                status,
                license: lic.clone(),
                path: path.clone(),
                notes,
            }
        })
        .collect();
    let mut invalidate = |name: &str, why: String| {
        if let Some(c) = components.iter_mut().find(|c| c.name == name) {
            if c.status != Status::Missing {
                c.status = Status::Invalid;
            }
            c.notes.push(why);
        }
    };

    // 3. Checks.
    let final_dir = if dir.join("model").is_dir() { dir.join("model") } else { dir.to_path_buf() };
    let final_ok = match check_model_dir(&final_dir) {
        Ok(d) => {
            check(
                "weights",
                true,
                format!(
                    "{}: {d}",
                    final_dir.strip_prefix(dir).map(|p| p.display().to_string()).unwrap_or_default()
                ),
            );
            true
        }
        Err(e) => {
            let rel = final_dir.strip_prefix(dir).map(|p| p.display().to_string()).unwrap_or_default();
            let rel = if rel.is_empty() { ".".to_string() } else { rel };
            check("weights", false, format!("{rel}: {e}"));
            invalidate("Model parameters (Final)", format!("{rel}: {e}"));
            false
        }
    };
    let _ = final_ok;
    let ckpts = checkpoint_dirs(dir);
    let mut ck_bad = Vec::new();
    for c in &ckpts {
        if let Err(e) = check_model_dir(c) {
            ck_bad.push(format!("{}: {e}", c.strip_prefix(dir).unwrap_or(c).display()));
        }
    }
    // The final checkpoint is not intermediate: count the others.
    let final_hash = sha256_file(&final_dir.join("model.safetensors")).ok();
    let intermediate = ckpts
        .iter()
        .filter(|c| final_hash.is_none() || sha256_file(&c.join("model.safetensors")).ok() != final_hash)
        .count();
    if !ck_bad.is_empty() {
        check("checkpoints", false, ck_bad.join("; "));
        invalidate("Model parameters (Intermediate)", ck_bad.join("; "));
    } else {
        let ok = intermediate >= 2;
        check(
            "checkpoints",
            ok,
            format!(
                "{intermediate} intermediate checkpoint(s) besides the final weights (at least 2 wanted)"
            ),
        );
        if !ok {
            invalidate(
                "Model parameters (Intermediate)",
                format!("only {intermediate} intermediate checkpoint(s); at least 2 wanted"),
            );
        }
    }
    if let (Some(r), Some(cl)) = (&record, &card_lic) {
        let rec_lic = r
            .release
            .components
            .iter()
            .find(|c| c.name == "Model parameters (Final)")
            .map(|c| c.license.clone())
            .unwrap_or_else(|| r.release.license.distribution.name.clone());
        let ok = card::same_license(cl, &rec_lic);
        check("card licence", ok, format!("README.md says {cl}, mof.yml says {rec_lic} for the weights"));
        if !ok {
            invalidate("Model card", format!("its licence {cl} disagrees with mof.yml ({rec_lic})"));
        }
    } else if readme.is_some() && card_lic.is_none() {
        check("card licence", false, "README.md has no `license:` in its front matter".into());
    }

    // tinylm release: its files against its run record, the data replay and the build record.
    let mut dirty = false;
    let is_release = dir.join("run").join(crate::manifest::FILE).is_file();
    if is_release {
        let rj_ok = fs::read(dir.join(RELEASE_JSON))
            .ok()
            .and_then(|b| serde_json::from_slice::<super::ReleaseRecord>(&b).ok())
            .is_some();
        if !rj_ok {
            integrity.push(format!(
                "run/manifest.json makes this a tinylm release, but {RELEASE_JSON} is missing or not a release record: its components cannot be checked file by file"
            ));
        }
        let layout = crate::verify::Layout::release(dir);
        match crate::manifest::Manifest::load(&layout.run) {
            Ok(m) => {
                let mut rows = crate::verify::check_files_in(&layout, &m);
                rows.extend(crate::verify::release_rows(&layout, &m));
                let bad: Vec<String> = rows.iter().filter(|r| !r.ok()).map(|r| r.artifact.clone()).collect();
                if bad.is_empty() {
                    check(
                        "run record",
                        true,
                        format!(
                            "model/ and {} checkpoint(s) are the files run/manifest.json records",
                            m.checkpoints.iter().filter(|c| c.present).count()
                        ),
                    );
                } else {
                    let why = format!(
                        "not what run/manifest.json records: {}",
                        bad.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
                    );
                    check("run record", false, why.clone());
                    invalidate("Model parameters (Final)", why.clone());
                    invalidate("Model parameters (Intermediate)", why);
                }
            }
            Err(e) => integrity.push(format!("run/manifest.json: {e}")),
        }
    }
    if dir.join(RELEASE_JSON).is_file() {
        let rj: Option<super::ReleaseRecord> =
            fs::read(dir.join(RELEASE_JSON)).ok().and_then(|b| serde_json::from_slice(&b).ok());
        match &rj {
            Some(r) => {
                dirty = r.git_dirty;
                if r.git_dirty {
                    check("build", false, format!("trained by a build of {} with uncommitted changes (--allow-dirty): source/ is not exactly the code that ran", r.git_commit));
                }
                if r.partial {
                    check(
                        "finished",
                        false,
                        format!(
                            "a partial run: released at step {} of train.steps = {} (--allow-partial)",
                            r.final_step, r.planned_steps
                        ),
                    );
                }
                // Each component mof.yml names must be the files release.json lists for it,
                // with their hashes: a path that exists is not enough.
                let mut bad = Vec::new();
                for c in record.iter().flat_map(|r| r.release.components.iter()) {
                    let why = match r.components.get(&c.name) {
                        None => Some("release.json does not list it".to_string()),
                        Some(f) if normal(&f.component_path) != normal(&c.component_path) => Some(format!(
                            "mof.yml says {}, release.json {}",
                            c.component_path, f.component_path
                        )),
                        Some(f) if f.files.is_empty() => Some("release.json lists no files for it".into()),
                        Some(f) => f.files.iter().find_map(|(rel, want)| {
                            let got = resolve_inside(dir, rel).ok().and_then(|p| sha256_file(&p).ok());
                            (got.as_deref() != Some(want.as_str()))
                                .then(|| format!("{rel} is not the file release.json records"))
                        }),
                    };
                    if let Some(w) = why {
                        bad.push((c.name.clone(), w));
                    }
                }
                check(
                    "components",
                    bad.is_empty(),
                    if bad.is_empty() {
                        "every mof.yml component is the files release.json lists, hashes included".into()
                    } else {
                        bad.iter().map(|(n, w)| format!("{n}: {w}")).collect::<Vec<_>>().join("; ")
                    },
                );
                for (n, w) in bad {
                    invalidate(&n, w);
                }
            }
            None => check("release.json", false, "release.json is not a tinylm release record".into()),
        }
        match eval_claims(dir) {
            Ok(msg) => check("evaluation", true, msg),
            Err(e) => {
                check("evaluation", false, e.clone());
                invalidate("Evaluation results", e.clone());
                invalidate("Model card", e);
            }
        }
        if a.skip_data_replay {
            check(
                "data replay",
                false,
                "skipped (--skip-data-replay): the token hashes were not re-derived from the corpus".into(),
            );
        } else if fs::symlink_metadata(dir.join("data/corpus.txt")).is_err()
            && fs::symlink_metadata(dir.join(crate::data::RELEASE_FILES)).is_err()
        {
            let e = "skipped: data/corpus.txt is not in the release, so the tokenizer and token hashes cannot be re-derived".to_string();
            check("data replay", false, e.clone());
            invalidate("Datasets", e);
        } else {
            match replay_data(dir) {
                Ok(msg) => check("data replay", true, msg),
                Err(e) => {
                    check("data replay", false, e.clone());
                    invalidate("Datasets", format!("data replay: {e}"));
                    invalidate("Data preprocessing code", format!("data replay: {e}"));
                }
            }
        }
    }

    // A fine-tune is rated no higher than what is known of its parent.
    let cap = match crate::manifest::Manifest::load(&dir.join("run")).ok().and_then(|m| m.parent) {
        Some(rec) => {
            for (f, want) in [
                (crate::checkpoint::MODEL_FILE, &rec.weights_sha256),
                (crate::checkpoint::TOKENIZER_FILE, &rec.tokenizer_sha256),
            ] {
                let p = dir.join("parent").join(f);
                if let Ok(h) = sha256_file(&p) {
                    if &h != want {
                        integrity.push(format!(
                            "parent/{f}: sha256 {h} is not the parent the manifest records ({want})"
                        ));
                    }
                }
            }
            let (cap, why) = parent_cap(&rec, a);
            checks.push(Check { name: "parent".into(), ok: cap != 0, detail: why });
            Some(cap)
        }
        None => None,
    };
    let limit = |c: u8| match cap {
        Some(0) => 0,
        Some(k) if c != 0 => c.max(k),
        _ => c,
    };

    // 4. Verdict.
    let counts = |n: &str| components.iter().any(|c| c.name == n && c.status == Status::Included);
    let met = limit(mof::class_met(&counts));
    let claimed = match (a.require, &record) {
        (Some(c), _) => c,
        (None, Some(r)) => limit(mof::class_met(&|n| r.release.components.iter().any(|c| c.name == n))),
        (None, None) => 3,
    };
    let progress = [3u8, 2, 1]
        .iter()
        .map(|&c| {
            let req: Vec<&mof::Component> = mof::required_in(c).collect();
            let inc = req.iter().filter(|rc| counts(rc.name)).count();
            ClassProgress {
                class: format!("Class {}", roman(c)),
                included: inc,
                required: req.len(),
                percent: (1000.0 * inc as f64 / req.len() as f64).round() / 10.0,
            }
        })
        .collect();
    let has = |n: &str| counts(n);
    let osi = vec![
        Check {
            name: "data information".into(),
            ok: has("Data card") && (has("Datasets") || dir.join("data/RECIPE.md").is_file()),
            detail: "a data card, and the data or a recipe precise enough to rebuild it".into(),
        },
        Check {
            name: "code".into(),
            ok: ["Training code", "Data preprocessing code", "Inference code", "Evaluation code"].iter().all(|n| has(n)) && !dirty,
            detail: "the complete code that prepared the data, trained, evaluated and runs the model, at the commit that ran".into(),
        },
        Check {
            name: "parameters".into(),
            ok: has("Model parameters (Final)"),
            detail: "the final weights under an open licence".into(),
        },
    ];
    let class_ok = claimed == 0 || (met != 0 && met <= claimed);
    let passed = integrity.is_empty() && record_err.is_none() && class_ok;
    Ok(Audit {
        dir: dir.display().to_string(),
        integrity,
        record: record.map(|_| MOF_FILE.to_string()),
        components,
        checks,
        class_met: met,
        label: mof::class_label(met).to_string(),
        class_claimed: claimed,
        progress,
        osi,
        passed,
    })
}

/// The best class a parent allows on its record alone (no release of it at hand): III for a
/// Hugging Face model (no data record), II for a tinylm one (its data is elsewhere).
pub fn known_cap(rec: &crate::init::ParentRecord) -> u8 {
    if rec.is_tinylm() {
        2
    } else {
        3
    }
}

/// The best class a fine-tune's parent allows (1 to 3, 0 for none), and why: what is known of
/// it. A Hugging Face parent has no data record (III); a tinylm parent is known by its
/// manifest's hash, and rates as its own release does when `--parent` gives that release
/// (the same manifest), else at most II, since its data is not in this folder.
fn parent_cap(rec: &crate::init::ParentRecord, a: &AuditArgs) -> (u8, String) {
    let cap = known_cap(rec);
    if !rec.is_tinylm() {
        return (
            cap,
            format!(
                "fine-tuned from {} (sha256 {}), a Hugging Face model with no tinylm record of its data or training: rated at most Class III",
                rec.name, rec.weights_sha256
            ),
        );
    }
    let known = format!(
        "fine-tuned from {} (a tinylm {}, manifest sha256 {})",
        rec.name,
        rec.kind,
        rec.manifest_sha256.as_deref().unwrap_or("unrecorded")
    );
    let Some(pdir) = &a.parent else {
        return (cap, format!("{known}; its data is not in this folder, so at most Class II (pass --parent DIR with the parent's release to rate it as that release)"));
    };
    let got = sha256_file(&pdir.join("run").join(crate::manifest::FILE)).ok();
    if got.is_none() || got.as_deref() != rec.manifest_sha256.as_deref() {
        return (
            cap,
            format!(
                "{known}; --parent {} is not its release (run/manifest.json sha256 {}), so at most Class II",
                pdir.display(),
                got.as_deref().unwrap_or("absent")
            ),
        );
    }
    let sub = AuditArgs {
        dir: pdir.clone(),
        require: None,
        skip_data_replay: a.skip_data_replay,
        no_sums: a.no_sums,
        parent: None,
    };
    match audit(&sub) {
        Ok(r) if r.passed => {
            (r.class_met, format!("{known}; its release {} audits as {}", pdir.display(), r.label))
        }
        Ok(r) => (0, format!("{known}; its release {} fails its own audit ({})", pdir.display(), r.label)),
        Err(e) => (0, format!("{known}; its release {} cannot be audited: {e}", pdir.display())),
    }
}

/// Re-prepare a release's data from `data/corpus.txt` (or `data/files/`) in a temp directory and compare the
/// tokenizer and token hashes with the run's manifest. The release's config is not trusted:
/// `data::confine` takes the corpus from the release and writes only in the temp directory.
fn replay_data(dir: &Path) -> std::result::Result<String, String> {
    let m = crate::manifest::Manifest::load(&dir.join("run")).map_err(|e| e.to_string())?;
    let tmp = tempfile::Builder::new().prefix("tinylm-audit-").tempdir().map_err(|e| e.to_string())?;
    let cfg_path = dir.join("run/config.toml");
    let mut cfg = crate::config::Config::load(&cfg_path, &[]).map_err(|e| e.to_string())?;
    let replay =
        crate::data::Replay { release: Some(dir), corpus: None, allow_download: false, scratch: tmp.path() };
    crate::data::confine(&mut cfg, &cfg_path, &replay, &|_| {}).map_err(|e| e.to_string())?;
    if cfg.data.source == "builtin" {
        // The corpus the release ships is the one replayed, not the generator's output.
        let corpus = dir.join("data/corpus.txt").canonicalize().map_err(|e| e.to_string())?;
        cfg.data.source = "file".into();
        cfg.data.path = Some(corpus.display().to_string());
        cfg.data.sha256 = Some(m.data.corpus_sha256.clone());
    }
    let given_tok =
        crate::init::data_tokenizer(&m, &dir.join("run"), Some(dir)).map_err(|e| e.to_string())?;
    let p = crate::data::prepare(&cfg, &tmp.path().join("data"), given_tok.as_deref(), &|_| {})
        .map_err(|e| e.to_string())?;
    let mut bad = Vec::new();
    for (what, got, want) in [
        ("tokenizer.json", &p.meta.tokenizer_sha256, &m.data.tokenizer_sha256),
        ("train tokens", &p.meta.train.sha256, &m.data.train_tokens_sha256),
        ("val tokens", &p.meta.val.sha256, &m.data.val_tokens_sha256),
    ] {
        if got != want {
            bad.push(format!("{what} {got} (recorded {want})"));
        }
    }
    if let Ok(h) = sha256_file(&dir.join("model/tokenizer.json")) {
        if h != m.data.tokenizer_sha256 {
            bad.push(format!("model/tokenizer.json {h} (recorded {})", m.data.tokenizer_sha256));
        }
    }
    if bad.is_empty() {
        Ok(format!(
            "{} re-prepared: tokenizer, {} train and {} val tokens match the manifest",
            if cfg.data.source == "files" { "data/files/" } else { "data/corpus.txt" },
            p.meta.train.tokens,
            p.meta.val.tokens
        ))
    } else {
        Err(format!("re-prepared data differs: {}", bad.join(", ")))
    }
}

/// The model card's evaluation results against the run record: the model-index loss and
/// perplexity must be what the manifest records for the newest evaluated checkpoint, and
/// `run/metrics.jsonl` must agree with it at that step.
fn eval_claims(dir: &Path) -> std::result::Result<String, String> {
    let m = crate::manifest::Manifest::load(&dir.join("run")).map_err(|e| e.to_string())?;
    let Some(rec) = m.checkpoints.iter().filter(|c| c.val_loss.is_some()).max_by_key(|c| c.step) else {
        return Ok("the run records no evaluation".into());
    };
    let loss = rec.val_loss.unwrap_or_default();
    let readme = fs::read_to_string(dir.join("README.md")).map_err(|e| format!("README.md: {e}"))?;
    let fm = card::front_matter(&readme).ok_or("README.md has no front matter")?;
    let v: serde_norway::Value =
        serde_norway::from_str(fm).map_err(|e| format!("README.md front matter: {e}"))?;
    let metrics = v
        .get("model-index")
        .and_then(|x| x.get(0))
        .and_then(|x| x.get("results"))
        .and_then(|x| x.get(0))
        .and_then(|x| x.get("metrics"))
        .and_then(|x| x.as_sequence())
        .ok_or("README.md has no model-index metrics")?;
    let value = |kind: &str| {
        metrics
            .iter()
            .find(|x| x.get("type").and_then(|t| t.as_str()) == Some(kind))
            .and_then(|x| x.get("value")?.as_f64())
    };
    let mut bad = Vec::new();
    if let (Some(want), got) = (rec.val_bpb, value("bits_per_byte")) {
        if got.map(f64::to_bits) != Some(want.to_bits()) {
            bad.push(format!(
                "the card's bits per byte {got:?} is not the manifest's val_bpb {want} at step {}",
                rec.step
            ));
        }
    }
    match value("loss") {
        Some(l) if l.to_bits() == loss.to_bits() => {}
        got => bad.push(format!(
            "the card's loss {got:?} is not the manifest's val_loss {loss} at step {}",
            rec.step
        )),
    }
    match value("perplexity") {
        Some(p) if p.to_bits() == libm::exp(loss).to_bits() => {}
        got => bad.push(format!("the card's perplexity {got:?} is not exp({loss})")),
    }
    let mp = dir.join("run").join(crate::train::METRICS_FILE);
    let text = fs::read_to_string(&mp).map_err(|e| format!("run/metrics.jsonl: {e}"))?;
    let points = super::plot::parse_metrics(&text, "run/metrics.jsonl").map_err(|e| e.to_string())?;
    match points.iter().rev().find(|p| p.step as u64 == rec.step && p.val_loss.is_some()) {
        Some(p) if p.val_loss.map(f64::to_bits) == Some(loss.to_bits()) => {
            if let (Some(b), Some(card_b)) = (p.val_bpb, value("bits_per_byte")) {
                if b.to_bits() != card_b.to_bits() {
                    bad.push(format!("the card's bits per byte {card_b} is not run/metrics.jsonl's {b}"));
                }
            }
        }
        Some(p) => bad.push(format!(
            "run/metrics.jsonl has val_loss {:?} at step {}, the manifest {loss}",
            p.val_loss, rec.step
        )),
        None => bad.push(format!("run/metrics.jsonl has no evaluation at step {}", rec.step)),
    }
    if bad.is_empty() {
        Ok(format!("the card's results are the manifest's (val_loss {loss:.4} at step {})", rec.step))
    } else {
        Err(bad.join("; "))
    }
}

impl Audit {
    pub fn table(&self) -> String {
        let mut s = format!("audit of {}\n\n", self.dir);
        let w = 32;
        s += &format!(
            "{:<w$} {:<5} {:<10} {:<20} {}\n",
            "component", "class", "status", "licence", "path / notes"
        );
        for c in &self.components {
            let class = format!("{}{}", roman(c.class), if c.optional { "*" } else { "" });
            let mut tail = c.path.clone();
            for n in &c.notes {
                tail += &format!("{}{n}", if tail.is_empty() { "" } else { "; " });
            }
            s += &format!("{:<w$} {:<5} {:<10} {:<20} {}\n", c.name, class, c.status.word(), c.license, tail);
        }
        s += "(* optional in its class)\n\nchecks:\n";
        for c in &self.checks {
            s += &format!("  {:<4} {:<13} {}\n", if c.ok { "ok" } else { "FAIL" }, c.name, c.detail);
        }
        for p in &self.integrity {
            s += &format!("  FAIL {p}\n");
        }
        s += "\nModel Openness Framework 1.0:\n";
        for p in &self.progress {
            s += &format!(
                "  {:<10} {:>5.1}% ({}/{} required components)\n",
                p.class, p.percent, p.included, p.required
            );
        }
        s += &format!("  class met: {}\n", self.label);
        // What each class still lacks, from the next class up to Class I.
        let first = if self.class_met == 0 { 3 } else { self.class_met - 1 };
        for class in (1..=first).rev() {
            let missing: Vec<String> = self
                .components
                .iter()
                .filter(|c| c.class == class && !c.optional && c.status != Status::Included)
                .map(|c| format!("{} ({})", c.name, c.status.word()))
                .collect();
            if !missing.is_empty() {
                s += &format!("  missing for Class {}: {}\n", roman(class), missing.join(", "));
            }
        }
        s += &format!(
            "  claimed: {}\n",
            if self.class_claimed == 0 {
                "nothing".to_string()
            } else {
                mof::class_label(self.class_claimed).to_string()
            }
        );
        s += "\nOSI Open Source AI Definition 1.0 (checked apart from the MOF class):\n";
        for c in &self.osi {
            s += &format!("  {:<4} {:<17} {}\n", if c.ok { "ok" } else { "FAIL" }, c.name, c.detail);
        }
        s += &format!(
            "\nverdict: {}\n",
            if self.passed {
                format!("PASS: {} met", self.label)
            } else if !self.integrity.is_empty() {
                format!(
                    "FAIL: {} file problem(s): {}",
                    self.integrity.len(),
                    self.integrity.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
                )
            } else if self.record.is_none() && self.checks.iter().any(|c| c.name == "mof.yml" && !c.ok) {
                "FAIL: mof.yml is not a valid MOT record".to_string()
            } else {
                format!(
                    "FAIL: {} claimed, {} met",
                    mof::class_label(self.class_claimed),
                    if self.class_met == 0 {
                        "no class".to_string()
                    } else {
                        mof::class_label(self.class_met).to_string()
                    }
                )
            }
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safetensors_header_reads_shapes_and_catches_truncation() {
        let dir = std::env::temp_dir().join(format!("tinylm-audit-st-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let t: BTreeMap<String, candle_core::Tensor> = [(
            "w".to_string(),
            candle_core::Tensor::new(&[[1f32, 2.0, 3.0], [4.0, 5.0, 6.0]], &candle_core::Device::Cpu)
                .unwrap(),
        )]
        .into();
        let bytes = crate::checkpoint::to_safetensors(&t).unwrap();
        let p = dir.join("m.safetensors");
        fs::write(&p, &bytes).unwrap();
        let h = safetensors_header(&p).unwrap();
        assert_eq!(h["w"], ("F32".to_string(), vec![2, 3]));
        fs::write(&p, &bytes[..bytes.len() - 4]).unwrap();
        assert!(safetensors_header(&p).is_err());
        // R6: two tensors over the same bytes (the file length unchanged) is not safetensors.
        let two: BTreeMap<String, candle_core::Tensor> = ["a", "b"]
            .iter()
            .map(|n| {
                (n.to_string(), candle_core::Tensor::new(&[1f32, 2.0], &candle_core::Device::Cpu).unwrap())
            })
            .collect();
        let bytes = crate::checkpoint::to_safetensors(&two).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
        let forged = header.replacen("[8,16]", "[0,8]", 1);
        assert_eq!(forged.len(), header.len() - 1, "{header}");
        let mut f = Vec::new();
        f.extend_from_slice(&(n as u64).to_le_bytes());
        f.extend_from_slice(format!("{forged} ").as_bytes());
        f.extend_from_slice(&bytes[8 + n..]);
        fs::write(&p, &f).unwrap();
        let e = safetensors_header(&p).unwrap_err();
        assert!(e.contains("not valid safetensors"), "{e}");
        fs::write(&p, b"\xff\xff\xff\xff\xff\xff\xff\x7f").unwrap();
        assert!(safetensors_header(&p).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
