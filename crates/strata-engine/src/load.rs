//! Building a [`CpuModel`] from a Hugging Face folder or directly from a GGUF file.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};

use super::kernels::Isa;
use super::quant::{q4_k_as_q4_1, Matrix, WeightType, QK, QK_K};
use super::{CpuModel, Layer};
use strata_model::{Context, LlamaConfig, ModelError, Result};

/// A tensor as read: f32 values or ggml blocks, and whether it was a type the engine does not run (K-quants
/// and others: Q4_K repacked as Q4_1, the others dequantised on reading).
struct Stored {
    m: Matrix,
    foreign_quant: bool,
}

fn engine_type(t: GgmlDType) -> Option<WeightType> {
    match t {
        GgmlDType::Q8_0 => Some(WeightType::Q8_0),
        GgmlDType::Q4_0 => Some(WeightType::Q4_0),
        GgmlDType::Q4_1 => Some(WeightType::Q4_1),
        GgmlDType::Q5_0 => Some(WeightType::Q5_0),
        _ => None,
    }
}

fn has_safetensors(dir: &Path) -> bool {
    dir.join("model.safetensors").is_file() || dir.join("model.safetensors.index.json").is_file()
}

/// The GGUF file `strata import` keeps beside the Hugging Face files of an imported model.
pub const GGUF_IN_FOLDER: &str = strata_model::gguf::GGUF_IN_FOLDER;

impl CpuModel {
    /// Loads a model folder or a `.gguf` file for CPU inference. `want` sets the type of the projections and
    /// the output head; `None` keeps what is stored: a folder with a `model.gguf` (an imported GGUF) runs
    /// that file's blocks, f16/bf16 run as f32, Q4_K as Q4_1 (`quant::q4_k_as_q4_1`), other K-quants as
    /// Q8_0.
    ///
    /// # Errors
    /// When a file is missing or malformed, or a tensor does not match the config.
    pub fn load(path: &Path, want: Option<WeightType>) -> Result<Self> {
        if path.is_file() {
            Self::from_gguf(path, want)
        } else if path.join(GGUF_IN_FOLDER).is_file() && (want.is_none() || !has_safetensors(path))
        {
            // an imported GGUF: its blocks as stored, or converted from them to `want` (no f32 copy first)
            Self::from_gguf(&path.join(GGUF_IN_FOLDER), want)
        } else {
            Self::from_hf(path, want)
        }
    }

    fn from_hf(dir: &Path, want: Option<WeightType>) -> Result<Self> {
        let cfg = strata_model::read_config(&dir.join("config.json"))?;
        let tensors = strata_model::read_weights(dir, &Device::Cpu)?;
        Self::from_tensors(dir, cfg, tensors, want)
    }

    /// Builds the engine from tensors under Hugging Face names (as `read_weights` returns them); `src` names
    /// them in errors.
    ///
    /// # Errors
    /// When a tensor is missing or does not match the config.
    pub fn from_tensors(
        src: &Path,
        cfg: LlamaConfig,
        tensors: HashMap<String, candle_core::Tensor>,
        want: Option<WeightType>,
    ) -> Result<Self> {
        let mut stored = HashMap::new();
        for (name, t) in tensors {
            let dims = t.dims().to_vec();
            let data: Vec<f32> = t
                .to_dtype(DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1())
                .ctx(&name)?;
            let (rows, cols) = match dims[..] {
                [r, c] => (r, c),
                [c] => (1, c),
                _ => (1, data.len()),
            };
            stored.insert(
                name,
                Stored {
                    m: Matrix::dense(rows, cols, data),
                    foreign_quant: false,
                },
            );
        }
        build(src, cfg, stored, want)
    }

    fn from_gguf(path: &Path, want: Option<WeightType>) -> Result<Self> {
        let (_, reader) = strata_model::gguf::open(path)?;
        Self::from_gguf_reader(path, reader, want)
    }

    /// Loads a model from GGUF bytes in memory (`src` names them in errors).
    ///
    /// # Errors
    /// As [`CpuModel::load`] for a GGUF file.
    pub fn from_gguf_bytes(src: &Path, bytes: &[u8], want: Option<WeightType>) -> Result<Self> {
        Self::from_gguf_reader(src, std::io::Cursor::new(bytes), want)
    }

