//! Training a LLaVA model (`strata_model::llava`) on images whose features the frozen tower computed once:
//! stage 1 (alignment) trains the projector alone on image–caption pairs, the decoder frozen; stage 2
//! (instructions) trains the projector and a LoRA adapter on the decoder. The loss is on the reply tokens
//! only (the rest of each example carries [`strata_tokenize::sft::NO_LOSS`]), summed over a batch and divided
//! by its counted targets, as the token trainer does.
//!
//! The order of examples is a function of the seed and the step alone (a shuffle per epoch), so a run resumed
//! from its checkpoint (`checkpoints/` in the run folder, the projector's and adapter's tensors with AdamW's
//! moments) continues exactly; metrics go to `metrics.jsonl` and the loss curve to `loss.png` as for every run.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use indicatif::ProgressBar;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use strata_model::llava::{self, LlavaConfig, Projector};
use strata_model::lora::LoraState;
use strata_model::{Llama, LoraWeights};

use crate::checkpoint;
use crate::metrics::{MetricsLog, StepMetrics};
use crate::{Context, Result, TrainConfig, TrainError};

/// One training example: the row of its image's features, and its ids (image tokens already expanded to the
/// image's feature rows; ids outside the reply flagged with `NO_LOSS`).
#[derive(Debug, Clone)]
pub struct VlmExample {
    pub image: usize,
    pub ids: Vec<u32>,
}

/// What to train.
pub struct VlmJob<'a> {
    pub name: &'a str,
    pub llava: &'a LlavaConfig,
    /// The decoder's weights (its own names), f32: constants of the run.
    pub decoder: &'a HashMap<String, Tensor>,
    /// The projector's starting tensors (fresh, or a stage-1 model's).
    pub projector: HashMap<String, Tensor>,
    /// Steps, batch size, learning rate and schedule, clipping, seed, evaluation and checkpoint intervals;
    /// `lora` set: stage 2 (projector + adapter), unset: stage 1 (projector alone).
    pub cfg: &'a TrainConfig,
    /// `[images, rows, vision hidden]`: the selected hidden state of the frozen tower, per image.
    pub features: &'a Tensor,
    pub train: &'a [VlmExample],
    pub val: &'a [VlmExample],
    /// Text replayed beside the images: each step also trains on this many windows of the mixture (the
    /// decoder keeps its general text while it learns to read images).
    pub replay: Option<(&'a crate::Mixture, usize)>,
    /// Pads the ids of a batch to one length (its targets are ignored).
    pub pad_id: u32,
    /// How far each reply of a batch weighs alike rather than each reply token (see [`reply_weights`]):
    /// 0 counts tokens (a one-word answer weighs 1/50 of a report of fifty tokens), 1 counts replies.
    pub reply_weight: f32,
    pub run_dir: &'a Path,
    pub progress: bool,
}

/// What a run produced.
pub struct VlmOutcome {
    /// The trained projector's tensors.
    pub projector: HashMap<String, Tensor>,
    /// The adapter's tensors (stage 2), keyed as `strata_model::lora::adapter_shapes` names them.
    pub adapter: HashMap<String, Tensor>,
    pub steps: usize,
    pub last_loss: f32,
    /// Mean loss per reply token on the validation examples at the end.
    pub val_loss: Option<f32>,
    pub resumed_from: Option<usize>,
}

struct Run {
    lm: Llama,
    /// Built on the variables' tensors, which share their storage: it sees every update (as the decoder
    /// sees its adapter's).
    projector: Projector,
    vars: HashMap<String, Var>,
    lora_state: Arc<LoraState>,
}

fn build(job: &VlmJob<'_>) -> Result<Run> {
    let device = Device::Cpu;
    let mut vars = HashMap::new();
    for (k, t) in &job.projector {
        vars.insert(k.clone(), Var::from_tensor(t).ctx(k)?);
    }
    let lora_state = Arc::new(LoraState::default());
    let text = &job.llava.text;
    let vb = VarBuilder::from_tensors(job.decoder.clone(), DType::F32, &device);
    let lm = match &job.cfg.lora {
        Some(lc) => {
            let fresh = strata_model::lora::init_adapter(
                &strata_model::lora::adapter_shapes(text, lc),
                job.cfg.seed,
                &device,
            )?;
            let mut tensors = HashMap::new();
            for (k, t) in fresh {
                let v = Var::from_tensor(&t).ctx(&k)?;
                tensors.insert(k.clone(), v.as_tensor().clone());
                vars.insert(k, v);
            }
            let lw = LoraWeights {
                config: lc,
                tensors: &tensors,
                state: Arc::clone(&lora_state),
                quantized: None,
            };
            Llama::load_with_lora(&vb, text, Some(&lw))?
        }
        None => Llama::load(&vb, text)?,
    };
    let projector = Projector::from_tensors(job.llava, &checkpoint::tensors_of(&vars))?;
    Ok(Run {
        lm,
        projector,
        vars,
        lora_state,
    })
}

