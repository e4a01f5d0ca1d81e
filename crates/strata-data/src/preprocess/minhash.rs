//! MinHash LSH near-duplicate removal, deterministic. Each document becomes the set of its word n-grams
//! (lower-cased words, punctuation dropped, each Chinese character a word); `bands × rows` minimum hashes
//! summarise it. Documents sharing all rows of any band are candidates; a candidate is a duplicate when
//! the share of equal minimum hashes (the estimate of Jaccard similarity) reaches `threshold`. The first
//! document of a cluster is kept, later ones are removed as `near_duplicate`.
//!
//! Defaults: 5-word shingles, 25 bands × 5 rows and threshold 0.7. Candidates are found at Jaccard 0.8
//! with probability 1 − (1 − 0.8⁵)²⁵ > 0.9999, and the check keeps pairs below 0.5 apart (the estimate
//! from 125 hashes would have to be off by 0.2, over four standard deviations). datatrove's 14 × 8 without
//! a check finds a pair at 0.8 with probability 0.92 and merges one at 0.5 with probability 0.05.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::words::{hash_bytes, is_punct, mix as mix64, tokens, PreHashedState};
use super::{Prepared, Stage, Verdict};
use crate::Doc;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MinHashConfig {
    /// Words per shingle.
    pub shingle: usize,
    pub bands: usize,
    pub rows: usize,
    /// Estimated Jaccard similarity at which a candidate is a duplicate.
    pub threshold: f64,
    /// Seed of the hash functions (a different seed gives other, equally valid, hashes).
    pub seed: u64,
}

impl Default for MinHashConfig {
    fn default() -> Self {
        Self {
            shingle: 5,
            bands: 25,
            rows: 5,
            threshold: 0.7,
            seed: 1,
        }
    }
}

impl MinHashConfig {
    /// The hashes of a document's shingles (a short document is one shingle of all its words).
    #[must_use]
    pub fn shingles(&self, text: &str) -> Vec<u64> {
        let words: Vec<u64> = tokens(text)
            .into_iter()
            .filter(|t| !is_punct(t))
            .map(|t| {
                let h = if t.bytes().any(|b| b.is_ascii_uppercase() || b >= 0x80) {
                    hash_bytes(t.to_lowercase().as_bytes())
                } else {
                    hash_bytes(t.as_bytes())
                };
                mix64(h ^ self.seed)
            })
            .collect();
        if words.is_empty() {
            return Vec::new();
        }
        let n = self.shingle.max(1).min(words.len());
        let mut out: Vec<u64> = words
            .windows(n)
            .map(|w| {
                w.iter()
                    .fold(self.seed, |h, &x| mix64(h.rotate_left(17) ^ x))
            })
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// `bands × rows` minimum hashes (32 bits each) of a shingle set.
    #[must_use]
    pub fn signature(&self, shingles: &[u64]) -> Vec<u32> {
        let k = self.bands * self.rows;
        let salts: Vec<u64> = (0..k as u64)
            .map(|i| mix64(self.seed ^ mix64(i + 1)))
            .collect();
        let mut sig = vec![u64::MAX; k];
        for &s in shingles {
            for (m, &salt) in sig.iter_mut().zip(&salts) {
                *m = (*m).min(mix64(s ^ salt));
            }
        }
        #[allow(clippy::cast_possible_truncation)]
        sig.into_iter().map(|m| (m >> 32) as u32).collect()
    }

    /// The key of band `b` of a signature.
    pub(crate) fn band_key(&self, sig: &[u32], b: usize) -> u64 {
        sig[b * self.rows..(b + 1) * self.rows]
            .iter()
            .fold(mix64(b as u64 + 1), |h, &x| mix64(h ^ u64::from(x)))
    }
}

/// Estimated Jaccard similarity: the share of equal minimum hashes.
#[must_use]
#[allow(clippy::cast_precision_loss)]
pub fn estimate(a: &[u32], b: &[u32]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len().max(1) as f64
}

/// The streaming stage: remembers the signatures of the documents it kept.
pub struct MinHashDedup {
    cfg: MinHashConfig,
    buckets: HashMap<u64, Vec<u32>, PreHashedState>,
    kept: Vec<Vec<u32>>,
}

impl MinHashDedup {
    #[must_use]
    pub fn new(cfg: MinHashConfig) -> Self {
        Self {
            cfg,
            buckets: HashMap::default(),
            kept: Vec::new(),
        }
    }

