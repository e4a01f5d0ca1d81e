//! Random training windows over a token stream, nanoGPT style: the windows of step `s` depend only on
//! (seed, s), so a resumed run sees exactly the batches an uninterrupted one would.

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};

use crate::{Context, Result, TrainError};

pub struct TokenWindows {
    tokens: Vec<u32>,
    seq_len: usize,
}

impl TokenWindows {
    /// # Errors
    /// When there are fewer than `seq_len + 1` tokens.
    pub fn new(tokens: Vec<u32>, seq_len: usize) -> Result<Self> {
        if tokens.len() < seq_len + 1 {
            return Err(TrainError::Data(format!(
                "only {} tokens: need at least seq_len + 1 = {} to train",
                tokens.len(),
                seq_len + 1
            )));
        }
        Ok(Self { tokens, seq_len })
    }

    /// Inputs and targets (B, T) for one step.
    ///
    /// # Errors
    /// On a tensor failure.
    pub fn batch(
        &self,
        seed: u64,
        step: usize,
        batch: usize,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(
            seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let t = self.seq_len;
        let mut x = Vec::with_capacity(batch * t);
        let mut y = Vec::with_capacity(batch * t);
        for _ in 0..batch {
            let o = rng.random_range(0..self.tokens.len() - t);
            x.extend_from_slice(&self.tokens[o..o + t]);
            y.extend_from_slice(&self.tokens[o + 1..=o + t]);
        }
        Ok((
            Tensor::from_vec(x, (batch, t), device).ctx("batch x")?,
            Tensor::from_vec(y, (batch, t), device).ctx("batch y")?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_inputs_shifted_and_batches_repeat_per_step() {
        let w = TokenWindows::new((0..100).collect(), 8).unwrap();
        let (x, y) = w.batch(1, 5, 3, &Device::Cpu).unwrap();
        let (x, y): (Vec<Vec<u32>>, Vec<Vec<u32>>) = (x.to_vec2().unwrap(), y.to_vec2().unwrap());
        for (xr, yr) in x.iter().zip(&y) {
            assert!(xr.iter().zip(yr).all(|(a, b)| b == &(a + 1)));
        }
        let (x2, _) = w.batch(1, 5, 3, &Device::Cpu).unwrap();
        assert_eq!(x, x2.to_vec2::<u32>().unwrap());
        let (x3, _) = w.batch(1, 6, 3, &Device::Cpu).unwrap();
        assert_ne!(x, x3.to_vec2::<u32>().unwrap());
        assert!(TokenWindows::new(vec![1; 8], 8).is_err());
    }
}
