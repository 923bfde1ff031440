//! End-to-end: the pipeline from config to checkpoints, its determinism and its errors.

mod util;
use util::*;

#[test]
fn same_config_gives_byte_identical_weights_and_full_run_layout() {
    let d = Dir::new("determinism");
    let out = d.train("runs/a", &[]);
    d.train("runs/b", &[]);
    let (a, b) = (d.path("runs/a"), d.path("runs/b"));
    for step in [5, 10, 15, 20] {
        assert_eq!(weights(&a, step), weights(&b, step), "step {step} differs");
    }
    assert_ne!(weights(&a, 5), weights(&a, 20), "training must change the weights");
    for f in ["config.toml", "manifest.json", "metrics.jsonl"] {
        assert!(a.join(f).is_file(), "{f} missing");
    }
    for f in ["model.safetensors", "optimizer.safetensors", "state.json", "config.toml", "tokenizer.json"] {
        assert!(a.join("step-00000020").join(f).is_file(), "{f} missing");
    }
    // One metrics line per step, with val metrics at eval steps.
    let metrics = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 20);
    for key in ["step", "loss", "lr", "grad_norm", "tokens_per_sec"] {
        assert!(lines[0].get(key).is_some(), "metrics lack {key}");
    }
    assert!(lines[9].get("val_bpb").is_some() && lines[19].get("val_loss").is_some());
    assert!(lines[0].get("val_loss").is_none());
    let first = lines[0]["loss"].as_f64().unwrap();
    let last = lines[19]["val_loss"].as_f64().unwrap();
    assert!(last < first && last < (300f64).ln(), "loss should fall: {first} -> {last}");
    let e = stderr(&out);
    assert!(e.contains("sample:") && e.contains("bits/byte"), "{e}");
    // The HF tensor names.
    let st = String::from_utf8_lossy(&weights(&a, 20)[..4000]).into_owned();
    for name in [
        "model.embed_tokens.weight",
        "model.layers.1.self_attn.q_proj.weight",
        "model.layers.0.mlp.down_proj.weight",
        "model.norm.weight",
        "lm_head.weight",
    ] {
        assert!(st.contains(name), "{name} not in the safetensors header");
    }
}

#[test]
fn thread_count_does_not_change_the_weights() {
    let d = Dir::new("threads");
    // Matrices as large as tiny.toml's, so gemm really splits work across threads; each count
    // with its own data dir, so the tokenizer and token files are rebuilt under it too.
    let sized = [
        "model.d_model=128",
        "model.n_head=4",
        "model.d_ff=352",
        "train.context=64",
        "train.batch_size=8",
        "train.steps=6",
        "checkpoint.every=0",
        "eval.every=0",
    ];
    let run = |n: u32| {
        let mut args: Vec<String> = Vec::new();
        for s in sized
            .iter()
            .map(|s| s.to_string())
            .chain([format!("run.threads={n}"), format!("data.dir=data{n}")])
        {
            args.push("--set".into());
            args.push(s);
        }
        let run_dir = format!("runs/t{n}");
        d.train(&run_dir, &args.iter().map(String::as_str).collect::<Vec<_>>());
        weights(&d.path(&run_dir), 6)
    };
    let w1 = run(1);
    assert!(w1 == run(2), "1 vs 2 threads");
    assert!(w1 == run(4), "1 vs 4 threads");
}

