//! The command-line surface: one enum of argument structs, kept apart from the logic in `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "strata",
    version,
    about = "The whole life of a language model: acquire → preprocess → tokenize → train → finetune → eval → serve"
)]
pub struct Cli {
    /// Artifact store directory.
    #[arg(
        long,
        global = true,
        env = "STRATA_HOME",
        default_value = "strata-work"
    )]
    pub workdir: PathBuf,
    /// CPU threads for tensor math (default: all cores).
    #[arg(long, global = true, env = "STRATA_THREADS")]
    pub threads: Option<usize>,
    /// More logging.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the largest variant (finetune's flags) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read raw files into a dataset: txt/md, jsonl (.gz/.zst; text or chat `messages` records), Parquet,
    /// CSV/TSV, HTML and WARC (main content), and URL lists fetched politely; files, folders or globs.
    /// Inputs of images (PNG/JPEG/BMP, DICOM single- or multi-frame) make an image dataset instead.
    Acquire(AcquireArgs),
    /// Normalise, filter and deduplicate a dataset into a new one.
    Preprocess(PreprocessArgs),
    /// Train a byte-level BPE tokenizer, or encode a dataset into token shards.
    #[command(subcommand)]
    Tokenize(TokenizeCommand),
    /// Pretrain a Llama-style model from scratch on token shards.
    Train(TrainArgs),
    /// Continue pretraining any model in the store (trained here or imported) on a domain's token shards,
    /// optionally mixed with a share of other data (`--tokens medical=0.8 --tokens general=0.2`).
    Finetune(FinetuneArgs),
    /// Held-out perplexity of models (or adapters, merged on their base) on datasets, and multiple-choice
    /// task accuracy (log-likelihood, 95% interval, chance), stored in the registry against each model.
    Eval(EvalArgs),
    /// Generate a completion from a model.
    Generate(GenerateArgs),
    /// Serve the store's models and adapters over an OpenAI-compatible HTTP API (chat and text completions,
    /// streaming, continuous batching; adapters share their base's batches), with a chat page at / to compare
    /// models side by side, Prometheus metrics at /metrics, and graceful shutdown on SIGTERM.
    Serve(ServeArgs),
    /// Run the steps of a pipeline file in order (skipping steps whose inputs and config are unchanged).
    #[command(subcommand)]
    Pipeline(PipelineCommand),
    /// The whole lifecycle: general → base → medical → ultrasound, then a perplexity table.
    Demo(DemoArgs),
    /// Import a model: a llama.cpp GGUF file (F32/F16/BF16/Q8_0/Q4_0/Q4_1/Q4_K/Q5_K/Q6_K) → HF folder, or a
    /// Hugging Face folder (config.json, model.safetensors or shards, tokenizer.json) as it is. The model's
    /// tokenizer is also published as a tokenizer artifact of the same name, for `tokenize encode`. A PEFT
    /// LoRA adapter folder imports as an adapter on `--base MODEL`.
    Import(ImportArgs),
    /// Export a model as a GGUF file for llama.cpp (F32, F16 or Q8_0 weights): Llama and Mistral as `llama`,
    /// Qwen2/Qwen3 as `qwen2`/`qwen3`, Gemma 3 as `gemma3`; byte-level BPE or SentencePiece vocabularies.
    Export(ExportArgs),
    /// Fold a LoRA adapter (and the adapters beneath it) into its base model: a new model artifact.
    Merge(MergeArgs),
    /// The chain that led to a model or adapter (its parents back to the base), each step × each evaluation
    /// stored by `strata eval`, with the change against the parent and the forgetting guard's verdict; as a
    /// table, and as a PNG.
    Report(ReportArgs),
    /// Write a domain's training and evaluation files from data carried in the binary.
    #[command(subcommand)]
    Domain(DomainCommand),
    /// De-identification: score the PII stage on labelled notes, or redact one text.
    #[command(subcommand)]
    Deid(DeidCommand),
    /// Benchmarks (see bench/ for the side-by-side scripts).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Print what an artifact was made from, back to the raw files, with hashes.
    Lineage(LineageArgs),
    /// Summarise a dataset (records, labels, splits); with --png, draw a contact sheet of an image dataset.
    Show(ShowArgs),
    /// List the artifacts in the store.
    Ls,
}

