//! Frozen weights held in GGML's quantised blocks, for QLoRA (Dettmers et al., 2023): a LoRA adapter
//! trained over a base that stays quantised in memory. The products dequantise the weight a slab of rows at
//! a time into a small scratch buffer and run the same f32 kernels as a dense weight, so the base costs
//! 8.5 bits (Q8_0) or 4.5 bits (Q4_K) per parameter instead of 32, and the arithmetic stays f32: the
//! gradients flowing through the frozen products are those of the dequantised weight, exactly.
//!
//! The blocks are candle's implementations of GGML's reference formats (the ones GGUF files hold). A row
//! whose length is not a multiple of Q4_K's 256 takes Q5_0 (32-blocks), as llama.cpp's Q4_K_M does.

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8_0, GgmlType,
};
use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{Context, ModelError, Result};

/// The block format a QLoRA base is held in (`base_quant` in `[train]`, `--base-quant`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BaseQuant {
    /// 8-bit, one f16 scale per 32 weights (8.5 bits per weight).
    Q8_0,
    /// 4-bit super-blocks of 256 with 6-bit sub-block scales and minima (4.5 bits per weight).
    Q4K,
    /// The blocks of an imported GGUF as the file holds them (a Q4_K_M file's mix of Q4_K, Q5_K, Q6_K…);
    /// its f32/f16 matrices in Q8_0.
    Gguf,
}

impl BaseQuant {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Q8_0 => "q8_0",
            Self::Q4K => "q4_k",
            Self::Gguf => "gguf",
        }
    }

    /// Parses `q8_0` or `q4_k` (as the CLI and the config spell them).
    ///
    /// # Errors
    /// On any other name, listing the known ones.
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "q8_0" => Ok(Self::Q8_0),
            "q4_k" => Ok(Self::Q4K),
            "gguf" => Ok(Self::Gguf),
            _ => Err(ModelError::Invalid(format!(
                "unknown base quantisation {s:?} (known: q8_0, q4_k, gguf)"
            ))),
        }
    }
}

/// The block types a matrix may be held in, each with its GGML name: one list for the enum, the GGUF
/// reader and every operation that dispatches on the type.
macro_rules! block_types {
    ($m:ident) => {
        $m! {
            Q4_0(BlockQ4_0, "q4_0"),
            Q4_1(BlockQ4_1, "q4_1"),
            Q5_0(BlockQ5_0, "q5_0"),
            Q5_1(BlockQ5_1, "q5_1"),
            Q8_0(BlockQ8_0, "q8_0"),
            Q2K(BlockQ2K, "q2_k"),
            Q3K(BlockQ3K, "q3_k"),
            Q4K(BlockQ4K, "q4_k"),
            Q5K(BlockQ5K, "q5_k"),
            Q6K(BlockQ6K, "q6_k"),
        }
    };
}

macro_rules! blocks_enum {
    ($($v:ident($b:ident, $n:literal),)*) => {
        enum Blocks {
            $($v(Vec<$b>),)*
        }

        impl Blocks {
            fn type_name(&self) -> &'static str {
                match self {
                    $(Self::$v(_) => $n,)*
                }
            }

            fn bytes(&self) -> usize {
                match self {
                    $(Self::$v(b) => std::mem::size_of_val(b.as_slice()),)*
                }
            }

            fn dequantize_rows(&self, cols: usize, r0: usize, out: &mut [f32]) {
                match self {
                    $(Self::$v(b) => dequantize_rows(b, cols, r0, out),)*
                }
            }

            /// Blocks of GGML type `dtype` from their bytes as a GGUF stores them; None for a type that is
            /// not one of these.
            fn from_ggml(dtype: GgmlDType, bytes: &[u8]) -> Option<Self> {
                match dtype {
                    $(GgmlDType::$v => Some(Self::$v(blocks_from_bytes(bytes)?)),)*
                    _ => None,
                }
            }

            /// The blocks of rows in `order` (row i of the result is row `order[i]`), `per_row` blocks a row.
            fn reorder(&self, cols: usize, order: &[usize]) -> Self {
                match self {
                    $(Self::$v(b) => Self::$v(reorder_rows(b, cols / <$b>::BLCK_SIZE, order)),)*
                }
            }
        }
    };
}

block_types!(blocks_enum);