    fn from_gguf_reader<R: std::io::Read + std::io::Seek>(
        path: &Path,
        mut reader: R,
        want: Option<WeightType>,
    ) -> Result<Self> {
        let content = strata_model::gguf::read_header(path, &mut reader)?;
        let cfg = strata_model::gguf::config_of(path, &content)?;
        cfg.validate()
            .map_err(|e| strata_model::gguf::bad(path, e.to_string()))?;
        let bad = |name: &str, e: &candle_core::Error| {
            strata_model::gguf::bad(
                path,
                format!("tensor {name}: {}", strata_model::candle_msg(e)),
            )
        };
        let mut stored = HashMap::new();
        for (name, info) in &content.tensor_infos {
            let Some(hf) = strata_model::gguf::hf_name_of(&cfg, name) else {
                continue;
            };
            let (rows, cols, elems) = strata_model::gguf::checked_shape(path, name, info)?;
            let dims = info.shape.dims().to_vec();
            // the blocks as the file holds them, read straight into the matrix's buffer (no second copy)
            let mut blocks = || -> Result<Vec<u8>> {
                let ty = info.ggml_dtype;
                let mut bytes = vec![0u8; ty.type_size() * elems / ty.block_size().max(1)];
                reader
                    .seek(std::io::SeekFrom::Start(
                        content.tensor_data_offset + info.offset,
                    ))
                    .and_then(|_| reader.read_exact(&mut bytes))
                    .map_err(|_| {
                        strata_model::gguf::bad(path, format!("tensor {name}: truncated blocks"))
                    })?;
                Ok(bytes)
            };
            // a matrix the forward multiplies by (the embedding's rows are looked up as they are)
            let projection = rows > 1 && hf != "model.embed_tokens.weight";
            // a Q4_K projection runs as the Q4_1 of its sub-blocks (exact up to the f16 rounding of their
            // scales, `quant::q4_k_as_q4_1`) unless another type is asked for
            let q4_k = info.ggml_dtype == GgmlDType::Q4K
                && projection
                && cols % QK_K == 0
                && matches!(want, None | Some(WeightType::Q4_1));
            let mut s = match engine_type(info.ggml_dtype) {
                _ if q4_k => {
                    let bytes = blocks()?;
                    Stored {
                        m: Matrix::from_blocks(rows, cols, WeightType::Q4_1, q4_k_as_q4_1(&bytes)),
                        foreign_quant: true,
                    }
                }
                Some(ty) if cols % QK == 0 => {
                    let bytes = blocks()?;
                    Stored {
                        m: Matrix::from_blocks(rows, cols, ty, bytes),
                        foreign_quant: false,
                    }
                }
                _ => {
                    let q = content
                        .tensor(&mut reader, name, &Device::Cpu)
                        .map_err(|e| bad(name, &e))?;
                    let t = q.dequantize(&Device::Cpu).map_err(|e| bad(name, &e))?;
                    drop(q);
                    let data: Vec<f32> = t
                        .flatten_all()
                        .and_then(|t| t.to_vec1())
                        .map_err(|e| bad(name, &e))?;
                    if data.len() != elems {
                        return Err(strata_model::gguf::bad(
                            path,
                            format!("tensor {name}: {} values for shape {dims:?}", data.len()),
                        ));
                    }
                    let foreign_quant = !matches!(
                        info.ggml_dtype,
                        GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16
                    );
                    // a K-quant projection becomes the Q8_0 it runs as now, not at the end: the f32 of one
                    // tensor at a time, never of the whole model (the embedding stays f32: its rows are read
                    // as they are)
                    let early = foreign_quant
                        && projection
                        && cols % QK == 0
                        && matches!(want, None | Some(WeightType::Q8_0));
                    Stored {
                        m: if early {
                            Matrix::quantized(rows, cols, &data, WeightType::Q8_0)
                        } else {
                            Matrix::dense(rows, cols, data)
                        },
                        foreign_quant,
                    }
                }
            };
            unpermute_qk(path, &cfg, name, &hf, &mut s.m)?;
            let offset = strata_model::gguf::hf_offset(&cfg, &hf);
            if offset != 0.0 && s.m.ty == WeightType::F32 {
                // Gemma's norm gains as HF stores them (the forward adds the 1 back)
                for v in &mut s.m.f32 {
                    *v += offset;
                }
            }
            stored.insert(hf, s);
        }
        build(path, cfg, stored, want)
    }
}