/// Inputs (B, L), targets (B, L) (ignored outside replies and in padding) and the batch's image rows.
fn batch(job: &VlmJob<'_>, examples: &[&VlmExample]) -> Result<(Tensor, Tensor, Tensor)> {
    let len = examples.iter().map(|e| e.ids.len() - 1).max().unwrap_or(0);
    let mut x = Vec::with_capacity(examples.len() * len);
    let mut y = Vec::with_capacity(examples.len() * len);
    for e in examples {
        let n = e.ids.len() - 1;
        for i in 0..len {
            if i < n {
                x.push(strata_tokenize::split_flag(e.ids[i]).0);
                let (t, counts) = strata_tokenize::split_flag(e.ids[i + 1]);
                y.push(if counts {
                    t
                } else {
                    strata_model::fused::IGNORE
                });
            } else {
                x.push(job.pad_id);
                y.push(strata_model::fused::IGNORE);
            }
        }
    }
    let device = Device::Cpu;
    let b = examples.len();
    let rows: Vec<u32> = examples
        .iter()
        .map(|e| u32::try_from(e.image).unwrap_or(u32::MAX))
        .collect();
    let images = job
        .features
        .index_select(&Tensor::from_vec(rows, b, &device).ctx("rows")?, 0)
        .ctx("image features")?;
    Ok((
        Tensor::from_vec(x, (b, len), &device).ctx("inputs")?,
        Tensor::from_vec(y, (b, len), &device).ctx("targets")?,
        images,
    ))
}

/// Weights per target between counting tokens (`share` 0) and counting replies (`share` 1): each target of
/// a run of counted targets within a row of `row_len` (one reply: the turns between are not counted) weighs
/// `1 - share + share * mean / its length`, `mean` being the mean length of the runs, so the weights still
/// sum to the number of counted targets and the loss keeps its scale. Ignored targets weigh 0.
#[must_use]
pub fn reply_weights(y: &[u32], row_len: usize, share: f32) -> Vec<f32> {
    let mut runs = Vec::new();
    for (r, row) in y.chunks(row_len.max(1)).enumerate() {
        let mut start = None;
        for (i, &t) in row
            .iter()
            .chain(std::iter::once(&strata_model::fused::IGNORE))
            .enumerate()
        {
            match (t == strata_model::fused::IGNORE, start) {
                (false, None) => start = Some(i),
                (true, Some(a)) => {
                    runs.push((r * row_len + a, i - a));
                    start = None;
                }
                _ => {}
            }
        }
    }
    let mut w = vec![0f32; y.len()];
    if runs.is_empty() {
        return w;
    }
    #[allow(clippy::cast_precision_loss)]
    let mean = runs.iter().map(|r| r.1).sum::<usize>() as f64 / runs.len() as f64;
    for (a, n) in runs {
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
        let v = (1.0 - f64::from(share) + f64::from(share) * mean / n as f64) as f32;
        w[a..a + n].fill(v);
    }
    w
}

/// Summed loss (weighted per reply by `job.reply_weight`) and counted targets of one batch.
fn loss_sum(job: &VlmJob<'_>, run: &Run, examples: &[&VlmExample]) -> Result<(Tensor, usize)> {
    let (x, y, images) = batch(job, examples)?;
    let logits = llava::forward(
        &run.lm,
        &x,
        job.llava.image_token_id,
        &run.projector.forward(&images)?,
    )?;
    if job.reply_weight == 0.0 {
        return Ok(strata_model::next_token_loss_sum(&logits, &y)?);
    }
    let (b, t) = y.dims2().ctx("targets")?;
    let flat = y.reshape(b * t).ctx("targets")?;
    let (rows, count) = strata_model::fused::cross_entropy_rows(&logits, &flat)?;
    let w = reply_weights(&flat.to_vec1::<u32>().ctx("targets")?, t, job.reply_weight);
    let w = Tensor::from_vec(w, b * t, &Device::Cpu).ctx("reply weights")?;
    Ok((
        (rows * w).ctx("weighted loss")?.sum_all().ctx("loss sum")?,
        count,
    ))
}

