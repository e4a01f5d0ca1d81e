//! The matrix products of the CPU engine: y (T × N) = x (T × K) · Wᵀ for an f32 or ggml-quantised W
//! (N × K). Rows of W are split between threads; each thread walks its rows in small tiles against all
//! tokens so that a tile of weights is read from memory once. x86-64 runs hand-written AVX2/FMA kernels
//! (VNNI for 8-bit dot products where the CPU has it), chosen at run time; other CPUs run the portable
//! versions, which are also the reference the SIMD ones are tested against.

use super::quant::{get_f16, Matrix, QuantActs, WeightType, QK};

/// Instruction sets the kernels can use, detected once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Portable,
    Avx2,
    Avx2Vnni,
}

impl Isa {
    #[must_use]
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::env::var_os("STRATA_PORTABLE_KERNELS").is_some() {
                return Self::Portable;
            }
            let only_avx2 = std::env::var("STRATA_KERNELS").is_ok_and(|v| v == "avx2");
            let avx2 = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            if avx2
                && !only_avx2
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("avx512vl")
            {
                return Self::Avx2Vnni;
            }
            if avx2 {
                return Self::Avx2;
            }
        }
        Self::Portable
    }
}

impl Isa {
    /// [`Isa::detect`], computed once per process.
    pub fn detect_cached() -> Self {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(Self::detect)
    }
}

/// One block of 32 activations to 8 bits (see [`super::quant::quantize_act_block`]), SIMD where available.
pub fn quantize_block(isa: Isa, x: &[f32], qs: &mut [i8]) -> (f32, i32) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Portable && x.len() == QK && qs.len() == QK {
        // SAFETY: AVX2 was detected; both slices hold 32 elements.
        return unsafe { x86::quantize_block(x, qs) };
    }
    let _ = isa;
    super::quant::quantize_act_block(x, qs)
}

/// A pointer that several threads write through, each to its own disjoint elements.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: every user writes a set of indices no other thread touches (its own rows of W).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// Scratch space reused between calls (quantised activations).
#[derive(Debug, Default)]
pub struct Scratch {
    acts: QuantActs,
}

/// Quantised tiles: rows × tokens (the weights of a tile are loaded once for TT tokens, the activations
/// once for QR rows).
const QR: usize = 2;
const TT: usize = 4;
/// f32 tiles: rows × tokens.
const FR: usize = 4;
/// Rows of an f32 tile for a lone token (decode) in 512-bit registers.
const DR: usize = 16;
const FT: usize = 3;

/// y (t × w.rows) = x (t × w.cols) · wᵀ.
pub fn matmul(isa: Isa, w: &Matrix, x: &[f32], t: usize, y: &mut [f32], scratch: &mut Scratch) {
    let (n, k) = (w.rows, w.cols);
    debug_assert_eq!(x.len(), t * k);
    debug_assert_eq!(y.len(), t * n);
    if w.ty != WeightType::F32 {
        scratch.acts.quantize(x, k);
    }
    let acts = &scratch.acts;
    let pool = super::pool::global();
    let threads = pool.threads();
    // Rows per task: a few tasks per thread for big products (balance), one per thread for decode.
    let tasks = if t * n * k < 1 << 16 { 1 } else { threads * 4 };
    // (packed matrices are cut between groups of 8 rows)
    let chunk = n
        .div_ceil(tasks)
        .next_multiple_of(if w.packed { 8 } else { FR });
    let out = Out(y.as_mut_ptr());
    let run = |start: usize| {
        let end = (start + chunk).min(n);
        // SAFETY: rows start..end of every token belong to this task alone.
        unsafe { rows(isa, w, x, acts, t, start, end, out) };
    };
    if tasks == 1 || n <= chunk {
        run(0);
    } else {
        pool.run(n.div_ceil(chunk), &|c| run(c * chunk));
    }
}

/// Rows `start..end` of y for all `t` tokens.
#[allow(clippy::too_many_arguments)]
unsafe fn rows(
    isa: Isa,
    w: &Matrix,
    x: &[f32],
    acts: &QuantActs,
    t: usize,
    start: usize,
    end: usize,
    out: Out,
) {
    let n = w.rows;
    // Token blocks keep a block of activations in cache while a block of rows passes over it.
    let tb = 64;
    let rb = 32;
    let mut r0 = start;
    while r0 < end {
        let r1 = (r0 + rb).min(end);
        let mut t0 = 0;
        while t0 < t {
            let t1 = (t0 + tb).min(t);
            match w.ty {
                WeightType::F32 => f32_block(isa, w, x, r0, r1, t0, t1, n, out),
                _ => quant_block(isa, w, acts, r0, r1, t0, t1, n, out),
            }
            t0 = t1;
        }
        r0 = r1;
    }
}

#[allow(clippy::too_many_arguments)]
unsafe fn f32_block(
    isa: Isa,
    w: &Matrix,
    x: &[f32],
    r0: usize,
    r1: usize,
    t0: usize,
    t1: usize,
    n: usize,
    out: Out,
) {
    // AVX-512's 32 vector registers hold a 4 × 6 tile of accumulators; AVX2's 16 hold 4 × 3. A lone token
    // (decode) streams DR (16) rows at a time: each row's sum runs in the same order whatever the rows beside it,
    // so the results are those of the 4-row tiles, bit for bit.
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2Vnni && t1 - t0 == 1 {
        let k = w.cols;
        let xp = [&x[t0 * k..][..k]];
        let mut r = r0;
        while r < r1 {
            let nr = (r1 - r).min(DR);
            let wp: [&[f32]; DR] = std::array::from_fn(|i| &w.f32[(r + i.min(nr - 1)) * k..][..k]);
            // SAFETY: AVX-512F/VL were detected (Avx2Vnni).
            let acc = x86::dot_f32_tile_512(&wp, &xp);
            for (i, row) in acc.iter().enumerate().take(nr) {
                *out.0.add(t0 * n + r + i) = row[0];
            }
            r += nr;
        }
        return;
    }
    if isa == Isa::Avx2Vnni {
        f32_rows::<6>(isa, w, x, r0, r1, t0, t1, n, out);
    } else {
        f32_rows::<FT>(isa, w, x, r0, r1, t0, t1, n, out);
    }
}

#[allow(clippy::too_many_arguments)]
unsafe fn f32_rows<const TN: usize>(
    isa: Isa,
    w: &Matrix,
    x: &[f32],
    r0: usize,
    r1: usize,
    t0: usize,
    t1: usize,
    n: usize,
    out: Out,
) {
    let k = w.cols;
    let mut r = r0;
    while r < r1 {
        let nr = (r1 - r).min(FR);
        let mut t = t0;
        while t < t1 {
            let nt = (t1 - t).min(TN);
            // Tiles at the edges repeat their last row/token and drop the extra results.
            let wp: [&[f32]; FR] = std::array::from_fn(|i| &w.f32[(r + i.min(nr - 1)) * k..][..k]);
            if nt == 1 {
                // decode: a tile of one token, which adds in the same order as a wider tile, so that a
                // token's result does not depend on the tokens batched with it
                let acc = dot_f32_tile(isa, &wp, &[&x[t * k..][..k]]);
                for (i, row) in acc.iter().enumerate().take(nr) {
                    *out.0.add(t * n + r + i) = row[0];
                }
            } else {
                let xp: [&[f32]; TN] = std::array::from_fn(|j| &x[(t + j.min(nt - 1)) * k..][..k]);
                let acc = dot_f32_tile(isa, &wp, &xp);
                for (i, row) in acc.iter().enumerate().take(nr) {
                    for (j, v) in row.iter().enumerate().take(nt) {
                        *out.0.add((t + j) * n + r + i) = *v;
                    }
                }
            }
            t += nt;
        }
        r += nr;
    }
}

#[allow(clippy::too_many_arguments)]
unsafe fn quant_block(
    isa: Isa,
    w: &Matrix,
    acts: &QuantActs,
    r0: usize,
    r1: usize,
    t0: usize,
    t1: usize,
    n: usize,
    out: Out,
) {
    // With VNNI (and AVX-512's 32 vector registers) a Q8_0 tile of 4 × 4 is fastest; Q4 tiles, with their
    // scalar offset terms, and AVX2's 16 registers do best with 2 × 4 (measured on SmolLM2).
    if w.packed {
        packed_rows(isa, w, acts, r0, r1, t0, t1, n, out);
    } else if isa == Isa::Avx2Vnni && w.ty == WeightType::Q8_0 {
        quant_rows::<4>(isa, w, acts, r0, r1, t0, t1, n, out);
    } else {
        quant_rows::<QR>(isa, w, acts, r0, r1, t0, t1, n, out);
    }
}

