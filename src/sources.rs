//! The `files` source: a list of files, directories and globs, read as documents.
//!
//! Listing (`list`): entries in the order given; within an entry, files sorted byte-wise by
//! their path relative to the entry (never the file system's listing order or the locale).
//! Directories are walked recursively; names starting with `.` below an entry (`.git`,
//! `.gitattributes`, `.cache`) are skipped, as ripgrep and git do. A file named directly is
//! always taken. Each file's listing path is the entry as written joined with that relative
//! path, so `sha256sum -c` of the listing works from the directory the paths are relative to.
//!
//! Formats, by extension: `.txt` and `.md` (one document per file), `.jsonl` (one document
//! per line, the string at `data.text_field`), `.parquet` (one document per row, the string
//! column `data.text_field`); each may end in `.gz` or `.zst` as well. Empty documents and
//! null Parquet values are skipped; blank JSONL lines are skipped.

use crate::error::{Error, IoContext, Result};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

pub const KNOWN_EXTENSIONS: &str = ".txt, .md, .jsonl, .parquet, each optionally followed by .gz or .zst";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Jsonl,
    Parquet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// One file of the corpus.
#[derive(Debug, Clone)]
pub struct Listed {
    /// The listing path: the entry as written, then the path below it, `/`-separated.
    pub path: String,
    /// Where to read it.
    pub file: PathBuf,
    pub kind: Kind,
    pub compression: Compression,
}

/// Kind and compression from a file name, or None for an unknown extension.
pub fn format_of(name: &str) -> Option<(Kind, Compression)> {
    let lower = name.to_ascii_lowercase();
    let (stem, comp) = if let Some(s) = lower.strip_suffix(".gz") {
        (s, Compression::Gzip)
    } else if let Some(s) = lower.strip_suffix(".zst") {
        (s, Compression::Zstd)
    } else {
        (lower.as_str(), Compression::None)
    };
    let kind = if stem.ends_with(".txt") || stem.ends_with(".md") {
        Kind::Text
    } else if stem.ends_with(".jsonl") {
        Kind::Jsonl
    } else if stem.ends_with(".parquet") {
        Kind::Parquet
    } else {
        return None;
    };
    Some((kind, comp))
}

fn is_glob(entry: &str) -> bool {
    entry.contains(['*', '?', '[', '{'])
}

fn utf8_rel(rel: &Path, shown: &Path) -> Result<String> {
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str().ok_or_else(|| {
                Error::hint(
                    format!("{}: the file name is not UTF-8", shown.display()),
                    "rename the file: listing paths must be text so that data.sha256 can pin them",
                )
            })?),
            _ => continue,
        }
    }
    Ok(parts.join("/"))
}

/// A listing path must be one line of `sha256sum` output as is: no line breaks, and no
/// backslash (which sha256sum escapes), so two file sets can never give the same listing.
fn check_listing_path(p: &str) -> Result<()> {
    if p.contains(['\n', '\r', '\\']) {
        return Err(Error::hint(
            format!(
                "{p:?}: a file name with a line break or a backslash cannot be pinned in a sha256sum listing"
            ),
            "rename the file, or leave it out of data.paths",
        ));
    }
    Ok(())
}

fn hidden(e: &walkdir::DirEntry) -> bool {
    e.depth() > 0 && e.file_name().as_encoded_bytes().starts_with(b".")
}

/// Every file under `root` (recursively, hidden names skipped), as (relative path, full path).
/// With `inside`, directories that lead outside it (through a symlink) are not entered.
fn walk(root: &Path, shown: &str, inside: Option<&Path>) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let keep = |e: &walkdir::DirEntry| {
        !hidden(e) && inside.is_none_or(|r| e.path().canonicalize().is_ok_and(|c| c.starts_with(r)))
    };
    let it = walkdir::WalkDir::new(root).follow_links(true).into_iter().filter_entry(keep);
    for e in it {
        let e = e.map_err(|err| {
            let p = err.path().map(|p| p.display().to_string()).unwrap_or_else(|| shown.to_string());
            Error::hint(
                format!("{p}: cannot read ({err})"),
                "check the file's permissions, or leave it out of data.paths",
            )
        })?;
        if e.file_type().is_file() {
            let rel = e.path().strip_prefix(root).unwrap_or(e.path());
            out.push((utf8_rel(rel, e.path())?, e.path().to_path_buf()));
        }
    }
    out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(out)
}

