//! The OpenAI-compatible HTTP API. [`app`] returns a `Router` so tests drive it without a socket.

mod chat;
mod error;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
    engines: Mutex<HashMap<String, Arc<Engine>>>,
}

impl AppState {
    #[must_use]
    pub fn new(store: Store, default_model: Option<String>) -> Self {
        Self {
            store,
            default_model,
            quant: None,
            engines: Mutex::new(HashMap::new()),
        }
    }

    /// The engine of a model in the store, loading it on first use.
    ///
    /// # Errors
    /// When the model is not in the store or fails to load.
    pub fn engine(&self, name: &str) -> Result<Arc<Engine>> {
        if let Some(e) = self
            .engines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
        {
            return Ok(e.clone());
        }
        let dir = self.store.require(Kind::Model, name)?;
        let engine = Arc::new(Engine::load_quantized(name, &dir, self.quant)?);
        self.engines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_string(), engine.clone());
        Ok(engine)
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
