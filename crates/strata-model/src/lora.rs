//! LoRA adapters (Hu et al., 2021) in PEFT's layout: `adapter_config.json` and `adapter_model.safetensors`
//! with PEFT's key names (`base_model.model.<module>.lora_A.weight` of shape (r, in), `lora_B.weight` of
//! shape (out, r)), so an adapter trained here loads in PEFT and one trained with PEFT loads here.
//!
//! A projection W (out, in) with an adapter computes y = x·Wᵀ + s·(drop(x)·Aᵀ)·Bᵀ with s = α/r (rsLoRA:
//! α/√r). A starts uniform in ±1/√in (PEFT's default, Kaiming-uniform with a = √5) and B at zero, so a
//! fresh adapter leaves the model exactly as it was. [`merge`] folds s·B·A into W.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::{Context, ModelError, Result};

/// The projections a LoRA adapter may target, by their Hugging Face module names.
pub const TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// The key prefix PEFT puts before a module's name in `adapter_model.safetensors`.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// An adapter's hyper-parameters, as PEFT's `LoraConfig` names them (`[train.lora]` in a TOML config).
/// Defaults: r 8, alpha 16, no dropout, the attention projections q/k/v/o.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    #[serde(default = "d_r")]
    pub r: usize,
    #[serde(default = "d_alpha")]
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    /// Module names among [`TARGETS`].
    #[serde(default = "d_targets")]
    pub target_modules: Vec<String>,
    #[serde(default)]
    pub use_rslora: bool,
}

fn d_r() -> usize {
    8
}
fn d_alpha() -> f64 {
    16.0
}
fn d_targets() -> Vec<String> {
    TARGETS[..4].iter().map(|s| (*s).to_string()).collect()
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: d_r(),
            lora_alpha: d_alpha(),
            lora_dropout: 0.0,
            target_modules: d_targets(),
            use_rslora: false,
        }
    }
}

