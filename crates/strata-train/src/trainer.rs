//! The training loop, flat as in nanoGPT: for each step, K micro-batches → forward → summed loss →
//! backward, gradients added → clip → AdamW, with evaluation, checkpoints and metrics on a schedule.
//! Pretraining starts from fresh weights; continued pretraining (fine-tuning) starts from a parent model's,
//! whether Strata trained it or it was imported (GGUF or a Hugging Face folder, sharded or not, f32/f16/
//! bf16). A run lives in `runs/<name>-<fingerprint>/`, so the same command after `kill -9` (or Ctrl-C)
//! finds its checkpoint and resumes.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use strata_model::lora::LoraState;
use strata_model::{Llama, LlamaConfig, ModelSpec};
use strata_store::{Kind, Manifest, Store};
use strata_tokenize::TokenizerDir;

use crate::checkpoint::{self, RunState};
use crate::data::{Component, Mixture};
use crate::dist::Collective;
use crate::metrics::{peak_rss_bytes, ComponentStat, MetricsLog, StepMetrics};
use crate::optim::Grads;
use crate::parent::Parent;
use crate::{get_lr, perplexity, Context, Result, TrainConfig, TrainError};

/// Where the weights start.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Init {
    /// Fresh weights of this architecture, vocabulary from `tokenizer`.
    Scratch { spec: ModelSpec, tokenizer: String },
    /// The weights (and tokenizer) of an existing model: continued pretraining.
    From { parent: String },
}

/// One token artifact of the training mixture and its weight (`--tokens medical=0.8`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TokenMix {
    pub name: String,
    pub weight: f64,
}

impl TokenMix {
    /// Parses `NAME` (weight 1) or `NAME=WEIGHT`.
    ///
    /// # Errors
    /// When the weight is not a number > 0.
    pub fn parse(s: &str) -> Result<Self> {
        let (name, weight) = match s.split_once('=') {
            None => (s, 1.0),
            Some((n, w)) => (
                n,
                w.trim().parse::<f64>().map_err(|_| {
                    TrainError::Config(format!("--tokens {s:?}: weight {w:?} is not a number"))
                })?,
            ),
        };
        if !(weight.is_finite() && weight > 0.0) {
            return Err(TrainError::Config(format!(
                "--tokens {s:?}: mixture weight must be > 0"
            )));
        }
        Ok(Self {
            name: name.trim().to_string(),
            weight,
        })
    }
}

pub struct TrainJob<'a> {
    pub name: &'a str,
    /// Token artifacts to train on (their train splits, mixed by weight) and validate on (their val splits;
    /// the first one's is `val_loss`).
    pub tokens: &'a [TokenMix],
    pub init: Init,
    pub cfg: TrainConfig,
    pub created_by: &'a str,
    /// Draw a progress bar (when stderr is a terminal).
    pub progress: bool,
    /// Set by SIGINT/SIGTERM: the loop writes a checkpoint after the current step and stops.
    pub stop: Option<Arc<AtomicBool>>,
    /// The ranks training this model together ([`crate::dist::Single`] for one process): each takes an
    /// equal, contiguous part of every global batch; rank 0 alone writes.
    pub comm: &'a dyn Collective,
}

#[derive(Debug)]
pub struct TrainOutcome {
    pub manifest: Manifest,
    pub skipped: bool,
    pub resumed_from: Option<usize>,
    pub run_dir: std::path::PathBuf,
    /// Why training ended before `steps`, if it did ("early_stop", "max_time").
    pub stopped: Option<&'static str>,
    /// The forgetting guard's measurement, when the config has one.
    pub guard: Option<crate::guard::GuardVerdict>,
}

#[derive(Serialize)]
struct Resolved<'a> {
    init: &'a Init,
    tokens: &'a [TokenMix],
    train: &'a TrainConfig,
    model: &'a LlamaConfig,
}

/// The parts of the config that change how a run is carried out but not what it computes: they stay out of
/// the fingerprint, so a run resumes under a new time budget or checkpoint policy.
fn fingerprinted(cfg: &TrainConfig) -> TrainConfig {
    let mut c = cfg.clone();
    c.max_time_s = None;
    c.keep_checkpoints = 1;
    c.checkpoint_every = 1;
    c
}

