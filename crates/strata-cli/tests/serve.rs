//! Serving: the demo's base model with two LoRA adapters stacked on it (trained here in a few steps),
//! behind `strata serve` — batched requests equal each request alone, adapters share a batch, the queue
//! refuses when full, a client that goes away frees its place, the official `openai` client works end to
//! end, SIGTERM drains, and the chat page works in headless Chromium.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{fresh_dir, python_check, run, strata, Server};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// The quick demo's store plus adapters `med-lora` (on base) and `us-lora` (on med-lora).
fn store() -> &'static PathBuf {
    static S: OnceLock<PathBuf> = OnceLock::new();
    S.get_or_init(|| {
        let dir = fresh_dir(&format!("serve-{}", std::process::id()));
        let r = run(strata(&dir).args(["demo", "--quick"]));
        assert!(r.ok, "demo --quick: {}", r.stderr);
        for (name, parent, tokens) in [
            ("med-lora", "base", "medical-tokens"),
            ("us-lora", "med-lora", "ultrasound-tokens"),
        ] {
            let r = run(strata(&dir).args([
                "finetune",
                "--name",
                name,
                "--parent",
                parent,
                "--tokens",
                tokens,
                "--batch-size",
                "4",
                "--seq-len",
                "64",
                "--lr",
                "1e-2",
                "--steps",
                "8",
                "--lora-r",
                "4",
                "--lora-targets",
                "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
            ]));
            assert!(r.ok, "{name}: {}", r.stderr);
        }
        dir
    })
}

async fn post(app: &axum::Router, path: &str, body: &str) -> (StatusCode, String) {
    let req = Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

fn state(config: strata_serve::http::ServeConfig) -> Arc<strata_serve::AppState> {
    Arc::new(strata_serve::AppState::with_config(
        strata_store::Store::open(store()).unwrap(),
        None,
        config,
    ))
}

fn body(model: &str, prompt: &str, seed: u64, temperature: f32) -> String {
    serde_json::json!({"model": model, "prompt": prompt, "max_tokens": 24, "seed": seed, "temperature": temperature})
        .to_string()
}

fn text_of(json: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|_| panic!("{json}"));
    v["choices"][0]["text"].as_str().unwrap().to_string()
}

/// Sixteen requests at once over the base and both adapters, sampled and greedy, each gets the text it
/// gets alone; an adapter changes the text (its delta is applied), and the adapters stay resident.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batched_requests_over_three_adapters_equal_each_request_alone() {
    let st = state(strata_serve::http::ServeConfig::default());
    let app = strata_serve::app(st.clone());
    let prompts = [
        "The liver",
        "Findings: the gallbladder",
        "The patient was",
        "Ultrasound of",
    ];
    let models = ["base", "med-lora", "us-lora"];
    let mut cases = Vec::new();
    for i in 0..16u64 {
        let m = models[(i % 3) as usize];
        let p = prompts[(i % 4) as usize];
        let t = if i % 2 == 0 { 0.0 } else { 0.8 };
        cases.push(body(m, p, i, t));
    }
    let mut alone = Vec::new();
    for c in &cases {
        let (s, t) = post(&app, "/v1/completions", c).await;
        assert_eq!(s, StatusCode::OK, "{t}");
        alone.push(text_of(&t));
    }
    let together = futures::future::join_all(
        cases
            .iter()
            .map(|c| async { post(&app, "/v1/completions", c).await }),
    )
    .await;
    for (k, ((s, t), a)) in together.iter().zip(&alone).enumerate() {
        assert_eq!(*s, StatusCode::OK, "{t}");
        assert_eq!(&text_of(t), a, "request {k}: {}", cases[k]);
    }
    // greedy on the same prompt: the adapters' deltas change what the model says
    let g = |m| body(m, "The liver", 1, 0.0);
    let (_, b) = post(&app, "/v1/completions", &g("base")).await;
    let (_, u) = post(&app, "/v1/completions", &g("us-lora")).await;
    assert_ne!(text_of(&b), text_of(&u));
    assert_eq!(st.resident_adapters(), ["med-lora", "us-lora"]);
    assert_eq!(st.loads(), 1, "the adapters share the base's one copy");
}

