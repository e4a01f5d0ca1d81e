//! `strata pipeline run FILE --executor slurm`: the pipeline's steps as Slurm batch jobs, each depending on
//! the one before (`afterok`, and `--kill-on-invalid-dep=yes`, so that a failure cancels what follows
//! instead of leaving it pending for ever). Every job runs this same binary on this same store:
//! `strata pipeline run FILE --step K` (one step), and for a text preprocess step with `tasks = N` one array
//! job per phase, `--phase P --task $SLURM_ARRAY_TASK_ID/N` (filter, buckets and write as N tasks; cluster
//! and publish as one). Completion markers of the distributed preprocess are read at submission: tasks
//! that finished are not submitted again. A train or finetune step is one job of `[step.slurm]`'s nodes and
//! ranks, started with mpirun when ranks > 1 (the binary built with `--features mpi`; Open MPI takes the
//! hosts from the allocation).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;
use serde::Deserialize;
use strata_data::preprocess::distributed::{self, Phase};
use strata_store::Store;

use crate::cli::{PipelineRunArgs, SlurmArgs};
use crate::pipeline::{PipelineFile, Step};

/// `[settings.slurm]` of a pipeline file: what every job asks for (the flags of `pipeline run` override).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmSettings {
    #[serde(default)]
    pub partition: Option<String>,
    #[serde(default)]
    pub account: Option<String>,
    /// Time limit per job (`2:00:00`).
    #[serde(default)]
    pub time: Option<String>,
    /// Memory per node (`16G`).
    #[serde(default)]
    pub mem: Option<String>,
    /// Array tasks of one phase running at once (`--array=…%P`).
    #[serde(default)]
    pub parallel: Option<usize>,
    /// More `#SBATCH` lines, as written after `#SBATCH ` (`"--qos=normal"`).
    #[serde(default)]
    pub extra: Vec<String>,
}

/// `[step.slurm]` of a train or finetune step: its job's shape.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepResources {
    /// Nodes of the allocation (default 1).
    #[serde(default)]
    pub nodes: Option<usize>,
    /// MPI ranks in all (default 1; more need the `mpi` build).
    #[serde(default)]
    pub ranks: Option<usize>,
    /// CPUs per rank (`--cpus-per-task`).
    #[serde(default)]
    pub cpus_per_rank: Option<usize>,
    /// Over `[settings.slurm] time` for this step.
    #[serde(default)]
    pub time: Option<String>,
    /// Over `[settings.slurm] mem` for this step.
    #[serde(default)]
    pub mem: Option<String>,
}

/// One batch job to submit.
#[derive(Debug)]
struct Job {
    /// `strata-<step>[-<phase>]`.
    name: String,
    /// The array's task ids (`0-3`, `1,2`), with the concurrency limit added at writing.
    array: Option<String>,
    nodes: usize,
    ranks: usize,
    cpus_per_rank: Option<usize>,
    time: Option<String>,
    mem: Option<String>,
    /// The command line, after `cd`.
    command: String,
}

/// Quotes `s` for a POSIX shell.
fn sh(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Task ids as Slurm's `--array` writes them: runs of consecutive ids as `a-b`.
fn array_spec(ids: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let mut j = i;
        while j + 1 < ids.len() && ids[j + 1] == ids[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            ids[i].to_string()
        } else {
            format!("{}-{}", ids[i], ids[j])
        });
        i = j + 1;
    }
    out.join(",")
}

/// What the jobs of one pipeline run share: the binary, the store and the folder they start in.
struct Ctx {
    exe: String,
    workdir: String,
    cwd: String,
}

impl Ctx {
    fn step_command(&self, file: &Path, k: usize) -> String {
        format!(
            "{} --workdir {} pipeline run {} --step {k}",
            sh(&self.exe),
            sh(&self.workdir),
            sh(&file.to_string_lossy())
        )
    }
}

