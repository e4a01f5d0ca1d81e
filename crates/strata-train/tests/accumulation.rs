//! Gradient accumulation: K micro-batches equal one batch K times larger — the same loss, gradients and
//! AdamW update — also when the micro-batches hold different numbers of target tokens (the loss is divided
//! by the targets of all micro-batches, not averaged per micro-batch: the bug transformers fixed in 2024).

#![allow(clippy::unwrap_used, clippy::cast_precision_loss)]

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use strata_model::fused::IGNORE;
use strata_model::{Llama, ModelSpec};
use strata_train::{accumulate, AdamW, Grads};

fn model(seed: u64) -> (Llama, HashMap<String, Var>) {
    let cfg = ModelSpec {
        hidden_size: 32,
        intermediate_size: 64,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        context: 16,
        rope_theta: 1e4,
        tie_word_embeddings: false,
    }
    .to_config(61, 0)
    .unwrap();
    let vm = VarMap::new();
    let m = Llama::load(
        &VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu),
        &cfg,
    )
    .unwrap();
    let vars = vm.data().lock().unwrap().clone();
    strata_model::seeded_init(&vars, &cfg, seed).unwrap();
    (m, vars)
}

/// 16 rows of 8 tokens; row r ignores its first r % 6 targets, so micro-batches of 4 rows (32 targets
/// each) drop 0+1+2+3 = 6, 4+5+0+1 = 10, 2+3+4+5 = 14 and 0+1+2+3 = 6: 26, 22, 18 and 26 targets.
fn data() -> (Tensor, Tensor) {
    let x: Vec<u32> = (0..16 * 8).map(|i| (i * 7 + 3) % 61).collect();
    let mut y: Vec<u32> = (0..16 * 8).map(|i| (i * 11 + 5) % 61).collect();
    for r in 0..16 {
        for c in 0..r % 6 {
            y[r * 8 + c] = IGNORE;
        }
    }
    (
        Tensor::from_vec(x, (16, 8), &Device::Cpu).unwrap(),
        Tensor::from_vec(y, (16, 8), &Device::Cpu).unwrap(),
    )
}

fn flat(g: &Grads) -> Vec<f32> {
    g.0.iter()
        .flatten()
        .flat_map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect()
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let n: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (d / n).sqrt()
}

fn weights(vars: &HashMap<String, Var>) -> Vec<f32> {
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    names
        .iter()
        .flat_map(|n| {
            vars[*n]
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect()
}

#[test]
fn four_micro_batches_of_four_equal_one_batch_of_sixteen() {
    let (x, y) = data();
    let micro: Vec<(Tensor, Tensor)> = (0..4)
        .map(|m| {
            (
                x.narrow(0, m * 4, 4).unwrap(),
                y.narrow(0, m * 4, 4).unwrap(),
            )
        })
        .collect();
    let counts: Vec<usize> = micro
        .iter()
        .map(|(_, y)| {
            y.flatten_all()
                .unwrap()
                .to_vec1::<u32>()
                .unwrap()
                .iter()
                .filter(|&&t| t != IGNORE)
                .count()
        })
        .collect();
    assert_eq!(counts, vec![26, 22, 18, 26]);
    let (m1, v1) = model(5);
    let (m2, v2) = model(5);
    let mut o1 = AdamW::new(&v1, 0.9, 0.95, 0.1).unwrap();
    let mut o2 = AdamW::new(&v2, 0.9, 0.95, 0.1).unwrap();
    let (l_acc, g_acc) = accumulate(&m1, &o1, &micro).unwrap();
    let (l_one, g_one) = accumulate(&m2, &o2, &[(x, y)]).unwrap();
    assert!(
        (f64::from(l_acc) - f64::from(l_one)).abs() <= 1e-6 * f64::from(l_one),
        "{l_acc} vs {l_one}"
    );
    let (ga, go) = (flat(&g_acc), flat(&g_one));
    assert!(
        rel(&ga, &go) <= 1e-6,
        "gradients differ by {}",
        rel(&ga, &go)
    );
    let before = weights(&v1);
    // a large step, so the update stands well above the f32 spacing of the weights it is read back from
    o1.step(&g_acc, 0.1, 1.0).unwrap();
    o2.step(&g_one, 0.1, 1.0).unwrap();
    let (w1, w2) = (weights(&v1), weights(&v2));
    let u1: Vec<f32> = w1.iter().zip(&before).map(|(a, b)| a - b).collect();
    let u2: Vec<f32> = w2.iter().zip(&before).map(|(a, b)| a - b).collect();
    // AdamW's first step divides each gradient by its own magnitude, so entries whose gradient is ~1e-8
    // (sums that nearly cancel, where f32 summation order moves the third digit) move the update by more
    // than the gradients differ: measured 2.1e-6 here against 1.2e-7 for the gradients.
    assert!(rel(&u1, &u2) <= 1e-5, "updates differ by {}", rel(&u1, &u2));

    // the per-micro-batch mean (each micro loss averaged over its own targets, then averaged over K) is
    // what this guards against: with unequal counts it is measurably different
    let (m3, v3) = model(5);
    let o3 = AdamW::new(&v3, 0.9, 0.95, 0.1).unwrap();
    let mut wrong: Option<Grads> = None;
    for mb in &micro {
        let (_, g) = accumulate(&m3, &o3, std::slice::from_ref(mb)).unwrap();
        match &mut wrong {
            None => wrong = Some(g),
            Some(w) => w.add(g).unwrap(),
        }
    }
    let gw: Vec<f32> = flat(&wrong.unwrap()).iter().map(|g| g / 4.0).collect();
    assert!(rel(&gw, &go) > 1e-3, "{}", rel(&gw, &go));
}

#[test]
fn no_counted_target_is_an_error() {
    let (m, v) = model(1);
    let o = AdamW::new(&v, 0.9, 0.95, 0.1).unwrap();
    let x = Tensor::new(&[[1u32, 2]], &Device::Cpu).unwrap();
    let y = Tensor::new(&[[IGNORE, IGNORE]], &Device::Cpu).unwrap();
    let e = accumulate(&m, &o, &[(x, y)]).err().unwrap().to_string();
    assert!(e.contains("no target token counts"), "{e}");
}
