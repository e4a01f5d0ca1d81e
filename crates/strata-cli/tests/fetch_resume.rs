//! `kill -9` in the middle of fetching a URL list, then the same command: the pages fetched before the kill
//! are not fetched again, and the dataset is byte-identical to an uninterrupted run's.

#![allow(clippy::unwrap_used)]

mod common;

use common::http::{article, serve, Log};
use common::{dataset_files, fresh_dir, run, strata};

/// robots.txt is 404 (everything allowed); each page is an article, served after 150 ms.
fn slow_pages(path: &str, _: usize) -> (u16, &'static str, String, u64) {
    if path == "/robots.txt" {
        (404, "text/plain", "no robots here".into(), 0)
    } else {
        (200, "text/html", article(&path[1..]), 150)
    }
}

fn pages(log: &Log) -> usize {
    log.lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| p.starts_with("/page"))
        .count()
}

#[test]
fn kill_9_while_fetching_then_the_same_command_resumes_without_refetching() {
    let (addr, log) = serve(slow_pages);
    let dir = fresh_dir("fetch-resume");
    let list = dir.join("pages.urls");
    let urls: Vec<String> = (0..12).map(|i| format!("http://{addr}/page-{i}")).collect();
    std::fs::write(&list, urls.join("\n") + "\n").unwrap();
    let (killed, whole) = (dir.join("killed"), dir.join("whole"));
    let args = |store: &std::path::Path| {
        let mut c = strata(store);
        c.args(["acquire", "--name", "web", "--delay-ms", "20", "--input"])
            .arg(&list);
        c
    };
    let mut child = args(&killed)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while pages(&log) < 5 && t0.elapsed() < std::time::Duration::from_mins(1) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = pages(&log);
    assert!(
        (5..12).contains(&before),
        "{before} pages fetched before the kill"
    );
    let r = run(&mut args(&killed));
    assert!(r.ok, "{}", r.stderr);
    let resumed = pages(&log) - before;
    // the pages finished before the kill are not fetched again (the one in flight may be)
    assert!(
        resumed <= 12 - before + 1,
        "{before} before the kill, {resumed} after"
    );
    let r = run(&mut args(&whole));
    assert!(r.ok, "{}", r.stderr);
    let (a, b) = (
        dataset_files(&killed.join("datasets/web")),
        dataset_files(&whole.join("datasets/web")),
    );
    assert!(a.iter().any(|(n, _)| n == "fetch_log.jsonl"));
    assert_eq!(
        a, b,
        "the resumed run's files differ from an uninterrupted run's"
    );
    // the cache is gone once the dataset is published
    assert!(std::fs::read_dir(killed.join("work"))
        .unwrap()
        .next()
        .is_none());
}
