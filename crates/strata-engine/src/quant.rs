//! Weight formats of the CPU engine and their quantisers, bit-compatible with ggml's blocks of 32:
//! Q8_0 = {f16 d, i8 q[32]} (x = d·q), Q4_0 = {f16 d, u8 q[16]} (x = d·(nibble − 8)), Q4_1 = {f16 d, f16 m,
//! u8 q[16]} (x = d·nibble + m), Q5_0 = {f16 d, u32 qh, u8 q[16]} (x = d·(nibble + 16·bit j of qh − 16)); nibble
//! j of a block is the low half of byte j for j < 16 and the high half of byte j − 16 otherwise. Rows of a GGUF file in these types are used as they are, without dequantising.

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

/// Elements per quantisation block.
pub const QK: usize = 32;

/// The format of a weight matrix in the CPU engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightType {
    F32,
    Q8_0,
    Q4_0,
    Q4_1,
    /// Runs packed (VNNI) only; elsewhere it becomes the Q8_0 holding the same values ([`Matrix::q5_0_as_q8_0`]).
    Q5_0,
}

impl WeightType {
    /// Bytes of one block of 32 weights (F32: 128).
    #[must_use]
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4 * QK,
            Self::Q8_0 => 34,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
        }
    }

    /// GGML's name of the type.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::Q8_0 => "Q8_0",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
        }
    }
}

/// A weight matrix of `rows` × `cols` (out × in, as `nn.Linear` stores it).
#[derive(Debug, Clone)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub ty: WeightType,
    /// F32: the values; quantised: ggml blocks, row after row (or, when `packed`, see [`Matrix::packed`]).
    pub f32: Vec<f32>,
    pub bytes: Vec<u8>,
    /// Repacked for VNNI ([`Matrix::pack`]): per group of 8 rows and block of 32 columns, the 8 rows'
    /// f16 scales (Q4_1: then their 8 f16 minima), then their quants interleaved 4 bytes at a time —
    /// Q8_0 offset by 128 (unsigned), Q4 as stored (byte j holds values j and j + 16) — so that one
    /// `vpdpbusd` gives 8 rows' partial dot products in its 8 lanes. Q5_0: the 8 scales, then each row's high
    /// bits as one u32 whose byte k holds (bit c) the high bit of value 4c + k — one shift and one mask put a
    /// chunk's high bits under its nibbles — then the nibbles as Q4's.
    pub packed: bool,
}

impl WeightType {
    /// Bytes of one packed group block (8 rows × 32 columns): the same as 8 of ggml's blocks.
    #[must_use]
    pub fn packed_block_bytes(self) -> usize {
        8 * self.block_bytes()
    }

    /// Where the quants start in a packed group block (after the scales, and Q4_1's minima).
    #[must_use]
    pub fn packed_quants_at(self) -> usize {
        match self {
            Self::Q4_1 => 32,
            Self::Q5_0 => 48,
            _ => 16,
        }
    }

    /// Row `lane`'s ggml block (`block_bytes` into `dst`) out of packed group block `src`: its scales (and
    /// Q4_1's minima), then its quants gathered 4 bytes at a time (Q8_0's back to signed).
    pub(crate) fn unpack_block(self, src: &[u8], lane: usize, dst: &mut [u8]) {
        let (qa, pqa) = (self.quants_at(), self.packed_quants_at());
        let flip = if self == Self::Q8_0 { 0x80 } else { 0 };
        for head in (0..self.heads_at()).step_by(2) {
            dst[head..head + 2].copy_from_slice(&src[8 * head + 2 * lane..][..2]);
        }
        if self == Self::Q5_0 {
            let w = u32::from_le_bytes([0, 1, 2, 3].map(|i| src[16 + 4 * lane + i]));
            dst[2..6].copy_from_slice(&q5_0_bits_unpacked(w).to_le_bytes());
        }
        for (j, q) in dst[qa..].iter_mut().enumerate() {
            *q = src[pqa + (j / 4) * 32 + lane * 4 + j % 4] ^ flip;
        }
    }

