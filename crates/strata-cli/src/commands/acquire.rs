//! `strata acquire`: raw files → dataset.

use std::process::ExitCode;

use strata_data::acquire::{
    acquire, acquire_publish, acquire_task, acquire_tasks, quarantine_path, AcquireConfig,
    FetchConfig,
};
use strata_data::tasks::Task;
use strata_store::{Kind, Store};

use crate::cli::AcquireArgs;

pub fn run(store: &Store, a: &AcquireArgs) -> anyhow::Result<ExitCode> {
    let cfg = AcquireConfig {
        inputs: a.inputs.clone(),
        text_field: a.text_field.clone(),
        docs_per_shard: a.docs_per_shard,
        fetch: FetchConfig {
            user_agent: a.user_agent.clone(),
            per_host_delay_ms: a.delay_ms,
            concurrency: a.concurrency,
            timeout_ms: a.timeout_ms,
            retries: a.retries,
            max_bytes: a.max_bytes,
            ..FetchConfig::default()
        },
    };
    let by = "strata acquire";
    let r = match (a.phase.as_deref(), &a.task, a.tasks) {
        (Some("read"), Some(t), _) => {
            let t = Task::parse(t).map_err(anyhow::Error::msg)?;
            let r = acquire_task(store, &a.name, &cfg, t)?;
            println!("{}", serde_json::to_string(&r)?);
            return Ok(ExitCode::SUCCESS);
        }
        (Some("read"), None, _) => anyhow::bail!("--phase read needs --task I/N"),
        (Some("publish"), _, _) => acquire_publish(store, &a.name, &cfg, by)?,
        (Some(other), _, _) => anyhow::bail!("unknown phase {other:?} for acquire (read, publish)"),
        (None, Some(_), _) => anyhow::bail!("--task needs --phase read"),
        (None, None, Some(n)) => acquire_tasks(store, &a.name, &cfg, by, n)?,
        (None, None, None) => acquire(store, &a.name, &cfg, by)?,
    };
    let c = &r.manifest.counts;
    println!(
        "dataset {}: {} documents from {} files, {} quarantined{}",
        a.name,
        c.get("documents").cloned().unwrap_or_default(),
        c.get("files").cloned().unwrap_or_default(),
        c.get("quarantined").cloned().unwrap_or_default(),
        if r.skipped {
            " (up to date, skipped)"
        } else {
            ""
        }
    );
    if let Some(n) = c.get("urls") {
        println!(
            "urls: {n} listed, {} fetched, {} failed (outcomes: {})",
            c.get("urls_fetched").cloned().unwrap_or_default(),
            c.get("urls_failed").cloned().unwrap_or_default(),
            store
                .dir(Kind::Dataset, &a.name)
                .join("fetch_log.jsonl")
                .display()
        );
    }
    if c.get("quarantined")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
        > 0
    {
        println!(
            "quarantine: {}",
            quarantine_path(store, Kind::Dataset, &a.name).display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
