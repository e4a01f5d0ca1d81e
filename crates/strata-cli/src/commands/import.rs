//! `strata import FILE.gguf --name NAME`: bring a llama.cpp GGUF model into the store as a Hugging Face
//! folder (dequantised to f32, for training and evaluation), with its tokenizer and chat template, plus the
//! GGUF itself as `model.gguf`, which inference runs by default with its weights as stored (Q4_1, Q8_0, …).

use std::process::ExitCode;

use anyhow::Context as _;
use strata_store::{InputRef, Kind, Manifest, Store};

use crate::cli::ImportArgs;

pub fn run(store: &Store, a: &ImportArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        a.file.is_file(),
        "{} does not exist or is not a file",
        a.file.display()
    );
    let sha256 = strata_store::sha256_file(&a.file)?;
    let input = InputRef {
        kind: Kind::Raw,
        name: a.file.display().to_string(),
        sha256,
    };
    let manifest = Manifest::new(Kind::Model, &a.name, "strata import").with_config(
        vec![input],
        serde_json::json!({"format": "gguf", "dtype": "f32", "inference": "model.gguf"}),
    );
    if store
        .up_to_date(Kind::Model, &a.name, &manifest.fingerprint)
        .is_some()
    {
        println!("model {}: up to date (same file already imported)", a.name);
        return Ok(ExitCode::SUCCESS);
    }
    let staging = store.staging(Kind::Model, &a.name)?;
    let report = strata_model::import_gguf(&a.file, &staging)
        .with_context(|| format!("importing {}", a.file.display()))?;
    // a copy, not a link: artifacts in the store never change under their manifest
    std::fs::copy(&a.file, staging.join(strata_model::cpu::GGUF_IN_FOLDER))
        .with_context(|| format!("copying {}", a.file.display()))?;
    let mut manifest = manifest;
    manifest
        .counts
        .insert("parameters".into(), report.config.num_parameters().into());
    manifest
        .counts
        .insert("tensors".into(), report.tensors.into());
    manifest
        .counts
        .insert("gguf_types".into(), serde_json::to_value(&report.types)?);
    store.publish(&staging, manifest)?;
    let types: Vec<String> = report
        .types
        .iter()
        .map(|(k, v)| format!("{v}×{k}"))
        .collect();
    println!(
        "model {}: {} ({} parameters, {} layers, {} tensors: {}) → {}",
        a.name,
        report.name.as_deref().unwrap_or("unnamed"),
        report.config.num_parameters(),
        report.config.num_hidden_layers,
        report.tensors,
        types.join(", "),
        store.dir(Kind::Model, &a.name).display()
    );
    Ok(ExitCode::SUCCESS)
}