/// Blocks copied out of `bytes` (a whole number of them), or None when the length does not divide.
fn blocks_from_bytes<B: GgmlType>(bytes: &[u8]) -> Option<Vec<B>> {
    let size = std::mem::size_of::<B>();
    if size == 0 || !bytes.len().is_multiple_of(size) {
        return None;
    }
    let mut v = vec![B::zeros(); bytes.len() / size];
    // SAFETY: candle's block types are `repr(C)` structs of f16 and integer fields (GGML's layout, which the
    // GGUF bytes are): every bit pattern is a valid value, and the destination holds exactly `bytes.len()`
    // bytes, written through a byte pointer (no alignment needed).
    #[allow(unsafe_code)]
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), v.as_mut_ptr().cast::<u8>(), bytes.len());
    }
    Some(v)
}

fn reorder_rows<B: Clone>(b: &[B], per_row: usize, order: &[usize]) -> Vec<B> {
    order
        .iter()
        .flat_map(|&r| b[r * per_row..(r + 1) * per_row].iter().cloned())
        .collect()
}

/// A (rows, cols) matrix in quantised blocks, row-major (each row whole blocks).
pub struct QuantMatrix {
    rows: usize,
    cols: usize,
    blocks: Blocks,
}

/// The weight of a projection: an f32 tensor (trainable or frozen), or quantised blocks (the frozen base
/// of QLoRA), shared by the layers that tie it.
#[derive(Clone)]
pub enum Weight {
    Dense(Tensor),
    Quant(std::sync::Arc<QuantMatrix>),
}

impl Weight {
    /// (out, in).
    ///
    /// # Errors
    /// When a dense weight is not 2-D.
    pub fn dims(&self) -> candle_core::Result<(usize, usize)> {
        match self {
            Self::Dense(t) => t.dims2(),
            Self::Quant(q) => Ok(q.dims()),
        }
    }

    /// The same weight out of autograd (a dense one detached; blocks take no part in it).
    #[must_use]
    pub fn detach(&self) -> Self {
        match self {
            Self::Dense(t) => Self::Dense(t.detach()),
            Self::Quant(q) => Self::Quant(q.clone()),
        }
    }

    /// The weight in f32 (blocks dequantised).
    ///
    /// # Errors
    /// On a candle error.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        match self {
            Self::Dense(t) => Ok(t.clone()),
            Self::Quant(q) => q.to_tensor(device),
        }
    }
}

/// Rows quantised or dequantised per rayon task.
const ROWS_PER_TASK: usize = 16;

fn quantize_rows<B: GgmlType>(w: &[f32], cols: usize) -> Vec<B> {
    let per_row = cols / B::BLCK_SIZE;
    let mut out = vec![B::zeros(); w.len() / B::BLCK_SIZE];
    out.par_chunks_mut(per_row * ROWS_PER_TASK)
        .zip(w.par_chunks(cols * ROWS_PER_TASK))
        .for_each(|(q, x)| B::from_float(x, q));
    out
}

fn dequantize_rows<B: GgmlType>(blocks: &[B], cols: usize, r0: usize, out: &mut [f32]) {
    let per_row = cols / B::BLCK_SIZE;
    let rows = out.len() / cols;
    let src = &blocks[r0 * per_row..(r0 + rows) * per_row];
    out.par_chunks_mut(cols * ROWS_PER_TASK)
        .zip(src.par_chunks(per_row * ROWS_PER_TASK))
        .for_each(|(y, q)| B::to_float(q, y));
}

impl QuantMatrix {
    /// Quantises a row-major (rows, cols) f32 matrix; `name` is for errors.
    ///
    /// # Errors
    /// When the data does not hold rows × cols values or a row is not whole 32-blocks.
    pub fn quantize(
        w: &[f32],
        (rows, cols): (usize, usize),
        kind: BaseQuant,
        name: &str,
    ) -> Result<Self> {
        if w.len() != rows * cols {
            return Err(ModelError::Invalid(format!(
                "{name}: {} values for ({rows}, {cols})",
                w.len()
            )));
        }
        if !cols.is_multiple_of(32) {
            return Err(ModelError::Invalid(format!(
                "{name}: rows of {cols} cannot be held in {} blocks (a multiple of 32 is needed)",
                kind.name()
            )));
        }
        let blocks = match kind {
            BaseQuant::Q8_0 | BaseQuant::Gguf => Blocks::Q8_0(quantize_rows(w, cols)),
            BaseQuant::Q4K if cols.is_multiple_of(256) => Blocks::Q4K(quantize_rows(w, cols)),
            BaseQuant::Q4K => Blocks::Q5_0(quantize_rows(w, cols)),
        };
        Ok(Self { rows, cols, blocks })
    }

