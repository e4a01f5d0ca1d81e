//! One request's generation as a state machine the scheduler steps: its prompt (fed in chunks), its KV
//! cache, its sampler and penalties, incremental detokenisation, stop strings and stop ids, log-probs and
//! the JSON constraint. `Engine::generate` and the batching scheduler both drive this one type, so a request
//! generates the same tokens alone or in a batch.

use std::collections::HashMap;

use strata_engine::{CpuCache, CpuModel};

use super::json::JsonPrefix;
use super::Engine;
use super::{Sampler, Sampling};

#[derive(Debug, Clone, PartialEq)]
pub struct GenParams {
    pub max_tokens: usize,
    pub sampling: Sampling,
    pub seed: u64,
    /// Generation stops before any of these strings (they are not returned).
    pub stop: Vec<String>,
    /// Extra token ids that end generation, besides the model's end-of-sequence ids.
    pub stop_token_ids: Vec<u32>,
    /// 1.0 = off; > 1 makes tokens already in the context (prompt and output) less likely (CTRL).
    pub repetition_penalty: f32,
    /// OpenAI's penalties on tokens of the output so far: logit −= frequency·count + presence·[count > 0].
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// Log-probabilities of each chosen token and of this many alternatives (None: off).
    pub logprobs: Option<usize>,
    /// Generate past the model's end-of-sequence ids (vLLM's and llama-server's `ignore_eos`, for
    /// benchmarks of a fixed length); `stop_token_ids` still stop.
    pub ignore_eos: bool,
    /// Constrain the output to one JSON object (OpenAI's `response_format: {"type": "json_object"}`).
    pub json: bool,
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
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logprobs: None,
            ignore_eos: false,
            json: false,
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

/// A chosen token's log-probability and the most likely alternatives at its step.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub top: Vec<(String, f32)>,
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub finish: FinishReason,
    pub logprobs: Vec<TokenLogprob>,
}

/// What one step of a sequence produced: new visible text (possibly empty: an incomplete character or a
/// possible stop string is held back), the log-probs of the token, and whether the sequence ended.
#[derive(Debug, Default)]
pub struct Output {
    pub text: String,
    pub logprobs: Option<TokenLogprob>,
    pub finish: Option<FinishReason>,
}

pub struct Sequence {
    pub params: GenParams,
    prompt: Vec<u32>,
    /// Prompt tokens already in the cache.
    fed: usize,
    pub cache: CpuCache,
    sampler: Sampler,
    out: Vec<u32>,
    /// Output ids by count (presence and frequency penalties).
    counts: HashMap<u32, u32>,
    /// Incremental detokenisation (as TGI and vLLM): the text of `out[prefix..read]` is already in `text`;
    /// the next piece is what decoding `out[prefix..]` adds to it.
    prefix: usize,
    read: usize,
    text: String,
    /// Bytes of `text` already handed out.
    emitted: usize,
    json: Option<JsonPrefix>,
    finish: Option<FinishReason>,
    logprobs: Vec<TokenLogprob>,
}

impl Sequence {
    /// A sequence for `prompt` (already checked to fit), with a cache for prompt + `max_tokens`.
    #[must_use]
    pub fn new(model: &CpuModel, prompt: Vec<u32>, params: GenParams) -> Self {
        let cache = CpuCache::new(model, prompt.len() + params.max_tokens);
        Self {
            sampler: Sampler::new(params.sampling, params.seed),
            json: params.json.then(JsonPrefix::default),
            params,
            prompt,
            fed: 0,
            cache,
            out: Vec::new(),
            counts: HashMap::new(),
            prefix: 0,
            read: 0,
            text: String::new(),
            emitted: 0,
            finish: None,
            logprobs: Vec::new(),
        }
    }

    /// Bytes of KV cache a sequence of `tokens` positions holds.
    #[must_use]
    pub fn cache_bytes(model: &CpuModel, tokens: usize) -> usize {
        let c = model.config();
        2 * c.num_hidden_layers * c.kv_heads() * c.head_dim() * tokens * 4
    }

    #[must_use]
    pub fn prompt_tokens(&self) -> usize {
        self.prompt.len()
    }

    #[must_use]
    pub fn prompt(&self) -> &[u32] {
        &self.prompt
    }

