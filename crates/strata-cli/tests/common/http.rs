//! A tiny HTTP/1.1 server on loopback for the fetching tests.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub type Log = Arc<Mutex<Vec<(String, Instant)>>>;

/// A tiny HTTP/1.1 server: one response per connection, chosen by `respond(path, times_seen)`.
pub fn serve(respond: fn(&str, usize) -> (u16, &'static str, String, u64)) -> (String, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let log: Log = Arc::default();
    let seen = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                reader.read_line(&mut request).unwrap();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
                        break;
                    }
                }
                let path = request.split(' ').nth(1).unwrap_or("/").to_string();
                let n = {
                    let mut l = seen.lock().unwrap();
                    l.push((path.clone(), Instant::now()));
                    l.iter().filter(|(p, _)| *p == path).count()
                };
                let (status, ctype, body, sleep_ms) = respond(&path, n);
                std::thread::sleep(Duration::from_millis(sleep_ms));
                let head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(body.as_bytes());
            });
        }
    });
    (addr, log)
}

pub fn article(topic: &str) -> String {
    let p = format!(
        "The {topic} was examined with a curvilinear probe. Its size is within normal limits and its \
         echotexture is homogeneous, with no focal lesion, no calcification and no free fluid around it."
    );
    format!(
        "<html><head><title>{topic}</title></head><body><nav><a href=\"/\">Home</a> <a href=\"/x\">Menu</a></nav>\
         <article><p>{p}</p><p>{p}</p><p>{p}</p></article><footer>Contact us</footer></body></html>"
    )
}
