//! Fused training kernels with their own backward: cross-entropy over the vocabulary, RMSNorm, SwiGLU and
//! the causal softmax of attention. Each replaces a chain of candle ops that would write several
//! (B·T, V)- or (B, nh, T, S)-sized intermediates and walk them again in backward; here each is one pass
//! forward and one backward, over plain slices, rows in parallel.
//!
//! Every kernel keeps a naive twin in [`naive`] (the same function from differentiable candle ops), and the
//! tests check values and gradients against the twin and against finite differences. Off the CPU, or for
//! a non-contiguous input, the twin runs instead.

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use crate::{Context, Result};

/// Target id that takes no part in the loss (padding, prompt tokens in SFT).
pub const IGNORE: u32 = u32::MAX;

pub(crate) fn f32_slice<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => Err(candle_core::Error::Msg(format!(
            "{op}: needs a contiguous f32 tensor"
        ))),
    }
}

/// Runs `f` on the tensor's f32 values in place when they are contiguous on the CPU (no copy), else on a
/// contiguous copy.
///
/// # Errors
/// When the tensor cannot be converted to f32 values.
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    {
        let (st, l) = t.storage_and_layout();
        if let (candle_core::Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) =
            (&*st, l.contiguous_offsets())
        {
            return Ok(f(&v[a..b]));
        }
    }
    let v = t.flatten_all()?.to_vec1::<f32>()?;
    Ok(f(&v))
}

pub(crate) fn fusable(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == candle_core::DType::F32 && t.is_contiguous())
}

// ---------------------------------------------------------------------------------------------------
// Cross-entropy

struct CrossEntropy {
    /// log-sum-exp of each row, kept from forward for backward.
    lse: OnceLock<Vec<f32>>,
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "fused-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let v = l1.shape().dims().last().copied().unwrap_or(0).max(1);
        let n = l1.shape().elem_count() / v;
        let x = f32_slice(s1, l1, self.name())?;
        let t = checked_targets(s2, l2, n, v, self.name())?;
        let (mut lse, mut nll) = (vec![0f32; n], vec![0f32; n]);
        row_losses(x, t, v, &mut lse, &mut nll);
        let _ = self.lse.set(lse);
        Ok((CpuStorage::F32(nll), Shape::from(n)))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let v = logits.dim(D::Minus1)?;
        let n = logits.elem_count() / v.max(1);
        let lse = self
            .lse
            .get()
            .ok_or_else(|| candle_core::Error::Msg("fused-cross-entropy: no forward".into()))?;
        let t = targets.to_vec1::<u32>()?;
        let g = grad.to_vec1::<f32>()?;
        let mut out = vec![0f32; n * v];
        with_f32(logits, |x| {
            out.par_chunks_mut(v)
                .zip(x.par_chunks(v))
                .enumerate()
                .for_each(|(r, (o, row))| {
                    o.copy_from_slice(row);
                    logits_to_grad(o, 0, lse[r], g[r], t[r]);
                });
        })?;
        Ok((
            Some(Tensor::from_vec(out, logits.shape(), logits.device())?),
            None,
        ))
    }
}

/// The targets of a cross-entropy op: contiguous u32, one for each of `n` rows, each inside the vocabulary
/// of `v` or [`IGNORE`].
pub(crate) fn checked_targets<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    n: usize,
    v: usize,
    op: &str,
) -> candle_core::Result<&'a [u32]> {
    let t = match (s, l.contiguous_offsets()) {
        (CpuStorage::U32(t), Some((a, b))) => &t[a..b],
        _ => candle_core::bail!("{op}: targets must be contiguous u32"),
    };
    if t.len() != n {
        candle_core::bail!("{op}: {} targets for {n} rows", t.len());
    }
    if let Some(&bad) = t.iter().find(|&&i| i != IGNORE && i as usize >= v) {
        candle_core::bail!("{op}: target {bad} outside the vocabulary of {v}");
    }
    Ok(t)
}

