//! The release's documents: the Hugging Face model card (`README.md`), the data card, the
//! technical report and the data recipe. Everything in them comes from the run's files
//! (config, manifest, metrics) and the release's own choices, so they never drift from it.

use super::{license, mof, ComponentFiles, Facts};
use crate::error::{Error, Result};
use serde::Serialize;

#[derive(Serialize)]
struct FrontMatter {
    license: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    license_name: Option<String>,
    library_name: &'static str,
    pipeline_tag: &'static str,
    tags: Vec<String>,
    datasets: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    base_model: Option<String>,
    #[serde(rename = "model-index")]
    model_index: Vec<ModelIndex>,
}

#[derive(Serialize)]
struct ModelIndex {
    name: String,
    results: Vec<EvalEntry>,
}

#[derive(Serialize)]
struct EvalEntry {
    task: Task,
    dataset: Dataset,
    metrics: Vec<Metric>,
}

#[derive(Serialize)]
struct Task {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'static str,
}

#[derive(Serialize)]
struct Dataset {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    split: &'static str,
}

#[derive(Serialize)]
struct Metric {
    #[serde(rename = "type")]
    kind: &'static str,
    value: f64,
    name: &'static str,
}

/// The HF `license:` value: the lower-case SPDX id, or `other` for an expression.
pub fn hf_license(expr: &str) -> (String, Option<String>) {
    if expr.contains(' ') {
        ("other".into(), Some(expr.to_string()))
    } else {
        // HF's ids drop SPDX's "-only" / "-or-later" / "+" (gpl-3.0, apache-2.0).
        let l = expr.to_lowercase();
        let base = l.trim_end_matches('+').trim_end_matches("-or-later").trim_end_matches("-only");
        (base.to_string(), None)
    }
}

/// The tokenizer's real vocabulary, and the configured one when the corpus could not reach it.
fn vocab_note(f: &Facts) -> String {
    if f.vocab as u64 == f.cfg.tokenizer.vocab_size {
        f.vocab.to_string()
    } else {
        format!(
            "{} (tokenizer.vocab_size = {}, more than this corpus supports: BPE ran out of pairs to merge)",
            f.vocab, f.cfg.tokenizer.vocab_size
        )
    }
}

pub fn dataset_id(f: &Facts) -> String {
    let d = &f.cfg.data;
    match d.source.as_str() {
        "builtin" => format!("tinylm-builtin-stories-s{}-b{}", d.builtin_seed, d.builtin_bytes),
        _ => format!(
            "corpus-{}",
            &f.manifest.data.corpus_sha256[..12.min(f.manifest.data.corpus_sha256.len())]
        ),
    }
}

/// The last evaluation of the run: (step, loss, ppl, bpb), the loss as the manifest records it
/// (release checked metrics.jsonl against it).
pub fn final_eval(f: &Facts) -> Option<(f64, f64, f64, f64)> {
    f.final_eval
}

fn tokens_per_step(f: &Facts) -> u64 {
    let t = &f.cfg.train;
    t.batch_size * t.context * t.grad_accum
}

/// A fine-tune's chain of parents, nearest first, each pinned by hash, and where the parent's
/// files are; empty for a model trained from scratch.
pub fn lineage(f: &Facts) -> String {
    let Some(p) = &f.manifest.parent else { return String::new() };
    let mut rows = String::from("| generation | model | kind | model.safetensors sha256 | tokenizer sha256 | run manifest sha256 |\n| --- | --- | --- | --- | --- | --- |\n");
    for (i, r) in p.chain().iter().enumerate() {
        rows += &format!(
            "| parent{} | `{}` | {}{} | `{}` | `{}` | {} |\n",
            if i == 0 { String::new() } else { format!(" {}", i + 1) },
            r.name.replace('|', "\\|"),
            r.kind,
            r.step.map(|s| format!(", step {s}")).unwrap_or_default(),
            r.weights_sha256,
            r.tokenizer_sha256,
            r.manifest_sha256
                .as_deref()
                .map(|h| format!("`{h}`"))
                .unwrap_or_else(|| "none (no tinylm record)".into()),
        );
    }
    let shipped = if f.parent_included {
        "The parent's weights and tokenizer are in [parent/](parent/) (with its optimizer state when \
         the run carried it), so `tinylm verify .` re-executes the fine-tune from this release alone."
            .to_string()
    } else {
        format!(
            "The parent is not in this release ({}); get the model with the hash above and pass it to \
             `tinylm verify . --parent DIR`.",
            f.parent_excluded_why.as_deref().unwrap_or("not at hand")
        )
    };
    format!(
        "\n## Lineage\n\nThis model is a fine-tune: training started from `{}` ({}, optimizer {}), not from \
         a random initialisation, and used its tokenizer unchanged. The chain, nearest first \
         ([parent/parent.json](parent/parent.json) holds the record):\n\n{rows}\n{shipped}\n",
        p.name, p.kind, p.optimizer
    )
}

