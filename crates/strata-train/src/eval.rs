//! Held-out perplexity: mean next-token negative log-likelihood over non-overlapping windows, exponentiated.

use candle_core::Tensor;
use strata_model::Llama;

use crate::{Context, Result, TrainError};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Perplexity {
    /// Mean negative log-likelihood per predicted token (nats).
    pub nll: f64,
    pub tokens: usize,
    pub ppl: f64,
}

/// The window of held-out evaluation for a model: its context, at most 1,024 tokens (a model with an
/// 8k context would otherwise score a few windows of quadratic attention where many short ones measure
/// the same).
#[must_use]
pub fn eval_window(cfg: &strata_model::LlamaConfig) -> usize {
    cfg.max_position_embeddings.min(1024)
}

/// Evaluates `model` on `tokens` in windows of `seq_len` (at most `max_windows`, evenly spread).
///
/// # Errors
/// When there are fewer than two tokens, or on a tensor failure.
pub fn perplexity(
    model: &Llama,
    tokens: &[u32],
    seq_len: usize,
    max_windows: Option<usize>,
) -> Result<Perplexity> {
    let seq_len = seq_len.min(model.config().max_position_embeddings);
    // no graph: a training model's variables would otherwise keep every activation of the forward alive
    let model = &model.detached();
    let starts = window_starts(tokens.len(), seq_len, max_windows)?;
    let (mut total, mut count) = (0f64, 0usize);
    // Full windows go through in batches of up to 4,096 tokens (logits are batch × window × vocabulary);
    // the last, shorter window alone.
    let (full, partial): (Vec<usize>, Vec<usize>) = starts
        .into_iter()
        .partition(|&s| s + seq_len < tokens.len());
    for chunk in full.chunks((4096 / seq_len).clamp(1, 8)) {
        let x: Vec<u32> = chunk
            .iter()
            .flat_map(|&s| tokens[s..s + seq_len].iter().copied())
            .collect();
        let y: Vec<u32> = chunk
            .iter()
            .flat_map(|&s| tokens[s + 1..=s + seq_len].iter().copied())
            .collect();
        let (sum, n) = window_loss(model, x, y, (chunk.len(), seq_len))?;
        total += sum;
        count += n;
    }
    for s in partial {
        let len = tokens.len() - 1 - s;
        let (sum, n) = window_loss(
            model,
            tokens[s..s + len].to_vec(),
            tokens[s + 1..=s + len].to_vec(),
            (1, len),
        )?;
        total += sum;
        count += n;
    }
    summary(total, count)
}

/// The starts of non-overlapping windows of `seq_len` over `n` tokens, at most `max_windows` of them,
/// evenly spread.
///
/// # Errors
/// When there are fewer than two tokens.
pub fn window_starts(n: usize, seq_len: usize, max_windows: Option<usize>) -> Result<Vec<usize>> {
    if n < 2 {
        return Err(TrainError::Data(
            "need at least 2 tokens to evaluate perplexity".into(),
        ));
    }
    let starts: Vec<usize> = (0..n - 1).step_by(seq_len.max(1)).collect();
    Ok(match max_windows {
        Some(k) if k < starts.len() => (0..k).map(|i| starts[i * starts.len() / k]).collect(),
        _ => starts,
    })
}

/// Perplexity from the summed negative log-likelihood of `count` counted positions.
///
/// # Errors
/// When no position counted.
pub fn summary(total: f64, count: usize) -> Result<Perplexity> {
    if count == 0 {
        return Err(TrainError::Data(
            "no position counts toward the loss (SFT data without assistant tokens?)".into(),
        ));
    }
    #[allow(clippy::cast_precision_loss)]
    let nll = total / count as f64;
    Ok(Perplexity {
        nll,
        tokens: count,
        ppl: nll.exp(),
    })
}

/// Summed loss and number of counted targets of one batch of windows. Ids from SFT shards carry the
/// no-loss flag: inputs lose it, flagged targets do not count.
fn window_loss(
    model: &Llama,
    x: Vec<u32>,
    y: Vec<u32>,
    shape: (usize, usize),
) -> Result<(f64, usize)> {
    let device = model.device();
    let x: Vec<u32> = x
        .into_iter()
        .map(|i| strata_tokenize::split_flag(i).0)
        .collect();
    let y: Vec<u32> = y
        .into_iter()
        .map(|i| match strata_tokenize::split_flag(i) {
            (i, true) => i,
            (_, false) => strata_model::fused::IGNORE,
        })
        .collect();
    let x = Tensor::from_vec(x, shape, device).ctx("eval x")?;
    let y = Tensor::from_vec(y, shape, device).ctx("eval y")?;
    let (sum, n) = model.loss_sum(&x, &y)?;
    Ok((f64::from(sum.to_scalar::<f32>().ctx("eval loss")?), n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::{VarBuilder, VarMap};

    #[test]
    fn uniform_model_has_perplexity_equal_to_vocab() {
        // A model whose weights are all zero outputs equal logits: every token has p = 1/V, so ppl = V
        // regardless of the text, and every token but the first is counted once.
        let cfg = strata_model::ModelSpec {
            hidden_size: 8,
            intermediate_size: 16,
            layers: 1,
            heads: 2,
            kv_heads: 1,
            context: 4,
            rope_theta: 1e4,
            tie_word_embeddings: false,
        }
        .to_config(13, 0)
        .unwrap();
        let vm = VarMap::new();
        let model = Llama::load(
            &VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
            &cfg,
        )
        .unwrap();
        for var in vm.all_vars() {
            var.set(&var.as_tensor().zeros_like().unwrap()).unwrap();
        }
        let tokens: Vec<u32> = (0..11).map(|i| i % 13).collect();
        let p = perplexity(&model, &tokens, 4, None).unwrap();
        assert_eq!(p.tokens, 10);
        assert!((p.ppl - 13.0).abs() < 1e-3, "{}", p.ppl);
    }
}