/// Each row's log-sum-exp and negative log-likelihood of its target (0 for [`IGNORE`]), rows of `v` logits.
pub(crate) fn row_losses(logits: &[f32], t: &[u32], v: usize, lse: &mut [f32], nll: &mut [f32]) {
    logits
        .par_chunks(v.max(1))
        .zip(t.par_iter())
        .zip(lse.par_iter_mut().zip(nll.par_iter_mut()))
        .for_each(|((row, &ti), (l, o))| {
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let s: f32 = row.iter().map(|&a| (a - m).exp()).sum();
            *l = m + s.ln();
            *o = if ti == IGNORE {
                0.0
            } else {
                *l - row[ti as usize]
            };
        });
}

/// Turns one row of logits (columns `v0..v0 + row.len()` of the vocabulary) into its gradient in place:
/// g·(softmax − onehot(target)); zero for an [`IGNORE`]d target or a zero incoming gradient.
pub(crate) fn logits_to_grad(row: &mut [f32], v0: usize, lse: f32, g: f32, target: u32) {
    if target == IGNORE || g == 0.0 {
        row.fill(0.0);
        return;
    }
    for a in row.iter_mut() {
        *a = (*a - lse).exp() * g;
    }
    if let Some(a) = (target as usize)
        .checked_sub(v0)
        .and_then(|i| row.get_mut(i))
    {
        *a -= g;
    }
}

/// Summed next-token cross-entropy and the number of targets counted: logits (…, V) (rows over the leading
/// axes, so (B, T, V) needs no reshape node in the graph), targets (…) with [`IGNORE`] for positions that
/// do not count. The sum (not the mean) lets gradient accumulation divide
/// by the targets of all micro-batches together.
///
/// # Errors
/// On a shape mismatch or a target outside the vocabulary.
pub fn cross_entropy_sum(logits: &Tensor, targets: &Tensor) -> Result<(Tensor, usize)> {
    let (rows, count) = cross_entropy_rows(logits, targets)?;
    Ok((rows.sum_all().ctx("cross entropy sum")?, count))
}

/// The cross-entropy of each row (0 where the target is [`IGNORE`]), flat, and the number of targets
/// counted: what [`cross_entropy_sum`] sums, for a loss that weighs rows unequally (the op's backward
/// takes a gradient per row).
///
/// # Errors
/// On a shape mismatch or a target outside the vocabulary.
pub fn cross_entropy_rows(logits: &Tensor, targets: &Tensor) -> Result<(Tensor, usize)> {
    let targets = targets
        .flatten_all()
        .ctx("targets")?
        .to_dtype(candle_core::DType::U32)
        .ctx("targets dtype")?;
    let count = targets
        .to_vec1::<u32>()
        .ctx("targets")?
        .iter()
        .filter(|&&t| t != IGNORE)
        .count();
    let rows = if fusable(&[logits]) {
        logits
            .apply_op2(
                &targets,
                CrossEntropy {
                    lse: OnceLock::new(),
                },
            )
            .ctx("cross entropy")?
    } else {
        let v = logits.dim(D::Minus1).ctx("logits")?;
        let rows = logits.elem_count() / v.max(1);
        naive::cross_entropy_rows(&logits.reshape((rows, v)).ctx("logits reshape")?, &targets)?
    };
    Ok((rows, count))
}

// ---------------------------------------------------------------------------------------------------
// RMSNorm

