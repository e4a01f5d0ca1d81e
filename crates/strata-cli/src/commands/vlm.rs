//! `strata finetune --images DATASET`: a vision-language (LLaVA) model from a text model and a vision tower.
//!
//! The frozen tower runs once per image (at `--image-size`, its position embeddings resampled) and the chosen
//! hidden state of every image is kept in the store's feature cache (`cache/features/<key>.safetensors`, the
//! key a hash of the tower's weights, the dataset's manifest and the settings): every epoch, every later stage
//! and every rerun reads it instead of running the tower again. Examples are chat turns rendered with the
//! parent's chat template, the `<image>` placeholder expanded to one image token per feature row:
//!
//! - stage 1 (`align`): "Write the report for this ultrasound image." → the record's text (its report);
//! - stage 2 (`instruct`): that, plus "Which organ …?" → the organ, and "What is the finding …? Answer with one
//!   of: …" → the finding (among the organ's, for simulated images; among the dataset's labels otherwise).
//!
//! The model is published as transformers' `LlavaForConditionalGeneration` folder
//! (`strata_model::llava`), with the tokenizer (plus `<image>`) and the tower's preprocessor config.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use candle_core::{DType, Device, Tensor};
use strata_image::dataset::ImageRecord;
use strata_model::llava::{FeatureSelect, LlavaConfig, Projector, IMAGE_TOKEN};
use strata_model::{VisionConfig, VisionEncoder};
use strata_store::{InputRef, Kind, Manifest, Store};
use strata_tokenize::{ChatMessage, ChatTemplate, TokenizerDir, NO_LOSS};
use strata_train::vlm::{VlmExample, VlmJob};
use strata_train::TrainConfig;

/// `--vision scratch`: a small tower trained from scratch on the images' labels (`commands::vit`).
pub const SCRATCH: &str = "scratch";

/// A vision-language fine-tuning step, from `strata finetune --images` or a pipeline's finetune step.
#[derive(Debug, Clone)]
pub struct VisionStep {
    pub name: String,
    pub parent: String,
    /// The image dataset.
    pub images: String,
    /// The tower's folder (a text parent needs one), or [`SCRATCH`].
    pub vision: Option<PathBuf>,
    /// With [`SCRATCH`]: the tower's training steps.
    pub scratch_steps: usize,
    /// `align` or `instruct`.
    pub stage: String,
    pub image_size: u32,
    pub vision_layer: i64,
    /// `default` or `full`.
    pub vision_features: String,
    /// Token artifacts replayed beside the images (stage instruct), and their windows per step as a share
    /// of the batch.
    pub replay: Vec<strata_train::TokenMix>,
    pub replay_share: f64,
    /// Stage instruct: how far each reply weighs alike rather than each reply token (0: tokens, 1: replies;
    /// `strata_train::vlm::reply_weights`).
    pub reply_weight: f32,
    pub progress: bool,
}

pub use strata_serve::engine::vision::{processor_size, tower_norm};

/// An image dataset of the store: its name, folder and records (read once, by [`image_records`]).
pub struct ImageSet {
    pub name: String,
    pub dir: PathBuf,
    pub recs: Vec<ImageRecord>,
}

/// The image dataset's records and folder.
pub fn image_records(store: &Store, name: &str) -> anyhow::Result<ImageSet> {
    let dir = store.require(Kind::Dataset, name)?;
    anyhow::ensure!(
        strata_image::dataset::is_image_dataset(&dir),
        "dataset {name:?} is a text dataset: --images wants an image dataset (strata acquire of PNG/JPEG/DICOM files)"
    );
    let recs = strata_image::dataset::read_records(&dir)?;
    anyhow::ensure!(!recs.is_empty(), "image dataset {name:?} has no images");
    Ok(ImageSet {
        name: name.to_string(),
        dir,
        recs,
    })
}

/// Pixels `[n, 3, size, size]` of `recs`, normalised for the tower.
pub fn pixels(
    dir: &Path,
    recs: &[&ImageRecord],
    size: u32,
    norm: ([f32; 3], [f32; 3]),
) -> anyhow::Result<Tensor> {
    use rayon::prelude::*;
    let planes: Vec<Vec<f32>> = recs
        .par_iter()
        .map(|r| {
            let f = strata_image::pixels::Frame::read_png(&dir.join(&r.file))
                .with_context(|| format!("image {} ({})", r.id, r.file))?;
            Ok(f.tower_pixels(size, norm.0, norm.1))
        })
        .collect::<anyhow::Result<_>>()?;
    let s = size as usize;
    Ok(Tensor::from_vec(
        planes.concat(),
        (recs.len(), 3, s, s),
        &Device::Cpu,
    )?)
}

