//! Web pages: HTML files and WARC archives (`.warc`, `.warc.gz`, as Common Crawl publishes them). The main
//! content of each page is extracted with Mozilla Readability's algorithm (`dom_smoothie`): navigation,
//! menus, footers and other boilerplate are dropped, paragraphs kept.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde_json::{Map, Value};

use crate::io::{Quarantine, QuarantineRecord};
use crate::{io_err, Doc, Result};

/// The main text of an HTML page and its title, or why none was found.
///
/// # Errors
/// A page without readable content (an empty page, a frameset, a page of links only).
pub fn main_content(
    html: &str,
    url: Option<&str>,
) -> std::result::Result<(String, String), String> {
    let cfg = dom_smoothie::Config {
        text_mode: dom_smoothie::TextMode::Formatted,
        ..Default::default()
    };
    let mut r = dom_smoothie::Readability::new(html, url, Some(cfg))
        .map_err(|e| format!("not parseable as HTML: {e}"))?;
    let article = r
        .parse()
        .map_err(|e| format!("no main content found: {e}"))?;
    let text = tidy(&article.text_content);
    if text.is_empty() {
        return Err("no main content found: the page has no text".into());
    }
    Ok((text, article.title.trim().to_string()))
}

/// Trims each line and collapses runs of blank lines into one.
fn tidy(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank = 0;
    for line in text.lines().map(str::trim) {
        if line.is_empty() {
            blank += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank > 0 { "\n\n" } else { "\n" });
        }
        out.push_str(line);
        blank = 0;
    }
    out
}

fn quarantined(source: &str, line: usize, reason: String) -> QuarantineRecord {
    QuarantineRecord {
        source: source.to_string(),
        line,
        reason,
        raw: String::new(),
    }
}

/// Reads one HTML file as one document (its main content), with the page title as metadata.
pub(crate) fn read_html(
    path: &Path,
    quarantine: &mut Quarantine,
    emit: &mut dyn FnMut(Doc) -> Result<()>,
) -> Result<()> {
    let source = path.display().to_string();
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let html = String::from_utf8_lossy(&bytes);
    match main_content(&html, None) {
        Ok((text, title)) => {
            let mut meta = Map::new();
            meta.insert("source".into(), Value::String(source.clone()));
            if !title.is_empty() {
                meta.insert("title".into(), Value::String(title));
            }
            emit(Doc {
                id: format!("{source}:0"),
                text,
                meta,
            })
        }
        Err(reason) => super::skip_rest(quarantine, &source, 0, reason),
    }
}

/// Reads the `response` records of a WARC file whose payload is an HTML page with status 200; each page's
/// main content is a document, with `url`, `warc_record_id`, `warc_date` and `title` as metadata. `line` in
/// the quarantine is the record's number in the file (1-based).
pub(crate) fn read_warc(
    path: &Path,
    gzipped: bool,
    quarantine: &mut Quarantine,
    emit: &mut dyn FnMut(Doc) -> Result<()>,
) -> Result<()> {
    let source = path.display().to_string();
    let file = File::open(path).map_err(io_err(path))?;
    let reader: Box<dyn BufRead> = if gzipped {
        Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(file)))
    } else {
        Box::new(BufReader::new(file))
    };
    let mut n = 0usize;
    for rec in warc::WarcReader::new(reader).iter_records() {
        n += 1;
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                return super::skip_rest(
                    quarantine,
                    &source,
                    n,
                    format!("malformed WARC record, rest of file skipped: {e}"),
                );
            }
        };
        if rec.warc_type() != &warc::RecordType::Response {
            continue;
        }
        let url = rec
            .header(warc::WarcHeader::TargetURI)
            .map(|u| u.to_string())
            .unwrap_or_default();
        let page = match http_html(rec.body()) {
            Ok(Some(page)) => page,
            Ok(None) => continue,
            Err(reason) => {
                quarantine.add(quarantined(&source, n, format!("{url}: {reason}")))?;
                continue;
            }
        };
        match main_content(&page, (!url.is_empty()).then_some(url.as_str())) {
            Ok((text, title)) => {
                let mut meta = Map::new();
                meta.insert("source".into(), Value::String(source.clone()));
                meta.insert("url".into(), Value::String(url));
                meta.insert(
                    "warc_record_id".into(),
                    Value::String(rec.warc_id().to_string()),
                );
                meta.insert("warc_date".into(), Value::String(rec.date().to_rfc3339()));
                if !title.is_empty() {
                    meta.insert("title".into(), Value::String(title));
                }
                emit(Doc {
                    id: format!("{source}:{n}"),
                    text,
                    meta,
                })?;
            }
            Err(reason) => quarantine.add(quarantined(&source, n, format!("{url}: {reason}")))?,
        }
    }
    Ok(())
}

/// The HTML page of an HTTP response (status line, headers, body), None when the response is not a 200 HTML
/// page (redirects, images, robots.txt are skipped, not errors).
fn http_html(block: &[u8]) -> std::result::Result<Option<String>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 96];
    let mut resp = httparse::Response::new(&mut headers);
    let body_at = match resp.parse(block) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err("truncated HTTP headers".into()),
        Err(e) => return Err(format!("malformed HTTP response: {e}")),
    };
    if resp.code != Some(200) {
        return Ok(None);
    }
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
    };
    if !header("content-type").is_some_and(|t| t.contains("html")) {
        return Ok(None);
    }
    let body = &block[body_at..];
    match header("content-encoding").as_deref() {
        Some("gzip" | "x-gzip") => {
            let mut out = Vec::new();
            flate2::read::MultiGzDecoder::new(body)
                .read_to_end(&mut out)
                .map_err(|e| format!("bad gzip body: {e}"))?;
            Ok(Some(String::from_utf8_lossy(&out).into_owned()))
        }
        Some("identity") | None => Ok(Some(String::from_utf8_lossy(body).into_owned())),
        Some(other) => Err(format!("unsupported content-encoding {other:?}")),
    }
}
