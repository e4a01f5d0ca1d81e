//! Bad input gets a clear error naming the file and what was wrong, and never a panic
//! (`common::run` fails the test if stderr shows one).

#![allow(clippy::unwrap_used)]

mod common;

use common::{fresh_dir, run, strata};

#[test]
fn missing_input_path_is_named() {
    let dir = fresh_dir("bad-missing");
    let r = run(strata(&dir).args(["acquire", "--name", "x", "--input", "/no/such/corpus"]));
    assert!(!r.ok);
    assert!(
        r.stderr
            .contains("input path /no/such/corpus does not exist"),
        "{}",
        r.stderr
    );
}

#[test]
fn broken_jsonl_line_is_quarantined_counted_and_the_run_continues() {
    let dir = fresh_dir("bad-jsonl");
    let input = dir.join("in.jsonl");
    std::fs::write(&input, "{\"text\": \"first good document\"}\n{\"text\": \"unterminated\n{\"text\": \"second good document\"}\n").unwrap();
    let r = run(strata(&dir.join("store"))
        .args(["acquire", "--name", "notes", "--input"])
        .arg(&input));
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stdout.contains("2 documents from 1 files, 1 quarantined"),
        "{}",
        r.stdout
    );
    let q = std::fs::read_to_string(dir.join("store/datasets/notes/quarantine/quarantine.jsonl"))
        .unwrap();
    let rec: serde_json::Value = serde_json::from_str(q.lines().next().unwrap()).unwrap();
    assert_eq!(rec["line"], 2);
    assert!(rec["source"].as_str().unwrap().ends_with("in.jsonl"));
    assert!(
        rec["reason"].as_str().unwrap().starts_with("not JSON"),
        "{rec}"
    );
    // the stderr log names file and line too
    assert!(r.stderr.contains("in.jsonl:2"), "{}", r.stderr);
}

#[test]
fn pipeline_with_unknown_key_names_file_key_and_line() {
    let dir = fresh_dir("bad-config");
    let file = dir.join("p.toml");
    std::fs::write(&file, "[[step]]\ntype = \"acquire\"\nname = \"x\"\ninputs = [\"fixtures/quick/general\"]\nmin_chars = 5\n").unwrap();
    let r = run(strata(&dir.join("store"))
        .arg("pipeline")
        .arg("run")
        .arg(&file));
    assert!(!r.ok);
    assert!(
        r.stderr.contains("p.toml")
            && r.stderr.contains("min_chars")
            && r.stderr.contains("line 5"),
        "{}",
        r.stderr
    );

    let train_cfg = dir.join("train.toml");
    std::fs::write(
        &train_cfg,
        "[train]\nsteps = 1\nbatch_size = 1\nseq_len = 8\nlearning_rate = 0.1\n",
    )
    .unwrap();
    let r = run(strata(&dir.join("store"))
        .args([
            "train",
            "--name",
            "m",
            "--tokens",
            "t",
            "--tokenizer",
            "k",
            "--config",
        ])
        .arg(&train_cfg));
    assert!(!r.ok);
    assert!(
        r.stderr.contains("train.toml") && r.stderr.contains("learning_rate"),
        "{}",
        r.stderr
    );
}

#[test]
fn unknown_model_and_artifacts_are_named_with_what_exists() {
    let dir = fresh_dir("bad-model");
    let r = run(strata(&dir).args(["generate", "--model", "nope", "--prompt", "hi"]));
    assert!(!r.ok);
    assert!(
        r.stderr.contains("no model named \"nope\"") && r.stderr.contains("known: none"),
        "{}",
        r.stderr
    );
    let r = run(strata(&dir).args([
        "finetune", "--name", "m", "--parent", "base", "--tokens", "t",
    ]));
    assert!(!r.ok);
    assert!(r.stderr.contains("no tokens named \"t\""), "{}", r.stderr);
    let r = run(strata(&dir).args(["eval", "--model", "ghost", "--dataset", "d"]));
    assert!(
        !r.ok && r.stderr.contains("no model named \"ghost\""),
        "{}",
        r.stderr
    );
}

#[test]
fn corrupt_model_weights_are_named() {
    let dir = fresh_dir("bad-weights");
    let store = strata_store::Store::open(&dir).unwrap();
    let staging = store.staging(strata_store::Kind::Model, "broken").unwrap();
    std::fs::write(staging.join("config.json"), r#"{"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 8}"#).unwrap();
    std::fs::write(
        staging.join("model.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":",
    )
    .unwrap();
    store
        .publish(
            &staging,
            strata_store::Manifest::new(strata_store::Kind::Model, "broken", "test"),
        )
        .unwrap();
    let r = run(strata(&dir).args(["generate", "--model", "broken", "--prompt", "hi"]));
    assert!(!r.ok);
    assert!(r.stderr.contains("model.safetensors"), "{}", r.stderr);
}

#[test]
fn ultrasound_report_generator_tests_pass() {
    // The generator is Python (stdlib only) so the fetch script needs no build; its tests run here.
    let out = std::process::Command::new("python3")
        .arg(common::repo_root().join("scripts/test_ultrasound_reports.py"))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