struct RmsNorm {
    eps: f32,
    /// 1/rms of each row, kept from forward.
    inv: OnceLock<Vec<f32>>,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let w = f32_slice(s2, l2, self.name())?;
        let d = w.len();
        if d == 0 || l1.shape().dims().last() != Some(&d) {
            candle_core::bail!("fused-rms-norm: weight of {d} for input {:?}", l1.shape());
        }
        let mut y = vec![0f32; x.len()];
        #[allow(clippy::cast_precision_loss)]
        let inv: Vec<f32> = y
            .par_chunks_mut(d)
            .zip(x.par_chunks(d))
            .map(|(yr, xr)| {
                let ms = xr.iter().map(|a| a * a).sum::<f32>() / d as f32;
                let r = 1.0 / (ms + self.eps).sqrt();
                for ((yi, &xi), &wi) in yr.iter_mut().zip(xr).zip(w) {
                    *yi = xi * r * wi;
                }
                r
            })
            .collect();
        let _ = self.inv.set(inv);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let inv = self
            .inv
            .get()
            .ok_or_else(|| candle_core::Error::Msg("fused-rms-norm: no forward".into()))?;
        let ws = w.to_vec1::<f32>()?;
        let d = ws.len();
        let mut dx = vec![0f32; x.elem_count()];
        let dw = with_f32(x, |xs| {
            with_f32(grad, |gs| {
                // rows in blocks: each block also sums its share of dw
                let block = 64 * d;
                #[allow(clippy::cast_precision_loss)]
                dx.par_chunks_mut(block)
                    .zip(xs.par_chunks(block).zip(gs.par_chunks(block)))
                    .enumerate()
                    .map(|(bi, (dxb, (xb, gb)))| {
                        let mut dw = vec![0f32; d];
                        for (r, ((dxr, xr), gr)) in dxb
                            .chunks_mut(d)
                            .zip(xb.chunks(d))
                            .zip(gb.chunks(d))
                            .enumerate()
                        {
                            let ri = inv[bi * 64 + r];
                            // g = dy ⊙ w; dx = r·g − x·r³·(g·x)/D; dw += dy ⊙ x·r
                            let mut dot = 0f32;
                            for i in 0..d {
                                dot += gr[i] * ws[i] * xr[i];
                                dw[i] += gr[i] * xr[i] * ri;
                            }
                            let c = ri * ri * ri * dot / d as f32;
                            for i in 0..d {
                                dxr[i] = ri * gr[i] * ws[i] - xr[i] * c;
                            }
                        }
                        dw
                    })
                    .reduce(
                        || vec![0f32; d],
                        |mut a, b| {
                            for (x, y) in a.iter_mut().zip(b) {
                                *x += y;
                            }
                            a
                        },
                    )
            })
        })??;
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dw, d, w.device())?),
        ))
    }
}

/// RMSNorm over the last axis: x (…, D) · w (D).
///
/// # Errors
/// On a shape mismatch.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if fusable(&[x, w]) {
        #[allow(clippy::cast_possible_truncation)]
        let op = RmsNorm {
            eps: eps as f32,
            inv: OnceLock::new(),
        };
        x.apply_op2(w, op).ctx("rms norm")
    } else {
        naive::rms_norm(x, w, eps)
    }
}

// ---------------------------------------------------------------------------------------------------
// SwiGLU

struct SwiGlu;

fn sigmoid(a: f32) -> f32 {
    1.0 / (1.0 + (-a).exp())
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let a = f32_slice(s1, l1, self.name())?;
        let b = f32_slice(s2, l2, self.name())?;
        if l1.shape() != l2.shape() {
            candle_core::bail!("fused-swiglu: {:?} vs {:?}", l1.shape(), l2.shape());
        }
        let mut h = vec![0f32; a.len()];
        h.par_chunks_mut(4096)
            .zip(a.par_chunks(4096).zip(b.par_chunks(4096)))
            .for_each(|(h, (a, b))| {
                for ((hi, &ai), &bi) in h.iter_mut().zip(a).zip(b) {
                    *hi = ai * sigmoid(ai) * bi;
                }
            });
        Ok((CpuStorage::F32(h), l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let av = a.flatten_all()?.to_vec1::<f32>()?;
        let bv = b.flatten_all()?.to_vec1::<f32>()?;
        let gv = grad.flatten_all()?.to_vec1::<f32>()?;
        let mut da = vec![0f32; av.len()];
        let mut db = vec![0f32; av.len()];
        da.par_chunks_mut(4096)
            .zip(db.par_chunks_mut(4096))
            .zip(
                av.par_chunks(4096)
                    .zip(bv.par_chunks(4096))
                    .zip(gv.par_chunks(4096)),
            )
            .for_each(|((da, db), ((a, b), g))| {
                for i in 0..a.len() {
                    let s = sigmoid(a[i]);
                    // d silu(a)/da = s·(1 + a·(1 − s))
                    da[i] = g[i] * b[i] * s * (1.0 + a[i] * (1.0 - s));
                    db[i] = g[i] * a[i] * s;
                }
            });
        Ok((
            Some(Tensor::from_vec(da, a.shape(), a.device())?),
            Some(Tensor::from_vec(db, b.shape(), b.device())?),
        ))
    }
}

/// silu(gate) ⊙ up.
///
/// # Errors
/// On a shape mismatch.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if fusable(&[gate, up]) {
        gate.apply_op2(up, SwiGlu).ctx("swiglu")
    } else {
        naive::swiglu(gate, up)
    }
}

