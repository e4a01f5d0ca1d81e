//! Token shards, nanoGPT style: `train-00000.bin`, `train-00001.bin` … and `val-00000.bin`, each a 32-byte
//! header followed by little-endian token ids (u16 when the vocabulary fits, else u32). Each document ends
//! with the tokenizer's end-of-document token (its `eos_token`). Shards are read memory-mapped
//! ([`TokenShard`]): training touches only the windows it samples.
//!
//! Header: magic `STRATOK1` (8 bytes), version u32 = 1, bytes per id u32 (2 or 4), count u64, vocab u64.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};
use strata_records::StepReport;
use strata_store::{Kind, Manifest, Store};

use crate::{io_err, EncoderState, FastEncoder, Result, TokenizeError, TokenizerDir};

const MAGIC: &[u8; 8] = b"STRATOK1";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncodeConfig {
    #[serde(default = "crate::bpe::default_val_fraction")]
    pub val_fraction: f64,
    /// Tokens per training shard (a new shard starts at the next document boundary past this).
    #[serde(default = "default_shard_tokens")]
    pub shard_tokens: usize,
}

fn default_shard_tokens() -> usize {
    100_000_000
}

/// Documents encoded together (in parallel) by [`encode_dataset`].
const ENCODE_CHUNK: usize = 4096;

/// Words whose merges [`encode_dataset`]'s tokenizer keeps.
const WORD_CACHE: usize = 1 << 19;

impl Default for EncodeConfig {
    fn default() -> Self {
        Self {
            val_fraction: crate::bpe::default_val_fraction(),
            shard_tokens: default_shard_tokens(),
        }
    }
}

/// The tokenizer of `td` with a word cache that holds a corpus's vocabulary of words, not the crate's
/// default 10,000 (past which every new word is merged again each time it appears).
fn fast_tokenizer(td: &TokenizerDir) -> tokenizers::Tokenizer {
    let mut tk = td.tokenizer.clone();
    let mut model = tk.get_model().clone();
    model.resize_cache(WORD_CACHE);
    tk.with_model(model);
    tk
}

/// Encodes `texts` in chunks, each in parallel without character offsets (the ids are the same; only ids
/// are kept), with the tokenizer's own special tokens (BOS where its post-processor adds one, as HF's
/// encode does), and hands each text and its ids to `each` in order: memory holds one chunk's encodings.
/// A byte-level BPE tokenizer that [`FastEncoder`] reproduces goes through it (one word cache per thread);
/// any other, and any text holding an added token's text, through `tokenizers`.
fn encode_texts(
    tk: &tokenizers::Tokenizer,
    mut texts: impl Iterator<Item = Result<String>>,
    mut each: impl FnMut(&str, &[u32]),
) -> Result<()> {
    use rayon::prelude::*;
    let fast = FastEncoder::new(tk);
    let threads = rayon::current_num_threads().max(1);
    let states: Vec<std::sync::Mutex<EncoderState>> =
        (0..threads).map(|_| std::sync::Mutex::default()).collect();
    let slow = |text: &str| -> Result<Vec<u32>> {
        Ok(tk
            .encode_fast(text, true)
            .map_err(|e| TokenizeError::Tokenizer(e.to_string()))?
            .get_ids()
            .to_vec())
    };
    loop {
        let chunk: Vec<String> = texts.by_ref().take(ENCODE_CHUNK).collect::<Result<_>>()?;
        if chunk.is_empty() {
            return Ok(());
        }
        let Some(fast) = &fast else {
            let encodings = tk
                .encode_batch_fast(chunk.iter().map(String::as_str).collect::<Vec<_>>(), true)
                .map_err(|e| TokenizeError::Tokenizer(e.to_string()))?;
            for (text, enc) in chunk.iter().zip(encodings) {
                each(text, enc.get_ids());
            }
            continue;
        };
        // contiguous parts, one per thread and its word cache
        let part = chunk.len().div_ceil(threads);
        let parts: Vec<Vec<Vec<u32>>> = chunk
            .par_chunks(part)
            .zip(states.par_iter())
            .map(|(texts, state)| {
                let mut st = state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                texts
                    .iter()
                    .map(|t| {
                        if fast.needs_tokenizer(t) {
                            return slow(t);
                        }
                        let mut ids = Vec::with_capacity(t.len() / 3);
                        fast.encode(t, &mut st, &mut ids)?;
                        Ok(ids)
                    })
                    .collect()
            })
            .collect::<Result<_>>()?;
        for (text, ids) in chunk.iter().zip(parts.iter().flatten()) {
            each(text, ids);
        }
    }
}

