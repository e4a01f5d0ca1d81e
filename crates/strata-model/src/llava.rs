//! LLaVA (Liu et al. 2023): a vision tower ([`crate::vision`]), a two-layer projector, and the decoder
//! ([`Llama`]) reading the projected image features in place of the image tokens of its input. Stored as
//! transformers' `LlavaForConditionalGeneration` stores it, so transformers loads a Strata model as it is:
//!
//! - `config.json`: `model_type: llava`, `text_config` (the decoder's config), `vision_config` (the tower's),
//!   `image_token_index`, `image_seq_length`, `vision_feature_layer`, `vision_feature_select_strategy`,
//!   `projector_hidden_act` (GELU), `multimodal_projector_bias`;
//! - tensors: `model.vision_tower.*` (the tower's own names), `model.multi_modal_projector.linear_{1,2}.*`,
//!   `model.language_model.*` (the decoder's names without `model.`), `lm_head.weight` (absent when tied).
//!
//! The image features are the tower's hidden state `vision_feature_layer` (an index into the embeddings and
//! every block's output; negative from the end), without the first token (the class token) under the
//! `default` strategy, with it under `full`; one image token of the text stands for each feature row, the
//! text holding as many image tokens in a row as the image has features (the processor expands `<image>`).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::vision::{Family, VisionConfig, VisionEncoder, VisionOutput};
use crate::{Context, Llama, LlamaConfig, ModelError, Result};

/// The text of the image placeholder, as LLaVA's processors write it.
pub const IMAGE_TOKEN: &str = "<image>";
/// The projector's tensor names start with this.
pub const PROJECTOR: &str = "model.multi_modal_projector";

/// Which feature rows of the chosen hidden state the projector reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureSelect {
    /// Every token but the first (the class token of DINOv2 and CLIP towers).
    Default,
    /// Every token.
    Full,
}

/// A LLaVA model's configuration.
#[derive(Debug, Clone)]
pub struct LlavaConfig {
    pub text: LlamaConfig,
    pub vision: VisionConfig,
    /// The tower's `config.json` as given (written back as `vision_config`).
    pub vision_json: serde_json::Value,
    pub image_token_id: u32,
    /// Image tokens per image (the features of one image at the size it is run at).
    pub image_seq_length: usize,
    pub feature_layer: i64,
    pub select: FeatureSelect,
    pub projector_bias: bool,
}

impl LlavaConfig {
    /// Reads a LLaVA `config.json`.
    ///
    /// # Errors
    /// A missing file, a field missing or invalid, a text or vision config not supported: named with the file.
    pub fn read(path: &Path) -> Result<Self> {
        crate::vision::read_json_config(path, Self::from_json)
    }

    fn from_json(v: &serde_json::Value) -> Result<Self, String> {
        if v["model_type"].as_str() != Some("llava") {
            return Err(format!(
                "model_type {} is not llava",
                v["model_type"].as_str().unwrap_or("(none)")
            ));
        }
        let text =
            LlamaConfig::from_json(&v["text_config"]).map_err(|e| format!("text_config: {e}"))?;
        text.validate().map_err(|e| format!("text_config: {e}"))?;
        let vision_json = v["vision_config"].clone();
        let vision =
            VisionConfig::from_json(&vision_json).map_err(|e| format!("vision_config: {e}"))?;
        let int = |k: &str| v.get(k).and_then(serde_json::Value::as_i64);
        let image_token_id = int("image_token_index")
            .or_else(|| int("image_token_id"))
            .ok_or("missing field image_token_index")?;
        let image_token_id =
            u32::try_from(image_token_id).map_err(|e| format!("image_token_index: {e}"))?;
        if image_token_id as usize >= text.vocab_size {
            return Err(format!(
                "image_token_index {image_token_id} is outside the text model's vocabulary of {}",
                text.vocab_size
            ));
        }
        let select = match v["vision_feature_select_strategy"]
            .as_str()
            .unwrap_or("default")
        {
            "default" => FeatureSelect::Default,
            "full" => FeatureSelect::Full,
            other => return Err(format!("vision_feature_select_strategy {other:?}")),
        };
        let act = v["projector_hidden_act"].as_str().unwrap_or("gelu");
        if act != "gelu" {
            return Err(format!(
                "projector_hidden_act {act:?} is not supported (gelu)"
            ));
        }
        let cfg = Self {
            feature_layer: int("vision_feature_layer").unwrap_or(-2),
            image_seq_length: usize::try_from(int("image_seq_length").unwrap_or(576))
                .map_err(|e| format!("image_seq_length: {e}"))?,
            projector_bias: v["multimodal_projector_bias"].as_bool().unwrap_or(true),
            text,
            vision,
            vision_json,
            image_token_id,
            select,
        };
        cfg.layer_index()?;
        Ok(cfg)
    }

