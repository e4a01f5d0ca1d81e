//! `strata bench decode`: prompt-processing and decode speed of a model, measured the way llama-bench
//! measures (pp = a prompt of N random tokens in one forward, tg = N tokens generated one at a time from an
//! empty context), plus decode speed as a fraction of the memory-bandwidth limit. bench/decode runs it
//! beside llama.cpp and prints the ratio.

use std::process::ExitCode;
use std::time::Instant;

use strata_engine::{CpuCache, CpuModel};
use strata_store::{Kind, Store};

use crate::cli::BenchDecodeArgs;

/// Median of `reps` timings of `f`, in seconds.
fn median_secs(reps: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t0 = Instant::now();
        f()?;
        t.push(t0.elapsed().as_secs_f64());
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

/// Copy bandwidth in bytes/s with `threads` threads each copying its share (as decode reads its weights
/// with all of them): the best of a few 256 MiB copies, read + write counted.
fn copy_bandwidth(threads: usize) -> f64 {
    let n = 256 << 20;
    let src = vec![1u8; n];
    let mut dst = vec![0u8; n];
    let part = n.div_ceil(threads.max(1));
    let mut best = f64::MAX;
    for _ in 0..4 {
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for (d, c) in dst.chunks_mut(part).zip(src.chunks(part)) {
                s.spawn(move || d.copy_from_slice(c));
            }
        });
        std::hint::black_box(&dst);
        best = best.min(t0.elapsed().as_secs_f64());
    }
    2.0 * n as f64 / best
}

pub fn run(store: &Store, a: &BenchDecodeArgs) -> anyhow::Result<ExitCode> {
    let want = strata_engine::parse_weight_type(&a.quant)?;
    let (label, path) = match (&a.model, &a.gguf) {
        (_, Some(file)) => (file.display().to_string(), file.clone()),
        (Some(name), None) => (name.clone(), store.require(Kind::Model, name)?),
        (None, None) => anyhow::bail!("give --model NAME or --gguf FILE"),
    };
    let model = CpuModel::load(&path, want)?;
    let cfg = model.config().clone();
    let vocab = u32::try_from(cfg.vocab_size).unwrap_or(u32::MAX);
    // deterministic "random" prompt ids, as llama-bench uses random tokens
    let ids = |n: usize| -> Vec<u32> {
        (0..n as u64)
            .map(|i| u32::try_from(i.wrapping_mul(2_654_435_761) % u64::from(vocab)).unwrap_or(0))
            .collect()
    };
    let mut rows = Vec::new();
    for &pp in &a.prompt_tokens {
        let prompt = ids(pp);
        let mut cache = CpuCache::new(&model, pp);
        let secs = median_secs(a.reps, || {
            cache.reset();
            model.forward(&prompt, &mut cache, false)?;
            Ok(())
        })?;
        rows.push(serde_json::json!({"test": format!("pp{pp}"), "tokens_per_s": pp as f64 / secs}));
    }
    let tg = a.gen_tokens;
    let mut cache = CpuCache::new(&model, tg + 1);
    let secs = median_secs(a.reps, || {
        cache.reset();
        let mut next = 1u32;
        for _ in 0..tg {
            let logits = model.forward(&[next], &mut cache, false)?;
            next = argmax(&logits);
        }
        Ok(())
    })?;
    let tg_rate = tg as f64 / secs;
    for &b in &a.batch {
        let prompts: Vec<Vec<u32>> = (0..b).map(|k| ids(64 + k).split_off(k)).collect();
        let mut work = strata_engine::BatchWork::default();
        let mut caches: Vec<CpuCache> = (0..b).map(|_| CpuCache::new(&model, 64 + tg)).collect();
        let mut times = Vec::with_capacity(a.reps);
        for _ in 0..a.reps.max(1) {
            // the prompts are read first, untimed
            for (c, p) in caches.iter_mut().zip(&prompts) {
                c.reset();
                model.forward(p, c, false)?;
            }
            let mut next = vec![1u32; b];
            let t0 = std::time::Instant::now();
            for _ in 0..tg {
                let mut batch: Vec<strata_engine::Seq<'_>> = caches
                    .iter_mut()
                    .zip(&next)
                    .map(|(c, id)| strata_engine::Seq::new(std::slice::from_ref(id), c))
                    .collect();
                let logits = model.forward_batch(&mut batch, &mut work)?;
                drop(batch);
                for (n, l) in next.iter_mut().zip(logits.chunks_exact(cfg.vocab_size)) {
                    *n = argmax(l);
                }
            }
            times.push(t0.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let secs = times[times.len() / 2];
        rows.push(serde_json::json!({"test": format!("tg{tg}x{b}"), "tokens_per_s": (tg * b) as f64 / secs}));
    }
    // Bytes read per decoded token: every projection and the output head (the embedding is a lookup).
    let weight_bytes = model.weight_bytes_per_token() as f64;
    // the engine's peak resident memory (model, caches, loading), before the bandwidth test's buffers
    let peak_rss_mib = strata_train::peak_rss_bytes() as f64 / 1_048_576.0;
    let bandwidth = copy_bandwidth(model.threads());
    rows.push(serde_json::json!({
        "test": format!("tg{tg}"),
        "tokens_per_s": tg_rate,
        "weight_bytes": weight_bytes,
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "fraction_of_bandwidth_limit": tg_rate * weight_bytes / bandwidth,
    }));
    println!(
        "{}",
        serde_json::json!({
            "model": label,
            "quant": a.quant,
            "weight_types": model.weight_types(),
            "isa": format!("{:?}", model.isa()),
            "threads": model.threads(),
            "peak_rss_mib": peak_rss_mib,
            "results": rows,
        })
    );
    Ok(ExitCode::SUCCESS)
}

fn argmax(v: &[f32]) -> u32 {
    let i = v
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i);
    u32::try_from(i).unwrap_or(0)
}

/// `strata bench logits`: the training/eval forward (f32, adapters merged) on `ids`, or with `--engine` the
/// inference engine's (f32), saved for comparison.
pub fn logits(store: &Store, a: &crate::cli::BenchLogitsArgs) -> anyhow::Result<ExitCode> {
    let dev = candle_core::Device::Cpu;
    let logits = if a.engine {
        let dir = store.require(Kind::Model, &a.model)?;
        let m = strata_engine::CpuModel::load(&dir, Some(strata_engine::WeightType::F32))?;
        let mut cache = strata_engine::CpuCache::new(&m, a.ids.len());
        let flat = m.forward(&a.ids, &mut cache, true)?;
        candle_core::Tensor::from_vec(flat, (a.ids.len(), m.config().vocab_size), &dev)?
    } else {
        let (model, _) = strata_train::parent::load_merged(store, &a.model, &dev)?;
        let ids = candle_core::Tensor::new(a.ids.as_slice(), &dev)?.unsqueeze(0)?;
        model.forward(&ids)?.squeeze(0)?
    };
    let map = std::collections::HashMap::from([("logits".to_string(), logits)]);
    strata_model::save_safetensors(&map, &a.out, &[])?;
    println!(
        "logits of {} at {} positions → {}",
        a.model,
        a.ids.len(),
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
