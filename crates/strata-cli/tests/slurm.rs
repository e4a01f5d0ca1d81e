//! `strata pipeline run --executor slurm` on a real one-node Slurm that `scripts/start-slurm.sh` starts on
//! this machine (Debian's munge, slurmctld and slurmd; a generated slurm.conf): a pipeline whose Gopher +
//! MinHash step runs as 4 array tasks per phase, then a tokenizer, a model and a LoRA adapter, gives the
//! bytes the local run gives; two filter tasks cancelled, the same command reruns only those two. Without
//! Slurm: `--dry-run` prints the batch scripts, and no sbatch on the PATH is one clear error.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{dataset_files, fresh_dir, run, strata};

/// `strata … pipeline run FILE --executor slurm EXTRA…` against the Slurm of `conf`; its (job id, name)
/// lines.
fn submit(
    conf: &Path,
    store: &Path,
    file: &Path,
    extra: &[&str],
) -> (common::Run, Vec<(String, String)>) {
    let mut c = strata(store);
    c.env("SLURM_CONF", conf)
        .env("STRATA_THREADS", "2")
        .args(["pipeline", "run"])
        .arg(file)
        .args(["--executor", "slurm"])
        .args(extra);
    let r = run(&mut c);
    let jobs = r
        .stdout
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("submitted ")?.split(' ');
            Some((w.next()?.to_string(), w.next()?.to_string()))
        })
        .collect();
    (r, jobs)
}

fn slurm(conf: &Path, cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .env("SLURM_CONF", conf)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into()
}

/// The pipeline submitted held, two of its four filter tasks cancelled and the rest released: the chain
/// stops there, with nothing published.
fn cancel_two_filter_tasks(conf: &Path, store: &Path, file: &Path) {
    // submitted held; two of the four filter tasks cancelled, the rest released: the chain stops there
    let (r, jobs) = submit(conf, store, file, &["--hold"]);
    assert!(r.ok, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(jobs.len(), 10, "{}", r.stdout);
    assert!(
        r.stdout
            .contains("strata-1-preprocess-clean-filter array=0-3"),
        "{}",
        r.stdout
    );
    let filter = &jobs[1].0;
    slurm(
        conf,
        "scancel",
        &[&format!("{filter}_1"), &format!("{filter}_2")],
    );
    let ids: Vec<&str> = jobs.iter().map(|(id, _)| id.as_str()).collect();
    slurm(conf, "scontrol", &["release", &ids.join(",")]);
    let t0 = Instant::now();
    while !slurm(conf, "squeue", &["-h", "-j", &ids.join(",")])
        .trim()
        .is_empty()
    {
        assert!(t0.elapsed() < Duration::from_mins(5), "jobs still queued");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        !store.join("datasets/clean").exists(),
        "cancelled tasks must stop the chain before publishing"
    );
}

#[test]
fn a_pipeline_on_slurm_matches_the_local_run_and_resubmission_reruns_only_cancelled_tasks() {
    let dir = fresh_dir("slurm-pipeline");
    let file = common::slurm_pipeline(&dir, 1);
    let conf = common::start_slurm();

    // the local run, the reference
    let local = dir.join("local");
    let mut c = strata(&local);
    c.env("STRATA_THREADS", "2")
        .args(["pipeline", "run"])
        .arg(&file);
    let r = run(&mut c);
    assert!(r.ok, "{}", r.stderr);

    let store = dir.join("store");
    cancel_two_filter_tasks(&conf, &store, &file);

    // the same command: only the two cancelled filter tasks are submitted again; it waits for the end
    let (r, jobs) = submit(&conf, &store, &file, &["--wait"]);
    assert!(r.ok, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("strata-1-preprocess-clean-filter array=1-2"),
        "{}",
        r.stdout
    );
    let logs = common::submission_dir(&r.stderr);
    let mut ran: Vec<String> = std::fs::read_dir(&logs)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("strata-1-preprocess-clean-filter") && n.ends_with(".out"))
        .collect();
    ran.sort_unstable();
    let filter = &jobs[1].0;
    assert_eq!(
        ran,
        vec![
            format!("strata-1-preprocess-clean-filter-{filter}_1.out"),
            format!("strata-1-preprocess-clean-filter-{filter}_2.out")
        ]
    );

    assert_same_outputs(&local, &store);

    // `strata preprocess … --tasks 4 --slurm`: the same phases from the command line, the local run's bytes
    let pre = |s: &Path, extra: &[&str]| {
        let mut c = strata(s);
        c.env("SLURM_CONF", &conf).args([
            "preprocess",
            "--input",
            "raw",
            "--output",
            "cli",
            "--gopher",
            "--minhash",
            "--tasks",
            "4",
        ]);
        c.args(extra);
        let r = run(&mut c);
        assert!(r.ok, "{}\n{}", r.stdout, r.stderr);
        r
    };
    let r = pre(&store, &["--slurm", "--wait", "--parallel", "4"]);
    assert!(
        r.stdout.contains("strata-preprocess-cli-filter array=0-3"),
        "{}",
        r.stdout
    );
    pre(&local, &[]);
    let shards = |s: &Path| {
        dataset_files(&s.join("datasets/cli"))
            .into_iter()
            .filter(|(n, _)| n != "manifest.json")
            .collect::<Vec<_>>()
    };
    assert!(
        shards(&local) == shards(&store),
        "preprocess --slurm differs from the local run"
    );
}

