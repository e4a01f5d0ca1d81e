//! `acquire` on each source format: CSV/TSV, Parquet, jsonl.gz, HTML, WARC (plain and gzip). Every good
//! record becomes a document with its metadata; every bad one is quarantined with its file, line and reason.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::Path;

use serde_json::Value;
use strata_data::acquire::{acquire, AcquireConfig};
use strata_data::Doc;
use strata_store::Store;

fn config(inputs: &[&Path], text_field: &str) -> AcquireConfig {
    AcquireConfig {
        inputs: inputs.iter().map(|p| p.display().to_string()).collect(),
        text_field: text_field.into(),
        docs_per_shard: 1000,
        fetch: strata_data::acquire::FetchConfig::default(),
    }
}

/// Runs acquire into a fresh store; returns the documents and the quarantine records.
fn run(dir: &Path, cfg: &AcquireConfig) -> (Vec<Doc>, Vec<Value>) {
    let store = Store::open(dir.join("store")).unwrap();
    acquire(&store, "raw", cfg, "test").unwrap();
    let ds = dir.join("store/datasets/raw");
    let docs = strata_data::io::read_dataset(&ds)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let q = std::fs::read_to_string(ds.join("quarantine/quarantine.jsonl")).unwrap_or_default();
    let recs = q
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (docs, recs)
}

