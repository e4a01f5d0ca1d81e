//! The project's own encoder for byte-level BPE tokenizers (GPT-2's split; SmolLM2's: each digit alone, then
//! GPT-2's; Llama 3's and Qwen2's, one regex that differs in runs of digits), with the exact ids of the
//! `tokenizers` crate and several times its speed.
//!
//! `tokenizers` runs a generic pipeline for every document: added-token matching, the pre-tokenizer's regex
//! (fancy-regex, with `\s+(?!\S)`'s backtracking), a normalised string with alignment vectors for every piece,
//! the byte-to-character mapping, then the model with its shared cache, then an `Encoding`. Here GPT-2's
//! regex is a hand-written scanner over character classes (ASCII by table; any other character classified by
//! the `regex` crate's Unicode tables, the ones fancy-regex uses, and remembered), and every piece is looked up
//! in a word cache of the encoder's own; only a piece not seen before goes to the tokenizer's BPE model.
//!
//! [`FastEncoder::new`] accepts a tokenizer only when its configuration is one it reproduces exactly: no
//! normaliser or NFC (Qwen2's), a `ByteLevel` pre-tokenizer without a prefix space (alone, after `Digits`
//! with individual digits, or after a `Split` with Llama 3's or Qwen2's regex), a BPE model without dropout
//! or affixes, no post-processor that adds ids other than one leading special token (Llama 3's BOS), no
//! truncation or padding. A document that contains an added token's text, or that NFC would change, is
//! encoded by `tokenizers` itself. Any other tokenizer (SentencePiece) keeps the `tokenizers` path: the ids
//! are the same either way.

use rustc_hash::FxHashMap;
use tokenizers::models::bpe::BPE;
use tokenizers::{Model, ModelWrapper};

/// Pieces cached per encoder before the cache starts over (a corpus's vocabulary of words is far smaller).
const CACHE_WORDS: usize = 1 << 21;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Class {
    Letter,
    Number,
    Space,
    Other,
}

/// Characters' classes for GPT-2's regex: `\p{L}`, `\p{N}`, `\s` and the rest, as the `regex` crate's tables
/// (fancy-regex's) say.
struct Classes {
    letter: regex::Regex,
    number: regex::Regex,
    space: regex::Regex,
    ascii: [Class; 128],
    seen: FxHashMap<char, Class>,
}

impl Classes {
    fn new() -> Self {
        let re = |p: &str| regex::Regex::new(p).unwrap_or_else(|e| unreachable!("{p}: {e}"));
        let mut c = Self {
            letter: re(r"\A\p{L}\z"),
            number: re(r"\A\p{N}\z"),
            space: re(r"\A\s\z"),
            ascii: [Class::Other; 128],
            seen: FxHashMap::default(),
        };
        for b in 0..128u8 {
            c.ascii[usize::from(b)] = c.classify(char::from(b));
        }
        c
    }

    fn classify(&self, c: char) -> Class {
        let mut buf = [0u8; 4];
        let s = c.encode_utf8(&mut buf);
        if self.letter.is_match(s) {
            Class::Letter
        } else if self.number.is_match(s) {
            Class::Number
        } else if self.space.is_match(s) {
            Class::Space
        } else {
            Class::Other
        }
    }

    fn of(&mut self, c: char) -> Class {
        if c.is_ascii() {
            return self.ascii[c as usize];
        }
        if let Some(&k) = self.seen.get(&c) {
            return k;
        }
        let k = self.classify(c);
        self.seen.insert(c, k);
        k
    }
}

