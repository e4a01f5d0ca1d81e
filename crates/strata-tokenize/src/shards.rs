//! Token shards, nanoGPT style: `train-00000.bin` and `val-00000.bin`, each a 32-byte header followed by
//! little-endian token ids (u16 when the vocabulary fits, else u32). Each document ends with `<|endoftext|>`.
//!
//! Header: magic `STRATOK1` (8 bytes), version u32 = 1, bytes per id u32 (2 or 4), count u64, vocab u64.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};
use strata_data::acquire::StepReport;
use strata_store::{Kind, Manifest, Store};

use crate::{io_err, load_tokenizer, Result, TokenizeError, SPECIAL_TOKENS};

const MAGIC: &[u8; 8] = b"STRATOK1";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncodeConfig {
    #[serde(default = "crate::bpe::default_val_fraction")]
    pub val_fraction: f64,
}

impl Default for EncodeConfig {
    fn default() -> Self {
        Self {
            val_fraction: crate::bpe::default_val_fraction(),
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
    let tk = load_tokenizer(&store.dir(Kind::Tokenizer, tokenizer).join("tokenizer.json"))?;
    let eos = tk
        .token_to_id(SPECIAL_TOKENS[0])
        .ok_or_else(|| TokenizeError::Tokenizer("no <|endoftext|> token".into()))?;
    let (mut train, mut val) = (Vec::new(), Vec::new());
    let (mut train_docs, mut val_docs) = (0usize, 0usize);
    let texts: Vec<String> = strata_data::io::read_dataset(&store.dir(Kind::Dataset, dataset))?
        .map(|d| d.map(|d| d.text))
        .collect::<std::result::Result<_, _>>()?;
    let encodings = tk
        .encode_batch(texts.iter().map(String::as_str).collect::<Vec<_>>(), false)
        .map_err(|e| TokenizeError::Tokenizer(e.to_string()))?;
    for (text, enc) in texts.iter().zip(encodings) {
        let (out, n) = if strata_data::split::is_heldout(text, cfg.val_fraction) {
            (&mut val, &mut val_docs)
        } else {
            (&mut train, &mut train_docs)
        };
        out.extend_from_slice(enc.get_ids());
        out.push(eos);
        *n += 1;
    }
    let vocab = tk.get_vocab_size(true);
    let staging = store.staging(Kind::Tokens, name)?;
    write_tokens(&staging.join("train-00000.bin"), &train, vocab)?;
    write_tokens(&staging.join("val-00000.bin"), &val, vocab)?;
    let mut manifest = manifest;
    for (k, v) in [
        ("train_tokens", train.len()),
        ("val_tokens", val.len()),
        ("train_documents", train_docs),
        ("val_documents", val_docs),
        ("vocab_size", vocab),
    ] {
        manifest.counts.insert(k.into(), v.into());
    }
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

/// Reads a token shard, checking its header against its length.
///
/// # Errors
/// On an I/O failure or a file that is not a complete shard.
pub fn read_tokens(path: &Path) -> Result<Vec<u32>> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let bad = |reason: String| TokenizeError::BadShard {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.len() < 32 || &bytes[..8] != MAGIC {
        return Err(bad("missing STRATOK1 header".into()));
    }
    let word = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let (version, width) = (word(8), word(12) as usize);
    let mut count_bytes = [0u8; 8];
    count_bytes.copy_from_slice(&bytes[16..24]);
    let count = usize::try_from(u64::from_le_bytes(count_bytes)).map_err(|e| bad(e.to_string()))?;
    if version != 1 || !(width == 2 || width == 4) {
        return Err(bad(format!(
            "unsupported version {version} / id width {width}"
        )));
    }
    let body = &bytes[32..];
    if body.len() != count.saturating_mul(width) {
        return Err(bad(format!(
            "header says {count} ids of {width} bytes but the body has {} bytes (truncated?)",
            body.len()
        )));
    }
    Ok(if width == 2 {
        body.chunks_exact(2)
            .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]])))
            .collect()
    } else {
        body.chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    })
}

/// Token ids of the held-out documents of a dataset, encoded with any tokenizer (each document followed
/// by `<|endoftext|>`): what `eval` measures perplexity on.
///
/// # Errors
/// When the dataset is missing or unreadable.
pub fn encode_heldout(
    store: &Store,
    dataset: &str,
    tk: &tokenizers::Tokenizer,
    val_fraction: f64,
) -> Result<Vec<u32>> {
    let dir = store.require(Kind::Dataset, dataset)?;
    let eos = tk.token_to_id(SPECIAL_TOKENS[0]);
    let mut ids = Vec::new();
    for doc in strata_data::io::read_dataset(&dir)? {
        let doc = doc?;
        if strata_data::split::is_heldout(&doc.text, val_fraction) {
            let enc = tk
                .encode(doc.text.as_str(), false)
                .map_err(|e| TokenizeError::Tokenizer(e.to_string()))?;
            ids.extend_from_slice(enc.get_ids());
            ids.extend(eos);
        }
    }
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
