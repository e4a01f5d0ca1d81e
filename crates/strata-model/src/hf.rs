//! The Hugging Face folder format: `config.json`, `generation_config.json`, `model.safetensors`
//! (HF tensor names, f32, `{"format": "pt"}` metadata as transformers writes it).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::{Llama, LlamaConfig, ModelError, Result};

/// Reads and validates a `config.json`.
///
/// # Errors
/// When the file is missing, is not JSON, lacks a required field or describes an unsupported model.
pub fn read_config(path: &Path) -> Result<LlamaConfig> {
    let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
        path: path.into(),
        source,
    })?;
    if serde_json::from_slice::<serde_json::Value>(&bytes).is_ok_and(|v| v["model_type"] == "llava")
    {
        return Err(ModelError::Config {
            path: path.into(),
            reason: "a vision-language (LLaVA) model, not a text model: `strata eval --images` scores it on \
                     images, `strata eval --dataset` its decoder on text, `strata finetune --images` trains it \
                     further"
                .into(),
        });
    }
    let cfg = serde_json::from_slice::<serde_json::Value>(&bytes)
        .and_then(|v| LlamaConfig::from_json(&v))
        .map_err(|e| ModelError::Config {
            path: path.into(),
            reason: e.to_string(),
        })?;
    cfg.validate().map_err(|e| ModelError::Config {
        path: path.into(),
        reason: e.to_string(),
    })?;
    Ok(cfg)
}

/// Writes `config.json` and `generation_config.json` into `dir`.
///
/// # Errors
/// On an I/O failure.
pub fn write_hf_config(dir: &Path, cfg: &LlamaConfig) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e: strata_store::StoreError| ModelError::Weights {
            path,
            reason: e.to_string(),
        }
    };
    let p = dir.join("config.json");
    strata_store::write_json_atomic(&p, cfg).map_err(io(&p))?;
    let g = dir.join("generation_config.json");
    let gen = serde_json::json!({
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "do_sample": true,
        "temperature": 0.8,
        "top_p": 0.95,
    });
    strata_store::write_json_atomic(&g, &gen).map_err(io(&g))?;
    Ok(())
}

/// A tensor's values as safetensors stores them: little-endian bytes, row-major, with their dtype. f16 and bf16
/// keep their type; every other type is written as f32.
///
/// # Errors
/// On a conversion failure.
pub(crate) fn le_bytes(t: &Tensor) -> candle_core::Result<(safetensors::Dtype, Vec<u8>)> {
    let flat = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F16 => (
            safetensors::Dtype::F16,
            flat.to_vec1::<half::f16>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        DType::BF16 => (
            safetensors::Dtype::BF16,
            flat.to_vec1::<half::bf16>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        _ => (
            safetensors::Dtype::F32,
            flat.to_dtype(DType::F32)?
                .to_vec1::<f32>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
    })
}

/// Writes named tensors as safetensors with transformers' metadata (plus `extra` entries), atomically.
/// f16 and bf16 tensors keep their type; every other type is written as f32.
///
/// # Errors
/// On a conversion or I/O failure.
pub fn save_safetensors(
    tensors: &HashMap<String, Tensor>,
    path: &Path,
    extra: &[(&str, String)],
) -> Result<()> {
    let err = |reason: String| ModelError::Weights {
        path: path.into(),
        reason,
    };
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut buffers = Vec::with_capacity(names.len());
    for name in &names {
        let t = &tensors[*name];
        let (dtype, bytes) = le_bytes(t).map_err(|e| err(format!("{name}: {e}")))?;
        buffers.push((name.as_str(), dtype, t.dims().to_vec(), bytes));
    }
    let views: Vec<(&str, safetensors::tensor::TensorView<'_>)> = buffers
        .iter()
        .map(|(n, dtype, shape, bytes)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (*n, v))
                .map_err(|e| err(format!("{n}: {e}")))
        })
        .collect::<Result<_>>()?;
    let mut metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    metadata.extend(extra.iter().map(|(k, v)| ((*k).to_string(), v.clone())));
    let metadata = Some(metadata);
    let bytes = safetensors::serialize(views, metadata).map_err(|e| err(e.to_string()))?;
    strata_store::write_atomic(path, &bytes).map_err(|e| err(e.to_string()))
}

