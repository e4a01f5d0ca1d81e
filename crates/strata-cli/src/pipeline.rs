//! Pipeline files: TOML with named `[[step]]`s run in order, each naming its inputs by artifact name.
//! Every table refuses unknown keys, so a typo is an error naming the key, not a silently ignored setting.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;
use strata_data::preprocess::StageConfig;
use strata_model::ModelSpec;
use strata_store::Store;
use strata_train::TrainConfig;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    #[serde(default)]
    pub settings: Settings,
    #[serde(rename = "step")]
    pub steps: Vec<Step>,
    #[serde(default)]
    pub demo: Option<DemoSettings>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Run `scripts/fetch-data.sh` first when an acquire input under `data/` is missing.
    #[serde(default)]
    pub fetch_data: bool,
    /// Pipeline files (paths from the working directory) run first, in order: a chain continuing another
    /// (their up-to-date steps are skipped as always).
    #[serde(default)]
    pub after: Vec<String>,
    /// Slurm settings of `pipeline run --executor slurm` (flags override them).
    #[serde(default)]
    pub slurm: crate::slurm::SlurmSettings,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Step {
    Acquire(AcquireStep),
    Preprocess(PreprocessStep),
    Tokenizer(TokenizerStep),
    Encode(EncodeStep),
    Train(TrainStep),
    Finetune(FinetuneStep),
    Import(ImportStep),
    Domain(DomainStep),
    Merge(MergeStep),
    Eval(EvalStep),
    Report(ReportStep),
}

/// `strata import` as a step: a GGUF file or HF folder (`path`), or SmolLM2-135M-Instruct fetched and
/// checked by scripts/fetch-model.sh (`fetch = "smollm2"`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportStep {
    pub name: String,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub fetch: Option<String>,
    /// A GGUF's weights also as `model.safetensors` in this dtype (`strata import --safetensors`).
    #[serde(default)]
    pub safetensors: Option<String>,
}

/// `strata domain …` as a step: `source = "pubmedqa"`, or `source = "reports"` / `"terms"` with `dataset`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainStep {
    pub source: String,
    pub out: String,
    #[serde(default)]
    pub dataset: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub seed: u64,
    /// `source = "ultrasound-images"`: images to simulate, and their side in pixels.
    #[serde(default)]
    pub count: Option<usize>,
    #[serde(default)]
    pub size: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MergeStep {
    pub name: String,
    pub adapter: String,
    #[serde(default)]
    pub dtype: Option<String>,
}

