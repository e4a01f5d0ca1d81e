//! Next-token choice: greedy, or sampling with temperature, top-k, top-p (nucleus) and min-p from a seeded
//! generator, so the same seed gives the same text; plus the repetition penalty applied before either.
//! Filters run in the order llama.cpp and transformers use: penalty → temperature → top-k → top-p → min-p.

use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    Greedy,
    /// `top_k = 0`, `top_p = 1` and `min_p = 0` each switch that filter off.
    Sample {
        temperature: f32,
        top_k: usize,
        top_p: f32,
        min_p: f32,
    },
}

impl Sampling {
    /// Temperature 0 means greedy, as in the OpenAI API.
    #[must_use]
    pub fn from_params(temperature: f32, top_p: f32) -> Self {
        if temperature <= 0.0 {
            Sampling::Greedy
        } else {
            Sampling::Sample {
                temperature,
                top_k: 0,
                top_p: top_p.clamp(f32::MIN_POSITIVE, 1.0),
                min_p: 0.0,
            }
        }
    }

    /// Keeps only the `k` most likely tokens (0 = all).
    #[must_use]
    pub fn with_top_k(self, k: usize) -> Self {
        match self {
            Sampling::Sample {
                temperature,
                top_p,
                min_p,
                ..
            } => Sampling::Sample {
                temperature,
                top_k: k,
                top_p,
                min_p,
            },
            greedy @ Sampling::Greedy => greedy,
        }
    }

    /// Drops tokens less likely than `min_p` times the most likely one (0 = off).
    #[must_use]
    pub fn with_min_p(self, min_p: f32) -> Self {
        match self {
            Sampling::Sample {
                temperature,
                top_k,
                top_p,
                ..
            } => Sampling::Sample {
                temperature,
                top_k,
                top_p,
                min_p: min_p.clamp(0.0, 1.0),
            },
            greedy @ Sampling::Greedy => greedy,
        }
    }
}

/// The CTRL/transformers repetition penalty: each token already in the context has its logit divided by
/// `penalty` when positive, multiplied when negative, so it becomes less likely either way.
pub fn apply_repetition_penalty<'a>(
    logits: &mut [f32],
    context: impl IntoIterator<Item = &'a u32>,
    penalty: f32,
) {
    if (penalty - 1.0).abs() < f32::EPSILON {
        return;
    }
    let mut seen = vec![false; logits.len()];
    for &id in context {
        if let Some(s) = seen.get_mut(id as usize) {
            *s = true;
        }
    }
    for (l, s) in logits.iter_mut().zip(seen) {
        if s {
            *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
        }
    }
}

pub struct Sampler {
    sampling: Sampling,
    rng: rand::rngs::StdRng,
    probs: Vec<(f32, u32)>,
}

impl Sampler {
    #[must_use]
    pub fn new(sampling: Sampling, seed: u64) -> Self {
        Self {
            sampling,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            probs: Vec::new(),
        }
    }

