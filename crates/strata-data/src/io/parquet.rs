//! Parquet copies of dataset shards (`part-00000.parquet`, next to `part-00000.jsonl.zst`), for Hugging Face
//! `datasets`, pandas and DuckDB: columns `id`, `text` and `metadata` (the other fields as a JSON object in
//! a string, since they differ from source to source), zstd-compressed.

use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, StringArray};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use strata_records::{io_err, Doc, Result};

/// Writes `docs` as one Parquet file at `path`, atomically.
///
/// # Errors
/// On an I/O or encoding failure.
pub fn write_parquet(path: &Path, docs: &[Doc]) -> Result<()> {
    let err = |e: parquet::errors::ParquetError| io_err(path)(std::io::Error::other(e));
    let ids: ArrayRef = Arc::new(StringArray::from_iter_values(
        docs.iter().map(|d| d.id.as_str()),
    ));
    let texts: ArrayRef = Arc::new(StringArray::from_iter_values(
        docs.iter().map(|d| d.text.as_str()),
    ));
    let metas: ArrayRef =
        Arc::new(StringArray::from_iter_values(docs.iter().map(|d| {
            serde_json::to_string(&d.meta).unwrap_or_else(|_| "{}".into())
        })));
    let batch = RecordBatch::try_from_iter([("id", ids), ("text", texts), ("metadata", metas)])
        .map_err(|e| io_err(path)(std::io::Error::other(e)))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).map_err(err)?))
        .build();
    let file = strata_store::AtomicFile::create(path)?;
    let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(err)?;
    w.write(&batch).map_err(err)?;
    let file = w.into_inner().map_err(err)?;
    file.commit()?;
    Ok(())
}

/// A [`strata_records::ShardCopy`] that writes each closed shard as `part-00000.parquet` beside its jsonl,
/// when `on`.
#[must_use]
pub fn parquet_copy(on: bool) -> Option<strata_records::ShardCopy> {
    on.then(|| -> strata_records::ShardCopy {
        Box::new(|dir: &Path, shard: usize, docs: &[Doc]| {
            write_parquet(&dir.join(format!("part-{shard:05}.parquet")), docs)
        })
    })
}
