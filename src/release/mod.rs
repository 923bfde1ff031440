//! `tinylm release RUN_DIR OUT_DIR`: turn a finished run into a self-contained, openly licensed
//! release that anyone can load (Hugging Face layout), audit (`tinylm audit`) and rebuild.
//!
//! ```text
//! OUT/
//!   README.md DATA_CARD.md REPORT.md      model card, data card, technical report
//!   model/                                final weights, HF config + tokenizer files
//!   checkpoints/step-NNNNNNNN/            every kept checkpoint with optimizer state, HF-loadable
//!   data/                                 corpus (when its licence allows), recipe, hashes
//!   source/                               `git archive` of the commit that trained the run
//!   run/                                  config.toml manifest.json metrics.jsonl plots/ samples/
//!   LICENSES/                             full licence texts
//!   mof.yml release.json SHA256SUMS       MOT record, component -> files, every file's hash
//! ```
//! The run directory is read only through the public API (manifest, checkpoint, config) and
//! plain files. Output is deterministic: sorted, and no timestamp but `--date`.

pub mod audit;
pub mod batches;
pub mod card;
pub mod hf;
pub mod license;
pub mod mof;
pub mod plot;

use crate::checkpoint::{self, CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE};
use crate::config::Config;
use crate::error::{Error, IoContext, Result};
use crate::manifest::Manifest;
use crate::util::{sha256_file, sha256_hex};
use license::Kind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const SUMS_FILE: &str = "SHA256SUMS";
pub const RELEASE_JSON: &str = "release.json";
pub const MOF_FILE: &str = "mof.yml";
pub const FORMAT_VERSION: u32 = 1;
/// Licence of tinylm's own code, from Cargo.toml.
pub const CODE_LICENSE: &str = env!("CARGO_PKG_LICENSE");

pub struct ReleaseArgs {
    pub run_dir: PathBuf,
    pub out_dir: PathBuf,
    pub code_license: String,
    /// None: CC0-1.0 for the built-in corpus (ours to license), "unlicensed" for a file or URL.
    pub data_license: Option<String>,
    pub weights_license: String,
    pub doc_license: String,
    pub allow_dirty: bool,
    pub no_source: bool,
    /// The git repository to archive the recorded commit from (default: the current directory's
    /// repository, else the one this binary was built in).
    pub repo: Option<PathBuf>,
    /// The corpus file of a file/URL source (default: data.path as the config records it).
    pub corpus: Option<PathBuf>,
    /// YYYY-MM-DD for mof.yml and release.json: the only date in the release.
    pub date: String,
    pub contact: String,
    /// Release a run whose last checkpoint is before train.steps (marked as partial).
    pub allow_partial: bool,
    /// A fine-tune's parent, when the run's init.from no longer holds it.
    pub parent: Option<PathBuf>,
}

/// `release.json`: what each MOF component is made of, file by file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    pub format_version: u32,
    pub tool: String,
    pub run_name: String,
    pub date: String,
    pub git_commit: String,
    pub git_dirty: bool,
    /// Set when the run was trained by a binary with uncommitted changes and released anyway.
    pub allow_dirty: bool,
    pub final_step: u64,
    pub checkpoints: Vec<u64>,
    pub data_source: String,
    pub data_included: bool,
    pub licenses: BTreeMap<String, String>,
    pub components: BTreeMap<String, ComponentFiles>,
    /// Components that are not in the release, with the reason.
    pub missing: BTreeMap<String, String>,
    /// The run stopped before `train.steps` and was released with `--allow-partial`.
    #[serde(default)]
    pub partial: bool,
    /// The run's `train.steps`: what a finished run would have reached.
    #[serde(default)]
    pub planned_steps: u64,
    /// The model a fine-tune started from, as the run's manifest records it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<crate::init::ParentRecord>,
    /// Its weights and tokenizer are under `parent/`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub parent_included: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentFiles {
    pub license: String,
    pub license_path: String,
    pub component_path: String,
    pub description: String,
    /// Every file of the component: relative path -> sha256.
    pub files: BTreeMap<String, String>,
}

