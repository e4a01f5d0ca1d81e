//! The linear-probe baseline of image tasks: multinomial logistic regression on a frozen encoder's pooled
//! features (standardised with the training set's mean and deviation), fitted by full-batch gradient descent
//! on the mean cross-entropy plus an L2 penalty on the weights. Convex, so the fit does not depend on a seed.

/// A fitted probe.
pub struct Probe {
    mean: Vec<f64>,
    std: Vec<f64>,
    /// `classes × dim`, row-major.
    w: Vec<f64>,
    b: Vec<f64>,
    classes: usize,
}

fn softmax_in_place(z: &mut [f64]) {
    let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut s = 0.0;
    for v in z.iter_mut() {
        *v = (*v - m).exp();
        s += *v;
    }
    for v in z.iter_mut() {
        *v /= s;
    }
}

impl Probe {
    /// Fits `classes` classes to rows `x` (each of one width) labelled `y`: `iters` steps of gradient descent
    /// (step 1.0 on standardised features) with penalty `l2` × ‖W‖².
    ///
    /// # Panics
    /// When `x` and `y` differ in length or a label is not below `classes`.
    #[must_use]
    #[allow(clippy::cast_precision_loss)]
    pub fn fit(x: &[Vec<f32>], y: &[usize], classes: usize, l2: f64, iters: usize) -> Self {
        assert_eq!(x.len(), y.len(), "one label per row");
        assert!(
            y.iter().all(|&c| c < classes),
            "labels below the class count"
        );
        let n = x.len().max(1);
        let dim = x.first().map_or(0, Vec::len);
        let mut mean = vec![0f64; dim];
        for row in x {
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += f64::from(v) / n as f64;
            }
        }
        let mut std = vec![0f64; dim];
        for row in x {
            for ((s, &v), m) in std.iter_mut().zip(row).zip(&mean) {
                *s += (f64::from(v) - m).powi(2) / n as f64;
            }
        }
        for s in &mut std {
            *s = s.sqrt().max(1e-6);
        }
        let mut p = Self {
            mean,
            std,
            w: vec![0f64; classes * dim],
            b: vec![0f64; classes],
            classes,
        };
        let z: Vec<Vec<f64>> = x.iter().map(|r| p.standardise(r)).collect();
        let lr = 1.0;
        for _ in 0..iters {
            let mut gw = vec![0f64; classes * dim];
            let mut gb = vec![0f64; classes];
            for (row, &label) in z.iter().zip(y) {
                let mut q = p.raw_logits(row);
                softmax_in_place(&mut q);
                q[label] -= 1.0;
                for (c, &e) in q.iter().enumerate() {
                    gb[c] += e / n as f64;
                    let g = &mut gw[c * dim..(c + 1) * dim];
                    for (gj, &xj) in g.iter_mut().zip(row) {
                        *gj += e * xj / n as f64;
                    }
                }
            }
            for (w, g) in p.w.iter_mut().zip(&gw) {
                *w -= lr * (g + 2.0 * l2 * *w);
            }
            for (b, g) in p.b.iter_mut().zip(&gb) {
                *b -= lr * g;
            }
        }
        p
    }

    fn standardise(&self, row: &[f32]) -> Vec<f64> {
        row.iter()
            .zip(self.mean.iter().zip(&self.std))
            .map(|(&v, (m, s))| (f64::from(v) - m) / s)
            .collect()
    }

    fn raw_logits(&self, z: &[f64]) -> Vec<f64> {
        let dim = z.len();
        (0..self.classes)
            .map(|c| {
                self.b[c]
                    + self.w[c * dim..(c + 1) * dim]
                        .iter()
                        .zip(z)
                        .map(|(w, x)| w * x)
                        .sum::<f64>()
            })
            .collect()
    }

    /// The class scores (logits) of one row.
    #[must_use]
    pub fn logits(&self, row: &[f32]) -> Vec<f64> {
        self.raw_logits(&self.standardise(row))
    }

    /// The best-scoring class among `allowed` (all classes when empty).
    #[must_use]
    pub fn predict(&self, row: &[f32], allowed: &[usize]) -> usize {
        let l = self.logits(row);
        let all: Vec<usize> = (0..self.classes).collect();
        let set = if allowed.is_empty() {
            &all[..]
        } else {
            allowed
        };
        set.iter()
            .copied()
            .max_by(|&a, &b| l[a].total_cmp(&l[b]))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two separable clusters are told apart; a feature that carries nothing leaves the prior: with rows
    /// identical, the fit is the class frequencies (softmax of the bias = 3/4 and 1/4), by hand.
    #[test]
    fn separable_clusters_and_the_prior_by_hand() {
        let x: Vec<Vec<f32>> = (0..40)
            .map(|i| {
                let c = if i % 2 == 0 { 2.0 } else { -2.0 };
                vec![c + (i as f32 * 0.37).sin() * 0.5, (i as f32 * 1.3).cos()]
            })
            .collect();
        let y: Vec<usize> = (0..40).map(|i| i % 2).collect();
        let p = Probe::fit(&x, &y, 2, 1e-3, 200);
        let right = x
            .iter()
            .zip(&y)
            .filter(|(r, &c)| p.predict(r, &[]) == c)
            .count();
        assert_eq!(right, 40);

        let x = vec![vec![1.0f32, 1.0]; 8];
        let y = vec![0, 0, 0, 1, 0, 0, 0, 1];
        let p = Probe::fit(&x, &y, 2, 0.0, 2000);
        let mut q = p.logits(&x[0]);
        softmax_in_place(&mut q);
        assert!((q[0] - 0.75).abs() < 1e-6, "{q:?}");
        assert_eq!(p.predict(&x[0], &[]), 0);
        assert_eq!(p.predict(&x[0], &[1]), 1, "only the allowed classes");
    }
}
