//! Vision towers read from Hugging Face folders (`config.json` + safetensors, transformers' tensor names):
//! the image encoder of a LLaVA-style model. Three families, all ViTs of pre-norm blocks (multi-head
//! attention, then an MLP), as transformers writes them:
//!
//! - **DINOv2** (`dinov2`, `Dinov2Model`): class token, learned positions, layer scale, GELU MLP or SwiGLU, a
//!   final LayerNorm; pooled = the class token of the last hidden state.
//! - **CLIP** (`clip_vision_model`, or the `vision_config` of `clip`): class embedding, a patch convolution
//!   without bias, a LayerNorm before the blocks (`pre_layrnorm`), quick-GELU; the last hidden state is the
//!   last block's output and pooled = `post_layernorm` of its class token.
//! - **SigLIP** (`siglip_vision_model`, or the `vision_config` of `siglip`): no class token, tanh-GELU,
//!   `post_layernorm` on the last hidden state, and pooled by the attention-pooling head (a learned probe
//!   attending over the patches) when `vision_use_head`.
//!
//! [`VisionEncoder::forward`] returns what transformers returns with `output_hidden_states=True`: the
//! embeddings (after CLIP's pre-norm) and the output of every block, the last hidden state and the pooled
//! output, so that a projector can read any layer.
//!
//! Position embeddings are used as stored for images of the size they were trained for, and resampled
//! bicubically for any other size (height and width multiples of the patch), as transformers'
//! `interpolate_pos_encoding` does: a DINOv2 tower stored for 518 px runs at 224 px.

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

/// The families of vision towers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Dinov2,
    Clip,
    Siglip,
}

/// A vision tower's configuration, read from its `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub family: Family,
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
    /// SigLIP's attention-pooling head.
    pub use_head: bool,
}

impl VisionConfig {
    /// Reads a tower's `config.json` (a vision model's own, or the `vision_config` of a multimodal one).
    ///
    /// # Errors
    /// A missing file, a field missing or of the wrong type, a model type not supported yet, sizes that do
    /// not divide: each named with the file.
    pub fn read(path: &Path) -> Result<Self> {
        read_json_config(path, |v| {
            Self::from_json(v.get("vision_config").unwrap_or(v))
        })
    }

    /// A configuration from its JSON (a tower's `config.json` as a value).
    ///
    /// # Errors
    /// As [`VisionConfig::read`], without a file to name.
    pub fn from_json_value(v: &serde_json::Value) -> Result<Self> {
        Self::from_json(v).map_err(ModelError::Invalid)
    }

    pub(crate) fn from_json(v: &serde_json::Value) -> Result<Self, String> {
        let model_type = v["model_type"].as_str().unwrap_or_default().to_string();
        // per family: defaults of transformers' configs (eps, activation, image and patch size)
        let (family, eps, act, image, patch) = match model_type.as_str() {
            "dinov2" => (Family::Dinov2, 1e-6, "gelu", 518, 14),
            "clip_vision_model" | "clip" => (Family::Clip, 1e-5, "quick_gelu", 224, 32),
            "siglip_vision_model" | "siglip" => {
                (Family::Siglip, 1e-6, "gelu_pytorch_tanh", 224, 16)
            }
            _ => {
                return Err(format!(
                    "vision model type {model_type:?} is not supported (supported: dinov2, \
                     clip_vision_model, siglip_vision_model)"
                ))
            }
        };
        let int = |k: &str, default: Option<usize>| -> Result<usize, String> {
            match v.get(k).and_then(serde_json::Value::as_u64) {
                Some(n) => usize::try_from(n).map_err(|e| format!("{k}: {e}")),
                None => default.ok_or_else(|| format!("missing field {k}")),
            }
        };
        let hidden_size = int("hidden_size", Some(768))?;
        let intermediate_size = if family == Family::Dinov2 {
            let mlp_ratio = v
                .get("mlp_ratio")
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(4.0);
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            let n = (hidden_size as f64 * mlp_ratio) as usize;
            n
        } else {
            int("intermediate_size", Some(3072))?
        };
        let act = v["hidden_act"].as_str().unwrap_or(act);
        let flag = |k: &str, default: bool| {
            v.get(k)
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(default)
        };
        let cfg = Self {
            family,
            model_type,
            hidden_size,
            layers: int("num_hidden_layers", Some(12))?,
            heads: int("num_attention_heads", Some(12))?,
            intermediate_size,
            image_size: int("image_size", Some(image))?,
            patch_size: int("patch_size", Some(patch))?,
            channels: int("num_channels", Some(3))?,
            layer_norm_eps: v
                .get("layer_norm_eps")
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(eps),
            activation: Activation::parse(act)
                .ok_or_else(|| format!("hidden_act {act:?} is not supported"))?,
            swiglu: family == Family::Dinov2 && flag("use_swiglu_ffn", false),
            use_head: family == Family::Siglip && flag("vision_use_head", true),
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

/// Reads the JSON file `path` and builds a config from it with `parse`; a failure of either names the file.
pub(crate) fn read_json_config<T>(
    path: &Path,
    parse: impl FnOnce(&serde_json::Value) -> Result<T, String>,
) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
        path: path.into(),
        source,
    })?;
    let bad = |reason: String| ModelError::Config {
        path: path.into(),
        reason,
    };
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    parse(&v).map_err(bad)
}

