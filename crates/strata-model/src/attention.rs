//! Causal self-attention for training as one op with its own backward: projections (B, T, heads·hd) in,
//! the heads' outputs (B, T, nh·hd) out, ready for `o_proj`. Inside, per sequence and head: RoPE on the
//! query and key rows, S = Q·Kᵀ, the causal (optionally windowed) softmax, Y = P·V — grouped-query heads
//! read their shared K/V rows in place, no copies per query head.
//!
//! Composed from candle ops, the same attention is fourteen graph nodes per layer (head split, transpose,
//! copy, rope, Kᵀ, two products, softmax, head merge…), and candle's backward zero-fills and adds a
//! gradient buffer for every one — two of them (B·nh·T²) the size of the attention matrix. Here the graph
//! holds one node and one saved tensor (the probabilities P); backward is, per head,
//! dV += Pᵀ·dY, dP = dY·Vᵀ, dS = scale·P⊙(dP − rowsum(dP⊙P)), dQ = dS·K, dK += dSᵀ·Q, then RoPE's
//! transpose on dQ and dK.
//!
//! [`naive::causal_attention`] is the same function from candle ops (and the path off the CPU); tests
//! check values and gradients against it and against finite differences.

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::fused::{
    causal_span, f32_slice, fusable, rope_row, softmax_span, softmax_span_grad, with_f32,
};
use crate::matmul::{gemm_into, Mat};
use crate::{Context, Result};

/// Head layout and the attention's parameters.
#[derive(Clone, Copy)]
struct Heads {
    n_head: usize,
    n_kv: usize,
    head_dim: usize,
    scale: f32,
    window: Option<usize>,
}

struct Attention {
    heads: Heads,
    cos: Tensor, // (max_pos, hd)
    sin: Tensor,
    /// The softmax probabilities (B, nh, T, T), kept from forward for backward.
    probs: OnceLock<Vec<f32>>,
}

impl Attention {
    /// (B, T) from q's layout, after checking k and v against it and the rope tables.
    fn dims(&self, q: &Shape, k: &Shape, v: &Shape) -> candle_core::Result<(usize, usize)> {
        let Heads {
            n_head: nh,
            n_kv: nkv,
            head_dim: hd,
            ..
        } = self.heads;
        let (b, t, dq) = q.dims3()?;
        let (max, chd) = self.cos.dims2()?;
        if dq != nh * hd
            || k.dims3()? != (b, t, nkv * hd)
            || v.dims3()? != (b, t, nkv * hd)
            || nkv == 0
            || nh % nkv != 0
            || hd % 2 != 0
            || chd != hd
            || t > max
        {
            candle_core::bail!(
                "fused-attention: q {q:?}, k {k:?}, v {v:?} do not fit {nh} heads / {nkv} kv heads of {hd} \
                 with rope tables ({max}, {chd})"
            );
        }
        Ok((b, t))
    }
}

/// Rows `0..t` of one head (columns `col..col+hd` of rows with stride `ld`) through RoPE into `out`
/// (t × hd, contiguous); `backward` applies RoPE's transpose and writes back into the strided rows.
fn rope_rows(
    cos: &[f32],
    sin: &[f32],
    hd: usize,
    t: usize,
    (src, ld): (&[f32], usize),
    out: &mut [f32],
) {
    for (i, o) in out.chunks_exact_mut(hd).take(t).enumerate() {
        let p = i * hd;
        rope_row(
            &src[i * ld..i * ld + hd],
            o,
            &cos[p..p + hd],
            &sin[p..p + hd],
            false,
        );
    }
}

