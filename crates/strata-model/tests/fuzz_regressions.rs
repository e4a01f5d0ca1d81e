//! Inputs the fuzz targets (fuzz/) found crashing the readers, kept so that each fix stays fixed: every file
//! of tests/fuzz-regressions/ named `gguf-*` or `safetensors-*` must read as a model or fail with an error.

#![allow(clippy::unwrap_used)]

use std::path::Path;

#[test]
fn crashing_inputs_found_by_fuzzing_are_errors_now() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&path).unwrap();
        if name.starts_with("gguf-") {
            let r = strata_model::cpu::CpuModel::from_gguf_bytes(&path, &bytes, None);
            assert!(r.is_err(), "{name}: expected an error");
            seen += 1;
        } else if name.starts_with("safetensors-") {
            let r = strata_model::read_safetensors_bytes(&path, &bytes, &candle_core::Device::Cpu);
            assert!(r.is_err(), "{name}: expected an error");
            seen += 1;
        }
    }
    assert!(seen >= 1, "no regression inputs found in {}", dir.display());
}