/// Feature rows `[images, rows, vision hidden]` of every record (in order) and each image's pooled output,
/// from the store's feature cache or computed by the tower (then cached).
pub fn features(
    store: &Store,
    set: &ImageSet,
    tower: &VisionEncoder,
    tower_dir: &Path,
    cfg: &LlavaConfig,
    size: u32,
) -> anyhow::Result<(Tensor, Tensor)> {
    let (dataset, dir, recs) = (set.name.as_str(), &set.dir, &set.recs);
    let manifest = store.input_ref(Kind::Dataset, dataset)?;
    let weights = strata_store::sha256_dir(tower_dir)?;
    let key = strata_store::sha256_bytes(
        format!(
            "{weights}|{}|{size}|{}|{:?}",
            manifest.sha256, cfg.feature_layer, cfg.select
        )
        .as_bytes(),
    );
    let cache = store.root().join("cache").join("features");
    let path = cache.join(format!("{}.safetensors", &key[..24]));
    if path.is_file() {
        let (t, _) = strata_model::read_safetensors(&path, &Device::Cpu)?;
        if let (Some(f), Some(p)) = (t.get("features"), t.get("pooled")) {
            eprintln!("features   {dataset:<20} cached     {}", path.display());
            return Ok((f.clone(), p.clone()));
        }
    }
    std::fs::create_dir_all(&cache).with_context(|| cache.display().to_string())?;
    let norm = tower_norm(tower_dir, &cfg.vision);
    let bar = indicatif::ProgressBar::new(recs.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "features [{bar:30}] {pos}/{len} images  {per_sec}  [{elapsed_precise} < {eta_precise}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (mut rows, mut pooled) = (Vec::new(), Vec::new());
    let ordered: Vec<&ImageRecord> = recs.iter().collect();
    for chunk in ordered.chunks(16) {
        let px = pixels(dir, chunk, size, norm)?;
        let out = tower.forward(&px)?;
        rows.push(cfg.select(&out)?);
        let p = match &out.pooled {
            Some(p) => p.clone(),
            None => out.last_hidden_state.mean(1)?,
        };
        pooled.push(p);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    // (one chunk is its own view: `cat` of it leaves the class token's offset in place)
    let f = Tensor::cat(&rows, 0)?.contiguous()?;
    let p = Tensor::cat(&pooled, 0)?.contiguous()?;
    let t = HashMap::from([
        ("features".to_string(), f.clone()),
        ("pooled".to_string(), p.clone()),
    ]);
    strata_model::save_safetensors(&t, &path, &[("dataset", dataset.to_string())])?;
    Ok((f, p))
}

/// The organ and the finding of a record: its two labels (simulated images), else no organ and its last
/// label.
pub fn organ_finding(r: &ImageRecord) -> (Option<&str>, Option<&str>) {
    match r.labels.as_slice() {
        [organ, finding] => (Some(organ.as_str()), Some(finding.as_str())),
        [.., last] => (None, Some(last.as_str())),
        [] => (None, None),
    }
}

/// The answer choices of the finding question for `r`: the organ's findings for a simulated organ, else
/// every finding label of the dataset.
pub fn choices(r: &ImageRecord, all: &BTreeSet<String>) -> Vec<String> {
    match organ_finding(r) {
        (Some(o), _) if strata_image::sim::ORGANS.contains(&o) => strata_image::sim::findings_of(o)
            .iter()
            .map(|s| (*s).to_string())
            .collect(),
        _ => all.iter().cloned().collect(),
    }
}

/// A label as words (`solid_mass` → `solid mass`).
pub fn words(label: &str) -> String {
    label.replace('_', " ")
}

pub const REPORT_PROMPT: &str = "Write the report for this ultrasound image.";

/// The finding question for `r` (with its choices as words).
pub fn finding_question(r: &ImageRecord, choices: &[String]) -> String {
    let what = match organ_finding(r).0 {
        Some(o) => format!("this {o} ultrasound image"),
        None => "this image".into(),
    };
    let list: Vec<String> = choices.iter().map(|c| words(c)).collect();
    format!(
        "What is the finding in {what}? Answer with one of: {}.",
        list.join(", ")
    )
}

/// The (question, answer) pairs of a record for `stage`.
fn turns(r: &ImageRecord, stage: &str, all: &BTreeSet<String>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if !r.text.trim().is_empty() {
        out.push((REPORT_PROMPT.to_string(), r.text.trim().to_string()));
    }
    if stage == "instruct" {
        let (organ, finding) = organ_finding(r);
        if let Some(o) = organ {
            out.push((
                "Which organ does this ultrasound image show?".into(),
                words(o),
            ));
        }
        if let Some(f) = finding {
            out.push((finding_question(r, &choices(r, all)), words(f)));
        }
    }
    out
}

/// The tokenizer with `<image>` (added as a special token when it lacks one) and its id.
///
/// # Errors
/// When the tokenizer refuses the token.
pub fn with_image_token(td: &mut TokenizerDir) -> anyhow::Result<u32> {
    if let Some(id) = td.tokenizer.token_to_id(IMAGE_TOKEN) {
        return Ok(id);
    }
    td.tokenizer
        .add_special_tokens([tokenizers::AddedToken::from(IMAGE_TOKEN, true)])
        .map_err(|e| anyhow::anyhow!("adding {IMAGE_TOKEN} to the tokenizer: {e}"))?;
    td.tokenizer
        .token_to_id(IMAGE_TOKEN)
        .ok_or_else(|| anyhow::anyhow!("the tokenizer did not take {IMAGE_TOKEN}"))
}

/// `question` with the image before it, rendered and encoded, `<image>` expanded to `rows` image tokens;
/// with `answer`, the reply is the only part counted in the loss.
pub fn encode_turn(
    td: &TokenizerDir,
    tmpl: &ChatTemplate,
    image_id: u32,
    rows: usize,
    question: &str,
    answer: Option<&str>,
) -> anyhow::Result<Vec<u32>> {
    let mut msgs = vec![ChatMessage {
        role: "user".into(),
        content: format!("{IMAGE_TOKEN}\n{question}"),
    }];
    let ids = if let Some(a) = answer {
        msgs.push(ChatMessage {
            role: "assistant".into(),
            content: a.into(),
        });
        strata_tokenize::encode_chat(td, tmpl, &msgs)?
    } else {
        let text = tmpl.render(&msgs, true)?;
        // as `encode_chat` and serving: the template writes whatever special tokens the model expects
        let enc = td
            .tokenizer
            .encode(text.as_str(), false)
            .map_err(|e| anyhow::anyhow!("encoding: {e}"))?;
        enc.get_ids().iter().map(|&i| i | NO_LOSS).collect()
    };
    let n = ids.iter().filter(|&&i| i & !NO_LOSS == image_id).count();
    anyhow::ensure!(
        n == 1,
        "the chat template rendered {n} image placeholders for one image"
    );
    let mut out = Vec::with_capacity(ids.len() + rows);
    for id in ids {
        if id & !NO_LOSS == image_id {
            out.extend(std::iter::repeat_n(image_id | NO_LOSS, rows));
        } else {
            out.push(id);
        }
    }
    Ok(out)
}

/// The decoder's weights with room for `<image>`: a vocabulary grown to hold `id`, new rows the mean of the
/// old (as transformers' `resize_token_embeddings` does), in the embeddings and an untied head.
fn grow_vocab(
    w: &mut HashMap<String, Tensor>,
    cfg: &mut strata_model::LlamaConfig,
    id: u32,
) -> anyhow::Result<()> {
    let need = id as usize + 1;
    if need <= cfg.vocab_size {
        return Ok(());
    }
    let extra = need - cfg.vocab_size;
    for name in ["model.embed_tokens.weight", "lm_head.weight"] {
        let Some(t) = w.get(name) else { continue };
        let mean = t.mean_keepdim(0)?;
        let rows = mean.broadcast_as((extra, t.dim(1)?))?;
        let grown = Tensor::cat(&[t, &rows.contiguous()?], 0)?;
        w.insert(name.to_string(), grown);
    }
    cfg.vocab_size = need;
    Ok(())
}

struct Start {
    cfg: LlavaConfig,
    tower: VisionEncoder,
    tower_dir: PathBuf,
    tower_weights: HashMap<String, Tensor>,
    decoder: HashMap<String, Tensor>,
    projector: HashMap<String, Tensor>,
    td: TokenizerDir,
    inputs: Vec<InputRef>,
}

/// The starting point: a text parent with a tower (stage 1), or a LLaVA parent (stage 2 after stage 1).
fn start(store: &Store, a: &VisionStep, seed: u64) -> anyhow::Result<Start> {
    let model_dir = store.dir(Kind::Model, &a.parent);
    if strata_model::llava::is_llava(&model_dir) {
        let cfg = LlavaConfig::read(&model_dir.join("config.json"))?;
        let parts = strata_model::llava::Parts::split(strata_model::read_weights(
            &model_dir,
            &Device::Cpu,
        )?)?;
        let tower = VisionEncoder::from_weights(cfg.vision.clone(), &parts.tower, &model_dir)?;
        return Ok(Start {
            cfg,
            tower,
            tower_dir: model_dir.clone(),
            tower_weights: parts.tower,
            decoder: parts.decoder,
            projector: parts.projector,
            td: TokenizerDir::open(&model_dir)?,
            inputs: vec![store.input_ref(Kind::Model, &a.parent)?],
        });
    }
    let tower_dir = a.vision.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "--images with a text parent needs --vision DIR (a vision tower's Hugging Face folder, e.g. from \
             scripts/fetch-model.sh --vision)"
        )
    })?;
    let vision = VisionConfig::read(&tower_dir.join("config.json"))?;
    let tower_weights = strata_model::read_weights(&tower_dir, &Device::Cpu)?;
    let tower = VisionEncoder::from_weights(vision.clone(), &tower_weights, &tower_dir)?;
    let parent = strata_train::parent::Parent::resolve(store, &a.parent)?;
    let mut decoder = parent.weights(&Device::Cpu)?;
    let mut text = parent.cfg.clone();
    let parent_dir = match parent.adapters.last() {
        Some((_, d)) => d.clone(),
        None => parent.base_dir.clone(),
    };
    let mut td = TokenizerDir::open(&parent_dir)?;
    let image_id = with_image_token(&mut td)?;
    grow_vocab(&mut decoder, &mut text, image_id)?;
    let vision_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tower_dir.join("config.json"))?)?;
    let mut cfg = LlavaConfig {
        text,
        vision,
        vision_json,
        image_token_id: image_id,
        image_seq_length: 0,
        feature_layer: a.vision_layer,
        select: match a.vision_features.as_str() {
            "default" => FeatureSelect::Default,
            "full" => FeatureSelect::Full,
            other => anyhow::bail!("--vision-features {other:?}: expected default or full"),
        },
        projector_bias: true,
    };
    cfg.layer_index()
        .map_err(|e| anyhow::anyhow!("--vision-layer: {e}"))?;
    let s = a.image_size as usize;
    cfg.image_seq_length = cfg.tokens_for(s, s);
    let projector = Projector::init(&cfg, seed, &Device::Cpu)?;
    let mut inputs = parent.inputs(store)?;
    inputs.push(InputRef {
        kind: Kind::Raw,
        name: tower_dir.display().to_string(),
        sha256: strata_store::sha256_dir(&tower_dir)?,
    });
    Ok(Start {
        cfg,
        tower,
        tower_dir,
        tower_weights,
        decoder,
        projector,
        td,
        inputs,
    })
}

