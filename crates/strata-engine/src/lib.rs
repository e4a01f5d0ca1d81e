//! The CPU inference engine: the same Llama/Qwen2/Mistral forward as [`strata_model::Llama`], written directly on
//! flat buffers with the hand-written kernels of [`kernels`], for generation and serving on CPUs.
//!
//! Why not candle here: a decode step of a small model is hundreds of tiny operations, and candle's
//! per-operation cost (allocation, shape checks, a thread-pool round trip per op) and its slow Q4 matmuls
//! (STACK.md, trap 4) dominated it. Here a layer is four matrix products (Q, K and V stacked into one, gate and
//! up into one) plus in-place norm, RoPE, attention and SwiGLU loops. Weights are f32, Q8_0, Q4_0 or Q4_1;
//! those types are taken from a GGUF file as they are stored (no dequantise → requantise round trip).
//! Training and perplexity keep using candle (autograd); tests check this engine against it.

mod kernels;
mod load;
pub mod lora;
mod pool;
mod quant;

pub use kernels::Isa;
pub use load::GGUF_IN_FOLDER;
pub use lora::{LoraStack, Proj, RuntimeAdapter};
pub use pool::set_threads;
pub use quant::{Matrix, WeightType};

use kernels::{attend_block, matmul, silu_mul, Scratch, QB};
use strata_model::{LlamaConfig, ModelError, Result};

struct Layer {
    attn_norm: Vec<f32>,
    /// Q, K and V stacked: (nh + 2 nkv)·hd rows.
    qkv: Matrix,
    qkv_bias: Option<Vec<f32>>,
    /// Qwen3: the gains of the RMSNorm of each query head and each key head (head_dim each), before RoPE.
    qk_norm: Option<(Vec<f32>, Vec<f32>)>,
    o: Matrix,
    o_bias: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    /// Gemma 3: the gains of the norms of the attention's output and of the MLP's output, each applied
    /// before its residual add (`ffn_norm` is then its `pre_feedforward_layernorm`).
    post_norms: Option<(Vec<f32>, Vec<f32>)>,
    /// gate and up stacked: 2·F rows.
    gate_up: Matrix,
    down: Matrix,
}

/// A model loaded for CPU inference.
pub struct CpuModel {
    cfg: LlamaConfig,
    isa: Isa,
    /// The token embeddings in their stored type (rows dequantised as they are looked up); None when they
    /// are the tied output head's matrix as it is (one copy in memory).
    embed: Option<Matrix>,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    lm_head: Matrix,
    inv_freq: Vec<f64>,
    /// Gemma 3: the sliding-window layers' RoPE frequencies.
    inv_freq_local: Option<Vec<f64>>,
    /// GeGLU (`gelu_pytorch_tanh` of the gate) rather than SwiGLU.
    gelu: bool,
}

/// Buffers of a forward pass, kept between calls (no allocation, no fresh pages per token).
#[derive(Default)]
struct Work {
    scratch: Scratch,
    x: Vec<f32>,
    h: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    proj: Vec<f32>,
    gu: Vec<f32>,
    act: Vec<f32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
    cos_local: Vec<f32>,
    sin_local: Vec<f32>,
    normed: Vec<f32>,
}

/// `v` as `n` zeros, reusing its memory.
fn zeroed(v: &mut Vec<f32>, n: usize) -> &mut Vec<f32> {
    v.clear();
    v.resize(n, 0.0);
    v
}

/// Keys and values of the positions seen so far, per layer, as (kv head, position, head_dim), and the
/// buffers of the forward pass.
pub struct CpuCache {
    work: Work,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
    cap: usize,
    hd: usize,
}

impl CpuCache {
    /// A cache for up to `capacity` positions.
    #[must_use]
    pub fn new(model: &CpuModel, capacity: usize) -> Self {
        let cfg = &model.cfg;
        let (nkv, hd) = (cfg.kv_heads(), cfg.head_dim());
        let cap = capacity.min(cfg.max_position_embeddings);
        let layer = || vec![0f32; nkv * cap * hd];
        Self {
            work: Work::default(),
            k: (0..cfg.num_hidden_layers).map(|_| layer()).collect(),
            v: (0..cfg.num_hidden_layers).map(|_| layer()).collect(),
            len: 0,
            cap,
            hd,
        }
    }

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
        self.cap
    }

    /// Forgets every position (the memory is kept).
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Forgets the positions from `len` on: several continuations of one prompt are scored after it in
    /// turn.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Takes the first `n` positions of `src` (a cache of the same model whose tokens begin as this one's
    /// will): keys and values are copied, and this cache then holds exactly those `n` positions. A prompt
    /// that starts like an earlier one (a chat template's system turn, an earlier turn of the same chat) is
    /// then prefilled from position `n` on.
    ///
    /// # Panics
    /// When `src` holds fewer than `n` positions, this cache has room for fewer, or the caches are of models
    /// of different shapes.
    pub fn copy_prefix(&mut self, src: &CpuCache, n: usize) {
        assert!(
            n <= src.len && n <= self.cap,
            "prefix of {n} positions: source holds {}, room for {}",
            src.len,
            self.cap
        );
        assert!(
            self.hd == src.hd && self.k.len() == src.k.len(),
            "caches of different models"
        );
        let (hd, cs, cd) = (self.hd, src.cap, self.cap);
        for (layer, (kd, vd)) in self.k.iter_mut().zip(self.v.iter_mut()).enumerate() {
            let (ks, vs) = (&src.k[layer], &src.v[layer]);
            let heads = ks.len() / (hd * cs);
            for h in 0..heads {
                // keys transposed: one run of n positions per (head, dimension)
                for d in 0..hd {
                    let (a, b) = ((h * hd + d) * cs, (h * hd + d) * cd);
                    kd[b..b + n].copy_from_slice(&ks[a..a + n]);
                }
                // values by position: one run of n · hd per head
                let (a, b) = (h * cs * hd, h * cd * hd);
                vd[b..b + n * hd].copy_from_slice(&vs[a..a + n * hd]);
            }
        }
        self.len = n;
    }

    /// Keys are kept transposed (per kv head, row d = dimension d of every position), so that attention
    /// scores many positions per vector; values by position.
    fn store(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let (hd, cap) = (self.hd, self.cap);
        for (h, (kh, vh)) in k.chunks_exact(hd).zip(v.chunks_exact(hd)).enumerate() {
            let kt = &mut self.k[layer][h * hd * cap..(h + 1) * hd * cap];
            for (d, &x) in kh.iter().enumerate() {
                kt[d * cap + pos] = x;
            }
            let at = (h * cap + pos) * hd;
            self.v[layer][at..at + hd].copy_from_slice(vh);
        }
    }
}

/// Runs `f(i, row i)` for every row of `out` (rows of `width` values), spread over the pool when there are
/// many rows (a prompt); a decode step's one row runs here.
fn for_rows(out: &mut [f32], width: usize, f: &(dyn Fn(usize, &mut [f32]) + Sync)) {
    const PER_TASK: usize = 8;
    let rows = out.len() / width;
    if rows < 2 * PER_TASK {
        for (i, r) in out.chunks_exact_mut(width).enumerate() {
            f(i, r);
        }
        return;
    }
    let p = OutPtr(out.as_mut_ptr());
    pool::global().run(rows.div_ceil(PER_TASK), &|task| {
        for i in task * PER_TASK..((task + 1) * PER_TASK).min(rows) {
            // SAFETY: row i is written by this task only, and lies within `out`.
            let r = unsafe { std::slice::from_raw_parts_mut(p.at(i * width), width) };
            f(i, r);
        }
    });
}

fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for_rows(out, d, &|i, or| {
        let xr = &x[i * d..(i + 1) * d];
        let ss: f32 = xr.iter().map(|v| v * v).sum();
        #[allow(clippy::cast_precision_loss)]
        let inv = 1.0 / (ss / d as f32 + eps).sqrt();
        for ((o, v), g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * inv * g;
        }
    });
}

/// out = gelu(gate) · up, GELU by its tanh approximation (`gelu_pytorch_tanh`, Gemma's GeGLU), in the form
/// candle computes it.
fn gelu_tanh_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;
    for ((a, &g), u) in out.iter_mut().zip(gate).zip(up) {
        *a = 0.5 * g * (1.0 + (SQRT_TWO_OVER_PI * g * (1.0 + 0.044_715 * g * g)).tanh()) * u;
    }
}

/// RMSNorm of one head vector in place (Qwen3's query and key norms).
fn norm_head(x: &mut [f32], w: &[f32], eps: f32) {
    let ss: f32 = x.iter().map(|v| v * v).sum();
    #[allow(clippy::cast_precision_loss)]
    let inv = 1.0 / (ss / x.len() as f32 + eps).sqrt();
    for (v, g) in x.iter_mut().zip(w) {
        *v = *v * inv * g;
    }
}

/// Hugging Face's "rotate half" RoPE on one head vector at one position.
fn rope(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = x.len() / 2;
    let (a, b) = x.split_at_mut(half);
    for i in 0..half {
        let (x1, x2) = (a[i], b[i]);
        a[i] = x1 * cos[i] - x2 * sin[i];
        b[i] = x2 * cos[i] + x1 * sin[i];
    }
}

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: each attention task writes only its own (token, head) slices.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// (A method, so that closures capture the whole `Send` wrapper, not its raw field.)
    fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// Parses a weight type for the engine: `f32`, `q8_0`, `q4_0`, `q4_1`, or `auto`/`stored` (None: keep the
/// types the weights are stored in).
///
/// # Errors
/// For any other name.
pub fn parse_weight_type(s: &str) -> Result<Option<WeightType>> {
    Ok(Some(match s.to_ascii_lowercase().as_str() {
        "auto" | "stored" => return Ok(None),
        "f32" => WeightType::F32,
        "q8_0" => WeightType::Q8_0,
        "q4_0" => WeightType::Q4_0,
        "q4_1" => WeightType::Q4_1,
        other => {
            return Err(ModelError::Invalid(format!(
                "unknown weight type {other:?} (auto, f32, q8_0, q4_0, q4_1)"
            )))
        }
    }))
}

impl CpuModel {
    #[must_use]
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Threads the engine's loops run on ([`set_threads`], else all CPUs).
    #[must_use]
    pub fn threads(&self) -> usize {
        pool::global().threads()
    }

    /// The instruction set the kernels run with.
    #[must_use]
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Bytes of weights a decode step reads (every projection and the output head).
    #[must_use]
    pub fn weight_bytes_per_token(&self) -> usize {
        self.layers
            .iter()
            .map(|l| {
                l.qkv.size_bytes() + l.o.size_bytes() + l.gate_up.size_bytes() + l.down.size_bytes()
            })
            .sum::<usize>()
            + self.lm_head.size_bytes()
    }