fn dirty_banner(f: &Facts) -> String {
    partial_banner(f) + &dirty_only_banner(f)
}

fn partial_banner(f: &Facts) -> String {
    if f.partial {
        format!(
            "\n> **Partial run.** Training stopped at step {} of the {} its config sets \
             (`train.steps`), and it was released with `--allow-partial`: these are not the final \
             weights of the run as planned.\n",
            f.final_step, f.cfg.train.steps
        )
    } else {
        String::new()
    }
}

fn dirty_only_banner(f: &Facts) -> String {
    if f.git_dirty {
        format!(
            "\n> **WARNING: built from a modified tree.** The run was trained by a tinylm binary with \
             uncommitted changes (manifest `git_dirty: true`) and released with `--allow-dirty`. \
             `source/` is commit `{}`, which is *not exactly* the code that ran, so a rebuild may \
             not reproduce these weights bit for bit.\n",
            f.git_commit
        )
    } else {
        String::new()
    }
}

pub fn model_card(f: &Facts, class: u8, comps: &[(String, ComponentFiles)]) -> Result<String> {
    let m = &f.manifest;
    let c = &f.cfg;
    let (lic, lic_name) = hf_license(&f.licenses.weights);
    let ds = dataset_id(f);
    let metrics = match final_eval(f) {
        Some((_, loss, ppl, bpb)) => vec![
            Metric { kind: "loss", value: loss, name: "Validation loss (nats/token)" },
            Metric { kind: "perplexity", value: ppl, name: "Validation perplexity" },
            Metric { kind: "bits_per_byte", value: bpb, name: "Validation bits per byte" },
        ],
        None => Vec::new(),
    };
    let fm = FrontMatter {
        license: lic,
        license_name: lic_name,
        library_name: "transformers",
        pipeline_tag: "text-generation",
        tags: vec![
            "tinylm".into(),
            "llama".into(),
            "text-generation".into(),
            "reproducible".into(),
            format!("mof-class-{}", ["none", "i", "ii", "iii"][class.min(3) as usize]),
        ],
        datasets: vec![ds.clone()],
        base_model: m.parent.as_ref().map(|p| p.name.clone()),
        model_index: vec![ModelIndex {
            name: format!("tinylm-{}", m.run_name),
            results: vec![EvalEntry {
                task: Task { kind: "text-generation", name: "Text Generation" },
                dataset: Dataset { name: ds.clone(), kind: ds.clone(), split: "validation" },
                metrics,
            }],
        }],
    };
    let yaml =
        serde_norway::to_string(&fm).map_err(|e| Error::msg(format!("model card front matter: {e}")))?;
    let eval = match final_eval(f) {
        Some((step, loss, ppl, bpb)) => format!(
            "| step | validation loss (nats/token) | perplexity | bits per byte |\n| --- | --- | --- | --- |\n| {step} | {loss:.4} | {ppl:.3} | {bpb:.4} |\n"
        ),
        None => "The run recorded no validation evaluation.\n".into(),
    };
    let comp_rows: String = mof::COMPONENTS
        .iter()
        .map(|mc| match comps.iter().find(|(n, _)| n == mc.name) {
            Some((_, cf)) => format!("| {} | `{}` | {} |\n", mc.name, cf.component_path, cf.license),
            None => format!("| {} | not included | |\n", mc.name),
        })
        .collect();
    let last = f.steps.last().copied().unwrap_or(0);
    Ok(format!(
        r#"---
{yaml}---

# tinylm-{name}

A {params}-parameter Llama-style language model {origin} on CPU by
[tinylm](source/README.md), released with everything needed to rebuild it bit for bit: data,
code, config, every checkpoint with its optimizer state, and the hashes of all of it.
Model Openness Framework: **{label}** (check it with `tinylm audit .`).
{dirty}{lineage}
## Model details

| | |
| --- | --- |
| architecture | `LlamaForCausalLM`: {layers} layers, d_model {d}, {heads} heads (head dim {hd}), SwiGLU width {ff}, RoPE theta {theta}, RMSNorm eps {eps:e}, untied embedding and head, no biases |
| parameters | {params} (fp32) |
| context | {ctx} tokens |
| vocabulary | {vocab} (byte-level BPE; `<\|endoftext\|>` = {eot} is BOS and EOS) |
| trained steps | {steps} ({tps} tokens/step, {seen} tokens seen) |
| code | tinylm {ver}, commit `{commit}`{dirty_tag} |
| licences | weights {wl}, code {cl}, data {dl}, documents {docl} |

## Training data

{data_summary} See [DATA_CARD.md](DATA_CARD.md) and [data/RECIPE.md](data/RECIPE.md).

## Training procedure and hyperparameters

AdamW (beta1 {b1}, beta2 {b2}, eps {aeps:e}, weight decay {wd} on matrices only), learning rate
{lr:e} with {warm} warmup steps then cosine decay to {minlr:e} over {sched} steps, global
gradient-norm clipping at {clip}, batch {bs} x {ctx} tokens x {accum} accumulation steps, seed
{seed}. Every value and the reason for it: [REPORT.md](REPORT.md); the exact config:
[run/config.toml](run/config.toml). Loss curves: [run/plots/loss.svg](run/plots/loss.svg).

## Evaluation

On {nval} validation tokens (the held-out tail of the corpus), over {eb} fixed windows:

{eval}
Per-step values are in [run/metrics.jsonl](run/metrics.jsonl).

## How to use

With Hugging Face transformers, from this directory alone:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained("model")
model = AutoModelForCausalLM.from_pretrained("model")
ids = tok({py_prompt}, return_tensors="pt").input_ids
print(tok.decode(model.generate(ids, max_new_tokens=40, do_sample=False)[0]))
```

With tinylm (build it from `source/`: `cargo build --release --locked`):

```sh
tinylm sample --checkpoint checkpoints/{last_dir} --prompt={sh_prompt} --seed 1
```

Samples from every checkpoint, with the command that reproduces each: `run/samples/`.

## How to reproduce and verify

1. `sha256sum -c SHA256SUMS` checks every file; `tinylm audit .` also checks the weights
   against `config.json`, the licences, `mof.yml`, and replays the data to its recorded hashes.
2. Build the code that trained it: `cd source && cargo build --release --locked`
   (commit `{commit}`, `Cargo.lock` pinned; rustc `{rustc}`).
3. Retrain and compare every hash, from the release directory: `tinylm verify .`
   It retrains from `run/config.toml` in a scratch directory and compares data, weights and
   optimizer state at every checkpoint ({verify_note}); `--files-only` checks the files alone
   in seconds.
4. Replay the data a step saw: `tinylm batches . --step N` prints the exact token windows of
   step N (same `batch_offsets` as training).

## Limitations

A {params}-parameter model trained for {steps} steps on {corpus_desc}: it continues text in the
style of its corpus and knows nothing else. It is not instruction-tuned, has no safety
training, and is meant for studying training and reproducibility, not for any application.
Its output is often ungrammatical and never factual.

## Licences

| component (MOF) | where | licence |
| --- | --- | --- |
{comp_rows}
Full texts in [LICENSES/](LICENSES/). Machine-readable: [mof.yml](mof.yml) (Model Openness
Tool record) and [release.json](release.json) (each component's files and hashes).
"#,
        name = m.run_name,
        params = f.num_params,
        label = mof::class_label(class),
        dirty = dirty_banner(f),
        lineage = lineage(f),
        origin = match &m.parent {
            Some(p) => format!("fine-tuned from `{}`", p.name),
            None => "trained from scratch".into(),
        },
        layers = c.model.n_layer,
        d = c.model.d_model,
        heads = c.model.n_head,
        hd = c.model.d_model / c.model.n_head.max(1),
        ff = c.model.d_ff,
        theta = c.model.rope_theta,
        eps = c.model.norm_eps,
        ctx = c.train.context,
        vocab = f.vocab,
        eot = f.eot,
        steps = f.final_step,
        tps = tokens_per_step(f),
        seen = tokens_per_step(f) * f.final_step,
        ver = env!("CARGO_PKG_VERSION"),
        commit = f.git_commit,
        dirty_tag = if f.git_dirty { " (**modified tree**)" } else { "" },
        wl = f.licenses.weights,
        cl = f.licenses.code,
        dl = f.licenses.data,
        docl = f.licenses.document,
        data_summary = data_summary(f),
        b1 = c.optim.beta1,
        b2 = c.optim.beta2,
        aeps = c.optim.eps,
        wd = c.optim.weight_decay,
        lr = c.optim.lr,
        warm = c.optim.warmup_steps,
        minlr = c.optim.min_lr,
        sched = c.schedule_steps(),
        clip = c.optim.grad_clip,
        bs = c.train.batch_size,
        accum = c.train.grad_accum,
        seed = c.run.seed,
        nval = m.data.val_tokens,
        eb = c.eval.batches * c.train.batch_size,
        eval = eval,
        py_prompt = serde_json::to_string(&c.eval.prompt).unwrap_or_default(),
        sh_prompt = crate::run::shell_quote(&c.eval.prompt),
        last_dir = crate::checkpoint::dir_name(last),
        rustc = m.sessions.last().map(|s| s.build.rustc_version.as_str()).unwrap_or("unknown"),
        verify_note = if f.cfg.data.source == "builtin" {
            "the built-in corpus is regenerated from its seed".to_string()
        } else {
            if f.data_included && f.cfg.data.source == "files" {
                "the corpus files are taken from `data/files/`".to_string()
            } else if f.data_included {
                "the corpus is taken from `data/corpus.txt`".to_string()
            } else {
                format!(
                    "the corpus is not in this release: pass it with `--corpus FILE` (sha256 {})",
                    f.manifest.data.corpus_sha256
                )
            }
        },
        corpus_desc = corpus_desc(f),
        comp_rows = comp_rows,
    ))
}

fn corpus_desc(f: &Facts) -> String {
    match f.cfg.data.source.as_str() {
        "builtin" => format!("{} bytes of simple generated English stories", f.manifest.data.corpus_bytes),
        "files" => format!(
            "a corpus of {} files ({} bytes of text)",
            f.manifest.data.files.len(),
            f.manifest.data.corpus_bytes
        ),
        _ => format!("a {}-byte text corpus", f.manifest.data.corpus_bytes),
    }
}

fn data_summary(f: &Facts) -> String {
    let d = &f.manifest.data;
    let what = match f.cfg.data.source.as_str() {
        "builtin" => format!(
            "tinylm's built-in corpus: simple English stories generated offline from seed {} ({} bytes)",
            f.cfg.data.builtin_seed, d.corpus_bytes
        ),
        "url" => {
            format!("the text at {} ({} bytes)", f.cfg.data.url.clone().unwrap_or_default(), d.corpus_bytes)
        }
        "files" => format!(
            "the {} files of data.paths {:?} ({} bytes of text, {} documents; every file is listed in the data card)",
            d.files.len(),
            f.cfg.data.paths,
            d.corpus_bytes,
            d.files.iter().map(|x| x.documents).sum::<u64>()
        ),
        _ => format!("the file {} ({} bytes)", f.cfg.data.path.clone().unwrap_or_default(), d.corpus_bytes),
    };
    let split = if f.cfg.data.source == "files" {
        format!("Whole documents are validation, each chosen by a hash of its file and index (data.val_fraction = {})", f.cfg.data.val_fraction)
    } else {
        format!("The last {} of it (cut at a line start) is validation", f.cfg.data.val_fraction)
    };
    let inc = if f.data_included && f.cfg.data.source == "files" {
        format!(
            "The files are included under `data/files/` (listing `data/files.sha256`) under {}.",
            f.licenses.data
        )
    } else if f.data_included {
        format!("It is included as `data/corpus.txt` under {}.", f.licenses.data)
    } else {
        format!(
            "It is **not** included ({}): `data/RECIPE.md` says where to get it and how to check it, and the MOF components Datasets and Evaluation data are missing.",
            f.data_excluded_why.clone().unwrap_or_default()
        )
    };
    format!(
        "{what}, sha256 `{}`. {split}: {} train and {} validation tokens. {inc}",
        d.corpus_sha256, d.train_tokens, d.val_tokens
    )
}

pub fn data_card(f: &Facts) -> String {
    let d = &f.manifest.data;
    let c = &f.cfg.data;
    let (motivation, collection) = match c.source.as_str() {
        "builtin" => (
            "A corpus anyone can rebuild offline, with no licence doubts, that a tiny model can learn in minutes on a CPU: short, simple, repetitive English stories.".to_string(),
            format!(
                "Not collected: generated by tinylm's `corpus::generate(seed = {}, bytes = {})` from fixed templates and word lists (characters, places, objects, actions, feelings, short dialogue); every choice is drawn from one seeded ChaCha8 stream, so the text and its SHA-256 are a pure function of (seed, size). No personal data, no text written by people other than the template authors.",
                c.builtin_seed, c.builtin_bytes
            ),
        ),
        "files" => (
            "The corpus the run's config names; see its source for why it was made.".to_string(),
            format!(
                "Read from the files of data.paths {:?}, each pinned by SHA-256 through the listing `data.sha256` pins; tinylm refuses any other bytes. Their provenance, consent and personal-data status are those of the source.",
                c.paths
            ),
        ),
        _ => (
            "The corpus the run's config names; see its source for why it was made.".to_string(),
            format!(
                "Obtained from {} and pinned by SHA-256 (`data.sha256`); tinylm refuses any other bytes. Its provenance, consent and personal-data status are those of the source.",
                c.url.clone().or(c.path.clone()).unwrap_or_default()
            ),
        ),
    };
    format!(
        r#"# Data card: {id}

## Motivation

{motivation}

## Composition

- {bytes} bytes of UTF-8 text, sha256 `{sha}`; documents separated by `<|endoftext|>`.
- Split: {split_rule}. Train: {tt} tokens (sha256 of the {dtype} token file `{ts}`); validation: {vt}
  tokens (`{vs}`).
- Tokenizer: byte-level BPE, vocabulary {vocab}, trained on the train split only
  (`tokenizer.json` sha256 `{toks}`).

## Collection

{collection}
{files}
## Preprocessing

None beyond the split and tokenization above; no filtering, deduplication or normalisation.
The code is `source/src/data.rs` and `source/src/tokenizer.rs`; the recipe and the commands that
replay it are in [data/RECIPE.md](data/RECIPE.md).

## Uses

Training and evaluating this small model, and studying reproducible training. Not suited to any
purpose that needs real-world knowledge or representative language.

## Distribution

{dist}

## Maintenance

Frozen: the release pins the corpus by hash, and the data never changes under a release. Report
problems to {contact}.
"#,
        id = dataset_id(f),
        motivation = motivation,
        bytes = d.corpus_bytes,
        sha = d.corpus_sha256,
        tt = d.train_tokens,
        ts = d.train_tokens_sha256,
        vt = d.val_tokens,
        vs = d.val_tokens_sha256,
        vocab = vocab_note(f),
        toks = d.tokenizer_sha256,
        collection = collection,
        split_rule = if c.source == "files" {
            format!("whole documents; a document is validation when a hash of (its listing path, its index in the file) falls below data.val_fraction = {}", c.val_fraction)
        } else {
            format!("the last {} of the bytes, moved forward to the next line start, is validation; the rest is train", c.val_fraction)
        },
        dtype = d.token_dtype,
        files = files_table(d),
        dist = if f.data_included && c.source == "files" {
            format!(
                "`data/files/` in this release (listing `data/files.sha256`; check with `cd data/files && sha256sum -c ../files.sha256`), under {} (full text in `LICENSES/`).",
                f.licenses.data
            )
        } else if f.data_included {
            format!(
                "`data/corpus.txt` in this release, under {} (full text in `LICENSES/`).",
                f.licenses.data
            )
        } else {
            format!(
                "Not redistributed here: {}. Get it from the source named above and check its SHA-256.",
                f.data_excluded_why.clone().unwrap_or_default()
            )
        },
        contact = if f.contact.is_empty() { "the publisher of this release" } else { &f.contact },
    )
}

pub fn data_recipe(f: &Facts) -> String {
    let d = &f.manifest.data;
    let c = &f.cfg.data;
    let source = match c.source.as_str() {
        "builtin" => {
            format!("builtin: `corpus::generate(seed = {}, bytes = {})`", c.builtin_seed, c.builtin_bytes)
        }
        "url" => format!(
            "url: {} (cached at {:?})",
            c.url.clone().unwrap_or_default(),
            c.path.clone().unwrap_or_default()
        ),
        "files" => format!(
            "files: data.paths = {:?}, data.text_field = {:?}; listing `data/files.sha256`",
            c.paths, c.text_field
        ),
        _ => format!("file: {:?}", c.path.clone().unwrap_or_default()),
    };
    if c.source == "files" {
        return files_recipe(f, &source);
    }
    let missing = if f.data_included {
        "The corpus is `data/corpus.txt`.".to_string()
    } else {
        format!(
            "**The corpus is not in this release** ({}), so the MOF components *Datasets* and *Evaluation data* are missing. Fetch it from the source above and check `sha256sum` prints the hash below.",
            f.data_excluded_why.clone().unwrap_or_default()
        )
    };
    format!(
        r#"# Data recipe

Source: {source}
Corpus sha256: `{sha}` ({bytes} bytes)
Licence: {lic}

{missing}

## Steps (`tinylm prepare`, `source/src/data.rs`)

1. Split: cut at byte floor({bytes} x (1 - {vf})), moved forward past the next newline; before
   is train, after is validation.
2. Tokenizer: byte-level BPE (HF `tokenizers`, GPT-2 byte-to-unicode alphabet, no prefix space),
   vocabulary {vocab} including 256 byte tokens and `<|endoftext|>`, trained on the train split
   with documents split at `<|endoftext|>` and lines kept with their newline. sha256 `{toks}`.
3. Token files: each split encoded and stored as u16 little-endian.

| file | tokens | sha256 |
| --- | --- | --- |
| train.bin | {tt} | `{ts}` |
| val.bin | {vt} | `{vs}` |

## Replay

```sh
# rebuild the token files from data/corpus.txt and print their hashes (must equal the table)
tinylm prepare --config run/config.toml --set data.source=file \
  --set data.path=data/corpus.txt --set data.sha256={sha} --set data.dir=/tmp/tinylm-replay
# the exact token windows of training step N (1-based, as in run/metrics.jsonl)
tinylm batches . --step N
```

`tinylm audit .` does the first command itself and compares the hashes.
"#,
        source = source,
        sha = d.corpus_sha256,
        bytes = d.corpus_bytes,
        lic = f.licenses.data,
        missing = missing,
        vf = c.val_fraction,
        vocab = vocab_note(f),
        toks = d.tokenizer_sha256,
        tt = d.train_tokens,
        ts = d.train_tokens_sha256,
        vt = d.val_tokens,
        vs = d.val_tokens_sha256,
    )
}

/// Every file of a files source, for the data card.
fn files_table(d: &crate::data::DataRecord) -> String {
    if d.files.is_empty() {
        return String::new();
    }
    let mut t = String::from(
        "\n| file | bytes (stored) | documents | train tokens | val tokens | sha256 |\n| --- | --- | --- | --- | --- | --- |\n",
    );
    for x in &d.files {
        t += &format!(
            "| `{}` | {} | {} | {} | {} | `{}` |\n",
            x.path, x.bytes, x.documents, x.train_tokens, x.val_tokens, x.sha256
        );
    }
    t
}

/// The recipe of a files source.
fn files_recipe(f: &Facts, source: &str) -> String {
    let d = &f.manifest.data;
    let c = &f.cfg.data;
    let missing = if f.data_included {
        "The files are under `data/files/`, at their listing paths.".to_string()
    } else {
        format!(
            "**The files are not in this release** ({}), so the MOF components *Datasets* and *Evaluation data* are missing. `data/files.sha256` lists each one with its SHA-256.",
            f.data_excluded_why.clone().unwrap_or_default()
        )
    };
    format!(
        r#"# Data recipe

Source: {source}
Corpus pin (`data.sha256`, the SHA-256 of `data/files.sha256`): `{sha}` ({bytes} bytes of text)
Licence: {lic}

{missing}

## Steps (`tinylm prepare`, `source/src/data.rs`, `source/src/sources.rs`)

1. Listing: data.paths in order; within an entry, files sorted byte-wise by path; one line
   `<sha256>  <path>` per file (`data/files.sha256`).
2. Documents: a .txt/.md file is one; a .jsonl line is one (its "{field}" string); a Parquet row
   is one (its "{field}" column); .gz/.zst are decompressed first; empty ones are skipped.
3. Split: a document is validation when the first 8 bytes of
   SHA-256("tinylm-val\n" + path + "\n" + index) are below {vf} x 2^64 (if none is, the one
   with the smallest value).
4. Tokenizer: byte-level BPE, vocabulary {vocab}, trained on the train documents' lines.
   sha256 `{toks}`.
5. Token files: every document encoded and followed by `<|endoftext|>`, in listing order,
   stored as {dtype}.

| file | tokens | sha256 |
| --- | --- | --- |
| train.bin | {tt} | `{ts}` |
| val.bin | {vt} | `{vs}` |

## Replay

```sh
# rebuild the token files from data/files/ and print their hashes (must equal the table)
cd data/files && sha256sum -c ../files.sha256 && \
  tinylm prepare --config ../../run/config.toml --set data.dir=/tmp/tinylm-replay
# the exact token windows of training step N (1-based, as in run/metrics.jsonl)
tinylm batches . --step N
```

`tinylm audit .` does the first command itself and compares the hashes.
"#,
        sha = d.corpus_sha256,
        bytes = d.corpus_bytes,
        lic = f.licenses.data,
        field = c.text_field,
        vf = c.val_fraction,
        vocab = vocab_note(f),
        toks = d.tokenizer_sha256,
        dtype = d.token_dtype,
        tt = d.train_tokens,
        ts = d.train_tokens_sha256,
        vt = d.val_tokens,
        vs = d.val_tokens_sha256,
    )
}

/// Why each config value is what it is; the report prints one line per key.
fn why(key: &str) -> &'static str {
    match key {
        "run.name" => "names the run directory; never changes the weights",
        "run.seed" => {
            "root of every random stream (init, batches, samples): a pure function of (seed, purpose, key)"
        }
        "run.threads" => "matmul threads; tested not to change the weights (1, 2, 4 threads)",
        "data.source" => "where the corpus comes from (builtin: generated offline, no licence doubts)",
        "data.path" | "data.url" | "data.dir" => {
            "where the data lives; may differ on resume, the hashes are checked instead"
        }
        "data.sha256" => "pins the corpus: any other bytes are refused",
        "data.val_fraction" => "held-out tail for validation, cut at a line start so no line is split",
        "data.builtin_seed" => "seed of the story generator, independent of run.seed",
        "data.builtin_bytes" => {
            "corpus size: enough text that the model does not memorise it in this many steps"
        }
        "tokenizer.vocab_size" => {
            "small vocabulary: 256 bytes + <|endoftext|> + merges; a tiny model cannot use a large one"
        }
        "model.n_layer" | "model.n_head" | "model.d_model" | "model.d_ff" => {
            "model size chosen to train in minutes on a laptop CPU"
        }
        "model.rope_theta" => "Llama's RoPE base (10000): the HF default, so config.json needs no scaling",
        "model.norm_eps" => "RMSNorm epsilon as in Llama",
        "optim.lr" => "peak learning rate; high because the model is tiny",
        "optim.min_lr" => "cosine floor, 1/10 of the peak as in common Llama recipes",
        "optim.warmup_steps" => "linear warmup avoids early divergence of AdamW",
        "optim.schedule_steps" => {
            "cosine length (0 = train.steps); pinned to stop or extend a run without changing it"
        }
        "optim.beta1" | "optim.beta2" => "AdamW moments as in GPT-3/Llama (0.9, 0.95)",
        "optim.eps" => "AdamW epsilon",
        "optim.weight_decay" => "decoupled decay on matrices only; norm gains are not decayed",
        "optim.grad_clip" => "global gradient-norm clipping guards against spikes (0 = off)",
        "train.steps" => "where training stops",
        "train.batch_size" | "train.grad_accum" => "sequences per optimizer step = batch_size x grad_accum",
        "train.context" => "tokens per sequence; also max_position_embeddings",
        "train.log_every" => "progress line cadence; never changes the weights",
        k if k.starts_with("eval.") => {
            "evaluation cadence and sampling; own random streams, never changes the weights"
        }
        k if k.starts_with("checkpoint.") => "checkpoint cadence and retention; never changes the weights",
        _ => "see the config documentation in source/README.md",
    }
}

pub fn report(f: &Facts, class: u8) -> String {
    let m = &f.manifest;
    let defaults = crate::config::Config::default().flat();
    let mut decisions = String::from("| key | value | default | why |\n| --- | --- | --- | --- |\n");
    for (k, v) in f.cfg.flat() {
        let d = defaults.get(&k).map(String::as_str).unwrap_or("(none)");
        decisions +=
            &format!("| `{k}` | `{}` | `{}` | {} |\n", v.replace('|', "\\|"), d.replace('|', "\\|"), why(&k));
    }
    let mut evals = String::from("| step | train loss | val loss | perplexity | bits/byte | lr |\n| --- | --- | --- | --- | --- | --- |\n");
    for p in f.metrics.iter().filter(|p| p.val_loss.is_some()) {
        evals += &format!(
            "| {} | {:.4} | {:.4} | {:.3} | {:.4} | {:.3e} |\n",
            p.step,
            p.loss,
            p.val_loss.unwrap_or(f64::NAN),
            p.val_ppl.unwrap_or(f64::NAN),
            p.val_bpb.unwrap_or(f64::NAN),
            p.lr
        );
    }
    let mut ckpts = String::from("| checkpoint | train loss | val loss |\n| --- | --- | --- |\n");
    for c in m.checkpoints.iter().filter(|c| c.present) {
        ckpts += &format!(
            "| {} | {:.4} | {} |\n",
            c.dir,
            c.train_loss,
            c.val_loss.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into())
        );
    }
    let mut sessions = String::new();
    for (i, s) in m.sessions.iter().enumerate() {
        sessions += &format!(
            "{}. from step {}: tinylm {} commit `{}`{}, {}, candle {}, Cargo.lock sha256 `{}`, {} threads on {}{}\n",
            i + 1,
            s.start_step,
            s.build.tinylm_version,
            s.build.git_commit,
            if s.build.git_dirty { " (**modified tree**)" } else { "" },
            s.build.rustc_version,
            s.build.candle_version,
            s.build.cargo_lock_sha256,
            s.threads,
            s.cpu_model,
            if s.overrides.is_empty() { String::new() } else { format!("; overrides {}", s.overrides.join(" ")) }
        );
    }
    let samples: String = f
        .samples
        .iter()
        .map(|(step, text)| format!("- step {step}: {:?}\n", text.chars().take(300).collect::<String>()))
        .collect();
    let mixed = if f.commits.len() > 1 {
        format!("\nThe sessions used {} different commits; `source/` is the last one.\n", f.commits.len())
    } else {
        String::new()
    };
    format!(
        r#"# Technical report: tinylm-{name}

This report is also the release's research paper (MOF component *Research paper*): the method is
the standard Llama recipe, and what is new is that every input, decision and output is recorded
and can be checked. Model Openness Framework: {label}.
{dirty}{lineage}
## Method

A decoder-only Llama (RMSNorm, rotary embeddings in the `rotate_half` layout, SwiGLU MLP, no
biases, untied embedding and head), fp32, trained on CPU with candle by tinylm: AdamW with
decoupled weight decay on matrices, linear warmup then cosine decay, global-norm clipping.
Initialisation: normal(0, 0.02), the residual output projections (`o_proj`, `down_proj`) scaled
by 1/sqrt(2 n_layer), each parameter from its own random stream keyed by name. The batch at step
k is a pure function of (seed, k), so a resume needs no data cursor; evaluation and sampling use
their own streams and never change the weights.

{params} parameters; {tps} tokens per step; {seen} tokens seen in {steps} steps.

## Every decision

Values from [run/config.toml](run/config.toml) (the resolved config: every key explicit), next
to tinylm's documented default.

{decisions}
## Data

{data_summary}

## Training and loss curves

![loss](run/plots/loss.svg)

Train loss (every step), validation loss (eval steps) and learning rate: `run/plots/loss.svg`,
from `run/metrics.jsonl`.

Checkpoints (all in `checkpoints/`, each with its optimizer state):

{ckpts}
## Evaluation

Validation loss (nats/token), perplexity and bits per UTF-8 byte over {eb} fixed windows of
{ctx} tokens spread evenly over the validation split:

{evals}
Samples (prompt {prompt}, temperature {temp}, top-k {topk}, seed {seed}; `run/samples/`):

{samples}
## Build and sessions

{sessions}{mixed}
## Verification

The run's files against its manifest (`tinylm verify --files-only`, run by `tinylm release`):

```
{verify}```

The full check retrains and compares every hash: `tinylm verify .` in the release directory.
"#,
        name = m.run_name,
        label = mof::class_label(class),
        dirty = dirty_banner(f),
        lineage = lineage(f),
        params = f.num_params,
        tps = tokens_per_step(f),
        seen = tokens_per_step(f) * f.final_step,
        steps = f.final_step,
        decisions = decisions,
        data_summary = data_summary(f),
        ckpts = ckpts,
        eb = f.cfg.eval.batches * f.cfg.train.batch_size,
        ctx = f.cfg.train.context,
        evals = evals,
        prompt = serde_json::to_string(&f.cfg.eval.prompt).unwrap_or_default(),
        temp = f.cfg.eval.temperature,
        topk = f.cfg.eval.top_k,
        seed = f.cfg.run.seed,
        samples = samples,
        sessions = sessions,
        mixed = mixed,
        verify = f.verify_table,
    )
}

/// Licence ids of a model card's front matter (`license:`), lower-cased; None without one.
pub fn card_license(readme: &str) -> Option<String> {
    let fm = front_matter(readme)?;
    let v: serde_norway::Value = serde_norway::from_str(fm).ok()?;
    let l = v.get("license")?.as_str()?.to_string();
    if l == "other" {
        if let Some(n) = v.get("license_name").and_then(|n| n.as_str()) {
            return Some(n.to_string());
        }
    }
    Some(l)
}

/// The YAML between the leading `---` lines of a Markdown file.
pub fn front_matter(md: &str) -> Option<&str> {
    let rest = md.strip_prefix("---\n").or_else(|| md.strip_prefix("---\r\n"))?;
    let end = rest.find("\n---")?;
    Some(&rest[..end + 1])
}

/// Whether a card licence (HF spelling) and a record licence (SPDX) name the same thing.
pub fn same_license(card: &str, record: &str) -> bool {
    let norm = |s: &str| license::canonical(s).unwrap_or_else(|_| s.trim().to_string()).to_lowercase();
    norm(card) == norm(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_matter_licence() {
        let md = "---\nlicense: apache-2.0\nlibrary_name: transformers\n---\n# x\n";
        assert_eq!(card_license(md).as_deref(), Some("apache-2.0"));
        assert!(same_license("apache-2.0", "Apache-2.0"));
        assert!(!same_license("mit", "Apache-2.0"));
        assert_eq!(card_license("# no front matter\n"), None);
        let other = "---\nlicense: other\nlicense_name: MIT OR Apache-2.0\n---\n";
        assert!(same_license(&card_license(other).unwrap(), "MIT OR Apache-2.0"));
    }
}