#[allow(clippy::too_many_arguments)]
unsafe fn quant_rows<const R: usize>(
    isa: Isa,
    w: &Matrix,
    acts: &QuantActs,
    r0: usize,
    r1: usize,
    t0: usize,
    t1: usize,
    n: usize,
    out: Out,
) {
    let rb = w.row_bytes();
    let nb = acts.blocks;
    let mut r = r0;
    while r < r1 {
        let nr = (r1 - r).min(R);
        // edge tiles repeat their last row/token and drop the extra results
        let wrows: [&[u8]; R] = std::array::from_fn(|i| {
            let ri = r + i.min(nr - 1);
            &w.bytes[ri * rb..(ri + 1) * rb]
        });
        let mut t = t0;
        while t < t1 {
            let nt = (t1 - t).min(TT);
            if nt == 1 {
                // decode: a tile of one token (the same sums, in the same order, as a wider tile)
                let acc = dot_quant_tile(isa, w.ty, &wrows, acts, nb, &[t]);
                for (i, row) in acc.iter().enumerate().take(nr) {
                    *out.0.add(t * n + r + i) = row[0];
                }
            } else {
                let toks: [usize; TT] = std::array::from_fn(|j| t + j.min(nt - 1));
                let acc = dot_quant_tile(isa, w.ty, &wrows, acts, nb, &toks);
                for (i, row) in acc.iter().enumerate().take(nr) {
                    for (j, v) in row.iter().enumerate().take(nt) {
                        *out.0.add((t + j) * n + r + i) = *v;
                    }
                }
            }
            t += nt;
        }
        r += nr;
    }
}