/// Training and validation examples (train and val splits; a dataset without splits trains on all).
fn examples(
    recs: &[ImageRecord],
    st: &Start,
    stage: &str,
) -> anyhow::Result<(Vec<VlmExample>, Vec<VlmExample>)> {
    let tmpl = ChatTemplate::from_tokenizer_config(&st.td.dir.join("tokenizer_config.json"))?;
    let all: BTreeSet<String> = recs
        .iter()
        .filter_map(|r| organ_finding(r).1.map(str::to_string))
        .collect();
    let (mut train, mut val) = (Vec::new(), Vec::new());
    // an example longer than the context loses the end of its reply; one with no reply token left is dropped
    let keep = st.cfg.text.max_position_embeddings + 1;
    let (mut cut, mut dropped) = (0usize, 0usize);
    for (i, r) in recs.iter().enumerate() {
        let split = r.split.as_deref().unwrap_or("train");
        if split == "test" {
            continue;
        }
        for (q, ans) in turns(r, stage, &all) {
            let mut ids = encode_turn(
                &st.td,
                &tmpl,
                st.cfg.image_token_id,
                st.cfg.image_seq_length,
                &q,
                Some(&ans),
            )
            .with_context(|| format!("image {}", r.id))?;
            if ids.len() > keep {
                ids.truncate(keep);
                cut += 1;
                if ids[1..].iter().all(|&id| id & NO_LOSS != 0) {
                    dropped += 1;
                    continue;
                }
            }
            let ex = VlmExample { image: i, ids };
            if split == "val" {
                val.push(ex);
            } else {
                train.push(ex);
            }
        }
    }
    if cut > 0 {
        eprintln!(
            "finetune   {cut} examples longer than the context of {} were cut ({dropped} left no reply and were dropped)",
            keep - 1
        );
    }
    anyhow::ensure!(
        !train.is_empty(),
        "no training examples: the images have no report text and no labels (or all are in test, or no reply \
         fits the context of {} after {} image tokens)",
        keep - 1,
        st.cfg.image_seq_length
    );
    Ok((train, val))
}

