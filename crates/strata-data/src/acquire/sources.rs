//! Resolving inputs to files and reading each file format into documents.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{tabular, web};
use crate::io::{Quarantine, QuarantineRecord};
use crate::{io_err, DataError, Doc, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SourceFormat {
    /// The whole file is one document.
    Text,
    /// One JSON object per line.
    Jsonl,
    /// zstd-compressed jsonl.
    JsonlZst,
    /// gzip-compressed jsonl.
    JsonlGz,
    /// Comma-separated values with a header row.
    Csv,
    /// Tab-separated values with a header row.
    Tsv,
    /// Apache Parquet.
    Parquet,
    /// An HTML page: its main content is the document.
    Html,
    /// A WARC archive of HTTP responses.
    Warc,
    /// A gzip-compressed WARC archive (one gzip member per record, as Common Crawl writes them).
    WarcGz,
    /// A list of URLs to fetch (`.urls`: one per line, `#` comments).
    UrlList,
}

impl SourceFormat {
    // The name is lowercased first, so the suffix checks are case-insensitive.
    #[allow(clippy::case_sensitive_file_extension_comparisons)]
    fn of(path: &Path) -> Option<Self> {
        let name = path.file_name()?.to_string_lossy().to_lowercase();
        if name.ends_with(".jsonl.zst") || name.ends_with(".json.zst") {
            Some(Self::JsonlZst)
        } else if name.ends_with(".jsonl.gz") || name.ends_with(".json.gz") {
            Some(Self::JsonlGz)
        } else if name.ends_with(".jsonl") || name.ends_with(".ndjson") {
            Some(Self::Jsonl)
        } else if name.ends_with(".csv") {
            Some(Self::Csv)
        } else if name.ends_with(".tsv") {
            Some(Self::Tsv)
        } else if name.ends_with(".parquet") {
            Some(Self::Parquet)
        } else if name.ends_with(".html") || name.ends_with(".htm") {
            Some(Self::Html)
        } else if name.ends_with(".warc") {
            Some(Self::Warc)
        } else if name.ends_with(".warc.gz") {
            Some(Self::WarcGz)
        } else if name.ends_with(".urls") {
            Some(Self::UrlList)
        } else if name.ends_with(".txt") || name.ends_with(".md") || name.ends_with(".text") {
            Some(Self::Text)
        } else {
            None
        }
    }
}

/// Expands files, folders (recursively, known extensions only) and glob patterns into a sorted list of files.
///
/// # Errors
/// [`DataError::Missing`] for a path that does not exist, [`DataError::NoFiles`] for an input that matches no
/// readable file.
pub fn resolve_inputs(inputs: &[String]) -> Result<Vec<(PathBuf, SourceFormat)>> {
    let mut out = Vec::new();
    for input in inputs {
        let before = out.len();
        if input.contains(['*', '?', '[']) {
            let paths = glob::glob(input).map_err(|e| DataError::Glob {
                pattern: input.clone(),
                reason: e.to_string(),
            })?;
            for p in paths.filter_map(std::result::Result::ok) {
                if let (true, Some(f)) = (p.is_file(), SourceFormat::of(&p)) {
                    out.push((p, f));
                }
            }
        } else {
            let path = PathBuf::from(input);
            if path.is_dir() {
                walk(&path, &mut out)?;
            } else if path.is_file() {
                // An explicitly named file is read even with an unknown extension: as plain text.
                let f = SourceFormat::of(&path).unwrap_or(SourceFormat::Text);
                out.push((path, f));
            } else {
                return Err(DataError::Missing(path));
            }
        }
        if out.len() == before {
            return Err(DataError::NoFiles(input.clone()));
        }
        out[before..].sort();
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<(PathBuf, SourceFormat)>) -> Result<()> {
    for p in strata_records::files_under(dir, true)? {
        if let Some(f) = SourceFormat::of(&p) {
            out.push((p, f));
        }
    }
    Ok(())
}

/// Reads one file, calling `emit` for each good document and quarantining each bad record.
pub(crate) fn read_file(
    path: &Path,
    format: SourceFormat,
    text_field: &str,
    quarantine: &mut Quarantine,
    emit: &mut dyn FnMut(Doc) -> Result<()>,
) -> Result<()> {
    let source = path.display().to_string();
    let file = File::open(path).map_err(io_err(path))?;
    match format {
        SourceFormat::Text => {
            let mut bytes = Vec::new();
            BufReader::new(file)
                .read_to_end(&mut bytes)
                .map_err(io_err(path))?;
            match String::from_utf8(bytes) {
                Ok(text) => {
                    let mut meta = serde_json::Map::new();
                    meta.insert("source".into(), Value::String(source.clone()));
                    emit(Doc {
                        id: format!("{source}:0"),
                        text,
                        meta,
                    })?;
                }
                Err(e) => quarantine.add(QuarantineRecord {
                    source,
                    line: 0,
                    reason: format!(
                        "not valid UTF-8 (first bad byte at offset {})",
                        e.utf8_error().valid_up_to()
                    ),
                    raw: String::from_utf8_lossy(e.as_bytes()).into_owned(),
                })?,
            }
            Ok(())
        }
        SourceFormat::Jsonl => {
            read_lines(BufReader::new(file), &source, text_field, quarantine, emit)
        }
        SourceFormat::JsonlZst => {
            let dec = zstd::Decoder::new(file).map_err(io_err(path))?;
            read_lines(BufReader::new(dec), &source, text_field, quarantine, emit)
        }
        SourceFormat::JsonlGz => {
            let dec = flate2::read::MultiGzDecoder::new(file);
            read_lines(BufReader::new(dec), &source, text_field, quarantine, emit)
        }
        SourceFormat::Csv => tabular::read_csv(path, b',', text_field, quarantine, emit),
        SourceFormat::Tsv => tabular::read_csv(path, b'\t', text_field, quarantine, emit),
        SourceFormat::Parquet => tabular::read_parquet(path, text_field, quarantine, emit),
        SourceFormat::Html => web::read_html(path, quarantine, emit),
        SourceFormat::Warc => web::read_warc(path, false, quarantine, emit),
        SourceFormat::WarcGz => web::read_warc(path, true, quarantine, emit),
        SourceFormat::UrlList => Err(DataError::Record {
            path: path.to_path_buf(),
            line: 0,
            reason: "a URL list is fetched by `acquire`, not read as a file".into(),
        }),
    }
}

fn read_lines(
    mut reader: impl BufRead,
    source: &str,
    text_field: &str,
    quarantine: &mut Quarantine,
    emit: &mut dyn FnMut(Doc) -> Result<()>,
) -> Result<()> {
    let mut buf = Vec::new();
    let mut line_no = 0;
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) => {
                // A truncated or corrupt compressed stream: keep what was read, record the failure.
                return super::skip_rest(
                    quarantine,
                    source,
                    line_no + 1,
                    format!("read error, rest of file skipped: {e}"),
                );
            }
        }
        line_no += 1;
        let raw = String::from_utf8_lossy(&buf);
        if raw.trim().is_empty() {
            continue;
        }
        match parse_record(&buf, text_field) {
            Ok((text, mut meta)) => {
                meta.entry("source")
                    .or_insert_with(|| Value::String(source.to_string()));
                emit(Doc {
                    id: format!("{source}:{line_no}"),
                    text,
                    meta,
                })?;
            }
            Err(reason) => quarantine.add(QuarantineRecord {
                source: source.to_string(),
                line: line_no,
                reason,
                raw: raw.trim_end().to_string(),
            })?,
        }
    }
}

