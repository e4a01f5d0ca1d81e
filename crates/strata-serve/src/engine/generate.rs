//! A loaded model ready to generate: weights, tokenizer, chat template, end-of-sequence ids. `generate` runs
//! one request on its own (the CLI's `strata generate`, the demo); the server batches requests with
//! [`super::Scheduler`]. Both step the same [`Sequence`].

use std::path::Path;
use std::sync::OnceLock;

use std::sync::Arc;

use strata_engine::{BatchWork, CpuModel, LoraStack, RuntimeAdapter, Seq, WeightType};
use strata_tokenize::{ChatMessage, ChatTemplate};

use super::sequence::{GenParams, Generation, Sequence};
use crate::{Result, ServeError};

pub struct Engine {
    pub name: String,
    pub model: CpuModel,
    /// A vision-language model's tower and projector (its decoder is `model`).
    pub vision: Option<Arc<super::vision::Vision>>,
    tokenizer: tokenizers::Tokenizer,
    template: ChatTemplate,
    stop_ids: Vec<u32>,
    /// Each id's text (JSON constraint, log-probs), decoded on first need.
    pieces: OnceLock<Vec<String>>,
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
        if strata_model::llava::is_llava(dir) {
            let cfg = strata_model::LlavaConfig::read(&dir.join("config.json"))?;
            let device = candle_core::Device::Cpu;
            let parts =
                strata_model::llava::Parts::split(strata_model::read_weights(dir, &device)?)?;
            let model = CpuModel::from_tensors(dir, cfg.text.clone(), parts.decoder, quant)?;
            let vision = super::vision::Vision::new(dir, cfg, &parts.tower, &parts.projector)?;
            let mut e = Self::from_model(name, model, dir)?;
            e.vision = Some(Arc::new(vision));
            return Ok(e);
        }
        Self::from_model(name, CpuModel::load(dir, quant)?, dir)
    }

    /// An engine over a model already built (a vision-language model's decoder), with the tokenizer, template
    /// and stop ids of `dir`.
    ///
    /// # Errors
    /// When a file is missing or malformed.
    pub fn from_model(name: &str, model: CpuModel, dir: &Path) -> Result<Self> {
        let tokenizer = strata_tokenize::load_tokenizer(&dir.join("tokenizer.json"))?;
        let template = ChatTemplate::from_tokenizer_config(&dir.join("tokenizer_config.json"))?;
        let stop_ids = strata_tokenize::stop_ids(dir, &tokenizer)?;
        Ok(Self {
            name: name.to_string(),
            model,
            vision: None,
            tokenizer,
            template,
            stop_ids,
            pieces: OnceLock::new(),
        })
    }

    #[must_use]
    pub fn context(&self) -> usize {
        self.model.config().max_position_embeddings
    }

    /// The ids that end a generation (config, generation config, tokenizer config).
    #[must_use]
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// Renders chat messages with the model's template, ending with the assistant prompt.
    ///
    /// # Errors
    /// When the template fails.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String> {
        Ok(self.template.render(messages, true)?)
    }

    /// The prompt's token ids.
    ///
    /// # Errors
    /// When the prompt is empty or the tokenizer fails.
    pub fn encode(&self, prompt: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(prompt, add_special_tokens)
            .map_err(|e| ServeError::BadRequest(format!("tokenizer: {e}")))?;
        if enc.get_ids().is_empty() {
            return Err(ServeError::BadRequest("the prompt is empty".into()));
        }
        Ok(enc.get_ids().to_vec())
    }

    /// How many tokens a request may generate after a prompt of `prompt` tokens: `requested`, or what is
    /// left of the context when it names none.
    ///
    /// # Errors
    /// When the prompt and the requested tokens do not fit the context (nothing is cut: cutting from the
    /// left would drop the system prompt).
    pub fn fit(&self, prompt: usize, requested: Option<usize>) -> Result<usize> {
        let ctx = self.context();
        let want = requested.unwrap_or(ctx.saturating_sub(prompt));
        if want == 0 || prompt + want > ctx {
            return Err(ServeError::BadRequest(format!(
                "this model's maximum context length is {ctx} tokens, but {} were requested ({prompt} in \
                 the prompt, {} for the completion): shorten the prompt or lower max_tokens",
                prompt + want.max(1),
                want.max(1)
            )));
        }
        Ok(want)
    }

    #[must_use]
    pub fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }

    /// Each id's text (decoded alone), built on first use.
    pub fn pieces(&self) -> &[String] {
        self.pieces.get_or_init(|| {
            #[allow(clippy::cast_possible_truncation)]
            let n = self.model.config().vocab_size as u32;
            (0..n)
                .map(|id| self.tokenizer.decode(&[id], false).unwrap_or_default())
                .collect()
        })
    }

    /// A sequence for a prompt's ids; `max_tokens` as [`Engine::fit`] allows.
    ///
    /// # Errors
    /// When the prompt does not fit.
    pub fn sequence(&self, prompt: Vec<u32>, mut params: GenParams) -> Result<Sequence> {
        params.max_tokens = self.fit(prompt.len(), Some(params.max_tokens))?;
        Ok(Sequence::new(&self.model, prompt, params))
    }

    /// Generates a continuation of `prompt` on its own; `on_text` receives each new piece of text and may
    /// return `false` to stop early.
    ///
    /// # Errors
    /// On an empty or over-long prompt, or a model failure.
    pub fn generate(
        &self,
        prompt: &str,
        params: &GenParams,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation> {
        self.generate_with(prompt, params, None, on_text)
    }

    /// [`Engine::generate`] with an adapter chain applied unmerged to the sequence's rows (`y += s·B·(A·x)`),
    /// as the server's scheduler runs a request for an adapter.
    ///
    /// # Errors
    /// As [`Engine::generate`].
    pub fn generate_with(
        &self,
        prompt: &str,
        params: &GenParams,
        adapters: Option<&LoraStack>,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let ids = self.encode(prompt, params.add_special_tokens)?;
        self.generate_ids(ids, None, params, adapters, on_text)
    }

    /// A continuation of prompt `ids`; with `image`, the image tokens among them read its feature rows (a
    /// vision-language model's projected image). The prompt goes in one forward, then one token a step.
    ///
    /// # Errors
    /// As [`Engine::generate`], and when the image rows do not match the image tokens.
    pub fn generate_ids(
        &self,
        ids: Vec<u32>,
        image: Option<strata_engine::ImageRows<'_>>,
        params: &GenParams,
        adapters: Option<&LoraStack>,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Generation> {
        let mut seq = self.sequence(ids, params.clone())?;
        let mut work = BatchWork::default();
        let mut first = true;
        while seq.finished().is_none() {
            let input = seq.next_input(usize::MAX).to_vec();
            let mut logits = self.model.forward_batch(
                &mut [Seq {
                    ids: &input,
                    cache: &mut seq.cache,
                    delta: adapters,
                    image: if first { image } else { None },
                }],
                &mut work,
            )?;
            first = false;
            let out = seq.advance(input.len(), &mut logits, self);
            if !out.text.is_empty() && !on_text(&out.text) {
                seq.cancel();
            }
        }
        Ok(seq.generation())
    }
}

/// An adapter read from its folder into the engine's runtime form, checked against the base's config.
///
/// # Errors
/// When its files are missing or do not fit the base.
pub fn load_adapter(name: &str, dir: &Path, engine: &Engine) -> Result<Arc<RuntimeAdapter>> {
    let cfg = engine.model.config();
    let a = strata_model::lora::read_adapter(dir, cfg, &candle_core::Device::Cpu)?;
    Ok(Arc::new(RuntimeAdapter::new(name, &a, cfg)?))
}

/// A model of the store, or an adapter's base with the adapter chain to apply unmerged (base first).
///
/// # Errors
/// When nothing of that name is in the store, or it fails to load.
pub fn load_target(
    store: &strata_store::Store,
    name: &str,
    quant: Option<WeightType>,
) -> Result<(Engine, Option<LoraStack>)> {
    let chain = store.chain(name)?;
    let engine = Engine::load_quantized(&chain.base, &chain.base_dir, quant)?;
    if chain.adapters.is_empty() {
        return Ok((engine, None));
    }
    let adapters = chain
        .adapters
        .iter()
        .map(|(a, dir)| load_adapter(a, dir, &engine))
        .collect::<Result<Vec<_>>>()?;
    Ok((engine, Some(LoraStack { adapters })))
}
