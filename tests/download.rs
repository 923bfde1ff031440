//! The URL source, against a server this test starts on 127.0.0.1 (never the internet).

mod util;
use std::sync::atomic::Ordering;
use util::*;

#[test]
fn url_source_downloads_once_verifies_and_reuses() {
    let d = Dir::new("download");
    let text = tinylm::corpus::generate(9, 120_000).into_bytes();
    let sha = tinylm::util::sha256_hex(&text);
    let (url, hits) = serve(text.clone());
    let cfg = d.config();
    let sets = |extra: &[&str]| -> Vec<String> {
        let mut v =
            vec!["data.source=url".to_string(), format!("data.url={url}"), format!("data.sha256={sha}")];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let args = |sets: &[String]| -> Vec<String> {
        let mut a = vec!["prepare".to_string(), "--config".into(), cfg.clone()];
        for s in sets {
            a.push("--set".into());
            a.push(s.clone());
        }
        a
    };
    let run = |sets: &[String]| d.run(&args(sets).iter().map(String::as_str).collect::<Vec<_>>());

    let o = run(&sets(&[]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(bytes(&d.path("data/input.txt")), text, "cached under data.dir with the URL's file name");
    let o = run(&sets(&[]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(hits.load(Ordering::SeqCst), 1, "a verified cached file is reused without downloading");

    // A wrong pin: the download is refused and nothing is left at data.path.
    let wrong = "0".repeat(64);
    let o = run(&sets(&["data.path=other.txt", &format!("data.sha256={wrong}")]));
    assert_clean_error(&o, "sha256 mismatch for download");
    assert!(!d.path("other.txt").exists());
    let leftovers: Vec<_> = std::fs::read_dir(&d.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
