//! The `files` source end to end: a nested folder of txt, md, JSONL and Parquet files, some
//! gzip- or zstd-compressed, written by the tests themselves; pinning, determinism across
//! thread counts and creation order, every bad input, u32 token ids, resume, release, verify
//! and audit.

mod util;

use sha2::{Digest, Sha256};
use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use util::*;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The stories of the built-in corpus, as separate documents.
fn stories(seed: u64, bytes: u64) -> Vec<String> {
    tinylm::corpus::generate(seed, bytes)
        .split(tinylm::corpus::EOT)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn jsonl(docs: &[String]) -> Vec<u8> {
    docs.iter()
        .map(|t| serde_json::json!({"id": 1, "text": t}).to_string() + "\n")
        .collect::<String>()
        .into_bytes()
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn zst(bytes: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(bytes, 3).unwrap()
}

/// A Parquet file with a string column `text` and an int64 column `n` (snappy pages), in
/// row groups of `group` rows.
fn parquet(docs: &[String], group: usize) -> Vec<u8> {
    use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    let schema = Arc::new(
        parquet::schema::parser::parse_message_type(
            "message m { required binary text (UTF8); required int64 n; }",
        )
        .unwrap(),
    );
    let props =
        Arc::new(WriterProperties::builder().set_compression(parquet::basic::Compression::SNAPPY).build());
    let mut out = Vec::new();
    {
        let mut w = SerializedFileWriter::new(&mut out, schema, props).unwrap();
        for chunk in docs.chunks(group) {
            let mut rg = w.next_row_group().unwrap();
            let mut i = 0;
            while let Some(mut col) = rg.next_column().unwrap() {
                if i == 0 {
                    let v: Vec<ByteArray> = chunk.iter().map(|s| ByteArray::from(s.as_str())).collect();
                    col.typed::<ByteArrayType>().write_batch(&v, None, None).unwrap();
                } else {
                    let v: Vec<i64> = (0..chunk.len() as i64).collect();
                    col.typed::<Int64Type>().write_batch(&v, None, None).unwrap();
                }
                col.close().unwrap();
                i += 1;
            }
            rg.close().unwrap();
        }
        w.close().unwrap();
    }
    out
}

/// The fixture corpus: (relative path, bytes), in no particular order.
fn corpus_files() -> Vec<(String, Vec<u8>)> {
    let s = stories(11, 160_000);
    let n = s.len();
    let part = |a: usize, b: usize| s[a * n / 10..b * n / 10].to_vec();
    vec![
        ("corpus/a.txt".into(), part(0, 1).join("\n\n").into_bytes()),
        ("corpus/notes.md".into(), format!("# Notes\n\n{}\n", part(1, 2).join("\n")).into_bytes()),
        ("corpus/sub/b.jsonl".into(), jsonl(&part(2, 4))),
        ("corpus/sub/c.jsonl.gz".into(), gz(&jsonl(&part(4, 6)))),
        ("corpus/sub/deep/d.jsonl.zst".into(), zst(&jsonl(&part(6, 7)))),
        ("corpus/e.parquet".into(), parquet(&part(7, 9), 7)),
        ("corpus/f.txt.zst".into(), zst(part(9, 10).join("\n").as_bytes())),
        // Hidden below an entry: skipped, as git and ripgrep skip them.
        ("corpus/.cache/skip.bin".into(), b"not text".to_vec()),
    ]
}

fn write_files(root: &Path, files: &[(String, Vec<u8>)]) {
    for (p, b) in files {
        let p = root.join(p);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, b).unwrap();
    }
}

/// The pin, computed as the README's shell command does: sha256sum of every file in byte-wise
/// path order, then the SHA-256 of that listing.
fn expected_pin(files: &[(String, Vec<u8>)]) -> String {
    let mut v: Vec<&(String, Vec<u8>)> = files.iter().filter(|(p, _)| !p.contains("/.")).collect();
    v.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let listing: String = v.iter().map(|(p, b)| format!("{}  {p}\n", hex(&Sha256::digest(b)))).collect();
    hex(&Sha256::digest(listing.as_bytes()))
}

const FILES_CFG: &str = r#"
[data]
source = "files"
paths = ["corpus"]
"#;

/// The tiny config with a files source (and the pin, once known).
fn files_dir(name: &str, pin: Option<&str>) -> Dir {
    let d = Dir::new(name);
    let mut cfg = TINY.replace("[data]\nsource = \"builtin\"\nbuiltin_bytes = 150000\n", "");
    cfg += FILES_CFG;
    if let Some(p) = pin {
        cfg += &format!("sha256 = \"{p}\"\n");
    }
    fs::write(d.path("tiny.toml"), cfg).unwrap();
    d
}

fn prepare(d: &Dir, extra: &[&str]) -> std::process::Output {
    let cfg = d.config();
    let mut args = vec!["prepare", "--config", cfg.as_str()];
    args.extend_from_slice(extra);
    d.run(&args)
}

/// (tokenizer, train, val) hashes from `tinylm prepare`'s output.
fn hashes(o: &std::process::Output) -> Vec<String> {
    let out = stdout(o);
    ["tokenizer", "train", "val"]
        .iter()
        .map(|k| {
            out.lines()
                .find(|l| l.starts_with(k))
                .and_then(|l| l.split_whitespace().nth(2))
                .unwrap_or_else(|| panic!("no {k} line in:\n{out}"))
                .to_string()
        })
        .collect()
}

fn meta(d: &Dir) -> serde_json::Value {
    let top = fs::read_dir(d.path("data"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("files-"))
        .unwrap();
    let tok = fs::read_dir(top.path()).unwrap().flatten().find(|e| e.path().is_dir()).unwrap();
    json(&tok.path().join("meta.json"))
}

#[test]
fn a_nested_multi_format_folder_is_pinned_prepared_the_same_for_any_threads_and_order_and_trains() {
    let files = corpus_files();
    let pin = expected_pin(&files);

    // No pin: exit 2, printing the value to pin, and nothing written.
    let d0 = files_dir("files-nopin", None);
    write_files(&d0.0, &files);
    let o = prepare(&d0, &[]);
    assert_clean_error(&o, &format!("data.sha256 = \"{pin}\""));
    assert!(!d0.path("data").exists(), "a refused prepare must write nothing");

    let d1 = files_dir("files-t1", Some(&pin));
    write_files(&d1.0, &files);
    let o1 = prepare(&d1, &["--set", "run.threads=1"]);
    assert!(o1.status.success(), "{}", stderr(&o1));
    let m = meta(&d1);
    let recs = m["files"].as_array().unwrap();
    let names: Vec<&str> = recs.iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "corpus/a.txt",
            "corpus/e.parquet",
            "corpus/f.txt.zst",
            "corpus/notes.md",
            "corpus/sub/b.jsonl",
            "corpus/sub/c.jsonl.gz",
            "corpus/sub/deep/d.jsonl.zst"
        ],
        "byte-wise order within the entry, hidden files skipped"
    );
    assert_eq!(m["dtype"], "u16le");
    assert_eq!(m["corpus_sha256"].as_str(), Some(pin.as_str()));
    let s = stories(11, 160_000);
    let n = s.len() as u64;
    let docs: Vec<u64> = recs.iter().map(|r| r["documents"].as_u64().unwrap()).collect();
    assert_eq!(docs[0], 1, "a text file is one document");
    assert_eq!(docs[1], 9 * n / 10 - 7 * n / 10, "a Parquet row is one document");
    assert_eq!(docs[4], 4 * n / 10 - 2 * n / 10, "a JSONL line is one document");
    assert!(recs.iter().map(|r| r["val_documents"].as_u64().unwrap()).sum::<u64>() > 0);
    for r in recs {
        let toks = r["train_tokens"].as_u64().unwrap() + r["val_tokens"].as_u64().unwrap();
        assert!(toks >= r["documents"].as_u64().unwrap(), "every document adds tokens: {r}");
    }

    // Two threads, and the same files created in the reverse order: the same bytes.
    let d2 = files_dir("files-t2", Some(&pin));
    let mut rev = files.clone();
    rev.reverse();
    write_files(&d2.0, &rev);
    let o2 = prepare(&d2, &["--set", "run.threads=2"]);
    assert!(o2.status.success(), "{}", stderr(&o2));
    assert_eq!(hashes(&o1), hashes(&o2), "token files must not depend on threads or creation order");

    // Trains on it, and a second prepare reuses the files.
    let o = d1.try_train("runs/a", &["--set", "train.steps=6"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let man = json(&d1.path("runs/a/manifest.json"));
    assert_eq!(man["data"]["files"].as_array().unwrap().len(), 7, "the manifest records every file");
    assert_eq!(man["data"]["corpus_sha256"].as_str(), Some(pin.as_str()));
    assert!(stderr(&o).contains("reusing prepared data"), "{}", stderr(&o));
}

#[test]
fn changed_added_or_missing_files_are_named_and_refused_on_resume() {
    let files = corpus_files();
    let pin = expected_pin(&files);
    let d = files_dir("files-resume", Some(&pin));
    write_files(&d.0, &files);
    let o = d.try_train("runs/a", &["--set", "train.steps=10"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let manifest = bytes(&d.path("runs/a/manifest.json"));

    fs::write(d.path("corpus/a.txt"), "edited\n").unwrap();
    fs::write(d.path("corpus/sub/new.txt"), "added\n").unwrap();
    fs::remove_file(d.path("corpus/notes.md")).unwrap();
    let o = d.try_train("runs/a", &["--set", "train.steps=20", "--resume"]);
    assert_clean_error(&o, "changed: corpus/a.txt");
    let e = stderr(&o);
    assert!(e.contains("added:   corpus/sub/new.txt") && e.contains("missing: corpus/notes.md"), "{e}");
    assert_eq!(bytes(&d.path("runs/a/manifest.json")), manifest, "a refused resume must not touch the run");
    assert!(!d.path("runs/a/step-00000015").exists());
}

/// One bad input: a fresh folder with the good corpus plus `extra` (or with `replace` instead),
/// and a pin that matches the files, so the file itself is what is refused.
fn refused(name: &str, bad: &[(&str, Vec<u8>)], paths: &str, needle: &str) {
    let d = files_dir(name, None);
    let cfg = fs::read_to_string(d.path("tiny.toml")).unwrap().replace("paths = [\"corpus\"]", paths);
    fs::write(d.path("tiny.toml"), cfg).unwrap();
    write_files(&d.0, &[("corpus/ok.txt".into(), b"a fine document\n".to_vec())]);
    let bad: Vec<(String, Vec<u8>)> = bad.iter().map(|(p, b)| (p.to_string(), b.clone())).collect();
    write_files(&d.0, &bad);
    let o = prepare(&d, &["--set", &format!("data.sha256={}", "0".repeat(64))]);
    assert_clean_error(&o, needle);
    assert!(!d.path("data").exists(), "{name}: a refused prepare must write nothing");
}

#[test]
fn every_bad_input_names_the_file_and_where_and_writes_nothing() {
    let gz_full = gz(&jsonl(&["one document".to_string(), "two".to_string()]));
    let zst_full = zst(&jsonl(&vec!["a longer document of text".to_string(); 200]));
    // (name, bad files, data.paths line, what the error must say)
    type Case<'a> = (&'a str, Vec<(&'a str, Vec<u8>)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            "nomatch",
            vec![],
            "paths = [\"corpus\", \"nothing/*.jsonl\"]",
            "\"nothing/*.jsonl\" matches no file",
        ),
        ("nofile", vec![], "paths = [\"missing.txt\"]", "\"missing.txt\" matches no file"),
        (
            "ext",
            vec![("corpus/x.csv", b"a,b\n".to_vec())],
            "paths = [\"corpus\"]",
            "corpus/x.csv: unknown file type (known: .txt, .md",
        ),
        (
            "utf8",
            vec![("corpus/bad.txt", b"good \xff\xfe bad".to_vec())],
            "paths = [\"corpus\"]",
            "corpus/bad.txt: invalid UTF-8 at byte offset 5",
        ),
        (
            "notjson",
            vec![("corpus/x.jsonl", b"{\"text\": \"a\"}\n{oops\n".to_vec())],
            "paths = [\"corpus\"]",
            "corpus/x.jsonl: line 2 is not JSON",
        ),
        (
            "nofield",
            vec![("corpus/x.jsonl", b"{\"body\": \"a\"}\n".to_vec())],
            "paths = [\"corpus\"]",
            "corpus/x.jsonl: line 1 has no \"text\" field",
        ),
        (
            "notstring",
            vec![("corpus/x.jsonl", b"{\"text\": \"a\"}\n\n{\"text\": 5}\n".to_vec())],
            "paths = [\"corpus\"]",
            "corpus/x.jsonl: line 3: \"text\" is a number, not a string",
        ),
        (
            "pq-nocol",
            vec![("corpus/x.parquet", parquet(&["a".to_string()], 1))],
            "paths = [\"corpus\"]\ntext_field = \"body\"",
            "no column \"body\" (columns: text, n)",
        ),
        (
            "pq-notstring",
            vec![("corpus/x.parquet", parquet(&["a".to_string()], 1))],
            "paths = [\"corpus\"]\ntext_field = \"n\"",
            "column \"n\" is INT64",
        ),
        (
            "gz-trunc",
            vec![("corpus/x.jsonl.gz", gz_full[..gz_full.len() - 6].to_vec())],
            "paths = [\"corpus\"]",
            "corpus/x.jsonl.gz: the gzip stream is truncated or damaged",
        ),
        (
            "zst-trunc",
            vec![("corpus/x.jsonl.zst", zst_full[..zst_full.len() / 2].to_vec())],
            "paths = [\"corpus\"]",
            "corpus/x.jsonl.zst: the zstd stream is truncated or damaged",
        ),
        (
            "empty",
            vec![("empty/a.txt", Vec::new()), ("empty/b.jsonl", b"\n".to_vec())],
            "paths = [\"empty\"]",
            "hold no documents",
        ),
        ("twice", vec![], "paths = [\"corpus\", \"corpus/ok.txt\"]", "names corpus/ok.txt twice"),
        ("badglob", vec![], "paths = [\"corpus/[x\"]", "is not a valid glob"),
        (
            "pq-junk",
            vec![("corpus/x.parquet", b"PAR1 not really parquet PAR1".to_vec())],
            "paths = [\"corpus\"]",
            "corpus/x.parquet: not a readable Parquet file",
        ),
        (
            "newline",
            vec![("corpus/a\nb.txt", b"text".to_vec())],
            "paths = [\"corpus\"]",
            "a file name with a line break or a backslash cannot be pinned",
        ),
    ];
    for (name, bad, paths, needle) in cases {
        refused(&format!("bad-{name}"), &bad, paths, needle);
    }
    // An unreadable file: a dangling symlink in the folder (root reads any file's bytes, so
    // permissions cannot make one unreadable in CI).
    let d = files_dir("bad-unreadable", None);
    write_files(&d.0, &[("corpus/ok.txt".into(), b"text\n".to_vec())]);
    std::os::unix::fs::symlink(d.path("nowhere.txt"), d.path("corpus/gone.txt")).unwrap();
    let o = prepare(&d, &[]);
    assert_clean_error(&o, "corpus/gone.txt");
    assert!(!d.path("data").exists());
}

#[test]
fn a_vocabulary_past_65536_is_stored_as_u32_and_trains() {
    // 70,000 distinct words, each twice: enough pairs for BPE to reach 66,000 tokens.
    let mut words = Vec::new();
    for i in 0..70_000u32 {
        let mut w = String::new();
        let mut x = i;
        for _ in 0..4 {
            w.push((b'a' + (x % 26) as u8) as char);
            x /= 26;
        }
        words.push(w);
    }
    let lines: Vec<String> = words.chunks(10).map(|c| c.join(" ") + " " + &c.join(" ")).collect();
    let docs: Vec<String> = lines.chunks(20).map(|c| c.join("\n")).collect();
    let files = vec![("corpus/words.jsonl".to_string(), jsonl(&docs))];
    let pin = expected_pin(&files);
    let d = files_dir("files-u32", Some(&pin));
    write_files(&d.0, &files);
    let big = ["--set", "tokenizer.vocab_size=66000", "--set", "train.steps=2", "--set", "eval.every=2"];
    let o = d.try_train("runs/a", &big);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = meta(&d);
    assert_eq!(m["dtype"], "u32le");
    assert!(m["tokenizer_vocab_size"].as_u64().unwrap() > 65536, "{}", m["tokenizer_vocab_size"]);
    let top = fs::read_dir(d.path("data"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("files-"))
        .unwrap();
    let tok = fs::read_dir(top.path()).unwrap().flatten().find(|e| e.path().is_dir()).unwrap();
    let train = bytes(&tok.path().join("train.bin"));
    let max = train.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).max().unwrap();
    assert!(max > 65535, "ids past u16 must be stored whole, max id {max}");
    let man = json(&d.path("runs/a/manifest.json"));
    assert_eq!(man["data"]["token_dtype"], "u32le");
    // The training windows replay from the u32 file.
    let o = d.run(&["batches", "runs/a", "--step", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // And verify re-derives everything.
    let o = d.run(&["verify", "runs/a"]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
}

#[test]
fn a_multi_file_run_releases_its_files_and_verifies_and_audits() {
    let files = corpus_files();
    let pin = expected_pin(&files);
    let d = files_dir("files-release", Some(&pin));
    write_files(&d.0, &files);
    let o = d.try_train("runs/a", &["--set", "train.steps=10"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = d.run(&["verify", "runs/a"]);
    assert!(o.status.success(), "verify of a files run:\n{}\n{}", stdout(&o), stderr(&o));

    let o = d.run(&["release", "runs/a", "rel", "--allow-dirty", "--data-license", "CC0-1.0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for (p, b) in files.iter().filter(|(p, _)| !p.contains("/.")) {
        assert_eq!(&bytes(&d.path(&format!("rel/data/files/{p}"))), b, "{p} shipped as is");
    }
    let listing = fs::read_to_string(d.path("rel/data/files.sha256")).unwrap();
    assert_eq!(hex(&Sha256::digest(listing.as_bytes())), pin);
    let card = fs::read_to_string(d.path("rel/DATA_CARD.md")).unwrap();
    for (p, _) in files.iter().filter(|(p, _)| !p.contains("/.")) {
        assert!(card.contains(&format!("| `{p}` |")), "the data card lists {p}:\n{card}");
    }
    let (code, report) = audit(&d, "rel", &[]);
    assert_eq!(code, Some(0), "{report}");
    assert!(report.contains("data/files/ re-prepared"), "{report}");
    let o = d.run(&["verify", "rel"]);
    assert!(o.status.success(), "verify of the release:\n{}\n{}", stdout(&o), stderr(&o));

    // A crafted release whose data/files leads outside it is refused.
    copy_dir(&d.path("rel"), &d.path("evil"));
    fs::remove_dir_all(d.path("evil/data/files")).unwrap();
    std::os::unix::fs::symlink(&d.0, d.path("evil/data/files")).unwrap();
    let o = d.run(&["verify", "evil"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("leads outside the release"), "{}", stderr(&o));

    // Without a redistributable licence: the listing only, and the audit says why it skipped.
    let o = d.run(&["release", "runs/a", "rel2", "--allow-dirty"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(d.path("rel2/data/files.sha256").is_file());
    assert!(!d.path("rel2/data/files").exists());
}
