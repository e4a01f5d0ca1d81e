//! Next-token choice: greedy, or temperature + nucleus (top-p) sampling from a seeded generator, so the
//! same seed gives the same text.

use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    Greedy,
    TopP { temperature: f32, top_p: f32 },
}

impl Sampling {
    /// Temperature 0 means greedy, as in the OpenAI API.
    #[must_use]
    pub fn from_params(temperature: f32, top_p: f32) -> Self {
        if temperature <= 0.0 {
            Sampling::Greedy
        } else {
            Sampling::TopP {
                temperature,
                top_p: top_p.clamp(f32::MIN_POSITIVE, 1.0),
            }
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
        let Sampling::TopP { temperature, top_p } = self.sampling else {
            return argmax();
        };
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        self.probs.clear();
        let mut sum = 0f32;
        for (i, &l) in logits.iter().enumerate() {
            let p = ((l - max) / temperature).exp();
            sum += p;
            self.probs.push((p, i as u32));
        }
        self.probs.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
        // keep the smallest prefix whose mass reaches top_p
        let mut kept = 0;
        let mut mass = 0f32;
        for &(p, _) in &self.probs {
            kept += 1;
            mass += p / sum;
            if mass >= top_p {
                break;
            }
        }
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

    #[test]
    fn greedy_takes_argmax_and_zero_temperature_is_greedy() {
        let mut s = Sampler::new(Sampling::from_params(0.0, 1.0), 0);
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 2.9]), 1);
    }

    #[test]
    fn top_p_excludes_the_tail_and_seed_repeats() {
        // probabilities ∝ e^[4, 3, 0, 0]: 0.72, 0.26, 0.013, 0.013 → top_p 0.9 keeps tokens 0 and 1 only
        let logits = [4.0, 3.0, 0.0, 0.0];
        let mut s = Sampler::new(
            Sampling::TopP {
                temperature: 1.0,
                top_p: 0.9,
            },
            7,
        );
        let draws: Vec<u32> = (0..2000).map(|_| s.sample(&logits)).collect();
        assert!(draws.iter().all(|&t| t < 2));
        let ones = draws.iter().filter(|&&t| t == 1).count();
        // P(1 | kept) = e^3 / (e^4 + e^3) = 0.269; sd over 2000 draws ≈ 10
        assert!((480..600).contains(&ones), "{ones}");
        let mut a = Sampler::new(
            Sampling::TopP {
                temperature: 1.0,
                top_p: 1.0,
            },
            42,
        );
        let mut b = Sampler::new(
            Sampling::TopP {
                temperature: 1.0,
                top_p: 1.0,
            },
            42,
        );
        let (va, vb): (Vec<u32>, Vec<u32>) = (0..50)
            .map(|_| (a.sample(&logits), b.sample(&logits)))
            .unzip();
        assert_eq!(va, vb);
    }
}
