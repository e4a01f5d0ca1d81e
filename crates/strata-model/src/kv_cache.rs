//! A KV cache allocated once for the whole sequence: each step writes its keys and values in place
//! (`slice_set`) instead of concatenating a new tensor per token.

use candle_core::{DType, Device, Tensor};

use crate::{Context, LlamaConfig, ModelError, Result};

pub struct KvCache {
    /// Per layer: (1, kv_heads, max_seq, head_dim).
    pub(crate) k: Vec<Tensor>,
    pub(crate) v: Vec<Tensor>,
    len: usize,
    max_seq: usize,
}

impl KvCache {
    /// # Errors
    /// When allocation fails.
    pub fn new(cfg: &LlamaConfig, max_seq: usize, device: &Device) -> Result<Self> {
        let max_seq = max_seq.min(cfg.max_position_embeddings);
        let shape = (1, cfg.kv_heads(), max_seq, cfg.head_dim());
        let mut k = Vec::with_capacity(cfg.num_hidden_layers);
        let mut v = Vec::with_capacity(cfg.num_hidden_layers);
        for _ in 0..cfg.num_hidden_layers {
            k.push(Tensor::zeros(shape, DType::F32, device).ctx("kv cache alloc")?);
            v.push(Tensor::zeros(shape, DType::F32, device).ctx("kv cache alloc")?);
        }
        Ok(Self {
            k,
            v,
            len: 0,
            max_seq,
        })
    }

    /// Positions already cached.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[must_use]
    pub fn capacity(&self) -> usize {
        self.max_seq
    }

    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Writes `k`, `v` of shape (1, kv_heads, t, head_dim) at the current position of `layer` and returns
    /// views of everything cached so far: (1, kv_heads, len + t, head_dim).
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let t = k.dim(2).ctx("kv cache append")?;
        if self.len + t > self.max_seq {
            return Err(ModelError::TooLong {
                needed: self.len + t,
                max: self.max_seq,
            });
        }
        self.k[layer]
            .slice_set(&k.contiguous().ctx("kv k")?, 2, self.len)
            .ctx("kv cache write k")?;
        self.v[layer]
            .slice_set(&v.contiguous().ctx("kv v")?, 2, self.len)
            .ctx("kv cache write v")?;
        let k_all = self.k[layer]
            .narrow(2, 0, self.len + t)
            .ctx("kv cache read k")?;
        let v_all = self.v[layer]
            .narrow(2, 0, self.len + t)
            .ctx("kv cache read v")?;
        Ok((k_all, v_all))
    }

    /// Called once per forward, after every layer appended `t` positions.
    pub(crate) fn advance(&mut self, t: usize) {
        self.len += t;
    }
}