    /// Whether `text` duplicates a document seen before; if not, it is remembered.
    pub fn is_duplicate(&mut self, text: &str) -> bool {
        let sig = self.signature_of(text);
        self.check(sig)
    }

    /// The signature of a text (empty for a text without words).
    #[must_use]
    pub fn signature_of(&self, text: &str) -> Vec<u32> {
        let sh = self.cfg.shingles(text);
        if sh.is_empty() {
            Vec::new()
        } else {
            self.cfg.signature(&sh)
        }
    }

    fn check(&mut self, sig: Vec<u32>) -> bool {
        if sig.is_empty() {
            return false;
        }
        let keys: Vec<u64> = (0..self.cfg.bands)
            .map(|b| self.cfg.band_key(&sig, b))
            .collect();
        for k in &keys {
            if let Some(docs) = self.buckets.get(k) {
                if docs
                    .iter()
                    .any(|&d| estimate(&sig, &self.kept[d as usize]) >= self.cfg.threshold)
                {
                    return true;
                }
            }
        }
        let id = u32::try_from(self.kept.len()).unwrap_or(u32::MAX);
        self.kept.push(sig);
        for k in keys {
            self.buckets.entry(k).or_default().push(id);
        }
        false
    }
}

impl Stage for MinHashDedup {
    fn name(&self) -> &'static str {
        "minhash_dedup"
    }
    fn pure(&self) -> bool {
        false
    }
    fn prepare(&self, doc: &Doc) -> Prepared {
        Prepared::Signature(self.signature_of(&doc.text))
    }
    fn apply_in_order(&mut self, doc: Doc, prepared: Prepared) -> Verdict {
        let sig = match prepared {
            Prepared::Signature(s) => s,
            _ => self.signature_of(&doc.text),
        };
        if self.check(sig) {
            Verdict::Drop("near_duplicate")
        } else {
            Verdict::Keep(doc)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// A tiny deterministic generator (the test must not depend on a crate's random stream).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            #[allow(clippy::cast_possible_truncation)]
            let r = (self.0 >> 33) as usize;
            r % n
        }
    }

    /// Exact Jaccard similarity of the 5-word shingle sets, computed on strings (the reference).
    fn jaccard(a: &str, b: &str) -> f64 {
        let set = |t: &str| -> HashSet<String> {
            let w: Vec<String> = t.split_whitespace().map(str::to_lowercase).collect();
            w.windows(5).map(|g| g.join(" ")).collect()
        };
        let (x, y) = (set(a), set(b));
        #[allow(clippy::cast_precision_loss)]
        let j = x.intersection(&y).count() as f64 / x.union(&y).count() as f64;
        j
    }

