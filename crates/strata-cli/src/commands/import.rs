//! `strata import FILE.gguf --name NAME`: bring a llama.cpp GGUF model into the store as a Hugging Face
//! folder: `config.json`, its tokenizer and chat template, and the GGUF itself as `model.gguf`, its weights
//! as stored (Q4_K, Q8_0, …). Only the tensor table is read to check it (memory stays small whatever the
//! model's size); inference runs the file's blocks, and training or evaluation dequantise it to f32 when
//! they load it. No f32 copy is written.
//!
//! `strata import DIR --name NAME`: a Hugging Face folder (as `save_pretrained` or the Hub leave it) is
//! checked without loading its weights (config, every tensor's presence and shape) and copied in as it is.

use std::process::ExitCode;

use anyhow::Context as _;
use strata_store::{InputRef, Kind, Manifest, Store};

use crate::cli::ImportArgs;

/// The files of a Hugging Face folder that Strata keeps besides the weights; `tokenizer.json` is required.
const HF_FILES: [&str; 5] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

pub fn run(store: &Store, a: &ImportArgs) -> anyhow::Result<ExitCode> {
    if a.file.join("adapter_config.json").is_file() {
        let base = a.base.as_deref().ok_or_else(|| {
            anyhow::anyhow!(
                "{} is a PEFT adapter: give the model it was trained on with --base MODEL",
                a.file.display()
            )
        })?;
        let m = strata_train::parent::import_adapter(store, &a.file, &a.name, base)
            .with_context(|| format!("importing adapter {}", a.file.display()))?;
        println!(
            "adapter {}: on model {base}, r={}, {} parameters",
            a.name,
            m.counts.get("lora_r").cloned().unwrap_or_default(),
            m.counts.get("parameters").cloned().unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    anyhow::ensure!(
        a.base.is_none(),
        "--base is for PEFT adapter folders (with adapter_config.json)"
    );
    if a.file.is_dir() {
        anyhow::ensure!(
            a.safetensors.is_none(),
            "--safetensors is for GGUF files (a Hugging Face folder is copied as it is)"
        );
        return import_folder(store, a);
    }
    let st_dtype = match a.safetensors.as_deref() {
        None => None,
        Some("f32") => Some(candle_core::DType::F32),
        Some("f16") => Some(candle_core::DType::F16),
        Some("bf16") => Some(candle_core::DType::BF16),
        Some(other) => anyhow::bail!("--safetensors {other:?}: expected f32, f16 or bf16"),
    };
    anyhow::ensure!(
        a.file.is_file(),
        "{} does not exist (give a .gguf file or a Hugging Face model folder)",
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
        serde_json::json!({"format": "gguf", "weights": "model.gguf, as stored", "safetensors": a.safetensors}),
    );
    if store
        .up_to_date(Kind::Model, &a.name, &manifest.fingerprint)
        .is_some()
    {
        println!("model {}: up to date (same file already imported)", a.name);
        publish_tokenizer(store, &a.name)?;
        return Ok(ExitCode::SUCCESS);
    }
    let staging = store.staging(Kind::Model, &a.name)?;
    let report = strata_model::import_gguf(&a.file, &staging)
        .with_context(|| format!("importing {}", a.file.display()))?;
    let vocab = strata_tokenize::GgufVocab {
        path: &a.file,
        meta: &report.tokenizer_meta,
        max_length: report.config.max_position_embeddings,
    };
    strata_tokenize::write_gguf_tokenizer(&vocab, &staging)
        .with_context(|| format!("importing {}", a.file.display()))?;
    // a copy, not a link: artifacts in the store never change under their manifest
    copy_synced(&a.file, &staging.join(strata_engine::GGUF_IN_FOLDER))?;
    if let Some(dtype) = st_dtype {
        strata_model::gguf::write_gguf_safetensors(
            &a.file,
            &staging.join("model.safetensors"),
            dtype,
        )
        .with_context(|| format!("importing {}", a.file.display()))?;
    }
    let mut manifest = manifest;
    manifest
        .counts
        .insert("gguf_types".into(), serde_json::to_value(&report.types)?);
    let label = report.name.as_deref().unwrap_or("unnamed");
    publish(
        store,
        &staging,
        manifest,
        &a.name,
        label,
        &report.config,
        report.tensors,
        &report.types,
    )
}

/// Publishes an imported model (with its parameter and tensor counts) and says what it is.
#[allow(clippy::too_many_arguments)]
fn publish(
    store: &Store,
    staging: &std::path::Path,
    mut manifest: Manifest,
    name: &str,
    label: &str,
    config: &strata_model::LlamaConfig,
    tensors: usize,
    types: &std::collections::BTreeMap<String, usize>,
) -> anyhow::Result<ExitCode> {
    manifest
        .counts
        .insert("parameters".into(), config.num_parameters().into());
    manifest.counts.insert("tensors".into(), tensors.into());
    store.publish(staging, manifest)?;
    publish_tokenizer(store, name)?;
    let types: Vec<String> = types.iter().map(|(k, v)| format!("{v}×{k}")).collect();
    println!(
        "model {name}: {label} ({} parameters, {} layers, {tensors} tensors: {}) → {}",
        config.num_parameters(),
        config.num_hidden_layers,
        types.join(", "),
        store.dir(Kind::Model, name).display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Publishes the tokenizer files of model `name` as tokenizer artifact `name` (lineage: model → tokenizer),
/// so `tokenize encode --tokenizer NAME` encodes data for the model.
fn publish_tokenizer(store: &Store, name: &str) -> anyhow::Result<()> {
    let model_dir = store.dir(Kind::Model, name);
    let manifest = Manifest::new(Kind::Tokenizer, name, "strata import").with_config(
        vec![store.input_ref(Kind::Model, name)?],
        serde_json::json!({"from_model": name}),
    );
    if store
        .up_to_date(Kind::Tokenizer, name, &manifest.fingerprint)
        .is_some()
    {
        return Ok(());
    }
    let td = strata_tokenize::TokenizerDir::open(&model_dir)
        .with_context(|| format!("the tokenizer of model {name}"))?;
    let staging = store.staging(Kind::Tokenizer, name)?;
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        if model_dir.join(f).is_file() {
            copy_synced(&model_dir.join(f), &staging.join(f))?;
        }
    }
    let mut manifest = manifest;
    manifest.counts.insert(
        "vocab_size".into(),
        td.tokenizer.get_vocab_size(true).into(),
    );
    manifest
        .counts
        .insert("eos_id".into(), td.special.eos.into());
    store.publish(&staging, manifest)?;
    println!(
        "tokenizer {name}: from model {name} (vocabulary {}, end of document id {})",
        td.tokenizer.get_vocab_size(true),
        td.special.eos
    );
    Ok(())
}

/// Copies `from` to `to` and flushes it to disk (the store's artifacts survive a power cut once published).
fn copy_synced(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    std::fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
    std::fs::File::open(to)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("flushing {}", to.display()))
}

fn import_folder(store: &Store, a: &ImportArgs) -> anyhow::Result<ExitCode> {
    let dir = &a.file;
    let check = strata_model::check_folder(dir)?;
    let tokenizer = dir.join("tokenizer.json");
    anyhow::ensure!(
        tokenizer.is_file(),
        "{}: missing (a folder with only tokenizer.model needs converting: in Python, \
         AutoTokenizer.from_pretrained(folder).save_pretrained(folder) writes tokenizer.json)",
        tokenizer.display()
    );
    strata_tokenize::load_tokenizer(&tokenizer)
        .with_context(|| format!("reading {}", tokenizer.display()))?;
    let mut files: Vec<String> = HF_FILES
        .iter()
        .filter(|f| dir.join(f).is_file())
        .map(|f| (*f).to_string())
        .collect();
    files.extend(check.weight_files.iter().cloned());
    let mut inputs = Vec::new();
    for f in &files {
        inputs.push(InputRef {
            kind: Kind::Raw,
            name: dir.join(f).display().to_string(),
            sha256: strata_store::sha256_file(dir.join(f))?,
        });
    }
    let manifest = Manifest::new(Kind::Model, &a.name, "strata import").with_config(
        inputs,
        serde_json::json!({"format": "hf", "dtypes": check.dtypes}),
    );
    if store
        .up_to_date(Kind::Model, &a.name, &manifest.fingerprint)
        .is_some()
    {
        println!(
            "model {}: up to date (same folder already imported)",
            a.name
        );
        publish_tokenizer(store, &a.name)?;
        return Ok(ExitCode::SUCCESS);
    }
    let staging = store.staging(Kind::Model, &a.name)?;
    for f in &files {
        copy_synced(&dir.join(f), &staging.join(f))?;
    }
    publish(
        store,
        &staging,
        manifest,
        &a.name,
        &check.config.architectures.join(", "),
        &check.config,
        check.tensors,
        &check.dtypes,
    )
}