struct Norm {
    w: Tensor,
    b: Tensor,
}

/// Every linear layer of these towers has a bias.
struct Linear {
    w: Tensor,
    b: Tensor,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.broadcast_matmul(&self.w.t()?)?.broadcast_add(&self.b)
    }
}

struct Block {
    norm1: Norm,
    att: Attention,
    scale1: Option<Tensor>,
    norm2: Norm,
    fc1: Linear,
    fc2: Linear,
    scale2: Option<Tensor>,
}

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
}

/// SigLIP's attention-pooling head: a learned probe attends over the tokens, then a residual MLP.
struct Head {
    probe: Tensor,
    att: Attention,
    norm: Norm,
    fc1: Linear,
    fc2: Linear,
}

/// What the tower returns for a batch of images.
pub struct VisionOutput {
    /// The embeddings (after CLIP's pre-norm), then the output of every block: `layers + 1` tensors of
    /// `[batch, tokens, hidden]` (tokens: the patches, and a class token first for DINOv2 and CLIP).
    pub hidden_states: Vec<Tensor>,
    /// DINOv2 and SigLIP: the last block's output after the final norm; CLIP: the last block's output.
    pub last_hidden_state: Tensor,
    /// `[batch, hidden]`: DINOv2 the class token of the last hidden state, CLIP the post-norm of it, SigLIP
    /// the attention-pooling head's output (none without the head).
    pub pooled: Option<Tensor>,
}

/// A vision tower ready to run (f32 on `device`).
pub struct VisionEncoder {
    cfg: VisionConfig,
    patch_w: Tensor,
    patch_b: Option<Tensor>,
    cls: Option<Tensor>,
    pos: Tensor,
    pre_norm: Option<Norm>,
    blocks: Vec<Block>,
    norm: Norm,
    head: Option<Head>,
}

/// The `[n_out, n_in]` matrix of 1-D bicubic resampling (Keys' kernel, a = -0.75, half-pixel centres, indices
/// past the edge clamped to it), as PyTorch's bicubic `interpolate` with `align_corners=False` and a target size.
#[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
fn bicubic_matrix(n_in: usize, n_out: usize) -> Vec<f32> {
    const A: f64 = -0.75;
    let near = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let scale = n_in as f64 / n_out as f64;
    let mut m = vec![0f32; n_out * n_in];
    for o in 0..n_out {
        let src = (o as f64 + 0.5) * scale - 0.5;
        let f = src.floor();
        let t = src - f;
        let w = [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)];
        for (k, wk) in w.iter().enumerate() {
            #[allow(clippy::cast_possible_wrap)]
            let i = (f as i64 + k as i64 - 1).clamp(0, n_in as i64 - 1);
            #[allow(clippy::cast_sign_loss)]
            let i = i as usize;
            m[o * n_in + i] += *wk as f32;
        }
    }
    m
}

fn layer_norm(x: &Tensor, n: &Norm, eps: f64) -> candle_core::Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    xc.broadcast_div(&(var + eps)?.sqrt()?)?
        .broadcast_mul(&n.w)?
        .broadcast_add(&n.b)
}

/// Multi-head attention of the tokens of `xq` over those of `xkv`.
fn attend(xq: &Tensor, xkv: &Tensor, a: &Attention, heads: usize) -> candle_core::Result<Tensor> {
    let (b, tq, d) = xq.dims3()?;
    let tk = xkv.dim(1)?;
    let hd = d / heads;
    let split = |y: Tensor, t: usize| {
        y.reshape((b, t, heads, hd))
            .and_then(|y| y.transpose(1, 2))
            .and_then(|y| y.contiguous())
    };
    let q = split(a.q.forward(xq)?, tq)?;
    let k = split(a.k.forward(xkv)?, tk)?;
    let v = split(a.v.forward(xkv)?, tk)?;
    #[allow(clippy::cast_precision_loss)]
    let scale = 1.0 / (hd as f64).sqrt();
    let att = (q.matmul(&k.t()?.contiguous()?)? * scale)?;
    // candle's fused softmax has no backward: a tower being trained takes the composed one
    let att = if att.track_op() {
        candle_nn::ops::softmax(&att, D::Minus1)?
    } else {
        candle_nn::ops::softmax_last_dim(&att)?
    };
    let y = att
        .matmul(&v)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, tq, d))?;
    a.o.forward(&y)
}