fn unrope_rows(
    cos: &[f32],
    sin: &[f32],
    hd: usize,
    t: usize,
    g: &[f32],
    (dst, ld): (&mut [f32], usize),
) {
    for (i, gr) in g.chunks_exact(hd).take(t).enumerate() {
        let p = i * hd;
        rope_row(
            gr,
            &mut dst[i * ld..i * ld + hd],
            &cos[p..p + hd],
            &sin[p..p + hd],
            true,
        );
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "fused-attention"
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
        let (b, t) = self.dims(l1.shape(), l2.shape(), l3.shape())?;
        let (q, k, v) = (
            f32_slice(s1, l1, self.name())?,
            f32_slice(s2, l2, self.name())?,
            f32_slice(s3, l3, self.name())?,
        );
        let h = self.heads;
        let (nh, nkv, hd) = (h.n_head, h.n_kv, h.head_dim);
        let (ldq, ldk) = (nh * hd, nkv * hd);
        let rep = nh / nkv;
        let mut y = vec![0f32; b * t * ldq];
        let mut probs = vec![0f32; b * nh * t * t];
        with_f32(&self.cos, |cos| {
            with_f32(&self.sin, |sin| {
                y.par_chunks_mut(t * ldq)
                    .zip(probs.par_chunks_mut(nh * t * t))
                    .enumerate()
                    .for_each(|(bi, (yb, pb))| {
                        let (qb, kb, vb) = (
                            &q[bi * t * ldq..(bi + 1) * t * ldq],
                            &k[bi * t * ldk..(bi + 1) * t * ldk],
                            &v[bi * t * ldk..(bi + 1) * t * ldk],
                        );
                        let (mut qr, mut kr) = (vec![0f32; t * hd], vec![0f32; t * hd]);
                        for g in 0..nkv {
                            rope_rows(cos, sin, hd, t, (&kb[g * hd..], ldk), &mut kr);
                            for head in g * rep..(g + 1) * rep {
                                rope_rows(cos, sin, hd, t, (&qb[head * hd..], ldq), &mut qr);
                                let p = &mut pb[head * t * t..(head + 1) * t * t];
                                // S = Qr · Krᵀ, then the softmax row by row
                                gemm_into(
                                    p,
                                    t,
                                    false,
                                    Mat::rows(&qr, hd),
                                    Mat::t(&kr, hd),
                                    (t, t, hd),
                                    false,
                                );
                                for (i, row) in p.chunks_exact_mut(t).enumerate() {
                                    softmax_span(row, causal_span(i, t, t, h.window), h.scale);
                                }
                                // Y[:, head] = P · V[:, g]
                                gemm_into(
                                    &mut yb[head * hd..],
                                    ldq,
                                    false,
                                    Mat::rows(p, t),
                                    Mat::rows(&vb[g * hd..], ldk),
                                    (t, hd, t),
                                    false,
                                );
                            }
                        }
                    });
            })
        })??;
        let _ = self.probs.set(probs);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    // a fused kernel: the backward of RoPE, scores, causal softmax and values in one pass per head, its
    // loops over plain slices kept together so that each head reads its rows once
    #[allow(clippy::too_many_lines)]
    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, t) = self.dims(q.shape(), k.shape(), v.shape())?;
        let probs = self
            .probs
            .get()
            .ok_or_else(|| candle_core::Error::Msg("fused-attention: no forward".into()))?;
        let h = self.heads;
        let (nh, nkv, hd) = (h.n_head, h.n_kv, h.head_dim);
        let (ldq, ldk) = (nh * hd, nkv * hd);
        let rep = nh / nkv;
        let mut dq = vec![0f32; b * t * ldq];
        let mut dk = vec![0f32; b * t * ldk];
        let mut dv = vec![0f32; b * t * ldk];
        with_f32(&self.cos, |cos| {
            with_f32(&self.sin, |sin| {
                with_f32(q, |q| {
                    with_f32(k, |k| {
                        with_f32(v, |v| {
                            with_f32(grad, |gy| {
                                dq.par_chunks_mut(t * ldq)
                                    .zip(dk.par_chunks_mut(t * ldk))
                                    .zip(dv.par_chunks_mut(t * ldk))
                                    .enumerate()
                                    .for_each(|(bi, ((dqb, dkb), dvb))| {
                                        let rq = bi * t * ldq..(bi + 1) * t * ldq;
                                        let rk = bi * t * ldk..(bi + 1) * t * ldk;
                                        let (qb, kb, vb, gb) =
                                            (&q[rq.clone()], &k[rk.clone()], &v[rk], &gy[rq]);
                                        let pb = &probs[bi * nh * t * t..(bi + 1) * nh * t * t];
                                        let mut qr = vec![0f32; t * hd];
                                        let mut kr = vec![0f32; t * hd];
                                        let mut dqr = vec![0f32; t * hd];
                                        let mut dkr = vec![0f32; t * hd];
                                        let mut ds = vec![0f32; t * t];
                                        for g in 0..nkv {
                                            rope_rows(
                                                cos,
                                                sin,
                                                hd,
                                                t,
                                                (&kb[g * hd..], ldk),
                                                &mut kr,
                                            );
                                            dkr.fill(0.0);
                                            for head in g * rep..(g + 1) * rep {
                                                rope_rows(
                                                    cos,
                                                    sin,
                                                    hd,
                                                    t,
                                                    (&qb[head * hd..], ldq),
                                                    &mut qr,
                                                );
                                                let p = &pb[head * t * t..(head + 1) * t * t];
                                                let dy = Mat::rows(&gb[head * hd..], ldq);
                                                // dV[:, g] += Pᵀ · dY
                                                gemm_into(
                                                    &mut dvb[g * hd..],
                                                    ldk,
                                                    true,
                                                    Mat::t(p, t),
                                                    dy,
                                                    (t, hd, t),
                                                    false,
                                                );
                                                // dP = dY · V[:, g]ᵀ, then through the softmax
                                                gemm_into(
                                                    &mut ds,
                                                    t,
                                                    false,
                                                    dy,
                                                    Mat::t(&vb[g * hd..], ldk),
                                                    (t, t, hd),
                                                    false,
                                                );
                                                for (i, (dr, pr)) in ds
                                                    .chunks_exact_mut(t)
                                                    .zip(p.chunks_exact(t))
                                                    .enumerate()
                                                {
                                                    softmax_span_grad(
                                                        pr,
                                                        dr,
                                                        causal_span(i, t, t, h.window),
                                                        h.scale,
                                                    );
                                                }
                                                // dQr = dS · Kr; dKr += dSᵀ · Qr
                                                gemm_into(
                                                    &mut dqr,
                                                    hd,
                                                    false,
                                                    Mat::rows(&ds, t),
                                                    Mat::rows(&kr, hd),
                                                    (t, hd, t),
                                                    false,
                                                );
                                                gemm_into(
                                                    &mut dkr,
                                                    hd,
                                                    true,
                                                    Mat::t(&ds, t),
                                                    Mat::rows(&qr, hd),
                                                    (t, hd, t),
                                                    false,
                                                );
                                                unrope_rows(
                                                    cos,
                                                    sin,
                                                    hd,
                                                    t,
                                                    &dqr,
                                                    (&mut dqb[head * hd..], ldq),
                                                );
                                            }
                                            unrope_rows(
                                                cos,
                                                sin,
                                                hd,
                                                t,
                                                &dkr,
                                                (&mut dkb[g * hd..], ldk),
                                            );
                                        }
                                    });
                            })
                        })
                    })
                })
            })
        })??????;
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), q.device())?),
            Some(Tensor::from_vec(dk, k.shape(), k.device())?),
            Some(Tensor::from_vec(dv, v.shape(), v.device())?),
        ))
    }
}

