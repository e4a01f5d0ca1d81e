//! Any bytes given to the safetensors reader end in tensors or an error, never a panic or an abort.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let _ = strata_model::read_safetensors_bytes(
        Path::new("fuzz.safetensors"),
        data,
        &candle_core::Device::Cpu,
    );
});
