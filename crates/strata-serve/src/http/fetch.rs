//! Images at http(s) URLs, fetched only from the hosts the server was started with (`--image-url-hosts`):
//! off by default, since a server that fetches what a request names can be made to reach inside the network
//! it runs in. No redirect is followed (it could lead off the allowed hosts); the body is read up to the
//! server's image-size limit and no further.

use std::io::Read as _;
use std::time::Duration;

use super::ApiError;

/// Whether `url`'s host is one of `hosts` (`*`: any host).
#[must_use]
pub fn allowed(hosts: &[String], url: &url::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    hosts
        .iter()
        .any(|h| h == "*" || h.eq_ignore_ascii_case(host))
}

/// The bytes of the image at `url` (already allowed): a 400 naming the URL when the host cannot be reached,
/// answers other than 200 or redirects; a 413 when the body is over `max_bytes`.
///
/// # Errors
/// As above.
pub fn fetch(url: &str, max_bytes: usize, timeout: Duration) -> Result<Vec<u8>, ApiError> {
    let bad = |why: String| {
        ApiError::bad_request(
            &format!("fetching the image {url}: {why}"),
            Some("messages"),
        )
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(concat!("strata/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let mut resp = agent.get(url).call().map_err(|e| bad(e.to_string()))?;
    let status = resp.status().as_u16();
    if status != 200 {
        return Err(bad(format!(
            "HTTP {status}{}",
            if (300..400).contains(&status) {
                " (redirects are not followed)"
            } else {
                ""
            }
        )));
    }
    let mut buf = Vec::new();
    resp.body_mut()
        .as_reader()
        .take(max_bytes as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| bad(format!("reading the body: {e}")))?;
    if buf.len() > max_bytes {
        return Err(ApiError::part_too_large(&format!(
            "the image at {url} is larger than this server's limit of {max_bytes} bytes"
        )));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::allowed;

    #[test]
    fn only_the_listed_hosts_are_allowed() {
        let u = |s: &str| url::Url::parse(s).unwrap();
        let hosts = vec!["127.0.0.1".to_string(), "PACS.example.org".to_string()];
        assert!(allowed(&hosts, &u("http://127.0.0.1:8080/a.png")));
        assert!(allowed(&hosts, &u("https://pacs.example.org/x/y.png")));
        assert!(!allowed(&hosts, &u("https://example.org/a.png")));
        // a user-info part does not pass for the host
        assert!(!allowed(&hosts, &u("http://127.0.0.1@evil.example/a.png")));
        assert!(!allowed(&[], &u("http://127.0.0.1/a.png")));
        assert!(allowed(
            &["*".to_string()],
            &u("https://anything.example/a.png")
        ));
    }
}