/// Causal self-attention over projections without a cache (training, scoring): q (B, T, nh·hd), k and v
/// (B, T, nkv·hd), positions 0..T, RoPE tables `cos`/`sin` (max_pos, hd) in the "rotate half" layout,
/// softmax(scale·Q·Kᵀ) over the keys each query may see (the last `window` with sliding-window attention)
/// → (B, T, nh·hd).
///
/// # Errors
/// On shapes that do not fit the head layout or positions past the tables.
#[allow(clippy::too_many_arguments)]
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    (cos, sin): (&Tensor, &Tensor),
    (n_head, n_kv, head_dim): (usize, usize, usize),
    scale: f64,
    window: Option<usize>,
) -> Result<Tensor> {
    if fusable(&[q, k, v, cos, sin]) {
        #[allow(clippy::cast_possible_truncation)]
        let op = Attention {
            heads: Heads {
                n_head,
                n_kv,
                head_dim,
                scale: scale as f32,
                window,
            },
            cos: cos.clone(),
            sin: sin.clone(),
            probs: OnceLock::new(),
        };
        q.apply_op3(k, v, op).ctx("attention")
    } else {
        naive::causal_attention(q, k, v, (cos, sin), (n_head, n_kv, head_dim), scale, window)
    }
}

/// (B, T, n·hd) → (B, n, T, hd), contiguous.
pub(crate) fn split_heads(x: &Tensor, n: usize, hd: usize) -> candle_core::Result<Tensor> {
    let (b, t, _) = x.dims3()?;
    x.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous()
}

