//! The model config: mirrors the fields of a Hugging Face `LlamaForCausalLM` `config.json`, so the file
//! Strata writes is the file transformers reads.

use serde::{Deserialize, Serialize};

use crate::{ModelError, Result};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LlamaConfig {
    #[serde(default = "default_architectures")]
    pub architectures: Vec<String>,
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub bos_token_id: Option<TokenIds>,
    /// One id or several (Llama 3 ends on either `<|end_of_text|>` or `<|eot_id|>`).
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default = "default_dtype")]
    pub torch_dtype: String,
    #[serde(default = "default_init")]
    pub initializer_range: f64,
    /// RoPE frequency scaling for long contexts ("linear" or "llama3").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
    /// Attend only to the last `sliding_window` positions (Mistral; Qwen2 when `use_sliding_window`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_sliding_window: Option<bool>,
    /// Qwen2: the first `max_window_layers` layers attend in full, the rest within the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_window_layers: Option<usize>,
    /// Per layer, `full_attention` or `sliding_attention` (newer transformers configs; overrides the above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<String>>,
    /// Gemma's name for `hidden_act` (`gelu_pytorch_tanh`); when present it is the one that counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_activation: Option<String>,
    /// Gemma 3: attention scores are scaled by `query_pre_attn_scalar^-1/2` rather than `head_dim^-1/2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_pre_attn_scalar: Option<f64>,
    /// Gemma 3: the RoPE base of the sliding-window layers (`rope_theta` is the full layers').
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_local_base_freq: Option<f64>,
    /// Gemma 3 without `layer_types`: every `sliding_window_pattern`-th layer attends in full.
    #[serde(
        default,
        alias = "_sliding_window_pattern",
        skip_serializing_if = "Option::is_none"
    )]
    pub sliding_window_pattern: Option<usize>,
    /// Gemma 2's soft caps, refused when set (Gemma 3 has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_logit_softcapping: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_logit_softcapping: Option<f64>,
    /// Gemma 3 as an encoder (EmbeddingGemma), refused when true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_bidirectional_attention: Option<bool>,
}

/// A token id, or several, as HF configs write `eos_token_id`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    #[must_use]
    pub fn ids(&self) -> Vec<u32> {
        match self {
            TokenIds::One(i) => vec![*i],
            TokenIds::Many(v) => v.clone(),
        }
    }
    #[must_use]
    pub fn first(&self) -> Option<u32> {
        self.ids().first().copied()
    }
}

/// `rope_scaling` of an HF config. Both spellings of the kind (`type`, `rope_type`) are accepted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RopeScaling {
    #[serde(alias = "type")]
    pub rope_type: String,
    pub factor: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_freq_factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_freq_factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_max_position_embeddings: Option<usize>,
}

/// The architectures the forward implements; all share the Llama block (Qwen3 adds an RMSNorm of each query
/// and key head before RoPE; Gemma 3 also, and norms after attention and the MLP, gains of 1 + w, GeGLU, a
/// scaled embedding, local and global layers with their own RoPE bases).
pub const ARCHITECTURES: [&str; 5] = [
    "LlamaForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "MistralForCausalLM",
    "Gemma3ForCausalLM",
];

