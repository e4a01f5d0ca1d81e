//! The OpenAI-compatible HTTP API. [`app`] returns a `Router` so tests drive it without a socket.

mod chat;
mod error;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use strata_store::{Kind, Store};

use crate::{Engine, Result};
pub use error::ApiError;

/// Shared server state: the store, and models loaded on first use.
pub struct AppState {
    pub store: Store,
    /// Used when a request names no model.
    pub default_model: Option<String>,
    /// Weight type every model is quantised to at load (None = f32).
    pub quant: Option<strata_model::cpu::WeightType>,
    /// One slot per model name: the map's lock is held only to find the slot; the slot's lock is held while
    /// its model loads, so concurrent first requests for one model wait for one load (and different models
    /// load side by side).
    engines: Mutex<HashMap<String, Slot>>,
    loads: AtomicUsize,
}

type Slot = Arc<Mutex<Option<Arc<Engine>>>>;

impl AppState {
    #[must_use]
    pub fn new(store: Store, default_model: Option<String>) -> Self {
        Self {
            store,
            default_model,
            quant: None,
            engines: Mutex::new(HashMap::new()),
            loads: AtomicUsize::new(0),
        }
    }

    /// How many times a model was loaded from the store since the server started.
    #[must_use]
    pub fn loads(&self) -> usize {
        self.loads.load(Ordering::Relaxed)
    }

    /// The engine of a model in the store, loading it on first use.
    ///
    /// # Errors
    /// When the model is not in the store or fails to load.
    pub fn engine(&self, name: &str) -> Result<Arc<Engine>> {
        let slot: Slot = self
            .engines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.to_string())
            .or_default()
            .clone();
        let mut loaded = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = loaded.as_ref() {
            return Ok(e.clone());
        }
        let engine = self
            .store
            .require(Kind::Model, name)
            .map_err(crate::ServeError::from)
            .and_then(|dir| Engine::load_quantized(name, &dir, self.quant));
        match engine {
            Ok(e) => {
                self.loads.fetch_add(1, Ordering::Relaxed);
                let e = Arc::new(e);
                *loaded = Some(e.clone());
                Ok(e)
            }
            Err(err) => {
                // an unknown or broken name leaves no slot behind (requests naming garbage cannot grow
                // the map); a request waiting on this slot tries the load itself
                drop(loaded);
                let mut map = self.engines.lock().unwrap_or_else(PoisonError::into_inner);
                if map.get(name).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                    map.remove(name);
                }
                Err(err)
            }
        }
    }
}

pub fn app(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat::completions))
        .fallback(|| async {
            ApiError::not_found("no such route; try POST /v1/chat/completions or GET /v1/models")
        })
        .with_state(state)
}

async fn models(
    State(state): State<Arc<AppState>>,
) -> std::result::Result<Json<serde_json::Value>, ApiError> {
    let names = state
        .store
        .list(Kind::Model)
        .map_err(|e| ApiError::internal(&e.to_string()))?;
    let data: Vec<serde_json::Value> = names
        .iter()
        .map(|n| {
            let created = state.store.manifest(Kind::Model, n).map_or(0, |m| m.created_at);
            serde_json::json!({ "id": n, "object": "model", "created": created, "owned_by": "strata" })
        })
        .collect();
    Ok(Json(serde_json::json!({ "object": "list", "data": data })))
}
