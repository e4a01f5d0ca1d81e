//! Held-out perplexity on the inference engine: a model measured as it is served.

use strata_train::eval::{summary, window_starts};
use strata_train::{Perplexity, Result};

/// [`strata_train::perplexity`] on the inference engine, as the model is served (its weight type: a GGUF import's
/// blocks, or quantised on load): each window from an empty cache, every position's logits.
///
/// # Errors
/// When there are fewer than two tokens, or on an engine failure.
pub fn engine_perplexity(
    model: &strata_engine::CpuModel,
    tokens: &[u32],
    seq_len: usize,
    max_windows: Option<usize>,
) -> Result<Perplexity> {
    let v = model.config().vocab_size;
    let seq_len = seq_len.min(model.config().max_position_embeddings);
    let mut cache = strata_engine::CpuCache::new(model, seq_len);
    let (mut total, mut count) = (0f64, 0usize);
    for s in window_starts(tokens.len(), seq_len, max_windows)? {
        let len = seq_len.min(tokens.len() - 1 - s);
        cache.reset();
        let logits = model.forward(&tokens[s..s + len], &mut cache, true)?;
        for (row, &target) in logits.chunks_exact(v).zip(&tokens[s + 1..=s + len]) {
            total -= crate::tasks::log_softmax_at(row, target);
            count += 1;
        }
    }
    summary(total, count)
}
