//! Dataset shards are zstd-compressed jsonl, one [`Doc`] per line, rolled over every `docs_per_shard`.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{io_err, Doc, RecordsError, Result};

/// Writes a closed shard's documents in another format: `(folder, shard number, documents)`.
pub type ShardCopy = Box<dyn FnMut(&Path, usize, &[Doc]) -> Result<()> + Send>;

/// Writes documents into numbered shards inside a (staging) directory.
pub struct ShardWriter {
    dir: PathBuf,
    docs_per_shard: usize,
    shard: usize,
    in_shard: usize,
    current: Option<zstd::Encoder<'static, strata_store::AtomicFile>>,
    /// The current shard's documents, kept for its copy in another format when one is wanted.
    copy: Option<(ShardCopy, Vec<Doc>)>,
    pub docs: usize,
}

impl ShardWriter {
    #[must_use]
    pub fn new(dir: impl Into<PathBuf>, docs_per_shard: usize) -> Self {
        Self {
            dir: dir.into(),
            docs_per_shard: docs_per_shard.max(1),
            shard: 0,
            in_shard: 0,
            current: None,
            copy: None,
            docs: 0,
        }
    }

    /// Also hands each closed shard's documents to `copy` (which writes them in another format, e.g. Parquet).
    #[must_use]
    pub fn with_copy(mut self, copy: Option<ShardCopy>) -> Self {
        self.copy = copy.map(|c| (c, Vec::new()));
        self
    }

    /// # Errors
    /// On an I/O failure.
    pub fn write(&mut self, doc: &Doc) -> Result<()> {
        let enc = match &mut self.current {
            Some(enc) => enc,
            open @ None => {
                let path = self.dir.join(format!("part-{:05}.jsonl.zst", self.shard));
                let file = strata_store::AtomicFile::create(&path)?;
                open.insert(zstd::Encoder::new(file, 3).map_err(io_err(&path))?)
            }
        };
        let path = &self.dir;
        let mut line = serde_json::to_vec(doc).map_err(|e| io_err(path)(e.into()))?;
        line.push(b'\n');
        enc.write_all(&line).map_err(io_err(path))?;
        if let Some((_, docs)) = self.copy.as_mut() {
            docs.push(doc.clone());
        }
        self.docs += 1;
        self.in_shard += 1;
        if self.in_shard >= self.docs_per_shard {
            self.close_shard()?;
        }
        Ok(())
    }

    fn close_shard(&mut self) -> Result<()> {
        if let Some(enc) = self.current.take() {
            let file = enc.finish().map_err(io_err(&self.dir))?;
            file.commit()?;
            if let Some((copy, docs)) = self.copy.as_mut() {
                copy(&self.dir, self.shard, docs)?;
                docs.clear();
            }
            self.shard += 1;
            self.in_shard = 0;
        }
        Ok(())
    }

    /// Closes the last shard; returns the number of documents written.
    ///
    /// # Errors
    /// On an I/O failure.
    pub fn finish(mut self) -> Result<usize> {
        self.close_shard()?;
        Ok(self.docs)
    }
}

/// The shard files of a dataset directory, in order.
///
/// # Errors
/// When the directory cannot be listed.
pub fn shard_paths(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(std::result::Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(".jsonl.zst"))
        })
        .collect();
    paths.sort();
    Ok(paths)
}

/// Streams every document of a dataset directory, in shard order.
///
/// # Errors
/// When a shard cannot be opened; a record that fails to parse is an error naming shard and line (shards
/// are written by Strata, so a bad line means corruption, not bad user input).
pub fn read_dataset(dir: &Path) -> Result<impl Iterator<Item = Result<Doc>>> {
    Ok(read_shards(shard_paths(dir)?))
}