/// Encodes dataset `dataset` with tokenizer `tokenizer` into the token artifact `name`.
///
/// # Errors
/// When an input is missing or on an I/O failure.
pub fn encode_dataset(
    store: &Store,
    name: &str,
    dataset: &str,
    tokenizer: &str,
    cfg: &EncodeConfig,
    created_by: &str,
) -> Result<StepReport> {
    let inputs = vec![
        store.input_ref(Kind::Dataset, dataset)?,
        store.input_ref(Kind::Tokenizer, tokenizer)?,
    ];
    let manifest = Manifest::new(Kind::Tokens, name, created_by)
        .with_config(inputs, serde_json::to_value(cfg).unwrap_or_default());
    if let Some(existing) = store.up_to_date(Kind::Tokens, name, &manifest.fingerprint) {
        return Ok(StepReport {
            manifest: existing,
            skipped: true,
        });
    }
    let td = TokenizerDir::open(&store.dir(Kind::Tokenizer, tokenizer))?;
    let tk = fast_tokenizer(&td);
    let (tk, eos) = (&tk, td.special.eos);
    let (mut train, mut val) = (vec![Vec::new()], Vec::new());
    let (mut train_docs, mut val_docs) = (0usize, 0usize);
    let docs = strata_records::read_dataset(&store.dir(Kind::Dataset, dataset))?;
    encode_texts(tk, docs.map(|d| Ok(d?.text)), |text, ids| {
        let (out, n) = if strata_records::split::is_heldout(text, cfg.val_fraction) {
            (&mut val, &mut val_docs)
        } else {
            if train
                .last()
                .is_some_and(|s| s.len() >= cfg.shard_tokens.max(1))
            {
                train.push(Vec::new());
            }
            (train.last_mut().unwrap_or(&mut val), &mut train_docs)
        };
        out.extend_from_slice(ids);
        out.push(eos);
        *n += 1;
    })?;
    let vocab = tk.get_vocab_size(true);
    let staging = store.staging(Kind::Tokens, name)?;
    for (i, shard) in train.iter().enumerate() {
        write_tokens(&staging.join(format!("train-{i:05}.bin")), shard, vocab)?;
    }
    write_tokens(&staging.join("val-00000.bin"), &val, vocab)?;
    let train_tokens: usize = train.iter().map(Vec::len).sum();
    let mut manifest = manifest;
    for (k, v) in [
        ("train_tokens", train_tokens),
        ("train_shards", train.len()),
        ("val_tokens", val.len()),
        ("train_documents", train_docs),
        ("val_documents", val_docs),
        ("vocab_size", vocab),
        ("eos_id", eos as usize),
    ] {
        manifest.counts.insert(k.into(), v.into());
    }
    manifest
        .counts
        .insert("tokenizer_sha256".into(), td.sha256.clone().into());
    let manifest = store.publish(&staging, manifest)?;
    Ok(StepReport {
        manifest,
        skipped: false,
    })
}

/// # Errors
/// On an I/O failure.
pub fn write_tokens(path: &Path, ids: &[u32], vocab: usize) -> Result<()> {
    let width: u32 = if vocab <= usize::from(u16::MAX) + 1 {
        2
    } else {
        4
    };
    write_tokens_width(path, ids, vocab, width)
}

/// [`write_tokens`] with the id width chosen by the caller (2 or 4 bytes; SFT shards need 4 for their
/// loss flag).
///
/// # Errors
/// On an I/O failure.
pub(crate) fn write_tokens_width(path: &Path, ids: &[u32], vocab: usize, width: u32) -> Result<()> {
    let mut f = strata_store::AtomicFile::create(path)?;
    let mut header = Vec::with_capacity(32);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&1u32.to_le_bytes());
    header.extend_from_slice(&width.to_le_bytes());
    header.extend_from_slice(&(ids.len() as u64).to_le_bytes());
    header.extend_from_slice(&(vocab as u64).to_le_bytes());
    f.write_all(&header).map_err(io_err(path))?;
    let mut body = Vec::with_capacity(ids.len() * width as usize);
    for &id in ids {
        if width == 2 {
            #[allow(clippy::cast_possible_truncation)] // width 2 only when every id < 65536
            body.extend_from_slice(&(id as u16).to_le_bytes());
        } else {
            body.extend_from_slice(&id.to_le_bytes());
        }
    }
    f.write_all(&body).map_err(io_err(path))?;
    f.commit()?;
    Ok(())
}

