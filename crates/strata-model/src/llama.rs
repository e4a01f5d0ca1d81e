//! The Llama decoder. Reads top to bottom like nanoGPT; every reshape carries its shape.
//! Weight names follow Hugging Face (`model.layers.{i}.self_attn.q_proj.weight`, …) through `vb.pp`.

use candle_core::{Device, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::lora::LoraPair;
use crate::qweight::{QuantMatrix, Weight};
use crate::{Context, LlamaConfig, Result};

/// RMSNorm by the fused kernel with its own backward (candle's fused `rms_norm` has none); the gain is
/// `shift + w` (Gemma: 1 + w, its gains stored around 0).
struct RmsNorm {
    weight: Tensor,
    eps: f64,
    shift: f32,
}

impl RmsNorm {
    fn load(vb: &VarBuilder, size: usize, cfg: &LlamaConfig) -> Result<Self> {
        let shift = cfg.norm_shift();
        let weight = vb
            .get_with_hints(size, "weight", Init::Const(f64::from(1.0 - shift)))
            .ctx(&format!("{}.weight", vb.prefix()))?;
        Ok(Self {
            weight,
            eps: cfg.rms_norm_eps,
            shift,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.shift == 0.0 {
            return crate::fused::rms_norm(x, &self.weight, self.eps);
        }
        let gain = self
            .weight
            .affine(1.0, f64::from(self.shift))
            .ctx("norm gain")?;
        crate::fused::rms_norm(x, &gain, self.eps)
    }
}

/// The init hint of weight `vb.prefix()`.weight, from the one rule in [`init_std`]. It only matters for a
/// fresh `VarMap`; `seeded_init` then applies the same rule deterministically.
fn weight_init(vb: &VarBuilder, cfg: &LlamaConfig) -> Init {
    match init_std(&format!("{}.weight", vb.prefix()), cfg) {
        Some(stdev) => Init::Randn { mean: 0.0, stdev },
        None => Init::Const(1.0),
    }
}

/// y = x·Wᵀ (+ b) over the last axis: one fused op ([`crate::matmul::linear`]), so (B, T, in) is multiplied as
/// (B·T, in) and the weight's gradient is one product. (candle_nn's `Linear` broadcasts W over the batch
/// instead, and its backward then builds a (B, out, in) gradient to sum over B.)
struct Linear {
    weight: Weight, // (out, in)
    bias: Option<Tensor>,
    /// A LoRA adapter on this projection: y += s·(x·Aᵀ)·Bᵀ.
    lora: Option<LoraPair>,
}

impl Linear {
    fn new(weight: Weight, bias: Option<Tensor>) -> Self {
        Self {
            weight,
            bias,
            lora: None,
        }
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = match &self.lora {
            Some(l) => crate::matmul::lora_linear(x, &self.weight, l)?,
            None => crate::matmul::weight_linear(x, &self.weight)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// The adapter a model is built with: its config, its A/B tensors keyed as [`crate::lora::adapter_shapes`]
/// names them (variables when training, constants when serving), and the dropout switch they share.
pub struct LoraWeights<'a> {
    pub config: &'a crate::lora::LoraConfig,
    pub tensors: &'a std::collections::HashMap<String, Tensor>,
    pub state: std::sync::Arc<crate::lora::LoraState>,
    /// QLoRA: base weights held in quantised blocks, by HF name (`….q_proj.weight`, the embeddings); these
    /// are taken from here instead of the `VarBuilder`.
    pub quantized: Option<&'a QuantBase>,
}

/// Quantised base weights by Hugging Face name.
pub type QuantBase = std::collections::HashMap<String, std::sync::Arc<QuantMatrix>>;

/// Weight `name` of shape `dims`: from the quantised base when it holds it, else from `vb`.
fn weight_of(
    vb: &VarBuilder,
    name: &str,
    dims: (usize, usize),
    quantized: Option<&QuantBase>,
    init: impl FnOnce() -> Init,
) -> Result<Weight> {
    let key = if vb.prefix().is_empty() {
        name.to_string()
    } else {
        format!("{}.{name}", vb.prefix())
    };
    if let Some(q) = quantized.and_then(|q| q.get(&key)) {
        if q.dims() != dims {
            return Err(crate::ModelError::Invalid(format!(
                "{key}: quantised as {:?}, the config needs {dims:?}",
                q.dims()
            )));
        }
        return Ok(Weight::Quant(q.clone()));
    }
    Ok(Weight::Dense(
        vb.get_with_hints(dims, name, init()).ctx(&key)?,
    ))
}

/// A projection `name` of shape (out, in), with a bias when `bias` (Qwen2's q/k/v).
fn linear(
    vb: &VarBuilder,
    name: &str,
    (out_dim, in_dim): (usize, usize),
    cfg: &LlamaConfig,
    bias: bool,
    lora: Option<&LoraWeights>,
) -> Result<Linear> {
    let vb = vb.pp(name);
    let w = weight_of(
        &vb,
        "weight",
        (out_dim, in_dim),
        lora.and_then(|l| l.quantized),
        || weight_init(&vb, cfg),
    )?;
    let b = if bias {
        Some(
            vb.get_with_hints(out_dim, "bias", Init::Const(0.0))
                .ctx(&format!("{}.bias", vb.prefix()))?,
        )
    } else {
        None
    };
    let mut lin = Linear::new(w, b);
    if let Some(l) = lora.filter(|l| l.config.targets(name)) {
        let module = vb.prefix();
        let get = |part: &str| {
            let key = format!("{module}.{part}.weight");
            l.tensors
                .get(&key)
                .cloned()
                .ok_or_else(|| crate::ModelError::Invalid(format!("LoRA: {key} is missing")))
        };
        lin.lora = Some(LoraPair {
            a: get("lora_A")?,
            b: get("lora_B")?,
            scale: l.config.scale(),
            dropout: l.config.lora_dropout,
            index: module.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            }),
            state: l.state.clone(),
        });
    }
    Ok(lin)
}

/// Rotary position embedding, Hugging Face's "rotate half" layout.
struct Rope {
    cos: Tensor, // (max_pos, head_dim)
    sin: Tensor, // (max_pos, head_dim)
}

impl Rope {
    fn new(inv_freq: &[f64], cfg: &LlamaConfig, device: &Device) -> Result<Self> {
        let hd = cfg.head_dim();
        let max = cfg.max_position_embeddings;
        let mut cos = Vec::with_capacity(max * hd);
        let mut sin = Vec::with_capacity(max * hd);
        for p in 0..max {
            for _ in 0..2 {
                for f in inv_freq {
                    let a = p as f64 * f; // in f64: exact enough at long positions
                    #[allow(clippy::cast_possible_truncation)]
                    {
                        cos.push(a.cos() as f32);
                        sin.push(a.sin() as f32);
                    }
                }
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (max, hd), device).ctx("rope cos")?,
            sin: Tensor::from_vec(sin, (max, hd), device).ctx("rope sin")?,
        })
    }
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    /// Qwen3: the RMSNorm of each query head and of each key head, before RoPE.
    qk_norm: Option<(RmsNorm, RmsNorm)>,
    /// Sliding-window attention span, if any.
    window: Option<usize>,
    /// Gemma 3's sliding-window layers: turned by the model's local RoPE table.
    local_rope: bool,
    scale: f64,
    n_head: usize,
    n_kv: usize,
    head_dim: usize,
}

impl Attention {
    fn load(
        vb: &VarBuilder,
        cfg: &LlamaConfig,
        layer: usize,
        lora: Option<&LoraWeights>,
    ) -> Result<Self> {
        let (d, nh, nkv, hd) = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.kv_heads(),
            cfg.head_dim(),
        );
        Ok(Self {
            q_proj: linear(vb, "q_proj", (nh * hd, d), cfg, cfg.qkv_bias(), lora)?,
            k_proj: linear(vb, "k_proj", (nkv * hd, d), cfg, cfg.qkv_bias(), lora)?,
            v_proj: linear(vb, "v_proj", (nkv * hd, d), cfg, cfg.qkv_bias(), lora)?,
            o_proj: linear(vb, "o_proj", (d, nh * hd), cfg, cfg.o_bias(), lora)?,
            qk_norm: if cfg.qk_norm() {
                Some((
                    RmsNorm::load(&vb.pp("q_norm"), hd, cfg)?,
                    RmsNorm::load(&vb.pp("k_norm"), hd, cfg)?,
                ))
            } else {
                None
            },
            window: cfg.window(layer),
            local_rope: cfg.local_rope(layer),
            scale: cfg.attn_scale(),
            n_head: nh,
            n_kv: nkv,
            head_dim: hd,
        })
    }

    fn forward(&self, x: &Tensor, ropes: &Ropes) -> Result<Tensor> {
        let rope = match &ropes.local {
            Some(local) if self.local_rope => local,
            _ => &ropes.global,
        };
        let (nh, nkv, hd) = (self.n_head, self.n_kv, self.head_dim);
        let q = self.q_proj.forward(x).ctx("q_proj")?; // (B, T, nh*hd)
        let k = self.k_proj.forward(x).ctx("k_proj")?; // (B, T, nkv*hd)
        let v = self.v_proj.forward(x).ctx("v_proj")?;
        let (q, k) = match &self.qk_norm {
            Some((qn, kn)) => (per_head(qn, &q, hd)?, per_head(kn, &k, hd)?),
            None => (q, k),
        };
        let scale = self.scale;
        // one fused op: RoPE, scores, causal softmax, values, with its own backward
        let y = crate::attention::causal_attention(
            &q,
            &k,
            &v,
            (&rope.cos, &rope.sin),
            (nh, nkv, hd),
            scale,
            self.window,
        )?; // (B, T, nh*hd)
        self.o_proj.forward(&y).ctx("o_proj")
    }
}

/// `norm` applied to each head of `x` (B, T, n·hd) on its own.
fn per_head(norm: &RmsNorm, x: &Tensor, hd: usize) -> Result<Tensor> {
    let (b, t, w) = x.dims3().ctx("heads")?;
    norm.forward(&x.reshape((b, t, w / hd, hd)).ctx("split heads")?)?
        .reshape((b, t, w))
        .ctx("join heads")
}

struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    /// GeGLU (Gemma's `gelu_pytorch_tanh` of the gate) rather than SwiGLU.
    gelu: bool,
}

