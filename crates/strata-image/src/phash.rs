//! Perceptual hash (pHash): the picture reduced to 32 × 32 luminance (area average), its 2-D DCT-II, and one
//! bit per coefficient of the 8 × 8 lowest frequencies (the DC term left out) set when it is above their
//! median. Re-encoding, resizing and a brightness shift move few bits; different pictures differ in about
//! half of them. Distances are Hamming distances between the 64-bit hashes.

// Pixel and sample arithmetic: every float → integer cast is of a value rounded and clamped to the target
// range, and every index cast is bounded by an image size (≤ 2^16 per side).
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use crate::pixels::Frame;

const N: usize = 32;

/// The 64-bit pHash of a frame.
#[must_use]
pub fn phash(frame: &Frame) -> u64 {
    phash_luma(&frame.luma8(), frame.width, frame.height)
}

/// The pHash of a `width` × `height` 8-bit luminance plane (a frame's [`Frame::luma8`], when the caller
/// already has it).
#[must_use]
pub fn phash_luma(luma: &[u8], width: u32, height: u32) -> u64 {
    let small = resize_area(luma, width as usize, height as usize, N, N);
    let dct = dct2(&small);
    let mut coeffs = Vec::with_capacity(64);
    for v in 0..8 {
        for u in 0..8 {
            coeffs.push(dct[v * N + u]);
        }
    }
    let mut sorted: Vec<f64> = coeffs[1..].to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = f64::midpoint(sorted[31], sorted[32]);
    coeffs.iter().enumerate().fold(
        0u64,
        |h, (i, &c)| if i > 0 && c > median { h | (1 << i) } else { h },
    )
}

/// Hamming distance between two hashes.
#[must_use]
pub fn distance(a: u64, b: u64) -> u32 {
    (a ^ b).count_ones()
}

/// Area-average resampling of an 8-bit plane to `ow × oh`, as f64.
fn resize_area(src: &[u8], w: usize, h: usize, ow: usize, oh: usize) -> Vec<f64> {
    let mut out = vec![0.0; ow * oh];
    if w == 0 || h == 0 {
        return out;
    }
    for oy in 0..oh {
        let y0 = oy * h / oh;
        let y1 = ((oy + 1) * h / oh).max(y0 + 1).min(h);
        for ox in 0..ow {
            let x0 = ox * w / ow;
            let x1 = ((ox + 1) * w / ow).max(x0 + 1).min(w);
            let mut s = 0.0;
            for y in y0..y1 {
                for x in x0..x1 {
                    s += f64::from(src[y * w + x]);
                }
            }
            out[oy * ow + ox] = s / ((y1 - y0) * (x1 - x0)) as f64;
        }
    }
    out
}

/// Separable 2-D DCT-II of an N × N plane (only the first 8 rows and columns of the result are used).
fn dct2(x: &[f64]) -> Vec<f64> {
    let basis: Vec<f64> = (0..8)
        .flat_map(|k| {
            (0..N).map(move |n| {
                (std::f64::consts::PI / N as f64 * (n as f64 + 0.5) * f64::from(k)).cos()
            })
        })
        .collect();
    // rows: tmp[y][k] = Σ_x x[y][x]·cos
    let mut tmp = vec![0.0; N * 8];
    for y in 0..N {
        for k in 0..8 {
            tmp[y * 8 + k] = (0..N).map(|n| x[y * N + n] * basis[k * N + n]).sum();
        }
    }
    let mut out = vec![0.0; N * N];
    for v in 0..8 {
        for u in 0..8 {
            out[v * N + u] = (0..N).map(|n| tmp[n * 8 + u] * basis[v * N + n]).sum();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(w: u32, h: u32, seed: u32, bright: i32) -> Frame {
        let data = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .map(|(x, y)| {
                let fx = f64::from(x) / f64::from(w);
                let fy = f64::from(y) / f64::from(h);
                let s = f64::from(seed);
                let v = 128.0
                    + 60.0 * (fx * (3.0 + s) * 3.1).sin() * (fy * (2.0 + s * 0.7) * 3.1).cos()
                    + 40.0 * ((fx + fy) * (5.0 + s)).sin();
                (v as i32 + bright).clamp(0, 255) as u8
            })
            .collect();
        Frame::gray8(w, h, data)
    }

    #[test]
    fn near_copies_are_close_and_different_pictures_far() {
        let a = phash(&pattern(200, 160, 1, 0));
        let resized = phash(&pattern(100, 80, 1, 0));
        let brighter = phash(&pattern(200, 160, 1, 20));
        let other = phash(&pattern(200, 160, 4, 0));
        assert!(distance(a, resized) <= 6, "{}", distance(a, resized));
        assert!(distance(a, brighter) <= 6, "{}", distance(a, brighter));
        assert!(distance(a, other) > 16, "{}", distance(a, other));
        assert_eq!(distance(0b1011, 0b0110), 3);
    }
}
