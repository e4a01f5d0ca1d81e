//! LoRA adapters applied at run time, unmerged, so one base model in memory serves many adapters: a
//! sequence's rows of each adapted projection get `s·B·(A·x)` added after the base product (the way S-LoRA
//! and vLLM serve many adapters over one batch). A and B stay f32 (rank × in and out × rank: a few MB), the
//! base keeps its own weight type; the same update [`strata_model::lora::merge`] folds into W, so merged and unmerged
//! models agree to rounding (tested).

use std::sync::Arc;

use super::kernels::{matmul, Isa, Scratch};
use super::Matrix;
use strata_model::lora::Adapter;
use strata_model::{LlamaConfig, ModelError, Result};

/// Which stacked projection of a layer an update lands in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proj {
    /// Q, K and V stacked (HF order, as the engine keeps them).
    Qkv,
    O,
    /// gate and up stacked.
    GateUp,
    Down,
}

/// One adapted module: y[:, col..col + B.rows] += B·(A·x), B already scaled by s.
pub(super) struct Module {
    pub(super) proj: Proj,
    col: usize,
    a: Matrix,
    b: Matrix,
}

/// An adapter ready for the engine: per layer, its modules.
pub struct RuntimeAdapter {
    pub name: String,
    pub(super) layers: Vec<Vec<Module>>,
    bytes: usize,
}

/// The adapters on one sequence, innermost first (general → medical → ultrasound: the ultrasound adapter
/// was trained on the base with the medical one folded in, so both apply).
#[derive(Clone, Default)]
pub struct LoraStack {
    pub adapters: Vec<Arc<RuntimeAdapter>>,
}

impl LoraStack {
    /// The adapters' names, innermost first, joined by "+".
    #[must_use]
    pub fn name(&self) -> String {
        self.adapters
            .iter()
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>()
            .join("+")
    }
}

fn to_matrix(t: &candle_core::Tensor, what: &str, scale: f32) -> Result<Matrix> {
    let (rows, cols) = t
        .dims2()
        .map_err(|e| ModelError::Invalid(format!("{what}: {e}")))?;
    let data: Vec<f32> = t
        .flatten_all()
        .and_then(|t| t.to_vec1())
        .map_err(|e| ModelError::Invalid(format!("{what}: {e}")))?;
    Ok(Matrix::dense(
        rows,
        cols,
        data.into_iter().map(|v| v * scale).collect(),
    ))
}

impl RuntimeAdapter {
    /// The runtime form of an adapter read by [`strata_model::lora::read_adapter`] (which checked every shape
    /// against `cfg`).
    ///
    /// # Errors
    /// When a tensor is missing.
    pub fn new(name: &str, adapter: &Adapter, cfg: &LlamaConfig) -> Result<Self> {
        #[allow(clippy::cast_possible_truncation)]
        let s = adapter.config.scale() as f32;
        let (hd, f) = (cfg.head_dim(), cfg.intermediate_size);
        let (qd, kvd) = (cfg.num_attention_heads * hd, cfg.kv_heads() * hd);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        let mut bytes = 0;
        for i in 0..cfg.num_hidden_layers {
            let mut mods = Vec::new();
            for (module, group, proj, col) in [
                ("q_proj", "self_attn", Proj::Qkv, 0),
                ("k_proj", "self_attn", Proj::Qkv, qd),
                ("v_proj", "self_attn", Proj::Qkv, qd + kvd),
                ("o_proj", "self_attn", Proj::O, 0),
                ("gate_proj", "mlp", Proj::GateUp, 0),
                ("up_proj", "mlp", Proj::GateUp, f),
                ("down_proj", "mlp", Proj::Down, 0),
            ] {
                if !adapter.config.targets(module) {
                    continue;
                }
                let p = format!("model.layers.{i}.{group}.{module}");
                let get = |k: &str| {
                    let key = format!("{p}.{k}.weight");
                    adapter
                        .tensors
                        .get(&key)
                        .ok_or_else(|| ModelError::Invalid(format!("adapter {name}: no {key}")))
                        .map(|t| (key, t))
                };
                let (ka, a) = get("lora_A")?;
                let (kb, b) = get("lora_B")?;
                let (a, b) = (to_matrix(a, &ka, 1.0)?, to_matrix(b, &kb, s)?);
                bytes += a.size_bytes() + b.size_bytes();
                mods.push(Module { proj, col, a, b });
            }
            layers.push(mods);
        }
        Ok(Self {
            name: name.to_string(),
            layers,
            bytes,
        })
    }

    /// Bytes of A and B held in memory.
    #[must_use]
    pub fn size_bytes(&self) -> usize {
        self.bytes
    }
}

impl Module {
    /// y (rows × width, the module's columns from `col`) += B·(A·x) for `rows` rows of x.
    pub(super) fn apply(
        &self,
        isa: Isa,
        x: &[f32],
        rows: usize,
        y: &mut [f32],
        width: usize,
        scratch: &mut Scratch,
    ) {
        let (r, out) = (self.a.rows, self.b.rows);
        let mut ax = vec![0f32; rows * r];
        matmul(isa, &self.a, x, rows, &mut ax, scratch);
        let mut bax = vec![0f32; rows * out];
        matmul(isa, &self.b, &ax, rows, &mut bax, scratch);
        for (yr, dr) in y.chunks_exact_mut(width).zip(bax.chunks_exact(out)) {
            for (yv, dv) in yr[self.col..self.col + out].iter_mut().zip(dr) {
                *yv += dv;
            }
        }
    }
}
