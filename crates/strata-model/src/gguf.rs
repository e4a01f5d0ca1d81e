//! Import a llama.cpp GGUF file into a Hugging Face folder: dequantised weights (F32/F16/BF16/Q8_0/Q4_0/
//! Q4_1/Q4_K/Q5_K/Q6_K, via candle's GGUF reader) under HF names and `config.json` from the GGUF metadata.
//! The vocabulary is handed back as JSON metadata: `strata_tokenize::write_gguf_tokenizer` turns it into
//! `tokenizer.json` and `tokenizer_config.json`.
//!
//! llama.cpp stores Q and K projections permuted for its interleaved RoPE; HF Llama uses the "rotate half"
//! layout, so those two are permuted back here (the inverse of `permute` in llama.cpp's convert script).

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use serde_json::json;

use crate::{Context, LlamaConfig, ModelError, Result};

/// What an import produced.
#[derive(Debug, Clone)]
pub struct GgufImport {
    pub config: LlamaConfig,
    pub tensors: usize,
    /// GGUF tensor type → count, e.g. {"Q4_1": 210, "F32": 61}.
    pub types: std::collections::BTreeMap<String, usize>,
    pub name: Option<String>,
    /// The file's `tokenizer.*` metadata as JSON, for `strata_tokenize::write_gguf_tokenizer`.
    pub tokenizer_meta: serde_json::Map<String, serde_json::Value>,
}

pub fn bad(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::Weights {
        path: path.into(),
        reason: reason.into(),
    }
}

struct Meta<'a> {
    path: &'a Path,
    md: &'a HashMap<String, Value>,
}

impl Meta<'_> {
    fn get(&self, key: &str) -> Result<&Value> {
        self.md
            .get(key)
            .ok_or_else(|| bad(self.path, format!("metadata key {key:?} is missing")))
    }
    fn usize(&self, key: &str) -> Result<usize> {
        let v = self.get(key)?;
        let n = v
            .to_u64()
            .or_else(|_| v.to_u32().map(u64::from))
            .or_else(|_| v.to_i32().map(|x| u64::try_from(x).unwrap_or(0)));
        n.ok().and_then(|n| usize::try_from(n).ok()).ok_or_else(|| {
            bad(
                self.path,
                format!("metadata key {key:?} is not an unsigned integer"),
            )
        })
    }
    fn f64(&self, key: &str) -> Result<f64> {
        self.get(key)?
            .to_f32()
            .map(f64::from)
            .map_err(|_| bad(self.path, format!("metadata key {key:?} is not a float")))
    }
    fn string(&self, key: &str) -> Result<&str> {
        self.get(key)?
            .to_string()
            .map(String::as_str)
            .map_err(|_| bad(self.path, format!("metadata key {key:?} is not a string")))
    }
    fn strings(&self, key: &str) -> Result<Vec<&str>> {
        let arr = self
            .get(key)?
            .to_vec()
            .map_err(|_| bad(self.path, format!("metadata key {key:?} is not an array")))?;
        arr.iter()
            .map(|v| {
                v.to_string()
                    .map(String::as_str)
                    .map_err(|_| bad(self.path, format!("{key}: not an array of strings")))
            })
            .collect()
    }
    fn opt_u32(&self, key: &str) -> Option<u32> {
        self.md.get(key).and_then(|v| v.to_u32().ok())
    }
}

/// GGUF architectures Strata reads, with the Hugging Face class each becomes. Mistral GGUFs say "llama".
const GGUF_ARCHITECTURES: [(&str, &str); 4] = [
    ("llama", "LlamaForCausalLM"),
    ("qwen2", "Qwen2ForCausalLM"),
    ("qwen3", "Qwen3ForCausalLM"),
    ("gemma3", "Gemma3ForCausalLM"),
];

