//! The image dataset artifact: `images/<id>.png` (lossless, at the source resolution) and `records.jsonl`
//! (one [`ImageRecord`] per image, sorted by id), with the quarantine file and manifest of every artifact.
//! Text stages read `shard-*.jsonl.zst`; an image dataset holds none, so a text stage given one fails with
//! a clear message instead of reading nothing.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use strata_records::{Quarantine, QuarantineRecord};

use crate::pixels::Frame;
use crate::{io_err, Result};

pub const RECORDS: &str = "records.jsonl";

/// One image of a dataset.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ImageRecord {
    pub id: String,
    /// The PNG inside the artifact, relative to its folder.
    pub file: String,
    /// The raw file it was read from, and that file's SHA-256.
    pub source: String,
    pub source_sha256: String,
    /// Frame of a multi-frame source (0 for single images), and how many the source has.
    #[serde(default)]
    pub frame: u32,
    #[serde(default = "one")]
    pub frames: u32,
    pub width: u32,
    pub height: u32,
    pub channels: u8,
    pub bits: u8,
    /// DICOM modality (US, CT, …), or "" for plain images.
    #[serde(default)]
    pub modality: String,
    #[serde(default)]
    pub labels: Vec<String>,
    /// Free text: a report, a caption, DICOM descriptions.
    #[serde(default)]
    pub text: String,
    /// Patient and study pseudonyms (keyed hashes, never the source's identifiers).
    #[serde(default)]
    pub patient: String,
    #[serde(default)]
    pub study: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
    /// Added to stored samples (signed 16-bit DICOM is stored + 32768).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pixel_offset: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub photometric: String,
    /// Anything else (ground truth of simulated images, stage results).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub meta: serde_json::Map<String, serde_json::Value>,
}

fn one() -> u32 {
    1
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's signature
fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// A keyed pseudonym: `prefix` + 12 hex digits of SHA-256(secret, value). The same value and secret give the
/// same pseudonym in every run; without the secret it cannot be reversed by trying candidate values.
#[must_use]
pub fn pseudonym(prefix: &str, secret: &str, value: &str) -> String {
    if value.is_empty() {
        return String::new();
    }
    let mut h = Sha256::new();
    h.update(secret.as_bytes());
    h.update([0u8]);
    h.update(value.as_bytes());
    format!("{prefix}{}", &hex::encode(h.finalize())[..12])
}

/// True when `dir` holds an image dataset.
#[must_use]
pub fn is_image_dataset(dir: &Path) -> bool {
    dir.join(RECORDS).is_file()
}

/// Reads the records of an image dataset.
///
/// # Errors
/// Naming the file and line of a record that does not parse.
pub fn read_records(dir: &Path) -> Result<Vec<ImageRecord>> {
    let path = dir.join(RECORDS);
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                crate::ImageError::Records(strata_records::RecordsError::Record {
                    path: path.clone(),
                    line: i + 1,
                    reason: e.to_string(),
                })
            })
        })
        .collect()
}

/// Writes `frame` as `images/<id>.png` under `dir` and fills in the record's `file`, size and depth: the one
/// way an image enters a dataset (acquisition and every image stage, each from its own worker threads).
///
/// # Errors
/// On an I/O failure.
pub fn write_image(dir: &Path, rec: &mut ImageRecord, frame: &Frame) -> Result<()> {
    rec.file = format!("images/{}.png", rec.id);
    rec.width = frame.width;
    rec.height = frame.height;
    rec.channels = frame.channels;
    rec.bits = frame.bits();
    let path = dir.join(&rec.file);
    std::fs::write(&path, frame.to_png()?).map_err(io_err(&path))
}

/// Builds an image dataset in a staging folder: PNGs as they come ([`write_image`]), records sorted by id at
/// the end.
pub struct DatasetWriter {
    dir: PathBuf,
    records: Vec<ImageRecord>,
    pub quarantine: Quarantine,
}

impl DatasetWriter {
    /// # Errors
    /// When the images folder cannot be made.
    pub fn new(staging: &Path) -> Result<Self> {
        let images = staging.join("images");
        std::fs::create_dir_all(&images).map_err(io_err(&images))?;
        Ok(Self {
            dir: staging.to_path_buf(),
            records: Vec::new(),
            quarantine: Quarantine::new(staging),
        })
    }

    /// Keeps a record whose PNG is in place ([`write_image`]).
    pub fn add(&mut self, rec: ImageRecord) {
        self.records.push(rec);
    }

    /// Quarantines `source` with a one-line reason.
    ///
    /// # Errors
    /// On an I/O failure.
    pub fn reject(&mut self, source: &str, line: usize, reason: &str) -> Result<()> {
        self.quarantine.add(QuarantineRecord {
            source: source.to_string(),
            line,
            reason: reason.to_string(),
            raw: String::new(),
        })?;
        Ok(())
    }

    /// Writes `records.jsonl` (sorted by id) and the quarantine; returns (images, quarantined).
    ///
    /// # Errors
    /// On an I/O failure.
    pub fn finish(mut self) -> Result<(usize, usize)> {
        self.records.sort_by(|a, b| a.id.cmp(&b.id));
        let path = self.dir.join(RECORDS);
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).map_err(io_err(&path))?);
        for r in &self.records {
            let line = serde_json::to_string(r).map_err(|e| io_err(&path)(e.into()))?;
            writeln!(f, "{line}").map_err(io_err(&path))?;
        }
        f.into_inner()
            .map_err(|e| io_err(&path)(e.into_error()))?
            .sync_all()
            .map_err(io_err(&path))?;
        let q = self.quarantine.finish()?;
        Ok((self.records.len(), q))
    }
}
