//! Any model in the store trains: SmolLM2-135M-Instruct imported from its GGUF publishes its tokenizer,
//! medical text encoded with it (documents end with the tokenizer's own end-of-document token) fine-tunes
//! it, and the child loads back for `generate` and `eval`. Bad training input is refused in one line with
//! nothing written: tokens from another tokenizer (by hash, even at the same vocabulary size), a mixture
//! weight ≤ 0, an unknown config key.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::{fresh_dir, run, run_losses, smollm2, strata};

fn ok(store: &Path, args: &[&str]) -> common::Run {
    let r = run(strata(store).args(args));
    assert!(r.ok, "{args:?}: {}", r.stderr);
    r
}

fn manifest(store: &Path, kind: &str, name: &str) -> serde_json::Value {
    serde_json::from_slice(
        &std::fs::read(store.join(kind).join(name).join("manifest.json")).unwrap(),
    )
    .unwrap()
}

/// SmolLM2 imported from its GGUF (with its tokenizer, lineage model → tokenizer), and the medical fixtures
/// encoded with that tokenizer, documents ending with its eos_token.
fn import_and_encode_medical(store: &std::path::Path, gguf: &std::path::Path) {
    let r = run(strata(store)
        .arg("import")
        .arg(gguf)
        .args(["--name", "smol"]));
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stdout.contains("tokenizer smol: from model smol"),
        "{}",
        r.stdout
    );
    // lineage: model → tokenizer
    let tm = manifest(store, "tokenizers", "smol");
    assert_eq!(tm["inputs"][0]["kind"], "model");
    assert_eq!(tm["inputs"][0]["name"], "smol");

    ok(
        store,
        &[
            "acquire",
            "--name",
            "med-raw",
            "--input",
            "fixtures/quick/medical",
        ],
    );
    ok(
        store,
        &["preprocess", "--input", "med-raw", "--output", "medical"],
    );
    ok(
        store,
        &[
            "tokenize",
            "encode",
            "--name",
            "med",
            "--dataset",
            "medical",
            "--tokenizer",
            "smol",
        ],
    );
    // SmolLM2's end of document is its eos_token <|im_end|> (id 2), not a hard-coded <|endoftext|> (id 0)
    let mm = manifest(store, "tokens", "med");
    let tk =
        strata_tokenize::load_tokenizer(&store.join("tokenizers/smol/tokenizer.json")).unwrap();
    assert_eq!(
        mm["counts"]["eos_id"].as_u64(),
        tk.token_to_id("<|im_end|>").map(u64::from)
    );
    assert_eq!(mm["counts"]["vocab_size"].as_u64(), Some(49152));
}