fn parse_record(
    line: &[u8],
    text_field: &str,
) -> std::result::Result<(String, serde_json::Map<String, Value>), String> {
    let text = std::str::from_utf8(line)
        .map_err(|e| format!("not valid UTF-8 at byte {}", e.valid_up_to()))?;
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(mut obj) = value else {
        return Err(format!(
            "expected a JSON object with a {text_field:?} field"
        ));
    };
    match obj.remove(text_field) {
        Some(Value::String(s)) => {
            obj.remove("id");
            Ok((s, obj))
        }
        Some(other) => Err(format!(
            "field {text_field:?} is not a string (found {})",
            kind_of(&other)
        )),
        // a chat record (`{"messages": [{"role", "content"}, …]}`, as SFT data comes): its text, for the
        // filters, dedup and decontamination, is the messages' contents; the messages stay as metadata
        None => match obj.get("messages") {
            Some(Value::Array(msgs)) => {
                let mut parts = Vec::with_capacity(msgs.len());
                for (i, m) in msgs.iter().enumerate() {
                    match (m.get("role"), m.get("content")) {
                        (Some(Value::String(_)), Some(Value::String(c))) => parts.push(c.as_str()),
                        _ => {
                            return Err(format!(
                                "messages[{i}] needs string fields \"role\" and \"content\""
                            ))
                        }
                    }
                }
                let text = parts.join("\n");
                obj.remove("id");
                Ok((text, obj))
            }
            _ => Err(format!("missing field {text_field:?}")),
        },
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write as _;

    #[test]
    fn bad_jsonl_lines_are_quarantined_and_good_ones_kept() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("in.jsonl");
        std::fs::write(&path, "{\"text\": \"good one\"}\nnot json\n\n{\"text\": 5}\n{\"body\": \"x\"}\n[1]\n{\"text\": \"good two\", \"lang\": \"en\"}\n").unwrap();
        let mut q = Quarantine::new(d.path());
        let mut docs = Vec::new();
        read_file(&path, SourceFormat::Jsonl, "text", &mut q, &mut |doc| {
            docs.push(doc);
            Ok(())
        })
        .unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].text, "good two");
        assert_eq!(docs[1].meta["lang"], "en");
        assert!(docs[1].id.ends_with(":7"));
        assert_eq!(q.finish().unwrap(), 4);
        let quarantined =
            std::fs::read_to_string(d.path().join("quarantine/quarantine.jsonl")).unwrap();
        let lines: Vec<QuarantineRecord> = quarantined
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines.iter().map(|r| r.line).collect::<Vec<_>>(),
            vec![2, 4, 5, 6]
        );
        assert!(
            lines[0].reason.starts_with("not JSON"),
            "{}",
            lines[0].reason
        );
        assert_eq!(
            lines[1].reason,
            "field \"text\" is not a string (found a number)"
        );
        assert_eq!(lines[2].reason, "missing field \"text\"");
    }

    #[test]
    fn missing_path_and_empty_glob_are_errors() {
        let err = resolve_inputs(&["/no/such/dir".into()]).unwrap_err();
        assert_eq!(err.to_string(), "input path /no/such/dir does not exist");
        let d = tempfile::tempdir().unwrap();
        let pattern = format!("{}/*.jsonl", d.path().display());
        assert!(matches!(
            resolve_inputs(&[pattern]).unwrap_err(),
            DataError::NoFiles(_)
        ));
    }

    #[test]
    fn invalid_utf8_text_file_is_quarantined() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("bad.txt");
        std::fs::write(&path, b"ok \xff\xfe then").unwrap();
        let mut q = Quarantine::new(d.path());
        let mut n = 0;
        read_file(&path, SourceFormat::Text, "text", &mut q, &mut |_| {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!((n, q.count), (0, 1));
    }

    #[test]
    fn truncated_zst_keeps_complete_lines() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("in.jsonl.zst");
        // zstd decodes whole blocks (<= 128 KiB), so the body must span several blocks: ~1.5 MB
        let mut body = String::new();
        for i in 0..40_000u64 {
            let _ = writeln!(
                body,
                "{{\"text\": \"document {}\"}}",
                i.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            );
        }
        let full = zstd::encode_all(body.as_bytes(), 3).unwrap();
        std::fs::write(&path, &full[..full.len() / 2]).unwrap();
        let mut q = Quarantine::new(d.path());
        let mut n = 0;
        read_file(&path, SourceFormat::JsonlZst, "text", &mut q, &mut |_| {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert!(n > 0 && n < 40_000, "{n}");
        assert_eq!(q.count, 1);
    }
}