/// `strata eval` as a step: perplexity on datasets, accuracy on task files; stored in the registry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalStep {
    pub models: Vec<String>,
    #[serde(default)]
    pub datasets: Vec<String>,
    #[serde(default)]
    pub tasks: Vec<String>,
    #[serde(default)]
    pub max_windows: Option<usize>,
    #[serde(default)]
    pub max_items: Option<usize>,
    #[serde(default)]
    pub quant: Option<String>,
    /// Tasks prompted through each model's chat template (`strata eval --apply-chat-template`).
    #[serde(default)]
    pub apply_chat_template: bool,
    /// Image datasets scored by vision-language models (`strata eval --images`).
    #[serde(default)]
    pub images: Vec<String>,
    /// The split the image task is scored on (default test).
    #[serde(default)]
    pub split: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportStep {
    pub name: String,
    #[serde(default)]
    pub png: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcquireStep {
    pub name: String,
    pub inputs: Vec<String>,
    #[serde(default)]
    pub text_field: Option<String>,
    /// How `.urls` lists are fetched (`[step.fetch]`: user_agent, per_host_delay_ms, concurrency, …).
    #[serde(default)]
    pub fetch: strata_data::acquire::FetchConfig,
    /// Images: keep every k-th frame of a cine loop (default 1: every frame).
    #[serde(default)]
    pub frame_step: Option<u32>,
    /// Images: the labels sidecar (default: labels.csv/labels.jsonl at the top of an input folder).
    #[serde(default)]
    pub labels: Option<PathBuf>,
    /// Documents per shard (default 10,000; shards are what a later `tasks = N` preprocess splits).
    #[serde(default)]
    pub docs_per_shard: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessStep {
    pub name: String,
    pub input: String,
    #[serde(default)]
    pub stages: Option<Vec<StageConfig>>,
    /// Also write each shard as Parquet.
    #[serde(default)]
    pub parquet: bool,
    /// Run as this many tasks exchanging files (the phases of a cluster run, here one after another).
    #[serde(default)]
    pub tasks: Option<usize>,
    /// An image dataset's stages (`split = [0.1, 0.2]` splits by patient with those val and test shares,
    /// `dedup = 4`, `resize = [224, 224]`, …); an image input runs these instead of `stages`.
    #[serde(default)]
    pub images: Option<strata_image::stages::ImageStages>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerStep {
    pub name: String,
    pub datasets: Vec<String>,
    pub vocab_size: usize,
    #[serde(default)]
    pub min_frequency: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncodeStep {
    pub name: String,
    pub dataset: String,
    pub tokenizer: String,
    /// SFT: render chat records with the tokenizer's chat template, loss on assistant turns only.
    #[serde(default)]
    pub chat: bool,
    #[serde(default)]
    pub pack: bool,
    #[serde(default)]
    pub max_len: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainStep {
    pub name: String,
    pub tokens: Tokens,
    pub tokenizer: String,
    pub model: ModelSpec,
    /// Over the pretraining defaults (`strata_train::TrainConfig::defaults`).
    #[serde(deserialize_with = "strata_train::pretrain_table")]
    pub train: TrainConfig,
    /// Its Slurm job's nodes and ranks (`--executor slurm`).
    #[serde(default)]
    pub slurm: crate::slurm::StepResources,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneStep {
    pub name: String,
    pub parent: String,
    /// Token artifacts (a text step), or none with `images` (a vision-language step).
    #[serde(default)]
    pub tokens: Option<Tokens>,
    /// A vision-language step on this image dataset (`strata finetune --images`).
    #[serde(default)]
    pub images: Option<String>,
    /// Its vision tower: a Hugging Face folder, or `"vit-s-focus"` (fetched by scripts/fetch-model.sh
    /// --vision); none when the parent is already a vision-language model.
    #[serde(default)]
    pub vision: Option<String>,
    /// `align` (default) or `instruct`.
    #[serde(default)]
    pub vision_stage: Option<String>,
    #[serde(default)]
    pub image_size: Option<u32>,
    #[serde(default)]
    pub vision_layer: Option<i64>,
    /// `default` (patches) or `full` (the class token too).
    #[serde(default)]
    pub vision_features: Option<String>,
    /// With `vision = "scratch"`: the tower's training steps (default 300).
    #[serde(default)]
    pub vision_steps: Option<usize>,
    /// With `images` and `tokens`: text windows per step as a share of the batch (default 0.25).
    #[serde(default)]
    pub replay_share: Option<f64>,
    /// With `images`, stage instruct: how far each reply weighs alike rather than each reply token
    /// (0 to 1, default 0; `--reply-weight`).
    #[serde(default)]
    pub reply_weight: Option<f32>,
    /// Over the fine-tuning defaults (`strata_train::TrainConfig::defaults`).
    #[serde(deserialize_with = "strata_train::finetune_table")]
    pub train: TrainConfig,
    /// Its Slurm job's nodes and ranks (`--executor slurm`).
    #[serde(default)]
    pub slurm: crate::slurm::StepResources,
}

/// `tokens = "medical"`, or a mixture: `tokens = ["medical=0.8", "general=0.2"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Tokens {
    One(String),
    Mixture(Vec<String>),
}

impl Tokens {
    pub fn specs(&self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s.clone()],
            Self::Mixture(v) => v.clone(),
        }
    }
}

/// What the demo prints after the pipeline.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoSettings {
    /// Rows of the table, in order.
    pub models: Vec<String>,
    /// Columns: datasets whose held-out split is evaluated.
    pub eval: Vec<String>,
    #[serde(default = "d_windows")]
    pub max_windows: usize,
    /// Prompt for the sample completion of every model.
    pub prompt: String,
    #[serde(default = "d_tokens")]
    pub max_tokens: usize,
    #[serde(default = "d_temp")]
    pub temperature: f32,
    #[serde(default)]
    pub seed: u64,
}

fn d_windows() -> usize {
    64
}
fn d_tokens() -> usize {
    48
}
fn d_temp() -> f32 {
    0.7
}

impl PipelineFile {
    /// Parses a pipeline; errors name the file, and toml's message names the line and key.
    ///
    /// # Errors
    /// When the file is missing or invalid.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read pipeline file {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// # Errors
    /// When the text is not a valid pipeline.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Self> {
        toml::from_str(text).map_err(|e| {
            let msg = e.to_string();
            match locate_unknown_key(text, &msg) {
                Some(line) => anyhow::anyhow!(
                    "{origin}: line {line}: {}",
                    msg.lines().last().unwrap_or(&msg)
                ),
                None => anyhow::anyhow!("{origin}: {msg}"),
            }
        })
    }
}

/// Steps are a tagged enum, which serde buffers before choosing the variant, so toml's error for an
/// unknown key points at the enclosing `[[step]]`. This finds the line where the key itself is written.
fn locate_unknown_key(text: &str, msg: &str) -> Option<usize> {
    let key = msg.split("unknown field `").nth(1)?.split('`').next()?;
    text.lines()
        .position(|line| {
            line.match_indices(key).any(|(i, _)| {
                let before = line[..i].chars().last();
                let after = line[i + key.len()..].trim_start();
                matches!(before, None | Some(' ' | '{' | ',' | '\t')) && after.starts_with('=')
            })
        })
        .map(|i| i + 1)
}

/// Runs every step in order.
///
/// # Errors
/// When a step fails; earlier steps' artifacts stay published.
pub fn run(store: &Store, file: &PipelineFile, progress: bool) -> anyhow::Result<()> {
    run_at(store, file, progress, 0)
}

fn run_at(store: &Store, file: &PipelineFile, progress: bool, depth: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        depth < 8,
        "pipeline files name each other in `after` in a loop"
    );
    for before in &file.settings.after {
        let p = PipelineFile::load(Path::new(before))
            .with_context(|| format!("settings.after {before:?}"))?;
        run_at(store, &p, progress, depth + 1)?;
    }
    if file.settings.fetch_data {
        fetch_if_missing(file)?;
    }
    for step in &file.steps {
        run_step(store, step, progress)?;
    }
    Ok(())
}