impl LoraConfig {
    /// Checks rank, alpha, dropout and targets.
    ///
    /// # Errors
    /// On a value out of range or an unknown target, named.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Invalid(format!("LoRA: {m}")));
        if self.r == 0 {
            return bad("r must be at least 1".into());
        }
        if !(self.lora_alpha.is_finite() && self.lora_alpha > 0.0) {
            return bad(format!("lora_alpha {} must be > 0", self.lora_alpha));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return bad(format!(
                "lora_dropout {} must be in [0, 1)",
                self.lora_dropout
            ));
        }
        if self.target_modules.is_empty() {
            return bad("no target modules".into());
        }
        if let Some(t) = self
            .target_modules
            .iter()
            .find(|t| !TARGETS.contains(&t.as_str()))
        {
            return bad(format!(
                "unknown target module {t:?} (known: {})",
                TARGETS.join(", ")
            ));
        }
        Ok(())
    }

    /// The factor s of the update s·B·A: α/r, or α/√r with rsLoRA.
    #[must_use]
    pub fn scale(&self) -> f64 {
        let r = self.r as f64;
        if self.use_rslora {
            self.lora_alpha / r.sqrt()
        } else {
            self.lora_alpha / r
        }
    }

    #[must_use]
    pub fn targets(&self, module: &str) -> bool {
        self.target_modules.iter().any(|t| t == module)
    }

    /// `adapter_config.json` as PEFT writes it (the fields PEFT needs to load the adapter, with PEFT's
    /// defaults for the features Strata does not use).
    #[must_use]
    pub fn to_peft_json(&self, base: &str) -> serde_json::Value {
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base,
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "target_modules": self.target_modules,
            "use_rslora": self.use_rslora,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "modules_to_save": null,
            "layers_to_transform": null,
            "layers_pattern": null,
            "rank_pattern": {},
            "alpha_pattern": {},
            "use_dora": false,
            "revision": null,
        })
    }

    /// Reads PEFT's `adapter_config.json`, refusing by name what Strata would otherwise apply wrongly
    /// (DoRA, per-module ranks, biases, saved modules, a layer subset, a regex of targets).
    ///
    /// # Errors
    /// On unreadable JSON or an unsupported feature.
    pub fn from_peft_json(v: &serde_json::Value, path: &Path) -> Result<Self> {
        let bad = |reason: String| ModelError::Config {
            path: path.to_path_buf(),
            reason,
        };
        let get = |k: &str| v.get(k).filter(|x| !x.is_null());
        match get("peft_type").and_then(|x| x.as_str()) {
            Some("LORA") => {}
            other => return Err(bad(format!("peft_type {other:?}: only LORA adapters load"))),
        }
        let nonempty = |k: &str| {
            get(k).is_some_and(|x| {
                !(x.as_object().is_some_and(serde_json::Map::is_empty)
                    || x.as_array().is_some_and(Vec::is_empty)
                    || x.as_bool() == Some(false))
            })
        };
        for k in [
            "use_dora",
            "rank_pattern",
            "alpha_pattern",
            "modules_to_save",
            "layers_to_transform",
            "fan_in_fan_out",
        ] {
            if nonempty(k) {
                return Err(bad(format!("{k} is set: not supported")));
            }
        }
        if let Some(b) = get("bias").and_then(|x| x.as_str()) {
            if b != "none" {
                return Err(bad(format!("bias {b:?}: only \"none\" is supported")));
            }
        }
        let targets = match get("target_modules") {
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|x| x.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("target_modules must be names".into()))?,
            Some(serde_json::Value::String(s)) if s == "all-linear" => {
                TARGETS.iter().map(|s| (*s).to_string()).collect()
            }
            other => {
                return Err(bad(format!(
                "target_modules {other:?}: a list of module names (or \"all-linear\") is supported"
            )))
            }
        };
        let num = |k: &str| get(k).and_then(serde_json::Value::as_f64);
        let cfg = Self {
            r: get("r")
                .and_then(serde_json::Value::as_u64)
                .and_then(|r| usize::try_from(r).ok())
                .ok_or_else(|| bad("r is missing".into()))?,
            lora_alpha: num("lora_alpha").ok_or_else(|| bad("lora_alpha is missing".into()))?,
            lora_dropout: num("lora_dropout").unwrap_or(0.0),
            target_modules: targets,
            use_rslora: get("use_rslora")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false),
        };
        cfg.validate().map_err(|e| bad(e.to_string()))?;
        Ok(cfg)
    }
}

/// Shared by every adapted projection of one model: whether dropout is on (training) and the seed of the
/// current micro-batch's masks, so a run with dropout is still a function of its config (exact resume).
#[derive(Debug, Default)]
pub struct LoraState {
    training: AtomicBool,
    seed: AtomicU64,
}

impl LoraState {
    /// Turns dropout on with masks drawn from `seed` (the trainer passes one per micro-batch), or off.
    pub fn set_training(&self, on: bool, seed: u64) {
        self.training.store(on, Ordering::SeqCst);
        self.seed.store(seed, Ordering::SeqCst);
    }
}

/// One adapted projection: A (r, in), B (out, r), the scale, the dropout and this pair's index (its
/// dropout stream).
pub(crate) struct LoraPair {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
    pub dropout: f64,
    pub index: u64,
    pub state: Arc<LoraState>,
}

impl LoraPair {
    /// The dropout of this pair for the current micro-batch: (p, seed), or None when off.
    pub fn dropout_now(&self) -> Option<(f64, u64)> {
        (self.dropout > 0.0 && self.state.training.load(Ordering::SeqCst)).then(|| {
            let seed = self.state.seed.load(Ordering::SeqCst)
                ^ self.index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            (self.dropout, seed)
        })
    }