/// Reads a safetensors file: its tensors and its metadata.
///
/// # Errors
/// When the file is missing, truncated or malformed.
pub fn read_safetensors(
    path: &Path,
    device: &Device,
) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let mut tensors = HashMap::new();
    let meta = stream_safetensors(path, device, &mut |name, t| {
        tensors.insert(name, t);
        Ok(())
    })?;
    Ok((tensors, meta))
}

/// Hands the tensors of a safetensors file to `each` one at a time (in the file's order) and returns its
/// metadata. Only the tensor being handed over is in memory, besides what `each` keeps.
///
/// # Errors
/// When the file is missing, truncated or malformed, or `each` fails.
pub fn stream_safetensors(
    path: &Path,
    device: &Device,
    each: &mut dyn FnMut(String, Tensor) -> Result<()>,
) -> Result<HashMap<String, String>> {
    let io = |source| ModelError::Io {
        path: path.into(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    // SAFETY: a read-only map of a weights file; store artifacts are written once (temp file, rename) and
    // never modified in place, so the bytes do not change under the map.
    #[allow(unsafe_code)]
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
    let err = |reason: String| ModelError::Weights {
        path: path.into(),
        reason,
    };
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&map).map_err(|e| err(e.to_string()))?;
    let st = safetensors::SafeTensors::deserialize(&map).map_err(|e| err(e.to_string()))?;
    for (name, view) in st.tensors() {
        let t = candle_core::safetensors::Load::load(&view, device)
            .map_err(|e| err(format!("{name}: {}", crate::candle_msg(&e))))?;
        // Each tensor is copied out of the map; its file pages then leave the resident set, so loading a
        // model peaks at its size plus one tensor, not twice its size (measured: SmolLM2-135M f32 loaded
        // at 1.1 GB peak RSS when read whole).
        let offset = view.data().as_ptr() as usize - map.as_ptr() as usize;
        // SAFETY: DONTNEED on a private read-only file map only drops pages; the next access reads them
        // from the file again.
        #[allow(unsafe_code)]
        let _ = unsafe {
            map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                offset,
                view.data().len(),
            )
        };
        each(name, t)?;
    }
    Ok(meta.metadata().clone().unwrap_or_default())
}

/// Reads safetensors bytes in memory (`path` names them in errors).
///
/// # Errors
/// When the bytes are truncated or malformed.
pub fn read_safetensors_bytes(
    path: &Path,
    bytes: &[u8],
    device: &Device,
) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let err = |reason: String| ModelError::Weights {
        path: path.into(),
        reason,
    };
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| err(e.to_string()))?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    let tensors = candle_core::safetensors::load_buffer(bytes, device)
        .map_err(|e| err(crate::candle_msg(&e)))?;
    Ok((tensors, metadata))
}

/// The weight files of a model folder: `model.safetensors`, or the index and the shards it lists.
struct WeightFiles {
    /// `model.safetensors.index.json` and the tensor names of its `weight_map`, when sharded.
    index: Option<(std::path::PathBuf, Vec<String>)>,
    /// The safetensors files, relative to the folder.
    files: Vec<String>,
}

fn weight_files(dir: &Path) -> Result<WeightFiles> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(WeightFiles {
            index: None,
            files: vec!["model.safetensors".into()],
        });
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Err(ModelError::Io {
            path: single,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "missing model.safetensors (and no model.safetensors.index.json)",
            ),
        });
    }
    let bytes = std::fs::read(&index).map_err(|source| ModelError::Io {
        path: index.clone(),
        source,
    })?;
    let bad = |reason: String| ModelError::Config {
        path: index.clone(),
        reason,
    };
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    let map = v["weight_map"]
        .as_object()
        .ok_or_else(|| bad("no weight_map object".into()))?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(|f| f.as_str().map(String::from))
        .collect();
    files.sort_unstable();
    files.dedup();
    if let Some(f) = files.iter().find(|f| f.contains('/') || f.contains("..")) {
        return Err(bad(format!("shard name {f:?} leaves the folder")));
    }
    let names = map.keys().cloned().collect();
    Ok(WeightFiles {
        index: Some((index, names)),
        files,
    })
}

