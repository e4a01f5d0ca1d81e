//! A checkpoint is one safetensors file (weights + AdamW moments, the step and the early-stopping state
//! in its metadata), `checkpoint-<step>.safetensors`, written atomically: after `kill -9` the run finds
//! the previous checkpoint or the new one, never half of one. The newest `keep` are kept.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};

use crate::{Context, Result, TrainError};

const PREFIX: &str = "checkpoint-";
const SUFFIX: &str = ".safetensors";

/// What a run needs besides the tensors to continue exactly.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RunState {
    pub step: usize,
    /// Best validation loss so far and evaluations since it improved (early stopping; the best weights and
    /// their step are in `best.safetensors`, see [`save_best`]).
    pub best_val: Option<f64>,
    pub stale_evals: usize,
}

const BEST: &str = "best.safetensors";

/// Keeps the weights of the best validation so far (`best.safetensors` in `dir`, atomically), for early
/// stopping to publish them rather than the last ones.
///
/// # Errors
/// On an I/O failure.
pub fn save_best(
    dir: &Path,
    weights: &HashMap<String, Tensor>,
    step: usize,
    val: f64,
) -> Result<()> {
    let meta = [("step", step.to_string()), ("val_loss", format!("{val:e}"))];
    strata_model::save_safetensors(weights, &dir.join(BEST), &meta)?;
    Ok(())
}

/// The best weights: (step, validation loss, weights by name).
pub type Best = (usize, f64, HashMap<String, Tensor>);

/// The weights [`save_best`] kept, with their step and validation loss, if any.
///
/// # Errors
/// When the file exists but cannot be read.
pub fn load_best(dir: &Path, device: &Device) -> Result<Option<Best>> {
    let path = dir.join(BEST);
    if !path.is_file() {
        return Ok(None);
    }
    let (weights, meta) = strata_model::read_safetensors(&path, device)?;
    let field = |k: &str| meta.get(k).and_then(|s| s.parse::<f64>().ok());
    match (field("step"), field("val_loss")) {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        (Some(step), Some(val)) => Ok(Some((step as usize, val, weights))),
        _ => Err(TrainError::Checkpoint {
            path,
            reason: "no step or val_loss in metadata".into(),
        }),
    }
}

/// The checkpoint files in `dir`, oldest first.
fn files(dir: &Path) -> Vec<(usize, PathBuf)> {
    let mut out: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let p = e.ok()?.path();
            let name = p.file_name()?.to_str()?;
            let step = name
                .strip_prefix(PREFIX)?
                .strip_suffix(SUFFIX)?
                .parse()
                .ok()?;
            Some((step, p))
        })
        .collect();
    out.sort();
    out
}

/// Saves weights (by HF name) and optimizer moments, then drops all but the newest `keep` checkpoints.
///
/// # Errors
/// On an I/O failure.
pub fn save(
    dir: &Path,
    weights: &HashMap<String, Tensor>,
    optim: HashMap<String, Tensor>,
    state: RunState,
    keep: usize,
) -> Result<()> {
    let mut all: HashMap<String, Tensor> = weights
        .iter()
        .map(|(k, v)| (format!("model.{k}"), v.clone()))
        .collect();
    all.extend(optim);
    let meta = [
        ("step", state.step.to_string()),
        (
            "best_val",
            state
                .best_val
                .map_or_else(String::new, |v| format!("{v:e}")),
        ),
        ("stale_evals", state.stale_evals.to_string()),
    ];
    let path = dir.join(format!("{PREFIX}{:08}{SUFFIX}", state.step));
    strata_model::save_safetensors(&all, &path, &meta)?;
    let existing = files(dir);
    for (_, old) in existing
        .iter()
        .take(existing.len().saturating_sub(keep.max(1)))
    {
        let _ = std::fs::remove_file(old);
    }
    Ok(())
}

/// Removes every checkpoint and the best weights (once the model is published).
pub fn clear(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(BEST));
    for (_, p) in files(dir) {
        let _ = std::fs::remove_file(p);
    }
}

