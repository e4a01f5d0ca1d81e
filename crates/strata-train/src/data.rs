//! Training windows drawn from a mixture of token artifacts, nanoGPT style, over memory-mapped shards.
//!
//! Row `i` of the whole run (row `r` of micro-batch `m` of step `s`: `i = (s·K + m)·B + r`) takes its
//! component from a low-discrepancy sequence over the mixture weights, so every component's share of rows
//! stays within a few rows of its weight at any point, and its window from a generator seeded by
//! (seed, i). Both depend on `i` alone: a resumed run sees exactly the windows an uninterrupted one would,
//! and K micro-batches of B rows are the same rows as one batch of K·B.

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use strata_tokenize::TokenShard;

use crate::{Context, Result, TrainError};

/// One token artifact of a mixture.
pub struct Component {
    pub name: String,
    pub weight: f64,
    shards: Vec<TokenShard>,
    /// Cumulative count of window starts over the shards.
    starts: Vec<usize>,
    /// Tokens between window starts: 1 for a token stream, the row length for SFT examples encoded one per
    /// row (a window is then exactly one example).
    stride: usize,
}

impl Component {
    /// `example_len`: the row length of SFT examples encoded one per row (`example_len` in the token
    /// artifact's manifest), which must be `seq_len + 1`; None for a token stream.
    ///
    /// # Errors
    /// When the weight is not positive, the rows do not match `seq_len`, or the shards hold no full window.
    pub fn new(
        name: &str,
        weight: f64,
        shards: Vec<TokenShard>,
        seq_len: usize,
        example_len: Option<usize>,
    ) -> Result<Self> {
        if !(weight.is_finite() && weight > 0.0) {
            return Err(TrainError::Config(format!(
                "mixture weight of {name:?} is {weight}: weights must be > 0"
            )));
        }
        if let Some(n) = example_len.filter(|&n| n != seq_len + 1) {
            return Err(TrainError::Config(format!(
                "tokens {name:?} hold one example per row of {n} tokens: train with seq_len {} (or \
                 encode them again with --max-len {seq_len} or --pack)",
                n.saturating_sub(1)
            )));
        }
        let stride = example_len.unwrap_or(1);
        let mut starts = Vec::with_capacity(shards.len());
        let mut total = 0usize;
        for s in &shards {
            total += match example_len {
                Some(n) => s.len() / n,
                None => s.len().saturating_sub(seq_len),
            };
            starts.push(total);
        }
        if total == 0 {
            let tokens: usize = shards.iter().map(TokenShard::len).sum();
            return Err(TrainError::Data(format!(
                "tokens {name:?}: {tokens} tokens, no shard long enough for a window of seq_len + 1 = {}",
                seq_len + 1
            )));
        }
        Ok(Self {
            name: name.to_string(),
            weight,
            shards,
            starts,
            stride,
        })
    }

    /// Appends window number `w` (T + 1 tokens) to `out`.
    fn window(&self, w: usize, t: usize, out: &mut Vec<u32>) {
        let shard = self.starts.partition_point(|&c| c <= w);
        let before = if shard == 0 {
            0
        } else {
            self.starts[shard - 1]
        };
        self.shards[shard].extend_into((w - before) * self.stride, t + 1, out);
    }

    fn windows(&self) -> usize {
        self.starts.last().copied().unwrap_or(0)
    }
}

/// How a component's windows are chosen.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Sampling {
    /// A window at a random offset for every row (nanoGPT).
    #[default]
    Random,
    /// The component's k-th row takes the window at k·T (wrapping), as llm.c's loader reads a file in
    /// order: every token seen once per epoch, and other tools can be fed the very same windows.
    Sequential,
}

pub struct Mixture {
    components: Vec<Component>,
    sampling: Sampling,
    /// (next global row, rows per component before it): sequential sampling advances it row by row.
    cursor: std::sync::Mutex<(u64, Vec<usize>)>,
    /// Cumulative normalised weights; the last is 1.
    cumulative: Vec<f64>,
    seq_len: usize,
}

/// Inputs, targets and, per component, the rows it supplied.
pub struct Batch {
    pub x: Tensor,
    pub y: Tensor,
    pub rows: Vec<usize>,
}