fn config_from(meta: &Meta<'_>) -> Result<LlamaConfig> {
    let arch = meta.string("general.architecture")?;
    let Some(&(_, hf_arch)) = GGUF_ARCHITECTURES.iter().find(|(a, _)| *a == arch) else {
        let names: Vec<&str> = GGUF_ARCHITECTURES.iter().map(|(a, _)| *a).collect();
        return Err(bad(
            meta.path,
            format!(
                "architecture {arch:?} is not supported (supported: {})",
                names.join(", ")
            ),
        ));
    };
    let k = |key: &str| format!("{arch}.{key}");
    let heads = meta.usize(&k("attention.head_count"))?;
    let hidden = meta.usize(&k("embedding_length"))?;
    let vocab = match meta.usize(&k("vocab_size")) {
        Ok(v) => v,
        Err(_) => meta.strings("tokenizer.ggml.tokens")?.len(),
    };
    // Qwen3 states its head size as the key length (128 on a hidden size of 1024 with 16 heads)
    let head_dim = meta
        .usize(&k("attention.key_length"))
        .or_else(|_| meta.usize(&k("rope.dimension_count")))
        .ok()
        .filter(|&d| d != hidden / heads.max(1));
    if meta.md.contains_key(&k("rope.scaling.type"))
        && meta.string(&k("rope.scaling.type")).unwrap_or("none") != "none"
    {
        return Err(bad(
            meta.path,
            format!(
                "{} is not supported yet (import the Hugging Face folder instead)",
                k("rope.scaling.type")
            ),
        ));
    }
    let cfg = LlamaConfig {
        architectures: vec![hf_arch.to_string()],
        model_type: arch.to_string(),
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: meta.usize(&k("feed_forward_length"))?,
        num_hidden_layers: meta.usize(&k("block_count"))?,
        num_attention_heads: heads,
        num_key_value_heads: Some(meta.usize(&k("attention.head_count_kv")).unwrap_or(heads)),
        head_dim,
        max_position_embeddings: meta.usize(&k("context_length"))?,
        rms_norm_eps: meta.f64(&k("attention.layer_norm_rms_epsilon"))?,
        rope_theta: meta.f64(&k("rope.freq_base")).unwrap_or(10_000.0),
        tie_word_embeddings: false, // set below from the presence of output.weight
        bos_token_id: meta.opt_u32("tokenizer.ggml.bos_token_id").map(crate::TokenIds::One),
        eos_token_id: meta.opt_u32("tokenizer.ggml.eos_token_id").map(crate::TokenIds::One),
        ..serde_json::from_value(json!({"vocab_size": 0, "hidden_size": 0, "intermediate_size": 0, "num_hidden_layers": 0, "num_attention_heads": 0, "max_position_embeddings": 0}))
            .map_err(|e| bad(meta.path, e.to_string()))?
    };
    if arch == "gemma3" {
        return gemma3_config(meta, cfg);
    }
    Ok(cfg)
}

/// What a `gemma3` GGUF leaves to llama.cpp's code rather than to its metadata, as llama.cpp decides it:
/// every 6th layer attends in full, the others within `attention.sliding_window` and turn with a RoPE
/// base of 10000; scores are scaled by key_length^-1/2 (n_embd / n_head for the 62-layer 27B); GeGLU.
fn gemma3_config(meta: &Meta<'_>, mut cfg: LlamaConfig) -> Result<LlamaConfig> {
    let n = cfg.num_hidden_layers;
    cfg.model_type = "gemma3_text".into();
    cfg.head_dim = Some(cfg.head_dim());
    cfg.hidden_activation = Some("gelu_pytorch_tanh".into());
    cfg.sliding_window = Some(meta.usize("gemma3.attention.sliding_window")?);
    cfg.layer_types = Some(
        (0..n)
            .map(|i| {
                if (i + 1) % 6 == 0 {
                    "full_attention".into()
                } else {
                    "sliding_attention".into()
                }
            })
            .collect(),
    );
    cfg.rope_local_base_freq = Some(10_000.0);
    #[allow(clippy::cast_precision_loss)]
    let scalar = if n == 62 {
        cfg.hidden_size / cfg.num_attention_heads
    } else {
        cfg.head_dim()
    } as f64;
    cfg.query_pre_attn_scalar = Some(scalar);
    // a chat turn ends with <end_of_turn>, a text with <eos>: both end generation, as in Gemma's own
    // generation_config.json and as llama.cpp treats them
    if let (Ok(tokens), Some(eos)) = (
        meta.strings("tokenizer.ggml.tokens"),
        meta.opt_u32("tokenizer.ggml.eos_token_id"),
    ) {
        if let Some(eot) = tokens.iter().position(|t| *t == "<end_of_turn>") {
            let eot = u32::try_from(eot).unwrap_or(u32::MAX);
            cfg.eos_token_id = Some(crate::TokenIds::Many(vec![eos, eot]));
        }
    }
    Ok(cfg)
}

