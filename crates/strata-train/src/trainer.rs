//! The training loop, flat as in nanoGPT: batch → forward → loss → backward → clip → AdamW, with
//! evaluation, checkpoints and metrics on a schedule. Pretraining starts from fresh weights; continued
//! pretraining (fine-tuning) starts from a parent model's. A run lives in `runs/<name>-<fingerprint>/`,
//! so the same command after `kill -9` finds its checkpoint and resumes.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use strata_model::{Llama, LlamaConfig, ModelSpec};
use strata_store::{Kind, Manifest, Store};

use crate::metrics::{MetricsLog, StepMetrics};
use crate::{
    checkpoint, get_lr, perplexity, Context, Result, TokenWindows, TrainConfig, TrainError,
};

/// Where the weights start.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Init {
    /// Fresh weights of this architecture, vocabulary from `tokenizer`.
    Scratch { spec: ModelSpec, tokenizer: String },
    /// The weights (and tokenizer) of an existing model: continued pretraining.
    From { parent: String },
}

pub struct TrainJob<'a> {
    pub name: &'a str,
    /// Token artifact to train on (its train split) and validate on (its val split).
    pub tokens: &'a str,
    pub init: Init,
    pub cfg: TrainConfig,
    pub created_by: &'a str,
    /// Draw a progress bar (when stderr is a terminal).
    pub progress: bool,
}

#[derive(Debug)]
pub struct TrainOutcome {
    pub manifest: Manifest,
    pub skipped: bool,
    pub resumed_from: Option<usize>,
    pub run_dir: std::path::PathBuf,
}

#[derive(Serialize)]
struct Resolved<'a> {
    init: &'a Init,
    tokens: &'a str,
    train: &'a TrainConfig,
    model: &'a LlamaConfig,
}