    #[test]
    fn planted_near_duplicates_found_and_dissimilar_pairs_kept_apart() {
        let vocab: Vec<String> = (0..3000).map(|i| format!("w{i}")).collect();
        let mut rng = Lcg(7);
        let mut dedup = MinHashDedup::new(MinHashConfig::default());
        let bases: Vec<Vec<String>> = (0..300)
            .map(|_| {
                (0..250)
                    .map(|_| vocab[rng.next(vocab.len())].clone())
                    .collect()
            })
            .collect();
        for b in &bases {
            assert!(
                !dedup.is_duplicate(&b.join(" ")),
                "distinct random documents merged"
            );
        }
        let (mut high, mut found_high, mut low, mut merged_low) = (0usize, 0usize, 0usize, 0usize);
        for (i, b) in bases.iter().enumerate() {
            // 0.5% to 20% of the words replaced
            let edits = 1 + (i % 40) * b.len() / 200;
            let mut copy = b.clone();
            for _ in 0..edits {
                let at = rng.next(copy.len());
                copy[at] = vocab[rng.next(vocab.len())].clone();
            }
            let (a, c) = (b.join(" "), copy.join(" "));
            let j = jaccard(&a, &c);
            let dup = dedup.is_duplicate(&c);
            if j >= 0.8 {
                high += 1;
                found_high += usize::from(dup);
            } else if j < 0.5 {
                low += 1;
                merged_low += usize::from(dup);
            }
        }
        eprintln!("planted: {found_high}/{high} found at Jaccard >= 0.8, {merged_low}/{low} merged below 0.5");
        assert!(
            high >= 20 && low >= 100,
            "the plant covers both sides: {high} high, {low} low"
        );
        #[allow(clippy::cast_precision_loss)]
        let recall = found_high as f64 / high as f64;
        assert!(
            recall >= 0.95,
            "recall at Jaccard >= 0.8: {found_high}/{high}"
        );
        assert_eq!(merged_low, 0, "pairs below Jaccard 0.5 merged");
    }

    #[test]
    fn signatures_are_deterministic_and_insensitive_to_case_and_punctuation() {
        let cfg = MinHashConfig::default();
        let a = "the liver is normal in size and echotexture with no focal lesion and the spleen is normal";
        let s1 = cfg.signature(&cfg.shingles(a));
        assert_eq!(s1, cfg.signature(&cfg.shingles(a)));
        assert_eq!(s1.len(), 125);
        assert!((estimate(&s1, &s1) - 1.0).abs() < 1e-12);
        // case and punctuation do not matter
        let b = "The liver is normal, in size and echotexture; with no focal lesion and the spleen is normal.";
        assert_eq!(s1, cfg.signature(&cfg.shingles(b)));
        // a short text is one shingle; Chinese characters are words
        assert_eq!(cfg.shingles("two words").len(), 1);
        assert_eq!(cfg.shingles("肝脏大小正常").len(), 2);
    }

    #[test]
    fn signatures_of_two_different_texts_estimate_their_true_jaccard() {
        // Two texts of 200 distinct words sharing the first 150: 5-word shingles 196 each, 146 in common, so
        // the true Jaccard of the shingle sets is 146 / (196 + 196 - 146) = 146/246 = 0.593. The estimate
        // from 125 hashes has a standard deviation of sqrt(0.593·0.407/125) = 0.044: within 0.15 is > 3 sd.
        let words: Vec<String> = (0..250).map(|i| format!("w{i}")).collect();
        let a = words[..200].join(" ");
        let b = [&words[..150], &words[200..250]].concat().join(" ");
        let cfg = MinHashConfig::default();
        let (sa, sb) = (cfg.shingles(&a), cfg.shingles(&b));
        let set = |v: &[u64]| {
            v.iter()
                .copied()
                .collect::<std::collections::HashSet<u64>>()
        };
        let (ta, tb) = (set(&sa), set(&sb));
        let truth = ta.intersection(&tb).count() as f64 / ta.union(&tb).count() as f64;
        assert!((truth - 146.0 / 246.0).abs() < 1e-12, "{truth}");
        let est = estimate(&cfg.signature(&sa), &cfg.signature(&sb));
        assert!((est - truth).abs() < 0.15, "estimate {est} vs true {truth}");
        // and an unrelated text estimates near zero
        let c: Vec<String> = (0..200).map(|i| format!("x{i}")).collect();
        let est = estimate(
            &cfg.signature(&sa),
            &cfg.signature(&cfg.shingles(&c.join(" "))),
        );
        assert!(est < 0.05, "{est}");
    }
}