/// Whether llama.cpp stored Q and K permuted for its interleaved RoPE: it does for `llama` (whose HF
/// weights rotate halves), not for `qwen2` (run with the NEOX rotation, the HF layout as it is).
#[must_use]
pub fn qk_permuted(cfg: &LlamaConfig) -> bool {
    cfg.architectures.iter().any(|a| a == "LlamaForCausalLM")
}

/// GGUF tensor name → Hugging Face name.
#[must_use]
pub fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "attn_output.bias" => "self_attn.o_proj.bias",
        "attn_q_norm.weight" => "self_attn.q_norm.weight",
        "attn_k_norm.weight" => "self_attn.k_norm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// Gemma 3's layer norms whose names differ from other models', as (GGUF, Hugging Face): `ffn_norm` is its
/// pre-feedforward norm, and it also has post-attention and post-feedforward norms.
pub(crate) const SANDWICH_NORMS: [(&str, &str); 3] = [
    ("ffn_norm.weight", "pre_feedforward_layernorm.weight"),
    (
        "post_attention_norm.weight",
        "post_attention_layernorm.weight",
    ),
    ("post_ffw_norm.weight", "post_feedforward_layernorm.weight"),
];

/// The Hugging Face name of GGUF tensor `gguf` in a model of `cfg`: as [`hf_name`], except Gemma 3's norms
/// ([`SANDWICH_NORMS`]).
#[must_use]
pub fn hf_name_of(cfg: &LlamaConfig, gguf: &str) -> Option<String> {
    if cfg.sandwich_norms() {
        if let Some((layer, part)) = gguf.strip_prefix("blk.").and_then(|r| r.split_once('.')) {
            let hf = SANDWICH_NORMS.iter().find(|(g, _)| *g == part);
            if let (Some((_, hf)), Ok(layer)) = (hf, layer.parse::<usize>()) {
                return Some(format!("model.layers.{layer}.{hf}"));
            }
        }
    }
    hf_name(gguf)
}

/// What llama.cpp's converter added to a tensor's values that Hugging Face does not store: Gemma's norm
/// gains are written as 1 + w (its RMSNorm's factor), so 1 is taken off on the way in.
#[must_use]
pub fn hf_offset(cfg: &LlamaConfig, hf: &str) -> f32 {
    if hf.ends_with("norm.weight") {
        -cfg.norm_shift()
    } else {
        0.0
    }
}

/// llama.cpp's Q/K permutation for its interleaved RoPE as a row order (`out[r] = w[order[r]]`), for a
/// matrix of `rows` rows in `n_head` heads. `to_hf`: GGUF's rows (n, hd/2, 2) back to HF's (n, 2, hd/2);
/// otherwise HF's to GGUF's, as llama.cpp's converter writes them. The one definition of the permutation:
/// the importer, the engine's loader and the exporter all take their order from here.
#[must_use]
pub fn qk_row_order(rows: usize, n_head: usize, to_hf: bool) -> Vec<usize> {
    let hd = rows / n_head.max(1);
    let half = hd / 2;
    (0..rows)
        .map(|r| {
            let (h, j) = (r / hd, r % hd);
            if to_hf {
                h * hd + (j % half) * 2 + j / half
            } else {
                h * hd + (j % 2) * half + j / 2
            }
        })
        .collect()
}

/// The rows of `w` in `order`.
pub(crate) fn reorder_rows(w: &Tensor, order: &[usize]) -> Result<Tensor> {
    let ids: Vec<u32> = order
        .iter()
        .map(|&i| u32::try_from(i).unwrap_or(u32::MAX))
        .collect();
    let ids = Tensor::from_vec(ids, order.len(), w.device()).ctx("row order")?;
    w.index_select(&ids, 0).ctx("reorder rows")
}