    /// Picks a token from `logits` (one per vocabulary entry).
    ///
    /// # Panics
    /// If `logits` is empty (a model always has a vocabulary).
    #[allow(clippy::cast_possible_truncation)] // vocabulary ids fit in u32 (tokenizers uses u32 ids)
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        assert!(!logits.is_empty(), "empty logits");
        let argmax = || {
            let mut best = 0;
            for (i, &l) in logits.iter().enumerate() {
                if l > logits[best] {
                    best = i;
                }
            }
            best as u32
        };
        let Sampling::Sample {
            temperature,
            top_k,
            top_p,
            min_p,
        } = self.sampling
        else {
            return argmax();
        };
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if top_k == 0 && top_p >= 1.0 && min_p <= 0.0 {
            // no filter: draw from the whole distribution in id order (no sort of the vocabulary)
            let total: f32 = logits
                .iter()
                .map(|&l| ((l - max) / temperature).exp())
                .sum();
            let mut r = self.rng.random::<f32>() * total;
            let mut last = 0;
            for (i, &l) in logits.iter().enumerate() {
                let p = ((l - max) / temperature).exp();
                if p > 0.0 {
                    last = i;
                    r -= p;
                    if r <= 0.0 {
                        return i as u32;
                    }
                }
            }
            return last as u32;
        }
        self.probs.clear();
        let mut all = 0f32;
        for (i, &l) in logits.iter().enumerate() {
            let p = ((l - max) / temperature).exp();
            all += p;
            self.probs.push((p, i as u32));
        }
        // Only the most likely tokens need sorting: the top k, or enough of the head that top-p's or min-p's
        // cut falls inside it (a few hundred of a vocabulary of tens of thousands, as a rule).
        let n = self.probs.len();
        let desc = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0);
        // min-p's floor: probabilities are relative to the most likely token's, exp(0) = 1
        let floor = min_p;
        let mut m = if top_k > 0 { top_k.min(n) } else { n.min(256) };
        let kept = loop {
            if m < n {
                self.probs.select_nth_unstable_by(m - 1, desc);
            }
            self.probs[..m].sort_unstable_by(desc);
            // the mass top-p is measured against: the top k's, or everything
            let k_mass: f32 = if top_k > 0 {
                self.probs[..m].iter().map(|p| p.0).sum()
            } else {
                all
            };
            // top-p: the smallest prefix whose mass (renormalised after top-k) reaches top_p
            let mut mass = 0f32;
            let p_cut = self.probs[..m].iter().position(|&(p, _)| {
                mass += p / k_mass;
                mass >= top_p
            });
            if top_k > 0 || m == n || p_cut.is_some() || self.probs[m - 1].0 < floor {
                break p_cut.map_or(m, |i| i + 1);
            }
            m = (m * 8).min(n);
        };
        // min-p: probs are sorted, so a prefix
        let kept = self.probs[..kept]
            .iter()
            .take_while(|p| p.0 >= floor)
            .count()
            .max(1);
        let total: f32 = self.probs[..kept].iter().map(|p| p.0).sum();
        let mut r = self.rng.random::<f32>() * total;
        for &(p, id) in &self.probs[..kept] {
            r -= p;
            if r <= 0.0 {
                return id;
            }
        }
        self.probs[kept - 1].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(s: Sampling, logits: &[f32], n: usize) -> Vec<usize> {
        let mut sampler = Sampler::new(s, 7);
        let mut c = vec![0; logits.len()];
        for _ in 0..n {
            c[sampler.sample(logits) as usize] += 1;
        }
        c
    }

    #[test]
    fn greedy_takes_argmax_and_zero_temperature_is_greedy() {
        let mut s = Sampler::new(Sampling::from_params(0.0, 1.0), 0);
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 2.9]), 1);
    }

    #[test]
    fn top_p_excludes_the_tail_and_seed_repeats() {
        // probabilities ∝ e^[4, 3, 0, 0]: 0.72, 0.26, 0.013, 0.013 → top_p 0.9 keeps tokens 0 and 1 only
        let logits = [4.0, 3.0, 0.0, 0.0];
        let c = counts(Sampling::from_params(1.0, 0.9), &logits, 2000);
        assert_eq!(c[2] + c[3], 0);
        // P(1 | kept) = e^3 / (e^4 + e^3) = 0.269; sd over 2000 draws ≈ 10
        assert!((480..600).contains(&c[1]), "{c:?}");
        let mut a = Sampler::new(Sampling::from_params(1.0, 1.0), 42);
        let mut b = Sampler::new(Sampling::from_params(1.0, 1.0), 42);
        let (va, vb): (Vec<u32>, Vec<u32>) = (0..50)
            .map(|_| (a.sample(&logits), b.sample(&logits)))
            .unzip();
        assert_eq!(va, vb);
    }

    #[test]
    fn top_k_and_min_p_by_hand() {
        // equal logits for 0..3, lower for 4: top_k 2 keeps ids 0 and 1 (stable order of equal probabilities
        // is not promised, so check only that exactly two ids are ever drawn)
        let c = counts(
            Sampling::from_params(1.0, 1.0).with_top_k(2),
            &[1.0, 1.0, 1.0, 1.0, 0.0],
            500,
        );
        assert_eq!(c.iter().filter(|&&n| n > 0).count(), 2, "{c:?}");
        // p ∝ e^[2, 1, 0]: 0.665, 0.245, 0.090; min_p 0.2 keeps p >= 0.133: ids 0 and 1
        let c = counts(
            Sampling::from_params(1.0, 1.0).with_min_p(0.2),
            &[2.0, 1.0, 0.0],
            2000,
        );
        assert_eq!(c[2], 0, "{c:?}");
        assert!(c[1] > 0);
        // temperature 0.5 sharpens: p ∝ e^[4, 2, 0] → 0.867 for id 0
        let c = counts(Sampling::from_params(0.5, 1.0), &[2.0, 1.0, 0.0], 4000);
        assert!((3350..3580).contains(&c[0]), "{c:?}"); // 4000 * 0.867 = 3468, sd 21
    }

    #[test]
    fn filters_that_keep_more_than_the_first_sorted_head_cut_where_a_full_sort_does() {
        // 20,000 tokens, logits falling slowly with the id, so the kept set is thousands of tokens: the
        // sampler must sort past its first head of 256. The boundary c by hand, with p_i ∝ e^(−a·i),
        // a = 2.5e-4: min-p keeps i ≤ ln(1/min_p)/a; top-p keeps the smallest prefix of mass top_p, i < c
        // with (1 − e^(−ac)) = top_p·(1 − e^(−a·N)), N the tokens top-k left. 200 draws reach above 0.85·c
        // unless the cut is wrong (P(all below) < 0.85^200 = 8e-15).
        let n = 20_000;
        #[allow(clippy::cast_precision_loss)]
        let logits: Vec<f32> = (0..n).map(|i| -2.5e-4 * i as f32).collect();
        let drawn_max = |s: Sampling| {
            let mut sampler = Sampler::new(s, 3);
            (0..200).map(|_| sampler.sample(&logits)).max().unwrap()
        };
        // min-p 0.5: c = ln 2 / a = 2772.6
        let m = drawn_max(Sampling::from_params(1.0, 1.0).with_min_p(0.5));
        assert!((2357..=2772).contains(&m), "min-p: {m}");
        // top-p 0.3: c = −ln(1 − 0.3·(1 − e^(−5)))/a = 1415.2
        let m = drawn_max(Sampling::from_params(1.0, 0.3));
        assert!((1203..=1415).contains(&m), "top-p: {m}");
        // top-k 1000
        let m = drawn_max(Sampling::from_params(1.0, 1.0).with_top_k(1000));
        assert!((850..1000).contains(&m), "top-k: {m}");
        // top-p 0.3 of the top 5000's mass: c = −ln(1 − 0.3·(1 − e^(−1.25)))/a = 963.4
        let m = drawn_max(Sampling::from_params(1.0, 0.3).with_top_k(5000));
        assert!((819..=963).contains(&m), "top-k + top-p: {m}");
    }

    #[test]
    #[allow(clippy::float_cmp)] // halving and doubling are exact in binary floating point
    fn repetition_penalty_by_hand() {
        let mut l = [2.0, -2.0, 1.0];
        apply_repetition_penalty(&mut l, &[0, 1, 1], 2.0);
        assert_eq!(l, [1.0, -4.0, 1.0]);
        let mut same = [2.0, -2.0];
        apply_repetition_penalty(&mut same, &[0, 1, 99], 1.0);
        assert_eq!(same, [2.0, -2.0]);
    }
}