/// The jobs of `file` (its `after` files' first), in submission order.
fn plan(
    store: &Store,
    ctx: &Ctx,
    path: &Path,
    file: &PipelineFile,
    depth: usize,
) -> anyhow::Result<Vec<Job>> {
    anyhow::ensure!(
        depth < 8,
        "pipeline files name each other in `after` in a loop"
    );
    let mut jobs = Vec::new();
    for before in &file.settings.after {
        let p = PipelineFile::load(Path::new(before))
            .with_context(|| format!("settings.after {before:?}"))?;
        let abs =
            std::path::absolute(before).with_context(|| format!("settings.after {before:?}"))?;
        jobs.extend(plan(store, ctx, &abs, &p, depth + 1)?);
    }
    for (k, step) in file.steps.iter().enumerate() {
        let label = step_label(step, k);
        let base = ctx.step_command(path, k);
        match step {
            Step::Preprocess(s) if s.tasks.is_some() && s.images.is_none() => {
                let cfg = crate::pipeline::preprocess_config(s);
                let n = s.tasks.unwrap_or(1).max(1);
                jobs.extend(phase_jobs(
                    store,
                    (&s.input, &s.name),
                    &cfg,
                    "strata pipeline",
                    n,
                    &label,
                    &base,
                )?);
            }
            Step::Train(crate::pipeline::TrainStep { slurm, .. })
            | Step::Finetune(crate::pipeline::FinetuneStep { slurm, .. }) => {
                let ranks = slurm.ranks.unwrap_or(1).max(1);
                let nodes = slurm.nodes.unwrap_or(1).max(1);
                anyhow::ensure!(
                    ranks >= nodes,
                    "step {label}: [step.slurm] asks for {nodes} nodes but {ranks} ranks: at least one rank per node"
                );
                anyhow::ensure!(
                    ranks == 1 || crate::pipeline::trains(step),
                    "step {label}: a vision step runs as one rank"
                );
                let command = if ranks > 1 {
                    format!("mpirun -np {ranks} {base}")
                } else {
                    base
                };
                jobs.push(Job {
                    nodes,
                    ranks,
                    cpus_per_rank: slurm.cpus_per_rank,
                    time: slurm.time.clone(),
                    mem: slurm.mem.clone(),
                    ..Job::one(label, command)
                });
            }
            _ => jobs.push(Job::one(label, base)),
        }
    }
    Ok(jobs)
}

impl Job {
    /// One task on one node.
    fn one(name: String, command: String) -> Self {
        Self {
            name,
            array: None,
            nodes: 1,
            ranks: 1,
            cpus_per_rank: None,
            time: None,
            mem: None,
            command,
        }
    }
}

/// A text preprocess of `input` into `output` as `n` tasks: one job per phase that has unfinished tasks (all
/// of them when the input is made by an earlier job of this submission); each task runs `base` with
/// `--phase P --task I/N`.
fn phase_jobs(
    store: &Store,
    (input, output): (&str, &str),
    cfg: &strata_data::preprocess::PreprocessConfig,
    created_by: &str,
    n: usize,
    label: &str,
    base: &str,
) -> anyhow::Result<Vec<Job>> {
    let input_ready = store.manifest(strata_store::Kind::Dataset, input).is_ok();
    let mut jobs = Vec::new();
    for phase in [
        Phase::Filter,
        Phase::Buckets,
        Phase::Cluster,
        Phase::Write,
        Phase::Publish,
    ] {
        let todo = if input_ready {
            distributed::unfinished(store, input, output, cfg, created_by, phase, n)
                .with_context(|| format!("preprocess {output:?}"))?
        } else {
            (0..phase.tasks(n)).collect()
        };
        if todo.is_empty() {
            continue;
        }
        let name = format!("{label}-{}", phase.name());
        jobs.push(if phase.single() {
            Job::one(name, format!("{base} --phase {}", phase.name()))
        } else {
            Job {
                array: Some(array_spec(&todo)),
                ..Job::one(
                    name,
                    format!(
                        "{base} --phase {} --task \"$SLURM_ARRAY_TASK_ID/{n}\"",
                        phase.name()
                    ),
                )
            }
        });
    }
    Ok(jobs)
}

/// `strata-<k>-<type>-<name>` (the name where the step has one), for job names and log files.
fn step_label(step: &Step, k: usize) -> String {
    let name = match step {
        Step::Acquire(s) => Some(s.name.as_str()),
        Step::Preprocess(s) => Some(s.name.as_str()),
        Step::Tokenizer(s) => Some(s.name.as_str()),
        Step::Encode(s) => Some(s.name.as_str()),
        Step::Train(s) => Some(s.name.as_str()),
        Step::Finetune(s) => Some(s.name.as_str()),
        Step::Import(s) => Some(s.name.as_str()),
        Step::Merge(s) => Some(s.name.as_str()),
        Step::Domain(s) => Some(s.out.as_str()),
        Step::Eval(_) | Step::Report(_) => None,
    };
    let kind = crate::pipeline::kind_of(step);
    match name {
        Some(n) => format!("strata-{k}-{kind}-{}", label_safe(n)),
        None => format!("strata-{k}-{kind}"),
    }
}

