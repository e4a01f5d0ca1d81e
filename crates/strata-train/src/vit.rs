//! A small vision tower trained from scratch: a DINOv2-layout ViT (transformers' `Dinov2Model` names, so the
//! folder it is written to loads wherever a downloaded tower does) learning an image dataset's labels, a
//! linear head on its pooled output (the final norm of the class token) with one sigmoid per label (an image
//! may carry several: an organ and a finding). The head is dropped when the tower is published: what is kept
//! is an encoder whose features separate what the labels name, for a vision-language model to read.
//!
//! The order of images is a function of the seed and the step alone, so a run resumed from its checkpoint
//! (`checkpoints/` in the run folder) continues exactly; metrics go to `metrics.jsonl` and the loss curve to
//! `loss.png` as for every run.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use strata_model::{VisionConfig, VisionEncoder};

use crate::checkpoint;
use crate::metrics::{MetricsLog, StepMetrics};
use crate::{Context, Result, TrainConfig, TrainError};

/// The head's tensors (trained, never published).
const HEAD: &str = "label_head.";

/// What to train.
pub struct VitJob<'a> {
    pub name: &'a str,
    /// A `dinov2` configuration (the tower to build).
    pub vision: &'a VisionConfig,
    /// Steps, batch size, learning rate and schedule, weight decay, clipping, seed, checkpoint interval.
    pub cfg: &'a TrainConfig,
    /// `[images, channels, size, size]`, normalised as the tower's image processor does.
    pub pixels: &'a Tensor,
    /// `[images, labels]`: 1 where the image carries the label, else 0.
    pub targets: &'a Tensor,
    /// The rows of `pixels` to train on.
    pub train: &'a [usize],
    pub run_dir: &'a Path,
    pub progress: bool,
}

/// The named tensors of a fresh DINOv2 tower of `cfg`, initialised as transformers' `Dinov2Model` does:
/// linear and patch weights, the class token and the position embeddings normal(0, 0.02), biases 0, norms 1
/// and 0, the layer scales 1, the mask token 0.
///
/// # Errors
/// A configuration of another family.
pub fn dinov2_init(cfg: &VisionConfig, seed: u64) -> Result<HashMap<String, Tensor>> {
    if cfg.model_type != "dinov2" {
        return Err(TrainError::Data(format!(
            "a tower from scratch is a dinov2 model, not {:?}",
            cfg.model_type
        )));
    }
    let (d, c, p, m) = (
        cfg.hidden_size,
        cfg.channels,
        cfg.patch_size,
        cfg.intermediate_size,
    );
    let dev = Device::Cpu;
    let mut out = HashMap::new();
    let mut put = |name: String, shape: Vec<usize>, fill: Option<f32>| -> Result<()> {
        let n: usize = shape.iter().product();
        let data = match fill {
            Some(v) => vec![v; n],
            None => strata_model::seeded_normal(&name, seed, n, 0.02),
        };
        let t = Tensor::from_vec(data, shape, &dev).ctx(&name)?;
        out.insert(name, t);
        Ok(())
    };
    put("embeddings.cls_token".into(), vec![1, 1, d], None)?;
    put("embeddings.mask_token".into(), vec![1, d], Some(0.0))?;
    put(
        "embeddings.position_embeddings".into(),
        vec![1, cfg.patches() + 1, d],
        None,
    )?;
    let patch = "embeddings.patch_embeddings.projection";
    put(format!("{patch}.weight"), vec![d, c, p, p], None)?;
    put(format!("{patch}.bias"), vec![d], Some(0.0))?;
    for i in 0..cfg.layers {
        let l = format!("encoder.layer.{i}");
        for norm in ["norm1", "norm2"] {
            put(format!("{l}.{norm}.weight"), vec![d], Some(1.0))?;
            put(format!("{l}.{norm}.bias"), vec![d], Some(0.0))?;
        }
        for (lin, o, inp) in [
            ("attention.attention.query", d, d),
            ("attention.attention.key", d, d),
            ("attention.attention.value", d, d),
            ("attention.output.dense", d, d),
            ("mlp.fc1", m, d),
            ("mlp.fc2", d, m),
        ] {
            put(format!("{l}.{lin}.weight"), vec![o, inp], None)?;
            put(format!("{l}.{lin}.bias"), vec![o], Some(0.0))?;
        }
        for s in ["layer_scale1", "layer_scale2"] {
            put(format!("{l}.{s}.lambda1"), vec![d], Some(1.0))?;
        }
    }
    put("layernorm.weight".into(), vec![d], Some(1.0))?;
    put("layernorm.bias".into(), vec![d], Some(0.0))?;
    Ok(out)
}

/// Mean binary cross-entropy of `logits` against `targets` (both `[batch, labels]`), from the logits:
/// `max(z, 0) − z·y + ln(1 + e^−|z|)`.
fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    let softplus = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    (logits.relu()? - (logits * targets)?)?
        .add(&softplus)?
        .mean_all()
}