#[test]
fn smollm2_from_gguf_finetunes_on_medical_text_and_loads_back() {
    let gguf = smollm2();
    let store = fresh_dir("finetune-smollm2");
    import_and_encode_medical(&store, &gguf);
    ok(
        &store,
        &[
            "finetune",
            "--name",
            "smol-med",
            "--parent",
            "smol",
            "--tokens",
            "med",
            "--steps",
            "20",
            "--batch-size",
            "4",
            "--seq-len",
            "64",
            "--lr",
            "2e-4",
        ],
    );
    let losses = run_losses(&store, "smol-med");
    assert_eq!(losses.len(), 20);
    let first: f32 = losses[..5].iter().sum::<f32>() / 5.0;
    let last: f32 = losses[15..].iter().sum::<f32>() / 5.0;
    assert!(last < first, "loss did not fall: {losses:?}");
    let child = store.join("models/smol-med");
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(child.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["num_hidden_layers"], 30);
    assert_eq!(
        std::fs::read(child.join("tokenizer.json")).unwrap(),
        std::fs::read(store.join("models/smol/tokenizer.json")).unwrap()
    );

    let g = ok(
        &store,
        &[
            "generate",
            "--model",
            "smol-med",
            "--chat",
            "--prompt",
            "What is the liver?",
            "--max-tokens",
            "12",
            "--temperature",
            "0",
        ],
    );
    assert!(!g.stdout.trim().is_empty());
    let e = ok(
        &store,
        &[
            "eval",
            "--model",
            "smol-med",
            "--model",
            "smol",
            "--dataset",
            "medical",
            "--max-windows",
            "4",
        ],
    );
    let ppl: Vec<f64> = e
        .stdout
        .lines()
        .filter(|l| l.starts_with("smol"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect();
    assert_eq!(ppl.len(), 2, "{}", e.stdout);
    assert!(
        ppl.iter().all(|p| p.is_finite() && *p > 1.0),
        "{}",
        e.stdout
    );
    qlora_over_the_gguf_blocks(&store);
    // A 135M-parameter store is a gigabyte: passed, it goes (a failure leaves it to look at).
    std::fs::remove_dir_all(&store).unwrap();
}

/// QLoRA over the imported GGUF's own blocks (`--base-quant gguf`: Q4_1 and Q8_0 as the file holds them,
/// nothing dequantised but a slab at a time) has the losses of f32 LoRA over the same file dequantised;
/// a parent whose weights are safetensors is refused by name.
fn qlora_over_the_gguf_blocks(store: &Path) {
    let lora = |name: &str, extra: &[&str]| {
        let mut args = vec![
            "finetune",
            "--name",
            name,
            "--parent",
            "smol",
            "--tokens",
            "med",
            "--lora-r",
            "4",
            "--steps",
            "2",
            "--batch-size",
            "1",
            "--seq-len",
            "32",
            "--sampling",
            "sequential",
            "--warmup-steps",
            "0",
        ];
        args.extend_from_slice(extra);
        let r = ok(store, &args);
        (run_losses(store, name), r.stderr)
    };
    let (f32_losses, _) = lora("smol-lora", &[]);
    let (q_losses, log) = lora("smol-qlora", &["--base-quant", "gguf"]);
    assert!(log.contains("q4_1"), "{log}");
    for (q, f) in q_losses.iter().zip(&f32_losses) {
        assert!(
            (q - f).abs() <= 1e-4 * f.abs(),
            "{q_losses:?} against {f32_losses:?}"
        );
    }
    assert_eq!(
        manifest(store, "adapters", "smol-qlora")["counts"]["base_quant"],
        "gguf"
    );
    let r = run(strata(store).args([
        "finetune",
        "--name",
        "bad-qlora",
        "--parent",
        "smol-med",
        "--tokens",
        "med",
        "--steps",
        "1",
        "--base-quant",
        "gguf",
    ]));
    assert!(!r.ok && r.stderr.contains("safetensors"), "{}", r.stderr);
}

/// A store with two tokenizers of the same vocabulary size trained on different text, a model of the
/// first, and token artifacts of each.
fn two_tokenizers(store: &Path) {
    ok(
        store,
        &[
            "acquire",
            "--name",
            "gen-raw",
            "--input",
            "fixtures/quick/general",
        ],
    );
    ok(
        store,
        &["preprocess", "--input", "gen-raw", "--output", "general"],
    );
    ok(
        store,
        &[
            "acquire",
            "--name",
            "med-raw",
            "--input",
            "fixtures/quick/medical",
        ],
    );
    ok(
        store,
        &["preprocess", "--input", "med-raw", "--output", "medical"],
    );
    for (tk, ds) in [("bpe-a", "general"), ("bpe-b", "medical")] {
        ok(
            store,
            &[
                "tokenize",
                "train",
                "--name",
                tk,
                "--dataset",
                ds,
                "--vocab-size",
                "300",
            ],
        );
        ok(
            store,
            &[
                "tokenize",
                "encode",
                "--name",
                &format!("{ds}-{tk}"),
                "--dataset",
                ds,
                "--tokenizer",
                tk,
            ],
        );
    }
    ok(
        store,
        &[
            "tokenize",
            "encode",
            "--name",
            "medical-bpe-a",
            "--dataset",
            "medical",
            "--tokenizer",
            "bpe-a",
        ],
    );
    let cfg = store.join("tiny.toml");
    std::fs::write(
        &cfg,
        "[model]\nhidden_size = 32\nintermediate_size = 64\nlayers = 1\nheads = 2\nkv_heads = 2\ncontext = 32\n\n\
         [train]\nsteps = 2\nbatch_size = 2\nseq_len = 16\n",
    )
    .unwrap();
    let r = run(strata(store)
        .args([
            "train",
            "--name",
            "base",
            "--tokens",
            "general-bpe-a",
            "--tokenizer",
            "bpe-a",
            "--config",
        ])
        .arg(&cfg));
    assert!(r.ok, "{}", r.stderr);
}

fn runs_of(store: &Path, name: &str) -> usize {
    std::fs::read_dir(store.join("runs")).map_or(0, |rd| {
        rd.filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{name}-"))
            })
            .count()
    })
}

