//! `strata preprocess --gopher --minhash` through the binary: each stage's removals counted by reason in
//! stats.json, the kept documents exactly the ones expected.

#![allow(clippy::unwrap_used)]

mod common;

use common::{
    acquire_raw, dataset_docs, dataset_files, dataset_stats, fresh_dir, run, stage_stats, strata,
};

/// Writes a jsonl file of `{"text": …}` records.
fn write_texts<T: AsRef<str>>(path: &std::path::Path, texts: impl IntoIterator<Item = T>) {
    let lines: Vec<String> = texts
        .into_iter()
        .map(|t| serde_json::json!({ "text": t.as_ref() }).to_string())
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// 80 words drawn at random (a fixed generator) from a clinical vocabulary: no repeated phrases.
fn prose(seed: u64) -> String {
    let words = [
        "the",
        "liver",
        "measures",
        "normal",
        "size",
        "and",
        "spleen",
        "is",
        "of",
        "uniform",
        "echotexture",
        "with",
        "no",
        "focal",
        "lesion",
        "seen",
        "in",
        "either",
        "organ",
        "today",
        "kidneys",
        "show",
        "good",
        "corticomedullary",
        "differentiation",
        "bladder",
        "wall",
        "smooth",
        "portal",
        "vein",
        "flow",
        "hepatopetal",
        "gallbladder",
        "contains",
        "small",
        "stones",
        "without",
        "thickening",
        "pancreas",
        "obscured",
        "by",
        "bowel",
        "gas",
        "aorta",
        "calibre",
        "free",
        "fluid",
        "pelvis",
        "right",
        "left",
        "upper",
        "quadrant",
        "tenderness",
        "on",
        "scanning",
        "that",
        "have",
    ];
    let mut x = seed;
    (0..80)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            words[usize::try_from(x >> 33).unwrap() % words.len()]
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn gopher_and_minhash_stages_count_removals_by_reason() {
    let dir = fresh_dir("preprocess-gopher");
    let input = dir.join("in.jsonl");
    let good_a = format!("Report one. {}", prose(1));
    let good_b = format!("Report two. {}", prose(2));
    // good_a with one word changed: a near duplicate
    let near_a = good_a.replacen("spleen", "pancreas", 1);
    let short = "Too short to be a document.".to_string();
    // good prose by the quality rules, but the same line ten times
    let repetitive = "The results of the scan are normal and the report is final.\n".repeat(10);
    let docs = [&good_a, &good_b, &near_a, &short, &repetitive];
    write_texts(&input, docs);
    let store = dir.join("store");
    acquire_raw(&store, &input);
    let r = run(strata(&store).args([
        "preprocess",
        "--input",
        "raw",
        "--output",
        "clean",
        "--min-chars",
        "10",
        "--gopher",
        "--minhash",
    ]));
    assert!(r.ok, "{}", r.stderr);
    let stats = dataset_stats(&store, "clean");
    assert_eq!(stats["input"], 5);
    assert_eq!(stats["kept"], 2, "{stats}");
    let stage = |name: &str| stage_stats(&stats, name);
    assert_eq!(
        stage("gopher_quality")["removed"]["gopher_short_doc"],
        1,
        "{stats}"
    );
    assert_eq!(
        stage("gopher_repetition")["removed"]["dup_line_frac"],
        1,
        "{stats}"
    );
    assert_eq!(
        stage("minhash_dedup")["removed"]["near_duplicate"],
        1,
        "{stats}"
    );
}

#[test]
fn pii_flag_redacts_and_counts_in_metadata() {
    let dir = fresh_dir("preprocess-pii");
    let input = dir.join("in.jsonl");
    let note =
        "Patient: Mary Garcia\nMRN: MR4455667\nPhone: (415) 555-0134\nGive 500 mg every 8 hours.";
    std::fs::write(
        &input,
        serde_json::json!({ "text": note }).to_string() + "\n",
    )
    .unwrap();
    let store = dir.join("store");
    acquire_raw(&store, &input);
    // no lexicon at the default path (the test's working directory has none): the privacy stage refuses to
    // run degraded, names the command that builds the lexicon and the explicit rule-only mode, publishes nothing
    let pii = ["preprocess", "--input", "raw", "--output", "clean", "--pii"];
    let r = run(strata(&store).current_dir(&dir).args(pii));
    assert!(!r.ok, "ran without its lexicon: {}", r.stdout);
    assert!(
        r.stderr.contains("scripts/fetch-data.sh --lexicon")
            && r.stderr.contains("--pii-lexicon none"),
        "{}",
        r.stderr
    );
    assert!(!store.join("datasets/clean").exists());
    // a lexicon path that does not exist is named
    let r = run(strata(&store)
        .args(pii)
        .args(["--pii-lexicon", "no/such/lexicon"]));
    assert!(
        !r.ok && r.stderr.contains("no/such/lexicon"),
        "{}",
        r.stderr
    );
    // the rule-only mode, chosen explicitly, runs and is recorded in the dataset's manifest
    let r = run(strata(&store).args(pii).args(["--pii-lexicon", "none"]));
    assert!(r.ok, "{}", r.stderr);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("datasets/clean/manifest.json")).unwrap())
            .unwrap();
    let text = manifest.to_string();
    assert!(text.contains("\"rules_only\":true"), "{text}");
    let docs = dataset_docs(&store, "clean");
    assert_eq!(docs.len(), 1);
    assert_eq!(
        docs[0].text,
        "Patient: <NAME>\nMRN: <MRN>\nPhone: <PHONE>\nGive 500 mg every 8 hours."
    );
    assert_eq!(
        docs[0].meta["pii"],
        serde_json::json!({"mrn": 1, "name": 1, "phone": 1})
    );
}

