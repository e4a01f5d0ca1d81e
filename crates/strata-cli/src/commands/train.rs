//! `strata train` (from scratch) and `strata finetune` (continued pretraining from a parent model).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use serde::Deserialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use strata_model::ModelSpec;
use strata_store::Store;

use strata_train::{Init, Stage, TokenMix, TrainConfig, TrainJob};

use crate::cli::{FinetuneArgs, TrainArgs, TrainOverrides};

/// A `--config` file for train/finetune.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrainFile {
    model: Option<ModelSpec>,
    /// Over the stage's defaults (`TrainConfig::defaults`).
    train: Option<toml::Table>,
}

fn default_spec() -> ModelSpec {
    ModelSpec {
        hidden_size: 256,
        intermediate_size: 688,
        layers: 4,
        heads: 8,
        kv_heads: 4,
        context: 256,
        rope_theta: 10_000.0,
        tie_word_embeddings: false,
    }
}

/// `90`, `90s`, `30m`, `2h` → seconds.
fn parse_duration(s: &str) -> anyhow::Result<f64> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c),
        _ => (s, 's'),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("--max-time {s:?}: expected seconds or 90s, 30m, 2h"))?;
    let mult = match unit {
        's' => 1.0,
        'm' => 60.0,
        'h' => 3600.0,
        _ => anyhow::bail!("--max-time {s:?}: unit must be s, m or h"),
    };
    anyhow::ensure!(n > 0.0, "--max-time {s:?}: must be > 0");
    Ok(n * mult)
}

/// A `--config` file's `[model]`, and its `[train]` over the stage's defaults (`TrainConfig::defaults`).
fn load_file(
    path: Option<&Path>,
    stage: Stage,
) -> anyhow::Result<(Option<ModelSpec>, TrainConfig)> {
    let Some(p) = path else {
        return Ok((None, TrainConfig::defaults(stage)));
    };
    let text = std::fs::read_to_string(p)
        .with_context(|| format!("cannot read config {}", p.display()))?;
    let file: TrainFile =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
    let train = match &file.train {
        None => TrainConfig::defaults(stage),
        Some(t) => TrainConfig::from_table(stage, t)
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
    };
    Ok((file.model, train))
}

fn apply(mut cfg: TrainConfig, o: &TrainOverrides) -> anyhow::Result<TrainConfig> {
    if let Some(v) = o.steps {
        cfg.steps = v;
    }
    if let Some(v) = o.batch_size {
        cfg.batch_size = v;
    }
    if let Some(v) = o.seq_len {
        cfg.seq_len = v;
    }
    if let Some(v) = o.lr {
        cfg.lr = v;
        cfg.min_lr = cfg.min_lr.min(v);
    }
    if let Some(v) = o.checkpoint_every {
        cfg.checkpoint_every = v;
    }
    if let Some(v) = o.grad_accum {
        cfg.grad_accum = v;
    }
    cfg.gradient_checkpointing |= o.gradient_checkpointing;
    if let Some(v) = &o.schedule {
        cfg.schedule = serde_json::from_value(serde_json::Value::String(v.clone()))
            .map_err(|_| anyhow::anyhow!("--schedule {v:?}: expected cosine, linear or wsd"))?;
    }
    if let Some(v) = &o.max_time {
        cfg.max_time_s = Some(parse_duration(v)?);
    }
    if let Some(v) = o.early_stop_patience {
        cfg.early_stop_patience = Some(v);
    }
    if let Some(v) = o.keep_checkpoints {
        cfg.keep_checkpoints = v;
    }
    if let Some(v) = &o.sampling {
        cfg.sampling = serde_json::from_value(serde_json::Value::String(v.clone()))
            .map_err(|_| anyhow::anyhow!("--sampling {v:?}: expected random or sequential"))?;
    }
    if let Some(v) = o.warmup_steps {
        cfg.warmup_steps = v;
    }
    if let Some(v) = o.eval_every {
        cfg.eval_every = v;
    }
    Ok(cfg)
}

