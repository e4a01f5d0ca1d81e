//! The training config (nanoGPT's knobs) and the learning-rate schedule.

use serde::{Deserialize, Serialize};

use crate::{Result, TrainError};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub steps: usize,
    pub batch_size: usize,
    /// Tokens per training window (≤ the model's context).
    pub seq_len: usize,
    #[serde(default = "d_lr")]
    pub lr: f64,
    #[serde(default = "d_min_lr")]
    pub min_lr: f64,
    #[serde(default = "d_warmup")]
    pub warmup_steps: usize,
    #[serde(default = "d_wd")]
    pub weight_decay: f64,
    #[serde(default = "d_beta1")]
    pub beta1: f64,
    #[serde(default = "d_beta2")]
    pub beta2: f64,
    #[serde(default = "d_clip")]
    pub grad_clip: f64,
    #[serde(default = "d_eval_every")]
    pub eval_every: usize,
    #[serde(default = "d_eval_windows")]
    pub eval_windows: usize,
    #[serde(default = "d_ckpt")]
    pub checkpoint_every: usize,
    #[serde(default)]
    pub seed: u64,
    /// Micro-batches per optimizer step: the step sees `batch_size × grad_accum` windows.
    #[serde(default = "d_one")]
    pub grad_accum: usize,
    /// Each decoder block keeps only its input for backward and runs again there (Hugging Face's
    /// `gradient_checkpointing`): activations of one block instead of all, for a second forward.
    #[serde(default)]
    pub gradient_checkpointing: bool,
    #[serde(default)]
    pub schedule: Schedule,
    /// Warmup-stable-decay: the share of the steps spent decaying (linearly to `min_lr`) at the end.
    #[serde(default = "d_decay_fraction")]
    pub decay_fraction: f64,
    /// Stop when the validation loss has not improved by `early_stop_min_delta` for this many evaluations.
    #[serde(default)]
    pub early_stop_patience: Option<usize>,
    #[serde(default)]
    pub early_stop_min_delta: f64,
    /// Stop (checkpoint and publish what was trained) after this many seconds.
    #[serde(default)]
    pub max_time_s: Option<f64>,
    /// Checkpoints kept in the run folder (the newest ones).
    #[serde(default = "d_one")]
    pub keep_checkpoints: usize,
    /// Windows at random offsets (default) or in order.
    #[serde(default)]
    pub sampling: crate::data::Sampling,
    /// Train a LoRA adapter on the frozen parent instead of all its weights (`[train.lora]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<strata_model::lora::LoraConfig>,
    /// QLoRA: hold the frozen base in quantised blocks (`q8_0` or `q4_k`) while the adapter trains; needs
    /// `[train.lora]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_quant: Option<strata_model::qweight::BaseQuant>,
    /// The forgetting guard of a domain step (`[train.guard]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<crate::guard::GuardConfig>,
}

/// The learning-rate schedule after linear warmup.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Cosine from `lr` to `min_lr` at the last step (nanoGPT).
    #[default]
    Cosine,
    /// Straight line from `lr` to `min_lr`.
    Linear,
    /// Warmup-stable-decay: `lr` until the last `decay_fraction` of the steps, then linear to `min_lr`.
    Wsd,
}

fn d_one() -> usize {
    1
}
fn d_decay_fraction() -> f64 {
    0.2
}

// Every training default lives in this file: the per-field defaults below (those of pretraining) and
// [`TrainConfig::defaults`] for what fine-tuning changes. `strata train`, `strata finetune`, their `--config`
// files and the pipeline's steps all start from them.
fn d_lr() -> f64 {
    2e-3
}
fn d_min_lr() -> f64 {
    2e-4
}
fn d_warmup() -> usize {
    30
}
fn d_wd() -> f64 {
    0.1
}
fn d_beta1() -> f64 {
    0.9
}
fn d_beta2() -> f64 {
    0.95
}
fn d_clip() -> f64 {
    1.0
}
fn d_eval_every() -> usize {
    100
}
fn d_eval_windows() -> usize {
    16
}
fn d_ckpt() -> usize {
    25
}

/// What a run's defaults are for: training from scratch, or continuing from a parent's weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Pretrain,
    Finetune,
}

impl TrainConfig {
    /// A config with every optional field at its default.
    #[must_use]
    pub fn new(steps: usize, batch_size: usize, seq_len: usize) -> Self {
        let v = serde_json::json!({"steps": steps, "batch_size": batch_size, "seq_len": seq_len});
        serde_json::from_value(v)
            .unwrap_or_else(|_| unreachable!("every other field has a default"))
    }