/// Runs step `k` of `file` alone (what one Slurm job runs), or with `--phase`/`--task` one task of a
/// preprocess step's distributed run. Under several MPI ranks only a text train or finetune step runs.
///
/// # Errors
/// No step `k`, a phase for a step that has none, a non-training step under several ranks, or the step's
/// own errors.
pub fn run_one(
    store: &Store,
    file: &PipelineFile,
    k: usize,
    a: &crate::cli::PipelineRunArgs,
) -> anyhow::Result<()> {
    let step = file.steps.get(k).ok_or_else(|| {
        anyhow::anyhow!(
            "--step {k}: {} has {} steps (0 to {})",
            a.file.display(),
            file.steps.len(),
            file.steps.len().saturating_sub(1)
        )
    })?;
    let ranks = crate::dist::with_comm(|c| c.size());
    if ranks > 1 && !trains(step) {
        anyhow::bail!(
            "--step {k} is a {} step: only text train and finetune steps run as several ranks",
            kind_of(step)
        );
    }
    if file.settings.fetch_data {
        fetch_if_missing(file)?;
    }
    let Some(phase) = &a.phase else {
        return run_step(store, step, false);
    };
    let Step::Preprocess(s) = step else {
        anyhow::bail!(
            "--phase {phase}: step {k} is a {} step; phases belong to preprocess steps with `tasks`",
            kind_of(step)
        );
    };
    let (phase, task) = crate::commands::preprocess::phase_task(phase, a.task.as_deref())?;
    let r = strata_data::preprocess::distributed::run_task(
        store,
        &s.input,
        &s.name,
        &preprocess_config(s),
        "strata pipeline",
        phase,
        task,
    )
    .with_context(|| format!("step preprocess {:?}", s.name))?;
    eprintln!(
        "preprocess {:<20} {} {}/{} {}",
        s.name,
        phase.name(),
        r.task,
        r.of,
        if r.skipped { "up to date" } else { "done" }
    );
    Ok(())
}