/// `strata finetune --images DATASET …`.
/// What the token trainer offers and the vision trainer does not (yet): refused, not ignored.
fn refuse_unsupported(cfg: &TrainConfig) -> anyhow::Result<()> {
    anyhow::ensure!(
        cfg.grad_accum == 1
            && cfg.max_time_s.is_none()
            && cfg.early_stop_patience.is_none()
            && cfg.base_quant.is_none()
            && !cfg.gradient_checkpointing,
        "--images: gradient accumulation, --max-time, early stopping, --base-quant (QLoRA) and \
         --gradient-checkpointing are not supported for vision steps (raise --batch-size, lower --steps; \
         the decoder trains in f32)"
    );
    Ok(())
}

pub fn run_finetune(store: &Store, a: &VisionStep, cfg: TrainConfig) -> anyhow::Result<ExitCode> {
    let stage = a.stage.as_str();
    anyhow::ensure!(
        matches!(stage, "align" | "instruct"),
        "--vision-stage {stage:?}: expected align or instruct"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&a.reply_weight),
        "--reply-weight {}: expected a share from 0 (reply tokens weigh alike) to 1 (replies weigh alike)",
        a.reply_weight
    );
    let images = a.images.as_str();
    refuse_unsupported(&cfg)?;
    let mut cfg = cfg;
    if stage == "align" {
        cfg.lora = None;
    } else if cfg.lora.is_none() {
        cfg.lora = Some(strata_model::lora::LoraConfig::default());
    }
    let scratch = scratch_step(store, a, cfg.seed)?;
    let a = scratch.as_ref().unwrap_or(a);
    let st = start(store, a, cfg.seed)?;
    // every check before the tower runs (its features are cached for the next run)
    let replay = replay_of(store, a, &cfg, &st)?;
    let set = image_records(store, images)?;
    let (feats, _) = features(store, &set, &st.tower, &st.tower_dir, &st.cfg, a.image_size)?;
    anyhow::ensure!(
        feats.dim(1)? == st.cfg.image_seq_length,
        "the cached features have {} rows per image, the model {} (a stage-2 run must use stage 1's --image-size)",
        feats.dim(1)?,
        st.cfg.image_seq_length
    );
    let (train, val) = examples(&set.recs, &st, stage)?;
    let mut manifest_inputs = st.inputs.clone();
    manifest_inputs.push(store.input_ref(Kind::Dataset, images)?);
    for t in &a.replay {
        manifest_inputs.push(store.input_ref(Kind::Tokens, &t.name)?);
    }
    // stage 2's alone (stage 1's captions are single replies)
    let reply_weight = if stage == "instruct" {
        a.reply_weight
    } else {
        0.0
    };
    let mut config = serde_json::json!({
        "init": {"parent": a.parent}, "images": images,
        "train": cfg, "stage": stage, "image_size": a.image_size, "vision_layer": st.cfg.feature_layer,
        "vision_features": format!("{:?}", st.cfg.select),
        "replay": a.replay, "replay_windows": replay.as_ref().map(|(_, k)| *k),
    });
    if reply_weight != 0.0 {
        // in the fingerprint only when set, so that models trained before the option keep theirs
        config["reply_weight"] = reply_weight.into();
    }
    let manifest = Manifest::new(Kind::Model, &a.name, "strata finetune --images")
        .with_config(manifest_inputs, config);
    if store
        .up_to_date(Kind::Model, &a.name, &manifest.fingerprint)
        .is_some()
    {
        println!(
            "finetune   {:<20} up to date (same parent, tower, images and config)",
            a.name
        );
        return Ok(ExitCode::SUCCESS);
    }
    let run_id = format!("{}-{}", a.name, &manifest.fingerprint[..12]);
    let run_dir = store.run_dir(&run_id);
    std::fs::create_dir_all(&run_dir)?;
    eprintln!(
        "finetune   {:<20} {stage}: {} examples ({} val), {} image tokens each, {} steps",
        a.name,
        train.len(),
        val.len(),
        st.cfg.image_seq_length,
        cfg.steps
    );
    let job = VlmJob {
        name: &a.name,
        llava: &st.cfg,
        decoder: &st.decoder,
        projector: st.projector.clone(),
        cfg: &cfg,
        features: &feats,
        train: &train,
        val: &val,
        replay: replay.as_ref().map(|(m, k)| (m, *k)),
        pad_id: st.td.special.pad,
        reply_weight,
        run_dir: &run_dir,
        progress: a.progress,
    };
    let out = strata_train::vlm::train_vlm(&job)?;
    if let Some(step) = out.resumed_from {
        eprintln!("finetune   {:<20} (resumed from step {step})", a.name);
    }
    finish(store, a, &st, &cfg, &out, manifest, &run_id, train.len())?;
    Ok(ExitCode::SUCCESS)
}