/// A token shard, memory-mapped: its header checked once, ids read on demand.
pub struct TokenShard {
    map: memmap2::Mmap,
    width: usize,
    len: usize,
    vocab: u64,
}

impl TokenShard {
    /// # Errors
    /// On an I/O failure or a file that is not a complete shard.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(io_err(path))?;
        // SAFETY: artifacts in the store are written once (temp file + rename) and never modified in
        // place, so the mapped bytes cannot change under us.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err(path))?;
        let bad = |reason: String| TokenizeError::BadShard {
            path: path.to_path_buf(),
            reason,
        };
        if map.len() < 32 || &map[..8] != MAGIC {
            return Err(bad("missing STRATOK1 header".into()));
        }
        let word = |i: usize| u32::from_le_bytes([map[i], map[i + 1], map[i + 2], map[i + 3]]);
        let (version, width) = (word(8), word(12) as usize);
        let long = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&map[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let len = usize::try_from(long(16)).map_err(|e| bad(e.to_string()))?;
        let vocab = long(24);
        if version != 1 || !(width == 2 || width == 4) {
            return Err(bad(format!(
                "unsupported version {version} / id width {width}"
            )));
        }
        if map.len() - 32 != len.saturating_mul(width) {
            return Err(bad(format!(
                "header says {len} ids of {width} bytes but the body has {} bytes (truncated?)",
                map.len() - 32
            )));
        }
        Ok(Self {
            map,
            width,
            len,
            vocab,
        })
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The vocabulary size recorded in the header.
    #[must_use]
    pub fn vocab(&self) -> u64 {
        self.vocab
    }

    /// Appends ids `start..start + n` to `out`.
    ///
    /// # Panics
    /// When the range runs past the end of the shard (a caller's contract).
    pub fn extend_into(&self, start: usize, n: usize, out: &mut Vec<u32>) {
        assert!(start + n <= self.len, "window past the end of the shard");
        let body = &self.map[32 + start * self.width..32 + (start + n) * self.width];
        if self.width == 2 {
            out.extend(
                body.chunks_exact(2)
                    .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]]))),
            );
        } else {
            out.extend(
                body.chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
        }
    }
}

/// The training shards of a token artifact folder, in order (`train-00000.bin`, `train-00001.bin`, …).
///
/// # Errors
/// When the folder has none or one cannot be opened.
pub fn train_shards(dir: &Path) -> Result<Vec<TokenShard>> {
    let mut names: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("train-") && n.ends_with(".bin"))
        })
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(TokenizeError::BadShard {
            path: dir.to_path_buf(),
            reason: "no train-*.bin shards".into(),
        });
    }
    names.iter().map(|p| TokenShard::open(p)).collect()
}

/// Reads a whole token shard (small files: the validation split).
///
/// # Errors
/// On an I/O failure or a file that is not a complete shard.
pub fn read_tokens(path: &Path) -> Result<Vec<u32>> {
    let shard = TokenShard::open(path)?;
    let mut out = Vec::with_capacity(shard.len());
    shard.extend_into(0, shard.len(), &mut out);
    Ok(out)
}

/// Token ids of the held-out documents of a dataset, encoded with any tokenizer (each document followed
/// by the tokenizer's end-of-document token): what `eval` measures perplexity on.
///
/// # Errors
/// When the dataset is missing or unreadable.
pub fn encode_heldout(
    store: &Store,
    dataset: &str,
    td: &TokenizerDir,
    val_fraction: f64,
) -> Result<Vec<u32>> {
    let dir = store.require(Kind::Dataset, dataset)?;
    let tk = fast_tokenizer(td);
    let mut ids = Vec::new();
    let heldout = strata_records::read_dataset(&dir)?.filter_map(|d| match d {
        Ok(d) if strata_records::split::is_heldout(&d.text, val_fraction) => Some(Ok(d.text)),
        Ok(_) => None,
        Err(e) => Some(Err(e.into())),
    });
    encode_texts(&tk, heldout, |_, enc| {
        ids.extend_from_slice(enc);
        ids.push(td.special.eos);
    })?;
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_round_trip_in_both_widths_and_truncation_is_caught() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.bin");
        write_tokens(&p, &[0, 1, 65535], 65536).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 32 + 6);
        assert_eq!(read_tokens(&p).unwrap(), vec![0, 1, 65535]);
        write_tokens(&p, &[70000, 3], 100_000).unwrap();
        assert_eq!(read_tokens(&p).unwrap(), vec![70000, 3]);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 1]).unwrap();
        assert!(read_tokens(&p)
            .unwrap_err()
            .to_string()
            .contains("truncated"));
    }
}
