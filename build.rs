//! Records what the binary was built from, for the run manifest: the git commit (with a dirty
//! flag) and the rustc version. Missing git (a tarball build) records "unknown".
use std::process::Command;

fn run(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let commit = run("git", &["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = run("git", &["status", "--porcelain", "--untracked-files=no"])
        .map(|s| !s.is_empty())
        .unwrap_or(false);
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = run(&rustc, &["--version"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=TINYLM_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=TINYLM_GIT_DIRTY={dirty}");
    println!("cargo:rustc-env=TINYLM_RUSTC_VERSION={rustc_version}");
    for p in ["src", "Cargo.toml", "Cargo.lock", "build.rs"] {
        println!("cargo:rerun-if-changed={p}");
    }
    // The commit and dirty flag change with HEAD, the index and the refs; in a worktree these
    // live under the git dir `git rev-parse` names (`.git` is then a file). A path that does not
    // exist would make cargo rerun this script on every build, so only existing ones are named.
    let git_dir = run("git", &["rev-parse", "--git-dir"]);
    let common = run("git", &["rev-parse", "--git-common-dir"]);
    for (dir, name) in [(&git_dir, "HEAD"), (&git_dir, "index"), (&common, "refs"), (&common, "packed-refs")]
    {
        if let Some(d) = dir {
            let p = std::path::Path::new(d).join(name);
            if p.exists() {
                println!("cargo:rerun-if-changed={}", p.display());
            }
        }
    }
}