    /// Starts from the first `n` positions of `src`, a cache whose tokens begin as this prompt does (the
    /// scheduler's prefix cache): the prompt is then prefilled from token `n` on. Only before any prefill,
    /// and always leaving at least the prompt's last token to run (its logits choose the first token).
    pub fn reuse_prefix(&mut self, src: &CpuCache, n: usize) {
        if self.fed == 0 && self.cache.is_empty() && n > 0 && n < self.prompt.len() {
            self.cache.copy_prefix(src, n);
            self.fed = n;
        }
    }

    /// Prompt tokens taken from the prefix cache instead of being prefilled.
    #[must_use]
    pub fn fed(&self) -> usize {
        self.fed
    }

    #[must_use]
    pub fn completion_tokens(&self) -> usize {
        self.out.len()
    }

    #[must_use]
    pub fn is_prefilling(&self) -> bool {
        self.fed < self.prompt.len()
    }

    #[must_use]
    pub fn finished(&self) -> Option<FinishReason> {
        self.finish
    }

    /// The tokens to run next: up to `budget` of the prompt still to prefill, else the last output token.
    #[must_use]
    pub fn next_input(&self, budget: usize) -> &[u32] {
        if self.is_prefilling() {
            let end = (self.fed + budget.max(1)).min(self.prompt.len());
            &self.prompt[self.fed..end]
        } else {
            &self.out[self.out.len() - 1..]
        }
    }

    /// Takes the logits of the last of the `n` tokens just run (the cache has advanced): a prompt chunk
    /// that does not end the prompt yields nothing; otherwise the next token is chosen.
    pub fn advance(&mut self, n: usize, logits: &mut [f32], eng: &Engine) -> Output {
        if self.is_prefilling() {
            self.fed += n;
            if self.is_prefilling() {
                return Output::default();
            }
        }
        self.choose(logits, eng)
    }

    fn choose(&mut self, logits: &mut [f32], eng: &Engine) -> Output {
        let p = &self.params;
        if (p.repetition_penalty - 1.0).abs() > f32::EPSILON {
            super::apply_repetition_penalty(
                logits,
                self.prompt.iter().chain(&self.out),
                p.repetition_penalty,
            );
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&id, &c) in &self.counts {
                if let Some(l) = logits.get_mut(id as usize) {
                    #[allow(clippy::cast_precision_loss)]
                    let c = c as f32;
                    *l -= p.frequency_penalty * c + p.presence_penalty;
                }
            }
        }
        if let Some(j) = &self.json {
            mask_json(j, logits, eng);
        }
        let next = self.sampler.sample(logits);
        let is_stop =
            (!p.ignore_eos && eng.stop_ids().contains(&next)) || p.stop_token_ids.contains(&next);
        let mut out = Output::default();
        if let Some(top) = p.logprobs {
            out.logprobs = Some(logprob_of(logits, next, top, eng));
        }
        if is_stop {
            self.finish = Some(FinishReason::Stop);
            out.text = self.flush();
            out.finish = self.finish;
            return out;
        }
        self.out.push(next);
        *self.counts.entry(next).or_insert(0) += 1;
        if let Some(j) = &mut self.json {
            j.push_str(&eng.pieces()[next as usize]);
        }
        self.detokenize(eng.tokenizer());
        if let Some(pos) = self.find_stop() {
            self.text.truncate(pos);
            self.finish = Some(FinishReason::Stop);
        } else if self.json.as_ref().is_some_and(JsonPrefix::complete) {
            self.finish = Some(FinishReason::Stop);
        } else if self.out.len() >= self.params.max_tokens {
            self.finish = Some(FinishReason::Length);
        }
        if self.finish.is_some() {
            out.text = self.flush();
        } else {
            out.text = self.release();
        }
        if let Some(l) = &out.logprobs {
            self.logprobs.push(l.clone());
        }
        out.finish = self.finish;
        out
    }

    /// Ends the sequence now (a client went away, or a shutdown).
    pub fn cancel(&mut self) {
        self.finish.get_or_insert(FinishReason::Stop);
    }

    fn detokenize(&mut self, tk: &tokenizers::Tokenizer) {
        let dec = |ids: &[u32]| tk.decode(ids, true).unwrap_or_default();
        let before = dec(&self.out[self.prefix..self.read]);
        let now = dec(&self.out[self.prefix..]);
        // wait while the last token ends inside a character (byte-level BPE splits UTF-8)
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') && now.starts_with(&before) {
            self.text.push_str(&now[before.len()..]);
            self.prefix = self.read;
            self.read = self.out.len();
        } else if !now.starts_with(&before) {
            // a decoder that rewrote the earlier text (rare): take the new text whole from here on
            self.text.push_str(now.get(before.len()..).unwrap_or(""));
            self.prefix = self.read;
            self.read = self.out.len();
        }
    }

    /// The earliest stop string in the text (searched only where new text could complete one).
    fn find_stop(&self) -> Option<usize> {
        let longest = self.params.stop.iter().map(String::len).max()?;
        let mut from = self.emitted.saturating_sub(longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        self.params
            .stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|p| p + from))
            .min()
    }

    /// New text safe to hand out: not the start of a possible stop string.
    fn release(&mut self) -> String {
        let mut safe = self.text.len();
        for s in &self.params.stop {
            for k in (1..s.len()).rev() {
                if s.is_char_boundary(k) && self.text[..safe].ends_with(&s[..k]) {
                    safe -= k;
                    break;
                }
            }
        }
        if safe > self.emitted && self.text.is_char_boundary(safe) {
            let piece = self.text[self.emitted..safe].to_string();
            self.emitted = safe;
            piece
        } else {
            String::new()
        }
    }

    /// Everything not yet handed out (the sequence ends).
    fn flush(&mut self) -> String {
        let piece = self.text.get(self.emitted..).unwrap_or("").to_string();
        self.emitted = self.text.len();
        piece
    }

    /// The whole result (after the sequence finished).
    #[must_use]
    pub fn generation(&self) -> Generation {
        Generation {
            text: self.text.clone(),
            prompt_tokens: self.prompt.len(),
            completion_tokens: self.out.len(),
            finish: self.finish.unwrap_or(FinishReason::Stop),
            logprobs: self.logprobs.clone(),
        }
    }
}