    /// Where a block's f16 heads (d; Q4_1's m) end: packing interleaves them by row, two bytes at a time.
    /// Q5_0's qh, after its d, is packed on its own ([`q5_0_bits_packed`]).
    fn heads_at(self) -> usize {
        if self == Self::Q5_0 {
            2
        } else {
            self.quants_at()
        }
    }

    /// Where the quants start in one of ggml's blocks.
    #[must_use]
    pub fn quants_at(self) -> usize {
        match self {
            Self::Q4_1 => 4,
            Self::Q5_0 => 6,
            _ => 2,
        }
    }
}

impl Matrix {
    /// An f32 matrix.
    ///
    /// # Panics
    /// When `data` does not hold rows × cols values.
    #[must_use]
    pub fn dense(rows: usize, cols: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix data length");
        Self {
            rows,
            cols,
            ty: WeightType::F32,
            f32: data,
            bytes: Vec::new(),
            packed: false,
        }
    }

    /// A matrix from ggml blocks as they lie in a GGUF file.
    ///
    /// # Panics
    /// When `cols` is not a multiple of 32 or the byte length does not match.
    #[must_use]
    pub fn from_blocks(rows: usize, cols: usize, ty: WeightType, bytes: Vec<u8>) -> Self {
        assert!(
            ty != WeightType::F32 && cols.is_multiple_of(QK),
            "quantised rows"
        );
        assert_eq!(
            bytes.len(),
            rows * cols / QK * ty.block_bytes(),
            "block bytes"
        );
        Self {
            rows,
            cols,
            ty,
            f32: Vec::new(),
            bytes,
            packed: false,
        }
    }

    /// This quantised matrix in the packed layout (rows a multiple of 8), or None when it does not qualify.
    #[must_use]
    pub fn pack(&self) -> Option<Self> {
        let mut m = self.clone();
        m.pack_in_place().then_some(m)
    }

    /// Repacks this quantised matrix in place (rows a multiple of 8); false, unchanged, when it does not
    /// qualify. Group g's packed bytes take exactly the place of its 8 rows, so one group's rows are copied
    /// aside at a time: no second copy of the matrix (a 262k-token output head is 178 MB in Q8_0).
    pub fn pack_in_place(&mut self) -> bool {
        if self.ty == WeightType::F32 || self.packed || !self.rows.is_multiple_of(8) {
            return false;
        }
        let (bb, qa) = (self.ty.block_bytes(), self.ty.quants_at());
        // quants per row and block, 4 at a time; Q8_0's become unsigned
        let (chunks, flip) = if self.ty == WeightType::Q8_0 {
            (QK / 4, 0x80)
        } else {
            (QK / 8, 0)
        };
        let nb = self.cols / QK;
        let rb = self.row_bytes();
        let mut rows = vec![0u8; 8 * rb];
        for g in 0..self.rows / 8 {
            let region = &mut self.bytes[g * 8 * rb..(g + 1) * 8 * rb];
            rows.copy_from_slice(region);
            let mut at = 0;
            for b in 0..nb {
                let blk = |r: usize| &rows[r * rb + b * bb..][..bb];
                for head in (0..self.ty.heads_at()).step_by(2) {
                    for r in 0..8 {
                        region[at..at + 2].copy_from_slice(&blk(r)[head..head + 2]);
                        at += 2;
                    }
                }
                if self.ty == WeightType::Q5_0 {
                    for r in 0..8 {
                        let qh = u32::from_le_bytes([2, 3, 4, 5].map(|i| blk(r)[i]));
                        region[at..at + 4].copy_from_slice(&q5_0_bits_packed(qh).to_le_bytes());
                        at += 4;
                    }
                }
                for c in 0..chunks {
                    for r in 0..8 {
                        for (k, q) in blk(r)[qa + 4 * c..qa + 4 * c + 4].iter().enumerate() {
                            region[at + k] = q ^ flip;
                        }
                        at += 4;
                    }
                }
            }
        }
        self.packed = true;
        true
    }

