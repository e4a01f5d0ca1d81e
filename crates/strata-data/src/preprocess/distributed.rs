//! Preprocessing as independent tasks that exchange files, for a Slurm array or a Kubernetes indexed Job
//! (or one machine, one task after another). The input's shards are split into `N` contiguous groups; the
//! phases are:
//!
//! 1. `filter`, tasks `i/N`: the per-document stages over group `i`; the kept documents, their MinHash
//!    signatures, each band's (band hash, document) pairs sorted, and the exact-text digests sorted.
//! 2. `buckets`, tasks `b/B`: bands `b, b+B, …` (and the exact digests in task 0): a merge of every filter
//!    task's sorted files; documents sharing a band hash become candidate pairs, kept when the signatures'
//!    Jaccard estimate reaches the threshold (read from the signature files, not held in memory).
//! 3. `cluster`, one task: exact copies and connected components of the near-duplicate pairs; the first
//!    document (in input order) of each is kept, the others listed for removal, per filter task.
//! 4. `write`, tasks `i/N`: group `i`'s kept documents without the removed ones, as shards.
//! 5. `publish`, one task: the shards, `stats.json` and the manifest, published atomically into the store.
//!
//! Each task writes into a temporary folder, renames it into place and then writes its completion marker
//! (`done/<phase>-<i>-of-<N>.json`); a task whose marker exists is skipped, so a rerun after `kill -9`
//! only redoes unfinished tasks. Memory is bounded by one group's documents, not by the corpus: phases 2
//! and 3 stream sorted files, and phase 3 holds only the duplicate pairs.

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use strata_store::{Kind, Manifest, Store};

use super::minhash::{estimate, MinHashConfig, MinHashDedup};
use super::{
    empty_stats, par_map, plan, progress_bar, publish_with_stats, run_batch, threads,
    PreprocessConfig, StageConfig, StageStats, BATCH,
};
use crate::io::{read_shards, shard_paths, ShardWriter};
use crate::tasks::{
    complete, finished, link_shards, marker, read_marker, task_dirs, work_folder, StepReport, Task,
    TaskReport,
};
use crate::{io_err, DataError, Doc, Result};

/// A phase of the distributed run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Filter,
    Buckets,
    Cluster,
    Write,
    Publish,
}

impl Phase {
    /// Parses `filter`, `buckets`, `cluster`, `write` or `publish`.
    ///
    /// # Errors
    /// Any other name.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "filter" => Self::Filter,
            "buckets" => Self::Buckets,
            "cluster" => Self::Cluster,
            "write" => Self::Write,
            "publish" => Self::Publish,
            _ => {
                return Err(format!(
                    "unknown phase {s:?} (filter, buckets, cluster, write, publish)"
                ))
            }
        })
    }
    /// Whether the phase runs as one task whatever the run's task count (cluster, publish).
    #[must_use]
    pub fn single(self) -> bool {
        matches!(self, Self::Cluster | Self::Publish)
    }

    /// The tasks this phase runs as in a run of `n` tasks: 1 for cluster and publish, else `n`.
    #[must_use]
    pub fn tasks(self, n: usize) -> usize {
        if self.single() {
            1
        } else {
            n.max(1)
        }
    }

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Filter => "filter",
            Self::Buckets => "buckets",
            Self::Cluster => "cluster",
            Self::Write => "write",
            Self::Publish => "publish",
        }
    }
}

/// The stages split for distribution: the per-document ones (which must come first), then the dedup ones.
struct Split {
    pure: Vec<StageConfig>,
    exact: bool,
    minhash: Option<MinHashConfig>,
}

fn split(cfg: &PreprocessConfig) -> Result<Split> {
    let mut out = Split {
        pure: Vec::new(),
        exact: false,
        minhash: None,
    };
    for st in &cfg.stages {
        match st {
            StageConfig::ExactDedup if !out.exact => out.exact = true,
            StageConfig::MinhashDedup(m) if out.minhash.is_none() => out.minhash = Some(m.clone()),
            StageConfig::ExactDedup | StageConfig::MinhashDedup(_) => {
                return Err(config_error("each dedup stage may appear once"));
            }
            other if out.exact || out.minhash.is_some() => {
                return Err(config_error(&format!(
                    "in a distributed run the dedup stages come last; {other:?} follows one"
                )));
            }
            other => out.pure.push(other.clone()),
        }
    }
    Ok(out)
}

