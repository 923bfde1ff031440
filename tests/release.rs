//! `tinylm release` and `tinylm audit` end to end on a tiny run, and the exported HF layout
//! checked against an independent implementation of HF Llama's forward pass.

mod util;
use std::path::Path;
use util::*;

const DATE: &str = "2026-01-02";

/// Train the tiny config into runs/a and release it into `out`. The test binary may be built
/// from a tree with uncommitted changes, so --allow-dirty; a clean build ignores it.
fn trained_release(d: &Dir, out: &str) {
    d.train("runs/a", &[]);
    let o = d.run(&["release", "runs/a", out, "--allow-dirty", "--date", DATE]);
    assert!(o.status.success(), "release failed:\n{}", stderr(&o));
}

#[test]
fn release_then_audit_meets_class_one_and_is_deterministic() {
    let d = Dir::new("release");
    trained_release(&d, "rel");
    let rel = d.path("rel");
    for f in [
        "README.md",
        "DATA_CARD.md",
        "REPORT.md",
        "mof.yml",
        "release.json",
        "SHA256SUMS",
        "model/config.json",
        "model/generation_config.json",
        "model/model.safetensors",
        "model/tokenizer.json",
        "model/tokenizer_config.json",
        "checkpoints/step-00000005/optimizer.safetensors",
        "checkpoints/step-00000005/config.json",
        "data/corpus.txt",
        "data/RECIPE.md",
        "source/Cargo.lock",
        "source/src/model.rs",
        "run/config.toml",
        "run/manifest.json",
        "run/metrics.jsonl",
        "run/plots/loss.svg",
        "run/samples/step-00000020.txt",
        "LICENSES/MIT.txt",
        "LICENSES/Apache-2.0.txt",
        "LICENSES/CC0-1.0.txt",
        "LICENSES/CC-BY-4.0.txt",
    ] {
        assert!(rel.join(f).is_file(), "{f} missing from the release");
    }
    // The HF config says what the weights are.
    let c = json(&rel.join("model/config.json"));
    assert_eq!(c["model_type"], "llama");
    assert_eq!(c["architectures"][0], "LlamaForCausalLM");
    assert_eq!((c["hidden_size"].as_u64(), c["num_hidden_layers"].as_u64()), (Some(32), Some(2)));
    assert_eq!((c["vocab_size"].as_u64(), c["max_position_embeddings"].as_u64()), (Some(300), Some(32)));
    assert_eq!(c["tie_word_embeddings"], false);
    assert_eq!(json(&rel.join("model/tokenizer_config.json"))["tokenizer_class"], "PreTrainedTokenizerFast");
    // The card's front matter and the MOT record.
    let card = String::from_utf8(bytes(&rel.join("README.md"))).unwrap();
    assert!(card.starts_with("---\nlicense: apache-2.0\n"), "{}", &card[..200]);
    for s in
        ["pipeline_tag: text-generation", "model-index:", "## How to reproduce and verify", "## Limitations"]
    {
        assert!(card.contains(s), "model card lacks {s:?}");
    }
    let mof = String::from_utf8(bytes(&rel.join("mof.yml"))).unwrap();
    // Every scalar quoted: the Model Openness Tool's YAML parser turns a bare date into an
    // integer (R4).
    assert!(mof.contains("name: \"Model Openness Framework\"") && mof.contains(&format!("date: \"{DATE}\"")));
    let problems = tinylm::release::mof::schema_problems(&mof);
    assert!(problems.is_empty(), "mof.yml fails the MOT schema: {problems:?}\n{mof}");
    assert_eq!(mof.matches("\n  - name: ").count(), 17, "{mof}");
    // Each licence text is SPDX's own, byte for byte.
    let mut n = 0;
    for e in std::fs::read_dir(rel.join("LICENSES")).unwrap() {
        let p = e.unwrap().path();
        let id = p.file_stem().unwrap().to_string_lossy().into_owned();
        let spdx: &dyn license::License = id.parse().unwrap_or_else(|_| panic!("{id} is not an SPDX id"));
        assert_eq!(bytes(&p), spdx.text().as_bytes(), "LICENSES/{id}.txt is not SPDX's text");
        n += 1;
    }
    assert!(n >= 4, "{n} licence texts");
    let rj = json(&rel.join("release.json"));
    assert_eq!(rj["components"].as_object().unwrap().len(), 17);
    assert_eq!(rj["checkpoints"], serde_json::json!([5, 10, 15, 20]));

    let (code, out) = audit(&d, "rel", &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("class met: Class I - Open Science") && out.contains("verdict: PASS"), "{out}");
    assert!(out.contains("ok   data replay"), "{out}");
    let (code, out) = audit(&d, "rel", &["--json"]);
    assert_eq!(code, Some(0));
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["class_met"], 1);
    assert!(j["components"].as_array().unwrap().iter().all(|c| c["status"] == "included"), "{j}");

    if std::process::Command::new("sha256sum").arg("--version").output().is_ok() {
        let o = std::process::Command::new("sha256sum")
            .args(["-c", "--quiet", "SHA256SUMS"])
            .current_dir(&rel)
            .output()
            .unwrap();
        assert!(o.status.success(), "sha256sum -c failed:\n{}{}", stdout(&o), stderr(&o));
    }

    // Same run, same date: the same bytes.
    let o = d.run(&["release", "runs/a", "rel2", "--allow-dirty", "--date", DATE]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(bytes(&rel.join("SHA256SUMS")), bytes(&d.path("rel2/SHA256SUMS")));
    // A non-empty output directory is refused.
    assert_one_line_error(
        &d.run(&["release", "runs/a", "rel", "--allow-dirty"]),
        "already exists and is not empty",
    );

    // The samples are what `tinylm sample` prints for the released checkpoint.
    let s = String::from_utf8(bytes(&rel.join("run/samples/step-00000020.txt"))).unwrap();
    let (cmd, text) = s.split_once('\n').unwrap();
    let o = in_shell(&d, cmd.trim_start_matches("$ "), &rel);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), text);

    // `tinylm verify` takes the release directory itself: files, then the full retrain and
    // compare (the built-in corpus is regenerated), as the author's run directory does.
    let rel_arg = rel.display().to_string();
    let o = d.run(&["verify", &rel_arg, "--files-only"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let o = d.run(&["verify", &rel_arg]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("rerun step-00000020/model.safetensors"), "{}", stdout(&o));
    // Verifying wrote nothing into the release: the audit still passes.
    let o = d.run(&["audit", &rel_arg, "--skip-data-replay"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    // A flipped byte in a released checkpoint is a mismatch there too.
    let p = rel.join("checkpoints/step-00000010/model.safetensors");
    let mut b = bytes(&p);
    let i = b.len() - 2;
    b[i] ^= 1;
    std::fs::write(&p, b).unwrap();
    let o = d.run(&["verify", &rel_arg, "--files-only"]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("MISMATCH: step-00000010/model.safetensors"), "{}", stdout(&o));
}

/// Run a command line as printed in a release, in a real `sh`, with `tinylm` on the PATH: what
/// a reader who pastes it gets (quoting, `$` and backticks included).
fn in_shell(d: &Dir, line: &str, cwd: &Path) -> std::process::Output {
    let dir = d.path("bin");
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("tinylm");
    if !link.exists() {
        std::os::unix::fs::symlink(bin(), &link).unwrap();
    }
    let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default());
    std::process::Command::new("sh").args(["-c", line]).env("PATH", path).current_dir(cwd).output().unwrap()
}

#[test]
fn audit_names_a_flipped_byte_and_an_unlisted_file() {
    let d = Dir::new("tamper");
    trained_release(&d, "rel");
    let rel = d.path("rel");
    // Every file of the release, one flipped byte at a time.
    let files = tinylm::release::walk(&rel).unwrap();
    assert!(files.len() > 90, "{files:?}");
    for f in &files {
        let p = rel.join(f);
        let orig = bytes(&p);
        let mut b = orig.clone();
        let i = b.len() / 2;
        b[i] ^= 0x01;
        std::fs::write(&p, &b).unwrap();
        let (code, out) = audit(&d, "rel", &["--skip-data-replay"]);
        assert_eq!(code, Some(1), "flipping a byte of {f} must fail the audit:\n{out}");
        let named = if f == "SHA256SUMS" { "SHA256SUMS".to_string() } else { format!("hash mismatch: {f}") };
        assert!(out.contains(&named), "{f} not named:\n{out}");
        std::fs::write(&p, &orig).unwrap();
    }
    assert_eq!(audit(&d, "rel", &["--skip-data-replay"]).0, Some(0));
    std::fs::write(rel.join("model/extra.bin"), b"x").unwrap();
    let (code, out) = audit(&d, "rel", &["--skip-data-replay"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("unlisted file: model/extra.bin"), "{out}");
    std::fs::remove_file(rel.join("model/extra.bin")).unwrap();

    // A non-open licence in the record (hashes updated to match) is invalid, and costs the class.
    let mof = String::from_utf8(bytes(&rel.join("mof.yml"))).unwrap();
    let nc = mof.replace(
        "license: \"CC0-1.0\"\n    license_path: \"LICENSES/CC0-1.0.txt\"\n    component_path: \"data\"\n",
        "license: \"CC-BY-NC-4.0\"\n    license_path: \"LICENSES/CC0-1.0.txt\"\n    component_path: \"data\"\n",
    );
    assert_ne!(nc, mof, "the Datasets entry was not found in mof.yml:\n{mof}");
    std::fs::write(rel.join("mof.yml"), nc).unwrap();
    std::fs::write(rel.join("SHA256SUMS"), tinylm::release::sums(&rel).unwrap()).unwrap();
    let (code, out) = audit(&d, "rel", &["--skip-data-replay"]);
    assert_eq!(code, Some(1), "{out}");
    let line = out.lines().find(|l| l.starts_with("Datasets")).unwrap();
    assert!(line.contains("invalid") && line.contains("CC-BY-NC-4.0 is not an open licence"), "{line}");
    assert!(out.contains("class met: Class II - Open Tooling"), "{out}");
}

#[test]
fn a_plain_open_weights_folder_reports_the_missing_components() {
    let d = Dir::new("hfdir");
    trained_release(&d, "rel");
    let hf = d.path("hf");
    std::fs::create_dir_all(&hf).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(d.path("rel/model").join(f), hf.join(f)).unwrap();
    }
    std::fs::write(hf.join("README.md"), "---\nlicense: apache-2.0\n---\n# A model\n").unwrap();
    let (code, out) = audit(&d, "hf", &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("class met: no class"), "{out}");
    assert!(out.contains("ok   weights"), "{out}");
    assert!(out.contains("FAIL SHA256SUMS"), "{out}");
    for missing in ["Model architecture", "Data card", "Technical report", "Evaluation results"] {
        let line =
            out.lines().find(|l| l.starts_with(missing)).unwrap_or_else(|| panic!("{missing}:\n{out}"));
        assert!(line.contains("missing"), "{line}");
    }
    let missing_line =
        out.lines().find(|l| l.contains("missing for Class III")).unwrap_or_else(|| panic!("{out}"));
    for name in ["Model architecture", "Data card", "Technical report", "Evaluation results"] {
        assert!(missing_line.contains(name), "{missing_line}");
    }
    for included in ["Model parameters (Final)", "Model card"] {
        let line = out.lines().find(|l| l.starts_with(included)).unwrap();
        assert!(line.contains("included"), "{line}");
    }
    let (_, j) = audit(&d, "hf", &["--json"]);
    let j: serde_json::Value = serde_json::from_str(&j).unwrap();
    assert_eq!(j["class_met"], 0);
    assert_eq!(j["progress"][0]["included"], 2);

    // A non-open licence: the weights are there but do not count.
    std::fs::write(hf.join("README.md"), "---\nlicense: cc-by-nc-4.0\n---\n# A model\n").unwrap();
    let (code, out) = audit(&d, "hf", &[]);
    assert_eq!(code, Some(1));
    let line = out.lines().find(|l| l.starts_with("Model parameters (Final)")).unwrap();
    assert!(line.contains("invalid") && line.contains("not an open licence"), "{line}");

    // Weights that do not match config.json are invalid.
    let mut c = json(&hf.join("config.json"));
    c["intermediate_size"] = 65.into();
    std::fs::write(hf.join("config.json"), c.to_string()).unwrap();
    let (_, out) = audit(&d, "hf", &[]);
    assert!(out.contains("FAIL weights") && out.contains("config.json implies"), "{out}");
    // Not a directory: a clean error.
    assert_clean_error(&d.run(&["audit", "nope"]), "nope is not a directory");
}

#[test]
fn file_corpus_without_a_licence_is_left_out_and_the_audit_says_what_it_costs() {
    let d = Dir::new("unlicensed");
    let text = tinylm::corpus::generate(5, 120_000);
    std::fs::write(d.path("stories.txt"), &text).unwrap();
    let sha = tinylm::util::sha256_hex(text.as_bytes());
    let sha_set = format!("data.sha256={sha}");
    let sets = ["--set", "data.source=file", "--set", "data.path=stories.txt", "--set", &sha_set];
    d.train("runs/f", &sets);
    let o = d.run(&["release", "runs/f", "rel", "--allow-dirty", "--date", DATE]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("not included: Datasets"), "{}", stdout(&o));
    assert!(!d.path("rel/data/corpus.txt").exists());
    let recipe = String::from_utf8(bytes(&d.path("rel/data/RECIPE.md"))).unwrap();
    assert!(recipe.contains(&sha) && recipe.contains("The corpus is not in this release"), "{recipe}");
    let (code, out) = audit(&d, "rel", &[]);
    assert_eq!(code, Some(0), "the record claims only Class III, which is met:\n{out}");
    assert!(out.contains("class met: Class III - Open Model"), "{out}");
    assert!(out.contains("Evaluation data (missing)") && out.contains("Datasets (missing)"), "{out}");
    assert_eq!(audit(&d, "rel", &["--require", "1"]).0, Some(1));

    // With a declared open licence the corpus goes in and the release is Class I.
    let o =
        d.run(&["release", "runs/f", "rel2", "--allow-dirty", "--date", DATE, "--data-license", "CC-BY-4.0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(bytes(&d.path("rel2/data/corpus.txt")), text.as_bytes());
    let (code, out) = audit(&d, "rel2", &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("class met: Class I"), "{out}");
    // A licence of the wrong kind (a code licence on data) still counts, with a warning.
    let o = d.run(&["release", "runs/f", "rel4", "--allow-dirty", "--date", DATE, "--data-license", "MIT"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (code, out) = audit(&d, "rel4", &[]);
    assert_eq!(code, Some(0), "{out}");
    let line = out.lines().find(|l| l.starts_with("Datasets")).unwrap();
    assert!(line.contains("included") && line.contains("warning: MIT is a code licence"), "{line}");
    // Unknown licences are refused with the list of known ones.
    let o = d.run(&["release", "runs/f", "rel3", "--weights-license", "my-licence"]);
    assert_one_line_error(&o, "--weights-license \"my-licence\"");
}

#[test]
fn a_dirty_build_is_refused_unless_allowed_and_then_marked() {
    let d = Dir::new("dirty");
    d.train("runs/a", &[]);
    let mp = d.path("runs/a/manifest.json");
    let mut m = json(&mp);
    for s in m["sessions"].as_array_mut().unwrap() {
        s["build"]["git_dirty"] = true.into();
    }
    std::fs::write(&mp, serde_json::to_string_pretty(&m).unwrap()).unwrap();
    assert_one_line_error(&d.run(&["release", "runs/a", "rel", "--date", DATE]), "modified tree");
    assert!(!d.path("rel").exists());
    let o = d.run(&["release", "runs/a", "rel", "--allow-dirty", "--date", DATE]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8(bytes(&d.path("rel/README.md")))
        .unwrap()
        .contains("WARNING: built from a modified tree"));
    assert_eq!(json(&d.path("rel/release.json"))["git_dirty"], true);
    let (_, out) = audit(&d, "rel", &["--skip-data-replay"]);
    assert!(out.contains("FAIL code"), "OSI code check must fail for a dirty build:\n{out}");
}

#[test]
fn batches_replay_the_windows_training_used() {
    let d = Dir::new("batches");
    trained_release(&d, "rel");
    let from_release = d.run(&["batches", "rel", "--step", "3"]);
    assert!(from_release.status.success(), "{}", stderr(&from_release));
    let from_run = d.run(&["batches", "runs/a", "--step", "3"]);
    assert_eq!(stdout(&from_release), stdout(&from_run));
    let lines: Vec<serde_json::Value> =
        stdout(&from_release).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4, "batch_size 4, grad_accum 1");
    let m = json(&d.path("runs/a/manifest.json"));
    let n = m["data"]["train_tokens"].as_u64().unwrap() as usize;
    // Step 3 (1-based, as in metrics.jsonl) is loop index 2; seed 7 from the tiny config.
    let want = tinylm::data::batch_offsets(7, 2, 0, n, 4, 32);
    let got: Vec<usize> = lines.iter().map(|l| l["offset"].as_u64().unwrap() as usize).collect();
    assert_eq!(got, want);
    assert!(lines.iter().all(|l| l["tokens"].as_array().unwrap().len() == 33));
    assert_one_line_error(&d.run(&["batches", "rel", "--step", "21"]), "--step 21 is outside the run");
}

// ---- The exported HF layout against an independent HF Llama forward pass ----

/// HF `LlamaForCausalLM.forward`, written out plainly in f64 from transformers'
/// modeling_llama.py (RMSNorm, rotate_half RoPE, causal attention with grouped KV heads,
/// SwiGLU), reading ONLY `config.json` and `model.safetensors` of `dir`. Returns (T, V) logits.
fn hf_llama_logits(dir: &Path, ids: &[u32]) -> Vec<Vec<f64>> {
    let cfg = json(&dir.join("config.json"));
    let u = |k: &str| cfg[k].as_u64().unwrap_or_else(|| panic!("config.json lacks {k}")) as usize;
    let (h, f, layers, nh, v) = (
        u("hidden_size"),
        u("intermediate_size"),
        u("num_hidden_layers"),
        u("num_attention_heads"),
        u("vocab_size"),
    );
    let nkv = cfg["num_key_value_heads"].as_u64().map(|x| x as usize).unwrap_or(nh);
    let hd = cfg["head_dim"].as_u64().map(|x| x as usize).unwrap_or(h / nh);
    let eps = cfg["rms_norm_eps"].as_f64().unwrap();
    let theta = cfg["rope_theta"].as_f64().unwrap();
    assert_eq!(cfg["hidden_act"], "silu");
    let raw = bytes(&dir.join("model.safetensors"));
    let st = safetensors::SafeTensors::deserialize(&raw).unwrap();
    let w = |name: &str, shape: &[usize]| -> Vec<f64> {
        let t = st.tensor(name).unwrap_or_else(|_| panic!("missing tensor {name}"));
        assert_eq!(t.shape(), shape, "{name}");
        assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
        t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect()
    };
    // y = x @ W^T with W (out, in) row-major.
    let lin = |x: &[f64], wt: &[f64], out: usize| -> Vec<f64> {
        let inn = x.len();
        (0..out).map(|o| (0..inn).map(|i| x[i] * wt[o * inn + i]).sum()).collect()
    };
    let rms = |x: &[f64], g: &[f64]| -> Vec<f64> {
        let ms = x.iter().map(|a| a * a).sum::<f64>() / x.len() as f64;
        let r = 1.0 / (ms + eps).sqrt();
        x.iter().zip(g).map(|(a, g)| a * r * g).collect()
    };
    let rope = |x: &mut [f64], pos: usize| {
        for head in x.chunks_mut(hd) {
            let half = hd / 2;
            for i in 0..half {
                let inv = 1.0 / theta.powf((2 * i) as f64 / hd as f64);
                let (s, c) = (pos as f64 * inv).sin_cos();
                let (x1, x2) = (head[i], head[i + half]);
                head[i] = x1 * c - x2 * s;
                head[i + half] = x2 * c + x1 * s;
            }
        }
    };
    let t = ids.len();
    let emb = w("model.embed_tokens.weight", &[v, h]);
    let mut x: Vec<Vec<f64>> =
        ids.iter().map(|&id| emb[id as usize * h..(id as usize + 1) * h].to_vec()).collect();
    for l in 0..layers {
        let p = |s: &str| format!("model.layers.{l}.{s}.weight");
        let (wq, wk, wv) = (
            w(&p("self_attn.q_proj"), &[nh * hd, h]),
            w(&p("self_attn.k_proj"), &[nkv * hd, h]),
            w(&p("self_attn.v_proj"), &[nkv * hd, h]),
        );
        let wo = w(&p("self_attn.o_proj"), &[h, nh * hd]);
        let (g_in, g_post) = (w(&p("input_layernorm"), &[h]), w(&p("post_attention_layernorm"), &[h]));
        let (wg, wu, wd) =
            (w(&p("mlp.gate_proj"), &[f, h]), w(&p("mlp.up_proj"), &[f, h]), w(&p("mlp.down_proj"), &[h, f]));
        let hs: Vec<Vec<f64>> = x.iter().map(|r| rms(r, &g_in)).collect();
        let mut q: Vec<Vec<f64>> = hs.iter().map(|r| lin(r, &wq, nh * hd)).collect();
        let mut k: Vec<Vec<f64>> = hs.iter().map(|r| lin(r, &wk, nkv * hd)).collect();
        let vv: Vec<Vec<f64>> = hs.iter().map(|r| lin(r, &wv, nkv * hd)).collect();
        for pos in 0..t {
            rope(&mut q[pos], pos);
            rope(&mut k[pos], pos);
        }
        for i in 0..t {
            let mut att = vec![0.0; nh * hd];
            for head in 0..nh {
                let kvh = head / (nh / nkv);
                let qs = &q[i][head * hd..(head + 1) * hd];
                let scores: Vec<f64> = (0..=i)
                    .map(|j| {
                        qs.iter().zip(&k[j][kvh * hd..(kvh + 1) * hd]).map(|(a, b)| a * b).sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let mx = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for (j, ej) in e.iter().enumerate() {
                    for d in 0..hd {
                        att[head * hd + d] += ej / z * vv[j][kvh * hd + d];
                    }
                }
            }
            let o = lin(&att, &wo, h);
            for (a, b) in x[i].iter_mut().zip(o) {
                *a += b;
            }
            let h2 = rms(&x[i], &g_post);
            let (gate, up) = (lin(&h2, &wg, f), lin(&h2, &wu, f));
            let act: Vec<f64> = gate.iter().zip(&up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
            for (a, b) in x[i].iter_mut().zip(lin(&act, &wd, h)) {
                *a += b;
            }
        }
    }
    let gn = w("model.norm.weight", &[h]);
    let head = if cfg["tie_word_embeddings"] == true { emb.clone() } else { w("lm_head.weight", &[v, h]) };
    x.iter().map(|r| lin(&rms(r, &gn), &head, v)).collect()
}

fn tinylm_logits(ckpt: &Path, ids: &[u32]) -> Vec<Vec<f32>> {
    let (_, model, _) = tinylm::sample::load_model(ckpt).unwrap();
    let x = candle_core::Tensor::new(ids, &candle_core::Device::Cpu).unwrap().unsqueeze(0).unwrap();
    model.forward(&x).unwrap().squeeze(0).unwrap().to_vec2::<f32>().unwrap()
}

fn max_diff(a: &[Vec<f64>], b: &[Vec<f32>]) -> f64 {
    a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - *y as f64).abs()).fold(0.0, f64::max)
}

#[test]
fn exported_model_matches_an_independent_hf_llama_forward() {
    let d = Dir::new("hf-forward");
    trained_release(&d, "rel");
    let ids: Vec<u32> = (0..20u32).map(|i| (i * 37 + 11) % 300).collect();
    let ours = tinylm_logits(&d.path("rel/checkpoints/step-00000020"), &ids);
    let theirs = hf_llama_logits(&d.path("rel/model"), &ids);
    assert_eq!((theirs.len(), theirs[0].len()), (20, 300));
    let diff = max_diff(&theirs, &ours);
    let scale = theirs.iter().flatten().fold(0f64, |m, x| m.max(x.abs()));
    assert!(scale > 0.1, "logits too small to compare: {scale}");
    assert!(diff < 1e-4 * scale.max(1.0), "exported model/ disagrees with tinylm: max |diff| {diff:e}");
}

/// Golden logits: a model whose weights are a fixed formula (no training, no RNG), exported
/// through tinylm's HF writer. The numbers below were computed once by `hf_llama_logits` (the
/// independent f64 forward above) and committed, so a change to the exporter, to tinylm's
/// forward or to the reference itself shows up here. Logits of the last position, first 6
/// vocabulary entries.
const GOLDEN_LAST: [f64; 6] = GOLDEN;
include!("fixtures/golden_logits.rs");

#[test]
fn golden_logits_of_a_formula_model() {
    use std::collections::BTreeMap;
    let d = Dir::new("golden");
    let mut cfg = tinylm::config::Config::default();
    cfg.model.n_layer = 2;
    cfg.model.n_head = 2;
    cfg.model.d_model = 16;
    cfg.model.d_ff = 24;
    cfg.train.context = 16;
    let vocab = 40;
    let dims = tinylm::model::Dims::new(&cfg.model, vocab);
    let mut tensors = BTreeMap::new();
    for (k, (name, shape)) in dims.param_shapes().into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if name.ends_with("norm.weight") {
            (0..n).map(|i| 1.0 + 0.1 * ((i + k) as f32 * 0.7).sin()).collect()
        } else {
            (0..n).map(|i| 0.2 * ((i * 7 + k * 13) as f32 * 0.37).sin()).collect()
        };
        tensors.insert(name, candle_core::Tensor::from_vec(data, shape, &candle_core::Device::Cpu).unwrap());
    }
    let dir = d.path("model");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("model.safetensors"), tinylm::checkpoint::to_safetensors(&tensors).unwrap())
        .unwrap();
    let m = tinylm::release::hf::HfModel { cfg: &cfg, vocab, eot: 0 };
    for (name, b) in tinylm::release::hf::side_files(&m).unwrap() {
        std::fs::write(dir.join(name), b).unwrap();
    }
    let ids: Vec<u32> = vec![3, 17, 5, 39, 0, 22, 8, 11];
    let theirs = hf_llama_logits(&dir, &ids);
    let model = tinylm::model::Llama::from_tensors(dims, &tensors, "golden").unwrap();
    let x =
        candle_core::Tensor::new(ids.as_slice(), &candle_core::Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let ours = model.forward(&x).unwrap().squeeze(0).unwrap().to_vec2::<f32>().unwrap();
    let diff = max_diff(&theirs, &ours);
    assert!(diff < 1e-4, "tinylm vs the HF reference: max |diff| {diff:e}");
    let last = &theirs[ids.len() - 1][..6];
    if std::env::var("TINYLM_PRINT_GOLDEN").is_ok() {
        println!("{last:?}");
    }
    for (g, l) in GOLDEN_LAST.iter().zip(last) {
        // 1e-6, not 0: the formula weights go through the platform libm's sinf.
        assert!((g - l).abs() < 1e-6, "golden {GOLDEN_LAST:?} vs now {last:?}");
    }
}

/// `tinylm eval` (issue 18, item 3): the same numbers from every kind of folder the model is
/// in, and the loss equal to an independent f64 HF Llama forward over the same windows.
#[test]
fn eval_scores_any_text_from_any_model_folder() {
    let d = Dir::new("eval");
    trained_release(&d, "rel");
    let text = "Once upon a time, a small fox found a red ball in the garden. She was happy.\n".repeat(3);
    std::fs::write(d.path("story.txt"), &text).unwrap();
    let eval = |model: &str, extra: &[&str]| {
        let mut a = vec!["eval", "--checkpoint", model, "--text", "story.txt", "--json"];
        a.extend_from_slice(extra);
        let o = d.run(&a);
        assert!(o.status.success(), "eval {model}: {}", stderr(&o));
        serde_json::from_str::<serde_json::Value>(&stdout(&o)).unwrap()
    };
    let base = eval("runs/a", &[]);
    for m in ["runs/a/step-00000020", "rel", "rel/model"] {
        assert_eq!(eval(m, &[])["total"], base["total"], "{m}");
    }
    let t = base["context"].as_u64().unwrap() as usize;
    assert_eq!(t, 32);
    // The reference: tokenize with the same tokenizer, the same windows, f64 log-softmax.
    let tok = tokenizers::Tokenizer::from_file(d.path("rel/model/tokenizer.json")).unwrap();
    let ids = tok.encode(text.as_str(), false).unwrap().get_ids().to_vec();
    let (mut nats, mut n) = (0f64, 0u64);
    for w in ids.chunks(t).filter(|w| w.len() >= 2) {
        let logits = hf_llama_logits(&d.path("rel/model"), &w[..w.len() - 1]);
        for (row, &y) in logits.iter().zip(&w[1..]) {
            let max = row.iter().fold(f64::MIN, |m, &x| m.max(x));
            let lse = max + row.iter().map(|&x| (x - max).exp()).sum::<f64>().ln();
            nats += lse - row[y as usize];
            n += 1;
        }
    }
    assert_eq!(base["total"]["tokens"].as_u64(), Some(n));
    let (ours, theirs) = (base["total"]["loss"].as_f64().unwrap(), nats / n as f64);
    assert!((ours - theirs).abs() < 1e-4 * theirs, "eval loss {ours}, independent forward {theirs}");
    // Shorter windows predict fewer tokens; a longer one than the model's context is refused.
    let short = eval("rel", &["--context", "8"]);
    assert!(short["total"]["tokens"].as_u64() < Some(n));
    assert_clean_error(
        &d.run(&["eval", "--checkpoint", "rel", "--text", "story.txt", "--context", "33"]),
        "--context 33",
    );

    // HF configs tinylm cannot represent are refused, naming the key.
    for (key, value) in [
        ("tie_word_embeddings", serde_json::json!(true)),
        ("num_key_value_heads", serde_json::json!(1)),
        ("rope_scaling", serde_json::json!({"type": "linear", "factor": 2.0})),
        ("hidden_act", serde_json::json!("gelu")),
        ("attention_bias", serde_json::json!(true)),
        ("model_type", serde_json::json!("mistral")),
    ] {
        copy_dir(&d.path("rel/model"), &d.path("hf"));
        let mut cfg = json(&d.path("hf/config.json"));
        cfg[key] = value;
        std::fs::write(d.path("hf/config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
        let o = d.run(&["eval", "--checkpoint", "hf", "--text", "story.txt"]);
        assert_one_line_error(&o, &format!("`{key}`"));
        std::fs::remove_dir_all(d.path("hf")).unwrap();
    }
}

/// `tinylm export --gguf` (issue 18, item 4), read back with candle's GGUF reader: llama.cpp's
/// metadata, every tensor (queries and keys in llama.cpp's RoPE row order), and a tokenizer that
/// encodes as tinylm's does. The same model gives the same bytes from any folder kind.
#[test]
fn gguf_export_reads_back_with_the_metadata_tensors_and_tokenizer() {
    use candle_core::quantized::gguf_file;
    let d = Dir::new("gguf");
    trained_release(&d, "rel");
    for (model, out) in [("runs/a", "a.gguf"), ("rel", "b.gguf")] {
        let o = d.run(&["export", model, "--gguf", out]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(bytes(&d.path("a.gguf")), bytes(&d.path("b.gguf")));
    let mut f = std::fs::File::open(d.path("a.gguf")).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    let md = |k: &str| ct.metadata.get(k).unwrap_or_else(|| panic!("no {k}"));
    assert_eq!(md("general.architecture").to_string().unwrap(), "llama");
    for (k, v) in [
        ("llama.context_length", 32),
        ("llama.embedding_length", 32),
        ("llama.block_count", 2),
        ("llama.feed_forward_length", 64),
        ("llama.attention.head_count", 2),
        ("llama.attention.head_count_kv", 2),
        ("llama.rope.dimension_count", 16),
    ] {
        assert_eq!(md(k).to_u32().unwrap(), v, "{k}");
    }
    let cfg = json(&d.path("rel/model/config.json"));
    assert_eq!(
        md("llama.attention.layer_norm_rms_epsilon").to_f32().unwrap(),
        cfg["rms_norm_eps"].as_f64().unwrap() as f32
    );
    assert_eq!(md("llama.rope.freq_base").to_f32().unwrap(), cfg["rope_theta"].as_f64().unwrap() as f32);
    assert_eq!(md("tokenizer.ggml.model").to_string().unwrap(), "gpt2");
    let eot = cfg["eos_token_id"].as_u64().unwrap() as usize;
    let types = md("tokenizer.ggml.token_type").to_vec().unwrap();
    assert_eq!(types.len(), cfg["vocab_size"].as_u64().unwrap() as usize);
    assert_eq!(types[eot].to_i32().unwrap(), 3, "<|endoftext|> is a control token");
    assert_eq!(
        types.iter().filter(|t| t.to_i32().unwrap() == 1).count(),
        types.len() - 1,
        "the rest are normal"
    );
    assert_eq!(md("tokenizer.ggml.bos_token_id").to_u32().unwrap() as usize, eot);
    assert_eq!(md("tokenizer.ggml.eos_token_id").to_u32().unwrap() as usize, eot);

    // Every tensor: the checkpoint's, with q and k rows in llama.cpp's order.
    let w =
        tinylm::checkpoint::from_safetensors(&bytes(&d.path("rel/model/model.safetensors")), Path::new("m"))
            .unwrap();
    assert_eq!(ct.tensor_infos.len(), w.len());
    for (hf, t) in &w {
        let name = tinylm::gguf::gguf_name(hf).unwrap();
        let q = ct.tensor(&mut f, &name, &candle_core::Device::Cpu).unwrap();
        let got = q.dequantize(&candle_core::Device::Cpu).unwrap();
        assert_eq!(got.dims(), t.dims(), "{name}");
        let mut want = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        if hf.contains("q_proj") || hf.contains("k_proj") {
            want = tinylm::gguf::permute_rope_rows(&want, 2, t.dims()[1]);
            assert_ne!(
                want,
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                "{name}: the permutation moved nothing"
            );
        }
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{name} differs");
    }

    // The tokenizer rebuilt from the GGUF alone encodes as tinylm's.
    use candle_core::quantized::tokenizer::TokenizerFromGguf;
    let from_gguf = tokenizers::Tokenizer::from_gguf(&ct).unwrap();
    let ours = tokenizers::Tokenizer::from_file(d.path("rel/model/tokenizer.json")).unwrap();
    let text = " Once upon a time, a little fox named Tom had 25 red balls. \"Why?\" she asked.";
    assert_eq!(from_gguf.encode(text, false).unwrap().get_ids(), ours.encode(text, false).unwrap().get_ids());

    // f16: about half the size, the same values to f16 rounding.
    let o = d.run(&["export", "runs/a", "--gguf", "h.gguf", "--f16"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (full, half) = (bytes(&d.path("a.gguf")).len(), bytes(&d.path("h.gguf")).len());
    assert!(half < full * 7 / 10, "{half} vs {full}");
    let o = d.run(&["export", "nowhere", "--gguf", "x.gguf"]);
    assert_clean_error(&o, "nowhere");
    assert!(!d.path("x.gguf").exists());
}