/// Prompts that begin alike reuse the KV of the first (the prefix cache): every text equals that of a server
/// without the cache, over the base and a stacked adapter (whose KV differs), and /metrics counts the prompt
/// tokens spared.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shared_prompt_prefix_is_prefilled_once_and_changes_no_text() {
    let off = state(strata_serve::http::ServeConfig {
        batch: strata_serve::BatchConfig {
            prefix_cache: 0,
            ..strata_serve::BatchConfig::default()
        },
        ..strata_serve::http::ServeConfig::default()
    });
    let on = state(strata_serve::http::ServeConfig::default());
    let (off_app, on_app) = (
        strata_serve::app(off.clone()),
        strata_serve::app(on.clone()),
    );
    let head = "The liver is normal and the duct is"; // the tiny model reads 64 tokens
    let mut spared_at_least = 0;
    for model in ["base", "us-lora", "base"] {
        for (i, tail) in [" normal", " distended", " absent"].iter().enumerate() {
            let t = if i == 1 { 0.8 } else { 0.0 };
            let b = body(model, &format!("{head}{tail}"), i as u64, t);
            let (s1, a) = post(&off_app, "/v1/completions", &b).await;
            let (s2, c) = post(&on_app, "/v1/completions", &b).await;
            assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK), "{a} {c}");
            assert_eq!(text_of(&a), text_of(&c), "{model}{tail}");
            if i > 0 {
                spared_at_least += 10; // the head is well over 10 tokens
            }
        }
    }
    let count = |st: &Arc<strata_serve::AppState>| -> usize {
        let m = st.metrics.encode();
        m.lines()
            .filter(|l| l.starts_with("strata_prompt_tokens_cached_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<usize>().ok())
            .sum()
    };
    assert_eq!(count(&off), 0);
    assert!(count(&on) >= spared_at_least, "{}", on.metrics.encode());
}

/// A full queue answers 429 with Retry-After; clients that go away free their places.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_queue_is_a_429_and_a_gone_client_frees_its_place() {
    let mut cfg = strata_serve::http::ServeConfig::default();
    cfg.batch.max_queue = 2;
    let st = state(cfg);
    let app = strata_serve::app(st.clone());
    let sched = st.scheduler("base").unwrap();
    sched.pause_admission(true);
    let long = serde_json::json!({"model": "base", "prompt": "The liver", "max_tokens": 50, "stream": true, "temperature": 0.0, "ignore_eos": true}).to_string();
    let send = || {
        app.clone().oneshot(
            Request::post("/v1/completions")
                .header("content-type", "application/json")
                .body(Body::from(long.clone()))
                .unwrap(),
        )
    };
    // two wait in the queue, the third is refused
    let (r1, r2) = (send().await.unwrap(), send().await.unwrap());
    assert_eq!((r1.status(), r2.status()), (StatusCode::OK, StatusCode::OK));
    assert_eq!(sched.load(), (2, 0));
    let r3 = send().await.unwrap();
    assert_eq!(r3.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r3.headers()["retry-after"], "1");
    let e: serde_json::Value =
        serde_json::from_slice(&r3.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(e["error"]["code"], "queue_full");
    // one client goes away; the other reads its stream to the end
    drop(r1);
    // (the stream's task notices the drop on its own thread; give it that moment)
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    sched.pause_admission(false);
    let sse =
        String::from_utf8(r2.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(sse.ends_with("data: [DONE]\n\n"), "{sse}");
    for _ in 0..400 {
        if sched.load() == (0, 0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(sched.load(), (0, 0));
    let metrics = st.metrics.encode();
    assert!(
        metrics.contains("strata_cancelled_total{model=\"base\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("strata_completion_tokens_total{model=\"base\"} 50"),
        "{metrics}"
    );
    assert!(
        metrics.contains("strata_requests_total{route=\"/v1/completions\",status=\"429\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("strata_time_to_first_token_seconds_count{model=\"base\"} 1"),
        "{metrics}"
    );
}

/// Over-long prompts are a 400 naming the context, not cut; stop strings, `n`, JSON mode, logprobs and
/// the end-of-sequence ids behave as the OpenAI API says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_stop_n_json_and_logprobs() {
    let st = state(strata_serve::http::ServeConfig::default());
    let app = strata_serve::app(st.clone());
    let ctx = st.engine("base").unwrap().context();
    let long = "liver ".repeat(ctx);
    let (s, t) = post(
        &app,
        "/v1/completions",
        &serde_json::json!({"model": "base", "prompt": long, "max_tokens": 4}).to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{t}");
    assert!(
        t.contains(&format!("maximum context length is {ctx} tokens")),
        "{t}"
    );

    // the text before a stop string, never the string itself; the same generation without stop goes on
    let plain = text_of(
        &post(&app, "/v1/completions", &body("base", "The liver", 3, 0.0))
            .await
            .1,
    );
    let cut = plain.chars().skip(3).take(2).collect::<String>();
    assert!(!cut.trim().is_empty(), "{plain:?}");
    let with_stop = serde_json::json!({"model": "base", "prompt": "The liver", "max_tokens": 24, "seed": 3, "temperature": 0.0, "stop": [cut]}).to_string();
    let (_, t) = post(&app, "/v1/completions", &with_stop).await;
    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
    let stopped = v["choices"][0]["text"].as_str().unwrap();
    assert_eq!(stopped, &plain[..plain.find(&cut).unwrap()], "{t}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    // n choices with consecutive seeds; usage counts them all
    let (_, t) = post(
        &app,
        "/v1/chat/completions",
        &serde_json::json!({"model": "med-lora", "messages": [{"role": "user", "content": "Liver?"}], "n": 3, "max_tokens": 6, "temperature": 1.0, "seed": 10, "logprobs": true, "top_logprobs": 2}).to_string(),
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
    assert_eq!(v["choices"].as_array().unwrap().len(), 3, "{t}");
    let total: u64 = v["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["logprobs"]["content"].as_array().unwrap().len() as u64)
        .sum();
    assert!(total >= v["usage"]["completion_tokens"].as_u64().unwrap());
    for c in v["choices"].as_array().unwrap() {
        for l in c["logprobs"]["content"].as_array().unwrap() {
            let lp = l["logprob"].as_f64().unwrap();
            let tops = l["top_logprobs"].as_array().unwrap();
            assert_eq!(tops.len(), 2);
            // probabilities: the chosen one at most the best, the top two in order, all <= 0
            assert!(
                lp <= 1e-6 && lp <= tops[0]["logprob"].as_f64().unwrap() + 1e-6,
                "{l}"
            );
            assert!(tops[0]["logprob"].as_f64() >= tops[1]["logprob"].as_f64());
        }
    }

    // JSON mode: the output parses as an object, whatever the (tiny, untrained-for-it) model prefers
    for seed in 0..3 {
        let (s, t) = post(
            &app,
            "/v1/chat/completions",
            &serde_json::json!({"model": "us-lora", "messages": [{"role": "user", "content": "Report as JSON"}], "response_format": {"type": "json_object"}, "max_tokens": 30, "temperature": 0.7, "seed": seed}).to_string(),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        let content = v["choices"][0]["message"]["content"].as_str().unwrap();
        if v["choices"][0]["finish_reason"] == "stop" {
            let parsed: serde_json::Value =
                serde_json::from_str(content).unwrap_or_else(|e| panic!("{e}: {content:?}"));
            assert!(parsed.is_object());
        } else {
            assert!(
                strata_serve::engine::JsonPrefix::default().push_str(content),
                "{content:?}"
            );
        }
    }

    // an unknown model is a 404 naming it; a wrong method a 405, both OpenAI-shaped
    let (s, t) = post(&app, "/v1/completions", &body("radiology", "x", 1, 0.0)).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{t}");
    let resp = app
        .clone()
        .oneshot(Request::get("/v1/completions").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    let e: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(e["error"]["type"], "invalid_request_error");
    // an oversized body is a 413
    let (s, t) = post(&app, "/v1/completions", &"x".repeat(2 << 20)).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{t}");
}

/// `strata serve` on a free port, with an API key file; killed when dropped.
fn serve(extra: &[&str]) -> Server {
    let keys = store().join("keys.txt");
    std::fs::write(
        &keys,
        "sk-admin *\nsk-clinic base,med-lora,us-lora\nsk-base base\n",
    )
    .unwrap();
    let mut args = vec!["--api-keys", keys.to_str().unwrap()];
    args.extend_from_slice(extra);
    common::serve(store(), &args)
}

/// The official `openai` Python client against the running server: chat, streaming with usage,
/// completions, stop, seed, JSON mode, n, and the errors (unknown model, bad key, key without access, too
/// many tokens, broken JSON, no key).
#[test]
fn the_official_openai_client_works_against_the_server() {
    let s = serve(&[]);
    let out = python_check("check_openai_client.py", &[s.url.as_ref()]);
    assert!(out.contains("OK"), "{out}");
}

/// SIGTERM: the stream in flight finishes whole, a new request is refused, the process exits 0.
#[test]
fn sigterm_lets_running_streams_finish_and_refuses_new_ones() {
    let s = serve(&[]);
    let addr = s.url.trim_start_matches("http://").to_string();
    let req = |body: &str| {
        format!(
            "POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-admin\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let stream_body = serde_json::json!({"model": "us-lora", "prompt": "The liver", "max_tokens": 50, "stream": true, "temperature": 0.0, "ignore_eos": true}).to_string();
    let mut conn = TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_mins(1)))
        .unwrap();
    conn.write_all(req(&stream_body).as_bytes()).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    // the first chunk arrives, then the signal
    let mut line = String::new();
    while !line.starts_with("data: ") {
        line.clear();
        reader.read_line(&mut line).unwrap();
    }
    let pid = s.child.id();
    assert!(Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    std::thread::sleep(std::time::Duration::from_millis(100));
    // a new request, on a new connection: 503, or refused once the drain is over (the connection is then
    // refused, closed, or reset as the process exits)
    if let Ok(mut c2) = TcpStream::connect(&addr) {
        if c2
            .write_all(req(&body("base", "x", 1, 0.0)).as_bytes())
            .is_ok()
        {
            let mut head = String::new();
            match BufReader::new(c2).read_line(&mut head) {
                Ok(_) => assert!(head.is_empty() || head.contains(" 503 "), "{head}"),
                Err(e) => assert!(
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                    ),
                    "{e}"
                ),
            }
        }
    }
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    let pieces = rest.matches("data: {").count();
    assert!(rest.contains("data: [DONE]"), "the stream was cut: {rest}");
    assert!(pieces >= 2, "{rest}");
    let mut s = s;
    let status = s.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// The chat page in headless Chromium (Debian's chromium + chromium-driver, installed when missing):
/// two models picked, a prompt sent, both answers appear.
#[test]
fn chat_page_shows_two_models_answers_in_headless_chromium() {
    let s = serve(&[]);
    let script = common::repo_root().join("scripts/ensure-chromium.sh");
    let st = Command::new("bash").arg(&script).status().unwrap();
    assert!(st.success(), "could not install chromium");
    let out = python_check("check_chat_page.py", &[s.url.as_ref()]);
    assert!(out.contains("OK"), "{out}");
}