fn config_error(reason: &str) -> DataError {
    DataError::Record {
        path: PathBuf::from("preprocess config"),
        line: 0,
        reason: reason.to_string(),
    }
}

/// Document key: filter task in the high bits, ordinal among the task's kept documents below. Keys sort in
/// input order because tasks own contiguous groups of shards.
fn key(task: usize, ordinal: usize) -> u64 {
    ((task as u64) << 40) | ordinal as u64
}
fn key_task(k: u64) -> usize {
    usize::try_from(k >> 40).unwrap_or(usize::MAX)
}
fn key_ordinal(k: u64) -> u64 {
    k & ((1 << 40) - 1)
}

/// A count in a marker's JSON.
fn count(v: &serde_json::Value) -> usize {
    v.as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0)
}

fn write_pairs(path: &Path, pairs: &[(u64, u64)]) -> Result<()> {
    let mut w = BufWriter::new(File::create(path).map_err(io_err(path))?);
    for &(a, b) in pairs {
        w.write_all(&a.to_le_bytes()).map_err(io_err(path))?;
        w.write_all(&b.to_le_bytes()).map_err(io_err(path))?;
    }
    let f = w.into_inner().map_err(|e| io_err(path)(e.into_error()))?;
    f.sync_all().map_err(io_err(path))
}

/// A file of (u64, u64) pairs, streamed.
struct PairReader(BufReader<File>, PathBuf);

