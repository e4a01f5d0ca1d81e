//! `strata serve`: the OpenAI-compatible API over every model and adapter in the store.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use strata_serve::http::{Keys, ServeConfig};
use strata_serve::{app, AppState, BatchConfig};
use strata_store::{Kind, Store};

use crate::cli::ServeArgs;

/// Ctrl-C or SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = async {
                match term.as_mut() {
                    Some(t) => { t.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

pub fn run(store: Store, a: &ServeArgs) -> anyhow::Result<ExitCode> {
    if let Some(m) = &a.model {
        store.chain(m)?;
    }
    anyhow::ensure!(
        a.max_batch >= 1 && a.prefill_chunk >= 1 && a.max_tokens_limit >= 1,
        "--max-batch, --prefill-chunk and --max-tokens-limit must be at least 1"
    );
    let keys = a
        .api_keys
        .as_deref()
        .map(Keys::load)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--api-keys {e}"))?;
    let config = ServeConfig {
        batch: BatchConfig {
            max_batch: a.max_batch,
            max_queue: a.max_queue,
            prefill_chunk: a.prefill_chunk,
            kv_budget: a.kv_budget_mib << 20,
            prefix_cache: a.prefix_cache_mib << 20,
        },
        max_body: a.max_body_bytes,
        max_tokens: a.max_tokens_limit,
        keys,
        max_images: a.max_images,
        max_image_bytes: a.max_image_bytes,
        max_image_pixels: a.max_image_pixels,
        image_url_hosts: a.image_url_hosts.clone(),
    };
    let mut names = store.list(Kind::Model)?;
    names.extend(store.list(Kind::Adapter)?);
    let mut state = AppState::with_config(store, a.model.clone(), config);
    state.quant = strata_engine::parse_weight_type(&a.quant)?;
    let state = Arc::new(state);
    for ad in &a.adapters {
        anyhow::ensure!(
            state.store.kind_of(ad) == Kind::Adapter,
            "--adapter {ad:?}: no adapter of that name in the store"
        );
        state
            .target(ad)
            .with_context(|| format!("loading adapter {ad:?}"))?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let auth = if a.api_keys.is_some() {
        "API keys required"
    } else {
        "no API keys: keep it on loopback"
    };
    let shutdown_state = state.clone();
    rt.block_on(async move {
        let addr = format!("{}:{}", a.host, a.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        eprintln!(
            "serving {} model(s) and adapter(s) [{}] on http://{addr}/v1 ({auth}); chat page at http://{addr}/",
            names.len(),
            names.join(", ")
        );
        axum::serve(listener, app(state))
            .with_graceful_shutdown(async move {
                stop_signal().await;
                eprintln!("stopping: new requests get 503, running ones finish");
                shutdown_state.begin_shutdown();
                // keep answering (503) until every sequence has finished; then axum closes the
                // connections once their responses are sent
                while !shutdown_state.idle() {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            })
            .await
            .context("server failed")
    })?;
    Ok(ExitCode::SUCCESS)
}
