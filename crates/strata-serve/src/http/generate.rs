//! `POST /v1/chat/completions` and `POST /v1/completions`: decode, check the key's access, render the prompt,
//! queue one sequence per choice on the model's scheduler, and answer with one JSON object or, with
//! `"stream": true`, with server-sent events ending in `data: [DONE]` (with
//! `stream_options.include_usage`, a last chunk carrying the usage). Usage is in every non-streamed answer.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};

use super::request::{decode, Decoded, ImageInput, Prompt, Route};
use super::{read_body, Access, ApiError, AppState, ServeConfig};
use crate::engine::{Event, Job, Rejected, TokenLogprob};
use crate::{FinishReason, Generation};

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub async fn chat(state: State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    handle(state, req, Route::Chat).await
}

pub async fn completions(state: State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    handle(state, req, Route::Completions).await
}

fn bytes_of(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// `logprobs` of one streamed piece or one whole choice, in the route's shape.
fn logprobs_json(route: Route, lps: &[TokenLogprob], start: usize) -> Value {
    match route {
        Route::Chat => json!({"content": lps.iter().map(|l| json!({
            "token": l.token, "logprob": l.logprob, "bytes": bytes_of(&l.token),
            "top_logprobs": l.top.iter().map(|(t, p)| json!({"token": t, "logprob": p, "bytes": bytes_of(t)})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>()}),
        Route::Completions => {
            let mut offset = start;
            let mut text_offset = Vec::with_capacity(lps.len());
            for l in lps {
                text_offset.push(offset);
                offset += l.token.len();
            }
            json!({
                "tokens": lps.iter().map(|l| &l.token).collect::<Vec<_>>(),
                "token_logprobs": lps.iter().map(|l| l.logprob).collect::<Vec<_>>(),
                "top_logprobs": lps.iter().map(|l| l.top.iter().map(|(t, p)| (t.clone(), json!(p))).collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>(),
                "text_offset": text_offset,
            })
        }
    }
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

async fn handle(
    State(state): State<Arc<AppState>>,
    req: Request,
    route: Route,
) -> Result<Response, ApiError> {
    let access = req.extensions().get::<Access>().cloned();
    let body = read_body(req, state.config.max_body).await?;
    let d: Decoded = decode(route, &body, state.config.max_tokens)?;
    let model = model_of(&state, access.as_ref(), &d)?;
    let (receivers, echo) = submit(&state, &model, &d).await?;
    let (prefix, object) = match route {
        Route::Chat => ("chatcmpl", "chat.completion"),
        Route::Completions => ("cmpl", "text_completion"),
    };
    let reply = Reply {
        id: format!("{prefix}-{:016x}", rand::random::<u64>()),
        object,
        created: now(),
        model,
        route,
        echo,
        want_logprobs: d.params.logprobs.is_some(),
        n: d.n,
        include_usage: d.include_usage,
    };
    if d.stream {
        Ok(stream(reply, receivers))
    } else {
        whole(reply, receivers).await
    }
}

/// The model a request runs on (its own, or the server's default) after the key's access is checked: an
/// unknown name is a 404 for every key; a known one the key may not use, a 403.
fn model_of(state: &AppState, access: Option<&Access>, d: &Decoded) -> Result<String, ApiError> {
    let model = d
        .model
        .clone()
        .or_else(|| state.default_model.clone())
        .ok_or_else(|| ApiError::bad_request("model is required", Some("model")))?;
    if let Some(a) = access {
        if !state.store.exists(strata_store::Kind::Model, &model)
            && !state.store.exists(strata_store::Kind::Adapter, &model)
        {
            return Err(ApiError::not_found(&format!(
                "the model {model:?} does not exist or you do not have access to it"
            )));
        }
        a.check(&model)?;
    }
    Ok(model)
}

type Receivers = Vec<mpsc::UnboundedReceiver<Event>>;

/// Renders and encodes the prompt, then queues one sequence per choice on the model's scheduler (with the
/// adapter chain the name asks for). Each choice's event receiver, and the prompt text to echo.
async fn submit(
    state: &Arc<AppState>,
    model: &str,
    d: &Decoded,
) -> Result<(Receivers, Option<String>), ApiError> {
    let target = {
        let (state, model) = (state.clone(), model.to_string());
        tokio::task::spawn_blocking(move || state.target(&model))
            .await
            .map_err(|e| ApiError::internal(&e.to_string()))??
    };
    let engine = target.scheduler.engine().clone();
    let (text, echo) = match &d.prompt {
        Prompt::Chat(m) => (engine.render_chat(m)?, None),
        Prompt::Text(t) => (t.clone(), d.echo.then(|| t.clone())),
    };
    let ids = engine.encode(&text, d.params.add_special_tokens)?;
    let (ids, image) = with_images(state, &engine, model, ids, &d.images).await?;
    let max_tokens = engine.fit(ids.len(), d.max_tokens)?;
    let mut receivers = Vec::with_capacity(d.n);
    for i in 0..d.n {
        let mut params = d.params.clone();
        params.max_tokens = max_tokens;
        params.seed = params.seed.wrapping_add(i as u64);
        let (tx, rx) = mpsc::unbounded_channel();
        let job = Job {
            seq: engine.sequence(ids.clone(), params)?,
            adapters: target.adapters.clone(),
            events: tx,
            image: image.clone(),
        };
        target.scheduler.submit(job).map_err(|r| match r {
            Rejected::QueueFull => ApiError::busy(),
            Rejected::ShuttingDown => ApiError::unavailable(),
            Rejected::TooBig => ApiError::bad_request(
                "the prompt and max_tokens need more KV cache than the server holds: lower max_tokens",
                Some("max_tokens"),
            ),
        })?;
        receivers.push(rx);
    }
    Ok((receivers, echo))
}

/// A request's images on a vision-language model: each image token of the prompt (one per image part) made
/// the image's feature rows, and the rows (from the model's cache of recent images, or its tower). A text
/// model given an image, too many or too large images, an image that does not decode, or placeholders that
/// do not match the images: OpenAI-shaped 400 or 413.
async fn with_images(
    state: &Arc<AppState>,
    engine: &Arc<crate::Engine>,
    model: &str,
    ids: Vec<u32>,
    images: &[ImageInput],
) -> Result<(Vec<u32>, Option<Arc<Vec<f32>>>), ApiError> {
    let Some(vision) = engine.vision.clone() else {
        if images.is_empty() {
            return Ok((ids, None));
        }
        return Err(ApiError::bad_request(
            &format!("model {model:?} is a text model: it takes no images (send them to a vision-language model)"),
            Some("model"),
        ));
    };
    let (token, n) = (vision.cfg.image_token_id, vision.cfg.image_seq_length);
    let slots = ids.iter().filter(|&&id| id == token).count();
    if slots != images.len() {
        return Err(ApiError::bad_request(
            &format!(
                "the prompt holds {slots} image placeholders for {} images (the text may not contain \"<image>\")",
                images.len()
            ),
            Some("messages"),
        ));
    }
    if images.is_empty() {
        return Ok((ids, None));
    }
    let cfg = &state.config;
    if images.len() > cfg.max_images {
        return Err(ApiError::bad_request(
            &format!(
                "{} images in one request; this server takes at most {}",
                images.len(),
                cfg.max_images
            ),
            Some("messages"),
        ));
    }
    let images = image_bytes(images, cfg).await?;
    if let Some(b) = images.iter().find(|b| b.len() > cfg.max_image_bytes) {
        return Err(ApiError::part_too_large(&format!(
            "an image of {} bytes is larger than this server's limit of {} bytes",
            b.len(),
            cfg.max_image_bytes
        )));
    }
    let (max_pixels, metrics, name) = (
        cfg.max_image_pixels,
        state.metrics.clone(),
        model.to_string(),
    );
    let rows = tokio::task::spawn_blocking(move || -> crate::Result<Vec<f32>> {
        let mut all = Vec::new();
        for bytes in &images {
            let (rows, cached) = vision.encode_bytes(bytes, max_pixels)?;
            metrics.image(&name, cached);
            all.extend_from_slice(&rows);
        }
        Ok(all)
    })
    .await
    .map_err(|e| ApiError::internal(&e.to_string()))??;
    let mut out = Vec::with_capacity(ids.len() + slots * n);
    for id in ids {
        if id == token {
            out.extend(std::iter::repeat_n(token, n));
        } else {
            out.push(id);
        }
    }
    Ok((out, Some(Arc::new(rows))))
}

/// The bytes of a request's images: a data URL's as they are, an http(s) URL's fetched when its host is one
/// the server fetches from (`ServeConfig::image_url_hosts`), else a 400 that says how to send it.
async fn image_bytes(images: &[ImageInput], cfg: &ServeConfig) -> Result<Vec<Vec<u8>>, ApiError> {
    let mut urls = Vec::new();
    for im in images {
        if let ImageInput::Url(u) = im {
            let parsed = url::Url::parse(u).map_err(|e| {
                ApiError::bad_request(&format!("image URL {u:?}: {e}"), Some("messages"))
            })?;
            if !super::fetch::allowed(&cfg.image_url_hosts, &parsed) {
                let host = parsed.host_str().unwrap_or("").to_string();
                return Err(ApiError::bad_request(
                    &format!(
                        "images are not fetched from URLs on host {host:?}: send the image itself as a data URL \
                         (data:image/png;base64,…), or start the server with --image-url-hosts {host}"
                    ),
                    Some("messages"),
                ));
            }
            urls.push(u.clone());
        }
    }
    let max = cfg.max_image_bytes;
    let mut fetched = if urls.is_empty() {
        Vec::new()
    } else {
        tokio::task::spawn_blocking(move || {
            urls.iter()
                .map(|u| super::fetch::fetch(u, max, FETCH_TIMEOUT))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| ApiError::internal(&e.to_string()))??
    }
    .into_iter();
    Ok(images
        .iter()
        .map(|im| match im {
            ImageInput::Bytes(b) => b.clone(),
            ImageInput::Url(_) => fetched.next().unwrap_or_default(),
        })
        .collect())
}

/// How long fetching one image URL may take.
const FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// What every answer to one request shares.
struct Reply {
    id: String,
    object: &'static str,
    created: u64,
    model: String,
    route: Route,
    echo: Option<String>,
    want_logprobs: bool,
    n: usize,
    include_usage: bool,
}

/// The answer as one JSON object, once every choice is done.
async fn whole(r: Reply, receivers: Receivers) -> Result<Response, ApiError> {
    let mut choices = Vec::with_capacity(r.n);
    let (mut prompt_tokens, mut completion_tokens) = (0, 0);
    for (i, mut rx) in receivers.into_iter().enumerate() {
        let g: Generation = loop {
            match rx.recv().await {
                Some(Event::Done(g)) => break g,
                Some(Event::Piece(_)) => {}
                Some(Event::Error(e)) => return Err(ApiError::internal(&e)),
                None => return Err(ApiError::internal("the scheduler stopped")),
            }
        };
        prompt_tokens = g.prompt_tokens;
        completion_tokens += g.completion_tokens;
        let echo_len = r.echo.as_ref().map_or(0, String::len);
        let logprobs = if r.want_logprobs {
            logprobs_json(r.route, &g.logprobs, echo_len)
        } else {
            Value::Null
        };
        choices.push(match r.route {
            Route::Chat => json!({"index": i, "message": {"role": "assistant", "content": g.text}, "logprobs": logprobs, "finish_reason": g.finish}),
            Route::Completions => json!({"index": i, "text": format!("{}{}", r.echo.as_deref().unwrap_or(""), g.text), "logprobs": logprobs, "finish_reason": g.finish}),
        });
    }
    Ok(Json(json!({
        "id": r.id, "object": r.object, "created": r.created, "model": r.model,
        "system_fingerprint": null,
        "choices": choices,
        "usage": usage(prompt_tokens, completion_tokens),
    }))
    .into_response())
}

/// The answer as server-sent events: one task merges the choices' events into chunks; when the client goes
/// away the SSE stream is dropped, the task's sends fail, it drops the receivers, and the scheduler drops
/// the sequences.
fn stream(r: Reply, receivers: Receivers) -> Response {
    let (tx, rx) = mpsc::channel::<Value>(64);
    tokio::spawn(stream_chunks(r, receivers, tx));
    let events = ReceiverStream::new(rx)
        .map(|v| Ok::<_, Infallible>(SseEvent::default().data(v.to_string())))
        .chain(futures::stream::once(async {
            Ok(SseEvent::default().data("[DONE]"))
        }));
    Sse::new(events).into_response()
}

impl Reply {
    /// A streamed chunk holding one choice.
    fn chunk(&self, choice: &Value) -> Value {
        let object = if self.route == Route::Chat {
            "chat.completion.chunk"
        } else {
            self.object
        };
        let mut c = json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "system_fingerprint": null, "choices": [choice]});
        if self.include_usage {
            c["usage"] = Value::Null;
        }
        c
    }

    /// The chunk of one streamed piece of choice `i`, whose text so far ends at byte `offset`.
    fn piece_chunk(&self, i: usize, p: &crate::engine::Output, offset: usize) -> Value {
        let lp = p.logprobs.as_ref().map_or(Value::Null, |l| {
            logprobs_json(self.route, std::slice::from_ref(l), offset)
        });
        let finish: Option<FinishReason> = p.finish;
        match self.route {
            Route::Chat => {
                let delta = if p.text.is_empty() && finish.is_some() {
                    json!({})
                } else {
                    json!({"content": p.text})
                };
                self.chunk(
                    &json!({"index": i, "delta": delta, "logprobs": lp, "finish_reason": finish}),
                )
            }
            Route::Completions => self.chunk(
                &json!({"index": i, "text": p.text, "logprobs": lp, "finish_reason": finish}),
            ),
        }
    }
}

/// Sends the stream's chunks: the chat role (or the echoed prompt) first, then every piece as it comes,
/// then the usage when asked for. Returns early when the client has gone.
async fn stream_chunks(r: Reply, receivers: Receivers, tx: mpsc::Sender<Value>) {
    let n = r.n;
    let firsts: Vec<Value> = match (r.route, &r.echo) {
        (Route::Chat, _) => (0..n)
            .map(|i| r.chunk(&json!({"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null})))
            .collect(),
        (Route::Completions, Some(e)) => (0..n)
            .map(|i| r.chunk(&json!({"index": i, "text": e, "logprobs": null, "finish_reason": null})))
            .collect(),
        (Route::Completions, None) => Vec::new(),
    };
    for c in firsts {
        if tx.send(c).await.is_err() {
            return;
        }
    }
    let mut merged = futures::stream::select_all(
        receivers
            .into_iter()
            .enumerate()
            .map(|(i, rx)| UnboundedReceiverStream::new(rx).map(move |e| (i, e))),
    );
    let (mut prompt_tokens, mut completion_tokens) = (0, 0);
    let mut offsets = vec![r.echo.as_ref().map_or(0, String::len); n];
    loop {
        // a client that goes away is noticed at once, not at the next send: the receivers drop and
        // the scheduler drops the sequences (queued ones before they run)
        let next = tokio::select! {
            next = merged.next() => next,
            () = tx.closed() => return,
        };
        let Some((i, ev)) = next else { break };
        let c = match ev {
            Event::Piece(p) => {
                let c = r.piece_chunk(i, &p, offsets[i]);
                offsets[i] += p.text.len();
                c
            }
            Event::Done(g) => {
                prompt_tokens = g.prompt_tokens;
                completion_tokens += g.completion_tokens;
                continue;
            }
            Event::Error(e) => json!({"error": {"message": e, "type": "server_error"}}),
        };
        if tx.send(c).await.is_err() {
            return;
        }
    }
    if r.include_usage {
        let mut c = r.chunk(&Value::Null);
        c["choices"] = json!([]);
        c["usage"] = usage(prompt_tokens, completion_tokens);
        let _ = tx.send(c).await;
    }
}