/// With `--vision scratch` and a text parent: the step with the tower trained from scratch on its images
/// (`commands::vit`) as its `vision`.
fn scratch_step(store: &Store, a: &VisionStep, seed: u64) -> anyhow::Result<Option<VisionStep>> {
    if a.vision.as_deref() != Some(Path::new(SCRATCH))
        || strata_model::llava::is_llava(&store.dir(Kind::Model, &a.parent))
    {
        return Ok(None);
    }
    let mut s = a.clone();
    s.vision = Some(super::vit::scratch_tower(
        store,
        &a.images,
        a.image_size,
        a.scratch_steps,
        seed,
        a.progress,
    )?);
    Ok(Some(s))
}

/// The text replayed beside the images and its windows per step, when the step names token artifacts.
fn replay_of(
    store: &Store,
    a: &VisionStep,
    cfg: &TrainConfig,
    st: &Start,
) -> anyhow::Result<Option<(strata_train::Mixture, usize)>> {
    if a.replay.is_empty() {
        return Ok(None);
    }
    anyhow::ensure!(
        cfg.lora.is_some(),
        "text replay trains the decoder: only --vision-stage instruct (an adapter on the decoder) has decoder \
         weights to train"
    );
    anyhow::ensure!(
        a.replay_share > 0.0 && a.replay_share.is_finite(),
        "--replay-share {}: must be > 0",
        a.replay_share
    );
    anyhow::ensure!(
        cfg.seq_len <= st.cfg.text.max_position_embeddings,
        "--seq-len {} exceeds the decoder's context of {}",
        cfg.seq_len,
        st.cfg.text.max_position_embeddings
    );
    let mix = strata_train::mixture(store, &a.replay, cfg)?;
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let k = ((cfg.batch_size as f64 * a.replay_share).round() as usize).max(1);
    Ok(Some((mix, k)))
}

