//! A checkpoint is one safetensors file (weights + AdamW moments, the step in its metadata), written
//! atomically: after `kill -9` the run finds either the previous checkpoint or the new one, never half.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::{Result, TrainError};

pub const FILE: &str = "checkpoint.safetensors";

/// Saves weights (by HF name) and optimizer moments at `step`.
///
/// # Errors
/// On an I/O failure.
pub fn save(
    dir: &Path,
    weights: &HashMap<String, Tensor>,
    optim: HashMap<String, Tensor>,
    step: usize,
) -> Result<()> {
    let mut all: HashMap<String, Tensor> = weights
        .iter()
        .map(|(k, v)| (format!("model.{k}"), v.clone()))
        .collect();
    all.extend(optim);
    strata_model::save_safetensors(&all, &dir.join(FILE), &[("step", step.to_string())])?;
    Ok(())
}

pub struct Loaded {
    pub step: usize,
    pub weights: HashMap<String, Tensor>,
    pub optim: HashMap<String, Tensor>,
}

/// Loads the checkpoint in `dir`, if there is one.
///
/// # Errors
/// When a checkpoint exists but cannot be read.
pub fn load(dir: &Path, device: &Device) -> Result<Option<Loaded>> {
    let path = dir.join(FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let (tensors, meta) = strata_model::read_safetensors(&path, device)?;
    let step = meta
        .get("step")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| TrainError::Checkpoint {
            path: path.clone(),
            reason: "no step in metadata".into(),
        })?;
    let mut weights = HashMap::new();
    let mut optim = HashMap::new();
    for (k, v) in tensors {
        if let Some(name) = k.strip_prefix("model.") {
            weights.insert(name.to_string(), v);
        } else {
            optim.insert(k, v);
        }
    }
    Ok(Some(Loaded {
        step,
        weights,
        optim,
    }))
}
