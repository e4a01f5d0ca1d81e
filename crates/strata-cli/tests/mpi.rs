//! Data-parallel training over MPI (`cargo test -p strata-cli --features mpi --test mpi`, run by
//! `scripts/test.sh` with Debian's Open MPI, which `scripts/ensure-mpi.sh` installs): `mpirun -np 2` trains
//! the model one process trains on the same global batch (losses and weights within 1e-5), from scratch and
//! as a LoRA adapter on an imported model; a rank killed mid-run ends the job with nothing published, and the
//! same command resumes to the bytes of an uninterrupted run; a checkpoint of 2 ranks resumes with 1;
//! ranks that disagree, a batch that does not divide, and a command that does not train are refused.

#![cfg(feature = "mpi")]
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{fresh_dir, repo_root, run, strata};

/// `mpirun -np N strata --workdir STORE ARGS…` (as root where the tests run so, with more ranks than cores
/// allowed).
fn mpirun<S: AsRef<std::ffi::OsStr>>(n: usize, store: &Path, args: &[S]) -> Command {
    let mut c = Command::new("mpirun");
    c.current_dir(repo_root())
        .args(["--oversubscribe", "-np", &n.to_string()])
        .arg(env!("CARGO_BIN_EXE_strata"))
        .arg("--workdir")
        .arg(store)
        .args(args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env_remove("STRATA_HOME")
        .env("NO_COLOR", "1");
    c
}

fn ok(mut c: Command) -> common::Run {
    let r = run(&mut c);
    assert!(r.ok, "{:?}: {}\n{}", c.get_args(), r.stdout, r.stderr);
    r
}

/// A dataset, a byte-level BPE tokenizer, its tokens, and a tiny model config.
fn prepare(name: &str) -> (PathBuf, PathBuf) {
    let dir = fresh_dir(name);
    let store = dir.join("store");
    for args in [
        "acquire --name raw --input fixtures/quick/general",
        "preprocess --input raw --output general",
        "tokenize train --name bpe --dataset general --vocab-size 300",
        "tokenize encode --name toks --dataset general --tokenizer bpe",
    ] {
        ok({
            let mut c = strata(&store);
            c.args(args.split(' '));
            c
        });
    }
    let cfg = dir.join("tiny.toml");
    std::fs::write(
        &cfg,
        "[model]\nhidden_size = 32\nintermediate_size = 64\nlayers = 2\nheads = 4\nkv_heads = 2\ncontext = 32\n\n\
         [train]\nsteps = 20\nbatch_size = 16\nseq_len = 16\nlr = 0.003\nmin_lr = 0.0003\nwarmup_steps = 5\n\
         eval_every = 10\ncheckpoint_every = 10\n",
    )
    .unwrap();
    (store, cfg)
}

fn losses(store: &Path, name: &str) -> Vec<f64> {
    common::run_metrics(store, name)
        .iter()
        .map(|m| m["loss"].as_f64().unwrap())
        .collect()
}

/// Every tensor of two safetensors files: the largest |a − b| / max(1, |b|).
fn max_rel_diff(a: &Path, b: &Path) -> f64 {
    let (da, db) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    let (ta, tb) = (
        safetensors::SafeTensors::deserialize(&da).unwrap(),
        safetensors::SafeTensors::deserialize(&db).unwrap(),
    );
    let mut names = ta.names();
    names.sort_unstable();
    let mut other = tb.names();
    other.sort_unstable();
    assert_eq!(names, other);
    let f32s = |v: &[u8]| -> Vec<f32> {
        v.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let mut worst = 0f64;
    for n in names {
        let (x, y) = (
            f32s(ta.tensor(n).unwrap().data()),
            f32s(tb.tensor(n).unwrap().data()),
        );
        assert_eq!(x.len(), y.len(), "{n}");
        for (p, q) in x.iter().zip(&y) {
            let d = f64::from((p - q).abs()) / f64::from(q.abs()).max(1.0);
            worst = worst.max(d);
        }
    }
    worst
}

/// Runs `one` (one process) and `two` (two ranks) of the same job: every loss within 1e-5 relative, the
/// published weights (`weights`: `models/NAME/model.safetensors` or the adapter's file) within 1e-5.
fn assert_same_run(store: &Path, one: &str, two: &str, weights: &str) {
    let (a, b) = (losses(store, one), losses(store, two));
    assert_eq!(a.len(), 20);
    assert_eq!(
        b.len(),
        20,
        "rank 0 alone writes the metrics, once per step"
    );
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-5 * x.abs(),
            "step {}: loss {x} (1 process) vs {y} (2 ranks)",
            i + 1
        );
    }
    let m = common::run_metrics(store, two);
    assert_eq!(m[0]["ranks"].as_u64(), Some(2), "{}", m[0]);
    assert!(m[0]["comm_s"].as_f64().unwrap() >= 0.0);
    assert!(common::run_metrics(store, one)[0].get("ranks").is_none());
    let d = max_rel_diff(
        &store.join(weights.replace("NAME", one)),
        &store.join(weights.replace("NAME", two)),
    );
    assert!(d <= 1e-5, "final weights differ by {d}");
}