    /// The config as transformers writes it.
    #[must_use]
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["LlavaForConditionalGeneration"],
            "model_type": "llava",
            "text_config": self.text,
            "vision_config": self.vision_json,
            "image_token_index": self.image_token_id,
            "image_seq_length": self.image_seq_length,
            "vision_feature_layer": self.feature_layer,
            "vision_feature_select_strategy": match self.select {
                FeatureSelect::Default => "default",
                FeatureSelect::Full => "full",
            },
            "projector_hidden_act": "gelu",
            "multimodal_projector_bias": self.projector_bias,
            "tie_word_embeddings": self.text.tie_word_embeddings,
            "torch_dtype": "float32",
        })
    }

    /// The index of the feature layer among the tower's `layers + 1` hidden states.
    ///
    /// # Errors
    /// When it is outside them.
    pub fn layer_index(&self) -> Result<usize, String> {
        let n = i64::try_from(self.vision.layers + 1).map_err(|e| e.to_string())?;
        let i = if self.feature_layer < 0 {
            n + self.feature_layer
        } else {
            self.feature_layer
        };
        if !(0..n).contains(&i) {
            return Err(format!(
                "vision_feature_layer {} is outside the tower's {n} hidden states",
                self.feature_layer
            ));
        }
        usize::try_from(i).map_err(|e| e.to_string())
    }

    /// Feature rows (image tokens) of an image of `height` x `width` pixels.
    #[must_use]
    pub fn tokens_for(&self, height: usize, width: usize) -> usize {
        let p = self.vision.patch_size;
        let cls = usize::from(self.vision.family != Family::Siglip);
        let all = (height / p) * (width / p) + cls;
        match self.select {
            FeatureSelect::Default => all - 1,
            FeatureSelect::Full => all,
        }
    }

    /// The feature rows the projector reads, from a tower's output: `[images, rows, vision hidden]`.
    ///
    /// # Errors
    /// On a bad layer index or a tensor failure.
    pub fn select(&self, out: &VisionOutput) -> Result<Tensor> {
        let i = self.layer_index().map_err(ModelError::Invalid)?;
        let h = &out.hidden_states[i];
        match self.select {
            FeatureSelect::Default => {
                let n = h.dim(1).ctx("features")?;
                h.narrow(1, 1, n - 1).ctx("features")
            }
            FeatureSelect::Full => Ok(h.clone()),
        }
    }
}

/// The two-layer projector: Linear(vision hidden → text hidden), GELU, Linear(text hidden → text hidden).
pub struct Projector {
    w1: Tensor,
    b1: Option<Tensor>,
    w2: Tensor,
    b2: Option<Tensor>,
}

impl Projector {
    /// The projector's tensors with their shapes, under [`PROJECTOR`].
    #[must_use]
    pub fn shapes(cfg: &LlavaConfig) -> Vec<(String, Vec<usize>)> {
        let (v, t) = (cfg.vision.hidden_size, cfg.text.hidden_size);
        let mut out = vec![
            (format!("{PROJECTOR}.linear_1.weight"), vec![t, v]),
            (format!("{PROJECTOR}.linear_2.weight"), vec![t, t]),
        ];
        if cfg.projector_bias {
            out.push((format!("{PROJECTOR}.linear_1.bias"), vec![t]));
            out.push((format!("{PROJECTOR}.linear_2.bias"), vec![t]));
        }
        out
    }