/// Whether `step` trains on token data (may run as several ranks).
pub fn trains(step: &Step) -> bool {
    match step {
        Step::Train(_) => true,
        Step::Finetune(f) => f.images.is_none(),
        _ => false,
    }
}

/// The step's `type` as written in the file.
pub fn kind_of(step: &Step) -> &'static str {
    match step {
        Step::Acquire(_) => "acquire",
        Step::Preprocess(_) => "preprocess",
        Step::Tokenizer(_) => "tokenizer",
        Step::Encode(_) => "encode",
        Step::Train(_) => "train",
        Step::Finetune(_) => "finetune",
        Step::Import(_) => "import",
        Step::Domain(_) => "domain",
        Step::Merge(_) => "merge",
        Step::Eval(_) => "eval",
        Step::Report(_) => "report",
    }
}

fn fetch_if_missing(file: &PipelineFile) -> anyhow::Result<()> {
    let missing = file.steps.iter().any(|s| match s {
        // only the fetched corpora (data/…); other inputs are written by earlier steps
        Step::Acquire(a) => a
            .inputs
            .iter()
            .any(|i| i.starts_with("data/") && !i.contains('*') && !Path::new(i).exists()),
        _ => false,
    });
    if !missing {
        return Ok(());
    }
    // the repository's script when run from a checkout; else the copy built into the binary, written to a
    // temporary folder, so an installed `strata demo` fetches its own data from any directory (into ./data)
    let local = Path::new("scripts/fetch-data.sh");
    let tmp;
    let script = if local.is_file() {
        local.to_path_buf()
    } else {
        tmp = std::env::temp_dir().join(format!("strata-fetch-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        for (name, text) in FETCH_SCRIPTS {
            strata_store::write_atomic(tmp.join(name), text.as_bytes())?;
        }
        tmp.join("fetch-data.sh")
    };
    eprintln!("fetching demo data with {} into ./data …", script.display());
    let status = std::process::Command::new("bash")
        .arg(&script)
        .status()
        .context("running scripts/fetch-data.sh")?;
    if !local.is_file() {
        let _ = script.parent().map(std::fs::remove_dir_all);
    }
    anyhow::ensure!(status.success(), "scripts/fetch-data.sh failed ({status})");
    Ok(())
}

/// The data fetch script and the converters it calls, built into the binary (the demo needs no checkout).
const FETCH_SCRIPTS: [(&str, &str); 6] = [
    (
        "fetch-data.sh",
        include_str!("../../../scripts/fetch-data.sh"),
    ),
    (
        "deid_lexicon.py",
        include_str!("../../../scripts/deid_lexicon.py"),
    ),
    (
        "convert_corpora.py",
        include_str!("../../../scripts/convert_corpora.py"),
    ),
    (
        "ultrasound_reports.py",
        include_str!("../../../scripts/ultrasound_reports.py"),
    ),
    // the lexicon build writes the tagger's training notes with these
    (
        "make_deid_notes.py",
        include_str!("../../../scripts/make_deid_notes.py"),
    ),
    (
        "make_realformat_notes.py",
        include_str!("../../../scripts/make_realformat_notes.py"),
    ),
];

fn report(kind: &str, name: &str, r: &strata_data::tasks::StepReport) {
    let counts: Vec<String> = r
        .manifest
        .counts
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let how = if r.skipped { "up to date" } else { "done" };
    eprintln!("{kind:<10} {name:<20} {how:<10} {}", counts.join(" "));
}

/// Runs one step: each kind is a call into the library (below, one function each).
fn run_step(store: &Store, step: &Step, progress: bool) -> anyhow::Result<()> {
    let by = "strata pipeline";
    match step {
        Step::Acquire(s) => step_acquire(store, s, by),
        Step::Preprocess(s) => step_preprocess(store, s, by),
        Step::Tokenizer(s) => step_tokenizer(store, s, by),
        Step::Encode(s) => step_encode(store, s, by),
        Step::Import(s) => step_import(store, s),
        Step::Domain(s) => step_domain(store, s),
        Step::Merge(s) => step_merge(store, s, by),
        Step::Eval(s) => step_eval(store, s),
        Step::Report(s) => step_report(store, s),
        Step::Train(s) => {
            let init = strata_train::Init::Scratch {
                spec: s.model.clone(),
                tokenizer: s.tokenizer.clone(),
            };
            crate::commands::train::run_job(
                store,
                &s.name,
                &s.tokens.specs(),
                init,
                s.train.clone(),
                progress,
            )
        }
        Step::Finetune(s) => {
            if let Some(images) = &s.images {
                return step_vision(store, s, images, progress);
            }
            let tokens = s.tokens.as_ref().ok_or_else(|| {
                anyhow::anyhow!(
                    "step finetune {:?}: give tokens = … (or images = …)",
                    s.name
                )
            })?;
            let init = strata_train::Init::From {
                parent: s.parent.clone(),
            };
            crate::commands::train::run_job(
                store,
                &s.name,
                &tokens.specs(),
                init,
                s.train.clone(),
                progress,
            )
        }
    }
}

/// A vision-language finetune step; `vision = "vit-s-focus"` fetches the offline tower first.
fn step_vision(
    store: &Store,
    s: &FinetuneStep,
    images: &str,
    progress: bool,
) -> anyhow::Result<()> {
    let vision = match s.vision.as_deref() {
        Some("vit-s-focus") => Some(fetch_model(&["--vision"])?),
        Some(p) => Some(std::path::PathBuf::from(p)),
        None => None,
    };
    let replay = s
        .tokens
        .as_ref()
        .map(Tokens::specs)
        .unwrap_or_default()
        .iter()
        .map(|t| strata_train::TokenMix::parse(t))
        .collect::<Result<Vec<_>, _>>()?;
    let step = crate::commands::vlm::VisionStep {
        name: s.name.clone(),
        parent: s.parent.clone(),
        images: images.to_string(),
        vision,
        scratch_steps: s.vision_steps.unwrap_or(300),
        stage: s.vision_stage.clone().unwrap_or_else(|| "align".into()),
        image_size: s.image_size.unwrap_or(112),
        vision_layer: s.vision_layer.unwrap_or(-2),
        vision_features: s
            .vision_features
            .clone()
            .unwrap_or_else(|| "default".into()),
        replay,
        replay_share: s.replay_share.unwrap_or(0.25),
        reply_weight: s.reply_weight.unwrap_or(0.0),
        progress,
    };
    crate::commands::vlm::run_finetune(store, &step, s.train.clone())
        .with_context(|| format!("step finetune {:?}", s.name))?;
    Ok(())
}

fn step_acquire(store: &Store, s: &AcquireStep, by: &str) -> anyhow::Result<()> {
    // images (PNG/JPEG/BMP/DICOM) become an image dataset, as `strata acquire` makes them
    if let Some(found) = strata_image::acquire::image_inputs(&s.inputs)? {
        let cfg = strata_image::acquire::ImageAcquireConfig {
            inputs: s.inputs.clone(),
            frame_step: s.frame_step.unwrap_or(1).max(1),
            labels: s.labels.clone(),
            secret: crate::commands::images::secret(),
            ..Default::default()
        };
        let (_, c) = strata_image::acquire::acquire_images(store, &s.name, &cfg, &found, by)
            .with_context(|| format!("step acquire {:?}", s.name))?;
        eprintln!(
            "acquire    {:<20} done       images={} files={} dicom_files={} quarantined={}",
            s.name, c.images, c.files, c.dicom_files, c.quarantined
        );
        return Ok(());
    }
    if s.frame_step.is_some() || s.labels.is_some() {
        anyhow::bail!(
            "step acquire {:?}: frame_step and labels are for images, and its inputs hold none",
            s.name
        );
    }
    let cfg = strata_data::acquire::AcquireConfig {
        inputs: s.inputs.clone(),
        text_field: s.text_field.clone().unwrap_or_else(|| "text".into()),
        docs_per_shard: s.docs_per_shard.unwrap_or(10_000).max(1),
        fetch: s.fetch.clone(),
    };
    let r = strata_data::acquire::acquire(store, &s.name, &cfg, by)
        .with_context(|| format!("step acquire {:?}", s.name))?;
    report("acquire", &s.name, &r);
    Ok(())
}

fn step_preprocess(store: &Store, s: &PreprocessStep, by: &str) -> anyhow::Result<()> {
    let input = store.dir(strata_store::Kind::Dataset, &s.input);
    if strata_image::dataset::is_image_dataset(&input) || s.images.is_some() {
        let cfg = s.images.clone().unwrap_or_default();
        let (_, c) = strata_image::stages::preprocess_images(store, &s.input, &s.name, &cfg, by)
            .with_context(|| format!("step preprocess {:?}", s.name))?;
        eprintln!(
            "preprocess {:<20} done       images={} kept={}",
            s.name, c.input, c.output
        );
        return Ok(());
    }
    let cfg = preprocess_config(s);
    let r = match s.tasks {
        Some(n) => {
            strata_data::preprocess::distributed::run_all(store, &s.input, &s.name, &cfg, by, n)
        }
        None => strata_data::preprocess::preprocess(store, &s.input, &s.name, &cfg, by),
    }
    .with_context(|| format!("step preprocess {:?}", s.name))?;
    report("preprocess", &s.name, &r);
    Ok(())
}

/// A text preprocess step's config.
pub fn preprocess_config(s: &PreprocessStep) -> strata_data::preprocess::PreprocessConfig {
    let mut cfg = strata_data::preprocess::PreprocessConfig::default();
    if let Some(stages) = &s.stages {
        cfg.stages.clone_from(stages);
    }
    cfg.parquet = s.parquet;
    cfg
}

fn step_tokenizer(store: &Store, s: &TokenizerStep, by: &str) -> anyhow::Result<()> {
    let cfg = strata_tokenize::TokenizerConfig {
        vocab_size: s.vocab_size,
        min_frequency: s.min_frequency.unwrap_or(2),
        val_fraction: strata_tokenize::default_val_fraction(),
    };
    let r = strata_tokenize::train_tokenizer(store, &s.name, &s.datasets, &cfg, by)
        .with_context(|| format!("step tokenizer {:?}", s.name))?;
    report("tokenizer", &s.name, &r);
    Ok(())
}

fn step_encode(store: &Store, s: &EncodeStep, by: &str) -> anyhow::Result<()> {
    let r = if s.chat {
        let mut cfg = strata_tokenize::ChatEncodeConfig {
            pack: s.pack,
            ..Default::default()
        };
        if let Some(n) = s.max_len {
            cfg.max_len = n;
        }
        strata_tokenize::encode_chat_dataset(store, &s.name, &s.dataset, &s.tokenizer, &cfg, by)
    } else {
        strata_tokenize::encode_dataset(
            store,
            &s.name,
            &s.dataset,
            &s.tokenizer,
            &strata_tokenize::EncodeConfig::default(),
            by,
        )
    }
    .with_context(|| format!("step encode {:?}", s.name))?;
    report("encode", &s.name, &r);
    Ok(())
}

/// `scripts/fetch-model.sh FLAGS data` (run from the repository root): the path it prints of what it fetched
/// and checked.
fn fetch_model(flags: &[&str]) -> anyhow::Result<std::path::PathBuf> {
    let what = format!("scripts/fetch-model.sh {}", flags.join(" "));
    let out = std::process::Command::new("bash")
        .arg("scripts/fetch-model.sh")
        .args(flags)
        .arg("data")
        .output()
        .with_context(|| format!("running {what} (run strata from the repository root)"))?;
    anyhow::ensure!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(std::path::PathBuf::from(
        String::from_utf8_lossy(&out.stdout).trim(),
    ))
}

fn step_import(store: &Store, s: &ImportStep) -> anyhow::Result<()> {
    let file = match (&s.path, s.fetch.as_deref()) {
        (Some(p), None) => std::path::PathBuf::from(p),
        (None, Some("smollm2")) => fetch_model(&[])?,
        _ => anyhow::bail!(
            "step import {:?}: give either path = \"…\" or fetch = \"smollm2\"",
            s.name
        ),
    };
    let a = crate::cli::ImportArgs {
        file,
        name: s.name.clone(),
        base: None,
        safetensors: s.safetensors.clone(),
    };
    crate::commands::import::run(store, &a).with_context(|| format!("step import {:?}", s.name))?;
    Ok(())
}

fn step_domain(store: &Store, s: &DomainStep) -> anyhow::Result<()> {
    let out = Path::new(&s.out);
    match (s.source.as_str(), &s.dataset) {
        ("pubmedqa", None) => {
            strata_domain::build_pubmedqa(out)?;
        }
        ("terms", Some(d)) => {
            let dir = store.require(strata_store::Kind::Dataset, d)?;
            let prefix = s.prefix.as_deref().unwrap_or("terms");
            strata_domain::build_terminology_pairs(&dir, out, prefix)?;
        }
        ("reports", Some(d)) => {
            let dir = store.require(strata_store::Kind::Dataset, d)?;
            let prefix = s.prefix.as_deref().unwrap_or("ultrasound");
            strata_domain::build_report_task(&dir, out, prefix, s.seed)?;
        }
        ("ultrasound-images", None) => {
            strata_image::sim::generate(
                out,
                s.count.unwrap_or(64),
                s.seed,
                s.size.unwrap_or(256),
                false,
                1,
            )?;
        }
        (other, _) => anyhow::bail!(
            "step domain: source {other:?} (with dataset {:?}): expected \"pubmedqa\" or \
             \"ultrasound-images\", or \"reports\" or \"terms\" with a dataset",
            s.dataset
        ),
    }
    eprintln!("domain     {:<20} done       out={}", s.source, s.out);
    Ok(())
}

fn step_merge(store: &Store, s: &MergeStep, by: &str) -> anyhow::Result<()> {
    let dtype = match s.dtype.as_deref().unwrap_or("f32") {
        "f16" => candle_core::DType::F16,
        "bf16" => candle_core::DType::BF16,
        _ => candle_core::DType::F32,
    };
    strata_train::parent::merge_adapter(store, &s.adapter, &s.name, dtype, by)
        .with_context(|| format!("step merge {:?}", s.name))?;
    eprintln!("merge      {:<20} done       adapter={}", s.name, s.adapter);
    Ok(())
}

fn step_eval(store: &Store, s: &EvalStep) -> anyhow::Result<()> {
    let a = crate::cli::EvalArgs {
        models: s.models.clone(),
        datasets: s.datasets.clone(),
        tasks: s.tasks.clone(),
        max_windows: s.max_windows.unwrap_or(64),
        quant: s.quant.clone().unwrap_or_else(|| "auto".into()),
        max_items: s.max_items,
        apply_chat_template: s.apply_chat_template,
        images: s.images.clone(),
        split: s.split.clone().unwrap_or_else(|| "test".into()),
    };
    crate::commands::eval::run(store, &a).context("step eval")?;
    Ok(())
}

fn step_report(store: &Store, s: &ReportStep) -> anyhow::Result<()> {
    let steps = strata_eval::report::chain(store, &s.name)?;
    print!("{}", strata_eval::report::table(&steps));
    if let Some(png) = &s.png {
        strata_eval::report::plot(&steps, Path::new(png))?;
        eprintln!("report     {:<20} drawn to {png}", s.name);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_medical_chain_config_parses_with_every_step_type() {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/medical-chain.toml"),
        )
        .unwrap();
        let p = PipelineFile::parse(&text, "medical-chain.toml").unwrap();
        let kinds: Vec<&str> = p
            .steps
            .iter()
            .map(|s| match s {
                Step::Import(_) => "import",
                Step::Domain(_) => "domain",
                Step::Finetune(f) => {
                    assert!(
                        f.train.lora.is_some() && f.train.guard.is_some(),
                        "{}",
                        f.name
                    );
                    f.train.validate(8192).unwrap();
                    "finetune"
                }
                Step::Eval(_) => "eval",
                Step::Report(_) => "report",
                _ => "data",
            })
            .collect();
        for k in ["import", "domain", "finetune", "eval", "report"] {
            assert!(kinds.contains(&k), "{k} missing: {kinds:?}");
        }
    }

    #[test]
    fn the_vision_chain_config_parses_and_follows_the_medical_chain() {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/ultrasound-vision.toml"),
        )
        .unwrap();
        let p = PipelineFile::parse(&text, "ultrasound-vision.toml").unwrap();
        assert_eq!(p.settings.after, ["configs/medical-chain.toml"]);
        let vision: Vec<&FinetuneStep> = p
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Finetune(f) if f.images.is_some() => Some(f),
                _ => None,
            })
            .collect();
        assert_eq!(vision.len(), 2);
        assert_eq!(vision[0].parent, "medical-lora");
        assert!(vision[0].train.lora.is_none() && vision[1].train.lora.is_some());
        assert!(
            vision[0].tokens.is_none() && vision[1].tokens.is_some(),
            "replay in stage 2"
        );
        assert!(vision.iter().all(|f| f.train.guard.is_some()));
        let split = p.steps.iter().find_map(|s| match s {
            Step::Preprocess(pp) => pp.images.as_ref().and_then(|i| i.split),
            _ => None,
        });
        assert_eq!(split, Some((0.1, 0.2)));
    }

    #[test]
    fn builtin_configs_parse() {
        for (name, text) in [
            ("demo.toml", crate::commands::demo::DEMO),
            ("demo-quick.toml", crate::commands::demo::QUICK),
        ] {
            let p = PipelineFile::parse(text, name).unwrap();
            assert!(p.demo.is_some(), "{name}");
            assert!(p.steps.len() >= 8, "{name}");
        }
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let text =
            "[[step]]\ntype = \"acquire\"\nname = \"x\"\ninputs = [\"a\"]\ntext_feild = \"body\"\n";
        let err = PipelineFile::parse(text, "p.toml").unwrap_err().to_string();
        assert!(
            err.contains("p.toml") && err.contains("text_feild") && err.contains("line 5"),
            "{err}"
        );
        let err = PipelineFile::parse("[[step]]\ntype = \"trian\"\nname = \"x\"\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("trian"), "{err}");
    }
}
