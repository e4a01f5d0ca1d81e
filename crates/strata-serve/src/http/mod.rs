//! The OpenAI-compatible HTTP API. [`app`] returns a `Router` so tests drive it without a socket.
//!
//! Routes: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`, `GET|POST /v1/adapters`,
//! `DELETE /v1/adapters/{name}`, `GET /health`, `GET /metrics`, and the chat page at `/`. With an API key
//! file, every `/v1/` route needs `Authorization: Bearer <key>` and a key reaches only its models.

mod adapters;
mod error;
pub mod fetch;
mod generate;
mod keys;
mod page;
pub mod request;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use strata_engine::{LoraStack, RuntimeAdapter};
use strata_store::{Kind, Store};

use crate::engine::{BatchConfig, Scheduler};
use crate::metrics::Metrics;
use crate::{Engine, Result, ServeError};
pub use error::ApiError;
pub use keys::{Access, Keys};

/// Limits of the server.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub batch: BatchConfig,
    /// Largest request body, bytes.
    pub max_body: usize,
    /// Largest `max_tokens` a request may ask for.
    pub max_tokens: usize,
    /// API keys (None: no authentication, for loopback use).
    pub keys: Option<Keys>,
    /// Images a request may carry, bytes an image may have, pixels an image may declare.
    pub max_images: usize,
    pub max_image_bytes: usize,
    pub max_image_pixels: u64,
    /// Hosts whose http(s) image URLs are fetched (`*`: any); empty: images come as data URLs only.
    pub image_url_hosts: Vec<String>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            batch: BatchConfig::default(),
            max_body: 1 << 20,
            max_tokens: 4096,
            keys: None,
            max_images: 4,
            max_image_bytes: 8 << 20,
            max_image_pixels: 1 << 26,
            image_url_hosts: Vec::new(),
        }
    }
}

/// Shared server state: the store, the models loaded on first use (each with its scheduler), and the
/// adapters resident in memory.
pub struct AppState {
    pub store: Store,
    /// Used when a request names no model.
    pub default_model: Option<String>,
    /// Weight type every model is quantised to at load (None = as stored).
    pub quant: Option<strata_engine::WeightType>,
    pub config: ServeConfig,
    pub metrics: Arc<Metrics>,
    /// One slot per base model: the map's lock is held only to find the slot; the slot's lock is held while
    /// its model loads, so concurrent first requests for one model wait for one load (and different models
    /// load side by side).
    models: Mutex<HashMap<String, Slot>>,
    adapters: Mutex<HashMap<String, Arc<RuntimeAdapter>>>,
    loads: AtomicUsize,
    draining: AtomicBool,
}

type Slot = Arc<Mutex<Option<Arc<Scheduler>>>>;

/// Where a request runs: its base model's scheduler and the adapters on its rows.
pub struct Target {
    pub scheduler: Arc<Scheduler>,
    pub adapters: Option<LoraStack>,
}

impl AppState {
    #[must_use]
    pub fn new(store: Store, default_model: Option<String>) -> Self {
        Self::with_config(store, default_model, ServeConfig::default())
    }

    #[must_use]
    pub fn with_config(store: Store, default_model: Option<String>, config: ServeConfig) -> Self {
        Self {
            store,
            default_model,
            quant: None,
            config,
            metrics: Arc::new(Metrics::default()),
            models: Mutex::new(HashMap::new()),
            adapters: Mutex::new(HashMap::new()),
            loads: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
        }
    }

    /// How many times a model was loaded from the store since the server started.
    #[must_use]
    pub fn loads(&self) -> usize {
        self.loads.load(Ordering::Relaxed)
    }