    /// A packed matrix back in ggml's row layout.
    #[must_use]
    pub fn unpacked(&self) -> Self {
        if !self.packed {
            return self.clone();
        }
        let (bb, pb) = (self.ty.block_bytes(), self.ty.packed_block_bytes());
        let nb = self.cols / QK;
        let rb = self.row_bytes();
        let mut bytes = vec![0u8; self.bytes.len()];
        for g in 0..self.rows / 8 {
            for b in 0..nb {
                let src = &self.bytes[(g * nb + b) * pb..][..pb];
                for r in 0..8 {
                    let dst = &mut bytes[(g * 8 + r) * rb + b * bb..][..bb];
                    self.ty.unpack_block(src, r, dst);
                }
            }
        }
        Self::from_blocks(self.rows, self.cols, self.ty, bytes)
    }

    /// Quantises an f32 matrix to `ty` (rows whose length is not a multiple of 32 stay f32), with candle's
    /// ggml quantisers — the same ones `strata export` writes GGUF files with, so a model quantised at load
    /// and a model exported then loaded hold the same blocks.
    ///
    /// # Panics
    /// When `data` does not hold rows × cols values.
    #[must_use]
    pub fn quantized(rows: usize, cols: usize, data: &[f32], ty: WeightType) -> Self {
        let ggml = match ty {
            _ if !cols.is_multiple_of(QK) => None,
            WeightType::F32 => None,
            WeightType::Q8_0 => Some(GgmlDType::Q8_0),
            WeightType::Q4_0 => Some(GgmlDType::Q4_0),
            WeightType::Q4_1 => Some(GgmlDType::Q4_1),
            WeightType::Q5_0 => Some(GgmlDType::Q5_0),
        };
        let Some(ggml) = ggml else {
            return Self::dense(rows, cols, data.to_vec());
        };
        let bytes = candle_core::Tensor::from_slice(data, (rows, cols), &candle_core::Device::Cpu)
            .and_then(|t| QTensor::quantize(&t, ggml))
            .and_then(|q| q.data().map(std::borrow::Cow::into_owned))
            .expect("whole blocks of f32 values quantise");
        Self::from_blocks(rows, cols, ty, bytes)
    }

    /// A Q5_0 matrix as the Q8_0 blocks of the same values (the same d, q = value − 16): exact, and the
    /// products over it are the same integers scaled the same way. Any other matrix as it is.
    #[must_use]
    pub fn q5_0_as_q8_0(&self) -> Self {
        if self.ty != WeightType::Q5_0 {
            return self.clone();
        }
        let src = self.unpacked();
        let mut bytes = Vec::with_capacity(src.bytes.len() / 22 * 34);
        for b in src.bytes.chunks_exact(22) {
            bytes.extend_from_slice(&b[..2]);
            bytes.extend((0..QK).map(|j| (q5_0_value(b, j).cast_signed() - 16).cast_unsigned()));
        }
        Self::from_blocks(self.rows, self.cols, WeightType::Q8_0, bytes)
    }

    /// Bytes of one row.
    #[must_use]
    pub fn row_bytes(&self) -> usize {
        self.cols / QK * self.ty.block_bytes()
    }

    /// Bytes the matrix occupies (what a matrix-vector product reads).
    #[must_use]
    pub fn size_bytes(&self) -> usize {
        match self.ty {
            WeightType::F32 => self.f32.len() * 4,
            _ => self.bytes.len(),
        }
    }

    /// The matrix as f32 values (for tests and references).
    #[must_use]
    pub fn dequantize(&self) -> Vec<f32> {
        if self.ty == WeightType::F32 {
            return self.f32.clone();
        }
        if self.packed {
            return self.unpacked().dequantize();
        }
        let bb = self.ty.block_bytes();
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for b in self.bytes.chunks_exact(bb) {
            dequantize_block(self.ty, b, &mut out);
        }
        out
    }

