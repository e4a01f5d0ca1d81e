//! Stage 4's measure: models scored as they are served, on the inference engine — held-out perplexity,
//! multiple-choice tasks by log-likelihood (through the chat template, with bootstrap intervals) — and the
//! report of a domain chain (each step × every stored evaluation, changes against its parent, guard verdicts).

pub mod perplexity;
pub mod probe;
pub mod report;
pub mod tasks;

pub use perplexity::engine_perplexity;
