//! AdamW with decoupled weight decay (Loshchilov & Hutter). Written here rather than taken from candle-nn
//! because a resumable run must checkpoint the moments, which candle's optimizer keeps private.
//! Weight decay applies to matrices only, not to norm gains (as nanoGPT does).

use std::collections::HashMap;

use candle_core::{backprop::GradStore, Tensor, Var};

use crate::{Context, Result};

/// Gradients aligned with an optimizer's parameters; micro-batches add theirs up.
pub struct Grads(pub Vec<Option<Tensor>>);

impl Grads {
    /// Adds `other` (same parameters, same order) into `self`.
    ///
    /// # Errors
    /// On a shape mismatch.
    pub fn add(&mut self, other: Grads) -> Result<()> {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = match (a.take(), b) {
                (Some(x), Some(y)) => Some((x + y).ctx("grad accumulate")?),
                (x, y) => x.or(y),
            };
        }
        Ok(())
    }
}

pub struct AdamW {
    /// (name, parameter, first moment, second moment), sorted by name.
    params: Vec<(String, Var, Tensor, Tensor)>,
    pub step: usize,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamW {
    /// # Errors
    /// On a tensor failure.
    pub fn new(
        vars: &HashMap<String, Var>,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
    ) -> Result<Self> {
        let mut names: Vec<&String> = vars.keys().collect();
        names.sort();
        let mut params = Vec::with_capacity(names.len());
        for n in names {
            let v = vars[n].clone();
            let z = v.as_tensor().zeros_like().ctx("adam zeros")?;
            params.push((n.clone(), v, z.clone(), z));
        }
        Ok(Self {
            params,
            step: 0,
            beta1,
            beta2,
            eps: 1e-8,
            weight_decay,
        })
    }

    /// The gradients of this optimizer's parameters, in its order.
    #[must_use]
    pub fn grads_of(&self, store: &GradStore) -> Grads {
        Grads(
            self.params
                .iter()
                .map(|(_, v, _, _)| store.get(v.as_tensor()).cloned())
                .collect(),
        )
    }

    /// Sums the gradients over the ranks of `comm` (data-parallel training), in buckets of at most 4M values
    /// so that the copy in flight stays small beside the model. A parameter without a gradient on a rank
    /// counts as zeros there. One rank returns `grads` untouched.
    ///
    /// # Errors
    /// On a tensor or transport failure.
    pub fn all_reduce(&self, grads: Grads, comm: &dyn crate::dist::Collective) -> Result<Grads> {
        const BUCKET: usize = 1 << 22;
        if comm.size() == 1 {
            return Ok(grads);
        }
        let mut out: Vec<Option<Tensor>> = Vec::with_capacity(grads.0.len());
        let mut flat: Vec<f32> = Vec::new();
        let mut pending: Vec<&Var> = Vec::new();
        let flush =
            |flat: &mut Vec<f32>, pending: &mut Vec<&Var>, out: &mut Vec<Option<Tensor>>| {
                comm.sum_f32(flat)?;
                let mut at = 0;
                for v in pending.drain(..) {
                    let n = v.as_tensor().elem_count();
                    let t = Tensor::from_slice(&flat[at..at + n], v.as_tensor().dims(), v.device())
                        .ctx("all-reduced gradient")?;
                    out.push(Some(t));
                    at += n;
                }
                flat.clear();
                Ok::<(), crate::TrainError>(())
            };
        for ((_, var, _, _), g) in self.params.iter().zip(grads.0) {
            match g {
                Some(g) => strata_model::fused::with_f32(&g, |x| flat.extend_from_slice(x))
                    .ctx("gradient")?,
                None => flat.resize(flat.len() + var.as_tensor().elem_count(), 0.0),
            }
            pending.push(var);
            if flat.len() >= BUCKET {
                flush(&mut flat, &mut pending, &mut out)?;
            }
        }
        if !pending.is_empty() {
            flush(&mut flat, &mut pending, &mut out)?;
        }
        Ok(Grads(out))
    }

    /// Global L2 norm of the gradients.
    ///
    /// # Errors
    /// On a tensor failure.
    pub fn grad_norm(&self, grads: &Grads) -> Result<f64> {
        let mut sum = 0f64;
        for g in grads.0.iter().flatten() {
            sum += strata_model::fused::with_f32(g, |x| {
                x.iter().map(|&a| f64::from(a) * f64::from(a)).sum::<f64>()
            })
            .ctx("gnorm")?;
        }
        Ok(sum.sqrt())
    }

    /// The update after step `step` whose loss was `value`: a loss that is not finite ends the run
    /// ([`crate::TrainError::Diverged`]); the gradients' global norm is clipped to `cfg.grad_clip` and the
    /// schedule's learning rate taken. The norm (before clipping) and the rate.
    ///
    /// # Errors
    /// A diverged loss, a tensor failure.
    pub fn clipped_step(
        &mut self,
        grads: &Grads,
        step: usize,
        value: f32,
        cfg: &crate::TrainConfig,
    ) -> Result<(f64, f64)> {
        if !value.is_finite() {
            return Err(crate::TrainError::Diverged { step, value });
        }
        let norm = self.grad_norm(grads)?;
        let scale = if norm > cfg.grad_clip {
            cfg.grad_clip / norm
        } else {
            1.0
        };
        let lr = crate::get_lr(step, cfg);
        self.step(grads, lr, scale)?;
        Ok((norm, lr))
    }

    /// One update with learning rate `lr`, gradients scaled by `grad_scale` (for clipping): one pass over
    /// each parameter's values, gradient and moments (the naive twin below takes some 17 tensor ops, each
    /// a pass and an allocation).
    ///
    /// # Errors
    /// On a tensor failure.
    pub fn step(&mut self, grads: &Grads, lr: f64, grad_scale: f64) -> Result<()> {
        use rayon::prelude::*;
        use strata_model::fused::with_f32;
        self.step += 1;
        #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
        let t = self.step as i32;
        #[allow(clippy::cast_possible_truncation)]
        let (b1, b2, eps, lr32, scale) = (
            self.beta1 as f32,
            self.beta2 as f32,
            self.eps as f32,
            lr as f32,
            grad_scale as f32,
        );
        #[allow(clippy::cast_possible_truncation)]
        let (bc1, bc2) = (
            (1.0 - self.beta1.powi(t)) as f32,
            (1.0 - self.beta2.powi(t)) as f32,
        );
        let cpu = |x: &Tensor| x.device().is_cpu() && x.dtype() == candle_core::DType::F32;
        for ((_, var, m, v), g) in self.params.iter_mut().zip(&grads.0) {
            let Some(g) = g else {
                continue;
            };
            let theta = var.as_tensor();
            if !(cpu(theta) && cpu(g) && cpu(m) && cpu(v)) {
                return Err(crate::TrainError::Config(
                    "AdamW runs on f32 CPU tensors".into(),
                ));
            }
            #[allow(clippy::cast_possible_truncation)]
            let decay = if theta.rank() >= 2 {
                (1.0 - lr * self.weight_decay) as f32
            } else {
                1.0
            };
            let n = theta.elem_count();
            let (mut nt, mut nm, mut nv) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
            with_f32(g, |gs| {
                with_f32(m, |ms| {
                    with_f32(v, |vs| {
                        with_f32(theta, |ws| {
                            const CHUNK: usize = 16_384;
                            nt.par_chunks_mut(CHUNK)
                                .zip(nm.par_chunks_mut(CHUNK))
                                .zip(nv.par_chunks_mut(CHUNK))
                                .enumerate()
                                .for_each(|(c, ((nt, nm), nv))| {
                                    let o = c * CHUNK;
                                    for i in 0..nt.len() {
                                        let gi = gs[o + i] * scale;
                                        let mi = b1 * ms[o + i] + (1.0 - b1) * gi;
                                        let vi = b2 * vs[o + i] + (1.0 - b2) * gi * gi;
                                        let upd = (mi / bc1) / ((vi / bc2).sqrt() + eps);
                                        nm[i] = mi;
                                        nv[i] = vi;
                                        nt[i] = ws[o + i] * decay - lr32 * upd;
                                    }
                                });
                        })
                    })
                })
            })
            .ctx("adamw")?
            .ctx("adamw")?
            .ctx("adamw")?
            .ctx("adamw")?;
            let shape = theta.shape().clone();
            let dev = theta.device().clone();
            *m = Tensor::from_vec(nm, shape.clone(), &dev).ctx("adam m")?;
            *v = Tensor::from_vec(nv, shape.clone(), &dev).ctx("adam v")?;
            var.set(&Tensor::from_vec(nt, shape, &dev).ctx("adam theta")?)
                .ctx("set")?;
        }
        Ok(())
    }

    /// The naive twin of [`AdamW::step`], from candle tensor ops.
    ///
    /// # Errors
    /// On a tensor failure.
    pub fn step_naive(&mut self, grads: &Grads, lr: f64, grad_scale: f64) -> Result<()> {
        self.step += 1;
        #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
        let t = self.step as i32;
        let (b1, b2) = (self.beta1, self.beta2);
        let bc1 = 1.0 - b1.powi(t);
        let bc2 = 1.0 - b2.powi(t);
        for ((_, var, m, v), g) in self.params.iter_mut().zip(&grads.0) {
            let Some(g) = g else {
                continue;
            };
            let g = (g * grad_scale).ctx("clip")?;
            *m = ((&*m * b1).ctx("m")? + (&g * (1.0 - b1)).ctx("m g")?).ctx("m add")?;
            *v = ((&*v * b2).ctx("v")? + (g.sqr().ctx("g2")? * (1.0 - b2)).ctx("v g")?)
                .ctx("v add")?;
            let m_hat = (&*m / bc1).ctx("m hat")?;
            let v_hat = (&*v / bc2).ctx("v hat")?;
            let update =
                (m_hat / (v_hat.sqrt().ctx("sqrt")? + self.eps).ctx("eps")?).ctx("ratio")?;
            let theta = var.as_tensor();
            let decayed = if theta.rank() >= 2 {
                (theta * (1.0 - lr * self.weight_decay)).ctx("decay")?
            } else {
                theta.clone()
            };
            var.set(&(decayed - (update * lr).ctx("lr")?).ctx("apply")?)
                .ctx("set")?;
        }
        Ok(())
    }

    /// The moments, named `adam.m.<param>` / `adam.v.<param>`, for a checkpoint.
    #[must_use]
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (n, _, m, v) in &self.params {
            out.insert(format!("adam.m.{n}"), m.clone());
            out.insert(format!("adam.v.{n}"), v.clone());
        }
        out
    }

