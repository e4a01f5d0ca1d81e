//! Polite fetching of a URL list (a `.urls` file: one URL per line, `#` comments). Each host's
//! `robots.txt` is read first and obeyed (RFC 9309: a 4xx robots.txt allows everything, an unreachable,
//! 429 or 5xx one disallows everything; `Crawl-delay` is honoured when longer than ours); one request at a time
//! per host with a delay between them, several hosts at once; timeouts; retries with exponential backoff on
//! network errors, 429 and 5xx (`Retry-After` honoured up to a cap); a size limit and a content-type
//! allow-list. Every URL's outcome is recorded in `fetch_log.jsonl` and failures are quarantined with the
//! list's file and line. Documents come out in the order of the list, whatever order the fetches finish in.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// How to fetch.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FetchConfig {
    /// Sent with every request and matched against robots.txt groups.
    pub user_agent: String,
    /// Pause between two requests to the same host.
    pub per_host_delay_ms: u64,
    /// Hosts fetched at the same time (one request at a time per host).
    pub concurrency: usize,
    /// Limit for one whole request (connect, headers and body).
    pub timeout_ms: u64,
    /// Attempts after the first on a network error, a 429 or a 5xx.
    pub retries: u32,
    /// First backoff; doubled after each failed attempt.
    pub backoff_ms: u64,
    /// Longest `Retry-After` waited for.
    pub max_retry_after_ms: u64,
    /// Bodies larger than this are refused.
    pub max_bytes: u64,
    /// Accepted content types (prefix match on the media type).
    pub content_types: Vec<String>,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            user_agent: concat!("strata/", env!("CARGO_PKG_VERSION"), " (data acquisition)").into(),
            per_host_delay_ms: 1000,
            concurrency: 8,
            timeout_ms: 30_000,
            retries: 3,
            backoff_ms: 1000,
            max_retry_after_ms: 60_000,
            max_bytes: 10 << 20,
            content_types: vec![
                "text/html".into(),
                "application/xhtml+xml".into(),
                "text/plain".into(),
            ],
        }
    }
}

/// What happened to one URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub url: String,
    /// Line of the URL in its list.
    pub line: usize,
    /// `ok`, `robots_disallowed`, `http_error`, `network_error`, `too_large`, `content_type`, `bad_url`,
    /// `no_content`.
    pub outcome: String,
    /// The last HTTP status seen, if any.
    pub status: Option<u16>,
    pub attempts: u32,
    /// Details for anything but `ok`.
    pub detail: String,
}

/// A fetched page: the outcome, and the text with metadata when there is one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fetched {
    pub outcome: Outcome,
    pub doc: Option<(String, Map<String, Value>)>,
}

/// The URLs of a list file with their line numbers; blank lines and `#` comments skipped.
#[must_use]
pub fn parse_list(text: &str) -> Vec<(usize, String)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .map(|(i, l)| (i, l.to_string()))
        .collect()
}

/// The scheme and authority (host, and the port when not the scheme's default) a URL is fetched politely by;
/// None when it is not an http(s) URL with a host. Parsed by the `url` crate (WHATWG rules: case, IDNA,
/// user info and default ports are dealt with as browsers do).
fn host_of(url: &str) -> Option<(String, String)> {
    let u = url::Url::parse(url).ok()?;
    if !matches!(u.scheme(), "http" | "https") {
        return None;
    }
    let host = u.host_str().filter(|h| !h.is_empty())?;
    let authority = match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    Some((u.scheme().to_string(), authority))
}

enum Robots {
    AllowAll,
    DisallowAll(String),
    Rules(Box<texting_robots::Robot>),
}

impl Robots {
    fn allows(&self, url: &str) -> Result<(), String> {
        match self {
            Self::AllowAll => Ok(()),
            Self::DisallowAll(why) => Err(why.clone()),
            Self::Rules(r) if r.allowed(url) => Ok(()),
            Self::Rules(_) => Err("disallowed by robots.txt".into()),
        }
    }
    fn delay(&self) -> Option<Duration> {
        match self {
            Self::Rules(r) => r
                .delay
                .map(|d| Duration::from_secs_f32(d.clamp(0.0, 600.0))),
            _ => None,
        }
    }
}

