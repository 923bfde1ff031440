//! Data-parallel training under MPI, on one machine (`mpirun --allow-run-as-root
//! --oversubscribe`, as rsmpi's own CI runs): any number of ranks gives the single-process
//! bits, a resume may change the number, a killed rank ends the job and nothing is lost, and a
//! rank that differs is refused. MPI initialises once per process, so each test launches the
//! binary. Built and run by `.ci/run`: `cargo test --release --locked --features mpi --test mpi`.
#![cfg(feature = "mpi")]

mod util;

use std::process::{Command, Output};
use std::time::Duration;
use util::*;

/// The tiny config with 4 micro-batches a step, so up to 4 ranks share each step.
fn mpi_dir(name: &str) -> Dir {
    let d = Dir::new(name);
    let cfg =
        TINY.replace("[train]\n", "[train]\ngrad_accum = 4\n").replace("steps = 20", "steps = 12") + "\n"; // checkpoint.every = 5 and eval.every = 10 come from TINY
    std::fs::write(d.path("tiny.toml"), cfg.replace("[optim]\n", "[optim]\nschedule_steps = 12\n")).unwrap();
    d
}

fn mpirun(d: &Dir, np: usize, args: &[&str]) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--allow-run-as-root", "--oversubscribe", "-np", &np.to_string()])
        .arg(bin())
        .args(args)
        .current_dir(&d.0);
    c
}

fn train_args<'a>(d: &'a Dir, run: &'a str, extra: &[&'a str]) -> Vec<String> {
    let mut v: Vec<String> =
        ["train", "--config", &d.config(), "--run-dir", run].iter().map(|s| s.to_string()).collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn run_mpi(d: &Dir, np: usize, run: &str, extra: &[&str]) -> Output {
    let args = train_args(d, run, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_bounded(mpirun(d, np, &args), Duration::from_secs(600))
}

fn checkpoint_files(run: &std::path::Path, step: u64) -> Vec<Vec<u8>> {
    ["model.safetensors", "optimizer.safetensors"]
        .iter()
        .map(|f| bytes(&run.join(format!("step-{step:08}")).join(f)))
        .collect()
}

#[test]
fn one_to_four_ranks_give_the_single_process_bits() {
    let d = mpi_dir("mpi-w");
    d.train("runs/solo", &[]);
    let want = checkpoint_files(&d.path("runs/solo"), 12);
    for w in 1..=4 {
        let run = format!("runs/w{w}");
        let o = run_mpi(&d, w, &run, &["--set", "run.threads=1"]);
        assert!(o.status.success(), "W={w}:\n{}", stderr(&o));
        assert_eq!(checkpoint_files(&d.path(&run), 12), want, "W={w}: weights or optimizer state differ");
        assert_eq!(
            checkpoint_files(&d.path(&run), 5),
            checkpoint_files(&d.path("runs/solo"), 5),
            "W={w} step 5"
        );
        let m = json(&d.path(&format!("{run}/manifest.json")));
        let ranks = m["sessions"][0]["ranks"].as_array().map_or(0, |r| r.len());
        assert_eq!(ranks, if w > 1 { w } else { 0 }, "W={w}: the session records every rank");
        // Only rank 0 printed progress.
        assert_eq!(stderr(&o).matches("run directory").count(), 1, "{}", stderr(&o));
    }
    // The metrics (loss of every step, validation) are the single process's too.
    let metrics = |run: &str| -> Vec<String> {
        std::fs::read_to_string(d.path(&format!("{run}/metrics.jsonl")))
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                for k in ["tokens_per_sec", "threads", "combine_secs"] {
                    v.as_object_mut().unwrap().remove(k);
                }
                v.to_string()
            })
            .collect()
    };
    assert_eq!(metrics("runs/w3"), metrics("runs/solo"));
}