    /// The defaults of a stage: 500 steps of 16 × 128 tokens at lr 2e-3 → 2e-4 from scratch; a fine-tuning
    /// run starts from trained weights, so it takes 200 steps at a quarter of that (5e-4 → 5e-5) with a
    /// shorter warm-up.
    #[must_use]
    pub fn defaults(stage: Stage) -> Self {
        let mut c = Self::new(500, 16, 128);
        if stage == Stage::Finetune {
            c.steps = 200;
            c.lr = 5e-4;
            c.min_lr = 5e-5;
            c.warmup_steps = 10;
        }
        c
    }

    /// A `[train]` table over the stage's defaults: the fields it names replace them.
    ///
    /// # Errors
    /// [`TrainError::Config`] for an unknown field or a value of the wrong type, named.
    pub fn from_table(stage: Stage, table: &toml::Table) -> Result<Self> {
        let mut merged = toml::Table::try_from(Self::defaults(stage))
            .map_err(|e| TrainError::Config(format!("defaults: {e}")))?;
        for (k, v) in table {
            merged.insert(k.clone(), v.clone());
        }
        merged
            .try_into()
            .map_err(|e: toml::de::Error| TrainError::Config(format!("[train]: {}", e.message())))
    }

    /// # Errors
    /// [`TrainError::Config`] naming the field.
    pub fn validate(&self, context: usize) -> Result<()> {
        let bad = |s: String| Err(TrainError::Config(s));
        if self.steps == 0 || self.batch_size == 0 || self.seq_len == 0 {
            return bad("steps, batch_size and seq_len must be > 0".into());
        }
        if self.seq_len > context {
            return bad(format!(
                "seq_len ({}) exceeds the model's context ({context})",
                self.seq_len
            ));
        }
        if !(self.lr > 0.0 && self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return bad(format!(
                "need 0 <= min_lr ({}) <= lr ({}) and lr > 0",
                self.min_lr, self.lr
            ));
        }
        if self.checkpoint_every == 0 || self.eval_every == 0 {
            return bad("checkpoint_every and eval_every must be > 0".into());
        }
        if self.grad_accum == 0 || self.keep_checkpoints == 0 {
            return bad("grad_accum and keep_checkpoints must be > 0".into());
        }
        if !(0.0..=1.0).contains(&self.decay_fraction) {
            return bad(format!(
                "decay_fraction ({}) must be within 0..=1",
                self.decay_fraction
            ));
        }
        if self.max_time_s.is_some_and(|t| t.is_nan() || t <= 0.0) {
            return bad("max_time must be > 0".into());
        }
        if let Some(g) = &self.guard {
            if !(g.max_general_ppl_increase.is_finite() && g.max_general_ppl_increase >= 0.0) {
                return bad(format!(
                    "max_general_ppl_increase ({}) must be >= 0",
                    g.max_general_ppl_increase
                ));
            }
        }
        if let Some(l) = &self.lora {
            l.validate()
                .map_err(|e| TrainError::Config(e.to_string()))?;
        }
        if let (Some(q), None) = (self.base_quant, &self.lora) {
            return bad(format!(
                "base_quant = \"{}\" needs [train.lora]: QLoRA trains an adapter over a frozen quantised base",
                q.name()
            ));
        }
        Ok(())
    }
}

/// Linear warmup to `lr`, then the schedule's decay to `min_lr` at the last step.
#[must_use]
pub fn get_lr(step: usize, cfg: &TrainConfig) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let (s, w, n) = (step as f64, cfg.warmup_steps as f64, cfg.steps as f64);
    if step < cfg.warmup_steps {
        return cfg.lr * (s + 1.0) / w;
    }
    if n <= w {
        return cfg.lr;
    }
    let progress = ((s - w) / (n - w)).clamp(0.0, 1.0);
    let coeff = match cfg.schedule {
        Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        Schedule::Linear => 1.0 - progress,
        Schedule::Wsd => {
            let decay_start = n - cfg.decay_fraction * n;
            if s < decay_start || decay_start >= n {
                1.0
            } else {
                1.0 - (s - decay_start) / (n - decay_start)
            }
        }
    };
    cfg.min_lr + coeff * (cfg.lr - cfg.min_lr)
}

/// `#[serde(deserialize_with)]` of a pretraining step's `train` table: over [`Stage::Pretrain`]'s defaults.
///
/// # Errors
/// As [`TrainConfig::from_table`].
pub fn pretrain_table<'de, D: serde::Deserializer<'de>>(d: D) -> Result<TrainConfig, D::Error> {
    let t = toml::Table::deserialize(d)?;
    TrainConfig::from_table(Stage::Pretrain, &t).map_err(serde::de::Error::custom)
}

