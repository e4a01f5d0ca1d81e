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
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default = "default_dtype")]
    pub torch_dtype: String,
    #[serde(default = "default_init")]
    pub initializer_range: f64,
}

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
        if !self.architectures.iter().any(|a| a == "LlamaForCausalLM") {
            return bad(format!(
                "unsupported architecture {:?} (supported: LlamaForCausalLM)",
                self.architectures
            ));
        }
        if self.hidden_act != "silu" {
            return bad(format!(
                "hidden_act {:?} is not supported (silu only)",
                self.hidden_act
            ));
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
        if !self.head_dim().is_multiple_of(2) {
            return bad(format!(
                "head_dim ({}) must be even for RoPE",
                self.head_dim()
            ));
        }
        Ok(())
    }

    /// Parameter count (weights only).
    #[must_use]
    pub fn num_parameters(&self) -> usize {
        let (d, hd) = (self.hidden_size, self.head_dim());
        let attn = d * self.num_attention_heads * hd * 2 + d * self.kv_heads() * hd * 2;
        let mlp = 3 * d * self.intermediate_size;
        let per_layer = attn + mlp + 2 * d;
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
            bos_token_id: Some(eos),
            eos_token_id: Some(eos),
            hidden_act: default_act(),
            attention_bias: false,
            torch_dtype: default_dtype(),
            initializer_range: default_init(),
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
}