struct Client {
    agent: ureq::Agent,
    cfg: FetchConfig,
}

/// One response: status, media type, body (None when refused for its type or size), or a network error.
enum Response {
    Got {
        status: u16,
        media: String,
        body: Result<Vec<u8>, (String, String)>,
        retry_after: Option<Duration>,
    },
    Failed(String),
}

impl Client {
    fn new(cfg: &FetchConfig) -> Self {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(cfg.timeout_ms)))
            .http_status_as_error(false)
            .user_agent(cfg.user_agent.as_str())
            .max_redirects(5)
            .build()
            .into();
        Self {
            agent,
            cfg: cfg.clone(),
        }
    }

    fn get(&self, url: &str, check_type: bool) -> Response {
        let mut resp = match self.agent.get(url).call() {
            Ok(r) => r,
            Err(e) => return Response::Failed(e.to_string()),
        };
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let media = header("content-type")
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let retry_after = header("retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let declared = header("content-length").and_then(|v| v.parse::<u64>().ok());
        let body = if check_type
            && status == 200
            && !self
                .cfg
                .content_types
                .iter()
                .any(|t| media.starts_with(t.as_str()))
        {
            Err((
                "content_type".into(),
                format!("content type {media:?} not accepted"),
            ))
        } else if declared.is_some_and(|n| n > self.cfg.max_bytes) {
            Err((
                "too_large".into(),
                format!(
                    "{} bytes declared, limit {}",
                    declared.unwrap_or(0),
                    self.cfg.max_bytes
                ),
            ))
        } else {
            let mut buf = Vec::new();
            let limit = self.cfg.max_bytes;
            match resp
                .body_mut()
                .as_reader()
                .take(limit + 1)
                .read_to_end(&mut buf)
            {
                Ok(_) if buf.len() as u64 > limit => Err((
                    "too_large".into(),
                    format!("body over the limit of {limit} bytes"),
                )),
                Ok(_) => Ok(buf),
                Err(e) => return Response::Failed(format!("reading the body: {e}")),
            }
        };
        Response::Got {
            status,
            media,
            body,
            retry_after,
        }
    }

    fn robots(&self, scheme: &str, host: &str) -> Robots {
        let url = format!("{scheme}://{host}/robots.txt");
        match self.get(&url, false) {
            Response::Got {
                status: 200,
                body: Ok(body),
                ..
            } => match texting_robots::Robot::new(&self.cfg.user_agent, &body) {
                Ok(r) => Robots::Rules(Box::new(r)),
                Err(_) => Robots::AllowAll,
            },
            Response::Got { status, .. } if (400..500).contains(&status) && status != 429 => {
                Robots::AllowAll
            }
            Response::Got { status, .. } => {
                Robots::DisallowAll(format!("robots.txt answered HTTP {status}: host skipped"))
            }
            Response::Failed(e) => {
                Robots::DisallowAll(format!("robots.txt unreachable ({e}): host skipped"))
            }
        }
    }

    /// Fetches one URL with retries; `wait` is called before each request to pace the host.
    fn fetch(&self, line: usize, url: &str, wait: &mut dyn FnMut()) -> Fetched {
        let mut outcome = Outcome {
            url: url.to_string(),
            line,
            outcome: String::new(),
            status: None,
            attempts: 0,
            detail: String::new(),
        };
        let mut backoff = Duration::from_millis(self.cfg.backoff_ms);
        loop {
            wait();
            outcome.attempts += 1;
            let resp = self.get(url, true);
            let (retryable, pause) = match resp {
                Response::Got {
                    status,
                    media,
                    body,
                    retry_after,
                } => {
                    outcome.status = Some(status);
                    if status == 200 {
                        return Self::finish(outcome, &media, body);
                    }
                    outcome.outcome = "http_error".into();
                    outcome.detail = format!("HTTP {status}");
                    let retryable = status == 429 || status >= 500;
                    let cap = Duration::from_millis(self.cfg.max_retry_after_ms);
                    (
                        retryable,
                        retry_after.map_or(backoff, |r| r.min(cap).max(backoff)),
                    )
                }
                Response::Failed(e) => {
                    outcome.outcome = "network_error".into();
                    outcome.detail = e;
                    (true, backoff)
                }
            };
            if !retryable || outcome.attempts > self.cfg.retries {
                return Fetched { outcome, doc: None };
            }
            std::thread::sleep(pause);
            backoff *= 2;
        }
    }

    fn finish(
        mut outcome: Outcome,
        media: &str,
        body: Result<Vec<u8>, (String, String)>,
    ) -> Fetched {
        let body = match body {
            Ok(b) => b,
            Err((kind, detail)) => {
                outcome.outcome = kind;
                outcome.detail = detail;
                return Fetched { outcome, doc: None };
            }
        };
        let page = String::from_utf8_lossy(&body);
        let extracted = if media.contains("html") {
            super::web::main_content(&page, Some(&outcome.url))
        } else {
            let t = page.trim().to_string();
            if t.is_empty() {
                Err("empty body".into())
            } else {
                Ok((t, String::new()))
            }
        };
        match extracted {
            Ok((text, title)) => {
                outcome.outcome = "ok".into();
                let mut meta = Map::new();
                meta.insert("url".into(), Value::String(outcome.url.clone()));
                if !title.is_empty() {
                    meta.insert("title".into(), Value::String(title));
                }
                Fetched {
                    outcome,
                    doc: Some((text, meta)),
                }
            }
            Err(e) => {
                outcome.outcome = "no_content".into();
                outcome.detail = e;
                Fetched { outcome, doc: None }
            }
        }
    }
}