/// `s` with every character but ASCII letters, digits and `-` as `_` (job names and log file names).
fn label_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The batch script of `job`; its log goes to `logs` (`%A_%a` for arrays).
fn script(job: &Job, s: &SlurmSettings, ctx: &Ctx, logs: &Path) -> String {
    let mut out = String::from("#!/bin/bash\n");
    let mut line = |l: String| {
        let _ = writeln!(out, "#SBATCH {l}");
    };
    line(format!("--job-name={}", job.name));
    let log = if job.array.is_some() {
        logs.join(format!("{}-%A_%a.out", job.name))
    } else {
        logs.join(format!("{}-%j.out", job.name))
    };
    line(format!("--output={}", log.display()));
    if let Some(a) = &job.array {
        match s.parallel {
            Some(p) => line(format!("--array={a}%{p}")),
            None => line(format!("--array={a}")),
        }
    }
    line(format!("--nodes={}", job.nodes));
    line(format!("--ntasks={}", job.ranks));
    if let Some(c) = job.cpus_per_rank {
        line(format!("--cpus-per-task={c}"));
    }
    if let Some(p) = &s.partition {
        line(format!("--partition={p}"));
    }
    if let Some(a) = &s.account {
        line(format!("--account={a}"));
    }
    if let Some(t) = job.time.as_ref().or(s.time.as_ref()) {
        line(format!("--time={t}"));
    }
    if let Some(m) = job.mem.as_ref().or(s.mem.as_ref()) {
        line(format!("--mem={m}"));
    }
    for e in &s.extra {
        line(e.clone());
    }
    let _ = write!(
        out,
        "set -euo pipefail\ncd {}\n{}\n",
        sh(&ctx.cwd),
        job.command
    );
    out
}

/// `[settings.slurm]` (or none) with the flags over it.
fn settings(a: &SlurmArgs, file: SlurmSettings) -> SlurmSettings {
    let mut s = file;
    s.partition = a.partition.clone().or(s.partition);
    s.account = a.account.clone().or(s.account);
    s.time = a.time.clone().or(s.time);
    s.mem = a.mem.clone().or(s.mem);
    s.parallel = a.parallel.or(s.parallel);
    s
}

/// `sbatch ARGS FILE`: the job id it printed (`--parsable`), and whether it exited 0 (with `--wait`: whether
/// the job succeeded).
fn sbatch(args: &[String], file: &Path) -> anyhow::Result<(String, bool)> {
    let out = Command::new("sbatch")
        .args(args)
        .arg(file)
        .output()
        .context("running sbatch")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .last()
        .and_then(|l| l.split(';').next())
        .map(str::trim)
        .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
        .map(|id| (id.to_string(), out.status.success()))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "sbatch refused {} ({}): {}",
                file.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })
}

/// The checks before anything is submitted, and the jobs' shared context.
fn prepare(a: &SlurmArgs, store: &Store, what: &str) -> anyhow::Result<Ctx> {
    anyhow::ensure!(
        !(a.hold && a.wait),
        "--hold and --wait together would wait for jobs nothing releases"
    );
    if !a.dry_run && !on_path("sbatch") {
        anyhow::bail!(
            "{what}: sbatch is not on the PATH: run on a Slurm login node (or install Slurm's client), or see \
             the jobs with --dry-run"
        );
    }
    Ok(Ctx {
        exe: std::env::current_exe()
            .context("the path of this strata binary")?
            .to_string_lossy()
            .into_owned(),
        workdir: std::path::absolute(store.root())?
            .to_string_lossy()
            .into_owned(),
        cwd: std::env::current_dir()?.to_string_lossy().into_owned(),
    })
}

/// Submits (or with `--dry-run` prints) the jobs of pipeline `file`.
///
/// # Errors
/// A pipeline the executor cannot lay out, no `sbatch` on the PATH, or a submission sbatch refused.
pub fn submit(store: &Store, a: &PipelineRunArgs, file: &PipelineFile) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.step.is_none(),
        "--step runs one step here: it does not combine with --executor slurm"
    );
    let ctx = prepare(&a.slurm, store, "--executor slurm")?;
    let path = std::path::absolute(&a.file)?;
    let jobs = plan(store, &ctx, &path, file, 0)?;
    let s = settings(&a.slurm, file.settings.slurm.clone());
    submit_jobs(&jobs, &s, &a.slurm, &ctx)
}

/// `strata preprocess … --tasks N --slurm`: the distributed preprocess's phases as jobs, each task running
/// this process's own command line with `--phase P --task I/N` in place of the Slurm flags.
///
/// # Errors
/// No `sbatch` on the PATH, a config the distributed run cannot follow, or a submission sbatch refused.
pub fn submit_preprocess(
    store: &Store,
    a: &crate::cli::PreprocessArgs,
    cfg: &strata_data::preprocess::PreprocessConfig,
) -> anyhow::Result<()> {
    store
        .manifest(strata_store::Kind::Dataset, &a.input)
        .with_context(|| format!("--slurm: the input dataset {:?}", a.input))?;
    let ctx = prepare(&a.slurm_args, store, "--slurm")?;
    let base = own_command(&ctx.exe, std::env::args().skip(1));
    let n = a.tasks.unwrap_or(1).max(1);
    let label = format!("strata-preprocess-{}", label_safe(&a.output));
    let jobs = phase_jobs(
        store,
        (&a.input, &a.output),
        cfg,
        "strata preprocess",
        n,
        &label,
        &base,
    )?;
    let s = settings(&a.slurm_args, SlurmSettings::default());
    submit_jobs(&jobs, &s, &a.slurm_args, &ctx)
}