    /// Restores the moments saved by [`AdamW::state`].
    ///
    /// # Errors
    /// When a moment is missing or has the wrong shape.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, step: usize) -> Result<()> {
        for (n, var, m, v) in &mut self.params {
            for (prefix, slot) in [("adam.m.", &mut *m), ("adam.v.", &mut *v)] {
                let key = format!("{prefix}{n}");
                let t = state
                    .get(&key)
                    .ok_or_else(|| crate::TrainError::Checkpoint {
                        path: key.clone().into(),
                        reason: "missing optimizer state".into(),
                    })?;
                if t.dims() != var.as_tensor().dims() {
                    return Err(crate::TrainError::Checkpoint {
                        path: key.into(),
                        reason: format!("shape {:?} != {:?}", t.dims(), var.as_tensor().dims()),
                    });
                }
                *slot = t.clone();
            }
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn fused_step_matches_the_naive_twin_over_several_steps() {
        let make = || {
            let w = Var::from_tensor(
                &(Tensor::arange(0f32, 40_000.0, &Device::Cpu).unwrap() / 10_000.0)
                    .unwrap()
                    .sin()
                    .unwrap()
                    .reshape((200, 200))
                    .unwrap(),
            )
            .unwrap();
            let b = Var::new(&[0.5f32, -0.25, 0.125], &Device::Cpu).unwrap();
            HashMap::from([("w".to_string(), w), ("b".to_string(), b)])
        };
        let (va, vb) = (make(), make());
        let mut a = AdamW::new(&va, 0.9, 0.95, 0.1).unwrap();
        let mut b = AdamW::new(&vb, 0.9, 0.95, 0.1).unwrap();
        for k in 0..4 {
            let grads = |vars: &HashMap<String, Var>, opt: &AdamW| {
                // loss = sum(w^3) * (k + 1) + sum(b * [1, -2, 3]): gradients that change every step
                let w = vars["w"].as_tensor();
                let l = ((w.sqr().unwrap() * w).unwrap().sum_all().unwrap() * f64::from(k + 1))
                    .unwrap()
                    + vars["b"]
                        .as_tensor()
                        .broadcast_mul(&Tensor::new(&[1f32, -2.0, 3.0], &Device::Cpu).unwrap())
                        .unwrap()
                        .sum_all()
                        .unwrap();
                opt.grads_of(&l.unwrap().backward().unwrap())
            };
            let (ga, gb) = (grads(&va, &a), grads(&vb, &b));
            a.step(&ga, 1e-2, 0.5).unwrap();
            b.step_naive(&gb, 1e-2, 0.5).unwrap();
        }
        for n in ["w", "b"] {
            let x: Vec<f32> = va[n].as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let y: Vec<f32> = vb[n].as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let err = x
                .iter()
                .zip(&y)
                .map(|(p, q)| (p - q).abs())
                .fold(0f32, f32::max);
            assert!(err < 1e-6, "{n}: {err}");
        }
        let (sa, sb) = (a.state(), b.state());
        for (k, t) in &sa {
            let d = (t - &sb[k])
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let size = t
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d <= 1e-6 * size, "{k}: {d} of {size}");
        }
    }