    /// Quantises a 2-D f32 tensor.
    ///
    /// # Errors
    /// As [`QuantMatrix::quantize`], and when the tensor is not 2-D f32.
    pub fn from_tensor(t: &Tensor, kind: BaseQuant, name: &str) -> Result<Self> {
        let dims = t.dims2().ctx(name)?;
        let v = t
            .to_dtype(candle_core::DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .ctx(name)?;
        Self::quantize(&v, dims, kind, name)
    }

    #[must_use]
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The GGML type the blocks are in.
    #[must_use]
    pub fn type_name(&self) -> &'static str {
        self.blocks.type_name()
    }

    /// A GGUF tensor's blocks as they are, its rows in `order` when given (llama.cpp's Q/K permutation
    /// undone); None when its type is not a block type (f32, f16).
    ///
    /// # Errors
    /// When the tensor is not 2-D or its bytes are not whole blocks of its shape.
    pub fn from_qtensor(
        q: &candle_core::quantized::QTensor,
        order: Option<&[usize]>,
        name: &str,
    ) -> Result<Option<Self>> {
        let (rows, cols) = q.shape().dims2().ctx(name)?;
        let bytes = q.data().ctx(name)?;
        let Some(blocks) = Blocks::from_ggml(q.dtype(), &bytes) else {
            if matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) {
                return Ok(None);
            }
            return Err(ModelError::Invalid(format!(
                "{name}: {:?} data of {} bytes is not whole blocks",
                q.dtype(),
                bytes.len()
            )));
        };
        let m = Self { rows, cols, blocks };
        if m.bytes() != bytes.len() || !cols.is_multiple_of(q.dtype().block_size()) {
            return Err(ModelError::Invalid(format!(
                "{name}: {} bytes of {:?} for ({rows}, {cols})",
                bytes.len(),
                q.dtype()
            )));
        }
        Ok(Some(match order {
            Some(o) if o.len() == rows => Self {
                blocks: m.blocks.reorder(cols, o),
                ..m
            },
            Some(o) => {
                return Err(ModelError::Invalid(format!(
                    "{name}: a row order of {} for {rows} rows",
                    o.len()
                )))
            }
            None => m,
        }))
    }

    /// Bytes the blocks take.
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.blocks.bytes()
    }

    /// Rows `r0..r0 + out.len() / cols` in f32, into `out`.
    ///
    /// # Panics
    /// When the rows run past the matrix or `out` is not whole rows (a caller's bug).
    pub fn dequantize_rows_into(&self, r0: usize, out: &mut [f32]) {
        assert!(
            out.len().is_multiple_of(self.cols) && r0 + out.len() / self.cols <= self.rows,
            "dequantize_rows_into: rows {r0}.. of {} do not fit {} values",
            self.rows,
            out.len()
        );
        self.blocks.dequantize_rows(self.cols, r0, out);
    }

    /// The whole matrix in f32 (row-major).
    #[must_use]
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        self.dequantize_rows_into(0, &mut out);
        out
    }

    /// The whole matrix as an f32 tensor.
    ///
    /// # Errors
    /// On a candle error (none expected).
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        Tensor::from_vec(self.dequantize(), (self.rows, self.cols), device).ctx("dequantize")
    }

    /// Rows per slab a product dequantises at a time: about 1 MiB of f32, at least 16 rows.
    #[must_use]
    pub(crate) fn slab_rows(&self) -> usize {
        ((1 << 18) / self.cols.max(1)).max(16).min(self.rows.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                #[allow(clippy::cast_precision_loss)]
                let u = (s >> 40) as f32 / (1u64 << 24) as f32;
                u - 0.5
            })
            .collect()
    }

    #[test]
    fn q8_0_round_trip_is_within_half_a_step_of_each_block_scale() {
        let (rows, cols) = (40, 64);
        let w = values(rows * cols, 1);
        let q = QuantMatrix::quantize(&w, (rows, cols), BaseQuant::Q8_0, "w").unwrap();
        assert_eq!(q.type_name(), "q8_0");
        assert_eq!(q.bytes(), rows * cols / 32 * 34);
        let back = q.dequantize();
        for (blk_w, blk_b) in w.chunks(32).zip(back.chunks(32)) {
            let amax = blk_w.iter().fold(0f32, |m, v| m.max(v.abs()));
            // d = amax / 127 (then rounded to f16), each value rounded to the nearest step
            let step = amax / 127.0;
            for (a, b) in blk_w.iter().zip(blk_b) {
                assert!((a - b).abs() <= step * 0.5 + amax * 1e-3, "{a} {b} {step}");
            }
        }
        // a slab of rows is the same as those rows of the whole
        let mut slab = vec![0f32; 7 * cols];
        q.dequantize_rows_into(30, &mut slab);
        assert_eq!(slab, back[30 * cols..37 * cols]);
    }

    #[test]
    fn q4_k_holds_256_rows_and_falls_back_to_q5_0_for_others() {
        let w = values(8 * 512, 2);
        let q = QuantMatrix::quantize(&w, (8, 512), BaseQuant::Q4K, "w").unwrap();
        assert_eq!(q.type_name(), "q4_k");
        assert_eq!(q.bytes(), 8 * 2 * 144);
        let err: f32 = q
            .dequantize()
            .iter()
            .zip(&w)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        // 4 bits over a range of 1: steps of about 1/15
        assert!(err < 0.05, "{err}");
        let q = QuantMatrix::quantize(&values(4 * 96, 3), (4, 96), BaseQuant::Q4K, "w").unwrap();
        assert_eq!(q.type_name(), "q5_0");
    }

    #[test]
    fn bad_shapes_and_names_are_refused_by_name() {
        let e = QuantMatrix::quantize(&[0.0; 40], (2, 20), BaseQuant::Q8_0, "model.x.weight")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("model.x.weight") && e.contains("32"), "{e}");
        let e = QuantMatrix::quantize(&[0.0; 10], (2, 32), BaseQuant::Q8_0, "w")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("10 values"), "{e}");
        assert!(BaseQuant::parse("nf4").is_err());
        assert_eq!(BaseQuant::parse("Q4_K").unwrap(), BaseQuant::Q4K);
    }

    /// The op-level products over several slabs (cols 8192: 32 rows a slab, 80 rows in 3 slabs) against
    /// the dense products of the dequantised weight: forward, dx, and a LoRA pair's dA and dB.
    #[test]
    fn slab_products_equal_the_dense_products_of_the_dequantised_weight() {
        use crate::test_util::{max_abs_diff, randn};
        use candle_core::Var;
        let (out, d_in, n) = (80, 8192, 3);
        let w = randn(&[out, d_in], 1);
        let q = std::sync::Arc::new(QuantMatrix::from_tensor(&w, BaseQuant::Q8_0, "w").unwrap());
        assert_eq!(q.slab_rows(), 32);
        let wd = q.to_tensor(&Device::Cpu).unwrap();
        let x = Var::from_tensor(&randn(&[1, n, d_in], 2)).unwrap();
        let r = randn(&[1, n, out], 3);
        let run = |w: &Weight| {
            let y = crate::matmul::weight_linear(x.as_tensor(), w).unwrap();
            let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            (y, g.get(x.as_tensor()).unwrap().clone())
        };
        let (yq, dxq) = run(&Weight::Quant(q.clone()));
        let (yd, dxd) = run(&Weight::Dense(wd.clone()));
        assert!(max_abs_diff(&yq, &yd) < 1e-3, "{}", max_abs_diff(&yq, &yd));
        assert!(
            max_abs_diff(&dxq, &dxd) < 1e-4,
            "{}",
            max_abs_diff(&dxq, &dxd)
        );
        // with an adapter
        let a = Var::from_tensor(&randn(&[4, d_in], 4)).unwrap();
        let b = Var::from_tensor(&randn(&[out, 4], 5)).unwrap();
        let pair = crate::lora::LoraPair {
            a: a.as_tensor().clone(),
            b: b.as_tensor().clone(),
            scale: 2.0,
            dropout: 0.0,
            index: 0,
            state: std::sync::Arc::default(),
        };
        let run = |w: &Weight| {
            let y = crate::matmul::lora_linear(x.as_tensor(), w, &pair).unwrap();
            let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let get = |v: &Var| g.get(v.as_tensor()).unwrap().clone();
            (y, get(&x), get(&a), get(&b))
        };
        let q_run = run(&Weight::Quant(q));
        let d_run = run(&Weight::Dense(wd));
        for (u, v, tol) in [
            (&q_run.0, &d_run.0, 1e-3),
            (&q_run.1, &d_run.1, 1e-4),
            (&q_run.2, &d_run.2, 1e-3),
            (&q_run.3, &d_run.3, 1e-3),
        ] {
            assert!(max_abs_diff(u, v) < tol, "{}", max_abs_diff(u, v));
        }
    }

    /// A whole model with its base in blocks gives the logits and the adapter gradients of the same model
    /// built from the dequantised weights (tied and untied embeddings).
    #[test]
    fn a_quantised_base_matches_its_dequantised_twin_in_logits_and_adapter_gradients() {
        use crate::lora::{adapter_shapes, LoraConfig, TARGETS};
        use crate::test_util::{max_abs_diff, new_model, randn, tiny};
        use candle_core::Var;
        use std::collections::HashMap;
        for tied in [false, true] {
            let mut cfg = tiny();
            cfg.tie_word_embeddings = tied;
            let (vm, _) = new_model(&cfg);
            let weights = crate::test_util::tensors_of(&vm);
            let (mut dense, mut deq, mut qb) =
                (HashMap::new(), HashMap::new(), crate::QuantBase::new());
            for (k, t) in &weights {
                if t.rank() == 2 && !k.contains("norm") {
                    let q = QuantMatrix::from_tensor(t, BaseQuant::Q4K, k).unwrap();
                    deq.insert(k.clone(), q.to_tensor(&Device::Cpu).unwrap());
                    qb.insert(k.clone(), std::sync::Arc::new(q));
                } else {
                    dense.insert(k.clone(), t.clone());
                    deq.insert(k.clone(), t.clone());
                }
            }
            assert!(qb.contains_key("model.embed_tokens.weight"));
            let lc = LoraConfig {
                r: 4,
                lora_alpha: 8.0,
                lora_dropout: 0.0,
                target_modules: TARGETS.iter().map(|s| (*s).to_string()).collect(),
                use_rslora: false,
            };
            let vars: Vec<(String, Var)> = adapter_shapes(&cfg, &lc)
                .into_iter()
                .enumerate()
                .map(|(i, (k, (r, c)))| (k, Var::from_tensor(&randn(&[r, c], i as u64)).unwrap()))
                .collect();
            let tensors: HashMap<String, Tensor> = vars
                .iter()
                .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
                .collect();
            let ids = Tensor::new(&[[3u32, 17, 42, 8, 0, 49, 21, 5]], &Device::Cpu).unwrap();
            let targets = Tensor::new(&[[17u32, 42, 8, 0, 49, 21, 5, 9]], &Device::Cpu).unwrap();
            let run = |w: HashMap<String, Tensor>, quantized: Option<&crate::QuantBase>| {
                let vb =
                    candle_nn::VarBuilder::from_tensors(w, candle_core::DType::F32, &Device::Cpu);
                let lw = crate::LoraWeights {
                    config: &lc,
                    tensors: &tensors,
                    state: std::sync::Arc::default(),
                    quantized,
                };
                let m = crate::Llama::load_with_lora(&vb, &cfg, Some(&lw)).unwrap();
                let logits = m.forward(&ids).unwrap();
                let g = crate::next_token_loss(&logits, &targets)
                    .unwrap()
                    .backward()
                    .unwrap();
                let grads: Vec<Tensor> = vars
                    .iter()
                    .map(|(_, v)| g.get(v.as_tensor()).unwrap().clone())
                    .collect();
                (logits, grads)
            };
            let (lq, gq) = run(dense, Some(&qb));
            let (ld, gd) = run(deq, None);
            assert!(max_abs_diff(&lq, &ld) < 1e-4, "{}", max_abs_diff(&lq, &ld));
            for (u, v) in gq.iter().zip(&gd) {
                assert!(max_abs_diff(u, v) < 1e-4, "{}", max_abs_diff(u, v));
            }
        }
    }
}