/// Checks that every token artifact was encoded with exactly the model's tokenizer (same `tokenizer.json`
/// bytes; artifacts from before the hash was recorded are checked by vocabulary size).
fn check_tokens(store: &Store, tokens: &[TokenMix], td: &TokenizerDir) -> Result<()> {
    for t in tokens {
        let m = store.manifest(Kind::Tokens, &t.name)?;
        match m.counts.get("tokenizer_sha256").and_then(|v| v.as_str()) {
            Some(h) if h != td.sha256 => {
                return Err(TrainError::Config(format!(
                    "tokens {:?} were encoded with another tokenizer than the model's ({}): encode the dataset with the model's tokenizer (tokenizer.json sha256 {} vs {})",
                    t.name,
                    td.dir.display(),
                    &h[..h.len().min(12)],
                    &td.sha256[..12]
                )))
            }
            Some(_) => {}
            None => {
                let vocab = m.counts.get("vocab_size").and_then(serde_json::Value::as_u64);
                if vocab != Some(td.tokenizer.get_vocab_size(true) as u64) {
                    return Err(TrainError::Config(format!(
                        "tokens {:?} were encoded with a vocabulary of {} but the model's tokenizer has {}: encode the dataset with the model's tokenizer",
                        t.name,
                        vocab.unwrap_or(0),
                        td.tokenizer.get_vocab_size(true)
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Sets every variable from the parent's weights (read from `dir`, adapters merged), by HF name.
fn load_parent(
    vars: &HashMap<String, Var>,
    weights: &HashMap<String, Tensor>,
    dir: &std::path::Path,
) -> Result<()> {
    for (name, var) in vars {
        let t = weights.get(name).ok_or_else(|| TrainError::Checkpoint {
            path: dir.to_path_buf(),
            reason: format!("parent weights have no tensor {name}"),
        })?;
        let t = t.to_dtype(DType::F32).ctx(name)?;
        if t.dims() != var.as_tensor().dims() {
            return Err(TrainError::Checkpoint {
                path: dir.to_path_buf(),
                reason: format!(
                    "{name}: shape {:?}, the config says {:?}",
                    t.dims(),
                    var.as_tensor().dims()
                ),
            });
        }
        var.set(&t).ctx(name)?;
    }
    Ok(())
}

/// Forward and backward over `micro` micro-batches (inputs, targets; targets may hold
/// [`strata_model::fused::IGNORE`]): the loss is the summed cross-entropy divided by the targets of all
/// micro-batches together, so K micro-batches give the gradients of one batch K times larger whatever
/// number of targets each holds. Returns the mean loss and the summed gradients.
///
/// # Errors
/// When no target counts, or on a tensor failure.
pub fn accumulate(
    model: &Llama,
    opt: &crate::AdamW,
    micro: &[(Tensor, Tensor)],
) -> Result<(f32, Grads)> {
    accumulate_with(model, opt, micro, &|_| {})
}

/// [`accumulate`], calling `before(i)` ahead of micro-batch i's forward (the trainer seeds LoRA's dropout
/// there).
///
/// # Errors
/// As [`accumulate`].
pub fn accumulate_with(
    model: &Llama,
    opt: &crate::AdamW,
    micro: &[(Tensor, Tensor)],
    before: &dyn Fn(usize),
) -> Result<(f32, Grads)> {
    let total = nonzero(targets(micro)?)?;
    let (loss, grads) = accumulate_part(model, opt, micro, before, total)?;
    #[allow(clippy::cast_possible_truncation)]
    Ok((loss as f32, grads))
}

/// The target tokens (those that count toward the loss) of `micro`.
fn targets(micro: &[(Tensor, Tensor)]) -> Result<usize> {
    let mut total = 0usize;
    for (_, y) in micro {
        let ys: Vec<u32> = y.flatten_all().ctx("targets")?.to_vec1().ctx("targets")?;
        total += ys
            .iter()
            .filter(|&&t| t != strata_model::fused::IGNORE)
            .count();
    }
    Ok(total)
}

fn nonzero(total: usize) -> Result<usize> {
    if total == 0 {
        return Err(TrainError::Data(
            "no target token counts toward the loss".into(),
        ));
    }
    Ok(total)
}

/// Forward and backward over `micro`, each loss divided by `total`, the target tokens of the whole (global)
/// batch: this part's loss and summed gradients.
fn accumulate_part(
    model: &Llama,
    opt: &crate::AdamW,
    micro: &[(Tensor, Tensor)],
    before: &dyn Fn(usize),
    total: usize,
) -> Result<(f64, Grads)> {
    let mut grads: Option<Grads> = None;
    let mut loss = 0f64;
    for (i, (x, y)) in micro.iter().enumerate() {
        before(i);
        let (sum, _) = model.loss_sum(x, y)?;
        #[allow(clippy::cast_precision_loss)]
        let part = (sum / total as f64).ctx("loss scale")?;
        loss += f64::from(part.to_scalar::<f32>().ctx("loss")?);
        let mut gs = part.backward().ctx("backward")?;
        model.take_checkpoint_grads(&mut gs)?;
        let g = opt.grads_of(&gs);
        match &mut grads {
            None => grads = Some(g),
            Some(acc) => acc.add(g)?,
        }
    }
    Ok((loss, grads.unwrap_or(Grads(Vec::new()))))
}

/// Whether base weight `name` is held in blocks under QLoRA: the projections an adapter may target and the
/// embeddings (and an untied LM head). Norms and biases stay f32.
fn quantizable(name: &str) -> bool {
    name == "model.embed_tokens.weight"
        || name == "lm_head.weight"
        || strata_model::lora::TARGETS
            .iter()
            .any(|t| name.strip_suffix(".weight").is_some_and(|m| m.ends_with(t)))
}

/// QLoRA's base, read one tensor at a time (the chain's adapters merged in) and quantised as it comes, so
/// the model is never whole in f32: the f32 tensors that stay (norms, biases) and the blocks.
fn quantized_base(
    p: &Parent,
    kind: strata_model::qweight::BaseQuant,
    device: &Device,
) -> Result<(HashMap<String, Tensor>, strata_model::QuantBase)> {
    use strata_model::gguf::GgufWeight;
    use strata_model::qweight::{BaseQuant, QuantMatrix};
    let (mut dense, mut quant) = (HashMap::new(), strata_model::QuantBase::new());
    let (mut f32_bytes, mut q_bytes) = (0usize, 0usize);
    let mut keep = |name: String, w: GgufWeight| -> strata_model::Result<()> {
        match w {
            GgufWeight::Blocks(q) if quantizable(&name) => {
                f32_bytes += q.dims().0 * q.dims().1 * 4;
                q_bytes += q.bytes();
                quant.insert(name, Arc::new(q));
            }
            GgufWeight::Blocks(q) => {
                dense.insert(name, q.to_tensor(device)?);
            }
            GgufWeight::Dense(t) => {
                let cols = t.dims().last().copied().unwrap_or(0);
                if quantizable(&name) && t.rank() == 2 && cols.is_multiple_of(32) {
                    let q = QuantMatrix::from_tensor(&t, kind, &name)?;
                    f32_bytes += t.elem_count() * 4;
                    q_bytes += q.bytes();
                    quant.insert(name, Arc::new(q));
                } else {
                    if quantizable(&name) {
                        tracing::warn!(
                            "{name}: rows of {cols} are not whole 32-blocks, kept in f32"
                        );
                    }
                    dense.insert(name, t);
                }
            }
        }
        Ok(())
    };
    if kind == BaseQuant::Gguf {
        let gguf = p.base_dir.join(strata_model::gguf::GGUF_IN_FOLDER);
        let has_st = p.base_dir.join("model.safetensors").is_file()
            || p.base_dir.join("model.safetensors.index.json").is_file();
        if !gguf.is_file() || has_st {
            return Err(TrainError::Config(format!(
                "--base-quant gguf trains over the blocks of an imported GGUF, and model {} holds \
                 safetensors weights (no {}): use q8_0 or q4_k",
                p.base,
                strata_model::gguf::GGUF_IN_FOLDER
            )));
        }
        if !p.adapters.is_empty() {
            return Err(TrainError::Config(format!(
                "--base-quant gguf keeps the file's blocks as they are, so its parent must be the model \
                 itself, not the adapter chain {} on {}: merge the chain into a model, or use q8_0 or q4_k",
                p.adapter_names().join(" → "),
                p.base
            )));
        }
        strata_model::gguf::stream_gguf_blocks(&gguf, device, &mut keep)?;
    } else {
        p.stream_weights(device, &mut |name, t| keep(name, GgufWeight::Dense(t)))?;
    }
    #[allow(clippy::cast_precision_loss)]
    let mib = |b: usize| b as f64 / f64::from(1u32 << 20);
    let mut types: Vec<&str> = quant.values().map(|q| q.type_name()).collect();
    types.sort_unstable();
    types.dedup();
    tracing::info!(
        "QLoRA base: {} weights in {} blocks, {:.1} MiB (f32: {:.1} MiB)",
        quant.len(),
        types.join("/"),
        mib(q_bytes),
        mib(f32_bytes)
    );
    Ok((dense, quant))
}

/// The model and its trainable variables: fresh (seeded), the parent's weights (full fine-tuning), or the
/// parent's weights as constants with a fresh LoRA adapter as the only variables.
fn build_model(
    cfg: &LlamaConfig,
    train: &TrainConfig,
    parent: Option<&Parent>,
    lora_state: &Arc<LoraState>,
) -> Result<(Llama, HashMap<String, Var>)> {
    let device = Device::Cpu;
    if let (Some(lc), Some(p)) = (&train.lora, parent) {
        let (base, quantized) = match train.base_quant {
            Some(kind) => quantized_base(p, kind, &device)?,
            None => (p.weights(&device)?, strata_model::QuantBase::new()),
        };
        let fresh = strata_model::lora::init_adapter(
            &strata_model::lora::adapter_shapes(cfg, lc),
            train.seed,
            &device,
        )?;
        let mut vars = HashMap::new();
        for (k, t) in fresh {
            let v = Var::from_tensor(&t).ctx(&k)?;
            vars.insert(k, v);
        }
        let tensors: HashMap<String, Tensor> = vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        let vb = VarBuilder::from_tensors(base, DType::F32, &device);
        let lw = strata_model::LoraWeights {
            config: lc,
            tensors: &tensors,
            state: Arc::clone(lora_state),
            quantized: train.base_quant.map(|_| &quantized),
        };
        return Ok((Llama::load_with_lora(&vb, cfg, Some(&lw))?, vars));
    }
    let varmap = VarMap::new();
    let model = Llama::load(&VarBuilder::from_varmap(&varmap, DType::F32, &device), cfg)?;
    let vars: HashMap<String, Var> = varmap.data().lock().map(|d| d.clone()).unwrap_or_default();
    match parent {
        Some(p) => load_parent(&vars, &p.weights(&device)?, &p.base_dir)?,
        None => strata_model::seeded_init(&vars, cfg, train.seed)?,
    }
    Ok((model, vars))
}

/// What a run was set up with: the model's config and tokenizer, its parent, the kind it publishes, and
/// the manifest (inputs and fingerprint) it publishes under.
struct Setup {
    cfg: LlamaConfig,
    td: TokenizerDir,
    parent: Option<Parent>,
    kind: Kind,
    manifest: Manifest,
    run_id: String,
}

/// Checks the job (mixture, LoRA, tokens against the tokenizer, the config against the model) and builds the
/// manifest it would publish; nothing is written.
fn setup(store: &Store, job: &TrainJob<'_>) -> Result<Setup> {
    if job.tokens.is_empty() {
        return Err(TrainError::Config("no token artifacts to train on".into()));
    }
    let mut inputs = Vec::new();
    for (i, t) in job.tokens.iter().enumerate() {
        if job.tokens[..i].iter().any(|o| o.name == t.name) {
            return Err(TrainError::Config(format!(
                "token artifact {:?} is listed twice in the mixture",
                t.name
            )));
        }
        if !(t.weight.is_finite() && t.weight > 0.0) {
            return Err(TrainError::Config(format!(
                "mixture weight of {:?} is {}: weights must be > 0",
                t.name, t.weight
            )));
        }
        inputs.push(store.input_ref(Kind::Tokens, &t.name)?);
    }
    // the model config, the tokenizer folder (opened once: its tokenizer.json is hashed) and, when
    // fine-tuning, the parent's folder
    if job.cfg.lora.is_some() && matches!(job.init, Init::Scratch { .. }) {
        return Err(TrainError::Config(
            "LoRA trains an adapter on an existing model: use finetune --parent".into(),
        ));
    }
    let (cfg, td, parent) = match &job.init {
        Init::Scratch { spec, tokenizer } => {
            let dir = store.require(Kind::Tokenizer, tokenizer)?;
            inputs.push(store.input_ref(Kind::Tokenizer, tokenizer)?);
            let td = TokenizerDir::open(&dir)?;
            let cfg = spec.to_config(td.tokenizer.get_vocab_size(true), td.special.eos)?;
            (cfg, td, None)
        }
        Init::From { parent } => {
            let p = Parent::resolve(store, parent)?;
            inputs.extend(p.inputs(store)?);
            (p.cfg.clone(), TokenizerDir::open(&p.base_dir)?, Some(p))
        }
    };
    let kind = if job.cfg.lora.is_some() {
        Kind::Adapter
    } else {
        Kind::Model
    };
    check_tokens(store, job.tokens, &td)?;
    job.cfg.validate(cfg.max_position_embeddings)?;
    let manifest = Manifest::new(kind, job.name, job.created_by)
        .with_config(inputs, resolved(job, &cfg, &fingerprinted(&job.cfg)));
    let run_id = format!("{}-{}", job.name, &manifest.fingerprint[..12]);
    Ok(Setup {
        cfg,
        td,
        parent,
        kind,
        manifest,
        run_id,
    })
}

/// The resolved config of a run, as saved beside it and fingerprinted.
fn resolved(job: &TrainJob<'_>, cfg: &LlamaConfig, train: &TrainConfig) -> serde_json::Value {
    serde_json::to_value(Resolved {
        init: &job.init,
        tokens: job.tokens,
        train,
        model: cfg,
    })
    .unwrap_or_default()
}

/// The training mixture and each component's validation tokens (name, ids).
type Data = (Mixture, Vec<(String, Vec<u32>)>);

/// The training mixture and each component's validation tokens, memory-mapped.
fn open_data(store: &Store, job: &TrainJob<'_>) -> Result<Data> {
    let mut val_sets = Vec::new();
    for t in job.tokens {
        let dir = store.require(Kind::Tokens, &t.name)?;
        val_sets.push((
            t.name.clone(),
            strata_tokenize::read_tokens(&dir.join("val-00000.bin"))?,
        ));
    }
    Ok((mixture(store, job.tokens, &job.cfg)?, val_sets))
}

/// The training mixture of token artifacts `tokens` (their train shards, by weight), in windows of the
/// config's `seq_len`; also what a vision step replays beside its images.
///
/// # Errors
/// A token artifact missing, or one whose rows or length do not fit `seq_len`.
pub fn mixture(store: &Store, tokens: &[TokenMix], cfg: &TrainConfig) -> Result<Mixture> {
    let mut components = Vec::new();
    for t in tokens {
        let dir = store.require(Kind::Tokens, &t.name)?;
        let shards = strata_tokenize::train_shards(&dir)?;
        let example_len = store
            .manifest(Kind::Tokens, &t.name)?
            .counts
            .get("example_len")
            .and_then(serde_json::Value::as_u64)
            .and_then(|n| usize::try_from(n).ok());
        components.push(Component::new(
            &t.name,
            t.weight,
            shards,
            cfg.seq_len,
            example_len,
        )?);
    }
    Mixture::new(components, cfg.seq_len, cfg.sampling)
}

fn progress_bar(job: &TrainJob<'_>, start: usize) -> ProgressBar {
    steps_bar(
        job.name,
        job.cfg.steps,
        start,
        job.progress && job.comm.rank() == 0,
    )
}

/// A run's bar of `steps` optimizer steps, at `start` (hidden unless `show`): steps/s and the time left.
pub(crate) fn steps_bar(name: &str, steps: usize, start: usize, show: bool) -> ProgressBar {
    let bar = if show {
        ProgressBar::new(steps as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(name.to_string());
    bar.set_position(start as u64);
    bar
}

/// The model, its variables and optimizer, as the run starts: fresh, from the parent, or from the last
/// checkpoint (then also the run's state and the step it resumed from).
struct Model {
    model: Llama,
    vars: HashMap<String, Var>,
    opt: crate::AdamW,
    lora_state: Arc<LoraState>,
    state: RunState,
    resumed_from: Option<usize>,
}

fn start_model(job: &TrainJob<'_>, s: &Setup, ckpt_dir: &std::path::Path) -> Result<Model> {
    // With LoRA the parent's weights are constants and the adapter's A/B the only variables.
    let lora_state = Arc::new(LoraState::default());
    let (mut model, vars) = build_model(&s.cfg, &job.cfg, s.parent.as_ref(), &lora_state)?;
    model.set_checkpointing(job.cfg.gradient_checkpointing);
    let mut opt = crate::AdamW::new(&vars, job.cfg.beta1, job.cfg.beta2, job.cfg.weight_decay)?;
    let mut state = RunState::default();
    let mut resumed_from = None;
    if let Some(ck) = checkpoint::load(ckpt_dir, &Device::Cpu)? {
        set_vars(&vars, &ck.weights, ckpt_dir)?;
        opt.load_state(&ck.optim, ck.state.step)?;
        state = ck.state;
        resumed_from = Some(state.step);
        tracing::info!(
            "{}: resuming from checkpoint at step {}",
            job.name,
            state.step
        );
    }
    Ok(Model {
        model,
        vars,
        opt,
        lora_state,
        state,
        resumed_from,
    })
}

fn set_vars(
    vars: &HashMap<String, Var>,
    weights: &HashMap<String, Tensor>,
    from: &std::path::Path,
) -> Result<()> {
    for (name, t) in weights {
        let var = vars.get(name).ok_or_else(|| TrainError::Checkpoint {
            path: from.to_path_buf(),
            reason: format!("{name} is not a variable of this run"),
        })?;
        var.set(t).ctx(&format!("checkpoint tensor {name}"))?;
    }
    Ok(())
}

/// What one optimizer step reports.
struct StepOut {
    loss: f32,
    grad_norm: f64,
    /// Seconds spent in collective operations (0 for one process).
    comm_s: f64,
}

/// One optimizer step: the global batch of K micro-batches of B rows (global rows
/// `step·K·B .. (step+1)·K·B`); this rank's contiguous share of it, in micro-batches of at most B rows,
/// accumulated; the loss and gradients summed over the ranks; clipped; applied.
fn optimizer_step(
    job: &TrainJob<'_>,
    m: &mut Model,
    mixture: &Mixture,
    step: usize,
    rows_seen: &mut [usize],
) -> Result<StepOut> {
    let (b, k, seed) = (job.cfg.batch_size, job.cfg.grad_accum, job.cfg.seed);
    let comm = job.comm;
    let global = b * k;
    let part = crate::dist::share(global, comm.rank(), comm.size())?;
    let base = step as u64 * global as u64;
    let mut micro = Vec::with_capacity(k);
    let mut starts = Vec::with_capacity(k);
    let mut row = part.start;
    while row < part.end {
        let n = b.min(part.end - row);
        let batch = mixture.batch(seed, base + row as u64, n, &Device::Cpu)?;
        micro.push((batch.x, batch.y));
        starts.push(row);
        row += n;
    }
    for (seen, r) in
        rows_seen
            .iter_mut()
            .zip(mixture.rows_between(seed, base, base + global as u64))
    {
        *seen += r;
    }
    #[allow(clippy::cast_precision_loss)]
    let mut total = [targets(&micro)? as f64];
    let t0 = Instant::now();
    comm.sum_f64(&mut total)?;
    let mut comm_s = t0.elapsed().as_secs_f64();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let total = nonzero(total[0] as usize)?;
    let lora_state = &m.lora_state;
    let (loss, grads) = accumulate_part(
        &m.model,
        &m.opt,
        &micro,
        &|i| {
            // dropout masks: a function of (seed, step, micro-batch) alone, so resume stays exact
            let index = (step * k + starts[i] / b) as u64;
            lora_state.set_training(true, seed ^ index.wrapping_mul(0x2545_F491_4F6C_DD1D));
        },
        total,
    )?;
    lora_state.set_training(false, 0);
    let mut loss = [loss];
    let t0 = Instant::now();
    comm.sum_f64(&mut loss)?;
    let grads = m.opt.all_reduce(grads, comm)?;
    comm_s += t0.elapsed().as_secs_f64();
    #[allow(clippy::cast_possible_truncation)]
    let loss = loss[0] as f32;
    let (grad_norm, _) = m.opt.clipped_step(&grads, step, loss, &job.cfg)?;
    Ok(StepOut {
        loss,
        grad_norm,
        comm_s,
    })
}

/// Validation after step `done`: every component's held-out loss; the first one's drives early stopping.
/// With early stopping on, weights that improve on the best so far are kept (`best.safetensors` beside the
/// checkpoints) so that the best, not the last, is published.
fn validate(
    job: &TrainJob<'_>,
    m: &mut Model,
    val_sets: &[(String, Vec<u32>)],
    done: usize,
    ckpt_dir: &std::path::Path,
) -> Result<(Option<crate::Perplexity>, BTreeMap<String, f32>)> {
    let t = job.cfg.seq_len;
    let mut first = None;
    let mut val_losses = BTreeMap::new();
    for (i, (name, ids)) in val_sets.iter().enumerate() {
        if ids.len() <= t {
            continue;
        }
        let p = perplexity(&m.model, ids, t, Some(job.cfg.eval_windows))?;
        #[allow(clippy::cast_possible_truncation)]
        val_losses.insert(name.clone(), p.nll as f32);
        if i > 0 {
            continue;
        }
        let improved = m
            .state
            .best_val
            .is_none_or(|best| p.nll < best - job.cfg.early_stop_min_delta);
        if improved {
            m.state.best_val = Some(p.nll);
            m.state.stale_evals = 0;
            if job.cfg.early_stop_patience.is_some() && job.comm.rank() == 0 {
                checkpoint::save_best(ckpt_dir, &named(&m.vars), done, p.nll)?;
            }
        } else {
            m.state.stale_evals += 1;
        }
        first = Some(p);
    }
    Ok((first, val_losses))
}

/// Each component's tokens seen and share of them (empty for a single component).
fn mixture_stats(
    mixture: &Mixture,
    rows_seen: &[usize],
    t: usize,
) -> BTreeMap<String, ComponentStat> {
    if mixture.components().len() < 2 {
        return BTreeMap::new();
    }
    let tokens_seen: usize = rows_seen.iter().sum::<usize>() * t;
    #[allow(clippy::cast_precision_loss)]
    mixture
        .components()
        .iter()
        .zip(rows_seen)
        .map(|(c, &r)| {
            let component = ComponentStat {
                tokens: r * t,
                share: (r * t) as f64 / tokens_seen.max(1) as f64,
            };
            (c.name.clone(), component)
        })
        .collect()
}

/// Whether the time budget is spent and whether a signal asked to stop, as one decision of all ranks (any
/// rank's counts), so that every rank stops after the same step.
fn stop_now(job: &TrainJob<'_>, began: Instant) -> Result<(bool, bool)> {
    let mut flags = [
        f64::from(u8::from(
            job.cfg
                .max_time_s
                .is_some_and(|s| began.elapsed().as_secs_f64() >= s),
        )),
        f64::from(u8::from(
            job.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)),
        )),
    ];
    job.comm.sum_f64(&mut flags)?;
    Ok((flags[0] > 0.0, flags[1] > 0.0))
}

/// How the loop ended.
struct LoopEnd {
    done: usize,
    stopped: Option<&'static str>,
    last_val: Option<crate::Perplexity>,
    rows_seen: Vec<usize>,
}

/// The training loop from the run's current step: steps, validation, metrics, checkpoints, and the stop
/// conditions (steps done, early stopping, the time budget, a signal).
fn run_loop(
    job: &TrainJob<'_>,
    m: &mut Model,
    data: &Data,
    run_dir: &std::path::Path,
) -> Result<LoopEnd> {
    let (mixture, val_sets) = data;
    let ckpt_dir = run_dir.join("checkpoints");
    let start = m.state.step;
    // rank 0 writes; the other ranks compute the same validations (their weights are the same) and agree
    // on when to stop
    let lead = job.comm.rank() == 0;
    let mut log = lead
        .then(|| MetricsLog::open(&run_dir.join("metrics.jsonl"), start))
        .transpose()?;
    let bar = progress_bar(job, start);
    let (b, k, t) = (job.cfg.batch_size, job.cfg.grad_accum, job.cfg.seq_len);
    let mut rows_seen = mixture.rows_before(job.cfg.seed, start as u64 * (b * k) as u64);
    let began = Instant::now();
    let mut end = LoopEnd {
        done: start,
        stopped: None,
        last_val: None,
        rows_seen: Vec::new(),
    };
    for step in start..job.cfg.steps {
        let t0 = Instant::now();
        let StepOut {
            loss,
            grad_norm,
            comm_s,
        } = optimizer_step(job, m, mixture, step, &mut rows_seen)?;
        #[allow(clippy::cast_precision_loss)]
        let tps = (b * k * t) as f64 / t0.elapsed().as_secs_f64().max(1e-9);
        let done = step + 1;
        end.done = done;
        let (out_of_time, signalled) = stop_now(job, began)?;
        let (mut val_loss, mut val_losses) = (None, BTreeMap::new());
        if done.is_multiple_of(job.cfg.eval_every) || done == job.cfg.steps || out_of_time {
            let (first, all) = validate(job, m, val_sets, done, &ckpt_dir)?;
            #[allow(clippy::cast_possible_truncation)]
            if let Some(p) = first {
                tracing::info!(
                    "{} step {done}/{}: train loss {loss:.3}, val loss {:.3} (ppl {:.1}), {tps:.0} tok/s",
                    job.name,
                    job.cfg.steps,
                    p.nll,
                    p.ppl
                );
                val_loss = Some(p.nll as f32);
                end.last_val = Some(p);
            }
            val_losses = all;
        }
        #[allow(clippy::cast_precision_loss)]
        let metrics = StepMetrics {
            step: done,
            loss,
            lr: get_lr(step, &job.cfg),
            grad_norm,
            tokens_per_s: tps,
            val_loss,
            val_losses,
            tokens_seen: rows_seen.iter().sum::<usize>() * t,
            mixture: mixture_stats(mixture, &rows_seen, t),
            peak_rss_mib: peak_rss_bytes() as f64 / 1_048_576.0,
            ranks: (job.comm.size() > 1).then_some(job.comm.size()),
            comm_s: (job.comm.size() > 1).then_some(comm_s),
        };
        if let Some(log) = &mut log {
            log.append(&metrics)?;
        }
        bar.set_message(format!("loss {loss:.3}  {tps:.0} tok/s"));
        bar.inc(1);
        m.state.step = done;
        let early = job
            .cfg
            .early_stop_patience
            .is_some_and(|p| m.state.stale_evals >= p);
        let save = |state| {
            if !lead {
                return Ok(());
            }
            let keep = job.cfg.keep_checkpoints;
            checkpoint::save(&ckpt_dir, &named(&m.vars), m.opt.state(), state, keep)
        };
        if signalled {
            save(m.state)?;
            // no rank ends (and, with an error, aborts the others) before rank 0's checkpoint is written
            job.comm.barrier()?;
            bar.abandon();
            return Err(TrainError::Interrupted {
                step: done,
                dir: ckpt_dir,
            });
        }
        if early || out_of_time {
            let why = if early { "early_stop" } else { "max_time" };
            tracing::info!("{}: stopping at step {done} ({why})", job.name);
            end.stopped = Some(why);
            break;
        }
        if done.is_multiple_of(job.cfg.checkpoint_every) && done < job.cfg.steps {
            save(m.state)?;
        }
    }
    bar.finish_and_clear();
    end.rows_seen = rows_seen;
    Ok(end)
}

/// With early stopping on, the best validated weights replace the last ones before publishing (when they
/// differ): the step they are from, and their validation loss.
fn restore_best(
    job: &TrainJob<'_>,
    m: &Model,
    end: &LoopEnd,
    ckpt_dir: &std::path::Path,
) -> Result<Option<(usize, f64)>> {
    if job.cfg.early_stop_patience.is_none() {
        return Ok(None);
    }
    let Some((step, val, weights)) = checkpoint::load_best(ckpt_dir, &Device::Cpu)? else {
        return Ok(None);
    };
    if step != end.done {
        set_vars(&m.vars, &weights, ckpt_dir)?;
        tracing::info!(
            "{}: publishing the weights of step {step} (best validation loss {val:.4}), not of the last step {}",
            job.name,
            end.done
        );
    }
    Ok(Some((step, val)))
}

/// Trains (or resumes, or skips when up to date) and publishes model `job.name`.
///
/// # Errors
/// On a missing input, an invalid config, divergence, an interruption (after writing a checkpoint), or an
/// I/O failure. Nothing is written before the inputs and the config have been checked.
pub fn train(store: &Store, job: &TrainJob<'_>) -> Result<TrainOutcome> {
    let s = setup(store, job)?;
    let comm = job.comm;
    crate::dist::check_agreement(comm, &s.manifest.fingerprint)?;
    crate::dist::share(job.cfg.batch_size * job.cfg.grad_accum, 0, comm.size())?;
    let lead = comm.rank() == 0;
    let run_dir = store.run_dir(&s.run_id);
    if let Some(existing) = store.up_to_date(s.kind, job.name, &s.manifest.fingerprint) {
        return Ok(TrainOutcome {
            manifest: existing,
            skipped: true,
            resumed_from: None,
            run_dir,
            stopped: None,
            guard: None,
        });
    }
    // the training data, memory-mapped, before anything is written
    let data = open_data(store, job)?;
    let ckpt_dir = run_dir.join("checkpoints");
    if lead {
        std::fs::create_dir_all(&ckpt_dir).map_err(crate::io_err(&ckpt_dir))?;
        strata_store::write_json_atomic(
            run_dir.join("config.json"),
            &resolved(job, &s.cfg, &job.cfg),
        )?;
    }
    let mut m = start_model(job, &s, &ckpt_dir)?;
    let end = run_loop(job, &mut m, &data, &run_dir)?;
    if !lead {
        // rank 0 restores the best weights, measures the guard and publishes; the others wait for it and
        // return what it published
        comm.barrier()?;
        return Ok(TrainOutcome {
            manifest: store.manifest(s.kind, job.name)?,
            skipped: false,
            resumed_from: m.resumed_from,
            run_dir,
            stopped: end.stopped,
            guard: None,
        });
    }
    let best = restore_best(job, &m, &end, &ckpt_dir)?;
    crate::plot_loss(&run_dir.join("metrics.jsonl"), &run_dir.join("loss.png"))?;
    // the forgetting guard: the model to be published (as it stands in memory) against its parent
    let guard = match (&job.cfg.guard, &job.init) {
        (Some(g), Init::From { parent }) => {
            m.lora_state.set_training(false, 0);
            Some(crate::guard::verdict(store, g, parent, &m.model, &s.td)?)
        }
        _ => None,
    };
    let manifest = publish(store, job, &s, &m, &end, best, guard.as_ref())?;
    checkpoint::clear(&ckpt_dir);
    comm.barrier()?;
    Ok(TrainOutcome {
        manifest,
        skipped: false,
        resumed_from: m.resumed_from,
        run_dir,
        stopped: end.stopped,
        guard,
    })
}

/// Writes the model (or adapter) with its tokenizer files and publishes it with the run's counts.
fn publish(
    store: &Store,
    job: &TrainJob<'_>,
    s: &Setup,
    m: &Model,
    end: &LoopEnd,
    best: Option<(usize, f64)>,
    guard: Option<&crate::guard::GuardVerdict>,
) -> Result<Manifest> {
    let staging = store.staging(s.kind, job.name)?;
    if let (Some(lc), Some(p)) = (&job.cfg.lora, &s.parent) {
        strata_model::lora::write_adapter(&staging, lc, &named(&m.vars), &p.base)?;
    } else {
        strata_model::save_safetensors(&named(&m.vars), &staging.join("model.safetensors"), &[])?;
        strata_model::write_hf_config(&staging, &s.cfg)?;
    }
    crate::parent::copy_present(&s.td.dir, &staging, &crate::parent::TOKENIZER_FILES)?;
    crate::parent::copy_present(&s.td.dir, &staging, &["generation_config.json"])?;
    let mut manifest = s.manifest.clone();
    manifest.created_by = format!("{} (run {})", job.created_by, s.run_id);
    let counts = &mut manifest.counts;
    if let (Some(lc), Some(p)) = (&job.cfg.lora, &s.parent) {
        let trainable: usize = m.vars.values().map(|v| v.as_tensor().elem_count()).sum();
        counts.insert("parameters".into(), trainable.into());
        counts.insert("base_parameters".into(), s.cfg.num_parameters().into());
        counts.insert("base".into(), p.base.clone().into());
        counts.insert("base_sha256".into(), p.base_sha256.clone().into());
        counts.insert("adapters".into(), p.adapter_names().into());
        counts.insert("lora_r".into(), lc.r.into());
        if let Some(q) = job.cfg.base_quant {
            counts.insert("base_quant".into(), q.name().into());
        }
    } else {
        counts.insert("parameters".into(), s.cfg.num_parameters().into());
    }
    counts.insert("steps".into(), end.done.into());
    counts.insert(
        "tokens_seen".into(),
        (end.rows_seen.iter().sum::<usize>() * job.cfg.seq_len).into(),
    );
    if let Some(why) = end.stopped {
        counts.insert("stopped".into(), why.into());
    }
    // the published weights' validation loss: the best validation's (maybe an earlier step), else the last
    let val = match best {
        Some((step, val)) => {
            counts.insert("best_step".into(), step.into());
            Some(val)
        }
        None => end.last_val.map(|p| p.nll),
    };
    if let Some(val) = val {
        counts.insert("val_loss".into(), val.into());
        counts.insert("val_ppl".into(), val.exp().into());
    }
    counts.insert("run".into(), s.run_id.clone().into());
    if let Some(v) = guard {
        counts.insert("guard".into(), serde_json::to_value(v).unwrap_or_default());
    }
    // the threads the tensor math ran on (`--threads`)
    counts.insert("threads".into(), rayon::current_num_threads().into());
    Ok(store.publish(&staging, manifest)?)
}

fn named(vars: &HashMap<String, Var>) -> HashMap<String, Tensor> {
    vars.iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect()
}
