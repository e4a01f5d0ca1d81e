//! `POST /v1/chat/completions`: parses the body itself (so malformed JSON gets an OpenAI-shaped error, not
//! axum's plain-text 422), accepts the explicit `null`s official clients send, and answers with one JSON
//! object or, with `"stream": true`, with server-sent events ending in `data: [DONE]`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use strata_tokenize::ChatMessage;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use super::{ApiError, AppState};
use crate::{GenParams, Sampling};

#[derive(Debug, Deserialize)]
struct ChatRequest {
    model: Option<String>,
    messages: Vec<Value>,
    max_tokens: Option<usize>,
    max_completion_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<u64>,
    stream: Option<bool>,
    stop: Option<Value>,
    n: Option<usize>,
    // vLLM's extensions to the OpenAI request
    top_k: Option<usize>,
    min_p: Option<f32>,
    repetition_penalty: Option<f32>,
}

fn parse_messages(raw: &[Value]) -> Result<Vec<ChatMessage>, ApiError> {
    if raw.is_empty() {
        return Err(ApiError::bad_request(
            "messages must not be empty",
            Some("messages"),
        ));
    }
    raw.iter()
        .enumerate()
        .map(|(i, m)| {
            let role = m.get("role").and_then(Value::as_str).ok_or_else(|| {
                ApiError::bad_request(
                    &format!("messages[{i}].role must be a string"),
                    Some("messages"),
                )
            })?;
            let content = match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                // content parts: [{"type": "text", "text": "..."}]
                Some(Value::Array(parts)) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join(""),
                Some(Value::Null) | None => String::new(),
                Some(_) => {
                    return Err(ApiError::bad_request(
                        &format!(
                            "messages[{i}].content must be a string or an array of text parts"
                        ),
                        Some("messages"),
                    ))
                }
            };
            Ok(ChatMessage {
                role: role.to_string(),
                content,
            })
        })
        .collect()
}

fn parse_stop(v: Option<Value>) -> Result<Vec<String>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s]),
        Some(Value::Array(a)) => a
            .into_iter()
            .map(|s| {
                s.as_str().map(str::to_string).ok_or_else(|| {
                    ApiError::bad_request(
                        "stop must be a string or an array of strings",
                        Some("stop"),
                    )
                })
            })
            .collect(),
        Some(_) => Err(ApiError::bad_request(
            "stop must be a string or an array of strings",
            Some("stop"),
        )),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub async fn completions(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: ChatRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(&format!("invalid request body: {e}"), None))?;
    if req.n.unwrap_or(1) != 1 {
        return Err(ApiError::bad_request("only n = 1 is supported", Some("n")));
    }
    let messages = parse_messages(&req.messages)?;
    let model = req
        .model
        .clone()
        .filter(|m| !m.is_empty())
        .or_else(|| state.default_model.clone())
        .ok_or_else(|| ApiError::bad_request("model is required", Some("model")))?;
    let temperature = req.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad_request(
            "temperature must be between 0 and 2",
            Some("temperature"),
        ));
    }
    let sampling = Sampling::from_params(temperature, req.top_p.unwrap_or(1.0))
        .with_top_k(req.top_k.unwrap_or(0))
        .with_min_p(req.min_p.unwrap_or(0.0));
    let seed = req
        .seed
        .unwrap_or_else(|| now() ^ u64::from(std::process::id()));
    let mut params = GenParams::new(
        req.max_completion_tokens.or(req.max_tokens).unwrap_or(256),
        sampling,
        seed,
    );
    params.stop = parse_stop(req.stop)?;
    params.repetition_penalty = req.repetition_penalty.unwrap_or(1.0);
    // the chat template writes the special tokens itself (as transformers' apply_chat_template)
    params.add_special_tokens = false;
    if params.repetition_penalty <= 0.0 {
        return Err(ApiError::bad_request(
            "repetition_penalty must be > 0",
            Some("repetition_penalty"),
        ));
    }
    let engine = {
        let state = state.clone();
        let model = model.clone();
        tokio::task::spawn_blocking(move || state.engine(&model))
            .await
            .map_err(|e| ApiError::internal(&e.to_string()))??
    };
    let prompt = engine.render_chat(&messages)?;
    let id = format!("chatcmpl-{:016x}", rand::random::<u64>());
    let created = now();

    if req.stream.unwrap_or(false) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Value>(64);
        let chunk = {
            let (id, model) = (id.clone(), model.clone());
            move |delta: Value, finish: Value| json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        };
        tokio::task::spawn_blocking(move || {
            let _ = tx.blocking_send(chunk(
                json!({"role": "assistant", "content": ""}),
                Value::Null,
            ));
            let result = engine.generate(&prompt, &params, &mut |piece| {
                tx.blocking_send(chunk(json!({"content": piece}), Value::Null))
                    .is_ok()
            });
            match result {
                Ok(g) => {
                    let _ = tx.blocking_send(chunk(json!({}), json!(g.finish)));
                }
                Err(e) => {
                    let _ = tx.blocking_send(
                        json!({"error": {"message": e.to_string(), "type": "server_error"}}),
                    );
                }
            }
        });
        let events = ReceiverStream::new(rx)
            .map(|v| Ok::<_, Infallible>(Event::default().data(v.to_string())))
            .chain(tokio_stream::once(Ok(Event::default().data("[DONE]"))));
        return Ok(Sse::new(events).into_response());
    }

    let g = tokio::task::spawn_blocking(move || engine.generate(&prompt, &params, &mut |_| true))
        .await
        .map_err(|e| ApiError::internal(&e.to_string()))??;
    Ok(Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": g.text}, "finish_reason": g.finish}],
        "usage": {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens, "total_tokens": g.prompt_tokens + g.completion_tokens},
    }))
    .into_response())
}