fn default_architectures() -> Vec<String> {
    vec!["LlamaForCausalLM".into()]
}
fn default_model_type() -> String {
    "llama".into()
}
fn default_eps() -> f64 {
    1e-5
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_act() -> String {
    "silu".into()
}
fn default_dtype() -> String {
    "float32".into()
}
fn default_init() -> f64 {
    0.02
}

impl LlamaConfig {
    /// A config from the JSON of a `config.json`, also as transformers 5 writes it: RoPE's settings in
    /// `rope_parameters` (`rope_theta` and, unless its `rope_type` is "default", the scaling) rather than in
    /// `rope_theta` and `rope_scaling`. Not validated.
    ///
    /// # Errors
    /// A missing or mistyped field, named.
    pub fn from_json(v: &serde_json::Value) -> std::result::Result<Self, serde_json::Error> {
        let mut v = v.clone();
        let rp = v
            .get("rope_parameters")
            .cloned()
            .filter(serde_json::Value::is_object);
        // Gemma 3 in transformers 5: one set per layer type, the full layers' being `rope_theta`'s
        let (rp, local) = match rp {
            Some(r) if r.get("full_attention").is_some() => (
                r.get("full_attention").cloned(),
                r.get("sliding_attention")
                    .and_then(|s| s.get("rope_theta"))
                    .cloned(),
            ),
            other => (other, None),
        };
        if let (Some(theta), Some(obj)) = (local, v.as_object_mut()) {
            obj.entry("rope_local_base_freq").or_insert(theta);
        }
        if let (Some(rp), Some(obj)) = (rp, v.as_object_mut()) {
            if let Some(theta) = rp
                .get("rope_theta")
                .filter(|_| !obj.contains_key("rope_theta"))
            {
                obj.insert("rope_theta".into(), theta.clone());
            }
            let kind = rp.get("rope_type").and_then(serde_json::Value::as_str);
            if kind.is_some_and(|k| k != "default")
                && obj
                    .get("rope_scaling")
                    .is_none_or(serde_json::Value::is_null)
            {
                obj.insert("rope_scaling".into(), rp);
            }
        }
        serde_json::from_value(v)
    }

    #[must_use]
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    #[must_use]
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Checks what the forward relies on.
    ///
    /// # Errors
    /// [`ModelError::Invalid`] naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |s: String| Err(ModelError::Invalid(s));
        if !self
            .architectures
            .iter()
            .any(|a| ARCHITECTURES.contains(&a.as_str()))
        {
            return bad(format!(
                "unsupported architecture {:?} (supported: {})",
                self.architectures,
                ARCHITECTURES.join(", ")
            ));
        }
        if let Some(rs) = &self.rope_scaling {
            match rs.rope_type.as_str() {
                "linear" | "default" => {}
                "llama3" if rs.low_freq_factor.is_some() && rs.high_freq_factor.is_some() && rs.original_max_position_embeddings.is_some() => {}
                "llama3" => return bad("rope_scaling llama3 needs low_freq_factor, high_freq_factor and original_max_position_embeddings".into()),
                other => return bad(format!("rope_scaling type {other:?} is not supported (linear, llama3)")),
            }
            if rs.factor <= 0.0 {
                return bad(format!(
                    "rope_scaling factor must be > 0 (got {})",
                    rs.factor
                ));
            }
        }
        if !matches!(self.activation(), "silu" | "gelu_pytorch_tanh") {
            return bad(format!(
                "hidden_act {:?} is not supported (silu, gelu_pytorch_tanh)",
                self.activation()
            ));
        }
        for (name, v) in [
            ("final_logit_softcapping", self.final_logit_softcapping),
            ("attn_logit_softcapping", self.attn_logit_softcapping),
        ] {
            if v.is_some() {
                return bad(format!(
                    "{name} is not supported (Gemma 2; Gemma 3 has none)"
                ));
            }
        }
        if self.use_bidirectional_attention == Some(true) {
            return bad("use_bidirectional_attention (an embedding model) is not supported".into());
        }
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return bad(format!("{name} must be > 0"));
            }
        }
        self.validate_sizes()?;
        if self.kv_heads() == 0 || self.head_dim == Some(0) {
            return bad("num_key_value_heads and head_dim must be > 0".into());
        }
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return bad(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_attention_heads,
                self.kv_heads()
            ));
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad(format!(
                "hidden_size ({}) must divide by num_attention_heads ({})",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if let Some(types) = &self.layer_types {
            if types.len() != self.num_hidden_layers {
                return bad(format!(
                    "layer_types lists {} layers, the model has {}",
                    types.len(),
                    self.num_hidden_layers
                ));
            }
            if let Some(t) = types
                .iter()
                .find(|t| !matches!(t.as_str(), "full_attention" | "sliding_attention"))
            {
                return bad(format!(
                    "layer_types entry {t:?} is not supported (full_attention, sliding_attention)"
                ));
            }
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad(format!(
                "head_dim ({}) must be even for RoPE",
                self.head_dim()
            ));
        }
        Ok(())
    }

    /// Sizes come from files: bound them before anything multiplies them out or allocates by them.
    fn validate_sizes(&self) -> Result<()> {
        let bad = |s: String| Err(ModelError::Invalid(s));
        if self.max_position_embeddings > 1 << 22 {
            return bad(format!(
                "max_position_embeddings ({}) is beyond 4M positions",
                self.max_position_embeddings
            ));
        }
        if self.num_hidden_layers > 4096 || self.num_attention_heads > 4096 {
            return bad(format!(
                "num_hidden_layers ({}) and num_attention_heads ({}) must be at most 4096",
                self.num_hidden_layers, self.num_attention_heads
            ));
        }
        let head_width = self.head_dim.unwrap_or(1);
        for (what, a, b) in [
            (
                "vocab_size × hidden_size",
                self.vocab_size,
                self.hidden_size,
            ),
            (
                "intermediate_size × hidden_size",
                self.intermediate_size,
                self.hidden_size,
            ),
            (
                "num_attention_heads × head_dim",
                self.num_attention_heads,
                head_width,
            ),
            (
                "num_hidden_layers × hidden_size",
                self.num_hidden_layers,
                self.hidden_size,
            ),
        ] {
            if a.checked_mul(b).is_none_or(|n| n > 1 << 40) {
                return bad(format!("{what} ({a} × {b}) is too large"));
            }
        }
        Ok(())
    }

    fn is(&self, arch: &str) -> bool {
        self.architectures.iter().any(|a| a == arch)
    }

    /// Qwen2 always has biases on q, k, v; Llama and Qwen3 configs say so with `attention_bias` (then o has
    /// one too).
    #[must_use]
    pub fn qkv_bias(&self) -> bool {
        self.attention_bias || self.is("Qwen2ForCausalLM")
    }

    #[must_use]
    pub fn o_bias(&self) -> bool {
        self.attention_bias && !self.is("Qwen2ForCausalLM")
    }

    /// Qwen3 and Gemma 3: each query and key head is RMS-normalised (`self_attn.q_norm`, `self_attn.k_norm`,
    /// head_dim gains) before RoPE.
    #[must_use]
    pub fn qk_norm(&self) -> bool {
        self.is("Qwen3ForCausalLM") || self.gemma()
    }

    /// Gemma 3 (`Gemma3ForCausalLM`, `model_type` `gemma3_text`).
    #[must_use]
    pub fn gemma(&self) -> bool {
        self.is("Gemma3ForCausalLM")
    }

    /// The MLP's activation: `hidden_activation` (Gemma) or `hidden_act`.
    #[must_use]
    pub fn activation(&self) -> &str {
        self.hidden_activation
            .as_deref()
            .unwrap_or(&self.hidden_act)
    }

    /// What every RMSNorm adds to its stored gain: Gemma scales by 1 + w (its gains are stored around 0).
    #[must_use]
    pub fn norm_shift(&self) -> f32 {
        if self.gemma() {
            1.0
        } else {
            0.0
        }
    }

    /// Gemma: token embeddings are multiplied by √hidden_size (rounded to f32, as transformers' buffer is).
    #[must_use]
    pub fn embed_scale(&self) -> Option<f32> {
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
        self.gemma()
            .then(|| (self.hidden_size as f64).sqrt() as f32)
    }

    /// Gemma 3: a norm of the attention output before its residual add (`post_attention_layernorm`), and
    /// norms before and after the MLP (`pre_feedforward_layernorm`, `post_feedforward_layernorm`).
    #[must_use]
    pub fn sandwich_norms(&self) -> bool {
        self.gemma()
    }

    /// The factor of the attention scores: `query_pre_attn_scalar^-1/2` (Gemma 3), else `head_dim^-1/2`.
    #[must_use]
    pub fn attn_scale(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let s = self.query_pre_attn_scalar.unwrap_or(self.head_dim() as f64);
        1.0 / s.sqrt()
    }

    /// Gemma 3's sliding-window layers turn with their own RoPE base (`rope_local_base_freq`, default
    /// 10000, never scaled): their inverse frequencies, for the layers where [`Self::local_rope`] holds.
    #[must_use]
    pub fn rope_local_inv_freq(&self) -> Vec<f64> {
        self.inv_freq_of(self.rope_local_base_freq.unwrap_or(10_000.0))
    }

    /// RoPE's unscaled inverse frequencies for base `theta`: theta^(-2i/head_dim), head_dim / 2 of them.
    fn inv_freq_of(&self, theta: f64) -> Vec<f64> {
        let hd = self.head_dim();
        #[allow(clippy::cast_precision_loss)]
        (0..hd / 2)
            .map(|i| 1.0 / theta.powf(2.0 * i as f64 / hd as f64))
            .collect()
    }

    /// Whether layer `layer` turns by [`Self::rope_local_inv_freq`] (Gemma 3's sliding-window layers).
    #[must_use]
    pub fn local_rope(&self, layer: usize) -> bool {
        self.gemma() && self.window(layer).is_some()
    }

    /// The attention window of layer `layer`, when the model limits it, as transformers decides it:
    /// `layer_types` when the config lists them; for Qwen2 and Qwen3 (`Qwen2Config`, `Qwen3Config`), only
    /// with `use_sliding_window` (default false), of `sliding_window` (default 4096) on the layers from
    /// `max_window_layers` (default 28) on; for Mistral, `sliding_window` on every layer; Llama has none.
    #[must_use]
    pub fn window(&self, layer: usize) -> Option<usize> {
        if self.gemma() {
            // Gemma3TextConfig: `layer_types`, else every `sliding_window_pattern`-th (6) layer is full
            let size = self.sliding_window.unwrap_or(4096);
            let sliding = match &self.layer_types {
                Some(types) => types.get(layer).map(String::as_str) == Some("sliding_attention"),
                None => {
                    !(layer + 1).is_multiple_of(self.sliding_window_pattern.unwrap_or(6).max(1))
                }
            };
            return (sliding && size > 0).then_some(size);
        }
        let qwen2 = self.is("Qwen2ForCausalLM") || self.is("Qwen3ForCausalLM");
        let size = if qwen2 {
            if self.use_sliding_window != Some(true) {
                return None;
            }
            self.sliding_window.unwrap_or(4096)
        } else {
            self.sliding_window?
        };
        if size == 0 {
            return None;
        }
        if let Some(types) = &self.layer_types {
            return (types.get(layer).map(String::as_str) == Some("sliding_attention"))
                .then_some(size);
        }
        if qwen2 {
            return (layer >= self.max_window_layers.unwrap_or(28)).then_some(size);
        }
        (self.use_sliding_window != Some(false)).then_some(size)
    }

    /// The RoPE inverse frequencies (head_dim / 2 of them), after any `rope_scaling`.
    #[must_use]
    pub fn rope_inv_freq(&self) -> Vec<f64> {
        let base = self.inv_freq_of(self.rope_theta);
        let Some(rs) = &self.rope_scaling else {
            return base;
        };
        match rs.rope_type.as_str() {
            "linear" => base.iter().map(|f| f / rs.factor).collect(),
            "llama3" => {
                // transformers' _compute_llama3_parameters: long wavelengths scaled down by `factor`, short ones
                // kept, the band between interpolated smoothly.
                let (lo, hi) = (
                    rs.low_freq_factor.unwrap_or(1.0),
                    rs.high_freq_factor.unwrap_or(4.0),
                );
                let old = rs.original_max_position_embeddings.unwrap_or(8192) as f64;
                let (low_wavelen, high_wavelen) = (old / lo, old / hi);
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / rs.factor
                        } else {
                            let smooth = (old / wavelen - lo) / (hi - lo);
                            (1.0 - smooth) * f / rs.factor + smooth * f
                        }
                    })
                    .collect()
            }
            _ => base,
        }
    }

    /// Parameter count (weights only).
    #[must_use]
    pub fn num_parameters(&self) -> usize {
        let (d, hd) = (self.hidden_size, self.head_dim());
        let attn = d * self.num_attention_heads * hd * 2 + d * self.kv_heads() * hd * 2;
        let mlp = 3 * d * self.intermediate_size;
        let norms = if self.sandwich_norms() { 4 * d } else { 2 * d };
        let qk = if self.qk_norm() { 2 * hd } else { 0 };
        let per_layer = attn + mlp + norms + qk;
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * d
        };
        self.vocab_size * d + self.num_hidden_layers * per_layer + d + head
    }
}

