//! `strata merge ADAPTER --name NAME [--dtype f32|f16|bf16]`: a LoRA adapter folded into its base model
//! (W + s·B·A, computed in f32), published as a model that every command loads.

use std::process::ExitCode;

use anyhow::Context as _;
use strata_store::Store;

use crate::cli::MergeArgs;

pub fn run(store: &Store, a: &MergeArgs) -> anyhow::Result<ExitCode> {
    let dtype = match a.dtype.as_str() {
        "f32" => candle_core::DType::F32,
        "f16" => candle_core::DType::F16,
        "bf16" => candle_core::DType::BF16,
        other => anyhow::bail!("--dtype {other:?}: expected f32, f16 or bf16"),
    };
    let m = strata_train::parent::merge_adapter(store, &a.adapter, &a.name, dtype, "strata merge")
        .with_context(|| format!("merging adapter {:?}", a.adapter))?;
    println!(
        "merge      {:<20} done       base={} adapters={}",
        a.name,
        m.counts.get("base").cloned().unwrap_or_default(),
        m.counts.get("adapters").cloned().unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}