/// Undoes llama.cpp's Q/K permutation: rows (n, hd/2, 2) → (n, 2, hd/2), HF's order.
pub(crate) fn unpermute(w: &Tensor, n_head: usize) -> Result<Tensor> {
    let (rows, _) = w.dims2().ctx("unpermute")?;
    reorder_rows(w, &qk_row_order(rows, n_head, true))
}

/// Opens a GGUF file and reads its header (metadata and tensor directory).
///
/// # Errors
/// When the file cannot be read or is not a well-formed GGUF of a supported model (the message names it).
pub fn open(path: &Path) -> Result<(Content, BufReader<File>)> {
    let file = File::open(path).map_err(|source| ModelError::Io {
        path: path.into(),
        source,
    })?;
    let mut reader = BufReader::new(file);
    let content = read_header(path, &mut reader)?;
    Ok((content, reader))
}

/// Walks the metadata of a GGUF stream for `general.alignment`, which must be a power of two (candle divides
/// by it unchecked). Anything else malformed is left to candle's reader, which reports it.
fn check_alignment<R: std::io::Read + std::io::Seek>(r: &mut R) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind, SeekFrom};
    fn u32_of<R: std::io::Read>(r: &mut R) -> std::io::Result<u32> {
        let mut b = [0u8; 4];
        r.read_exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn u64_of<R: std::io::Read>(r: &mut R) -> std::io::Result<u64> {
        let mut b = [0u8; 8];
        r.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    /// Bytes of a fixed-size value type, None for string (8) and array (9).
    fn width(ty: u32) -> std::io::Result<Option<u64>> {
        Ok(Some(match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 | 9 => return Ok(None),
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidData,
                    format!("value type {ty}"),
                ))
            }
        }))
    }
    fn skip<R: std::io::Read + std::io::Seek>(r: &mut R, n: u64) -> std::io::Result<()> {
        let n = i64::try_from(n).map_err(|_| Error::new(ErrorKind::InvalidData, "length"))?;
        r.seek(SeekFrom::Current(n)).map(|_| ())
    }
    r.seek(SeekFrom::Start(0))?;
    let magic = u32_of(r)?;
    let version = u32_of(r)?;
    if magic != 0x4655_4747 || !(2..=3).contains(&version) {
        return Ok(()); // candle names what is wrong
    }
    let _tensors = u64_of(r)?;
    let kvs = u64_of(r)?;
    for _ in 0..kvs {
        let len = u64_of(r)?;
        if len > 1 << 16 {
            return Ok(());
        }
        let mut key = vec![0u8; usize::try_from(len).unwrap_or(0)];
        r.read_exact(&mut key)?;
        let ty = u32_of(r)?;
        if key == b"general.alignment" {
            let v = match width(ty)? {
                Some(w @ 1..=8) if ty != 6 && ty != 12 && ty != 7 => {
                    let mut b = [0u8; 8];
                    r.read_exact(&mut b[..usize::try_from(w).unwrap_or(8)])?;
                    u64::from_le_bytes(b)
                }
                _ => return Ok(()),
            };
            if !v.is_power_of_two() {
                return Err(Error::new(
                    ErrorKind::InvalidData,
                    format!("general.alignment is {v}, not a power of two"),
                ));
            }
            return Ok(());
        }
        match (ty, width(ty)?) {
            (_, Some(w)) => skip(r, w)?,
            (8, None) => {
                let n = u64_of(r)?;
                skip(r, n)?;
            }
            _ => {
                let ety = u32_of(r)?;
                let n = u64_of(r)?;
                match width(ety)? {
                    Some(w) => skip(r, n.checked_mul(w).ok_or(ErrorKind::InvalidData)?)?,
                    None if ety == 8 => {
                        for _ in 0..n {
                            let l = u64_of(r)?;
                            skip(r, l)?;
                        }
                    }
                    None => return Ok(()), // nested arrays: left to candle
                }
            }
        }
    }
    Ok(())
}

