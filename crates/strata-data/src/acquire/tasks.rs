//! Acquisition as independent tasks (`strata acquire --phase read --task I/N`, then `--phase publish`):
//! task `i` reads its contiguous share of the input files into its own shards, quarantine and fetch log
//! under the store's `work/` folder and leaves a completion marker (a rerun skips it); publish gathers
//! the tasks' files, in task order, into the dataset.

use std::io::Write;
use std::path::Path;

use strata_store::{Kind, Store};

use super::{plan, read_files, AcquireConfig, Counts};
use crate::tasks::{
    complete, finished, link_shards, marker, read_marker, task_dirs, work_folder, StepReport, Task,
    TaskReport,
};
use crate::{io_err, Result};

const READ: &str = "read";

/// Reads task `t`'s share of the input files.
///
/// # Errors
/// A missing input, or an I/O failure.
pub fn acquire_task(store: &Store, name: &str, cfg: &AcquireConfig, t: Task) -> Result<TaskReport> {
    let (files, manifest) = plan(name, cfg, "")?;
    let work = work_folder(store, "acquire", name, &manifest);
    if store
        .up_to_date(Kind::Dataset, name, &manifest.fingerprint)
        .is_some()
        || marker(&work, READ, t).exists()
    {
        let mut r = read_marker(&work, READ, t).unwrap_or(TaskReport {
            phase: READ.into(),
            task: t.index,
            of: t.count,
            skipped: true,
            counts: serde_json::json!({}),
        });
        r.skipped = true;
        return Ok(r);
    }
    let (lo, hi) = (
        t.index * files.len() / t.count,
        (t.index + 1) * files.len() / t.count,
    );
    let (tmp, dest) = task_dirs(&work.join(READ), t)?;
    let counts = read_files(&files[lo..hi], cfg, &tmp, &work.join("fetch-cache"))?;
    let mut value = serde_json::to_value(&counts).unwrap_or_default();
    value["files"] = (hi - lo).into();
    complete(&work, READ, t, Some((&tmp, &dest)), value)
}

/// Appends `from` to the open file `to` if `from` exists.
fn append(from: &Path, to: &mut Option<strata_store::AtomicFile>, target: &Path) -> Result<()> {
    if let Ok(bytes) = std::fs::read(from) {
        if to.is_none() {
            *to = Some(strata_store::AtomicFile::create(target)?);
        }
        if let Some(f) = to.as_mut() {
            f.write_all(&bytes).map_err(io_err(target))?;
        }
    }
    Ok(())
}

/// Publishes the dataset from every finished task.
///
/// # Errors
/// A task that has not finished (named), or an I/O failure.
pub fn acquire_publish(
    store: &Store,
    name: &str,
    cfg: &AcquireConfig,
    created_by: &str,
) -> Result<StepReport> {
    let (files, mut manifest) = plan(name, cfg, created_by)?;
    if let Some(existing) = store.up_to_date(Kind::Dataset, name, &manifest.fingerprint) {
        return Ok(StepReport {
            manifest: existing,
            skipped: true,
        });
    }
    let work = work_folder(store, "acquire", name, &manifest);
    let n = finished(&work, READ)?;
    let staging = store.staging(Kind::Dataset, name)?;
    let mut total = Counts::default();
    let q_target = staging.join("quarantine").join("quarantine.jsonl");
    let log_target = staging.join("fetch_log.jsonl");
    let (mut quarantine, mut log) = (None, None);
    for i in 0..n {
        let t = Task { index: i, count: n };
        let r = read_marker(&work, READ, t)?;
        let c: Counts = serde_json::from_value(r.counts).unwrap_or_default();
        total.add(&c);
        let dir = work.join(READ).join(format!("task-{i:05}"));
        link_shards(&dir, &staging, i)?;
        append(
            &dir.join("quarantine").join("quarantine.jsonl"),
            &mut quarantine,
            &q_target,
        )?;
        append(&dir.join("fetch_log.jsonl"), &mut log, &log_target)?;
    }
    for f in [quarantine, log].into_iter().flatten() {
        f.commit()?;
    }
    total.record(&mut manifest, files.len());
    manifest.counts.insert("tasks".into(), n.into());
    let manifest = store.publish(&staging, manifest)?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(StepReport {
        manifest,
        skipped: false,
    })
}

/// Every read task here, one after another, then publish.
///
/// # Errors
/// As [`acquire_task`] and [`acquire_publish`].
pub fn acquire_tasks(
    store: &Store,
    name: &str,
    cfg: &AcquireConfig,
    created_by: &str,
    n: usize,
) -> Result<StepReport> {
    let n = n.max(1);
    for index in 0..n {
        acquire_task(store, name, cfg, Task { index, count: n })?;
    }
    acquire_publish(store, name, cfg, created_by)
}
