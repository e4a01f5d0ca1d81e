//! `strata serve`: the OpenAI-compatible API over every model in the store.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use strata_serve::{app, AppState};
use strata_store::{Kind, Store};

use crate::cli::ServeArgs;

pub fn run(store: Store, a: &ServeArgs) -> anyhow::Result<ExitCode> {
    if let Some(m) = &a.model {
        store.require(Kind::Model, m)?;
    }
    let models = store.list(Kind::Model)?;
    let mut state = AppState::new(store, a.model.clone());
    state.quant = strata_model::cpu::parse_weight_type(&a.quant)?;
    let state = Arc::new(state);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let addr = format!("{}:{}", a.host, a.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        eprintln!(
            "serving {} model(s) [{}] on http://{addr}/v1/chat/completions",
            models.len(),
            models.join(", ")
        );
        axum::serve(listener, app(state))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .context("server failed")
    })?;
    Ok(ExitCode::SUCCESS)
}