/// `train --name NAME` on the prepared tokens with the tiny config, and `extra` flags.
fn train_args(name: &str, cfg: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "train",
        "--name",
        name,
        "--tokens",
        "toks",
        "--tokenizer",
        "bpe",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    args.extend(extra.iter().map(|s| (*s).to_string()));
    args.push("--config".into());
    args.push(cfg.to_string_lossy().into_owned());
    args
}

#[test]
fn two_ranks_train_what_one_process_trains() {
    let (store, cfg) = prepare("mpi-equal");
    let train = |name: &str| train_args(name, &cfg, &[]);
    ok({
        let mut c = strata(&store);
        c.args(train("one"));
        c
    });
    let r = ok(mpirun(2, &store, &train("two")));
    assert_eq!(
        r.stderr.matches("done").count(),
        1,
        "rank 0 alone reports:\n{}",
        r.stderr
    );
    assert_same_run(&store, "one", "two", "models/NAME/model.safetensors");

    // a LoRA adapter on a model imported from GGUF: the tiny model exported, imported, its tokens encoded
    let gguf = store.parent().unwrap().join("one.gguf");
    ok({
        let mut c = strata(&store);
        c.args(["export", "--model", "one", "--gguf"]).arg(&gguf);
        c
    });
    ok({
        let mut c = strata(&store);
        c.arg("import").arg(&gguf).args(["--name", "imp"]);
        c
    });
    ok({
        let mut c = strata(&store);
        c.args("tokenize encode --name itoks --dataset general --tokenizer imp".split(' '));
        c
    });
    let lora = |name: &'static str| {
        vec![
            "finetune",
            "--name",
            name,
            "--parent",
            "imp",
            "--tokens",
            "itoks",
            "--lora",
            "--lora-targets",
            "all-linear",
            "--steps",
            "20",
            "--batch-size",
            "16",
            "--seq-len",
            "16",
            "--lr",
            "0.01",
            "--eval-every",
            "10",
        ]
    };
    ok({
        let mut c = strata(&store);
        c.args(lora("la1"));
        c
    });
    ok(mpirun(2, &store, &lora("la2")));
    assert_same_run(
        &store,
        "la1",
        "la2",
        "adapters/NAME/adapter_model.safetensors",
    );
}

/// The pid of rank `rank` of a running job on `store` (its environment names the rank).
fn rank_pid(store: &Path, rank: usize) -> Option<u32> {
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let e = e.ok()?;
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let env = std::fs::read(e.path().join("environ")).ok()?;
        let has = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        (has(&cmd, store.as_os_str().as_encoded_bytes())
            && has(&cmd, b"train")
            && env.split(|&b| b == 0).any(|v| v == want.as_bytes()))
        .then_some(pid)
    })
}

/// The steps of every run's checkpoints in `store`.
fn checkpoint_steps(store: &Path) -> Vec<usize> {
    let Ok(runs) = std::fs::read_dir(store.join("runs")) else {
        return Vec::new();
    };
    runs.filter_map(Result::ok)
        .flat_map(|r| common::checkpoint_steps(&r.path().join("checkpoints")))
        .collect()
}