/// The fractional part of i·φ⁻¹ (plus a seed-dependent phase): a low-discrepancy sequence in [0, 1).
fn golden(i: u64, phase: f64) -> f64 {
    const PHI_INV: f64 = 0.618_033_988_749_894_9;
    #[allow(clippy::cast_precision_loss)]
    let x = (i as f64).mul_add(PHI_INV, phase);
    x - x.floor()
}

impl Mixture {
    /// # Errors
    /// When there are no components.
    pub fn new(components: Vec<Component>, seq_len: usize, sampling: Sampling) -> Result<Self> {
        if components.is_empty() {
            return Err(TrainError::Config("no token artifacts to train on".into()));
        }
        let total: f64 = components.iter().map(|c| c.weight).sum();
        let mut acc = 0.0;
        let mut cumulative: Vec<f64> = components
            .iter()
            .map(|c| {
                acc += c.weight / total;
                acc
            })
            .collect();
        if let Some(last) = cumulative.last_mut() {
            *last = 1.0;
        }
        let n = components.len();
        Ok(Self {
            components,
            sampling,
            cursor: std::sync::Mutex::new((0, vec![0; n])),
            cumulative,
            seq_len,
        })
    }

    #[must_use]
    pub fn components(&self) -> &[Component] {
        &self.components
    }

    /// The component of global row `i`.
    #[must_use]
    pub fn component_of(&self, seed: u64, i: u64) -> usize {
        if self.components.len() == 1 {
            return 0;
        }
        #[allow(clippy::cast_precision_loss)]
        let phase = (seed % 1_000_003) as f64 / 1_000_003.0;
        let u = golden(i, phase);
        self.cumulative
            .partition_point(|&c| c <= u)
            .min(self.components.len() - 1)
    }

    /// Rows per component over global rows `0..n` (what a resumed run has already seen).
    #[must_use]
    pub fn rows_before(&self, seed: u64, n: u64) -> Vec<usize> {
        self.rows_between(seed, 0, n)
    }

    /// Rows per component over global rows `from..to` (one step's global batch, whichever rank drew them).
    #[must_use]
    pub fn rows_between(&self, seed: u64, from: u64, to: u64) -> Vec<usize> {
        let mut rows = vec![0; self.components.len()];
        for i in from..to {
            rows[self.component_of(seed, i)] += 1;
        }
        rows
    }

    /// How many rows of component `c` come before global row `i`.
    fn rank(&self, seed: u64, c: usize, i: u64) -> usize {
        if self.components.len() == 1 {
            return usize::try_from(i).unwrap_or(usize::MAX);
        }
        let mut cur = self
            .cursor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cur.0 > i {
            *cur = (0, vec![0; self.components.len()]);
        }
        while cur.0 < i {
            let k = self.component_of(seed, cur.0);
            cur.1[k] += 1;
            cur.0 += 1;
        }
        cur.1[c]
    }