/// Rows `r0..r1` (multiples of 8) of a packed matrix against tokens `t0..t1`. With VNNI, two groups of 8 rows
/// at a time in 512-bit registers (a lone last group paired with itself) against up to 8 tokens, the 16
/// results of a token stored side by side; otherwise the portable product row by row.
#[allow(clippy::too_many_arguments)]
unsafe fn packed_rows(
    isa: Isa,
    w: &Matrix,
    acts: &QuantActs,
    r0: usize,
    r1: usize,
    t0: usize,
    t1: usize,
    n: usize,
    out: Out,
) {
    let nb = acts.blocks;
    let gb = nb * w.ty.packed_block_bytes();
    let (g0, g1) = (r0 / 8, r1 / 8);
    let group = |g: usize| &w.bytes[g * gb..(g + 1) * gb];
    if isa != Isa::Avx2Vnni {
        for g in g0..g1 {
            for t in t0..t1 {
                for r in 0..8 {
                    *out.0.add(t * n + g * 8 + r) =
                        dot_packed_portable(w.ty, group(g), r, acts, nb, t);
                }
            }
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let mut g = g0;
        while g < g1 {
            let pair = (g + 1 < g1).then_some(g + 1);
            let (grp, grp1) = (group(g), group(pair.unwrap_or(g)));
            let rows = if pair.is_some() { 16 } else { 8 };
            let mut t = t0;
            while t < t1 {
                // tiles of 1 to 8 tokens: decode batches are often small
                let nt = (t1 - t).min(8);
                let mut acc = [[0f32; 16]; 8];
                macro_rules! tile {
                    ($n:literal) => {{
                        let toks: [usize; $n] = std::array::from_fn(|j| t + j);
                        let r = x86::packed2_vnni::<$n>(w.ty, grp, grp1, acts, nb, &toks);
                        acc[..$n].copy_from_slice(&r);
                    }};
                }
                match nt {
                    1 => tile!(1),
                    2 => tile!(2),
                    3 => tile!(3),
                    4 => tile!(4),
                    5 => tile!(5),
                    6 => tile!(6),
                    7 => tile!(7),
                    _ => tile!(8),
                }
                for (j, row) in acc.iter().enumerate().take(nt) {
                    std::ptr::copy_nonoverlapping(
                        row.as_ptr(),
                        out.0.add((t + j) * n + g * 8),
                        rows,
                    );
                }
                t += nt;
            }
            g += if pair.is_some() { 2 } else { 1 };
        }
    }
}

/// Row `r` (0..8) of a packed group against token `tok`: Σ_blocks d_w·d_x·Σ q_w·q_x (Q8_0's stored
/// q_w offset by 128 taken back out; Q4 as in [`dot_quant_portable`]).
#[must_use]
pub fn dot_packed_portable(
    ty: WeightType,
    grp: &[u8],
    r: usize,
    acts: &QuantActs,
    nb: usize,
    tok: usize,
) -> f32 {
    let (pb, qa) = (ty.packed_block_bytes(), ty.packed_quants_at());
    if ty == WeightType::Q5_0 {
        // the row's ggml blocks gathered back (this path is the reference, not the fast one)
        let mut blk = [0u8; 22];
        let mut sum = 0f32;
        for b in 0..nb {
            ty.unpack_block(&grp[b * pb..(b + 1) * pb], r, &mut blk);
            sum += ggml_block_dot(ty, &blk, acts, tok * nb + b);
        }
        return sum;
    }
    // Q8_0's quants are stored offset by 128: flip them back to ggml's bytes
    let flip = if ty == WeightType::Q8_0 { 0x80 } else { 0 };
    let mut sum = 0f32;
    for b in 0..nb {
        let blk = &grp[b * pb..(b + 1) * pb];
        let ai = tok * nb + b;
        let m = if ty == WeightType::Q4_1 {
            get_f16(&blk[16 + 2 * r..])
        } else {
            0.0
        };
        // byte j of the row's quants in this block
        let q = |j: usize| blk[qa + (j / 4) * 32 + r * 4 + j % 4] ^ flip;
        sum += block_dot(ty, q, get_f16(&blk[2 * r..]), m, acts, ai);
    }
    sum
}

/// FR rows of W against N tokens: acc[i][j] = w_i · x_j.
fn dot_f32_tile<const N: usize>(isa: Isa, w: &[&[f32]; FR], x: &[&[f32]; N]) -> [[f32; N]; FR] {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Portable {
        // SAFETY: AVX2 and FMA (and AVX-512VL for the wide variant) were detected.
        return unsafe {
            if isa == Isa::Avx2Vnni {
                x86::dot_f32_tile_512(w, x)
            } else {
                x86::dot_f32_tile(w, x)
            }
        };
    }
    let _ = isa;
    std::array::from_fn(|i| std::array::from_fn(|j| dot_f32_portable(w[i], x[j])))
}

/// w · x with eight partial sums, in the order the SIMD kernel adds them.
#[must_use]
pub fn dot_f32_portable(w: &[f32], x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let n8 = w.len() / 8 * 8;
    for (a, b) in w[..n8].chunks_exact(8).zip(x[..n8].chunks_exact(8)) {
        for l in 0..8 {
            acc[l] = a[l].mul_add(b[l], acc[l]);
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (a, b) in w[n8..].iter().zip(&x[n8..]) {
        s += a * b;
    }
    s
}

/// Queries per attention block: consecutive tokens of one head, or the heads of one token that share a kv
/// head, share every key and value they load.
pub const QB: usize = 4;

/// Attention of up to [`QB`] queries against one kv head. `kt` holds this kv head's keys transposed (row
/// `d` = dimension d of positions 0..`cap`), `v` its values (row p = position p). Query u is at position
/// `p0 + u·step` (step 1: consecutive tokens of one head; step 0: heads of one token) and attends keys
/// `lo..=p0 + u·step`, lo = 0 or, with a sliding `window`, `p0 + u·step + 1 − window`; `out[u]` receives its
/// softmax-weighted sum of values.
#[allow(clippy::too_many_arguments)]
pub fn attend_block(
    isa: Isa,
    q: &[&[f32]],
    kt: &[f32],
    v: &[f32],
    cap: usize,
    p0: usize,
    step: usize,
    window: Option<usize>,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [&mut [f32]],
) {
    let (nq, hd) = (q.len(), q[0].len());
    let lo = |u: usize| window.map_or(0, |w| (p0 + u * step + 1).saturating_sub(w));
    let lo0 = lo(0);
    let n = p0 + (nq - 1) * step + 1 - lo0;
    scores.clear();
    scores.resize(nq * n, 0.0);
    #[cfg(target_arch = "x86_64")]
    let wide = isa == Isa::Avx2Vnni && hd.is_multiple_of(16);
    #[cfg(not(target_arch = "x86_64"))]
    let wide = false;
    // SAFETY (all three): the ISA was detected; every slice covers what the kernels read and write.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        match (wide, isa) {
            (true, _) => x86::scores_512(q, kt, cap, lo0, n, scale, scores),
            (false, Isa::Avx2 | Isa::Avx2Vnni) => {
                x86::scores_avx2(q, kt, cap, lo0, n, scale, scores);
            }
            (false, Isa::Portable) => scores_generic(q, kt, cap, lo0, n, scale, scores),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    scores_generic(q, kt, cap, lo0, n, scale, scores);
    for u in 0..nq {
        let s = &mut scores[u * n..(u + 1) * n];
        let (a, b) = (lo(u) - lo0, p0 + u * step + 1 - lo0);
        let max = s[a..b].iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum = exp_shifted(isa, &mut s[a..b], max);
        let inv = 1.0 / sum;
        s[a..b].iter_mut().for_each(|x| *x *= inv);
        s[..a].fill(0.0);
        s[b..].fill(0.0);
    }
    #[cfg(target_arch = "x86_64")]
    unsafe {
        match (wide, isa) {
            (true, _) => x86::values_512(scores, n, v, lo0, hd, out),
            (false, Isa::Avx2 | Isa::Avx2Vnni) => x86::values_avx2(scores, n, v, lo0, hd, out),
            (false, Isa::Portable) => values_generic(scores, n, v, lo0, hd, out),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    values_generic(scores, n, v, lo0, hd, out);
}

/// x ← exp(x − shift) for every element; returns their sum. AVX-512 where available (a Cephes-style
/// polynomial, within 4 ulp of the exact value as the tests check), else `f32::exp`.
pub fn exp_shifted(isa: Isa, x: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2Vnni {
        // SAFETY: AVX-512F was detected.
        return unsafe { x86::exp_shifted_512(x, shift) };
    }
    let _ = isa;
    let mut sum = 0f32;
    for v in x {
        *v = (*v - shift).exp();
        sum += *v;
    }
    sum
}

/// out = silu(gate) · up = gate / (1 + exp(−gate)) · up, element by element.
pub fn silu_mul(isa: Isa, gate: &[f32], up: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2Vnni {
        // SAFETY: AVX-512F was detected.
        return unsafe { x86::silu_mul_512(gate, up, out) };
    }
    let _ = isa;
    for ((a, g), u) in out.iter_mut().zip(gate).zip(up) {
        *a = g / (1.0 + (-g).exp()) * u;
    }
}

/// s[u][j] = scale · q_u · key (lo0 + j), from transposed keys (vectorised by the compiler per ISA).
// always inlined: the AVX2 wrapper compiles this body with its target features
#[allow(clippy::inline_always)]
#[inline(always)]
fn scores_generic(
    q: &[&[f32]],
    kt: &[f32],
    cap: usize,
    lo0: usize,
    n: usize,
    scale: f32,
    s: &mut [f32],
) {
    for (u, qu) in q.iter().enumerate() {
        let su = &mut s[u * n..(u + 1) * n];
        for (d, &qd) in qu.iter().enumerate() {
            let qd = qd * scale;
            for (x, k) in su.iter_mut().zip(&kt[d * cap + lo0..][..n]) {
                *x += qd * k;
            }
        }
    }
}

/// out_u = Σ_j p[u][j] · value (lo0 + j).
#[allow(clippy::inline_always)]
#[inline(always)]
fn values_generic(p: &[f32], n: usize, v: &[f32], lo0: usize, hd: usize, out: &mut [&mut [f32]]) {
    for (u, o) in out.iter_mut().enumerate() {
        o.fill(0.0);
        for (j, &w) in p[u * n..(u + 1) * n].iter().enumerate() {
            if w != 0.0 {
                for (x, y) in o.iter_mut().zip(&v[(lo0 + j) * hd..][..hd]) {
                    *x += w * y;
                }
            }
        }
    }
}

/// R quantised weight rows against N tokens.
fn dot_quant_tile<const R: usize, const N: usize>(
    isa: Isa,
    ty: WeightType,
    wrows: &[&[u8]; R],
    acts: &QuantActs,
    nb: usize,
    toks: &[usize; N],
) -> [[f32; N]; R] {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Portable && ty != WeightType::Q5_0 {
        // SAFETY: AVX2, FMA and F16C (and VNNI when chosen) were detected; slices are in bounds.
        return unsafe {
            match (ty, isa == Isa::Avx2Vnni) {
                (WeightType::Q8_0, true) => x86::q8_0_tile_vnni(wrows, acts, nb, toks),
                (WeightType::Q8_0, false) => x86::q8_0_tile(wrows, acts, nb, toks),
                (_, true) => x86::q4_tile_vnni(ty == WeightType::Q4_1, wrows, acts, nb, toks),
                (_, false) => x86::q4_tile(ty == WeightType::Q4_1, wrows, acts, nb, toks),
            }
        };
    }
    let _ = isa;
    std::array::from_fn(|i| {
        std::array::from_fn(|j| dot_quant_portable(ty, wrows[i], acts, nb, toks[j]))
    })
}

/// The portable quantised dot product: Σ_blocks d_w·d_x·Σ q_w q_x (+ the Q4_0 offset and Q4_1 minimum terms).
#[must_use]
pub fn dot_quant_portable(
    ty: WeightType,
    wrow: &[u8],
    acts: &QuantActs,
    nb: usize,
    tok: usize,
) -> f32 {
    let bb = ty.block_bytes();
    let mut sum = 0f32;
    for b in 0..nb {
        sum += ggml_block_dot(ty, &wrow[b * bb..(b + 1) * bb], acts, tok * nb + b);
    }
    sum
}

/// [`block_dot`] of one of ggml's blocks as stored (`blk`: its `block_bytes`).
fn ggml_block_dot(ty: WeightType, blk: &[u8], acts: &QuantActs, ai: usize) -> f32 {
    let m = if ty == WeightType::Q4_1 {
        get_f16(&blk[2..])
    } else {
        0.0
    };
    // Q5_0's product reads the whole block (its high bits sit before the nibbles)
    let qa = if ty == WeightType::Q5_0 {
        0
    } else {
        ty.quants_at()
    };
    block_dot(ty, |j| blk[qa + j], get_f16(blk), m, acts, ai)
}

/// Block `ai` of the activations against one block of weights: d_w·d_x·Σ q_w·q_x, plus Q4_1's m·Σx, or
/// minus Q4_0's 8·d_w·Σx (its nibbles are stored with +8). `q(j)` is byte j of the block's quants as ggml
/// stores them (Q8_0: signed; Q4: values j and j + 16 in the low and high nibble); Q5_0's `q(j)` is byte j of
/// the whole block (qh included), and its product is the integer Σ (value − 16)·q_x, as the Q8_0 of the same
/// values gives.
fn block_dot(
    ty: WeightType,
    q: impl Fn(usize) -> u8,
    dw: f32,
    m: f32,
    acts: &QuantActs,
    ai: usize,
) -> f32 {
    let xq = &acts.qs[ai * QK..(ai + 1) * QK];
    let (dx, sx) = (acts.d[ai], acts.s[ai]);
    let p: i32 = if ty == WeightType::Q5_0 {
        let b: [u8; 22] = std::array::from_fn(&q);
        (0..QK)
            .map(|k| (i32::from(super::quant::q5_0_value(&b, k)) - 16) * i32::from(xq[k]))
            .sum()
    } else if ty == WeightType::Q8_0 {
        (0..QK)
            .map(|k| i32::from(q(k).cast_signed()) * i32::from(xq[k]))
            .sum()
    } else {
        (0..16)
            .map(|j| {
                i32::from(q(j) & 15) * i32::from(xq[j])
                    + i32::from(q(j) >> 4) * i32::from(xq[j + 16])
            })
            .sum()
    };
    #[allow(clippy::cast_precision_loss)]
    let p = dw * dx * p as f32;
    match ty {
        WeightType::Q4_1 => p + m * sx,
        WeightType::Q4_0 => p - 8.0 * dw * sx,
        _ => p,
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::cast_ptr_alignment)] // every load below is an unaligned load
mod x86 {
    use std::arch::x86_64::{
        __m128i, __m256, __m256i, _mm256_add_epi32, _mm256_andnot_ps, _mm256_broadcast_ss,
        _mm256_castps256_ps128, _mm256_castsi256_si128, _mm256_cvtepi32_ps, _mm256_cvtps_epi32,
        _mm256_dpbusd_epi32, _mm256_extractf128_ps, _mm256_extracti128_si256, _mm256_fmadd_ps,
        _mm256_loadu_ps, _mm256_loadu_si256, _mm256_madd_epi16, _mm256_maddubs_epi16,
        _mm256_max_ps, _mm256_mul_ps, _mm256_packs_epi16, _mm256_packs_epi32,
        _mm256_permutevar8x32_epi32, _mm256_round_ps, _mm256_set1_epi16, _mm256_set1_epi8,
        _mm256_set1_ps, _mm256_set_m128i, _mm256_setr_epi32, _mm256_setzero_ps,
        _mm256_setzero_si256, _mm256_sign_epi8, _mm256_storeu_si256, _mm256_sub_epi32,
        _mm256_xor_si256, _mm_add_epi32, _mm_add_ps, _mm_add_ss, _mm_and_si128, _mm_cvtph_ps,
        _mm_cvtsi128_si32, _mm_cvtsi32_si128, _mm_cvtss_f32, _mm_loadu_si128, _mm_max_ps,
        _mm_max_ss, _mm_movehl_ps, _mm_prefetch, _mm_set1_epi8, _mm_shuffle_epi32, _mm_shuffle_ps,
        _mm_srli_epi16, _MM_FROUND_NO_EXC, _MM_FROUND_TO_NEAREST_INT, _MM_HINT_T0,
    };

    use super::{QuantActs, FR, QK};

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn quantize_block(x: &[f32], qs: &mut [i8]) -> (f32, i32) {
        let p = x.as_ptr();
        let v = [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ];
        let sign = _mm256_set1_ps(-0.0);
        let m = _mm256_max_ps(
            _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
            _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])),
        );
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1)));
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if d == 0.0 { 0.0 } else { 1.0 / d });
        let r = |v: __m256| {
            _mm256_cvtps_epi32(_mm256_round_ps(
                _mm256_mul_ps(v, id),
                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
            ))
        };
        let i = [r(v[0]), r(v[1]), r(v[2]), r(v[3])];
        let sum = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
        let s4 = _mm_add_epi32(
            _mm256_castsi256_si128(sum),
            _mm256_extracti128_si256(sum, 1),
        );
        let s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0b01_00_11_10));
        let s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0b10_11_00_01));
        // packs work within 128-bit lanes: put the 32 bytes back in order afterwards
        let lo16 = _mm256_packs_epi32(i[0], i[1]);
        let hi16 = _mm256_packs_epi32(i[2], i[3]);
        let b8 = _mm256_packs_epi16(lo16, hi16);
        let b8 = _mm256_permutevar8x32_epi32(b8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(qs.as_mut_ptr().cast(), b8);
        (d, _mm_cvtsi128_si32(s4))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f16_at(p: *const u8) -> f32 {
        let bits = u16::from_le_bytes([*p, *p.add(1)]);
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
    }

    macro_rules! f32_tile {
        ($name:ident, $features:literal) => {
            #[target_feature(enable = $features)]
            pub unsafe fn $name<const FT: usize>(
                w: &[&[f32]; FR],
                x: &[&[f32]; FT],
            ) -> [[f32; FT]; FR] {
                let k = w[0].len();
                let k8 = k / 8 * 8;
                let mut acc = [[_mm256_setzero_ps(); FT]; FR];
                let mut c = 0;
                while c < k8 {
                    let xv: [__m256; FT] =
                        std::array::from_fn(|j| _mm256_loadu_ps(x[j].as_ptr().add(c)));
                    for i in 0..FR {
                        let wv = _mm256_loadu_ps(w[i].as_ptr().add(c));
                        for j in 0..FT {
                            acc[i][j] = _mm256_fmadd_ps(wv, xv[j], acc[i][j]);
                        }
                    }
                    c += 8;
                }
                let mut out = [[0f32; FT]; FR];
                for i in 0..FR {
                    for j in 0..FT {
                        let mut s = hsum(acc[i][j]);
                        for e in k8..k {
                            s += w[i][e] * x[j][e];
                        }
                        out[i][j] = s;
                    }
                }
                out
            }
        };
    }
    f32_tile!(dot_f32_tile, "avx2,fma");

    /// The f32 tile in 512-bit registers (16 lanes: twice the work per instruction on CPUs with full-width
    /// AVX-512 units, and 32 registers for the 4 × FT accumulators).
    #[target_feature(enable = "avx2,fma,avx512f,avx512vl")]
    pub unsafe fn dot_f32_tile_512<const FR: usize, const FT: usize>(
        w: &[&[f32]; FR],
        x: &[&[f32]; FT],
    ) -> [[f32; FT]; FR] {
        use std::arch::x86_64::{
            __m512, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_reduce_add_ps, _mm512_setzero_ps,
        };
        let k = w[0].len();
        let k16 = k / 16 * 16;
        let mut acc = [[_mm512_setzero_ps(); FT]; FR];
        let mut c = 0;
        while c < k16 {
            let xv: [__m512; FT] = std::array::from_fn(|j| _mm512_loadu_ps(x[j].as_ptr().add(c)));
            for i in 0..FR {
                let wv = _mm512_loadu_ps(w[i].as_ptr().add(c));
                for j in 0..FT {
                    acc[i][j] = _mm512_fmadd_ps(wv, xv[j], acc[i][j]);
                }
            }
            c += 16;
        }
        let mut out = [[0f32; FT]; FR];
        for i in 0..FR {
            for j in 0..FT {
                let mut s = _mm512_reduce_add_ps(acc[i][j]);
                for e in k16..k {
                    s += w[i][e] * x[j][e];
                }
                out[i][j] = s;
            }
        }
        out
    }

    /// [`super::scores_generic`] compiled for AVX2 + FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn scores_avx2(
        q: &[&[f32]],
        kt: &[f32],
        cap: usize,
        lo0: usize,
        n: usize,
        scale: f32,
        s: &mut [f32],
    ) {
        super::scores_generic(q, kt, cap, lo0, n, scale, s);
    }

    /// [`super::values_generic`] compiled for AVX2 + FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn values_avx2(
        p: &[f32],
        n: usize,
        v: &[f32],
        lo0: usize,
        hd: usize,
        out: &mut [&mut [f32]],
    ) {
        super::values_generic(p, n, v, lo0, hd, out);
    }

    /// Scores of up to 4 queries against 64 keys at a time: per dimension, 4 loads of keys and one
    /// broadcast per query feed 16 FMAs into registers (`hd` a multiple of 16).
    #[target_feature(enable = "avx2,fma,avx512f")]
    pub unsafe fn scores_512(
        q: &[&[f32]],
        kt: &[f32],
        cap: usize,
        lo0: usize,
        n: usize,
        scale: f32,
        s: &mut [f32],
    ) {
        match q.len() {
            1 => scores_512_n::<1>(q, kt, cap, lo0, n, scale, s),
            2 => scores_512_n::<2>(q, kt, cap, lo0, n, scale, s),
            3 => scores_512_n::<3>(q, kt, cap, lo0, n, scale, s),
            _ => scores_512_n::<4>(q, kt, cap, lo0, n, scale, s),
        }
    }

    /// Lane masks of up to 4 chunks of 16 over `rem` remaining keys (0 for a chunk past the end).
    #[allow(clippy::cast_possible_truncation)]
    fn masks(rem: usize) -> [u16; 4] {
        std::array::from_fn(|c| {
            let left = rem.saturating_sub(16 * c).min(16);
            ((1u32 << left) - 1) as u16
        })
    }

    #[allow(clippy::needless_range_loop)] // register tiles read best indexed
    #[target_feature(enable = "avx2,fma,avx512f")]
    unsafe fn scores_512_n<const NQ: usize>(
        q: &[&[f32]],
        kt: &[f32],
        cap: usize,
        lo0: usize,
        n: usize,
        scale: f32,
        s: &mut [f32],
    ) {
        use std::arch::x86_64::{
            _mm512_fmadd_ps, _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps, _mm512_mul_ps,
            _mm512_set1_ps, _mm512_setzero_ps,
        };
        let hd = q[0].len();
        let qp: [*const f32; NQ] = std::array::from_fn(|u| q[u].as_ptr());
        let sp = s.as_mut_ptr();
        let vs = _mm512_set1_ps(scale);
        let mut j = 0;
        while j < n {
            let m = masks(n - j);
            let mut acc = [[_mm512_setzero_ps(); 4]; NQ];
            let mut kp = kt.as_ptr().add(lo0 + j);
            for d in 0..hd {
                let k: [_; 4] =
                    std::array::from_fn(|c| _mm512_maskz_loadu_ps(m[c], kp.add(16 * c)));
                for u in 0..NQ {
                    let qd = _mm512_set1_ps(*qp[u].add(d));
                    for c in 0..4 {
                        acc[u][c] = _mm512_fmadd_ps(qd, k[c], acc[u][c]);
                    }
                }
                kp = kp.add(cap);
            }
            for u in 0..NQ {
                for c in 0..4 {
                    if m[c] != 0 {
                        _mm512_mask_storeu_ps(
                            sp.add(u * n + j + 16 * c),
                            m[c],
                            _mm512_mul_ps(acc[u][c], vs),
                        );
                    }
                }
            }
            j += 64;
        }
    }

    /// Weighted sums of values for up to 4 queries, 64 columns at a time in registers.
    #[target_feature(enable = "avx2,fma,avx512f")]
    pub unsafe fn values_512(
        p: &[f32],
        n: usize,
        v: &[f32],
        lo0: usize,
        hd: usize,
        out: &mut [&mut [f32]],
    ) {
        match out.len() {
            1 => values_512_n::<1>(p, n, v, lo0, hd, out),
            2 => values_512_n::<2>(p, n, v, lo0, hd, out),
            3 => values_512_n::<3>(p, n, v, lo0, hd, out),
            _ => values_512_n::<4>(p, n, v, lo0, hd, out),
        }
    }

    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx2,fma,avx512f")]
    unsafe fn values_512_n<const NQ: usize>(
        p: &[f32],
        n: usize,
        v: &[f32],
        lo0: usize,
        hd: usize,
        out: &mut [&mut [f32]],
    ) {
        use std::arch::x86_64::{
            _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps, _mm512_storeu_ps,
        };
        let pp = p.as_ptr();
        let mut c0 = 0;
        while c0 < hd {
            let chunks = ((hd - c0) / 16).min(4);
            let mut acc = [[_mm512_setzero_ps(); 4]; NQ];
            let mut row = v.as_ptr().add(lo0 * hd + c0);
            for j in 0..n {
                let vv: [_; 4] = std::array::from_fn(|c| {
                    if c < chunks {
                        _mm512_loadu_ps(row.add(16 * c))
                    } else {
                        _mm512_setzero_ps()
                    }
                });
                for u in 0..NQ {
                    let w = _mm512_set1_ps(*pp.add(u * n + j));
                    for c in 0..4 {
                        acc[u][c] = _mm512_fmadd_ps(w, vv[c], acc[u][c]);
                    }
                }
                row = row.add(hd);
            }
            for u in 0..NQ {
                for c in 0..chunks {
                    _mm512_storeu_ps(out[u].as_mut_ptr().add(c0 + 16 * c), acc[u][c]);
                }
            }
            c0 += 64;
        }
    }

    /// exp of 16 lanes: 2^n · p(r) with x = n·ln2 + r, |r| ≤ ln2/2 (Cephes' expf polynomial). Above 88.7
    /// it is +inf, as f32 exp; below −87.3 (where f32 exp leaves the normal range) it stays at exp(−87.3).
    #[inline]
    #[target_feature(enable = "avx2,fma,avx512f")]
    fn exp_512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::{
            _mm512_fmadd_ps, _mm512_fnmadd_ps, _mm512_max_ps, _mm512_min_ps, _mm512_mul_ps,
            _mm512_roundscale_ps, _mm512_scalef_ps, _mm512_set1_ps,
        };
        let x = _mm512_max_ps(
            _mm512_min_ps(x, _mm512_set1_ps(89.0)),
            _mm512_set1_ps(-87.33),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        for c in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let y = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r);
        _mm512_scalef_ps(std::arch::x86_64::_mm512_add_ps(y, _mm512_set1_ps(1.0)), n)
    }

    /// The mask of the first min(rem, 16) lanes.
    fn lanes(rem: usize) -> u16 {
        if rem >= 16 {
            u16::MAX
        } else {
            (1u16 << rem) - 1
        }
    }

    #[target_feature(enable = "avx2,fma,avx512f")]
    pub unsafe fn exp_shifted_512(x: &mut [f32], shift: f32) -> f32 {
        use std::arch::x86_64::{
            _mm512_add_ps, _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps, _mm512_maskz_mov_ps,
            _mm512_reduce_add_ps, _mm512_set1_ps, _mm512_setzero_ps, _mm512_sub_ps,
        };
        let (n, p) = (x.len(), x.as_mut_ptr());
        let s = _mm512_set1_ps(shift);
        let mut acc = _mm512_setzero_ps();
        let mut i = 0;
        while i < n {
            let m = lanes(n - i);
            let e = _mm512_maskz_mov_ps(
                m,
                exp_512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, p.add(i)), s)),
            );
            _mm512_mask_storeu_ps(p.add(i), m, e);
            acc = _mm512_add_ps(acc, e);
            i += 16;
        }
        _mm512_reduce_add_ps(acc)
    }

    #[target_feature(enable = "avx2,fma,avx512f")]
    pub unsafe fn silu_mul_512(gate: &[f32], up: &[f32], out: &mut [f32]) {
        use std::arch::x86_64::{
            _mm512_add_ps, _mm512_div_ps, _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps,
            _mm512_mul_ps, _mm512_set1_ps, _mm512_setzero_ps, _mm512_sub_ps,
        };
        let n = out.len().min(gate.len()).min(up.len());
        let one = _mm512_set1_ps(1.0);
        let mut i = 0;
        while i < n {
            let m = lanes(n - i);
            let g = _mm512_maskz_loadu_ps(m, gate.as_ptr().add(i));
            let u = _mm512_maskz_loadu_ps(m, up.as_ptr().add(i));
            let e = exp_512(_mm512_sub_ps(_mm512_setzero_ps(), g));
            let a = _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), u);
            _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), m, a);
            i += 16;
        }
    }

    /// Σ over 32 bytes of u·s (u unsigned, s signed) in eight i32 lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn udot(u: __m256i, s: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
    }

    #[inline]
    #[target_feature(enable = "avx2,avx512vnni,avx512vl")]
    fn udot_vnni(u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
    }

    /// acc + Σ u·s in eight i32 lanes.
    #[inline]
    #[target_feature(enable = "avx2,avx512vnni,avx512vl")]
    fn udot_vnni_from(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, u, s)
    }

    /// (Unused: the AVX2 path keeps the sign trick, whose u8·i8 products cannot overflow i16.)
    #[inline]
    #[target_feature(enable = "avx2")]
    fn udot_from(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_add_epi32(acc, udot(u, s))
    }

    macro_rules! q8_0_tile {
        ($name:ident, $features:literal, $udot:ident, $vnni:literal, $acc_dot:ident) => {
            /// R weight rows against N tokens.
            #[target_feature(enable = $features)]
            pub unsafe fn $name<const R: usize, const N: usize>(
                wrows: &[&[u8]; R],
                acts: &QuantActs,
                nb: usize,
                toks: &[usize; N],
            ) -> [[f32; N]; R] {
                let mut acc = [[_mm256_setzero_ps(); N]; R];
                let base: [usize; N] = std::array::from_fn(|j| toks[j] * nb);
                let qs = acts.qs.as_ptr();
                let ds = acts.d.as_ptr();
                for b in 0..nb {
                    let xq: [__m256i; N] = std::array::from_fn(|j| {
                        _mm256_loadu_si256(qs.add((base[j] + b) * QK).cast::<__m256i>())
                    });
                    let dx: [__m256; N] =
                        std::array::from_fn(|j| _mm256_broadcast_ss(&*ds.add(base[j] + b)));
                    // With VNNI: x + 128 is unsigned, so each product is one dpbusd started from
                    // −128·Σw (per weight block) instead of two sign flips per pair.
                    let xu: [__m256i; N] =
                        std::array::from_fn(|j| _mm256_xor_si256(xq[j], _mm256_set1_epi8(-128)));
                    for i in 0..R {
                        let blk = wrows[i].as_ptr().add(b * 34);
                        let dw = _mm256_set1_ps(f16_at(blk));
                        let wq = _mm256_loadu_si256(blk.add(2).cast::<__m256i>());
                        if $vnni {
                            let neg = _mm256_sub_epi32(
                                _mm256_setzero_si256(),
                                $udot(_mm256_set1_epi8(-128), wq),
                            );
                            for j in 0..N {
                                let p = $acc_dot(neg, xu[j], wq);
                                acc[i][j] = _mm256_fmadd_ps(
                                    _mm256_mul_ps(dw, dx[j]),
                                    _mm256_cvtepi32_ps(p),
                                    acc[i][j],
                                );
                            }
                        } else {
                            let aw = _mm256_sign_epi8(wq, wq);
                            for j in 0..N {
                                let p = $udot(aw, _mm256_sign_epi8(xq[j], wq));
                                acc[i][j] = _mm256_fmadd_ps(
                                    _mm256_mul_ps(dw, dx[j]),
                                    _mm256_cvtepi32_ps(p),
                                    acc[i][j],
                                );
                            }
                        }
                    }
                }
                std::array::from_fn(|i| std::array::from_fn(|j| hsum(acc[i][j])))
            }
        };
    }
    q8_0_tile!(q8_0_tile, "avx2,fma,f16c", udot, false, udot_from);
    q8_0_tile!(
        q8_0_tile_vnni,
        "avx2,fma,f16c,avx512vnni,avx512vl",
        udot_vnni,
        true,
        udot_vnni_from
    );

    /// Asks for the blocks of both groups `PREFETCH` blocks of `pb` bytes ahead: the weights stream from memory.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn prefetch_ahead(b0: *const u8, b1: *const u8, pb: usize) {
        for l in (0..pb).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(b0.wrapping_add(PREFETCH * pb + l).cast());
            _mm_prefetch::<_MM_HINT_T0>(b1.wrapping_add(PREFETCH * pb + l).cast());
        }
    }

    /// 16 bytes at `off` of each group's block, the first group's in the low half.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn pair128(b0: *const u8, b1: *const u8, off: usize) -> __m256i {
        use std::arch::x86_64::{_mm256_castsi128_si256, _mm256_inserti128_si256};
        _mm256_inserti128_si256::<1>(
            _mm256_castsi128_si256(_mm_loadu_si128(b0.add(off).cast::<__m128i>())),
            _mm_loadu_si128(b1.add(off).cast::<__m128i>()),
        )
    }

    /// 32 bytes at `off` of each group's block, the first group's in the low half.
    #[inline]
    #[target_feature(enable = "avx2,avx512f")]
    unsafe fn pair256(b0: *const u8, b1: *const u8, off: usize) -> std::arch::x86_64::__m512i {
        use std::arch::x86_64::{_mm512_castsi256_si512, _mm512_inserti64x4};
        _mm512_inserti64x4::<1>(
            _mm512_castsi256_si512(_mm256_loadu_si256(b0.add(off).cast())),
            _mm256_loadu_si256(b1.add(off).cast()),
        )
    }

    /// start + Σ_c w[c]·x[c], c over the 8 four-byte chunks of a block of 32 activations (each broadcast to
    /// all 16 lanes): 16 rows' dot products over one block, in two chains so that the products overlap.
    #[inline]
    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn dot_block_512(
        start: std::arch::x86_64::__m512i,
        w: &[std::arch::x86_64::__m512i; 8],
        xb: *const i32,
    ) -> std::arch::x86_64::__m512i {
        use std::arch::x86_64::{
            _mm512_add_epi32, _mm512_dpbusd_epi32, _mm512_set1_epi32, _mm512_setzero_si512,
        };
        let x = |c: usize| _mm512_set1_epi32(xb.add(c).read_unaligned());
        let (mut a0, mut a1) = (start, _mm512_setzero_si512());
        for c in (0..8).step_by(2) {
            a0 = _mm512_dpbusd_epi32(a0, w[c], x(c));
            a1 = _mm512_dpbusd_epi32(a1, w[c + 1], x(c + 1));
        }
        _mm512_add_epi32(a0, a1)
    }

    /// Two consecutive packed groups (16 rows) of type `ty` against N tokens in 512-bit registers: rows of
    /// the first group in lanes 0..8, of the second in lanes 8..16 (layout: [`super::Matrix::packed`]).
    /// Q8_0's weights are offset by 128, so each block's product starts from −128·Σq_x. Q4's 32-byte
    /// vectors hold low nibbles (values 4c..4c + 4 of the block) and high nibbles (values 16 + 4c..), each
    /// half one `vpdpbusd` (nibbles are unsigned already); the offset (Q4_0: −8·d) or minimum (Q4_1: m)
    /// term is one FMA with Σx per block.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vnni,avx512vl")]
    pub unsafe fn packed2_vnni<const N: usize>(
        ty: super::WeightType,
        grp0: &[u8],
        grp1: &[u8],
        acts: &QuantActs,
        nb: usize,
        toks: &[usize; N],
    ) -> [[f32; 16]; N] {
        use super::WeightType;
        use std::arch::x86_64::{
            __m512, __m512i, _mm512_and_si512, _mm512_cvtepi32_ps, _mm512_cvtph_ps,
            _mm512_fmadd_ps, _mm512_mul_ps, _mm512_or_si512, _mm512_set1_epi32, _mm512_set1_epi8,
            _mm512_set1_ps, _mm512_setzero_ps, _mm512_setzero_si512, _mm512_sll_epi32,
            _mm512_srl_epi32, _mm512_srli_epi32, _mm512_storeu_ps,
        };
        let (pb, qa) = (ty.packed_block_bytes(), ty.packed_quants_at());
        let mut acc: [__m512; N] = [_mm512_setzero_ps(); N];
        let qs = acts.qs.as_ptr();
        let ds = acts.d.as_ptr();
        let ss = acts.s.as_ptr();
        let cs = acts.c128.as_ptr();
        let base: [usize; N] = std::array::from_fn(|j| toks[j] * nb);
        let m4 = _mm512_set1_epi8(15);
        let h4 = _mm512_set1_epi8(16);
        let (g0, g1) = (grp0.as_ptr(), grp1.as_ptr());
        for b in 0..nb {
            let (b0, b1) = (g0.add(b * pb), g1.add(b * pb));
            prefetch_ahead(b0, b1, pb);
            let dw = _mm512_cvtph_ps(pair128(b0, b1, 0));
            if ty == WeightType::Q5_0 {
                // each lane's high-bit word (bit 8k + c: value 4c + k), shifted so that chunk c's bits sit at
                // bit 4 of its bytes, over the chunk's nibbles
                let hw = pair256(b0, b1, 16);
                let raw: [__m512i; 4] = std::array::from_fn(|c| pair256(b0, b1, qa + 32 * c));
                let w: [__m512i; 8] = std::array::from_fn(|c| {
                    let nib = if c < 4 {
                        _mm512_and_si512(raw[c], m4)
                    } else {
                        _mm512_and_si512(_mm512_srli_epi32::<4>(raw[c - 4]), m4)
                    };
                    #[allow(clippy::cast_possible_wrap, clippy::cast_possible_truncation)]
                    let hb = if c <= 4 {
                        _mm512_sll_epi32(hw, _mm_cvtsi32_si128((4 - c) as i32))
                    } else {
                        _mm512_srl_epi32(hw, _mm_cvtsi32_si128((c - 4) as i32))
                    };
                    _mm512_or_si512(nib, _mm512_and_si512(hb, h4))
                });
                for j in 0..N {
                    let xb = qs.add((base[j] + b) * QK).cast::<i32>();
                    // values are stored + 16: start from −16·Σq_x (an eighth of −128·Σq_x, exactly)
                    let p = dot_block_512(_mm512_set1_epi32(*cs.add(base[j] + b) >> 3), &w, xb);
                    let d = _mm512_mul_ps(dw, _mm512_set1_ps(*ds.add(base[j] + b)));
                    acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), d, acc[j]);
                }
                continue;
            }
            if ty == WeightType::Q8_0 {
                let w: [__m512i; 8] = std::array::from_fn(|c| pair256(b0, b1, qa + 32 * c));
                for j in 0..N {
                    let xb = qs.add((base[j] + b) * QK).cast::<i32>();
                    let p = dot_block_512(_mm512_set1_epi32(*cs.add(base[j] + b)), &w, xb);
                    let d = _mm512_mul_ps(dw, _mm512_set1_ps(*ds.add(base[j] + b)));
                    acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), d, acc[j]);
                }
                continue;
            }
            let mw = if ty == WeightType::Q4_1 {
                _mm512_cvtph_ps(pair128(b0, b1, 16))
            } else {
                _mm512_mul_ps(dw, _mm512_set1_ps(-8.0))
            };
            let raw: [__m512i; 4] = std::array::from_fn(|c| pair256(b0, b1, qa + 32 * c));
            // values 4c.. of the block (low nibbles) for c < 4, values 16 + 4(c − 4).. (high nibbles) after
            let w: [__m512i; 8] = std::array::from_fn(|c| {
                if c < 4 {
                    _mm512_and_si512(raw[c], m4)
                } else {
                    _mm512_and_si512(_mm512_srli_epi32::<4>(raw[c - 4]), m4)
                }
            });
            for j in 0..N {
                let xb = qs.add((base[j] + b) * QK).cast::<i32>();
                let p = dot_block_512(_mm512_setzero_si512(), &w, xb);
                let d = _mm512_mul_ps(dw, _mm512_set1_ps(*ds.add(base[j] + b)));
                acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), d, acc[j]);
                acc[j] = _mm512_fmadd_ps(mw, _mm512_set1_ps(*ss.add(base[j] + b)), acc[j]);
            }
        }
        let mut out = [[0f32; 16]; N];
        for j in 0..N {
            _mm512_storeu_ps(out[j].as_mut_ptr(), acc[j]);
        }
        out
    }

    /// How many blocks ahead the packed kernels prefetch their weights.
    const PREFETCH: usize = 4;

    macro_rules! q4_tile {
        ($name:ident, $features:literal, $udot:ident) => {
            /// R Q4_0 (q1 = false) or Q4_1 (q1 = true) rows against N tokens.
            #[target_feature(enable = $features)]
            pub unsafe fn $name<const R: usize, const N: usize>(
                q1: bool,
                wrows: &[&[u8]; R],
                acts: &QuantActs,
                nb: usize,
                toks: &[usize; N],
            ) -> [[f32; N]; R] {
                let bb = if q1 { 20 } else { 18 };
                let qoff = if q1 { 4 } else { 2 };
                let mut acc = [[_mm256_setzero_ps(); N]; R];
                let mut corr = [[0f32; N]; R];
                let base: [usize; N] = std::array::from_fn(|j| toks[j] * nb);
                let m4 = _mm_set1_epi8(15);
                let qs = acts.qs.as_ptr();
                let ds = acts.d.as_ptr();
                for b in 0..nb {
                    let xq: [__m256i; N] = std::array::from_fn(|j| {
                        _mm256_loadu_si256(qs.add((base[j] + b) * QK).cast::<__m256i>())
                    });
                    let dx: [__m256; N] =
                        std::array::from_fn(|j| _mm256_broadcast_ss(&*ds.add(base[j] + b)));
                    for i in 0..R {
                        let blk = wrows[i].as_ptr().add(b * bb);
                        let dws = f16_at(blk);
                        let dw = _mm256_set1_ps(dws);
                        // Q4_1 adds m·Σx; Q4_0 subtracts 8·d·Σx (its nibbles are stored with +8)
                        let c = if q1 { f16_at(blk.add(2)) } else { -8.0 * dws };
                        let raw = _mm_loadu_si128(blk.add(qoff).cast());
                        let lo = _mm_and_si128(raw, m4);
                        let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), m4);
                        let wq = _mm256_set_m128i(hi, lo);
                        for j in 0..N {
                            let p = $udot(wq, xq[j]);
                            acc[i][j] = _mm256_fmadd_ps(
                                _mm256_mul_ps(dw, dx[j]),
                                _mm256_cvtepi32_ps(p),
                                acc[i][j],
                            );
                            corr[i][j] += c * *acts.s.get_unchecked(base[j] + b);
                        }
                    }
                }
                std::array::from_fn(|i| std::array::from_fn(|j| hsum(acc[i][j]) + corr[i][j]))
            }
        };
    }
    q4_tile!(q4_tile, "avx2,fma,f16c", udot);
    q4_tile!(q4_tile_vnni, "avx2,fma,f16c,avx512vnni,avx512vl", udot_vnni);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::sample;

    /// y = x·Wᵀ in f64 from the dequantised weights and the dequantised activations.
    fn reference(w: &Matrix, x: &[f32], t: usize, quantize_x: bool) -> Vec<f64> {
        let wd = w.dequantize();
        let k = w.cols;
        let xd: Vec<f32> = if quantize_x {
            let mut a = QuantActs::default();
            a.quantize(x, k);
            (0..x.len())
                .map(|i| a.d[i / QK] * f32::from(a.qs[i]))
                .collect()
        } else {
            x.to_vec()
        };
        let mut y = vec![0f64; t * w.rows];
        for tt in 0..t {
            for r in 0..w.rows {
                y[tt * w.rows + r] = (0..k)
                    .map(|c| f64::from(wd[r * k + c]) * f64::from(xd[tt * k + c]))
                    .sum();
            }
        }
        y
    }

    fn check(isa: Isa, ty: WeightType, n: usize, k: usize, t: usize) {
        check_matrix(isa, &Matrix::quantized(n, k, &sample(n * k, 1), ty), t);
    }

    fn check_matrix(isa: Isa, w: &Matrix, t: usize) {
        let (ty, n, k) = (w.ty, w.rows, w.cols);
        let x = sample(t * k, 2);
        let mut y = vec![0f32; t * n];
        matmul(isa, w, &x, t, &mut y, &mut Scratch::default());
        let r = reference(w, &x, t, ty != WeightType::F32);
        let scale = r.iter().fold(0f64, |m, v| m.max(v.abs()));
        for (i, (a, b)) in y.iter().zip(&r).enumerate() {
            assert!(
                (f64::from(*a) - b).abs() <= 1e-4 * scale,
                "{isa:?} {ty:?} packed={} n={n} k={k} t={t} at {i}: {a} vs {b}",
                w.packed
            );
        }
    }

    /// Every kernel family this CPU can run: the portable one, AVX2 and, with VNNI, AVX-512.
    fn runnable_isas() -> Vec<Isa> {
        let mut isas = vec![Isa::Portable];
        if Isa::detect() != Isa::Portable {
            isas.push(Isa::Avx2);
        }
        if Isa::detect() == Isa::Avx2Vnni {
            isas.push(Isa::Avx2Vnni);
        }
        isas
    }

    #[test]
    fn every_kernel_matches_the_f64_reference() {
        let isas = runnable_isas();
        for isa in isas {
            for ty in [
                WeightType::F32,
                WeightType::Q8_0,
                WeightType::Q4_0,
                WeightType::Q4_1,
            ] {
                // odd row counts and token counts exercise the edge tiles; 1 token is the decode path
                for (n, k, t) in [(1, 32, 1), (7, 64, 1), (37, 96, 5), (130, 256, 70)] {
                    check(isa, ty, n, k, t);
                }
            }
            // f32 rows whose length is not a multiple of 8
            check(isa, WeightType::F32, 5, 13, 2);
            // packed 8 rows at a time (the VNNI layout; other ISAs run its portable version); 2 and 3
            // tokens are tiles of their own
            for ty in [WeightType::Q8_0, WeightType::Q4_0, WeightType::Q4_1] {
                for (n, k, t) in [
                    (8, 32, 1),
                    (16, 64, 2),
                    (16, 64, 3),
                    (40, 96, 5),
                    (136, 256, 70),
                    (1024, 576, 9),
                ] {
                    let w = Matrix::quantized(n, k, &sample(n * k, 3), ty);
                    let p = w.pack().unwrap();
                    assert_eq!(p.bytes.len(), w.bytes.len());
                    assert_eq!(p.unpacked().bytes, w.bytes, "pack → unpack");
                    check_matrix(isa, &p, t);
                }
            }
        }
    }

    /// Q5_0 (quantised by candle's ggml quantiser) packed: the products are the integers of the Q8_0 holding
    /// the same values, scaled the same way, so every output equals that Q8_0's bit for bit — on the VNNI
    /// kernel, on its portable version, alone or batched — and both match the f64 reference; its values are
    /// candle's own dequantisation of the blocks.
    #[test]
    fn q5_0_runs_as_the_q8_0_of_its_values_bit_for_bit() {
        let isas = runnable_isas();
        for (n, k) in [(8, 32), (16, 64), (40, 96), (136, 256), (264, 640)] {
            let x = sample(n * k, 13);
            let w = Matrix::quantized(n, k, &x, WeightType::Q5_0);
            let t = candle_core::Tensor::from_slice(&x, (n, k), &candle_core::Device::Cpu).unwrap();
            let candle = candle_core::quantized::QTensor::quantize(
                &t,
                candle_core::quantized::GgmlDType::Q5_0,
            )
            .unwrap()
            .dequantize(&candle_core::Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
            assert_eq!(w.dequantize(), candle, "Q5_0 values n={n} k={k}");
            let q8 = w.q5_0_as_q8_0();
            assert_eq!(q8.dequantize(), candle, "Q5_0 → Q8_0 is exact");
            let p = w.pack().unwrap();
            assert_eq!(p.bytes.len(), w.bytes.len());
            assert_eq!(p.unpacked().bytes, w.bytes, "pack → unpack");
            assert_eq!(p.dequantize(), candle);
            let q8p = q8.pack().unwrap();
            for &isa in &isas {
                for t in [1, 2, 5, 9] {
                    check_matrix(isa, &p, t);
                    let xs = sample(t * k, 14);
                    let run = |m: &Matrix, toks: usize, xs: &[f32]| {
                        let mut y = vec![0f32; toks * n];
                        matmul(isa, m, xs, toks, &mut y, &mut Scratch::default());
                        y
                    };
                    let y = run(&p, t, &xs);
                    assert_eq!(y, run(&q8p, t, &xs), "{isa:?} n={n} k={k} t={t}");
                    // the last token alone gives its row of the batch
                    assert_eq!(run(&p, 1, &xs[(t - 1) * k..]), y[(t - 1) * n..]);
                }
            }
        }
        // the packed high bits by hand: row 0 of a block whose qh has bits 0 (value 0), 5 (value 5 = 4·1 + 1)
        // and 31 (value 31 = 4·7 + 3) set; packed bit 8k + c holds value 4c + k
        let mut w = Matrix::quantized(8, 32, &sample(8 * 32, 15), WeightType::Q5_0);
        w.bytes[2..6].copy_from_slice(&(1u32 | 1 << 5 | 1 << 31).to_le_bytes());
        let p = w.pack().unwrap();
        let packed = u32::from_le_bytes([p.bytes[16], p.bytes[17], p.bytes[18], p.bytes[19]]);
        assert_eq!(packed, 1 | 1 << (8 + 1) | 1 << (24 + 7));
        assert_eq!(p.dequantize(), w.dequantize());
    }

    /// Every weight type on every kernel: a token's outputs in a batch of 7 equal, bit for bit, its outputs
    /// alone (decode's one-token tiles, f32's 16-row decode tiles with AVX-512) — rows 37, past a whole tile.
    #[test]
    fn a_token_alone_gives_its_outputs_in_a_batch_bit_for_bit() {
        let (n, k, t) = (40, 96, 7);
        let isas = runnable_isas();
        let x = sample(t * k, 21);
        for isa in isas {
            for ty in [
                WeightType::F32,
                WeightType::Q8_0,
                WeightType::Q4_0,
                WeightType::Q4_1,
            ] {
                for rows in [37, n] {
                    let w = Matrix::quantized(rows, k, &sample(rows * k, 22), ty);
                    let mut batch = vec![0f32; t * rows];
                    matmul(isa, &w, &x, t, &mut batch, &mut Scratch::default());
                    for j in 0..t {
                        let mut one = vec![0f32; rows];
                        matmul(
                            isa,
                            &w,
                            &x[j * k..(j + 1) * k],
                            1,
                            &mut one,
                            &mut Scratch::default(),
                        );
                        assert_eq!(
                            one,
                            batch[j * rows..(j + 1) * rows],
                            "{isa:?} {ty:?} rows={rows} token {j}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn packing_takes_quantised_matrices_in_groups_of_8_rows() {
        let x = sample(12 * 64, 4);
        assert!(Matrix::quantized(12, 64, &x, WeightType::Q8_0)
            .pack()
            .is_none());
        let x8 = &x[..8 * 64];
        assert!(Matrix::quantized(8, 64, x8, WeightType::F32)
            .pack()
            .is_none());
        for ty in [WeightType::Q8_0, WeightType::Q4_0, WeightType::Q4_1] {
            let p = Matrix::quantized(8, 64, x8, ty).pack().unwrap();
            assert!(p.pack().is_none());
            // the values survive: dequantising the packed matrix gives the row layout's values
            assert_eq!(
                p.dequantize(),
                Matrix::quantized(8, 64, x8, ty).dequantize()
            );
        }
        // Q4_1 by hand: row r's scale, then its minimum, then its 16 quant bytes 4 at a time
        let w = Matrix::quantized(8, 32, &x8[..8 * 32], WeightType::Q4_1);
        let p = w.pack().unwrap();
        for r in 0..8 {
            let row = &w.bytes[r * 20..(r + 1) * 20];
            assert_eq!(p.bytes[2 * r..2 * r + 2], row[..2]);
            assert_eq!(p.bytes[16 + 2 * r..18 + 2 * r], row[2..4]);
            for c in 0..4 {
                assert_eq!(
                    p.bytes[32 + 32 * c + 4 * r..][..4],
                    row[4 + 4 * c..8 + 4 * c]
                );
            }
        }
    }

    #[test]
    fn large_products_split_across_threads_agree_with_one_task() {
        let (n, k, t) = (1000, 512, 3);
        let w = Matrix::quantized(n, k, &sample(n * k, 5), WeightType::Q8_0);
        let x = sample(t * k, 6);
        let mut y = vec![0f32; t * n];
        matmul(Isa::detect(), &w, &x, t, &mut y, &mut Scratch::default());
        let mut acts = QuantActs::default();
        acts.quantize(&x, k);
        for r in [0, 1, 499, 999] {
            let one = dot_quant_portable(WeightType::Q8_0, &w.bytes[r * 544..], &acts, 16, 2);
            assert!((y[2 * n + r] - one).abs() < 1e-3, "row {r}");
        }
    }

    #[test]
    fn simd_activation_quantisation_matches_the_portable_one() {
        let isa = Isa::detect();
        let mut x = sample(32 * 20, 11);
        x[5] = 0.5 / 127.0 * 1.0; // not a tie: nothing special
        x[64..96].fill(0.0); // an all-zero block
        for blk in x.chunks(QK) {
            let (mut a, mut b) = ([0i8; QK], [0i8; QK]);
            let ra = quantize_block(isa, blk, &mut a);
            let rb = super::super::quant::quantize_act_block(blk, &mut b);
            assert_eq!((ra, a), (rb, b));
        }
    }

    #[test]
    fn attention_blocks_match_softmax_by_hand() {
        let cap = 70;
        // 1 to 4 queries; head widths on and off the 16-wide path; causal and sliding-window masks; key
        // counts on and off the 64-key tiles
        for hd in [8, 12, 24, 64, 80, 128] {
            let k = sample(cap * hd, 22); // by position
            let v = sample(cap * hd, 23);
            let kt: Vec<f32> = (0..hd * cap).map(|i| k[(i % cap) * hd + i / cap]).collect();
            for (p0, nq, window) in [
                (0, 1, None),
                (30, 4, None),
                (63, 3, None),
                (60, 4, Some(7)),
                (9, 2, Some(70)),
            ] {
                let qs: Vec<Vec<f32>> = (0..nq)
                    .map(|u| sample(hd, 30 + u32::try_from(u).unwrap()))
                    .collect();
                let q: Vec<&[f32]> = qs.iter().map(Vec::as_slice).collect();
                let mut isas = vec![Isa::Portable, Isa::detect()];
                if Isa::detect() == Isa::Avx2Vnni {
                    isas.push(Isa::Avx2);
                }
                // step 1: consecutive tokens of one head; step 0: heads of one token
                for (isa, step) in isas.into_iter().flat_map(|i| [(i, 1), (i, 0)]) {
                    let mut outs = vec![vec![0f32; hd]; nq];
                    let mut o: Vec<&mut [f32]> = outs.iter_mut().map(Vec::as_mut_slice).collect();
                    attend_block(
                        isa,
                        &q,
                        &kt,
                        &v,
                        cap,
                        p0,
                        step,
                        window,
                        0.3,
                        &mut Vec::new(),
                        &mut o,
                    );
                    for u in 0..nq {
                        let p = p0 + u * step;
                        let lo = window.map_or(0, |w: usize| (p + 1).saturating_sub(w));
                        let s: Vec<f64> = (lo..=p)
                            .map(|j| {
                                0.3 * (0..hd)
                                    .map(|c| f64::from(qs[u][c]) * f64::from(k[j * hd + c]))
                                    .sum::<f64>()
                            })
                            .collect();
                        let m = s.iter().copied().fold(f64::MIN, f64::max);
                        let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                        for c in 0..hd {
                            let want: f64 = (lo..=p)
                                .map(|j| (s[j - lo] - m).exp() / z * f64::from(v[j * hd + c]))
                                .sum();
                            assert!(
                                (f64::from(outs[u][c]) - want).abs() < 1e-5,
                                "{isa:?} hd={hd} p0={p0} nq={nq} step={step} {window:?} u={u} c={c}: {} vs {want}",
                                outs[u][c]
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn vector_exp_and_silu_match_f64() {
        // lengths on and off the 16-lane width; values across the range softmax and SiLU see, and past
        // where f32 exp overflows or underflows
        let mut x: Vec<f32> = sample(37, 40).iter().map(|v| v * 30.0).collect();
        x.extend([
            0.0, -0.0, 1e-8, -1e-8, 88.0, -87.0, 100.0, -100.0, -1e30, 1e30,
        ]);
        for isa in [Isa::Portable, Isa::detect()] {
            for n in [1, 16, 17, x.len()] {
                let mut e = x[..n].to_vec();
                let sum = exp_shifted(isa, &mut e, 2.5);
                let mut want_sum = 0f64;
                for (got, &v) in e.iter().zip(&x[..n]) {
                    let y = v - 2.5;
                    want_sum += f64::from(*got);
                    if y.exp().is_infinite() {
                        assert!(got.is_infinite(), "{isa:?} exp({y}) = {got}");
                    } else if y < -87.0 {
                        assert!((0.0..=1.2e-38).contains(got), "{isa:?} exp({y}) = {got}");
                    } else {
                        let want = f64::from(y).exp();
                        let tol = 4.0 * f64::from(f32::EPSILON) * want;
                        assert!(
                            (f64::from(*got) - want).abs() <= tol,
                            "{isa:?} exp({y}) = {got}, want {want}"
                        );
                    }
                }
                if want_sum.is_finite() {
                    assert!(
                        (f64::from(sum) - want_sum).abs() <= 1e-6 * want_sum,
                        "{isa:?} sum"
                    );
                } else {
                    assert!(sum.is_infinite(), "{isa:?} sum");
                }
                let up = sample(n, 41);
                let mut out = vec![0f32; n];
                silu_mul(isa, &x[..n], &up, &mut out);
                for ((o, &g), &u) in out.iter().zip(&x[..n]).zip(&up) {
                    let (g, u) = (f64::from(g), f64::from(u));
                    let want = g / (1.0 + (-g).exp()) * u;
                    let tol = 1e-6 * want.abs() + 1e-30;
                    assert!(
                        (f64::from(*o) - want).abs() <= tol,
                        "{isa:?} silu({g})·{u} = {o}, want {want}"
                    );
                }
            }
        }
    }
}
