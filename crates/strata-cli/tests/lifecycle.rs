//! The whole lifecycle through the real binary: `strata demo --quick` (offline, on the repository's
//! fixtures), then lineage, the Hugging Face layout checked by Python, and the HTTP API on the result.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{engine_logits, logits_of, python_check, quick_demo, run, strata};
use http_body_util::BodyExt;
use tower::ServiceExt;

#[test]
fn demo_quick_prints_table_and_each_finetune_gains_on_its_domain() {
    let (dir, r) = quick_demo();
    let out = &r.stdout;
    assert!(
        out.contains("ppl general")
            && out.contains("ppl medical")
            && out.contains("ppl ultrasound"),
        "{out}"
    );
    // the table has a row per model with three numbers
    for model in ["base", "medical", "ultrasound"] {
        let row = out
            .lines()
            .find(|l| l.starts_with(&format!("{model} ")))
            .unwrap_or_else(|| panic!("no row for {model}:\n{out}"));
        let nums: Vec<f64> = row
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap())
            .collect();
        assert_eq!(nums.len(), 3, "{row}");
        assert!(nums.iter().all(|p| p.is_finite() && *p > 1.0), "{row}");
    }
    assert!(
        out.contains("medical vs base on medical:")
            && out.contains("ultrasound vs medical on ultrasound:"),
        "{out}"
    );
    assert!(
        !out.contains("NOT better"),
        "a fine-tuned model did not improve on its own domain:\n{out}"
    );
    assert!(
        out.contains("[base] The patient") && out.contains("[ultrasound] The patient"),
        "{out}"
    );
    // the image part: simulated scans through the image stages, a contact sheet, de-identified DICOM
    let sheet = out
        .lines()
        .find_map(|l| l.strip_prefix("contact sheet: "))
        .unwrap_or_else(|| panic!("no contact sheet line:\n{out}"));
    let sheet = common::repo_root().join(sheet);
    assert!(
        strata_image::pixels::Frame::read_png(&sheet).is_ok(),
        "{}",
        sheet.display()
    );
    assert!(
        out.contains("ultrasound DICOM: 4 cine loops with invented patients → 4 de-identified"),
        "{out}"
    );
    // the vision-language step: the chain's last model reading the scans through a ViT trained from scratch
    assert!(
        out.contains("vision-language model us-vision: ultrasound reading the scans"),
        "{out}"
    );
    let truth = out.lines().find(|l| l.starts_with("  truth: ")).unwrap();
    assert!(truth.contains("FINDINGS:"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("  model: ")), "{out}");
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("models/us-vision/config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["architectures"][0], "LlavaForConditionalGeneration");
    assert_eq!(cfg["vision_config"]["model_type"], "dinov2");
}

#[test]
fn demo_runs_from_any_directory_on_its_built_in_fixtures() {
    // an installed binary in an empty folder: no scripts/, no fixtures/ beside it
    let dir = common::fresh_dir(&format!("demo-elsewhere-{}", std::process::id()));
    let cwd = dir.join("empty");
    std::fs::create_dir_all(&cwd).unwrap();
    let r = run(strata(&dir.join("store"))
        .current_dir(&cwd)
        .args(["demo", "--quick"]));
    assert!(r.ok, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("ppl ultrasound"), "{}", r.stdout);
    // the fixtures it wrote are the repository's, byte for byte
    for path in [
        "general/story-0.txt",
        "medical/notes.jsonl",
        "ultrasound/reports.jsonl",
    ] {
        let built_in = std::fs::read(dir.join("store/demo-fixtures").join(path)).unwrap();
        let repo = std::fs::read(common::repo_root().join("fixtures/quick").join(path)).unwrap();
        assert!(built_in == repo, "{path} differs");
    }
}

#[test]
fn second_demo_run_skips_every_step() {
    let (dir, _) = quick_demo();
    let r = run(strata(dir).args(["demo", "--quick"]));
    assert!(r.ok, "{}", r.stderr);
    let steps: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("up to date") || l.contains(" done "))
        .collect();
    assert_eq!(steps.len(), 13, "{}", r.stderr);
    assert!(
        steps.iter().all(|l| l.contains("up to date")),
        "{}",
        r.stderr
    );
}

#[test]
fn lineage_walks_from_ultrasound_back_to_raw_files_with_hashes() {
    let (dir, _) = quick_demo();
    let r = run(strata(dir).args(["lineage", "ultrasound"]));
    assert!(r.ok, "{}", r.stderr);
    let out = &r.stdout;
    // The chain reads top-down: ultrasound → medical → base → tokenizer → datasets → raw files.
    let order = [
        "model ultrasound",
        "── model medical",
        "── model base",
        "── tokenizer bpe",
        "── dataset general",
        "── dataset general-raw",
        "── raw file fixtures/quick/general/sentences.jsonl",
    ];
    let mut at = 0;
    for needle in order {
        let pos = out[at..]
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} missing (in order) from:\n{out}"));
        at += pos;
    }
    // an artifact reached twice is printed once in full
    assert_eq!(
        out.matches("raw file fixtures/quick/general/sentences.jsonl")
            .count(),
        1,
        "{out}"
    );
    assert!(
        out.contains("tokens ultrasound-tokens") && out.contains("dataset ultrasound"),
        "{out}"
    );
    assert!(out.lines().all(|l| l.contains("sha256:")), "{out}");
    let r = run(strata(dir).args(["lineage", "nope"]));
    assert!(
        !r.ok && r.stderr.contains("no artifact named \"nope\""),
        "{}",
        r.stderr
    );
}

#[test]
fn every_model_is_a_hugging_face_folder_checked_by_python() {
    let (dir, _) = quick_demo();
    let text = "The patient walked to the river. 超声 12.5 cm!";
    for model in ["base", "medical", "ultrasound"] {
        let mdir = dir.join("models").join(model);
        for f in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "generation_config.json",
            "manifest.json",
        ] {
            assert!(mdir.join(f).is_file(), "{model}: missing {f}");
        }
        // what Strata computes: ids and the logits of every position
        let tk = strata_tokenize::load_tokenizer(&mdir.join("tokenizer.json")).unwrap();
        let ids: Vec<u32> = tk.encode(text, false).unwrap().get_ids().to_vec();
        let logits = logits_of(&mdir, &ids);
        let expect = dir.join(format!("expect-{model}.json"));
        std::fs::write(
            &expect,
            serde_json::json!({"text": text, "ids": ids, "logits": logits}).to_string(),
        )
        .unwrap();
        let stdout = python_check("check_hf_model.py", &[mdir.as_os_str(), expect.as_os_str()]);
        assert!(stdout.starts_with("OK:"), "{stdout}");
    }
}

