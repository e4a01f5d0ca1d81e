//! The request decoder of both generation routes: bytes → a checked [`Decoded`] request, or an OpenAI-shaped
//! 400 naming the field. It parses the body itself (so malformed JSON gets an OpenAI error, not axum's
//! plain-text 422), accepts the explicit `null`s official clients send, and never panics on any input (a
//! property test feeds it arbitrary bytes and arbitrary JSON).

use serde::Deserialize;
use serde_json::Value;
use strata_tokenize::ChatMessage;

use super::ApiError;
use crate::{GenParams, Sampling};

/// Which route a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Chat,
    Completions,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Chat(Vec<ChatMessage>),
    Text(String),
}

/// A checked request.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub model: Option<String>,
    pub prompt: Prompt,
    /// None: what is left of the context.
    pub max_tokens: Option<usize>,
    /// `max_tokens` is set per request once the prompt's length is known; `seed` is the first choice's.
    pub params: GenParams,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    /// Completions only: return the prompt before the completion.
    pub echo: bool,
    /// Chat only: the images of `image_url` parts (in order), each marked in its message's text by
    /// [`IMAGE_PART`].
    pub images: Vec<ImageInput>,
}

#[derive(Debug, Deserialize)]
struct Raw {
    model: Option<String>,
    messages: Option<Vec<Value>>,
    prompt: Option<Value>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<i64>,
    stream: Option<bool>,
    stream_options: Option<Value>,
    stop: Option<Value>,
    n: Option<i64>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    logprobs: Option<Value>,
    top_logprobs: Option<i64>,
    response_format: Option<Value>,
    echo: Option<bool>,
    suffix: Option<Value>,
    // vLLM's extensions to the OpenAI request
    top_k: Option<i64>,
    min_p: Option<f32>,
    repetition_penalty: Option<f32>,
    ignore_eos: Option<bool>,
}

fn bad(message: &str, param: &'static str) -> ApiError {
    ApiError::bad_request(message, Some(param))
}

/// The text every image part becomes in its message (the chat template renders it; the tokenizer reads it
/// as the model's image token, expanded to the image's feature rows when the request is encoded).
pub const IMAGE_PART: &str = "<image>\n";

/// An image of a request: the bytes of a data URL, or an http(s) URL (fetched only from the hosts the server
/// was started to fetch from, `--image-url-hosts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageInput {
    Bytes(Vec<u8>),
    Url(String),
}

/// An `image_url` part: the bytes of its data URL (`data:image/png;base64,…`), or its http(s) URL.
fn image_input(part: &Value, at: &str) -> Result<ImageInput, ApiError> {
    use base64::Engine as _;
    let url = part
        .get("image_url")
        .and_then(|u| u.get("url").or(Some(u)))
        .and_then(Value::as_str)
        .ok_or_else(|| bad(&format!("{at}.image_url.url must be a string"), "messages"))?;
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(ImageInput::Url(url.to_string()));
    }
    let data = url
        .strip_prefix("data:")
        .and_then(|r| r.split_once(";base64,"))
        .filter(|(mime, _)| mime.starts_with("image/"))
        .map(|(_, data)| data)
        .ok_or_else(|| {
            bad(
                &format!("{at}.image_url.url is not a base64 data URL of an image (data:image/png;base64,…)"),
                "messages",
            )
        })?;
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map(ImageInput::Bytes)
        .map_err(|e| {
            bad(
                &format!("{at}.image_url.url: its data is not base64: {e}"),
                "messages",
            )
        })
}

