//! What a fine-tuning step starts from: a model in the store, or an adapter — then its base model with
//! every adapter of the chain folded in, in order (general → medical → ultrasound: the ultrasound step's
//! parent is the medical adapter, whose base is the general model).
//!
//! Each adapter records the sha256 of the base it was trained on; a base that has changed since (a
//! re-import, a retrained model under the same name) is refused by name rather than silently combined.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use strata_model::LlamaConfig;
use strata_store::{InputRef, Kind, Store};

use crate::{Context, Result, TrainError};

/// A resolved parent: the base model and the adapters on it, outermost last.
pub struct Parent {
    pub base: String,
    pub base_dir: PathBuf,
    pub base_sha256: String,
    /// (name, folder) of each adapter, in the order they were trained.
    pub adapters: Vec<(String, PathBuf)>,
    pub cfg: LlamaConfig,
}

impl Parent {
    /// Looks `name` up as a model, else as an adapter (then follows its chain down to its base:
    /// [`Store::chain`]).
    ///
    /// # Errors
    /// When nothing of that name exists, or an adapter's base is missing or has changed.
    pub fn resolve(store: &Store, name: &str) -> Result<Self> {
        let c = store.chain(name)?;
        let cfg = strata_model::read_config(&c.base_dir.join("config.json"))?;
        Ok(Self {
            base: c.base,
            base_dir: c.base_dir,
            base_sha256: c.base_sha256,
            adapters: c.adapters,
            cfg,
        })
    }

    /// The manifest inputs: the base model and every adapter of the chain.
    ///
    /// # Errors
    /// When a manifest cannot be read.
    pub fn inputs(&self, store: &Store) -> Result<Vec<InputRef>> {
        let mut v = vec![store.input_ref(Kind::Model, &self.base)?];
        for (a, _) in &self.adapters {
            v.push(store.input_ref(Kind::Adapter, a)?);
        }
        Ok(v)
    }

    /// The adapter names of the chain, in order.
    #[must_use]
    pub fn adapter_names(&self) -> Vec<String> {
        self.adapters.iter().map(|(a, _)| a.clone()).collect()
    }

    /// The base weights in f32 with every adapter of the chain merged in.
    ///
    /// # Errors
    /// When a file is missing or an adapter does not fit the base.
    pub fn weights(&self, device: &Device) -> Result<HashMap<String, Tensor>> {
        let mut w = HashMap::new();
        self.stream_weights(device, &mut |name, t| {
            w.insert(name, t);
            Ok(())
        })?;
        Ok(w)
    }

    /// [`Parent::weights`] one tensor at a time: each base tensor is read, merged with the chain's adapters
    /// and handed to `each`, so a caller that converts as it goes (QLoRA) never holds the model in f32.
    ///
    /// # Errors
    /// As [`Parent::weights`], and when `each` fails.
    pub fn stream_weights(
        &self,
        device: &Device,
        each: &mut dyn FnMut(String, Tensor) -> strata_model::Result<()>,
    ) -> Result<()> {
        let adapters = self
            .adapters
            .iter()
            .map(|(_, dir)| strata_model::lora::read_adapter(dir, &self.cfg, device))
            .collect::<strata_model::Result<Vec<_>>>()?;
        let mut merged = std::collections::HashSet::new();
        strata_model::stream_weights(&self.base_dir, device, &mut |name, t| {
            let mut t = t.to_dtype(DType::F32).ctx(&name)?;
            for a in &adapters {
                t = strata_model::lora::merge_one(&name, &t, a)?;
            }
            merged.insert(name.clone());
            each(name, t)
        })?;
        for a in &adapters {
            if let Some(m) = strata_model::lora::adapter_modules(a)
                .find(|m| !merged.contains(&format!("{m}.weight")))
            {
                return Err(strata_model::ModelError::Invalid(format!(
                    "merge: the base has no {m}.weight"
                ))
                .into());
            }
        }
        Ok(())
    }
}

/// The files of a model folder that carry its tokenizer (and chat template).
pub(crate) const TOKENIZER_FILES: [&str; 3] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// Copies those of `names` that exist in folder `from` into folder `to`.
pub(crate) fn copy_present(
    from: &std::path::Path,
    to: &std::path::Path,
    names: &[&str],
) -> Result<()> {
    for f in names {
        let src = from.join(f);
        if src.is_file() {
            std::fs::copy(&src, to.join(f)).map_err(crate::io_err(&src))?;
        }
    }
    Ok(())
}

/// A model or adapter of the store as a model ready to score: the base with the adapter chain merged,
/// in f32, and the base's tokenizer.
///
/// # Errors
/// As [`Parent::resolve`] and [`Parent::weights`].
pub fn load_merged(
    store: &Store,
    name: &str,
    device: &Device,
) -> Result<(strata_model::Llama, strata_tokenize::TokenizerDir)> {
    let p = Parent::resolve(store, name)?;
    let vb = candle_nn::VarBuilder::from_tensors(p.weights(device)?, DType::F32, device);
    let model = strata_model::Llama::load(&vb, &p.cfg)?;
    Ok((model, strata_tokenize::TokenizerDir::open(&p.base_dir)?))
}