/// Log-softmax of the (penalised) logits: the chosen token's, and the `top` most likely.
fn logprob_of(logits: &[f32], chosen: u32, top: usize, eng: &Engine) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln();
    let mut best: Vec<(f32, u32)> = Vec::with_capacity(top + 1);
    if top > 0 {
        for (i, &l) in logits.iter().enumerate() {
            if best.len() < top || l > best[best.len() - 1].0 {
                #[allow(clippy::cast_possible_truncation)]
                best.push((l, i as u32));
                best.sort_by(|a, b| b.0.total_cmp(&a.0));
                best.truncate(top);
            }
        }
    }
    let piece = |id: u32| eng.pieces().get(id as usize).cloned().unwrap_or_default();
    TokenLogprob {
        token: piece(chosen),
        logprob: logits[chosen as usize] - lse,
        top: best
            .into_iter()
            .map(|(l, id)| (piece(id), l - lse))
            .collect(),
    }
}

/// Keeps only tokens that extend the output as a valid JSON prefix (and the end of sequence once the object
/// is complete). Candidates are tried from the most likely down, so the cost is a few checks per step.
fn mask_json(j: &JsonPrefix, logits: &mut [f32], eng: &Engine) {
    let n = logits.len();
    let mut order: Vec<u32> = (0..u32::try_from(n).unwrap_or(u32::MAX)).collect();
    let desc = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]);
    let mut keep = vec![false; n];
    let mut kept = 0;
    // the most likely first, a growing head at a time (no sort of the whole vocabulary)
    let (mut done, mut m) = (0, n.min(256));
    while done < m {
        if m < n {
            order[done..].select_nth_unstable_by(m - done - 1, desc);
        }
        order[done..m].sort_unstable_by(desc);
        for &id in &order[done..m] {
            let ok = if eng.stop_ids().contains(&id) {
                j.complete()
            } else {
                let piece = &eng.pieces()[id as usize];
                !piece.is_empty() && j.clone().push_str(piece)
            };
            if ok {
                keep[id as usize] = true;
                kept += 1;
            }
            // enough candidates for top-k/top-p sampling among likely tokens
            if kept >= 64 {
                break;
            }
        }
        if kept >= 64 {
            break;
        }
        (done, m) = (m, (m * 8).min(n));
    }
    if kept == 0 {
        return;
    }
    for (l, k) in logits.iter_mut().zip(keep) {
        if !k {
            *l = f32::NEG_INFINITY;
        }
    }
}