fn join_listing(entry: &str, rel: &str) -> String {
    let e = entry.trim_end_matches('/');
    if e.is_empty() {
        format!("/{rel}")
    } else if rel.is_empty() {
        e.to_string()
    } else {
        format!("{e}/{rel}")
    }
}

/// The files `entries` name, read against `base` (the working directory, or a release's
/// folder when one is replayed). With `confine`, every file (after symlinks) must lie inside
/// `base`.
pub fn list(entries: &[String], base: &Path, confine: bool) -> Result<Vec<Listed>> {
    let mut out: Vec<Listed> = Vec::new();
    let mut seen = std::collections::HashMap::<PathBuf, String>::new();
    let root = if confine { Some(base.canonicalize().at(base)?) } else { None };
    for entry in entries {
        let mut files: Vec<(String, PathBuf)> = Vec::new();
        // A path that exists is taken literally, even with pattern characters in its name.
        if is_glob(entry) && !base.join(entry).exists() {
            let glob = globset::GlobBuilder::new(entry).literal_separator(true).build().map_err(|e| {
                Error::hint(
                    format!("data.paths: {entry:?} is not a valid glob: {e}"),
                    "fix the pattern in data.paths",
                )
            })?;
            let m = glob.compile_matcher();
            // Walk from the part before the first pattern character.
            let lit: Vec<&str> = entry.split('/').take_while(|c| !is_glob(c)).collect();
            let prefix = lit.join("/");
            let dir = base.join(if prefix.is_empty() { "." } else { &prefix });
            if dir.is_dir() {
                for (rel, full) in walk(&dir, &prefix, root.as_deref())? {
                    let listing = if prefix.is_empty() { rel.clone() } else { join_listing(&prefix, &rel) };
                    if m.is_match(&listing) {
                        files.push((listing, full));
                    }
                }
            }
        } else {
            let full = base.join(entry);
            match fs::metadata(&full) {
                Ok(md) if md.is_dir() => {
                    for (rel, f) in walk(&full, entry, root.as_deref())? {
                        files.push((join_listing(entry, &rel), f));
                    }
                }
                Ok(_) => files.push((entry.to_string(), full)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Error::hint(
                        format!("data.paths: {entry:?} ({}): {e}", full.display()),
                        "check the path and its permissions",
                    ))
                }
            }
        }
        if files.is_empty() {
            return Err(Error::hint(
                format!("data.paths: {entry:?} matches no file (read against {})", base.display()),
                "fix the path or pattern; paths are relative to the directory tinylm runs in",
            ));
        }
        for (path, file) in files {
            check_listing_path(&path)?;
            // One canonical path: the confinement check and the duplicate key.
            let canon = file.canonicalize().at(&file)?;
            if let Some(r) = &root {
                if !canon.starts_with(r) {
                    return Err(Error::hint(
                        format!("{path} leads outside {} (to {})", base.display(), canon.display()),
                        "a replayed corpus must lie inside the folder it is read from; this one is refused",
                    ));
                }
            }
            let key = canon;
            if let Some(first) = seen.get(&key) {
                return Err(Error::hint(
                    format!("data.paths names {path} twice (also as {first})"),
                    "a file may appear once in the corpus: remove the overlap between the entries",
                ));
            }
            let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let (kind, compression) = format_of(name).ok_or_else(|| {
                Error::hint(
                    format!("{path}: unknown file type (known: {KNOWN_EXTENSIONS})"),
                    "rename or convert the file, or leave it out of data.paths (a narrower glob, e.g. \"dir/**/*.jsonl\")",
                )
            })?;
            seen.insert(key, path.clone());
            out.push(Listed { path, file, kind, compression });
        }
    }
    Ok(out)
}

/// The `sha256sum`-format listing of the files with their hashes: what `data.sha256` pins.
pub fn listing(files: &[(String, String)]) -> String {
    files.iter().map(|(path, sha)| format!("{sha}  {path}\n")).collect()
}

/// What reading a file found.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// Size as stored (compressed), and the SHA-256 of those bytes.
    pub bytes: u64,
    pub sha256: String,
    pub documents: u64,
    /// UTF-8 bytes of all its documents.
    pub text_bytes: u64,
}

/// Reads through to a hash and a byte count.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
    n: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.hash.update(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }
}

fn comp_name(c: Compression) -> &'static str {
    match c {
        Compression::None => "file",
        Compression::Gzip => "gzip stream",
        Compression::Zstd => "zstd stream",
    }
}

