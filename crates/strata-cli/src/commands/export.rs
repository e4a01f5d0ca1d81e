//! `strata export --model NAME --gguf OUT.gguf [--type f32|f16|q8_0]`: a model of the store as a GGUF file
//! that llama.cpp loads.

use std::process::ExitCode;

use anyhow::Context as _;
use strata_store::{Kind, Store};

use crate::cli::ExportArgs;

pub fn run(store: &Store, a: &ExportArgs) -> anyhow::Result<ExitCode> {
    let dir = store.require(Kind::Model, &a.model)?;
    let ty: strata_model::GgufType = a.r#type.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    strata_model::export_gguf(&dir, &a.gguf, ty)
        .with_context(|| format!("exporting {} to {}", a.model, a.gguf.display()))?;
    let bytes = std::fs::metadata(&a.gguf).map_or(0, |m| m.len());
    println!(
        "model {} → {} ({:?}, {:.1} MB)",
        a.model,
        a.gguf.display(),
        ty,
        bytes as f64 / 1e6
    );
    Ok(ExitCode::SUCCESS)
}
