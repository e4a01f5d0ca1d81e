//! Matrix products for training, straight on `gemm` (the kernels candle's CPU matmul calls too), and the
//! fused projection y = x·Wᵀ with its own backward.
//!
//! Why not candle's `x.reshape(..).matmul(&w.t())`: candle's backward keeps one gradient per graph node and
//! starts each from a zero tensor that the incoming gradient is then added to. A projection written as
//! reshape → transpose → matmul → reshape is four nodes, so every step zero-filled and re-added four
//! activation-sized (and, for the LM head, logits-sized: B·T·V) buffers per projection; perf put candle's
//! element-wise add and memset at 13% of a training step. One op with its own backward has one node.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

use crate::fused::{checked_targets, fusable, logits_to_grad, row_losses, with_f32};
use crate::qweight::Weight;
use crate::{Context, Result};

/// A row-major view of an `rows × cols` matrix inside `data`: element (i, j) at `data[i·rs + j·cs]`
/// (a transposed view swaps the strides).
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// Row-major with row stride `ld`.
    pub fn rows(data: &'a [f32], ld: usize) -> Self {
        Self {
            data,
            rs: ld,
            cs: 1,
        }
    }

    /// The transpose of a row-major matrix with row stride `ld`.
    pub fn t(data: &'a [f32], ld: usize) -> Self {
        Self {
            data,
            rs: 1,
            cs: ld,
        }
    }

    fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }
}

/// Products at least this large (m·n·k) split over the rayon pool; smaller ones run on the calling thread
/// (callers that already run many in parallel pass `parallel = false`).
const PAR_MIN: usize = 1 << 18;