/// llama.cpp permutes the Q and K rows of `llama` files for its interleaved RoPE: put them back in HF order.
fn unpermute_qk(
    path: &Path,
    cfg: &LlamaConfig,
    name: &str,
    hf: &str,
    m: &mut Matrix,
) -> Result<()> {
    let permuted = strata_model::gguf::qk_permuted(cfg);
    let heads = if permuted && hf.ends_with("q_proj.weight") {
        cfg.num_attention_heads
    } else if permuted && hf.ends_with("k_proj.weight") {
        cfg.kv_heads()
    } else {
        return Ok(());
    };
    let rows = m.rows;
    if heads == 0 || rows != heads * cfg.head_dim() || !(rows / heads).is_multiple_of(2) {
        return Err(strata_model::gguf::bad(
            path,
            format!("tensor {name}: {rows} rows for {heads} heads"),
        ));
    }
    *m = m.permute_rows(&strata_model::gguf::qk_row_order(rows, heads, true));
    Ok(())
}

/// A norm's stored gain `g` as it multiplies: Gemma's 1 + w (added once here, in f32 as its forward adds
/// it), anyone else's as it is.
fn norm_gain(cfg: &LlamaConfig, mut g: Vec<f32>) -> Vec<f32> {
    let shift = cfg.norm_shift();
    if shift != 0.0 {
        for v in &mut g {
            *v += shift;
        }
    }
    g
}

/// Layer `i` from the stored tensors (`take`: by name, with the shape the config implies), its projections
/// in the type `proj` makes them.
fn layer(
    cfg: &LlamaConfig,
    i: usize,
    take: &mut dyn FnMut(&str, usize, usize) -> Result<Stored>,
    proj: &dyn Fn(Stored) -> Matrix,
) -> Result<Layer> {
    let (d, nh, nkv, hd, f) = (
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.kv_heads(),
        cfg.head_dim(),
        cfg.intermediate_size,
    );
    let p = |n: &str| format!("model.layers.{i}.{n}");
    let mut vector = |n: &str, len: usize| take(&p(n), 1, len).map(|s| s.m.dequantize());
    let qkv_bias = if cfg.qkv_bias() {
        let mut b = vector("self_attn.q_proj.bias", nh * hd)?;
        b.extend(vector("self_attn.k_proj.bias", nkv * hd)?);
        b.extend(vector("self_attn.v_proj.bias", nkv * hd)?);
        Some(b)
    } else {
        None
    };
    let o_bias = if cfg.o_bias() {
        Some(vector("self_attn.o_proj.bias", d)?)
    } else {
        None
    };
    let mut gain = |n: &str, len: usize| vector(n, len).map(|g| norm_gain(cfg, g));
    let qk_norm = if cfg.qk_norm() {
        let q = gain("self_attn.q_norm.weight", hd)?;
        Some((q, gain("self_attn.k_norm.weight", hd)?))
    } else {
        None
    };
    let attn_norm = gain("input_layernorm.weight", d)?;
    let (ffn_norm, post_norms) = if cfg.sandwich_norms() {
        (
            gain("pre_feedforward_layernorm.weight", d)?,
            Some((
                gain("post_attention_layernorm.weight", d)?,
                gain("post_feedforward_layernorm.weight", d)?,
            )),
        )
    } else {
        (gain("post_attention_layernorm.weight", d)?, None)
    };
    let mut proj_of = |n: &str, rows: usize, cols: usize| take(&p(n), rows, cols).map(proj);
    let q = proj_of("self_attn.q_proj.weight", nh * hd, d)?;
    let k = proj_of("self_attn.k_proj.weight", nkv * hd, d)?;
    let v = proj_of("self_attn.v_proj.weight", nkv * hd, d)?;
    let gate = proj_of("mlp.gate_proj.weight", f, d)?;
    let up = proj_of("mlp.up_proj.weight", f, d)?;
    Ok(Layer {
        attn_norm,
        qkv: stack_same_type(vec![q, k, v]),
        qkv_bias,
        qk_norm,
        o: proj_of("self_attn.o_proj.weight", d, nh * hd)?,
        o_bias,
        ffn_norm,
        post_norms,
        gate_up: stack_same_type(vec![gate, up]),
        down: proj_of("mlp.down_proj.weight", d, f)?,
    })
}