pub struct Loaded {
    pub state: RunState,
    pub weights: HashMap<String, Tensor>,
    pub optim: HashMap<String, Tensor>,
}

/// Loads the newest checkpoint in `dir`, if there is one.
///
/// # Errors
/// When a checkpoint exists but cannot be read.
pub fn load(dir: &Path, device: &Device) -> Result<Option<Loaded>> {
    let Some((_, path)) = files(dir).pop() else {
        return Ok(None);
    };
    let (tensors, meta) = strata_model::read_safetensors(&path, device)?;
    let step = meta
        .get("step")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| TrainError::Checkpoint {
            path: path.clone(),
            reason: "no step in metadata".into(),
        })?;
    let best_val = meta.get("best_val").and_then(|s| s.parse().ok());
    let stale_evals = meta
        .get("stale_evals")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
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
        state: RunState {
            step,
            best_val,
            stale_evals,
        },
        weights,
        optim,
    }))
}

/// The tensors of a run's variables (sharing their storage), by name.
pub(crate) fn tensors_of(vars: &HashMap<String, Var>) -> HashMap<String, Tensor> {
    vars.iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect()
}

/// Restores a run of named variables and its optimizer from the newest checkpoint in `dir`; the step it
/// was written after, if there was one.
///
/// # Errors
/// A checkpoint naming a tensor that is not a variable of the run, or that does not load.
pub(crate) fn restore(
    vars: &HashMap<String, Var>,
    opt: &mut crate::AdamW,
    dir: &Path,
) -> Result<Option<usize>> {
    let Some(ck) = load(dir, &Device::Cpu)? else {
        return Ok(None);
    };
    for (k, t) in &ck.weights {
        let v = vars.get(k).ok_or_else(|| TrainError::Checkpoint {
            path: dir.to_path_buf(),
            reason: format!("{k} is not a variable of this run"),
        })?;
        v.set(t).ctx(k)?;
    }
    opt.load_state(&ck.optim, ck.state.step)?;
    Ok(Some(ck.state.step))
}

/// After step `done` of a run of named variables: a checkpoint when `cfg.checkpoint_every` divides it (not
/// after the last step: the published model follows).
///
/// # Errors
/// On an I/O failure.
pub(crate) fn save_vars_every(
    dir: &Path,
    vars: &HashMap<String, Var>,
    opt: &crate::AdamW,
    done: usize,
    cfg: &crate::TrainConfig,
) -> Result<()> {
    if done.is_multiple_of(cfg.checkpoint_every.max(1)) && done < cfg.steps {
        save(
            dir,
            &tensors_of(vars),
            opt.state(),
            RunState {
                step: done,
                ..RunState::default()
            },
            cfg.keep_checkpoints,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_k_are_kept_and_the_newest_is_loaded_with_its_state() {
        let d = tempfile::tempdir().unwrap();
        let w = HashMap::from([(
            "w".to_string(),
            Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap(),
        )]);
        for step in [5, 10, 15, 20] {
            let state = RunState {
                step,
                best_val: (step > 5).then_some(2.5),
                stale_evals: step / 5,
            };
            save(d.path(), &w, HashMap::new(), state, 2).unwrap();
        }
        let steps: Vec<usize> = files(d.path()).iter().map(|f| f.0).collect();
        assert_eq!(steps, vec![15, 20]);
        let l = load(d.path(), &Device::Cpu).unwrap().unwrap();
        assert_eq!(
            l.state,
            RunState {
                step: 20,
                best_val: Some(2.5),
                stale_evals: 4
            }
        );
        assert!(l.weights.contains_key("w"));
        // the best weights round-trip with their step and loss, and go with the checkpoints
        save_best(d.path(), &w, 10, 2.5).unwrap();
        let (step, val, best) = load_best(d.path(), &Device::Cpu).unwrap().unwrap();
        assert_eq!((step, val), (10, 2.5));
        assert_eq!(best["w"].to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);
        clear(d.path());
        assert!(load(d.path(), &Device::Cpu).unwrap().is_none());
        assert!(load_best(d.path(), &Device::Cpu).unwrap().is_none());
    }
}