    /// The scheduler of a base model in the store, loading the model on first use.
    ///
    /// # Errors
    /// When the model is not in the store or fails to load.
    pub fn scheduler(&self, name: &str) -> Result<Arc<Scheduler>> {
        let slot: Slot = self
            .models
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.to_string())
            .or_default()
            .clone();
        let mut loaded = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = loaded.as_ref() {
            return Ok(s.clone());
        }
        let engine = self
            .store
            .require(Kind::Model, name)
            .map_err(ServeError::from)
            .and_then(|dir| Engine::load_quantized(name, &dir, self.quant));
        match engine {
            Ok(e) => {
                self.loads.fetch_add(1, Ordering::Relaxed);
                let s = Arc::new(Scheduler::start(
                    Arc::new(e),
                    self.config.batch,
                    self.metrics.clone(),
                ));
                if self.draining.load(Ordering::Relaxed) {
                    s.stop();
                }
                *loaded = Some(s.clone());
                Ok(s)
            }
            Err(err) => {
                // an unknown or broken name leaves no slot behind (requests naming garbage cannot grow
                // the map); a request waiting on this slot tries the load itself
                drop(loaded);
                let mut map = self.models.lock().unwrap_or_else(PoisonError::into_inner);
                if map.get(name).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                    map.remove(name);
                }
                Err(err)
            }
        }
    }

    /// The engine of a base model (loaded on first use).
    ///
    /// # Errors
    /// As [`AppState::scheduler`].
    pub fn engine(&self, name: &str) -> Result<Arc<Engine>> {
        Ok(self.scheduler(name)?.engine().clone())
    }

    /// A resident adapter, loading it from the store on first use.
    ///
    /// # Errors
    /// When its files are missing or do not fit the base.
    fn adapter(
        &self,
        name: &str,
        dir: &std::path::Path,
        engine: &Engine,
    ) -> Result<Arc<RuntimeAdapter>> {
        if let Some(a) = self
            .adapters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
        {
            return Ok(a.clone());
        }
        let a = crate::engine::load_adapter(name, dir, engine)?;
        let mut map = self.adapters.lock().unwrap_or_else(PoisonError::into_inner);
        let a = map.entry(name.to_string()).or_insert(a).clone();
        self.metrics.set_adapters(map.len());
        Ok(a)
    }

    /// Where a request for `name` (a model, or an adapter with its chain) runs.
    ///
    /// # Errors
    /// When nothing of that name is in the store, or it fails to load.
    pub fn target(&self, name: &str) -> Result<Target> {
        let chain = self.store.chain(name)?;
        let scheduler = self.scheduler(&chain.base)?;
        if chain.adapters.is_empty() {
            return Ok(Target {
                scheduler,
                adapters: None,
            });
        }
        let engine = scheduler.engine().clone();
        let adapters = chain
            .adapters
            .iter()
            .map(|(a, dir)| self.adapter(a, dir, &engine))
            .collect::<Result<Vec<_>>>()?;
        Ok(Target {
            scheduler,
            adapters: Some(LoraStack { adapters }),
        })
    }

    /// Names of the resident adapters.
    #[must_use]
    pub fn resident_adapters(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .adapters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    }

    /// Drops an adapter from memory (requests already running keep their copy); false if not resident.
    pub fn unload_adapter(&self, name: &str) -> bool {
        let mut map = self.adapters.lock().unwrap_or_else(PoisonError::into_inner);
        let had = map.remove(name).is_some();
        self.metrics.set_adapters(map.len());
        had
    }

    /// Stops taking requests (503); running and queued sequences finish.
    pub fn begin_shutdown(&self) {
        self.draining.store(true, Ordering::Relaxed);
        for slot in self
            .models
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            if let Some(s) = slot.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
                s.stop();
            }
        }
    }

    /// No sequence queued or running on any model.
    #[must_use]
    pub fn idle(&self) -> bool {
        self.models
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .all(|slot| {
                slot.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .as_ref()
                    .is_none_or(|s| s.load() == (0, 0))
            })
    }

    #[must_use]
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// The body of a request, at most `limit` bytes (413 beyond).
///
/// # Errors
/// When the body is too large or cannot be read.
pub async fn read_body(req: Request, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| ApiError::too_large(limit))
}

/// Every request: counted by route and status; refused while shutting down (503); on `/v1/`, the API key
/// checked (401) and its access handed to the handler.
async fn guard(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let route = match path.as_str() {
        "/"
        | "/health"
        | "/metrics"
        | "/v1/models"
        | "/v1/chat/completions"
        | "/v1/completions"
        | "/v1/adapters" => path.clone(),
        p if p.starts_with("/v1/adapters/") => "/v1/adapters/{name}".into(),
        _ => "other".into(),
    };
    let resp = if state.draining() && path != "/metrics" {
        ApiError::unavailable().into_response()
    } else if let (Some(keys), true) = (&state.config.keys, path.starts_with("/v1/")) {
        let bearer = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match bearer.and_then(|k| keys.access(k)) {
            Some(access) => {
                req.extensions_mut().insert(access);
                next.run(req).await
            }
            None => ApiError::unauthorized(if bearer.is_some() {
                "invalid API key"
            } else {
                "an API key is required: send Authorization: Bearer <key>"
            })
            .into_response(),
        }
    } else {
        next.run(req).await
    };
    state.metrics.request(&route, resp.status().as_u16());
    resp
}

pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(page::page))
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(generate::chat))
        .route("/v1/completions", post(generate::completions))
        .route("/v1/adapters", get(adapters::list).post(adapters::load))
        .route("/v1/adapters/{name}", delete(adapters::unload))
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .fallback(|| async {
            ApiError::not_found(
                "no such route; try POST /v1/chat/completions, POST /v1/completions or GET /v1/models",
            )
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

/// Models and adapters of the store (those the key may use).
async fn models(
    State(state): State<Arc<AppState>>,
    req: Request,
) -> std::result::Result<Json<serde_json::Value>, ApiError> {
    let access = req.extensions().get::<Access>().cloned();
    let mut data = Vec::new();
    for kind in [Kind::Model, Kind::Adapter] {
        let names = state
            .store
            .list(kind)
            .map_err(|e| ApiError::internal(&e.to_string()))?;
        for n in names {
            if access.as_ref().is_some_and(|a| a.check(&n).is_err()) {
                continue;
            }
            let m = state.store.manifest(kind, &n).ok();
            let created = m.as_ref().map_or(0, |m| m.created_at);
            let mut entry = serde_json::json!({ "id": n, "object": "model", "created": created, "owned_by": "strata" });
            if kind == Kind::Adapter {
                if let Ok(c) = state.store.chain(&n) {
                    let parent = c
                        .adapters
                        .iter()
                        .rev()
                        .nth(1)
                        .map_or(c.base.clone(), |(p, _)| p.clone());
                    entry["root"] = c.base.into();
                    entry["parent"] = parent.into();
                }
            }
            data.push(entry);
        }
    }
    Ok(Json(serde_json::json!({ "object": "list", "data": data })))
}
