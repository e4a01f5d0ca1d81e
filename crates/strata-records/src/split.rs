//! The held-out split: a document is held out by a hash of its text, so every stage (tokenize, eval) and
//! every tokenizer agrees on which documents were never trained on.

use sha2::{Digest, Sha256};

/// The share of documents held out, by default (tokenizer training, encoding and evaluation all use it).
pub const DEFAULT_VAL_FRACTION: f64 = 0.05;

/// True when the document with this text belongs to the held-out (validation) split.
#[must_use]
pub fn is_heldout(text: &str, fraction: f64) -> bool {
    let digest = Sha256::digest(text.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    #[allow(clippy::cast_precision_loss)]
    let u = u64::from_le_bytes(first) as f64 / u64::MAX as f64;
    u < fraction
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fraction_is_respected_and_stable() {
        let n = 10_000;
        let held = (0..n)
            .filter(|i| is_heldout(&format!("doc {i}"), 0.1))
            .count();
        // binomial(10000, 0.1): sd = 30, so 900..1100 is > 3 sd either side
        assert!((900..1100).contains(&held), "{held}");
        assert_eq!(is_heldout("same", 0.5), is_heldout("same", 0.5));
        assert!(!is_heldout("any", 0.0));
        assert!(is_heldout("any", 1.0 + f64::EPSILON));
    }
}
