//! Fetching a `.urls` list from servers on loopback: robots.txt obeyed, one request at a time per host with
//! the configured pause, retries on 5xx, size/type/time limits, every outcome logged, documents in list order.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::http::{article, serve, Log};

use serde_json::Value;
use strata_data::acquire::{acquire, AcquireConfig, FetchConfig};
use strata_store::Store;

fn host_a(path: &str, n: usize) -> (u16, &'static str, String, u64) {
    match path {
        "/robots.txt" => (
            200,
            "text/plain",
            "User-agent: *\nDisallow: /private\n".into(),
            0,
        ),
        "/liver" | "/kidney" => (200, "text/html; charset=utf-8", article(&path[1..]), 0),
        "/flaky" if n == 1 => (503, "text/plain", "busy".into(), 0),
        "/flaky" => (200, "text/html", article("spleen"), 0),
        "/notes.txt" => (200, "text/plain", "plain clinical note text".into(), 0),
        "/big" => (200, "text/html", "x".repeat(5000), 0),
        "/logo.png" => (200, "image/png", "PNG".into(), 0),
        "/slow" => (200, "text/html", article("slow"), 1500),
        _ => (404, "text/plain", "not found".into(), 0),
    }
}

fn host_b(path: &str, _: usize) -> (u16, &'static str, String, u64) {
    match path {
        "/robots.txt" => (500, "text/plain", "down".into(), 0),
        _ => (200, "text/html", article("bladder"), 0),
    }
}

#[test]
fn url_list_is_fetched_politely_with_every_outcome_recorded() {
    let (a, log_a) = serve(host_a);
    let (b, log_b) = serve(host_b);
    let d = tempfile::tempdir().unwrap();
    let list = d.path().join("pages.urls");
    let urls = [
        format!("http://{a}/liver"),
        format!("http://{a}/private/record"),
        format!("http://{b}/bladder"),
        format!("http://{a}/flaky"),
        format!("http://{a}/missing"),
        format!("http://{a}/big"),
        format!("http://{a}/logo.png"),
        format!("http://{a}/slow"),
        "ftp://example.org/file".to_string(),
        format!("http://{a}/notes.txt"),
        format!("http://{a}/kidney"),
    ];
    std::fs::write(&list, format!("# test pages\n\n{}\n", urls.join("\n"))).unwrap();
    let cfg = AcquireConfig {
        inputs: vec![list.display().to_string()],
        text_field: "text".into(),
        docs_per_shard: 100,
        fetch: FetchConfig {
            per_host_delay_ms: 200,
            concurrency: 4,
            timeout_ms: 700,
            retries: 1,
            backoff_ms: 100,
            max_bytes: 2000,
            ..FetchConfig::default()
        },
    };
    let store = Store::open(d.path().join("store")).unwrap();
    let r = acquire(&store, "web", &cfg, "test").unwrap();
    let ds = d.path().join("store/datasets/web");

    // documents in list order, with their URLs
    let docs: Vec<strata_data::Doc> = strata_data::io::read_dataset(&ds)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let got: Vec<&str> = docs
        .iter()
        .map(|d| d.meta["url"].as_str().unwrap())
        .collect();
    assert_eq!(
        got,
        vec![
            urls[0].as_str(),
            urls[3].as_str(),
            urls[9].as_str(),
            urls[10].as_str()
        ]
    );
    assert!(docs[0].text.contains("curvilinear probe") && !docs[0].text.contains("Menu"));
    assert_eq!(docs[2].text, "plain clinical note text");
    assert_eq!(docs[0].id, format!("{}:3", list.display()));

    // every outcome logged, in list order
    let outcomes: Vec<Value> = std::fs::read_to_string(ds.join("fetch_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = outcomes
        .iter()
        .map(|o| o["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        vec![
            "ok",
            "robots_disallowed",
            "robots_disallowed",
            "ok",
            "http_error",
            "too_large",
            "content_type",
            "network_error",
            "bad_url",
            "ok",
            "ok"
        ]
    );
    assert_eq!(outcomes[3]["attempts"], 2, "503 then 200");
    assert_eq!(outcomes[4]["status"], 404);
    assert_eq!(outcomes[4]["attempts"], 1, "a 404 is not retried");
    assert_eq!(outcomes[7]["attempts"], 2, "a timeout is retried once");
    assert!(outcomes[2]["detail"].as_str().unwrap().contains("HTTP 500"));
    assert_eq!(r.manifest.counts["urls"], 11);
    assert_eq!(r.manifest.counts["urls_fetched"], 4);
    assert_eq!(r.manifest.counts["urls_failed"], 7);
    assert_eq!(r.manifest.counts["quarantined"], 7);

    assert_polite(&log_a, &log_b);
}

/// robots.txt read first on each host, disallowed paths never requested, requests to a host spaced by the
/// configured pause.
fn assert_polite(log_a: &Log, log_b: &Log) {
    // robots.txt was read first on each host; disallowed paths were never requested
    let a_log = log_a.lock().unwrap().clone();
    assert_eq!(a_log[0].0, "/robots.txt");
    assert!(a_log.iter().all(|(p, _)| !p.starts_with("/private")));
    let b_log = log_b.lock().unwrap().clone();
    assert_eq!(
        b_log.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(),
        vec!["/robots.txt"]
    );
    // one request at a time per host, the configured pause (200 ms) apart. The server stamps a request when
    // its thread gets to it: on a loaded machine a late stamp shortens the next gap by tens of ms (seen:
    // 172 ms), so the bound is 150 ms — a client that did not pause would show gaps of a few ms.
    for w in a_log.windows(2) {
        let gap = w[1].1.duration_since(w[0].1);
        assert!(
            gap >= Duration::from_millis(150),
            "{} then {} after {gap:?}",
            w[0].0,
            w[1].0
        );
    }
}