#[derive(Debug, Args)]
pub struct AcquireArgs {
    /// Name of the dataset to create.
    #[arg(long)]
    pub name: String,
    /// Files, folders or glob patterns. Formats by extension: .txt/.md (one document per file);
    /// .jsonl/.ndjson, .jsonl.gz, .jsonl.zst; .csv/.tsv and .parquet (one document per row); .html/.htm
    /// (main content); .warc/.warc.gz (HTML responses, main content, URL kept); .urls (a URL list, fetched
    /// politely: robots.txt obeyed, one request at a time per host).
    #[arg(long = "input", required = true, num_args = 1..)]
    pub inputs: Vec<String>,
    /// The jsonl field, or CSV/Parquet column, that holds the text.
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// Documents per output shard (shards are the unit of `preprocess --task`).
    #[arg(long, default_value_t = 10_000)]
    pub docs_per_shard: usize,
    /// Run as independent tasks: `read` (with --task I/N: this task's share of the input files) or
    /// `publish` (gathers every task's files into the dataset).
    #[arg(long)]
    pub phase: Option<String>,
    /// With --phase read: this task, as I/N (0-based).
    #[arg(long)]
    pub task: Option<String>,
    /// Read the inputs as N tasks here, one after another, then publish.
    #[arg(long, conflicts_with_all = ["phase", "task"])]
    pub tasks: Option<usize>,
    /// URL lists: User-Agent sent and matched against robots.txt.
    #[arg(long, default_value_t = strata_data::acquire::FetchConfig::default().user_agent)]
    pub user_agent: String,
    /// URL lists: milliseconds between two requests to the same host (a longer robots.txt Crawl-delay wins).
    #[arg(long, default_value_t = 1000)]
    pub delay_ms: u64,
    /// URL lists: hosts fetched at the same time.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// URL lists: time limit for one request, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub timeout_ms: u64,
    /// URL lists: retries after a network error, 429 or 5xx (exponential backoff from 1 s).
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
    /// URL lists: largest body accepted, in bytes.
    #[arg(long, default_value_t = 10 << 20)]
    pub max_bytes: u64,
    /// Images: DICOM cine loops keep every k-th frame (1: all).
    #[arg(long, default_value_t = 1)]
    pub frame_step: u32,
    /// Images: refuse a file declaring more pixels than this (all frames together; decompression bombs).
    #[arg(long, default_value_t = strata_image::acquire::DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
    /// Images: the labels sidecar (CSV/JSONL: file, label or labels, optional text, patient, study, split);
    /// by default labels.csv/labels.jsonl at the top of an input folder, else sub-folder names (ImageFolder).
    #[arg(long)]
    pub labels: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[allow(clippy::struct_excessive_bools)] // one switch per optional stage
pub struct PreprocessArgs {
    /// Dataset to read.
    #[arg(long)]
    pub input: String,
    /// Dataset to write.
    #[arg(long)]
    pub output: String,
    /// Drop documents shorter than this many characters.
    #[arg(long, default_value_t = 32)]
    pub min_chars: usize,
    /// Also apply the Gopher quality and repetition rules (Rae et al. 2021; datatrove's thresholds).
    #[arg(long)]
    pub gopher: bool,
    /// Also remove near-duplicates by MinHash LSH (5-word shingles, 25 bands × 5 rows, Jaccard ≥ 0.7).
    #[arg(long)]
    pub minhash: bool,
    /// Also de-identify: e-mails, phones, IPs, national IDs, record numbers, birth dates; in notes as hospital
    /// systems print them, names in header, signature, dictation and cc lines in any case and order (MARLOWE,
    /// DENNIS; Okafor, Ruth), labelled account, accession and dictation codes, pagers and extensions,
    /// month/year dates, hospital and clinic names (<HOSPITAL>); and in prose names (rules, then the lexicon's
    /// learned tagger), addresses and towns, dates and ages over 89 (English and Chinese). `--pii` writes typed placeholders
    /// (<NAME>, <DATE>, …); `--pii surrogate` writes consistent fake names and places and shifts every date of a
    /// document by one offset (for a document whose metadata names its `patient_id`: that patient's offset,
    /// keyed by STRATA_DEID_SECRET, the one `strata deid dicom` moves the patient's images by). Per-type counts
    /// go to each document's metadata and to stats.json.
    #[arg(long, num_args = 0..=1, default_missing_value = "placeholder", value_name = "MODE")]
    pub pii: Option<PiiModeArg>,
    /// The de-identification lexicon (name lists, places, protected medical vocabulary, the tagger's training
    /// notes), built by `scripts/fetch-data.sh --lexicon`; `--pii` fails when it is missing. `none` chooses the
    /// rule-only mode (labels, layout, titles, relations and patterns only, no tagger: far fewer names found),
    /// recorded in the manifest.
    #[arg(long, default_value = "data/lexicon/deid", value_name = "DIR|none")]
    pub pii_lexicon: PathBuf,
    /// Keep only these languages (ISO 639-3, comma-separated, e.g. eng,cmn), detected by whatlang.
    #[arg(long, value_delimiter = ',')]
    pub languages: Vec<String>,
    /// Minimum language-detection confidence with --languages.
    #[arg(long, default_value_t = 0.5)]
    pub min_language_score: f64,
    /// Also apply C4's line and document rules (terminal punctuation, ≥ 3 words a line, no JavaScript or
    /// policy lines, ≥ 5 sentences, no lorem ipsum or curly brackets).
    #[arg(long)]
    pub c4: bool,
    /// Also apply FineWeb's rules (terminal-punctuation, short-line, duplicated-line and list ratios).
    #[arg(long)]
    pub fineweb: bool,
    /// Also apply Data-Juicer's character rules, for any script (Chinese included): repeated character
    /// 10-grams (share ≤ 0.5) and special characters (share ≤ 0.25; meant for web text, as numbers count).
    #[arg(long)]
    pub char_quality: bool,
    /// Drop documents sharing a 13-word sequence with an evaluation set: NAME=PATH (.jsonl, or .json of
    /// records as an array or keyed by id). Repeatable.
    #[arg(long = "eval-set", value_name = "NAME=PATH")]
    pub eval_sets: Vec<String>,
    /// The fields of the evaluation records to index (strings or lists of strings).
    #[arg(long, value_delimiter = ',', default_value = "question,context,answer")]
    pub eval_fields: Vec<String>,
    /// Only the evaluation records with these ids (a JSON file: an object's keys or an array), e.g.
    /// PubMedQA's test_ground_truth.json for its test split.
    #[arg(long)]
    pub eval_ids: Option<std::path::PathBuf>,
    /// Also write each output shard as Parquet (part-00000.parquet: id, text, metadata as JSON), for
    /// Hugging Face datasets, pandas or DuckDB.
    #[arg(long)]
    pub parquet: bool,
    /// Run as independent tasks exchanging files (for a Slurm array or a Kubernetes indexed Job): the
    /// phase of this invocation: filter (tasks i/N over the input's shards), buckets (MinHash bands b/B),
    /// cluster (one task), write (tasks i/N), publish (one task), run in that order; a task whose
    /// completion marker exists is skipped, so a rerun after kill -9 redoes only unfinished tasks.
    #[arg(long)]
    pub phase: Option<String>,
    /// With --phase filter/buckets/write: this task, as I/N (0-based), e.g. $SLURM_ARRAY_TASK_ID/8.
    #[arg(long)]
    pub task: Option<String>,
    /// Run every phase here as N tasks, one after another (the same files as a cluster run would write).
    #[arg(long)]
    pub tasks: Option<usize>,
    /// With --tasks N: submit the phases to Slurm instead, as array jobs of N tasks (filter, buckets, write)
    /// and single jobs (cluster, publish) chained by afterok; tasks whose completion markers exist are not
    /// submitted again. Each task runs this same command with --phase and --task.
    #[arg(long, requires = "tasks", conflicts_with_all = ["phase", "task"])]
    pub slurm: bool,
    #[command(flatten)]
    pub slurm_args: SlurmArgs,
    #[command(flatten)]
    pub images: ImageStageArgs,
}

/// Image datasets (`strata preprocess` on one runs these instead of the text stages): decode check, pixel
/// limit and blank frames always; the rest when asked.
#[derive(Debug, Args)]
pub struct ImageStageArgs {
    /// Images: drop images of more pixels than this.
    #[arg(long = "image-max-pixels", default_value_t = strata_image::acquire::DEFAULT_MAX_PIXELS)]
    pub image_max_pixels: u64,
    /// Images: drop blank and constant frames (luminance standard deviation under this).
    #[arg(long, default_value_t = 2.0)]
    pub min_std: f64,
    /// Images: remove near-duplicates by perceptual hash (the later id of each pair; pairs in
    /// dedup_pairs.jsonl).
    #[arg(long)]
    pub phash_dedup: bool,
    /// Images: the Hamming distance (of 64 bits) at which two images are near-duplicates, and at which a
    /// val/test image is a leak of a train image. Re-encoded, resized or brightened copies are 0–2 apart;
    /// distinct simulated 96-pixel scans of one organ were 8 or more apart, but 256-pixel scans of one organ
    /// and finding came as close as 4 (the demo drops 5 of 96): check dedup_pairs.jsonl, lower it if needed.
    #[arg(long, default_value_t = 4)]
    pub phash_distance: u32,
    /// Images: assign train/val/test by patient pseudonym (all images of a patient in one split).
    #[arg(long)]
    pub split_by_patient: bool,
    /// Images: with --split-by-patient, the share of patients in val.
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    /// Images: with --split-by-patient, the share of patients in test.
    #[arg(long, default_value_t = 0.1)]
    pub test_fraction: f64,
    /// Images: resize to fit WxH and pad (letterbox), e.g. 224x224; the original size stays in the record.
    #[arg(long, value_name = "WxH")]
    pub resize: Option<String>,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// A dataset of the store.
    pub dataset: String,
    /// Draw a contact sheet (thumbnails with ids and labels) of an image dataset into this PNG.
    #[arg(long)]
    pub png: Option<PathBuf>,
    /// Images on the sheet at most (the first by id).
    #[arg(long, default_value_t = 48)]
    pub max: usize,
    /// Thumbnails per row.
    #[arg(long, default_value_t = 8)]
    pub cols: u32,
}

#[derive(Debug, Subcommand)]
pub enum TokenizeCommand {
    /// Train a tokenizer on the training split of datasets.
    Train {
        /// Name of the tokenizer artifact to publish (`tokenizers/NAME`).
        #[arg(long)]
        name: String,
        /// Dataset artifacts to train on (their training split only; repeatable or space-separated).
        #[arg(long = "dataset", required = true, num_args = 1..)]
        datasets: Vec<String>,
        /// Vocabulary size, special tokens included.
        #[arg(long, default_value_t = 4096)]
        vocab_size: usize,
    },
    /// Encode a dataset into train/val token shards. With --chat, its chat records ({"messages": [...]})
    /// are rendered with the tokenizer's chat template for SFT, the loss on assistant turns only.
    Encode {
        /// Name of the token artifact to publish (`tokens/NAME`: train and val shards).
        #[arg(long)]
        name: String,
        /// The dataset artifact to encode.
        #[arg(long)]
        dataset: String,
        /// The tokenizer artifact to encode with (a trained one, or an imported model's of the same name).
        #[arg(long)]
        tokenizer: String,
        /// SFT: render chat records with the model's chat template; only assistant turns take the loss.
        /// Records without an assistant turn, or that the template cannot render, are quarantined.
        #[arg(long)]
        chat: bool,
        /// With --chat: pack examples back to back instead of one example per row.
        #[arg(long, requires = "chat")]
        pack: bool,
        /// With --chat and no --pack: tokens per example row (train with --seq-len equal to it).
        #[arg(long, requires = "chat", default_value_t = 512)]
        max_len: usize,
    },
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Name of the model to create.
    #[arg(long)]
    pub name: String,
    /// Token artifacts to train on: `NAME` or `NAME=WEIGHT`, repeated to mix several by weight
    /// (`--tokens general=0.9 --tokens code=0.1`).
    #[arg(long, required = true, num_args = 1..)]
    pub tokens: Vec<String>,
    /// Tokenizer the shards were encoded with.
    #[arg(long)]
    pub tokenizer: String,
    /// TOML file with [model] and [train] tables (see configs/demo.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub overrides: TrainOverrides,
}

#[derive(Debug, Args)]
pub struct FinetuneArgs {
    /// Name of the model to create.
    #[arg(long)]
    pub name: String,
    /// Model to start from (its weights and tokenizer).
    #[arg(long)]
    pub parent: String,
    /// Token artifacts encoded with the parent's tokenizer: `NAME` or `NAME=WEIGHT`, repeated to mix the
    /// domain with a share of the parent's data (`--tokens medical=0.8 --tokens general=0.2`).
    /// With --images (stage instruct): text replayed beside the images, mixed by weight, so that the decoder
    /// keeps its general text (--replay-share of the batch, windows of --seq-len tokens).
    #[arg(long, required_unless_present = "images", num_args = 1..)]
    pub tokens: Vec<String>,
    /// Train a vision-language (LLaVA) model on this image dataset instead: the parent (a text model or
    /// adapter) reads the features of a frozen vision tower through a projector. Images of the val split
    /// are the validation set; records' labels (organ, finding) and text (the report) make the examples.
    #[arg(long)]
    pub images: Option<String>,
    /// With --images and --tokens: text windows per step as a share of --batch-size (0.25: 2 windows beside
    /// 8 image examples).
    #[arg(long, default_value_t = 0.25, requires = "images")]
    pub replay_share: f64,
    /// With --images, stage instruct: how far each reply weighs alike in the loss rather than each reply
    /// token, from 0 (tokens: a one-word answer weighs 1/50 of a fifty-token report) to 1 (replies).
    #[arg(long, default_value_t = 0.0, requires = "images")]
    pub reply_weight: f32,
    /// With --images: the vision tower, a Hugging Face folder (DINOv2, CLIP or SigLIP; e.g.
    /// data/models/dinov2-vit-s-focus from `scripts/fetch-model.sh --vision`), or `scratch`: a small
    /// DINOv2-layout ViT trained here first on the dataset's labels (train split; cached in the store's
    /// cache/towers/), the offline fallback when no tower can be downloaded. Not needed when --parent is
    /// already a vision-language model (stage 2 continues from stage 1).
    #[arg(long, requires = "images")]
    pub vision: Option<PathBuf>,
    /// With --vision scratch: the tower's training steps (batches of 32 images).
    #[arg(long, default_value_t = 300, requires = "images")]
    pub vision_steps: usize,
    /// With --images: `align` (stage 1: the projector alone on image-report pairs, the decoder frozen) or
    /// `instruct` (stage 2: projector and a LoRA adapter on the decoder, on questions about each image and
    /// its report; the adapter is merged into the published model).
    #[arg(long, default_value = "align", requires = "images")]
    pub vision_stage: String,
    /// With --images: the side, in pixels, images are resized to for the tower (its patches are the image
    /// tokens: 112 px and 14 px patches make 64).
    #[arg(long, default_value_t = 112, requires = "images")]
    pub image_size: u32,
    /// With --images: the tower's hidden state the projector reads (0: the embeddings; negative: from the
    /// end, -1 the last block), as LLaVA's vision_feature_layer.
    #[arg(long, default_value_t = -2, allow_hyphen_values = true, requires = "images")]
    pub vision_layer: i64,
    /// With --images: which rows of that hidden state become image tokens: `default` (the patches, the
    /// class token dropped, as LLaVA's vision_feature_select_strategy) or `full` (the class token too).
    #[arg(long, default_value = "default", requires = "images")]
    pub vision_features: String,
    /// TOML file with a [train] table (and [train.lora] for an adapter).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub overrides: TrainOverrides,
    #[command(flatten)]
    pub lora: LoraArgs,
    /// Forgetting guard: after training, the child's perplexity on this dataset's held-out split is compared
    /// with the parent's; over --max-general-ppl-increase the step is published marked failed and the
    /// command fails.
    #[arg(long)]
    pub guard_dataset: Option<String>,
    /// The guard's limit: largest relative perplexity increase allowed (0.05 = 5%).
    #[arg(long, requires = "guard_dataset")]
    pub max_general_ppl_increase: Option<f64>,
}

/// LoRA: train an adapter (PEFT layout, stored under adapters/) on the frozen parent instead of all its
/// weights. Any --lora-* flag implies --lora; the parent may itself be an adapter (a chain: base →
/// medical → ultrasound).
#[derive(Debug, Args, Default)]
pub struct LoraArgs {
    /// Train a LoRA adapter (defaults: r 8, alpha 16, no dropout, q/k/v/o projections).
    #[arg(long)]
    pub lora: bool,
    /// Rank r of the update B·A.
    #[arg(long)]
    pub lora_r: Option<usize>,
    /// Scale numerator: the update is (alpha / r)·B·A (alpha / sqrt(r) with --rslora).
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    /// Dropout on the adapter's input while training.
    #[arg(long)]
    pub lora_dropout: Option<f64>,
    /// Projections to adapt, comma-separated among q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj
    /// (or all-linear).
    #[arg(long)]
    pub lora_targets: Option<String>,
    /// rsLoRA scaling: alpha / sqrt(r).
    #[arg(long)]
    pub rslora: bool,
    /// QLoRA: hold the frozen base in quantised blocks while the adapter trains: q8_0 (8.5 bits per
    /// weight), q4_k (4.5; rows not a multiple of 256 take q5_0), or gguf (an imported GGUF's own blocks,
    /// as the file holds them). Implies --lora.
    #[arg(long, value_parser = ["q8_0", "q4_k", "gguf"])]
    pub base_quant: Option<String>,
}

/// Each flag replaces the `--config` file's value, which replaces the default: `train` 500 steps of 16 × 128
/// tokens at lr 2e-3 → 2e-4 (30 warm-up steps); `finetune` 200 steps at 5e-4 → 5e-5 (10 warm-up steps).
#[derive(Debug, Args, Default)]
pub struct TrainOverrides {
    /// Optimizer steps (train: 500, finetune: 200).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Windows per micro-batch (16).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Tokens per window (128).
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Peak learning rate (train: 2e-3, finetune: 5e-4); the schedule decays to min_lr (2e-4, 5e-5; at most
    /// this).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Write a checkpoint every N optimizer steps (the same command resumes from the last one after kill -9).
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Micro-batches per optimizer step (each of --batch-size windows); the loss is normalised over the
    /// target tokens of all of them.
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Keep only each decoder block's input for backward and run the block again there (Hugging Face's
    /// gradient_checkpointing): activations shrink to one block's, for a second forward of the blocks
    /// (measured: 0.68x the speed on SmolLM2).
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// Learning-rate schedule after warmup: cosine, linear or wsd (warmup-stable-decay).
    #[arg(long)]
    pub schedule: Option<String>,
    /// Stop after this long (checkpoint, then publish what was trained): seconds, or 90s, 30m, 2h.
    #[arg(long)]
    pub max_time: Option<String>,
    /// Stop when the validation loss has not improved for this many evaluations.
    #[arg(long)]
    pub early_stop_patience: Option<usize>,
    /// Keep this many of the newest checkpoints.
    #[arg(long)]
    pub keep_checkpoints: Option<usize>,
    /// Windows at random offsets (random, the default) or read in order (sequential, as llm.c does).
    #[arg(long)]
    pub sampling: Option<String>,
    /// Warmup steps before the schedule's decay.
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    /// Validate every this many steps.
    #[arg(long)]
    pub eval_every: Option<usize>,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Models or adapters of the store (an adapter is merged on its base), repeated.
    #[arg(long = "model", required = true, num_args = 1..)]
    pub models: Vec<String>,
    /// Datasets whose held-out split gives a perplexity, repeated.
    #[arg(long = "dataset", num_args = 1..)]
    pub datasets: Vec<String>,
    /// Multiple-choice task files (jsonl: question, context, choices, answer), `PATH` or `NAME=PATH`,
    /// repeated: accuracy by log-likelihood with a bootstrap 95% interval, scored by the inference engine
    /// with the weight type of --quant. Results are stored in the registry against each model.
    #[arg(long = "task", num_args = 1..)]
    pub tasks: Vec<String>,
    /// Evaluate at most this many windows per dataset.
    #[arg(long, default_value_t = 64)]
    pub max_windows: usize,
    /// Weight type of the inference engine that scores (perplexity and tasks): auto (as served: the file's
    /// blocks for GGUF imports, f32 otherwise), f32, q8_0, q4_0, q4_1.
    #[arg(long, default_value = "auto")]
    pub quant: String,
    /// Score at most this many items per task (the first ones).
    #[arg(long)]
    pub max_items: Option<usize>,
    /// Prompt each task item through the model's chat template, as the server does (the user's turn:
    /// context and question; each choice scored as the start of the assistant's reply), as
    /// lm-evaluation-harness's --apply_chat_template. Results are stored as `task:NAME+chat`.
    #[arg(long)]
    pub apply_chat_template: bool,
    /// Image datasets (of labelled images, split by patient) to score vision-language models on, repeated:
    /// the finding question of every image of --split answered by log-likelihood, with a bootstrap 95%
    /// interval, chance, the majority class and a linear probe on the frozen tower's features, and F1 per
    /// finding. Stored as `images:NAME`.
    #[arg(long = "images", num_args = 1..)]
    pub images: Vec<String>,
    /// With --images: the split scored (the baselines are fitted on train).
    #[arg(long, default_value = "test")]
    pub split: String,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// A model of the store, or an adapter (run unmerged on its base, as the server runs it).
    #[arg(long)]
    pub model: String,
    /// The text to continue (with --chat: the user's message).
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Tokens to generate at most (fewer when the model ends its text).
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Nucleus sampling: keep the most likely tokens up to this much probability.
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Keep only the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Drop tokens less likely than this fraction of the most likely one (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    /// > 1 discourages repeating tokens already in the context (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// Stop before this string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Seed of the sampler (the same seed, prompt and settings give the same text).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Weight type of the projections for inference: auto (as stored: f32 for HF folders, the file's types
    /// for GGUF), f32, q8_0, q4_0, q4_1.
    #[arg(long, default_value = "auto")]
    pub quant: String,
    /// An image (PNG, JPEG, BMP) for a vision-language model: placed before the prompt in the user's turn
    /// (the chat template always applies); prints the answer and, on stderr, the time to encode the image,
    /// to read the prompt and to write the answer.
    #[arg(long)]
    pub image: Option<std::path::PathBuf>,
    /// Generate past the end-of-sequence ids, to exactly --max-tokens (for timing).
    #[arg(long)]
    pub ignore_eos: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (keep loopback unless --api-keys is set).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Model used when a request names none.
    #[arg(long)]
    pub model: Option<String>,
    /// Weight type of the projections for inference: auto (as stored: f32 for HF folders, the file's types
    /// for GGUF), f32, q8_0, q4_0, q4_1.
    #[arg(long, default_value = "auto")]
    pub quant: String,
    /// API key file: one `KEY model1,model2` (or `KEY *`) per line. Without it the server takes requests
    /// without a key: keep it on loopback then.
    #[arg(long)]
    pub api_keys: Option<std::path::PathBuf>,
    /// Adapters to load at start (besides those loaded on first request or by POST /v1/adapters).
    #[arg(long = "adapter", num_args = 1..)]
    pub adapters: Vec<String>,
    /// Sequences decoded together in one batch, per model.
    #[arg(long, default_value_t = 64)]
    pub max_batch: usize,
    /// Requests waiting for a place in the batch; beyond it the server answers 429 with Retry-After.
    #[arg(long, default_value_t = 256)]
    pub max_queue: usize,
    /// Prompt tokens prefilled per step, so a long prompt does not stall the streams already running.
    #[arg(long, default_value_t = 256)]
    pub prefill_chunk: usize,
    /// KV-cache memory all running sequences of a model may hold, MiB.
    #[arg(long, default_value_t = 4096)]
    pub kv_budget_mib: usize,
    /// Memory for the KV of recent prompts, MiB, per model: a prompt that begins as one of them (the chat
    /// template's system turn, earlier turns of the same chat) is prefilled only from where they part. 0: off.
    #[arg(long, default_value_t = 64)]
    pub prefix_cache_mib: usize,
    /// Largest max_tokens a request may ask for.
    #[arg(long, default_value_t = 4096)]
    pub max_tokens_limit: usize,
    /// Largest request body, bytes (images come base64-encoded inside it: 16 MiB by default).
    #[arg(long, default_value_t = 16 << 20)]
    pub max_body_bytes: usize,
    /// Vision-language models: images one request may carry.
    #[arg(long, default_value_t = 4)]
    pub max_images: usize,
    /// Vision-language models: largest image, bytes (decoded; over it: 413).
    #[arg(long, default_value_t = 8 << 20)]
    pub max_image_bytes: usize,
    /// Vision-language models: most pixels an image may declare (refused before decoding).
    #[arg(long, default_value_t = 1 << 26)]
    pub max_image_pixels: u64,
    /// Vision-language models: hosts whose http(s) image URLs the server fetches (comma-separated; `*`: any
    /// host). Off by default: images come as data URLs. Redirects are not followed; --max-image-bytes
    /// applies to the body.
    #[arg(long, value_delimiter = ',', value_name = "HOSTS")]
    pub image_url_hosts: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum PipelineCommand {
    /// Run a pipeline file: here (default), or as Slurm jobs (`--executor slurm`).
    Run(PipelineRunArgs),
}

/// How jobs go to Slurm (`pipeline run --executor slurm`, `preprocess --slurm`).
#[derive(Debug, Args)]
pub struct SlurmArgs {
    /// Slurm: print the batch scripts and the sbatch commands; submit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Slurm: wait until the last job ends; fail when it (or a job it depends on) failed.
    #[arg(long)]
    pub wait: bool,
    /// Slurm: submit the jobs held (`scontrol release` starts them).
    #[arg(long)]
    pub hold: bool,
    /// Slurm partition (over `[settings.slurm] partition`).
    #[arg(long)]
    pub partition: Option<String>,
    /// Slurm account (over `[settings.slurm] account`).
    #[arg(long)]
    pub account: Option<String>,
    /// Slurm time limit per job, e.g. 2:00:00 (over `[settings.slurm] time`).
    #[arg(long)]
    pub time: Option<String>,
    /// Slurm memory per node, e.g. 16G (over `[settings.slurm] mem`).
    #[arg(long)]
    pub mem: Option<String>,
    /// Slurm: array tasks of one phase running at once (`--array=…%P`; over `[settings.slurm] parallel`).
    #[arg(long)]
    pub parallel: Option<usize>,
}

#[derive(Debug, Args)]
pub struct PipelineRunArgs {
    /// The pipeline TOML file (named steps: acquire, preprocess, tokenizer, encode, train, finetune, …).
    pub file: PathBuf,
    /// `local` runs the steps here, in order; `slurm` submits them to Slurm with sbatch, each step a job
    /// that depends on the one before (afterok): a preprocess step with `tasks = N` becomes array jobs of N
    /// tasks per phase (filter, buckets, write) around its cluster and publish jobs; a train or finetune
    /// step one job of `[step.slurm]`'s nodes and ranks (mpirun when ranks > 1). Tasks whose completion
    /// markers exist are not submitted again. Partition, account, time and memory: `[settings.slurm]` or
    /// the flags below.
    #[arg(long, default_value = "local", value_parser = ["local", "slurm"])]
    pub executor: String,
    #[command(flatten)]
    pub slurm: SlurmArgs,
    /// Run only this step of the file (0-based, `after` files not counted): what each Slurm job runs.
    #[arg(long, value_name = "K")]
    pub step: Option<usize>,
    /// With --step on a preprocess step with `tasks`: this phase (filter, buckets, cluster, write, publish).
    #[arg(long, requires = "step")]
    pub phase: Option<String>,
    /// With --phase filter/buckets/write: this task, as I/N (0-based), e.g. $SLURM_ARRAY_TASK_ID/4.
    #[arg(long, requires = "phase")]
    pub task: Option<String>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Toy sizes on the small fixtures in the repository: offline, about 5 s from a release build.
    #[arg(long)]
    pub quick: bool,
    /// Use this pipeline file instead of the built-in demo config.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The .gguf file, a Hugging Face model folder (Llama, Qwen2, Mistral; f32/f16/bf16 safetensors,
    /// sharded or not; tokenizer.json required), or a PEFT LoRA adapter folder (adapter_config.json,
    /// adapter_model.safetensors; needs --base).
    pub file: PathBuf,
    /// Name of the model (or adapter) in the store.
    #[arg(long)]
    pub name: String,
    /// For a PEFT adapter folder: the model of the store it was trained on (checked tensor by tensor).
    #[arg(long)]
    pub base: Option<String>,
    /// For a GGUF: also write its weights as `model.safetensors` in this dtype (f32, f16 or bf16), tensor by
    /// tensor, for tools that read only safetensors (transformers, PEFT). Without it the folder keeps the
    /// GGUF alone: Strata trains and serves from it as it is.
    #[arg(long, value_name = "DTYPE")]
    pub safetensors: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Model in the store.
    #[arg(long)]
    pub model: String,
    /// Output .gguf file.
    #[arg(long)]
    pub gguf: PathBuf,
    /// Weight type: f32, f16 or q8_0 (norms stay f32).
    #[arg(long = "type", default_value = "f32")]
    pub r#type: String,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The last model or adapter of the chain.
    pub name: String,
    /// Also draw the report into this PNG file.
    #[arg(long)]
    pub png: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PiiModeArg {
    /// <NAME>, <DATE>, <LOCATION> …
    Placeholder,
    /// Consistent fake names and places, dates shifted by one offset per document.
    Surrogate,
}

#[derive(Debug, Subcommand)]
pub enum DeidCommand {
    /// Score de-identification on labelled notes (jsonl: text, spans [{start, end, type}], decoys [{start, end,
    /// kind}], offsets in characters): recall per identifier type, precision per type found, decoys kept, the
    /// share of notes with an identifier left, MB/s.
    Eval {
        /// The labelled notes (e.g. from scripts/make_deid_notes.py).
        notes: PathBuf,
        /// The lexicon folder (scripts/fetch-data.sh --lexicon).
        #[arg(long, default_value = "data/lexicon/deid")]
        lexicon: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Also list up to this many missed identifiers and lost decoys.
        #[arg(long, default_value_t = 0)]
        show: usize,
        /// Score the rules alone, without the learned tagger.
        #[arg(long)]
        no_tagger: bool,
    },
    /// Train the learned tagger (a linear-chain token tagger, averaged structured perceptron) on labelled
    /// notes — yours, annotated span by span, or generated ones — and write it where the de-identifier reads
    /// it: LEXICON/tagger.bin unless --out says otherwise. The lexicon build trains one on its own generated
    /// notes (LEXICON/train-notes.jsonl) the first time the lexicon is loaded.
    Train {
        /// Labelled notes, jsonl (the format `strata deid eval` reads); several files are joined.
        #[arg(required = true)]
        notes: Vec<PathBuf>,
        /// The lexicon folder (its lists are features of the tagger).
        #[arg(long, default_value = "data/lexicon/deid")]
        lexicon: PathBuf,
        /// Where to write the tagger (default: LEXICON/tagger.bin).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Passes over the notes.
        #[arg(long, default_value_t = 5)]
        epochs: usize,
    },
    /// Redact the text on standard input and print it (one document).
    Redact {
        /// The lexicon folder (scripts/fetch-data.sh --lexicon).
        #[arg(long, default_value = "data/lexicon/deid")]
        lexicon: PathBuf,
        /// Write surrogates instead of placeholders.
        #[arg(long)]
        surrogate: bool,
        /// The document id that seeds the surrogates.
        #[arg(long, default_value = "stdin")]
        id: String,
    },
    /// De-identify DICOM files (a file or a folder, relative paths kept) as PS3.15 Annex E defines it: the
    /// Basic Profile with Retain Longitudinal Temporal Information (Modified Dates) and Clean Descriptors.
    /// UIDs and pseudonyms are keyed by the secret; dates move by the patient's offset (the one `--pii
    /// surrogate` uses for notes with that patient_id); burned-in text outside the ultrasound regions is
    /// blanked. Files that cannot be de-identified are listed in OUT/quarantine.jsonl, not written.
    Dicom(DeidDicomArgs),
}

#[derive(Debug, Args)]
pub struct DeidDicomArgs {
    /// A DICOM file or a folder of them.
    pub input: PathBuf,
    /// The output folder.
    pub output: PathBuf,
    /// The secret that keys new UIDs, pseudonyms and date offsets; keep it to de-identify later files of the
    /// same patients consistently.
    #[arg(
        long,
        env = "STRATA_DEID_SECRET",
        hide_env_values = true,
        default_value = ""
    )]
    pub secret: String,
    /// The lexicon for kept descriptors (scripts/fetch-data.sh --lexicon), or `none` for the rule-only mode.
    #[arg(long, default_value = "data/lexicon/deid", value_name = "DIR|none")]
    pub lexicon: PathBuf,
    /// A rectangle X0,Y0,X1,Y1 (inclusive pixels) blanked in every frame, repeatable: for files with burned-in
    /// text and no Sequence of Ultrasound Regions.
    #[arg(long = "blank", value_name = "X0,Y0,X1,Y1")]
    pub blank: Vec<String>,
    /// Refuse files declaring more pixels than this.
    #[arg(long, default_value_t = strata_image::acquire::DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
}

#[derive(Debug, Subcommand)]
pub enum DomainCommand {
    /// PubMedQA (MIT; 1,000 expert-labelled questions): its 500-question test split as a task
    /// (pubmedqa-test.jsonl) and as abstracts (pubmedqa-test-abstracts.jsonl), the other 500 as documents
    /// (pubmedqa-train.jsonl) and chat pairs (pubmedqa-train-chat.jsonl).
    Pubmedqa {
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// Instruction pairs from terminology in a dataset's training split: ICD-10-CM lines (description →
    /// code) and `Term: definition` documents such as HPO's (term → definition), as chat records
    /// (<prefix>-chat.jsonl) for SFT.
    Terms {
        /// A dataset of the store.
        #[arg(long)]
        dataset: String,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// File name prefix.
        #[arg(long, default_value = "terms")]
        prefix: String,
    },
    /// From a dataset of reports (FINDINGS: … IMPRESSION: …): its held-out reports as a 4-choice task
    /// (which impression fits these findings; <prefix>-test.jsonl) and its training reports as chat pairs
    /// findings → impression (<prefix>-train-chat.jsonl).
    Reports {
        /// A dataset of the store.
        #[arg(long)]
        dataset: String,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// File name prefix.
        #[arg(long, default_value = "ultrasound")]
        prefix: String,
        /// Seed of the wrong choices and their order.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Simulated B-mode ultrasound images (no download): speckle from scatterers, attenuation and TGC, log
    /// compression, linear and sector probes; liver, gallbladder, kidney, thyroid and breast, normal or with
    /// a cyst, stone, solid mass, hyperechoic lesion, steatosis or hydronephrosis. Writes images/ and
    /// labels.jsonl (labels, report, patient, ground truth) for `strata acquire`, or with --dicom ultrasound
    /// DICOM with invented patient data and a burned-in header, and reports.jsonl.
    UltrasoundImages {
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Images to write.
        #[arg(long, default_value_t = 64)]
        count: usize,
        /// Seed (the same seed writes the same bytes).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Width and height of each image, pixels.
        #[arg(long, default_value_t = 256)]
        size: u32,
        /// Write DICOM files instead of PNGs.
        #[arg(long)]
        dicom: bool,
        /// With --dicom: frames per file (a cine loop when over 1).
        #[arg(long, default_value_t = 1)]
        frames: usize,
    },
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Adapter in the store.
    pub adapter: String,
    /// Name of the merged model to create.
    #[arg(long)]
    pub name: String,
    /// Weight type of the merged model: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Prompt (pp) and decode (tg) tokens/s of a model, as llama-bench measures them; prints JSON.
    Decode(BenchDecodeArgs),
    /// Logits of a model or adapter (merged on its base) at every position of a token sequence, written as
    /// a safetensors file (tensor "logits", positions × vocabulary, f32) for parity checks against other
    /// tools (bench/peft_parity.py).
    Logits(BenchLogitsArgs),
}

#[derive(Debug, Args)]
pub struct BenchLogitsArgs {
    /// A model or adapter in the store.
    #[arg(long)]
    pub model: String,
    /// Token ids, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub ids: Vec<u32>,
    /// Output .safetensors file.
    #[arg(long)]
    pub out: PathBuf,
    /// The inference engine's logits (f32 weights, KV cache, one forward over the ids) instead of the
    /// training forward's; a model, not an adapter.
    #[arg(long)]
    pub engine: bool,
}

#[derive(Debug, Args)]
pub struct BenchDecodeArgs {
    /// A model in the store.
    #[arg(long, required_unless_present = "gguf", conflicts_with = "gguf")]
    pub model: Option<String>,
    /// A GGUF file, run directly with its stored weight types (as llama-bench runs it).
    #[arg(long)]
    pub gguf: Option<PathBuf>,
    /// Prompt lengths to time (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "64,512")]
    pub prompt_tokens: Vec<usize>,
    /// Tokens to generate for the decode test.
    #[arg(long, default_value_t = 128)]
    pub gen_tokens: usize,
    /// Repetitions; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Weight type: auto (as stored), f32, q8_0, q4_0, q4_1.
    #[arg(long, default_value = "auto")]
    pub quant: String,
    /// Also time batched decoding: B sequences (after a 64-token prompt each) each generating --gen-tokens
    /// tokens in steps of one batched forward, as the server's scheduler runs them (comma-separated sizes;
    /// reported as aggregate tokens/s, "tg128x8").
    #[arg(long, value_delimiter = ',')]
    pub batch: Vec<usize>,
}

#[derive(Debug, Args)]
pub struct LineageArgs {
    /// The artifact whose lineage to print (a model, adapter, tokenizer, token or dataset artifact).
    pub name: String,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every argument of `cmd` and its subcommands without help text, as `strata tokenize train --name`.
    fn undocumented(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        for a in cmd.get_arguments() {
            let id = a.get_id().as_str();
            if a.is_hide_set() || id == "help" || id == "version" {
                continue;
            }
            if a.get_help().is_none() && a.get_long_help().is_none() {
                let name = a
                    .get_long()
                    .map_or_else(|| format!("<{id}>"), |l| format!("--{l}"));
                out.push(format!("{path} {name}"));
            }
        }
        for sub in cmd.get_subcommands() {
            undocumented(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_flag_and_argument_of_every_command_has_help_text() {
        let mut missing = Vec::new();
        undocumented(&super::Cli::command(), "strata", &mut missing);
        assert!(missing.is_empty(), "no help text: {}", missing.join(", "));
    }

    #[test]
    fn the_help_check_finds_an_undocumented_flag() {
        // the check itself can fail: a command with one flag left without text is reported by name
        let cmd = clap::Command::new("x").arg(clap::Arg::new("bare").long("bare"));
        let mut missing = Vec::new();
        undocumented(&cmd, "x", &mut missing);
        assert_eq!(missing, vec!["x --bare".to_string()]);
    }
}
