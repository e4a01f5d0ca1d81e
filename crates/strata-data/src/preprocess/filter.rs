//! Minimum-length filter, counting characters (not bytes, not words), so it treats Chinese and English alike.

use super::{Stage, Verdict};
use crate::Doc;

pub struct MinLength {
    pub min_chars: usize,
}

impl Stage for MinLength {
    fn name(&self) -> &'static str {
        "min_length"
    }
    fn apply(&self, doc: Doc) -> Verdict {
        if doc.text.chars().count() < self.min_chars {
            Verdict::Drop("too_short")
        } else {
            Verdict::Keep(doc)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_characters_not_bytes() {
        let f = MinLength { min_chars: 4 };
        let doc = |t: &str| Doc {
            id: String::new(),
            text: t.into(),
            meta: serde_json::Map::new(),
        };
        assert!(matches!(f.apply(doc("超声检查")), Verdict::Keep(_))); // 4 chars, 12 bytes
        assert!(matches!(f.apply(doc("abc")), Verdict::Drop("too_short")));
    }
}
