//! Helpers shared by the unit tests of this crate.

use candle_core::{Device, Tensor};

/// Uniform values in [−1, 1) of `shape`, seeded.
pub fn randn(shape: &[usize], seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("tensor")
}

/// The largest absolute difference of two tensors of the same size.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a: Vec<f32> = a.flatten_all().and_then(|t| t.to_vec1()).expect("values");
    let b: Vec<f32> = b.flatten_all().and_then(|t| t.to_vec1()).expect("values");
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A two-layer grouped-query model small enough for any test: d 32, 4 heads over 2 kv heads, vocab 50.
pub fn tiny() -> crate::LlamaConfig {
    crate::ModelSpec {
        hidden_size: 32,
        intermediate_size: 64,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        context: 16,
        rope_theta: 1e4,
        tie_word_embeddings: false,
    }
    .to_config(50, 0)
    .expect("config")
}

/// A model of `cfg` with f32 weights on the CPU, freshly initialised, and the variables that hold them.
pub fn new_model(cfg: &crate::LlamaConfig) -> (candle_nn::VarMap, crate::Llama) {
    let vm = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&vm, candle_core::DType::F32, &Device::Cpu);
    let model = crate::Llama::load(&vb, cfg).expect("model");
    (vm, model)
}

/// The tensors of a `VarMap` by name, detached (constants sharing the variables' storage).
pub fn tensors_of(vm: &candle_nn::VarMap) -> std::collections::HashMap<String, Tensor> {
    vm.data()
        .lock()
        .expect("varmap lock")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect()
}

/// The model's logits for `ids`, flattened.
pub fn logits(model: &crate::Llama, ids: &Tensor) -> Vec<f32> {
    let logits = model.forward(ids).expect("forward");
    logits
        .flatten_all()
        .and_then(|t| t.to_vec1())
        .expect("logits")
}