/// Reads the header of a GGUF stream; `path` names it in errors.
///
/// # Errors
/// When the file cannot be read or is not a well-formed GGUF of a supported model (the message names it).
pub fn read_header<R: std::io::Read + std::io::Seek>(
    path: &Path,
    reader: &mut R,
) -> Result<Content> {
    check_alignment(reader).map_err(|e| bad(path, format!("not a readable GGUF file: {e}")))?;
    reader
        .seek(std::io::SeekFrom::Start(0))
        .map_err(|source| ModelError::Io {
            path: path.into(),
            source,
        })?;
    Content::read(reader).map_err(|e| {
        bad(
            path,
            format!("not a readable GGUF file: {}", crate::candle_msg(&e)),
        )
    })
}

/// Llama 3.1-style files carry their RoPE frequency factors as a tensor; running without them would be silently
/// wrong at every position, so they are refused until the engine applies them.
fn refuse_rope_freqs(path: &Path, content: &Content) -> Result<()> {
    if content.tensor_infos.contains_key("rope_freqs.weight") {
        return Err(bad(
            path,
            "rope_freqs.weight (Llama 3.1 RoPE frequency factors) is not supported from GGUF yet: import the \
             Hugging Face folder, whose config.json rope_scaling Strata applies",
        ));
    }
    Ok(())
}

/// The model config of an opened GGUF file (`tie_word_embeddings` from the presence of `output.weight`).
///
/// # Errors
/// When the file cannot be read or is not a well-formed GGUF of a supported model (the message names it).
pub fn config_of(path: &Path, content: &Content) -> Result<LlamaConfig> {
    let mut cfg = config_from(&Meta {
        path,
        md: &content.metadata,
    })?;
    cfg.tie_word_embeddings = !content.tensor_infos.contains_key("output.weight");
    refuse_rope_freqs(path, content)?;
    Ok(cfg)
}

/// A tensor's (rows, cols, elements), checked before anything multiplies the shape out or reads by it
/// (the shape comes from the file): a matrix or a vector, no empty dimension, at most 2^40 values.
///
/// # Errors
/// Naming the tensor and its shape.
///
/// # Errors
/// When the file cannot be read or is not a well-formed GGUF of a supported model (the message names it).
pub fn checked_shape(
    path: &Path,
    name: &str,
    info: &candle_core::quantized::gguf_file::TensorInfo,
) -> Result<(usize, usize, usize)> {
    let dims = info.shape.dims();
    let (rows, cols) = match dims {
        [r, c] => (*r, *c),
        [c] => (1, *c),
        _ => {
            return Err(bad(
                path,
                format!("tensor {name}: shape {dims:?} (a matrix or a vector expected)"),
            ))
        }
    };
    rows.checked_mul(cols)
        .filter(|&n| n <= 1 << 40 && rows > 0 && cols > 0)
        .map(|elems| (rows, cols, elems))
        .ok_or_else(|| {
            bad(
                path,
                format!("tensor {name}: shape {dims:?} is empty or too large"),
            )
        })
}

/// The name the engine and [`crate::read_weights`] look for: a model folder whose weights are a GGUF file.
pub const GGUF_IN_FOLDER: &str = "model.gguf";

/// A variable builder backend that answers from a GGUF's tensor table: shapes are checked, nothing is read.
struct ShapeBackend {
    shapes: HashMap<String, Vec<usize>>,
}

impl candle_nn::var_builder::SimpleBackend for ShapeBackend {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: candle_core::DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        match self.shapes.get(name) {
            None => candle_core::bail!("not in the file"),
            Some(have) if have.as_slice() != s.dims() => candle_core::bail!(
                "shape {have:?} in the file, but the config implies {:?}",
                s.dims()
            ),
            Some(_) => Tensor::zeros((), dtype, dev)?.broadcast_as(s),
        }
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: candle_core::DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        match self.shapes.get(name) {
            None => candle_core::bail!("{name}: not in the file"),
            Some(have) => Tensor::zeros((), dtype, dev)?.broadcast_as(have.as_slice()),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.shapes.contains_key(name)
    }
}

