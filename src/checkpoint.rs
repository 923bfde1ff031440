//! Checkpoints: `step-NNNNNNNN/` directories that hold everything the next step reads.
//!
//! A checkpoint is written into a temp directory, every file fsynced, then renamed into place,
//! so a `step-*` directory is always complete (rename is atomic); temp directories left by a
//! crash start with `.tmp-` and are never read. `state.json` records the format version and the
//! SHA-256 of every other file, and loading checks both, so a torn, corrupt or foreign checkpoint
//! is refused with a message instead of misread.
//!
//! The RNG needs no saved state (every stream is keyed by step) and the LR is a function of the
//! step, so weights + optimizer moments + step are the whole future.

use crate::error::{Error, IoContext, Result};
use crate::util::{sha256_hex, sync_dir};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const FORMAT_VERSION: u32 = 1;
pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIM_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "state.json";
pub const CONFIG_FILE: &str = "config.toml";
pub const TOKENIZER_FILE: &str = "tokenizer.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub format_version: u32,
    /// Optimizer steps completed; resuming runs step `step` next.
    pub step: u64,
    pub config_sha256: String,
    pub train_loss: f64,
    pub val_loss: Option<f64>,
    /// Perplexity and bits per byte of that evaluation (absent where there was none, and in
    /// checkpoints written before they were recorded): what a release publishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_ppl: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_bpb: Option<f64>,
    /// SHA-256 of the data it was trained on: corpus, tokenizer, train and val token files.
    pub data: BTreeMap<String, String>,
    /// SHA-256 of every other file in the directory.
    pub files: BTreeMap<String, String>,
    /// The numerics contract that computed it (empty: written before contracts existed).
    #[serde(default)]
    pub numerics: String,
}

pub fn dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

pub fn parse_step(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step-")?;
    (digits.len() == 8 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
}

/// Serialize named tensors to safetensors bytes, in sorted name order, with the
/// `format = pt` metadata that HF transformers expects.
pub fn to_safetensors(tensors: &BTreeMap<String, Tensor>) -> Result<Vec<u8>> {
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    safetensors::tensor::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), Some(meta))
        .map_err(|e| Error::msg(format!("safetensors serialization failed: {e}")))
}

/// A tensor to serialize that borrows its f32 data (a parameter's slice of a flat buffer), or
/// one i64 (the optimizer's step).
pub enum Raw<'a> {
    F32(&'a [f32], Vec<usize>),
    I64(i64),
}

impl safetensors::View for Raw<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        match self {
            Raw::F32(..) => safetensors::Dtype::F32,
            Raw::I64(_) => safetensors::Dtype::I64,
        }
    }
    fn shape(&self) -> &[usize] {
        match self {
            Raw::F32(_, s) => s,
            Raw::I64(_) => &[1],
        }
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        match self {
            Raw::F32(d, _) => d.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>().into(),
            Raw::I64(v) => v.to_le_bytes().to_vec().into(),
        }
    }
    fn data_len(&self) -> usize {
        match self {
            Raw::F32(d, _) => d.len() * 4,
            Raw::I64(_) => 8,
        }
    }
}

/// As `to_safetensors`, from borrowed data: the same bytes for the same names, shapes and
/// values, without a copy of every tensor first.
pub fn raw_to_safetensors(tensors: Vec<(String, Raw)>) -> Result<Vec<u8>> {
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    safetensors::tensor::serialize(tensors, Some(meta))
        .map_err(|e| Error::msg(format!("safetensors serialization failed: {e}")))
}

pub fn from_safetensors(bytes: &[u8], origin: &Path) -> Result<BTreeMap<String, Tensor>> {
    let m = candle_core::safetensors::load_buffer(bytes, &Device::Cpu).map_err(|e| {
        Error::hint(
            format!("{}: not a valid safetensors file: {e}", origin.display()),
            "the checkpoint is corrupt; use an earlier one",
        )
    })?;
    Ok(m.into_iter().collect())
}