    /// Appends the values of row `r` to `out` (a packed matrix's row is gathered from its group's blocks):
    /// an embedding lookup from a quantised table, without the table in f32.
    ///
    /// # Panics
    /// When `r` is not a row.
    pub fn row_into(&self, r: usize, out: &mut Vec<f32>) {
        assert!(r < self.rows, "row {r} of {}", self.rows);
        if self.ty == WeightType::F32 {
            out.extend_from_slice(&self.f32[r * self.cols..(r + 1) * self.cols]);
            return;
        }
        let (bb, nb) = (self.ty.block_bytes(), self.cols / QK);
        if !self.packed {
            for b in self.bytes[r * self.row_bytes()..(r + 1) * self.row_bytes()].chunks_exact(bb) {
                dequantize_block(self.ty, b, out);
            }
            return;
        }
        let pb = self.ty.packed_block_bytes();
        let mut blk = [0u8; 34];
        for b in 0..nb {
            let src = &self.bytes[((r / 8) * nb + b) * pb..][..pb];
            self.ty.unpack_block(src, r % 8, &mut blk[..bb]);
            dequantize_block(self.ty, &blk[..bb], out);
        }
    }

    /// Stacks matrices with the same column count and type (e.g. Q, K and V into one projection).
    ///
    /// # Panics
    /// When `parts` is empty or their columns or types differ.
    #[must_use]
    pub fn stack(parts: &[Matrix]) -> Self {
        let cols = parts[0].cols;
        let ty = parts[0].ty;
        assert!(
            parts
                .iter()
                .all(|p| p.cols == cols && p.ty == ty && !p.packed),
            "stack"
        );
        let rows = parts.iter().map(|p| p.rows).sum();
        Self {
            rows,
            cols,
            ty,
            f32: parts.iter().flat_map(|p| p.f32.iter().copied()).collect(),
            bytes: parts.iter().flat_map(|p| p.bytes.iter().copied()).collect(),
            packed: false,
        }
    }

    /// Reorders rows: row i of the result is row `order[i]` of `self`.
    ///
    /// # Panics
    /// On a packed matrix (rows are permuted before packing).
    #[must_use]
    pub fn permute_rows(&self, order: &[usize]) -> Self {
        assert!(!self.packed, "permute_rows of a packed matrix");
        let (rb, re) = (self.row_bytes(), self.cols);
        let mut out = self.clone();
        for (i, &src) in order.iter().enumerate() {
            if self.ty == WeightType::F32 {
                out.f32[i * re..(i + 1) * re].copy_from_slice(&self.f32[src * re..(src + 1) * re]);
            } else {
                out.bytes[i * rb..(i + 1) * rb]
                    .copy_from_slice(&self.bytes[src * rb..(src + 1) * rb]);
            }
        }
        out
    }
}

pub(crate) fn get_f16(b: &[u8]) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

fn dequantize_block(ty: WeightType, b: &[u8], out: &mut Vec<f32>) {
    let d = get_f16(b);
    match ty {
        WeightType::Q8_0 => out.extend(b[2..34].iter().map(|&q| d * f32::from(q.cast_signed()))),
        WeightType::Q4_0 | WeightType::Q4_1 => {
            let (m, qs, off) = if ty == WeightType::Q4_1 {
                (get_f16(&b[2..]), &b[4..20], 0.0)
            } else {
                (0.0, &b[2..18], 8.0)
            };
            out.extend(qs.iter().map(|&q| d * (f32::from(q & 15) - off) + m));
            out.extend(qs.iter().map(|&q| d * (f32::from(q >> 4) - off) + m));
        }
        WeightType::Q5_0 => out.extend((0..QK).map(|j| d * (f32::from(q5_0_value(b, j)) - 16.0))),
        WeightType::F32 => {}
    }
}

/// Value j (0..32, unsigned: 16 is zero) of a Q5_0 block: its nibble and bit j of qh above it.
pub(crate) fn q5_0_value(b: &[u8], j: usize) -> u8 {
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let nib = if j < 16 {
        b[6 + j] & 15
    } else {
        b[6 + j - 16] >> 4
    };
    #[allow(clippy::cast_possible_truncation)]
    let hi = ((qh >> j) & 1) as u8;
    nib | (hi << 4)
}