/// The rows of step `step`: a shuffle of the training rows per epoch, from the seed.
fn step_rows(job: &VitJob<'_>, step: usize) -> Vec<u32> {
    let n = job.train.len();
    let b = job.cfg.batch_size;
    let mut perms: HashMap<usize, Vec<usize>> = HashMap::new();
    (step * b..(step + 1) * b)
        .map(|g| {
            let epoch = g / n;
            let perm = perms.entry(epoch).or_insert_with(|| {
                let mut p = job.train.to_vec();
                let mut rng = rand::rngs::StdRng::seed_from_u64(
                    job.cfg.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                );
                p.shuffle(&mut rng);
                p
            });
            u32::try_from(perm[g % n]).unwrap_or(u32::MAX)
        })
        .collect()
}

/// The run's variables: a fresh tower and a label head of `labels` rows.
fn variables(vision: &VisionConfig, labels: usize, seed: u64) -> Result<HashMap<String, Var>> {
    let dev = Device::Cpu;
    let d = vision.hidden_size;
    let mut tensors = dinov2_init(vision, seed)?;
    let head_w = strata_model::seeded_normal("label_head.weight", seed, labels * d, 0.02);
    tensors.insert(
        format!("{HEAD}weight"),
        Tensor::from_vec(head_w, (labels, d), &dev).ctx("head")?,
    );
    tensors.insert(
        format!("{HEAD}bias"),
        Tensor::zeros(labels, DType::F32, &dev).ctx("head")?,
    );
    let mut vars = HashMap::new();
    for (k, t) in &tensors {
        vars.insert(k.clone(), Var::from_tensor(t).ctx(k)?);
    }
    Ok(vars)
}

