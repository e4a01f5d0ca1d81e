//! `kill -9` during `strata train`, then the same command: it resumes from the last checkpoint, and the
//! result is the model an uninterrupted run makes (batches depend only on seed and step; weights and
//! AdamW moments are restored exactly).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{fresh_dir, run, strata};

#[test]
fn kill_9_then_same_command_resumes_and_matches_an_uninterrupted_run() {
    let dir = fresh_dir("resume");
    let store = dir.join("store");
    prepare_tokens(&store);
    let cfg = dir.join("tiny.toml");
    std::fs::write(
        &cfg,
        "[model]\nhidden_size = 32\nintermediate_size = 64\nlayers = 2\nheads = 4\nkv_heads = 2\ncontext = 32\n\n\
         [train]\nsteps = 400\nbatch_size = 4\nseq_len = 16\nlr = 0.003\nmin_lr = 0.0003\nwarmup_steps = 5\neval_every = 100\ncheckpoint_every = 10\n",
    )
    .unwrap();
    let train = |name: &str| {
        let mut c = strata(&store);
        c.args([
            "train",
            "--name",
            name,
            "--tokens",
            "toks",
            "--tokenizer",
            "bpe",
            "--config",
        ])
        .arg(&cfg);
        c
    };

    let mut child = train("resumed")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let ckpt = loop {
        let found = std::fs::read_dir(store.join("runs")).ok().and_then(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path().join("checkpoints/checkpoint.safetensors"))
                .find(|p| p.is_file())
        });
        if let Some(p) = found {
            break p;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(100),
            "no checkpoint appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "training finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(ckpt.is_file());
    assert!(
        !store.join("models/resumed").exists(),
        "killed run must not publish a model"
    );

    let r = run(&mut train("resumed"));
    assert!(r.ok, "{}", r.stderr);
    let from: usize = r
        .stderr
        .split("resumed from step ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("did not resume:\n{}", r.stderr));
    assert!(
        (10..400).contains(&from) && from.is_multiple_of(10),
        "{from}"
    );
    // metrics hold each step exactly once
    let run_dir = ckpt.parent().unwrap().parent().unwrap();
    let steps: Vec<u64> = std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, (1..=400).collect::<Vec<_>>());
    assert!(run_dir.join("loss.png").is_file());

    let r = run(&mut train("straight"));
    assert!(r.ok, "{}", r.stderr);
    let a = std::fs::read(store.join("models/resumed/model.safetensors")).unwrap();
    let b = std::fs::read(store.join("models/straight/model.safetensors")).unwrap();
    assert!(a == b, "resumed weights differ from an uninterrupted run");
}

/// A dataset, tokenizer and token shards from the general fixtures, made through the CLI.
fn prepare_tokens(store: &std::path::Path) {
    for args in [
        vec![
            "acquire",
            "--name",
            "raw",
            "--input",
            "fixtures/quick/general",
        ],
        vec!["preprocess", "--input", "raw", "--output", "general"],
        vec![
            "tokenize",
            "train",
            "--name",
            "bpe",
            "--dataset",
            "general",
            "--vocab-size",
            "300",
        ],
        vec![
            "tokenize",
            "encode",
            "--name",
            "toks",
            "--dataset",
            "general",
            "--tokenizer",
            "bpe",
        ],
    ] {
        let r = run(strata(store).args(&args));
        assert!(r.ok, "{args:?}: {}", r.stderr);
    }
}
