//! Exact resume, interruption and `tinylm verify`, each on the real binary with a tiny config.

mod util;
use std::process::Stdio;
use std::time::Duration;
use util::*;

#[test]
fn resume_from_any_checkpoint_matches_a_straight_run() {
    let d = Dir::new("resume");
    d.train("runs/straight", &[]);
    let straight = d.path("runs/straight");
    let want = weights(&straight, 20);

    // N/2 steps, then a resume to N (train.steps changes, the schedule is pinned).
    d.train("runs/half", &["--set", "train.steps=10", "--set", "optim.schedule_steps=20"]);
    d.train("runs/half", &["--set", "optim.schedule_steps=20", "--resume"]);
    assert_eq!(weights(&d.path("runs/half"), 20), want, "10 + resume to 20");
    assert_eq!(weights(&d.path("runs/half"), 15), weights(&straight, 15));

    // From each intermediate checkpoint, in a copy of the run, with a different thread count.
    for step in [5u64, 10, 15] {
        let name = format!("runs/from{step}");
        copy_dir(&straight, &d.path(&name));
        let ckpt = format!("{name}/step-{step:08}");
        d.train(&name, &["--resume", &ckpt, "--set", "run.threads=2"]);
        assert_eq!(weights(&d.path(&name), 20), want, "resume from step {step}");
    }
    // Twice in a row: resume from 5, then again from that run's 15.
    copy_dir(&straight, &d.path("runs/twice"));
    d.train("runs/twice", &["--resume", "runs/twice/step-00000005"]);
    d.train("runs/twice", &["--resume", "runs/twice/step-00000015"]);
    assert_eq!(weights(&d.path("runs/twice"), 20), want);
    // Eval and checkpoint cadence may change on resume and never change the weights.
    copy_dir(&straight, &d.path("runs/cadence"));
    d.train(
        "runs/cadence",
        &["--resume", "runs/cadence/step-00000005", "--set", "eval.every=3", "--set", "checkpoint.every=7"],
    );
    assert_eq!(weights(&d.path("runs/cadence"), 20), want);
}

#[test]
fn resume_refuses_changes_that_alter_the_result() {
    let d = Dir::new("refuse");
    d.train("runs/a", &["--set", "train.steps=10"]);
    let o = d.try_train("runs/a", &["--resume", "--set", "model.d_model=64", "--set", "optim.lr=0.01"]);
    assert_clean_error(&o, "model.d_model: checkpoint has 32, now 64");
    assert!(stderr(&o).contains("optim.lr: checkpoint has 0.003, now 0.01"), "{}", stderr(&o));
    // Changing train.steps alone changes the cosine schedule: refused with the fix.
    let o = d.try_train("runs/a", &["--resume"]);
    assert_clean_error(&o, "optim.schedule_steps=10");
    // A different corpus is refused too.
    let o = d.try_train("runs/a", &["--resume", "--set", "train.steps=10", "--set", "data.builtin_seed=1"]);
    assert_clean_error(&o, "data.builtin_seed");
    // Nothing to resume.
    let o = d.try_train("runs/empty", &["--resume"]);
    assert_clean_error(&o, "no complete checkpoint");
}

#[test]
fn half_written_checkpoints_are_never_resumed_from() {
    let d = Dir::new("torn");
    d.train("runs/straight", &[]);
    d.train("runs/a", &["--set", "train.steps=10", "--set", "optim.schedule_steps=20"]);
    // What a crash mid-write can leave: a temp directory, and a step directory without state.
    let run = d.path("runs/a");
    std::fs::create_dir_all(run.join(".tmp-step-00000015-999")).unwrap();
    std::fs::write(run.join(".tmp-step-00000015-999/model.safetensors"), b"partial").unwrap();
    std::fs::create_dir_all(run.join("step-00000012")).unwrap();
    std::fs::write(run.join("step-00000012/model.safetensors"), b"partial").unwrap();
    // A crash between the two renames that replace a step: the old copy comes back.
    std::fs::rename(run.join("step-00000010"), run.join(".old-step-00000010-999")).unwrap();
    let out = d.train("runs/a", &["--set", "optim.schedule_steps=20", "--resume"]);
    assert!(stderr(&out).contains("step-00000010 at step 10"), "{}", stderr(&out));
    assert_eq!(weights(&run, 20), weights(&d.path("runs/straight"), 20));
    let names: Vec<String> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with('.') && n != ".lock"), "leftovers tidied: {names:?}");
}