/// Merges the adapter, measures the guard, publishes, clears the checkpoints; fails (after publishing,
/// marked) when the guard does.
#[allow(clippy::too_many_arguments)]
fn finish(
    store: &Store,
    a: &VisionStep,
    st: &Start,
    cfg: &TrainConfig,
    out: &strata_train::vlm::VlmOutcome,
    manifest: Manifest,
    run_id: &str,
    examples: usize,
) -> anyhow::Result<()> {
    let stage = a.stage.as_str();
    let decoder = match &cfg.lora {
        Some(lc) => {
            let mut w = st.decoder.clone();
            let adapter = strata_model::lora::Adapter {
                config: lc.clone(),
                tensors: out.adapter.clone(),
                base: a.parent.clone(),
            };
            strata_model::lora::merge(&mut w, &adapter, DType::F32)?;
            w
        }
        None => st.decoder.clone(),
    };
    let guard = match &cfg.guard {
        Some(g) => Some(guard(store, g, a, st, &decoder)?),
        None => None,
    };
    let mut manifest = manifest;
    if let Some(v) = &guard {
        manifest
            .counts
            .insert("guard".into(), serde_json::to_value(v).unwrap_or_default());
    }
    let m = publish(store, a, st, out, &decoder, manifest, run_id, examples)?;
    strata_train::vlm::clear_checkpoints(&store.run_dir(run_id));
    if let Some(v) = guard.filter(|v| !v.passed) {
        anyhow::bail!(
            "forgetting guard: {} perplexity {:.3} against the parent's {:.3} (+{:.1}%, limit {:.1}%); {} is \
             published marked failed",
            v.dataset,
            v.child_ppl,
            v.parent_ppl,
            100.0 * v.increase,
            100.0 * v.max_increase,
            a.name
        );
    }
    println!(
        "finetune   {:<20} done       stage={stage} steps={} loss={:.4} val_loss={} files={}",
        a.name,
        out.steps,
        out.last_loss,
        out.val_loss
            .map_or_else(|| "-".into(), |v| format!("{v:.4}")),
        m.files.len()
    );
    Ok(())
}

/// The forgetting guard of a vision step: the new decoder's perplexity on the general dataset's held-out
/// split against the parent's (a text parent as stored, adapters merged; a LLaVA parent's decoder).
fn guard(
    store: &Store,
    g: &strata_train::guard::GuardConfig,
    a: &VisionStep,
    st: &Start,
    decoder: &HashMap<String, Tensor>,
) -> anyhow::Result<strata_train::guard::GuardVerdict> {
    let ids = strata_tokenize::encode_heldout(
        store,
        &g.dataset,
        &st.td,
        strata_tokenize::default_val_fraction(),
    )?;
    let build = |w: &HashMap<String, Tensor>, cfg: &strata_model::LlamaConfig| {
        strata_model::Llama::from_weights(w.clone(), cfg, &Device::Cpu)
    };
    let ppl = |m: &strata_model::Llama| -> anyhow::Result<f64> {
        let window = strata_train::eval_window(m.config());
        Ok(strata_train::perplexity(m, &ids, window, Some(g.max_windows))?.ppl)
    };
    let parent_ppl = if strata_model::llava::is_llava(&store.dir(Kind::Model, &a.parent)) {
        ppl(&build(&st.decoder, &st.cfg.text)?)?
    } else {
        ppl(&strata_train::parent::load_merged(store, &a.parent, &Device::Cpu)?.0)?
    };
    let child_ppl = ppl(&build(decoder, &st.cfg.text)?)?;
    Ok(strata_train::guard::GuardVerdict::new(
        g, parent_ppl, child_ppl,
    ))
}