/// Write a complete checkpoint atomically. `files` are (name, bytes); state.json is added.
/// Returns the final directory and the SHA-256 of every file in it, state.json included.
pub fn write(
    run_dir: &Path,
    state: State,
    files: &[(&str, Vec<u8>)],
) -> Result<(PathBuf, BTreeMap<String, String>)> {
    let tmp = run_dir.join(format!(".tmp-{}-{}", dir_name(state.step), std::process::id()));
    let result = write_via(run_dir, &tmp, state, files);
    if result.is_err() {
        // A full disk or a failed write: free the space now (recover() would do it next start).
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

fn write_via(
    run_dir: &Path,
    tmp: &Path,
    mut state: State,
    files: &[(&str, Vec<u8>)],
) -> Result<(PathBuf, BTreeMap<String, String>)> {
    let final_dir = run_dir.join(dir_name(state.step));
    if tmp.exists() {
        fs::remove_dir_all(tmp).at(tmp)?;
    }
    fs::create_dir_all(tmp).at(tmp)?;
    let put = |name: &str, bytes: &[u8]| -> Result<()> {
        let p = tmp.join(name);
        let mut f = fs::File::create(&p).at(&p)?;
        f.write_all(bytes).at(&p)?;
        f.sync_all().at(&p)
    };
    state.files.clear();
    for (name, bytes) in files {
        put(name, bytes)?;
        state.files.insert(name.to_string(), sha256_hex(bytes));
    }
    let json = serde_json::to_vec_pretty(&state).map_err(|e| Error::msg(e.to_string()))?;
    put(STATE_FILE, &json)?;
    let mut hashes = state.files.clone();
    hashes.insert(STATE_FILE.to_string(), sha256_hex(&json));
    sync_dir(Some(tmp));
    if final_dir.exists() {
        // A rerun past a resume point replaces the old checkpoint of the same step: move the old
        // one aside first (rename onto a non-empty directory fails), then drop it.
        let old = run_dir.join(format!(".old-{}-{}", dir_name(state.step), std::process::id()));
        fs::rename(&final_dir, &old).at(&final_dir)?;
        fs::rename(tmp, &final_dir).at(&final_dir)?;
        fs::remove_dir_all(&old).at(&old)?;
    } else {
        fs::rename(tmp, &final_dir).at(&final_dir)?;
    }
    sync_dir(Some(run_dir));
    Ok((final_dir, hashes))
}

/// Tidy what a crash can leave in a run directory: `.tmp-step-*` (a checkpoint being written)
/// and `.del-step-*` (one being deleted) are removed; `.old-step-*` (the previous copy of a step
/// being replaced) is put back if the new copy never arrived, else removed.
pub fn recover(run_dir: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(run_dir) else { return Ok(()) };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if name.starts_with(".tmp-step-") || name.starts_with(".del-step-") {
            fs::remove_dir_all(&path).at(&path)?;
        } else if let Some(rest) = name.strip_prefix(".old-") {
            // .old-step-NNNNNNNN-<pid>: put back as step-NNNNNNNN unless that exists.
            let step = rest.get(..13).unwrap_or("");
            let step_dir = run_dir.join(step);
            if parse_step(step).is_some() && !step_dir.exists() {
                fs::rename(&path, &step_dir).at(&step_dir)?;
            } else {
                fs::remove_dir_all(&path).at(&path)?;
            }
        }
    }
    Ok(())
}

/// Complete checkpoints in a run directory, oldest first.
pub fn list(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(run_dir) else {
        return Ok(out);
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(step) = parse_step(&name) {
            if e.path().join(STATE_FILE).is_file() {
                out.push((step, e.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A checkpoint read back and checked.
pub struct Loaded {
    pub dir: PathBuf,
    pub state: State,
    pub model: BTreeMap<String, Tensor>,
    pub optim: BTreeMap<String, Tensor>,
    pub config_toml: String,
}

pub fn read_state(dir: &Path) -> Result<State> {
    let p = dir.join(STATE_FILE);
    if !dir.is_dir() {
        return Err(Error::hint(
            format!("checkpoint {} does not exist", dir.display()),
            "pass a step-NNNNNNNN directory from the run directory",
        ));
    }
    let text = fs::read_to_string(&p).map_err(|e| {
        Error::hint(
            format!("{}: {e}", p.display()),
            "this is not a complete tinylm checkpoint; use another step-* directory",
        )
    })?;
    let state: State = serde_json::from_str(&text).map_err(|e| {
        Error::hint(
            format!("{}: unreadable checkpoint state: {e}", p.display()),
            "the checkpoint is corrupt; use an earlier one",
        )
    })?;
    if state.format_version != FORMAT_VERSION {
        return Err(Error::hint(
            format!(
                "{}: checkpoint format {} is not supported (this tinylm reads format {FORMAT_VERSION})",
                p.display(),
                state.format_version
            ),
            "use the tinylm version that wrote it",
        ));
    }
    // The names are joined to the checkpoint directory to read (and, on resume and release,
    // to copy) each file: only a checkpoint's own file names, never a path.
    if let Some(bad) = state.files.keys().find(|n| !FILE_NAMES.contains(&n.as_str())) {
        return Err(Error::hint(
            format!(
                "{}: {bad:?} is not a checkpoint file (a checkpoint holds {})",
                p.display(),
                FILE_NAMES.join(", ")
            ),
            "the checkpoint is corrupt or crafted; use another one",
        ));
    }
    Ok(state)
}

/// The files a checkpoint may record in its state.json.
pub const FILE_NAMES: &[&str] = &[MODEL_FILE, OPTIM_FILE, TOKENIZER_FILE, CONFIG_FILE];

/// Read a file of a checkpoint and check it against the hash in state.json.
pub fn read_checked(dir: &Path, state: &State, name: &str) -> Result<Vec<u8>> {
    let p = dir.join(name);
    let bytes = fs::read(&p).at(&p)?;
    let want = state
        .files
        .get(name)
        .ok_or_else(|| Error::msg(format!("{}: {name} is not listed in state.json", dir.display())))?;
    let got = sha256_hex(&bytes);
    if &got != want {
        return Err(Error::hint(
            format!("{}: sha256 mismatch (state.json says {want}, file is {got})", p.display()),
            "the checkpoint is corrupt or was modified; resume from an earlier checkpoint",
        ));
    }
    Ok(bytes)
}

/// What sampling needs: the weights, the config and the tokenizer, each checked against
/// state.json (the optimizer state is not read, so a model-only copy samples too).
pub fn load_inference(dir: &Path) -> Result<(State, BTreeMap<String, Tensor>, String)> {
    let state = read_state(dir)?;
    let model = from_safetensors(&read_checked(dir, &state, MODEL_FILE)?, &dir.join(MODEL_FILE))?;
    let config_toml = String::from_utf8_lossy(&read_checked(dir, &state, CONFIG_FILE)?).into_owned();
    read_checked(dir, &state, TOKENIZER_FILE)?;
    Ok((state, model, config_toml))
}

pub fn load(dir: &Path) -> Result<Loaded> {
    let state = read_state(dir)?;
    let model = from_safetensors(&read_checked(dir, &state, MODEL_FILE)?, &dir.join(MODEL_FILE))?;
    let optim = from_safetensors(&read_checked(dir, &state, OPTIM_FILE)?, &dir.join(OPTIM_FILE))?;
    let config_toml = String::from_utf8_lossy(&read_checked(dir, &state, CONFIG_FILE)?).into_owned();
    Ok(Loaded { dir: dir.to_path_buf(), state, model, optim, config_toml })
}

/// Which checkpoints to delete: keep the newest `keep_last` (0 keeps all) and every step that
/// is a multiple of `keep_every` (0 disables). The newest is always kept.
pub fn to_delete(steps: &[u64], keep_last: u64, keep_every: u64) -> Vec<u64> {
    if keep_last == 0 {
        return Vec::new();
    }
    let mut sorted = steps.to_vec();
    sorted.sort_unstable();
    let n = sorted.len();
    let keep_from = n.saturating_sub(keep_last.max(1) as usize);
    sorted
        .iter()
        .enumerate()
        .filter(|&(i, &s)| i < keep_from && !(keep_every > 0 && s % keep_every == 0))
        .map(|(_, &s)| s)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_keeps_last_n_and_every_mth() {
        let steps = [10, 20, 30, 40, 50, 60];
        assert_eq!(to_delete(&steps, 0, 0), Vec::<u64>::new());
        assert_eq!(to_delete(&steps, 2, 0), vec![10, 20, 30, 40]);
        assert_eq!(to_delete(&steps, 2, 20), vec![10, 30]);
        assert_eq!(to_delete(&steps, 10, 0), Vec::<u64>::new());
        assert_eq!(to_delete(&[60, 10], 1, 0), vec![10]);
    }

    #[test]
    fn step_names_round_trip() {
        assert_eq!(dir_name(42), "step-00000042");
        assert_eq!(parse_step("step-00000042"), Some(42));
        assert_eq!(parse_step("step-42"), None);
        assert_eq!(parse_step(".tmp-step-00000042-7"), None);
    }

    #[test]
    fn write_load_and_detect_corruption() {
        let run = std::env::temp_dir().join(format!("tinylm-ckpt-{}", std::process::id()));
        fs::create_dir_all(&run).unwrap();
        let t: BTreeMap<String, Tensor> =
            [("a".to_string(), Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap())].into();
        let st = State {
            format_version: FORMAT_VERSION,
            step: 3,
            config_sha256: "x".into(),
            train_loss: 1.0,
            val_loss: None,
            val_ppl: None,
            val_bpb: None,
            data: BTreeMap::new(),
            files: BTreeMap::new(),
            numerics: crate::kernels::CONTRACT_VERSION.into(),
        };
        let bytes = to_safetensors(&t).unwrap();
        let files = [(MODEL_FILE, bytes.clone()), (OPTIM_FILE, bytes), (CONFIG_FILE, b"".to_vec())];
        let (dir, _) = write(&run, st, &files).unwrap();
        assert_eq!(list(&run).unwrap(), vec![(3, dir.clone())]);
        let l = load(&dir).unwrap();
        assert_eq!(l.model["a"].to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);
        let p = dir.join(MODEL_FILE);
        let mut b = fs::read(&p).unwrap();
        let last = b.len() - 1;
        b[last] ^= 1;
        fs::write(&p, b).unwrap();
        let err = load(&dir).err().unwrap().to_string();
        assert!(err.contains("sha256 mismatch") && err.contains(MODEL_FILE), "{err}");
        fs::remove_dir_all(&run).unwrap();
    }
}
