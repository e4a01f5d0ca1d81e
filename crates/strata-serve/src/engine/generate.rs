//! Generation: encode the prompt, prefill the KV cache in one forward, then decode token by token,
//! streaming text pieces as soon as they form whole characters.

use std::path::Path;

use strata_model::cpu::{CpuCache, CpuModel, WeightType};
use strata_tokenize::{ChatMessage, ChatTemplate};

use super::{Sampler, Sampling};
use crate::{Result, ServeError};

#[derive(Debug, Clone, PartialEq)]
pub struct GenParams {
    pub max_tokens: usize,
    pub sampling: Sampling,
    pub seed: u64,
    /// Generation stops before any of these strings (they are not returned).
    pub stop: Vec<String>,
    /// Extra token ids that end generation, besides the model's end-of-text and end-of-turn tokens.
    pub stop_token_ids: Vec<u32>,
    /// 1.0 = off; > 1 makes tokens already in the context less likely.
    pub repetition_penalty: f32,
    /// Let the tokenizer add its special tokens (Llama 3's BOS) around the prompt, as transformers'
    /// `encode` does by default. Off for a rendered chat template, which writes them itself.
    pub add_special_tokens: bool,
}

impl GenParams {
    /// Greedy or temperature + top-p, no penalty, no stop strings.
    #[must_use]
    pub fn new(max_tokens: usize, sampling: Sampling, seed: u64) -> Self {
        Self {
            max_tokens,
            sampling,
            seed,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            repetition_penalty: 1.0,
            add_special_tokens: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub finish: FinishReason,
}

/// A model ready to generate: weights, tokenizer, chat template and stop tokens.
pub struct Engine {
    pub name: String,
    model: CpuModel,
    tokenizer: tokenizers::Tokenizer,
    template: ChatTemplate,
    stop_ids: Vec<u32>,
}

impl Engine {
    /// Loads a Hugging Face model folder.
    ///
    /// # Errors
    /// When a file is missing or malformed.
    pub fn load(name: &str, dir: &Path) -> Result<Self> {
        Self::load_quantized(name, dir, None)
    }

    /// Loads a model folder with its projections in `quant` (e.g. Q8_0 for faster decoding; None: as stored).
    ///
    /// # Errors
    /// When a file is missing or malformed.
    pub fn load_quantized(name: &str, dir: &Path, quant: Option<WeightType>) -> Result<Self> {
        let model = CpuModel::load(dir, quant)?;
        let tokenizer = strata_tokenize::load_tokenizer(&dir.join("tokenizer.json"))?;
        let template = ChatTemplate::from_tokenizer_config(&dir.join("tokenizer_config.json"))?;
        let stop_ids = strata_tokenize::SPECIAL_TOKENS
            .iter()
            .filter_map(|t| tokenizer.token_to_id(t))
            .collect();
        Ok(Self {
            name: name.to_string(),
            model,
            tokenizer,
            template,
            stop_ids,
        })
    }

    #[must_use]
    pub fn context(&self) -> usize {
        self.model.config().max_position_embeddings
    }

    /// Renders chat messages with the model's template, ending with the assistant prompt.
    ///
    /// # Errors
    /// When the template fails.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String> {
        Ok(self.template.render(messages, true)?)
    }

    /// Generates a continuation of `prompt`; `on_text` receives each new piece of text and may return
    /// `false` to stop early (a client went away).
    ///
    /// # Errors
    /// On an empty prompt or a model failure.
    pub fn generate(
        &self,
        prompt: &str,
        params: &GenParams,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let enc = self
            .tokenizer
            .encode(prompt, params.add_special_tokens)
            .map_err(|e| ServeError::BadRequest(format!("tokenizer: {e}")))?;
        let mut prompt_ids = enc.get_ids().to_vec();
        if prompt_ids.is_empty() {
            return Err(ServeError::BadRequest("the prompt is empty".into()));
        }
        let ctx = self.context();
        let max_tokens = params.max_tokens.min(ctx.saturating_sub(1)).max(1);
        // Keep the end of an over-long prompt: the most recent context matters most.
        let room = ctx - max_tokens;
        if prompt_ids.len() > room {
            prompt_ids.drain(..prompt_ids.len() - room);
        }
        let mut cache = CpuCache::new(&self.model, prompt_ids.len() + max_tokens);
        let mut sampler = Sampler::new(params.sampling, params.seed);
        let mut input = prompt_ids.clone();
        let mut context = prompt_ids.clone(); // what the repetition penalty looks at
        let mut out_ids: Vec<u32> = Vec::new();
        let mut emitted = 0usize; // bytes of decoded text already sent
        let mut text = String::new();
        let mut finish = FinishReason::Length;
        for _ in 0..max_tokens {
            let mut logits = self.model.forward(&input, &mut cache, false)?;
            super::sampling::apply_repetition_penalty(
                &mut logits,
                &context,
                params.repetition_penalty,
            );
            let next = sampler.sample(&logits);
            if self.stop_ids.contains(&next) || params.stop_token_ids.contains(&next) {
                finish = FinishReason::Stop;
                break;
            }
            out_ids.push(next);
            context.push(next);
            text = self
                .tokenizer
                .decode(&out_ids, true)
                .map_err(|e| ServeError::BadRequest(format!("tokenizer: {e}")))?;
            if let Some(pos) = params
                .stop
                .iter()
                .filter_map(|s| text.find(s.as_str()))
                .min()
            {
                text.truncate(pos);
                finish = FinishReason::Stop;
                break;
            }
            // Hold back an incomplete UTF-8 sequence, and any tail that could be the start of a stop string.
            let mut safe = text.len();
            if text.ends_with('\u{FFFD}') {
                safe = text.trim_end_matches('\u{FFFD}').len();
            }
            for s in &params.stop {
                for k in (1..s.len()).rev() {
                    if s.is_char_boundary(k) && text[..safe].ends_with(&s[..k]) {
                        safe -= k;
                        break;
                    }
                }
            }
            if safe > emitted && text.is_char_boundary(safe) {
                if !on_text(&text[emitted..safe]) {
                    finish = FinishReason::Stop;
                    emitted = safe;
                    break;
                }
                emitted = safe;
            }
            input = vec![next];
        }
        let text = text.trim_end_matches('\u{FFFD}').to_string();
        if text.len() > emitted && text.is_char_boundary(emitted) {
            on_text(&text[emitted..]);
        }
        Ok(Generation {
            text,
            prompt_tokens: prompt_ids.len(),
            completion_tokens: out_ids.len(),
            finish,
        })
    }
}
