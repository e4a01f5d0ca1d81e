//! Any bytes given to `strata import`'s GGUF → Hugging Face conversion (metadata → config.json, tensors
//! dequantised and un-permuted, shapes checked, a folder written) end in a folder or an error, never a panic
//! or an abort. The bytes go through a file, as `import_gguf` reads one.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("strata-fuzz-import-{}", std::process::id()));
    let out = dir.join("out");
    let _ = std::fs::create_dir_all(&out);
    let file = dir.join("input.gguf");
    if std::fs::write(&file, data).is_ok() {
        let _ = strata_model::import_gguf(&file, &out);
    }
});