/// Folds adapter `adapter` (and the chain beneath it) into its base and publishes the result as model
/// `name`: safetensors in `dtype` (f32, f16 or bf16), the base's config and tokenizer files. Lineage: the
/// base and every adapter.
///
/// # Errors
/// When `adapter` is not an adapter, its base changed, or on an I/O failure.
pub fn merge_adapter(
    store: &Store,
    adapter: &str,
    name: &str,
    dtype: DType,
    created_by: &str,
) -> Result<strata_store::Manifest> {
    if !store.exists(Kind::Adapter, adapter) {
        return Err(TrainError::Config(format!(
            "{adapter:?} is not an adapter in the store"
        )));
    }
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Err(TrainError::Config(format!(
            "merge writes f32, f16 or bf16 weights, not {dtype:?}"
        )));
    }
    let p = Parent::resolve(store, adapter)?;
    let mut weights = p.weights(&Device::Cpu)?;
    for t in weights.values_mut() {
        *t = t.to_dtype(dtype).ctx("merged dtype")?;
    }
    let config =
        serde_json::json!({"adapter": adapter, "dtype": format!("{dtype:?}").to_lowercase()});
    let manifest = strata_store::Manifest::new(Kind::Model, name, created_by)
        .with_config(p.inputs(store)?, config);
    let staging = store.staging(Kind::Model, name)?;
    strata_model::save_safetensors(&weights, &staging.join("model.safetensors"), &[])?;
    strata_model::write_hf_config(&staging, &p.cfg)?;
    copy_present(&p.base_dir, &staging, &TOKENIZER_FILES)?;
    let mut manifest = manifest;
    manifest
        .counts
        .insert("parameters".into(), p.cfg.num_parameters().into());
    manifest.counts.insert("base".into(), p.base.clone().into());
    manifest
        .counts
        .insert("adapters".into(), p.adapter_names().into());
    Ok(store.publish(&staging, manifest)?)
}

/// Brings an adapter folder written by PEFT (`save_pretrained`: `adapter_config.json` and
/// `adapter_model.safetensors`) into the store as adapter `name` on model `base`, after checking every
/// tensor against the base. The files are re-written in Strata's form of the same layout (f32); the
/// manifest records the base and its sha256, as for an adapter trained here.
///
/// # Errors
/// When the base is not a model of the store, or the adapter does not fit it.
pub fn import_adapter(
    store: &Store,
    src: &std::path::Path,
    name: &str,
    base: &str,
) -> Result<strata_store::Manifest> {
    if !store.exists(Kind::Model, base) {
        return Err(TrainError::Config(format!(
            "--base {base:?}: no model of that name in the store (an adapter is imported onto a model)"
        )));
    }
    let p = Parent::resolve(store, base)?;
    let adapter = strata_model::lora::read_adapter(src, &p.cfg, &Device::Cpu)?;
    let mut inputs = p.inputs(store)?;
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        let path = src.join(f);
        inputs.push(InputRef {
            kind: Kind::Raw,
            name: path.display().to_string(),
            sha256: strata_store::sha256_file(&path)?,
        });
    }
    let manifest = strata_store::Manifest::new(Kind::Adapter, name, "strata import")
        .with_config(inputs, serde_json::json!({"format": "peft", "base": base}));
    let staging = store.staging(Kind::Adapter, name)?;
    strata_model::lora::write_adapter(&staging, &adapter.config, &adapter.tensors, base)?;
    copy_present(&p.base_dir, &staging, &TOKENIZER_FILES)?;
    let mut manifest = manifest;
    let trainable: usize = adapter.tensors.values().map(Tensor::elem_count).sum();
    let c = &mut manifest.counts;
    c.insert("parameters".into(), trainable.into());
    c.insert("base".into(), base.into());
    c.insert("base_sha256".into(), p.base_sha256.clone().into());
    c.insert("adapters".into(), serde_json::Value::Array(Vec::new()));
    c.insert("lora_r".into(), adapter.config.r.into());
    Ok(store.publish(&staging, manifest)?)
}

/// A model or adapter as the inference engine serves it, for scoring: a model with its weight type `want`
/// (None: as stored — a GGUF import's blocks, f32 otherwise); an adapter folded into its base first (f32,
/// or quantised to `want`). Also returns the tokenizer and the artifact's kind and sha256.
///
/// # Errors
/// As [`Parent::resolve`], or when the engine cannot load the weights.
pub fn load_engine(
    store: &Store,
    name: &str,
    want: Option<strata_engine::WeightType>,
) -> Result<(
    strata_engine::CpuModel,
    strata_tokenize::TokenizerDir,
    Kind,
    String,
)> {
    let dir = store.dir(Kind::Model, name);
    if strata_model::llava::is_llava(&dir) {
        // a vision-language model's decoder, scored on text
        let cfg = strata_model::LlavaConfig::read(&dir.join("config.json"))?;
        let parts =
            strata_model::llava::Parts::split(strata_model::read_weights(&dir, &Device::Cpu)?)?;
        let td = strata_tokenize::TokenizerDir::open(&dir)?;
        let m = strata_engine::CpuModel::from_tensors(&dir, cfg.text, parts.decoder, want)?;
        let sha = store.manifest(Kind::Model, name)?.sha256;
        return Ok((m, td, Kind::Model, sha));
    }
    let p = Parent::resolve(store, name)?;
    let td = strata_tokenize::TokenizerDir::open(&p.base_dir)?;
    if p.adapters.is_empty() {
        let m = strata_engine::CpuModel::load(&p.base_dir, want)?;
        return Ok((m, td, Kind::Model, p.base_sha256));
    }
    let sha = store.manifest(Kind::Adapter, name)?.sha256;
    let weights = p.weights(&Device::Cpu)?;
    let m = strata_engine::CpuModel::from_tensors(&p.base_dir, p.cfg.clone(), weights, want)?;
    Ok((m, td, Kind::Adapter, sha))
}