    /// s·(drop(x)·Aᵀ)·Bᵀ from candle ops (the path off the CPU, and the twin of
    /// [`crate::matmul::lora_linear`]).
    pub fn delta(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = match self.dropout_now() {
            Some((p, seed)) => {
                let mask = dropout_values(x.elem_count(), p, seed);
                x.mul(&Tensor::from_vec(mask, x.shape(), x.device())?)?
            }
            None => x.clone(),
        };
        let h = crate::matmul::linear_op(&x, &self.a)?;
        crate::matmul::linear_op(&h, &self.b)? * self.scale
    }
}

/// Inverted dropout's mask of `n` values: 0 with probability p, 1/(1 − p) otherwise, from a seeded
/// generator (the same values forward and backward).
pub(crate) fn dropout_values(n: usize, p: f64, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    #[allow(clippy::cast_possible_truncation)]
    let keep = (1.0 / (1.0 - p)) as f32;
    (0..n)
        .map(|_| if rng.random::<f64>() < p { 0.0 } else { keep })
        .collect()
}

/// The adapter tensors a model with `cfg` and `lora` needs, keyed as in a `VarMap` (PEFT's keys without
/// [`PEFT_PREFIX`]), with their shapes: (r, in) for A, (out, r) for B.
#[must_use]
pub fn adapter_shapes(
    cfg: &crate::LlamaConfig,
    lora: &LoraConfig,
) -> Vec<(String, (usize, usize))> {
    let (d, f, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim());
    let (q, kv) = (cfg.num_attention_heads * hd, cfg.kv_heads() * hd);
    let mut out = Vec::new();
    for i in 0..cfg.num_hidden_layers {
        for (module, group, (o, n)) in [
            ("q_proj", "self_attn", (q, d)),
            ("k_proj", "self_attn", (kv, d)),
            ("v_proj", "self_attn", (kv, d)),
            ("o_proj", "self_attn", (d, q)),
            ("gate_proj", "mlp", (f, d)),
            ("up_proj", "mlp", (f, d)),
            ("down_proj", "mlp", (d, f)),
        ] {
            if lora.targets(module) {
                let p = format!("model.layers.{i}.{group}.{module}");
                out.push((format!("{p}.lora_A.weight"), (lora.r, n)));
                out.push((format!("{p}.lora_B.weight"), (o, lora.r)));
            }
        }
    }
    out
}

/// Fresh adapter values: A uniform in ±1/√in from `seed` (per tensor name), B zero.
///
/// # Errors
/// On a tensor failure.
pub fn init_adapter(
    shapes: &[(String, (usize, usize))],
    seed: u64,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    use rand::{Rng, SeedableRng};
    let mut out = HashMap::new();
    for (name, (rows, cols)) in shapes {
        let t = if name.ends_with("lora_A.weight") {
            let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ h);
            #[allow(clippy::cast_possible_truncation)]
            let bound = (1.0 / (*cols as f64).sqrt()) as f32;
            let v: Vec<f32> = (0..rows * cols)
                .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * bound)
                .collect();
            Tensor::from_vec(v, (*rows, *cols), device).ctx(name)?
        } else {
            Tensor::zeros((*rows, *cols), DType::F32, device).ctx(name)?
        };
        out.insert(name.clone(), t);
    }
    Ok(out)
}

/// An adapter read from a folder: its config and tensors (f32, keyed without [`PEFT_PREFIX`]).
pub struct Adapter {
    pub config: LoraConfig,
    pub tensors: HashMap<String, Tensor>,
    /// `base_model_name_or_path` as written.
    pub base: String,
}

