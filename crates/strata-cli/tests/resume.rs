//! `kill -9` during `strata train` on a mixture of two token artifacts with gradient accumulation, then the
//! same command, stopped this time by SIGTERM (it writes a checkpoint and says so), then the same command
//! again: it resumes each time from the last checkpoint, and the result is the model an uninterrupted run
//! makes, bit for bit (windows depend only on seed and row; weights and AdamW moments are restored exactly).

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
         [train]\nsteps = 1500\nbatch_size = 4\nseq_len = 16\nlr = 0.003\nmin_lr = 0.0003\nwarmup_steps = 5\neval_every = 100\ncheckpoint_every = 10\n",
    )
    .unwrap();
    let train = |name: &str| {
        let mut c = strata(&store);
        c.args([
            "train",
            "--name",
            name,
            "--tokens",
            "toks=0.7",
            "--tokens",
            "med=0.3",
            "--grad-accum",
            "2",
            "--keep-checkpoints",
            "2",
            "--tokenizer",
            "bpe",
            "--config",
        ])
        .arg(&cfg);
        c
    };

    let ckpt = kill_9_at_first_checkpoint(train("resumed"), &store);

    // the same command, stopped by SIGTERM once it has resumed: it checkpoints the step it finished
    sigterm_after_resuming(train("resumed"), &ckpt);

    let r = run(&mut train("resumed"));
    assert!(r.ok, "{}", r.stderr);
    let from: usize = r
        .stderr
        .split("resumed from step ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("did not resume:\n{}", r.stderr));
    // SIGTERM checkpointed the step it had finished, wherever that was
    assert!((10..1500).contains(&from), "{from}");
    check_finished_run(ckpt.parent().unwrap(), &ckpt);

    let r = run(&mut train("straight"));
    assert!(r.ok, "{}", r.stderr);
    let a = std::fs::read(store.join("models/resumed/model.safetensors")).unwrap();
    let b = std::fs::read(store.join("models/straight/model.safetensors")).unwrap();
    assert!(a == b, "resumed weights differ from an uninterrupted run");
}

/// Starts `train`, kills it (SIGKILL) once its first checkpoint is written; the checkpoint folder.
fn kill_9_at_first_checkpoint(
    mut train: std::process::Command,
    store: &std::path::Path,
) -> std::path::PathBuf {
    let mut child = train
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let ckpt = loop {
        let found = std::fs::read_dir(store.join("runs")).ok().and_then(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path().join("checkpoints"))
                .find(|p| checkpoints(p) > 0)
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
    assert!(checkpoints(&ckpt) > 0);
    assert!(
        !store.join("models/resumed").exists(),
        "killed run must not publish a model"
    );

    ckpt
}

/// Starts `train` again, sends SIGTERM once it has written a checkpoint past the one it resumed from: it
/// stops with a checkpoint and says how to resume.
fn sigterm_after_resuming(mut train: std::process::Command, ckpt: &std::path::Path) {
    let mut child = train
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let killed_at = newest(ckpt);
    let t0 = Instant::now();
    while newest(ckpt) <= killed_at {
        assert!(
            t0.elapsed() < Duration::from_secs(100),
            "no new checkpoint after resuming"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "training finished before SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("interrupted after step") && err.contains("resume"),
        "{err}"
    );
    assert!(
        checkpoints(ckpt) <= 2,
        "more checkpoints than --keep-checkpoints"
    );
}

/// A published run's metrics hold each of its 1,500 steps once, its loss curve is drawn, its checkpoints
/// are gone, and the mixture's shares ended within 2% of their weights.
fn check_finished_run(run_dir: &std::path::Path, ckpt: &std::path::Path) {
    // metrics hold each step exactly once
    let steps: Vec<u64> = std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, (1..=1500).collect::<Vec<_>>());
    assert!(run_dir.join("loss.png").is_file());
    assert_eq!(
        checkpoints(ckpt),
        0,
        "checkpoints are removed once the model is published"
    );
    // each component's share of tokens, in the metrics: within 2% of its weight by the end
    let last: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(run_dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    let share = last["mixture"]["med"]["share"].as_f64().unwrap();
    assert!((share - 0.3).abs() < 0.02, "{last}");
    assert_eq!(last["tokens_seen"].as_u64(), Some(1500 * 2 * 4 * 16));
}

/// The step of the newest checkpoint in `dir` (0 if none).
fn newest(dir: &std::path::Path) -> usize {
    common::checkpoint_steps(dir).into_iter().max().unwrap_or(0)
}

fn checkpoints(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |rd| {
        rd.filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("checkpoint-"))
            .count()
    })
}

/// Datasets, a tokenizer and two token artifacts (general, medical) from the fixtures, made through the CLI.
fn prepare_tokens(store: &std::path::Path) {
    for args in [
        vec![
            "acquire",
            "--name",
            "med-raw",
            "--input",
            "fixtures/quick/medical",
        ],
        vec!["preprocess", "--input", "med-raw", "--output", "medical"],
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
        vec![
            "tokenize",
            "encode",
            "--name",
            "med",
            "--dataset",
            "medical",
            "--tokenizer",
            "bpe",
        ],
    ] {
        let r = run(strata(store).args(&args));
        assert!(r.ok, "{args:?}: {}", r.stderr);
    }
}