    /// Fresh projector tensors: weights normal with standard deviation 0.02 (transformers' initializer
    /// range) from `seed` and the tensor's name, biases zero.
    ///
    /// # Errors
    /// On a tensor failure.
    pub fn init(cfg: &LlavaConfig, seed: u64, device: &Device) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (name, shape) in Self::shapes(cfg) {
            let n: usize = shape.iter().product();
            let t = if name.ends_with(".bias") {
                Tensor::zeros(shape.as_slice(), DType::F32, device)
            } else {
                let v = crate::llama::seeded_normal(&name, seed, n, 0.02);
                Tensor::from_vec(v, shape.as_slice(), device)
            }
            .ctx(&name)?;
            out.insert(name, t);
        }
        Ok(out)
    }

    /// The projector from named tensors (variables while training), shapes checked.
    ///
    /// # Errors
    /// A tensor missing or of the wrong shape, named.
    pub fn from_tensors(cfg: &LlavaConfig, t: &HashMap<String, Tensor>) -> Result<Self> {
        let get = |name: &str| -> Result<Option<Tensor>> {
            let Some(shape) = Self::shapes(cfg)
                .into_iter()
                .find(|(n, _)| n == name)
                .map(|(_, s)| s)
            else {
                return Ok(None);
            };
            let x = t.get(name).ok_or_else(|| {
                ModelError::Invalid(format!("projector tensor {name} is missing"))
            })?;
            if x.dims() != shape.as_slice() {
                return Err(ModelError::Invalid(format!(
                    "projector tensor {name} has shape {:?}, want {shape:?}",
                    x.dims()
                )));
            }
            Ok(Some(x.clone()))
        };
        let need = |name: &str| -> Result<Tensor> {
            get(name)?.ok_or_else(|| ModelError::Invalid(format!("{name} is missing")))
        };
        Ok(Self {
            w1: need(&format!("{PROJECTOR}.linear_1.weight"))?,
            b1: get(&format!("{PROJECTOR}.linear_1.bias"))?,
            w2: need(&format!("{PROJECTOR}.linear_2.weight"))?,
            b2: get(&format!("{PROJECTOR}.linear_2.bias"))?,
        })
    }

    /// Features `[images, rows, vision hidden]` → `[images, rows, text hidden]`.
    ///
    /// # Errors
    /// On a shape mismatch.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let lin = |x: &Tensor, w: &Tensor, b: &Option<Tensor>| -> candle_core::Result<Tensor> {
            let y = x.broadcast_matmul(&w.t()?)?;
            match b {
                Some(b) => y.broadcast_add(b),
                None => Ok(y),
            }
        };
        lin(x, &self.w1, &self.b1)
            .and_then(|h| h.gelu_erf())
            .and_then(|h| lin(&h, &self.w2, &self.b2))
            .ctx("projector")
    }
}

/// Token embeddings `(B, T, D)` of `ids` (row-major, `B*T`) with the image tokens replaced, in order, by the
/// rows of `images` (`[N, P, D]`: N images of P rows each). Differentiable in both (an index into the two
/// stacked), so the projector and the decoder's adapters train through it.
///
/// # Errors
/// When the image tokens and the feature rows differ in number.
pub fn splice(text: &Tensor, ids: &[u32], image_token: u32, images: &Tensor) -> Result<Tensor> {
    let (b, t, d) = text.dims3().ctx("text embeddings")?;
    let (n, p, dv) = images.dims3().ctx("image features")?;
    if dv != d {
        return Err(ModelError::Invalid(format!(
            "image features of width {dv} for a text model of width {d}"
        )));
    }
    let slots = ids.iter().filter(|&&i| i == image_token).count();
    if slots != n * p {
        return Err(ModelError::Invalid(format!(
            "{slots} image tokens in the text for {n} image(s) of {p} features each ({})",
            n * p
        )));
    }
    let mut k = 0u32;
    let bt = u32::try_from(b * t).map_err(|e| ModelError::Invalid(e.to_string()))?;
    let index: Vec<u32> = (0..bt)
        .zip(ids)
        .map(|(i, &id)| {
            if id == image_token {
                k += 1;
                bt + k - 1
            } else {
                i
            }
        })
        .collect();
    let table = Tensor::cat(
        &[
            &text.reshape((b * t, d)).ctx("splice")?,
            &images.reshape((n * p, d)).ctx("splice")?,
        ],
        0,
    )
    .ctx("splice")?;
    let index = Tensor::from_vec(index, b * t, text.device()).ctx("splice")?;
    table
        .index_select(&index, 0)
        .and_then(|x| x.reshape((b, t, d)))
        .ctx("splice")
}

/// Logits `(B, T, V)` of the decoder on `ids` (B, T) with `images` (`[N, P, D]`, projected) in place of
/// its image tokens.
///
/// # Errors
/// As [`splice`] and the decoder's forward.
pub fn forward(lm: &Llama, ids: &Tensor, image_token: u32, images: &Tensor) -> Result<Tensor> {
    let flat: Vec<u32> = ids.flatten_all().and_then(|t| t.to_vec1()).ctx("ids")?;
    let text = lm.embed(ids)?;
    lm.forward_embeds(&splice(&text, &flat, image_token, images)?)
}

/// The decoder's tensor name in the LLaVA file: `model.X` → `model.language_model.X`.
#[must_use]
pub fn text_name(name: &str) -> String {
    match name.strip_prefix("model.") {
        Some(rest) => format!("model.language_model.{rest}"),
        None => name.to_string(),
    }
}

