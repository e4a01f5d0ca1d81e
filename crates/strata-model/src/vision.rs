//! Vision towers read from Hugging Face folders (`config.json` + safetensors, transformers' tensor names):
//! the image encoder of a LLaVA-style model. This first one is DINOv2 (`model_type = "dinov2"`, transformers'
//! `Dinov2Model`): a ViT with a class token, learned position embeddings, layer scale, pre-norm blocks of
//! multi-head attention and a GELU MLP (or SwiGLU), and a final LayerNorm.
//!
//! [`VisionEncoder::forward`] returns what transformers returns with `output_hidden_states=True`: the
//! embeddings and the output of every block (before the final norm), the last hidden state (after it) and the
//! pooled output (the class token of the last hidden state), so that a projector can read any layer.
//!
//! Position embeddings are used at the size they were trained for: an image of another size is refused with
//! both sizes named (transformers interpolates them bicubically; that is not done here yet).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, D};

use crate::{Context, ModelError, Result};

/// The activation of a tower's MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: the exact, erf form.
    Gelu,
    /// `gelu_pytorch_tanh` / `gelu_new`: the tanh approximation.
    GeluTanh,
    /// `quick_gelu`: x · sigmoid(1.702 x) (CLIP).
    QuickGelu,
}

impl Activation {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "gelu" => Self::Gelu,
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Self::GeluTanh,
            "quick_gelu" => Self::QuickGelu,
            _ => return None,
        })
    }

    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Gelu => x.gelu_erf(),
            Self::GeluTanh => x.gelu(),
            Self::QuickGelu => x.mul(&candle_nn::ops::sigmoid(&(x * 1.702)?)?),
        }
    }
}

/// A vision tower's configuration, read from its `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub model_type: String,
    pub hidden_size: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate_size: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub channels: usize,
    pub layer_norm_eps: f64,
    pub activation: Activation,
    pub swiglu: bool,
}

impl VisionConfig {
    /// Reads a tower's `config.json` (a vision model's own, or the `vision_config` of a multimodal one).
    ///
    /// # Errors
    /// A missing file, a field missing or of the wrong type, a model type not supported yet, sizes that do
    /// not divide: each named with the file.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
            path: path.into(),
            source,
        })?;
        let bad = |reason: String| ModelError::Config {
            path: path.into(),
            reason,
        };
        let mut v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if let Some(inner) = v.get("vision_config") {
            v = inner.clone();
        }
        Self::from_json(&v).map_err(bad)
    }

    fn from_json(v: &serde_json::Value) -> Result<Self, String> {
        let model_type = v["model_type"].as_str().unwrap_or_default().to_string();
        if model_type != "dinov2" {
            return Err(format!(
                "vision model type {model_type:?} is not supported yet (supported: dinov2)"
            ));
        }
        let int = |k: &str, default: Option<usize>| -> Result<usize, String> {
            match v.get(k).and_then(serde_json::Value::as_u64) {
                Some(n) => usize::try_from(n).map_err(|e| format!("{k}: {e}")),
                None => default.ok_or_else(|| format!("missing field {k}")),
            }
        };
        let hidden_size = int("hidden_size", Some(768))?;
        let mlp_ratio = v
            .get("mlp_ratio")
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(4.0);
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let intermediate_size = (hidden_size as f64 * mlp_ratio) as usize;
        let act = v["hidden_act"].as_str().unwrap_or("gelu");
        let cfg = Self {
            model_type,
            hidden_size,
            layers: int("num_hidden_layers", Some(12))?,
            heads: int("num_attention_heads", Some(12))?,
            intermediate_size,
            image_size: int("image_size", Some(518))?,
            patch_size: int("patch_size", Some(14))?,
            channels: int("num_channels", Some(3))?,
            layer_norm_eps: v
                .get("layer_norm_eps")
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(1e-6),
            activation: Activation::parse(act)
                .ok_or_else(|| format!("hidden_act {act:?} is not supported"))?,
            swiglu: v
                .get("use_swiglu_ffn")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false),
        };
        if cfg.heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                cfg.hidden_size, cfg.heads
            ));
        }
        if cfg.patch_size == 0 || !cfg.image_size.is_multiple_of(cfg.patch_size) {
            return Err(format!(
                "image_size {} is not a multiple of patch_size {}",
                cfg.image_size, cfg.patch_size
            ));
        }
        Ok(cfg)
    }

    /// Patches per image at the configured size.
    #[must_use]
    pub fn patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }
}

struct Norm {
    w: Tensor,
    b: Tensor,
}