/// A read error while decompressing or reading, naming the file.
fn read_error(l: &Listed, e: std::io::Error) -> Error {
    match l.compression {
        Compression::None => Error::Io { path: PathBuf::from(&l.path), source: e },
        c => Error::hint(
            format!("{}: the {} is truncated or damaged ({e})", l.path, comp_name(c)),
            "re-download or recompress the file",
        ),
    }
}

fn invalid_utf8(l: &Listed, at: &str, e: std::str::Utf8Error) -> Error {
    Error::hint(
        format!("{}: invalid UTF-8 {at}byte offset {}", l.path, e.valid_up_to()),
        "convert the file to UTF-8 (e.g. `iconv -t UTF-8`), or leave it out of data.paths",
    )
}

/// Read every document of `l` in order, calling `each(index, text)`, and hash the stored bytes.
pub fn read_docs(l: &Listed, field: &str, each: &mut dyn FnMut(u64, &str) -> Result<()>) -> Result<Scan> {
    let f = fs::File::open(&l.file).map_err(|e| {
        Error::hint(format!("{}: cannot open: {e}", l.path), "check the file and its permissions")
    })?;
    let mut raw = Hashing { inner: BufReader::with_capacity(1 << 20, f), hash: Sha256::new(), n: 0 };
    let (mut docs, mut text_bytes) = (0u64, 0u64);
    {
        let mut emit = |text: &str| -> Result<()> {
            if !text.is_empty() {
                each(docs, text)?;
                docs += 1;
                text_bytes += text.len() as u64;
            }
            Ok(())
        };
        let mut dec: Box<dyn Read + '_> = match l.compression {
            Compression::None => Box::new(&mut raw),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&mut raw)),
            Compression::Zstd => {
                Box::new(zstd::stream::read::Decoder::new(&mut raw).map_err(|e| read_error(l, e))?)
            }
        };
        match l.kind {
            Kind::Text => {
                let mut buf = Vec::new();
                dec.read_to_end(&mut buf).map_err(|e| read_error(l, e))?;
                let text = std::str::from_utf8(&buf).map_err(|e| invalid_utf8(l, "at ", e))?;
                emit(text)?;
            }
            Kind::Jsonl => {
                let mut r = BufReader::with_capacity(1 << 20, dec);
                let mut line = Vec::new();
                let mut no = 0u64;
                loop {
                    line.clear();
                    if r.read_until(b'\n', &mut line).map_err(|e| read_error(l, e))? == 0 {
                        break;
                    }
                    no += 1;
                    let s = std::str::from_utf8(&line)
                        .map_err(|e| invalid_utf8(l, &format!("on line {no} at "), e))?;
                    if s.trim().is_empty() {
                        continue;
                    }
                    let v: serde_json::Value = serde_json::from_str(s).map_err(|e| {
                        Error::hint(
                            format!("{}: line {no} is not JSON ({e})", l.path),
                            "each line of a .jsonl file must be one JSON object",
                        )
                    })?;
                    match v.get(field) {
                        Some(serde_json::Value::String(t)) => emit(t)?,
                        Some(other) => {
                            let kind = match other {
                                serde_json::Value::Null => "null",
                                serde_json::Value::Bool(_) => "a boolean",
                                serde_json::Value::Number(_) => "a number",
                                serde_json::Value::Array(_) => "an array",
                                _ => "an object",
                            };
                            return Err(Error::hint(
                                format!("{}: line {no}: \"{field}\" is {kind}, not a string", l.path),
                                "data.text_field must name a string field of every line",
                            ));
                        }
                        None => {
                            return Err(Error::hint(
                                format!("{}: line {no} has no \"{field}\" field", l.path),
                                "set data.text_field to the field that holds the text",
                            ))
                        }
                    }
                }
            }
            Kind::Parquet => {
                let bytes = match l.compression {
                    Compression::None => None,
                    _ => {
                        let mut v = Vec::new();
                        dec.read_to_end(&mut v).map_err(|e| read_error(l, e))?;
                        Some(bytes::Bytes::from(v))
                    }
                };
                drop(dec);
                // The parquet crate can panic on a malformed file: that is a bad file, named.
                let run = std::panic::AssertUnwindSafe(|| match bytes {
                    Some(b) => parquet_docs(l, field, b, &mut emit),
                    None => {
                        let f = fs::File::open(&l.file).at(&l.file)?;
                        parquet_docs(l, field, f, &mut emit)
                    }
                });
                std::panic::catch_unwind(run).unwrap_or_else(|_| {
                    Err(Error::hint(
                        format!("{}: not a readable Parquet file (the reader failed on it)", l.path),
                        "re-download or re-export the file",
                    ))
                })?
            }
        }
    }
    // Hash to the end: bytes after the last document (or a gzip trailer) are part of the file.
    std::io::copy(&mut raw, &mut std::io::sink()).map_err(|e| read_error(l, e))?;
    Ok(Scan { bytes: raw.n, sha256: crate::util::hex(&raw.hash.finalize()), documents: docs, text_bytes })
}

