//! `strata bench decode`: prompt-processing and decode speed of a model, measured the way llama-bench
//! measures (pp = a prompt of N random tokens in one forward, tg = N tokens generated one at a time from an
//! empty context), plus decode speed as a fraction of the memory-bandwidth limit. bench/decode runs it
//! beside llama.cpp and prints the ratio.

use std::process::ExitCode;
use std::time::Instant;

use candle_core::{Device, Tensor};
use strata_model::KvCache;
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

/// Copy bandwidth in bytes/s: the best of a few 256 MiB copies (read + write counted).
fn copy_bandwidth() -> f64 {
    let n = 256 << 20;
    let src = vec![1u8; n];
    let mut dst = vec![0u8; n];
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t0 = Instant::now();
        dst.copy_from_slice(&src);
        std::hint::black_box(&dst);
        best = best.min(t0.elapsed().as_secs_f64());
    }
    2.0 * n as f64 / best
}

/// Storage per weight of a GGML type (block bytes / block size).
fn bytes_per_weight(q: Option<strata_model::GgmlDType>) -> f64 {
    use strata_model::GgmlDType as G;
    match q {
        None | Some(G::F32) => 4.0,
        Some(G::F16 | G::BF16) => 2.0,
        Some(G::Q8_0) => 34.0 / 32.0,
        Some(G::Q4_0 | G::Q4K) => 0.5625, // 18 bytes per 32, 144 per 256
        Some(G::Q4_1) => 20.0 / 32.0,
        Some(G::Q5K) => 176.0 / 256.0,
        Some(G::Q6K) => 210.0 / 256.0,
        Some(_) => 1.0,
    }
}

pub fn run(store: &Store, a: &BenchDecodeArgs) -> anyhow::Result<ExitCode> {
    let dir = store.require(Kind::Model, &a.model)?;
    let mut model = strata_model::load_model(&dir, &Device::Cpu)?;
    let quant = strata_model::parse_quant(&a.quant)?;
    if let Some(q) = quant {
        model.quantize(q)?;
    }
    let cfg = model.config().clone();
    let device = Device::Cpu;
    let vocab = u32::try_from(cfg.vocab_size).unwrap_or(u32::MAX);
    // deterministic "random" prompt ids, as llama-bench uses random tokens
    let ids = |n: usize| -> Vec<u32> {
        (0..n as u64)
            .map(|i| u32::try_from(i.wrapping_mul(2_654_435_761) % u64::from(vocab)).unwrap_or(0))
            .collect()
    };
    let mut rows = Vec::new();
    for &pp in &a.prompt_tokens {
        let prompt = Tensor::new(ids(pp).as_slice(), &device)?.unsqueeze(0)?;
        let secs = median_secs(a.reps, || {
            let mut cache = KvCache::new(&cfg, pp, &device)?;
            model.forward_cached(&prompt, &mut cache)?;
            Ok(())
        })?;
        rows.push(serde_json::json!({"test": format!("pp{pp}"), "tokens_per_s": pp as f64 / secs}));
    }
    let tg = a.gen_tokens;
    let secs = median_secs(a.reps, || {
        let mut cache = KvCache::new(&cfg, tg + 1, &device)?;
        let mut next = 1u32;
        for _ in 0..tg {
            let logits =
                model.forward_cached(&Tensor::new(&[next], &device)?.unsqueeze(0)?, &mut cache)?;
            next = logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()?;
        }
        Ok(())
    })?;
    let tg_rate = tg as f64 / secs;
    // Bytes read per decoded token: every projection and the output head (the embedding is a lookup).
    let matrices = cfg.num_parameters()
        - cfg.vocab_size * cfg.hidden_size * usize::from(!cfg.tie_word_embeddings);
    let weight_bytes = matrices as f64 * bytes_per_weight(quant);
    let bandwidth = copy_bandwidth();
    rows.push(serde_json::json!({
        "test": format!("tg{tg}"),
        "tokens_per_s": tg_rate,
        "weight_bytes": weight_bytes,
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "fraction_of_bandwidth_limit": tg_rate * weight_bytes / bandwidth,
    }));
    println!(
        "{}",
        serde_json::json!({"model": a.model, "quant": a.quant, "threads": std::env::var("RAYON_NUM_THREADS").ok(), "results": rows})
    );
    Ok(ExitCode::SUCCESS)
}
