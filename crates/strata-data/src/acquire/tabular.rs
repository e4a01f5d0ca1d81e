//! Tables: CSV (and TSV) files and Parquet files (as written by pandas, pyarrow and Hugging Face `datasets`).
//! One row is one document; the text column is configurable, every other column is kept as metadata.

use std::fs::File;
use std::path::Path;

use arrow_array::{Array, RecordBatch};
use serde_json::{Map, Value};

use crate::io::{Quarantine, QuarantineRecord};
use crate::{io_err, Doc, Result};

/// The metadata key of a column: `id` is the document's own id, so a table's `id` column becomes
/// `source_id`.
fn meta_key(column: &str) -> String {
    if column == "id" {
        "source_id".into()
    } else {
        column.to_string()
    }
}

/// One row as a document: id `<file>:<row>`, the other columns and the source file as metadata.
fn emit_row(
    source: &str,
    row: usize,
    text: String,
    mut meta: Map<String, Value>,
    emit: &mut dyn FnMut(Doc) -> Result<()>,
) -> Result<()> {
    meta.entry("source")
        .or_insert_with(|| Value::String(source.to_string()));
    emit(Doc {
        id: format!("{source}:{row}"),
        text,
        meta,
    })
}

fn line_no(line: u64) -> usize {
    usize::try_from(line).unwrap_or(usize::MAX)
}

fn record(source: &str, line: usize, reason: String, raw: String) -> QuarantineRecord {
    QuarantineRecord {
        source: source.to_string(),
        line,
        reason,
        raw,
    }
}

/// Reads a CSV file (`delimiter` `b','`, or `b'\t'` for TSV) with a header row. A row that is not UTF-8,
/// has the wrong number of fields or an empty text field is quarantined with its line; a file without the
/// text column is quarantined whole.
pub(crate) fn read_csv(
    path: &Path,
    delimiter: u8,
    text_column: &str,
    quarantine: &mut Quarantine,
    emit: &mut dyn FnMut(Doc) -> Result<()>,
) -> Result<()> {
    let source = path.display().to_string();
    let file = File::open(path).map_err(io_err(path))?;
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(false)
        .from_reader(file);
    let headers = match reader.headers() {
        Ok(h) => h.clone(),
        Err(e) => {
            return super::skip_rest(
                quarantine,
                &source,
                1,
                format!("unreadable header row: {e}"),
            );
        }
    };
    let Some(col) = headers.iter().position(|h| h == text_column) else {
        let names: Vec<&str> = headers.iter().collect();
        return super::skip_rest(
            quarantine,
            &source,
            1,
            format!("no column {text_column:?} (columns: {})", names.join(", ")),
        );
    };
    let mut row = csv::ByteRecord::new();
    loop {
        let line = line_no(reader.position().line());
        match reader.read_byte_record(&mut row) {
            Ok(false) => return Ok(()),
            Ok(true) => {}
            Err(e) => {
                let line = e.position().map_or(line, |p| line_no(p.line()));
                if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                    return super::skip_rest(
                        quarantine,
                        &source,
                        line,
                        format!("read error, rest of file skipped: {e}"),
                    );
                }
                quarantine.add(record(
                    &source,
                    line,
                    format!("bad row: {e}"),
                    String::new(),
                ))?;
                continue;
            }
        }
        let line = row.position().map_or(line, |p| line_no(p.line()));
        let raw = || {
            let fields: Vec<String> = row
                .iter()
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .collect();
            fields.join(",")
        };
        let mut meta = Map::new();
        let mut text = None;
        let mut bad = None;
        for (i, (name, field)) in headers.iter().zip(row.iter()).enumerate() {
            match std::str::from_utf8(field) {
                Ok(s) if i == col => text = Some(s.to_string()),
                Ok(s) => {
                    meta.insert(meta_key(name), Value::String(s.to_string()));
                }
                Err(e) => {
                    bad = Some(format!(
                        "column {name:?} is not valid UTF-8 at byte {}",
                        e.valid_up_to()
                    ));
                    break;
                }
            }
        }
        match (bad, text) {
            (Some(reason), _) => quarantine.add(record(&source, line, reason, raw()))?,
            (None, Some(t)) if !t.trim().is_empty() => emit_row(&source, line, t, meta, emit)?,
            (None, _) => quarantine.add(record(
                &source,
                line,
                format!("empty column {text_column:?}"),
                raw(),
            ))?,
        }
    }
}