/// Whether an outcome is final (kept in the resume cache): everything but network errors, 429 and 5xx,
/// which a rerun tries again.
fn is_final(o: &Outcome) -> bool {
    match o.outcome.as_str() {
        "network_error" => false,
        "http_error" => !o.status.is_some_and(|s| s == 429 || s >= 500),
        _ => true,
    }
}

/// The cached result of line `line` for `url`, if the cache holds one.
fn cached(cache: Option<&Path>, line: usize, url: &str) -> Option<Fetched> {
    let text = std::fs::read_to_string(cache?.join(format!("{line:07}.json"))).ok()?;
    let f: Fetched = serde_json::from_str(&text).ok()?;
    (f.outcome.url == url).then_some(f)
}

/// Fetches every URL of `urls` (line, URL) politely; the results come back in the list's order. With a
/// `cache` folder, each final result is written there as soon as it is known and reused by a later call,
/// so a run killed in the middle resumes where it stopped.
#[must_use]
pub fn fetch_all(
    urls: &[(usize, String)],
    cfg: &FetchConfig,
    cache: Option<&Path>,
) -> Vec<Fetched> {
    let client = Client::new(cfg);
    if let Some(c) = cache {
        let _ = std::fs::create_dir_all(c);
    }
    // group by host, keeping list order within each host
    let mut hosts: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    let mut results: Vec<Option<Fetched>> = (0..urls.len()).map(|_| None).collect();
    for (i, (line, url)) in urls.iter().enumerate() {
        if let Some(f) = cached(cache, *line, url) {
            results[i] = Some(f);
            continue;
        }
        match host_of(url) {
            Some(h) => hosts.entry(h).or_default().push(i),
            None => {
                results[i] = Some(Fetched {
                    outcome: Outcome {
                        url: url.clone(),
                        line: *line,
                        outcome: "bad_url".into(),
                        status: None,
                        attempts: 0,
                        detail: "not an http(s) URL with a host".into(),
                    },
                    doc: None,
                });
            }
        }
    }
    let queue = Mutex::new(hosts.into_iter().collect::<Vec<_>>());
    let done = Mutex::new(results);
    let workers = cfg.concurrency.max(1);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let Some(((scheme, host), idx)) = queue.lock().map(|mut q| q.pop()).ok().flatten()
                else {
                    return;
                };
                let robots = client.robots(&scheme, &host);
                let delay = Duration::from_millis(cfg.per_host_delay_ms)
                    .max(robots.delay().unwrap_or_default());
                // the robots.txt request counts as the first request to the host
                let mut last = Instant::now();
                let mut wait = || {
                    let next = last + delay;
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    }
                    last = Instant::now();
                };
                for i in idx {
                    let (line, url) = &urls[i];
                    let fetched = match robots.allows(url) {
                        Ok(()) => client.fetch(*line, url, &mut wait),
                        Err(why) => Fetched {
                            outcome: Outcome {
                                url: url.clone(),
                                line: *line,
                                outcome: "robots_disallowed".into(),
                                status: None,
                                attempts: 0,
                                detail: why,
                            },
                            doc: None,
                        },
                    };
                    if let Some(c) = cache.filter(|_| is_final(&fetched.outcome)) {
                        // best effort: a result that cannot be cached is fetched again on a rerun
                        let _ = strata_store::write_json_atomic(
                            c.join(format!("{line:07}.json")),
                            &fetched,
                        );
                    }
                    if let Ok(mut d) = done.lock() {
                        d[i] = Some(fetched);
                    }
                }
            });
        }
    });
    done.into_inner()
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .collect()
}