#[test]
fn grad_accumulation_and_retention() {
    let d = Dir::new("accum");
    d.train(
        "runs/a",
        &[
            "--set",
            "train.grad_accum=2",
            "--set",
            "checkpoint.keep_last=2",
            "--set",
            "checkpoint.keep_every=10",
        ],
    );
    let mut kept: Vec<String> = std::fs::read_dir(d.path("runs/a"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    kept.sort();
    assert_eq!(kept, ["step-00000010", "step-00000015", "step-00000020"]);
    let m: serde_json::Value = serde_json::from_slice(&bytes(&d.path("runs/a/manifest.json"))).unwrap();
    let present: Vec<bool> =
        m["checkpoints"].as_array().unwrap().iter().map(|c| c["present"].as_bool().unwrap()).collect();
    assert_eq!(present, [false, true, true, true]);
}

#[test]
fn prepare_reuses_unchanged_data_and_rebuilds_changed() {
    let d = Dir::new("prepare");
    let cfg = d.config();
    let first = d.run(&["prepare", "--config", &cfg]);
    assert!(first.status.success(), "{}", stderr(&first));
    let again = d.run(&["prepare", "--config", &cfg]);
    assert!(stderr(&again).contains("reusing prepared data"), "{}", stderr(&again));
    assert_eq!(stdout(&first), stdout(&again));
    // Training the tokenizer again from scratch elsewhere gives byte-identical files.
    let elsewhere = d.run(&["prepare", "--config", &cfg, "--set", "data.dir=other"]);
    let hashes = |o: &std::process::Output| stdout(o).lines().skip(1).map(String::from).collect::<Vec<_>>();
    assert_eq!(hashes(&first), hashes(&elsewhere));
    assert_eq!(hashes(&first).len(), 5, "corpus, tokenizer, train, val, token ids");
    let changed = d.run(&["prepare", "--config", &cfg, "--set", "tokenizer.vocab_size=320"]);
    assert!(stderr(&changed).contains("training BPE tokenizer"), "{}", stderr(&changed));
    assert_ne!(stdout(&first), stdout(&changed));
}

#[test]
fn sample_is_deterministic_per_seed() {
    let d = Dir::new("sample");
    d.train("runs/a", &[]);
    let s = |seed: &str| {
        let o = d.run(&[
            "sample",
            "--checkpoint",
            "runs/a/step-00000020",
            "--prompt",
            "Once upon",
            "--tokens",
            "20",
            "--seed",
            seed,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
    };
    assert_eq!(s("1"), s("1"));
    assert!(s("1").starts_with("Once upon"));
    assert_ne!(s("1"), s("2"));
    // A run directory means its newest checkpoint.
    let o = d.run(&[
        "sample",
        "--checkpoint",
        "runs/a",
        "--prompt",
        "Once upon",
        "--tokens",
        "20",
        "--seed",
        "1",
    ]);
    assert_eq!(stdout(&o), s("1"));
}

#[test]
fn errors_are_one_clear_line_and_exit_2() {
    let d = Dir::new("errors");
    let cfg = d.config();
    std::fs::write(d.path("bad-key.toml"), "[train]\nsteps = 5\nstepz = 3\n").unwrap();
    assert_one_line_error(
        &d.run(&["train", "--config", "bad-key.toml"]),
        "unknown key `train.stepz` (line 3)",
    );
    std::fs::write(d.path("bad-type.toml"), "[optim]\nlr = \"fast\"\n").unwrap();
    assert_one_line_error(
        &d.run(&["train", "--config", "bad-type.toml"]),
        "`optim.lr` (line 2): expected float, found string",
    );
    assert_one_line_error(&d.run(&["train", "--config", "nope.toml"]), "config file nope.toml not found");
    // A file source with a pinned hash; values may be bare or TOML-quoted.
    let train_file = |path: &str, sha: &str| {
        let (path, sha) = (format!("data.path={path}"), format!("data.sha256={sha}"));
        d.run(&["train", "--config", &cfg, "--set", "data.source=\"file\"", "--set", &path, "--set", &sha])
    };
    let missing = train_file("\"missing.txt\"", &format!("\"{}\"", "0".repeat(64)));
    assert_one_line_error(&missing, "data file missing.txt does not exist");
    std::fs::write(d.path("corpus.txt"), "hello world\n".repeat(1000)).unwrap();
    let mismatch = train_file("corpus.txt", &"ab".repeat(32));
    assert_one_line_error(&mismatch, "sha256 mismatch for corpus.txt");
    // Every check runs before the first write: a refused run leaves no run directory behind.
    assert!(!d.path("checkpoints").exists(), "a refused run created its run directory");
    // A run directory below a regular file cannot be created.
    std::fs::write(d.path("afile"), "x").unwrap();
    assert_one_line_error(
        &d.run(&["train", "--config", &cfg, "--run-dir", "afile/run"]),
        "cannot write run directory afile/run",
    );
    // Training into a directory that holds checkpoints without --resume would clobber them.
    d.train("runs/a", &[]);
    assert_one_line_error(&d.run(&["train", "--config", &cfg, "--run-dir", "runs/a"]), "already holds a run");
}

#[test]
fn file_source_with_pinned_hash_trains() {
    let d = Dir::new("filesrc");
    let text = tinylm::corpus::generate(5, 120_000);
    std::fs::write(d.path("stories.txt"), &text).unwrap();
    let sha = tinylm::util::sha256_hex(text.as_bytes());
    d.train(
        "runs/f",
        &[
            "--set",
            "data.source=file",
            "--set",
            "data.path=stories.txt",
            "--set",
            &format!("data.sha256={sha}"),
            "--set",
            "train.steps=5",
        ],
    );
    let m: serde_json::Value = serde_json::from_slice(&bytes(&d.path("runs/f/manifest.json"))).unwrap();
    assert_eq!(m["data"]["corpus_sha256"], sha);
}
