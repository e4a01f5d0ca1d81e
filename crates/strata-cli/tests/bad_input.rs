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

/// One folder with every kind of malformed input the data steps meet: each bad record is quarantined with its
/// file, line and reason, the empty file and the cut-off zstd stream are reported, the huge single-line
/// document is read and then removed by the quality filter, and every good document comes through.
#[test]
fn malformed_inputs_are_quarantined_or_reported_and_good_documents_kept() {
    use std::io::Write;
    let dir = fresh_dir("bad-malformed");
    let raw = dir.join("raw");
    std::fs::create_dir_all(&raw).unwrap();
    let good = |i: usize| {
        format!(
            "{{\"text\": \"good document {i}: the kidney and the liver are of normal size, with no lesion seen.\"}}\n"
        )
    };
    std::fs::write(raw.join("a-good.jsonl"), good(1) + &good(2)).unwrap();
    let mut mixed = good(3).into_bytes();
    mixed.extend_from_slice(b"{\"text\": \"broken\n");
    mixed.extend_from_slice(b"{\"text\": \"bad byte \xff here\"}\n");
    mixed.extend_from_slice(b"{\"body\": \"no text field\"}\n");
    mixed.extend_from_slice(good(4).as_bytes());
    std::fs::write(raw.join("b-mixed.jsonl"), mixed).unwrap();
    std::fs::write(raw.join("c-empty.jsonl"), b"").unwrap();
    let mut z = zstd::Encoder::new(Vec::new(), 3).unwrap();
    for i in 5..8 {
        z.write_all(good(i).as_bytes()).unwrap();
    }
    let z = z.finish().unwrap();
    std::fs::write(raw.join("d-cut.jsonl.zst"), &z[..z.len() - 12]).unwrap();
    // 16 MB on one line (a 100 MB line was checked by hand with the release binary)
    let huge = "word ".repeat(16 << 20 >> 2);
    std::fs::write(
        raw.join("e-huge.jsonl"),
        format!("{{\"text\": \"{huge}\"}}\n"),
    )
    .unwrap();

    let store = dir.join("store");
    let r = run(strata(&store)
        .args(["acquire", "--name", "raw", "--input"])
        .arg(&raw));
    assert!(r.ok, "{}", r.stderr);
    let q =
        std::fs::read_to_string(store.join("datasets/raw/quarantine/quarantine.jsonl")).unwrap();
    let recs: Vec<serde_json::Value> = q
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let at = |file: &str, line: u64| {
        recs.iter()
            .find(|r| r["source"].as_str().unwrap().ends_with(file) && r["line"] == line)
            .unwrap_or_else(|| panic!("no quarantine record for {file}:{line} in {q}"))["reason"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(at("b-mixed.jsonl", 2).starts_with("not JSON"), "{q}");
    assert!(at("b-mixed.jsonl", 3).contains("UTF-8"), "{q}");
    assert!(at("b-mixed.jsonl", 4).contains("text"), "{q}");
    assert!(
        recs.iter()
            .any(|r| r["source"].as_str().unwrap().ends_with("d-cut.jsonl.zst")),
        "the cut-off zstd stream is not reported: {q}"
    );
    let docs: Vec<strata_data::Doc> = strata_data::io::read_dataset(&store.join("datasets/raw"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut good_ids: Vec<usize> = docs
        .iter()
        .filter_map(|d| d.text.strip_prefix("good document "))
        .map(|t| t[..1].parse().unwrap())
        .collect();
    good_ids.sort_unstable();
    // the zstd stream's complete lines before the cut survive; everything else good is kept
    assert!(good_ids.starts_with(&[1, 2, 3, 4]), "{good_ids:?}");
    assert!(docs.iter().any(|d| d.text.len() == huge.len()));

    let r = run(strata(&store).args([
        "preprocess",
        "--input",
        "raw",
        "--output",
        "clean",
        "--gopher",
    ]));
    assert!(r.ok, "{}", r.stderr);
    let stats = common::dataset_stats(&store, "clean");
    let gopher = common::stage_stats(&stats, "gopher_quality");
    assert_eq!(gopher["removed"]["gopher_long_doc"], 1, "{stats}");
}

/// Parquet written by pyarrow (snappy, row groups, large_string) and CSV written by Python's csv module:
/// every record with text comes through with its columns, every null text is quarantined with its row.
#[test]
fn parquet_and_csv_written_by_python_are_acquired_exactly() {
    let dir = fresh_dir("python-tables");
    let raw = dir.join("raw");
    std::fs::create_dir_all(&raw).unwrap();
    common::python_check("write_tables.py", &[raw.as_os_str()]);
    let expected: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(raw.join("expected.json")).unwrap()).unwrap();
    for (file, name) in [("train.parquet", "pq"), ("train.csv", "csv")] {
        let store = dir.join(name);
        let r = run(strata(&store)
            .args(["acquire", "--name", "raw", "--input"])
            .arg(raw.join(file)));
        assert!(r.ok, "{}", r.stderr);
        let docs: Vec<strata_data::Doc> =
            strata_data::io::read_dataset(&store.join("datasets/raw"))
                .unwrap()
                .map(Result::unwrap)
                .collect();
        assert_eq!(docs.len(), expected.len(), "{file}");
        for (d, e) in docs.iter().zip(&expected) {
            assert_eq!(d.text, e["text"].as_str().unwrap(), "{file}");
            assert_eq!(d.meta["ward"], e["ward"], "{file}");
            if name == "pq" {
                assert_eq!(d.meta["source_id"], e["id"]);
                assert_eq!(d.meta["score"], e["score"]);
                assert_eq!(d.meta["ok"], e["ok"]);
            } else {
                assert_eq!(d.meta["source_id"], e["id"].to_string());
            }
        }
        let q = std::fs::read_to_string(store.join("datasets/raw/quarantine/quarantine.jsonl"))
            .unwrap();
        assert_eq!(q.lines().count(), 5, "{file}: {q}");
    }
}

/// `acquire --phase read --task I/N` then `--phase publish`: the same documents and quarantine as one
/// process; publishing before every task has finished names the missing task.
#[test]
fn acquire_as_tasks_matches_one_process() {
    let dir = fresh_dir("acquire-tasks");
    let raw = dir.join("raw");
    std::fs::create_dir_all(&raw).unwrap();
    for f in 0..5 {
        let mut body = (0..30)
            .map(|i| format!("{{\"text\": \"file {f} document {i}\"}}"))
            .collect::<Vec<_>>()
            .join("\n");
        body.push('\n');
        body.push_str("{\"text\": broken\n");
        std::fs::write(raw.join(format!("part-{f}.jsonl")), body).unwrap();
    }
    let (phased, single) = (dir.join("phased"), dir.join("single"));
    let acquire = |store: &std::path::Path, extra: &[&str]| {
        run(strata(store)
            .args([
                "acquire",
                "--name",
                "raw",
                "--docs-per-shard",
                "40",
                "--input",
            ])
            .arg(&raw)
            .args(extra))
    };
    assert!(acquire(&phased, &["--phase", "read", "--task", "1/2"]).ok);
    let r = acquire(&phased, &["--phase", "publish"]);
    assert!(
        !r.ok && r.stderr.contains("task 0/2 has not finished"),
        "{}",
        r.stderr
    );
    assert!(acquire(&phased, &["--phase", "read", "--task", "0/2"]).ok);
    let again = acquire(&phased, &["--phase", "read", "--task", "0/2"]);
    assert!(
        again.stdout.contains("\"skipped\":true"),
        "{}",
        again.stdout
    );
    let r = acquire(&phased, &["--phase", "publish"]);
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("150 documents from 5 files, 5 quarantined"),
        "{}",
        r.stdout
    );
    assert!(acquire(&single, &[]).ok);
    let docs = |s: &std::path::Path| -> Vec<strata_data::Doc> {
        strata_data::io::read_dataset(&s.join("datasets/raw"))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(docs(&phased), docs(&single));
    let q = |s: &std::path::Path| {
        std::fs::read_to_string(s.join("datasets/raw/quarantine/quarantine.jsonl")).unwrap()
    };
    assert_eq!(q(&phased), q(&single));
}

/// Started by an MPI launcher (its environment says 2 ranks) without the `mpi` feature: refused before
/// anything is read or written, rather than two processes each running the whole job on one store.
#[cfg(not(feature = "mpi"))]
#[test]
fn an_mpi_launch_of_a_build_without_mpi_is_refused() {
    let dir = fresh_dir("bad-mpi");
    let store = dir.join("store");
    let launched = |args: &str, var: &str, size: &str| {
        let mut c = strata(&store);
        c.args(args.split(' ')).env(var, size);
        run(&mut c)
    };
    let train = "train --name m --tokens toks --tokenizer bpe";
    let r = launched(train, "OMPI_COMM_WORLD_SIZE", "2");
    assert!(!r.ok);
    assert!(
        r.stderr.contains("built without MPI") && r.stderr.contains("--features mpi"),
        "{}",
        r.stderr
    );
    assert!(!store.exists(), "nothing written");
    // PMI's variable (MPICH, srun) too, for a command that does not train
    let r = launched(
        "tokenize encode --name x --dataset d --tokenizer t",
        "PMI_SIZE",
        "4",
    );
    assert!(!r.ok);
    assert!(
        r.stderr.contains("started as 4 ranks (PMI_SIZE=4)"),
        "{}",
        r.stderr
    );
    // one rank is one process
    let r = launched(train, "OMPI_COMM_WORLD_SIZE", "1");
    assert!(!r.ok);
    assert!(!r.stderr.contains("MPI"), "{}", r.stderr);
}