/// Fetches the URL list at `path`: documents to `emit` in list order, failures to the quarantine (the list's
/// file and line, the outcome and its detail), and every outcome to `log` (one JSON object per line).
/// Returns (URLs, fetched, failed).
///
/// # Errors
/// When the list cannot be read, or `emit`/the quarantine/the log fail to write.
pub(crate) fn acquire_list(
    path: &std::path::Path,
    cfg: &FetchConfig,
    cache: Option<&Path>,
    log: &mut dyn std::io::Write,
    quarantine: &mut crate::io::Quarantine,
    emit: &mut dyn FnMut(crate::Doc) -> crate::Result<()>,
) -> crate::Result<(usize, usize, usize)> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(crate::io_err(path))?;
    let urls = parse_list(&text);
    let fetched = fetch_all(&urls, cfg, cache);
    let (mut ok, mut failed) = (0, 0);
    for f in fetched {
        let line = serde_json::to_string(&f.outcome).unwrap_or_default();
        writeln!(log, "{line}").map_err(crate::io_err(path))?;
        if let Some((text, mut meta)) = f.doc {
            ok += 1;
            meta.insert("source".into(), Value::String(source.clone()));
            emit(crate::Doc {
                id: format!("{source}:{}", f.outcome.line),
                text,
                meta,
            })?;
        } else {
            failed += 1;
            quarantine.add(crate::io::QuarantineRecord {
                source: source.clone(),
                line: f.outcome.line,
                reason: format!("{}: {}", f.outcome.outcome, f.outcome.detail),
                raw: f.outcome.url,
            })?;
        }
    }
    Ok((urls.len(), ok, failed))
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn hosts_by_hand() {
        let h = |u: &str| host_of(u).map(|(s, a)| format!("{s} {a}"));
        assert_eq!(
            h("HTTP://Example.COM:8080/a?b#c").as_deref(),
            Some("http example.com:8080")
        );
        assert_eq!(
            h("https://user:pw@host.org/x").as_deref(),
            Some("https host.org")
        );
        assert_eq!(h("http://host.org:80/").as_deref(), Some("http host.org"));
        assert_eq!(h("ftp://host.org/file"), None);
        assert_eq!(h("host.org/page"), None);
        assert_eq!(h("http://"), None);
    }
}