/// (B, n, T, hd) → (B, T, n·hd).
pub(crate) fn merge_heads(x: &Tensor) -> candle_core::Result<Tensor> {
    let (b, n, t, hd) = x.dims4()?;
    x.transpose(1, 2)?.reshape((b, t, n * hd))
}

/// (B, nkv, S, hd) → (B, nkv·rep, S, hd), each kv head shared by `rep` query heads.
pub(crate) fn repeat_kv(x: &Tensor, rep: usize) -> candle_core::Result<Tensor> {
    if rep == 1 {
        return x.contiguous();
    }
    let (b, nkv, s, hd) = x.dims4()?;
    x.unsqueeze(2)?
        .expand((b, nkv, rep, s, hd))?
        .reshape((b, nkv * rep, s, hd))
}

/// Heads (B, nh, T, hd) and keys/values (B, nkv, S, hd) → softmax(scale·Q·Kᵀ, causal) · V, (B, T, nh·hd).
pub(crate) fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    window: Option<usize>,
    softmax: fn(&Tensor, f64, Option<usize>) -> Result<Tensor>,
) -> Result<Tensor> {
    let rep = q.dim(1).ctx("q heads")? / k.dim(1).ctx("kv heads")?.max(1);
    let k = repeat_kv(k, rep).ctx("repeat k")?;
    let v = repeat_kv(v, rep).ctx("repeat v")?;
    let att = q.matmul(&k.t().ctx("k^T")?).ctx("q@k^T")?; // (B, nh, T, S)
    let att = softmax(&att, scale, window)?;
    merge_heads(&att.matmul(&v).ctx("att@v")?).ctx("merge heads")
}

/// The naive twin from candle ops.
pub mod naive {
    use candle_core::Tensor;

    use super::{attend, split_heads};
    use crate::{Context, Result};

