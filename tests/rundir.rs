//! A run directory that no command, mistake or crash can damage: one test per finding of the
//! 2026-11-28 review (B1..B15), plus kill -9 at random moments, two trainers at once, a full
//! disk, and a fuzz of configs and flags. Each runs the real binary on the tiny test config.

mod util;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use util::*;

/// Every file under `dir` (but the lock file) by relative path, with its SHA-256.
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if p.file_name().unwrap() != ".lock" {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, tinylm::util::sha256_hex(&bytes(&p)));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn files_only_ok(d: &Dir, run: &str) {
    let o = d.run(&["verify", run, "--files-only"]);
    assert_eq!(o.status.code(), Some(0), "verify --files-only {run}:\n{}{}", stdout(&o), stderr(&o));
}

fn manifest(d: &Dir, run: &str) -> serde_json::Value {
    serde_json::from_slice(&bytes(&d.path(&format!("{run}/manifest.json")))).unwrap()
}

fn recorded_steps(m: &serde_json::Value) -> Vec<(u64, bool)> {
    m["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["step"].as_u64().unwrap(), c["present"].as_bool().unwrap()))
        .collect()
}

/// Run a printed `tinylm train ...` command line (paths without spaces) in the test directory.
fn run_printed(d: &Dir, line: &str) -> std::process::Output {
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words[0], "tinylm", "{line}");
    d.run(&words[1..])
}

/// B1: a refused resume changes nothing in the run directory.
#[test]
fn b1_a_refused_resume_writes_nothing() {
    let d = Dir::new("b1");
    d.train("runs/a", &["--set", "train.steps=10"]);
    let before = snapshot(&d.path("runs/a"));
    let o =
        d.try_train("runs/a", &["--resume", "--set", "optim.lr=0.01", "--set", "optim.schedule_steps=10"]);
    assert_clean_error(&o, "optim.lr: checkpoint has 0.003, now 0.01");
    let o = d.try_train("runs/a", &["--resume"]); // train.steps=20 changes the schedule
    assert_clean_error(&o, "optim.schedule_steps=10");
    assert_eq!(snapshot(&d.path("runs/a")), before, "a refused resume changed the run directory");
    files_only_ok(&d, "runs/a");
    let full = d.run(&["verify", "runs/a"]);
    assert_eq!(full.status.code(), Some(0), "{}", stdout(&full));
    // A config.toml changed by hand: verify refuses to re-execute it rather than blame the run.
    let cp = d.path("runs/a/config.toml");
    let mut text = String::from_utf8(bytes(&cp)).unwrap();
    text = text.replace("lr = 0.003", "lr = 0.004");
    std::fs::write(&cp, text).unwrap();
    assert_clean_error(&d.run(&["verify", "runs/a"]), "the run's config was changed after it ran");
    assert_clean_error(&d.run(&["train", "--resume", "runs/a"]), "does not match the run manifest");
}

/// B2: resuming from an older checkpoint with keep_last never deletes what it writes; the later
/// timeline is moved aside and the manifest matches the disk.
#[test]
fn b2_resume_from_an_older_checkpoint_with_retention() {
    let d = Dir::new("b2");
    let every2 = ["--set", "train.steps=10", "--set", "checkpoint.every=2"];
    d.train("runs/b", &every2);
    let o = d.train(
        "runs/b",
        &[
            "--resume",
            "runs/b/step-00000004",
            "--set",
            "train.steps=7",
            "--set",
            "optim.schedule_steps=10",
            "--set",
            "checkpoint.every=2",
            "--set",
            "checkpoint.keep_last=2",
        ],
    );
    assert!(stderr(&o).contains("abandoned timeline"), "{}", stderr(&o));
    let on_disk: Vec<u64> =
        tinylm::checkpoint::list(&d.path("runs/b")).unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(on_disk, vec![6, 7], "the checkpoints just written are kept");
    let m = manifest(&d, "runs/b");
    assert_eq!(recorded_steps(&m), vec![(2, false), (4, false), (6, true), (7, true)]);
    let abandoned: Vec<u64> =
        m["abandoned"].as_array().unwrap().iter().map(|c| c["step"].as_u64().unwrap()).collect();
    assert_eq!(abandoned, vec![6, 8, 10], "the old timeline is recorded as abandoned");
    assert!(d.path("runs/b/abandoned").read_dir().unwrap().next().is_some());
    files_only_ok(&d, "runs/b");
    // The new timeline is exact: step 6 equals the old timeline's step 6.
    let old6 = d.path("runs/b/abandoned").read_dir().unwrap().next().unwrap().unwrap().path();
    assert_eq!(bytes(&old6.join("step-00000006/model.safetensors")), weights(&d.path("runs/b"), 6));
    // And a plain --resume continues the new timeline, not the abandoned one.
    let o =
        d.try_train("runs/b", &["--resume", "--set", "train.steps=7", "--set", "optim.schedule_steps=10"]);
    assert_clean_error(&o, "at step 7, and train.steps is 7: nothing to do");
}