#[test]
fn a_run_on_two_ranks_resumes_on_three_to_the_same_bits() {
    let d = mpi_dir("mpi-resume");
    d.train("runs/solo", &[]);
    let o = run_mpi(&d, 2, "runs/a", &["--set", "train.steps=5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run_mpi(&d, 3, "runs/a", &["--resume", "--set", "train.steps=12"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(checkpoint_files(&d.path("runs/a"), 12), checkpoint_files(&d.path("runs/solo"), 12));
    // And one process verifies the run the ranks trained.
    let o = d.run(&["verify", "runs/a"]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
}

/// The pid of rank `rank` among the children of `mpirun` (its environment names the rank).
fn rank_pid(mpirun_pid: u32, rank: usize) -> Option<u32> {
    let children = std::fs::read_to_string(format!("/proc/{mpirun_pid}/task/{mpirun_pid}/children")).ok()?;
    children.split_whitespace().filter_map(|p| p.parse::<u32>().ok()).find(|p| {
        std::fs::read(format!("/proc/{p}/environ"))
            .map(|e| e.split(|&b| b == 0).any(|kv| kv == format!("OMPI_COMM_WORLD_RANK={rank}").as_bytes()))
            .unwrap_or(false)
    })
}

#[test]
fn a_killed_rank_ends_the_job_and_the_resume_gives_the_same_bits() {
    let d = mpi_dir("mpi-kill");
    // Far more steps than the job lives: the kill always lands mid-run, however fast the
    // machine. The resume then stops a few steps past the last checkpoint, where the
    // uninterrupted run is compared.
    let long =
        ["--set", "train.steps=20000", "--set", "optim.schedule_steps=200", "--set", "checkpoint.every=2"];
    let args = train_args(&d, "runs/a", &long);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = mpirun(&d, 2, &args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_for_step(&mut child, &d.path("runs/a"), 4).is_some(), "the job ended before step 4");
    let victim = rank_pid(child.id(), 1).expect("rank 1's process");
    signal(victim, "KILL");
    // Every rank ends: mpirun returns (a hang fails here, not forever).
    let t = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(t.elapsed() < Duration::from_secs(60), "the job did not end after rank 1 was killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!child.wait().unwrap().success());
    // The last complete checkpoint resumes (with another rank count) to the uninterrupted bits.
    let newest = tinylm::checkpoint::list(&d.path("runs/a")).unwrap().last().unwrap().0;
    resumes_to_the_uninterrupted_bits(&d, &long, newest, 4);
}

/// Resume `runs/a` (stopped at checkpoint `newest`) on `np` ranks to a few steps past it, and
/// compare with one process that trained the same config to there without stopping.
fn resumes_to_the_uninterrupted_bits(d: &Dir, long: &[&str], newest: u64, np: usize) {
    let end = newest + 7;
    let steps = format!("train.steps={end}");
    let mut to_end = long.to_vec();
    to_end.extend(["--set", &steps]);
    d.train("runs/solo", &to_end);
    to_end.push("--resume");
    let o = run_mpi(d, np, "runs/a", &to_end);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(checkpoint_files(&d.path("runs/a"), end), checkpoint_files(&d.path("runs/solo"), end));
}

#[test]
fn a_rank_with_another_config_or_too_many_ranks_is_refused() {
    let d = mpi_dir("mpi-refuse");
    let other = std::fs::read_to_string(d.path("tiny.toml")).unwrap().replace("seed = 7", "seed = 8");
    std::fs::write(d.path("other.toml"), other).unwrap();
    let (a, b) = (d.config(), d.path("other.toml").display().to_string());
    // MPMD: rank 0 and rank 1 run different configs.
    let mut c = Command::new("mpirun");
    c.args(["--allow-run-as-root", "--oversubscribe", "-np", "1"])
        .arg(bin())
        .args(["train", "--config", &a, "--run-dir", "runs/a", ":", "-np", "1"])
        .arg(bin())
        .args(["train", "--config", &b, "--run-dir", "runs/a"])
        .current_dir(&d.0);
    let o = run_bounded(c, Duration::from_secs(300));
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("rank 1 differs from rank 0: its config has run.seed = 8"), "{e}");
    assert!(!d.path("runs/a").exists(), "a refused job must not create the run directory");

    let o = run_mpi(&d, 5, "runs/b", &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("5 ranks but train.grad_accum = 4"), "{}", stderr(&o));
    assert!(!d.path("runs/b").exists());
}

#[test]
fn sigterm_to_mpirun_checkpoints_every_rank_at_one_step_and_the_printed_resume_gives_the_same_bits() {
    let d = mpi_dir("mpi-term");
    // As above: the job would run far longer than the test waits, so the signal lands mid-run.
    let long =
        ["--set", "train.steps=20000", "--set", "optim.schedule_steps=400", "--set", "checkpoint.every=50"];
    let args = train_args(&d, "runs/a", &long);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = mpirun(&d, 2, &args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_for_step(&mut child, &d.path("runs/a"), 50).is_some(), "the job ended before step 50");
    signal(child.id(), "TERM");
    let out = child.wait_with_output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(e.contains("resume with: mpirun -np 2 tinylm train --resume runs/a"), "{e}");
    assert!(!e.contains("done: "), "the job was not interrupted: {e}");
    let newest = tinylm::checkpoint::list(&d.path("runs/a")).unwrap().last().unwrap().0;
    assert!(newest >= 50, "{e}");
    resumes_to_the_uninterrupted_bits(&d, &long, newest, 3);
}

#[test]
fn verify_shares_the_segments_among_the_ranks_and_a_tampered_checkpoint_fails_it() {
    let d = mpi_dir("mpi-verify");
    d.train("runs/a", &[]);
    let verify = |np: usize| {
        let mut c = mpirun(&d, np, &["verify", "runs/a"]);
        c.current_dir(&d.0);
        run_bounded(c, Duration::from_secs(600))
    };
    let o = verify(2);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    // Checkpoints at 5, 10, 12: three segments, on ranks 0, 1, 0.
    for s in [
        "segment 0: steps 0 -> 5 (rank 0): ok",
        "segment 1: steps 5 -> 10 (rank 1): ok",
        "segment 2: steps 10 -> 12 (rank 0): ok",
    ] {
        assert!(out.contains(s), "{s:?} missing:\n{out}");
    }
    assert!(out.contains("verified: 3 segments on 2 ranks"), "{out}");
    // A flipped byte in the checkpoint that ends segment 1 and starts segment 2 fails both.
    let p = d.path("runs/a/step-00000010/model.safetensors");
    let mut b = bytes(&p);
    let i = b.len() - 3;
    b[i] ^= 1;
    std::fs::write(&p, &b).unwrap();
    let o = verify(2);
    let out = stdout(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("segment 1: steps 5 -> 10 (rank 1): MISMATCH"), "{out}");
    assert!(out.contains("segment 2: steps 10 -> 12 (rank 0): MISMATCH"), "{out}");
}