impl PairReader {
    fn open(path: &Path) -> Result<Self> {
        Ok(Self(
            BufReader::new(File::open(path).map_err(io_err(path))?),
            path.to_path_buf(),
        ))
    }
    fn next_pair(&mut self) -> Result<Option<(u64, u64)>> {
        let mut b = [0u8; 16];
        match self.0.read_exact(&mut b) {
            Ok(()) => {
                let mut x = [0u8; 8];
                x.copy_from_slice(&b[..8]);
                let mut y = [0u8; 8];
                y.copy_from_slice(&b[8..]);
                Ok(Some((u64::from_le_bytes(x), u64::from_le_bytes(y))))
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(io_err(&self.1)(e)),
        }
    }
}

/// Runs one task of one phase.
///
/// # Errors
/// A config the distributed run cannot follow, a phase run before the one it needs has finished, or an
/// I/O failure.
pub fn run_task(
    store: &Store,
    input: &str,
    output: &str,
    cfg: &PreprocessConfig,
    created_by: &str,
    phase: Phase,
    task: Task,
) -> Result<TaskReport> {
    let (src, manifest) = plan(store, input, output, cfg, created_by)?;
    if store
        .up_to_date(Kind::Dataset, output, &manifest.fingerprint)
        .is_some()
    {
        // already published (and its work folder removed)
        return Ok(TaskReport {
            phase: phase.name().into(),
            task: task.index,
            of: task.count,
            skipped: true,
            counts: serde_json::json!({}),
        });
    }
    let work = work_folder(store, "preprocess", output, &manifest);
    let task = if phase.single() {
        Task { index: 0, count: 1 }
    } else {
        task
    };
    let m = marker(&work, phase.name(), task);
    if m.exists() {
        let mut r = read_marker(&work, phase.name(), task)?;
        r.skipped = true;
        return Ok(r);
    }
    let sp = split(cfg)?;
    match phase {
        Phase::Filter => filter(&src, output, cfg, &sp, &work, task),
        Phase::Buckets => buckets(&sp, &work, task),
        Phase::Cluster => cluster(&sp, &work),
        Phase::Write => write(cfg, &work, task),
        Phase::Publish => publish(store, output, manifest, &sp, &work),
    }
}

/// The tasks of `phase` in a run of `tasks` tasks whose completion markers are missing: what a resubmission
/// runs (none when the dataset is already published with this config; task 0 alone stands for the
/// single-task phases, cluster and publish).
///
/// # Errors
/// The input missing, or a config the distributed run cannot follow.
pub fn unfinished(
    store: &Store,
    input: &str,
    output: &str,
    cfg: &PreprocessConfig,
    created_by: &str,
    phase: Phase,
    tasks: usize,
) -> Result<Vec<usize>> {
    let (_, manifest) = plan(store, input, output, cfg, created_by)?;
    split(cfg)?;
    if store
        .up_to_date(Kind::Dataset, output, &manifest.fingerprint)
        .is_some()
    {
        return Ok(Vec::new());
    }
    let work = work_folder(store, "preprocess", output, &manifest);
    let n = phase.tasks(tasks);
    Ok((0..n)
        .filter(|&index| !marker(&work, phase.name(), Task { index, count: n }).exists())
        .collect())
}

/// Runs every phase here, `tasks` tasks each (one after another), then removes the work folder.
///
/// # Errors
/// As [`run_task`].
pub fn run_all(
    store: &Store,
    input: &str,
    output: &str,
    cfg: &PreprocessConfig,
    created_by: &str,
    tasks: usize,
) -> Result<StepReport> {
    let (_, manifest) = plan(store, input, output, cfg, created_by)?;
    if let Some(existing) = store.up_to_date(Kind::Dataset, output, &manifest.fingerprint) {
        return Ok(StepReport {
            manifest: existing,
            skipped: true,
        });
    }
    let n = tasks.max(1);
    for phase in [Phase::Filter, Phase::Buckets, Phase::Write] {
        for index in 0..n {
            let t = Task { index, count: n };
            if phase == Phase::Write && index == 0 {
                run_task(store, input, output, cfg, created_by, Phase::Cluster, t)?;
            }
            run_task(store, input, output, cfg, created_by, phase, t)?;
        }
    }
    run_task(
        store,
        input,
        output,
        cfg,
        created_by,
        Phase::Publish,
        Task { index: 0, count: 1 },
    )?;
    let manifest = store.manifest(Kind::Dataset, output)?;
    Ok(StepReport {
        manifest,
        skipped: false,
    })
}

/// `src`: the input dataset's folder; `output` names the progress bar.
fn filter(
    src: &Path,
    output: &str,
    cfg: &PreprocessConfig,
    sp: &Split,
    work: &Path,
    t: Task,
) -> Result<TaskReport> {
    let shards = shard_paths(src)?;
    let (lo, hi) = (
        t.index * shards.len() / t.count,
        (t.index + 1) * shards.len() / t.count,
    );
    let (tmp, dest) = task_dirs(&work.join("filter"), t)?;
    let mut stages = sp
        .pure
        .iter()
        .map(StageConfig::build)
        .collect::<Result<Vec<_>>>()?;
    let mut stats = empty_stats(&stages);
    let docs_dir = tmp.join("docs");
    std::fs::create_dir_all(&docs_dir).map_err(io_err(&docs_dir))?;
    let mut writer = ShardWriter::new(&docs_dir, cfg.docs_per_shard);
    let dedup = sp.minhash.clone().map(MinHashDedup::new);
    let bands = sp.minhash.as_ref().map_or(0, |m| m.bands);
    let mut band_pairs: Vec<Vec<(u64, u64)>> = vec![Vec::new(); bands];
    let mut exact_pairs: Vec<(u64, u64)> = Vec::new();
    let sig_path = tmp.join("signatures.bin");
    let mut sigs = BufWriter::new(File::create(&sig_path).map_err(io_err(&sig_path))?);
    let threads = threads();
    let (mut input_docs, mut ordinal) = (0usize, 0usize);
    let mut docs = read_shards(shards[lo..hi].to_vec());
    let bar = progress_bar(&format!("{output} filter {}/{}", t.index, t.count), 0);
    loop {
        let batch: Vec<Doc> = docs
            .by_ref()
            .take(BATCH)
            .collect::<strata_records::Result<_>>()?;
        if batch.is_empty() {
            break;
        }
        input_docs += batch.len();
        bar.set_position(input_docs as u64);
        let kept = run_batch(&mut stages, &mut stats, batch, threads);
        let prepared = par_map(kept.iter().collect::<Vec<&Doc>>(), threads, &|d: &Doc| {
            let sig = dedup.as_ref().map(|m| m.signature_of(&d.text));
            let digest = sp.exact.then(|| {
                let h = Sha256::digest(d.text.as_bytes());
                u64::from_le_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]])
            });
            (sig, digest)
        });
        for (doc, (sig, digest)) in kept.iter().zip(prepared) {
            let k = key(t.index, ordinal);
            ordinal += 1;
            writer.write(doc)?;
            if let Some(d) = digest {
                exact_pairs.push((d, k));
            }
            if let (Some(m), Some(sig)) = (&sp.minhash, sig) {
                let width = m.bands * m.rows;
                let mut row = vec![0u32; width];
                if !sig.is_empty() {
                    row.copy_from_slice(&sig);
                    for (b, pairs) in band_pairs.iter_mut().enumerate() {
                        pairs.push((m.band_key(&sig, b), k));
                    }
                }
                for x in row {
                    sigs.write_all(&x.to_le_bytes())
                        .map_err(io_err(&sig_path))?;
                }
            }
        }
    }
    bar.finish_and_clear();
    let kept = writer.finish()?;
    sigs.into_inner()
        .map_err(|e| io_err(&sig_path)(e.into_error()))?
        .sync_all()
        .map_err(io_err(&sig_path))?;
    for (b, mut pairs) in band_pairs.into_iter().enumerate() {
        pairs.sort_unstable();
        write_pairs(&tmp.join(format!("band-{b:04}.bin")), &pairs)?;
    }
    exact_pairs.sort_unstable();
    write_pairs(&tmp.join("exact.bin"), &exact_pairs)?;
    let counts = serde_json::json!({ "shards": hi - lo, "input": input_docs, "kept": kept, "stages": stats });
    complete(work, Phase::Filter.name(), t, Some((&tmp, &dest)), counts)
}

