//! Images end to end: DICOM pixels against pydicom, DICOM de-identification against PS3.15 Table E.1-1 read
//! back by pydicom (and its dates against the text surrogates), bad input quarantined line by line, the
//! simulator through acquire → dedup → split by patient → leakage → contact sheet.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::{dataset_docs, fresh_dir, python_check, run, strata};

/// `strata domain ultrasound-images ARGS --out OUT`, which must succeed.
fn simulate(store: &Path, out: &Path, args: &[&str]) {
    let r = run(strata(store)
        .args(["domain", "ultrasound-images"])
        .args(args)
        .arg("--out")
        .arg(out));
    assert!(r.ok, "{}", r.stderr);
}

fn json_lines(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn records(store: &Path, name: &str) -> Vec<serde_json::Value> {
    json_lines(
        &std::fs::read_to_string(store.join("datasets").join(name).join("records.jsonl")).unwrap(),
    )
}

fn quarantine_reasons(store: &Path, name: &str) -> Vec<String> {
    let p = store
        .join("datasets")
        .join(name)
        .join("quarantine/quarantine.jsonl");
    json_lines(&std::fs::read_to_string(p).unwrap_or_default())
        .iter()
        .map(|r| r["reason"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn dicom_pixels_match_pydicom_for_every_supported_transfer_syntax() {
    let dir = fresh_dir("images-parity");
    let files = dir.join("dicom");
    python_check("dicom_parity.py", &["make".as_ref(), files.as_os_str()]);
    let store = dir.join("store");
    let glob = format!("{}/*.dcm", files.display());
    let r = run(strata(&store).args(["acquire", "--name", "parity", "--input", &glob]));
    assert!(r.ok, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("0 quarantined"), "{}", r.stdout);
    let out = python_check(
        "dicom_parity.py",
        &[
            "check".as_ref(),
            files.as_os_str(),
            store.join("datasets/parity").as_os_str(),
        ],
    );
    let results = json_lines(&out);
    assert!(results.len() >= 28, "{out}");
    let mut multi = 0;
    for r in &results {
        let f = r["file"].as_str().unwrap();
        assert_eq!(r["frames"], r["frames_expected"], "{f}: frames");
        let max = r["max_abs"].as_i64().unwrap_or_else(|| panic!("{f}: {r}"));
        if r["lossy"] == true {
            // JPEG: two IDCTs (jpeg-decoder here, libjpeg in Pillow under pydicom) differ by rounding only
            assert!(
                max <= 4 && r["mean_abs"].as_f64().unwrap() < 0.1,
                "{f}: {r}"
            );
        } else {
            assert_eq!(max, 0, "{f}: {r}");
        }
        if r["frames_expected"].as_i64().unwrap() > 1 {
            multi += 1;
        }
    }
    assert!(multi >= 4, "multi-frame files compared: {multi}");
    // every transfer syntax family is in the comparison
    for f in [
        "made_rle_s16_3frames.dcm",
        "made_jpeg_baseline_rgb.dcm",
        "made_bigendian_s16.dcm",
        "made_deflated_u8.dcm",
        "made_implicit_u16.dcm",
        "made_rgb_planar1.dcm",
        "MR_small_RLE.dcm",
        "examples_ybr_color.dcm",
    ] {
        assert!(results.iter().any(|r| r["file"] == f), "{f} not compared");
    }
    // cine loops: every k-th frame
    let r = run(strata(&store)
        .args([
            "acquire",
            "--name",
            "every2",
            "--frame-step",
            "2",
            "--input",
        ])
        .arg(files.join("made_cine_u8_5frames.dcm")));
    assert!(r.ok, "{}", r.stderr);
    let frames: Vec<i64> = records(&store, "every2")
        .iter()
        .map(|r| r["frame"].as_i64().unwrap())
        .collect();
    assert_eq!(frames, vec![0, 2, 4]);
}

#[test]
fn dicom_deid_follows_annex_e_and_moves_dates_by_the_patients_offset() {
    let dir = fresh_dir("images-deid");
    let table = common::repo_root().join("crates/strata-image/data/annex_e.tsv");
    let src = dir.join("phi");
    let out = dir.join("clean");
    let made = python_check(
        "dicom_deid_check.py",
        &["make".as_ref(), table.as_os_str(), src.as_os_str()],
    );
    assert!(made.contains("\"attributes\""), "{made}");
    let secret = "test-secret";
    let r = run(strata(&dir.join("store"))
        .args(["deid", "dicom"])
        .arg(&src)
        .arg(&out)
        .args(["--lexicon", "none"])
        .env("STRATA_DEID_SECRET", secret));
    assert!(r.ok, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("3 of 3 files de-identified"),
        "{}",
        r.stdout
    );
    let report: serde_json::Value = serde_json::from_str(
        python_check(
            "dicom_deid_check.py",
            &[
                "check".as_ref(),
                table.as_os_str(),
                src.as_os_str(),
                out.as_os_str(),
            ],
        )
        .trim(),
    )
    .unwrap();
    assert_eq!(report["files_read"], 3, "{report}");
    assert!(report["checked"].as_i64().unwrap() > 1500, "{report}");
    assert_eq!(report["violations"], serde_json::json!([]), "{report}");
    assert_eq!(report["private_left"], 0, "{report}");
    for f in ["a1.dcm", "a2.dcm", "b1.dcm"] {
        assert_eq!(report["band_max"][f], 0, "burned-in band of {f}: {report}");
        assert_eq!(report["identity_removed"][f], "YES");
        let d = report["descriptions"][f].as_str().unwrap();
        assert!(
            !d.contains("JANE") && !d.contains("RICHARD") && !d.contains("MRN"),
            "{d}"
        );
    }
    // the same study gets the same new UID across files; another study another
    let uids = &report["study_uids"];
    assert_eq!(uids["a1.dcm"], uids["a2.dcm"]);
    assert_ne!(uids["a1.dcm"], uids["b1.dcm"]);
    assert!(uids["a1.dcm"].as_str().unwrap().starts_with("2.25."));
    // dates move by the patient's offset, the one the text surrogates use for that patient
    let p1 = strata_deid::patient_shift_days(secret, "MRN1001");
    let p2 = strata_deid::patient_shift_days(secret, "MRN2002");
    assert_ne!(p1, p2);
    assert_eq!(report["offsets"]["a1.dcm"], p1, "{report}");
    assert_eq!(report["offsets"]["a2.dcm"], p1);
    assert_eq!(report["offsets"]["b1.dcm"], p2);
}

#[test]
fn a_note_moves_its_dates_as_its_patients_dicom_files_do() {
    let dir = fresh_dir("images-deid-note");
    let secret = "test-secret";
    let p1 = strata_deid::patient_shift_days(secret, "MRN1001");
    // a note of patient MRN1001 through `--pii surrogate` (its DICOM files moved by p1 days in the test above):
    // its date moves by the same days
    let store = dir.join("store");
    let notes = dir.join("notes.jsonl");
    std::fs::write(
        &notes,
        "{\"text\": \"Ultrasound of the liver was performed on 2024-01-15 and compared with the prior study.\", \"patient_id\": \"MRN1001\"}\n",
    )
    .unwrap();
    let r = run(strata(&store)
        .args(["acquire", "--name", "notes", "--input"])
        .arg(&notes));
    assert!(r.ok, "{}", r.stderr);
    let r = run(strata(&store)
        .args([
            "preprocess",
            "--input",
            "notes",
            "--output",
            "notes-clean",
            "--pii",
            "surrogate",
            "--pii-lexicon",
            "none",
        ])
        .env("STRATA_DEID_SECRET", secret));
    assert!(r.ok, "{}", r.stderr);
    let docs = dataset_docs(&store, "notes-clean");
    let moved = strata_deid::shift_date("2024-01-15", p1).unwrap();
    assert!(
        docs[0].text.contains(&moved),
        "{moved} not in {}",
        docs[0].text
    );
}

#[test]
fn burned_in_text_without_regions_is_refused_unless_rectangles_are_given() {
    let dir = fresh_dir("images-deid-noregion");
    let table = common::repo_root().join("crates/strata-image/data/annex_e.tsv");
    python_check(
        "dicom_deid_check.py",
        &[
            "make".as_ref(),
            table.as_os_str(),
            dir.join("phi").as_os_str(),
        ],
    );
    let store = dir.join("store");
    // burned-in text and no regions: refused (quarantined), unless the user names what to blank
    let noregion = dir.join("noregion");
    let r = run(strata(&store)
        .args(["deid", "dicom", "--lexicon", "none"])
        .arg(&noregion)
        .arg(dir.join("n-out")));
    assert!(
        r.ok && r.stdout.contains("0 of 1 files de-identified"),
        "{}",
        r.stdout
    );
    let q = std::fs::read_to_string(dir.join("n-out/quarantine.jsonl")).unwrap();
    assert!(
        q.contains("Burned In Annotation is YES") && q.lines().count() == 1,
        "{q}"
    );
    // an output folder with its quarantine file still acquires as images
    std::fs::copy(dir.join("phi/a1.dcm"), dir.join("n-out/a1.dcm")).unwrap();
    let r = run(strata(&store)
        .args(["acquire", "--name", "nout", "--input"])
        .arg(dir.join("n-out")));
    assert!(
        r.ok && r.stdout.contains("1 images from 1 files"),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    let r = run(strata(&store)
        .args(["deid", "dicom", "--lexicon", "none", "--blank", "0,0,63,9"])
        .arg(&noregion)
        .arg(dir.join("n-blank")));
    assert!(
        r.ok && r.stdout.contains("1 of 1 files de-identified"),
        "{}",
        r.stdout
    );
    let obj = strata_image::dicom::open(&dir.join("n-blank/n1.dcm")).unwrap();
    let info = strata_image::dicom::info(Path::new("n1"), &obj).unwrap();
    let frames = strata_image::dicom::frames(Path::new("n1"), &obj, &info, 1, 1 << 20).unwrap();
    let px = frames[0].1.luma8();
    assert!(px[..10 * 64].iter().all(|&v| v == 0) && px[10 * 64..].iter().any(|&v| v > 0));
}

#[test]
fn bad_image_input_is_quarantined_line_by_line_and_the_rest_kept() {
    let dir = fresh_dir("images-bad");
    let bad = dir.join("in");
    python_check("dicom_parity.py", &["bad".as_ref(), bad.as_os_str()]);
    // two good images from the simulator
    let sim = dir.join("sim");
    simulate(&dir.join("store"), &sim, &["--count", "2", "--size", "64"]);
    for f in ["us00000.png", "us00001.png"] {
        std::fs::copy(sim.join("images").join(f), bad.join(f)).unwrap();
    }
    std::fs::write(bad.join("notes.pdf"), b"%PDF-1.4 not an image").unwrap();
    std::fs::write(bad.join("fake.png"), b"hello").unwrap();
    std::fs::write(
        bad.join("labels.csv"),
        "file,label\nus00000.png,liver\nmissing.png,kidney\n",
    )
    .unwrap();
    std::fs::write(bad.join("huge.png"), huge_png(100_000, 100_000)).unwrap();
    let store = dir.join("store");
    let r = run(strata(&store)
        .args(["acquire", "--name", "bad", "--input"])
        .arg(&bad));
    assert!(r.ok, "{}\n{}", r.stdout, r.stderr);
    let recs = records(&store, "bad");
    assert_eq!(recs.len(), 2, "{recs:?}");
    assert_eq!(recs[0]["labels"], serde_json::json!(["liver"]));
    let reasons = quarantine_reasons(&store, "bad");
    let want = [
        ("huge.png", "100000×100000"),
        ("fake.png", "PNG"),
        ("notes.pdf", "not a PNG, JPEG, BMP or DICOM file"),
        ("truncated.dcm", "not a readable DICOM file"),
        ("jpeg2000.dcm", "JPEG 2000"),
        ("jpeg_ls.dcm", "JPEG-LS"),
        ("one_bit.dcm", "1 bits"),
        ("unknown_ts.dcm", "1.2.840.99999.1.2.1"),
        ("labels.csv:3", "missing.png"),
    ];
    for (file, says) in want {
        let hit = reasons
            .iter()
            .find(|r| r.contains(file))
            .unwrap_or_else(|| panic!("{file} not quarantined: {reasons:?}"));
        assert!(hit.contains(says), "{file}: {hit}");
        assert!(!hit.contains('\n'), "{hit}");
    }
    assert_eq!(reasons.len(), want.len(), "{reasons:?}");
    // a folder mixing images and text sources is refused with a clear message
    std::fs::write(bad.join("notes.txt"), "a note").unwrap();
    let r = run(strata(&store)
        .args(["acquire", "--name", "mixed", "--input"])
        .arg(&bad));
    assert!(
        !r.ok && r.stderr.contains("acquire them as two datasets"),
        "{}",
        r.stderr
    );
}

#[test]
fn wrong_flags_and_arguments_are_one_line_errors() {
    let dir = fresh_dir("images-bad-args");
    let store = dir.join("store");
    let sim = dir.join("sim");
    simulate(&store, &sim, &["--count", "2", "--size", "64"]);
    let r = run(strata(&store)
        .args(["acquire", "--name", "bad", "--input"])
        .arg(&sim));
    assert!(r.ok, "{}", r.stderr);
    let bad = sim.clone();
    // bad arguments: text stages on images, image stages on text
    let r =
        run(strata(&store).args(["preprocess", "--input", "bad", "--output", "x", "--minhash"]));
    assert!(
        !r.ok
            && r.stderr
                .contains("is an image dataset: --minhash are text stages"),
        "{}",
        r.stderr
    );
    std::fs::write(
        dir.join("t.jsonl"),
        "{\"text\": \"a note long enough to be kept by the length filter\"}\n",
    )
    .unwrap();
    let r = run(strata(&store)
        .args(["acquire", "--name", "t", "--input"])
        .arg(dir.join("t.jsonl")));
    assert!(r.ok, "{}", r.stderr);
    let r = run(strata(&store).args([
        "preprocess",
        "--input",
        "t",
        "--output",
        "y",
        "--phash-dedup",
    ]));
    assert!(
        !r.ok
            && r.stderr
                .contains("is a text dataset: --phash-dedup are image stages"),
        "{}",
        r.stderr
    );
    let r = run(strata(&store).args([
        "preprocess",
        "--input",
        "bad",
        "--output",
        "x",
        "--resize",
        "224",
    ]));
    assert!(!r.ok && r.stderr.contains("expected WxH"), "{}", r.stderr);
    let r = run(strata(&store)
        .args(["deid", "dicom", "--lexicon", "none", "--blank", "1,2,3"])
        .arg(&bad)
        .arg(dir.join("o")));
    assert!(!r.ok && r.stderr.contains("X0,Y0,X1,Y1"), "{}", r.stderr);
}

/// A PNG whose header declares `w` × `h` pixels, with almost no data behind it.
fn huge_png(w: u32, h: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for &b in bytes {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

/// 30 simulated scans (96 × 96) with three planted near-duplicates in the test split, acquired as `scans`.
fn sim_store(name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = fresh_dir(name);
    let sim = dir.join("sim");
    let store = dir.join("store");
    simulate(
        &store,
        &sim,
        &["--count", "30", "--seed", "3", "--size", "96"],
    );
    // planted near-duplicates: re-encoded as JPEG, resized, brightened; one of each, other patients
    python_check("plant_duplicates.py", &[sim.as_os_str()]);
    let r = run(strata(&store)
        .args(["acquire", "--name", "scans", "--input"])
        .arg(&sim));
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(records(&store, "scans").len(), 33);
    (dir, store)
}

#[test]
fn planted_near_duplicates_go_and_patients_stay_in_one_split() {
    let (_dir, store) = sim_store("images-dedup");
    let r = run(strata(&store).args([
        "preprocess",
        "--input",
        "scans",
        "--output",
        "scans-clean",
        "--phash-dedup",
        "--split-by-patient",
        "--val-fraction",
        "0.2",
        "--test-fraction",
        "0.2",
    ]));
    assert!(r.ok, "{}", r.stderr);
    let pairs = json_lines(
        &std::fs::read_to_string(store.join("datasets/scans-clean/dedup_pairs.jsonl")).unwrap(),
    );
    let dropped: Vec<&str> = pairs
        .iter()
        .map(|p| p["dropped"].as_str().unwrap())
        .collect();
    assert_eq!(dropped.len(), 3, "{pairs:?}");
    for kind in ["zz-jpeg", "zz-resize", "zz-bright"] {
        assert!(
            dropped.iter().any(|d| d.starts_with(kind)),
            "{kind}: {pairs:?}"
        );
    }
    let clean = records(&store, "scans-clean");
    assert_eq!(clean.len(), 30, "distinct images are kept");
    // a patient is never in two splits; all three splits are used
    let mut by_patient: std::collections::HashMap<String, std::collections::BTreeSet<String>> =
        std::collections::HashMap::default();
    for r in &clean {
        by_patient
            .entry(r["patient"].as_str().unwrap().to_string())
            .or_default()
            .insert(r["split"].as_str().unwrap().to_string());
        assert!(
            r["patient"].as_str().unwrap().starts_with("p-"),
            "a pseudonym, not the MRN"
        );
    }
    assert!(by_patient.values().all(|s| s.len() == 1), "{by_patient:?}");
    let splits: std::collections::BTreeSet<String> =
        by_patient.values().flatten().cloned().collect();
    assert_eq!(splits.len(), 3, "{splits:?}");
    // ground truth and reports ride along
    assert!(
        clean[0]["meta"]["truth"]["organ"].is_string()
            && clean[0]["text"].as_str().unwrap().contains("IMPRESSION:")
    );
}

#[test]
fn leaks_between_splits_are_found_resize_is_explicit_and_a_sheet_is_drawn() {
    let (dir, store) = sim_store("images-leaks");
    // leakage: the planted copies sit in the test split (their originals in train): each is a leak, and only they
    let r = run(strata(&store).args(["preprocess", "--input", "scans", "--output", "scans-leak"]));
    assert!(r.ok, "{}", r.stderr);
    let leaks = json_lines(
        &std::fs::read_to_string(store.join("datasets/scans-leak/leaks.jsonl")).unwrap(),
    );
    let mut leaked: Vec<&str> = leaks.iter().map(|l| l["image"].as_str().unwrap()).collect();
    leaked.sort_unstable();
    assert_eq!(leaked.len(), 3, "{leaks:?}");
    for (l, kind) in leaked.iter().zip(["zz-bright", "zz-jpeg", "zz-resize"]) {
        assert!(l.starts_with(kind), "{leaks:?}");
    }
    assert!(leaks
        .iter()
        .all(|l| l["split"] == "test" && l["train_twin"].as_str().unwrap().starts_with("us000")));
    assert_eq!(records(&store, "scans-leak").len(), 30);
    assert!(r.stdout.contains("3 leaks between splits"), "{}", r.stdout);
    // resize is explicit and keeps the original size in the record
    let r = run(strata(&store).args([
        "preprocess",
        "--input",
        "scans-leak",
        "--output",
        "scans-224",
        "--resize",
        "64x48",
    ]));
    assert!(r.ok, "{}", r.stderr);
    let small = records(&store, "scans-224");
    assert!(small.iter().all(|r| r["width"] == 64
        && r["height"] == 48
        && r["meta"]["resized_from"] == serde_json::json!([96, 96])));
    // a contact sheet
    let png = dir.join("sheet.png");
    let r = run(strata(&store)
        .args(["show", "scans-leak", "--png"])
        .arg(&png));
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stdout.contains("contact sheet of 30 images"),
        "{}",
        r.stdout
    );
    let img = strata_image::pixels::Frame::read_png(&png).unwrap();
    assert_eq!((img.width, img.height), (8 * 136 + 8, 4 * 158 + 8));
    let r = run(strata(&store).args(["show", "scans-leak"]));
    assert!(r.stdout.contains("30 images; labels:"), "{}", r.stdout);
}

#[test]
fn simulated_dicom_is_deidentified_end_to_end_and_read_back() {
    let dir = fresh_dir("images-sim-dicom");
    let sim = dir.join("sim");
    let store = dir.join("store");
    simulate(
        &store,
        &sim,
        &["--dicom", "--frames", "3", "--count", "4", "--size", "64"],
    );
    let out = dir.join("clean");
    let r = run(strata(&store)
        .args(["deid", "dicom", "--lexicon", "none"])
        .arg(sim.join("dicom"))
        .arg(&out)
        .env("STRATA_DEID_SECRET", "k"));
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stdout.contains("4 of 4 files de-identified"),
        "{}",
        r.stdout
    );
    // a rerun (after kill -9, say) leaves what is written and does the rest
    std::fs::remove_file(out.join("us00002.dcm")).unwrap();
    let r = run(strata(&store)
        .args(["deid", "dicom", "--lexicon", "none"])
        .arg(sim.join("dicom"))
        .arg(&out)
        .env("STRATA_DEID_SECRET", "k"));
    assert!(
        r.stdout
            .contains("1 of 4 files de-identified, 3 already there (skipped)"),
        "{}",
        r.stdout
    );
    assert!(std::fs::read_dir(&out).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains("strata-tmp")));
    // scanners' names: no extension, or dots and digits
    std::fs::rename(out.join("us00000.dcm"), out.join("IM0001")).unwrap();
    std::fs::rename(out.join("us00001.dcm"), out.join("1.3.12.2.1107.5.2")).unwrap();
    let r = run(strata(&store)
        .args(["acquire", "--name", "clean", "--input"])
        .arg(&out));
    assert!(r.stdout.contains("(4 DICOM)"), "{}", r.stdout);
    assert!(r.ok, "{}", r.stderr);
    let recs = records(&store, "clean");
    assert_eq!(recs.len(), 12, "4 loops of 3 frames");
    // no invented name or MRN survives in the kept descriptors
    let reports = std::fs::read_to_string(sim.join("reports.jsonl")).unwrap();
    for rep in json_lines(&reports) {
        let text = rep["text"].as_str().unwrap();
        let name = text
            .strip_prefix("Patient: ")
            .unwrap()
            .split('.')
            .next()
            .unwrap();
        let mrn = rep["patient_id"].as_str().unwrap();
        for r in &recs {
            let kept = r["text"].as_str().unwrap();
            for part in name.split(' ').filter(|p| p.len() >= 4).chain([mrn]) {
                assert!(!kept.contains(part), "{part} in {kept}");
            }
        }
    }
    // the header band is blank in every frame
    let png = store
        .join("datasets/clean")
        .join(recs[0]["file"].as_str().unwrap());
    let f = strata_image::pixels::Frame::read_png(&png).unwrap();
    let band = strata_image::sim::BAND as usize * 64;
    assert!(f.luma8()[..band].iter().all(|&v| v == 0));
    assert!(f.luma8()[band..].iter().any(|&v| v > 0));
}

#[test]
fn an_image_folder_takes_its_labels_from_sub_folder_names() {
    let dir = fresh_dir("images-folder");
    let store = dir.join("store");
    let sim = dir.join("sim");
    simulate(&store, &sim, &["--count", "3", "--size", "48"]);
    // cyst/ and normal/ sub-folders, one picture saved as BMP and one as JPEG by Pillow
    let folder = dir.join("folder");
    for (sub, src) in [
        ("cyst", "us00000"),
        ("normal", "us00001"),
        ("normal", "us00002"),
    ] {
        std::fs::create_dir_all(folder.join(sub)).unwrap();
        std::fs::copy(
            sim.join("images").join(format!("{src}.png")),
            folder.join(sub).join(format!("{src}.png")),
        )
        .unwrap();
    }
    python_check(
        "plant_duplicates.py",
        &[
            "convert".as_ref(),
            folder.join("normal/us00002.png").as_os_str(),
        ],
    );
    let r = run(strata(&store)
        .args(["acquire", "--name", "folder", "--input"])
        .arg(&folder));
    assert!(r.ok, "{}", r.stderr);
    let recs = records(&store, "folder");
    let mut labels: Vec<(String, String)> = recs
        .iter()
        .map(|r| {
            (
                r["source"]
                    .as_str()
                    .unwrap()
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .to_string(),
                r["labels"][0].as_str().unwrap().to_string(),
            )
        })
        .collect();
    labels.sort();
    assert_eq!(
        labels,
        vec![
            ("us00000.png".to_string(), "cyst".to_string()),
            ("us00001.png".to_string(), "normal".to_string()),
            ("us00002.bmp".to_string(), "normal".to_string()),
            ("us00002.jpg".to_string(), "normal".to_string()),
        ]
    );
    // the BMP is lossless: the same pixels as the PNG it was made from
    let png = strata_image::pixels::Frame::read_png(&sim.join("images/us00002.png")).unwrap();
    let bmp = recs
        .iter()
        .find(|r| r["source"].as_str().unwrap().ends_with(".bmp"))
        .unwrap();
    let got = strata_image::pixels::Frame::read_png(
        &store
            .join("datasets/folder")
            .join(bmp["file"].as_str().unwrap()),
    )
    .unwrap();
    assert_eq!(got.luma8(), png.luma8());
}

/// A pipeline's acquire step takes images as `strata acquire` does (an image dataset, its labels from the
/// sidecar), its preprocess step runs the image stages, and a second run of the same file leaves both datasets
/// as they are (the same manifests: the steps after them stay up to date).
#[test]
fn a_pipeline_acquires_images_and_a_second_run_leaves_them_as_they_are() {
    let store = fresh_dir("pipeline-images");
    let out = store.join("sim");
    let cfg = store.join("images.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[step]]\ntype = \"domain\"\nsource = \"ultrasound-images\"\nout = \"{}\"\ncount = 24\nsize = 48\nseed = 2\n\n\
             [[step]]\ntype = \"acquire\"\nname = \"scans-raw\"\ninputs = [\"{}\"]\n\n\
             [[step]]\ntype = \"preprocess\"\nname = \"scans\"\ninput = \"scans-raw\"\nimages = {{ split = [0.2, 0.2] }}\n",
            out.display(),
            out.display()
        ),
    )
    .unwrap();
    let pipeline = || run(strata(&store).args(["pipeline", "run"]).arg(&cfg));
    let r = pipeline();
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stderr.contains("images=24"), "{}", r.stderr);
    let recs = records(&store, "scans-raw");
    assert_eq!(recs.len(), 24);
    assert_eq!(
        recs[0]["labels"].as_array().unwrap().len(),
        2,
        "{}",
        recs[0]
    );
    let manifest = |name: &str| {
        std::fs::read_to_string(store.join("datasets").join(name).join("manifest.json")).unwrap()
    };
    let before = (manifest("scans-raw"), manifest("scans"));
    assert!(before.1.contains("\"split\""), "{}", before.1);
    // a manifest written again would carry a later second
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = pipeline();
    assert!(r.ok, "{}", r.stderr);
    assert_eq!((manifest("scans-raw"), manifest("scans")), before);
    // image settings on text inputs are refused by name
    let text = store.join("text.toml");
    std::fs::write(
        &text,
        "[[step]]\ntype = \"acquire\"\nname = \"t\"\ninputs = [\"fixtures/quick/general\"]\nframe_step = 2\n",
    )
    .unwrap();
    let r = run(strata(&store).args(["pipeline", "run"]).arg(&text));
    assert!(!r.ok);
    assert!(
        r.stderr.contains("frame_step and labels are for images"),
        "{}",
        r.stderr
    );
}
