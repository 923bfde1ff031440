//! The findings of the 2026-12-02 review (`../shared/reviews/2026-12-02-review.md`), each
//! reproduced on the real binary: a stranger's folder (a release, a run directory, a model
//! folder) is untrusted input, and what a release says must be true.

mod util;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use util::*;

const DATE: &str = "2026-12-02";

fn text(p: &Path) -> String {
    String::from_utf8(bytes(p)).unwrap()
}

/// Train the tiny config into runs/a (with `sets`) and release it into `out`.
fn released(d: &Dir, out: &str, sets: &[&str]) {
    d.train("runs/a", sets);
    let o = d.run(&["release", "runs/a", out, "--allow-dirty", "--date", DATE]);
    assert!(o.status.success(), "release failed:\n{}", stderr(&o));
}

fn resum(rel: &Path) {
    std::fs::write(rel.join("SHA256SUMS"), tinylm::release::sums(rel).unwrap()).unwrap();
}

/// Rewrite keys of a release's `run/config.toml` [data] (None removes one), and put the new
/// config's hash in the manifest, as the publisher of a crafted release can.
fn craft(rel: &Path, keys: &[(&str, Option<&str>)]) {
    let p = rel.join("run/config.toml");
    let mut t: toml::Table = toml::from_str(&text(&p)).unwrap();
    let data = t.get_mut("data").and_then(|v| v.as_table_mut()).unwrap();
    for (k, v) in keys {
        match v {
            Some(v) => data.insert(k.to_string(), toml::Value::String(v.to_string())),
            None => data.remove(*k),
        };
    }
    let new = toml::to_string(&t).unwrap();
    std::fs::write(&p, &new).unwrap();
    let mp = rel.join("run/manifest.json");
    let mut m = json(&mp);
    m["config_sha256"] = tinylm::util::sha256_hex(new.as_bytes()).into();
    std::fs::write(&mp, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

/// R1: `verify` and `batches` of a crafted release never write where its config says, never
/// download unless asked, and then only into their scratch directory.
#[test]
fn r1_a_crafted_release_cannot_make_verify_write_or_download() {
    let d = Dir::new("r1");
    released(&d, "rel", &[]);
    let payload = b"ssh-ed25519 AAAA attacker-key\n".to_vec();
    let (url, hits) = serve(payload.clone());
    let target = d.path("pwned/.ssh/authorized_keys");
    let sha = tinylm::util::sha256_hex(&payload);
    copy_dir(&d.path("rel"), &d.path("crafted"));
    let tgt = target.display().to_string();
    craft(
        &d.path("crafted"),
        &[("source", Some("url")), ("path", Some(&tgt)), ("sha256", Some(&sha)), ("url", Some(&url))],
    );
    let o = d.run(&["verify", "crafted"]);
    assert_one_line_error(&o, "data.path");
    assert!(stderr(&o).contains("absolute"), "{}", stderr(&o));
    let o = d.run(&["batches", "crafted", "--step", "1"]);
    assert_one_line_error(&o, "data.path");
    let o = d.run(&["verify", "crafted", "--allow-download"]);
    assert_clean_error(&o, "data.path");
    assert!(!d.path("pwned").exists(), "verify created a file the release named");
    assert_eq!(hits.load(Ordering::SeqCst), 0, "verify touched the network");

    // A path that climbs out of the folder, and a data.dir outside it: refused the same way.
    copy_dir(&d.path("rel"), &d.path("crafted2"));
    craft(&d.path("crafted2"), &[("dir", Some("../../escape-r1"))]);
    assert_one_line_error(&d.run(&["verify", "crafted2"]), "data.dir");
    assert_one_line_error(&d.run(&["batches", "crafted2", "--step", "1"]), "data.dir");
    assert!(!d.path("../escape-r1").exists() && !d.0.join("../../escape-r1").exists());

    // An honest URL release that does not ship its corpus: no network without the flag; with
    // it, the corpus lands in scratch only and the run verifies; --corpus works offline.
    let corpus = bytes(&d.path("rel/data/corpus.txt"));
    let (url, hits) = serve(corpus.clone());
    let sha = tinylm::util::sha256_hex(&corpus);
    copy_dir(&d.path("rel"), &d.path("urlrel"));
    std::fs::remove_file(d.path("urlrel/data/corpus.txt")).unwrap();
    craft(
        &d.path("urlrel"),
        &[
            ("source", Some("url")),
            ("path", Some("cache/corpus.txt")),
            ("sha256", Some(&sha)),
            ("url", Some(&url)),
        ],
    );
    let o = d.run(&["verify", "urlrel"]);
    assert_one_line_error(&o, "does not ship its corpus");
    assert!(stderr(&o).contains("--allow-download") && stderr(&o).contains("--corpus"), "{}", stderr(&o));
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    let o = d.run(&["verify", "urlrel", "--allow-download"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert!(!d.path("cache").exists() && !d.path("urlrel/cache").exists(), "the download left scratch");
    std::fs::write(d.path("mine.txt"), &corpus).unwrap();
    let o = d.run(&["verify", "urlrel", "--corpus", "mine.txt"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let o = d.run(&["batches", "urlrel", "--step", "3", "--corpus", "mine.txt"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let want = d.run(&["batches", "rel", "--step", "3"]);
    assert_eq!(stdout(&o), stdout(&want));
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // A wrong --corpus is refused by the pin.
    std::fs::write(d.path("other.txt"), b"not the corpus\n").unwrap();
    assert_clean_error(&d.run(&["verify", "urlrel", "--corpus", "other.txt"]), "sha256 mismatch");
}

/// V2: a checkpoint the manifest does not record is unverified: `--files-only` says so, a full
/// verify re-executes to it and compares (a forgery fails), and resume takes it only when it is
/// the checkpoint the run would have written next.
#[test]
fn v2_an_unrecorded_checkpoint_is_unverified_until_re_executed() {
    let d = Dir::new("v2");
    d.train("runs/a", &[]);
    copy_dir(&d.path("runs/a"), &d.path("runs/forge"));
    let drop_record = |run: &str, steps: &[u64]| {
        let mp = d.path(&format!("{run}/manifest.json"));
        let mut m = json(&mp);
        m["checkpoints"].as_array_mut().unwrap().retain(|c| !steps.contains(&c["step"].as_u64().unwrap()));
        std::fs::write(&mp, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    };
    // The crash window: step 20 written, not recorded.
    drop_record("runs/a", &[20]);
    let o = d.run(&["verify", "runs/a", "--files-only"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("unverified: step-00000020"), "{}", stdout(&o));
    let o = d.run(&["verify", "runs/a"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("rerun step-00000020/model.safetensors (not recorded)"), "{}", stdout(&o));

    // A forgery of the same shape: other weights, its state.json updated to match.
    drop_record("runs/forge", &[20]);
    let ck = d.path("runs/forge/step-00000020");
    let mut w = bytes(&ck.join("model.safetensors"));
    let i = w.len() - 3;
    w[i] ^= 0x10;
    std::fs::write(ck.join("model.safetensors"), &w).unwrap();
    let sp = ck.join("state.json");
    let mut st = json(&sp);
    st["files"]["model.safetensors"] = tinylm::util::sha256_hex(&w).into();
    std::fs::write(&sp, serde_json::to_vec_pretty(&st).unwrap()).unwrap();
    let o = d.run(&["verify", "runs/forge", "--files-only"]);
    assert!(stdout(&o).contains("unverified: step-00000020"), "{}", stdout(&o));
    let o = d.run(&["verify", "runs/forge"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "a forged unrecorded checkpoint passed:\n{}{}",
        stdout(&o),
        stderr(&o)
    );
    assert!(
        stdout(&o).contains("MISMATCH: rerun step-00000020/model.safetensors (not recorded)"),
        "{}",
        stdout(&o)
    );

    // Resume takes the crash-window checkpoint (with a warning) ...
    let more = ["--set", "train.steps=25", "--set", "optim.schedule_steps=20"];
    let mut args = vec!["train", "--resume", "runs/a"];
    args.extend_from_slice(&more);
    let o = d.run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("warning: ") && stderr(&o).contains("not recorded"), "{}", stderr(&o));
    // ... but not one that is not the next the run would have written.
    copy_dir(&d.path("runs/a"), &d.path("runs/b"));
    drop_record("runs/b", &[15, 20, 25]);
    let o = d.run(&[
        "train",
        "--resume",
        "runs/b",
        "--set",
        "train.steps=30",
        "--set",
        "optim.schedule_steps=20",
    ]);
    assert_clean_error(&o, "is not recorded in the run's manifest");
    assert!(stderr(&o).contains("step-00000010"), "the hint names the newest recorded one: {}", stderr(&o));
}

/// R2, R3, R6, R9: audit resolves every path inside the folder, counts no empty placeholder,
/// fails without SHA256SUMS, parses weights with the safetensors crate, accepts `./` paths.
#[test]
fn audit_trusts_no_path_placeholder_or_header_of_the_folder() {
    let d = Dir::new("r2");
    released(&d, "rel", &[]);
    let rel = d.path("rel");
    let (code, out) = audit(&d, "rel", &[]);
    assert_eq!(code, Some(0), "{out}");

    // R2: code and data deleted, mof.yml pointing outside (absolute paths and ..), no
    // release.json to cross-check: nothing outside counts.
    copy_dir(&rel, &d.path("evil"));
    let evil = d.path("evil");
    std::fs::remove_dir_all(evil.join("source")).unwrap();
    std::fs::remove_file(evil.join("data/corpus.txt")).unwrap();
    std::fs::remove_file(evil.join("release.json")).unwrap();
    let mut r = tinylm::release::mof::Record::parse(&text(&evil.join("mof.yml"))).unwrap();
    let outside = rel.join("source").display().to_string();
    for c in &mut r.release.components {
        if c.component_path.starts_with("source") {
            c.component_path = outside.clone();
        }
        if c.name == "Data preprocessing code" {
            c.component_path = "../rel/source/src/data.rs".into();
        }
        if c.name == "Evaluation data" || c.name == "Datasets" {
            c.component_path = rel.join("data/corpus.txt").display().to_string();
        }
    }
    std::fs::write(evil.join("mof.yml"), r.to_yaml().unwrap()).unwrap();
    resum(&evil);
    let (code, out) = audit(&d, "evil", &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(!out.contains("class met: Class I "), "{out}");
    let line = out.lines().find(|l| l.starts_with("Training code")).unwrap();
    assert!(line.contains("invalid") && line.contains("not a path inside the folder"), "{line}");
    let line = out.lines().find(|l| l.starts_with("Data preprocessing code")).unwrap();
    assert!(line.contains("invalid"), "{line}");

    // R2: the weights moved out of the folder and symlinked back.
    copy_dir(&rel, &d.path("evil2"));
    let w = d.path("evil2/model/model.safetensors");
    std::fs::rename(&w, d.path("outside.safetensors")).unwrap();
    std::os::unix::fs::symlink(d.path("outside.safetensors"), &w).unwrap();
    resum(&d.path("evil2"));
    let (code, out) = audit(&d, "evil2", &["--skip-data-replay"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("symlink model/model.safetensors leads outside the folder"), "{out}");

    // R3: no SHA256SUMS fails; empty placeholder files and an empty source/ count for nothing.
    let hf = d.path("hf1");
    std::fs::create_dir_all(hf.join("source")).unwrap();
    for e in std::fs::read_dir(rel.join("model")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), hf.join(e.file_name())).unwrap();
    }
    std::fs::copy(rel.join("README.md"), hf.join("README.md")).unwrap();
    std::fs::write(hf.join("DATA_CARD.md"), b"").unwrap();
    std::fs::write(hf.join("REPORT.md"), b"").unwrap();
    let (code, out) = audit(&d, "hf1", &[]);
    assert_eq!(code, Some(1), "no SHA256SUMS must fail:\n{out}");
    assert!(out.contains("no SHA256SUMS") && out.contains("--no-sums"), "{out}");
    let (_, out) = audit(&d, "hf1", &["--no-sums"]);
    for name in ["Data card", "Technical report", "Training code", "Inference code"] {
        let line = out.lines().find(|l| l.starts_with(name)).unwrap();
        assert!(line.contains("missing"), "an empty placeholder counted: {line}");
    }

    // R6: overlapping tensor offsets (file length unchanged) are not safetensors.
    copy_dir(&rel, &d.path("evil3"));
    let p = d.path("evil3/model/model.safetensors");
    let mut b = bytes(&p);
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    let q = header["model.layers.0.self_attn.q_proj.weight"]["data_offsets"].to_string();
    let k = header["model.layers.0.self_attn.k_proj.weight"]["data_offsets"].to_string();
    let h = String::from_utf8(b[8..8 + n].to_vec()).unwrap();
    // q's offsets become k's (k comes first in the file, so its numbers are no longer).
    let forged = h.replacen(&q, &k, 1);
    assert_ne!(forged, h);
    let forged = format!("{forged:<n$}");
    assert_eq!(forged.len(), n, "offsets of the same width keep the header length");
    b.splice(8..8 + n, forged.bytes());
    std::fs::write(&p, &b).unwrap();
    resum(&d.path("evil3"));
    let (code, out) = audit(&d, "evil3", &["--skip-data-replay"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL weights") && out.contains("not valid safetensors"), "{out}");

    // R9: SHA256SUMS as `find . | xargs sha256sum` writes it.
    copy_dir(&rel, &d.path("dotsl"));
    let sums = text(&d.path("dotsl/SHA256SUMS"));
    let dotted: String = sums.lines().map(|l| l.replacen("  ", "  ./", 1) + "\n").collect();
    std::fs::write(d.path("dotsl/SHA256SUMS"), dotted).unwrap();
    let o = std::process::Command::new("sha256sum")
        .args(["-c", "--quiet", "SHA256SUMS"])
        .current_dir(d.path("dotsl"))
        .output();
    if let Ok(o) = o {
        assert!(o.status.success(), "sha256sum -c rejects the test's own file: {}", stderr(&o));
    }
    let (code, out) = audit(&d, "dotsl", &["--skip-data-replay"]);
    assert_eq!(code, Some(0), "{out}");

    // A data replay that cannot run is a failed check, not silence.
    copy_dir(&rel, &d.path("nocorpus"));
    std::fs::remove_file(d.path("nocorpus/data/corpus.txt")).unwrap();
    resum(&d.path("nocorpus"));
    let (code, out) = audit(&d, "nocorpus", &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL data replay"), "{out}");
}

/// R4: mof.yml is what the Model Openness Tool accepts, `--date` is a calendar date, and audit
/// runs the same schema check.
#[test]
fn r4_mof_yml_passes_the_model_openness_tool_schema() {
    let d = Dir::new("r4");
    released(&d, "rel", &[]);
    let mof = text(&d.path("rel/mof.yml"));
    assert!(mof.contains("architecture: \"transformer decoder\"\n"), "{mof}");
    assert!(mof.contains(&format!("date: \"{DATE}\"")) && mof.contains("version: \"1.0\""), "{mof}");
    assert_eq!(tinylm::release::mof::schema_problems(&mof), Vec::<String>::new());
    // The committed schema is the Tool's, where the shared copy is at hand (optional check).
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/mot/mof_schema.json");
    if let Ok(s) = std::fs::read_to_string(&shared) {
        assert_eq!(
            s,
            tinylm::release::mof::MOT_SCHEMA,
            "src/release/mof_schema.json differs from {}",
            shared.display()
        );
    }
    let (quoted, bare) = (format!("date: \"{DATE}\""), format!("date: {DATE}"));
    for (bad, why) in [
        ("architecture: \"transformer decoder\"", "architecture: \"transformer decoder (Llama)\""),
        (quoted.as_str(), bare.as_str()),
    ] {
        copy_dir(&d.path("rel"), &d.path("bad"));
        std::fs::write(d.path("bad/mof.yml"), mof.replacen(bad, why, 1)).unwrap();
        resum(&d.path("bad"));
        let (code, out) = audit(&d, "bad", &["--skip-data-replay"]);
        assert_eq!(code, Some(1), "{why}: {out}");
        assert!(out.contains("fails the Model Openness Tool schema"), "{why}: {out}");
        std::fs::remove_dir_all(d.path("bad")).unwrap();
    }
    for date in ["2026-13-45", "2026-02-29", "2026-04-31"] {
        let o = d.run(&["release", "runs/a", "r-bad", "--allow-dirty", "--date", date]);
        assert_one_line_error(&o, "is not a calendar date");
    }
    assert!(!d.path("r-bad").exists());
    // C1: licence expressions as SPDX writes them (parentheses, lower-case operators).
    for expr in ["(MIT OR Apache-2.0)", "MIT or Apache-2.0"] {
        let o =
            d.run(&["release", "runs/a", "r-lic", "--allow-dirty", "--date", DATE, "--code-license", expr]);
        assert!(o.status.success(), "{expr}: {}", stderr(&o));
        assert!(text(&d.path("r-lic/mof.yml")).contains("name: \"MIT OR Apache-2.0\""), "{expr}");
        std::fs::remove_dir_all(d.path("r-lic")).unwrap();
    }
}

/// V1: the card's evaluation numbers are the manifest's, checked by release, verify and audit.
#[test]
fn v1_published_evaluations_are_checked_against_the_run() {
    let d = Dir::new("v1");
    released(&d, "rel", &[]);
    let m = json(&d.path("runs/a/manifest.json"));
    let loss = m["checkpoints"].as_array().unwrap().last().unwrap()["val_loss"].as_f64().unwrap();
    let card = text(&d.path("rel/README.md"));
    assert!(card.contains(&format!("value: {loss}")), "the card's loss is not the manifest's {loss}");

    // A metrics.jsonl that disagrees with the manifest: release refuses, verify fails.
    copy_dir(&d.path("runs/a"), &d.path("runs/m"));
    let mp = d.path("runs/m/metrics.jsonl");
    let mut lines: Vec<serde_json::Value> =
        text(&mp).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let last = lines.last_mut().unwrap();
    last["val_loss"] = 1.0.into();
    last["val_ppl"] = 2.75.into();
    last["val_bpb"] = 0.5.into();
    std::fs::write(&mp, lines.iter().map(|l| l.to_string() + "\n").collect::<String>()).unwrap();
    let o = d.run(&["release", "runs/m", "relm", "--allow-dirty", "--date", DATE]);
    assert_one_line_error(&o, "disagrees with the manifest");
    let o = d.run(&["verify", "runs/m"]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("MISMATCH: metrics.jsonl step 20 eval"), "{}", stdout(&o));
    // Only val_bpb changed: the manifest records it too, so release refuses that as well.
    copy_dir(&d.path("runs/a"), &d.path("runs/b"));
    let mp = d.path("runs/b/metrics.jsonl");
    let mut lines: Vec<serde_json::Value> =
        text(&mp).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    lines.last_mut().unwrap()["val_bpb"] = 0.5.into();
    std::fs::write(&mp, lines.iter().map(|l| l.to_string() + "\n").collect::<String>()).unwrap();
    assert_one_line_error(
        &d.run(&["release", "runs/b", "relb", "--allow-dirty", "--date", DATE]),
        "disagrees with the manifest",
    );
    assert!(m["checkpoints"].as_array().unwrap().last().unwrap()["val_bpb"].as_f64().is_some());
    // The honest run's evaluations re-run to the bit.
    let o = d.run(&["verify", "runs/a"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("rerun step-00000020 val_loss"), "{}", stdout(&o));

    // A card edited after release (hashes regenerated): audit fails it.
    copy_dir(&d.path("rel"), &d.path("relc"));
    let edited = card.replacen(&format!("value: {loss}"), "value: 1.0", 1);
    assert_ne!(edited, card);
    std::fs::write(d.path("relc/README.md"), edited).unwrap();
    resum(&d.path("relc"));
    let (code, out) = audit(&d, "relc", &["--skip-data-replay"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL evaluation"), "{out}");
    // The card's bits per byte alone edited.
    copy_dir(&d.path("rel"), &d.path("relbpb"));
    let bpb = m["checkpoints"].as_array().unwrap().last().unwrap()["val_bpb"].as_f64().unwrap();
    let edited = card.replacen(&format!("value: {bpb}"), "value: 0.5", 1);
    assert_ne!(edited, card, "the card's bits per byte is not the manifest's {bpb}");
    std::fs::write(d.path("relbpb/README.md"), edited).unwrap();
    resum(&d.path("relbpb"));
    let (code, out) = audit(&d, "relbpb", &["--skip-data-replay"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("bits per byte"), "{out}");
}

/// R5, R8, R12: generation_config.json loads for sample_tokens = 0, printed commands are
/// shell-quoted, and a vocabulary the corpus cannot reach is reported and stated truly.
#[test]
fn release_text_is_true_and_its_commands_run_as_printed() {
    let d = Dir::new("r8");
    let prompt = "Tom had $5 and a `cat` and 'quotes'";
    let set_prompt = format!("eval.prompt={}", toml::Value::String(prompt.into()));
    released(&d, "rel", &["--set", &set_prompt, "--set", "tokenizer.vocab_size=8000"]);
    // R8: the command above each sample, pasted into sh, prints that sample.
    let s = text(&d.path("rel/run/samples/step-00000020.txt"));
    let (cmd, sample) = s.split_once('\n').unwrap();
    let bin = d.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(util::bin(), bin.join("tinylm")).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let o = std::process::Command::new("sh")
        .args(["-c", cmd.trim_start_matches("$ ")])
        .env("PATH", &path)
        .current_dir(d.path("rel"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), sample);
    assert!(sample.starts_with(prompt), "the shell changed the prompt: {sample}");
    let card = text(&d.path("rel/README.md"));
    assert!(card.contains("--prompt='Tom had $5 and a `cat` and '\\''quotes'\\'''"), "{card}");
    assert!(card.contains(&serde_json::to_string(prompt).unwrap()), "the Python literal: {card}");
    // A prompt that starts with '-' is still a value (`--prompt=...`).
    let o = std::process::Command::new("sh")
        .args(["-c", "tinylm sample --checkpoint checkpoints/step-00000020 --prompt=-x --tokens 3 --seed 1"])
        .env("PATH", &path)
        .current_dir(d.path("rel"))
        .output()
        .unwrap();
    assert!(o.status.success() && stdout(&o).starts_with("-x"), "{}", stderr(&o));

    // R12: 8000 asked for, fewer possible: said at prepare, and stated truly.
    let real = json(&d.path("rel/model/config.json"))["vocab_size"].as_u64().unwrap();
    assert!(real < 8000);
    let o = d.run(&[
        "prepare",
        "--config",
        &d.config(),
        "--set",
        "tokenizer.vocab_size=8000",
        "--set",
        "data.dir=\"d2\"",
    ]);
    assert!(stderr(&o).contains(&format!("the corpus supports only {real} tokens")), "{}", stderr(&o));
    assert_eq!(json(&d.path("rel/data/data.json"))["vocab_size"].as_u64(), Some(real));
    for f in ["DATA_CARD.md", "data/RECIPE.md"] {
        let t = text(&d.path(&format!("rel/{f}")));
        assert!(t.contains(&format!("vocabulary {real} (tokenizer.vocab_size = 8000")), "{f}: {t}");
    }

    // R5: no samples in training, and a generation_config.json that transformers loads (it
    // refuses max_new_tokens = 0).
    let d = Dir::new("r5");
    released(&d, "rel", &["--set", "eval.sample_tokens=0"]);
    let g = json(&d.path("rel/model/generation_config.json"));
    assert!(g.get("max_new_tokens").is_none_or(|v| v.as_u64().is_some_and(|n| n > 0)), "{g}");
}

/// R7: a release in a directory whose name has a combining character (macOS writes NFD).
#[test]
fn r7_paths_with_combining_characters_replay() {
    let d = Dir::new("r7");
    released(&d, "rel", &[]);
    let nfd = d.path("cafe\u{301}");
    std::fs::create_dir_all(&nfd).unwrap();
    copy_dir(&d.path("rel"), &nfd.join("rel"));
    let p = nfd.join("rel").display().to_string();
    let (code, out) = audit(&d, &p, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("ok   data replay"), "{out}");
    let o = d.run(&["batches", &p, "--step", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// R10: the training memory estimate binds train, prepare and verify, not sample, release or
/// audit: a run trained on a bigger machine stays usable on a smaller one.
#[test]
fn r10_a_smaller_machine_can_still_sample_and_audit() {
    let probe = std::process::Command::new("unshare").args(["-m", "true"]).status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("skipped: `unshare -m` is not available here (not root), so /proc/meminfo cannot be faked");
        return;
    }
    let d = Dir::new("r10");
    released(&d, "rel", &[]);
    std::fs::write(d.path("meminfo"), "MemTotal:        1024 kB\nMemFree:         512 kB\n").unwrap();
    let bin = util::bin().display().to_string();
    let cfg = d.config();
    let script = format!(
        "mount --bind meminfo /proc/meminfo || exit 99
         {bin} sample --checkpoint runs/a --prompt Once --tokens 5; echo \"sample=$?\"
         {bin} audit rel > /dev/null; echo \"audit=$?\"
         {bin} batches rel --step 2 > /dev/null; echo \"batches=$?\"
         {bin} train --config {cfg} --dry-run; echo \"train=$?\"
         {bin} verify runs/a; echo \"verify=$?\""
    );
    let o = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .current_dir(&d.0)
        .output()
        .unwrap();
    let (out, err) = (stdout(&o), stderr(&o));
    if out.is_empty() && o.status.code() == Some(99) {
        eprintln!("skipped: /proc/meminfo cannot be bind-mounted here: {err}");
        return;
    }
    for ok in ["sample=0", "audit=0", "batches=0"] {
        assert!(out.contains(ok), "{ok}:\n{out}\n{err}");
    }
    assert!(out.contains("train=2") && out.contains("verify=2"), "{out}\n{err}");
    assert!(err.contains("the machine has"), "{err}");
}

/// R11: release holds the run's lock (a running trainer makes it refuse), and an unfinished run
/// is released only with --allow-partial, marked as such.
#[test]
fn r11_release_is_locked_against_training_and_names_a_partial_run() {
    let d = Dir::new("r11");
    let sets = ["--set", "train.steps=600", "--set", "eval.every=0", "--set", "checkpoint.every=50"];
    let cfg = d.config();
    let mut args = vec!["train", "--config", &cfg, "--run-dir", "runs/p"];
    args.extend_from_slice(&sets);
    let mut child = d.cmd(&args).stderr(Stdio::piped()).spawn().unwrap();
    assert!(wait_for_step(&mut child, &d.path("runs/p"), 50).is_some(), "the run ended early");
    signal(child.id(), "STOP");
    let o = run_bounded(
        d.cmd(&["release", "runs/p", "relp", "--allow-dirty", "--date", DATE]),
        std::time::Duration::from_secs(120),
    );
    signal(child.id(), "CONT");
    assert_clean_error(&o, "in use by another tinylm process");
    assert!(!d.path("relp").exists());
    signal(child.id(), "INT");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    let o = d.run(&["release", "runs/p", "relp", "--allow-dirty", "--date", DATE]);
    assert_one_line_error(&o, "the run is not finished");
    assert!(stderr(&o).contains("--allow-partial"), "{}", stderr(&o));
    let o = d.run(&["release", "runs/p", "relp", "--allow-dirty", "--date", DATE, "--allow-partial"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rj = json(&d.path("relp/release.json"));
    assert_eq!(rj["partial"], true);
    assert_eq!(rj["planned_steps"], 600);
    assert!(text(&d.path("relp/README.md")).contains("**Partial run.**"));
    // Exactly the checkpoints the manifest records, and its own bytes.
    assert_eq!(bytes(&d.path("relp/run/manifest.json")), bytes(&d.path("runs/p/manifest.json")));
    let o = d.run(&["verify", "relp", "--files-only"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
}

/// D1: `train --resume OTHER/step-N --run-dir NEW` without --config reads the checkpoint's own
/// config, and continues to the same bits.
#[test]
fn d1_resume_another_runs_checkpoint_into_a_new_directory() {
    let d = Dir::new("d1");
    d.train("runs/a", &[]);
    let o = d.run(&["train", "--resume", "runs/a/step-00000010", "--run-dir", "runs/new"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(weights(&d.path("runs/new"), 20), weights(&d.path("runs/a"), 20));
    // A file corpus named by an absolute path is only read (and pinned): branching one's own
    // run into a new directory works.
    let text = tinylm::corpus::generate(3, 120_000);
    std::fs::write(d.path("mine.txt"), &text).unwrap();
    let abs = format!("data.path={:?}", d.path("mine.txt").display().to_string());
    let sha = format!("data.sha256={:?}", tinylm::util::sha256_hex(text.as_bytes()));
    d.train("runs/f", &["--set", "data.source=\"file\"", "--set", &abs, "--set", &sha]);
    let o = d.run(&["train", "--resume", "runs/f/step-00000010", "--run-dir", "runs/f2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(weights(&d.path("runs/f2"), 20), weights(&d.path("runs/f"), 20));
}

/// The second look (a review of the fixes above): names inside state.json and the manifest are
/// never paths; a foreign checkpoint's data paths are not trusted on resume; a release's model/
/// and HF files must be the ones its manifest records; audit of a release without a valid
/// release.json fails; batches refuses a changed config; reconcile never rewrites history; an
/// unrecorded checkpoint far past the cadence is a mismatch, not a re-execution.
#[test]
fn a_second_look_at_untrusted_folders() {
    let d = Dir::new("second");
    released(&d, "rel", &[]);
    let rel = d.path("rel");
    // A state.json file name that is a path: refused before anything is read or copied.
    copy_dir(&rel, &d.path("home/crafted"));
    std::fs::write(d.path("home/crafted/.payload"), b"x").unwrap();
    let sp = d.path("home/crafted/checkpoints/step-00000015/state.json");
    let mut st = json(&sp);
    st["files"]["../../.payload"] = tinylm::util::sha256_hex(b"x").into();
    std::fs::write(&sp, serde_json::to_vec_pretty(&st).unwrap()).unwrap();
    let o = d.run(&["train", "--resume", "home/crafted/checkpoints/step-00000015", "--run-dir", "home/ft"]);
    assert_clean_error(&o, "is not a checkpoint file");
    assert!(!d.path(".payload").exists() && !d.path("home/.payload").exists() && !d.path("home/ft").exists());
    // A foreign checkpoint whose config names a data path outside the working directory.
    copy_dir(&rel, &d.path("foreign"));
    let ck = d.path("foreign/checkpoints/step-00000015");
    let cfg = text(&ck.join("config.toml")).replace("dir = \"data\"", "dir = \"/tmp/elsewhere-tinylm\"");
    assert!(cfg.contains("/tmp/elsewhere-tinylm"));
    std::fs::write(ck.join("config.toml"), &cfg).unwrap();
    let sp = ck.join("state.json");
    let mut st = json(&sp);
    st["files"]["config.toml"] = tinylm::util::sha256_hex(cfg.as_bytes()).into();
    std::fs::write(&sp, serde_json::to_vec_pretty(&st).unwrap()).unwrap();
    let o = d.run(&["train", "--resume", "foreign/checkpoints/step-00000015", "--run-dir", "ft2"]);
    assert_one_line_error(&o, "data.dir");
    assert!(!d.path("ft2").exists());

    // model/ swapped for an earlier checkpoint (release.json and SHA256SUMS updated to match).
    copy_dir(&rel, &d.path("swap"));
    let w = bytes(&d.path("swap/checkpoints/step-00000005/model.safetensors"));
    std::fs::write(d.path("swap/model/model.safetensors"), &w).unwrap();
    let rp = d.path("swap/release.json");
    let mut rj = json(&rp);
    for c in rj["components"].as_object_mut().unwrap().values_mut() {
        if let Some(h) = c["files"].get_mut("model/model.safetensors") {
            *h = tinylm::util::sha256_hex(&w).into();
        }
    }
    std::fs::write(&rp, serde_json::to_vec_pretty(&rj).unwrap()).unwrap();
    resum(&d.path("swap"));
    let o = d.run(&["verify", "swap", "--files-only"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains("MISMATCH: model/model.safetensors"), "{}", stdout(&o));
    let (code, out) = audit(&d, "swap", &["--skip-data-replay"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL run record"), "{out}");
    // An HF side file changed (rope_theta), hashes regenerated.
    copy_dir(&rel, &d.path("rope"));
    let cp = d.path("rope/checkpoints/step-00000010/config.json");
    let mut c = json(&cp);
    c["rope_theta"] = 500000.0.into();
    std::fs::write(&cp, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
    resum(&d.path("rope"));
    let o = d.run(&["verify", "rope", "--files-only"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains("checkpoints/step-00000010/config.json"), "{}", stdout(&o));
    // No release.json, or one that is not a release record: the audit fails.
    for rj in [None, Some("{}")] {
        copy_dir(&rel, &d.path("norj"));
        match rj {
            None => std::fs::remove_file(d.path("norj/release.json")).unwrap(),
            Some(t) => std::fs::write(d.path("norj/release.json"), t).unwrap(),
        }
        resum(&d.path("norj"));
        let (code, out) = audit(&d, "norj", &["--skip-data-replay"]);
        assert_eq!(code, Some(1), "{rj:?}: {out}");
        assert!(out.contains("release.json is missing or not a release record"), "{out}");
        std::fs::remove_dir_all(d.path("norj")).unwrap();
    }
    // batches of a config that is not the recorded one.
    copy_dir(&rel, &d.path("seed"));
    let p = d.path("seed/run/config.toml");
    std::fs::write(&p, text(&p).replace("seed = 7", "seed = 8")).unwrap();
    assert_one_line_error(&d.run(&["batches", "seed", "--step", "1"]), "does not match the run manifest");

    // Reconcile leaves a record that says "deleted" as it is.
    d.train("runs/r", &["--set", "checkpoint.keep_last=2"]);
    let before = json(&d.path("runs/r/manifest.json"))["checkpoints"][0].clone();
    assert_eq!(before["present"], false);
    copy_dir(&d.path("runs/r/step-00000015"), &d.path("runs/r/step-00000005"));
    let o = d.run(&[
        "train",
        "--resume",
        "runs/r",
        "--set",
        "train.steps=25",
        "--set",
        "optim.schedule_steps=20",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("its record says it was deleted"), "{}", stderr(&o));
    assert_eq!(json(&d.path("runs/r/manifest.json"))["checkpoints"][0], before, "a record was rewritten");

    // A FIFO where a file should be: refused at once, never opened (it would block).
    copy_dir(&rel, &d.path("fifo"));
    std::fs::remove_file(d.path("fifo/README.md")).unwrap();
    if std::process::Command::new("mkfifo").arg(d.path("fifo/README.md")).status().is_ok_and(|s| s.success())
    {
        let o = run_bounded(d.cmd(&["audit", "fifo"]), std::time::Duration::from_secs(120));
        assert_clean_error(&o, "is not a regular file");
        let o = run_bounded(d.cmd(&["verify", "fifo", "--files-only"]), std::time::Duration::from_secs(120));
        assert_clean_error(&o, "is not a regular file");
    }
    // An unrecorded checkpoint far past the next cadence step: a mismatch, never re-executed.
    copy_dir(&d.path("runs/a"), &d.path("runs/far"));
    copy_dir(&d.path("runs/far/step-00000020"), &d.path("runs/far/step-99999999"));
    let o = run_bounded(d.cmd(&["verify", "runs/far"]), std::time::Duration::from_secs(300));
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("MISMATCH: step-99999999 (on disk)"), "{}", stdout(&o));
}
