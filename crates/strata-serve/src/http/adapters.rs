//! Adapters at run time: `GET /v1/adapters` lists the resident ones, `POST /v1/adapters {"name": …}` loads
//! one from the store (and the chain beneath it) without a restart, `DELETE /v1/adapters/{name}` drops it
//! from memory. Requests naming an adapter that is in the store but not resident load it on first use, as
//! models are; a loaded adapter serves in the same batches as its base.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::Json;
use serde_json::{json, Value};
use strata_store::Kind;

use super::{read_body, Access, ApiError, AppState};

fn admin(req: &Request) -> Result<(), ApiError> {
    match req.extensions().get::<Access>() {
        Some(a) => a.check_admin(),
        None => Ok(()),
    }
}

pub async fn list(State(state): State<Arc<AppState>>) -> Json<Value> {
    let data: Vec<Value> = state
        .resident_adapters()
        .into_iter()
        .map(|n| json!({"id": n, "object": "adapter"}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

pub async fn load(
    State(state): State<Arc<AppState>>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    admin(&req)?;
    let body = read_body(req, state.config.max_body).await?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(&format!("invalid request body: {e}"), None))?;
    let name = v
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ApiError::bad_request("name (an adapter of the store) is required", Some("name"))
        })?
        .to_string();
    if state.store.kind_of(&name) != Kind::Adapter {
        return Err(ApiError::not_found(&format!(
            "no adapter named {name:?} in the store (import one with `strata import --base MODEL`)"
        )));
    }
    let target = {
        let (state, name) = (state.clone(), name.clone());
        tokio::task::spawn_blocking(move || state.target(&name))
            .await
            .map_err(|e| ApiError::internal(&e.to_string()))??
    };
    let chain: Vec<String> = target
        .adapters
        .map(|s| s.adapters.iter().map(|a| a.name.clone()).collect())
        .unwrap_or_default();
    Ok(Json(
        json!({"id": name, "object": "adapter", "base": target.scheduler.engine().name, "chain": chain}),
    ))
}

pub async fn unload(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    admin(&req)?;
    if state.unload_adapter(&name) {
        Ok(Json(
            json!({"id": name, "object": "adapter", "deleted": true}),
        ))
    } else {
        Err(ApiError::not_found(&format!(
            "adapter {name:?} is not resident"
        )))
    }
}