/// Reads the GGUF at `path` as a model folder's would be: its config (checked), every tensor checked for
/// presence and shape against it from the tensor table alone (nothing dequantised: the weights stay in the
/// file, read by the engine as stored and by [`read_gguf_weights`] when a model is trained), and its
/// tokenizer metadata. Writes `config.json` and `generation_config.json` into `out` (which must exist).
///
/// # Errors
/// On a missing or malformed file, an unsupported architecture, tensor type or tokenizer, or a tensor
/// whose shape does not match the metadata.
pub fn import_gguf(path: &Path, out: &Path) -> Result<GgufImport> {
    let (content, _) = open(path)?;
    let meta = Meta {
        path,
        md: &content.metadata,
    };
    let mut cfg = config_from(&meta)?;
    cfg.validate().map_err(|e| bad(path, e.to_string()))?;
    refuse_rope_freqs(path, &content)?;
    let file_len = std::fs::metadata(path)
        .map_err(|source| ModelError::Io {
            path: path.into(),
            source,
        })?
        .len();
    let mut shapes = HashMap::new();
    let mut types = std::collections::BTreeMap::new();
    for (name, info) in &content.tensor_infos {
        let Some(hf) = hf_name_of(&cfg, name) else {
            // tensors HF does not have (rope_freqs.weight is refused above)
            tracing::debug!("skipping GGUF tensor {name}");
            continue;
        };
        let (rows, cols, elems) = checked_shape(path, name, info)?;
        // the block table must lie inside the file (nothing is read, so a cut file shows only here)
        let (block, size) = (info.ggml_dtype.block_size(), info.ggml_dtype.type_size());
        let end = (elems / block.max(1) * size) as u64 + content.tensor_data_offset + info.offset;
        if elems % block.max(1) != 0 || end > file_len {
            return Err(bad(
                path,
                format!(
                    "tensor {name}: its {:?} blocks end at byte {end}, past the end of the file ({file_len} \
                     bytes: truncated?)",
                    info.ggml_dtype
                ),
            ));
        }
        *types.entry(format!("{:?}", info.ggml_dtype)).or_insert(0) += 1;
        shapes.insert(
            hf,
            if info.shape.rank() == 1 {
                vec![cols]
            } else {
                vec![rows, cols]
            },
        );
    }
    cfg.tie_word_embeddings = !shapes.contains_key("lm_head.weight");
    let n = shapes.len();
    // Check every shape against the config before writing anything.
    let backend: Box<dyn candle_nn::var_builder::SimpleBackend> = Box::new(ShapeBackend { shapes });
    let vb = candle_nn::VarBuilder::from_backend(backend, candle_core::DType::F32, Device::Cpu);
    crate::Llama::load(&vb, &cfg).map_err(|e| bad(path, e.to_string()))?;
    crate::write_hf_config(out, &cfg)?;
    let tokenizer_meta = content
        .metadata
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
        .map(|(k, v)| (k.clone(), to_json(v)))
        .collect();
    Ok(GgufImport {
        config: cfg,
        tensors: n,
        types,
        name: meta.string("general.name").ok().map(str::to_string),
        tokenizer_meta,
    })
}

/// Every tensor of the GGUF at `path` under its Hugging Face name, dequantised to f32 one at a time (Q and K
/// un-permuted where llama.cpp permuted them): the weights of a model folder that holds a GGUF in place of
/// safetensors, for training and evaluation. Peak memory: the f32 weights and one tensor being converted.
///
/// # Errors
/// On a file that cannot be read, an unsupported architecture or tensor type, a tensor cut short.
pub fn read_gguf_weights(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let mut tensors = HashMap::new();
    stream_gguf_weights(path, device, &mut |hf, t| {
        tensors.insert(hf, t);
        Ok(())
    })?;
    Ok(tensors)
}

/// [`read_gguf_weights`] one tensor at a time, each handed to `each` by its Hugging Face name.
///
/// # Errors
/// As [`read_gguf_weights`], and when `each` fails.
pub fn stream_gguf_weights(
    path: &Path,
    device: &Device,
    each: &mut dyn FnMut(String, Tensor) -> Result<()>,
) -> Result<()> {
    stream_gguf(path, device, false, &mut |hf, w| match w {
        GgufWeight::Dense(t) => each(hf, t),
        GgufWeight::Blocks(m) => each(hf, m.to_tensor(device)?),
    })
}

/// A GGUF tensor as QLoRA holds it: its blocks as the file stores them, or f32 (norms, f32/f16 tensors).
pub enum GgufWeight {
    Blocks(crate::qweight::QuantMatrix),
    Dense(Tensor),
}