    /// `batch` rows starting at global row `first`: inputs and targets (B, T).
    ///
    /// # Errors
    /// On a tensor failure.
    pub fn batch(&self, seed: u64, first: u64, batch: usize, device: &Device) -> Result<Batch> {
        let t = self.seq_len;
        let mut buf = Vec::with_capacity(t + 1);
        let mut x = Vec::with_capacity(batch * t);
        let mut y = Vec::with_capacity(batch * t);
        let mut rows = vec![0; self.components.len()];
        for r in 0..batch as u64 {
            let i = first + r;
            let c = self.component_of(seed, i);
            rows[c] += 1;
            let comp = &self.components[c];
            let mut rng = rand::rngs::StdRng::seed_from_u64(
                seed ^ i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            let w = match self.sampling {
                Sampling::Random => rng.random_range(0..comp.windows()),
                Sampling::Sequential => (self.rank(seed, c, i) * t / comp.stride) % comp.windows(),
            };
            buf.clear();
            comp.window(w, t, &mut buf);
            // SFT shards flag the positions outside assistant turns: inputs lose the flag, targets become
            // the ignore index
            x.extend(buf[..t].iter().map(|&id| strata_tokenize::split_flag(id).0));
            y.extend(
                buf[1..]
                    .iter()
                    .map(|&id| match strata_tokenize::split_flag(id) {
                        (id, true) => id,
                        (_, false) => strata_model::fused::IGNORE,
                    }),
            );
        }
        Ok(Batch {
            x: Tensor::from_vec(x, (batch, t), device).ctx("batch x")?,
            y: Tensor::from_vec(y, (batch, t), device).ctx("batch y")?,
            rows,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(dir: &std::path::Path, name: &str, ids: &[u32]) -> TokenShard {
        let p = dir.join(name);
        strata_tokenize::write_tokens(&p, ids, 1000).unwrap();
        TokenShard::open(&p).unwrap()
    }

    #[test]
    fn targets_are_inputs_shifted_and_windows_depend_on_the_row_alone() {
        let d = tempfile::tempdir().unwrap();
        let c = Component::new(
            "a",
            1.0,
            vec![shard(d.path(), "a", &(0..100).collect::<Vec<_>>())],
            8,
            None,
        )
        .unwrap();
        let m = Mixture::new(vec![c], 8, Sampling::Random).unwrap();
        let b = m.batch(1, 20, 3, &Device::Cpu).unwrap();
        let (x, y): (Vec<Vec<u32>>, Vec<Vec<u32>>) =
            (b.x.to_vec2().unwrap(), b.y.to_vec2().unwrap());
        for (xr, yr) in x.iter().zip(&y) {
            assert!(xr.iter().zip(yr).all(|(a, b)| b == &(a + 1)));
        }
        // rows 20..23 as one batch = rows 20, 21..23 as two
        let one = m
            .batch(1, 20, 1, &Device::Cpu)
            .unwrap()
            .x
            .to_vec2::<u32>()
            .unwrap();
        let two = m
            .batch(1, 21, 2, &Device::Cpu)
            .unwrap()
            .x
            .to_vec2::<u32>()
            .unwrap();
        assert_eq!(x, [one, two].concat());
        let other = m
            .batch(1, 23, 3, &Device::Cpu)
            .unwrap()
            .x
            .to_vec2::<u32>()
            .unwrap();
        assert_ne!(x, other);
    }

    #[test]
    fn windows_span_every_shard_and_never_cross_one() {
        let d = tempfile::tempdir().unwrap();
        // shard 0 holds 100..110, shard 1 holds 200..230: a window of 4 + 1 never mixes them
        let shards = vec![
            shard(d.path(), "s0", &(100..110).collect::<Vec<_>>()),
            shard(d.path(), "s1", &(200..230).collect::<Vec<_>>()),
        ];
        let c = Component::new("a", 1.0, shards, 4, None).unwrap();
        assert_eq!(c.windows(), 6 + 26);
        let m = Mixture::new(vec![c], 4, Sampling::Random).unwrap();
        let b = m.batch(3, 0, 400, &Device::Cpu).unwrap();
        let x: Vec<Vec<u32>> = b.x.to_vec2().unwrap();
        let y: Vec<Vec<u32>> = b.y.to_vec2().unwrap();
        let mut seen = [false; 2];
        for (xr, yr) in x.iter().zip(&y) {
            let hundreds = xr[0] / 100;
            assert!(
                xr.iter().chain(yr).all(|v| v / 100 == hundreds),
                "{xr:?} {yr:?}"
            );
            seen[(hundreds - 1) as usize] = true;
        }
        assert_eq!(seen, [true, true]);
    }

    #[test]
    fn component_shares_follow_the_weights() {
        let d = tempfile::tempdir().unwrap();
        let a = Component::new(
            "medical",
            0.8,
            vec![shard(d.path(), "a", &[1; 64])],
            8,
            None,
        )
        .unwrap();
        let b = Component::new(
            "general",
            0.2,
            vec![shard(d.path(), "b", &[2; 64])],
            8,
            None,
        )
        .unwrap();
        let m = Mixture::new(vec![a, b], 8, Sampling::Random).unwrap();
        // 1,000 steps of batch 4
        let mut rows = [0usize; 2];
        for step in 0..1000u64 {
            let batch = m.batch(7, step * 4, 4, &Device::Cpu).unwrap();
            let x: Vec<Vec<u32>> = batch.x.to_vec2().unwrap();
            for r in &x {
                rows[(r[0] - 1) as usize] += 1; // every token of a row names its component
            }
            assert_eq!(batch.rows.iter().sum::<usize>(), 4);
        }
        let share = rows[0] as f64 / 4000.0;
        assert!((share - 0.8).abs() < 0.02, "{share}");
        assert_eq!(m.rows_before(7, 4000), rows.to_vec());
        // a short run is already close: 100 rows
        let early = m.rows_before(7, 100);
        assert!((early[0] as f64 / 100.0 - 0.8).abs() <= 0.02, "{early:?}");
    }

    #[test]
    fn sequential_windows_read_each_component_in_order() {
        let d = tempfile::tempdir().unwrap();
        let a = Component::new(
            "a",
            0.5,
            vec![shard(d.path(), "a", &(0..40).collect::<Vec<_>>())],
            4,
            None,
        )
        .unwrap();
        let b = Component::new(
            "b",
            0.5,
            vec![shard(d.path(), "b", &(100..140).collect::<Vec<_>>())],
            4,
            None,
        )
        .unwrap();
        let m = Mixture::new(vec![a, b], 4, Sampling::Sequential).unwrap();
        let x: Vec<Vec<u32>> = m.batch(0, 0, 8, &Device::Cpu).unwrap().x.to_vec2().unwrap();
        // each component's rows start at 0, 4, 8, … of its own stream, whatever the interleaving
        let starts = |base: u32| -> Vec<u32> {
            x.iter()
                .filter(|r| r[0] / 100 == base / 100)
                .map(|r| r[0] - base)
                .collect()
        };
        let (sa, sb) = (starts(0), starts(100));
        assert_eq!(sa.len() + sb.len(), 8);
        assert!(
            sa.iter().enumerate().all(|(k, &s)| s as usize == 4 * k),
            "{sa:?}"
        );
        assert!(
            sb.iter().enumerate().all(|(k, &s)| s as usize == 4 * k),
            "{sb:?}"
        );
        // the same rows asked for again, after later ones: the same windows
        let _ = m.batch(0, 100, 4, &Device::Cpu).unwrap();
        let again: Vec<Vec<u32>> = m.batch(0, 0, 8, &Device::Cpu).unwrap().x.to_vec2().unwrap();
        assert_eq!(x, again);
    }

    /// SFT shards: flagged positions are inputs without the flag and ignored targets; with one example per
    /// row, every window is exactly one row, and rows that do not match seq_len are refused.
    #[test]
    fn sft_rows_are_whole_windows_and_flagged_targets_are_ignored() {
        let d = tempfile::tempdir().unwrap();
        let f = strata_tokenize::NO_LOSS;
        // two rows of 5 tokens: [prompt prompt answer answer pad]
        let ids = [f + 7, f + 8, 30, 31, f, f + 9, f + 10, 40, 41, f];
        // 4 bytes per id, as SFT shards are written
        let wide = |name: &str| {
            let p = d.path().join(name);
            strata_tokenize::write_tokens(&p, &ids, 1 << 20).unwrap();
            TokenShard::open(&p).unwrap()
        };
        let c = Component::new("sft", 1.0, vec![wide("s")], 4, Some(5)).unwrap();
        assert_eq!(c.windows(), 2);
        let m = Mixture::new(vec![c], 4, Sampling::Random).unwrap();
        let ig = strata_model::fused::IGNORE;
        for first in 0..20 {
            let b = m.batch(3, first, 1, &Device::Cpu).unwrap();
            let x: Vec<u32> = b.x.flatten_all().unwrap().to_vec1().unwrap();
            let y: Vec<u32> = b.y.flatten_all().unwrap().to_vec1().unwrap();
            assert!(
                (x == [7, 8, 30, 31] && y == [ig, 30, 31, ig])
                    || (x == [9, 10, 40, 41] && y == [ig, 40, 41, ig]),
                "{x:?} {y:?}"
            );
        }
        let e = Component::new("sft", 1.0, vec![wide("t")], 8, Some(5))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("one example per row of 5 tokens") && e.contains("seq_len 4"),
            "{e}"
        );
    }

    #[test]
    fn bad_weights_and_short_data_are_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        let e = Component::new(
            "general",
            0.0,
            vec![shard(d.path(), "a", &[1; 64])],
            8,
            None,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("\"general\"") && e.contains("> 0"), "{e}");
        let e = Component::new("tiny", 1.0, vec![shard(d.path(), "b", &[1; 8])], 8, None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("\"tiny\"") && e.contains("seq_len + 1 = 9"),
            "{e}"
        );
    }
}
