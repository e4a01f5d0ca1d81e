//! Any bytes given to the GGUF reader (header, metadata, tensor directory, tensor blocks, Q/K row
//! permutation, model assembly) end in a model or an error, never a panic or an abort.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let _ = strata_engine::CpuModel::from_gguf_bytes(Path::new("fuzz.gguf"), data, None);
});
