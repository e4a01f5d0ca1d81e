//! The prefix cache: the KV of recent prompts, so that a prompt that begins as one of them (the chat
//! template's system turn, the earlier turns of the same conversation, a shared instruction) is prefilled
//! only from where they part. Keys and values depend on the adapters (a LoRA on q, k or v changes them), so an
//! entry serves only requests with the very same adapter stack; the entry holds that stack, so its adapters
//! stay alive and their identity cannot be taken by another. Entries are bounded in bytes and the least
//! recently used go first.

use std::sync::Arc;

use strata_engine::{CpuCache, CpuModel, LoraStack};

use super::sequence::Sequence;

struct Entry {
    tokens: Vec<u32>,
    adapters: Option<LoraStack>,
    cache: CpuCache,
    bytes: usize,
    used: u64,
}

/// Recent prompts' KV, within a byte budget (0: off).
pub struct PrefixCache {
    entries: Vec<Entry>,
    bytes: usize,
    budget: usize,
    clock: u64,
    /// A vision-language model's image token: its positions hold an image's features, which the token does
    /// not name, so a shared prefix ends before it and prompts holding one are not kept.
    barrier: Option<u32>,
}

fn same_adapters(a: Option<&LoraStack>, b: Option<&LoraStack>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.adapters.len() == b.adapters.len()
                && a.adapters
                    .iter()
                    .zip(&b.adapters)
                    .all(|(x, y)| Arc::ptr_eq(x, y))
        }
        _ => false,
    }
}

fn common(a: &[u32], b: &[u32], barrier: Option<u32>) -> usize {
    a.iter()
        .zip(b)
        .take_while(|(x, y)| x == y && Some(**x) != barrier)
        .count()
}

impl PrefixCache {
    #[must_use]
    pub fn new(budget: usize) -> Self {
        Self {
            entries: Vec::new(),
            bytes: 0,
            budget,
            clock: 0,
            barrier: None,
        }
    }

    /// The cache of a vision-language model whose image token is `token`.
    #[must_use]
    pub fn with_barrier(mut self, token: Option<u32>) -> Self {
        self.barrier = token;
        self
    }

    /// Starts `seq` from the longest cached prefix of its prompt (same adapters), leaving at least its last
    /// token to run. How many prompt tokens it was spared.
    pub fn reuse(&mut self, seq: &mut Sequence, adapters: Option<&LoraStack>) -> usize {
        let prompt = seq.prompt();
        let best = self
            .entries
            .iter_mut()
            .filter(|e| same_adapters(e.adapters.as_ref(), adapters))
            .map(|e| {
                (
                    common(&e.tokens, prompt, self.barrier).min(prompt.len().saturating_sub(1)),
                    e,
                )
            })
            .max_by_key(|(n, _)| *n);
        let Some((n, e)) = best else {
            return 0;
        };
        if n == 0 {
            return 0;
        }
        self.clock += 1;
        e.used = self.clock;
        seq.reuse_prefix(&e.cache, n);
        seq.fed()
    }

    /// Keeps the KV of `seq`'s whole prompt, just prefilled (its cache holds the prompt and nothing more).
    pub fn insert(&mut self, model: &CpuModel, seq: &Sequence, adapters: Option<&LoraStack>) {
        let tokens = seq.prompt();
        let bytes = Sequence::cache_bytes(model, tokens.len());
        if bytes > self.budget
            || seq.cache.len() < tokens.len()
            || self.barrier.is_some_and(|b| tokens.contains(&b))
        {
            return;
        }
        let barrier = self.barrier;
        self.clock += 1;
        // already held by an entry as long or longer: that one is fresh again
        if let Some(e) = self.entries.iter_mut().find(|e| {
            same_adapters(e.adapters.as_ref(), adapters)
                && common(&e.tokens, tokens, barrier) == tokens.len()
        }) {
            e.used = self.clock;
            return;
        }
        // an entry this prompt extends is replaced by it
        if let Some(i) = self.entries.iter().position(|e| {
            same_adapters(e.adapters.as_ref(), adapters)
                && common(&e.tokens, tokens, barrier) == e.tokens.len()
        }) {
            self.bytes -= self.entries.swap_remove(i).bytes;
        }
        while self.bytes + bytes > self.budget {
            let Some(i) = (0..self.entries.len()).min_by_key(|&i| self.entries[i].used) else {
                break;
            };
            self.bytes -= self.entries.swap_remove(i).bytes;
        }
        let mut cache = CpuCache::new(model, tokens.len());
        cache.copy_prefix(&seq.cache, tokens.len());
        self.bytes += bytes;
        self.entries.push(Entry {
            tokens: tokens.to_vec(),
            adapters: adapters.cloned(),
            cache,
            bytes,
            used: self.clock,
        });
    }
}