/// Reads `adapter_config.json` and `adapter_model.safetensors` from `dir` and checks the tensors against
/// the base model's `cfg`: every pair present with its shape, nothing else.
///
/// # Errors
/// On a missing file, an unsupported feature, or a tensor that does not fit the base, named.
pub fn read_adapter(dir: &Path, cfg: &crate::LlamaConfig, device: &Device) -> Result<Adapter> {
    let cpath = dir.join("adapter_config.json");
    let bytes = std::fs::read(&cpath).map_err(|source| ModelError::Io {
        path: cpath.clone(),
        source,
    })?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| ModelError::Config {
        path: cpath.clone(),
        reason: e.to_string(),
    })?;
    let config = LoraConfig::from_peft_json(&v, &cpath)?;
    let wpath = dir.join("adapter_model.safetensors");
    let (raw, _) = crate::read_safetensors(&wpath, device)?;
    let bad = |reason: String| ModelError::Weights {
        path: wpath.clone(),
        reason,
    };
    let mut tensors = HashMap::new();
    for (key, t) in raw {
        let name = key
            .strip_prefix(PEFT_PREFIX)
            .ok_or_else(|| bad(format!("{key}: not a PEFT key (no {PEFT_PREFIX:?} prefix)")))?;
        // PEFT names the adapter inside the module while training ("lora_A.default.weight") and drops
        // the name when saving; accept both.
        let name = name.replace(".default.weight", ".weight");
        tensors.insert(name, t.to_dtype(DType::F32).ctx(&key)?);
    }
    let shapes = adapter_shapes(cfg, &config);
    for (name, (r, c)) in &shapes {
        let t = tensors
            .get(name)
            .ok_or_else(|| bad(format!("{PEFT_PREFIX}{name} is missing")))?;
        if t.dims() != [*r, *c] {
            return Err(bad(format!(
                "{PEFT_PREFIX}{name}: shape {:?}, the base model needs ({r}, {c})",
                t.dims()
            )));
        }
    }
    if let Some(extra) = tensors
        .keys()
        .find(|k| !shapes.iter().any(|(n, _)| n == *k))
    {
        return Err(bad(format!(
            "{PEFT_PREFIX}{extra}: not a projection of this base model"
        )));
    }
    let base = v
        .get("base_model_name_or_path")
        .and_then(|x| x.as_str())
        .unwrap_or_default()
        .to_string();
    Ok(Adapter {
        config,
        tensors,
        base,
    })
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` (f32, PEFT's keys) into `dir`.
///
/// # Errors
/// On an I/O failure.
pub fn write_adapter(
    dir: &Path,
    config: &LoraConfig,
    tensors: &HashMap<String, Tensor>,
    base: &str,
) -> Result<()> {
    let keyed: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, t)| (format!("{PEFT_PREFIX}{k}"), t.clone()))
        .collect();
    crate::save_safetensors(
        &keyed,
        &dir.join("adapter_model.safetensors"),
        &[("format", "pt".to_string())],
    )?;
    let p = dir.join("adapter_config.json");
    strata_store::write_json_atomic(&p, &config.to_peft_json(base)).map_err(|e| {
        ModelError::Weights {
            path: p.clone(),
            reason: e.to_string(),
        }
    })
}

/// Folds the adapter into base weights: W ← W + s·B·A for every adapted projection, computed in f32 and
/// stored back in `dtype` (f32 or f16/bf16 for a smaller folder).
///
/// # Errors
/// When a base weight is missing or on a tensor failure.
pub fn merge(weights: &mut HashMap<String, Tensor>, adapter: &Adapter, dtype: DType) -> Result<()> {
    let mut names: Vec<String> = adapter_modules(adapter)
        .map(|m| format!("{m}.weight"))
        .collect();
    names.sort();
    for w_name in names {
        let w = weights
            .get(&w_name)
            .ok_or_else(|| ModelError::Invalid(format!("merge: the base has no {w_name}")))?;
        let merged = merge_one(&w_name, w, adapter)?
            .to_dtype(dtype)
            .ctx(&w_name)?;
        weights.insert(w_name, merged);
    }
    Ok(())
}

/// The modules an adapter adapts (`model.layers.0.self_attn.q_proj`, …).
pub fn adapter_modules(adapter: &Adapter) -> impl Iterator<Item = &str> {
    adapter
        .tensors
        .keys()
        .filter_map(|k| k.strip_suffix(".lora_A.weight"))
}

/// Weight `w_name` (`<module>.weight`) in f32 with the adapter's s·B·A added when it adapts that module;
/// unchanged (in f32) otherwise: one tensor of a merge that streams the base.
///
/// # Errors
/// When the adapter has A without B, or their shapes do not fit the weight.
pub fn merge_one(w_name: &str, w: &Tensor, adapter: &Adapter) -> Result<Tensor> {
    let w = w.to_dtype(DType::F32).ctx(w_name)?;
    let Some(module) = w_name.strip_suffix(".weight") else {
        return Ok(w);
    };
    let Some(a) = adapter.tensors.get(&format!("{module}.lora_A.weight")) else {
        return Ok(w);
    };
    let b_name = format!("{module}.lora_B.weight");
    let b = adapter
        .tensors
        .get(&b_name)
        .ok_or_else(|| ModelError::Invalid(format!("merge: the adapter has no {b_name}")))?;
    (w + (b.matmul(a).ctx(w_name)? * adapter.config.scale()).ctx(w_name)?).ctx(w_name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{max_abs_diff, randn, tiny};
    use candle_nn::VarBuilder;

    fn lora(targets: &[&str]) -> LoraConfig {
        LoraConfig {
            r: 4,
            lora_alpha: 8.0,
            lora_dropout: 0.0,
            target_modules: targets.iter().map(|s| (*s).to_string()).collect(),
            use_rslora: false,
        }
    }

    /// Base weights of a seeded tiny model, as constants.
    fn base(cfg: &crate::LlamaConfig) -> HashMap<String, Tensor> {
        let (vm, _) = crate::test_util::new_model(cfg);
        let vars = vm.data().lock().unwrap().clone();
        crate::seeded_init(&vars, cfg, 3).unwrap();
        vars.iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().copy().unwrap()))
            .collect()
    }

    fn logits(
        cfg: &crate::LlamaConfig,
        w: &HashMap<String, Tensor>,
        adapter: Option<(&LoraConfig, &HashMap<String, Tensor>)>,
    ) -> Vec<f32> {
        let vb = VarBuilder::from_tensors(w.clone(), DType::F32, &Device::Cpu);
        let lw = adapter.map(|(config, tensors)| crate::LoraWeights {
            config,
            tensors,
            state: Arc::default(),
            quantized: None,
        });
        let m = crate::Llama::load_with_lora(&vb, cfg, lw.as_ref()).unwrap();
        let ids =
            Tensor::new(&[[1u32, 7, 3, 9, 22, 4], [5, 5, 0, 49, 2, 8]], &Device::Cpu).unwrap();
        m.forward(&ids)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn a_fresh_adapter_leaves_the_logits_exactly_and_merging_matches_the_unmerged_model() {
        let cfg = tiny();
        let w = base(&cfg);
        let lc = lora(&TARGETS);
        let shapes = adapter_shapes(&cfg, &lc);
        assert_eq!(shapes.len(), 2 * 7 * 2); // 2 layers × 7 projections × (A, B)
        let fresh = init_adapter(&shapes, 1, &Device::Cpu).unwrap();
        let plain = logits(&cfg, &w, None);
        // B = 0: exactly the base model's logits
        assert_eq!(plain, logits(&cfg, &w, Some((&lc, &fresh))));
        // a trained-looking adapter (B non-zero) changes them; merged weights give the same logits
        let mut trained = fresh.clone();
        for (name, t) in &mut trained {
            if name.ends_with("lora_B.weight") {
                *t = (t.ones_like().unwrap() * 0.05).unwrap();
            }
        }
        let unmerged = logits(&cfg, &w, Some((&lc, &trained)));
        let diff = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max)
        };
        assert!(
            diff(&unmerged, &plain) > 1e-3,
            "the adapter changed nothing"
        );
        let adapter = Adapter {
            config: lc.clone(),
            tensors: trained,
            base: String::new(),
        };
        let mut merged = w.clone();
        merge(&mut merged, &adapter, DType::F32).unwrap();
        let d = diff(&logits(&cfg, &merged, None), &unmerged);
        assert!(d <= 1e-5, "merged vs unmerged: {d}");
        // by hand for one projection: W + (α/r)·B·A with B all 0.05
        let name = "model.layers.0.self_attn.q_proj";
        let a: Vec<Vec<f32>> = adapter.tensors[&format!("{name}.lora_A.weight")]
            .to_vec2()
            .unwrap();
        let w0: Vec<Vec<f32>> = w[&format!("{name}.weight")].to_vec2().unwrap();
        let m0: Vec<Vec<f32>> = merged[&format!("{name}.weight")].to_vec2().unwrap();
        let col_sum: f32 = a.iter().map(|row| row[5]).sum();
        assert!((m0[3][5] - (w0[3][5] + 2.0 * 0.05 * col_sum)).abs() < 1e-6);
    }

    #[test]
    fn peft_files_round_trip_with_peft_key_names_and_bad_adapters_are_refused() {
        let cfg = tiny();
        let lc = LoraConfig {
            use_rslora: true,
            lora_dropout: 0.1,
            ..lora(&["q_proj", "v_proj"])
        };
        assert!((lc.scale() - 4.0).abs() < 1e-12); // 8 / √4
        let tensors = init_adapter(&adapter_shapes(&cfg, &lc), 2, &Device::Cpu).unwrap();
        let dir = tempfile::tempdir().unwrap();
        write_adapter(dir.path(), &lc, &tensors, "smol").unwrap();
        // the keys and the config as PEFT reads them
        let bytes = std::fs::read(dir.path().join("adapter_model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut keys: Vec<String> = st.names().into_iter().map(String::from).collect();
        keys.sort();
        assert_eq!(keys.len(), 8);
        assert_eq!(
            keys[0],
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
        );
        let a = st
            .tensor("base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight")
            .unwrap();
        assert_eq!(a.shape(), [4, 32]); // (r, in)
        let b = st
            .tensor("base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight")
            .unwrap();
        assert_eq!(b.shape(), [16, 4]); // (out = 2 kv heads × 8, r)
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("adapter_config.json")).unwrap())
                .unwrap();
        assert_eq!(json["peft_type"], "LORA");
        assert_eq!(
            json["target_modules"],
            serde_json::json!(["q_proj", "v_proj"])
        );
        let back = read_adapter(dir.path(), &cfg, &Device::Cpu).unwrap();
        assert_eq!(back.config, lc);
        assert_eq!(back.base, "smol");
        for (k, t) in &tensors {
            let u: Vec<f32> = back.tensors[k].flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(u, t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), "{k}");
        }
        // an adapter made for another base (hidden 48) does not fit: refused by tensor name and shape
        let mut other = cfg.clone();
        other.hidden_size = 48;
        let e = read_adapter(dir.path(), &other, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("q_proj.lora_A.weight") && e.contains("needs"),
            "{e}"
        );
        // unsupported PEFT features and bad values are refused by name
        let p = Path::new("adapter_config.json");
        for (patch, needle) in [
            (serde_json::json!({"use_dora": true}), "use_dora"),
            (serde_json::json!({"bias": "all"}), "bias"),
            (
                serde_json::json!({"rank_pattern": {"q_proj": 8}}),
                "rank_pattern",
            ),
            (
                serde_json::json!({"target_modules": ".*proj"}),
                "target_modules",
            ),
            (
                serde_json::json!({"target_modules": ["qkv"]}),
                "unknown target module",
            ),
            (serde_json::json!({"r": 0}), "r must be"),
            (serde_json::json!({"peft_type": "IA3"}), "only LORA"),
        ] {
            let mut v = json.clone();
            for (k, x) in patch.as_object().unwrap() {
                v[k] = x.clone();
            }
            let e = LoraConfig::from_peft_json(&v, p).unwrap_err().to_string();
            assert!(e.contains(needle), "{patch}: {e}");
        }
        // PEFT's "all-linear" names every projection
        let mut v = json.clone();
        v["target_modules"] = "all-linear".into();
        assert_eq!(
            LoraConfig::from_peft_json(&v, p)
                .unwrap()
                .target_modules
                .len(),
            7
        );
    }

    /// The fused frozen-W + adapter projection against the same from candle ops: value and the gradients
    /// of x, A and B, with and without dropout, and A's gradient against finite differences.
    #[test]
    fn fused_lora_projection_matches_candle_ops_and_finite_differences() {
        use candle_core::Var;
        let w = randn(&[24, 20], 1); // frozen (out, in)
        let weigh = randn(&[2, 9, 24], 5);
        for dropout in [0.0, 0.3] {
            let x = Var::from_tensor(&randn(&[2, 9, 20], 2)).unwrap();
            let a = Var::from_tensor(&randn(&[3, 20], 3)).unwrap();
            let b = Var::from_tensor(&randn(&[24, 3], 4)).unwrap();
            let state = Arc::new(LoraState::default());
            state.set_training(true, 11);
            let pair = |a: &Tensor| LoraPair {
                a: a.clone(),
                b: b.as_tensor().clone(),
                scale: 2.5,
                dropout,
                index: 3,
                state: Arc::clone(&state),
            };
            let fused = |x: &Tensor, a: &Tensor| {
                let y = crate::matmul::lora_linear(
                    x,
                    &crate::qweight::Weight::Dense(w.clone()),
                    &pair(a),
                )
                .unwrap();
                (y * &weigh).unwrap().sum_all().unwrap()
            };
            let composed = |x: &Tensor, a: &Tensor| {
                let y =
                    (crate::matmul::linear_op(x, &w).unwrap() + pair(a).delta(x).unwrap()).unwrap();
                (y * &weigh).unwrap().sum_all().unwrap()
            };
            let (lf, lc) = (fused(&x, &a), composed(&x, &a));
            assert!(max_abs_diff(&lf, &lc) < 1e-3, "value at dropout {dropout}");
            let (gf, gc) = (lf.backward().unwrap(), lc.backward().unwrap());
            for (name, t) in [
                ("x", x.as_tensor()),
                ("A", a.as_tensor()),
                ("B", b.as_tensor()),
            ] {
                let d = max_abs_diff(gf.get(t).unwrap(), gc.get(t).unwrap());
                assert!(d < 1e-4, "{name} at dropout {dropout}: {d}");
            }
            assert!(gf.get(&w).is_none(), "the frozen weight took a gradient");
            let base: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
            let ga: Vec<f32> = gf
                .get(&a)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for idx in [0, 17, 59] {
                let at = |d: f32| {
                    let mut v = base.clone();
                    v[idx] += d;
                    let a2 = Tensor::from_vec(v, (3, 20), &Device::Cpu).unwrap();
                    f64::from(fused(&x, &a2).to_scalar::<f32>().unwrap())
                };
                let fd = (at(1e-2) - at(-1e-2)) / 2e-2;
                assert!(
                    (fd - f64::from(ga[idx])).abs() < 1e-2 * (1.0 + fd.abs()),
                    "A[{idx}] at dropout {dropout}: {fd} vs {}",
                    ga[idx]
                );
            }
        }
    }

    #[test]
    fn dropout_masks_are_seeded_and_scaled() {
        let m1 = dropout_values(4000, 0.25, 7);
        let m2 = dropout_values(4000, 0.25, 7);
        assert_eq!(m1, m2);
        let zeros = m1.iter().filter(|&&v| v == 0.0).count();
        assert!(
            (900..1100).contains(&zeros),
            "{zeros} of 4000 dropped at p = 0.25"
        );
        assert!(m1.iter().all(|&v| v == 0.0 || (v - 4.0 / 3.0).abs() < 1e-6));
    }
}