/// B3: verify --scratch never deletes a directory it did not create.
#[test]
fn b3_verify_scratch_keeps_what_is_not_its_own() {
    let d = Dir::new("b3");
    d.train("runs/a", &["--set", "train.steps=5"]);
    std::fs::create_dir_all(d.path("mywork")).unwrap();
    std::fs::write(d.path("mywork/notes.txt"), "precious").unwrap();
    let o = d.run(&["verify", "runs/a", "--scratch", "mywork"]);
    assert_clean_error(&o, "scratch directory mywork exists and is not empty");
    assert_eq!(bytes(&d.path("mywork/notes.txt")), b"precious");
    let o = d.run(&["verify", "runs/a", "--scratch", "."]);
    assert_eq!(o.status.code(), Some(2));
    assert!(d.path("tiny.toml").exists() && d.path("runs/a/manifest.json").exists());
    // An empty directory is used and left empty; a new one is created and removed.
    std::fs::create_dir_all(d.path("empty")).unwrap();
    let o = d.run(&["verify", "runs/a", "--scratch", "empty"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(d.path("empty").read_dir().unwrap().next().is_none());
    let o = d.run(&["verify", "runs/a", "--scratch", "fresh"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(!d.path("fresh").exists());
}

/// B4: the command printed after an interrupt works as printed, overrides and all.
#[test]
fn b4_the_printed_resume_command_works() {
    let d = Dir::new("b4");
    let sets = [
        "--set",
        "train.steps=800",
        "--set",
        "optim.lr=0.002",
        "--set",
        "eval.every=0",
        "--set",
        "checkpoint.every=100",
    ];
    d.train("runs/straight", &sets);
    let cfg = d.config();
    let mut args = vec!["train", "--config", &cfg, "--run-dir", "runs/int"];
    args.extend_from_slice(&sets);
    let mut child = d.cmd(&args).stderr(Stdio::piped()).spawn().unwrap();
    assert!(wait_for_step(&mut child, &d.path("runs/int"), 100).is_some(), "the run ended early");
    signal(child.id(), "INT");
    let out = child.wait_with_output().unwrap();
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(130), "{e}");
    let line = e.lines().find_map(|l| l.strip_prefix("resume with: ")).unwrap_or_else(|| panic!("{e}"));
    assert_eq!(line, "tinylm train --resume runs/int");
    let o = run_printed(&d, line);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(weights(&d.path("runs/int"), 800), weights(&d.path("runs/straight"), 800));
    files_only_ok(&d, "runs/int");
}

/// B5: a divergence names the 1-based step, writes no bad checkpoint and does not advise a
/// resume that would be refused.
#[test]
fn b5_divergence_message_is_right() {
    let d = Dir::new("b5");
    let o = d.try_train(
        "runs/a",
        &["--set", "optim.lr=1e30", "--set", "checkpoint.every=1", "--set", "optim.warmup_steps=1"],
    );
    assert_clean_error(&o, "training diverged at step ");
    let e = stderr(&o);
    let step: u64 = e.split("diverged at step ").nth(1).unwrap().split(':').next().unwrap().parse().unwrap();
    let last = tinylm::checkpoint::list(&d.path("runs/a")).unwrap().last().map(|(s, _)| *s).unwrap_or(0);
    assert_eq!(step, last + 1, "the failing step is the one after the last checkpoint:\n{e}");
    assert!(e.contains(&format!("checkpoints up to step {last} are intact")), "{e}");
    assert!(e.contains("start a new one") && !e.contains("then resume"), "{e}");
    if last > 0 {
        files_only_ok(&d, "runs/a");
    }
}

/// B6: the manifest tamper check holds for any spelling of the path, and a damaged manifest is
/// an error that leaves it as it is.
#[test]
fn b6_tamper_check_for_any_path_and_a_damaged_manifest() {
    let d = Dir::new("b6");
    d.train("runs/e", &["--set", "train.steps=10"]);
    let ckpt = d.path("runs/e/step-00000005");
    let p = ckpt.join("model.safetensors");
    let mut b = bytes(&p);
    let i = b.len() - 3;
    b[i] ^= 1;
    std::fs::write(&p, &b).unwrap();
    let state_path = ckpt.join("state.json");
    let mut state: serde_json::Value = serde_json::from_slice(&bytes(&state_path)).unwrap();
    state["files"]["model.safetensors"] = tinylm::util::sha256_hex(&b).into();
    std::fs::write(&state_path, serde_json::to_vec_pretty(&state).unwrap()).unwrap();
    let abs = ckpt.display().to_string();
    for path in
        ["runs/e/step-00000005", "./runs/e/step-00000005", "runs/../runs/e/step-00000005", abs.as_str()]
    {
        let o = d.try_train("runs/e", &["--resume", path, "--set", "optim.schedule_steps=10"]);
        assert_one_line_error(&o, "does not match the run manifest");
    }
    // A damaged manifest: refused, and kept byte for byte.
    std::fs::write(d.path("runs/e/manifest.json"), "garbage").unwrap();
    let o = d.try_train("runs/e", &["--resume", "--set", "optim.schedule_steps=10"]);
    assert_one_line_error(&o, "the run manifest cannot be read");
    assert_eq!(bytes(&d.path("runs/e/manifest.json")), b"garbage");
    let o = d.run(&["train", "--resume", "runs/e"]);
    assert_clean_error(&o, "manifest");
    let o = d.run(&["verify", "runs/e", "--files-only"]);
    assert_clean_error(&o, "the run manifest cannot be read");
}

/// B7: a checkpoint written but not recorded (a crash between the two) is recorded on resume,
/// and verify lists it as unverified until then. Only the newest can be in that state: an
/// unrecorded checkpoint among recorded ones is not a crash's, and is not resumed from.
#[test]
fn b7_an_unrecorded_checkpoint_gets_recorded() {
    let d = Dir::new("b7");
    d.train("runs/a", &["--set", "train.steps=10", "--set", "checkpoint.every=2"]);
    let mp = d.path("runs/a/manifest.json");
    let drop_step = |step: u64| {
        let mut m: serde_json::Value = serde_json::from_slice(&bytes(&mp)).unwrap();
        m["checkpoints"].as_array_mut().unwrap().retain(|c| c["step"] != step);
        std::fs::write(&mp, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    };
    let kept = bytes(&mp);
    drop_step(6);
    let o = d.run(&["verify", "runs/a", "--files-only"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("step-00000006 (on disk)"), "{}", stdout(&o));
    let o = d.run(&["train", "--resume", "runs/a/step-00000006", "--set", "train.steps=10"]);
    assert_clean_error(&o, "is not recorded in the run's manifest");
    // The newest unrecorded: the crash window. Resume from it: it is recorded, verify works.
    std::fs::write(&mp, &kept).unwrap();
    drop_step(10);
    let o = d.run(&["verify", "runs/a", "--files-only"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("unverified: step-00000010"), "{}", stdout(&o));
    d.train(
        "runs/a",
        &[
            "--resume",
            "runs/a",
            "--set",
            "train.steps=14",
            "--set",
            "optim.schedule_steps=10",
            "--set",
            "checkpoint.every=2",
        ],
    );
    let steps: Vec<u64> = recorded_steps(&manifest(&d, "runs/a")).into_iter().map(|(s, _)| s).collect();
    assert_eq!(steps, vec![2, 4, 6, 8, 10, 12, 14]);
    files_only_ok(&d, "runs/a");
    let o = d.run(&["verify", "runs/a", "--from", "6"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
}

/// B8 (and B11-B15): bad values are named errors, never an abort or a silent wrong result.
#[test]
fn b8_bad_inputs_are_named_errors() {
    let d = Dir::new("b8");
    let cfg = d.config();
    let t = |sets: &[&str]| {
        let mut a = vec!["train", "--config", cfg.as_str(), "--dry-run"];
        for s in sets {
            a.push("--set");
            a.push(s);
        }
        d.run(&a)
    };
    assert_clean_error(&t(&["data.builtin_bytes=100000000000000"]), "`data.builtin_bytes` (from --set)");
    assert_clean_error(&t(&["eval.temperature=nan"]), "`eval.temperature` (from --set)");
    assert_clean_error(&t(&["eval.temperature=-1.0"]), "`eval.temperature` (from --set)");
    assert_clean_error(&t(&["run.name=\"..\""]), "`run.name` (from --set)");
    assert_clean_error(&t(&["run.name=\".\""]), "`run.name` (from --set)");
    assert_clean_error(&t(&["train.steps=100000000"]), "`train.steps` (from --set)");
    assert_clean_error(&t(&["run.threads=100000"]), "`run.threads` (from --set)");
    assert_clean_error(&t(&["run.name=123"]), "quote it: --set 'run.name=\"123\"'");
    assert_clean_error(&t(&["model.d_model=65536", "model.n_layer=1000"]), "the machine has");
    // Every infinite float is named, all in one report.
    let o = t(&[
        "optim.weight_decay=inf",
        "optim.eps=1e300",
        "model.norm_eps=inf",
        "optim.grad_clip=inf",
        "model.rope_theta=inf",
    ]);
    for key in ["optim.weight_decay", "optim.eps", "model.norm_eps", "optim.grad_clip", "model.rope_theta"] {
        assert!(stderr(&o).contains(&format!("`{key}` (from --set)")), "{key}:\n{}", stderr(&o));
    }
    assert_clean_error(&o, "5 problems");
    // Type and value errors together (the README promises all problems at once).
    std::fs::write(d.path("two.toml"), "[optim]\nlr = -1.0\n[train]\nstepz = 3\n").unwrap();
    let o = d.run(&["train", "--config", "two.toml", "--dry-run"]);
    assert_clean_error(&o, "`optim.lr` (line 2)");
    assert!(stderr(&o).contains("`train.stepz` (line 4)"), "{}", stderr(&o));
    // sample's flags go through the same checks.
    d.train("runs/a", &["--set", "train.steps=5"]);
    for temp in ["nan", "-1", "inf"] {
        let o = d.run(&["sample", "--checkpoint", "runs/a", "--temperature", temp]);
        assert_clean_error(&o, "--temperature must be a finite number >= 0");
    }
    // A corpus with no line break near the cut still splits, at a character boundary.
    std::fs::write(d.path("one-line.txt"), "word ".repeat(40_000)).unwrap();
    let sha = tinylm::util::sha256_hex(&bytes(&d.path("one-line.txt")));
    let o = d.run(&[
        "prepare",
        "--config",
        &cfg,
        "--set",
        "data.source=\"file\"",
        "--set",
        "data.path=\"one-line.txt\"",
        "--set",
        &format!("data.sha256=\"{sha}\""),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // A val split too small names val_fraction in its hint.
    let o = d.try_train("runs/small", &["--set", "data.val_fraction=0.01", "--set", "train.context=2000"]);
    assert_clean_error(&o, "data.val_fraction");
    assert!(!d.path("runs/small").exists(), "a refused run left a directory");
}

/// B9: verify of a run stopped early re-executes only to its last checkpoint.
#[test]
fn b9_verify_reexecutes_only_what_was_recorded() {
    let d = Dir::new("b9");
    let sets = ["--set", "train.steps=800", "--set", "eval.every=0", "--set", "checkpoint.every=20"];
    let cfg = d.config();
    let mut args = vec!["train", "--config", &cfg, "--run-dir", "runs/int"];
    args.extend_from_slice(&sets);
    let mut child = d.cmd(&args).stderr(Stdio::null()).spawn().unwrap();
    assert!(wait_for_step(&mut child, &d.path("runs/int"), 40).is_some(), "the run ended early");
    signal(child.id(), "INT");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    let last = tinylm::checkpoint::list(&d.path("runs/int")).unwrap().last().unwrap().0;
    assert!(last < 800);
    let o = d.run(&["verify", "runs/int"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains(&format!("from step 0 to {last} ({last} steps")), "{}", stderr(&o));
    let o = d.run(&["verify", "runs/int", "--from", &last.to_string()]);
    assert_eq!(o.status.code(), Some(0), "verify --from the last step: {}{}", stdout(&o), stderr(&o));
}

/// B10: prepared data from another tokenizer recipe or tokenizers version is rebuilt.
#[test]
fn b10_prepared_data_records_its_recipe() {
    let d = Dir::new("b10");
    let cfg = d.config();
    let o = d.run(&["prepare", "--config", &cfg]);
    assert!(o.status.success(), "{}", stderr(&o));
    let meta_path = std::fs::read_dir(d.path("data/builtin-s0-b150000"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap()
        .join("meta.json");
    let mut meta: serde_json::Value = serde_json::from_slice(&bytes(&meta_path)).unwrap();
    assert!(meta["tokenizer_recipe"].as_str().is_some_and(|s| !s.is_empty()));
    meta["tokenizers_version"] = "0.0.1".into();
    std::fs::write(&meta_path, serde_json::to_vec_pretty(&meta).unwrap()).unwrap();
    let o = d.run(&["prepare", "--config", &cfg]);
    assert!(
        stderr(&o).contains("training BPE tokenizer"),
        "files of another version were reused:\n{}",
        stderr(&o)
    );
}

/// B11: two trainers on one run directory: the second is refused at once, the first finishes.
/// The first is stopped (SIGSTOP) while the others try, so it holds the lock however fast the
/// machine is, and a second trainer that waited for the lock instead of refusing would never
/// return: `run_bounded` fails it.
#[test]
fn b11_two_trainers_on_one_run_directory() {
    let d = Dir::new("b11");
    let sets = ["--set", "train.steps=400", "--set", "eval.every=0", "--set", "checkpoint.every=50"];
    d.train("runs/straight", &sets);
    let cfg = d.config();
    let mut args = vec!["train", "--config", &cfg, "--run-dir", "runs/a"];
    args.extend_from_slice(&sets);
    let mut first = d.cmd(&args).stderr(Stdio::piped()).spawn().unwrap();
    assert!(wait_for_step(&mut first, &d.path("runs/a"), 50).is_some(), "the first trainer ended early");
    signal(first.id(), "STOP");
    let second = run_bounded(d.cmd(&["train", "--resume", "runs/a"]), Duration::from_secs(120));
    let again = run_bounded(d.cmd(&args), Duration::from_secs(120));
    signal(first.id(), "CONT");
    assert_clean_error(&second, "run directory runs/a is in use by another tinylm process");
    assert_clean_error(&again, "in use by another tinylm process");
    let out = first.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(weights(&d.path("runs/a"), 400), weights(&d.path("runs/straight"), 400));
    files_only_ok(&d, "runs/a");
}

/// Twenty kill -9 at random moments of a run checkpointing every step with keep_last = 2, each
/// followed by the command it printed at start: the same final weights as a straight run, and
/// the files check after every kill. The moments are progress, not time: each kill waits until
/// the run has passed a pseudo-random step beyond the last one seen, so twenty kills fit on a
/// machine of any speed and under any load.
#[test]
fn kill_9_twenty_times_then_resume() {
    let d = Dir::new("kill20");
    let sets = [
        "--set",
        "train.steps=400",
        "--set",
        "eval.every=0",
        "--set",
        "checkpoint.every=1",
        "--set",
        "checkpoint.keep_last=2",
    ];
    d.train("runs/straight", &sets);
    let cfg = d.config();
    let mut first = vec!["train", "--config", cfg.as_str(), "--run-dir", "runs/k"];
    first.extend_from_slice(&sets);
    // A fixed xorshift sequence of targets: 1 to 12 steps past the newest checkpoint seen, so
    // twenty kills end by step 260 of 400 whatever the speed.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut printed: Option<String> = None;
    let mut seen = 0u64;
    for kill in 0..20 {
        let args: Vec<String> = match &printed {
            None => first.iter().map(|s| s.to_string()).collect(),
            Some(line) => line.split_whitespace().skip(1).map(String::from).collect(),
        };
        let mut child = d
            .cmd(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut err, &mut s);
            s
        });
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let target = seen + 1 + x % 12;
        let reached = wait_for_step(&mut child, &d.path("runs/k"), target);
        // Then somewhere in the next step or checkpoint write.
        std::thread::sleep(Duration::from_micros((x >> 8) % 3000));
        let _ = child.kill();
        let status = child.wait().unwrap();
        let e = reader.join().unwrap();
        assert!(reached.is_some(), "kill {kill}: the run ended before step {target} ({status}):\n{e}");
        if printed.is_none() {
            if let Some(l) = e.lines().find_map(|l| l.split("continue with: ").nth(1)) {
                printed = Some(l.to_string());
            }
        }
        assert!(!status.success(), "kill {kill}: the run finished before step 400 was reached");
        seen = tinylm::checkpoint::list(&d.path("runs/k")).unwrap().last().map_or(0, |c| c.0).max(target);
        if d.path("runs/k/manifest.json").exists() {
            files_only_ok(&d, "runs/k");
        }
    }
    assert!(seen < 400, "twenty kills must land before the end (last target {seen})");
    let line = printed.expect("the start line names the resume command");
    assert_eq!(line, "tinylm train --resume runs/k");
    let o = run_printed(&d, &line);
    let done = o.status.success() || stderr(&o).contains("nothing to do");
    assert!(done, "{}", stderr(&o));
    assert_eq!(weights(&d.path("runs/k"), 400), weights(&d.path("runs/straight"), 400), "after 20 kills");
    files_only_ok(&d, "runs/k");
}

/// A disk that fills during a checkpoint write: a named error; the previous checkpoint and the
/// manifest stay intact and the run resumes to the same weights once there is space.
#[test]
fn a_full_disk_during_a_checkpoint() {
    // A tmpfs needs a mount namespace: root has one, others need unprivileged user namespaces.
    let probe = Command::new("unshare").args(["-rm", "true"]).status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("skipped: `unshare -rm` is not available here, so no small tmpfs can be mounted");
        return;
    }
    let d = Dir::new("diskfull");
    let sets = "--set train.steps=20 --set checkpoint.every=5 --set eval.every=0";
    d.train("runs/straight", &sets.split(' ').collect::<Vec<_>>());
    // Prepare the data outside the small disk.
    let o = d.run(&["prepare", "--config", &d.config()]);
    assert!(o.status.success());
    let bin = bin().display().to_string();
    let cfg = d.config();
    // One checkpoint of this model is ~0.5 MB: 1.3 MB holds two, not three.
    let script = format!(
        "set -u; mkdir -p small; mount -t tmpfs -o size=1300k tmpfs small || exit 99
         {bin} train --config {cfg} --run-dir small/run {sets}; echo \"exit=$?\"
         ls small/run; {bin} verify small/run --files-only; echo \"verify=$?\"
         mount -o remount,size=20m small
         {bin} train --resume small/run; echo \"resume=$?\"
         {bin} verify small/run --files-only; echo \"verify2=$?\"
         sha256sum small/run/step-00000020/model.safetensors"
    );
    let o = Command::new("unshare").args(["-rm", "sh", "-c", &script]).current_dir(&d.0).output().unwrap();
    let (out, err) = (stdout(&o), stderr(&o));
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.contains("exit=2"), "want exit 2 on a full disk:\n{out}\n{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("small/run/"), "the error names the file:\n{err}");
    assert!(out.contains("step-00000005") && out.contains("step-00000010"), "{out}");
    assert!(out.contains("verify=0"), "files after the failure:\n{out}\n{err}");
    assert!(out.contains("resume=0") && out.contains("verify2=0"), "{out}\n{err}");
    let want = tinylm::util::sha256_hex(&weights(&d.path("runs/straight"), 20));
    assert!(out.contains(&want), "resumed weights differ:\n{out}");
}

/// Mutated configs and flags: no panic, no abort; every failure is exit 2 with an `error:` line
/// that names the key.
#[test]
fn fuzzed_configs_and_flags_fail_cleanly() {
    let d = Dir::new("fuzz");
    let base: Vec<(String, String, String)> = TINY
        .lines()
        .scan(String::new(), |section, l| {
            let l = l.trim();
            if l.starts_with('[') {
                *section = l.trim_matches(|c| c == '[' || c == ']').to_string();
                return Some(None);
            }
            Some(l.split_once(" = ").map(|(k, v)| (section.clone(), k.to_string(), v.to_string())))
        })
        .flatten()
        .collect();
    let bad_values = [
        "nan",
        "inf",
        "-inf",
        "-1",
        "0",
        "-0.0",
        "1e300",
        "99999999999999999",
        "\"\"",
        "\"日本語\"",
        "true",
        "[1, 2]",
        "{ a = 1 }",
        "\"..\"",
        "\"a/b\"",
        "1.5",
        "\"\\u0007\"",
        "18446744073709551615",
        "1e-300",
    ];
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n as u64) as usize
    };
    let mut failures = 0;
    for case in 0..140 {
        let mut lines: Vec<(String, String, String)> = base.clone();
        let mut touched: Vec<String> = Vec::new();
        for _ in 0..1 + next(3) {
            let i = next(lines.len());
            let key = format!("{}.{}", lines[i].0, lines[i].1);
            match next(4) {
                0 => {
                    lines.remove(i); // dropped keys fall back to defaults
                }
                1 => {
                    lines[i].1 = format!("{}x", lines[i].1); // unknown key
                    touched.push(format!("{key}x"));
                }
                _ => {
                    lines[i].2 = bad_values[next(bad_values.len())].to_string();
                    touched.push(key);
                }
            }
        }
        let mut sets: Vec<String> = Vec::new();
        let use_set = case % 3 == 0;
        if use_set {
            // The same mutation as a --set flag on the untouched file.
            if let Some(k) = touched.first().cloned() {
                let (s, name) = k.split_once('.').unwrap();
                if let Some(l) = lines.iter().find(|l| l.0 == s && (l.1 == name)) {
                    sets.push(format!("{k}={}", l.2));
                }
            }
        }
        let mut src = String::new();
        let mut section = String::new();
        for (s, k, v) in &lines {
            if *s != section {
                src += &format!("[{s}]\n");
                section = s.clone();
            }
            src += &format!("{k} = {v}\n");
        }
        let file = format!("fuzz-{case}.toml");
        std::fs::write(d.path(&file), if use_set { TINY.to_string() } else { src.clone() }).unwrap();
        let mut args = vec!["train".to_string(), "--config".into(), file.clone(), "--dry-run".into()];
        for s in &sets {
            args.push("--set".into());
            args.push(s.clone());
        }
        let o = d.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let e = stderr(&o);
        assert!(
            !e.contains("panicked") && o.status.code().is_some(),
            "case {case} crashed:\n{src}\n{sets:?}\n{e}"
        );
        match o.status.code() {
            Some(0) => assert!(stdout(&o).starts_with("config ok"), "case {case}"),
            Some(2) => {
                failures += 1;
                assert!(e.starts_with("error: "), "case {case}: {e}");
                // The touched key, or (a bound that depends on another key, such as
                // optim.min_lr <= optim.lr) a key of the same section.
                let named = touched.iter().any(|k| {
                    let section = k.split('.').next().unwrap();
                    e.contains(&format!("`{k}`")) || e.contains(&format!("`{section}."))
                }) || e.contains("TOML syntax");
                assert!(named, "case {case}: the error names none of {touched:?}:\n{src}\n{sets:?}\n{e}");
            }
            other => panic!("case {case}: exit {other:?}\n{e}"),
        }
    }
    assert!(failures >= 100, "only {failures} of 140 mutations were rejected");
    assert!(!d.path("checkpoints").exists(), "a dry run wrote a run directory");
}

/// A binary built without MPI, started as one of several ranks (mpirun sets these variables),
/// refuses instead of training W independent copies into the same directory.
#[cfg(not(feature = "mpi"))]
#[test]
fn a_build_without_mpi_refuses_to_run_as_one_of_several_ranks() {
    let d = Dir::new("no-mpi");
    let cfg = d.config();
    let o = d
        .cmd(&["train", "--config", &cfg, "--run-dir", "runs/a"])
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .env("OMPI_COMM_WORLD_RANK", "1")
        .output()
        .unwrap();
    assert_clean_error(&o, "built without MPI, but runs as rank 1 of 2");
    assert!(!d.path("runs/a").exists());
    // A world of one (mpirun -np 1) is a plain run.
    let o = d
        .cmd(&["train", "--config", &cfg, "--run-dir", "runs/b", "--dry-run"])
        .env("OMPI_COMM_WORLD_SIZE", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}