/// dst (m×n, row stride `ldd`) = a (m×k) · b (k×n), or dst += a · b when `accumulate`.
///
/// # Panics
/// When a view does not hold the matrix it claims (a bug in the caller, checked before any kernel runs).
pub(crate) fn gemm_into(
    dst: &mut [f32],
    ldd: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
    (m, n, k): (usize, usize, usize),
    parallel: bool,
) {
    assert!(
        ldd >= n && Mat::rows(dst, ldd).fits(m, n) && a.fits(m, k) && b.fits(k, n),
        "gemm_into: views too small for {m}x{k} · {k}x{n}"
    );
    if m == 0 || n == 0 {
        return;
    }
    let par = if parallel && m * n * k >= PAR_MIN {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    let s = |x: usize| isize::try_from(x).expect("stride fits isize");
    // SAFETY: the assert above bounds every index the kernel reads or writes: (m−1)·rs + (n−1)·cs of each
    // view lies inside its slice, and `dst` is borrowed mutably, so it aliases neither input.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            s(ldd),
            accumulate,
            a.data.as_ptr(),
            s(a.cs),
            s(a.rs),
            b.data.as_ptr(),
            s(b.cs),
            s(b.rs),
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// The three products of a linear layer y = x·Wᵀ, for x (N, in) and W (out, in), N from the lengths.
///
/// y (N, out) = x·Wᵀ, added to `dst` when `accumulate`.
fn x_wt(dst: &mut [f32], x: &[f32], w: &[f32], (out, d_in): (usize, usize), accumulate: bool) {
    let n = x.len() / d_in.max(1);
    gemm_into(
        dst,
        out,
        accumulate,
        Mat::rows(x, d_in),
        Mat::t(w, d_in),
        (n, out, d_in),
        true,
    );
}

/// dx (N, in) = g·W for g (N, out), added to `dst` when `accumulate`.
fn g_w(dst: &mut [f32], g: &[f32], w: &[f32], (out, d_in): (usize, usize), accumulate: bool) {
    let n = g.len() / out.max(1);
    gemm_into(
        dst,
        d_in,
        accumulate,
        Mat::rows(g, out),
        Mat::rows(w, d_in),
        (n, d_in, out),
        true,
    );
}

/// dW (out, in) = gᵀ·x for g (N, out) and x (N, in).
fn gt_x(dst: &mut [f32], g: &[f32], x: &[f32], (out, d_in): (usize, usize)) {
    let n = g.len() / out.max(1);
    gemm_into(
        dst,
        d_in,
        false,
        Mat::t(g, out),
        Mat::rows(x, d_in),
        (out, d_in, n),
        true,
    );
}

/// y (N, out) = x·Wᵀ for a weight that may be quantised (added to `dst` when `accumulate`): blocks are
/// dequantised a slab of rows at a time ([`weight_slabs`]), each slab's product filling its columns of y.
fn weight_x_wt(
    dst: &mut [f32],
    x: &[f32],
    w: &Weight,
    accumulate: bool,
) -> candle_core::Result<()> {
    let (out, d_in) = w.dims()?;
    let n = x.len() / d_in.max(1);
    match w {
        Weight::Dense(t) => with_f32(t, |wv| x_wt(dst, x, wv, (out, d_in), accumulate)),
        Weight::Quant(_) if n == 0 => Ok(()),
        Weight::Quant(_) => weight_slabs(w, |r0, rows, wv| {
            gemm_into(
                &mut dst[r0..],
                out,
                accumulate,
                Mat::rows(x, d_in),
                Mat::t(wv, d_in),
                (n, rows, d_in),
                true,
            );
            Ok(())
        }),
    }
}

/// dx (N, in) = g·W for a weight that may be quantised (added to `dst` when `accumulate`): the sum over
/// slabs of rows of g's columns for the slab times the slab.
fn weight_g_w(dst: &mut [f32], g: &[f32], w: &Weight, accumulate: bool) -> candle_core::Result<()> {
    let (out, d_in) = w.dims()?;
    let n = g.len() / out.max(1);
    match w {
        Weight::Dense(t) => with_f32(t, |wv| g_w(dst, g, wv, (out, d_in), accumulate)),
        Weight::Quant(_) if n == 0 || out == 0 => {
            if !accumulate {
                dst.fill(0.0);
            }
            Ok(())
        }
        Weight::Quant(_) => weight_slabs(w, |r0, rows, wv| {
            gemm_into(
                dst,
                d_in,
                accumulate || r0 > 0,
                Mat::rows(&g[r0..], out),
                Mat::rows(wv, d_in),
                (n, d_in, rows),
                true,
            );
            Ok(())
        }),
    }
}

/// Calls `f(r0, rows, slab)` for consecutive slabs of W's rows (~1 MiB of f32 each): a dense weight's rows as
/// they are, a quantised one's dequantised into one scratch buffer.
fn weight_slabs(
    w: &Weight,
    mut f: impl FnMut(usize, usize, &[f32]) -> candle_core::Result<()>,
) -> candle_core::Result<()> {
    let (v, d) = w.dims()?;
    match w {
        Weight::Dense(t) => with_f32(t, |wv| {
            let slab = ((1usize << 18) / d.max(1)).clamp(16, v.max(16));
            for r0 in (0..v).step_by(slab) {
                let rows = slab.min(v - r0);
                f(r0, rows, &wv[r0 * d..(r0 + rows) * d])?;
            }
            Ok(())
        })?,
        Weight::Quant(q) => {
            let slab = q.slab_rows();
            let mut buf = vec![0f32; slab * d];
            for r0 in (0..v).step_by(slab) {
                let rows = slab.min(v - r0);
                let b = &mut buf[..rows * d];
                q.dequantize_rows_into(r0, b);
                f(r0, rows, b)?;
            }
            Ok(())
        }
    }
}

/// The gradient of `of`, computed by `fill` into a zeroed buffer of its size, or None when `of` takes no
/// part in backward (a frozen weight, the embeddings' output): that skips the largest product of a LoRA
/// step, dW = gᵀ·x over the base weight.
fn grad_of(
    of: &Tensor,
    fill: impl FnOnce(&mut [f32]) -> candle_core::Result<()>,
) -> candle_core::Result<Option<Tensor>> {
    if !of.track_op() {
        return Ok(None);
    }
    let mut d = vec![0f32; of.elem_count()];
    fill(&mut d)?;
    Ok(Some(Tensor::from_vec(d, of.shape(), of.device())?))
}

/// x ⊙ mask, element by element.
fn masked(x: &[f32], mask: &[f32]) -> Vec<f32> {
    x.iter().zip(mask).map(|(v, k)| v * k).collect()
}

struct Projection;

impl CustomOp2 for Projection {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = crate::fused::f32_slice(s1, l1, self.name())?;
        let w = crate::fused::f32_slice(s2, l2, self.name())?;
        let (out, d_in) = l2.shape().dims2()?;
        let dims = l1.shape().dims();
        if dims.last() != Some(&d_in) {
            candle_core::bail!("fused-linear: input {dims:?} against weight ({out}, {d_in})");
        }
        let mut y = vec![0f32; x.len() / d_in.max(1) * out];
        x_wt(&mut y, x, w, (out, d_in), false);
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("checked above") = out;
        Ok((CpuStorage::F32(y), Shape::from(shape)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dims = w.dims2()?;
        let dx = grad_of(x, |dx| {
            with_f32(grad, |g| with_f32(w, |wv| g_w(dx, g, wv, dims, false)))?
        })?;
        let dw = grad_of(w, |dw| {
            with_f32(grad, |g| with_f32(x, |xv| gt_x(dw, g, xv, dims)))?
        })?;
        Ok((dx, dw))
    }
}

/// A frozen projection with a LoRA adapter as one op: y = x·Wᵀ + s·(drop(x)·Aᵀ)·Bᵀ. W is held by the op
/// (it takes no gradient); x, A and B are its graph inputs. Composed from candle ops the adapter path keeps
/// four more (N, out)-sized tensors per projection alive until backward ends (the products, the scaled
/// delta, the sum); here the op keeps only s·h = s·drop(x)·Aᵀ, (N, r).
struct LoraProjection {
    w: Weight, // (out, in), frozen
    scale: f32,
    /// (p, seed) of inverted dropout on the adapter's input.
    dropout: Option<(f64, u64)>,
    /// s·drop(x)·Aᵀ (N, r), kept from forward.
    hs: std::sync::OnceLock<Vec<f32>>,
}

impl LoraProjection {
    fn mask(&self, n: usize) -> Option<Vec<f32>> {
        self.dropout
            .map(|(p, seed)| crate::lora::dropout_values(n, p, seed))
    }
}

impl candle_core::CustomOp3 for LoraProjection {
    fn name(&self) -> &'static str {
        "fused-lora-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = crate::fused::f32_slice(s1, l1, self.name())?;
        let a = crate::fused::f32_slice(s2, l2, self.name())?;
        let b = crate::fused::f32_slice(s3, l3, self.name())?;
        let (r, d_in) = l2.shape().dims2()?;
        let (out, rb) = l3.shape().dims2()?;
        let (wo, wi) = self.w.dims()?;
        let dims = l1.shape().dims();
        if dims.last() != Some(&d_in) || rb != r || (wo, wi) != (out, d_in) {
            candle_core::bail!(
                "fused-lora-linear: input {dims:?}, A ({r}, {d_in}), B ({out}, {rb}), W ({wo}, {wi})"
            );
        }
        let n = x.len() / d_in.max(1);
        let mut y = vec![0f32; n * out];
        weight_x_wt(&mut y, x, &self.w, false)?;
        let xd = self.mask(x.len()).map(|m| masked(x, &m));
        // s·h = s·drop(x)·Aᵀ (N, r), then y += (s·h)·Bᵀ
        let mut hs = vec![0f32; n * r];
        x_wt(&mut hs, xd.as_deref().unwrap_or(x), a, (r, d_in), false);
        for v in &mut hs {
            *v *= self.scale;
        }
        x_wt(&mut y, &hs, b, (out, r), true);
        let _ = self.hs.set(hs);
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("checked above") = out;
        Ok((CpuStorage::F32(y), Shape::from(shape)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let hs = self
            .hs
            .get()
            .ok_or_else(|| candle_core::Error::Msg("fused-lora-linear: no forward".into()))?;
        let (r, d_in) = a.dims2()?;
        let out = b.dim(0)?;
        let mask = self.mask(x.elem_count());
        with_f32(grad, |g| {
            with_f32(a, |av| {
                with_f32(b, |bv| {
                    with_f32(x, |xv| {
                        // dh = s·g·B (N, r): the gradient of h = drop(x)·Aᵀ
                        let mut dh = vec![0f32; g.len() / out.max(1) * r];
                        g_w(&mut dh, g, bv, (out, r), false);
                        for v in &mut dh {
                            *v *= self.scale;
                        }
                        // dB = gᵀ·(s·h) (out, r)
                        let db = grad_of(b, |db| {
                            gt_x(db, g, hs, (out, r));
                            Ok(())
                        })?;
                        // dA = dhᵀ·drop(x) (r, in)
                        let da = grad_of(a, |da| {
                            let xd = mask.as_ref().map(|m| masked(xv, m));
                            gt_x(da, &dh, xd.as_deref().unwrap_or(xv), (r, d_in));
                            Ok(())
                        })?;
                        // dx = g·W + (dh·A) ⊙ mask
                        let dx = grad_of(x, |dx| {
                            weight_g_w(dx, g, &self.w, false)?;
                            match &mask {
                                None => g_w(dx, &dh, av, (r, d_in), true),
                                Some(m) => {
                                    let mut t = vec![0f32; dx.len()];
                                    g_w(&mut t, &dh, av, (r, d_in), false);
                                    for ((d, v), k) in dx.iter_mut().zip(t).zip(m) {
                                        *d += v * k;
                                    }
                                }
                            }
                            Ok(())
                        })?;
                        Ok::<_, candle_core::Error>((dx, da, db))
                    })
                })
            })
        })????
    }
}

/// y = x·Wᵀ + s·(drop(x)·Aᵀ)·Bᵀ with W frozen, as one op (see [`LoraProjection`]); `dropout` is (p, seed)
/// while training. A dense W falls back to candle ops off the CPU, for a non-contiguous input, or when W
/// itself takes a gradient; a quantised W is CPU-only (its input made contiguous).
pub(crate) fn lora_linear(
    x: &Tensor,
    w: &Weight,
    pair: &crate::lora::LoraPair,
) -> candle_core::Result<Tensor> {
    #[allow(clippy::cast_possible_truncation)]
    let op = |w: Weight| LoraProjection {
        w,
        scale: pair.scale as f32,
        dropout: pair.dropout_now(),
        hs: std::sync::OnceLock::new(),
    };
    match w {
        Weight::Dense(t) => {
            if fusable(&[x, t, &pair.a, &pair.b]) && !t.track_op() {
                x.apply_op3(&pair.a, &pair.b, op(w.clone()))
            } else {
                linear_op(x, t)? + pair.delta(x)?
            }
        }
        Weight::Quant(_) => {
            let x = x.contiguous()?;
            if !fusable(&[&x, &pair.a, &pair.b]) {
                candle_core::bail!("a quantised base runs on the CPU in f32 only");
            }
            x.apply_op3(&pair.a, &pair.b, op(w.clone()))
        }
    }
}

/// y = x·Wᵀ for a quantised, frozen W (QLoRA's base without an adapter on this projection, or its LM
/// head): one op whose backward gives dx only.
struct QuantProjection(Weight);

impl candle_core::CustomOp1 for QuantProjection {
    fn name(&self) -> &'static str {
        "quant-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = crate::fused::f32_slice(s, l, self.name())?;
        let (out, d_in) = self.0.dims()?;
        let dims = l.shape().dims();
        if dims.last() != Some(&d_in) {
            candle_core::bail!("quant-linear: input {dims:?} against weight ({out}, {d_in})");
        }
        let mut y = vec![0f32; x.len() / d_in.max(1) * out];
        weight_x_wt(&mut y, x, &self.0, false)?;
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("checked above") = out;
        Ok((CpuStorage::F32(y), Shape::from(shape)))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        grad_of(x, |dx| {
            with_f32(grad, |g| weight_g_w(dx, g, &self.0, false))?
        })
    }
}

/// The LM head and the cross-entropy as one op over the final hidden states, for a frozen head (LoRA and
/// QLoRA, evaluation): rows of next-token losses without a logits tensor in the graph. Through candle the
/// (B·T, V) logits were one tensor and their gradient three more (the op's, backward's zero-filled
/// accumulator and the sum). Here, when backward will follow and memory is not asked for, the op keeps one
/// copy of the logits, which backward turns into their gradient in place. Otherwise (evaluation, gradient
/// checkpointing) it never holds more than a slab of the vocabulary: forward runs over slabs of the head's
/// rows with an online log-sum-exp per token, and backward computes each slab's logits again, turns them
/// into their gradient and adds its product with the slab to dx, so each slab of a quantised head is
/// dequantised once per pass.
struct HeadCrossEntropy {
    w: Weight,
    /// Keep the whole logits from forward for backward.
    keep: bool,
    logits: std::sync::Mutex<Option<Vec<f32>>>,
    lse: std::sync::OnceLock<Vec<f32>>,
}

/// The logits of `n` hidden states `h` against a slab of `rows` head rows, (n, rows), into `buf`.
fn slab_logits(buf: &mut Vec<f32>, h: &[f32], slab: &[f32], (n, rows, d): (usize, usize, usize)) {
    buf.resize(n * rows, 0.0);
    gemm_into(
        buf,
        rows,
        false,
        Mat::rows(h, d),
        Mat::t(slab, d),
        (n, rows, d),
        true,
    );
}

impl CustomOp2 for HeadCrossEntropy {
    fn name(&self) -> &'static str {
        "head-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let h = crate::fused::f32_slice(s1, l1, self.name())?;
        let (v, d) = self.w.dims()?;
        let n = h.len() / d.max(1);
        if l1.shape().dims().last() != Some(&d) {
            candle_core::bail!(
                "head-cross-entropy: hidden {:?} against a head ({v}, {d})",
                l1.shape().dims()
            );
        }
        let t = checked_targets(s2, l2, n, v, self.name())?;
        let (mut lse, mut nll) = (vec![0f32; n], vec![0f32; n]);
        if self.keep {
            let mut logits = vec![0f32; n * v];
            weight_x_wt(&mut logits, h, &self.w, false)?;
            row_losses(&logits, t, v, &mut lse, &mut nll);
            *self
                .logits
                .lock()
                .map_err(|_| candle_core::Error::Msg("head-cross-entropy: lock".into()))? =
                Some(logits);
        } else {
            // online log-sum-exp over slabs of the vocabulary: running max and sum, the target's logit
            let (mut m, mut sum, mut tgt) =
                (vec![f32::NEG_INFINITY; n], vec![0f32; n], vec![0f32; n]);
            let mut buf = Vec::new();
            weight_slabs(&self.w, |v0, rows, slab| {
                slab_logits(&mut buf, h, slab, (n, rows, d));
                buf.par_chunks(rows.max(1))
                    .zip(m.par_iter_mut().zip(sum.par_iter_mut()))
                    .zip(tgt.par_iter_mut().zip(t.par_iter()))
                    .for_each(|((row, (m, s)), (tg, &ti))| {
                        let mx = row.iter().copied().fold(*m, f32::max);
                        *s =
                            *s * (*m - mx).exp() + row.iter().map(|&a| (a - mx).exp()).sum::<f32>();
                        *m = mx;
                        if let Some(&a) = (ti as usize).checked_sub(v0).and_then(|i| row.get(i)) {
                            *tg = a;
                        }
                    });
                Ok(())
            })?;
            for r in 0..n {
                lse[r] = m[r] + sum[r].ln();
                nll[r] = if t[r] == crate::fused::IGNORE {
                    0.0
                } else {
                    lse[r] - tgt[r]
                };
            }
        }
        let _ = self.lse.set(lse);
        Ok((CpuStorage::F32(nll), Shape::from(n)))
    }

    fn bwd(
        &self,
        h: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        use rayon::prelude::*;
        let lse = self
            .lse
            .get()
            .ok_or_else(|| candle_core::Error::Msg("head-cross-entropy: no forward".into()))?;
        let (v, d) = self.w.dims()?;
        let n = lse.len();
        let t = targets.to_vec1::<u32>()?;
        let g = grad.to_vec1::<f32>()?;
        let kept = self
            .logits
            .lock()
            .map_err(|_| candle_core::Error::Msg("head-cross-entropy: lock".into()))?
            .take();
        let dx = grad_of(h, |dx| {
            with_f32(h, |hv| {
                if let Some(mut p) = kept {
                    // the kept logits become their gradient in place; dx = dlogits · W
                    p.par_chunks_mut(v.max(1))
                        .enumerate()
                        .for_each(|(r, row)| logits_to_grad(row, 0, lse[r], g[r], t[r]));
                    return weight_g_w(dx, &p, &self.w, false);
                }
                // slab by slab: its logits again, their gradient, dx += dlogits_slab · slab
                let mut buf = Vec::new();
                weight_slabs(&self.w, |v0, rows, slab| {
                    slab_logits(&mut buf, hv, slab, (n, rows, d));
                    buf.par_chunks_mut(rows.max(1))
                        .enumerate()
                        .for_each(|(r, row)| logits_to_grad(row, v0, lse[r], g[r], t[r]));
                    gemm_into(
                        dx,
                        d,
                        v0 > 0,
                        Mat::rows(&buf, rows),
                        Mat::rows(slab, d),
                        (n, d, rows),
                        true,
                    );
                    Ok(())
                })
            })?
        })?;
        Ok((dx, None))
    }
}

/// Rows of next-token losses of a frozen LM head `w` over hidden states `h` (…, D) and `targets` (…) as one
/// op (see [`HeadCrossEntropy`]): the logits kept for backward unless `recompute` (or no backward will
/// come); None when the head takes a gradient or the input is not on the CPU in f32 (the caller then
/// computes the logits).
pub(crate) fn head_cross_entropy(
    h: &Tensor,
    w: &Weight,
    targets: &Tensor,
    recompute: bool,
) -> candle_core::Result<Option<Tensor>> {
    let frozen = match w {
        Weight::Dense(t) => !t.track_op() && fusable(&[t]),
        Weight::Quant(_) => true,
    };
    let h = h.contiguous()?;
    if !frozen || !fusable(&[&h]) {
        return Ok(None);
    }
    let op = HeadCrossEntropy {
        w: w.clone(),
        keep: h.track_op() && !recompute,
        logits: std::sync::Mutex::new(None),
        lse: std::sync::OnceLock::new(),
    };
    h.apply_op2(targets, op).map(Some)
}

/// y = x·Wᵀ for a weight that may be quantised.
pub(crate) fn weight_linear(x: &Tensor, w: &Weight) -> candle_core::Result<Tensor> {
    match w {
        Weight::Dense(t) => linear_op(x, t),
        Weight::Quant(_) => {
            let x = x.contiguous()?;
            if !fusable(&[&x]) {
                candle_core::bail!("a quantised base runs on the CPU in f32 only");
            }
            x.apply_op1(QuantProjection(w.clone()))
        }
    }
}

/// y = x·Wᵀ over the last axis: x (…, in), W (out, in) → (…, out), as one differentiable op (one graph
/// node). Off the CPU, or for a non-contiguous input, candle's ops compute the same.
///
/// # Errors
/// On a shape mismatch.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    linear_op(x, w).ctx("linear")
}

pub(crate) fn linear_op(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    if fusable(&[x, w]) {
        x.apply_op2(w, Projection)
    } else {
        naive::linear_op(x, w)
    }
}

/// The naive twin from candle's ops.
pub mod naive {
    use crate::{Context, Result};
    use candle_core::Tensor;

    /// y = x·Wᵀ over the last axis, by reshape → matmul with the transposed weight → reshape.
    ///
    /// # Errors
    /// On a shape mismatch.
    pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
        linear_op(x, w).ctx("linear")
    }

    pub(crate) fn linear_op(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims();
        let Some(&d_in) = dims.last() else {
            candle_core::bail!("linear: input has no axes");
        };
        let rows = x.elem_count() / d_in.max(1);
        let y = x.reshape((rows, d_in))?.matmul(&w.t()?)?;
        let mut out = dims.to_vec();
        *out.last_mut().expect("non-empty") = w.dim(0)?;
        y.reshape(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{max_abs_diff, randn};
    use candle_core::{Device, Var};

    #[test]
    #[allow(clippy::float_cmp)] // small integers: exact in f32
    fn gemm_into_by_hand_with_strides_and_accumulation() {
        // [1 2; 3 4] · [5 6; 7 8] = [19 22; 43 50]; the second factor read transposed from [5 7; 6 8]
        let a = [1f32, 2.0, 3.0, 4.0];
        let bt = [5f32, 7.0, 6.0, 8.0];
        let mut dst = [0f32, 0.0, -1.0, 0.0, 0.0, -1.0]; // row stride 3: the third column stays
        gemm_into(
            &mut dst,
            3,
            false,
            Mat::rows(&a, 2),
            Mat::t(&bt, 2),
            (2, 2, 2),
            true,
        );
        assert_eq!(dst, [19.0, 22.0, -1.0, 43.0, 50.0, -1.0]);
        gemm_into(
            &mut dst,
            3,
            true,
            Mat::rows(&a, 2),
            Mat::t(&bt, 2),
            (2, 2, 2),
            false,
        );
        assert_eq!(dst, [38.0, 44.0, -1.0, 86.0, 100.0, -1.0]);
    }

    #[test]
    #[should_panic(expected = "views too small")]
    fn gemm_into_refuses_a_view_past_its_slice() {
        let a = [1f32; 3];
        let mut dst = [0f32; 4];
        gemm_into(
            &mut dst,
            2,
            false,
            Mat::rows(&a, 2),
            Mat::rows(&a, 2),
            (2, 2, 2),
            false,
        );
    }

    /// Value and both gradients against candle's reshape → matmul → reshape, and the weight's gradient
    /// against central finite differences, for a (B, T, in) input (larger than the parallel threshold).
    #[test]
    fn linear_matches_naive_and_finite_differences() {
        let x = Var::from_tensor(&randn(&[3, 50, 40], 1)).unwrap();
        let w = Var::from_tensor(&randn(&[70, 40], 2)).unwrap();
        let weigh = randn(&[3, 50, 70], 3);
        let loss = |x: &Tensor, w: &Tensor, fused: bool| {
            let y = if fused {
                linear(x, w).unwrap()
            } else {
                naive::linear(x, w).unwrap()
            };
            assert_eq!(y.dims(), &[3, 50, 70]);
            (y * &weigh).unwrap().sum_all().unwrap()
        };
        let (lf, ln) = (loss(&x, &w, true), loss(&x, &w, false));
        assert!(max_abs_diff(&lf, &ln) < 1e-3 * (1.0 + ln.to_scalar::<f32>().unwrap().abs()));
        let (gf, gn) = (lf.backward().unwrap(), ln.backward().unwrap());
        for t in [x.as_tensor(), w.as_tensor()] {
            let d = max_abs_diff(gf.get(t).unwrap(), gn.get(t).unwrap());
            assert!(d < 1e-4, "gradient differs by {d}");
        }
        let base: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        let ga: Vec<f32> = gf
            .get(&w)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for idx in [0, 1234, base.len() - 1] {
            let at = |d: f32| {
                let mut v = base.clone();
                v[idx] += d;
                let w2 = Tensor::from_vec(v, (70, 40), &Device::Cpu).unwrap();
                f64::from(loss(&x, &w2, true).to_scalar::<f32>().unwrap())
            };
            let fd = (at(0.05) - at(-0.05)) / 0.1;
            assert!(
                (fd - f64::from(ga[idx])).abs() < 2e-2 * (1.0 + fd.abs()),
                "{fd} vs {}",
                ga[idx]
            );
        }
        // shapes that do not fit are refused
        assert!(linear(&x, &randn(&[70, 41], 4)).is_err());
    }

    /// The fused head + cross-entropy against logits then the fused cross-entropy: the same row losses and
    /// the same gradient of the hidden states, with the logits kept and over slabs of the vocabulary (600
    /// rows of 1024: slabs of 256, 256 and 88), for a dense and a quantised head, with ignored targets.
    #[test]
    fn head_cross_entropy_equals_the_loss_of_the_logits() {
        use crate::qweight::{BaseQuant, QuantMatrix};
        let (n, d, v) = (30, 1024, 600);
        let w = randn(&[v, d], 1);
        let q = std::sync::Arc::new(QuantMatrix::from_tensor(&w, BaseQuant::Q8_0, "w").unwrap());
        let mut t: Vec<u32> = (0u32..30).map(|i| i * 37 % 600).collect();
        t[3] = crate::fused::IGNORE;
        t[29] = crate::fused::IGNORE;
        let targets = Tensor::new(t.as_slice(), &Device::Cpu).unwrap();
        let h = Var::from_tensor(&randn(&[1, n, d], 2)).unwrap();
        let weigh = randn(&[n], 3);
        for head in [Weight::Dense(w.clone()), Weight::Quant(q.clone())] {
            let dense = head.to_tensor(&Device::Cpu).unwrap();
            let (want, _) =
                crate::fused::cross_entropy_rows(&linear(h.as_tensor(), &dense).unwrap(), &targets)
                    .unwrap();
            let gw = (&want * &weigh)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let want_dx = gw.get(h.as_tensor()).unwrap().clone();
            for recompute in [false, true] {
                let rows = head_cross_entropy(h.as_tensor(), &head, &targets, recompute)
                    .unwrap()
                    .unwrap();
                assert!(
                    max_abs_diff(&rows, &want) < 1e-5,
                    "{}",
                    max_abs_diff(&rows, &want)
                );
                let g = (&rows * &weigh)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                let dx = g.get(h.as_tensor()).unwrap();
                assert!(
                    max_abs_diff(dx, &want_dx) < 1e-5,
                    "{}",
                    max_abs_diff(dx, &want_dx)
                );
            }
        }
        // a head that trains is left to the logits path
        let wv = Var::from_tensor(&w).unwrap();
        assert!(head_cross_entropy(
            h.as_tensor(),
            &Weight::Dense(wv.as_tensor().clone()),
            &targets,
            false
        )
        .unwrap()
        .is_none());
    }
}