struct Linear {
    w: Tensor,
    b: Option<Tensor>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = x.broadcast_matmul(&self.w.t()?)?;
        match &self.b {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

struct Block {
    norm1: Norm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    scale1: Option<Tensor>,
    norm2: Norm,
    fc1: Linear,
    fc2: Linear,
    scale2: Option<Tensor>,
}

/// What the tower returns for a batch of images.
pub struct VisionOutput {
    /// The embeddings, then the output of every block: `layers + 1` tensors of `[batch, 1 + patches, hidden]`.
    pub hidden_states: Vec<Tensor>,
    /// The last block's output after the final norm.
    pub last_hidden_state: Tensor,
    /// The class token of `last_hidden_state`: `[batch, hidden]`.
    pub pooled: Tensor,
}

/// A vision tower ready to run (f32 on `device`).
pub struct VisionEncoder {
    cfg: VisionConfig,
    patch_w: Tensor,
    patch_b: Tensor,
    cls: Tensor,
    pos: Tensor,
    blocks: Vec<Block>,
    norm: Norm,
}

fn layer_norm(x: &Tensor, n: &Norm, eps: f64) -> candle_core::Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    xc.broadcast_div(&(var + eps)?.sqrt()?)?
        .broadcast_mul(&n.w)?
        .broadcast_add(&n.b)
}

impl VisionEncoder {
    /// Loads a tower from a folder: `config.json` and its safetensors (transformers' names, with or without a
    /// `vision_tower.` / `vision_model.` prefix).
    ///
    /// # Errors
    /// A bad config (see [`VisionConfig::read`]), or a tensor missing or of the wrong shape, named.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let cfg = VisionConfig::read(&dir.join("config.json"))?;
        let weights = crate::read_weights(dir, device)?;
        Self::from_weights(cfg, &weights, dir)
    }

