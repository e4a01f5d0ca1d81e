//! Exact deduplication: the first document with a given text is kept, later copies are dropped.
//! Memory is 16 bytes per distinct document (a truncated sha256), not the text itself.

use std::collections::HashSet;

use sha2::{Digest, Sha256};

use super::{Stage, Verdict};
use crate::Doc;

#[derive(Default)]
pub struct ExactDedup {
    seen: HashSet<[u8; 16]>,
}

impl Stage for ExactDedup {
    fn name(&self) -> &'static str {
        "exact_dedup"
    }
    fn apply(&mut self, doc: Doc) -> Verdict {
        let digest = Sha256::digest(doc.text.as_bytes());
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        if self.seen.insert(key) {
            Verdict::Keep(doc)
        } else {
            Verdict::Drop("duplicate")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_first_drops_copies() {
        let mut d = ExactDedup::default();
        let doc = |t: &str| Doc {
            id: String::new(),
            text: t.into(),
            meta: serde_json::Map::new(),
        };
        let verdicts: Vec<bool> = ["a", "b", "a", "a", "c", "b"]
            .iter()
            .map(|t| matches!(d.apply(doc(t)), Verdict::Keep(_)))
            .collect();
        assert_eq!(verdicts, vec![true, true, false, false, true, false]);
    }
}