/// The messages, and the images their content parts carry (in order).
fn parse_messages(raw: &[Value]) -> Result<(Vec<ChatMessage>, Vec<ImageInput>), ApiError> {
    if raw.is_empty() {
        return Err(bad("messages must not be empty", "messages"));
    }
    let mut images = Vec::new();
    let messages = raw
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = m.get("role").and_then(Value::as_str).ok_or_else(|| {
                bad(&format!("messages[{i}].role must be a string"), "messages")
            })?;
            if !matches!(role, "system" | "developer" | "user" | "assistant" | "tool") {
                return Err(bad(
                    &format!("messages[{i}].role {role:?} is not one of system, developer, user, assistant, tool"),
                    "messages",
                ));
            }
            let content = match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                // content parts: [{"type": "text", "text": "..."}, {"type": "image_url", "image_url": {"url": …}}]
                Some(Value::Array(parts)) => {
                    let mut s = String::new();
                    for (k, p) in parts.iter().enumerate() {
                        match (p.get("type").and_then(Value::as_str), p.get("text")) {
                            (Some("text"), Some(Value::String(t))) => s.push_str(t),
                            (Some("image_url"), _) => {
                                images.push(image_input(p, &format!("messages[{i}].content[{k}]"))?);
                                s.push_str(IMAGE_PART);
                            }
                            _ => {
                                return Err(bad(
                                    &format!("messages[{i}].content[{k}] must be a text part ({{\"type\": \"text\", \"text\": …}}) or an image part ({{\"type\": \"image_url\", \"image_url\": {{\"url\": \"data:image/png;base64,…\"}}}}); audio is not supported"),
                                    "messages",
                                ))
                            }
                        }
                    }
                    s
                }
                Some(Value::Null) | None => String::new(),
                Some(_) => {
                    return Err(bad(
                        &format!("messages[{i}].content must be a string or an array of text and image parts"),
                        "messages",
                    ))
                }
            };
            // the developer role is the system role of newer OpenAI models
            let role = if role == "developer" { "system" } else { role };
            Ok(ChatMessage {
                role: role.to_string(),
                content,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((messages, images))
}

fn parse_stop(v: Option<Value>) -> Result<Vec<String>, ApiError> {
    let msg = "stop must be a string or an array of at most 4 non-empty strings";
    let list = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(a)) => a
            .into_iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(msg, "stop"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad(msg, "stop")),
    };
    if list.len() > 4 || list.iter().any(String::is_empty) {
        return Err(bad(msg, "stop"));
    }
    Ok(list)
}

fn parse_prompt(v: Option<Value>) -> Result<String, ApiError> {
    let msg = "prompt must be a string (or an array holding one string)";
    match v {
        Some(Value::String(s)) => Ok(s),
        Some(Value::Array(a)) if a.len() == 1 => match &a[0] {
            Value::String(s) => Ok(s.clone()),
            _ => Err(bad(msg, "prompt")),
        },
        Some(Value::Array(a)) if a.len() > 1 => Err(bad(
            "one prompt per request: send several requests (they are batched together)",
            "prompt",
        )),
        None | Some(Value::Null) => Err(bad("prompt is required", "prompt")),
        Some(_) => Err(bad(msg, "prompt")),
    }
}

fn range<T: PartialOrd + std::fmt::Display + Copy>(
    v: Option<T>,
    lo: T,
    hi: T,
    param: &'static str,
) -> Result<Option<T>, ApiError> {
    match v {
        Some(x) if !(x >= lo && x <= hi) => Err(bad(
            &format!("{param} must be between {lo} and {hi}"),
            param,
        )),
        other => Ok(other),
    }
}

fn usize_of(v: Option<i64>) -> Option<usize> {
    v.map(|x| usize::try_from(x).unwrap_or(0))
}

/// The prompt: chat messages, or a completion's text (each route refuses the other's field).
fn prompt_of(route: Route, raw: &mut Raw) -> Result<(Prompt, Vec<ImageInput>), ApiError> {
    Ok(match route {
        Route::Chat => {
            if raw.prompt.is_some() {
                return Err(bad("chat completions take messages, not prompt", "prompt"));
            }
            let (messages, images) = parse_messages(
                raw.messages
                    .as_deref()
                    .ok_or_else(|| bad("messages is required", "messages"))?,
            )?;
            (Prompt::Chat(messages), images)
        }
        Route::Completions => {
            if raw.messages.is_some() {
                return Err(bad(
                    "completions take prompt; send messages to /v1/chat/completions",
                    "messages",
                ));
            }
            (Prompt::Text(parse_prompt(raw.prompt.take())?), Vec::new())
        }
    })
}

/// Log-probabilities asked for: chat's `logprobs: true` with `top_logprobs` 0..=20, or completions'
/// `logprobs` 0..=5 (the alternatives per token).
fn logprobs_of(route: Route, raw: &Raw) -> Result<Option<usize>, ApiError> {
    Ok(match route {
        // chat: logprobs true/false, top_logprobs 0..=20
        Route::Chat => match &raw.logprobs {
            None | Some(Value::Null | Value::Bool(false)) => {
                if raw.top_logprobs.is_some() {
                    return Err(bad("top_logprobs needs logprobs: true", "top_logprobs"));
                }
                None
            }
            Some(Value::Bool(true)) => {
                Some(usize_of(range(raw.top_logprobs, 0, 20, "top_logprobs")?).unwrap_or(0))
            }
            Some(_) => return Err(bad("logprobs must be true or false", "logprobs")),
        },
        // completions: logprobs = how many alternatives, 0..=5
        Route::Completions => match &raw.logprobs {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                usize_of(range(v.as_i64(), 0, 5, "logprobs")?)
                    .ok_or_else(|| bad("logprobs must be an integer from 0 to 5", "logprobs"))?,
            ),
        },
    })
}