    /// The weight types in use, e.g. {"Q4_1": 211} (one entry per matrix; norms and the embedding are f32).
    #[must_use]
    pub fn weight_types(&self) -> std::collections::BTreeMap<&'static str, usize> {
        let mut m = std::collections::BTreeMap::new();
        for l in &self.layers {
            for w in [&l.qkv, &l.o, &l.gate_up, &l.down] {
                *m.entry(w.ty.name()).or_insert(0) += 1;
            }
        }
        *m.entry(self.lm_head.ty.name()).or_insert(0) += 1;
        m
    }

    /// Runs `ids` after what `cache` holds and returns the logits of the last position (V values), or of
    /// every new position (T × V) when `all` is set.
    ///
    /// # Errors
    /// When the cache cannot hold the new positions or an id is outside the vocabulary.
    pub fn forward(&self, ids: &[u32], cache: &mut CpuCache, all: bool) -> Result<Vec<f32>> {
        let mut work = std::mem::take(&mut cache.work);
        let result = self.run(&mut [Seq::new(ids, cache)], all, &mut work);
        cache.work = work;
        result
    }

    /// One forward over several sequences, each with its own cache and new tokens (a decode step's one
    /// token, or a chunk of a prompt): every projection runs once over all their rows, so the weights are
    /// read once for the whole batch; attention runs per sequence on its own cache. Returns the logits of
    /// each sequence's last new position, concatenated (B × V). A sequence's `delta` adds its adapters'
    /// low-rank updates to its rows.
    ///
    /// # Errors
    /// As [`CpuModel::forward`], for any sequence; then no cache has advanced.
    pub fn forward_batch(&self, seqs: &mut [Seq<'_>], work: &mut BatchWork) -> Result<Vec<f32>> {
        self.run(seqs, false, &mut work.0)
    }

    fn check(&self, seqs: &[Seq<'_>]) -> Result<()> {
        if seqs.is_empty() {
            return Err(ModelError::Invalid("forward of no sequences".into()));
        }
        for s in seqs {
            let (t, pos0) = (s.ids.len(), s.cache.len);
            if t == 0 {
                return Err(ModelError::Invalid("forward of no tokens".into()));
            }
            if pos0 + t > s.cache.cap {
                return Err(ModelError::TooLong {
                    needed: pos0 + t,
                    max: s.cache.cap,
                });
            }
            if let Some(img) = s.image {
                let n = s.ids.iter().filter(|&&id| id == img.token).count();
                if n * self.cfg.hidden_size != img.rows.len() {
                    return Err(ModelError::Invalid(format!(
                        "{n} image tokens for {} feature values ({} a row)",
                        img.rows.len(),
                        self.cfg.hidden_size
                    )));
                }
            }
            if let Some(&id) = s.ids.iter().find(|&&id| id as usize >= self.cfg.vocab_size) {
                return Err(ModelError::Invalid(format!(
                    "token id {id} is outside the vocabulary of {}",
                    self.cfg.vocab_size
                )));
            }
        }
        Ok(())
    }

    /// Logits of the last row of every sequence (or of every row of a single sequence when `all`).
    fn run(&self, seqs: &mut [Seq<'_>], all: bool, w: &mut Work) -> Result<Vec<f32>> {
        self.check(seqs)?;
        let dims = Dims::of(&self.cfg);
        // row offset of each sequence's first new token in the batch
        let mut offs = Vec::with_capacity(seqs.len() + 1);
        offs.push(0);
        for s in seqs.iter() {
            offs.push(offs[offs.len() - 1] + s.ids.len());
        }
        let t = offs[seqs.len()];
        self.embed_rows(seqs, &mut w.x);
        // cos/sin of every new row at its own position
        let cos = zeroed(&mut w.cos, t * dims.half);
        let sin = zeroed(&mut w.sin, t * dims.half);
        self.rope_tables(&self.inv_freq, seqs, &offs, cos, sin);
        let (cos_l, sin_l) = (zeroed(&mut w.cos_local, 0), zeroed(&mut w.sin_local, 0));
        if let Some(inv) = &self.inv_freq_local {
            cos_l.resize(t * dims.half, 0.0);
            sin_l.resize(t * dims.half, 0.0);
            self.rope_tables(inv, seqs, &offs, cos_l, sin_l);
        }
        let tasks = attention_tasks(seqs, &dims);
        let serial_attention = tasks.len() == 1 || (t == 1 && seqs[0].cache.len < 64);
        let (x, scratch) = (&mut w.x, &mut w.scratch);
        let h = zeroed(&mut w.h, t * dims.d);
        let qkv = zeroed(&mut w.qkv, t * dims.qkv_w);
        let att = zeroed(&mut w.att, t * dims.qd);
        let proj = zeroed(&mut w.proj, t * dims.d);
        let gu = zeroed(&mut w.gu, t * 2 * dims.f);
        let act = zeroed(&mut w.act, t * dims.f);
        let (isa, d, f, eps) = (self.isa, dims.d, dims.f, dims.eps);
        for (li, layer) in self.layers.iter().enumerate() {
            rms_norm(x, &layer.attn_norm, eps, h);
            matmul(isa, &layer.qkv, h, t, qkv, scratch);
            self.add_deltas(seqs, &offs, li, Proj::Qkv, h, qkv, dims.qkv_w, scratch);
            let turn: (&[f32], &[f32]) = if self.cfg.local_rope(li) {
                (cos_l, sin_l)
            } else {
                (cos, sin)
            };
            store_qkv(layer, li, seqs, &offs, &dims, qkv, turn);
            let step = AttentionStep {
                isa,
                li,
                window: self.cfg.window(li),
                dims: &dims,
                tasks: &tasks,
                offs: &offs,
                serial: serial_attention,
            };
            step.run(seqs, qkv, att);
            matmul(isa, &layer.o, att, t, proj, scratch);
            self.add_deltas(seqs, &offs, li, Proj::O, att, proj, d, scratch);
            if let Some((post_attn, _)) = &layer.post_norms {
                // Gemma 3: the attention's output normalised before its residual add
                rms_norm(proj, post_attn, eps, h);
                proj.copy_from_slice(h);
            }
            for (xr, pr) in x.chunks_exact_mut(d).zip(proj.chunks_exact(d)) {
                match &layer.o_bias {
                    Some(b) => xr
                        .iter_mut()
                        .zip(pr)
                        .zip(b)
                        .for_each(|((x, p), b)| *x += p + b),
                    None => xr.iter_mut().zip(pr).for_each(|(x, p)| *x += p),
                }
            }
            rms_norm(x, &layer.ffn_norm, eps, h);
            matmul(isa, &layer.gate_up, h, t, gu, scratch);
            self.add_deltas(seqs, &offs, li, Proj::GateUp, h, gu, 2 * f, scratch);
            let gu_ref: &[f32] = gu;
            let gelu = self.gelu;
            for_rows(act, f, &|i, a| {
                let (gate, up) = gu_ref[i * 2 * f..(i + 1) * 2 * f].split_at(f);
                if gelu {
                    gelu_tanh_mul(gate, up, a);
                } else {
                    silu_mul(isa, gate, up, a);
                }
            });
            matmul(isa, &layer.down, act, t, proj, scratch);
            self.add_deltas(seqs, &offs, li, Proj::Down, act, proj, d, scratch);
            if let Some((_, post_ffn)) = &layer.post_norms {
                rms_norm(proj, post_ffn, eps, h);
                proj.copy_from_slice(h);
            }
            x.iter_mut().zip(proj.iter()).for_each(|(x, p)| *x += p);
        }
        for s in seqs.iter_mut() {
            s.cache.len += s.ids.len();
        }
        // the rows whose logits are wanted: every row of a single sequence, or each sequence's last
        let rows: Vec<usize> = if all && seqs.len() == 1 {
            (0..t).collect()
        } else {
            offs[1..].iter().map(|&o| o - 1).collect()
        };
        Ok(self.logits(w, &rows, &dims))
    }

    /// The embedding rows of every sequence's new tokens, one after another, into `x`.
    fn embed_rows(&self, seqs: &[Seq<'_>], x: &mut Vec<f32>) {
        let d = self.cfg.hidden_size;
        x.clear();
        for s in seqs {
            let mut k = 0;
            for &id in s.ids {
                match s.image {
                    Some(img) if id == img.token => {
                        x.extend_from_slice(&img.rows[k * d..(k + 1) * d]);
                        k += 1;
                    }
                    _ => {
                        let start = x.len();
                        self.embed
                            .as_ref()
                            .unwrap_or(&self.lm_head)
                            .row_into(id as usize, x);
                        if let Some(s) = self.cfg.embed_scale() {
                            // Gemma: the input embeddings scaled (the tied output head is not)
                            for v in &mut x[start..] {
                                *v *= s;
                            }
                        }
                    }
                }
            }
        }
    }

    /// cos and sin of RoPE's angles (frequencies `inv_freq`) for every new row at its own position (`half`
    /// values a row).
    fn rope_tables(
        &self,
        inv_freq: &[f64],
        seqs: &[Seq<'_>],
        offs: &[usize],
        cos: &mut [f32],
        sin: &mut [f32],
    ) {
        let half = self.cfg.head_dim() / 2;
        for (si, s) in seqs.iter().enumerate() {
            for i in 0..s.ids.len() {
                let row = offs[si] + i;
                for (j, fr) in inv_freq.iter().enumerate() {
                    #[allow(clippy::cast_precision_loss)]
                    let a = (s.cache.len + i) as f64 * fr;
                    #[allow(clippy::cast_possible_truncation)]
                    {
                        cos[row * half + j] = a.cos() as f32;
                        sin[row * half + j] = a.sin() as f32;
                    }
                }
            }
        }
    }

    /// The logits of `rows` of the final hidden states `w.x`.
    fn logits(&self, w: &mut Work, rows: &[usize], dims: &Dims) -> Vec<f32> {
        let d = dims.d;
        let last = zeroed(&mut w.h, rows.len() * d);
        for (k, &r) in rows.iter().enumerate() {
            last[k * d..(k + 1) * d].copy_from_slice(&w.x[r * d..(r + 1) * d]);
        }
        let normed = zeroed(&mut w.normed, rows.len() * d);
        rms_norm(last, &self.norm, dims.eps, normed);
        let mut logits = vec![0f32; rows.len() * self.cfg.vocab_size];
        matmul(
            self.isa,
            &self.lm_head,
            normed,
            rows.len(),
            &mut logits,
            &mut w.scratch,
        );
        logits
    }

    /// Adds `y[rows] += Σ s·B·(A·x[rows])` of every adapter of every sequence to its rows of one projection's
    /// output (the adapted modules of `proj`, each in its own columns of `y`).
    #[allow(clippy::too_many_arguments)]
    fn add_deltas(
        &self,
        seqs: &[Seq<'_>],
        offs: &[usize],
        layer: usize,
        proj: Proj,
        x: &[f32],
        y: &mut [f32],
        width: usize,
        scratch: &mut Scratch,
    ) {
        let in_w = x.len() / offs[seqs.len()];
        for (si, s) in seqs.iter().enumerate() {
            let Some(stack) = s.delta else { continue };
            let (r0, r1) = (offs[si], offs[si + 1]);
            let xs = &x[r0 * in_w..r1 * in_w];
            for ad in &stack.adapters {
                for m in ad.layers[layer].iter().filter(|m| m.proj == proj) {
                    m.apply(
                        self.isa,
                        xs,
                        r1 - r0,
                        &mut y[r0 * width..r1 * width],
                        width,
                        scratch,
                    );
                }
            }
        }
    }
}

/// The sizes one forward works with, from the config.
#[derive(Clone, Copy)]
struct Dims {
    d: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
    f: usize,
    /// Query width (nh·hd) and key/value width (nkv·hd); Q, K and V stacked are `qkv_w` wide.
    qd: usize,
    kvd: usize,
    qkv_w: usize,
    half: usize,
    /// Query heads per kv head.
    rep: usize,
    scale: f32,
    eps: f32,
}

impl Dims {
    fn of(cfg: &LlamaConfig) -> Self {
        let (d, nh, nkv, hd) = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.kv_heads(),
            cfg.head_dim(),
        );
        let (qd, kvd) = (nh * hd, nkv * hd);
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
        Self {
            d,
            nh,
            nkv,
            hd,
            f: cfg.intermediate_size,
            qd,
            kvd,
            qkv_w: qd + 2 * kvd,
            half: hd / 2,
            rep: nh / nkv,
            scale: cfg.attn_scale() as f32,
            eps: cfg.rms_norm_eps as f32,
        }
    }
}

/// One attention task: (sequence, first head, heads, first row, end row).
type AttentionTask = (usize, usize, usize, usize, usize);

/// The attention tasks of a forward: a decoded token's heads that share a kv head go together (they read
/// its keys and values once); a prompt's rows go head by head, in chunks of 16 tokens.
fn attention_tasks(seqs: &[Seq<'_>], dims: &Dims) -> Vec<AttentionTask> {
    let (nh, nkv, rep) = (dims.nh, dims.nkv, dims.rep);
    let mut tasks = Vec::new();
    for (si, s) in seqs.iter().enumerate() {
        let st = s.ids.len();
        if st == 1 {
            for kvh in 0..nkv {
                for h0 in (kvh * rep..(kvh + 1) * rep).step_by(QB) {
                    tasks.push((si, h0, QB.min((kvh + 1) * rep - h0), 0, 1));
                }
            }
            continue;
        }
        let tok_chunk = if st >= 64 { 16 } else { st };
        for c in 0..st.div_ceil(tok_chunk) {
            for head in 0..nh {
                tasks.push((si, head, 1, c * tok_chunk, ((c + 1) * tok_chunk).min(st)));
            }
        }
    }
    tasks
}

/// Adds the q/k/v biases, rotates queries and keys, and stores every new row's keys and values in its
/// sequence's cache (layer `li`).
fn store_qkv(
    layer: &Layer,
    li: usize,
    seqs: &mut [Seq<'_>],
    offs: &[usize],
    dims: &Dims,
    qkv: &mut [f32],
    (cos, sin): (&[f32], &[f32]),
) {
    let (qd, kvd, hd, half, qkv_w) = (dims.qd, dims.kvd, dims.hd, dims.half, dims.qkv_w);
    for (si, s) in seqs.iter_mut().enumerate() {
        let pos0 = s.cache.len;
        for i in 0..s.ids.len() {
            let row = offs[si] + i;
            let r = &mut qkv[row * qkv_w..(row + 1) * qkv_w];
            if let Some(b) = &layer.qkv_bias {
                r.iter_mut().zip(b).for_each(|(v, b)| *v += b);
            }
            if let Some((qn, kn)) = &layer.qk_norm {
                for head in r[..qd].chunks_exact_mut(hd) {
                    norm_head(head, qn, dims.eps);
                }
                for head in r[qd..qd + kvd].chunks_exact_mut(hd) {
                    norm_head(head, kn, dims.eps);
                }
            }
            let (c, sn) = (
                &cos[row * half..(row + 1) * half],
                &sin[row * half..(row + 1) * half],
            );
            for head in r[..qd + kvd].chunks_exact_mut(hd) {
                rope(head, c, sn);
            }
            s.cache
                .store(li, pos0 + i, &r[qd..qd + kvd], &r[qd + kvd..]);
        }
    }
}

/// The attention of one layer over every sequence's cache, task by task.
struct AttentionStep<'a> {
    isa: Isa,
    li: usize,
    window: Option<usize>,
    dims: &'a Dims,
    tasks: &'a [AttentionTask],
    offs: &'a [usize],
    /// Run the tasks on this thread (one task, or a short decode step where waking the pool costs more).
    serial: bool,
}

impl AttentionStep<'_> {
    /// Each task writes its own (rows, head) slices of `att`.
    fn run(&self, seqs: &[Seq<'_>], qkv: &[f32], att: &mut [f32]) {
        let li = self.li;
        let views: Vec<(&[f32], &[f32], usize, usize)> = seqs
            .iter()
            .map(|s| {
                (
                    &s.cache.k[li][..],
                    &s.cache.v[li][..],
                    s.cache.cap,
                    s.cache.len,
                )
            })
            .collect();
        let out = OutPtr(att.as_mut_ptr());
        let task = |ti: usize| self.task(ti, &views, qkv, &out);
        if self.serial {
            (0..self.tasks.len()).for_each(task);
        } else {
            pool::global().run(self.tasks.len(), &task);
        }
    }

    fn task(&self, ti: usize, views: &[(&[f32], &[f32], usize, usize)], qkv: &[f32], out: &OutPtr) {
        let Dims {
            hd,
            qd,
            qkv_w,
            rep,
            scale,
            ..
        } = *self.dims;
        let (si, head, heads, c0, c1) = self.tasks[ti];
        let (kc, vc, cap, pos0) = views[si];
        let base = self.offs[si];
        let kvh = head / rep;
        let kt = &kc[kvh * hd * cap..(kvh + 1) * hd * cap];
        let vbase = &vc[kvh * cap * hd..(kvh + 1) * cap * hd];
        let mut scores = Vec::with_capacity(QB * (pos0 + c1));
        // query u: one token's heads head.. (step 0) or one head's tokens c0.. (step 1)
        let (count, step) = if heads > 1 { (heads, 0) } else { (c1 - c0, 1) };
        let at = |u: usize| (base + c0 + u * step, head + u * (1 - step));
        let mut i = 0;
        while i < count {
            let nq = (count - i).min(QB);
            let q: [&[f32]; QB] = std::array::from_fn(|u| {
                let (row, h) = at(i + u.min(nq - 1));
                &qkv[row * qkv_w + h * hd..][..hd]
            });
            // SAFETY: (row, head) of each query is written by this task only.
            let mut o: [&mut [f32]; QB] = std::array::from_fn(|u| unsafe {
                let (row, h) = at(i + u.min(nq - 1));
                std::slice::from_raw_parts_mut(out.at(row * qd + h * hd), hd)
            });
            attend_block(
                self.isa,
                &q[..nq],
                kt,
                vbase,
                cap,
                pos0 + c0 + i * step,
                step,
                self.window,
                scale,
                &mut scores,
                &mut o[..nq],
            );
            i += nq;
        }
    }
}

/// One sequence of a batched forward: its new tokens, its cache, the adapters on its rows, and the image
/// features that replace the embeddings of its image tokens.
pub struct Seq<'a> {
    pub ids: &'a [u32],
    pub cache: &'a mut CpuCache,
    pub delta: Option<&'a lora::LoraStack>,
    pub image: Option<ImageRows<'a>>,
}

/// A vision-language model's projected image features for the image tokens among a sequence's new ids: the
/// k-th occurrence of `token` gets row k of `rows` (hidden size values a row) as its input embedding.
#[derive(Clone, Copy)]
pub struct ImageRows<'a> {
    pub token: u32,
    pub rows: &'a [f32],
}

impl<'a> Seq<'a> {
    #[must_use]
    pub fn new(ids: &'a [u32], cache: &'a mut CpuCache) -> Self {
        Self {
            ids,
            cache,
            delta: None,
            image: None,
        }
    }
}

/// The buffers of a batched forward, kept between steps.
#[derive(Default)]
pub struct BatchWork(Work);

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use candle_core::{DType, Device, Tensor};
    use candle_nn::{VarBuilder, VarMap};

    use std::sync::Arc;

    use super::*;
    use strata_model::Llama;

    fn tiny() -> LlamaConfig {
        sized(64, 96)
    }

    /// Two layers of width `hidden`, 4 heads on 2 kv heads, a vocabulary of 70.
    fn sized(hidden: usize, ffn: usize) -> LlamaConfig {
        strata_model::ModelSpec {
            hidden_size: hidden,
            intermediate_size: ffn,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            context: 32,
            rope_theta: 1e4,
            tie_word_embeddings: false,
        }
        .to_config(70, 0)
        .unwrap()
    }

    /// A candle model with random weights (norm gains near 1, biases non-zero) and its tensors.
    fn random_model(cfg: &LlamaConfig, seed: u64) -> (Llama, HashMap<String, Tensor>) {
        use rand::{Rng, SeedableRng};
        let dev = Device::Cpu;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let vm = VarMap::new();
        let model = Llama::load(&VarBuilder::from_varmap(&vm, DType::F32, &dev), cfg).unwrap();
        let mut tensors = HashMap::new();
        let vars = vm.data().lock().unwrap();
        let mut names: Vec<&String> = vars.keys().collect();
        names.sort(); // the same values for the same names on every run
        for name in names {
            let var = &vars[name];
            let shape = var.as_tensor().shape().clone();
            let base = if name.contains("norm") {
                1.0 - cfg.norm_shift()
            } else {
                0.0
            };
            let values: Vec<f32> = (0..shape.elem_count())
                .map(|_| base + rng.random_range(-0.25f32..0.25))
                .collect();
            let t = Tensor::from_vec(values, &shape, &dev).unwrap();
            var.set(&t).unwrap();
            tensors.insert(name.clone(), t);
        }
        (model, tensors)
    }

    /// Logits of the candle model for `ids` (T × V) with all positions.
    fn candle_logits(model: &Llama, ids: &[u32]) -> Vec<f32> {
        let ids = Tensor::new(ids, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        model
            .forward(&ids)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// The engine's logits: a prompt of 5 in one forward (all positions), then the rest one by one.
    fn engine_logits(m: &CpuModel, ids: &[u32]) -> Vec<f32> {
        let mut cache = CpuCache::new(m, 32);
        let mut out = m.forward(&ids[..5], &mut cache, true).unwrap();
        for &id in &ids[5..] {
            out.extend(m.forward(&[id], &mut cache, false).unwrap());
        }
        out
    }

    fn max_rel_err(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    const IDS: [u32; 9] = [3, 7, 1, 9, 4, 4, 2, 69, 0];

    fn variants() -> Vec<(&'static str, LlamaConfig)> {
        let mut out = vec![("llama", tiny())];
        let mut c = tiny();
        c.tie_word_embeddings = true;
        out.push(("tied", c));
        let mut c = tiny();
        c.architectures = vec!["Qwen2ForCausalLM".into()];
        c.sliding_window = Some(3);
        c.use_sliding_window = Some(true);
        c.max_window_layers = Some(1); // layer 0 in full, layer 1 within the window
        out.push(("qwen2 bias + window", c));
        // Qwen3: query and key heads RMS-normalised before RoPE (gains random around 1), head_dim ≠ D / nh
        let mut c = tiny();
        c.architectures = vec!["Qwen3ForCausalLM".into()];
        c.head_dim = Some(8);
        out.push(("qwen3 q/k norms", c));
        // Gemma 3: gains 1 + w, sandwich norms, GeGLU, the scaled embedding (tied head unscaled), scores
        // scaled by query_pre_attn_scalar, a sliding layer (window 3, RoPE base 100) and a full one (1e6)
        let mut c = tiny();
        c.architectures = vec!["Gemma3ForCausalLM".into()];
        c.model_type = "gemma3_text".into();
        c.head_dim = Some(8);
        c.hidden_activation = Some("gelu_pytorch_tanh".into());
        c.query_pre_attn_scalar = Some(24.0);
        c.sliding_window = Some(3);
        c.layer_types = Some(vec!["sliding_attention".into(), "full_attention".into()]);
        c.rope_theta = 1e6;
        c.rope_local_base_freq = Some(100.0);
        c.tie_word_embeddings = true;
        out.push(("gemma3", c));
        let mut c = tiny();
        c.attention_bias = true;
        c.head_dim = Some(32);
        c.rope_scaling = Some(strata_model::RopeScaling {
            rope_type: "llama3".into(),
            factor: 8.0,
            low_freq_factor: Some(1.0),
            high_freq_factor: Some(4.0),
            original_max_position_embeddings: Some(8),
        });
        out.push(("llama3 rope, o bias, head_dim", c));
        // 6 query heads per kv head: a decoded token's heads go to attention in groups of 4 and 2
        let mut c = tiny();
        c.num_attention_heads = 12;
        c.num_key_value_heads = Some(2);
        c.head_dim = Some(16);
        out.push(("12 heads on 2 kv heads", c));
        out
    }

    #[test]
    fn a_copied_prefix_continues_exactly_as_the_prompt_run_whole() {
        for (what, cfg) in variants() {
            let (_, tensors) = random_model(&cfg, 3);
            let m = CpuModel::from_tensors(Path::new("mem"), cfg, tensors, None).unwrap();
            // another prompt that shares the first 5 tokens, in a cache of another capacity
            let mut first = CpuCache::new(&m, 20);
            m.forward(&[3, 7, 1, 9, 4, 8, 8], &mut first, false)
                .unwrap();
            let mut whole = CpuCache::new(&m, 32);
            let want = m.forward(&IDS, &mut whole, true).unwrap();
            let mut reused = CpuCache::new(&m, 32);
            reused.copy_prefix(&first, 5);
            assert_eq!(reused.len(), 5);
            let got = m.forward(&IDS[5..], &mut reused, true).unwrap();
            let v = want.len() / IDS.len();
            assert_eq!(got, want[5 * v..], "{what}");
            // and on, one token at a time
            assert_eq!(
                m.forward(&[5], &mut reused, false).unwrap(),
                m.forward(&[5], &mut whole, false).unwrap(),
                "{what}"
            );
        }
    }

    /// Image rows stand in for the embeddings of the image tokens, in order: rows that are the embeddings of
    /// ids 5 and 6 given to two image tokens (id 0) give exactly the logits of the ids with 5 and 6 there;
    /// rows of the wrong count are refused.
    #[test]
    fn image_rows_replace_the_embeddings_of_image_tokens_in_order() {
        let cfg = tiny();
        let (_, tensors) = random_model(&cfg, 4);
        let embed = tensors["model.embed_tokens.weight"].clone();
        let m = CpuModel::from_tensors(Path::new("mem"), cfg.clone(), tensors, None).unwrap();
        let d = cfg.hidden_size;
        let row = |i: u32| -> Vec<f32> { embed.get(i as usize).unwrap().to_vec1().unwrap() };
        let mut rows = row(5);
        rows.extend(row(6));
        let mut w = BatchWork::default();
        let mut with_rows = |ids: &[u32]| {
            let mut c = CpuCache::new(&m, 16);
            m.forward_batch(
                &mut [Seq {
                    ids,
                    cache: &mut c,
                    delta: None,
                    image: Some(ImageRows {
                        token: 0,
                        rows: &rows,
                    }),
                }],
                &mut w,
            )
        };
        let with_image = with_rows(&[3, 0, 0, 9]).unwrap();
        let err = with_rows(&[3, 0, 9]).unwrap_err().to_string();
        let mut plain = CpuCache::new(&m, 16);
        let want = m.forward(&[3, 5, 6, 9], &mut plain, false).unwrap();
        assert_eq!(with_image, want);
        assert!(
            err.contains("1 image tokens") && err.contains(&format!("{}", 2 * d)),
            "{err}"
        );
    }

    #[test]
    fn f32_engine_matches_the_candle_model() {
        for (what, cfg) in variants() {
            let (model, tensors) = random_model(&cfg, 1);
            let m = CpuModel::from_tensors(Path::new("mem"), cfg, tensors, None).unwrap();
            let err = max_rel_err(&engine_logits(&m, &IDS), &candle_logits(&model, &IDS));
            assert!(err < 1e-5, "{what}: {err}");
        }
    }

    /// A `llama` GGUF in memory of `tensors` (HF names) stored as `ty` where a matrix's rows are whole
    /// blocks of it, else F32.
    fn gguf_of(
        cfg: &LlamaConfig,
        tensors: &HashMap<String, Tensor>,
        ty: candle_core::quantized::GgmlDType,
    ) -> Vec<u8> {
        gguf_with(cfg, tensors, |_, t| {
            let whole = t.rank() == 2 && t.dims()[1] % ty.block_size() == 0;
            candle_core::quantized::QTensor::quantize(
                t,
                if whole {
                    ty
                } else {
                    candle_core::quantized::GgmlDType::F32
                },
            )
            .unwrap()
        })
    }

    /// A `llama` GGUF in memory of `tensors` (HF names), each stored as `store` makes it.
    fn gguf_with(
        cfg: &LlamaConfig,
        tensors: &HashMap<String, Tensor>,
        store: impl Fn(&str, &Tensor) -> candle_core::quantized::QTensor,
    ) -> Vec<u8> {
        use candle_core::quantized::gguf_file::Value;
        use candle_core::quantized::QTensor;
        let u = |x: usize| Value::U32(u32::try_from(x).unwrap());
        let md = [
            ("general.architecture", Value::String("llama".into())),
            ("llama.block_count", u(cfg.num_hidden_layers)),
            ("llama.context_length", u(cfg.max_position_embeddings)),
            ("llama.embedding_length", u(cfg.hidden_size)),
            ("llama.feed_forward_length", u(cfg.intermediate_size)),
            ("llama.attention.head_count", u(cfg.num_attention_heads)),
            ("llama.attention.head_count_kv", u(cfg.kv_heads())),
            ("llama.rope.freq_base", Value::F32(1e4)),
            ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
            ("llama.vocab_size", u(cfg.vocab_size)),
        ];
        let mut qs = Vec::new();
        for (hf, t) in tensors {
            let g = hf
                .replace("model.embed_tokens.weight", "token_embd.weight")
                .replace("model.norm.weight", "output_norm.weight")
                .replace("lm_head.weight", "output.weight")
                .replace("model.layers.", "blk.")
                .replace("input_layernorm", "attn_norm")
                .replace("post_attention_layernorm", "ffn_norm")
                .replace("self_attn.q_proj", "attn_q")
                .replace("self_attn.k_proj", "attn_k")
                .replace("self_attn.v_proj", "attn_v")
                .replace("self_attn.o_proj", "attn_output")
                .replace("mlp.gate_proj", "ffn_gate")
                .replace("mlp.up_proj", "ffn_up")
                .replace("mlp.down_proj", "ffn_down");
            qs.push((g, store(hf, t)));
        }
        let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
        let t_refs: Vec<(&str, &QTensor)> = qs.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut buf = std::io::Cursor::new(Vec::new());
        candle_core::quantized::gguf_file::write(&mut buf, &md_refs, &t_refs).unwrap();
        buf.into_inner()
    }

    /// The tensor of GGUF bytes `file` whose HF name is `hf`, as the file stores it.
    fn file_tensor(file: &[u8], hf: &str) -> candle_core::quantized::QTensor {
        let c =
            strata_model::gguf::read_header(Path::new("k.gguf"), &mut std::io::Cursor::new(file))
                .unwrap();
        let g = c
            .tensor_infos
            .keys()
            .find(|g| strata_model::gguf::hf_name(g).as_deref() == Some(hf))
            .unwrap();
        c.tensor(&mut std::io::Cursor::new(file), g, &Device::Cpu)
            .unwrap()
    }

    /// The values of each tensor of GGUF bytes `file`, under HF names, dequantised by candle.
    fn file_values(file: &[u8], names: &[&String]) -> HashMap<String, Tensor> {
        names
            .iter()
            .map(|name| {
                let t = file_tensor(file, name).dequantize(&Device::Cpu).unwrap();
                ((*name).clone(), t)
            })
            .collect()
    }

    #[test]
    fn k_quant_files_run_q4_k_as_q4_1_and_the_others_as_q8_0_converted_tensor_by_tensor() {
        use candle_core::quantized::{GgmlDType, QStorage, QTensor};
        // rows of 256: whole Q4_K and Q6_K super-blocks
        let cfg = sized(256, 512);
        let (_, tensors) = random_model(&cfg, 5);
        let names: Vec<&String> = tensors.keys().collect();
        // Q6_K: the same values as f32 in the file, made Q8_0 when the model is built
        let kq = gguf_of(&cfg, &tensors, GgmlDType::Q6K);
        let m = CpuModel::from_gguf_bytes(Path::new("k.gguf"), &kq, None).unwrap();
        let values = file_values(&kq, &names);
        let f32_file = gguf_of(&cfg, &values, GgmlDType::F32);
        let want =
            CpuModel::from_gguf_bytes(Path::new("f.gguf"), &f32_file, Some(WeightType::Q8_0))
                .unwrap();
        assert_eq!(
            m.weight_types().keys().copied().collect::<Vec<_>>(),
            ["Q8_0"]
        );
        let (mut a, mut b) = (CpuCache::new(&m, 32), CpuCache::new(&want, 32));
        assert_eq!(
            m.forward(&IDS, &mut a, true).unwrap(),
            want.forward(&IDS, &mut b, true).unwrap(),
        );
        // Q4_K: every projection and the head as the Q4_1 blocks of its sub-blocks, the embedding as f32
        let kq = gguf_of(&cfg, &tensors, GgmlDType::Q4K);
        let m = CpuModel::from_gguf_bytes(Path::new("k.gguf"), &kq, None).unwrap();
        let values = file_values(&kq, &names);
        let q41_file = gguf_with(&cfg, &values, |hf, t| {
            if hf == "model.embed_tokens.weight" || t.rank() == 1 {
                return QTensor::quantize(t, GgmlDType::F32).unwrap();
            }
            let blocks = file_tensor(&kq, hf).data().unwrap().into_owned();
            let q41 = quant::q4_k_as_q4_1(&blocks);
            let storage =
                QStorage::from_data(std::borrow::Cow::Owned(q41), &Device::Cpu, GgmlDType::Q4_1)
                    .unwrap();
            QTensor::new(storage, t.dims()).unwrap()
        });
        let want = CpuModel::from_gguf_bytes(Path::new("q.gguf"), &q41_file, None).unwrap();
        assert_eq!(
            m.weight_types().keys().copied().collect::<Vec<_>>(),
            ["Q4_1"]
        );
        let (mut a, mut b) = (CpuCache::new(&m, 32), CpuCache::new(&want, 32));
        let got = m.forward(&IDS, &mut a, true).unwrap();
        assert_eq!(got, want.forward(&IDS, &mut b, true).unwrap());
        // asked for Q8_0, a Q4_K file converts as the Q6_K one does
        let m8 =
            CpuModel::from_gguf_bytes(Path::new("k.gguf"), &kq, Some(WeightType::Q8_0)).unwrap();
        assert_eq!(
            m8.weight_types().keys().copied().collect::<Vec<_>>(),
            ["Q8_0"]
        );
    }

    /// A Q5_0 file (llama.cpp's Q4_K_M gives its Gemma 3 projections that type) runs its own blocks where
    /// they are packed (VNNI), and its logits equal, bit for bit, those of the Q8_0 holding the same values;
    /// both within the quantisation's reach of the file's f32 values.
    #[test]
    fn q5_0_files_run_as_they_are_and_equal_the_q8_0_of_their_values() {
        use candle_core::quantized::GgmlDType;
        let cfg = sized(256, 512);
        let (_, tensors) = random_model(&cfg, 6);
        let names: Vec<&String> = tensors.keys().collect();
        let q5 = gguf_of(&cfg, &tensors, GgmlDType::Q5_0);
        let m = CpuModel::from_gguf_bytes(Path::new("q5.gguf"), &q5, None).unwrap();
        let m8 =
            CpuModel::from_gguf_bytes(Path::new("q5.gguf"), &q5, Some(WeightType::Q8_0)).unwrap();
        let types: Vec<(&str, usize)> = m.weight_types().into_iter().collect();
        if m.isa == kernels::Isa::Avx2Vnni {
            // the head's 70 rows are not groups of 8: it runs as Q8_0
            assert_eq!(types, [("Q5_0", 8), ("Q8_0", 1)]);
        } else {
            assert_eq!(types, [("Q8_0", 9)]);
        }
        assert_eq!(
            m8.weight_types().keys().copied().collect::<Vec<_>>(),
            ["Q8_0"]
        );
        let (mut a, mut b) = (CpuCache::new(&m, 32), CpuCache::new(&m8, 32));
        let got = m.forward(&IDS, &mut a, true).unwrap();
        assert_eq!(got, m8.forward(&IDS, &mut b, true).unwrap());
        // the file's values in f32: the difference left is the 8-bit activations' (the same for any Q8_0 run of
        // this random model; measured 0.058 of the largest logit)
        let values = file_values(&q5, &names);
        let f32_file = gguf_of(&cfg, &values, GgmlDType::F32);
        let f = CpuModel::from_gguf_bytes(Path::new("f.gguf"), &f32_file, None).unwrap();
        let mut c = CpuCache::new(&f, 32);
        let want = f.forward(&IDS, &mut c, true).unwrap();
        let err = max_rel_err(&got, &want);
        assert!(err > 0.0 && err < 0.1, "{err}");
        // and the decode path (one token at a time) agrees with the Q8_0 one as well
        assert_eq!(engine_logits(&m, &IDS), engine_logits(&m8, &IDS));
    }

    #[test]
    fn quantised_engines_stay_close_to_f32_and_degrade_in_order() {
        let cfg = tiny();
        let (model, tensors) = random_model(&cfg, 2);
        let reference = candle_logits(&model, &IDS);
        let mut errs = Vec::new();
        for ty in [WeightType::Q8_0, WeightType::Q4_1, WeightType::Q4_0] {
            let m =
                CpuModel::from_tensors(Path::new("mem"), cfg.clone(), tensors.clone(), Some(ty))
                    .unwrap();
            assert_eq!(m.weight_types().get(ty.name()), Some(&9));
            errs.push(max_rel_err(&engine_logits(&m, &IDS), &reference));
        }
        // the kernels are exact against a reference (kernels::tests); this bounds the quantisation error itself
        eprintln!("{errs:?}");
        assert!(errs[0] < 0.03, "{errs:?}");
        assert!(errs[1] < 0.3 && errs[2] < 0.3, "{errs:?}");
        assert!(errs[0] < errs[1] && errs[0] < errs[2], "{errs:?}");
    }

    #[test]
    fn bad_calls_are_errors() {
        let cfg = tiny();
        let (_, mut tensors) = random_model(&cfg, 3);
        let m =
            CpuModel::from_tensors(Path::new("mem"), cfg.clone(), tensors.clone(), None).unwrap();
        let mut cache = CpuCache::new(&m, 4);
        assert!(m.forward(&[1, 2, 3, 4, 5], &mut cache, false).is_err());
        assert!(m.forward(&[70], &mut cache, false).is_err());
        assert!(m.forward(&[], &mut cache, false).is_err());
        tensors.insert(
            "model.layers.1.mlp.up_proj.weight".into(),
            Tensor::zeros((96, 63), DType::F32, &Device::Cpu).unwrap(),
        );
        let e = CpuModel::from_tensors(Path::new("mem"), cfg.clone(), tensors.clone(), None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("model.layers.1.mlp.up_proj.weight") && e.contains("[96, 63]"),
            "{e}"
        );
        tensors.remove("model.norm.weight");
        let e = CpuModel::from_tensors(Path::new("mem"), cfg, tensors, None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("model.layers.1.mlp.up_proj.weight") || e.contains("model.norm.weight"),
            "{e}"
        );
    }

    #[test]
    fn cached_generation_matches_the_full_forward_over_the_whole_prefix() {
        // the engine decodes token by token from its KV cache; the reference runs candle's training
        // forward over the whole sequence so far at every step (no cache at all)
        let cfg = tiny();
        let (model, tensors) = random_model(&cfg, 4);
        let m = CpuModel::from_tensors(Path::new("mem"), cfg.clone(), tensors, None).unwrap();
        let mut cache = CpuCache::new(&m, 32);
        let (mut a, mut b) = (5u32, 5u32);
        let mut seq = Vec::new();
        for step in 0..12 {
            seq.push(a);
            let full = model
                .forward(
                    &Tensor::new(seq.as_slice(), &Device::Cpu)
                        .unwrap()
                        .unsqueeze(0)
                        .unwrap(),
                )
                .unwrap(); // (1, T, V)
            let la: Vec<f32> = full
                .get(0)
                .unwrap()
                .get(seq.len() - 1)
                .unwrap()
                .to_vec1()
                .unwrap();
            let lb = m.forward(&[b], &mut cache, false).unwrap();
            assert!(max_rel_err(&lb, &la) < 1e-5, "step {step}");
            let argmax = |v: &[f32]| {
                u32::try_from(
                    v.iter()
                        .enumerate()
                        .max_by(|x, y| x.1.total_cmp(y.1))
                        .unwrap()
                        .0,
                )
                .unwrap()
            };
            (a, b) = (argmax(&la), argmax(&lb));
            assert_eq!(a, b, "step {step}");
        }
        assert_eq!(cache.len(), 12);
    }

    /// Every projection of every layer adapted, rank 3 (tails of the kernels' tiles), random A and B.
    fn random_adapter(cfg: &LlamaConfig, seed: u64) -> strata_model::lora::Adapter {
        use rand::{Rng, SeedableRng};
        let config = strata_model::lora::LoraConfig {
            r: 3,
            lora_alpha: 6.0,
            target_modules: strata_model::lora::TARGETS[..7]
                .iter()
                .map(|s| (*s).to_string())
                .collect(),
            ..strata_model::lora::LoraConfig::default()
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let tensors = strata_model::lora::adapter_shapes(cfg, &config)
            .into_iter()
            .map(|(name, (r, c))| {
                let v: Vec<f32> = (0..r * c).map(|_| rng.random_range(-0.2f32..0.2)).collect();
                (name, Tensor::from_vec(v, (r, c), &Device::Cpu).unwrap())
            })
            .collect();
        strata_model::lora::Adapter {
            config,
            tensors,
            base: "random".into(),
        }
    }

    /// The logits of `new` on `m` with `delta`, after `hist` went through the same cache: a sequence alone.
    fn alone(m: &CpuModel, delta: Option<&LoraStack>, hist: &[u32], new: &[u32]) -> Vec<f32> {
        let mut c = CpuCache::new(m, 32);
        let mut w = BatchWork::default();
        if !hist.is_empty() {
            m.forward_batch(
                &mut [Seq {
                    ids: hist,
                    cache: &mut c,
                    delta,
                    image: None,
                }],
                &mut w,
            )
            .unwrap();
        }
        m.forward_batch(
            &mut [Seq {
                ids: new,
                cache: &mut c,
                delta,
                image: None,
            }],
            &mut w,
        )
        .unwrap()
    }

    /// A batch of three sequences at different points (a prompt's first chunk, a decode step deep in its
    /// cache, a prompt's second chunk), one with two stacked adapters, one with one, one with none, gives
    /// each the logits it gets alone — and an adapter applied at run time gives the logits of the model
    /// with it merged (candle's merge, the one `strata merge` writes).
    #[test]
    fn batched_forward_with_adapters_matches_each_sequence_alone_and_merged_weights() {
        let cfg = tiny();
        let (_, tensors) = random_model(&cfg, 5);
        let (a1, a2) = (random_adapter(&cfg, 6), random_adapter(&cfg, 7));
        for ty in [
            None,
            Some(WeightType::Q8_0),
            Some(WeightType::Q4_0),
            Some(WeightType::Q4_1),
        ] {
            let base =
                CpuModel::from_tensors(Path::new("mem"), cfg.clone(), tensors.clone(), ty).unwrap();
            let merged_with = |ads: &[&strata_model::lora::Adapter]| {
                let mut w = tensors.clone();
                for a in ads {
                    strata_model::lora::merge(&mut w, a, DType::F32).unwrap();
                }
                CpuModel::from_tensors(Path::new("mem"), cfg.clone(), w, ty).unwrap()
            };
            let (m1, m12) = (merged_with(&[&a1]), merged_with(&[&a1, &a2]));
            let r1 = Arc::new(RuntimeAdapter::new("a1", &a1, &cfg).unwrap());
            let r2 = Arc::new(RuntimeAdapter::new("a2", &a2, &cfg).unwrap());
            let one = LoraStack {
                adapters: vec![r1.clone()],
            };
            let two = LoraStack {
                adapters: vec![r1, r2],
            };
            let want = [
                alone(&base, Some(&two), &[], &IDS[..5]),
                alone(&base, Some(&one), &IDS[..8], &IDS[8..]),
                alone(&base, None, &IDS[..4], &IDS[4..7]),
            ];
            if ty.is_none() {
                // unmerged = merged (a quantised base quantises W + s·BA when merged, W alone when not)
                let merged = [
                    alone(&m12, None, &[], &IDS[..5]),
                    alone(&m1, None, &IDS[..8], &IDS[8..]),
                ];
                for (k, m) in merged.iter().enumerate() {
                    let err = max_rel_err(&want[k], m);
                    assert!(err < 1e-5, "merged vs unmerged, sequence {k}: {err}");
                }
            }
            let mut caches: Vec<CpuCache> = (0..3).map(|_| CpuCache::new(&base, 32)).collect();
            let mut work = BatchWork::default();
            {
                let [c0, c1, c2] = &mut caches[..] else {
                    unreachable!()
                };
                // histories through the batch too, with their adapters
                let mut seqs = [
                    Seq {
                        ids: &IDS[..8],
                        cache: c1,
                        delta: Some(&one),
                        image: None,
                    },
                    Seq::new(&IDS[..4], c2),
                ];
                base.forward_batch(&mut seqs, &mut work).unwrap();
                let mut seqs = [
                    Seq {
                        ids: &IDS[..5],
                        cache: c0,
                        delta: Some(&two),
                        image: None,
                    },
                    Seq {
                        ids: &IDS[8..],
                        cache: c1,
                        delta: Some(&one),
                        image: None,
                    },
                    Seq::new(&IDS[4..7], c2),
                ];
                let got = base.forward_batch(&mut seqs, &mut work).unwrap();
                // bit for bit: a sequence's logits do not depend on what it is batched with (the server
                // promises each stream what the request alone would give)
                let v = cfg.vocab_size;
                for (k, w) in want.iter().enumerate() {
                    assert_eq!(&got[k * v..(k + 1) * v], &w[..], "{ty:?} sequence {k}");
                }
            }
            assert_eq!(
                caches.iter().map(CpuCache::len).collect::<Vec<_>>(),
                [5, 9, 7]
            );
            // one bad sequence fails the batch before any cache moves
            let mut full = CpuCache::new(&base, 2);
            let mut seqs = [
                Seq::new(&IDS[..2], &mut caches[0]),
                Seq::new(&IDS[..3], &mut full),
            ];
            assert!(base.forward_batch(&mut seqs, &mut work).is_err());
            assert_eq!(caches[0].len(), 5);
        }
    }
}