#[test]
fn bad_training_input_is_one_line_and_writes_nothing() {
    let store = fresh_dir("bad-train");
    two_tokenizers(&store);
    let a = manifest(&store, "tokenizers", "bpe-a");
    let b = manifest(&store, "tokenizers", "bpe-b");
    assert_eq!(
        a["counts"]["vocab_size"], b["counts"]["vocab_size"],
        "same size, so only the hash tells"
    );
    let refused = |args: &[&str], needle: &str| {
        let r = run(strata(&store).args(args));
        assert!(!r.ok, "{args:?} succeeded");
        let line = r.stderr.trim();
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(line.contains(needle), "{args:?}: {line}");
        assert!(!store.join("models/x").exists());
        assert_eq!(runs_of(&store, "x"), 0, "{args:?} wrote a run folder");
    };
    // each refused the same way: `finetune --name x --parent base` with these tokens, two steps
    for (tokens, needle) in [
        (&["medical-bpe-b"][..], "encoded with another tokenizer"),
        (
            &["general-bpe-a=0.8", "medical-bpe-b=0"][..],
            "mixture weight must be > 0",
        ),
        (&["general-bpe-a=-1"][..], "mixture weight must be > 0"),
        (&["general-bpe-a", "general-bpe-a"][..], "listed twice"),
    ] {
        let mut args = vec![
            "finetune", "--name", "x", "--parent", "base", "--steps", "2",
        ];
        for t in tokens {
            args.extend(["--tokens", t]);
        }
        refused(&args, needle);
    }
    let bad_cfg = store.join("bad.toml");
    std::fs::write(
        &bad_cfg,
        "[train]\nsteps = 2\nbatch_size = 2\nseq_len = 16\ngrad_acum = 4\n",
    )
    .unwrap();
    let r = run(strata(&store)
        .args([
            "finetune",
            "--name",
            "x",
            "--parent",
            "base",
            "--tokens",
            "general-bpe-a",
            "--config",
        ])
        .arg(&bad_cfg));
    assert!(!r.ok);
    assert!(
        r.stderr.contains("grad_acum") && r.stderr.contains("bad.toml"),
        "{}",
        r.stderr
    );
    assert_eq!(runs_of(&store, "x"), 0);
    // the right tokens, mixed with a share of the parent's data, train, on the threads asked for
    ok(
        &store,
        &[
            "--threads",
            "1",
            "finetune",
            "--name",
            "x",
            "--parent",
            "base",
            "--tokens",
            "medical-bpe-a=0.7",
            "--tokens",
            "general-bpe-a=0.3",
            "--steps",
            "2",
            "--schedule",
            "wsd",
            "--max-time",
            "10m",
            "--seq-len",
            "16",
            "--batch-size",
            "2",
        ],
    );
    let m = manifest(&store, "models", "x");
    assert_eq!(m["counts"]["threads"], 1, "{m}");
    assert_eq!(m["counts"]["steps"], 2);
}

#[test]
fn early_stop_and_time_budget_end_a_run_and_publish_it() {
    let store = fresh_dir("train-stops");
    two_tokenizers(&store);
    // patience 1 with an improvement of 100 nats required: the second evaluation stops the run
    let cfg = store.join("early.toml");
    std::fs::write(
        &cfg,
        "[train]\nsteps = 50\nbatch_size = 2\nseq_len = 16\neval_every = 1\neval_windows = 2\n\
         early_stop_patience = 1\nearly_stop_min_delta = 100.0\n",
    )
    .unwrap();
    let r = run(strata(&store)
        .args([
            "finetune",
            "--name",
            "early",
            "--parent",
            "base",
            "--tokens",
            "general-bpe-a",
            "--config",
        ])
        .arg(&cfg));
    assert!(
        r.ok && r.stderr.contains("done (early_stop)"),
        "{}",
        r.stderr
    );
    let m = manifest(&store, "models", "early");
    assert_eq!(m["counts"]["steps"], 2, "{m}");
    assert_eq!(m["counts"]["stopped"], "early_stop");
    // the published weights are the best validation's (step 1), not the last step's, and it says so
    assert!(
        r.stderr.contains("publishing the weights of step 1"),
        "{}",
        r.stderr
    );
    assert_eq!(m["counts"]["best_step"], 1, "{m}");
    let metrics = std::fs::read_to_string(
        store
            .join("runs")
            .join(m["counts"]["run"].as_str().unwrap())
            .join("metrics.jsonl"),
    )
    .unwrap();
    let val: Vec<f64> = metrics
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["val_loss"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert_eq!(val.len(), 2, "{metrics}");
    let published = m["counts"]["val_loss"].as_f64().unwrap();
    assert!(
        (published - val[0]).abs() < 1e-5 * val[0],
        "{published} vs {val:?}"
    );
    assert!(
        (published - val[1]).abs() > 1e-7,
        "steps 1 and 2 validate alike: {val:?}"
    );
    // a budget shorter than one step: one step, then the model is published
    ok(
        &store,
        &[
            "finetune",
            "--name",
            "brief",
            "--parent",
            "base",
            "--tokens",
            "general-bpe-a",
            "--steps",
            "50",
            "--seq-len",
            "16",
            "--batch-size",
            "2",
            "--max-time",
            "0.001",
        ],
    );
    let m = manifest(&store, "models", "brief");
    assert_eq!(m["counts"]["steps"], 1, "{m}");
    assert_eq!(m["counts"]["stopped"], "max_time");
}