/// `response_format`: text (the default) or a JSON object.
fn json_mode(raw: &Raw) -> Result<bool, ApiError> {
    Ok(
        match raw
            .response_format
            .as_ref()
            .map(|f| f.get("type").and_then(Value::as_str))
        {
            None | Some(Some("text")) => false,
            Some(Some("json_object")) => true,
            Some(_) => {
                return Err(bad(
                    "response_format.type must be \"text\" or \"json_object\"",
                    "response_format",
                ))
            }
        },
    )
}

/// `stream_options.include_usage` (only with `stream: true`).
fn include_usage(raw: &Raw, stream: bool) -> Result<bool, ApiError> {
    Ok(match &raw.stream_options {
        None | Some(Value::Null) => false,
        Some(o) => {
            if !stream {
                return Err(bad(
                    "stream_options is only allowed with stream: true",
                    "stream_options",
                ));
            }
            match o.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(bad(
                        "stream_options.include_usage must be a boolean",
                        "stream_options",
                    ))
                }
            }
        }
    })
}

/// Decodes and checks a request body for `route`; `max_tokens_limit` is the server's cap.
///
/// # Errors
/// An OpenAI-shaped 400 naming the field, for anything malformed or out of range.
pub fn decode(route: Route, body: &[u8], max_tokens_limit: usize) -> Result<Decoded, ApiError> {
    let mut raw: Raw = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(&format!("invalid request body: {e}"), None))?;
    let (prompt, images) = prompt_of(route, &mut raw)?;
    if raw.suffix.as_ref().is_some_and(|s| !s.is_null()) {
        return Err(bad("suffix is not supported", "suffix"));
    }
    let max_tokens = usize_of(range(
        raw.max_completion_tokens.or(raw.max_tokens),
        1,
        i64::try_from(max_tokens_limit).unwrap_or(i64::MAX),
        "max_tokens",
    )?);
    let temperature = range(raw.temperature, 0.0, 2.0, "temperature")?.unwrap_or(1.0);
    let top_p = range(raw.top_p, 0.0, 1.0, "top_p")?.unwrap_or(1.0);
    let n = usize_of(range(raw.n, 1, 16, "n")?).unwrap_or(1);
    let top_k = usize_of(range(raw.top_k, -1, 1 << 20, "top_k")?.map(|k| k.max(0))).unwrap_or(0);
    let min_p = range(raw.min_p, 0.0, 1.0, "min_p")?.unwrap_or(0.0);
    let rep = range(raw.repetition_penalty, 0.01, 10.0, "repetition_penalty")?.unwrap_or(1.0);
    let presence = range(raw.presence_penalty, -2.0, 2.0, "presence_penalty")?.unwrap_or(0.0);
    let frequency = range(raw.frequency_penalty, -2.0, 2.0, "frequency_penalty")?.unwrap_or(0.0);
    let logprobs = logprobs_of(route, &raw)?;
    let json = json_mode(&raw)?;
    let stream = raw.stream.unwrap_or(false);
    let include_usage = include_usage(&raw, stream)?;
    let sampling = Sampling::from_params(temperature, top_p)
        .with_top_k(top_k)
        .with_min_p(min_p);
    #[allow(clippy::cast_sign_loss)] // a negative seed keeps its bits, as a 64-bit seed
    let seed = raw.seed.map_or_else(rand::random::<u64>, |s| s as u64);
    let mut params = GenParams::new(max_tokens.unwrap_or(0), sampling, seed);
    params.stop = parse_stop(raw.stop)?;
    params.repetition_penalty = rep;
    params.presence_penalty = presence;
    params.frequency_penalty = frequency;
    params.logprobs = logprobs;
    params.json = json;
    params.ignore_eos = raw.ignore_eos.unwrap_or(false);
    // a chat template writes the special tokens itself (as transformers' apply_chat_template); a plain
    // prompt gets the tokenizer's (Llama 3's BOS), as transformers' encode
    params.add_special_tokens = route == Route::Completions;
    Ok(Decoded {
        model: raw.model.filter(|m| !m.is_empty()),
        prompt,
        max_tokens,
        params,
        n,
        stream,
        include_usage,
        echo: raw.echo.unwrap_or(false),
        images,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn fields_are_checked_by_name() {
        let chat = |b: &str| decode(Route::Chat, b.as_bytes(), 4096);
        let ok = chat(r#"{"model": "m", "messages": [{"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}, {"role": "user", "content": "hi"}], "stop": ["x"], "seed": -1, "logprobs": true, "top_logprobs": 3, "stream": true, "stream_options": {"include_usage": true}, "response_format": {"type": "json_object"}, "function_call": null}"#).unwrap();
        assert_eq!(
            ok.prompt,
            Prompt::Chat(vec![
                ChatMessage {
                    role: "system".into(),
                    content: "ab".into()
                },
                ChatMessage {
                    role: "user".into(),
                    content: "hi".into()
                },
            ])
        );
        assert_eq!(ok.params.seed, u64::MAX);
        assert_eq!(ok.params.logprobs, Some(3));
        assert!(ok.params.json && ok.stream && ok.include_usage && !ok.params.add_special_tokens);
        assert_eq!(ok.max_tokens, None);
        for (body, param) in [
            (r#"{"messages": []}"#, "messages"),
            (
                r#"{"messages": [{"role": "wizard", "content": "x"}]}"#,
                "messages",
            ),
            (
                r#"{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#,
                "messages",
            ),
            (
                r#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}"#,
                "max_tokens",
            ),
            (
                r#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": 5000}"#,
                "max_tokens",
            ),
            (
                r#"{"messages": [{"role": "user", "content": "x"}], "temperature": 3}"#,
                "temperature",
            ),
            (
                r#"{"messages": [{"role": "user", "content": "x"}], "n": 0}"#,
                "n",
            ),
            (
                r#"{"messages": [{"role": "user", "content": "x"}], "stop": ["", "a"]}"#,
                "stop",
            ),
            (
                r#"{"messages": [{"role": "user", "content": "x"}], "stop": 3}"#,
                "stop",
            ),
            (
                r#"{"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}"#,
                "top_logprobs",
            ),
            (
                r#"{"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "xml"}}"#,
                "response_format",
            ),
            (
                r#"{"messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": true}}"#,
                "stream_options",
            ),
            (r#"{"prompt": "x"}"#, "prompt"),
        ] {
            let e = chat(body).unwrap_err();
            assert_eq!(e.param, Some(param), "{body}: {}", e.message);
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
        }
        let comp = |b: &str| decode(Route::Completions, b.as_bytes(), 4096);
        let c = comp(
            r#"{"model": "m", "prompt": ["Once"], "logprobs": 2, "max_tokens": 7, "echo": true}"#,
        )
        .unwrap();
        assert_eq!(c.prompt, Prompt::Text("Once".into()));
        assert_eq!(
            (c.params.logprobs, c.max_tokens, c.echo),
            (Some(2), Some(7), true)
        );
        assert!(c.params.add_special_tokens);
        for (body, param) in [
            (r#"{"prompt": ["a", "b"]}"#, "prompt"),
            (r#"{"prompt": 5}"#, "prompt"),
            (
                r#"{"messages": [{"role": "user", "content": "x"}]}"#,
                "messages",
            ),
            (r#"{"prompt": "a", "logprobs": 9}"#, "logprobs"),
            (r#"{"prompt": "a", "suffix": "b"}"#, "suffix"),
        ] {
            assert_eq!(comp(body).unwrap_err().param, Some(param), "{body}");
        }
        let e = comp("{broken").unwrap_err();
        assert!(
            e.message.starts_with("invalid request body"),
            "{}",
            e.message
        );
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::hash_map(
                    prop_oneof![
                        Just("model".to_string()),
                        Just("messages".to_string()),
                        Just("prompt".to_string()),
                        Just("role".to_string()),
                        Just("content".to_string()),
                        Just("max_tokens".to_string()),
                        Just("stop".to_string()),
                        Just("logprobs".to_string()),
                        Just("top_logprobs".to_string()),
                        Just("n".to_string()),
                        Just("seed".to_string()),
                        Just("temperature".to_string()),
                        Just("stream_options".to_string()),
                        Just("response_format".to_string()),
                        Just("type".to_string()),
                        Just("text".to_string()),
                        ".{0,6}",
                    ],
                    inner,
                    0..8
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Arbitrary bytes: an answer, never a panic.
        #[test]
        fn any_bytes_decode_or_fail_cleanly(body in prop::collection::vec(any::<u8>(), 0..256)) {
            for route in [Route::Chat, Route::Completions] {
                if let Err(e) = decode(route, &body, 4096) {
                    prop_assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
                }
            }
        }

        /// Arbitrary JSON built from the fields the decoder reads: a checked request or a 400.
        #[test]
        fn any_json_decodes_or_fails_cleanly(v in json_value()) {
            let body = serde_json::to_vec(&v).unwrap();
            for route in [Route::Chat, Route::Completions] {
                match decode(route, &body, 4096) {
                    Ok(d) => {
                        prop_assert!(d.n >= 1 && d.n <= 16);
                        prop_assert!(d.max_tokens.is_none_or(|m| (1..=4096).contains(&m)));
                    }
                    Err(e) => prop_assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST),
                }
            }
        }
    }
}