impl Mlp {
    fn load(vb: &VarBuilder, cfg: &LlamaConfig, lora: Option<&LoraWeights>) -> Result<Self> {
        let (d, f) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: linear(vb, "gate_proj", (f, d), cfg, false, lora)?,
            up_proj: linear(vb, "up_proj", (f, d), cfg, false, lora)?,
            down_proj: linear(vb, "down_proj", (d, f), cfg, false, lora)?,
            gelu: cfg.activation() == "gelu_pytorch_tanh",
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = self.gate_proj.forward(x).ctx("gate_proj")?; // (B, T, F)
        let up = self.up_proj.forward(x).ctx("up_proj")?; // (B, T, F)
        let h = if self.gelu {
            // candle's gelu is the tanh approximation, as gelu_pytorch_tanh
            (gate.gelu().ctx("gelu")? * up).ctx("geglu")?
        } else {
            crate::fused::swiglu(&gate, &up)?
        };
        self.down_proj.forward(&h).ctx("down_proj")
    }
}

struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    /// Before the MLP; with Gemma's sandwich norms, of the attention's output before its residual add.
    post_attention_layernorm: RmsNorm,
    /// Gemma 3: the norms before and after the MLP (`pre_feedforward_layernorm`,
    /// `post_feedforward_layernorm`).
    feedforward_norms: Option<(RmsNorm, RmsNorm)>,
    mlp: Mlp,
}