/// `#[serde(deserialize_with)]` of a fine-tuning step's `train` table: over [`Stage::Finetune`]'s defaults.
///
/// # Errors
/// As [`TrainConfig::from_table`].
pub fn finetune_table<'de, D: serde::Deserializer<'de>>(d: D) -> Result<TrainConfig, D::Error> {
    let t = toml::Table::deserialize(d)?;
    TrainConfig::from_table(Stage::Finetune, &t).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> TrainConfig {
        toml::from_str(
            "steps = 110\nbatch_size = 1\nseq_len = 8\nlr = 1.0\nmin_lr = 0.1\nwarmup_steps = 10",
        )
        .unwrap()
    }

    #[test]
    fn schedule_by_hand() {
        let c = cfg();
        assert!((get_lr(0, &c) - 0.1).abs() < 1e-12); // (0+1)/10
        assert!((get_lr(9, &c) - 1.0).abs() < 1e-12);
        assert!((get_lr(10, &c) - 1.0).abs() < 1e-12); // cosine starts at the top
        assert!((get_lr(60, &c) - 0.55).abs() < 1e-12); // halfway: 0.1 + 0.5 * 0.9
        assert!((get_lr(110, &c) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn linear_and_warmup_stable_decay_by_hand() {
        let mut c = cfg();
        c.schedule = Schedule::Linear;
        assert!((get_lr(9, &c) - 1.0).abs() < 1e-12);
        assert!((get_lr(60, &c) - 0.55).abs() < 1e-12); // halfway down the line
        assert!((get_lr(85, &c) - 0.325).abs() < 1e-12); // 0.1 + 0.25 * 0.9
        c.schedule = Schedule::Wsd;
        c.decay_fraction = 0.2; // decay over the last 22 of 110 steps, from step 88
        assert!((get_lr(60, &c) - 1.0).abs() < 1e-12);
        assert!((get_lr(88, &c) - 1.0).abs() < 1e-12);
        assert!((get_lr(99, &c) - 0.55).abs() < 1e-12); // 11 of 22 down
        assert!((get_lr(110, &c) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn unknown_key_and_bad_values_are_refused() {
        assert!(toml::from_str::<TrainConfig>(
            "steps = 1\nbatch_size = 1\nseq_len = 8\nlearning_rate = 1"
        )
        .is_err());
        assert!(cfg()
            .validate(4)
            .unwrap_err()
            .to_string()
            .contains("seq_len (8) exceeds"));
    }

    /// One set of defaults: a table fills the fields it leaves out from its stage's defaults, whoever reads
    /// it (a `--config` file, a pipeline step); unknown fields are named.
    #[test]
    #[allow(clippy::float_cmp)] // values copied, not computed
    fn tables_fill_in_from_their_stage_defaults() {
        let t: toml::Table = toml::from_str("steps = 7\nlora = { r = 4 }").unwrap();
        let ft = TrainConfig::from_table(Stage::Finetune, &t).unwrap();
        assert_eq!(
            (ft.steps, ft.lr, ft.min_lr, ft.warmup_steps),
            (7, 5e-4, 5e-5, 10)
        );
        assert_eq!(ft.lora.as_ref().map(|l| l.r), Some(4));
        let pt = TrainConfig::from_table(Stage::Pretrain, &t).unwrap();
        assert_eq!(
            (pt.steps, pt.lr, pt.batch_size, pt.seq_len),
            (7, 2e-3, 16, 128)
        );
        assert_eq!(
            TrainConfig::from_table(Stage::Pretrain, &toml::Table::new()).unwrap(),
            TrainConfig::defaults(Stage::Pretrain)
        );
        // QLoRA: the base's blocks by name, and only with an adapter to train
        let q: toml::Table = toml::from_str("base_quant = \"q4_k\"\nlora = { r = 4 }").unwrap();
        let q = TrainConfig::from_table(Stage::Finetune, &q).unwrap();
        assert_eq!(q.base_quant, Some(strata_model::qweight::BaseQuant::Q4K));
        q.validate(1024).unwrap();
        let no_lora: toml::Table = toml::from_str("base_quant = \"q8_0\"").unwrap();
        let e = TrainConfig::from_table(Stage::Finetune, &no_lora)
            .unwrap()
            .validate(1024)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("base_quant") && e.contains("[train.lora]"),
            "{e}"
        );
        let nf4: toml::Table = toml::from_str("base_quant = \"nf4\"").unwrap();
        let e = TrainConfig::from_table(Stage::Finetune, &nf4)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nf4"), "{e}");
        let bad: toml::Table = toml::from_str("stpes = 7").unwrap();
        let e = TrainConfig::from_table(Stage::Finetune, &bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("stpes"), "{e}");
    }
}