/// All tensors of a model folder: `model.safetensors`, or the shards listed by
/// `model.safetensors.index.json` (f32, f16 or bf16; converted to f32 when the model is built), or, in a
/// folder that has neither, those of its `model.gguf` (an imported GGUF), dequantised to f32.
///
/// # Errors
/// When the weights are missing, a shard is unreadable, or the index is malformed.
pub fn read_weights(dir: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let mut all = HashMap::new();
    stream_weights(dir, device, &mut |name, t| {
        all.insert(name, t);
        Ok(())
    })?;
    Ok(all)
}

/// [`read_weights`] one tensor at a time: each is handed to `each` and dropped unless it keeps it, so a
/// caller that converts as it reads (QLoRA's quantised base) never holds the model in f32.
///
/// # Errors
/// As [`read_weights`], and when `each` fails.
pub fn stream_weights(
    dir: &Path,
    device: &Device,
    each: &mut dyn FnMut(String, Tensor) -> Result<()>,
) -> Result<()> {
    let gguf = dir.join(crate::gguf::GGUF_IN_FOLDER);
    if gguf.is_file()
        && !dir.join("model.safetensors").is_file()
        && !dir.join("model.safetensors.index.json").is_file()
    {
        // an imported GGUF: its weights are the file's, dequantised now
        return crate::gguf::stream_gguf_weights(&gguf, device, each);
    }
    let wf = weight_files(dir)?;
    let mut seen = std::collections::HashSet::new();
    for f in &wf.files {
        stream_safetensors(&dir.join(f), device, &mut |name, t| {
            seen.insert(name.clone());
            each(name, t)
        })?;
    }
    if let Some((index, names)) = &wf.index {
        if let Some(name) = names.iter().find(|n| !seen.contains(*n)) {
            return Err(ModelError::Config {
                path: index.clone(),
                reason: format!("{name} is listed in weight_map but no shard holds it"),
            });
        }
    }
    Ok(())
}

/// Loads a model folder (`config.json` + `model.safetensors` or its shards) for inference.
///
/// # Errors
/// When a file is missing, truncated or its tensors do not match the config.
pub fn load_model(dir: &Path, device: &Device) -> Result<Llama> {
    let cfg = read_config(&dir.join("config.json"))?;
    let tensors = read_weights(dir, device)?;
    let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
    Llama::load(&vb, &cfg).map_err(|e| ModelError::Weights {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })
}

/// What [`check_folder`] found: the config, the weight files and their tensors by dtype.
#[derive(Debug, Clone)]
pub struct FolderCheck {
    pub config: LlamaConfig,
    /// `model.safetensors`, or the index and its shards, relative to the folder.
    pub weight_files: Vec<String>,
    /// Number of tensors per safetensors dtype (`F32`, `F16`, `BF16`).
    pub dtypes: std::collections::BTreeMap<String, usize>,
    pub tensors: usize,
}

struct Header {
    dtype: String,
    shape: Vec<usize>,
}

/// Reads the header of a safetensors file with the `safetensors` crate (over a memory map, so nothing but
/// the header is paged in) — which checks that the tensors' offsets are in order, fit their dtype and shape,
/// and cover the data to the end of the file — and keeps the tensors the model can load (F32, F16, BF16).
fn read_header(path: &Path) -> Result<HashMap<String, Header>> {
    let err = |reason: String| ModelError::Weights {
        path: path.into(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|source| ModelError::Io {
        path: path.into(),
        source,
    })?;
    // SAFETY: the map is read only while this function runs; a file changed meanwhile by another process
    // can only make the parse fail (the crate bounds every read by the map's length).
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| ModelError::Io {
        path: path.into(),
        source,
    })?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&map).map_err(|e| {
        err(match e {
            safetensors::SafeTensorError::MetadataIncompleteBuffer
            | safetensors::SafeTensorError::InvalidHeaderLength
            | safetensors::SafeTensorError::HeaderTooSmall => {
                format!("{e} (truncated file?)")
            }
            other => other.to_string(),
        })
    })?;
    let mut out = HashMap::new();
    for (name, info) in meta.tensors() {
        let dtype = match info.dtype {
            safetensors::Dtype::F32 => "F32",
            safetensors::Dtype::F16 => "F16",
            safetensors::Dtype::BF16 => "BF16",
            other => {
                return Err(err(format!(
                    "{name}: dtype {other:?} is not supported (F32, F16, BF16)"
                )))
            }
        };
        out.insert(
            name,
            Header {
                dtype: dtype.to_string(),
                shape: info.shape.clone(),
            },
        );
    }
    Ok(out)
}

