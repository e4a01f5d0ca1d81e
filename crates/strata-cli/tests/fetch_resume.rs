//! `kill -9` in the middle of fetching a URL list, then the same command: the pages fetched before the kill
//! are not fetched again, and the dataset is byte-identical to an uninterrupted run's.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use common::{fresh_dir, run, strata};

/// Serves `/robots.txt` as 404 (everything allowed) and `/page-N` as an article after 150 ms; returns the
/// address and the paths requested, in order.
fn serve() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                let _ = reader.read_line(&mut request);
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                let path = request.split(' ').nth(1).unwrap_or("/").to_string();
                seen.lock().unwrap().push(path.clone());
                let (status, body) = if path == "/robots.txt" {
                    (404, "no robots here".to_string())
                } else {
                    std::thread::sleep(std::time::Duration::from_millis(150));
                    let p = format!(
                        "Page {path}: the liver is of normal size and echotexture, the portal vein is patent \
                         with hepatopetal flow, and the gallbladder is thin-walled without stones."
                    );
                    (200, format!("<html><head><title>{path}</title></head><body><article><p>{p}</p><p>{p}</p><p>{p}</p></article></body></html>"))
                };
                let head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(body.as_bytes());
            });
        }
    });
    (addr, log)
}

fn pages(log: &Mutex<Vec<String>>) -> usize {
    log.lock()
        .unwrap()
        .iter()
        .filter(|p| p.starts_with("/page"))
        .count()
}

#[test]
fn kill_9_while_fetching_then_the_same_command_resumes_without_refetching() {
    let (addr, log) = serve();
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
    let files = |d: &std::path::Path| -> Vec<(String, Vec<u8>)> {
        let ds = d.join("datasets/web");
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(&ds)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.path().is_file() && e.file_name() != "manifest.json")
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let (a, b) = (files(&killed), files(&whole));
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