/// The RoPE tables: every layer's, or the full layers' when Gemma 3's sliding-window layers have their own.
struct Ropes {
    global: Rope,
    local: Option<Rope>,
}

pub struct Llama {
    embed_tokens: Weight, // (V, D)
    layers: Vec<std::sync::Arc<Block>>,
    norm: RmsNorm,
    lm_head: Linear, // (V, D)
    rope: std::sync::Arc<Ropes>,
    cfg: LlamaConfig,
    /// Gradient checkpointing: the gradients of the blocks' variables, left by their recomputed backward
    /// (see [`Llama::set_checkpointing`]).
    checkpoint: Option<GradSink>,
}

/// Gradients of variables that a checkpointed block's backward computed inside its op, by tensor id.
type GradSink = std::sync::Arc<std::sync::Mutex<Vec<(candle_core::TensorId, Tensor)>>>;

impl Block {
    /// One decoder layer: x (B, T, D) → x + attention, then + MLP (Gemma 3: each normalised first).
    fn forward(&self, x: &Tensor, rope: &Ropes) -> Result<Tensor> {
        let h = self.input_layernorm.forward(x)?;
        let h = self.self_attn.forward(&h, rope)?;
        if let Some((pre, post)) = &self.feedforward_norms {
            // Gemma 3: each sub-layer's output normalised before its residual add
            let h = self.post_attention_layernorm.forward(&h)?;
            let x = (x + h).ctx("residual attn")?;
            let h = post.forward(&self.mlp.forward(&pre.forward(&x)?)?)?;
            return (x + h).ctx("residual mlp");
        }
        let x = (x + h).ctx("residual attn")?;
        let h = self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&x)?)?;
        (x + h).ctx("residual mlp")
    }
}

/// A block as one op that keeps only its input (gradient checkpointing, as Hugging Face's
/// `gradient_checkpointing`): forward runs the block and lets its activations go; backward runs it again
/// with a graph from the saved input, back-propagates the incoming gradient through it, returns the
/// input's gradient and leaves the block's variables' gradients in the sink.
struct CheckpointBlock {
    block: std::sync::Arc<Block>,
    rope: std::sync::Arc<Ropes>,
    sink: GradSink,
}