/// Trains the tower and its label head; resumes from the run folder's last checkpoint when there is one.
/// The tower's tensors (the head dropped) and the last loss.
///
/// # Errors
/// No training images, targets that do not match the pixels, a diverging loss, a checkpoint that does not
/// fit, an I/O failure.
pub fn train_vit(job: &VitJob<'_>) -> Result<(HashMap<String, Tensor>, f32)> {
    let cfg = job.cfg;
    if job.train.is_empty() {
        return Err(TrainError::Data("no training images".into()));
    }
    let (n, labels) = job.targets.dims2().ctx("targets")?;
    if n != job.pixels.dim(0).ctx("pixels")? || labels == 0 {
        return Err(TrainError::Data(format!(
            "{n} label rows of {labels} labels for {} images",
            job.pixels.dim(0).ctx("pixels")?
        )));
    }
    let dev = Device::Cpu;
    let vars = variables(job.vision, labels, cfg.seed)?;
    let live = checkpoint::tensors_of(&vars);
    let tower = VisionEncoder::from_weights(job.vision.clone(), &live, job.run_dir)?;
    let (hw, hb) = (
        &live[&format!("{HEAD}weight")],
        &live[&format!("{HEAD}bias")],
    );
    let mut opt = crate::AdamW::new(&vars, cfg.beta1, cfg.beta2, cfg.weight_decay)?;
    let ckpt_dir = job.run_dir.join("checkpoints");
    std::fs::create_dir_all(&ckpt_dir).map_err(crate::io_err(&ckpt_dir))?;
    let start = checkpoint::restore(&vars, &mut opt, &ckpt_dir)?.unwrap_or(0);
    let metrics_path = job.run_dir.join("metrics.jsonl");
    let mut log = MetricsLog::open(&metrics_path, start)?;
    let bar = crate::trainer::steps_bar(job.name, cfg.steps, start, job.progress);
    let mut last = f32::NAN;
    for step in start..cfg.steps {
        let t0 = std::time::Instant::now();
        let rows = step_rows(job, step);
        let b = rows.len();
        let idx = Tensor::from_vec(rows, b, &dev).ctx("rows")?;
        let pooled = tower
            .forward(&job.pixels.index_select(&idx, 0).ctx("pixels")?)?
            .pooled
            .ok_or_else(|| TrainError::Data("the tower has no pooled output".into()))?;
        let logits = pooled
            .broadcast_matmul(&hw.t().ctx("head")?)
            .and_then(|z| z.broadcast_add(hb))
            .ctx("label head")?;
        let y = job.targets.index_select(&idx, 0).ctx("targets")?;
        let loss = bce_with_logits(&logits, &y).ctx("loss")?;
        let grads = opt.grads_of(&loss.backward().ctx("backward")?);
        let value = loss.to_scalar::<f32>().ctx("loss")?;
        let (norm, lr) = opt.clipped_step(&grads, step, value, cfg)?;
        last = value;
        let done = step + 1;
        #[allow(clippy::cast_precision_loss)]
        log.append(&StepMetrics {
            step: done,
            loss: value,
            lr,
            grad_norm: norm,
            // images per second
            tokens_per_s: b as f64 / t0.elapsed().as_secs_f64().max(1e-9),
            val_loss: None,
            val_losses: std::collections::BTreeMap::new(),
            tokens_seen: done * b,
            mixture: std::collections::BTreeMap::new(),
            peak_rss_mib: crate::peak_rss_bytes() as f64 / f64::from(1u32 << 20),
            ranks: None,
            comm_s: None,
        })?;
        checkpoint::save_vars_every(&ckpt_dir, &vars, &opt, done, cfg)?;
        bar.set_position(done as u64);
        bar.set_message(format!("loss {value:.4}"));
    }
    bar.finish_and_clear();
    crate::plot_loss(&metrics_path, &job.run_dir.join("loss.png"))?;
    let tower = checkpoint::tensors_of(&vars)
        .into_iter()
        .filter(|(k, _)| !k.starts_with(HEAD))
        .collect();
    Ok((tower, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> VisionConfig {
        let v = serde_json::json!({"model_type": "dinov2", "hidden_size": 16, "num_hidden_layers": 2,
            "num_attention_heads": 2, "mlp_ratio": 2, "image_size": 16, "patch_size": 8});
        VisionConfig::from_json_value(&v).unwrap()
    }

    #[test]
    fn bce_matches_hand_worked_values() {
        let z = Tensor::new(&[[0f32, 2.0], [-3.0, 1.0]], &Device::Cpu).unwrap();
        let y = Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &Device::Cpu).unwrap();
        let got = bce_with_logits(&z, &y).unwrap().to_scalar::<f32>().unwrap();
        // −ln σ(0), −ln(1−σ(2)), −ln(1−σ(−3)), −ln σ(1)
        let want = (std::f64::consts::LN_2
            + (1.0 + 2f64.exp()).ln()
            + (1.0 + (-3f64).exp()).ln()
            + (1.0 + (-1f64).exp()).ln())
            / 4.0;
        assert!((f64::from(got) - want).abs() < 1e-6, "{got} vs {want}");
    }

    #[test]
    fn a_fresh_tower_loads_and_learns_two_labels_from_stripes() {
        let cfg = tiny();
        let w = dinov2_init(&cfg, 1).unwrap();
        assert_eq!(w["embeddings.position_embeddings"].dims(), &[1, 5, 16]);
        assert_eq!(w["encoder.layer.1.mlp.fc1.weight"].dims(), &[32, 16]);
        VisionEncoder::from_weights(cfg.clone(), &w, Path::new("fresh")).unwrap();
        // 16 images: label 0 when they have horizontal stripes, label 1 when they have vertical ones (both:
        // a checkerboard), over a little noise
        let mut px = Vec::new();
        let mut ys = Vec::new();
        for i in 0..16usize {
            let (h, v) = (i % 2 == 1, (i / 2) % 2 == 1);
            for _c in 0..3 {
                for r in 0..16 {
                    for col in 0..16 {
                        let stripe = |on: bool, k: usize| {
                            if !on {
                                0.0
                            } else if k.is_multiple_of(2) {
                                1.0
                            } else {
                                -1.0
                            }
                        };
                        let noise = 0.1 * ((i * 7 + r * 3 + col) % 5) as f32 - 0.2;
                        px.push(stripe(h, r) + stripe(v, col) + noise);
                    }
                }
            }
            ys.extend([f32::from(u8::from(h)), f32::from(u8::from(v))]);
        }
        let pixels = Tensor::from_vec(px, (16, 3, 16, 16), &Device::Cpu).unwrap();
        let targets = Tensor::from_vec(ys, (16, 2), &Device::Cpu).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut tc = TrainConfig::new(100, 8, 1);
        tc.lr = 3e-3;
        tc.min_lr = 3e-4;
        tc.warmup_steps = 5;
        tc.checkpoint_every = 1000;
        let train: Vec<usize> = (0..16).collect();
        let job = VitJob {
            name: "vit",
            vision: &cfg,
            cfg: &tc,
            pixels: &pixels,
            targets: &targets,
            train: &train,
            run_dir: dir.path(),
            progress: false,
        };
        let (tower, last) = train_vit(&job).unwrap();
        assert!(tower.keys().all(|k| !k.starts_with(HEAD)));
        assert_eq!(tower.len(), w.len());
        // chance is ln 2 = 0.69 per label
        let log = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
        let norms: Vec<String> = log
            .lines()
            .step_by(20)
            .map(|l| l.split(',').take(4).collect::<Vec<_>>().join(","))
            .collect();
        assert!(last < 0.2, "final loss {last}: {norms:#?}");
        assert!(dir.path().join("loss.png").is_file());
        // every tensor trained, the queries too (through the attention's softmax), bar the unused mask token
        let fresh = dinov2_init(&cfg, tc.seed).unwrap();
        for (k, t) in &tower {
            let d = (t - &fresh[k]).unwrap().abs().unwrap().max_all().unwrap();
            let moved = d.to_scalar::<f32>().unwrap() > 1e-6;
            assert_eq!(moved, k != "embeddings.mask_token", "{k}");
        }
    }
}