/// Streams every document of the given shard files, in order.
pub fn read_shards(shards: Vec<PathBuf>) -> impl Iterator<Item = Result<Doc>> {
    shards
        .into_iter()
        .flat_map(|path| -> Box<dyn Iterator<Item = Result<Doc>>> {
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) => return Box::new(std::iter::once(Err(io_err(&path)(e)))),
            };
            let dec = match zstd::Decoder::new(file) {
                Ok(d) => d,
                Err(e) => return Box::new(std::iter::once(Err(io_err(&path)(e)))),
            };
            Box::new(
                BufReader::new(dec)
                    .lines()
                    .enumerate()
                    .map(move |(i, line)| {
                        let line = line.map_err(io_err(&path))?;
                        serde_json::from_str(&line).map_err(|e| RecordsError::Record {
                            path: path.clone(),
                            line: i + 1,
                            reason: e.to_string(),
                        })
                    }),
            )
        })
}

/// A record that could not be used, with where it came from and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QuarantineRecord {
    pub source: String,
    pub line: usize,
    pub reason: String,
    /// The raw content, truncated to 4 KiB so a huge bad line cannot flood the quarantine.
    pub raw: String,
}

/// The quarantine file of an artifact: `quarantine/quarantine.jsonl`, written only if something is quarantined.
pub struct Quarantine {
    path: PathBuf,
    file: Option<strata_store::AtomicFile>,
    pub count: usize,
}

impl Quarantine {
    #[must_use]
    pub fn new(staging: &Path) -> Self {
        Self {
            path: staging.join("quarantine").join("quarantine.jsonl"),
            file: None,
            count: 0,
        }
    }

    /// # Errors
    /// On an I/O failure.
    pub fn add(&mut self, mut rec: QuarantineRecord) -> Result<()> {
        tracing::warn!("quarantined {}:{}: {}", rec.source, rec.line, rec.reason);
        if rec.raw.len() > 4096 {
            let mut end = 4096;
            while !rec.raw.is_char_boundary(end) {
                end -= 1;
            }
            rec.raw.truncate(end);
        }
        if self.file.is_none() {
            self.file = Some(strata_store::AtomicFile::create(&self.path)?);
        }
        if let Some(f) = self.file.as_mut() {
            let mut line = serde_json::to_vec(&rec).map_err(|e| io_err(&self.path)(e.into()))?;
            line.push(b'\n');
            f.write_all(&line).map_err(io_err(&self.path))?;
        }
        self.count += 1;
        Ok(())
    }

    /// # Errors
    /// On an I/O failure.
    pub fn finish(self) -> Result<usize> {
        if let Some(f) = self.file {
            f.commit()?;
        }
        Ok(self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(i: usize) -> Doc {
        Doc {
            id: format!("d{i}"),
            text: format!("text {i}"),
            meta: serde_json::Map::new(),
        }
    }

    #[test]
    fn shards_round_trip_and_roll_over() {
        let d = tempfile::tempdir().unwrap();
        let mut w = ShardWriter::new(d.path(), 3);
        for i in 0..7 {
            w.write(&doc(i)).unwrap();
        }
        assert_eq!(w.finish().unwrap(), 7);
        assert_eq!(shard_paths(d.path()).unwrap().len(), 3); // 3 + 3 + 1
        let back: Vec<Doc> = read_dataset(d.path())
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        assert_eq!(back, (0..7).map(doc).collect::<Vec<_>>());
    }

    #[test]
    fn quarantine_truncates_huge_raw_on_char_boundary() {
        let d = tempfile::tempdir().unwrap();
        let mut q = Quarantine::new(d.path());
        q.add(QuarantineRecord {
            source: "f".into(),
            line: 1,
            reason: "bad".into(),
            raw: "é".repeat(5000),
        })
        .unwrap();
        assert_eq!(q.finish().unwrap(), 1);
        let text = std::fs::read_to_string(d.path().join("quarantine/quarantine.jsonl")).unwrap();
        let rec: QuarantineRecord = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(rec.raw.len(), 4096);
    }
}