/// This command line for one task: `exe` and `args` without `--slurm`, `--tasks N` and the Slurm flags.
fn own_command(exe: &str, args: impl Iterator<Item = String>) -> String {
    const SWITCHES: [&str; 4] = ["--slurm", "--dry-run", "--wait", "--hold"];
    const VALUED: [&str; 6] = [
        "--tasks",
        "--partition",
        "--account",
        "--time",
        "--mem",
        "--parallel",
    ];
    let mut out = vec![sh(exe)];
    let mut skip_value = false;
    for arg in args {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        if SWITCHES.contains(&arg.as_str())
            || VALUED
                .iter()
                .any(|v| arg.strip_prefix(v).is_some_and(|r| r.starts_with('=')))
        {
            continue;
        }
        if VALUED.contains(&arg.as_str()) {
            skip_value = true;
            continue;
        }
        out.push(sh(&arg));
    }
    out.join(" ")
}

/// Submits `jobs` in order, each depending on the one before (or prints them with `--dry-run`).
fn submit_jobs(jobs: &[Job], s: &SlurmSettings, a: &SlurmArgs, ctx: &Ctx) -> anyhow::Result<()> {
    if jobs.is_empty() {
        println!("nothing to submit: every step is up to date");
        return Ok(());
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let dir = Path::new(&ctx.workdir)
        .join("slurm")
        .join(format!("submit-{stamp}"));
    let mut previous: Option<String> = None;
    for (i, job) in jobs.iter().enumerate() {
        let text = script(job, s, ctx, &dir);
        let file = dir.join(format!("{i:02}-{}.sh", job.name));
        let mut args: Vec<String> = vec!["--parsable".into(), "--kill-on-invalid-dep=yes".into()];
        if let Some(p) = &previous {
            args.push(format!("--dependency=afterok:{p}"));
        }
        if a.hold {
            args.push("--hold".into());
        }
        let last = i + 1 == jobs.len();
        if a.wait && last {
            args.push("--wait".into());
        }
        if a.dry_run {
            println!("# sbatch {} {}", args.join(" "), file.display());
            println!("{text}");
            previous = Some(format!("<job {i}>"));
            continue;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        strata_store::write_atomic(&file, text.as_bytes())?;
        let (id, succeeded) = sbatch(&args, &file)?;
        println!(
            "submitted {id} {}{}",
            job.name,
            job.array
                .as_ref()
                .map(|a| format!(" array={a}"))
                .unwrap_or_default()
        );
        if a.wait && last && !succeeded {
            anyhow::bail!(
                "the last job {id} ({}) did not finish: it, or a job it depends on, failed or was cancelled; \
                 logs in {}",
                job.name,
                dir.display()
            );
        }
        previous = Some(id);
    }
    if !a.dry_run {
        eprintln!("scripts and logs: {}", dir.display());
    }
    Ok(())
}

fn on_path(exe: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            let f: PathBuf = d.join(exe);
            f.is_file()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_and_quoting() {
        assert_eq!(array_spec(&[0, 1, 2, 3]), "0-3");
        assert_eq!(array_spec(&[1, 2]), "1-2");
        assert_eq!(array_spec(&[0, 2, 3, 5]), "0,2-3,5");
        assert_eq!(array_spec(&[4]), "4");
        assert_eq!(sh("/a/b-c.toml"), "/a/b-c.toml");
        assert_eq!(sh("it's here"), r"'it'\''s here'");
        assert_eq!(sh(""), "''");
    }

    #[test]
    fn a_task_runs_the_command_without_its_slurm_flags() {
        let args = [
            "--workdir",
            "s",
            "preprocess",
            "--input",
            "raw",
            "--output",
            "clean",
            "--gopher",
            "--tasks",
            "4",
            "--slurm",
            "--partition=cpu",
            "--time",
            "1:00:00",
            "--parallel",
            "2",
            "--minhash",
            "--wait",
        ]
        .map(String::from);
        assert_eq!(
            own_command("/bin/strata", args.into_iter()),
            "/bin/strata --workdir s preprocess --input raw --output clean --gopher --minhash"
        );
    }
}