#[test]
fn a_killed_rank_ends_the_job_and_the_same_command_resumes_to_the_same_bytes() {
    let (store, cfg) = prepare("mpi-kill");
    let train = |name: &str| {
        train_args(
            name,
            &cfg,
            &[
                "--steps",
                "1500",
                "--eval-every",
                "500",
                "--checkpoint-every",
                "10",
            ],
        )
    };
    let killed = train("killed");
    let mut job = mpirun(2, &store, &killed)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while checkpoint_steps(&store).is_empty() {
        assert!(t0.elapsed() < Duration::from_mins(2), "no checkpoint");
        assert!(
            job.try_wait().unwrap().is_none(),
            "finished before the kill"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = rank_pid(&store, 1).expect("rank 1 is running");
    assert!(Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let status = job.wait().unwrap();
    assert!(!status.success(), "a killed rank must fail the job");
    assert!(
        !store.join("models/killed").exists(),
        "nothing is published"
    );
    let at = checkpoint_steps(&store).into_iter().max().unwrap();
    assert!(at < 1500);

    // a copy of the store at the kill resumes with one process (same global batch)
    let copy = store.parent().unwrap().join("copy");
    assert!(Command::new("cp")
        .arg("-a")
        .arg(&store)
        .arg(&copy)
        .status()
        .unwrap()
        .success());

    let r = ok(mpirun(2, &store, &killed));
    assert!(
        r.stderr.contains(&format!("resumed from step {at}")),
        "{}",
        r.stderr
    );
    ok(mpirun(2, &store, &train("straight")));
    let bytes = |s: &Path, n: &str| {
        std::fs::read(s.join("models").join(n).join("model.safetensors")).unwrap()
    };
    assert!(
        bytes(&store, "killed") == bytes(&store, "straight"),
        "the resumed run differs from an uninterrupted one"
    );

    let r = ok({
        let mut c = strata(&copy);
        c.args(&killed);
        c
    });
    assert!(r.stderr.contains("resumed from step"), "{}", r.stderr);
    let d = max_rel_diff(
        &copy.join("models/killed/model.safetensors"),
        &store.join("models/straight/model.safetensors"),
    );
    assert!(d <= 1e-4, "2 ranks' checkpoint resumed by 1 process: {d}");
}

#[test]
fn ranks_that_disagree_and_batches_that_do_not_divide_are_refused() {
    let (store, cfg) = prepare("mpi-bad");
    let base = [
        "train",
        "--name",
        "bad",
        "--tokens",
        "toks",
        "--tokenizer",
        "bpe",
        "--config",
        cfg.to_str().unwrap(),
    ];
    let mut args = base.to_vec();
    args.extend(["--batch-size", "3"]);
    let r = run(&mut mpirun(2, &store, &args));
    assert!(!r.ok);
    assert!(
        r.stderr
            .contains("(batch_size × grad_accum = 3 rows) does not divide among 2 ranks"),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_dir(store.join("runs")).unwrap().count(),
        0,
        "nothing written"
    );

    // MPMD: rank 1 runs another learning rate
    let mut c = mpirun(1, &store, &base);
    c.args([":", "--oversubscribe", "-np", "1"])
        .arg(env!("CARGO_BIN_EXE_strata"))
        .arg("--workdir")
        .arg(&store)
        .args(base)
        .args(["--lr", "0.01"]);
    let r = run(&mut c);
    assert!(!r.ok);
    assert!(
        r.stderr.contains("ranks disagree on the run's config"),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_dir(store.join("runs")).unwrap().count(),
        0,
        "nothing written"
    );

    let r = run(&mut mpirun(
        2,
        &store,
        &[
            "tokenize",
            "encode",
            "--name",
            "x",
            "--dataset",
            "general",
            "--tokenizer",
            "bpe",
        ],
    ));
    assert!(!r.ok);
    assert!(
        r.stderr
            .contains("only `strata train` and `strata finetune`"),
        "{}",
        r.stderr
    );
    assert!(!store.join("tokens/x").exists());
}

/// A pipeline's LoRA step with `slurm = { ranks = 2 }`, submitted to the one-node Slurm of
/// `scripts/start-slurm.sh`: its job runs `mpirun -np 2` inside the allocation, and the adapter equals the
/// local one-process run's within 1e-5.
#[test]
fn a_slurm_training_step_runs_its_ranks_under_mpirun() {
    let dir = fresh_dir("mpi-slurm");
    let file = common::slurm_pipeline(&dir, 2);
    let conf = common::start_slurm();
    let (local, cluster) = (dir.join("local"), dir.join("cluster"));
    ok({
        let mut c = strata(&local);
        c.args(["pipeline", "run"]).arg(&file);
        c
    });
    let r = ok({
        let mut c = strata(&cluster);
        c.env("SLURM_CONF", &conf)
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .args(["pipeline", "run"])
            .arg(&file)
            .args(["--executor", "slurm", "--wait"]);
        c
    });
    let logs = common::submission_dir(&r.stderr);
    let script = std::fs::read_to_string(logs.join("09-strata-5-finetune-adapter.sh")).unwrap();
    assert!(
        script.contains("#SBATCH --ntasks=2") && script.contains("mpirun -np 2 "),
        "{script}"
    );
    let m = common::run_metrics(&cluster, "adapter");
    assert_eq!(m.len(), 20);
    assert_eq!(m[0]["ranks"].as_u64(), Some(2), "{}", m[0]);
    let d = max_rel_diff(
        &local.join("adapters/adapter/adapter_model.safetensors"),
        &cluster.join("adapters/adapter/adapter_model.safetensors"),
    );
    assert!(d <= 1e-5, "adapter differs by {d}");
}