/// The examples of step `step`: a shuffle of the training set per epoch, from the seed.
fn step_examples<'a>(job: &VlmJob<'a>, step: usize) -> Vec<&'a VlmExample> {
    let n = job.train.len();
    let b = job.cfg.batch_size;
    let mut perm_of = HashMap::new();
    (step * b..(step + 1) * b)
        .map(|g| {
            let epoch = g / n;
            let perm = perm_of.entry(epoch).or_insert_with(|| {
                let mut p: Vec<usize> = (0..n).collect();
                let mut rng = rand::rngs::StdRng::seed_from_u64(
                    job.cfg.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                );
                p.shuffle(&mut rng);
                p
            });
            &job.train[perm[g % n]]
        })
        .collect()
}

/// Mean loss per reply token over `examples`, in batches, without a graph.
fn evaluate(job: &VlmJob<'_>, run: &Run, examples: &[VlmExample]) -> Result<Option<f32>> {
    if examples.is_empty() {
        return Ok(None);
    }
    let (mut sum, mut count) = (0f64, 0usize);
    for chunk in examples.chunks(job.cfg.batch_size.max(1)) {
        let refs: Vec<&VlmExample> = chunk.iter().collect();
        let (s, c) = loss_sum(job, run, &refs)?;
        sum += f64::from(s.detach().to_scalar::<f32>().ctx("val loss")?);
        count += c;
    }
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
    Ok((count > 0).then(|| (sum / count as f64) as f32))
}

fn progress(job: &VlmJob<'_>, start: usize) -> ProgressBar {
    crate::trainer::steps_bar(job.name, job.cfg.steps, start, job.progress)
}

/// One optimizer step on `examples`: forward, backward, clipping, AdamW. The loss, the gradient norm and the
/// learning rate.
fn one_step(
    job: &VlmJob<'_>,
    run: &Run,
    opt: &mut crate::AdamW,
    step: usize,
    examples: &[&VlmExample],
) -> Result<(f32, f64, f64)> {
    let cfg = job.cfg;
    run.lora_state.set_training(
        true,
        cfg.seed ^ (step as u64).wrapping_mul(0x2545_F491_4F6C_DD1D),
    );
    let (mut sum, mut count) = loss_sum(job, run, examples)?;
    if let Some((mix, k)) = job.replay {
        let b = mix.batch(cfg.seed, (step * k) as u64, k, &Device::Cpu)?;
        let (s, c) = strata_model::next_token_loss_sum(&run.lm.forward(&b.x)?, &b.y)?;
        sum = (sum + s).ctx("replay loss")?;
        count += c;
    }
    if count == 0 {
        return Err(TrainError::Data(format!(
            "step {step}: no reply token in the batch to train on"
        )));
    }
    #[allow(clippy::cast_precision_loss)]
    let loss = (sum / count as f64).ctx("loss")?;
    let grads = opt.grads_of(&loss.backward().ctx("backward")?);
    run.lora_state.set_training(false, 0);
    let value = loss.to_scalar::<f32>().ctx("loss")?;
    let (norm, lr) = opt.clipped_step(&grads, step, value, cfg)?;
    Ok((value, norm, lr))
}