/// Reads the signature of a document from its filter task's signature file.
struct Signatures {
    files: Vec<(File, PathBuf)>,
    width: usize,
}

impl Signatures {
    fn open(work: &Path, n: usize, width: usize) -> Result<Self> {
        let files = (0..n)
            .map(|i| {
                let p = work
                    .join("filter")
                    .join(format!("task-{i:05}"))
                    .join("signatures.bin");
                Ok((File::open(&p).map_err(io_err(&p))?, p))
            })
            .collect::<Result<_>>()?;
        Ok(Self { files, width })
    }
    fn get(&mut self, k: u64) -> Result<Vec<u32>> {
        let (f, path) = &mut self.files[key_task(k)];
        let mut buf = vec![0u8; self.width * 4];
        f.seek(SeekFrom::Start(key_ordinal(k) * buf.len() as u64))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(io_err(path.as_path()))?;
        Ok(buf
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

/// Merges the sorted (hash, key) files of every filter task; for each hash shared by several documents,
/// the first is paired with each of the others (kept when `verify` says so).
fn merge_groups(
    inputs: &[PathBuf],
    mut verify: impl FnMut(u64, u64) -> Result<bool>,
) -> Result<Vec<(u64, u64)>> {
    let mut readers = inputs
        .iter()
        .map(|p| PairReader::open(p))
        .collect::<Result<Vec<_>>>()?;
    let mut heap = BinaryHeap::new();
    for (i, r) in readers.iter_mut().enumerate() {
        if let Some((h, k)) = r.next_pair()? {
            heap.push(std::cmp::Reverse((h, k, i)));
        }
    }
    let mut out = Vec::new();
    let mut group: Option<(u64, u64)> = None; // (hash, first key)
    while let Some(std::cmp::Reverse((h, k, i))) = heap.pop() {
        match group {
            Some((gh, first)) if gh == h => {
                if verify(first, k)? {
                    out.push((first, k));
                }
            }
            _ => group = Some((h, k)),
        }
        if let Some((h2, k2)) = readers[i].next_pair()? {
            heap.push(std::cmp::Reverse((h2, k2, i)));
        }
    }
    Ok(out)
}

fn buckets(sp: &Split, work: &Path, t: Task) -> Result<TaskReport> {
    let n = finished(work, Phase::Filter.name())?;
    let (tmp, dest) = task_dirs(&work.join("buckets"), t)?;
    let task_file =
        |i: usize, name: &str| work.join("filter").join(format!("task-{i:05}")).join(name);
    let mut counts = serde_json::Map::new();
    if sp.exact && t.index == 0 {
        let pairs = merge_groups(
            &(0..n)
                .map(|i| task_file(i, "exact.bin"))
                .collect::<Vec<_>>(),
            |_, _| Ok(true),
        )?;
        counts.insert("exact_pairs".into(), pairs.len().into());
        write_pairs(&tmp.join("exact.bin"), &pairs)?;
    }
    if let Some(m) = &sp.minhash {
        let mut sigs = Signatures::open(work, n, m.bands * m.rows)?;
        let (mut candidates, mut verified) = (0usize, 0usize);
        for b in (t.index..m.bands).step_by(t.count) {
            let name = format!("band-{b:04}.bin");
            let pairs = merge_groups(
                &(0..n).map(|i| task_file(i, &name)).collect::<Vec<_>>(),
                |a, c| {
                    candidates += 1;
                    Ok(estimate(&sigs.get(a)?, &sigs.get(c)?) >= m.threshold)
                },
            )?;
            verified += pairs.len();
            write_pairs(&tmp.join(&name), &pairs)?;
        }
        counts.insert("candidate_pairs".into(), candidates.into());
        counts.insert("near_duplicate_pairs".into(), verified.into());
    }
    complete(
        work,
        Phase::Buckets.name(),
        t,
        Some((&tmp, &dest)),
        counts.into(),
    )
}

fn find(parent: &mut HashMap<u64, u64>, mut k: u64) -> u64 {
    while let Some(&p) = parent.get(&k) {
        if p == k {
            break;
        }
        let gp = parent.get(&p).copied().unwrap_or(p);
        parent.insert(k, gp);
        k = gp;
    }
    k
}

fn cluster(sp: &Split, work: &Path) -> Result<TaskReport> {
    let n = finished(work, Phase::Filter.name())?;
    let nb = finished(work, Phase::Buckets.name())?;
    let t = Task { index: 0, count: 1 };
    let (tmp, dest) = task_dirs(&work.join("cluster"), t)?;
    let mut exact: HashSet<u64> = HashSet::new();
    let mut parent: HashMap<u64, u64> = HashMap::new();
    let mut files = Vec::new();
    for b in 0..nb {
        let dir = work.join("buckets").join(format!("task-{b:05}"));
        for e in std::fs::read_dir(&dir)
            .map_err(io_err(&dir))?
            .filter_map(std::result::Result::ok)
        {
            files.push(e.path());
        }
    }
    files.sort();
    for f in files {
        let is_exact = f.file_name().is_some_and(|x| x == "exact.bin");
        let mut r = PairReader::open(&f)?;
        while let Some((a, b)) = r.next_pair()? {
            if is_exact {
                exact.insert(b);
            } else if sp.minhash.is_some() {
                let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
                parent.entry(ra).or_insert(ra);
                parent.entry(rb).or_insert(rb);
                if ra != rb {
                    // the earlier document (smaller key) is the root, and kept
                    let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
                    parent.insert(hi, lo);
                }
            }
        }
    }
    let mut removed: Vec<Vec<(u64, u8)>> = vec![Vec::new(); n];
    for &k in &exact {
        removed[key_task(k)].push((k, 0));
    }
    let keys: Vec<u64> = parent.keys().copied().collect();
    let mut near = 0usize;
    for k in keys {
        if find(&mut parent, k) != k && !exact.contains(&k) {
            removed[key_task(k)].push((k, 1));
            near += 1;
        }
    }
    for (i, mut list) in removed.into_iter().enumerate() {
        list.sort_unstable();
        let pairs: Vec<(u64, u64)> = list.into_iter().map(|(k, r)| (k, u64::from(r))).collect();
        write_pairs(&tmp.join(format!("remove-{i:05}.bin")), &pairs)?;
    }
    let counts = serde_json::json!({ "duplicate": exact.len(), "near_duplicate": near });
    complete(work, Phase::Cluster.name(), t, Some((&tmp, &dest)), counts)
}

fn write(cfg: &PreprocessConfig, work: &Path, t: Task) -> Result<TaskReport> {
    finished(work, Phase::Cluster.name())?;
    let n = finished(work, Phase::Filter.name())?;
    if t.count != n {
        return Err(config_error(&format!(
            "write runs as {n} tasks, like filter; got --task {}/{}",
            t.index, t.count
        )));
    }
    let rm_path = work
        .join("cluster")
        .join("task-00000")
        .join(format!("remove-{:05}.bin", t.index));
    let mut removed = HashSet::new();
    let mut r = PairReader::open(&rm_path)?;
    while let Some((k, _)) = r.next_pair()? {
        removed.insert(k);
    }
    let (tmp, dest) = task_dirs(&work.join("write"), t)?;
    let mut writer =
        ShardWriter::new(&tmp, cfg.docs_per_shard).with_copy(crate::io::parquet_copy(cfg.parquet));
    let src = work
        .join("filter")
        .join(format!("task-{:05}", t.index))
        .join("docs");
    for (ordinal, doc) in read_shards(shard_paths(&src)?).enumerate() {
        let doc = doc?;
        if !removed.contains(&key(t.index, ordinal)) {
            writer.write(&doc)?;
        }
    }
    let kept = writer.finish()?;
    complete(
        work,
        Phase::Write.name(),
        t,
        Some((&tmp, &dest)),
        serde_json::json!({ "kept": kept }),
    )
}

/// `manifest`: the one the dataset will have (from [`plan`]).
fn publish(
    store: &Store,
    output: &str,
    manifest: Manifest,
    sp: &Split,
    work: &Path,
) -> Result<TaskReport> {
    let n = finished(work, Phase::Write.name())?;
    let staging = store.staging(Kind::Dataset, output)?;
    // pure stages: the sum over filter tasks; dedup stages: from the cluster
    let mut stats: Vec<StageStats> = Vec::new();
    let (mut total, mut filtered) = (0usize, 0usize);
    for i in 0..n {
        let r = read_marker(work, Phase::Filter.name(), Task { index: i, count: n })?;
        total += count(&r.counts["input"]);
        filtered += count(&r.counts["kept"]);
        let st: Vec<StageStats> =
            serde_json::from_value(r.counts["stages"].clone()).unwrap_or_default();
        if stats.is_empty() {
            stats = st;
        } else {
            for (a, b) in stats.iter_mut().zip(st) {
                a.input += b.input;
                a.kept += b.kept;
                for (reason, c) in b.removed {
                    *a.removed.entry(reason).or_default() += c;
                }
            }
        }
    }
    let cl = read_marker(work, Phase::Cluster.name(), Task { index: 0, count: 1 })?;
    let mut left = filtered;
    for (name, reason, on) in [
        ("exact_dedup", "duplicate", sp.exact),
        ("minhash_dedup", "near_duplicate", sp.minhash.is_some()),
    ] {
        if on {
            let removed = count(&cl.counts[reason]);
            let mut s = StageStats {
                stage: name.into(),
                input: left,
                kept: left - removed,
                ..StageStats::default()
            };
            s.removed.insert(reason.into(), removed);
            left -= removed;
            stats.push(s);
        }
    }
    let mut kept = 0usize;
    for i in 0..n {
        let t = Task { index: i, count: n };
        kept += count(&read_marker(work, Phase::Write.name(), t)?.counts["kept"]);
        link_shards(
            &work.join("write").join(format!("task-{i:05}")),
            &staging,
            i,
        )?;
    }
    let stats = serde_json::json!({ "input": total, "kept": kept, "stages": stats, "tasks": n });
    publish_with_stats(store, &staging, manifest, total, kept, &stats)?;
    let report = TaskReport {
        phase: Phase::Publish.name().into(),
        task: 0,
        of: 1,
        skipped: false,
        counts: serde_json::json!({ "input": total, "kept": kept }),
    };
    // the work folder is no longer needed once the dataset is in the store
    let _ = std::fs::remove_dir_all(work);
    Ok(report)
}
