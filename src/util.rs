//! Hashing and atomic file writes: the two primitives behind "everything is recorded" and
//! "nothing is lost".

use crate::error::{IoContext, Result};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// SHA-256 of a file, streamed; the same string `sha256sum` prints.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).at(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).at(path)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A sibling temp path unique to this process, so concurrent writers never share one.
pub fn temp_sibling(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".tmp-{}-{name}", std::process::id()))
}

/// Write a file atomically: temp file in the same directory, fsync, rename over the target.
/// A crash at any moment leaves either the old file or the new one, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            fs::create_dir_all(dir).at(dir)?;
        }
    }
    let tmp = temp_sibling(path);
    {
        let mut f = fs::File::create(&tmp).at(&tmp)?;
        f.write_all(bytes).at(&tmp)?;
        f.sync_all().at(&tmp)?;
    }
    fs::rename(&tmp, path).at(path)?;
    sync_dir(path.parent());
    Ok(())
}

/// fsync a directory so a rename inside it is durable. Best effort: some filesystems refuse.
pub fn sync_dir(dir: Option<&Path>) {
    if let Some(d) = dir {
        let d = if d.as_os_str().is_empty() { Path::new(".") } else { d };
        if let Ok(f) = fs::File::open(d) {
            let _ = f.sync_all();
        }
    }
}

/// The first entry under `dir` (not following symlinks) that is neither a regular file, a
/// directory nor a symlink: a FIFO, socket or device, which would block or misbehave when
/// read. A folder from elsewhere (a release, a run, a model) is checked with this before any
/// file of it is opened.
pub fn special_file(dir: &Path) -> Option<PathBuf> {
    walkdir::WalkDir::new(dir).follow_links(false).into_iter().flatten().find_map(|e| {
        let t = e.file_type();
        (!t.is_file() && !t.is_dir() && !t.is_symlink()).then(|| e.path().to_path_buf())
    })
}

/// As `special_file`, as an error naming the path.
pub fn refuse_special_files(dir: &Path) -> crate::error::Result<()> {
    match special_file(dir) {
        None => Ok(()),
        Some(p) => Err(crate::error::Error::hint(
            format!("{} is not a regular file (a FIFO, socket or device)", p.display()),
            "a model or run folder holds only files and directories; remove it",
        )),
    }
}

/// The version of a package in Cargo.lock.
pub fn lock_version(lock: &str, name: &str) -> Option<String> {
    let needle = format!("name = \"{name}\"\nversion = \"");
    let start = lock.find(&needle)? + needle.len();
    let end = lock[start..].find('"')? + start;
    Some(lock[start..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_known_vector() {
        // NIST FIPS 180-2 example: SHA-256("abc").
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = std::env::temp_dir().join(format!("tinylm-util-{}", std::process::id()));
        let p = dir.join("a.txt");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "{names:?}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