/// Everything the cards and records say about a run, gathered once.
pub struct Facts {
    pub cfg: Config,
    pub manifest: Manifest,
    pub steps: Vec<u64>,
    pub final_step: u64,
    pub num_params: usize,
    pub vocab: usize,
    pub eot: u32,
    pub metrics: Vec<plot::Point>,
    pub verify_table: String,
    pub git_commit: String,
    pub git_dirty: bool,
    pub commits: Vec<String>,
    pub allow_dirty: bool,
    pub source_included: bool,
    pub data_included: bool,
    /// Why the corpus is not in the release, when it is not.
    pub data_excluded_why: Option<String>,
    pub licenses: Licenses,
    pub date: String,
    pub contact: String,
    pub samples: Vec<(u64, String)>,
    pub sample_cmd: String,
    /// The last checkpoint is before train.steps (`--allow-partial`).
    pub partial: bool,
    /// The final evaluation as the manifest records it (loss) with the metrics.jsonl line
    /// checked against it: (step, loss, ppl, bpb).
    pub final_eval: Option<(f64, f64, f64, f64)>,
    /// A fine-tune's parent ships under `parent/`; else why not (None for a run from scratch).
    pub parent_included: bool,
    pub parent_excluded_why: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Licenses {
    pub code: String,
    pub data: String,
    pub weights: String,
    pub document: String,
}

impl Licenses {
    pub fn for_kind(&self, k: Kind) -> &str {
        match k {
            Kind::Code => &self.code,
            Kind::Data => &self.data,
            Kind::Document => &self.document,
        }
    }
}

/// Today's date (UTC) as YYYY-MM-DD, from the system clock (civil-from-days, H. Hinnant).
pub fn today() -> String {
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// A real calendar date written YYYY-MM-DD (proleptic Gregorian, years 1000 to 9999).
pub fn valid_date(s: &str) -> bool {
    let b = s.as_bytes();
    let shape = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !shape {
        return false;
    }
    let num = |r: std::ops::Range<usize>| s[r].parse::<u32>().unwrap_or(0);
    let (y, m, d) = (num(0..4), num(5..7), num(8..10));
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => 0,
    };
    y >= 1000 && d >= 1 && d <= days
}

/// Every regular file under `root`, as sorted relative paths with `/` separators.
pub fn walk(root: &Path) -> Result<Vec<String>> {
    fn go(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
        for e in fs::read_dir(dir).at(dir)? {
            let e = e.at(dir)?;
            let p = e.path();
            let ft = e.file_type().at(&p)?;
            if ft.is_dir() {
                go(root, &p, out)?;
            } else {
                let rel = p.strip_prefix(root).unwrap_or(&p);
                out.push(
                    rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/"),
                );
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    go(root, root, &mut out)?;
    out.sort();
    Ok(out)
}

/// `sha256sum`-format lines for every file but SHA256SUMS itself.
pub fn sums(root: &Path) -> Result<String> {
    let mut s = String::new();
    for rel in walk(root)? {
        if rel != SUMS_FILE {
            s += &format!("{}  {rel}\n", sha256_file(&root.join(&rel))?);
        }
    }
    Ok(s)
}

struct Out {
    root: PathBuf,
}

impl Out {
    fn put(&self, rel: &str, bytes: &[u8]) -> Result<()> {
        let p = self.root.join(rel);
        if let Some(d) = p.parent() {
            fs::create_dir_all(d).at(d)?;
        }
        fs::write(&p, bytes).at(&p)
    }
    fn copy(&self, from: &Path, rel: &str) -> Result<()> {
        let p = self.root.join(rel);
        if let Some(d) = p.parent() {
            fs::create_dir_all(d).at(d)?;
        }
        fs::copy(from, &p).at(from)?;
        Ok(())
    }
}

fn check_license(flag: &str, expr: &str, allow_unlicensed: bool) -> Result<String> {
    let known_texts: Vec<&str> = license::KNOWN.iter().filter(|l| l.text().is_some()).map(|l| l.id).collect();
    let c = license::canonical(expr).map_err(|bad| {
        Error::hint(
            format!("{flag} {expr:?}: {bad:?} is not an SPDX licence id tinylm knows"),
            format!("pass one of: {}", known_texts.join(", ")),
        )
    })?;
    if c == license::UNLICENSED {
        if allow_unlicensed {
            return Ok(c);
        }
        return Err(Error::hint(
            format!("{flag} must name a licence"),
            format!("pass one of: {}", known_texts.join(", ")),
        ));
    }
    for part in license::ids(&c) {
        if license::find(&part).and_then(|l| l.text()).is_none() {
            return Err(Error::hint(
                format!("{flag} {part}: tinylm ships no text of {part}, and a release must carry the full text of each licence"),
                format!("pass one of: {}", known_texts.join(", ")),
            ));
        }
    }
    Ok(c)
}

fn git(repo: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").arg("-C").arg(repo).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The repository that holds `commit`: --repo, else the current directory's, else the one
/// this binary was built from.
fn find_repo(commit: &str, hint: Option<&Path>) -> Result<PathBuf> {
    let mut tried = Vec::new();
    let candidates: Vec<PathBuf> = match hint {
        Some(p) => vec![p.to_path_buf()],
        None => vec![PathBuf::from("."), PathBuf::from(env!("CARGO_MANIFEST_DIR"))],
    };
    for c in candidates {
        if git(&c, &["cat-file", "-e", &format!("{commit}^{{commit}}")]).is_some() {
            return Ok(c);
        }
        tried.push(c.display().to_string());
    }
    Err(Error::hint(
        format!("commit {commit} (recorded in the run's manifest) is not in the git repository at {}", tried.join(" or ")),
        "pass --repo DIR with a clone of tinylm that has this commit, or --no-source to release without the code (Class I and II need it)",
    ))
}

/// `git archive COMMIT | tar -x -C dest`.
fn archive(repo: &Path, commit: &str, dest: &Path) -> Result<()> {
    fs::create_dir_all(dest).at(dest)?;
    let fail = |e: String| {
        Error::hint(
            format!("git archive {commit} from {} failed: {e}", repo.display()),
            "check that git and tar are installed",
        )
    };
    let mut g = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["archive", "--format=tar", commit])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    let stdout = g.stdout.take().ok_or_else(|| fail("no output".into()))?;
    let t = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(dest)
        .stdin(stdout)
        .status()
        .map_err(|e| fail(e.to_string()))?;
    let gs = g.wait().map_err(|e| fail(e.to_string()))?;
    if !gs.success() || !t.success() {
        return Err(fail(format!("git exited {gs}, tar exited {t}")));
    }
    Ok(())
}

/// A files source: the listing always (`data/files.sha256`), and, when the licence allows,
/// every file at its listing path under `data/files/`, each checked against the manifest. The
/// files are read against `--corpus DIR`, else the working directory (where the run trained).
fn ship_files(o: &Out, m: &Manifest, a: &ReleaseArgs, included: bool) -> Result<()> {
    let pairs: Vec<(String, String)> =
        m.data.files.iter().map(|f| (f.path.clone(), f.sha256.clone())).collect();
    let listing = crate::sources::listing(&pairs);
    if sha256_hex(listing.as_bytes()) != m.data.corpus_sha256 {
        return Err(Error::hint(
            "the manifest's file list does not hash to its recorded corpus pin",
            "the run's manifest.json was edited; it cannot be released",
        ));
    }
    o.put(&format!("data/{}", crate::data::LISTING), listing.as_bytes())?;
    if !included {
        return Ok(());
    }
    let base = a.corpus.clone().unwrap_or_else(|| PathBuf::from("."));
    for f in &m.data.files {
        if crate::data::leaves_folder(Path::new(&f.path)) {
            return Err(Error::hint(
                format!("{}: an absolute path, or one that leaves the folder, cannot be shipped inside a release", f.path),
                "train with data.paths relative to the working directory, or publish without the data (no --data-license)",
            ));
        }
        let src = base.join(&f.path);
        let got = crate::util::sha256_file(&src).map_err(|e| {
            Error::hint(
                format!("corpus file {}: {e}", src.display()),
                "run `tinylm release` where the run was trained, or pass --corpus DIR (the directory data.paths are relative to)",
            )
        })?;
        if got != f.sha256 {
            return Err(Error::hint(
                format!("{} hashes to {got}, not the run's recorded {}", src.display(), f.sha256),
                "the file changed since the run trained on it; restore it to release the data",
            ));
        }
        o.copy(&src, &format!("{}/{}", crate::data::RELEASE_FILES, f.path))?;
    }
    Ok(())
}

/// The corpus bytes of the run, checked against the manifest: regenerated for the built-in
/// source, read from --corpus or data.path for a file/URL source.
fn corpus_bytes(cfg: &Config, m: &Manifest, a: &ReleaseArgs) -> Result<Vec<u8>> {
    let bytes = if cfg.data.source == "builtin" {
        crate::corpus::generate(cfg.data.builtin_seed, cfg.data.builtin_bytes).into_bytes()
    } else {
        let p = a
            .corpus
            .clone()
            .or_else(|| cfg.data.path.as_ref().map(PathBuf::from))
            .or_else(|| {
                cfg.data.url.as_ref().map(|u| {
                    Path::new(&cfg.data.dir)
                        .join(u.rsplit('/').next().filter(|s| !s.is_empty()).unwrap_or("download.txt"))
                })
            })
            .ok_or_else(|| Error::hint("the run's config names no corpus file", "pass --corpus FILE"))?;
        fs::read(&p).map_err(|e| {
            Error::hint(
                format!("corpus {}: {e}", p.display()),
                "pass --corpus FILE (the file the run trained on; data.path is relative to where it was trained)",
            )
        })?
    };
    let got = sha256_hex(&bytes);
    if got != m.data.corpus_sha256 {
        return Err(Error::hint(
            format!("corpus sha256 {got} is not the run's recorded {}", m.data.corpus_sha256),
            "pass --corpus with the exact file the run trained on",
        ));
    }
    Ok(bytes)
}

/// The first of `candidates` present under `root`, else `fallback`.
fn first_present(root: &Path, candidates: &[&str], fallback: &str) -> String {
    candidates
        .iter()
        .find(|c| root.join(c).exists())
        .map(|c| c.to_string())
        .unwrap_or_else(|| fallback.to_string())
}

pub struct Summary {
    pub out_dir: PathBuf,
    pub class: u8,
    pub files: usize,
    pub missing: BTreeMap<String, String>,
    pub dirty: bool,
}

pub fn release(a: &ReleaseArgs, log: &dyn Fn(&str)) -> Result<Summary> {
    if a.out_dir.exists() {
        let empty = fs::read_dir(&a.out_dir).map(|mut r| r.next().is_none()).unwrap_or(false);
        if !empty {
            return Err(Error::hint(
                format!("{} already exists and is not empty", a.out_dir.display()),
                "pass a new OUT_DIR, or remove the old release first",
            ));
        }
    }
    if !valid_date(&a.date) {
        return Err(Error::hint(
            format!("--date {:?} is not a calendar date written YYYY-MM-DD", a.date),
            "e.g. --date 2026-01-31",
        ));
    }
    let run = &a.run_dir;
    // No trainer may write the run while it is released (a trainer holds the lock exclusively;
    // this shared lock refuses while one runs, and keeps one from starting).
    let _lock = crate::run::RunDir::open_shared(run)?;
    // The manifest is read once, and the release holds exactly what it records: these bytes
    // become run/manifest.json, and only its present checkpoints are copied.
    let manifest_path = run.join(crate::manifest::FILE);
    let manifest_bytes = fs::read(&manifest_path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::hint(
                format!("{} has no manifest.json: it is not a tinylm run directory", run.display()),
                "pass the directory `tinylm train` wrote, e.g. checkpoints/tiny",
            )
        } else {
            Error::Io { path: manifest_path.clone(), source: e }
        }
    })?;
    let m = Manifest::load(run)?;
    let cfg = Config::load(&run.join(CONFIG_FILE), &[])?;
    let steps: Vec<(u64, PathBuf)> =
        m.checkpoints.iter().filter(|c| c.present).map(|c| (c.step, run.join(&c.dir))).collect();
    for (s, _) in checkpoint::list(run)? {
        if !steps.iter().any(|(x, _)| *x == s) {
            log(&format!(
                "note: {} is on disk but not a present checkpoint in the manifest; it is left out",
                checkpoint::dir_name(s)
            ));
        }
    }
    let Some((final_step, final_dir)) = steps.last().cloned() else {
        return Err(Error::hint(
            format!("{} has no recorded checkpoints", run.display()),
            "train the run to completion first",
        ));
    };
    let partial = final_step < cfg.train.steps;
    if partial && !a.allow_partial {
        return Err(Error::hint(
            format!(
                "{} stopped at step {final_step} of train.steps = {}: the run is not finished",
                run.display(),
                cfg.train.steps
            ),
            format!(
                "finish it with `{}`, or pass --allow-partial to release it marked as partial",
                crate::train::resume_command(run)
            ),
        ));
    }
    let final_eval = checked_final_eval(run, &m)?;
    // A damaged run must not be published: every recorded file is checked first.
    let rows = crate::verify::check_files(run, &m);
    let bad: Vec<String> = rows
        .iter()
        .filter(|r| r.recorded != r.recomputed)
        .map(|r| format!("{} ({})", r.artifact, r.recomputed))
        .collect();
    if !bad.is_empty() {
        return Err(Error::hint(
            format!("{} does not match its manifest: {}", run.display(), bad.join(", ")),
            "restore the files (or retrain); `tinylm verify --files-only` shows the table",
        ));
    }
    let verify_table =
        crate::verify::Report { rows, divergence: None, notes: Vec::new(), unverified: Vec::new() }.table();

    let lic = Licenses {
        code: check_license("--code-license", &a.code_license, false)?,
        weights: check_license("--weights-license", &a.weights_license, false)?,
        document: check_license("--doc-license", &a.doc_license, false)?,
        data: match &a.data_license {
            Some(d) => check_license("--data-license", d, true)?,
            None if cfg.data.source == "builtin" => "CC0-1.0".to_string(),
            None => license::UNLICENSED.to_string(),
        },
    };
    // What built the run.
    let commits: Vec<String> = {
        let mut c: Vec<String> = m.sessions.iter().map(|s| s.build.git_commit.clone()).collect();
        c.dedup();
        c
    };
    let git_commit = commits.last().cloned().unwrap_or_else(|| "unknown".into());
    let git_dirty = m.sessions.iter().any(|s| s.build.git_dirty);
    if git_dirty && !a.allow_dirty {
        return Err(Error::hint(
            format!(
                "{} was trained by a binary built from a modified tree (manifest: git_dirty), so no commit holds the code that ran",
                run.display()
            ),
            "commit, rebuild and retrain; or pass --allow-dirty to publish anyway, marked as such in the card and release.json",
        ));
    }

    let (data_included, data_excluded_why) = match license::judge(&lic.data, Kind::Data) {
        license::Verdict::Open | license::Verdict::WrongKind(_) => (true, None),
        license::Verdict::Unlicensed => (
            false,
            Some(format!(
                "the {} corpus came with no licence (pass --data-license SPDX if its licence allows redistribution)",
                cfg.data.source
            )),
        ),
        license::Verdict::NotOpen(why) => (false, Some(why)),
    };

    // A fine-tune's parent ships when its licence allows (a tinylm run or checkpoint with no
    // recorded licence is the publisher's own), so the release rebuilds from itself alone.
    let (parent_model, parent_excluded_why) = match &m.parent {
        None => (None, None),
        Some(rec) => {
            let verdict = if rec.is_tinylm() && rec.license.is_empty() {
                license::Verdict::Open
            } else {
                license::judge(&rec.license, Kind::Data)
            };
            match verdict {
                license::Verdict::Open | license::Verdict::WrongKind(_) => {
                    (Some(crate::init::for_verify(&cfg, rec, a.parent.as_deref(), None)?), None)
                }
                license::Verdict::Unlicensed => (
                    None,
                    Some(format!(
                        "the parent {} carries no licence known to tinylm, so its weights are not redistributed",
                        rec.name
                    )),
                ),
                license::Verdict::NotOpen(why) => (
                    None,
                    Some(format!("the parent {}'s licence does not allow it here: {why}", rec.name)),
                ),
            }
        }
    };

    let parent = a.out_dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(parent).at(parent)?;
    let name =
        a.out_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "release".into());
    let tmp = parent.join(format!(".tmp-release-{}-{name}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).at(&tmp)?;
    }
    fs::create_dir_all(&tmp).at(&tmp)?;
    let o = Out { root: tmp.clone() };
    let built = (|| -> Result<Summary> {
        // Models: the final one, and every kept checkpoint, each loadable on its own.
        log(&format!("checking and exporting {} checkpoints", steps.len()));
        let (_, final_model, tok) = crate::sample::load_model(&final_dir)?;
        let hfm_vocab = tok.vocab_size();
        let eot = tok.eot();
        let hfm = hf::HfModel { cfg: &cfg, vocab: hfm_vocab, eot };
        let side = hf::side_files(&hfm)?;
        for f in [MODEL_FILE, TOKENIZER_FILE] {
            o.copy(&final_dir.join(f), &format!("model/{f}"))?;
        }
        for (n, b) in &side {
            o.put(&format!("model/{n}"), b)?;
        }
        let mut samples = Vec::new();
        let seed = cfg.run.seed;
        let e = &cfg.eval;
        let sample_cmd = format!(
            "tinylm sample --checkpoint checkpoints/step-NNNNNNNN --prompt={} --tokens {} --temperature {} --top-k {} --seed {seed}",
            crate::run::shell_quote(&e.prompt),
            e.sample_tokens,
            e.temperature,
            e.top_k
        );
        for (step, dir) in &steps {
            let rel = format!("checkpoints/{}", checkpoint::dir_name(*step));
            let state = checkpoint::read_state(dir)?;
            for f in state.files.keys().map(String::as_str).chain([checkpoint::STATE_FILE]) {
                o.copy(&dir.join(f), &format!("{rel}/{f}"))?;
            }
            for (n, b) in &side {
                o.put(&format!("{rel}/{n}"), b)?;
            }
            // The same text `tinylm sample` prints for this checkpoint with these options.
            let text = crate::sample::run(&crate::sample::SampleArgs {
                checkpoint: dir.clone(),
                prompt: e.prompt.clone(),
                tokens: e.sample_tokens as usize,
                temperature: e.temperature,
                top_k: e.top_k as usize,
                seed,
            })?;
            let cmd = sample_cmd.replace("step-NNNNNNNN", &checkpoint::dir_name(*step));
            o.put(
                &format!("run/samples/{}.txt", checkpoint::dir_name(*step)),
                format!("$ {cmd}\n{text}\n").as_bytes(),
            )?;
            samples.push((*step, text));
        }

        // The run record, metrics and plot.
        log("writing run record, plot and data");
        for f in [CONFIG_FILE, crate::train::METRICS_FILE] {
            o.copy(&run.join(f), &format!("run/{f}"))?;
        }
        o.put(&format!("run/{}", crate::manifest::FILE), &manifest_bytes)?;
        let metrics_path = run.join(crate::train::METRICS_FILE);
        let metrics_text = fs::read_to_string(&metrics_path).at(&metrics_path)?;
        let metrics = plot::parse_metrics(&metrics_text, &metrics_path.display().to_string())?;
        o.put(
            "run/plots/loss.svg",
            plot::loss_svg(&metrics, &format!("tinylm run {}", m.run_name))?.as_bytes(),
        )?;

        // Data: the corpus when its licence allows, always the recipe and the hashes.
        if cfg.data.source == "files" {
            ship_files(&o, &m, a, data_included)?;
        } else if data_included {
            o.put("data/corpus.txt", &corpus_bytes(&cfg, &m, a)?)?;
        }
        let data_json = serde_json::json!({
            "source": cfg.data.source, "url": cfg.data.url, "path": cfg.data.path,
            "license": lic.data, "included": data_included,
            "corpus_sha256": m.data.corpus_sha256, "corpus_bytes": m.data.corpus_bytes,
            "val_fraction": cfg.data.val_fraction, "builtin_seed": cfg.data.builtin_seed,
            "builtin_bytes": cfg.data.builtin_bytes, "vocab_size": hfm_vocab,
            "vocab_size_configured": cfg.tokenizer.vocab_size,
            "tokenizer_sha256": m.data.tokenizer_sha256,
            "train_tokens": m.data.train_tokens, "train_tokens_sha256": m.data.train_tokens_sha256,
            "val_tokens": m.data.val_tokens, "val_tokens_sha256": m.data.val_tokens_sha256,
            "token_dtype": m.data.token_dtype, "paths": cfg.data.paths, "text_field": cfg.data.text_field,
            "files": m.data.files,
        });
        o.put("data/data.json", &hf::pretty(&data_json)?)?;

        // The parent of a fine-tune, and its record.
        if let Some(p) = &parent_model {
            o.put(&format!("parent/{MODEL_FILE}"), &p.weights)?;
            o.put(&format!("parent/{TOKENIZER_FILE}"), &p.tokenizer)?;
            if let Some((_, b, _)) = &p.optim {
                o.put(&format!("parent/{}", checkpoint::OPTIM_FILE), b)?;
            }
        }
        if let Some(rec) = &m.parent {
            let mut j = serde_json::to_string_pretty(rec).map_err(|e| Error::msg(e.to_string()))?;
            j.push('\n');
            o.put("parent/parent.json", j.as_bytes())?;
        }

        // The code that trained it.
        let source_included = if a.no_source {
            false
        } else {
            if git_commit == "unknown" {
                return Err(Error::hint(
                    "the run's manifest records no git commit (tinylm was built outside a git checkout)",
                    "pass --no-source to release without the code (Class I and II need it)",
                ));
            }
            let repo = find_repo(&git_commit, a.repo.as_deref())?;
            log(&format!("archiving commit {git_commit} from {}", repo.display()));
            archive(&repo, &git_commit, &tmp.join("source"))?;
            true
        };

        // Licence texts.
        for expr in [&lic.code, &lic.data, &lic.weights, &lic.document] {
            for l in license::texts(expr) {
                o.put(&format!("LICENSES/{}.txt", l.id), l.text().unwrap_or_default().as_bytes())?;
            }
        }

        let facts = Facts {
            cfg: cfg.clone(),
            manifest: m.clone(),
            steps: steps.iter().map(|(s, _)| *s).collect(),
            final_step,
            num_params: final_model.num_params(),
            vocab: hfm_vocab,
            eot,
            metrics,
            verify_table: verify_table.clone(),
            git_commit: git_commit.clone(),
            git_dirty,
            commits: commits.clone(),
            allow_dirty: a.allow_dirty,
            source_included,
            data_included,
            data_excluded_why: data_excluded_why.clone(),
            licenses: lic.clone(),
            date: a.date.clone(),
            contact: a.contact.clone(),
            samples,
            sample_cmd,
            partial,
            final_eval,
            parent_included: parent_model.is_some(),
            parent_excluded_why: parent_excluded_why.clone(),
        };
        let comps = components(&facts, &tmp);
        let class = mof::class_met(&|n| comps.iter().any(|(c, _)| c == n));
        // A fine-tune claims no more than its parent is known to give (audit without --parent).
        let class = match &m.parent {
            Some(p) if class != 0 => class.max(audit::known_cap(p)),
            _ => class,
        };
        o.put("README.md", card::model_card(&facts, class, &comps)?.as_bytes())?;
        o.put("DATA_CARD.md", card::data_card(&facts).as_bytes())?;
        o.put("REPORT.md", card::report(&facts, class).as_bytes())?;
        o.put("data/RECIPE.md", card::data_recipe(&facts).as_bytes())?;

        // mof.yml: the components present, each with its licence.
        let lp = |expr: &str| {
            license::texts(expr).first().map(|l| format!("LICENSES/{}.txt", l.id)).unwrap_or_default()
        };
        let np = |expr: &str| mof::NamePath { name: expr.to_string(), path: lp(expr) };
        let record = mof::Record {
            framework: mof::Framework {
                name: mof::FRAMEWORK_NAME.into(),
                version: mof::FRAMEWORK_VERSION.into(),
                date: mof::FRAMEWORK_DATE.into(),
            },
            release: mof::Release {
                name: format!("tinylm-{}", m.run_name),
                version: format!("step-{final_step}"),
                date: a.date.clone(),
                kind: "language".into(),
                architecture: "transformer decoder".into(),
                treatment: "pre-trained".into(),
                // The schema's treatments are pre-trained, instruct and chat fine-tuned: a
                // fine-tune on more text is continued pre-training; the origin names the parent.
                origin: match &m.parent {
                    Some(p) => {
                        format!("fine-tuned from {} (model.safetensors sha256 {})", p.name, p.weights_sha256)
                    }
                    None => "none (trained from scratch)".into(),
                },
                producer: "tinylm".into(),
                contact: a.contact.clone(),
                license: mof::ReleaseLicenses {
                    distribution: np(&lic.weights),
                    code: np(&lic.code),
                    data: np(&lic.data),
                    document: np(&lic.document),
                },
                components: comps
                    .iter()
                    .map(|(name, c)| mof::RecordComponent {
                        name: name.clone(),
                        description: c.description.clone(),
                        license: c.license.clone(),
                        license_path: c.license_path.clone(),
                        component_path: c.component_path.clone(),
                    })
                    .collect(),
            },
        };
        o.put(MOF_FILE, record.to_yaml().map_err(Error::msg)?.as_bytes())?;

        // release.json: each component's files and hashes.
        let mut components_json = BTreeMap::new();
        for (name, mut c) in comps.clone() {
            let p = tmp.join(&c.component_path);
            let files: Vec<String> = if p.is_dir() {
                walk(&p)?
                    .into_iter()
                    .map(|f| format!("{}/{f}", c.component_path.trim_end_matches('/')))
                    .collect()
            } else {
                vec![c.component_path.clone()]
            };
            for f in files {
                c.files.insert(f.clone(), sha256_file(&tmp.join(&f))?);
            }
            components_json.insert(name, c);
        }
        let missing: BTreeMap<String, String> = mof::COMPONENTS
            .iter()
            .filter(|c| !components_json.contains_key(c.name))
            .map(|c| (c.name.to_string(), missing_reason(c.name, &facts)))
            .collect();
        let rec = ReleaseRecord {
            format_version: FORMAT_VERSION,
            tool: format!("tinylm {}", env!("CARGO_PKG_VERSION")),
            run_name: m.run_name.clone(),
            date: a.date.clone(),
            git_commit: git_commit.clone(),
            git_dirty,
            allow_dirty: a.allow_dirty,
            final_step,
            checkpoints: facts.steps.clone(),
            data_source: cfg.data.source.clone(),
            data_included,
            licenses: [
                ("code", &lic.code),
                ("data", &lic.data),
                ("weights", &lic.weights),
                ("document", &lic.document),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
            components: components_json,
            missing: missing.clone(),
            partial,
            planned_steps: cfg.train.steps,
            parent: m.parent.clone(),
            parent_included: parent_model.is_some(),
        };
        let mut rj = serde_json::to_string_pretty(&rec).map_err(|e| Error::msg(e.to_string()))?;
        rj.push('\n');
        o.put(RELEASE_JSON, rj.as_bytes())?;
        let s = sums(&tmp)?;
        o.put(SUMS_FILE, s.as_bytes())?;
        Ok(Summary {
            out_dir: a.out_dir.clone(),
            class,
            files: s.lines().count() + 1,
            missing,
            dirty: git_dirty,
        })
    })();
    match built {
        Ok(summary) => {
            if a.out_dir.exists() {
                fs::remove_dir(&a.out_dir).at(&a.out_dir)?;
            }
            fs::rename(&tmp, &a.out_dir).at(&a.out_dir)?;
            Ok(summary)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// The final evaluation the card publishes: the loss the manifest records for the newest
/// checkpoint that has one, and that step's `metrics.jsonl` line, which must agree with it
/// (loss to the bit, perplexity = exp(loss)); a metrics file that says otherwise is refused.
fn checked_final_eval(run: &Path, m: &Manifest) -> Result<Option<(f64, f64, f64, f64)>> {
    let Some(rec) = m.checkpoints.iter().filter(|c| c.val_loss.is_some()).max_by_key(|c| c.step) else {
        return Ok(None);
    };
    let loss = rec.val_loss.unwrap_or_default();
    let path = run.join(crate::train::METRICS_FILE);
    let text = fs::read_to_string(&path).at(&path)?;
    let points = plot::parse_metrics(&text, &path.display().to_string())?;
    let line = points.iter().rev().find(|p| p.step as u64 == rec.step && p.val_loss.is_some());
    let refuse = |why: String| {
        Error::hint(
            format!("{}: {why}", path.display()),
            "metrics.jsonl must be the one the run wrote; restore it (the manifest's val_loss is what the checkpoints record)",
        )
    };
    let Some(p) = line else {
        return Err(refuse(format!(
            "no evaluation at step {}, where the manifest records val_loss {loss}",
            rec.step
        )));
    };
    let (l, ppl, bpb) =
        (p.val_loss.unwrap_or(f64::NAN), p.val_ppl.unwrap_or(f64::NAN), p.val_bpb.unwrap_or(f64::NAN));
    // Bits per byte: the manifest records it (runs from before only have metrics.jsonl's).
    let bpb_ok = match rec.val_bpb {
        Some(b) => b.to_bits() == bpb.to_bits(),
        None => bpb.is_finite() && bpb > 0.0,
    };
    if l.to_bits() != loss.to_bits() || ppl.to_bits() != libm::exp(loss).to_bits() || !bpb_ok {
        return Err(refuse(format!(
            "the evaluation at step {} (val_loss {l}, val_ppl {ppl}, val_bpb {bpb}) disagrees with the manifest (val_loss {loss}, so perplexity {})",
            rec.step,
            libm::exp(loss)
        )));
    }
    Ok(Some((rec.step as f64, loss, ppl, bpb)))
}

fn missing_reason(name: &str, f: &Facts) -> String {
    match name {
        "Datasets" | "Evaluation data" => {
            f.data_excluded_why.clone().unwrap_or_else(|| "the corpus is not in the release".into())
        }
        "Model parameters (Intermediate)" => "the run kept fewer than two checkpoints before the final one (set checkpoint.every and keep_last = 0)".into(),
        _ if !f.source_included => "released with --no-source: the code is not in the release".into(),
        _ => "not produced".into(),
    }
}

/// The MOF components a release holds: name -> (licence, paths, description). Files are listed
/// later, once everything is written.
fn components(f: &Facts, root: &Path) -> Vec<(String, ComponentFiles)> {
    let l = &f.licenses;
    let lp = |expr: &str| {
        license::texts(expr).first().map(|l| format!("LICENSES/{}.txt", l.id)).unwrap_or_default()
    };
    let mut out: Vec<(String, ComponentFiles)> = Vec::new();
    let mut add = |name: &str, lic: &str, path: String, description: String| {
        out.push((
            name.to_string(),
            ComponentFiles {
                license: lic.to_string(),
                license_path: lp(lic),
                component_path: path,
                description,
                files: BTreeMap::new(),
            },
        ));
    };
    let src = |cands: &[&str]| {
        let rel: Vec<String> = cands.iter().map(|c| format!("source/{c}")).collect();
        let rel: Vec<&str> = rel.iter().map(String::as_str).collect();
        first_present(root, &rel, "source")
    };
    if f.source_included {
        let dirty = if f.git_dirty {
            " WARNING: the run was trained by a build with uncommitted changes (--allow-dirty); this is the recorded commit, not exactly the code that ran."
        } else {
            ""
        };
        add(
            "Model architecture",
            &l.code,
            src(&["src/model.rs", "src/model/mod.rs", "src/model"]),
            format!("Llama decoder in candle (RMSNorm, RoPE, SwiGLU); HF LlamaForCausalLM layout.{dirty}"),
        );
        add(
            "Training code",
            &l.code,
            "source".into(),
            format!("The tinylm crate at commit {}: `tinylm train`.{dirty}", f.git_commit),
        );
        add(
            "Inference code",
            &l.code,
            src(&["src/sample.rs", "src/sample"]),
            format!("Text generation (`tinylm sample`); model/ also loads in HF transformers.{dirty}"),
        );
        add(
            "Evaluation code",
            &l.code,
            src(&["src/train.rs", "src/train/eval.rs", "src/eval.rs"]),
            format!("Validation loss, perplexity and bits per byte over fixed windows (`evaluate`).{dirty}"),
        );
        add(
            "Data preprocessing code",
            &l.code,
            src(&["src/data.rs", "src/data/mod.rs", "src/data"]),
            format!("Corpus, split, byte-level BPE tokenizer, token files (`tinylm prepare`).{dirty}"),
        );
        add(
            "Supporting libraries and tools",
            &l.code,
            src(&["Cargo.lock"]),
            "Pinned dependency versions (candle, tokenizers, safetensors); each crate under its own licence."
                .into(),
        );
    }
    add(
        "Model parameters (Final)",
        &l.weights,
        "model".into(),
        format!(
            "Final weights (step {}), fp32 safetensors, HF Llama layout with config and tokenizer.",
            f.final_step
        ),
    );
    if f.steps.len() > 2 {
        add(
            "Model parameters (Intermediate)",
            &l.weights,
            "checkpoints".into(),
            format!("Every kept checkpoint ({} in all) with AdamW moments and state.json.", f.steps.len()),
        );
    }
    add("Model metadata", &l.weights, "run".into(), "Resolved training config, manifest (hashes of every input and output, build, sessions), per-step metrics; optimizer state is in checkpoints/.".into());
    add("Evaluation results", &l.document, "run/metrics.jsonl".into(), "Validation loss, perplexity and bits per byte at every eval step (also in README.md model-index and REPORT.md).".into());
    add("Model card", &l.document, "README.md".into(), "Hugging Face model card.".into());
    add(
        "Data card",
        &l.document,
        "DATA_CARD.md".into(),
        "Motivation, composition, collection, preprocessing, uses, distribution, maintenance of the data."
            .into(),
    );
    add(
        "Technical report",
        &l.document,
        "REPORT.md".into(),
        "Every training decision with its value and reason, loss curves, evaluation, verification.".into(),
    );
    add(
        "Research paper",
        &l.document,
        "REPORT.md".into(),
        "The technical report is the paper: it documents the method, the set-up and the evidence.".into(),
    );
    add(
        "Sample model outputs",
        &l.document,
        "run/samples".into(),
        "A fixed-seed sample from every checkpoint, with the command that reproduces it.".into(),
    );
    if f.data_included {
        add(
            "Datasets",
            &l.data,
            "data".into(),
            format!(
                "The {} corpus (sha256 {}), split rule, tokenizer recipe and token hashes.",
                f.cfg.data.source, f.manifest.data.corpus_sha256
            ),
        );
        let (path, what) = if f.cfg.data.source == "files" {
            (
                crate::data::RELEASE_FILES.to_string(),
                format!(
                    "The validation split: whole documents of data/files/, chosen by hash (data.val_fraction = {}; data/RECIPE.md).",
                    f.cfg.data.val_fraction
                ),
            )
        } else {
            (
                "data/corpus.txt".to_string(),
                format!(
                    "The validation split: the last {} of data/corpus.txt, cut at a line start.",
                    f.cfg.data.val_fraction
                ),
            )
        };
        add("Evaluation data", &l.data, path, what);
    }
    out.sort_by_key(|(n, _)| mof::COMPONENTS.iter().position(|c| c.name == n).unwrap_or(99));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert!(valid_date("2026-01-31"));
        assert!(!valid_date("2026-1-31"));
        assert!(!valid_date("yesterday"));
        for bad in ["2026-13-45", "2026-00-10", "2026-02-29", "2026-04-31", "2026-01-00", "1900-02-29"] {
            assert!(!valid_date(bad), "{bad}");
        }
        assert!(valid_date("2024-02-29") && valid_date("2000-02-29") && valid_date("2026-12-31"));
        assert!(valid_date(&today()));
    }
}