/// Q5_0's qh (bit j: value j's high bit) in the packed order: bit 8k + c holds value 4c + k's.
fn q5_0_bits_packed(qh: u32) -> u32 {
    (0..32).fold(0, |w, j| w | (((qh >> j) & 1) << (8 * (j % 4) + j / 4)))
}

/// The inverse of [`q5_0_bits_packed`].
fn q5_0_bits_unpacked(w: u32) -> u32 {
    (0..32).fold(0, |qh, j| qh | (((w >> (8 * (j % 4) + j / 4)) & 1) << j))
}

/// Elements of one K-quant super-block.
pub const QK_K: usize = 256;

/// Bytes of one Q4_K super-block: f16 d, f16 dmin, 12 bytes of 6-bit scales and minima, 128 bytes of nibbles.
pub const Q4_K_BYTES: usize = 144;

/// Q4_K blocks (ggml's `block_q4_K`, super-blocks of 256) as the Q4_1 blocks of their eight sub-blocks:
/// sub-block j holds x = d·sc_j·q − dmin·m_j with 4-bit q and 6-bit sc_j, m_j, which is Q4_1's
/// x = d'·q + m' with d' = d·sc_j and m' = −dmin·m_j. The nibbles move unchanged (Q4_K keeps sub-blocks
/// 2k and 2k + 1 in the low and high halves of the same 32 bytes, Q4_1 the two halves of one sub-block);
/// d' and m' are rounded to f16, the only change to the values: at most 2⁻¹¹ of |d·sc_j| and |dmin·m_j|.
/// The result takes 160 bytes per 256 weights (Q4_K 144; Q8_0, what K-quants ran as before, 272).
///
/// # Panics
/// When `bytes` is not whole super-blocks.
#[must_use]
pub fn q4_k_as_q4_1(bytes: &[u8]) -> Vec<u8> {
    assert!(bytes.len().is_multiple_of(Q4_K_BYTES), "whole Q4_K blocks");
    let per = QK_K / QK * WeightType::Q4_1.block_bytes();
    let mut out = Vec::with_capacity(bytes.len() / Q4_K_BYTES * per);
    for b in bytes.chunks_exact(Q4_K_BYTES) {
        let (d, dmin) = (get_f16(b), get_f16(&b[2..]));
        let (sc, qs) = (&b[4..16], &b[16..]);
        for j in 0..QK_K / QK {
            // ggml's get_scale_min_k4: 6-bit scale and minimum of sub-block j
            let (s, m) = if j < 4 {
                (sc[j] & 63, sc[j + 4] & 63)
            } else {
                (
                    (sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4),
                    (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4),
                )
            };
            out.extend_from_slice(&f16::from_f32(d * f32::from(s)).to_bits().to_le_bytes());
            out.extend_from_slice(&f16::from_f32(-dmin * f32::from(m)).to_bits().to_le_bytes());
            let (half, shift) = (&qs[32 * (j / 2)..32 * (j / 2) + 32], 4 * (j % 2));
            let q = |i: usize| (half[i] >> shift) & 15;
            out.extend((0..16).map(|i| q(i) | (q(i + 16) << 4)));
        }
    }
    out
}

/// Activations quantised to 8 bits in blocks of 32 (what the quantised dot products multiply the weights by):
/// for token t and block b, x ≈ d·q with d = max|x|/127, and s = d·Σq (used by Q4_0 and Q4_1).
#[derive(Debug, Default)]
pub struct QuantActs {
    pub blocks: usize,
    pub d: Vec<f32>,
    pub s: Vec<f32>,
    pub qs: Vec<i8>,
    /// −128·Σq per block: what the product with weights offset by 128 (the packed layout) over-counts.
    pub c128: Vec<i32>,
}

/// One block of activations: q = x / d rounded to nearest (ties to even, as the SIMD rounding does), d =
/// max|x| / 127. Returns (d, Σq).
#[allow(clippy::cast_possible_truncation)]
#[must_use]
pub fn quantize_act_block(x: &[f32], qs: &mut [i8]) -> (f32, i32) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    let mut sum = 0i32;
    for (q, v) in qs.iter_mut().zip(x) {
        *q = (v * id).round_ties_even() as i8;
        sum += i32::from(*q);
    }
    (d, sum)
}