/// The tensor names of one family's blocks.
struct Names {
    layer: &'static str,
    norm1: &'static str,
    norm2: &'static str,
    qkvo: [&'static str; 4],
}

impl Family {
    fn names(self) -> Names {
        match self {
            Self::Dinov2 => Names {
                layer: "encoder.layer",
                norm1: "norm1",
                norm2: "norm2",
                qkvo: [
                    "attention.attention.query",
                    "attention.attention.key",
                    "attention.attention.value",
                    "attention.output.dense",
                ],
            },
            Self::Clip | Self::Siglip => Names {
                layer: "encoder.layers",
                norm1: "layer_norm1",
                norm2: "layer_norm2",
                qkvo: [
                    "self_attn.q_proj",
                    "self_attn.k_proj",
                    "self_attn.v_proj",
                    "self_attn.out_proj",
                ],
            },
        }
    }
}

/// Named tensors of a tower, found with or without the prefixes multimodal checkpoints put before them.
struct Store<'a> {
    weights: &'a HashMap<String, Tensor>,
    dir: &'a Path,
}

const PREFIXES: [&str; 4] = ["", "vision_tower.", "vision_model.", "model.vision_tower."];

impl Store<'_> {
    fn find(&self, name: &str) -> Option<&Tensor> {
        PREFIXES
            .iter()
            .find_map(|pre| self.weights.get(&format!("{pre}{name}")))
            .or_else(|| {
                PREFIXES
                    .iter()
                    .find_map(|pre| self.weights.get(&format!("{pre}vision_model.{name}")))
            })
    }

    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.find(name).ok_or_else(|| ModelError::Weights {
            path: self.dir.into(),
            reason: format!("tensor {name} is missing"),
        })?;
        if t.dims() != shape {
            return Err(ModelError::Weights {
                path: self.dir.into(),
                reason: format!("tensor {name} has shape {:?}, want {shape:?}", t.dims()),
            });
        }
        t.to_dtype(DType::F32).ctx(name)
    }

    fn norm(&self, pre: &str, d: usize) -> Result<Norm> {
        Ok(Norm {
            w: self.get(&format!("{pre}.weight"), &[d])?,
            b: self.get(&format!("{pre}.bias"), &[d])?,
        })
    }

    fn linear(&self, pre: &str, out: usize, inp: usize) -> Result<Linear> {
        Ok(Linear {
            w: self.get(&format!("{pre}.weight"), &[out, inp])?,
            b: self.get(&format!("{pre}.bias"), &[out])?,
        })
    }

    fn attention(&self, pre: &str, names: [&str; 4], d: usize) -> Result<Attention> {
        Ok(Attention {
            q: self.linear(&format!("{pre}.{}", names[0]), d, d)?,
            k: self.linear(&format!("{pre}.{}", names[1]), d, d)?,
            v: self.linear(&format!("{pre}.{}", names[2]), d, d)?,
            o: self.linear(&format!("{pre}.{}", names[3]), d, d)?,
        })
    }
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
        let st = Store { weights, dir };
        let (d, c, p) = (cfg.hidden_size, cfg.channels, cfg.patch_size);
        let names = cfg.family.names();
        let mut blocks = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            blocks.push(Self::load_block(&st, &cfg, &names, i)?);
        }
        let n = cfg.patches();
        let enc = match cfg.family {
            Family::Dinov2 => Self {
                patch_w: st.get(
                    "embeddings.patch_embeddings.projection.weight",
                    &[d, c, p, p],
                )?,
                patch_b: Some(st.get("embeddings.patch_embeddings.projection.bias", &[d])?),
                cls: Some(st.get("embeddings.cls_token", &[1, 1, d])?),
                pos: st.get("embeddings.position_embeddings", &[1, n + 1, d])?,
                pre_norm: None,
                norm: st.norm("layernorm", d)?,
                head: None,
                blocks,
                cfg,
            },
            Family::Clip => Self {
                patch_w: st.get("embeddings.patch_embedding.weight", &[d, c, p, p])?,
                patch_b: None,
                cls: Some(
                    st.get("embeddings.class_embedding", &[d])?
                        .reshape((1, 1, d))
                        .ctx("class embedding")?,
                ),
                pos: st
                    .get("embeddings.position_embedding.weight", &[n + 1, d])?
                    .unsqueeze(0)
                    .ctx("positions")?,
                pre_norm: Some(st.norm("pre_layrnorm", d)?),
                norm: st.norm("post_layernorm", d)?,
                head: None,
                blocks,
                cfg,
            },
            Family::Siglip => Self {
                patch_w: st.get("embeddings.patch_embedding.weight", &[d, c, p, p])?,
                patch_b: Some(st.get("embeddings.patch_embedding.bias", &[d])?),
                cls: None,
                pos: st
                    .get("embeddings.position_embedding.weight", &[n, d])?
                    .unsqueeze(0)
                    .ctx("positions")?,
                pre_norm: None,
                norm: st.norm("post_layernorm", d)?,
                head: if cfg.use_head {
                    Some(Self::load_head(&st, &cfg)?)
                } else {
                    None
                },
                blocks,
                cfg,
            },
        };
        Ok(enc)
    }

    fn load_block(st: &Store<'_>, cfg: &VisionConfig, names: &Names, i: usize) -> Result<Block> {
        let d = cfg.hidden_size;
        let l = format!("{}.{i}", names.layer);
        let scale = |k: &str| -> Result<Option<Tensor>> {
            let name = format!("{l}.{k}.lambda1");
            if cfg.family == Family::Dinov2 {
                st.get(&name, &[d]).map(Some)
            } else {
                Ok(None)
            }
        };
        let (fc1, fc2) = if cfg.swiglu {
            // SwiGLU: weights_in gives both halves, weights_out the projection back
            let hidden = (cfg.intermediate_size * 2 / 3).div_ceil(8) * 8;
            (
                st.linear(&format!("{l}.mlp.weights_in"), 2 * hidden, d)?,
                st.linear(&format!("{l}.mlp.weights_out"), d, hidden)?,
            )
        } else {
            (
                st.linear(&format!("{l}.mlp.fc1"), cfg.intermediate_size, d)?,
                st.linear(&format!("{l}.mlp.fc2"), d, cfg.intermediate_size)?,
            )
        };
        Ok(Block {
            norm1: st.norm(&format!("{l}.{}", names.norm1), d)?,
            att: st.attention(&l, names.qkvo, d)?,
            scale1: scale("layer_scale1")?,
            norm2: st.norm(&format!("{l}.{}", names.norm2), d)?,
            fc1,
            fc2,
            scale2: scale("layer_scale2")?,
        })
    }

    fn load_head(st: &Store<'_>, cfg: &VisionConfig) -> Result<Head> {
        let d = cfg.hidden_size;
        // nn.MultiheadAttention keeps q, k and v in one projection
        let w = st.get("head.attention.in_proj_weight", &[3 * d, d])?;
        let b = st.get("head.attention.in_proj_bias", &[3 * d])?;
        let part = |k: usize| -> Result<Linear> {
            Ok(Linear {
                w: w.narrow(0, k * d, d).ctx("head in_proj")?,
                b: b.narrow(0, k * d, d).ctx("head in_proj bias")?,
            })
        };
        Ok(Head {
            probe: st.get("head.probe", &[1, 1, d])?,
            att: Attention {
                q: part(0)?,
                k: part(1)?,
                v: part(2)?,
                o: st.linear("head.attention.out_proj", d, d)?,
            },
            norm: st.norm("head.layernorm", d)?,
            fc1: st.linear("head.mlp.fc1", cfg.intermediate_size, d)?,
            fc2: st.linear("head.mlp.fc2", d, cfg.intermediate_size)?,
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
        let (gh, gw) = (dims[2] / cfg.patch_size, dims[3] / cfg.patch_size);
        if gh == 0 || gw == 0 {
            return Err(ModelError::Invalid(format!(
                "an image of {}x{} pixels is smaller than one patch of {p}x{p}",
                dims[3],
                dims[2],
                p = cfg.patch_size
            )));
        }
        let b = dims[0];
        let mut x = pixels
            .to_dtype(DType::F32)
            .and_then(|p| p.conv2d(&self.patch_w, 0, cfg.patch_size, 1, 1))
            .ctx("patch embedding")?;
        if let Some(pb) = &self.patch_b {
            x = x
                .broadcast_add(&pb.reshape((1, cfg.hidden_size, 1, 1)).ctx("patch bias")?)
                .ctx("patch embedding")?;
        }
        let x = x
            .flatten_from(2)
            .and_then(|y| y.transpose(1, 2))
            .ctx("patch embedding")?;
        let mut h = match &self.cls {
            Some(cls) => {
                let cls = cls
                    .broadcast_as((b, 1, cfg.hidden_size))
                    .ctx("class token")?;
                Tensor::cat(&[&cls, &x], 1).ctx("class token")?
            }
            None => x,
        };
        let pos = self.positions(gh, gw).ctx("position embeddings")?;
        h = h.broadcast_add(&pos).ctx("position embeddings")?;
        if let Some(n) = &self.pre_norm {
            h = layer_norm(&h, n, cfg.layer_norm_eps).ctx("pre-norm")?;
        }
        let mut hidden_states = vec![h.clone()];
        for (i, blk) in self.blocks.iter().enumerate() {
            h = self.block(blk, &h).ctx(&format!("block {i}"))?;
            hidden_states.push(h.clone());
        }
        let eps = cfg.layer_norm_eps;
        let first = |t: &Tensor| t.narrow(1, 0, 1).and_then(|t| t.squeeze(1));
        let (last_hidden_state, pooled) = match cfg.family {
            Family::Dinov2 => {
                let last = layer_norm(&h, &self.norm, eps).ctx("final norm")?;
                let pooled = first(&last).ctx("pooled")?;
                (last, Some(pooled))
            }
            Family::Clip => {
                let pooled = first(&h)
                    .and_then(|t| layer_norm(&t, &self.norm, eps))
                    .ctx("post-norm")?;
                (h, Some(pooled))
            }
            Family::Siglip => {
                let last = layer_norm(&h, &self.norm, eps).ctx("post-norm")?;
                let pooled = match &self.head {
                    Some(head) => Some(self.pool(head, &last).ctx("pooling head")?),
                    None => None,
                };
                (last, pooled)
            }
        };
        Ok(VisionOutput {
            hidden_states,
            last_hidden_state,
            pooled,
        })
    }

    /// The position embeddings for a grid of `gh` x `gw` patches: as stored at the trained size, else the
    /// patch grid resampled bicubically as transformers' `interpolate_pos_encoding` does (PyTorch's
    /// `interpolate(mode="bicubic", align_corners=False)`: half-pixel centres, a = -0.75, edges repeated), the
    /// class position kept. Made of tensor products, so a trained tower's positions get their gradient.
    fn positions(&self, gh: usize, gw: usize) -> candle_core::Result<Tensor> {
        let side = self.cfg.image_size / self.cfg.patch_size;
        if gh == side && gw == side {
            return Ok(self.pos.clone());
        }
        let d = self.cfg.hidden_size;
        let first = usize::from(self.cls.is_some());
        let grid = self
            .pos
            .narrow(1, first, side * side)?
            .reshape((side, side * d))?;
        let dev = self.pos.device();
        let rows = Tensor::from_vec(bicubic_matrix(side, gh), (gh, side), dev)?;
        let cols = Tensor::from_vec(bicubic_matrix(side, gw), (gw, side), dev)?;
        // rows: [gh, side] x [side, side*d]; then columns the same way on the transposed grid
        let g = rows.matmul(&grid)?.reshape((gh, side, d))?;
        let g = g.transpose(0, 1)?.contiguous()?.reshape((side, gh * d))?;
        let g = cols.matmul(&g)?.reshape((gw, gh, d))?.transpose(0, 1)?;
        let g = g.contiguous()?.reshape((1, gh * gw, d))?;
        if first == 1 {
            Tensor::cat(&[&self.pos.narrow(1, 0, 1)?, &g], 1)
        } else {
            Ok(g)
        }
    }

    fn pool(&self, head: &Head, last: &Tensor) -> candle_core::Result<Tensor> {
        let cfg = &self.cfg;
        let b = last.dim(0)?;
        let probe = head
            .probe
            .broadcast_as((b, 1, cfg.hidden_size))?
            .contiguous()?;
        let y = attend(&probe, last, &head.att, cfg.heads)?;
        let m = layer_norm(&y, &head.norm, cfg.layer_norm_eps)?;
        let m = head
            .fc2
            .forward(&cfg.activation.apply(&head.fc1.forward(&m)?)?)?;
        (y + m)?.squeeze(1)
    }

    fn block(&self, blk: &Block, x: &Tensor) -> candle_core::Result<Tensor> {
        let cfg = &self.cfg;
        let h = layer_norm(x, &blk.norm1, cfg.layer_norm_eps)?;
        let mut y = attend(&h, &h, &blk.att, cfg.heads)?;
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