/// The same bytes as the local run: the deduplicated dataset's shards and stats (Gopher and MinHash both
/// removed documents), and the adapter.
fn assert_same_outputs(local: &Path, store: &Path) {
    let files = |s: &Path| {
        dataset_files(&s.join("datasets/clean"))
            .into_iter()
            .filter(|(n, _)| n != "manifest.json")
            .collect::<Vec<_>>()
    };
    let (a, b) = (files(local), files(store));
    assert!(
        a.len() >= 5,
        "{:?}",
        a.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    assert!(a == b, "the dataset differs from the local run's");
    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("datasets/clean/stats.json")).unwrap())
            .unwrap();
    assert_eq!(stats["tasks"], 4);
    let removed = |stage: &str| {
        stats["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["stage"] == stage)
            .map(|s| s["input"].as_u64().unwrap() - s["kept"].as_u64().unwrap())
            .unwrap()
    };
    assert!(
        removed("gopher_quality") > 0 && removed("minhash_dedup") > 0,
        "{stats}"
    );
    let adapter =
        |s: &Path| std::fs::read(s.join("adapters/adapter/adapter_model.safetensors")).unwrap();
    assert!(
        adapter(local) == adapter(store),
        "the adapter differs from the local run's"
    );
}

#[test]
fn dry_run_prints_the_jobs_and_no_sbatch_is_one_clear_error() {
    let dir = fresh_dir("slurm-dry");
    let file = common::slurm_pipeline(&dir, 1);
    let store = dir.join("store");
    // an empty PATH: no sbatch (the binary is run by its full path)
    let empty = dir.join("bin");
    std::fs::create_dir_all(&empty).unwrap();
    let mut c = strata(&store);
    c.env("PATH", &empty)
        .args(["pipeline", "run"])
        .arg(&file)
        .args([
            "--executor",
            "slurm",
            "--dry-run",
            "--partition",
            "cpu",
            "--account",
            "radiology",
        ]);
    let r = run(&mut c);
    assert!(r.ok, "{}", r.stderr);
    for want in [
        "#SBATCH --array=0-3%2",
        "#SBATCH --partition=cpu",
        "#SBATCH --account=radiology",
        "#SBATCH --time=0:30:00",
        "--dependency=afterok:<job 0>",
        "--phase filter --task \"$SLURM_ARRAY_TASK_ID/4\"",
        "--phase cluster",
        "pipeline run",
        "--step 5",
    ] {
        assert!(r.stdout.contains(want), "{want:?} missing:\n{}", r.stdout);
    }
    assert_eq!(r.stdout.matches("#!/bin/bash").count(), 10);

    let mut c = strata(&store);
    c.env("PATH", &empty)
        .args(["pipeline", "run"])
        .arg(&file)
        .args(["--executor", "slurm"]);
    let r = run(&mut c);
    assert!(!r.ok);
    assert!(
        r.stderr.contains("sbatch is not on the PATH"),
        "{}",
        r.stderr
    );
    assert!(!store.join("slurm").exists(), "nothing written");

    // a step that does not exist, and a phase for a step without phases
    let mut c = strata(&store);
    c.args(["pipeline", "run"]).arg(&file).args(["--step", "9"]);
    let r = run(&mut c);
    assert!(
        !r.ok && r.stderr.contains("--step 9:") && r.stderr.contains("has 6 steps"),
        "{}",
        r.stderr
    );
    let mut c = strata(&store);
    c.args(["pipeline", "run"])
        .arg(&file)
        .args(["--step", "2", "--phase", "filter", "--task", "0/4"]);
    let r = run(&mut c);
    assert!(
        !r.ok && r.stderr.contains("step 2 is a tokenizer step"),
        "{}",
        r.stderr
    );
    // a phase of N tasks needs its task, as `strata preprocess --phase` does
    let mut c = strata(&store);
    c.args(["pipeline", "run"])
        .arg(&file)
        .args(["--step", "1", "--phase", "filter"]);
    let r = run(&mut c);
    assert!(
        !r.ok && r.stderr.contains("--phase filter needs --task I/N"),
        "{}",
        r.stderr
    );
}

#[test]
fn preprocess_slurm_dry_run_runs_this_command_per_task() {
    let dir = fresh_dir("slurm-pre-dry");
    let store = dir.join("store");
    let empty = dir.join("bin");
    std::fs::create_dir_all(&empty).unwrap();
    // preprocess --slurm: each task is this command without the Slurm flags, with --phase and --task
    let r = run(strata(&store).args([
        "acquire",
        "--name",
        "raw",
        "--input",
        "fixtures/quick/general",
    ]));
    assert!(r.ok, "{}", r.stderr);
    let mut c = strata(&store);
    c.env("PATH", &empty).args([
        "preprocess",
        "--input",
        "raw",
        "--output",
        "clean",
        "--gopher",
        "--tasks",
        "4",
        "--slurm",
        "--dry-run",
        "--time",
        "1:00:00",
    ]);
    let r = run(&mut c);
    assert!(r.ok, "{}", r.stderr);
    for want in [
        "#SBATCH --array=0-3\n",
        "#SBATCH --time=1:00:00",
        "preprocess --input raw --output clean --gopher --phase filter --task \"$SLURM_ARRAY_TASK_ID/4\"",
        "preprocess --input raw --output clean --gopher --phase publish",
    ] {
        assert!(r.stdout.contains(want), "{want:?} missing:\n{}", r.stdout);
    }
    assert!(
        !r.stdout.contains("--slurm") && !r.stdout.contains("--tasks"),
        "{}",
        r.stdout
    );
}