// ---------------------------------------------------------------------------------------------------
// Causal softmax

struct CausalSoftmax {
    scale: f32,
    window: Option<usize>,
}

impl CausalSoftmax {
    fn span(&self, i: usize, t: usize, s: usize) -> (usize, usize) {
        causal_span(i, t, s, self.window)
    }
}

/// The keys query `i` of T (of S keys) may see: lo..=p, p = S − T + i, lo = p + 1 − window with a window.
pub(crate) fn causal_span(i: usize, t: usize, s: usize, window: Option<usize>) -> (usize, usize) {
    let p = s - t + i;
    let lo = window.map_or(0, |w| (p + 1).saturating_sub(w));
    (lo, p)
}

/// Softmax of `scale · row` over `lo..=hi` in place (the max subtracted first), zero elsewhere.
pub(crate) fn softmax_span(row: &mut [f32], (lo, hi): (usize, usize), scale: f32) {
    let m = row[lo..=hi]
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in &mut row[lo..=hi] {
        *v = ((*v - m) * scale).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in &mut row[lo..=hi] {
        *v *= inv;
    }
    row[..lo].fill(0.0);
    row[hi + 1..].fill(0.0);
}

/// The gradient of [`softmax_span`] in place: `g` (the gradient of its output p) becomes the gradient of its
/// input, scale · p ⊙ (g − Σ g⊙p) over `lo..=hi`, zero elsewhere.
pub(crate) fn softmax_span_grad(p: &[f32], g: &mut [f32], (lo, hi): (usize, usize), scale: f32) {
    let dot: f32 = (lo..=hi).map(|j| p[j] * g[j]).sum();
    for j in lo..=hi {
        g[j] = scale * p[j] * (g[j] - dot);
    }
    g[..lo].fill(0.0);
    g[hi + 1..].fill(0.0);
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "fused-causal-softmax"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let dims = l1.shape().dims();
        let (t, s) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        if t > s {
            candle_core::bail!("fused-causal-softmax: {t} queries for {s} keys");
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(s)
            .zip(x.par_chunks(s))
            .enumerate()
            .for_each(|(r, (yr, xr))| {
                yr.copy_from_slice(xr);
                softmax_span(yr, self.span(r % t, t, s), self.scale);
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, p: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (t, s) = (x.dim(D::Minus2)?, x.dim(D::Minus1)?);
        let mut dx = vec![0f32; p.elem_count()];
        with_f32(p, |pv| {
            with_f32(grad, |gv| {
                dx.par_chunks_mut(s)
                    .zip(pv.par_chunks(s).zip(gv.par_chunks(s)))
                    .enumerate()
                    .for_each(|(r, (dr, (pr, gr)))| {
                        dr.copy_from_slice(gr);
                        softmax_span_grad(pr, dr, self.span(r % t, t, s), self.scale);
                    });
            })
        })??;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// softmax(scale · scores) over keys a query may see: scores (…, T, S), query i at position S − T + i
/// sees keys j ≤ S − T + i (and with a sliding window only the last `window` of them); the rest get 0.
///
/// # Errors
/// On a shape error.
pub fn causal_softmax(scores: &Tensor, scale: f64, window: Option<usize>) -> Result<Tensor> {
    if fusable(&[scores]) {
        #[allow(clippy::cast_possible_truncation)]
        let op = CausalSoftmax {
            scale: scale as f32,
            window,
        };
        scores.apply_op1(op).ctx("causal softmax")
    } else {
        naive::causal_softmax(scores, scale, window)
    }
}

// ---------------------------------------------------------------------------------------------------
// Rotary position embedding

struct Rope {
    cos: Tensor, // (max_pos, hd)
    sin: Tensor, // (max_pos, hd)
    offset: usize,
}

impl Rope {
    /// y = x·cos + rotate_half(x)·sin (`backward`: the transpose, dx = g·cos + rotate_halfᵀ(g·sin)) over
    /// rows of `hd`, row r at position offset + r mod T.
    fn run(&self, x: &[f32], t: usize, hd: usize, backward: bool) -> candle_core::Result<Vec<f32>> {
        let mut y = vec![0f32; x.len()];
        with_f32(&self.cos, |cos| {
            with_f32(&self.sin, |sin| {
                y.par_chunks_mut(hd)
                    .zip(x.par_chunks(hd))
                    .enumerate()
                    .for_each(|(r, (yr, xr))| {
                        let p = (self.offset + r % t) * hd;
                        rope_row(xr, yr, &cos[p..p + hd], &sin[p..p + hd], backward);
                    });
            })
        })??;
        Ok(y)
    }

    fn check(&self, dims: &[usize]) -> candle_core::Result<(usize, usize)> {
        let (t, hd) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let (max, chd) = self.cos.dims2()?;
        if hd % 2 != 0 || chd != hd || self.offset + t > max {
            candle_core::bail!(
                "fused-rope: input {dims:?} at offset {} against tables ({max}, {chd})",
                self.offset
            );
        }
        Ok((t, hd))
    }
}

/// One row of `hd = c.len()` values at the position whose tables are `c`/`s`: y = x·cos + rotate_half(x)·sin,
/// or with `backward` its transpose, dx = g·cos + rotate_halfᵀ(g·sin).
pub(crate) fn rope_row(x: &[f32], y: &mut [f32], c: &[f32], s: &[f32], backward: bool) {
    let h = c.len() / 2;
    for i in 0..h {
        if backward {
            y[i] = x[i] * c[i] + x[i + h] * s[i + h];
            y[i + h] = x[i + h] * c[i + h] - x[i] * s[i];
        } else {
            y[i] = x[i] * c[i] - x[i + h] * s[i];
            y[i + h] = x[i + h] * c[i + h] + x[i] * s[i + h];
        }
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let (t, hd) = self.check(l1.shape().dims())?;
        Ok((
            CpuStorage::F32(self.run(x, t, hd, false)?),
            l1.shape().clone(),
        ))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (t, hd) = self.check(x.dims())?;
        let dx = with_f32(grad, |g| self.run(g, t, hd, true))??;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// Rotary embedding in Hugging Face's "rotate half" layout: x (…, T, hd) at positions offset..offset+T,
/// with `cos`/`sin` tables (max_pos, hd).
///
/// # Errors
/// On a shape error or positions past the tables.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, offset: usize) -> Result<Tensor> {
    if fusable(&[x, cos, sin]) {
        let op = Rope {
            cos: cos.clone(),
            sin: sin.clone(),
            offset,
        };
        x.apply_op1(op).ctx("rope")
    } else {
        naive::rope(x, cos, sin, offset)
    }
}

/// The naive twins: the same functions from differentiable candle ops.
pub mod naive {
    use candle_core::{Tensor, D};

    use crate::{Context, Result};

    /// # Errors
    /// On a shape error.
    pub fn cross_entropy_sum(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        cross_entropy_rows(logits, targets)?.sum_all().ctx("sum")
    }

    /// # Errors
    /// On a shape error.
    pub fn cross_entropy_rows(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let t: Vec<u32> = targets.to_vec1().ctx("targets")?;
        let mask: Vec<f32> = t
            .iter()
            .map(|&i| if i == super::IGNORE { 0.0 } else { 1.0 })
            .collect();
        let safe: Vec<u32> = t
            .iter()
            .map(|&i| if i == super::IGNORE { 0 } else { i })
            .collect();
        let dev = logits.device();
        let n = t.len();
        let logp = candle_nn::ops::log_softmax(logits, D::Minus1).ctx("log softmax")?;
        let picked = logp
            .gather(&Tensor::from_vec(safe, (n, 1), dev).ctx("ids")?, 1)
            .ctx("gather")?
            .squeeze(1)
            .ctx("squeeze")?; // (N,)
        (picked * Tensor::from_vec(mask, n, dev).ctx("mask")?)
            .ctx("mask mul")?
            .neg()
            .ctx("neg")
    }

    /// # Errors
    /// On a shape error.
    pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, offset: usize) -> Result<Tensor> {
        let t = x.dim(D::Minus2).ctx("rope input")?;
        let hd = x.dim(D::Minus1).ctx("rope input")?;
        let cos = cos.narrow(0, offset, t).ctx("rope cos narrow")?; // (T, hd)
        let sin = sin.narrow(0, offset, t).ctx("rope sin narrow")?;
        let x1 = x.narrow(D::Minus1, 0, hd / 2).ctx("rope x1")?;
        let x2 = x.narrow(D::Minus1, hd / 2, hd / 2).ctx("rope x2")?;
        let rotated = Tensor::cat(&[&x2.neg().ctx("rope neg")?, &x1], D::Minus1).ctx("rope cat")?;
        let a = x.broadcast_mul(&cos).ctx("rope cos mul")?;
        let b = rotated.broadcast_mul(&sin).ctx("rope sin mul")?;
        (a + b).ctx("rope add")
    }

    /// # Errors
    /// On a shape error.
    pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
        let ms = x
            .sqr()
            .ctx("rms sqr")?
            .mean_keepdim(D::Minus1)
            .ctx("rms mean")?; // (…, 1)
        let inv = (ms + eps)
            .ctx("rms eps")?
            .sqrt()
            .ctx("rms sqrt")?
            .recip()
            .ctx("rms recip")?;
        x.broadcast_mul(&inv)
            .ctx("rms scale")?
            .broadcast_mul(w)
            .ctx("rms weight")
    }

    /// # Errors
    /// On a shape error.
    pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        (gate.silu().ctx("silu")? * up).ctx("swiglu")
    }

    /// # Errors
    /// On a shape error.
    pub fn causal_softmax(scores: &Tensor, scale: f64, window: Option<usize>) -> Result<Tensor> {
        let t = scores.dim(D::Minus2).ctx("scores")?;
        let s = scores.dim(D::Minus1).ctx("scores")?;
        let (offset, w) = (s - t, window.unwrap_or(usize::MAX));
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| {
                let p = offset + i;
                (0..s).map(move |j| {
                    if j > p || p - j >= w {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (t, s), scores.device()).ctx("mask")?;
        let x = (scores * scale)
            .ctx("scale")?
            .broadcast_add(&mask)
            .ctx("mask add")?;
        candle_nn::ops::softmax(&x, D::Minus1).ctx("softmax")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::randn;
    use candle_core::{Device, Var};

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        let scale = b.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
            / scale
    }

    /// Checks `f` (inputs → scalar) fused against naive: value, gradient of every input, and the fused
    /// gradient against central finite differences at a few coordinates (in f64 over f32 values).
    fn check(
        inputs: &[Tensor],
        fused: &dyn Fn(&[Tensor]) -> Tensor,
        naive: &dyn Fn(&[Tensor]) -> Tensor,
    ) {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let (yf, yn) = (fused(&ts), naive(&ts));
        assert!(max_rel(&yf, &yn) < 1e-5, "value: {}", max_rel(&yf, &yn));
        let (gf, gn) = (yf.backward().unwrap(), yn.backward().unwrap());
        for (k, t) in ts.iter().enumerate() {
            let (a, b) = (gf.get(t).unwrap(), gn.get(t).unwrap());
            assert!(
                max_rel(a, b) < 1e-4,
                "input {k}: fused vs naive {}",
                max_rel(a, b)
            );
            // finite differences on 5 coordinates
            let base: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            let ga: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
            for idx in [
                0,
                base.len() / 3,
                base.len() / 2,
                base.len() - 1,
                7 % base.len(),
            ] {
                let h = 1e-2f32;
                let at = |delta: f32| {
                    let mut v = base.clone();
                    v[idx] += delta;
                    let mut moved = ts.clone();
                    moved[k] = Tensor::from_vec(v, t.shape(), &Device::Cpu).unwrap();
                    f64::from(fused(&moved).to_scalar::<f32>().unwrap())
                };
                let fd = (at(h) - at(-h)) / (2.0 * f64::from(h));
                let err = (fd - f64::from(ga[idx])).abs();
                assert!(
                    err < 2e-3 * (1.0 + fd.abs()),
                    "input {k} coordinate {idx}: finite difference {fd} vs gradient {}",
                    ga[idx]
                );
            }
        }
    }

    /// A scalar that weighs every output differently, so the gradient checks each element.
    fn weigh(y: &Tensor) -> Tensor {
        let w = randn(y.dims(), 99);
        (y * w).unwrap().sum_all().unwrap()
    }

    #[test]
    #[allow(clippy::float_cmp)] // the same rows in the same order: the same sum
    fn cross_entropy_matches_naive_and_finite_differences_with_ignored_targets() {
        let targets = Tensor::new(&[3u32, IGNORE, 0, 9, IGNORE, 5], &Device::Cpu).unwrap();
        let logits = (randn(&[6, 10], 1) * 3.0).unwrap();
        let (sum, count) = cross_entropy_sum(&logits, &targets).unwrap();
        assert_eq!(count, 4);
        // by hand for row 0: lse - x[3]
        let row: Vec<f32> = logits.get(0).unwrap().to_vec1().unwrap();
        let lse = row.iter().map(|x| x.exp()).sum::<f32>().ln();
        let naive0 = naive::cross_entropy_sum(
            &logits.narrow(0, 0, 1).unwrap(),
            &targets.narrow(0, 0, 1).unwrap(),
        )
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
        assert!((naive0 - (lse - row[3])).abs() < 1e-5);
        assert!(sum.to_scalar::<f32>().unwrap() > 0.0);
        // (B, T, V) logits read as rows over the leading axes: the same sum and count
        let (sum3, count3) = cross_entropy_sum(
            &logits.reshape((2, 3, 10)).unwrap(),
            &targets.reshape((2, 3)).unwrap(),
        )
        .unwrap();
        assert_eq!(count3, 4);
        assert_eq!(
            sum3.to_scalar::<f32>().unwrap(),
            sum.to_scalar::<f32>().unwrap()
        );
        let t2 = targets.clone();
        let t3 = targets.clone();
        check(
            std::slice::from_ref(&logits),
            &move |x| cross_entropy_sum(&x[0], &t2).unwrap().0,
            &move |x| naive::cross_entropy_sum(&x[0], &t3).unwrap(),
        );
        // rows weighed unequally: each row is its own cross-entropy (0 where ignored), and the gradient of a
        // weighted sum goes through the op's per-row backward
        let (rows, count) = cross_entropy_rows(&logits, &targets).unwrap();
        assert_eq!(count, 4);
        let r: Vec<f32> = rows.to_vec1().unwrap();
        assert!((r[0] - (lse - row[3])).abs() < 1e-5);
        assert_eq!((r[1], r[4]), (0.0, 0.0));
        let w = Tensor::new(&[0.5f32, 2.0, 3.0, 0.25, 1.0, 1.5], &Device::Cpu).unwrap();
        let (t4, t5, w2) = (targets.clone(), targets.clone(), w.clone());
        check(
            std::slice::from_ref(&logits),
            &move |x| {
                (cross_entropy_rows(&x[0], &t4).unwrap().0 * &w)
                    .unwrap()
                    .sum_all()
                    .unwrap()
            },
            &move |x| {
                (naive::cross_entropy_rows(&x[0], &t5).unwrap() * &w2)
                    .unwrap()
                    .sum_all()
                    .unwrap()
            },
        );
    }

    #[test]
    fn rms_norm_matches_naive_and_finite_differences() {
        let x = randn(&[2, 70, 16], 2); // 140 rows: more than one block of 64
        let w = (randn(&[16], 3) + 1.0).unwrap();
        check(
            &[x, w],
            &|t| weigh(&rms_norm(&t[0], &t[1], 1e-5).unwrap()),
            &|t| weigh(&naive::rms_norm(&t[0], &t[1], 1e-5).unwrap()),
        );
    }

    #[test]
    fn rope_matches_naive_and_finite_differences_at_an_offset() {
        // tables as the model builds them: angle p·f, the frequencies repeated over both halves
        let (max, hd) = (12, 8);
        let mut cos = Vec::new();
        let mut sin = Vec::new();
        for p in 0..max {
            for _ in 0..2 {
                for f in [1.0f32, 0.3, 0.05, 0.01] {
                    cos.push((p as f32 * f).cos());
                    sin.push((p as f32 * f).sin());
                }
            }
        }
        let cos = Tensor::from_vec(cos, (max, hd), &Device::Cpu).unwrap();
        let sin = Tensor::from_vec(sin, (max, hd), &Device::Cpu).unwrap();
        let x = randn(&[2, 3, 5, hd], 7);
        let (c1, s1, c2, s2) = (cos.clone(), sin.clone(), cos.clone(), sin.clone());
        check(
            &[x],
            &move |t| weigh(&rope(&t[0], &c1, &s1, 4).unwrap()),
            &move |t| weigh(&naive::rope(&t[0], &c2, &s2, 4).unwrap()),
        );
        // position 0 leaves x as it is (cos 1, sin 0)
        let x = randn(&[1, 1, 1, hd], 8);
        let y = rope(&x, &cos, &sin, 0).unwrap();
        assert!(max_rel(&y, &x) < 1e-7);
        assert!(rope(&x, &cos, &sin, 12).is_err());
    }

    #[test]
    fn swiglu_matches_naive_and_finite_differences() {
        let a = (randn(&[3, 5, 11], 4) * 3.0).unwrap();
        let b = randn(&[3, 5, 11], 5);
        check(&[a, b], &|t| weigh(&swiglu(&t[0], &t[1]).unwrap()), &|t| {
            weigh(&naive::swiglu(&t[0], &t[1]).unwrap())
        });
    }

    #[test]
    fn causal_softmax_matches_naive_and_finite_differences_with_and_without_window() {
        for (t, s, window) in [(6, 6, None), (3, 7, None), (6, 6, Some(3))] {
            let x = (randn(&[2, 3, t, s], 6) * 4.0).unwrap();
            check(
                &[x],
                &|v| weigh(&causal_softmax(&v[0], 0.5, window).unwrap()),
                &|v| weigh(&naive::causal_softmax(&v[0], 0.5, window).unwrap()),
            );
        }
        // hand-worked: T = 2 queries, S = 3 keys, so query 0 sits at position 1 and sees keys 0 and 1 (equal
        // scores: ½ each; the 9 is in its future), query 1 sees all three (equal: ⅓ each)
        let scores = Tensor::new(&[[1f32, 1.0, 9.0], [0.0, 0.0, 0.0]], &Device::Cpu).unwrap();
        let p: Vec<Vec<f32>> = causal_softmax(&scores, 1.0, None)
            .unwrap()
            .to_vec2()
            .unwrap();
        assert_eq!(p[0], vec![0.5, 0.5, 0.0]);
        assert!(p[1].iter().all(|v| (v - 1.0 / 3.0).abs() < 1e-6));
    }
}