/// A variable builder backend that answers from safetensors headers: shapes are checked, nothing is read.
struct HeaderBackend {
    headers: HashMap<String, Header>,
}

impl candle_nn::var_builder::SimpleBackend for HeaderBackend {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let Some(h) = self.headers.get(name) else {
            candle_core::bail!("not in the weights");
        };
        if h.shape != s.dims() {
            candle_core::bail!(
                "shape {:?} in the weights, but the config implies {:?}",
                h.shape,
                s.dims()
            );
        }
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let Some(h) = self.headers.get(name) else {
            candle_core::bail!("{name}: not in the weights");
        };
        Tensor::zeros((), dtype, dev)?.broadcast_as(h.shape.as_slice())
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.headers.contains_key(name)
    }
}

/// Checks a Hugging Face model folder without loading its weights: `config.json` is read and validated,
/// and every tensor the model needs is present in `model.safetensors` (or the shards of
/// `model.safetensors.index.json`) with the shape the config implies.
///
/// # Errors
/// Naming the file and the tensor or field that is wrong.
pub fn check_folder(dir: &Path) -> Result<FolderCheck> {
    let config = read_config(&dir.join("config.json"))?;
    let wf = weight_files(dir)?;
    let shards = wf.files;
    let mut weight_files = Vec::new();
    if wf.index.is_some() {
        weight_files.push("model.safetensors.index.json".to_string());
    }
    let mut headers = HashMap::new();
    for f in &shards {
        headers.extend(read_header(&dir.join(f))?);
    }
    weight_files.extend(shards);
    let mut dtypes = std::collections::BTreeMap::new();
    for h in headers.values() {
        *dtypes.entry(h.dtype.clone()).or_insert(0) += 1;
    }
    let tensors = headers.len();
    let backend: Box<dyn candle_nn::var_builder::SimpleBackend> =
        Box::new(HeaderBackend { headers });
    let vb = VarBuilder::from_backend(backend, DType::F32, Device::Cpu);
    Llama::load(&vb, &config).map_err(|e| ModelError::Weights {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(FolderCheck {
        config,
        weight_files,
        dtypes,
        tensors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_then_load_gives_identical_logits_and_bad_files_are_named() {
        let cfg = crate::ModelSpec {
            hidden_size: 16,
            intermediate_size: 32,
            layers: 1,
            heads: 2,
            kv_heads: 1,
            context: 8,
            rope_theta: 1e4,
            tie_word_embeddings: false,
        }
        .to_config(20, 0)
        .unwrap();
        let (vm, model) = crate::test_util::new_model(&cfg);
        let d = tempfile::tempdir().unwrap();
        let tensors = crate::test_util::tensors_of(&vm);
        save_safetensors(&tensors, &d.path().join("model.safetensors"), &[]).unwrap();
        write_hf_config(d.path(), &cfg).unwrap();
        let loaded = load_model(d.path(), &Device::Cpu).unwrap();
        let ids = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap();
        let (a, b) = (
            crate::test_util::logits(&model, &ids),
            crate::test_util::logits(&loaded, &ids),
        );
        assert_eq!(a, b);

        // truncated weights
        let p = d.path().join("model.safetensors");
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        let err = load_model(d.path(), &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("model.safetensors"), "{err}");
        // config missing a field
        std::fs::write(d.path().join("config.json"), r#"{"vocab_size": 20}"#).unwrap();
        let err = load_model(d.path(), &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("config.json") && err.contains("hidden_size"),
            "{err}"
        );
    }
}