/// Hands each tensor of the GGUF at `path` to `each` by its Hugging Face name: a 2-D tensor in a block
/// type as its blocks, unchanged (Q and K rows put back in Hugging Face's order), any other dequantised as
/// [`read_gguf_weights`] gives it. One tensor in memory at a time besides what `each` keeps.
///
/// # Errors
/// As [`read_gguf_weights`], when a tensor's bytes are not whole blocks, and when `each` fails.
pub fn stream_gguf_blocks(
    path: &Path,
    device: &Device,
    each: &mut dyn FnMut(String, GgufWeight) -> Result<()>,
) -> Result<()> {
    stream_gguf(path, device, true, each)
}

/// The one walk over a GGUF's tensors: each read once, kept as blocks when `blocks` and it is a 2-D block
/// tensor, else dequantised ([`dequantized`]).
fn stream_gguf(
    path: &Path,
    device: &Device,
    blocks: bool,
    each: &mut dyn FnMut(String, GgufWeight) -> Result<()>,
) -> Result<()> {
    let (content, mut reader) = open(path)?;
    let cfg = config_from(&Meta {
        path,
        md: &content.metadata,
    })?;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let Some(hf) = hf_name_of(&cfg, name) else {
            continue;
        };
        let q = read_qtensor(path, &content, &mut reader, name, device)?;
        if let (true, Ok((rows, _)), 0.0) = (blocks, q.shape().dims2(), hf_offset(&cfg, &hf)) {
            let order = permuted_heads(&cfg, &hf).map(|n| qk_row_order(rows, n, true));
            let m = crate::qweight::QuantMatrix::from_qtensor(&q, order.as_deref(), &hf)
                .map_err(|e| bad(path, format!("tensor {name}: {e}")))?;
            if let Some(m) = m {
                each(hf, GgufWeight::Blocks(m))?;
                continue;
            }
        }
        let t = dequantized(path, &q, &cfg, name, &hf, device)?;
        drop(q);
        each(hf, GgufWeight::Dense(t))?;
    }
    Ok(())
}

/// The heads of a Q or K projection whose rows llama.cpp permuted (put back in Hugging Face's order on
/// reading); None for any other tensor or architecture.
fn permuted_heads(cfg: &LlamaConfig, hf: &str) -> Option<usize> {
    if !qk_permuted(cfg) {
        None
    } else if hf.ends_with("q_proj.weight") {
        Some(cfg.num_attention_heads)
    } else if hf.ends_with("k_proj.weight") {
        Some(cfg.kv_heads())
    } else {
        None
    }
}

/// The GGUF tensor `name` as stored (blocks or floats).
fn read_qtensor<R: std::io::Read + std::io::Seek>(
    path: &Path,
    content: &Content,
    reader: &mut R,
    name: &str,
    device: &Device,
) -> Result<candle_core::quantized::QTensor> {
    content
        .tensor(reader, name, device)
        .map_err(|e| bad(path, format!("tensor {name}: {}", crate::candle_msg(&e))))
}

/// The GGUF tensor `name` (Hugging Face name `hf`) dequantised to f32, Q and K un-permuted where llama.cpp
/// permuted them: the one tensor a streamed conversion holds at a time.
fn hf_tensor<R: std::io::Read + std::io::Seek>(
    path: &Path,
    content: &Content,
    reader: &mut R,
    cfg: &LlamaConfig,
    name: &str,
    hf: &str,
    device: &Device,
) -> Result<Tensor> {
    let q = read_qtensor(path, content, reader, name, device)?;
    dequantized(path, &q, cfg, name, hf, device)
}

/// A tensor read from the GGUF, in f32 and Hugging Face's layout: Q and K rows un-permuted, norm gains
/// shifted where the file stores them as 1 + w.
fn dequantized(
    path: &Path,
    q: &candle_core::quantized::QTensor,
    cfg: &LlamaConfig,
    name: &str,
    hf: &str,
    device: &Device,
) -> Result<Tensor> {
    let t = q
        .dequantize(device)
        .map_err(|e| bad(path, format!("tensor {name}: {}", crate::candle_msg(&e))))?;
    if let Some(n) = permuted_heads(cfg, hf) {
        unpermute(&t, n)
    } else if hf_offset(cfg, hf) != 0.0 {
        (t + f64::from(hf_offset(cfg, hf))).ctx(name)
    } else {
        Ok(t)
    }
}