async fn call(app: axum::Router, body: &str) -> (StatusCode, String) {
    let req = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app.oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// Concurrent first requests for one model load it once (check and insert under one slot's lock); an
/// unknown name fails each time and leaves nothing behind.
#[test]
fn concurrent_first_requests_load_a_model_once() {
    let (dir, _) = quick_demo();
    let state = Arc::new(strata_serve::AppState::new(
        strata_store::Store::open(dir).unwrap(),
        None,
    ));
    let barrier = Arc::new(std::sync::Barrier::new(4));
    let engines: Vec<_> = (0..4)
        .map(|_| {
            let (state, barrier) = (state.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                state.engine("base").unwrap()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    assert_eq!(state.loads(), 1);
    assert!(engines.iter().all(|e| Arc::ptr_eq(e, &engines[0])));
    for _ in 0..2 {
        assert!(state.engine("no-such-model").is_err());
    }
    assert_eq!(state.loads(), 1);
    assert!(Arc::ptr_eq(&state.engine("base").unwrap(), &engines[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completions_plain_streaming_and_errors() {
    let (dir, _) = quick_demo();
    let store = strata_store::Store::open(dir).unwrap();
    let app = strata_serve::app(Arc::new(strata_serve::AppState::new(store, None)));

    // plain, with the explicit nulls the official client sends; seeded, so two calls agree
    let body = r#"{"model": "ultrasound", "messages": [{"role": "user", "content": "Liver?"}], "max_tokens": 8, "temperature": 0.7, "seed": 3, "function_call": null, "stop": null, "top_p": null}"#;
    let (status, text) = call(app.clone(), body).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let usage = &v["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
    assert!(usage["completion_tokens"].as_u64().unwrap() <= 8);
    let (_, again) = call(app.clone(), body).await;
    let v2: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        v2["choices"][0]["message"]["content"]
    );

    // streaming: SSE chunks whose deltas concatenate to the same text, then [DONE]
    let (status, sse) = call(
        app.clone(),
        &body.replace("\"max_tokens\": 8", "\"max_tokens\": 8, \"stream\": true"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let events: Vec<&str> = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{sse}");
    let mut streamed = String::new();
    for e in &events[..events.len() - 1] {
        let c: serde_json::Value = serde_json::from_str(e).unwrap();
        assert_eq!(c["object"], "chat.completion.chunk");
        streamed.push_str(c["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
    }
    assert_eq!(
        streamed,
        v["choices"][0]["message"]["content"].as_str().unwrap()
    );
    let last: serde_json::Value = serde_json::from_str(events[events.len() - 2]).unwrap();
    assert!(last["choices"][0]["finish_reason"].is_string(), "{last}");

    // errors are OpenAI-shaped JSON
    let (status, text) = call(app.clone(), "{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let e: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(e["error"]["type"], "invalid_request_error");
    let (status, text) = call(
        app.clone(),
        r#"{"model": "radiology", "messages": [{"role": "user", "content": "x"}]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{text}");
    let e: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no model named \"radiology\""),
        "{text}"
    );
    assert_eq!(e["error"]["param"], "model");
    let (status, _) = call(app.clone(), r#"{"model": "base", "messages": []}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let resp = app
        .oneshot(Request::get("/v1/models").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let models: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"base") && ids.contains(&"ultrasound"),
        "{ids:?}"
    );
}

#[test]
fn generate_prints_a_seeded_completion() {
    let (dir, _) = quick_demo();
    let args = [
        "generate",
        "--model",
        "medical",
        "--prompt",
        "The patient",
        "--max-tokens",
        "12",
        "--seed",
        "5",
    ];
    let a = run(strata(dir).args(args));
    let b = run(strata(dir).args(args));
    assert!(a.ok, "{}", a.stderr);
    assert!(
        a.stdout.starts_with("The patient") && a.stdout.len() > "The patient".len(),
        "{}",
        a.stdout
    );
    assert_eq!(a.stdout, b.stdout);
}

fn tensors_of(dir: &std::path::Path) -> std::collections::HashMap<String, Vec<u32>> {
    // (an imported GGUF's weights are its file's, read as training reads them)
    let t = strata_model::read_weights(dir, &candle_core::Device::Cpu).unwrap();
    t.into_iter()
        .map(|(k, v)| {
            (
                k,
                v.flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn hf_to_gguf_to_hf_round_trip_is_bit_identical() {
    let (dir, _) = quick_demo();
    let gguf = dir.join("ultrasound-f32.gguf");
    let r = run(strata(dir)
        .args(["export", "--model", "ultrasound", "--gguf"])
        .arg(&gguf));
    assert!(r.ok, "{}", r.stderr);
    let r = run(strata(dir)
        .arg("import")
        .arg(&gguf)
        .args(["--name", "ultrasound-rt"]));
    assert!(r.ok, "{}", r.stderr);
    let (a_dir, b_dir) = (
        dir.join("models/ultrasound"),
        dir.join("models/ultrasound-rt"),
    );
    // the import writes no f32 copy: the folder holds the GGUF, its config and tokenizer
    assert!(!b_dir.join("model.safetensors").exists());
    assert!(b_dir.join("model.gguf").is_file());
    // unless asked: --safetensors writes them tensor by tensor, the same values
    let r = run(strata(dir).arg("import").arg(&gguf).args([
        "--name",
        "ultrasound-st",
        "--safetensors",
        "f32",
    ]));
    assert!(r.ok, "{}", r.stderr);
    let (st, _) = strata_model::read_safetensors(
        &dir.join("models/ultrasound-st/model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let a = tensors_of(&a_dir);
    assert_eq!(st.len(), a.len());
    for (name, t) in &st {
        let bits: Vec<u32> = t
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect();
        assert!(
            a.get(name) == Some(&bits),
            "{name} differs in the safetensors"
        );
    }
    let r = run(strata(dir).arg("import").arg(&gguf).args([
        "--name",
        "ultrasound-x",
        "--safetensors",
        "int8",
    ]));
    assert!(
        !r.ok && r.stderr.contains("--safetensors \"int8\""),
        "{}",
        r.stderr
    );
    let b = tensors_of(&b_dir);
    assert_eq!(a.len(), b.len());
    for (name, bits) in &a {
        assert!(
            b.get(name) == Some(bits),
            "{name} changed in the round trip"
        );
    }
    // the rebuilt tokenizer encodes like the original, special tokens included
    let ta = strata_tokenize::load_tokenizer(&a_dir.join("tokenizer.json")).unwrap();
    let tb = strata_tokenize::load_tokenizer(&b_dir.join("tokenizer.json")).unwrap();
    let text = "<|im_start|>user\nThe liver measures 14.2 cm.<|im_end|>\n 超声 😀  two  spaces";
    let ids = ta.encode(text, false).unwrap().get_ids().to_vec();
    assert_eq!(ids, tb.encode(text, false).unwrap().get_ids());
    assert_eq!(tb.decode(&ids, false).unwrap(), text);
    assert_eq!(logits_of(&a_dir, &ids), logits_of(&b_dir, &ids));
    let ca: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a_dir.join("config.json")).unwrap()).unwrap();
    let cb: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b_dir.join("config.json")).unwrap()).unwrap();
    for key in [
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "max_position_embeddings",
        "rope_theta",
        "eos_token_id",
    ] {
        assert_eq!(ca[key], cb[key], "{key}");
    }
}

#[test]
fn q8_0_export_is_read_by_the_gguf_package_with_matching_logits() {
    // The exported file checked by an independent reader: the `gguf` package dequantises it and its numpy
    // forward must match what Strata computes after importing the same file.
    let (dir, _) = quick_demo();
    let gguf = dir.join("medical-q8.gguf");
    let r = run(strata(dir)
        .args(["export", "--model", "medical", "--type", "q8_0", "--gguf"])
        .arg(&gguf));
    assert!(r.ok, "{}", r.stderr);
    let r = run(strata(dir)
        .arg("import")
        .arg(&gguf)
        .args(["--name", "medical-q8"]));
    assert!(
        r.ok && r.stdout.contains("Q8_0"),
        "{}{}",
        r.stdout,
        r.stderr
    );
    let mdir = dir.join("models/medical-q8");
    let tk = strata_tokenize::load_tokenizer(&mdir.join("tokenizer.json")).unwrap();
    let ids = tk
        .encode("The patient was reviewed in clinic.", false)
        .unwrap()
        .get_ids()
        .to_vec();
    let expect = dir.join("expect-medical-q8.json");
    std::fs::write(
        &expect,
        serde_json::json!({"ids": ids, "logits": logits_of(&mdir, &ids)}).to_string(),
    )
    .unwrap();
    python_check("gguf_reference.py", &[gguf.as_os_str(), expect.as_os_str()]);
    // and Q8_0 stays close to the f32 original
    let f32_logits = logits_of(&dir.join("models/medical"), &ids);
    let q8_logits = logits_of(&mdir, &ids);
    let max = f32_logits
        .iter()
        .flatten()
        .fold(0f32, |m, x| m.max(x.abs()));
    let err = f32_logits
        .iter()
        .flatten()
        .zip(q8_logits.iter().flatten())
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err / max < 0.05, "Q8_0 relative error {}", err / max);
}

/// A random model of `config` (biases random too), saved as an HF folder in `dtype`, split over `shards`
/// files, with the quick demo's tokenizer (vocabulary 384).
fn synthetic_model(
    dir: &std::path::Path,
    config: &serde_json::Value,
    dtype: candle_core::DType,
    shards: usize,
) {
    use candle_nn::{VarBuilder, VarMap};
    let (demo, _) = quick_demo();
    std::fs::create_dir_all(dir).unwrap();
    let cfg: strata_model::LlamaConfig = serde_json::from_value(config.clone()).unwrap();
    let vm = VarMap::new();
    strata_model::Llama::load(
        &VarBuilder::from_varmap(&vm, candle_core::DType::F32, &candle_core::Device::Cpu),
        &cfg,
    )
    .unwrap();
    let mut tensors = std::collections::HashMap::new();
    for (name, var) in vm.data().lock().unwrap().iter() {
        // biases and norm gains random (fresh ones are 0 and 1: a forward that forgot them would still
        // match); Gemma's gains are stored around 0 (it scales by 1 + w)
        let t = if name.ends_with("norm.weight") {
            (candle_core::Tensor::randn(
                0f32,
                0.3,
                var.as_tensor().shape(),
                &candle_core::Device::Cpu,
            )
            .unwrap()
                + f64::from(1.0 - cfg.norm_shift()))
            .unwrap()
        } else if name.ends_with(".bias") {
            candle_core::Tensor::randn(
                0f32,
                0.5,
                var.as_tensor().shape(),
                &candle_core::Device::Cpu,
            )
            .unwrap()
        } else {
            var.as_tensor().clone()
        };
        tensors.insert(name.clone(), t.to_dtype(dtype).unwrap());
    }
    let mut names: Vec<String> = tensors.keys().cloned().collect();
    names.sort();
    if shards == 1 {
        strata_model::save_safetensors(&tensors, &dir.join("model.safetensors"), &[]).unwrap();
    } else {
        let mut weight_map = serde_json::Map::new();
        for (k, chunk) in names.chunks(names.len().div_ceil(shards)).enumerate() {
            let file = format!("model-{:05}-of-{shards:05}.safetensors", k + 1);
            let part: std::collections::HashMap<String, candle_core::Tensor> = chunk
                .iter()
                .map(|n| (n.clone(), tensors[n].clone()))
                .collect();
            strata_model::save_safetensors(&part, &dir.join(&file), &[]).unwrap();
            for n in chunk {
                weight_map.insert(n.clone(), file.clone().into());
            }
        }
        std::fs::write(
            dir.join("model.safetensors.index.json"),
            serde_json::json!({"metadata": {}, "weight_map": weight_map}).to_string(),
        )
        .unwrap();
    }
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(demo.join("models/base").join(f), dir.join(f)).unwrap();
    }
}

#[test]
fn qwen2_mistral_and_scaled_rope_configs_match_the_numpy_reference() {
    let (demo, _) = quick_demo();
    let base = serde_json::json!({"vocab_size": 384, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "rope_theta": 10000.0});
    let with = |extra: serde_json::Value| {
        let mut c = base.clone();
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        c
    };
    let variants = [
        // Qwen2: q/k/v biases, tied embeddings, f16 weights in two shards, window present but switched off
        (
            "qwen2",
            with(
                serde_json::json!({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "tie_word_embeddings": true, "rope_theta": 1e6, "sliding_window": 4, "use_sliding_window": false}),
            ),
            candle_core::DType::F16,
            2,
        ),
        // Qwen2 with its window switched on: 3 layers, the first max_window_layers = 2 in full, the third
        // within a window of 3 (the reference follows transformers' Qwen2Config, not Strata)
        (
            "qwen2-window",
            with(
                serde_json::json!({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "num_hidden_layers": 3, "sliding_window": 3, "use_sliding_window": true, "max_window_layers": 2}),
            ),
            candle_core::DType::F32,
            1,
        ),
        // Qwen3: an RMSNorm of each query and key head before RoPE (random gains), head_dim 16 ≠ 32 / 4,
        // no q/k/v biases, tied embeddings, f16 weights
        (
            "qwen3",
            with(
                serde_json::json!({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "head_dim": 16, "tie_word_embeddings": true, "rope_theta": 1e6, "attention_bias": false}),
            ),
            candle_core::DType::F16,
            1,
        ),
        // Gemma 3: gains 1 + w, q/k norms, sandwich norms, GeGLU, the scaled embedding, scores scaled by
        // query_pre_attn_scalar 24 (not head_dim 16), two sliding layers (window 3, RoPE base 100) around a
        // full one (base 1e6), tied embeddings, f16 weights
        (
            "gemma3",
            with(
                serde_json::json!({"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "num_hidden_layers": 3,
                    "head_dim": 16, "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": 24, "sliding_window": 3,
                    "layer_types": ["sliding_attention", "full_attention", "sliding_attention"], "rope_theta": 1e6,
                    "rope_local_base_freq": 100.0, "tie_word_embeddings": true}),
            ),
            candle_core::DType::F16,
            1,
        ),
        // Mistral: sliding window of 3 (shorter than the text), explicit head_dim 16 ≠ 32 / 4
        (
            "mistral",
            with(
                serde_json::json!({"architectures": ["MistralForCausalLM"], "model_type": "mistral", "sliding_window": 3, "head_dim": 16}),
            ),
            candle_core::DType::F32,
            1,
        ),
        // Llama 3.1 rope scaling and attention_bias (o_proj too)
        (
            "llama3-rope",
            with(
                serde_json::json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": true,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 16}}),
            ),
            candle_core::DType::F32,
            3,
        ),
        (
            "linear-rope",
            with(
                serde_json::json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "rope_scaling": {"type": "linear", "factor": 4.0}}),
            ),
            candle_core::DType::F32,
            1,
        ),
    ];
    let text = "The liver measures 14.2 cm. The spleen is normal. No free fluid is seen in the pelvis today.";
    for (name, config, dtype, shards) in variants {
        let mdir = demo.join("synthetic").join(name);
        synthetic_model(&mdir, &config, dtype, shards);
        let tk = strata_tokenize::load_tokenizer(&mdir.join("tokenizer.json")).unwrap();
        let ids = tk.encode(text, false).unwrap().get_ids().to_vec();
        assert!(
            ids.len() > 8,
            "{name}: the text must be longer than the sliding window"
        );
        let expect = mdir.join("expect.json");
        std::fs::write(
            &expect,
            serde_json::json!({"text": text, "ids": ids, "logits": logits_of(&mdir, &ids)})
                .to_string(),
        )
        .unwrap();
        python_check("check_hf_model.py", &[mdir.as_os_str(), expect.as_os_str()]);
    }
    unknown_architectures_are_refused_by_name(demo, &with);
}

/// An architecture Strata does not implement is refused by name.
fn unknown_architectures_are_refused_by_name(
    demo: &std::path::Path,
    with: &dyn Fn(serde_json::Value) -> serde_json::Value,
) {
    let gemma = demo.join("synthetic/gemma");
    synthetic_model(
        &gemma,
        &with(serde_json::json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama"})),
        candle_core::DType::F32,
        1,
    );
    std::fs::write(
        gemma.join("config.json"),
        with(serde_json::json!({"architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2"}))
            .to_string(),
    )
    .unwrap();
    let err = strata_model::load_model(&gemma, &candle_core::Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("Gemma2ForCausalLM")
            && err.contains(
                "supported: LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, MistralForCausalLM, \
                 Gemma3ForCausalLM"
            ),
        "{err}"
    );
}

/// A 2-layer config of `arch` over the quick demo's vocabulary of 384 (Qwen2: tied, rope θ 1e6; Llama: untied).
fn tiny_config(arch: &str) -> serde_json::Value {
    let qwen = arch == "Qwen2ForCausalLM";
    serde_json::json!({"architectures": [arch], "model_type": if qwen { "qwen2" } else { "llama" },
        "vocab_size": 384, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
        "rms_norm_eps": if qwen { 1e-6 } else { 1e-5 }, "rope_theta": if qwen { 1e6 } else { 1e4 },
        "tie_word_embeddings": qwen})
}

#[test]
fn hf_folder_import_checks_shapes_copies_as_is_and_generates() {
    let (demo, _) = quick_demo();
    let config = tiny_config("Qwen2ForCausalLM");
    let src = demo.join("hf-import/src");
    synthetic_model(&src, &config, candle_core::DType::BF16, 2);
    std::fs::write(src.join("generation_config.json"), r#"{"eos_token_id": 2}"#).unwrap();
    let r = run(strata(demo)
        .arg("import")
        .arg(&src)
        .args(["--name", "qwen-hf"]));
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stdout.contains("Qwen2ForCausalLM") && r.stdout.contains("BF16"),
        "{}",
        r.stdout
    );
    let dst = demo.join("models/qwen-hf");
    // copied as it is: same bytes, shards and index included
    for f in [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        assert_eq!(
            std::fs::read(src.join(f)).unwrap(),
            std::fs::read(dst.join(f)).unwrap(),
            "{f}"
        );
    }
    let tk = strata_tokenize::load_tokenizer(&dst.join("tokenizer.json")).unwrap();
    let ids = tk
        .encode("The liver measures 14.2 cm.", false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!(logits_of(&src, &ids), logits_of(&dst, &ids));
    let again = run(strata(demo)
        .arg("import")
        .arg(&src)
        .args(["--name", "qwen-hf"]));
    assert!(again.stdout.contains("up to date"), "{}", again.stdout);
    let g = run(strata(demo).args([
        "generate",
        "--model",
        "qwen-hf",
        "--prompt",
        "The liver",
        "--max-tokens",
        "5",
        "--temperature",
        "0",
    ]));
    assert!(g.ok && g.stdout.starts_with("The liver"), "{}", g.stderr);
}

#[test]
fn imported_sharded_folders_fine_tune_and_export() {
    let (demo, _) = quick_demo();
    let config = tiny_config("Qwen2ForCausalLM");
    let src = demo.join("hf-import/qwen-train");
    synthetic_model(&src, &config, candle_core::DType::BF16, 2);
    let r = run(strata(demo)
        .arg("import")
        .arg(&src)
        .args(["--name", "qwen-train"]));
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("tokenizer qwen-train: from model qwen-train"),
        "{}",
        r.stdout
    );
    // the imported folder (bf16, two shards) trains: its tokenizer was published with it, data encoded
    // with it fine-tunes it, and the child loads back, evaluates and exports
    fine_tune_on_medical(demo, "qwen-train", "qwen-med", &["--lr", "3e-3"]);
    let e = run(strata(demo).args([
        "eval",
        "--model",
        "qwen-med",
        "--model",
        "qwen-train",
        "--dataset",
        "medical",
    ]));
    assert!(e.ok, "{}", e.stderr);
    export_round_trips_qwen2_and_a_sharded_llama(demo);
}

/// The quick demo's medical text encoded with `parent`'s tokenizer fine-tunes it for 20 steps (with
/// `extra` flags): the loss falls, and the child generates.
fn fine_tune_on_medical(demo: &std::path::Path, parent: &str, name: &str, extra: &[&str]) {
    let tokens = format!("{name}-tokens");
    let r = run(strata(demo).args([
        "tokenize",
        "encode",
        "--name",
        &tokens,
        "--dataset",
        "medical",
        "--tokenizer",
        parent,
    ]));
    assert!(r.ok, "{}", r.stderr);
    let r = run(strata(demo)
        .args([
            "finetune", "--name", name, "--parent", parent, "--tokens", &tokens,
        ])
        .args(["--steps", "20", "--batch-size", "4", "--seq-len", "32"])
        .args(extra));
    assert!(r.ok, "{}", r.stderr);
    let losses = common::run_losses(demo, name);
    assert_eq!(losses.len(), 20);
    assert!(
        losses[17..].iter().sum::<f32>() < losses[..3].iter().sum::<f32>(),
        "loss did not fall: {losses:?}"
    );
    let g = run(strata(demo).args([
        "generate",
        "--model",
        name,
        "--prompt",
        "The liver",
        "--max-tokens",
        "5",
        "--temperature",
        "0",
    ]));
    assert!(g.ok && g.stdout.starts_with("The liver"), "{}", g.stderr);
}

#[test]
fn hf_folder_import_names_what_is_wrong_and_publishes_nothing() {
    let (demo, _) = quick_demo();
    let config = serde_json::json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": 384, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128});
    let bad = |name: &str, edit: &dyn Fn(&std::path::Path), want: &[&str]| {
        let d = demo.join("hf-import").join(name);
        synthetic_model(&d, &config, candle_core::DType::F32, 1);
        edit(&d);
        let r = run(strata(demo).arg("import").arg(&d).args(["--name", name]));
        assert!(!r.ok, "{name} imported");
        for w in want {
            assert!(r.stderr.contains(w), "{name}: {w} not in {}", r.stderr);
        }
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
        assert!(!demo.join("models").join(name).exists());
    };
    bad(
        "bad-shape",
        &|d| {
            let mut c = config.clone();
            c["intermediate_size"] = 48.into();
            std::fs::write(d.join("config.json"), c.to_string()).unwrap();
        },
        &["gate_proj.weight", "[64, 32]", "[48, 32]"],
    );
    bad(
        "bad-truncated",
        &|d| {
            let f = d.join("model.safetensors");
            let len = std::fs::metadata(&f).unwrap().len();
            let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
            file.set_len(len - 100).unwrap();
        },
        &["model.safetensors", "truncated"],
    );
    bad(
        "bad-config",
        &|d| {
            let mut c = config.clone();
            c.as_object_mut().unwrap().remove("hidden_size");
            std::fs::write(d.join("config.json"), c.to_string()).unwrap();
        },
        &["config.json", "hidden_size"],
    );
    bad(
        "bad-missing",
        &|d| {
            let f = d.join("model.safetensors");
            let (mut t, _) = strata_model::read_safetensors(&f, &candle_core::Device::Cpu).unwrap();
            t.remove("model.norm.weight").unwrap();
            strata_model::save_safetensors(&t, &f, &[]).unwrap();
        },
        &["model.norm.weight", "not in the weights"],
    );
    bad(
        "bad-no-tokenizer",
        &|d| std::fs::remove_file(d.join("tokenizer.json")).unwrap(),
        &["tokenizer.json", "missing"],
    );
}

/// GGUF export writes llama.cpp's `llama` layout: a Qwen2 model is refused by name, a sharded bf16 Llama
/// folder exports, and imports back with the same logits.
fn export_round_trips_qwen2_and_a_sharded_llama(demo: &std::path::Path) {
    // Qwen2 as llama.cpp's qwen2 (rows as they are, biases): back to the same logits
    gguf_round_trip(
        demo,
        "qwen-train",
        &demo.join("hf-import/qwen-train"),
        &ROUND_TRIP_IDS,
        0.0,
    );
    let llama = tiny_config("LlamaForCausalLM");
    let src = demo.join("hf-import/llama-sharded");
    synthetic_model(&src, &llama, candle_core::DType::BF16, 3);
    let r = run(strata(demo)
        .arg("import")
        .arg(&src)
        .args(["--name", "llama-sharded"]));
    assert!(r.ok, "{}", r.stderr);
    let gguf = demo.join("llama-sharded.f32.gguf");
    let x = run(strata(demo)
        .args([
            "export",
            "--model",
            "llama-sharded",
            "--type",
            "f32",
            "--gguf",
        ])
        .arg(&gguf));
    assert!(x.ok && gguf.is_file(), "{}", x.stderr);
    let ids = [3u32, 17, 42, 99, 7];
    let want = logits_of(&src, &ids);
    let r = run(strata(demo)
        .arg("import")
        .arg(&gguf)
        .args(["--name", "llama-back"]));
    assert!(r.ok, "{}", r.stderr);
    let back = logits_of(&demo.join("models/llama-back"), &ids);
    let err = want
        .iter()
        .flatten()
        .zip(back.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        err < 1e-4,
        "sharded bf16 → GGUF f32 → back: logits differ by {err}"
    );
}

/// The pieces a tokenizer's pre-tokenizer cuts `text` into (byte-level symbols, as in its vocabulary).
fn pre_pieces(tk: &tokenizers::Tokenizer, text: &str) -> Vec<String> {
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};
    let mut s = PreTokenizedString::from(text);
    tk.get_pre_tokenizer()
        .unwrap()
        .pre_tokenize(&mut s)
        .unwrap();
    s.get_splits(OffsetReferential::Original, OffsetType::Byte)
        .into_iter()
        .map(|(piece, _, _)| piece.to_string())
        .collect()
}

#[test]
fn qwen2_gguf_imports_unpermuted_with_biases_and_its_pre_tokenizer() {
    let (demo, _) = quick_demo();
    let config = serde_json::json!({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
        "vocab_size": 384, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
        "rms_norm_eps": 1e-6, "rope_theta": 1e6, "tie_word_embeddings": false, "eos_token_id": 2});
    let src = demo.join("qwen2-gguf/src");
    synthetic_model(&src, &config, candle_core::DType::F32, 1);
    let dir = demo.join("qwen2-gguf");
    let text = "x(hello 2026\n\n  y";
    // hand-worked splits of the published Qwen2 and Llama 3 regexes (Ġ: space, Ċ: newline)
    for (pre, want) in [
        (
            "qwen2",
            vec!["x", "(hello", "Ġ", "2", "0", "2", "6", "ĊĊ", "Ġ", "Ġy"],
        ),
        (
            "llama-bpe",
            vec!["x", "(hello", "Ġ", "202", "6", "ĊĊ", "Ġ", "Ġy"],
        ),
    ] {
        let gguf = dir.join(format!("{pre}.gguf"));
        let mdir = convert_and_import(
            demo,
            &src,
            &gguf,
            "qwen2",
            pre,
            None,
            &format!("qwen2-{pre}"),
        );
        let tk = strata_tokenize::load_tokenizer(&mdir.join("tokenizer.json")).unwrap();
        assert_eq!(pre_pieces(&tk, text), want, "{pre}");
        // BOS (id 0 here) as llama.cpp adds it: by default for Llama 3's vocabulary, not for Qwen2's
        let with_special = tk.encode("hello", true).unwrap().get_ids().to_vec();
        let plain = tk.encode("hello", false).unwrap().get_ids().to_vec();
        if pre == "llama-bpe" {
            assert_eq!(with_special[0], 0);
            assert_eq!(with_special[1..], plain[..]);
        } else {
            assert_eq!(with_special, plain);
        }
        // every tensor as the HF folder had it (qwen2's Q and K are not permuted), so the same logits
        let ids = tk
            .encode("The liver measures 14.2 cm.", false)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(logits_of(&src, &ids), logits_of(&mdir, &ids), "{pre}");
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(mdir.join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["architectures"][0], "Qwen2ForCausalLM");
        assert_eq!(cfg["model_type"], "qwen2");
        // the inference engine on the GGUF file itself, against the numpy reference (NEOX rotation, biases)
        engine_matches_gguf_reference(&gguf, &dir.join(format!("expect-{pre}.json")), &ids);
    }
}

/// Qwen3 (an RMSNorm of each query and key head before RoPE, a head size that is not hidden / heads) in every
/// path: its GGUF (written as llama.cpp's converter lays it out) imports to the HF folder's exact logits, the
/// engine on the GGUF file matches the numpy reference of the file, and a LoRA adapter trains on it and
/// generates.
#[test]
fn qwen3_gguf_imports_runs_and_trains_a_lora() {
    let (demo, _) = quick_demo();
    let config = serde_json::json!({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
        "vocab_size": 384, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 128,
        "rms_norm_eps": 1e-6, "rope_theta": 1e6, "tie_word_embeddings": true, "eos_token_id": 2});
    let dir = demo.join("qwen3-gguf");
    let src = dir.join("src");
    synthetic_model(&src, &config, candle_core::DType::F32, 1);
    let gguf = dir.join("qwen3.gguf");
    let mdir = convert_and_import(demo, &src, &gguf, "qwen3", "qwen2", None, "qwen3");
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(mdir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "Qwen3ForCausalLM");
    assert_eq!(cfg["head_dim"], 16);
    let tk = strata_tokenize::load_tokenizer(&mdir.join("tokenizer.json")).unwrap();
    let ids = tk
        .encode("The liver measures 14.2 cm.", false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!(logits_of(&src, &ids), logits_of(&mdir, &ids));
    engine_matches_gguf_reference(&gguf, &dir.join("expect.json"), &ids);
    // exported as llama.cpp's qwen3 (from the imported folder, which holds the GGUF alone) and back
    gguf_round_trip(demo, "qwen3", &src, &ROUND_TRIP_IDS, 0.0);
    // a LoRA adapter on it: the loss falls, the adapter generates
    fine_tune_on_medical(
        demo,
        "qwen3",
        "qwen3-med",
        &["--lr", "1e-2", "--lora-r", "4"],
    );
}

/// A Gemma 3 GGUF laid out as llama.cpp's converter writes it (norm gains as 1 + w, its norm names, a
/// SentencePiece vocabulary), with what llama.cpp leaves to its code rather than the file: every 6th layer
/// global, the others within the window and turned with RoPE base 10000, scores by key_length^-1/2.
#[test]
fn gemma3_gguf_imports_runs_and_trains_a_lora() {
    let (demo, _) = quick_demo();
    let layer_types: Vec<&str> = (0..6)
        .map(|i| {
            if (i + 1) % 6 == 0 {
                "full_attention"
            } else {
                "sliding_attention"
            }
        })
        .collect();
    let config = serde_json::json!({"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
        "vocab_size": 384, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 6,
        "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 16, "max_position_embeddings": 128,
        "rms_norm_eps": 1e-6, "rope_theta": 1e6, "rope_local_base_freq": 10000.0, "sliding_window": 3,
        "layer_types": layer_types, "query_pre_attn_scalar": 16, "hidden_activation": "gelu_pytorch_tanh",
        "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2});
    let dir = demo.join("gemma3-gguf");
    let src = dir.join("src");
    synthetic_model(&src, &config, candle_core::DType::F32, 1);
    let gguf = dir.join("gemma3.gguf");
    let spm_ids = dir.join("spm-ids.json");
    let mdir = convert_and_import(demo, &src, &gguf, "gemma3", "spm", Some(&spm_ids), "gemma3");
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(mdir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "Gemma3ForCausalLM");
    assert_eq!(cfg["layer_types"], config["layer_types"]);
    // ids past the window of 3, with the vocabulary's own pieces
    let ids = [1u32, 300, 17, 42, 99, 7, 250, 301, 5, 64, 128];
    // the gains went through 1 + w and back: equal up to f32 rounding
    assert_logits_close(&logits_of(&src, &ids), &logits_of(&mdir, &ids), 1e-5);
    engine_matches_gguf_reference(&gguf, &dir.join("expect.json"), &ids);
    // exported as llama.cpp's gemma3 and imported back: the same logits (up to the 1 + w rounding) and the
    // same SentencePiece merges; the numpy forward of llama.cpp's graph on the written file agrees with the
    // engine on it
    let (out, back) = gguf_round_trip(demo, "gemma3", &mdir, &ids, 1e-5);
    engine_matches_gguf_reference(&out, &dir.join("expect-out.json"), &ids);
    let tok = |d: &std::path::Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(d.join("tokenizer.json")).unwrap()).unwrap()
    };
    let (a, b) = (tok(&mdir), tok(&back));
    for key in [
        "model",
        "normalizer",
        "added_tokens",
        "post_processor",
        "decoder",
    ] {
        assert_eq!(a[key], b[key], "{key}");
    }
    // a Gemma 3 whose layers llama.cpp's gemma3 would attend otherwise is refused by name, nothing written
    let cfg_path = back.join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    c["layer_types"][0] = "full_attention".into();
    std::fs::write(&cfg_path, c.to_string()).unwrap();
    let x = run(strata(demo)
        .args(["export", "--model", "gemma3-rt", "--type", "f32", "--gguf"])
        .arg(dir.join("bad.gguf")));
    assert!(!x.ok && x.stderr.contains("layer 0"), "{}", x.stderr);
    assert!(!dir.join("bad.gguf").exists());
    // a LoRA adapter on it: the loss falls, the adapter generates
    fine_tune_on_medical(
        demo,
        "gemma3",
        "gemma3-med",
        &["--lr", "1e-2", "--lora-r", "4"],
    );
}

/// The HF folder `src` written as a GGUF at `gguf` the way llama.cpp's converter lays it out
/// (`hf_to_gguf.py ARCH VOCAB`, with the SentencePiece ids of its texts at `spm_ids`), then imported as
/// `name`: the model's folder.
fn convert_and_import(
    demo: &std::path::Path,
    src: &std::path::Path,
    gguf: &std::path::Path,
    arch: &str,
    vocab: &str,
    spm_ids: Option<&std::path::Path>,
    name: &str,
) -> std::path::PathBuf {
    let mut args = vec![
        src.as_os_str(),
        gguf.as_os_str(),
        arch.as_ref(),
        vocab.as_ref(),
    ];
    args.extend(spm_ids.map(std::path::Path::as_os_str));
    python_check("hf_to_gguf.py", &args);
    let r = run(strata(demo).arg("import").arg(gguf).args(["--name", name]));
    assert!(r.ok, "{}", r.stderr);
    demo.join("models").join(name)
}

/// The inference engine on the GGUF file itself (f32 weights) against the numpy forward of the file
/// (`gguf_reference.py`), at `ids`; `expect` is where the engine's logits are written for it.
fn engine_matches_gguf_reference(gguf: &std::path::Path, expect: &std::path::Path, ids: &[u32]) {
    let what = format!("engine on {}", gguf.display());
    std::fs::write(
        expect,
        serde_json::json!({"ids": ids, "what": what,
            "logits": engine_logits(gguf, Some(strata_engine::WeightType::F32), ids)})
        .to_string(),
    )
    .unwrap();
    python_check("gguf_reference.py", &[gguf.as_os_str(), expect.as_os_str()]);
}

/// The largest difference between two sets of logits at most `tol` of the largest of `want`'s.
fn assert_logits_close(want: &[Vec<f32>], got: &[Vec<f32>], tol: f32) {
    let err = want
        .iter()
        .flatten()
        .zip(got.iter().flatten())
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    let top = want.iter().flatten().fold(0f32, |m, a| m.max(a.abs()));
    assert!(err <= tol * top, "{err} vs {top}");
}

/// Ids the round trips compare logits at.
const ROUND_TRIP_IDS: [u32; 6] = [3, 17, 42, 99, 7, 250];

/// `model` exported to an f32 GGUF (`<demo>/<model>-rt.gguf`) and imported back as `<model>-rt`: its logits
/// at `ids` are those of the folder `src` it came from, bit for bit (`tol` 0) or within `tol` of the largest.
/// Returns the file and the imported folder.
fn gguf_round_trip(
    demo: &std::path::Path,
    model: &str,
    src: &std::path::Path,
    ids: &[u32],
    tol: f32,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let gguf = demo.join(format!("{model}-rt.gguf"));
    let x = run(strata(demo)
        .args(["export", "--model", model, "--type", "f32", "--gguf"])
        .arg(&gguf));
    assert!(x.ok, "{}", x.stderr);
    let back = format!("{model}-rt");
    let r = run(strata(demo)
        .arg("import")
        .arg(&gguf)
        .args(["--name", &back]));
    assert!(r.ok, "{}", r.stderr);
    let back = demo.join("models").join(&back);
    let (want, got) = (logits_of(src, ids), logits_of(&back, ids));
    if tol == 0.0 {
        assert_eq!(want, got, "{model}");
    } else {
        assert_logits_close(&want, &got, tol);
    }
    (gguf, back)
}

#[test]
fn sentencepiece_gguf_tokenizes_as_llama_cpp_and_llama_weights_unpermute() {
    let (demo, _) = quick_demo();
    let config = serde_json::json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": 384, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": false});
    let dir = demo.join("spm-gguf");
    let src = dir.join("src");
    synthetic_model(&src, &config, candle_core::DType::F32, 1);
    let (gguf, expect) = (dir.join("spm.gguf"), dir.join("spm-ids.json"));
    let mdir = convert_and_import(demo, &src, &gguf, "llama", "spm", Some(&expect), "spm");
    let tk = strata_tokenize::load_tokenizer(&mdir.join("tokenizer.json")).unwrap();
    let want: std::collections::BTreeMap<String, Vec<u32>> =
        serde_json::from_slice(&std::fs::read(&expect).unwrap()).unwrap();
    for (text, ids) in &want {
        let got = tk.encode(text.as_str(), false).unwrap().get_ids().to_vec();
        assert_eq!(&got, ids, "{text:?}");
        // special tokens added as llama.cpp adds them for a SentencePiece vocabulary: BOS (1) first
        let with_bos = tk.encode(text.as_str(), true).unwrap().get_ids().to_vec();
        assert_eq!(with_bos[0], 1, "{text:?}");
        assert_eq!(with_bos[1..], got[..], "{text:?}");
        // decoding gives the text back (after a special token, the "▁" it added stays, as in HF and llama.cpp)
        if !text.contains("<s>") {
            assert_eq!(&tk.decode(&got, false).unwrap(), text, "{text:?}");
        }
    }
    // Q and K come back in HF's row order: the same logits as the folder the GGUF was written from
    let ids = want["The liver measures 14.2 cm."].clone();
    assert_eq!(logits_of(&src, &ids), logits_of(&mdir, &ids));
    // Llama 3.1 RoPE factors stored as a tensor are refused by name, not silently ignored
    let freqs = dir.join("rope-freqs.gguf");
    let out = std::process::Command::new(common::venv_python())
        .arg(common::repo_root().join("tests/python/hf_to_gguf.py"))
        .arg(&src)
        .arg(&freqs)
        .args(["llama", "spm"])
        .arg(dir.join("unused.json"))
        .env("ROPE_FREQS", "1")
        .output()
        .unwrap();
    assert!(out.status.success());
    let r = run(strata(demo)
        .arg("import")
        .arg(&freqs)
        .args(["--name", "freqs"]));
    assert!(
        !r.ok && r.stderr.contains("rope_freqs.weight"),
        "{}",
        r.stderr
    );
    let err = strata_engine::CpuModel::load(&freqs, None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("rope_freqs.weight"), "{err}");
}

fn lora_args<'a>(name: &'a str, parent: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "finetune",
        "--name",
        name,
        "--parent",
        parent,
        "--batch-size",
        "4",
        "--seq-len",
        "64",
        "--lr",
        "3e-3",
    ];
    v.extend_from_slice(extra);
    v
}

/// LoRA end to end on the demo's base: an adapter in PEFT's layout (the base untouched), a second adapter
/// stacked on the first (with dropout), merged into a model that scores exactly as the adapter does and
/// generates; an adapter whose base changed since it was trained is refused by hash, bad LoRA settings
/// by name.
#[test]
fn lora_adapters_train_stack_merge_and_refuse_a_changed_base() {
    let (demo, _) = quick_demo();
    let base_weights = std::fs::read(demo.join("models/base/model.safetensors")).unwrap();
    let r = run(strata(demo).args(lora_args(
        "med-lora",
        "base",
        &[
            "--tokens",
            "medical-tokens=0.8",
            "--tokens",
            "general-tokens=0.2",
            "--lora-r",
            "4",
            "--lora-targets",
            "q_proj,v_proj,down_proj",
            "--steps",
            "20",
        ],
    )));
    assert!(r.ok, "{}", r.stderr);
    let losses = common::run_losses(demo, "med-lora");
    assert_eq!(losses.len(), 20);
    assert!(
        losses[17..].iter().sum::<f32>() < losses[..3].iter().sum::<f32>(),
        "loss did not fall: {losses:?}"
    );
    assert_eq!(
        std::fs::read(demo.join("models/base/model.safetensors")).unwrap(),
        base_weights,
        "LoRA changed the base's weights"
    );
    let dir = demo.join("adapters/med-lora");
    check_adapter_files(&dir);
    peft_folder_imports_onto_its_base(demo, &dir);
    stacked_adapter_merges_and_generates_unmerged(demo);
    bad_lora_settings_are_named(demo);
    an_adapter_on_a_replaced_base_is_refused(demo);
}

/// QLoRA: the same adapter run over the base in f32, in Q8_0 blocks and in Q4_K blocks (rows of 64 take
/// Q5_0): the same first losses within 0.1% (Q8_0) or 0.5% (4–5 bits; measured 0.004% and 0.04%),
/// adapters in the same PEFT layout that score on the f32 base, the block type in the manifest, the same
/// losses with gradient checkpointing; a block type it does not know is refused by name.
#[test]
fn qlora_trains_over_a_quantised_base_with_the_losses_of_f32_lora() {
    let (demo, _) = quick_demo();
    let train = |name: &str, quant: Option<&str>, extra: &[&str]| {
        let mut args = lora_args(
            name,
            "base",
            &[
                "--tokens",
                "medical-tokens",
                "--lora-r",
                "4",
                "--steps",
                "3",
                "--sampling",
                "sequential",
                "--warmup-steps",
                "0",
            ],
        );
        if let Some(q) = quant {
            args.extend_from_slice(&["--base-quant", q]);
        }
        args.extend_from_slice(extra);
        let r = run(strata(demo).args(args));
        assert!(r.ok, "{}", r.stderr);
        common::run_losses(demo, name)
    };
    let f32_losses = train("ql-f32", None, &[]);
    for (name, quant, tol) in [("ql-q8", "q8_0", 1e-3), ("ql-q4", "q4_k", 5e-3)] {
        let losses = train(name, Some(quant), &[]);
        assert_eq!(losses.len(), 3);
        for (q, f) in losses.iter().zip(&f32_losses) {
            assert!(
                (q - f).abs() <= tol * f.abs(),
                "{quant}: {losses:?} against {f32_losses:?}"
            );
        }
        let m: serde_json::Value = serde_json::from_slice(
            &std::fs::read(demo.join(format!("adapters/{name}/manifest.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(m["counts"]["base_quant"], quant);
        let keys = |n: &str| {
            let b = std::fs::read(demo.join(format!("adapters/{n}/adapter_model.safetensors")))
                .unwrap();
            let mut k: Vec<String> = safetensors::SafeTensors::deserialize(&b)
                .unwrap()
                .names()
                .into_iter()
                .map(String::from)
                .collect();
            k.sort();
            k
        };
        assert_eq!(keys(name), keys("ql-f32"));
    }
    // gradient checkpointing (blocks run again in backward, the head's logits computed again) changes
    // the memory, not the losses
    let ckpt = train("ql-q8-ckpt", Some("q8_0"), &["--gradient-checkpointing"]);
    let plain = common::run_losses(demo, "ql-q8");
    for (c, p) in ckpt.iter().zip(&plain) {
        assert!(
            (c - p).abs() <= 1e-5 * p.abs(),
            "{ckpt:?} against {plain:?}"
        );
    }
    // the adapters score on the f32 base (as PEFT runs them on the dequantised one)
    let e = run(strata(demo).args([
        "eval",
        "--model",
        "ql-f32",
        "--model",
        "ql-q8",
        "--dataset",
        "medical",
    ]));
    assert!(
        e.ok && e.stdout.contains("ql-q8 "),
        "{}{}",
        e.stdout,
        e.stderr
    );
    let mut args = lora_args(
        "ql-bad",
        "base",
        &["--tokens", "medical-tokens", "--steps", "1"],
    );
    args.extend_from_slice(&["--base-quant", "nf4"]);
    let r = run(strata(demo).args(args));
    assert!(
        !r.ok && r.stderr.contains("nf4") && r.stderr.contains("q8_0"),
        "{}",
        r.stderr
    );
    assert!(!demo.join("adapters/ql-bad").exists());
}

/// The adapter folder in PEFT's layout: its config, its tensors' keys, and a manifest naming its base.
fn check_adapter_files(dir: &std::path::Path) {
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["base_model_name_or_path"], "base");
    let bytes = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    // 2 layers × 3 projections × (A, B), PEFT's keys
    assert_eq!(st.names().len(), 12);
    assert!(st
        .names()
        .iter()
        .all(|k| k.starts_with("base_model.model.model.layers.")
            && (k.ends_with(".lora_A.weight") || k.ends_with(".lora_B.weight"))));
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["kind"], "adapter");
    assert_eq!(m["counts"]["base"], "base");
    assert!(m["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["kind"] == "model" && i["name"] == "base"));
}

/// An adapter folder as PEFT leaves it imports onto its base (and needs to be told the base); the copy scores
/// as the original.
fn peft_folder_imports_onto_its_base(demo: &std::path::Path, dir: &std::path::Path) {
    // an adapter folder as PEFT leaves it imports onto its base (and needs to be told the base)
    let r = run(strata(demo)
        .arg("import")
        .arg(dir)
        .args(["--name", "med-copy"]));
    assert!(!r.ok && r.stderr.contains("--base"), "{}", r.stderr);
    let r = run(strata(demo)
        .arg("import")
        .arg(dir)
        .args(["--name", "med-copy", "--base", "base"]));
    assert!(r.ok && r.stdout.contains("r=4"), "{}{}", r.stdout, r.stderr);
    let e = run(strata(demo).args([
        "eval",
        "--model",
        "med-lora",
        "--model",
        "med-copy",
        "--dataset",
        "medical",
    ]));
    assert!(e.ok, "{}", e.stderr);
    let rows: Vec<&str> = e
        .stdout
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .nth(1)
                .filter(|_| l.starts_with("med-"))
        })
        .collect();
    assert!(rows.len() == 2 && rows[0] == rows[1], "{}", e.stdout);
}

/// The ultrasound adapter trains stacked on base + medical adapter; merged, it scores and generates as the
/// adapter chain does unmerged.
fn stacked_adapter_merges_and_generates_unmerged(demo: &std::path::Path) {
    // stacked: the ultrasound adapter trains on base + medical adapter
    let r = run(strata(demo).args(lora_args(
        "us-lora",
        "med-lora",
        &[
            "--tokens",
            "ultrasound-tokens=0.7",
            "--tokens",
            "medical-tokens=0.3",
            "--lora-r",
            "4",
            "--lora-dropout",
            "0.1",
            "--steps",
            "10",
        ],
    )));
    assert!(r.ok, "{}", r.stderr);
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(demo.join("adapters/us-lora/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(m["counts"]["adapters"], serde_json::json!(["med-lora"]));
    let r = run(strata(demo).args(["merge", "us-lora", "--name", "us-merged"]));
    assert!(r.ok, "{}", r.stderr);
    // the adapter (applied on the fly) and the merged model score the same
    let e = run(strata(demo).args([
        "eval",
        "--model",
        "us-lora",
        "--model",
        "us-merged",
        "--dataset",
        "ultrasound",
    ]));
    assert!(e.ok, "{}", e.stderr);
    let score = |name: &str| {
        e.stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or_else(|| panic!("no row for {name}: {}", e.stdout))
            .to_string()
    };
    assert_eq!(score("us-lora"), score("us-merged"), "{}", e.stdout);
    // the adapter chain generates unmerged on its base, as the server runs it: the same greedy text as the
    // merged model (merged and unmerged logits agree to ~1e-6)
    let greedy = |model: &str| {
        let g = run(strata(demo).args([
            "generate",
            "--model",
            model,
            "--prompt",
            "The liver",
            "--max-tokens",
            "8",
            "--temperature",
            "0",
        ]));
        assert!(g.ok && g.stdout.starts_with("The liver"), "{}", g.stderr);
        g.stdout
    };
    assert_eq!(greedy("us-lora"), greedy("us-merged"));
}

/// Bad LoRA settings are errors naming the setting; nothing is published.
fn bad_lora_settings_are_named(demo: &std::path::Path) {
    // bad settings, named; nothing published
    for (flags, needle) in [
        (["--lora-targets", "qkv"], "unknown target module \"qkv\""),
        (["--lora-r", "0"], "r must be at least 1"),
        (["--lora-dropout", "1.5"], "lora_dropout"),
    ] {
        let mut args = lora_args(
            "bad-lora",
            "base",
            &["--tokens", "medical-tokens", "--steps", "2"],
        );
        args.extend_from_slice(&flags);
        let r = run(strata(demo).args(args));
        assert!(
            !r.ok && r.stderr.contains(needle),
            "{flags:?}: {}",
            r.stderr
        );
        assert!(!demo.join("adapters/bad-lora").exists());
    }
}

/// An adapter whose base was replaced since (same name, other weights) is refused by hash, for training on
/// it, evaluating it and merging it.
fn an_adapter_on_a_replaced_base_is_refused(demo: &std::path::Path) {
    // an adapter whose base was replaced since (same name, other weights) is refused by hash
    let config = tiny_config("LlamaForCausalLM");
    let src = demo.join("hf-import/lora-swap");
    synthetic_model(&src, &config, candle_core::DType::F32, 1);
    let r = run(strata(demo)
        .arg("import")
        .arg(&src)
        .args(["--name", "lora-swap"]));
    assert!(r.ok, "{}", r.stderr);
    let r = run(strata(demo).args([
        "tokenize",
        "encode",
        "--name",
        "swap-tokens",
        "--dataset",
        "medical",
        "--tokenizer",
        "lora-swap",
    ]));
    assert!(r.ok, "{}", r.stderr);
    let r = run(strata(demo).args(lora_args(
        "swap-lora",
        "lora-swap",
        &["--tokens", "swap-tokens", "--lora", "--steps", "2"],
    )));
    assert!(r.ok, "{}", r.stderr);
    let src2 = demo.join("hf-import/lora-swap-2");
    synthetic_model(&src2, &config, candle_core::DType::F32, 1);
    let r = run(strata(demo)
        .arg("import")
        .arg(&src2)
        .args(["--name", "lora-swap"]));
    assert!(r.ok, "{}", r.stderr);
    for args in [
        lora_args(
            "swap-2",
            "swap-lora",
            &["--tokens", "swap-tokens", "--lora", "--steps", "2"],
        ),
        vec!["eval", "--model", "swap-lora", "--dataset", "medical"],
        vec!["merge", "swap-lora", "--name", "swap-merged"],
    ] {
        let r = run(strata(demo).args(&args));
        assert!(
            !r.ok && r.stderr.contains("was trained on a base \"lora-swap\""),
            "{args:?}: {}",
            r.stderr
        );
    }
    assert!(!demo.join("models/swap-merged").exists());
}

/// Multiple-choice scoring: the engine's log-likelihoods (prompt once, each choice after it in the KV
/// cache, rolled back between choices) against the training forward over the whole sequence; then
/// `strata eval --task` through the binary, its figures stored in the registry against the model.
#[test]
fn task_choices_score_as_the_full_forward_does_and_results_are_stored() {
    let (demo, _) = quick_demo();
    let dir = demo.join("models/base");
    let items = [
        strata_eval::tasks::McItem {
            question: "Is it an organ?".into(),
            context: "The liver.".into(),
            choices: vec!["yes".into(), "no".into(), "maybe not".into()],
            answer: 0,
        },
        strata_eval::tasks::McItem {
            question: "Which side is the spleen on?".into(),
            context: String::new(),
            choices: vec!["left upper".into(), "right".into()],
            answer: 0,
        },
    ];
    let engine = strata_engine::CpuModel::load(&dir, None).unwrap();
    let td = strata_tokenize::TokenizerDir::open(&dir).unwrap();
    let model = strata_model::load_model(&dir, &candle_core::Device::Cpu).unwrap();
    let cap = engine.config().max_position_embeddings.min(256);
    let mut cache = strata_engine::CpuCache::new(&engine, cap);
    // the server's template (ChatML when the tokenizer has none); rendering is checked against jinja2 in
    // chat_template.rs, the turn and the choices' spelling by hand here
    let tmpl =
        strata_tokenize::ChatTemplate::from_tokenizer_config(&dir.join("tokenizer_config.json"))
            .unwrap();
    let user_turns = [
        "Context: The liver.\nQuestion: Is it an organ?",
        "Question: Which side is the spleen on?",
    ];
    for chat in [None, Some(&tmpl)] {
        for (item, user) in items.iter().zip(user_turns) {
            let got =
                strata_eval::tasks::choice_logprobs(&engine, &td, &mut cache, item, chat).unwrap();
            let (p, before) = match chat {
                None => (format!("{user}\nAnswer:"), " "),
                Some(t) => {
                    let turn = strata_tokenize::ChatMessage {
                        role: "user".into(),
                        content: user.into(),
                    };
                    (t.render(&[turn], true).unwrap(), "")
                }
            };
            let prompt = td
                .tokenizer
                .encode(p.as_str(), true)
                .unwrap()
                .get_ids()
                .to_vec();
            assert!(
                prompt.len() + 8 < cap,
                "the prompt must fit uncut: {}",
                prompt.len()
            );
            for (c, &lp) in item.choices.iter().zip(&got) {
                let cont = td
                    .tokenizer
                    .encode(format!("{before}{c}").as_str(), false)
                    .unwrap()
                    .get_ids()
                    .to_vec();
                let want = full_forward_logprob(&dir, &prompt, &cont);
                assert!(
                    (lp - want).abs() < 1e-3 * (1.0 + want.abs()),
                    "chat {}: {c}: {lp} vs {want}",
                    chat.is_some()
                );
            }
        }
    }
    // perplexity on the engine (as served) equals the training forward's on f32 weights
    let ids: Vec<u32> = (0..200u32).map(|i| (i * 37 + 11) % 384).collect();
    let served = strata_eval::engine_perplexity(&engine, &ids, 64, None).unwrap();
    let trained = strata_train::perplexity(&model, &ids, 64, None).unwrap();
    assert_eq!(served.tokens, trained.tokens);
    assert!(
        (served.nll - trained.nll).abs() < 1e-4 * trained.nll,
        "{served:?} vs {trained:?}"
    );
    drop(model);

    eval_task_results_are_stored(demo);
}

/// log p(cont | prompt) from the training forward over the whole sequence (no cache).
fn full_forward_logprob(dir: &std::path::Path, prompt: &[u32], cont: &[u32]) -> f64 {
    let all: Vec<u32> = prompt.iter().chain(cont).copied().collect();
    let logits = common::logits_of(dir, &all);
    let mut want = 0f64;
    for (i, &t) in cont.iter().enumerate() {
        let row = &logits[prompt.len() + i - 1];
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = f64::from(m)
            + row
                .iter()
                .map(|&v| f64::from(v - m).exp())
                .sum::<f64>()
                .ln();
        want += f64::from(row[t as usize]) - lse;
    }
    want
}

/// `strata eval --task` through the binary: accuracy and chance printed, figures stored in the registry
/// against the model (plain and through the chat template, side by side); a malformed task line is named.
fn eval_task_results_are_stored(demo: &std::path::Path) {
    let task = demo.join("organs.jsonl");
    std::fs::write(
        &task,
        concat!(
            r#"{"question": "Is the liver an organ?", "choices": ["yes", "no", "maybe"], "answer": "yes"}"#,
            "\n",
            r#"{"question": "Is bone soft?", "choices": ["yes", "no", "maybe"], "answer": 1}"#,
            "\n",
            r#"{"question": "Where is the heart?", "choices": ["chest", "foot"], "answer": "chest"}"#,
            "\n"
        ),
    )
    .unwrap();
    let r = run(strata(demo)
        .args(["eval", "--model", "base", "--dataset", "medical", "--task"])
        .arg(&task));
    assert!(r.ok, "{}", r.stderr);
    let row = r
        .stdout
        .lines()
        .find(|l| l.starts_with("base ") && l.contains("organs"))
        .unwrap_or_else(|| panic!("{}", r.stdout));
    let acc: f64 = row.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!(
        [0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0]
            .iter()
            .any(|v| (acc - v).abs() < 1e-3),
        "{row}"
    );
    // chance: (1/3 + 1/3 + 1/2) / 3
    assert!(row.contains("0.389"), "{row}");
    let store = strata_store::Store::open(demo).unwrap();
    let evals = store
        .registry()
        .evals(strata_store::Kind::Model, "base")
        .unwrap();
    let get = |eval: &str, metric: &str| {
        evals
            .iter()
            .find(|e| e.eval == eval && e.metric == metric)
            .unwrap_or_else(|| panic!("no {eval} {metric} in {evals:?}"))
    };
    assert!((get("task:organs", "acc").value - acc).abs() < 1e-3);
    assert_eq!(get("task:organs", "acc").n, 3);
    assert!(get("task:organs", "acc").lo.is_some());
    assert!(get("ppl:medical", "ppl").value > 1.0);
    // through the chat template: stored beside the plain figures, not over them
    let r = run(strata(demo)
        .args(["eval", "--model", "base", "--apply-chat-template", "--task"])
        .arg(&task));
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stdout.contains("organs+chat"), "{}", r.stdout);
    let evals = store
        .registry()
        .evals(strata_store::Kind::Model, "base")
        .unwrap();
    assert!(evals
        .iter()
        .any(|e| e.eval == "task:organs+chat" && e.metric == "acc"));
    assert!(evals
        .iter()
        .any(|e| e.eval == "task:organs" && e.metric == "acc"));
    // a malformed task line is named, and nothing is scored
    std::fs::write(
        &task,
        "{\"question\": \"q\", \"choices\": [\"a\"], \"answer\": 0}\n",
    )
    .unwrap();
    let r = run(strata(demo)
        .args(["eval", "--model", "base", "--task"])
        .arg(&task));
    assert!(!r.ok && r.stderr.contains("organs.jsonl:1"), "{}", r.stderr);
}

/// SFT through the binary: chat records (one malformed, one without an assistant turn) → acquire →
/// `tokenize encode --chat` (the loss on assistant turns only, one example per row) → LoRA SFT whose loss
/// falls; a row length that does not match --seq-len is refused by name.
#[test]
fn chat_records_fine_tune_with_loss_on_assistant_turns_only() {
    let (demo, _) = quick_demo();
    let organs = ["liver", "kidney", "spleen", "bladder"];
    let finds = ["normal", "enlarged", "cyst"];
    let mut lines = String::new();
    for i in 0..200 {
        let (o, f) = (organs[i % 4], finds[(i / 4) % 3]);
        lines.push_str(
            &serde_json::json!({"messages": [{"role": "user", "content": format!("{o}?")},
            {"role": "assistant", "content": format!("{o} {f}.")}]})
            .to_string(),
        );
        lines.push('\n');
    }
    lines.push_str("{\"messages\": [{\"role\": \"user\", \"content\": \"no answer here\"}]}\n");
    lines.push_str("{\"messages\": [{\"role\": \"user\"}]}\n");
    let src = demo.join("chat.jsonl");
    std::fs::write(&src, lines).unwrap();
    let r = run(strata(demo)
        .args(["acquire", "--name", "chat-raw", "--input"])
        .arg(&src));
    assert!(
        r.ok && r.stdout.contains("1 quarantined"),
        "{}{}",
        r.stdout,
        r.stderr
    );
    let r = run(strata(demo).args([
        "tokenize",
        "encode",
        "--name",
        "chat-tok",
        "--dataset",
        "chat-raw",
        "--tokenizer",
        "bpe",
        "--chat",
        "--max-len",
        "48",
    ]));
    assert!(r.ok, "{}", r.stderr);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(demo.join("tokens/chat-tok/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(m["counts"]["quarantined"], 1);
    assert_eq!(m["counts"]["example_len"], 49);
    let q = std::fs::read_to_string(demo.join("tokens/chat-tok/quarantine.jsonl")).unwrap();
    assert!(q.contains("no assistant turn"), "{q}");
    // the share of positions that take the loss: the assistant's words and end-of-turn, far fewer than all
    let loss = m["counts"]["loss_tokens"].as_u64().unwrap();
    let all =
        m["counts"]["train_tokens"].as_u64().unwrap() + m["counts"]["val_tokens"].as_u64().unwrap();
    assert!(loss > 0 && loss * 3 < all, "{loss} of {all}");
    let args = [
        "finetune",
        "--name",
        "chat-lora",
        "--parent",
        "base",
        "--tokens",
        "chat-tok",
        "--lora-targets",
        "all-linear",
        "--steps",
        "30",
        "--seq-len",
        "48",
        "--lr",
        "1e-2",
        "--batch-size",
        "8",
    ];
    let r = run(strata(demo).args(args));
    assert!(r.ok, "{}", r.stderr);
    let losses = common::run_losses(demo, "chat-lora");
    assert!(
        losses[27..].iter().sum::<f32>() < 0.7 * losses[..3].iter().sum::<f32>(),
        "SFT loss did not fall: {losses:?}"
    );
    let mut bad = args;
    bad[2] = "chat-bad";
    bad[12] = "32";
    let r = run(strata(demo).args(bad));
    assert!(
        !r.ok && r.stderr.contains("one example per row of 49 tokens"),
        "{}",
        r.stderr
    );
}

/// The forgetting guard: a gentle step passes; one that wrecks general perplexity is published marked
/// failed and the command fails (also when run again, up to date).
#[test]
fn the_forgetting_guard_marks_a_step_that_forgets_too_much() {
    let (demo, _) = quick_demo();
    let step = |name: &str, lr: &str, steps: &str| {
        run(strata(demo).args([
            "finetune",
            "--name",
            name,
            "--parent",
            "base",
            "--tokens",
            "medical-tokens",
            "--lora",
            "--steps",
            steps,
            "--batch-size",
            "4",
            "--seq-len",
            "64",
            "--lr",
            lr,
            "--guard-dataset",
            "general",
            "--max-general-ppl-increase",
            "0.05",
        ]))
    };
    let verdict = |name: &str| -> serde_json::Value {
        let m: serde_json::Value = serde_json::from_slice(
            &std::fs::read(demo.join("adapters").join(name).join("manifest.json")).unwrap(),
        )
        .unwrap();
        m["counts"]["guard"].clone()
    };
    let r = step("guard-ok", "1e-6", "2");
    assert!(r.ok && r.stderr.contains("passed"), "{}", r.stderr);
    let g = verdict("guard-ok");
    assert_eq!(g["passed"], true);
    assert!(g["increase"].as_f64().unwrap().abs() < 0.05, "{g}");
    let r = step("guard-bad", "1e-2", "10");
    assert!(
        !r.ok && r.stderr.contains("forgetting guard failed"),
        "{}",
        r.stderr
    );
    let g = verdict("guard-bad");
    assert_eq!(g["passed"], false);
    assert!(g["increase"].as_f64().unwrap() > 0.05, "{g}");
    let parent = g["parent_ppl"].as_f64().unwrap();
    assert!((parent - verdict("guard-ok")["parent_ppl"].as_f64().unwrap()).abs() < 1e-9);
    let again = step("guard-bad", "1e-2", "10");
    assert!(
        !again.ok && again.stderr.contains("up to date"),
        "{}",
        again.stderr
    );
    // the report walks guard-bad back to base and shows the verdict and the evaluations stored
    let e = run(strata(demo).args([
        "eval",
        "--model",
        "base",
        "--model",
        "guard-bad",
        "--dataset",
        "general",
    ]));
    assert!(e.ok, "{}", e.stderr);
    let png = demo.join("guard-report.png");
    let r = run(strata(demo)
        .args(["report", "guard-bad", "--png"])
        .arg(&png));
    assert!(r.ok, "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(lines[0].contains("ppl:general"), "{}", r.stdout);
    assert!(lines[2].starts_with("base "), "{}", r.stdout);
    assert!(
        lines[3].starts_with("guard-bad") && lines[3].contains("failed") && lines[3].contains("%)"),
        "{}",
        r.stdout
    );
    assert!(std::fs::metadata(&png).unwrap().len() > 1000);
}

/// The ultrasound task is built from held-out reports only: 4 distinct choices, the report's own
/// impression at the answer's index, none of its reports among the training pairs; seeded.
#[test]
fn report_tasks_come_from_held_out_reports_with_the_right_impression() {
    let (demo, _) = quick_demo();
    let out = demo.join("us-task");
    let r = run(strata(demo)
        .args(["domain", "reports", "--dataset", "ultrasound", "--out"])
        .arg(&out));
    assert!(r.ok, "{}", r.stderr);
    let read = |f: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(out.join(f))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let task = read("ultrasound-test.jsonl");
    let train = read("ultrasound-train-chat.jsonl");
    assert!(!task.is_empty() && !train.is_empty());
    let raw = std::fs::read_to_string(
        common::repo_root().join("fixtures/quick/ultrasound/reports.jsonl"),
    )
    .unwrap();
    for t in &task {
        let choices: Vec<&str> = t["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        let mut distinct = choices.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 4, "{t}");
        let right = choices[usize::try_from(t["answer"].as_u64().unwrap()).unwrap()];
        // the source report (by the findings line) ends with this impression
        let finding = t["context"].as_str().unwrap().lines().last().unwrap();
        let report = raw
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| v["text"].as_str().unwrap().contains(finding))
            .unwrap();
        assert!(
            report["text"]
                .as_str()
                .unwrap()
                .ends_with(&format!("IMPRESSION: {right}")),
            "{t}"
        );
        assert!(
            train.iter().all(|c| c["id"] != t["id"]),
            "a test report is in training: {t}"
        );
    }
    let first = std::fs::read(out.join("ultrasound-test.jsonl")).unwrap();
    let r = run(strata(demo)
        .args(["domain", "reports", "--dataset", "ultrasound", "--out"])
        .arg(&out));
    assert!(r.ok);
    assert_eq!(
        std::fs::read(out.join("ultrasound-test.jsonl")).unwrap(),
        first,
        "seeded"
    );
}