/// The LoRA flags over the config's `[train.lora]` (or the defaults when only flags ask for LoRA).
fn apply_lora(mut cfg: TrainConfig, a: &crate::cli::LoraArgs) -> TrainConfig {
    let asked = a.lora
        || a.rslora
        || a.lora_r.is_some()
        || a.lora_alpha.is_some()
        || a.lora_dropout.is_some()
        || a.lora_targets.is_some()
        || a.base_quant.is_some();
    if let Some(q) = &a.base_quant {
        cfg.base_quant = strata_model::qweight::BaseQuant::parse(q).ok();
    }
    if !asked {
        return cfg;
    }
    let mut l = cfg.lora.take().unwrap_or_default();
    if let Some(r) = a.lora_r {
        l.r = r;
    }
    if let Some(v) = a.lora_alpha {
        l.lora_alpha = v;
    }
    if let Some(v) = a.lora_dropout {
        l.lora_dropout = v;
    }
    if let Some(t) = &a.lora_targets {
        l.target_modules = if t.trim() == "all-linear" {
            strata_model::lora::TARGETS
                .iter()
                .map(|s| (*s).to_string())
                .collect()
        } else {
            t.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        };
    }
    l.use_rslora |= a.rslora;
    cfg.lora = Some(l);
    cfg
}

pub fn run_train(store: &Store, a: &TrainArgs) -> anyhow::Result<ExitCode> {
    let (model, train) = load_file(a.config.as_deref(), Stage::Pretrain)?;
    let init = Init::Scratch {
        spec: model.unwrap_or_else(default_spec),
        tokenizer: a.tokenizer.clone(),
    };
    run_job(
        store,
        &a.name,
        &a.tokens,
        init,
        apply(train, &a.overrides)?,
        true,
    )?;
    Ok(ExitCode::SUCCESS)
}

pub fn run_finetune(store: &Store, a: &FinetuneArgs) -> anyhow::Result<ExitCode> {
    let (model, train) = load_file(a.config.as_deref(), Stage::Finetune)?;
    anyhow::ensure!(
        model.is_none(),
        "finetune takes its architecture from the parent model: remove [model] from the config"
    );
    let init = Init::From {
        parent: a.parent.clone(),
    };
    let mut cfg = apply_lora(apply(train, &a.overrides)?, &a.lora);
    if let Some(d) = &a.guard_dataset {
        let mut g = cfg
            .guard
            .take()
            .unwrap_or(strata_train::guard::GuardConfig {
                dataset: d.clone(),
                max_general_ppl_increase: 0.05,
                max_windows: 64,
            });
        g.dataset.clone_from(d);
        if let Some(m) = a.max_general_ppl_increase {
            g.max_general_ppl_increase = m;
        }
        cfg.guard = Some(g);
    }
    if let Some(images) = &a.images {
        let step = super::vlm::VisionStep {
            name: a.name.clone(),
            parent: a.parent.clone(),
            images: images.clone(),
            vision: a.vision.clone(),
            scratch_steps: a.vision_steps,
            stage: a.vision_stage.clone(),
            image_size: a.image_size,
            vision_layer: a.vision_layer,
            vision_features: a.vision_features.clone(),
            replay: a
                .tokens
                .iter()
                .map(|t| TokenMix::parse(t))
                .collect::<Result<_, _>>()?,
            replay_share: a.replay_share,
            reply_weight: a.reply_weight,
            progress: true,
        };
        return super::vlm::run_finetune(store, &step, cfg);
    }
    run_job(store, &a.name, &a.tokens, init, cfg, true)?;
    Ok(ExitCode::SUCCESS)
}

