//! `[init]` end to end on the real binary: a fine-tune from a release, a checkpoint and a
//! Hugging Face folder; pinning; the recorded chain; verify, release and audit of the result.

mod util;
use std::path::Path;
use util::*;

const DATE: &str = "2026-01-02";

/// A fine-tune config: the tiny one without its [model] keys and vocabulary (taken from the
/// parent), on another built-in corpus, starting from `from`.
fn finetune_config(d: &Dir, name: &str, from: &str, extra: &str) -> String {
    let cfg = TINY
        .replace("[tokenizer]\nvocab_size = 300\n", "")
        .replace("[model]\nn_layer = 2\nn_head = 2\nd_model = 32\nd_ff = 64\n", "")
        .replace("name = \"t\"", &format!("name = \"{name}\""))
        .replace("builtin_bytes = 150000", "builtin_bytes = 150000\nbuiltin_seed = 5");
    assert!(!cfg.contains("n_layer") && !cfg.contains("vocab_size"), "TINY changed: {cfg}");
    let path = format!("{name}.toml");
    std::fs::write(d.path(&path), format!("{cfg}\n[init]\nfrom = \"{from}\"\n{extra}")).unwrap();
    path
}

fn sha(p: &Path) -> String {
    tinylm::util::sha256_hex(&bytes(p))
}

fn eval_loss(d: &Dir, model: &str, text: &str) -> f64 {
    let o = d.run(&["eval", "--checkpoint", model, "--text", text, "--json"]);
    assert!(o.status.success(), "eval {model}: {}", stderr(&o));
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    j["total"]["loss"].as_f64().unwrap_or_else(|| panic!("no loss in {j}"))
}