/// Writes the LLaVA folder (tower, projector, decoder with the adapter merged, tokenizer with `<image>`,
/// preprocessor config) and publishes it with the run's counts.
#[allow(clippy::too_many_arguments)]
fn publish(
    store: &Store,
    a: &VisionStep,
    st: &Start,
    out: &strata_train::vlm::VlmOutcome,
    decoder: &HashMap<String, Tensor>,
    manifest: Manifest,
    run_id: &str,
    examples: usize,
) -> anyhow::Result<Manifest> {
    let stage = a.stage.as_str();
    let staging = store.staging(Kind::Model, &a.name)?;
    strata_model::llava::write_llava(
        &staging,
        &st.cfg,
        &st.tower_weights,
        &out.projector,
        decoder,
    )?;
    st.td
        .tokenizer
        .save(staging.join("tokenizer.json"), false)
        .map_err(|e| anyhow::anyhow!("tokenizer.json: {e}"))?;
    for f in [
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
    ] {
        let src = st.td.dir.join(f);
        if src.is_file() {
            std::fs::copy(&src, staging.join(f))?;
        }
    }
    write_processor(&staging, st, a.image_size)?;
    let mut manifest = manifest;
    manifest.created_by = format!("strata finetune --images (run {run_id})");
    let c = &mut manifest.counts;
    c.insert("stage".into(), stage.into());
    c.insert("steps".into(), out.steps.into());
    c.insert("examples".into(), examples.into());
    c.insert("image_tokens".into(), st.cfg.image_seq_length.into());
    c.insert("last_loss".into(), f64::from(out.last_loss).into());
    if let Some(v) = out.val_loss {
        c.insert("val_loss".into(), f64::from(v).into());
    }
    c.insert("run".into(), run_id.to_string().into());
    Ok(store.publish(&staging, manifest)?)
}

/// `preprocessor_config.json` of the published model: the tower's normalisation at the trained image size.
fn write_processor(dir: &Path, st: &Start, size: u32) -> anyhow::Result<()> {
    let (mean, std) = tower_norm(&st.tower_dir, &st.cfg.vision);
    write_preprocessor(dir, size, mean, std)
}

/// A `preprocessor_config.json` (transformers' `BitImageProcessor`, as DINOv2's): resize to `size` (bicubic),
/// rescale to [0, 1], normalise with `mean` and `std`.
///
/// # Errors
/// On a failing write.
pub fn write_preprocessor(
    dir: &Path,
    size: u32,
    mean: [f32; 3],
    std: [f32; 3],
) -> anyhow::Result<()> {
    let v = serde_json::json!({
        "image_processor_type": "BitImageProcessor",
        "do_resize": true, "size": {"height": size, "width": size}, "resample": 3,
        "do_center_crop": false, "do_rescale": true, "rescale_factor": 1.0 / 255.0,
        "do_normalize": true, "image_mean": mean, "image_std": std, "do_convert_rgb": true,
    });
    strata_store::write_json_atomic(dir.join("preprocessor_config.json"), &v)?;
    Ok(())
}

/// The prompt ids of a user turn with one image before `question`, ending with the assistant's prompt.
///
/// # Errors
/// When the template fails.
pub fn image_prompt(dir: &Path, cfg: &LlavaConfig, question: &str) -> anyhow::Result<Vec<u32>> {
    let td = TokenizerDir::open(dir)?;
    let tmpl = ChatTemplate::from_tokenizer_config(&dir.join("tokenizer_config.json"))?;
    Ok(encode_turn(
        &td,
        &tmpl,
        cfg.image_token_id,
        cfg.image_seq_length,
        question,
        None,
    )?
    .into_iter()
    .map(|id| id & !NO_LOSS)
    .collect())
}

/// A vision-language model of the store on the inference engine, with its tower and projector.
struct ImageModel {
    dir: PathBuf,
    engine: strata_serve::Engine,
    vision: std::sync::Arc<strata_serve::engine::vision::Vision>,
}

impl ImageModel {
    /// Model `name` (refused by name when it is a text model), its weights as `quant` asks.
    fn load(
        store: &Store,
        name: &str,
        quant: Option<strata_engine::WeightType>,
    ) -> anyhow::Result<Self> {
        let dir = store.require(Kind::Model, name)?;
        anyhow::ensure!(
            strata_model::llava::is_llava(&dir),
            "model {name:?} is a text model: an image needs a vision-language model (strata finetune --images)"
        );
        let engine = strata_serve::Engine::load_quantized(name, &dir, quant)?;
        let vision = engine
            .vision
            .clone()
            .ok_or_else(|| anyhow::anyhow!("model {name:?} has no vision tower"))?;
        Ok(Self {
            dir,
            engine,
            vision,
        })
    }

    /// The prompt ids of `question` about one image.
    fn prompt(&self, question: &str) -> anyhow::Result<Vec<u32>> {
        image_prompt(&self.dir, &self.vision.cfg, question)
    }