fn build(
    src: &Path,
    cfg: LlamaConfig,
    mut stored: HashMap<String, Stored>,
    want: Option<WeightType>,
) -> Result<CpuModel> {
    cfg.validate()?;
    let (d, v) = (cfg.hidden_size, cfg.vocab_size);
    let err = |reason: String| ModelError::Weights {
        path: src.to_path_buf(),
        reason,
    };
    let mut take = |name: &str, rows: usize, cols: usize| -> Result<Stored> {
        let s = stored
            .remove(name)
            .ok_or_else(|| err(format!("tensor {name} is missing")))?;
        if (s.m.rows, s.m.cols) != (rows, cols) {
            return Err(err(format!(
                "tensor {name} has shape [{}, {}], the config implies [{rows}, {cols}]",
                s.m.rows, s.m.cols
            )));
        }
        Ok(s)
    };
    let vector = |s: Stored| s.m.dequantize();
    // The type a projection runs as.
    let target = |s: &Stored| match want {
        Some(t) => t,
        // other K-quants (converted to Q8_0 as they were read) and the f32 of a quantised embedding
        // that is also the output head
        None if s.foreign_quant && s.m.ty == WeightType::F32 => WeightType::Q8_0,
        None => s.m.ty,
    };
    // A projection in that type.
    let proj = |s: Stored| -> Matrix {
        let ty = target(&s);
        if s.m.ty == ty {
            s.m
        } else if s.m.ty == WeightType::Q5_0 && ty == WeightType::Q8_0 {
            s.m.q5_0_as_q8_0()
        } else {
            Matrix::quantized(s.m.rows, s.m.cols, &s.m.dequantize(), ty)
        }
    };
    // the embedding stays in its stored type (Q8_0 blocks: 1/4 of f32); tied to an output head that keeps
    // that type, the two are one matrix
    let embed_s = take("model.embed_tokens.weight", v, d)?;
    let (embed, lm_head) = if cfg.tie_word_embeddings {
        if target(&embed_s) == embed_s.m.ty {
            (None, proj(embed_s))
        } else {
            let head = Matrix::quantized(v, d, &embed_s.m.dequantize(), target(&embed_s));
            (Some(embed_s.m), head)
        }
    } else {
        (Some(embed_s.m), proj(take("lm_head.weight", v, d)?))
    };
    let mut layers = Vec::new(); // (not sized by the file's layer count: tensors are checked first)
    for i in 0..cfg.num_hidden_layers {
        layers.push(layer(&cfg, i, &mut take, &proj)?);
    }
    let norm = norm_gain(&cfg, vector(take("model.norm.weight", 1, d)?));
    if let Some(extra) = stored.keys().find(|k| !k.starts_with("lm_head")) {
        tracing::debug!("unused tensor {extra}");
    }
    let inv_freq = cfg.rope_inv_freq();
    let inv_freq_local = cfg.gemma().then(|| cfg.rope_local_inv_freq());
    let gelu = cfg.activation() == "gelu_pytorch_tanh";
    let isa = Isa::detect();
    let (layers, lm_head) = pack_for(isa, layers, lm_head);
    Ok(CpuModel {
        cfg,
        isa,
        embed,
        layers,
        norm,
        lm_head,
        inv_freq,
        inv_freq_local,
        gelu,
    })
}

/// With VNNI, quantised projections are repacked 8 rows at a time for its 8-lane products (same size). Q5_0
/// runs only packed: elsewhere (no VNNI, rows not a multiple of 8) it becomes the Q8_0 of the same values.
fn pack_for(isa: Isa, layers: Vec<Layer>, lm_head: Matrix) -> (Vec<Layer>, Matrix) {
    let pack = |mut m: Matrix| -> Matrix {
        if isa == Isa::Avx2Vnni {
            m.pack_in_place();
        }
        if m.ty == WeightType::Q5_0 && !m.packed {
            m = m.q5_0_as_q8_0();
        }
        m
    };
    let layers = layers
        .into_iter()
        .map(|l| Layer {
            qkv: pack(l.qkv),
            o: pack(l.o),
            gate_up: pack(l.gate_up),
            down: pack(l.down),
            ..l
        })
        .collect();
    (layers, pack(lm_head))
}

/// Stacks projections; when their stored types differ (a GGUF may mix them), all become the widest (Q5_0
/// first becomes the Q8_0 of its values, exactly).
fn stack_same_type(parts: Vec<Matrix>) -> Matrix {
    let parts = if parts.iter().all(|p| p.ty == parts[0].ty) {
        parts
    } else {
        parts.iter().map(Matrix::q5_0_as_q8_0).collect()
    };
    let rank = |t: WeightType| match t {
        WeightType::Q4_0 | WeightType::Q5_0 => 0,
        WeightType::Q4_1 => 1,
        WeightType::Q8_0 => 2,
        WeightType::F32 => 3,
    };
    let ty = parts
        .iter()
        .map(|p| p.ty)
        .max_by_key(|t| rank(*t))
        .unwrap_or(WeightType::F32);
    let parts: Vec<Matrix> = parts
        .into_iter()
        .map(|p| {
            if p.ty == ty {
                p
            } else {
                Matrix::quantized(p.rows, p.cols, &p.dequantize(), ty)
            }
        })
        .collect();
    Matrix::stack(&parts)
}