/// Appends to `out` the pieces of GPT-2's regex
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+` over `chars[lo..hi]` (start
/// byte, character, class), as (start, end) indices into `chars`.
fn gpt2_pieces(
    chars: &[(usize, char, Class)],
    lo: usize,
    hi: usize,
    out: &mut Vec<(usize, usize)>,
) {
    let n = hi;
    let mut i = lo;
    while i < n {
        let c = chars[i].1;
        if c == '\'' && i + 1 < n {
            let c1 = chars[i + 1].1;
            if matches!(c1, 's' | 't' | 'm' | 'd') {
                out.push((i, i + 2));
                i += 2;
                continue;
            }
            if i + 2 < n {
                let c2 = chars[i + 2].1;
                if matches!((c1, c2), ('r' | 'v', 'e') | ('l', 'l')) {
                    out.push((i, i + 3));
                    i += 3;
                    continue;
                }
            }
        }
        // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: an optional space, then a run of one class
        let head = if c == ' ' && i + 1 < n && chars[i + 1].2 != Class::Space {
            i + 1
        } else {
            i
        };
        let k = chars[head].2;
        if k != Class::Space {
            let mut j = head + 1;
            while j < n && chars[j].2 == k {
                j += 1;
            }
            out.push((i, j));
            i = j;
            continue;
        }
        // whitespace: `\s+(?!\S)` gives back the last one when a non-space follows; one alone is `\s+`
        let mut j = i + 1;
        while j < n && chars[j].2 == Class::Space {
            j += 1;
        }
        let end = if j < n && j - i >= 2 { j - 1 } else { j };
        out.push((i, end));
        i = end;
    }
}

/// Llama 3's pre-tokenizer regex (Qwen2's is the same with `\p{N}` for `\p{N}{1,3}`).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The lower case `(?i:…)` compares the contractions' letters in (the `regex` crate's simple case folding:
/// `ſ` folds to `s`).
fn fold(c: char) -> char {
    match c {
        'ſ' => 's',
        c => c.to_ascii_lowercase(),
    }
}

/// Appends to `out` the pieces of Llama 3's regex ([`LLAMA3_REGEX`]; Qwen2's with `max_digits` 1) over
/// `chars[lo..hi]`, as (start, end) indices into `chars`: the alternatives tried in order at each position.
fn llama3_pieces(
    chars: &[(usize, char, Class)],
    lo: usize,
    hi: usize,
    max_digits: usize,
    out: &mut Vec<(usize, usize)>,
) {
    let n = hi;
    let crlf = |c: char| c == '\r' || c == '\n';
    let mut i = lo;
    while i < n {
        let (c, k) = (chars[i].1, chars[i].2);
        // (?i:'s|'t|'re|'ve|'m|'ll|'d)
        if c == '\'' && i + 1 < n {
            let c1 = fold(chars[i + 1].1);
            if matches!(c1, 's' | 't' | 'm' | 'd') {
                out.push((i, i + 2));
                i += 2;
                continue;
            }
            if i + 2 < n && matches!((c1, fold(chars[i + 2].1)), ('r' | 'v', 'e') | ('l', 'l')) {
                out.push((i, i + 3));
                i += 3;
                continue;
            }
        }
        let run = |from: usize, class: Class| {
            let mut j = from;
            while j < n && chars[j].2 == class {
                j += 1;
            }
            j
        };
        // [^\r\n\p{L}\p{N}]?\p{L}+
        let letters = if k == Class::Letter {
            Some(i)
        } else if k != Class::Number && !crlf(c) && i + 1 < n && chars[i + 1].2 == Class::Letter {
            Some(i + 1)
        } else {
            None
        };
        if let Some(h) = letters {
            let j = run(h, Class::Letter);
            out.push((i, j));
            i = j;
            continue;
        }
        // \p{N}{1,3}
        if k == Class::Number {
            let mut j = i + 1;
            while j < n && j - i < max_digits && chars[j].2 == Class::Number {
                j += 1;
            }
            out.push((i, j));
            i = j;
            continue;
        }
        // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
        let others = if k == Class::Other {
            Some(i)
        } else if c == ' ' && i + 1 < n && chars[i + 1].2 == Class::Other {
            Some(i + 1)
        } else {
            None
        };
        if let Some(h) = others {
            let mut j = run(h, Class::Other);
            while j < n && crlf(chars[j].1) {
                j += 1;
            }
            out.push((i, j));
            i = j;
            continue;
        }
        // whitespace: `\s*[\r\n]+` reaches through the run's last line break; else `\s+(?!\S)` gives back
        // the last one when a non-space follows; one alone is `\s+`
        let j = run(i + 1, Class::Space);
        let end = match (i..j).rev().find(|&p| crlf(chars[p].1)) {
            Some(p) => p + 1,
            None if j < n && j - i >= 2 => j - 1,
            None => j,
        };
        out.push((i, end));
        i = end;
    }
}

/// GPT-2's byte → character map (the printable bytes as themselves, the others from U+0100 on).
fn byte_chars() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        map[usize::from(b)] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(next).unwrap_or('\0');
            next += 1;
            c
        };
    }
    map
}

/// An exact, fast encoder for the byte-level BPE tokenizers it accepts (module docs). One encoder serves every
/// thread; each thread brings its own [`EncoderState`] (its word cache).
pub struct FastEncoder {
    bpe: BPE,
    split: Split,
    /// Qwen2's NFC normaliser: a text NFC would change goes to `tokenizers`.
    nfc: bool,
    /// Ids the post-processor puts first (Llama 3's BOS), with `add_special_tokens`.
    prefix: Vec<u32>,
    added: Option<aho_corasick::AhoCorasick>,
    byte_chars: [char; 256],
}

/// The pre-tokenizer's split before the byte-level mapping.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Split {
    Gpt2,
    /// `Digits(individual_digits)`, then GPT-2's (SmolLM2).
    DigitsGpt2,
    /// Llama 3's regex: runs of up to `max_digits` digits (3; Qwen2's 1).
    Llama3 {
        max_digits: usize,
    },
}

/// The ids a post-processor adds before a text: none (no post-processor, or `ByteLevel`'s offsets only), one
/// leading special token (`TemplateProcessing` of `[SpecialToken, A]`, as Llama 3's BOS, alone or in a
/// `Sequence` after `ByteLevel`); None for anything else.
fn post_prefix(post: &serde_json::Value) -> Option<Vec<u32>> {
    match post["type"].as_str() {
        None if post.is_null() => Some(Vec::new()),
        Some("ByteLevel") => Some(Vec::new()),
        Some("Sequence") => {
            let mut prefix = Vec::new();
            for p in post["processors"].as_array()? {
                let ids = post_prefix(p)?;
                if !ids.is_empty() && !prefix.is_empty() {
                    return None;
                }
                prefix.extend(ids);
            }
            Some(prefix)
        }
        Some("TemplateProcessing") => {
            let single = post["single"].as_array()?;
            let [first, second] = single.as_slice() else {
                return None;
            };
            let name = first["SpecialToken"]["id"].as_str()?;
            if second["Sequence"]["id"] != "A" {
                return None;
            }
            post["special_tokens"][name]["ids"]
                .as_array()?
                .iter()
                .map(|v| v.as_u64().and_then(|v| u32::try_from(v).ok()))
                .collect()
        }
        _ => None,
    }
}

/// One thread's working state: the word cache and the scanner's buffers.
pub struct EncoderState {
    classes: Classes,
    cache: FxHashMap<Box<str>, Box<[u32]>>,
    chars: Vec<(usize, char, Class)>,
    pieces: Vec<(usize, usize)>,
    mapped: String,
}

impl Default for EncoderState {
    fn default() -> Self {
        Self {
            classes: Classes::new(),
            cache: FxHashMap::default(),
            chars: Vec::new(),
            pieces: Vec::new(),
            mapped: String::new(),
        }
    }
}

impl FastEncoder {
    /// The encoder for `tk`, or `None` when its configuration is not one this encoder reproduces exactly.
    #[must_use]
    pub fn new(tk: &tokenizers::Tokenizer) -> Option<Self> {
        let ModelWrapper::BPE(bpe) = tk.get_model() else {
            return None;
        };
        let json: serde_json::Value = serde_json::from_str(&tk.to_string(false).ok()?).ok()?;
        let byte_level = |p: &serde_json::Value, regex: bool| {
            p["type"] == "ByteLevel" && p["add_prefix_space"] == false && p["use_regex"] == regex
        };
        let pre = &json["pre_tokenizer"];
        let seq = pre["pretokenizers"]
            .as_array()
            .filter(|s| pre["type"] == "Sequence" && s.len() == 2);
        let split = if byte_level(pre, true) {
            Split::Gpt2
        } else if let Some(s) = seq {
            if s[0]["type"] == "Digits"
                && s[0]["individual_digits"] == true
                && byte_level(&s[1], true)
            {
                Split::DigitsGpt2
            } else if s[0]["type"] == "Split"
                && s[0]["behavior"] == "Isolated"
                && s[0]["invert"] == false
                && byte_level(&s[1], false)
            {
                match s[0]["pattern"]["Regex"].as_str() {
                    Some(LLAMA3_REGEX) => Split::Llama3 { max_digits: 3 },
                    Some(QWEN2_REGEX) => Split::Llama3 { max_digits: 1 },
                    _ => return None,
                }
            } else {
                return None;
            }
        } else {
            return None;
        };
        let model = &json["model"];
        let plain_model = model["dropout"].is_null()
            && model["continuing_subword_prefix"].is_null()
            && model["end_of_word_suffix"].is_null();
        let norm = &json["normalizer"];
        let nfc = norm["type"] == "NFC";
        let plain =
            (norm.is_null() || nfc) && json["truncation"].is_null() && json["padding"].is_null();
        let prefix = post_prefix(&json["post_processor"])?;
        if !(plain_model && plain) {
            return None;
        }
        let added: Vec<String> = tk
            .get_added_tokens_decoder()
            .values()
            .map(|t| t.content.clone())
            .filter(|c| !c.is_empty())
            .collect();
        let added = if added.is_empty() {
            None
        } else {
            Some(aho_corasick::AhoCorasick::new(&added).ok()?)
        };
        Some(Self {
            bpe: bpe.clone(),
            split,
            nfc,
            prefix,
            added,
            byte_chars: byte_chars(),
        })
    }

    /// Whether `text` must go to `tokenizers` itself: it holds an added token's text, or the tokenizer
    /// normalises to NFC and the text is not in it.
    #[must_use]
    pub fn needs_tokenizer(&self, text: &str) -> bool {
        self.added.as_ref().is_some_and(|a| a.is_match(text))
            || (self.nfc && !text.is_ascii() && !unicode_normalization::is_nfc(text))
    }

    /// The ids of `text` (which must not need the tokenizer: [`Self::needs_tokenizer`]).
    ///
    /// # Errors
    /// When the BPE model fails on a piece (a byte missing from its vocabulary).
    pub fn encode(
        &self,
        text: &str,
        st: &mut EncoderState,
        out: &mut Vec<u32>,
    ) -> crate::Result<()> {
        let EncoderState {
            classes,
            cache,
            chars,
            pieces,
            mapped,
        } = st;
        chars.clear();
        pieces.clear();
        chars.extend(text.char_indices().map(|(b, c)| (b, c, classes.of(c))));
        match self.split {
            Split::Gpt2 => gpt2_pieces(chars, 0, chars.len(), pieces),
            Split::DigitsGpt2 => {
                // `Digits(individual_digits)`: each `char::is_numeric` character alone, GPT-2's regex between
                let mut start = 0;
                for i in 0..chars.len() {
                    if chars[i].1.is_numeric() {
                        gpt2_pieces(chars, start, i, pieces);
                        pieces.push((i, i + 1));
                        start = i + 1;
                    }
                }
                gpt2_pieces(chars, start, chars.len(), pieces);
            }
            Split::Llama3 { max_digits } => {
                llama3_pieces(chars, 0, chars.len(), max_digits, pieces);
            }
        }
        out.extend_from_slice(&self.prefix);
        let bytes_at = |i: usize| chars.get(i).map_or(text.len(), |c| c.0);
        for &(a, b) in pieces.iter() {
            let piece = &text[bytes_at(a)..bytes_at(b)];
            if let Some(ids) = cache.get(piece) {
                out.extend_from_slice(ids);
                continue;
            }
            mapped.clear();
            mapped.extend(piece.bytes().map(|x| self.byte_chars[usize::from(x)]));
            let ids: Box<[u32]> = self
                .bpe
                .tokenize(mapped)
                .map_err(|e| crate::TokenizeError::Tokenizer(e.to_string()))?
                .iter()
                .map(|t| t.id)
                .collect();
            out.extend_from_slice(&ids);
            if cache.len() >= CACHE_WORDS {
                cache.clear();
            }
            cache.insert(piece.into(), ids);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Characters where GPT-2's classes meet: spaces of every kind, letters and marks, numbers of the three
    /// categories, apostrophes and the contractions' letters, punctuation, CJK, an emoji.
    const TRICKY: &[char] = &[
        ' ', ' ', ' ', '\n', '\t', '\r', '\x0b', '\x0c', '\u{85}', '\u{a0}', '\u{2028}',
        '\u{3000}', '\'', '\'', 's', 't', 'r', 'e', 'v', 'l', 'd', 'm', 'a', 'Z', '1', '2', '0',
        '!', '.', '-', '"', 'é', '\u{301}', 'ß', '中', '文', '٣', 'Ⅻ', '²', '½', '😀', '\u{200b}',
        '\x1c', '_',
    ];

    /// A byte-level BPE of a few hundred merges trained by the project's trainer on `text`, with `pre` as its
    /// pre-tokenizer (JSON); its special tokens are added tokens.
    fn trained(text: &str, pre: &serde_json::Value) -> tokenizers::Tokenizer {
        let docs: Vec<String> = text.lines().map(str::to_string).collect();
        let cfg = crate::TokenizerConfig {
            vocab_size: 600,
            min_frequency: 2,
            val_fraction: 0.0,
        };
        let tk = crate::bpe::train_bpe(&docs, &cfg).unwrap();
        let mut json: serde_json::Value =
            serde_json::from_str(&tk.to_string(false).unwrap()).unwrap();
        json["pre_tokenizer"] = pre.clone();
        json.to_string().parse().unwrap()
    }

    fn byte_level() -> serde_json::Value {
        serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
            "use_regex": true})
    }

    /// Llama 3's pre-tokenizer (Qwen2's with its regex).
    fn llama3_split(regex: &str) -> serde_json::Value {
        serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]})
    }

    fn smollm2_split() -> serde_json::Value {
        serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level()]})
    }

    fn corpus() -> String {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut s = String::from(
            "The patient's liver isn't enlarged; we'll see 12 cysts in 2024.\n\
             It's 3.5 cm —  a   cyst\n\n  with    spaces.\n",
        );
        for _ in 0..400 {
            let n = rng.random_range(0..60);
            s.extend((0..n).map(|_| TRICKY[rng.random_range(0..TRICKY.len())]));
            s.push('\n');
        }
        s.repeat(3)
    }

    fn assert_same(tk: &tokenizers::Tokenizer, texts: &[String]) {
        let fast = FastEncoder::new(tk).expect("a byte-level BPE is accepted");
        let mut st = EncoderState::default();
        let want = tk
            .encode_batch_fast(texts.iter().map(String::as_str).collect::<Vec<_>>(), true)
            .unwrap();
        for (t, w) in texts.iter().zip(want) {
            if fast.needs_tokenizer(t) {
                // only NFC's: a text that normalisation would change
                assert!(fast.nfc && !unicode_normalization::is_nfc(t), "{t:?}");
                continue;
            }
            let mut got = Vec::new();
            fast.encode(t, &mut st, &mut got).unwrap();
            assert_eq!(got, w.get_ids(), "{t:?}");
        }
    }

    /// Every character there is (each plane's code points, in contexts that exercise each alternative of the
    /// regex) and random strings of the characters where the classes meet: the ids of `tokenizers`, with
    /// GPT-2's split and with SmolLM2's.
    #[test]
    fn ids_equal_tokenizers_on_every_character_and_random_text() {
        let text = corpus();
        let mut texts: Vec<String> = (0..=0x10_FFFFu32)
            .filter(|u| *u < 0x3_0000 || u % 61 == 0)
            .filter_map(char::from_u32)
            .map(|c| format!("a{c}b {c}1{c}  {c}{c}\n{c}'s {c}"))
            .collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        texts.extend((0..3000).map(|_| {
            let n = rng.random_range(0..40);
            (0..n)
                .map(|_| TRICKY[rng.random_range(0..TRICKY.len())])
                .collect::<String>()
        }));
        texts.extend(text.lines().map(str::to_string));
        texts.push(String::new());
        for pre in [
            byte_level(),
            smollm2_split(),
            llama3_split(LLAMA3_REGEX),
            llama3_split(QWEN2_REGEX),
        ] {
            assert_same(&trained(&text, &pre), &texts);
        }
        // Qwen2 as it ships: NFC first (texts NFC would change go to `tokenizers`); Llama 3 as it ships: BOS
        // first, from a post-processor's template
        let mut qwen: serde_json::Value = serde_json::from_str(
            &trained(&text, &llama3_split(QWEN2_REGEX))
                .to_string(false)
                .unwrap(),
        )
        .unwrap();
        qwen["normalizer"] = serde_json::json!({"type": "NFC"});
        let qwen: tokenizers::Tokenizer = qwen.to_string().parse().unwrap();
        assert!(FastEncoder::new(&qwen).unwrap().nfc);
        assert_same(&qwen, &texts);
        let llama3 = with_bos(&trained(&text, &llama3_split(LLAMA3_REGEX)));
        assert_eq!(FastEncoder::new(&llama3).unwrap().prefix, [0]);
        assert_same(&llama3, &texts);
    }

    /// `tk` with Llama 3's post-processor: `ByteLevel`, then a template putting special token 0 first.
    fn with_bos(tk: &tokenizers::Tokenizer) -> tokenizers::Tokenizer {
        let mut json: serde_json::Value =
            serde_json::from_str(&tk.to_string(false).unwrap()).unwrap();
        let name = tk.id_to_token(0).unwrap();
        json["post_processor"] = serde_json::json!({"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": name, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"SpecialToken": {"id": name, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": name, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {name.clone(): {"id": name, "ids": [0], "tokens": [name]}}}]});
        json.to_string().parse().unwrap()
    }

    #[test]
    fn hand_worked_pieces_of_llama3_regex() {
        let mut classes = Classes::new();
        let mut pieces = |s: &str, digits: usize| -> Vec<String> {
            let chars: Vec<(usize, char, Class)> = s
                .char_indices()
                .map(|(b, c)| (b, c, classes.of(c)))
                .collect();
            let mut out = Vec::new();
            llama3_pieces(&chars, 0, chars.len(), digits, &mut out);
            out.iter()
                .map(|&(a, b)| chars[a..b].iter().map(|c| c.1).collect())
                .collect()
        };
        // contractions in any case; a mark or tab before letters joins them; digits in threes (Qwen2: ones)
        assert_eq!(
            pieces("IT'S 12345 'ſ\tok", 3),
            ["IT", "'S", " ", "123", "45", " '", "ſ", "\tok"]
        );
        assert_eq!(pieces("x 12", 1), ["x", " ", "1", "2"]);
        // punctuation keeps the line breaks after it; whitespace runs through their last line break
        assert_eq!(
            pieces("end.\n\nnext  \n  word", 3),
            ["end", ".\n\n", "next", "  \n", " ", " word"]
        );
        assert_eq!(pieces("a   b", 3), ["a", "  ", " b"]);
        assert_eq!(pieces("a\n", 3), ["a", "\n"]);
    }

    #[test]
    fn hand_worked_pieces_of_gpt2_regex() {
        let mut classes = Classes::new();
        let pieces = |s: &str, classes: &mut Classes| -> Vec<String> {
            let chars: Vec<(usize, char, Class)> = s
                .char_indices()
                .map(|(b, c)| (b, c, classes.of(c)))
                .collect();
            let mut out = Vec::new();
            gpt2_pieces(&chars, 0, chars.len(), &mut out);
            out.iter()
                .map(|&(a, b)| chars[a..b].iter().map(|c| c.1).collect())
                .collect()
        };
        assert_eq!(
            pieces("it's  a test!!\n\nok 42", &mut classes),
            ["it", "'s", " ", " a", " test", "!!", "\n", "\n", "ok", " 42"]
        );
        // the last space before a non-space leaves its run: `\s+(?!\S)` backtracks
        assert_eq!(pieces("x   \ny", &mut classes), ["x", "   ", "\n", "y"]);
        assert_eq!(pieces("x   y", &mut classes), ["x", "  ", " y"]);
        assert_eq!(
            pieces("they'll'RE", &mut classes),
            ["they", "'ll", "'", "RE"]
        );
        assert_eq!(
            pieces(" \u{3000}中文", &mut classes),
            [" ", "\u{3000}", "中文"]
        );
    }

    /// Texts holding an added token go to `tokenizers`; configurations the encoder does not reproduce are
    /// refused (the caller keeps the `tokenizers` path).
    #[test]
    fn added_tokens_and_other_configurations_are_left_to_tokenizers() {
        let text = corpus();
        let tk = trained(&text, &byte_level());
        let fast = FastEncoder::new(&tk).unwrap();
        assert!(fast.needs_tokenizer("end<|endoftext|>start"));
        assert!(!fast.needs_tokenizer("end <|endoftext| start"));
        let with = |key: &str, v: serde_json::Value| {
            let mut json: serde_json::Value =
                serde_json::from_str(&tk.to_string(false).unwrap()).unwrap();
            json[key] = v;
            let t: tokenizers::Tokenizer = json.to_string().parse().unwrap();
            FastEncoder::new(&t).is_none()
        };
        assert!(with("normalizer", serde_json::json!({"type": "NFKC"})));
        // a Split with another regex
        assert!(with(
            "pre_tokenizer",
            llama3_split(r"\p{L}+|\p{N}+|\s+|[^\s\p{L}\p{N}]+")
        ));
        assert!(with(
            "pre_tokenizer",
            serde_json::json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                "use_regex": true})
        ));
        assert!(with(
            "pre_tokenizer",
            serde_json::json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": false}, byte_level()]})
        ));
        assert!(with(
            "post_processor",
            serde_json::json!({"type": "TemplateProcessing",
                "single": [{"Sequence": {"id": "A", "type_id": 0}},
                           {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [0],
                    "tokens": ["<|endoftext|>"]}}})
        ));
        assert!(!with(
            "post_processor",
            serde_json::json!({"type": "ByteLevel",
            "add_prefix_space": true, "trim_offsets": true, "use_regex": true})
        ));
    }
}
