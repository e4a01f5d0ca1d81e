//! The forgetting guard of a domain step: the child's perplexity on a general dataset's held-out split
//! against its parent's. A step whose increase exceeds `max_increase` (default 5%) is published but marked
//! failed — in its manifest (`counts.guard`), so in the registry and in `strata report` — and the command
//! exits with an error, so a pipeline stops there.

use serde::{Deserialize, Serialize};
use strata_store::Store;

use crate::Result;

/// `[train.guard]`: the general dataset to watch and the largest relative perplexity increase allowed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardConfig {
    pub dataset: String,
    #[serde(default = "d_max")]
    pub max_general_ppl_increase: f64,
    /// Windows of the held-out split to evaluate (each of the model's context).
    #[serde(default = "d_windows")]
    pub max_windows: usize,
}

fn d_max() -> f64 {
    0.05
}
fn d_windows() -> usize {
    64
}

/// What the guard measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuardVerdict {
    pub dataset: String,
    pub parent_ppl: f64,
    pub child_ppl: f64,
    /// child / parent − 1.
    pub increase: f64,
    pub max_increase: f64,
    pub passed: bool,
}

/// The guard's verdict on a just-trained `child` (the model in memory, whatever its variables): its
/// perplexity and its parent's on the dataset's held-out split, encoded once with the tokenizer they share.
///
/// # Errors
/// When the parent cannot be loaded or the dataset is too short.
pub fn verdict(
    store: &Store,
    g: &GuardConfig,
    parent: &str,
    child: &strata_model::Llama,
    td: &strata_tokenize::TokenizerDir,
) -> Result<GuardVerdict> {
    let ids = strata_tokenize::encode_heldout(
        store,
        &g.dataset,
        td,
        strata_tokenize::default_val_fraction(),
    )?;
    let ppl = |m: &strata_model::Llama| -> Result<f64> {
        Ok(crate::perplexity(m, &ids, crate::eval_window(m.config()), Some(g.max_windows))?.ppl)
    };
    let (parent_model, _) = crate::parent::load_merged(store, parent, &candle_core::Device::Cpu)?;
    Ok(GuardVerdict::new(g, ppl(&parent_model)?, ppl(child)?))
}

impl GuardVerdict {
    /// The verdict on a child of perplexity `child_ppl` against its parent's `parent_ppl`.
    #[must_use]
    pub fn new(g: &GuardConfig, parent_ppl: f64, child_ppl: f64) -> Self {
        let increase = child_ppl / parent_ppl - 1.0;
        Self {
            dataset: g.dataset.clone(),
            parent_ppl,
            child_ppl,
            increase,
            max_increase: g.max_general_ppl_increase,
            passed: increase <= g.max_general_ppl_increase,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_by_hand() {
        let g = GuardConfig {
            dataset: "general".into(),
            max_general_ppl_increase: 0.05,
            max_windows: 8,
        };
        let ok = GuardVerdict::new(&g, 100.0, 104.9);
        assert!(ok.passed && (ok.increase - 0.049).abs() < 1e-12);
        let bad = GuardVerdict::new(&g, 100.0, 105.1);
        assert!(!bad.passed);
        assert!(
            GuardVerdict::new(&g, 100.0, 90.0).passed,
            "a fall always passes"
        );
    }
}