/// A longer run (800 tiny steps) trained straight into runs/straight, and the args that train
/// the same config into `run`.
fn long_run(d: &Dir, run: &str, ckpt_every: u32) -> Vec<String> {
    let mut args: Vec<String> =
        ["train", "--config", &d.config(), "--run-dir", run].map(String::from).to_vec();
    for s in ["train.steps=800".to_string(), format!("checkpoint.every={ckpt_every}"), "eval.every=0".into()]
    {
        args.push("--set".into());
        args.push(s);
    }
    let mut straight = args.clone();
    straight[4] = "runs/straight".into();
    let o = d.run(&straight.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    args
}

#[test]
fn sigint_and_sigterm_checkpoint_and_resume_is_exact() {
    let d = Dir::new("sigint");
    let owned = long_run(&d, "runs/int", 50);
    for sig in ["INT", "TERM"] {
        let run = format!("runs/{sig}");
        let mut args: Vec<&str> = owned.iter().map(String::as_str).collect();
        args[4] = &run;
        let mut child = d.cmd(&args).stderr(Stdio::piped()).spawn().unwrap();
        assert!(wait_for_step(&mut child, &d.path(&run), 50).is_some(), "SIG{sig}: the run ended early");
        signal(child.id(), sig);
        let out = child.wait_with_output().unwrap();
        let e = stderr(&out);
        assert_eq!(out.status.code(), Some(130), "SIG{sig}: {e}");
        assert!(e.contains("resume with: tinylm train"), "{e}");
        // It stopped early and left a complete checkpoint at the step it reached.
        let (last, _) = *tinylm::checkpoint::list(&d.path(&run)).unwrap().last().unwrap();
        assert!(last > 50 && last < 800, "SIG{sig}: checkpoint at {last}");
        resume_to_the_end_and_compare(&d, &args, &run);
    }
}

#[test]
fn kill_9_then_resume_is_exact() {
    let d = Dir::new("kill9");
    let owned = long_run(&d, "runs/k", 7);
    let args: Vec<&str> = owned.iter().map(String::as_str).collect();
    // Kill at a few different moments; whatever is on disk must resume to the same weights.
    for wait_step in [14u64, 105, 203] {
        let mut a = args.clone();
        if wait_step != 14 {
            a.push("--resume");
        }
        let mut child = d.cmd(&a).stderr(Stdio::null()).spawn().unwrap();
        assert!(wait_for_step(&mut child, &d.path("runs/k"), wait_step).is_some(), "the run ended early");
        std::thread::sleep(Duration::from_millis(3 * (wait_step % 5)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    resume_to_the_end_and_compare(&d, &args, "runs/k");
}

/// `--resume` the interrupted run to step 800 and compare with the straight run.
fn resume_to_the_end_and_compare(d: &Dir, args: &[&str], run: &str) {
    let mut a = args.to_vec();
    a.push("--resume");
    let o = d.run(&a);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(weights(&d.path(run), 800), weights(&d.path("runs/straight"), 800));
}

#[test]
fn verify_passes_a_good_run_and_names_a_flipped_byte() {
    let d = Dir::new("verify");
    d.train("runs/a", &[]);
    let ok = d.run(&["verify", "runs/a"]);
    assert_eq!(ok.status.code(), Some(0), "{}\n{}", stdout(&ok), stderr(&ok));
    let table = stdout(&ok);
    assert!(
        table.contains("artifact")
            && table.contains("rerun step-00000020/model.safetensors")
            && table.contains("data: tokenizer.json"),
        "{table}"
    );
    let from = d.run(&["verify", "runs/a", "--from", "10"]);
    assert_eq!(from.status.code(), Some(0), "{}\n{}", stdout(&from), stderr(&from));
    let files = d.run(&["verify", "runs/a", "--files-only"]);
    assert_eq!(files.status.code(), Some(0), "{}", stdout(&files));

    // Flip one byte in a checkpoint's weights.
    let p = d.path("runs/a/step-00000015/model.safetensors");
    let mut b = bytes(&p);
    let i = b.len() - 3;
    b[i] ^= 0x01;
    std::fs::write(&p, b).unwrap();
    let bad = d.run(&["verify", "runs/a", "--files-only"]);
    assert_eq!(bad.status.code(), Some(1), "{}", stdout(&bad));
    assert!(stdout(&bad).contains("MISMATCH: step-00000015/model.safetensors"), "{}", stdout(&bad));
    // The full verify names the file too and reports the first differing tensor.
    let bad = d.run(&["verify", "runs/a"]);
    assert_eq!(bad.status.code(), Some(1), "{}", stdout(&bad));
    let out = stdout(&bad);
    assert!(out.contains("step-00000015/model.safetensors"), "{out}");
    assert!(
        out.contains("first divergence: step 15: ")
            && out.contains(": tensor ")
            && out.contains("largest absolute difference"),
        "{out}"
    );
    // Resuming from the tampered checkpoint is refused.
    let o = d.try_train("runs/a", &["--resume", "runs/a/step-00000015"]);
    assert_clean_error(&o, "step-00000015/model.safetensors");
    // Even when state.json is rewritten to match the tampered file, the run manifest catches it.
    let state_path = d.path("runs/a/step-00000015/state.json");
    let mut state: serde_json::Value = serde_json::from_slice(&bytes(&state_path)).unwrap();
    state["files"]["model.safetensors"] = tinylm::util::sha256_hex(&bytes(&p)).into();
    std::fs::write(&state_path, serde_json::to_vec_pretty(&state).unwrap()).unwrap();
    let o = d.try_train("runs/a", &["--resume", "runs/a/step-00000015"]);
    assert_one_line_error(&o, "does not match the run manifest");
}

#[test]
fn manifest_records_inputs_outputs_and_build_with_sha256sum_hashes() {
    let d = Dir::new("manifest");
    d.train("runs/a", &["--set", "train.steps=10"]);
    let m: serde_json::Value = serde_json::from_slice(&bytes(&d.path("runs/a/manifest.json"))).unwrap();
    assert_eq!(m["format_version"], 1);
    for key in ["corpus_sha256", "tokenizer_sha256", "train_tokens_sha256", "val_tokens_sha256"] {
        assert_eq!(m["data"][key].as_str().unwrap().len(), 64, "{key}");
    }
    let s = &m["sessions"][0];
    for key in ["tinylm_version", "git_commit", "rustc_version", "cargo_lock_sha256", "candle_version"] {
        assert!(s["build"][key].as_str().is_some_and(|v| !v.is_empty()), "build.{key}");
    }
    assert!(s["build"]["git_dirty"].is_boolean());
    assert_eq!(s["threads"], 1);
    assert!(s["cpu_model"].as_str().is_some_and(|v| !v.is_empty()));
    let c = &m["checkpoints"][1];
    assert_eq!(c["step"], 10);
    assert!(c["train_loss"].as_f64().is_some() && c["val_loss"].as_f64().is_some());
    // The recorded hashes are what sha256sum prints.
    let sum = |p: &str| {
        let o = std::process::Command::new("sha256sum").arg(d.path(p)).output().unwrap();
        stdout(&o).split_whitespace().next().unwrap().to_string()
    };
    assert_eq!(c["files"]["model.safetensors"], sum("runs/a/step-00000010/model.safetensors"));
    assert_eq!(c["files"]["state.json"], sum("runs/a/step-00000010/state.json"));
    assert_eq!(m["config_sha256"], sum("runs/a/config.toml"));
    // Each session records the numerics contract and the kernel path, and verify names them.
    assert_eq!(s["numerics"], "tinylm-numerics-v1");
    assert!(s["kernels"].as_str().is_some_and(|k| ["avx512", "avx2-fma", "neon", "scalar"].contains(&k)));
    let o = d.run(&["verify", "runs/a", "--files-only"]);
    assert!(stdout(&o).contains("numerics: the run recorded tinylm-numerics-v1 ("), "{}", stdout(&o));
    // A checkpoint computed under another contract is not resumed as if it were this one.
    std::fs::remove_file(d.path("runs/a/manifest.json")).unwrap();
    let sp = d.path("runs/a/step-00000010/state.json");
    let mut st: serde_json::Value = serde_json::from_slice(&bytes(&sp)).unwrap();
    st["numerics"] = "tinylm-numerics-v0".into();
    std::fs::write(&sp, serde_json::to_vec_pretty(&st).unwrap()).unwrap();
    let o = d.try_train("runs/a", &["--resume", "--set", "train.steps=10"]);
    assert_clean_error(&o, "numerics contract: checkpoint has tinylm-numerics-v0, now tinylm-numerics-v1");
    // A missing run directory is an error (exit 2), not a mismatch.
    assert_clean_error(&d.run(&["verify", "runs/none"]), "run directory runs/none does not exist");
}

#[test]
fn every_subcommand_has_help() {
    let d = Dir::new("help");
    for cmd in ["train", "prepare", "sample", "verify", "release", "audit", "eval", "export", "batches"] {
        let o = d.run(&[cmd, "--help"]);
        assert!(o.status.success(), "{cmd} --help");
        assert!(stdout(&o).contains("Usage: tinylm"), "{}", stdout(&o));
    }
    assert!(stdout(&d.run(&["train", "--help"])).contains("--resume"));
}

/// `verify --from A --to B` re-executes one segment and compares what it recomputes there; a
/// tampered checkpoint at either end fails it.
#[test]
fn a_segment_verifies_alone_and_a_tampered_end_fails_it() {
    let d = Dir::new("segment");
    d.train("runs/a", &[]);
    let o = d.run(&["verify", "runs/a", "--from", "5", "--to", "10"]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("rerun step-00000010/model.safetensors"), "{out}");
    assert!(!out.contains("rerun step-00000015/"), "the segment stops at --to:\n{out}");
    let o = d.run(&["verify", "runs/a", "--from", "5", "--to", "7"]);
    assert_clean_error(&o, "--to 7: no recorded checkpoint");
    for (end, step) in [("end", 10u64), ("start", 5)] {
        let p = d.path(&format!("runs/a/step-{step:08}/model.safetensors"));
        let good = bytes(&p);
        let mut bad = good.clone();
        let i = bad.len() - 3;
        bad[i] ^= 1;
        std::fs::write(&p, &bad).unwrap();
        let o = d.run(&["verify", "runs/a", "--from", "5", "--to", "10"]);
        assert_eq!(
            o.status.code(),
            Some(1),
            "a tampered {end} must fail the segment:\n{}\n{}",
            stdout(&o),
            stderr(&o)
        );
        std::fs::write(&p, &good).unwrap();
    }
}