fn parquet_docs<R: parquet::file::reader::ChunkReader + 'static>(
    l: &Listed,
    field: &str,
    input: R,
    emit: &mut dyn FnMut(&str) -> Result<()>,
) -> Result<()> {
    use parquet::basic::{ConvertedType, LogicalType, Type as Physical};
    use parquet::column::reader::ColumnReader;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let bad = |e: parquet::errors::ParquetError| {
        Error::hint(
            format!("{}: not a readable Parquet file ({e})", l.path),
            "re-download or re-export the file",
        )
    };
    let reader = SerializedFileReader::new(input).map_err(bad)?;
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let names: Vec<String> = schema.columns().iter().map(|c| c.path().string()).collect();
    let Some(col) = schema.columns().iter().position(|c| c.path().parts() == [field.to_string()]) else {
        return Err(Error::hint(
            format!("{}: no column \"{field}\" (columns: {})", l.path, names.join(", ")),
            "set data.text_field to the column that holds the text",
        ));
    };
    let c = schema.column(col);
    let is_string = c.physical_type() == Physical::BYTE_ARRAY
        && (matches!(c.logical_type_ref(), Some(LogicalType::String))
            || c.converted_type() == ConvertedType::UTF8);
    if !is_string || c.max_rep_level() > 0 {
        return Err(Error::hint(
            format!(
                "{}: column \"{field}\" is {:?}{}, not a string",
                l.path,
                c.physical_type(),
                if c.max_rep_level() > 0 { " (repeated)" } else { "" }
            ),
            "data.text_field must name a string (UTF-8) column",
        ));
    }
    // Null values are skipped: `read_records` returns only the values that are present.
    for g in 0..reader.num_row_groups() {
        let rg = reader.get_row_group(g).map_err(bad)?;
        let ColumnReader::ByteArrayColumnReader(mut r) = rg.get_column_reader(col).map_err(bad)? else {
            return Err(Error::msg(format!("{}: column \"{field}\" is not a byte array", l.path)));
        };
        let (mut defs, mut vals) = (Vec::new(), Vec::new());
        loop {
            defs.clear();
            vals.clear();
            let (records, _, _) = r.read_records(1024, Some(&mut defs), None, &mut vals).map_err(bad)?;
            if records == 0 {
                break;
            }
            for v in &vals {
                let s = std::str::from_utf8(v.data())
                    .map_err(|e| invalid_utf8(l, &format!("in row group {g} at value "), e))?;
                emit(s)?;
            }
        }
    }
    Ok(())
}

/// Where a document goes: validation when the first 8 bytes of
/// SHA-256("tinylm-val\n" + listing path + "\n" + document index), read as a big-endian
/// fraction of 2^64, are below `data.val_fraction`.
pub fn val_key(path: &str, index: u64) -> u64 {
    let mut h = Sha256::new();
    h.update(b"tinylm-val\n");
    h.update(path.as_bytes());
    h.update(b"\n");
    h.update(index.to_string().as_bytes());
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// The key threshold for a validation fraction.
pub fn val_threshold(fraction: f64) -> u64 {
    // An exact product with a power of two, then a saturating conversion: the same on every CPU.
    (fraction * 18_446_744_073_709_551_616.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_by_extension() {
        assert_eq!(format_of("a.txt"), Some((Kind::Text, Compression::None)));
        assert_eq!(format_of("a.MD.gz"), Some((Kind::Text, Compression::Gzip)));
        assert_eq!(format_of("x.jsonl.zst"), Some((Kind::Jsonl, Compression::Zstd)));
        assert_eq!(format_of("t.parquet"), Some((Kind::Parquet, Compression::None)));
        assert_eq!(format_of("t.json"), None);
        assert_eq!(format_of("t.gz"), None);
    }

    #[test]
    fn val_keys_are_fixed() {
        // A change here changes every files-source split: it must be deliberate.
        assert_eq!(val_key("a.jsonl", 0), val_key("a.jsonl", 0));
        assert_ne!(val_key("a.jsonl", 0), val_key("a.jsonl", 1));
        assert_eq!(val_threshold(0.5), 1 << 63);
        assert_eq!(val_threshold(0.0), 0);
    }
}