/// Trains the projector (and, with `cfg.lora`, an adapter on the decoder); resumes from the run folder's last
/// checkpoint when there is one.
///
/// # Errors
/// No training examples, an example without a reply token or whose image tokens do not match its image's
/// features, a diverging loss, a checkpoint that does not fit, an I/O failure.
pub fn train_vlm(job: &VlmJob<'_>) -> Result<VlmOutcome> {
    if job.train.is_empty() {
        return Err(TrainError::Data("no training examples".into()));
    }
    let cfg = job.cfg;
    let run = build(job)?;
    let mut opt = crate::AdamW::new(&run.vars, cfg.beta1, cfg.beta2, cfg.weight_decay)?;
    let ckpt_dir = job.run_dir.join("checkpoints");
    std::fs::create_dir_all(&ckpt_dir).map_err(crate::io_err(&ckpt_dir))?;
    let resumed_from = checkpoint::restore(&run.vars, &mut opt, &ckpt_dir)?;
    let start = resumed_from.unwrap_or(0);
    let metrics_path = job.run_dir.join("metrics.jsonl");
    let mut log = MetricsLog::open(&metrics_path, start)?;
    let bar = progress(job, start);
    let mut last_loss = f32::NAN;
    let mut tokens_seen = 0usize;
    for step in start..cfg.steps {
        let t0 = std::time::Instant::now();
        let examples = step_examples(job, step);
        let (loss, norm, lr) = one_step(job, &run, &mut opt, step, &examples)?;
        last_loss = loss;
        tokens_seen += examples.iter().map(|e| e.ids.len() - 1).sum::<usize>()
            + job.replay.map_or(0, |(_, k)| k * cfg.seq_len);
        let done = step + 1;
        let val_loss = if done.is_multiple_of(cfg.eval_every.max(1)) || done == cfg.steps {
            evaluate(job, &run, job.val)?
        } else {
            None
        };
        #[allow(clippy::cast_precision_loss)]
        let tps = examples.iter().map(|e| e.ids.len()).sum::<usize>() as f64
            / t0.elapsed().as_secs_f64().max(1e-9);
        log.append(&StepMetrics {
            step: done,
            loss: last_loss,
            lr,
            grad_norm: norm,
            tokens_per_s: tps,
            val_loss,
            val_losses: std::collections::BTreeMap::new(),
            tokens_seen,
            mixture: std::collections::BTreeMap::new(),
            peak_rss_mib: crate::peak_rss_bytes() as f64 / f64::from(1u32 << 20),
            ranks: None,
            comm_s: None,
        })?;
        checkpoint::save_vars_every(&ckpt_dir, &run.vars, &opt, done, cfg)?;
        bar.set_position(done as u64);
        bar.set_message(format!("loss {last_loss:.4}"));
    }
    bar.finish_and_clear();
    crate::plot_loss(&metrics_path, &job.run_dir.join("loss.png"))?;
    let val_loss = evaluate(job, &run, job.val)?;
    let all = checkpoint::tensors_of(&run.vars);
    let (projector, adapter) = all
        .into_iter()
        .partition(|(k, _)| k.starts_with(llava::PROJECTOR));
    Ok(VlmOutcome {
        projector,
        adapter,
        steps: cfg.steps,
        last_loss,
        val_loss,
        resumed_from,
    })
}

/// Clears the run's checkpoints once its model is published.
pub fn clear_checkpoints(run_dir: &Path) {
    checkpoint::clear(&run_dir.join("checkpoints"));
}

#[cfg(test)]
mod tests {
    use super::reply_weights;
    use strata_model::fused::IGNORE;

    #[test]
    fn each_reply_weighs_alike_and_the_weights_sum_to_the_targets() {
        // two rows of 5: replies of 2 and 1 tokens in the first (the last ends the row), one of 1 token
        // starting the second (a run does not cross rows): mean length 4/3
        let y = [IGNORE, 5, 6, IGNORE, 7, 8, IGNORE, IGNORE, IGNORE, IGNORE];
        let w = reply_weights(&y, 5, 1.0);
        let (half, whole) = (2.0 / 3.0, 4.0 / 3.0);
        let want = [0.0, half, half, 0.0, whole, whole, 0.0, 0.0, 0.0, 0.0];
        for (i, (a, b)) in w.iter().zip(want).enumerate() {
            assert!((a - b).abs() < 1e-6, "target {i}: {a} against {b}");
        }
        assert!((w.iter().sum::<f32>() - 4.0).abs() < 1e-5);
        // each reply's total weight is the same
        assert!((w[1] + w[2] - w[4]).abs() < 1e-6);
        assert!(reply_weights(&[IGNORE; 4], 2, 1.0)
            .iter()
            .all(|&v| v == 0.0));
        // half way: the mean of the two weightings; nothing of it: every token 1
        let mid = reply_weights(&y, 5, 0.5);
        for (i, (m, r)) in mid.iter().zip(&w).enumerate() {
            let want = if y[i] == IGNORE { 0.0 } else { (1.0 + r) / 2.0 };
            assert!((m - want).abs() < 1e-6, "target {i}: {m} against {want}");
        }
        let tokens = reply_weights(&y, 5, 0.0);
        assert_eq!(tokens, [0., 1., 1., 0., 1., 1., 0., 0., 0., 0.]);
    }
}