/// Writes the weights of the GGUF at `path` as one `model.safetensors` at `out` (HF names, Q and K
/// un-permuted, `dtype` F32, F16 or BF16, transformers' `format: pt`), for tools that read only safetensors:
/// the header first (every size is known from the tensor table), then each tensor dequantised and written as
/// it is read, so memory holds one tensor at a time. Atomic (temporary file, fsync, rename).
///
/// # Errors
/// On a file that cannot be read, an unsupported tensor type, a dtype other than those three, an I/O failure.
pub fn write_gguf_safetensors(path: &Path, out: &Path, dtype: candle_core::DType) -> Result<()> {
    use std::io::Write as _;
    let st = match dtype {
        candle_core::DType::F32 => "F32",
        candle_core::DType::F16 => "F16",
        candle_core::DType::BF16 => "BF16",
        other => {
            return Err(bad(
                path,
                format!("safetensors in {other:?}: f32, f16 or bf16"),
            ))
        }
    };
    let (content, mut reader) = open(path)?;
    let cfg = config_from(&Meta {
        path,
        md: &content.metadata,
    })?;
    let mut names: Vec<(String, &String)> = content
        .tensor_infos
        .keys()
        .filter_map(|g| hf_name_of(&cfg, g).map(|h| (h, g)))
        .collect();
    names.sort();
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0usize;
    for (hf, g) in &names {
        let dims = content.tensor_infos[*g].shape.dims().to_vec();
        let bytes = dims.iter().product::<usize>() * dtype.size_in_bytes();
        header.insert(
            hf.clone(),
            json!({"dtype": st, "shape": dims, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut head = serde_json::Value::Object(header).to_string().into_bytes();
    head.resize(head.len().div_ceil(8) * 8, b' ');
    let io = |e: std::io::Error| ModelError::Io {
        path: out.into(),
        source: e,
    };
    let store_err = |e: strata_store::StoreError| bad(out, e.to_string());
    let mut f = strata_store::AtomicFile::create(out).map_err(store_err)?;
    f.write_all(&(head.len() as u64).to_le_bytes())
        .map_err(io)?;
    f.write_all(&head).map_err(io)?;
    let device = Device::Cpu;
    for (hf, g) in &names {
        let t = hf_tensor(path, &content, &mut reader, &cfg, g, hf, &device)?;
        let (_, raw) = t
            .to_dtype(dtype)
            .and_then(|t| crate::hf::le_bytes(&t))
            .map_err(|e| bad(path, format!("tensor {g}: {}", crate::candle_msg(&e))))?;
        f.write_all(&raw).map_err(io)?;
    }
    f.commit().map_err(store_err)?;
    Ok(())
}

/// A GGUF metadata value as JSON (arrays element by element).
fn to_json(v: &Value) -> serde_json::Value {
    match v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::F32(x) => json!(x),
        Value::F64(x) => json!(x),
        Value::Bool(x) => json!(x),
        Value::String(x) => json!(x),
        Value::Array(a) => serde_json::Value::Array(a.iter().map(to_json).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_hugging_face() {
        assert_eq!(
            hf_name("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(
            hf_name("blk.12.attn_output.weight").as_deref(),
            Some("model.layers.12.self_attn.o_proj.weight")
        );
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight").as_deref(),
            Some("model.layers.0.post_attention_layernorm.weight")
        );
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(n, 2, hd/2, D).swapaxes(1, 2).reshape(w.shape). With n = 1, hd = 4, D = 1,
        // rows [a0 a1 b0 b1] (HF: first half a, second half b) become [a0 b0 a1 b1].
        let gguf = Tensor::new(&[[0f32], [10.], [1.], [11.]], &Device::Cpu).unwrap();
        let hf: Vec<Vec<f32>> = unpermute(&gguf, 1).unwrap().to_vec2().unwrap();
        assert_eq!(hf, vec![vec![0.], vec![1.], vec![10.], vec![11.]]);
    }
}