#[test]
fn finetune_of_a_release_is_pinned_verified_released_and_rated_by_its_parent() {
    let d = Dir::new("ft-release");
    d.train("runs/a", &[]);
    let o = d.run(&["release", "runs/a", "rel_a", "--allow-dirty", "--date", DATE]);
    assert!(o.status.success(), "{}", stderr(&o));
    let pin = sha(&d.path("rel_a/model/model.safetensors"));
    let cfg = finetune_config(&d, "b", "rel_a", "");

    // Unpinned: exit 2, the value to pin printed, nothing written.
    let o = d.run(&["train", "--config", &cfg, "--run-dir", "runs/b"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains(&format!("sha256 = \"{pin}\"")), "{}", stderr(&o));
    assert!(!d.path("runs/b").exists());
    // Pinned to another model: refused, naming the parent's file.
    let wrong = format!("--set=init.sha256={}", "0".repeat(64));
    let o = d.run(&["train", "--config", &cfg, "--run-dir", "runs/b", &wrong]);
    assert_clean_error(&o, "sha256 mismatch for the parent");
    assert!(stderr(&o).contains("rel_a/model/model.safetensors"), "{}", stderr(&o));
    assert!(!d.path("runs/b").exists());
    // A given model key that disagrees with the parent: both values named.
    let set_pin = format!("--set=init.sha256={pin}");
    let o = d.run(&["train", "--config", &cfg, "--run-dir", "runs/b", &set_pin, "--set", "model.n_layer=3"]);
    assert_clean_error(&o, "`model.n_layer` is 3 here, but the parent (rel_a) has 2");
    assert!(!d.path("runs/b").exists());

    let o = d.run(&["train", "--config", &cfg, "--run-dir", "runs/b", &set_pin]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("no tokenizer is trained"), "{}", stderr(&o));
    // The parent's tokenizer, unchanged, and the chain in the manifest.
    assert_eq!(
        bytes(&d.path("runs/b/step-00000020/tokenizer.json")),
        bytes(&d.path("rel_a/model/tokenizer.json"))
    );
    let m = json(&d.path("runs/b/manifest.json"));
    let p = &m["parent"];
    assert_eq!((p["kind"].as_str(), p["path"].as_str()), (Some("release"), Some("rel_a")), "{p}");
    assert_eq!(p["weights_sha256"], pin.as_str());
    assert_eq!(p["manifest_sha256"], sha(&d.path("rel_a/run/manifest.json")).as_str());
    assert_eq!((p["run_name"].as_str(), p["numerics"].as_str()), (Some("t"), Some("tinylm-numerics-v1")));
    // The resolved config holds the parent's dimensions.
    let resolved = String::from_utf8(bytes(&d.path("runs/b/config.toml"))).unwrap();
    assert!(resolved.contains("n_layer = 2") && resolved.contains("vocab_size = 300"), "{resolved}");

    // Fine-tuning helped on its own text.
    let o = d.run(&["release", "runs/b", "rel_b", "--allow-dirty", "--date", DATE]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("Class II"), "{}", stdout(&o));
    let text = d.path("rel_b/data/corpus.txt").display().to_string();
    let (la, lb) = (eval_loss(&d, "rel_a", &text), eval_loss(&d, "rel_b", &text));
    assert!(lb < la, "the fine-tune's loss {lb} is not below its parent's {la} on its own text");

    // verify re-executes from the parent: of the run (init.from), and of the release alone.
    let o = d.run(&["verify", "runs/b"]);
    assert!(o.status.success(), "{}", stdout(&o) + &stderr(&o));
    assert!(stdout(&o).contains("parent: model.safetensors"), "{}", stdout(&o));
    let card = String::from_utf8(bytes(&d.path("rel_b/README.md"))).unwrap();
    assert!(card.contains("\nbase_model: tinylm-t\n") && card.contains("## Lineage"), "{card}");
    assert!(String::from_utf8(bytes(&d.path("rel_b/REPORT.md"))).unwrap().contains(&pin));
    let mof = String::from_utf8(bytes(&d.path("rel_b/mof.yml"))).unwrap();
    assert!(
        mof.contains(&format!("origin: \"fine-tuned from tinylm-t (model.safetensors sha256 {pin})\"")),
        "{mof}"
    );
    let problems = tinylm::release::mof::schema_problems(&mof);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(
        bytes(&d.path("rel_b/parent/model.safetensors")),
        bytes(&d.path("rel_a/model/model.safetensors"))
    );
    assert_eq!(json(&d.path("rel_b/release.json"))["parent"]["weights_sha256"], pin.as_str());
    std::fs::rename(d.path("rel_a"), d.path("rel_a_moved")).unwrap();
    let o = d.run(&["verify", "rel_b"]);
    assert!(o.status.success(), "{}", stdout(&o) + &stderr(&o));
    // A checkpoint is the whole future: resuming needs no parent at init.from.
    let o = d.run(&["train", "--resume", "runs/b/step-00000010", "--run-dir", "runs/b2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        bytes(&d.path("runs/b2/step-00000020/model.safetensors")),
        bytes(&d.path("runs/b/step-00000020/model.safetensors"))
    );
    assert_eq!(json(&d.path("runs/b2/manifest.json"))["parent"], m["parent"]);
    // The windows of a step replay with the parent's tokenizer.
    let o = d.run(&["batches", "rel_b", "--step", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));

    // audit: at most Class II without the parent's release, its class with it.
    let (code, out) = audit(&d, "rel_b", &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("at most Class II") && out.contains("class met: Class II"), "{out}");
    let (code, out) = audit(&d, "rel_b", &["--require", "1"]);
    assert_eq!(code, Some(1), "{out}");
    let (code, out) = audit(&d, "rel_b", &["--parent", "rel_a_moved"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("audits as Class I") && out.contains("class met: Class I -"), "{out}");
    // Another folder as the parent's release does not raise it.
    let (_, out) = audit(&d, "rel_b", &["--parent", "rel_b"]);
    assert!(out.contains("is not its release") && out.contains("class met: Class II"), "{out}");

    // A changed parent: verify names it; the run's init.from gone: verify says so.
    let w = d.path("rel_b/parent/model.safetensors");
    let mut b = bytes(&w);
    let n = b.len();
    b[n - 1] ^= 1;
    std::fs::write(&w, b).unwrap();
    let o = d.run(&["verify", "rel_b"]);
    assert_clean_error(&o, "is not the parent the manifest records");
    let o = d.run(&["verify", "runs/b"]);
    assert_clean_error(&o, "the parent rel_a is not here");
    let o = d.run(&["verify", "runs/b", "--parent", "rel_a_moved"]);
    assert!(o.status.success(), "{}", stdout(&o) + &stderr(&o));
}

#[test]
fn carry_from_a_checkpoint_continues_to_the_straight_runs_bits() {
    let d = Dir::new("ft-carry");
    d.train("runs/a", &[]);
    let from = "runs/a/step-00000010";
    let pin = format!("--set=init.sha256={}", sha(&d.path(&format!("{from}/model.safetensors"))));
    let args = ["--set", &format!("init.from={from}"), &pin, "--set", "init.optimizer=carry"];
    let o = d.try_train("runs/c", &args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("at the parent's step 10"), "{}", stderr(&o));
    for f in ["model.safetensors", "optimizer.safetensors"] {
        assert_eq!(
            bytes(&d.path(&format!("runs/c/step-00000020/{f}"))),
            bytes(&d.path(&format!("runs/a/step-00000020/{f}"))),
            "{f}: carry from step 10 is not the straight run"
        );
    }
    let m = json(&d.path("runs/c/manifest.json"));
    assert_eq!((m["parent"]["kind"].as_str(), m["parent"]["step"].as_u64()), (Some("checkpoint"), Some(10)));
    assert!(m["parent"]["optimizer_sha256"].is_string(), "{m}");
    let o = d.run(&["verify", "runs/c"]);
    assert!(o.status.success(), "{}", stdout(&o) + &stderr(&o));
    assert!(stdout(&o).contains("parent: optimizer.safetensors"), "{}", stdout(&o));
    // Carry needs a tinylm checkpoint; steps must go past the parent's.
    let o = d.try_train(
        "runs/d",
        &[
            "--set",
            &format!("init.from={from}"),
            &pin,
            "--set",
            "init.optimizer=carry",
            "--set",
            "train.steps=10",
        ],
    );
    assert_clean_error(&o, "is not past the parent's step 10");
    let o = d.run(&["release", "runs/a", "rel_a", "--allow-dirty", "--date", DATE]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rpin = format!("--set=init.sha256={}", sha(&d.path("rel_a/model/model.safetensors")));
    let o = d.try_train("runs/d", &["--set", "init.from=rel_a", &rpin, "--set", "init.optimizer=carry"]);
    assert_clean_error(&o, "only a tinylm checkpoint can give it");
    assert!(!d.path("runs/d").exists());
}

#[test]
fn a_hugging_face_parent_is_accepted_and_what_tinylm_cannot_represent_is_refused() {
    let d = Dir::new("ft-hf");
    d.train("runs/a", &["--set", "train.steps=10"]);
    let o = d.run(&["release", "runs/a", "rel_a", "--allow-dirty", "--date", DATE]);
    assert!(o.status.success(), "{}", stderr(&o));
    // An HF folder as save_pretrained writes it: the release's model/ alone.
    copy_dir(&d.path("rel_a/model"), &d.path("hf"));
    let pin = format!("--set=init.sha256={}", sha(&d.path("hf/model.safetensors")));
    let cfg = finetune_config(&d, "h", "hf", "");
    let o = d.run(&["train", "--config", &cfg, "--run-dir", "runs/h", &pin, "--set", "train.steps=5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&d.path("runs/h/manifest.json"))["parent"]["kind"], "huggingface");
    let o = d.run(&["verify", "runs/h"]);
    assert!(o.status.success(), "{}", stdout(&o) + &stderr(&o));
    // Released: an unlicensed HF parent is named, not shipped, and caps the class at III.
    let o = d.run(&["release", "runs/h", "rel_h", "--allow-dirty", "--date", DATE, "--allow-partial"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!d.path("rel_h/parent/model.safetensors").exists());
    let (code, out) = audit(&d, "rel_h", &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("a Hugging Face model with no tinylm record") && out.contains("class met: Class III"),
        "{out}"
    );
    let o = d.run(&["verify", "rel_h"]);
    assert_clean_error(&o, "the release ships no parent/");
    let o = d.run(&["verify", "rel_h", "--parent", "hf"]);
    assert!(o.status.success(), "{}", stdout(&o) + &stderr(&o));

    let base: serde_json::Value = json(&d.path("hf/config.json"));
    for (key, value) in [
        ("tie_word_embeddings", serde_json::json!(true)),
        ("num_key_value_heads", serde_json::json!(1)),
        ("attention_bias", serde_json::json!(true)),
        ("rope_scaling", serde_json::json!({"type": "linear", "factor": 2.0})),
        ("hidden_act", serde_json::json!("gelu")),
    ] {
        let mut c = base.clone();
        c[key] = value;
        std::fs::write(d.path("hf/config.json"), serde_json::to_vec_pretty(&c).unwrap()).unwrap();
        let o = d.run(&["train", "--config", &cfg, "--run-dir", "runs/x", &pin]);
        assert_clean_error(&o, key);
        assert!(!d.path("runs/x").exists(), "{key}");
    }
}
