//! Inputs the fuzz targets (fuzz/) found crashing the readers, and hand-made malformed safetensors files,
//! kept so that each fix stays fixed. Every file of tests/fuzz-regressions/ is listed here with what it
//! breaks, and every listed file must exist and end in an error — in the engine's GGUF reader and in
//! `strata import`'s GGUF → HF conversion (`gguf-*`), or in both safetensors readers: the bytes reader and
//! the folder check `strata import` runs (`safetensors-*`). A file in the folder that is not listed fails
//! the test too, so nothing there goes unexercised.

#![allow(clippy::unwrap_used)]

use std::path::Path;

const CASES: [(&str, &str); 13] = [
    (
        "gguf-empty-dimension-permute",
        "a Q/K tensor with a zero dimension reached the row permutation",
    ),
    (
        "gguf-layer-count-alloc",
        "a huge block_count allocated before any tensor was read",
    ),
    (
        "gguf-permute-overflow",
        "head count × head size overflowed in the permutation",
    ),
    ("gguf-zero-alignment", "general.alignment 0 divided by zero"),
    ("gguf-zero-heads", "attention.head_count 0 divided by zero"),
    (
        "safetensors-header-cut",
        "the header length ends inside the JSON",
    ),
    ("safetensors-header-length-huge", "a header length of 2^63"),
    (
        "safetensors-header-not-json",
        "header bytes that are not UTF-8 JSON",
    ),
    (
        "safetensors-offsets-past-end",
        "data offsets beyond the file",
    ),
    (
        "safetensors-offsets-reversed",
        "an end offset before the start",
    ),
    ("safetensors-overlapping", "two tensors over the same bytes"),
    (
        "safetensors-shape-overflow",
        "a shape whose element count overflows",
    ),
    (
        "safetensors-size-mismatch",
        "offsets that do not hold dtype × shape bytes",
    ),
];

#[test]
fn every_regression_input_is_exercised_and_is_an_error() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    present.sort();
    let listed: Vec<&str> = CASES.iter().map(|c| c.0).collect();
    assert_eq!(
        present, listed,
        "tests/fuzz-regressions/ and the list of cases differ (a file deleted, or one added without a case)"
    );
    let tmp = tempfile::tempdir().unwrap();
    for (name, what) in CASES {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).unwrap();
        if name.starts_with("gguf-") {
            let r = strata_engine::CpuModel::from_gguf_bytes(&path, &bytes, None);
            assert!(r.is_err(), "{name} ({what}): the engine read it");
            let out = tmp.path().join(name);
            std::fs::create_dir_all(&out).unwrap();
            let e = strata_model::import_gguf(&path, &out)
                .err()
                .unwrap_or_else(|| panic!("{name} ({what}): imported"));
            assert!(
                e.to_string().contains(name),
                "{name}: the error does not name the file: {e}"
            );
        } else {
            let r = strata_model::read_safetensors_bytes(&path, &bytes, &candle_core::Device::Cpu);
            assert!(r.is_err(), "{name} ({what}): read as tensors");
            // the folder check reads the header only (memory-mapped)
            let folder = tmp.path().join(name);
            std::fs::create_dir_all(&folder).unwrap();
            std::fs::write(
                folder.join("config.json"),
                r#"{"architectures": ["LlamaForCausalLM"], "vocab_size": 8, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 16}"#,
            )
            .unwrap();
            std::fs::copy(&path, folder.join("model.safetensors")).unwrap();
            let e = strata_model::check_folder(&folder)
                .err()
                .unwrap_or_else(|| panic!("{name} ({what}): the folder check passed"));
            assert!(e.to_string().contains("model.safetensors"), "{name}: {e}");
        }
    }
}
