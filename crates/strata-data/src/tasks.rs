//! Steps as independent tasks that exchange files (a Slurm array, a Kubernetes indexed Job, or one machine,
//! one task after another), shared by acquisition (`acquire --phase read|publish`) and distributed
//! preprocessing (`preprocess --phase filter|buckets|cluster|write|publish`): task numbering, each step's work
//! folder, a task's temporary folder renamed into place, completion markers (a rerun skips finished tasks),
//! and the shard hand-over to the publishing task.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use strata_store::{Manifest, Store};

use crate::{io_err, DataError, Result};

pub use strata_records::StepReport;

/// Task `index` of `count` (`--task 3/8`; 0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Task {
    pub index: usize,
    pub count: usize,
}

impl Task {
    /// Parses `I/N` with `I < N`.
    ///
    /// # Errors
    /// A malformed task.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("task {s:?}: expected I/N with 0 <= I < N, e.g. 0/8");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }
}

/// What a phase task did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskReport {
    pub phase: String,
    pub task: usize,
    pub of: usize,
    /// True when its completion marker existed and it was skipped.
    #[serde(default)]
    pub skipped: bool,
    pub counts: serde_json::Value,
}

/// The work folder of a step (`what`: `preprocess`, `acquire`, `fetch`) under the store, named by the
/// output and the step's fingerprint, so a changed config or input starts afresh.
pub(crate) fn work_folder(store: &Store, what: &str, output: &str, manifest: &Manifest) -> PathBuf {
    let fp: String = manifest.fingerprint.chars().take(16).collect();
    store
        .root()
        .join("work")
        .join(format!("{what}-{output}-{fp}"))
}

pub(crate) fn marker(work: &Path, phase: &str, t: Task) -> PathBuf {
    work.join("done")
        .join(format!("{phase}-{:05}-of-{:05}.json", t.index, t.count))
}

/// The task count of a finished phase, from its markers; an error naming the first missing task.
pub(crate) fn finished(work: &Path, phase: &str) -> Result<usize> {
    let prefix = format!("{phase}-");
    let mut count = None;
    let mut have = HashSet::new();
    if let Ok(rd) = std::fs::read_dir(work.join("done")) {
        for e in rd.filter_map(std::result::Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name
                .strip_prefix(&prefix)
                .and_then(|r| r.strip_suffix(".json"))
            else {
                continue;
            };
            if let Some((i, n)) = rest.split_once("-of-") {
                if let (Ok(i), Ok(n)) = (i.parse::<usize>(), n.parse::<usize>()) {
                    count = Some(n);
                    have.insert(i);
                }
            }
        }
    }
    let n = count.ok_or_else(|| phase_missing(work, phase, "no task has finished"))?;
    if let Some(i) = (0..n).find(|i| !have.contains(i)) {
        return Err(phase_missing(
            work,
            phase,
            &format!("task {i}/{n} has not finished"),
        ));
    }
    Ok(n)
}

fn phase_missing(work: &Path, phase: &str, what: &str) -> DataError {
    DataError::Record {
        path: work.join("done"),
        line: 0,
        reason: format!("phase {phase} must finish first: {what}"),
    }
}

pub(crate) fn read_marker(work: &Path, phase: &str, t: Task) -> Result<TaskReport> {
    let p = marker(work, phase, t);
    let text = std::fs::read_to_string(&p).map_err(io_err(&p))?;
    serde_json::from_str(&text).map_err(|e| DataError::Record {
        path: p,
        line: e.line(),
        reason: e.to_string(),
    })
}

/// A task's temporary folder (stale ones of killed runs removed first) and its final place.
pub(crate) fn task_dirs(parent: &Path, t: Task) -> Result<(PathBuf, PathBuf)> {
    let name = format!("task-{:05}", t.index);
    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    if let Ok(rd) = std::fs::read_dir(parent) {
        for e in rd.filter_map(std::result::Result::ok) {
            if e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{name}.tmp"))
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let tmp = parent.join(format!("{name}.tmp-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    Ok((tmp, parent.join(name)))
}

/// Moves a finished task's folder into place, then writes its marker.
pub(crate) fn complete(
    work: &Path,
    phase: &str,
    t: Task,
    tmp: Option<(&Path, &Path)>,
    counts: serde_json::Value,
) -> Result<TaskReport> {
    if let Some((tmp, dest)) = tmp {
        if dest.exists() {
            std::fs::remove_dir_all(dest).map_err(io_err(dest))?;
        }
        std::fs::rename(tmp, dest).map_err(io_err(dest))?;
    }
    let report = TaskReport {
        phase: phase.into(),
        task: t.index,
        of: t.count,
        skipped: false,
        counts,
    };
    strata_store::write_json_atomic(marker(work, phase, t), &report)?;
    Ok(report)
}

/// Hard-links (or copies) the `part-*` files of a task's folder into `staging` as `part-<task>-*`, in order.
pub(crate) fn link_shards(dir: &Path, staging: &Path, task: usize) -> Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(std::result::Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    for f in files {
        let name = f
            .file_name()
            .map(|x| x.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(rest) = name.strip_prefix("part-") else {
            continue;
        };
        let to = staging.join(format!("part-{task:05}-{rest}"));
        if std::fs::hard_link(&f, &to).is_err() {
            std::fs::copy(&f, &to).map_err(io_err(&to))?;
        }
    }
    Ok(())
}
