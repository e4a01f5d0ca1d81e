//! De-identification of free prose (issue 12): the seeded labelled notes of tests/python/make_deid_notes.py
//! (English and Chinese, identifiers in prose, decoys beside them) scored by `strata deid eval` with the lexicon
//! built from registry packages; `strata preprocess --pii surrogate` end to end; bad labelled input.

#![allow(clippy::unwrap_used)]

mod common;

use common::{deid_lexicon, fresh_dir, repo_root, run, strata};
use strata_data::preprocess::{shift_date, Surrogates};

fn notes(dir: &std::path::Path, count: usize, seed: u64) -> std::path::PathBuf {
    let out = dir.join(format!("notes-{seed}.jsonl"));
    let st = std::process::Command::new("python3")
        .arg(repo_root().join("tests/python/make_deid_notes.py"))
        .arg(deid_lexicon())
        .arg(&out)
        .args(["--notes", &count.to_string(), "--seed", &seed.to_string()])
        .status()
        .expect("python3");
    assert!(st.success());
    out
}

#[test]
fn recall_of_every_type_and_every_decoy_kept_on_600_labelled_notes() {
    let dir = fresh_dir("deid-eval");
    let path = notes(&dir, 600, 12);
    let text = std::fs::read_to_string(&path).unwrap();
    let langs: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["lang"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let zh = langs.iter().filter(|l| *l == "zh").count();
    assert!(
        langs.len() >= 500 && zh >= 150 && langs.len() - zh >= 300,
        "{zh} of {}",
        langs.len()
    );
    let r = run(strata(&dir)
        .args(["deid", "eval", "--json", "--lexicon"])
        .arg(deid_lexicon())
        .arg(&path));
    assert!(r.ok, "{}", r.stderr);
    let rep: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let types = rep["recall"].as_object().unwrap();
    for want in ["NAME", "LOCATION", "DATE", "AGE", "PHONE", "EMAIL", "MRN"] {
        let t = &types[want];
        let (total, hit) = (t["total"].as_f64().unwrap(), t["hit"].as_f64().unwrap());
        assert!(total >= 100.0, "{want}: only {total} labelled");
        assert!(
            hit / total >= 0.98,
            "{want}: recall {hit}/{total}; missed {}",
            rep["missed"]
        );
    }
    for (kind, t) in rep["decoys_kept"].as_object().unwrap() {
        assert_eq!(t["hit"], t["total"], "decoys {kind} lost: {}", rep["lost"]);
    }
    assert!(rep["decoys_kept"]["eponym"]["total"].as_u64().unwrap() >= 300);
}

#[test]
fn surrogates_through_preprocess_replace_every_identifier_consistently() {
    let dir = fresh_dir("deid-surrogate");
    let path = notes(&dir, 60, 5);
    let labelled: Vec<serde_json::Value> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let store = dir.join("store");
    let r = run(strata(&store)
        .args(["acquire", "--name", "raw", "--input"])
        .arg(&path));
    assert!(r.ok, "{}", r.stderr);
    let r = run(strata(&store)
        .args([
            "preprocess",
            "--input",
            "raw",
            "--output",
            "clean",
            "--pii",
            "surrogate",
            "--pii-lexicon",
        ])
        .arg(deid_lexicon()));
    assert!(r.ok, "{}", r.stderr);
    // a stats line per type
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("pii_redact: "))
        .unwrap_or_else(|| panic!("{}", r.stdout));
    for kind in ["name", "date", "location"] {
        assert!(line.contains(kind), "{line}");
    }
    let docs: Vec<strata_data::Doc> = strata_data::io::read_dataset(&store.join("datasets/clean"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(docs.len(), labelled.len());
    let mut checked = 0;
    for (doc, note) in docs.iter().zip(&labelled) {
        assert_eq!(doc.meta["lang"], note["lang"]);
        // the document's one date offset, from its id as the stage seeds it
        let shift = Surrogates::new(&doc.id, None).shift_days();
        for s in note["spans"].as_array().unwrap() {
            let t = s["text"].as_str().unwrap();
            if s["type"] == "DATE" {
                // every date is there moved by the offset (a moved date may equal another original one, so
                // "the original is gone" is not the test)
                let moved = shift_date(t, shift).unwrap_or_else(|| panic!("{t:?} is not a date"));
                assert!(
                    doc.text.contains(&moved),
                    "{t:?} + {shift} days = {moved:?} not in {}",
                    doc.text
                );
                checked += 1;
            } else if t.chars().count() >= 4 && s["type"] != "AGE" {
                // a short given name may come back by chance inside another word; whole identifiers must not.
                // An age over 89 becomes 90 (HIPAA's "90 or older"), so an age of 90 stays 90.
                assert!(!doc.text.contains(t), "{t:?} survived in {}", doc.text);
                checked += 1;
            }
        }
        for d in note["decoys"].as_array().unwrap() {
            let t = d["text"].as_str().unwrap();
            assert!(doc.text.contains(t), "decoy {t:?} lost in {}", doc.text);
        }
        assert!(
            !doc.text.contains("<NAME>") && !doc.text.contains("<DATE>"),
            "{}",
            doc.text
        );
    }
    assert!(checked > 300, "{checked}");
}

#[test]
fn labelled_notes_with_bad_offsets_are_refused_by_file_and_line() {
    let dir = fresh_dir("deid-bad");
    let path = dir.join("bad.jsonl");
    std::fs::write(
        &path,
        "{\"text\": \"Seen by Dr. Ferreira.\", \"spans\": [{\"start\": 12, \"end\": 20, \"type\": \"NAME\"}]}\n\
         {\"text\": \"short\", \"spans\": [{\"start\": 2, \"end\": 40, \"type\": \"NAME\"}]}\n",
    )
    .unwrap();
    let r = run(strata(&dir)
        .args(["deid", "eval", "--lexicon"])
        .arg(deid_lexicon())
        .arg(&path));
    assert!(!r.ok);
    assert!(
        r.stderr.contains("bad.jsonl:2") && r.stderr.contains("outside"),
        "{}",
        r.stderr
    );
    // no store is created for de-identification
    let nowhere = dir.join("no-store");
    let r = run(strata(&nowhere)
        .args(["deid", "eval", "--lexicon", "/nonexistent"])
        .arg(&path));
    assert!(!nowhere.exists());
    assert!(
        !r.ok && r.stderr.contains("fetch-data.sh --lexicon"),
        "{}",
        r.stderr
    );
}