/// The architecture of a model to train from scratch, as written in a pipeline config. Vocabulary and
/// special ids come from the tokenizer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub context: usize,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

impl ModelSpec {
    /// # Errors
    /// When the resulting config is invalid.
    pub fn to_config(&self, vocab_size: usize, eos: u32) -> Result<LlamaConfig> {
        let cfg = LlamaConfig {
            architectures: default_architectures(),
            model_type: default_model_type(),
            vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.layers,
            num_attention_heads: self.heads,
            num_key_value_heads: Some(self.kv_heads),
            head_dim: None,
            max_position_embeddings: self.context,
            rms_norm_eps: default_eps(),
            rope_theta: self.rope_theta,
            tie_word_embeddings: self.tie_word_embeddings,
            bos_token_id: Some(TokenIds::One(eos)),
            eos_token_id: Some(TokenIds::One(eos)),
            hidden_act: default_act(),
            attention_bias: false,
            torch_dtype: default_dtype(),
            initializer_range: default_init(),
            rope_scaling: None,
            sliding_window: None,
            use_sliding_window: None,
            max_window_layers: None,
            layer_types: None,
            hidden_activation: None,
            query_pre_attn_scalar: None,
            rope_local_base_freq: None,
            sliding_window_pattern: None,
            final_logit_softcapping: None,
            attn_logit_softcapping: None,
            use_bidirectional_attention: None,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ModelSpec {
        ModelSpec {
            hidden_size: 64,
            intermediate_size: 128,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            context: 32,
            rope_theta: 1e4,
            tie_word_embeddings: false,
        }
    }

    #[test]
    #[allow(clippy::float_cmp)] // values copied, not computed
    fn transformers_5_rope_parameters_are_read() {
        let base = serde_json::json!({"architectures": ["Qwen3ForCausalLM"], "vocab_size": 10,
            "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
            "max_position_embeddings": 32});
        let with = |extra: serde_json::Value| {
            let mut v = base.clone();
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            LlamaConfig::from_json(&v).unwrap()
        };
        let c = with(
            serde_json::json!({"rope_parameters": {"rope_theta": 1e6, "rope_type": "default"}}),
        );
        assert_eq!(c.rope_theta, 1e6);
        assert!(c.rope_scaling.is_none());
        let c = with(
            serde_json::json!({"rope_parameters": {"rope_theta": 5e5, "rope_type": "llama3",
            "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 16}}),
        );
        assert_eq!(c.rope_theta, 5e5);
        let rs = c.rope_scaling.unwrap();
        assert_eq!((rs.rope_type.as_str(), rs.factor), ("llama3", 8.0));
        assert_eq!(rs.original_max_position_embeddings, Some(16));
        // the older fields, when present, are what they say
        let c = with(
            serde_json::json!({"rope_theta": 1e4, "rope_parameters": {"rope_theta": 1e6, "rope_type": "default"}}),
        );
        assert_eq!(c.rope_theta, 1e4);
        assert_eq!(with(serde_json::json!({})).rope_theta, 10_000.0);
    }

    /// Gemma 3 as transformers 5 writes it (one RoPE set per layer type) and as the 4.x configs on the Hub
    /// do (`rope_local_base_freq`, `_sliding_window_pattern` without `layer_types`).
    #[test]
    #[allow(clippy::float_cmp)] // values copied, not computed
    fn gemma3_configs_of_both_transformers_generations_are_read() {
        let base = serde_json::json!({"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
            "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 7,
            "num_attention_heads": 2, "head_dim": 4, "max_position_embeddings": 32, "sliding_window": 3,
            "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": 16});
        let with = |extra: serde_json::Value| {
            let mut v = base.clone();
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            LlamaConfig::from_json(&v).unwrap()
        };
        let c = with(serde_json::json!({"rope_parameters": {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "default", "rope_theta": 1e6}}}));
        c.validate().unwrap();
        assert_eq!((c.rope_theta, c.rope_local_base_freq), (1e6, Some(1e4)));
        assert!(c.rope_scaling.is_none());
        // every 6th layer in full (index 5), the others within 3, turned by the local base
        let windows: Vec<Option<usize>> = (0..7).map(|i| c.window(i)).collect();
        assert_eq!(
            windows,
            [Some(3), Some(3), Some(3), Some(3), Some(3), None, Some(3)]
        );
        assert!(c.local_rope(0) && !c.local_rope(5));
        assert_eq!(c.attn_scale(), 0.25);
        assert_eq!((c.norm_shift(), c.embed_scale()), (1.0, Some(8f32.sqrt())));
        let c = with(
            serde_json::json!({"rope_theta": 1e6, "rope_local_base_freq": 100.0,
            "_sliding_window_pattern": 2}),
        );
        assert_eq!(c.rope_local_inv_freq()[1], 1.0 / 100f64.powf(0.5));
        assert_eq!(c.window(1), None);
        assert_eq!(c.window(2), Some(3));
        // Gemma 2's soft caps and the bidirectional encoder are refused by name
        for (extra, want) in [
            (
                serde_json::json!({"final_logit_softcapping": 30.0}),
                "final_logit_softcapping",
            ),
            (
                serde_json::json!({"use_bidirectional_attention": true}),
                "use_bidirectional_attention",
            ),
            (serde_json::json!({"hidden_activation": "relu"}), "\"relu\""),
        ] {
            let err = with(extra).validate().unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn parameter_count_by_hand() {
        let cfg = spec().to_config(100, 0).unwrap();
        // per layer: q,o 64*64 each; k,v 64*32 each; mlp 3*64*128; 2 norms of 64
        //   = 8192 + 4096 + 24576 + 128 = 36992; x2 layers = 73984
        // embed 6400 + lm_head 6400 + final norm 64  => 86848
        assert_eq!(cfg.num_parameters(), 86_848);
    }

    #[test]
    fn invalid_head_counts_are_named() {
        let mut s = spec();
        s.kv_heads = 3;
        let err = s.to_config(100, 0).unwrap_err().to_string();
        assert!(err.contains("num_key_value_heads (3)"), "{err}");
    }

    /// Which layers attend within the window, read off transformers' `Qwen2Config.__init__` (the window
    /// only with `use_sliding_window`, from layer `max_window_layers` on, defaults 4096 and 28),
    /// `layer_types`, and Mistral's every-layer window.
    #[test]
    fn sliding_window_per_layer_as_transformers_configs_decide_it() {
        let mut c = spec().to_config(100, 0).unwrap();
        c.num_hidden_layers = 4;
        let windows = |c: &LlamaConfig| (0..4).map(|i| c.window(i)).collect::<Vec<_>>();
        assert_eq!(windows(&c), [None; 4]); // Llama, no window field
        c.sliding_window = Some(8);
        assert_eq!(windows(&c), [Some(8); 4]); // Mistral semantics: every layer
        c.architectures = vec!["Qwen2ForCausalLM".into()];
        assert_eq!(windows(&c), [None; 4]); // Qwen2: use_sliding_window defaults to false
        c.use_sliding_window = Some(true);
        assert_eq!(windows(&c), [None; 4]); // max_window_layers defaults to 28
        c.max_window_layers = Some(2);
        assert_eq!(windows(&c), [None, None, Some(8), Some(8)]);
        c.sliding_window = None;
        assert_eq!(windows(&c), [None, None, Some(4096), Some(4096)]);
        c.sliding_window = Some(8);
        c.layer_types = Some(
            [
                "sliding_attention",
                "full_attention",
                "sliding_attention",
                "full_attention",
            ]
            .map(String::from)
            .to_vec(),
        );
        assert_eq!(windows(&c), [Some(8), None, Some(8), None]);
        assert!(c.validate().is_ok());
        c.layer_types = Some(vec!["chunked_attention".into(); 4]);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("chunked_attention"), "{e}");
        c.layer_types = Some(vec!["full_attention".into(); 3]);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("layer_types lists 3 layers"), "{e}");
    }
}