    /// A tower of `cfg` from named tensors (`dir` names the folder in errors).
    ///
    /// # Errors
    /// A tensor missing or of the wrong shape.
    pub fn from_weights(
        cfg: VisionConfig,
        weights: &HashMap<String, Tensor>,
        dir: &Path,
    ) -> Result<Self> {
        let (d, c, p) = (cfg.hidden_size, cfg.channels, cfg.patch_size);
        let get = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let t = ["", "vision_tower.", "vision_model.", "model.vision_tower."]
                .iter()
                .find_map(|pre| weights.get(&format!("{pre}{name}")))
                .ok_or_else(|| ModelError::Weights {
                    path: dir.into(),
                    reason: format!("tensor {name} is missing"),
                })?;
            if t.dims() != shape {
                return Err(ModelError::Weights {
                    path: dir.into(),
                    reason: format!("tensor {name} has shape {:?}, want {shape:?}", t.dims()),
                });
            }
            t.to_dtype(DType::F32).ctx(name)
        };
        let norm = |pre: &str| -> Result<Norm> {
            Ok(Norm {
                w: get(&format!("{pre}.weight"), &[d])?,
                b: get(&format!("{pre}.bias"), &[d])?,
            })
        };
        let linear = |pre: &str, out: usize, inp: usize| -> Result<Linear> {
            Ok(Linear {
                w: get(&format!("{pre}.weight"), &[out, inp])?,
                b: Some(get(&format!("{pre}.bias"), &[out])?),
            })
        };
        let has = |name: &str| {
            ["", "vision_tower.", "vision_model.", "model.vision_tower."]
                .iter()
                .any(|pre| weights.contains_key(&format!("{pre}{name}")))
        };
        let mut blocks = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let l = format!("encoder.layer.{i}");
            let scale = |k: &str| -> Result<Option<Tensor>> {
                let name = format!("{l}.{k}.lambda1");
                if has(&name) {
                    get(&name, &[d]).map(Some)
                } else {
                    Ok(None)
                }
            };
            let (fc1, fc2) = if cfg.swiglu {
                // SwiGLU: weights_in gives both halves, weights_out the projection back
                let hidden = (cfg.intermediate_size * 2 / 3).div_ceil(8) * 8;
                (
                    linear(&format!("{l}.mlp.weights_in"), 2 * hidden, d)?,
                    linear(&format!("{l}.mlp.weights_out"), d, hidden)?,
                )
            } else {
                (
                    linear(&format!("{l}.mlp.fc1"), cfg.intermediate_size, d)?,
                    linear(&format!("{l}.mlp.fc2"), d, cfg.intermediate_size)?,
                )
            };
            blocks.push(Block {
                norm1: norm(&format!("{l}.norm1"))?,
                q: linear(&format!("{l}.attention.attention.query"), d, d)?,
                k: linear(&format!("{l}.attention.attention.key"), d, d)?,
                v: linear(&format!("{l}.attention.attention.value"), d, d)?,
                o: linear(&format!("{l}.attention.output.dense"), d, d)?,
                scale1: scale("layer_scale1")?,
                norm2: norm(&format!("{l}.norm2"))?,
                fc1,
                fc2,
                scale2: scale("layer_scale2")?,
            });
        }
        let n = cfg.patches() + 1;
        Ok(Self {
            patch_w: get(
                "embeddings.patch_embeddings.projection.weight",
                &[d, c, p, p],
            )?,
            patch_b: get("embeddings.patch_embeddings.projection.bias", &[d])?,
            cls: get("embeddings.cls_token", &[1, 1, d])?,
            pos: get("embeddings.position_embeddings", &[1, n, d])?,
            norm: norm("layernorm")?,
            blocks,
            cfg,
        })
    }

    #[must_use]
    pub fn config(&self) -> &VisionConfig {
        &self.cfg
    }

    /// Runs the tower on `pixels` (`[batch, channels, height, width]`, already normalised as the tower's
    /// image processor does).
    ///
    /// # Errors
    /// Pixels of the wrong rank, channel count or size (named), or a failing tensor op.
    pub fn forward(&self, pixels: &Tensor) -> Result<VisionOutput> {
        let cfg = &self.cfg;
        let dims = pixels.dims().to_vec();
        if dims.len() != 4 || dims[1] != cfg.channels {
            return Err(ModelError::Invalid(format!(
                "pixels of shape {dims:?}: want [batch, {}, {s}, {s}]",
                cfg.channels,
                s = cfg.image_size
            )));
        }
        if dims[2] != cfg.image_size || dims[3] != cfg.image_size {
            return Err(ModelError::Invalid(format!(
                "an image of {}x{} pixels: this tower's position embeddings are for {s}x{s} (resizing to it, or \
                 interpolating the embeddings, is not done here yet)",
                dims[3],
                dims[2],
                s = cfg.image_size
            )));
        }
        let b = dims[0];
        let x = pixels
            .to_dtype(DType::F32)
            .and_then(|p| p.conv2d(&self.patch_w, 0, cfg.patch_size, 1, 1))
            .and_then(|y| y.broadcast_add(&self.patch_b.reshape((1, cfg.hidden_size, 1, 1))?))
            .and_then(|y| y.flatten_from(2))
            .and_then(|y| y.transpose(1, 2))
            .ctx("patch embedding")?;
        let cls = self
            .cls
            .broadcast_as((b, 1, cfg.hidden_size))
            .ctx("class token")?;
        let mut h = Tensor::cat(&[&cls, &x], 1)
            .and_then(|h| h.broadcast_add(&self.pos))
            .ctx("position embeddings")?;
        let mut hidden_states = vec![h.clone()];
        for (i, blk) in self.blocks.iter().enumerate() {
            h = self.block(blk, &h).ctx(&format!("block {i}"))?;
            hidden_states.push(h.clone());
        }
        let last_hidden_state = layer_norm(&h, &self.norm, cfg.layer_norm_eps).ctx("final norm")?;
        let pooled = last_hidden_state
            .narrow(1, 0, 1)
            .and_then(|t| t.squeeze(1))
            .ctx("pooled")?;
        Ok(VisionOutput {
            hidden_states,
            last_hidden_state,
            pooled,
        })
    }

    fn block(&self, blk: &Block, x: &Tensor) -> candle_core::Result<Tensor> {
        let cfg = &self.cfg;
        let (b, t, d) = x.dims3()?;
        let hd = d / cfg.heads;
        let h = layer_norm(x, &blk.norm1, cfg.layer_norm_eps)?;
        let split = |y: Tensor| {
            y.reshape((b, t, cfg.heads, hd))
                .and_then(|y| y.transpose(1, 2))
                .and_then(|y| y.contiguous())
        };
        let q = split(blk.q.forward(&h)?)?;
        let k = split(blk.k.forward(&h)?)?;
        let v = split(blk.v.forward(&h)?)?;
        #[allow(clippy::cast_precision_loss)]
        let scale = 1.0 / (hd as f64).sqrt();
        let att = (q.matmul(&k.t()?.contiguous()?)? * scale)?;
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, t, d))?;
        let mut y = blk.o.forward(&y)?;
        if let Some(s) = &blk.scale1 {
            y = y.broadcast_mul(s)?;
        }
        let x = (x + y)?;
        let h = layer_norm(&x, &blk.norm2, cfg.layer_norm_eps)?;
        let mut y = if cfg.swiglu {
            let both = blk.fc1.forward(&h)?;
            let half = both.dim(D::Minus1)? / 2;
            let (a, g) = (
                both.narrow(D::Minus1, 0, half)?,
                both.narrow(D::Minus1, half, half)?,
            );
            blk.fc2.forward(&(candle_nn::ops::silu(&a)? * g)?)?
        } else {
            blk.fc2
                .forward(&cfg.activation.apply(&blk.fc1.forward(&h)?)?)?
        };
        if let Some(s) = &blk.scale2 {
            y = y.broadcast_mul(s)?;
        }
        x + y
    }
}