/// Trains (or resumes, or skips when up to date) and publishes model `job.name`.
///
/// # Errors
/// On a missing input, an invalid config, divergence, or an I/O failure.
#[allow(clippy::too_many_lines)]
pub fn train(store: &Store, job: &TrainJob<'_>) -> Result<TrainOutcome> {
    let device = Device::Cpu;
    let tokens_dir = store.require(Kind::Tokens, job.tokens)?;
    let tokens_manifest = store.manifest(Kind::Tokens, job.tokens)?;
    let mut inputs = vec![store.input_ref(Kind::Tokens, job.tokens)?];
    let (cfg, tokenizer_dir, parent_weights) = match &job.init {
        Init::Scratch { spec, tokenizer } => {
            let dir = store.require(Kind::Tokenizer, tokenizer)?;
            inputs.push(store.input_ref(Kind::Tokenizer, tokenizer)?);
            let tk = strata_tokenize::load_tokenizer(&dir.join("tokenizer.json"))?;
            let eos = tk
                .token_to_id(strata_tokenize::SPECIAL_TOKENS[0])
                .unwrap_or(0);
            (spec.to_config(tk.get_vocab_size(true), eos)?, dir, None)
        }
        Init::From { parent } => {
            let dir = store.require(Kind::Model, parent)?;
            inputs.push(store.input_ref(Kind::Model, parent)?);
            (
                strata_model::read_config(&dir.join("config.json"))?,
                dir.clone(),
                Some(dir.join("model.safetensors")),
            )
        }
    };
    let vocab = tokens_manifest
        .counts
        .get("vocab_size")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    if usize::try_from(vocab).ok() != Some(cfg.vocab_size) {
        return Err(TrainError::Config(format!(
            "tokens {:?} were encoded with a vocabulary of {vocab} but the model has {}: encode the dataset with the model's tokenizer",
            job.tokens, cfg.vocab_size
        )));
    }
    job.cfg.validate(cfg.max_position_embeddings)?;
    let resolved = serde_json::to_value(Resolved {
        init: &job.init,
        tokens: job.tokens,
        train: &job.cfg,
        model: &cfg,
    })
    .unwrap_or_default();
    let manifest =
        Manifest::new(Kind::Model, job.name, job.created_by).with_config(inputs, resolved.clone());
    let run_id = format!("{}-{}", job.name, &manifest.fingerprint[..12]);
    let run_dir = store.run_dir(&run_id);
    if let Some(existing) = store.up_to_date(Kind::Model, job.name, &manifest.fingerprint) {
        return Ok(TrainOutcome {
            manifest: existing,
            skipped: true,
            resumed_from: None,
            run_dir,
        });
    }
    let ckpt_dir = run_dir.join("checkpoints");
    std::fs::create_dir_all(&ckpt_dir).map_err(crate::io_err(&ckpt_dir))?;
    strata_store::write_json_atomic(run_dir.join("config.json"), &resolved)?;

    // Model and optimizer: fresh, from the parent, or from the checkpoint.
    let mut varmap = VarMap::new();
    let model = Llama::load(&VarBuilder::from_varmap(&varmap, DType::F32, &device), &cfg)?;
    let vars: HashMap<String, candle_core::Var> =
        varmap.data().lock().map(|d| d.clone()).unwrap_or_default();
    match &parent_weights {
        Some(path) => varmap
            .load(path)
            .ctx(&format!("loading parent weights {}", path.display()))?,
        None => strata_model::seeded_init(&vars, &cfg, job.cfg.seed)?,
    }
    let mut opt = crate::AdamW::new(&vars, job.cfg.beta1, job.cfg.beta2, job.cfg.weight_decay)?;
    let mut start = 0;
    let mut resumed_from = None;
    if let Some(ck) = checkpoint::load(&ckpt_dir, &device)? {
        for (name, t) in &ck.weights {
            varmap
                .set_one(name, t)
                .ctx(&format!("checkpoint tensor {name}"))?;
        }
        opt.load_state(&ck.optim, ck.step)?;
        start = ck.step;
        resumed_from = Some(ck.step);
        tracing::info!("{}: resuming from checkpoint at step {}", job.name, ck.step);
    }

    let train_tokens = strata_tokenize::read_tokens(&tokens_dir.join("train-00000.bin"))?;
    let val_tokens = strata_tokenize::read_tokens(&tokens_dir.join("val-00000.bin"))?;
    let windows = TokenWindows::new(train_tokens, job.cfg.seq_len)?;
    let metrics_path = run_dir.join("metrics.jsonl");
    let mut log = MetricsLog::open(&metrics_path, start)?;

    let bar = if job.progress {
        ProgressBar::new(job.cfg.steps as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(job.name.to_string());
    bar.set_position(start as u64);
    let tokens_per_step = job.cfg.batch_size * job.cfg.seq_len;
    let mut last_val = None;
    for step in start..job.cfg.steps {
        let t0 = Instant::now();
        let lr = get_lr(step, &job.cfg);
        let (x, y) = windows.batch(job.cfg.seed, step, job.cfg.batch_size, &device)?;
        let loss = strata_model::next_token_loss(&model.forward(&x)?, &y)?;
        let loss_value = loss.to_scalar::<f32>().ctx("loss")?;
        if !loss_value.is_finite() {
            return Err(TrainError::Diverged {
                step,
                value: loss_value,
            });
        }
        let grads = loss.backward().ctx("backward")?;
        let norm = opt.grad_norm(&grads)?;
        let scale = if norm > job.cfg.grad_clip {
            job.cfg.grad_clip / norm
        } else {
            1.0
        };
        opt.step(&grads, lr, scale)?;
        #[allow(clippy::cast_precision_loss)]
        let tps = tokens_per_step as f64 / t0.elapsed().as_secs_f64().max(1e-9);
        let done = step + 1;
        let val_loss = if done % job.cfg.eval_every == 0 || done == job.cfg.steps {
            let p = perplexity(
                &model,
                &val_tokens,
                job.cfg.seq_len,
                Some(job.cfg.eval_windows),
            )?;
            #[allow(clippy::cast_possible_truncation)]
            let v = p.nll as f32;
            tracing::info!("{} step {done}/{}: train loss {loss_value:.3}, val loss {v:.3} (ppl {:.1}), {tps:.0} tok/s", job.name, job.cfg.steps, p.ppl);
            last_val = Some(p);
            Some(v)
        } else {
            None
        };
        log.append(&StepMetrics {
            step: done,
            loss: loss_value,
            lr,
            grad_norm: norm,
            tokens_per_s: tps,
            val_loss,
        })?;
        bar.set_message(format!("loss {loss_value:.3}  {tps:.0} tok/s"));
        bar.inc(1);
        if done % job.cfg.checkpoint_every == 0 && done < job.cfg.steps {
            checkpoint::save(&ckpt_dir, &named(&varmap), opt.state(), done)?;
        }
    }
    bar.finish_and_clear();
    crate::plot_loss(&metrics_path, &run_dir.join("loss.png"))?;

    let staging = store.staging(Kind::Model, job.name)?;
    strata_model::save_safetensors(&named(&varmap), &staging.join("model.safetensors"), &[])?;
    strata_model::write_hf_config(&staging, &cfg)?;
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        let src = tokenizer_dir.join(f);
        std::fs::copy(&src, staging.join(f)).map_err(crate::io_err(&src))?;
    }
    let mut manifest = manifest;
    manifest.created_by = format!("{} (run {run_id})", job.created_by);
    manifest
        .counts
        .insert("parameters".into(), cfg.num_parameters().into());
    manifest.counts.insert("steps".into(), job.cfg.steps.into());
    manifest.counts.insert(
        "tokens_seen".into(),
        (job.cfg.steps * tokens_per_step).into(),
    );
    if let Some(p) = last_val {
        manifest.counts.insert("val_loss".into(), p.nll.into());
        manifest.counts.insert("val_ppl".into(), p.ppl.into());
    }
    manifest.counts.insert("run".into(), run_id.clone().into());
    let manifest = store.publish(&staging, manifest)?;
    let _ = std::fs::remove_file(ckpt_dir.join(checkpoint::FILE));
    Ok(TrainOutcome {
        manifest,
        skipped: false,
        resumed_from,
        run_dir,
    })
}

fn named(varmap: &VarMap) -> HashMap<String, Tensor> {
    varmap
        .data()
        .lock()
        .map(|d| {
            d.iter()
                .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
                .collect()
        })
        .unwrap_or_default()
}