    /// The continuation of prompt `ids` whose image tokens read `rows` (the image's projected features).
    fn answer(
        &self,
        ids: Vec<u32>,
        rows: &[f32],
        params: &strata_serve::GenParams,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> anyhow::Result<strata_serve::Generation> {
        Ok(self.engine.generate_ids(
            ids,
            Some(strata_engine::ImageRows {
                token: self.vision.cfg.image_token_id,
                rows,
            }),
            params,
            None,
            on_text,
        )?)
    }
}

/// The demo's vision-language step: the last text model of the chain reading the cleaned simulated scans
/// (`us-images-clean`) through a tower trained from scratch on them (offline), one instruct stage (projector +
/// LoRA), then its report of a held-out scan printed beside the truth.
///
/// # Errors
/// A failing step, or no scan to describe.
pub fn demo(store: &Store, parent: &str, quick: bool) -> anyhow::Result<()> {
    const IMAGES: &str = "us-images-clean";
    const NAME: &str = "us-vision";
    let step = VisionStep {
        name: NAME.into(),
        parent: parent.into(),
        images: IMAGES.into(),
        vision: Some(PathBuf::from(SCRATCH)),
        scratch_steps: if quick { 40 } else { 150 },
        stage: "instruct".into(),
        image_size: 96,
        vision_layer: -1,
        vision_features: "default".into(),
        replay: Vec::new(),
        replay_share: 0.0,
        reply_weight: 0.0,
        progress: true,
    };
    let mut cfg = TrainConfig::new(if quick { 30 } else { 120 }, 8, 256);
    cfg.lr = 3e-3;
    cfg.min_lr = 3e-4;
    cfg.warmup_steps = 3;
    cfg.eval_every = cfg.steps;
    cfg.checkpoint_every = 20;
    run_finetune(store, &step, cfg)?;
    let set = image_records(store, IMAGES)?;
    // a held-out scan: of the test split, else the validation split
    let rec = ["test", "val", "train"]
        .iter()
        .find_map(|s| {
            set.recs
                .iter()
                .find(|r| r.split.as_deref().unwrap_or("train") == *s)
        })
        .ok_or_else(|| anyhow::anyhow!("{IMAGES} has no images"))?;
    let m = ImageModel::load(store, NAME, None)?;
    let frame = strata_image::acquire::read_picture(
        &set.dir.join(&rec.file),
        strata_image::acquire::DEFAULT_MAX_PIXELS,
    )?;
    let rows = m.vision.encode(&frame)?;
    let params = strata_serve::GenParams::new(64, strata_serve::Sampling::from_params(0.0, 1.0), 0);
    let answer = m
        .answer(m.prompt(REPORT_PROMPT)?, &rows, &params, &mut |_| true)?
        .text;
    let one_line = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
    println!(
        "vision-language model {NAME}: {parent} reading the scans through a ViT trained here from scratch \
         (offline; the pretrained ViT-S of the vision chain is `scripts/fetch-model.sh --vision`)"
    );
    println!(
        "  scan {} of the {} split ({})",
        rec.id,
        rec.split.as_deref().unwrap_or("train"),
        rec.labels.join(", ")
    );
    println!("  truth: {}", one_line(&rec.text));
    println!("  model: {}", one_line(&answer));
    Ok(())
}

/// `strata generate --model VLM --image PATH --prompt …`: the answer, and the time of each part on stderr.
pub fn generate(
    store: &Store,
    a: &crate::cli::GenerateArgs,
    image: &Path,
) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let m = ImageModel::load(store, &a.model, strata_engine::parse_weight_type(&a.quant)?)?;
    let frame =
        strata_image::acquire::read_picture(image, strata_image::acquire::DEFAULT_MAX_PIXELS)?;
    let t0 = std::time::Instant::now();
    let rows = m.vision.encode(&frame)?;
    let encode_ms = t0.elapsed().as_secs_f64() * 1e3;
    let ids = m.prompt(&a.prompt)?;
    let sampling = strata_serve::Sampling::from_params(a.temperature, a.top_p)
        .with_top_k(a.top_k)
        .with_min_p(a.min_p);
    let mut params = strata_serve::GenParams::new(a.max_tokens, sampling, a.seed);
    params.repetition_penalty = a.repetition_penalty;
    params.stop.clone_from(&a.stop);
    params.ignore_eos = a.ignore_eos;
    let (prompt_len, t1) = (ids.len(), std::time::Instant::now());
    let mut first_ms = None;
    let mut out = std::io::stdout().lock();
    let g = m.answer(ids, &rows, &params, &mut |piece| {
        first_ms.get_or_insert_with(|| t1.elapsed().as_secs_f64() * 1e3);
        let _ = write!(out, "{piece}");
        let _ = out.flush();
        true
    })?;
    writeln!(out)?;
    let total_ms = t1.elapsed().as_secs_f64() * 1e3;
    eprintln!(
        "{}",
        serde_json::json!({
            "encode_ms": encode_ms, "prompt_tokens": prompt_len, "first_token_ms": first_ms,
            "generate_ms": total_ms, "new_tokens": g.completion_tokens,
        })
    );
    Ok(ExitCode::SUCCESS)
}