    /// [`super::causal_attention`] from candle ops: heads split, RoPE, products and the causal softmax
    /// each its own graph node.
    ///
    /// # Errors
    /// On a shape error.
    pub fn causal_attention(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        (cos, sin): (&Tensor, &Tensor),
        (n_head, n_kv, head_dim): (usize, usize, usize),
        scale: f64,
        window: Option<usize>,
    ) -> Result<Tensor> {
        let q = split_heads(q, n_head, head_dim).ctx("split q")?;
        let k = split_heads(k, n_kv, head_dim).ctx("split k")?;
        let v = split_heads(v, n_kv, head_dim).ctx("split v")?;
        let q = crate::fused::naive::rope(&q, cos, sin, 0)?;
        let k = crate::fused::naive::rope(&k, cos, sin, 0)?;
        attend(
            &q,
            &k,
            &v,
            scale,
            window,
            crate::fused::naive::causal_softmax,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{max_abs_diff, randn};
    use candle_core::{Device, Var};

    fn tables(max: usize, hd: usize) -> (Tensor, Tensor) {
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for p in 0..max {
            for _ in 0..2 {
                for f in (0..hd / 2).scan(1f32, |f, _| {
                    *f *= 0.7;
                    Some(*f)
                }) {
                    let a = p as f32 * f;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        (
            Tensor::from_vec(cos, (max, hd), &Device::Cpu).unwrap(),
            Tensor::from_vec(sin, (max, hd), &Device::Cpu).unwrap(),
        )
    }

    /// Fused against naive (value and the gradient of q, k and v) and against central finite differences,
    /// for grouped-query heads, with and without a sliding window.
    #[test]
    fn attention_matches_naive_and_finite_differences() {
        let (b, t, hd) = (2, 7, 8);
        let (cos, sin) = tables(10, hd);
        for (nh, nkv, window) in [(4, 2, None), (2, 2, Some(3)), (3, 1, None)] {
            let q = Var::from_tensor(&randn(&[b, t, nh * hd], 1)).unwrap();
            let k = Var::from_tensor(&randn(&[b, t, nkv * hd], 2)).unwrap();
            let v = Var::from_tensor(&randn(&[b, t, nkv * hd], 3)).unwrap();
            let w = randn(&[b, t, nh * hd], 4);
            let run = |q: &Tensor, k: &Tensor, v: &Tensor, fused: bool| {
                let f = if fused {
                    causal_attention
                } else {
                    naive::causal_attention
                };
                let y = f(q, k, v, (&cos, &sin), (nh, nkv, hd), 0.6, window).unwrap();
                (y.clone(), (y * &w).unwrap().sum_all().unwrap())
            };
            let (yf, lf) = run(q.as_tensor(), k.as_tensor(), v.as_tensor(), true);
            let (yn, ln) = run(q.as_tensor(), k.as_tensor(), v.as_tensor(), false);
            assert!(max_abs_diff(&yf, &yn) < 1e-5, "{nh}/{nkv}: values");
            let (gf, gn) = (lf.backward().unwrap(), ln.backward().unwrap());
            for (name, x) in [("q", &q), ("k", &k), ("v", &v)] {
                let (a, n) = (gf.get(x).unwrap(), gn.get(x).unwrap());
                assert!(
                    max_abs_diff(a, n) < 1e-4,
                    "{nh}/{nkv} {name}: {}",
                    max_abs_diff(a, n)
                );
                // central differences at a few coordinates of this input
                let base: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
                let ga: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
                for idx in [0, base.len() / 3, base.len() / 2, base.len() - 1] {
                    let at = |d: f32| {
                        let mut moved = base.clone();
                        moved[idx] += d;
                        let m = Tensor::from_vec(moved, x.shape(), &Device::Cpu).unwrap();
                        let (qq, kk, vv) = match name {
                            "q" => (m, k.as_tensor().clone(), v.as_tensor().clone()),
                            "k" => (q.as_tensor().clone(), m, v.as_tensor().clone()),
                            _ => (q.as_tensor().clone(), k.as_tensor().clone(), m),
                        };
                        f64::from(run(&qq, &kk, &vv, true).1.to_scalar::<f32>().unwrap())
                    };
                    let fd = (at(1e-2) - at(-1e-2)) / 2e-2;
                    let err = (fd - f64::from(ga[idx])).abs();
                    assert!(
                        err < 2e-3 * (1.0 + fd.abs()),
                        "{nh}/{nkv} {name}[{idx}]: finite difference {fd} vs gradient {}",
                        ga[idx]
                    );
                }
            }
        }
    }

    /// By hand: one head of hd 2 at positions 0 and 1 (RoPE is the identity at position 0; the tables
    /// here rotate nothing at position 1 either), equal scores → query 1 averages both values; query 0 sees
    /// only its own value.
    #[test]
    fn attention_by_hand() {
        let ones = Tensor::ones((2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        let zeros = Tensor::zeros((2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        let q = Tensor::new(&[[[1f32, 0.0], [1.0, 0.0]]], &Device::Cpu).unwrap();
        let k = Tensor::new(&[[[1f32, 0.0], [1.0, 0.0]]], &Device::Cpu).unwrap();
        let v = Tensor::new(&[[[2f32, 4.0], [6.0, 8.0]]], &Device::Cpu).unwrap();
        let y: Vec<Vec<Vec<f32>>> =
            causal_attention(&q, &k, &v, (&ones, &zeros), (1, 1, 2), 1.0, None)
                .unwrap()
                .to_vec3()
                .unwrap();
        assert_eq!(y[0][0], vec![2.0, 4.0]);
        assert_eq!(y[0][1], vec![4.0, 6.0]);
        // a k that does not fit the heads is refused by name
        let bad = Tensor::zeros((1, 2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let e = causal_attention(&q, &bad, &v, (&ones, &zeros), (1, 1, 2), 1.0, None).unwrap_err();
        assert!(e.to_string().contains("fused-attention"), "{e}");
    }
}