/// The process's stop flag, with its SIGINT/SIGTERM handlers installed on first use. While a training job
/// runs (flag cleared), the first signal sets the flag: the loop checkpoints after the current step and
/// stops. A second signal, or any once the job is over (flag set again), exits at once with status 130, as
/// the default action would.
fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    if let Some(f) = FLAG.get() {
        return Ok(Arc::clone(f));
    }
    let flag = Arc::new(AtomicBool::new(true));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let f = Arc::clone(&flag);
        // SAFETY: the action only swaps an atomic and calls `_exit`, both async-signal-safe.
        #[allow(unsafe_code)]
        unsafe {
            signal_hook::low_level::register(sig, move || {
                if f.swap(true, Ordering::SeqCst) {
                    signal_hook::low_level::exit(130);
                }
            })
        }
        .context("installing the SIGINT/SIGTERM handler")?;
    }
    Ok(Arc::clone(FLAG.get_or_init(|| flag)))
}

pub fn run_job(
    store: &Store,
    name: &str,
    tokens: &[String],
    init: Init,
    cfg: TrainConfig,
    progress: bool,
) -> anyhow::Result<()> {
    let tokens: Vec<TokenMix> = tokens
        .iter()
        .map(|t| TokenMix::parse(t))
        .collect::<Result<_, _>>()?;
    let stop = stop_flag()?;
    stop.store(false, Ordering::SeqCst);
    let kind = if matches!(init, Init::Scratch { .. }) {
        "train"
    } else {
        "finetune"
    };
    let (out, rank) = crate::dist::with_comm(|comm| {
        let job = TrainJob {
            name,
            tokens: &tokens,
            init,
            cfg,
            created_by: &format!("strata {kind}"),
            progress,
            stop: Some(Arc::clone(&stop)),
            comm,
        };
        let out = strata_train::train(store, &job).with_context(|| format!("{kind} {name:?}"));
        (out, comm.rank())
    });
    stop.store(true, Ordering::SeqCst);
    let out = out?;
    if rank > 0 {
        // rank 0 reports for the run
        return Ok(());
    }
    let c = &out.manifest.counts;
    let how = match (out.skipped, out.resumed_from) {
        (true, _) => "up to date".to_string(),
        (false, Some(s)) => format!("done (resumed from step {s})"),
        (false, None) if out.stopped.is_some() => {
            format!("done ({})", out.stopped.unwrap_or_default())
        }
        (false, None) => "done".to_string(),
    };
    #[allow(clippy::cast_precision_loss)]
    let peak_mib = strata_train::peak_rss_bytes() as f64 / 1_048_576.0;
    if let Some(g) = &out.guard {
        eprintln!(
            "guard      {name:<20} {:<10} ppl {} {:.2} → {:.2} ({:+.1}%, limit {:+.1}%)",
            if g.passed { "passed" } else { "FAILED" },
            g.dataset,
            g.parent_ppl,
            g.child_ppl,
            100.0 * g.increase,
            100.0 * g.max_increase
        );
    }
    eprintln!(
        "{kind:<10} {name:<20} {how:<10} parameters={} steps={} val_ppl={:.2} peak_rss={peak_mib:.0}MiB run={}",
        c.get("parameters").cloned().unwrap_or_default(),
        c.get("steps").cloned().unwrap_or_default(),
        c.get("val_ppl")
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(f64::NAN),
        out.run_dir.display()
    );
    // the verdict as published (also when the step was up to date and skipped)
    let g = &c.get("guard").cloned().unwrap_or_default();
    if g["passed"] == false {
        anyhow::bail!(
            "{kind} {name:?}: the forgetting guard failed: perplexity on {} rose {:.1}% (limit {:.1}%); \
             the step is published marked failed (more replay of the parent's data, a lower learning rate \
             or fewer steps usually help)",
            g["dataset"].as_str().unwrap_or_default(),
            100.0 * g["increase"].as_f64().unwrap_or(f64::NAN),
            100.0 * g["max_increase"].as_f64().unwrap_or(f64::NAN)
        );
    }
    Ok(())
}