/// Reads a Parquet file batch by batch. The text column may be `string`, `large_string` or `string_view`;
/// a row whose text is null is quarantined with its row number (1-based, as `line`); scalar columns
/// (strings, integers, floats, booleans) are kept as metadata. A file that is not Parquet or has no such
/// column is quarantined whole.
pub(crate) fn read_parquet(
    path: &Path,
    text_column: &str,
    quarantine: &mut Quarantine,
    emit: &mut dyn FnMut(Doc) -> Result<()>,
) -> Result<()> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let source = path.display().to_string();
    let file = File::open(path).map_err(io_err(path))?;
    let reader = match ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.with_batch_size(1024).build())
    {
        Ok(r) => r,
        Err(e) => {
            return super::skip_rest(
                quarantine,
                &source,
                0,
                format!("not a readable Parquet file: {e}"),
            );
        }
    };
    let mut row_no = 0usize;
    for batch in reader {
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                return super::skip_rest(
                    quarantine,
                    &source,
                    row_no + 1,
                    format!("read error, rest of file skipped: {e}"),
                );
            }
        };
        let Some(col) = batch.schema().index_of(text_column).ok() else {
            let names: Vec<String> = batch
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            return super::skip_rest(
                quarantine,
                &source,
                0,
                format!("no column {text_column:?} (columns: {})", names.join(", ")),
            );
        };
        let texts = match string_column(batch.column(col).as_ref()) {
            Ok(t) => t,
            Err(kind) => {
                return super::skip_rest(
                    quarantine,
                    &source,
                    0,
                    format!("column {text_column:?} holds {kind}, not strings"),
                );
            }
        };
        for (i, text) in texts.into_iter().enumerate() {
            row_no += 1;
            match text {
                Some(t) if !t.trim().is_empty() => {
                    emit_row(&source, row_no, t, row_meta(&batch, i, col), emit)?;
                }
                _ => quarantine.add(record(
                    &source,
                    row_no,
                    format!("null or empty column {text_column:?}"),
                    String::new(),
                ))?,
            }
        }
    }
    Ok(())
}

/// The values of a string column, or the column's type when it is not strings.
fn string_column(a: &dyn Array) -> std::result::Result<Vec<Option<String>>, String> {
    (0..a.len())
        .map(|i| match scalar(a, i) {
            Some(Value::String(s)) => Ok(Some(s)),
            None if a.is_null(i) => Ok(None),
            _ => Err(a.data_type().to_string()),
        })
        .collect()
}

/// Row `i` of a scalar column as JSON: strings, integers, floats and booleans; None for nulls and other types.
fn scalar(a: &dyn Array, i: usize) -> Option<Value> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{
        Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type,
        UInt32Type, UInt64Type, UInt8Type,
    };
    if a.is_null(i) {
        return None;
    }
    // the first primitive type the column is, converted to a JSON number
    macro_rules! primitive {
        ($($t:ty),*) => {
            $(if let Some(x) = a.as_primitive_opt::<$t>() {
                return Some(Value::from(x.value(i)));
            })*
        };
    }
    primitive!(
        Int64Type, Int32Type, Int16Type, Int8Type, UInt64Type, UInt32Type, UInt16Type, UInt8Type
    );
    primitive!(Float64Type);
    if let Some(x) = a.as_primitive_opt::<Float32Type>() {
        return Some(Value::from(f64::from(x.value(i))));
    }
    if let Some(s) = a.as_string_opt::<i32>() {
        Some(s.value(i).into())
    } else if let Some(s) = a.as_string_opt::<i64>() {
        Some(s.value(i).into())
    } else if let Some(s) = a.as_string_view_opt() {
        Some(s.value(i).into())
    } else {
        a.as_boolean_opt().map(|x| x.value(i).into())
    }
}

/// The scalar columns of row `i` other than the text column, as JSON.
fn row_meta(batch: &RecordBatch, i: usize, text_col: usize) -> Map<String, Value> {
    let mut meta = Map::new();
    for (c, field) in batch.schema().fields().iter().enumerate() {
        if c == text_col {
            continue;
        }
        if let Some(v) = scalar(batch.column(c).as_ref(), i) {
            meta.insert(meta_key(field.name()), v);
        }
    }
    meta
}
