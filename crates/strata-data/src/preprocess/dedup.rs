//! Exact deduplication: the first document with a given text is kept, later copies are dropped.
//! Memory is 16 bytes per distinct document (a truncated sha256), not the text itself.

use std::collections::HashSet;

use sha2::{Digest, Sha256};

use super::{Prepared, Stage, Verdict};
use crate::Doc;

#[derive(Default)]
pub struct ExactDedup {
    seen: HashSet<[u8; 16]>,
}

/// The first 16 bytes of the text's sha256.
fn key(doc: &Doc) -> [u8; 16] {
    let digest = Sha256::digest(doc.text.as_bytes());
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

impl Stage for ExactDedup {
    fn name(&self) -> &'static str {
        "exact_dedup"
    }
    fn pure(&self) -> bool {
        false
    }
    fn prepare(&self, doc: &Doc) -> Prepared {
        Prepared::Digest(key(doc))
    }
    fn apply_in_order(&mut self, doc: Doc, prepared: Prepared) -> Verdict {
        let key = match prepared {
            Prepared::Digest(k) => k,
            _ => key(&doc),
        };
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
            .map(|t| matches!(d.apply_in_order(doc(t), Prepared::None), Verdict::Keep(_)))
            .collect();
        assert_eq!(verdicts, vec![true, true, false, false, true, false]);
    }
}