fn candle_err(e: &crate::ModelError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

impl candle_core::CustomOp1 for CheckpointBlock {
    fn name(&self) -> &'static str {
        "checkpoint-block"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let x = crate::fused::f32_slice(s, l, self.name())?;
        let x = Tensor::from_vec(x.to_vec(), l.shape(), &Device::Cpu)?;
        let y = self
            .block
            .detached()
            .forward(&x, &self.rope)
            .map_err(|e| candle_err(&e))?;
        let v = y.flatten_all()?.to_vec1::<f32>()?;
        Ok((candle_core::CpuStorage::F32(v), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let xv = candle_core::Var::from_tensor(&x.detach())?;
        let y = self
            .block
            .forward(xv.as_tensor(), &self.rope)
            .map_err(|e| candle_err(&e))?;
        // the block's variables (the recomputed graph's leaves that train): only their gradients go to
        // the sink; backward also leaves zero-started gradients of constants in its store (a built-in op's
        // frozen argument), activation-sized, which must die with this call
        let vars: Vec<candle_core::TensorId> = y
            .sorted_nodes()
            .into_iter()
            .filter(|t| t.is_variable() && t.id() != xv.as_tensor().id())
            .map(Tensor::id)
            .collect();
        let mut grads = (y * grad.detach())?.sum_all()?.backward()?;
        let dx = grads.remove(xv.as_tensor());
        let mut sink = self
            .sink
            .lock()
            .map_err(|_| candle_core::Error::Msg("checkpoint: a poisoned lock".into()))?;
        for id in vars {
            if let Some(g) = grads.get_id(id) {
                sink.push((id, g.clone()));
            }
        }
        Ok(dx)
    }
}

/// Copies of the model's parts whose tensors share storage with the originals but take no part in autograd
/// (see [`Llama::detached`]).
trait Detach {
    fn detached(&self) -> Self;
}

impl Detach for RmsNorm {
    fn detached(&self) -> Self {
        Self {
            weight: self.weight.detach(),
            eps: self.eps,
            shift: self.shift,
        }
    }
}

impl Detach for Rope {
    fn detached(&self) -> Self {
        Self {
            cos: self.cos.clone(),
            sin: self.sin.clone(),
        }
    }
}

impl Detach for Linear {
    fn detached(&self) -> Self {
        Self {
            weight: self.weight.detach(),
            bias: self.bias.as_ref().map(Tensor::detach),
            lora: self.lora.as_ref().map(|l| LoraPair {
                a: l.a.detach(),
                b: l.b.detach(),
                scale: l.scale,
                dropout: l.dropout,
                index: l.index,
                state: l.state.clone(),
            }),
        }
    }
}

impl Detach for Block {
    fn detached(&self) -> Self {
        let a = &self.self_attn;
        Self {
            input_layernorm: self.input_layernorm.detached(),
            self_attn: Attention {
                q_proj: a.q_proj.detached(),
                k_proj: a.k_proj.detached(),
                v_proj: a.v_proj.detached(),
                o_proj: a.o_proj.detached(),
                qk_norm: a
                    .qk_norm
                    .as_ref()
                    .map(|(q, k)| (q.detached(), k.detached())),
                window: a.window,
                local_rope: a.local_rope,
                scale: a.scale,
                n_head: a.n_head,
                n_kv: a.n_kv,
                head_dim: a.head_dim,
            },
            post_attention_layernorm: self.post_attention_layernorm.detached(),
            feedforward_norms: self
                .feedforward_norms
                .as_ref()
                .map(|(a, b)| (a.detached(), b.detached())),
            mlp: Mlp {
                gate_proj: self.mlp.gate_proj.detached(),
                up_proj: self.mlp.up_proj.detached(),
                down_proj: self.mlp.down_proj.detached(),
                gelu: self.mlp.gelu,
            },
        }
    }
}

/// The initial standard deviation of a weight, by its HF name (nanoGPT/GPT-2 practice): N(0, 0.02) for
/// embeddings and input projections, scaled by 1/sqrt(2 L) for the projections that write into the residual
/// stream, and `None` for norm gains (initialised to one).
#[must_use]
pub fn init_std(name: &str, cfg: &LlamaConfig) -> Option<f64> {
    if name.ends_with("layernorm.weight") || name.ends_with("norm.weight") {
        return None;
    }
    #[allow(clippy::cast_precision_loss)]
    let residual_scale = (2.0 * cfg.num_hidden_layers as f64).sqrt();
    if name.ends_with("o_proj.weight") || name.ends_with("down_proj.weight") {
        Some(cfg.initializer_range / residual_scale)
    } else {
        Some(cfg.initializer_range)
    }
}

/// `n` normal values of standard deviation `std` drawn from `seed` and `name` (each tensor its own stream,
/// so adding a tensor changes no other's values).
#[must_use]
pub fn seeded_normal(name: &str, seed: u64, n: usize, std: f64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ h);
    // Box–Muller: two uniforms → two standard normals
    let mut v = Vec::with_capacity(n + 1);
    while v.len() < n {
        let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.random();
        let r = (-2.0 * u1.ln()).sqrt();
        let a = std::f64::consts::TAU * u2;
        #[allow(clippy::cast_possible_truncation)]
        v.extend([(r * a.cos() * std) as f32, (r * a.sin() * std) as f32]);
    }
    v.truncate(n);
    v
}

/// Re-initialises every variable from `seed` (candle's CPU generator cannot be seeded), so a training run
/// is reproducible from its config alone.
///
/// # Errors
/// On a tensor failure.
pub fn seeded_init(
    vars: &std::collections::HashMap<String, candle_core::Var>,
    cfg: &LlamaConfig,
    seed: u64,
) -> Result<()> {
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for name in names {
        let var = &vars[name];
        let t = var.as_tensor();
        let value = match init_std(name, cfg) {
            _ if name.ends_with(".bias") => t.zeros_like().ctx("init zeros")?,
            None => t
                .ones_like()
                .and_then(|o| o.affine(1.0, -f64::from(cfg.norm_shift())))
                .ctx("init ones")?,
            Some(std) => {
                let v = seeded_normal(name, seed, t.elem_count(), std);
                Tensor::from_vec(v, t.shape(), t.device()).ctx("init randn")?
            }
        };
        var.set(&value).ctx(&format!("init {name}"))?;
    }
    Ok(())
}

impl Llama {
    /// Builds the model from `vb`: fresh weights from a `VarMap` builder (training) or stored ones from a
    /// safetensors builder (inference). Shapes are checked against `cfg` tensor by tensor.
    ///
    /// # Errors
    /// When the config is invalid or a weight is missing or has the wrong shape.
    pub fn load(vb: &VarBuilder, cfg: &LlamaConfig) -> Result<Self> {
        Self::load_with_lora(vb, cfg, None)
    }

    /// The model from named f32 tensors (HF names), as constants.
    ///
    /// # Errors
    /// As [`Llama::load`].
    pub fn from_weights(
        weights: std::collections::HashMap<String, Tensor>,
        cfg: &LlamaConfig,
        device: &Device,
    ) -> Result<Self> {
        Self::load(
            &VarBuilder::from_tensors(weights, candle_core::DType::F32, device),
            cfg,
        )
    }

    /// [`Llama::load`] with a LoRA adapter on the projections its config targets.
    ///
    /// # Errors
    /// As [`Llama::load`], and when an adapter tensor is missing.
    pub fn load_with_lora(
        vb: &VarBuilder,
        cfg: &LlamaConfig,
        lora: Option<&LoraWeights>,
    ) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.hidden_size;
        let m = vb.pp("model");
        let e = m.pp("embed_tokens");
        let quantized = lora.and_then(|l| l.quantized);
        let embed_tokens = weight_of(&e, "weight", (cfg.vocab_size, d), quantized, || {
            weight_init(&e, cfg)
        })?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = m.pp(format!("layers.{i}"));
            layers.push(std::sync::Arc::new(Block {
                input_layernorm: RmsNorm::load(&l.pp("input_layernorm"), d, cfg)?,
                self_attn: Attention::load(&l.pp("self_attn"), cfg, i, lora)?,
                post_attention_layernorm: RmsNorm::load(&l.pp("post_attention_layernorm"), d, cfg)?,
                feedforward_norms: if cfg.sandwich_norms() {
                    Some((
                        RmsNorm::load(&l.pp("pre_feedforward_layernorm"), d, cfg)?,
                        RmsNorm::load(&l.pp("post_feedforward_layernorm"), d, cfg)?,
                    ))
                } else {
                    None
                },
                mlp: Mlp::load(&l.pp("mlp"), cfg, lora)?,
            }));
        }
        let norm = RmsNorm::load(&m.pp("norm"), d, cfg)?;
        let lm_head = if cfg.tie_word_embeddings {
            embed_tokens.clone()
        } else {
            let h = vb.pp("lm_head");
            weight_of(&h, "weight", (cfg.vocab_size, d), quantized, || {
                weight_init(&h, cfg)
            })?
        };
        let rope = std::sync::Arc::new(Ropes {
            global: Rope::new(&cfg.rope_inv_freq(), cfg, vb.device())?,
            local: if cfg.gemma() {
                Some(Rope::new(&cfg.rope_local_inv_freq(), cfg, vb.device())?)
            } else {
                None
            },
        });
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head: Linear::new(lm_head, None),
            rope,
            cfg: cfg.clone(),
            checkpoint: None,
        })
    }

    #[must_use]
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Gradient checkpointing while training (Hugging Face's `gradient_checkpointing`): each block keeps
    /// only its input for backward and runs again there, trading a second forward of the blocks for their
    /// activations. The blocks' variables then get their gradients from [`Llama::take_checkpoint_grads`].
    pub fn set_checkpointing(&mut self, on: bool) {
        self.checkpoint = on.then(GradSink::default);
    }

    /// Moves the gradients the checkpointed blocks' backward computed into `grads` (call after each
    /// `backward`); nothing when checkpointing is off.
    ///
    /// # Errors
    /// On a poisoned lock (a panic in an earlier backward).
    pub fn take_checkpoint_grads(
        &self,
        grads: &mut candle_core::backprop::GradStore,
    ) -> Result<()> {
        let Some(sink) = &self.checkpoint else {
            return Ok(());
        };
        let mut sink = sink
            .lock()
            .map_err(|_| crate::ModelError::Invalid("checkpoint: a poisoned lock".into()))?;
        for (id, g) in sink.drain(..) {
            grads.insert_id(id, g);
        }
        Ok(())
    }

    /// The same model with its weights (variables while training) detached from autograd, sharing their
    /// storage: a forward of it builds no graph, so evaluation during training keeps no activations alive
    /// (a held-out window of 1,024 tokens on SmolLM2 would otherwise hold every layer's attention matrix).
    #[must_use]
    pub fn detached(&self) -> Self {
        Self {
            embed_tokens: self.embed_tokens.detach(),
            layers: self
                .layers
                .iter()
                .map(|b| std::sync::Arc::new(b.detached()))
                .collect(),
            norm: self.norm.detached(),
            lm_head: self.lm_head.detached(),
            rope: std::sync::Arc::new(Ropes {
                global: self.rope.global.detached(),
                local: self.rope.local.as_ref().map(Detach::detached),
            }),
            cfg: self.cfg.clone(),
            checkpoint: None,
        }
    }

    #[must_use]
    pub fn device(&self) -> &Device {
        self.norm.weight.device()
    }

    /// Training/eval forward: ids (B, T) → logits (B, T, V).
    ///
    /// # Errors
    /// When T exceeds the context or on a shape error.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.run(ids)
    }

    fn run(&self, ids: &Tensor) -> Result<Tensor> {
        self.forward_embeds(&self.embed(ids)?)
    }

    /// The token embeddings of ids (B, T): (B, T, D).
    ///
    /// # Errors
    /// When T exceeds the context or on a shape error.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2().ctx("ids must be (B, T)")?;
        self.check_len(t)?;
        let d = self.cfg.hidden_size;
        let x = match &self.embed_tokens {
            Weight::Dense(e) => e
                .embedding(&ids.flatten_all().ctx("ids flatten")?)
                .and_then(|x| x.reshape((b, t, d)))
                .ctx("embedding")?,
            Weight::Quant(q) => {
                // the rows looked up, dequantised (a frozen table: no gradient)
                let ids = ids
                    .flatten_all()
                    .and_then(|i| i.to_dtype(candle_core::DType::U32))
                    .and_then(|i| i.to_vec1::<u32>())
                    .ctx("ids")?;
                let mut v = vec![0f32; ids.len() * d];
                for (row, &id) in v.chunks_mut(d.max(1)).zip(&ids) {
                    if id as usize >= q.dims().0 {
                        return Err(crate::ModelError::Invalid(format!(
                            "token id {id} is outside the vocabulary of {}",
                            q.dims().0
                        )));
                    }
                    q.dequantize_rows_into(id as usize, row);
                }
                Tensor::from_vec(v, (b, t, d), self.device()).ctx("embedding")?
            }
        };
        match self.cfg.embed_scale() {
            Some(s) => x.affine(f64::from(s), 0.0).ctx("embedding scale"),
            None => Ok(x),
        }
    }

    fn check_len(&self, t: usize) -> Result<()> {
        if t > self.cfg.max_position_embeddings {
            return Err(crate::ModelError::TooLong {
                needed: t,
                max: self.cfg.max_position_embeddings,
            });
        }
        Ok(())
    }

    /// The forward from input embeddings (B, T, D) — token embeddings, or a LLaVA model's with image
    /// features spliced in — to logits (B, T, V).
    ///
    /// # Errors
    /// When T exceeds the context or on a shape error.
    pub fn forward_embeds(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.hidden(x)?;
        self.lm_head.forward(&h).ctx("lm_head") // (B, T, V)
    }

    /// The final hidden states (B, T, D), normalised: what the LM head reads.
    fn hidden(&self, x: &Tensor) -> Result<Tensor> {
        let (_, t, _) = x.dims3().ctx("embeddings must be (B, T, D)")?;
        self.check_len(t)?;
        let mut x = x.clone();
        for block in &self.layers {
            x = match &self.checkpoint {
                Some(sink) => {
                    // the first block's input tracks a graph even when the embeddings are frozen, so
                    // backward reaches every block's op
                    if !x.track_op() {
                        x = candle_core::Var::from_tensor(&x)
                            .ctx("checkpoint")?
                            .into_inner();
                    }
                    x.contiguous()
                        .and_then(|x| {
                            x.apply_op1(CheckpointBlock {
                                block: block.clone(),
                                rope: self.rope.clone(),
                                sink: sink.clone(),
                            })
                        })
                        .ctx("checkpointed block")?
                }
                None => block.forward(&x, &self.rope)?,
            };
        }
        self.norm.forward(&x) // (B, T, D)
    }

    /// Summed next-token loss of ids (B, T) against targets (B, T) ([`crate::fused::IGNORE`] where a
    /// position does not count) and the number that count: the training loss without a logits tensor in
    /// the graph when the LM head is frozen (see [`Llama::embeds_loss_sum`]).
    ///
    /// # Errors
    /// As [`Llama::forward`], and on a target outside the vocabulary.
    pub fn loss_sum(&self, ids: &Tensor, targets: &Tensor) -> Result<(Tensor, usize)> {
        self.embeds_loss_sum(&self.embed(ids)?, targets)
    }

    /// [`Llama::loss_sum`] from input embeddings. A frozen head (LoRA, QLoRA, evaluation) and the
    /// cross-entropy run as one op that keeps one copy of the logits for backward (none under gradient
    /// checkpointing: they are computed again there); a head that trains goes through the logits.
    ///
    /// # Errors
    /// As [`Llama::forward_embeds`], and on a target outside the vocabulary.
    pub fn embeds_loss_sum(&self, x: &Tensor, targets: &Tensor) -> Result<(Tensor, usize)> {
        let h = self.hidden(x)?;
        if self.lm_head.bias.is_none() && self.lm_head.lora.is_none() {
            let (b, t, _) = h.dims3().ctx("hidden")?;
            let targets = targets
                .reshape(b * t)
                .and_then(|t| t.to_dtype(candle_core::DType::U32))
                .ctx("targets")?;
            let count = targets
                .to_vec1::<u32>()
                .ctx("targets")?
                .iter()
                .filter(|&&t| t != crate::fused::IGNORE)
                .count();
            let rows = crate::matmul::head_cross_entropy(
                &h,
                &self.lm_head.weight,
                &targets,
                self.checkpoint.is_some(),
            )
            .ctx("lm_head loss")?;
            if let Some(rows) = rows {
                return Ok((rows.sum_all().ctx("loss sum")?, count));
            }
        }
        next_token_loss_sum(&self.lm_head.forward(&h).ctx("lm_head")?, targets)
    }
}