/// A LLaVA file's tensors by part: the tower's (its own names), the projector's (under [`PROJECTOR`]) and
/// the decoder's (its own names, `model.*` and `lm_head.weight`, in f32).
pub struct Parts {
    pub tower: HashMap<String, Tensor>,
    pub projector: HashMap<String, Tensor>,
    pub decoder: HashMap<String, Tensor>,
}

impl Parts {
    /// Sorts a LLaVA file's tensors into their parts.
    ///
    /// # Errors
    /// On a failing conversion to f32.
    pub fn split(weights: HashMap<String, Tensor>) -> Result<Self> {
        let mut p = Self {
            tower: HashMap::new(),
            projector: HashMap::new(),
            decoder: HashMap::new(),
        };
        for (k, v) in weights {
            if let Some(rest) = k.strip_prefix("model.vision_tower.") {
                p.tower.insert(rest.to_string(), v);
            } else if let Some(rest) = k.strip_prefix("model.language_model.") {
                let v = v.to_dtype(DType::F32).ctx(&k)?;
                p.decoder.insert(format!("model.{rest}"), v);
            } else if k.starts_with(PROJECTOR) {
                let v = v.to_dtype(DType::F32).ctx(&k)?;
                p.projector.insert(k, v);
            } else {
                let v = v.to_dtype(DType::F32).ctx(&k)?;
                p.decoder.insert(k, v);
            }
        }
        Ok(p)
    }
}

/// True when `dir` holds a LLaVA model (its `config.json` says `model_type: llava`).
#[must_use]
pub fn is_llava(dir: &Path) -> bool {
    std::fs::read(dir.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v["model_type"] == "llava")
}

/// A stored LLaVA model, ready to run: the tower, the projector and the decoder.
pub struct Llava {
    pub cfg: LlavaConfig,
    pub tower: VisionEncoder,
    pub projector: Projector,
    pub lm: Llama,
}

impl Llava {
    /// Loads a LLaVA folder (`config.json` and its safetensors in `LlavaForConditionalGeneration` names).
    ///
    /// # Errors
    /// A bad config, or a tensor missing or of the wrong shape, named.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let cfg = LlavaConfig::read(&dir.join("config.json"))?;
        let Parts {
            tower,
            projector,
            decoder: text,
        } = Parts::split(crate::read_weights(dir, device)?)?;
        let vision = VisionEncoder::from_weights(cfg.vision.clone(), &tower, dir)?;
        let projector = Projector::from_tensors(&cfg, &projector)?;
        let lm = Llama::from_weights(text, &cfg.text, device)?;
        Ok(Self {
            cfg,
            tower: vision,
            projector,
            lm,
        })
    }

    /// Projected features `[images, rows, text hidden]` of pixels `[images, channels, h, w]`.
    ///
    /// # Errors
    /// As the tower's and the projector's forward.
    pub fn image_features(&self, pixels: &Tensor) -> Result<Tensor> {
        let out = self.tower.forward(pixels)?;
        self.projector.forward(&self.cfg.select(&out)?)
    }

    /// Logits `(B, T, V)` of `ids` with projected `images` in place of the image tokens.
    ///
    /// # Errors
    /// As [`forward`].
    pub fn logits(&self, ids: &Tensor, images: &Tensor) -> Result<Tensor> {
        forward(&self.lm, ids, self.cfg.image_token_id, images)
    }
}

/// Writes a LLaVA folder's `config.json` and `model.safetensors` from the tower's tensors (its own names),
/// the projector's (under [`PROJECTOR`]) and the decoder's (its own names: `model.*`, `lm_head.weight`).
///
/// # Errors
/// On an I/O failure.
pub fn write_llava(
    dir: &Path,
    cfg: &LlavaConfig,
    tower: &HashMap<String, Tensor>,
    projector: &HashMap<String, Tensor>,
    text: &HashMap<String, Tensor>,
) -> Result<()> {
    let mut all = HashMap::new();
    for (k, v) in tower {
        all.insert(format!("model.vision_tower.{k}"), v.clone());
    }
    all.extend(projector.iter().map(|(k, v)| (k.clone(), v.clone())));
    for (k, v) in text {
        if k == "lm_head.weight" && cfg.text.tie_word_embeddings {
            continue;
        }
        all.insert(text_name(k), v.clone());
    }
    crate::save_safetensors(&all, &dir.join("model.safetensors"), &[])?;
    let p = dir.join("config.json");
    strata_store::write_json_atomic(&p, &cfg.to_json()).map_err(|e| ModelError::Weights {
        path: p.clone(),
        reason: e.to_string(),
    })
}