#[test]
fn languages_flag_keeps_english_and_chinese_and_labels_them() {
    let dir = fresh_dir("preprocess-lang");
    let input = dir.join("in.jsonl");
    let texts = [
        "The liver is normal in size and echotexture, and no focal lesion is seen in either lobe.",
        "肝脏大小正常，实质回声均匀，未见明显占位性病变，胆囊壁光滑。",
        "Die Leber ist normal groß und zeigt eine homogene Echostruktur ohne fokale Läsionen.",
    ];
    write_texts(&input, texts);
    let store = dir.join("store");
    acquire_raw(&store, &input);
    let r = run(strata(&store).args([
        "preprocess",
        "--input",
        "raw",
        "--output",
        "clean",
        "--languages",
        "eng,cmn",
        "--min-chars",
        "10",
    ]));
    assert!(r.ok, "{}", r.stderr);
    let docs = dataset_docs(&store, "clean");
    let langs: Vec<&str> = docs
        .iter()
        .map(|d| d.meta["language"].as_str().unwrap())
        .collect();
    assert_eq!(langs, vec!["eng", "cmn"]);
    // the German report is counted under its reason
    let stats = dataset_stats(&store, "clean");
    assert!(stats.to_string().contains("language_other"), "{stats}");
}

#[test]
fn kill_9_during_preprocess_then_the_same_command_gives_byte_identical_output() {
    let dir = fresh_dir("preprocess-kill");
    let input = dir.join("in.jsonl");
    // ~6 MB: long enough a run to be killed in the middle
    let mut lines = Vec::new();
    for i in 0..6000u64 {
        lines.push(
            serde_json::json!({ "text": format!("{} {}", prose(i), prose(i + 7)) }).to_string(),
        );
    }
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let args = [
        "preprocess",
        "--input",
        "raw",
        "--output",
        "clean",
        "--gopher",
        "--minhash",
        "--pii",
        "--pii-lexicon",
        "none",
    ];
    let (killed, whole) = (dir.join("killed"), dir.join("whole"));
    acquire_raw(&killed, &input);
    acquire_raw(&whole, &input);
    let mut child = strata(&killed)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // kill it once it is writing into its staging folder
    let t0 = std::time::Instant::now();
    loop {
        let staging = std::fs::read_dir(killed.join("datasets"))
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(".staging-clean")
            });
        if staging || t0.elapsed() > std::time::Duration::from_mins(1) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!killed.join("datasets/clean/manifest.json").exists() || t0.elapsed().as_secs() >= 60);
    let r = run(strata(&killed).args(args));
    assert!(r.ok, "{}", r.stderr);
    let r = run(strata(&whole).args(args));
    assert!(r.ok, "{}", r.stderr);
    let (a, b) = (
        dataset_files(&killed.join("datasets/clean")),
        dataset_files(&whole.join("datasets/clean")),
    );
    assert!(
        a.iter().any(|(n, _)| n.ends_with(".zst")),
        "{:?}",
        a.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
    assert_eq!(
        a, b,
        "the resumed run's files differ from an uninterrupted run's"
    );
    // no staging folder is left behind
    let leftovers: Vec<String> = std::fs::read_dir(killed.join("datasets"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// `--c4 --fineweb --eval-set`: a document that quotes an evaluation question is dropped as
/// `contaminated_<name>`, C4 drops the page with too few sentences and rewrites the kept one without its
/// menu line, FineWeb drops the page of short lines.
#[test]
fn c4_fineweb_and_decontamination_flags() {
    let dir = fresh_dir("preprocess-c4");
    let eval = dir.join("qa.jsonl");
    let question =
        "Does a daily low dose of aspirin reduce the risk of a first stroke in adults over sixty?";
    std::fs::write(
        &eval,
        format!(
            "{}\n",
            serde_json::json!({ "id": "q1", "question": question, "answer": "yes" })
        ),
    )
    .unwrap();
    // 80 words as 10 sentences of 8
    let sentences = |seed: u64| {
        let p = prose(seed);
        let words: Vec<&str> = p.split(' ').collect();
        words
            .chunks(8)
            .map(|c| c.join(" ") + ".")
            .collect::<Vec<_>>()
            .join(" ")
    };
    let page = format!("Home | About | Contact\n{}\n{}", sentences(1), sentences(2));
    let leaked = format!(
        "{}\nThe exam asked: {question} The answer was yes.",
        sentences(3)
    );
    let thin = "One sentence only, which C4 does not keep as a page.".to_string();
    let doses: Vec<String> = (1..=40)
        .map(|i| format!("Take {i} tablets daily."))
        .collect();
    let list = format!("{}\n{}", sentences(4), doses.join("\n"));
    let input = dir.join("in.jsonl");
    write_texts(&input, [&page, &leaked, &thin, &list]);
    let store = dir.join("store");
    acquire_raw(&store, &input);
    let r = run(strata(&store)
        .args([
            "preprocess",
            "--input",
            "raw",
            "--output",
            "clean",
            "--c4",
            "--fineweb",
        ])
        .arg("--eval-set")
        .arg(format!("qa={}", eval.display())));
    assert!(r.ok, "{}", r.stderr);
    let docs = dataset_docs(&store, "clean");
    assert_eq!(docs.len(), 1, "{docs:?}");
    assert!(docs[0].text.starts_with(&sentences(1)), "{}", docs[0].text);
    let stats = dataset_stats(&store, "clean");
    let removed = |stage: &str| &stage_stats(&stats, stage)["removed"];
    assert_eq!(removed("c4_quality")["too_few_sentences"], 1, "{stats}");
    assert_eq!(removed("fineweb_quality")["short_line_ratio"], 1, "{stats}");
    assert_eq!(removed("decontaminate")["contaminated_qa"], 1, "{stats}");
}

/// `--parquet`: every shard also as Parquet, which pyarrow reads back to the same documents.
#[test]
fn parquet_shards_read_back_by_pyarrow() {
    let dir = fresh_dir("preprocess-parquet");
    let input = dir.join("in.jsonl");
    let lines: Vec<String> = (0..25)
        .map(|i| {
            serde_json::json!({ "text": format!("Report {i}: {}", prose(i)), "ward": i % 3 })
                .to_string()
        })
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let store = dir.join("store");
    acquire_raw(&store, &input);
    let r = run(strata(&store).args([
        "preprocess",
        "--input",
        "raw",
        "--output",
        "clean",
        "--parquet",
    ]));
    assert!(r.ok, "{}", r.stderr);
    let ds = store.join("datasets/clean");
    let out = common::python_check("read_parquet.py", &[ds.as_os_str()]);
    let from_parquet: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let docs = dataset_docs(&store, "clean");
    assert_eq!(from_parquet.len(), docs.len());
    assert_eq!(docs.len(), 25);
    for (p, d) in from_parquet.iter().zip(&docs) {
        assert_eq!(p["id"], d.id.as_str());
        assert_eq!(p["text"], d.text.as_str());
        assert_eq!(p["meta"]["ward"], d.meta["ward"]);
    }
}

/// A corpus with planted near-duplicates (each a copy of an earlier document with a few words changed),
/// acquired in shards of 100 documents.
fn planted_corpus(store: &std::path::Path, dir: &std::path::Path, n: u64) {
    let input = dir.join("in.jsonl");
    let mut lines = Vec::new();
    for i in 0..n {
        let text = if i % 10 == 9 {
            format!("{} {}", prose(i - 5), prose(i - 4)).replacen("liver", "kidney", 2)
        } else {
            format!("{} {}", prose(i), prose(i + 1))
        };
        lines.push(serde_json::json!({ "text": text }).to_string());
    }
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let r = run(strata(store)
        .args([
            "acquire",
            "--name",
            "raw",
            "--docs-per-shard",
            "100",
            "--input",
        ])
        .arg(&input));
    assert!(r.ok, "{}", r.stderr);
}

/// The phases run by hand as separate processes, tasks in any order, give what `--tasks 3` gives, and
/// keep the same documents as the single-process run; a finished task is skipped on a rerun; a phase
/// started too early says which task it waits for.
#[test]
fn phased_tasks_match_one_process_and_skip_finished_tasks() {
    let dir = fresh_dir("preprocess-tasks");
    let (phased, all, single) = (dir.join("phased"), dir.join("all"), dir.join("single"));
    for s in [&phased, &all, &single] {
        planted_corpus(s, &dir, 700);
    }
    let base = [
        "preprocess",
        "--input",
        "raw",
        "--output",
        "clean",
        "--gopher",
        "--minhash",
    ];
    let phase = |phase: &str, task: Option<&str>| {
        let mut c = strata(&phased);
        c.args(base).args(["--phase", phase]);
        if let Some(t) = task {
            c.args(["--task", t]);
        }
        run(&mut c)
    };
    let r = phase("buckets", Some("0/2"));
    assert!(
        !r.ok && r.stderr.contains("phase filter must finish first"),
        "{}",
        r.stderr
    );
    for t in ["2/3", "0/3"] {
        assert!(phase("filter", Some(t)).ok);
    }
    let r = phase("cluster", None);
    assert!(
        !r.ok && r.stderr.contains("task 1/3 has not finished"),
        "{}",
        r.stderr
    );
    assert!(phase("filter", Some("1/3")).ok);
    let again = phase("filter", Some("1/3"));
    assert!(
        again.ok && again.stdout.contains("\"skipped\":true"),
        "{}",
        again.stdout
    );
    for (p, t) in [
        ("buckets", Some("1/2")),
        ("buckets", Some("0/2")),
        ("cluster", None),
    ] {
        let r = phase(p, t);
        assert!(r.ok, "{p}: {}", r.stderr);
    }
    for t in ["1/3", "2/3", "0/3"] {
        assert!(phase("write", Some(t)).ok);
    }
    let r = phase("publish", None);
    assert!(r.ok, "{}", r.stderr);

    let r = run(strata(&all).args(base).args(["--tasks", "3"]));
    assert!(r.ok, "{}", r.stderr);
    let r = run(strata(&single).args(base));
    assert!(r.ok, "{}", r.stderr);

    let stats = |s: &std::path::Path| dataset_stats(s, "clean");
    // the 70 planted copies are removed (one is an exact copy, 69 are near), in every mode
    for s in [&phased, &single] {
        assert_eq!(stats(s)["kept"], 630, "{}", stats(s));
    }
    // the phased run and `--tasks 3` wrote the same files; the documents equal the single-process run's
    let p_files = dataset_files(&phased.join("datasets/clean"));
    assert_eq!(p_files, dataset_files(&all.join("datasets/clean")));
    let docs = |s: &std::path::Path| dataset_docs(s, "clean");
    assert_eq!(docs(&phased), docs(&single));
    // the work folder is gone once published
    let work: Vec<_> = std::fs::read_dir(phased.join("work")).unwrap().collect();
    assert!(work.is_empty());
}

/// `kill -9` in the middle of `--tasks 4`, then the same command: finished tasks are skipped, the rest
/// redone, and the dataset's files are byte-identical to an uninterrupted run's.
#[test]
fn kill_9_during_a_task_run_then_the_same_command_gives_byte_identical_output() {
    let dir = fresh_dir("preprocess-tasks-kill");
    let (killed, whole) = (dir.join("killed"), dir.join("whole"));
    planted_corpus(&killed, &dir, 3000);
    planted_corpus(&whole, &dir, 3000);
    let args = [
        "preprocess",
        "--input",
        "raw",
        "--output",
        "clean",
        "--gopher",
        "--minhash",
        "--tasks",
        "4",
    ];
    let mut child = strata(&killed)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // kill it once the first filter task has finished
    let t0 = std::time::Instant::now();
    let done = |d: &std::path::Path| -> usize {
        std::fs::read_dir(d.join("work"))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|w| std::fs::read_dir(w.path().join("done")).ok())
            .flatten()
            .count()
    };
    while done(&killed) == 0 && t0.elapsed() < std::time::Duration::from_mins(1) {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(done(&killed) > 0, "no task finished within a minute");
    assert!(
        !killed.join("datasets/clean/manifest.json").exists(),
        "killed too late"
    );
    let r = run(strata(&killed).args(args));
    assert!(r.ok, "{}", r.stderr);
    let r = run(strata(&whole).args(args));
    assert!(r.ok, "{}", r.stderr);
    let a = dataset_files(&killed.join("datasets/clean"));
    assert!(a.iter().filter(|(n, _)| n.ends_with(".jsonl.zst")).count() >= 4);
    assert_eq!(a, dataset_files(&whole.join("datasets/clean")));
}

/// Parity with datatrove inside the suite: the synthetic filter corpus (tests/python/make_filter_corpus.py,
/// regenerated here and checked by hash) through Gopher quality → Gopher repetition, C4 quality, and FineWeb
/// quality, each stage's kept count and removals by reason equal to what datatrove 0.10.1 itself counted
/// (tests/data/filter-corpus.datatrove.json, made by tests/python/datatrove_counts.py). A changed threshold,
/// word split or rule order shows up here.
#[test]
fn filters_remove_what_datatrove_removes_on_the_filter_corpus() {
    use std::fmt::Write as _;
    let root = common::repo_root();
    let expected: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.join("tests/data/filter-corpus.datatrove.json")).unwrap(),
    )
    .unwrap();
    let dir = fresh_dir("preprocess-datatrove-parity");
    let corpus = dir.join("corpus.jsonl");
    common::python_check("make_filter_corpus.py", &[corpus.as_os_str()]);
    assert_eq!(
        strata_store::sha256_file(&corpus).unwrap(),
        expected["corpus"]["sha256"].as_str().unwrap(),
        "the generator no longer makes the corpus datatrove counted: rerun tests/python/datatrove_counts.py"
    );
    let store = dir.join("store");
    acquire_raw(&store, &corpus);
    let runs = expected["runs"].as_object().unwrap();
    let mut pipeline = String::new();
    for (name, stages) in runs {
        let list: Vec<String> = stages
            .as_array()
            .unwrap()
            .iter()
            .map(|s| format!("{{ type = \"{}\" }}", s["stage"].as_str().unwrap()))
            .collect();
        let _ = write!(
            pipeline,
            "[[step]]\ntype = \"preprocess\"\nname = \"{name}\"\ninput = \"raw\"\nstages = [{}]\n\n",
            list.join(", ")
        );
    }
    let cfg = dir.join("parity.toml");
    std::fs::write(&cfg, pipeline).unwrap();
    let r = run(strata(&store).args(["pipeline", "run"]).arg(&cfg));
    assert!(r.ok, "{}", r.stderr);
    let mut compared = 0;
    for (name, stages) in runs {
        let stats = dataset_stats(&store, name);
        for want in stages.as_array().unwrap() {
            let stage = want["stage"].as_str().unwrap();
            let got = stage_stats(&stats, stage);
            let got_removed: std::collections::BTreeMap<String, u64> = got["removed"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
                .filter(|(_, v)| *v > 0)
                .collect();
            let want_removed: std::collections::BTreeMap<String, u64> = want["removed"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
                .collect();
            assert_eq!(
                got_removed, want_removed,
                "{name}/{stage}: removals by reason"
            );
            assert_eq!(got["kept"], want["kept"], "{name}/{stage}: kept");
            compared += want_removed.len();
        }
    }
    // the corpus reaches most rules (the test is only as good as what it exercises)
    assert!(compared >= 20, "only {compared} reasons compared");
}

/// Strata's spaCy-rule tokenizer against spaCy itself (pinned in the test venv) on 400 seeded, varied lines:
/// URLs, e-mails, contractions, abbreviations, emoticons, numbers with units, hyphens, quotes, Chinese
/// (tests/python/spacy_tokens.py). Every line must split into the same tokens.
#[test]
fn spacy_rule_tokenizer_equals_spacy_on_varied_lines() {
    let dir = fresh_dir("spacy-parity");
    let out = dir.join("spacy.json");
    common::python_check("spacy_tokens.py", &[out.as_os_str()]);
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert!(rows.len() >= 300);
    let mut differ = Vec::new();
    for row in rows {
        let line = row["line"].as_str().unwrap();
        let want: Vec<&str> = row["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        let got = strata_data::preprocess::words::spacy_tokens(line);
        if got != want {
            differ.push(format!("{line:?}\n  spacy:  {want:?}\n  strata: {got:?}"));
        }
    }
    assert!(
        differ.is_empty(),
        "{} of {} lines split differently from spaCy {}:\n{}",
        differ.len(),
        rows.len(),
        v["spacy"],
        differ[..differ.len().min(8)].join("\n")
    );
}