    #[test]
    fn first_step_moves_each_weight_by_lr_against_the_gradient_sign() {
        // At t = 1, m_hat = g and v_hat = g^2, so the update is lr * g/|g| (plus decay on matrices).
        let w = Var::new(&[[1.0f32, -2.0]], &Device::Cpu).unwrap();
        let b = Var::new(&[0.5f32], &Device::Cpu).unwrap();
        let vars = HashMap::from([("w".to_string(), w.clone()), ("b".to_string(), b.clone())]);
        let mut opt = AdamW::new(&vars, 0.9, 0.95, 0.1).unwrap();
        // loss = sum(w * [3, -4]) + 2 b  => dw = [3, -4], db = 2
        let loss = (w
            .as_tensor()
            .broadcast_mul(&Tensor::new(&[3.0f32, -4.0], &Device::Cpu).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
            + (b.as_tensor() * 2.0).unwrap().sum_all().unwrap())
        .unwrap();
        let grads = opt.grads_of(&loss.backward().unwrap());
        assert!((opt.grad_norm(&grads).unwrap() - (9.0f64 + 16.0 + 4.0).sqrt()).abs() < 1e-5);
        opt.step(&grads, 0.01, 1.0).unwrap();
        let w1: Vec<Vec<f32>> = w.as_tensor().to_vec2().unwrap();
        // w: 1*(1-0.001) - 0.01 = 0.989; -2*(1-0.001) + 0.01 = -1.988
        assert!(
            (w1[0][0] - 0.989).abs() < 1e-5 && (w1[0][1] + 1.988).abs() < 1e-5,
            "{w1:?}"
        );
        let b1: Vec<f32> = b.as_tensor().to_vec1().unwrap();
        assert!((b1[0] - 0.49).abs() < 1e-5, "{b1:?}"); // no decay on vectors
    }
}