#[derive(Clone, Copy)]
struct Ptrs {
    d: *mut f32,
    s: *mut f32,
    qs: *mut i8,
    c: *mut i32,
}
// SAFETY: each task writes the blocks of its own tokens only.
unsafe impl Send for Ptrs {}
unsafe impl Sync for Ptrs {}

impl Ptrs {
    /// (A method, so that closures capture the whole `Send` wrapper.)
    fn block(self, i: usize) -> (*mut f32, *mut f32, *mut i8, *mut i32) {
        (
            self.d.wrapping_add(i),
            self.s.wrapping_add(i),
            self.qs.wrapping_add(i * QK),
            self.c.wrapping_add(i),
        )
    }
}

impl QuantActs {
    /// Quantises `x` (rows of `cols` values, `cols` a multiple of 32), in parallel for many rows.
    pub fn quantize(&mut self, x: &[f32], cols: usize) {
        let nb = x.len() / QK;
        self.blocks = cols / QK;
        self.d.resize(nb, 0.0);
        self.s.resize(nb, 0.0);
        self.qs.resize(nb * QK, 0);
        self.c128.resize(nb, 0);
        let isa = super::kernels::Isa::detect_cached();
        let p = Ptrs {
            d: self.d.as_mut_ptr(),
            s: self.s.as_mut_ptr(),
            qs: self.qs.as_mut_ptr(),
            c: self.c128.as_mut_ptr(),
        };
        let per_task = 64 * self.blocks.max(1);
        let task = |t: usize| {
            for i in t * per_task..((t + 1) * per_task).min(nb) {
                let (dp, sp, qp, cp) = p.block(i);
                // SAFETY: block i belongs to this task; the vectors hold nb blocks.
                unsafe {
                    let q = std::slice::from_raw_parts_mut(qp, QK);
                    let (d, sum) = super::kernels::quantize_block(isa, &x[i * QK..(i + 1) * QK], q);
                    *dp = d;
                    *cp = -128 * sum;
                    #[allow(clippy::cast_precision_loss)]
                    {
                        *sp = d * sum as f32;
                    }
                }
            }
        };
        let tasks = nb.div_ceil(per_task);
        if tasks > 1 {
            super::pool::global().run(tasks, &task);
        } else {
            (0..tasks).for_each(task);
        }
    }
}