/// Cross-entropy of next-token prediction: logits (B, T, V) against targets (B, T), mean over the positions
/// that count (targets equal to [`crate::fused::IGNORE`] do not).
///
/// # Errors
/// On a shape mismatch, or when no target counts.
pub fn next_token_loss(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (sum, count) = next_token_loss_sum(logits, targets)?;
    if count == 0 {
        return Err(crate::ModelError::Invalid(
            "no target token counts toward the loss".into(),
        ));
    }
    #[allow(clippy::cast_precision_loss)]
    (sum / count as f64).ctx("loss mean")
}

/// Summed cross-entropy and the number of targets counted (for gradient accumulation, which divides by
/// the targets of all micro-batches).
///
/// # Errors
/// On a shape mismatch.
pub fn next_token_loss_sum(logits: &Tensor, targets: &Tensor) -> Result<(Tensor, usize)> {
    let (b, t, _v) = logits.dims3().ctx("logits")?;
    crate::fused::cross_entropy_sum(logits, &targets.reshape(b * t).ctx("targets reshape")?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::tiny;

    #[test]
    fn a_detached_model_gives_the_same_logits_without_a_graph() {
        let cfg = tiny();
        let (vm, model) = crate::test_util::new_model(&cfg);
        let ids = Tensor::new(&[[3u32, 7, 1, 9, 4]], &Device::Cpu).unwrap();
        let tracked = model.forward(&ids).unwrap();
        let detached = model.detached().forward(&ids).unwrap();
        assert!(tracked.track_op(), "the training model builds a graph");
        assert!(!detached.track_op(), "the detached one must not");
        let (a, b): (Vec<f32>, Vec<f32>) = (
            tracked.flatten_all().unwrap().to_vec1().unwrap(),
            detached.flatten_all().unwrap().to_vec1().unwrap(),
        );
        assert_eq!(a, b);
        // it shares the weights: a change to a variable shows in the detached model's next forward
        let (name, var) = vm
            .data()
            .lock()
            .unwrap()
            .iter()
            .find(|(n, _)| n.contains("lm_head"))
            .map(|(n, v)| (n.clone(), v.clone()))
            .unwrap();
        var.set(&var.as_tensor().zeros_like().unwrap()).unwrap();
        let after = crate::test_util::logits(&model.detached(), &ids);
        assert!(after.iter().all(|&v| v == 0.0), "{name}");
    }

    #[test]
    fn causality_future_tokens_do_not_change_past_logits() {
        let cfg = tiny();
        let (_, model) = crate::test_util::new_model(&cfg);
        let a = model
            .forward(&Tensor::new(&[[1u32, 2, 3, 4]], &Device::Cpu).unwrap())
            .unwrap();
        let b = model
            .forward(&Tensor::new(&[[1u32, 2, 3, 40]], &Device::Cpu).unwrap())
            .unwrap();
        let diff = (a.narrow(1, 0, 3).unwrap() - b.narrow(1, 0, 3).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-6, "{diff}");
        let last = (a.narrow(1, 3, 1).unwrap() - b.narrow(1, 3, 1).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(last > 1e-6);
    }

    #[test]
    fn seeded_init_is_reproducible_and_has_the_intended_scale() {
        let cfg = tiny();
        let init = |seed| {
            let (vm, _) = crate::test_util::new_model(&cfg);
            let vars = vm.data().lock().unwrap().clone();
            seeded_init(&vars, &cfg, seed).unwrap();
            let get = |n: &str| {
                vars[n]
                    .as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            };
            (
                get("model.embed_tokens.weight"),
                get("model.layers.0.mlp.down_proj.weight"),
                get("model.norm.weight"),
            )
        };
        let (a, down, norm) = init(1);
        assert_eq!(a, init(1).0);
        assert_ne!(a, init(2).0);
        assert!(norm.iter().all(|&x| (x - 1.0).abs() < f32::EPSILON));
        let sd = |v: &[f32]| {
            (v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
        };
        assert!((sd(&a) - 0.02).abs() < 0.002, "{}", sd(&a)); // 1600 samples: sd of the estimate ≈ 0.00035
        assert!((sd(&down) - 0.01).abs() < 0.0015, "{}", sd(&down)); // 0.02 / sqrt(2 * 2 layers)
    }

    #[test]
    fn every_parameter_gets_a_gradient() {
        // candle's fused norm/softmax/rope stop gradients silently (STACK.md trap 1); this catches a regression.
        let cfg = tiny();
        let (vm, model) = crate::test_util::new_model(&cfg);
        let ids = Tensor::new(&[[1u32, 5, 9, 2, 7, 3]], &Device::Cpu).unwrap();
        let logits = model.forward(&ids.narrow(1, 0, 5).unwrap()).unwrap();
        let loss = next_token_loss(&logits, &ids.narrow(1, 1, 5).unwrap()).unwrap();
        let grads = loss.backward().unwrap();
        let data = vm.data().lock().unwrap();
        assert_eq!(data.len(), 2 * 9 + 3);
        for (name, var) in data.iter() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient"));
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm > 0.0, "{name}: zero gradient");
        }
        // the initial loss of a random model is about ln(V)
        let l = loss.to_scalar::<f32>().unwrap();
        assert!((l - 50f32.ln()).abs() < 0.5, "{l}");
    }

    /// Gradient checkpointing changes nothing but memory: the same loss and the same gradient for every
    /// variable in `vars`, and the loss through the fused head equals the loss through the logits.
    fn assert_checkpointing_changes_nothing(
        model: &mut Llama,
        vars: &[(String, candle_core::Var)],
    ) {
        let ids = Tensor::new(&[[1u32, 5, 9, 2, 7, 3], [4, 4, 8, 0, 6, 1]], &Device::Cpu).unwrap();
        let (x, y) = (ids.narrow(1, 0, 5).unwrap(), ids.narrow(1, 1, 5).unwrap());
        let run = |model: &mut Llama, on: bool, vars: &[(String, candle_core::Var)]| {
            model.set_checkpointing(on);
            // through the logits, and through loss_sum (the fused head when it is frozen): the same loss
            let (sum, count) = model.loss_sum(&x, &y).unwrap();
            let loss = next_token_loss(&model.forward(&x).unwrap(), &y).unwrap();
            #[allow(clippy::cast_precision_loss)]
            let fused = sum.to_scalar::<f32>().unwrap() / count as f32;
            assert!((fused - loss.to_scalar::<f32>().unwrap()).abs() < 1e-5);
            let loss = (sum / count as f64).unwrap();
            let mut grads = loss.backward().unwrap();
            if on {
                // only variables' gradients wait in the sink (constants' zero-started ones, activation-
                // sized, once piled up there: 2 GB on SmolLM2 at 4 × 256)
                let held = model.checkpoint.as_ref().unwrap().lock().unwrap().len();
                assert!(
                    held > 0 && held <= vars.len(),
                    "{held} held for {} variables",
                    vars.len()
                );
            }
            model.take_checkpoint_grads(&mut grads).unwrap();
            let g: Vec<Vec<f32>> = vars
                .iter()
                .map(|(name, v)| {
                    grads
                        .get(v.as_tensor())
                        .unwrap_or_else(|| panic!("{name}: no gradient (checkpointing {on})"))
                        .flatten_all()
                        .unwrap()
                        .to_vec1()
                        .unwrap()
                })
                .collect();
            (loss.to_scalar::<f32>().unwrap(), g)
        };
        let (l0, g0) = run(model, false, vars);
        let (l1, g1) = run(model, true, vars);
        assert!((l0 - l1).abs() <= 1e-6, "{l0} {l1}");
        for ((name, _), (a, b)) in vars.iter().zip(g0.iter().zip(&g1)) {
            let d = a
                .iter()
                .zip(b)
                .map(|(u, v)| (u - v).abs())
                .fold(0f32, f32::max);
            assert!(d <= 1e-6, "{name}: {d}");
        }
        // the sink is emptied by each take
        assert!(model
            .checkpoint
            .as_ref()
            .unwrap()
            .lock()
            .unwrap()
            .is_empty());
    }

    /// Gradient checkpointing of a full model (every weight a variable), plain and Gemma-shaped.
    #[test]
    fn checkpointed_blocks_give_the_same_loss_and_gradients() {
        for gemma in [false, true] {
            let mut cfg = tiny();
            if gemma {
                cfg.architectures = vec!["Gemma3ForCausalLM".into()];
                cfg.model_type = "gemma3_text".into();
            }
            let (vm, mut model) = crate::test_util::new_model(&cfg);
            let vars: Vec<(String, candle_core::Var)> = vm
                .data()
                .lock()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            assert_checkpointing_changes_nothing(&mut model, &vars);
        }
    }

    /// Gradient checkpointing under LoRA: frozen constants, the adapter's A and B (B non-zero) the only
    /// variables, the first block's input made to track.
    #[test]
    fn checkpointed_lora_blocks_give_the_same_loss_and_gradients() {
        let cfg = tiny();
        let (vm, _) = crate::test_util::new_model(&cfg);
        let base = crate::test_util::tensors_of(&vm);
        let lc = crate::lora::LoraConfig {
            target_modules: crate::lora::TARGETS
                .iter()
                .map(|s| (*s).to_string())
                .collect(),
            ..Default::default()
        };
        let vars: Vec<(String, candle_core::Var)> = crate::lora::adapter_shapes(&cfg, &lc)
            .into_iter()
            .enumerate()
            .map(|(i, (k, (r, c)))| {
                let t = crate::test_util::randn(&[r, c], 100 + i as u64);
                (k, candle_core::Var::from_tensor(&t).unwrap())
            })
            .collect();
        let tensors = vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        let lw = crate::LoraWeights {
            config: &lc,
            tensors: &tensors,
            state: std::sync::Arc::default(),
            quantized: None,
        };
        let vb = VarBuilder::from_tensors(base, candle_core::DType::F32, &Device::Cpu);
        let mut model = Llama::load_with_lora(&vb, &cfg, Some(&lw)).unwrap();
        assert_checkpointing_changes_nothing(&mut model, &vars);
    }
}