fn reasons(recs: &[Value]) -> Vec<(u64, String)> {
    recs.iter()
        .map(|r| {
            (
                r["line"].as_u64().unwrap(),
                r["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn csv_rows_with_quotes_and_newlines_bad_rows_quarantined_by_line() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("notes.csv");
    let mut body = b"id,note,ward\n1,\"Liver normal, spleen normal.\",A\n2,\"Two lines:\nfirst, then \"\"second\"\"\",B\n3,too,many,fields\n".to_vec();
    body.extend_from_slice(b"4,bad \xff byte,C\n5,,D\n6,last good row,E\n");
    std::fs::write(&path, body).unwrap();
    let (docs, recs) = run(d.path(), &config(&[&path], "note"));
    let texts: Vec<&str> = docs.iter().map(|d| d.text.as_str()).collect();
    assert_eq!(
        texts,
        vec![
            "Liver normal, spleen normal.",
            "Two lines:\nfirst, then \"second\"",
            "last good row"
        ]
    );
    // an `id` column is kept as `source_id` (`id` is the document's own id)
    assert_eq!(docs[0].meta["source_id"], "1");
    assert_eq!(docs[0].meta["ward"], "A");
    assert!(docs[2].id.ends_with("notes.csv:8"), "{}", docs[2].id);
    let r = reasons(&recs);
    assert_eq!(
        r.iter().map(|x| x.0).collect::<Vec<_>>(),
        vec![5, 6, 7],
        "{r:?}"
    );
    assert!(r[0].1.starts_with("bad row"), "{r:?}");
    assert!(r[1].1.contains("not valid UTF-8"), "{r:?}");
    assert!(r[2].1.contains("empty column \"note\""), "{r:?}");

    // a table without the column is quarantined whole, naming the columns it has
    let tsv = d.path().join("other.tsv");
    std::fs::write(&tsv, "a\tb\nx\ty\n").unwrap();
    let (docs, recs) = run(&d.path().join("2"), &config(&[&tsv], "note"));
    assert!(docs.is_empty());
    assert_eq!(reasons(&recs)[0].1, "no column \"note\" (columns: a, b)");
    let tsv = d.path().join("ok.tsv");
    std::fs::write(&tsv, "note\tn\nfirst note\t1\nsecond, with comma\t2\n").unwrap();
    let (docs, _) = run(&d.path().join("3"), &config(&[&tsv], "note"));
    assert_eq!(docs[1].text, "second, with comma");
}

#[test]
fn parquet_rows_metadata_nulls_and_a_corrupt_file() {
    use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
    use std::sync::Arc;
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("train.parquet");
    let text: ArrayRef = Arc::new(StringArray::from(vec![
        Some("first report"),
        None,
        Some("third report"),
    ]));
    let n: ArrayRef = Arc::new(Int64Array::from(vec![10, 20, 30]));
    let batch = RecordBatch::try_from_iter([("text", text), ("n", n)]).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&path).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let bad = d.path().join("broken.parquet");
    std::fs::write(&bad, b"PAR1 this is not parquet").unwrap();
    let (docs, recs) = run(d.path(), &config(&[&path, &bad], "text"));
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[1].text, "third report");
    assert_eq!(docs[1].meta["n"], 30);
    assert!(docs[1].id.ends_with("train.parquet:3"));
    let r = reasons(&recs);
    assert!(
        r.iter()
            .any(|x| x.0 == 0 && x.1.starts_with("not a readable Parquet file: ")),
        "{r:?}"
    );
    assert!(
        r.iter().any(|x| x.0 == 2 && x.1.contains("null or empty")),
        "{r:?}"
    );
}

#[test]
fn jsonl_gz_is_read() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("part.jsonl.gz");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(b"{\"text\": \"one\"}\n{\"text\": \"two\", \"k\": 1}\n")
        .unwrap();
    std::fs::write(&path, gz.finish().unwrap()).unwrap();
    let (docs, recs) = run(d.path(), &config(&[&path], "text"));
    assert_eq!(
        docs.iter().map(|d| d.text.as_str()).collect::<Vec<_>>(),
        vec!["one", "two"]
    );
    assert_eq!(docs[1].meta["k"], 1);
    assert!(recs.is_empty());
}

const ARTICLE: &str =
    "The portal vein is patent with hepatopetal flow. The liver measures 14 cm in the \
    midclavicular line and has a homogeneous echotexture without focal lesions. The gallbladder is \
    thin-walled and contains no stones; there is no pericholecystic fluid.";

fn page(title: &str) -> String {
    format!(
        "<!doctype html><html><head><title>{title}</title></head><body>\
         <nav><ul><li><a href=\"/\">Home</a></li><li><a href=\"/about\">About us</a></li>\
         <li><a href=\"/contact\">Contact</a></li></ul></nav>\
         <div class=\"sidebar\"><a href=\"/x\">Related link one</a> <a href=\"/y\">Related link two</a></div>\
         <article><h1>{title}</h1><p>{ARTICLE}</p><p>{ARTICLE}</p><p>The spleen is normal in size.</p></article>\
         <footer>Copyright 2026 Example Hospital. All rights reserved. Privacy policy.</footer>\
         </body></html>"
    )
}

#[test]
fn html_main_content_without_boilerplate() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("report.html");
    std::fs::write(&path, page("Abdominal ultrasound")).unwrap();
    let empty = d.path().join("empty.html");
    std::fs::write(&empty, "<html><body></body></html>").unwrap();
    let (docs, recs) = run(d.path(), &config(&[&path, &empty], "text"));
    assert_eq!(docs.len(), 1);
    let t = &docs[0].text;
    assert!(
        t.contains("hepatopetal flow") && t.contains("The spleen is normal in size."),
        "{t}"
    );
    for boiler in ["About us", "Related link", "Copyright", "Privacy policy"] {
        assert!(!t.contains(boiler), "{boiler:?} left in {t}");
    }
    assert_eq!(docs[0].meta["title"], "Abdominal ultrasound");
    assert_eq!(recs.len(), 1);
    assert!(
        recs[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("no main content"),
        "{recs:?}"
    );
}

/// One WARC record, written by hand as the WARC 1.0 standard lays it out.
fn warc_record(kind: &str, uri: &str, block: &[u8], n: usize) -> Vec<u8> {
    let mut r = format!(
        "WARC/1.0\r\nWARC-Type: {kind}\r\nWARC-Target-URI: {uri}\r\nWARC-Date: 2026-01-02T03:04:05Z\r\n\
         WARC-Record-ID: <urn:uuid:00000000-0000-4000-8000-{n:012}>\r\n\
         Content-Type: application/http; msgtype={kind}\r\nContent-Length: {}\r\n\r\n",
        block.len()
    )
    .into_bytes();
    r.extend_from_slice(block);
    r.extend_from_slice(b"\r\n\r\n");
    r
}

fn http(status: &str, ctype: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn warc_responses_become_documents_with_their_urls_plain_and_gzip() {
    let records = [
        warc_record(
            "request",
            "http://a.example/1",
            b"GET /1 HTTP/1.1\r\nHost: a.example\r\n\r\n",
            1,
        ),
        warc_record(
            "response",
            "http://a.example/1",
            &http("200 OK", "text/html; charset=utf-8", &page("First")),
            2,
        ),
        warc_record(
            "response",
            "http://a.example/gone",
            &http("404 Not Found", "text/html", "<p>no</p>"),
            3,
        ),
        warc_record(
            "response",
            "http://a.example/logo.png",
            &http("200 OK", "image/png", "PNG"),
            4,
        ),
        warc_record(
            "response",
            "http://b.example/2",
            &http("200 OK", "text/html", &page("Second")),
            5,
        ),
    ];
    let d = tempfile::tempdir().unwrap();
    let plain = d.path().join("crawl.warc");
    std::fs::write(&plain, records.concat()).unwrap();
    // Common Crawl's layout: one gzip member per record
    let gz = d.path().join("crawl.warc.gz");
    let mut members = Vec::new();
    for r in &records {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(r).unwrap();
        members.extend(e.finish().unwrap());
    }
    std::fs::write(&gz, members).unwrap();
    for (i, path) in [&plain, &gz].into_iter().enumerate() {
        let (docs, recs) = run(&d.path().join(i.to_string()), &config(&[path], "text"));
        assert!(recs.is_empty(), "{recs:?}");
        assert_eq!(docs.len(), 2, "{}", path.display());
        assert_eq!(docs[0].meta["url"], "http://a.example/1");
        assert_eq!(docs[1].meta["url"], "http://b.example/2");
        assert_eq!(docs[1].meta["title"], "Second");
        assert!(docs[0].text.contains("hepatopetal flow") && !docs[0].text.contains("About us"));
        assert!(docs[0].meta["warc_date"]
            .as_str()
            .unwrap()
            .starts_with("2026-01-02T03:04:05"));
    }
    // a cut-off archive: the complete records before the cut are kept, the break is quarantined
    let cut = d.path().join("cut.warc");
    let all = records.concat();
    std::fs::write(&cut, &all[..all.len() - 100]).unwrap();
    let (docs, recs) = run(&d.path().join("cut"), &config(&[&cut], "text"));
    assert_eq!(docs.len(), 1);
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0]["line"], 5);
}