/// Deterministic values in [−1, 1) for the kernel tests (a linear congruential sequence).
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn sample(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            f32::from(u16::try_from(s >> 16).unwrap()) / 32768.0 - 1.0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_worked_q8_0_block() {
        // max |x| = 1.27 → d = 0.01, q = x / 0.01
        let mut x = [0f32; QK];
        x[0] = 1.27;
        x[1] = -0.5;
        x[2] = 0.004; // rounds to 0
        x[3] = 0.006; // rounds to 1
        let m = Matrix::quantized(1, QK, &x, WeightType::Q8_0);
        assert_eq!(m.bytes.len(), 34);
        assert_eq!(m.bytes[2..6], [127, (-50i8).cast_unsigned(), 0, 1]);
        let back = m.dequantize();
        assert!((back[1] + 0.5).abs() < 1e-3 && back[2] == 0.0);
    }

    #[test]
    #[allow(clippy::float_cmp)] // these values are exact in f16
    fn hand_worked_q4_blocks() {
        // Q4_0: the largest magnitude is −8 → d = 1, q = x + 8 (truncated after +0.5)
        let mut x = [0f32; QK];
        x[0] = -8.0;
        x[1] = 7.0;
        x[16] = 3.0;
        let m = Matrix::quantized(1, QK, &x, WeightType::Q4_0);
        assert_eq!(get_f16(&m.bytes), 1.0);
        assert_eq!(m.bytes[2], 11 << 4); // x[0] → 0 (low nibble), x[16] → 11 (high)
        assert_eq!(m.bytes[3], 15 | (8 << 4)); // x[1] → 15, x[17] → 8
        assert_eq!(m.dequantize()[..2], [-8.0, 7.0]);
        // Q4_1: min −1, max 14 → d = 1, m = −1
        let mut y = [0f32; QK];
        y[0] = -1.0;
        y[5] = 14.0;
        y[20] = 2.0;
        let m = Matrix::quantized(1, QK, &y, WeightType::Q4_1);
        assert_eq!((get_f16(&m.bytes), get_f16(&m.bytes[2..])), (1.0, -1.0));
        let back = m.dequantize();
        assert_eq!(
            (back[0], back[5], back[20], back[1]),
            (-1.0, 14.0, 2.0, 0.0)
        );
    }

    #[test]
    fn quantisation_error_is_bounded_by_half_a_step() {
        let x = sample(4 * QK, 7);
        for ty in [WeightType::Q8_0, WeightType::Q4_0, WeightType::Q4_1] {
            let m = Matrix::quantized(4, QK, &x, ty);
            let steps = if ty == WeightType::Q8_0 { 127.0 } else { 7.5 };
            for (blk, back) in x.chunks(QK).zip(m.dequantize().chunks(QK)) {
                let amax = blk.iter().fold(0f32, |a, v| a.max(v.abs()));
                let err = blk
                    .iter()
                    .zip(back)
                    .fold(0f32, |e, (a, b)| e.max((a - b).abs()));
                assert!(err <= amax / steps * 1.01, "{ty:?}: {err} vs {amax}");
            }
        }
    }

    /// Q8_0 by hand (ggml's reference: d = max|x| / 127 stored as f16, q = round(x / d)) for x = 0, 1, …, 31;
    /// Q4_1 (d = (max − min) / 15, m = min, q = trunc((x − m)/d + 0.5), low nibbles = first half).
    #[test]
    fn blocks_as_ggml_writes_them() {
        let x: Vec<f32> = (0..32u8).map(f32::from).collect();
        let q8 = Matrix::quantized(1, 32, &x, WeightType::Q8_0);
        let d = f16::from_f32(31.0 / 127.0);
        assert_eq!(q8.bytes[..2], d.to_bits().to_le_bytes());
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // 0 ..= 127
        let want: Vec<u8> = (0..32u8)
            .map(|i| (f32::from(i) * 127.0 / 31.0).round() as u8)
            .collect();
        assert_eq!(q8.bytes[2..], want[..]);
        assert_eq!((want[1], want[31]), (4, 127));
        let q41 = Matrix::quantized(1, 32, &x, WeightType::Q4_1);
        assert_eq!(
            q41.bytes[..2],
            f16::from_f32(31.0 / 15.0).to_bits().to_le_bytes()
        );
        assert_eq!(q41.bytes[2..4], [0, 0]); // m = 0
                                             // byte j holds x = j (low nibble) and x = j + 16 (high): x = 1 → 1 / 2.0667 + 0.5 = 0.98 → 0,
                                             // x = 17 → 8.73 → 8; x = 15 → 7.76 → 7, x = 31 → 15.5 → 15
        assert_eq!(q41.bytes[4 + 1], 0x80);
        assert_eq!(q41.bytes[4 + 15], 7 | (15 << 4));
    }

    /// One super-block by hand: d = 0.5, dmin = 0.25, sub-block 1 with scale 3 and minimum 2 (a 6-bit
    /// field of the first eight bytes), sub-block 5 with scale 37 and minimum 41 (split: low bits in byte
    /// 9, high bits in the top of bytes 1 and 5), nibbles 0..15 in the high halves of the first 32 bytes.
    #[test]
    #[allow(clippy::float_cmp)] // every value is exact in f16
    fn hand_worked_q4_k_block_becomes_q4_1() {
        let mut b = vec![0u8; Q4_K_BYTES];
        b[..2].copy_from_slice(&f16::from_f32(0.5).to_bits().to_le_bytes());
        b[2..4].copy_from_slice(&f16::from_f32(0.25).to_bits().to_le_bytes());
        let sc = &mut b[4..16];
        sc[1] = 3; // scale of sub-block 1
        sc[5] = 2; // its minimum
                   // 37 = 0x25 and 41 = 0x29: low nibbles 5 and 9 in byte 9, the high bits (2 each) on top of bytes 1, 5
        sc[9] = 0x95;
        sc[1] |= 2 << 6;
        sc[5] |= 2 << 6;
        for i in 0..32u8 {
            b[16 + usize::from(i)] = (i % 16) << 4; // sub-block 1: nibble i % 16; sub-block 0: 0
            b[16 + 64 + usize::from(i)] = (15 - i % 16) << 4; // sub-block 5
        }
        let q41 = Matrix::from_blocks(1, QK_K, WeightType::Q4_1, q4_k_as_q4_1(&b));
        let x = q41.dequantize();
        // sub-block 1: 0.5·3·q − 0.25·2
        for i in 0..32 {
            assert_eq!(
                x[32 + i],
                1.5 * f32::from(u8::try_from(i % 16).unwrap()) - 0.5
            );
        }
        // sub-block 5: 0.5·37·q − 0.25·41
        for i in 0..32 {
            let q = 15.0 - f32::from(u8::try_from(i % 16).unwrap());
            assert_eq!(x[5 * 32 + i], 18.5 * q - 10.25);
        }
        // sub-block 0: scale 0, minimum 0 (the high bits of bytes 1 and 5 belong to sub-block 5)
        assert!(x[..32].iter().all(|&v| v == 0.0));
    }

    /// Random super-blocks quantised by candle's Q4_K quantiser, dequantised by candle's Q4_K code and by
    /// the Q4_1 blocks of the repack: the same values up to the f16 rounding of the scales.
    #[test]
    fn q4_k_repacked_as_q4_1_dequantises_as_candle_does() {
        let x = sample(4 * QK_K, 11);
        let t = candle_core::Tensor::from_slice(&x, (4, QK_K), &candle_core::Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, GgmlDType::Q4K).unwrap();
        let kb = q.data().unwrap().into_owned();
        let want: Vec<f32> = q
            .dequantize(&candle_core::Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let got = Matrix::from_blocks(4, QK_K, WeightType::Q4_1, q4_k_as_q4_1(&kb)).dequantize();
        let amax = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        let mut worst = 0f32;
        for (a, b) in got.iter().zip(&want) {
            worst = worst.max((a - b).abs());
        }
        // |d·sc|·15 + |dmin·m| ≤ about 2·amax per sub-block; each scale is within 2^-11 of itself
        assert!(worst <= 2.0 * amax / 2048.0, "{worst} vs {amax}");
        // and the repack moves every nibble: it is not the dequantisation of another block order
        let moved: Vec<f32> = got.chunks(QK).rev().flatten().copied().collect();
        assert!(moved.iter().zip(&want).any(|(a, b)| (a - b).abs() > 0.05));
    }

    /// Rows read one at a time equal the whole matrix's values, packed or not, in every type.
    #[test]
    fn rows_read_alone_equal_the_whole_matrix() {
        let x = sample(16 * 64, 9);
        for ty in [
            WeightType::F32,
            WeightType::Q8_0,
            WeightType::Q4_0,
            WeightType::Q4_1,
        ] {
            let m = Matrix::quantized(16, 64, &x, ty);
            let want = m.dequantize();
            for mat in [Some(m.clone()), m.pack()].into_iter().flatten() {
                let mut got = Vec::new();
                for r in 0..16 {
                    mat.row_into(r, &mut got);
                }
                assert_eq!(got, want, "{ty:?}, packed {}", mat.packed);
            }
        }
    }

    #[test]
    fn permute_and_stack_move_whole_rows() {
        let x = sample(3 * 64, 3);
        let m = Matrix::quantized(3, 64, &x, WeightType::Q4_1);
        let p = m.permute_rows(&[2, 0, 1]);
        let (a, b) = (m.dequantize(), p.dequantize());
        assert_eq!(b[..64], a[128..]);
        assert_eq!(b[64..128], a[..64]);
        let s = Matrix::stack(&[m.clone(), p]);
        assert_eq!((s.rows, s.dequantize()[..192] == a[..]), (6, true));
    }
}
