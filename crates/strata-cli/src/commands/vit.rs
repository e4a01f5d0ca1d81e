//! `--vision scratch`: a small vision tower trained from scratch on the image dataset's own labels, for when
//! no pretrained tower can be downloaded (the quick demo's offline path). The tower is a DINOv2-layout ViT
//! (`strata_train::vit`), trained on the training split (one sigmoid per label: organ and finding for
//! simulated images), written as a Hugging Face folder (config.json, model.safetensors,
//! preprocessor_config.json) under the store's `cache/towers/<key>/` — the key a hash of the dataset, the
//! image size, the tower's shape, its training settings and the seed — and reused by every later run with the
//! same key. The vision-language step then reads it as it reads a downloaded tower.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use candle_core::{Device, Tensor};
use strata_model::VisionConfig;
use strata_store::{Kind, Store};
use strata_train::TrainConfig;

use super::vlm::{image_records, pixels};

/// The tower's shape: 4 blocks of width 128 (4 heads, MLP ×4), patches of 16 pixels (8 below 96 pixels).
fn config_json(size: u32) -> serde_json::Value {
    let patch = if size >= 96 { 16 } else { 8 };
    serde_json::json!({
        "architectures": ["Dinov2Model"], "model_type": "dinov2", "hidden_size": 128,
        "num_hidden_layers": 4, "num_attention_heads": 4, "mlp_ratio": 4, "image_size": size,
        "patch_size": patch, "num_channels": 3, "hidden_act": "gelu", "layer_norm_eps": 1e-6,
        "layerscale_value": 1.0, "qkv_bias": true, "use_swiglu_ffn": false,
        "initializer_range": 0.02, "drop_path_rate": 0.0,
    })
}

/// Its training: `steps` steps of 32 images, AdamW at 1e-3 (cosine to 1e-4, a 15th of the steps to warm up),
/// weight decay 0.05.
fn train_config(steps: usize, seed: u64) -> TrainConfig {
    let mut c = TrainConfig::new(steps.max(1), 32, 1);
    c.lr = 1e-3;
    c.min_lr = 1e-4;
    c.warmup_steps = (steps / 15).max(1);
    c.weight_decay = 0.05;
    c.checkpoint_every = 50;
    c.seed = seed;
    c
}

/// ImageNet's mean and standard deviation, as DINOv2's image processor normalises.
const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The folder of the tower trained on `images` at `size` pixels for `steps` with `seed`: from the cache, or trained now
/// (resuming a run a kill interrupted) and cached.
///
/// # Errors
/// A size that is not a multiple of the patch, a dataset without labels or training images, a failing
/// run or write.
pub fn scratch_tower(
    store: &Store,
    images: &str,
    size: u32,
    steps: usize,
    seed: u64,
    progress: bool,
) -> anyhow::Result<PathBuf> {
    let cfg_json = config_json(size);
    let vision = VisionConfig::from_json_value(&cfg_json)
        .map_err(|e| anyhow::anyhow!("--vision scratch at --image-size {size}: {e}"))?;
    let tc = train_config(steps, seed);
    let dataset = store.input_ref(Kind::Dataset, images)?;
    let key = strata_store::sha256_bytes(
        serde_json::json!({"dataset": dataset.sha256, "tower": cfg_json, "train": tc})
            .to_string()
            .as_bytes(),
    );
    let out = store.root().join("cache").join("towers").join(&key[..24]);
    if out.join("model.safetensors").is_file() {
        eprintln!(
            "tower      scratch              cached     {}",
            out.display()
        );
        return Ok(out);
    }
    let set = image_records(store, images)?;
    let labels: BTreeSet<&str> = set
        .recs
        .iter()
        .flat_map(|r| r.labels.iter().map(String::as_str))
        .collect();
    anyhow::ensure!(
        !labels.is_empty(),
        "--vision scratch learns the images' labels, and dataset {images:?} has none"
    );
    let index: HashMap<&str, usize> = labels.iter().enumerate().map(|(i, l)| (*l, i)).collect();
    let mut targets = vec![0f32; set.recs.len() * labels.len()];
    for (i, r) in set.recs.iter().enumerate() {
        for l in &r.labels {
            targets[i * labels.len() + index[l.as_str()]] = 1.0;
        }
    }
    let train: Vec<usize> = (0..set.recs.len())
        .filter(|&i| set.recs[i].split.as_deref().unwrap_or("train") == "train")
        .collect();
    anyhow::ensure!(
        !train.is_empty(),
        "--vision scratch: dataset {images:?} has no image in its train split"
    );
    let all: Vec<&_> = set.recs.iter().collect();
    let px = pixels(&set.dir, &all, size, (MEAN, STD))?;
    let targets = Tensor::from_vec(targets, (set.recs.len(), labels.len()), &Device::Cpu)?;
    let run_dir = store.run_dir(&format!("tower-{}", &key[..12]));
    std::fs::create_dir_all(&run_dir)?;
    eprintln!(
        "tower      scratch              a {}-block ViT (patch {}) on {} training images, {} labels, {} steps",
        vision.layers,
        vision.patch_size,
        train.len(),
        labels.len(),
        tc.steps
    );
    let job = strata_train::vit::VitJob {
        name: "tower",
        vision: &vision,
        cfg: &tc,
        pixels: &px,
        targets: &targets,
        train: &train,
        run_dir: &run_dir,
        progress,
    };
    let (weights, last) = strata_train::vit::train_vit(&job)?;
    write_tower(&out, &cfg_json, &weights, size)?;
    eprintln!(
        "tower      scratch              done       loss {last:.4} → {}",
        out.display()
    );
    Ok(out)
}

/// The tower's folder, written into a staging folder and renamed into place.
fn write_tower(
    out: &Path,
    cfg: &serde_json::Value,
    weights: &HashMap<String, Tensor>,
    size: u32,
) -> anyhow::Result<()> {
    let parent = out.parent().context("tower folder")?;
    std::fs::create_dir_all(parent)?;
    let staging = parent.join(format!(
        ".staging-{}-{}",
        out.file_name().and_then(|n| n.to_str()).unwrap_or("tower"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    strata_store::write_json_atomic(staging.join("config.json"), cfg)?;
    strata_model::save_safetensors(
        weights,
        &staging.join("model.safetensors"),
        &[("format", "pt".to_string())],
    )?;
    super::vlm::write_preprocessor(&staging, size, MEAN, STD)?;
    let _ = std::fs::remove_dir_all(out);
    std::fs::rename(&staging, out).with_context(|| format!("publishing {}", out.display()))?;
    Ok(())
}
