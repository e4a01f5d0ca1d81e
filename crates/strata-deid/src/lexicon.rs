//! The lexicon of `scripts/deid_lexicon.py` (`data/lexicon/deid`): name lists, places, everyday words and
//! the protected medical vocabulary, plus the few fixed words (months) the detectors and surrogates share.

use std::collections::HashSet;
use std::path::Path;

use crate::{DeidError, Result};

/// The lists of `scripts/deid_lexicon.py`.
#[derive(Debug, Default, Clone)]
pub struct Lexicon {
    pub first_names: HashSet<String>,
    pub surnames: HashSet<String>,
    pub cn_surnames: HashSet<String>,
    pub places: HashSet<String>,
    /// Lower-case everyday words: a name that is one needs more evidence.
    pub common: HashSet<String>,
    /// `"paget disease"`: an eponym and the word after it, lower case.
    pub eponyms: HashSet<String>,
    /// Nouns eponyms name (`syndrome`, `sign`).
    pub eponym_heads: HashSet<String>,
    /// Sorted pools the surrogates draw from: first names, surnames and places that are no everyday word.
    pub first_pool: Vec<String>,
    pub surname_pool: Vec<String>,
    pub place_pool: Vec<String>,
    /// The learned tagger ([`crate::tagger`]): `tagger.bin`, trained on first load from the lexicon's
    /// `train-notes.jsonl` when it is not there yet.
    pub tagger: Option<crate::Tagger>,
}

/// The tagger's file in a lexicon folder, and the labelled notes it is trained from.
pub const TAGGER_FILE: &str = "tagger.bin";
pub const TRAIN_NOTES: &str = "train-notes.jsonl";

const LISTS: [&str; 7] = [
    "first_names.txt",
    "surnames.txt",
    "cn_surnames.txt",
    "places.txt",
    "common_words.txt",
    "eponyms.txt",
    "eponym_heads.txt",
];

impl Lexicon {
    /// Reads the lists of `dir`.
    ///
    /// # Errors
    /// A missing folder or list, named, with the command that builds it.
    pub fn load(dir: &Path) -> Result<Self> {
        let mut lex = Self::load_lists(dir)?;
        lex.tagger = Self::tagger(dir, &lex)?;
        Ok(lex)
    }

    /// Reads the lists of `dir`, not its tagger.
    ///
    /// # Errors
    /// A missing folder or list, named, with the command that builds it.
    pub fn load_lists(dir: &Path) -> Result<Self> {
        let read = |name: &str| -> Result<HashSet<String>> {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path).map_err(|e| DeidError::Lexicon {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            Ok(text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect())
        };
        let mut sets = LISTS.iter().map(|n| read(n)).collect::<Result<Vec<_>>>()?;
        let mut take = || sets.remove(0);
        let mut lex = Self {
            first_names: take(),
            surnames: take(),
            cn_surnames: take(),
            places: take(),
            common: take(),
            eponyms: take(),
            eponym_heads: take(),
            ..Self::default()
        };
        let pool = |set: &HashSet<String>, lex: &Self| {
            let mut v: Vec<String> = set
                .iter()
                .filter(|w| w.len() >= 4 && w.chars().all(char::is_alphabetic) && !lex.is_common(w))
                .cloned()
                .collect();
            v.sort();
            v
        };
        lex.first_pool = pool(&lex.first_names, &lex);
        lex.surname_pool = pool(&lex.surnames, &lex);
        lex.place_pool = pool(&lex.places, &lex);
        Ok(lex)
    }

    /// The folder's tagger: read, or trained from its notes and written (once), or none without notes.
    fn tagger(dir: &Path, lex: &Self) -> Result<Option<crate::Tagger>> {
        let path = dir.join(TAGGER_FILE);
        if path.exists() {
            return crate::Tagger::load(&path).map(Some);
        }
        let notes = dir.join(TRAIN_NOTES);
        if !notes.exists() {
            return Ok(None);
        }
        let notes = crate::eval::read_notes(&notes)?;
        eprintln!(
            "de-identification: training the tagger on {} labelled notes (once) → {}",
            notes.len(),
            path.display()
        );
        let t = crate::Tagger::train(&notes, Some(lex), crate::tagger::EPOCHS);
        t.save(&path)?;
        Ok(Some(t))
    }

    pub(crate) fn is_common(&self, word: &str) -> bool {
        self.common.contains(&word.to_lowercase())
    }
}

/// `okafor` / `OKAFOR` → `Okafor`: how the lexicon's name lists write a name.
pub(crate) fn title_case(w: &str) -> String {
    let mut cs = w.chars();
    cs.next().map_or_else(String::new, |f| {
        f.to_uppercase()
            .chain(cs.flat_map(char::to_lowercase))
            .collect()
    })
}

/// `Okafor's` → `Okafor` (either apostrophe); any other word as it is.
pub(crate) fn without_possessive(w: &str) -> &str {
    w.strip_suffix("'s")
        .or_else(|| w.strip_suffix("’s"))
        .unwrap_or(w)
}

pub(crate) fn is_han(c: char) -> bool {
    ('\u{4e00}'..='\u{9fff}').contains(&c) || ('\u{3400}'..='\u{4dbf}').contains(&c)
}

pub(crate) const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
