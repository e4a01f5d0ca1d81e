//! Vision-language models (issue 23): `strata finetune --images` joins a text model of the store and a vision
//! tower into a LLaVA model (stage 1: the projector alone; stage 2: projector + LoRA), published in
//! transformers' LlavaForConditionalGeneration layout and checked against the numpy forward of
//! tests/python/check_llava_model.py; `strata eval --images` scores it beside the majority class and a linear
//! probe; bad input is refused by name.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::{fresh_dir, python_check, run, strata};

fn ok(store: &Path, args: &[&str]) -> common::Run {
    let r = run(strata(store).args(args));
    assert!(r.ok, "strata {args:?}: {}{}", r.stdout, r.stderr);
    r
}

/// `strata LINE` (words split on spaces) in `store`, which must succeed.
fn ok_line(store: &Path, line: &str) -> common::Run {
    ok(store, &line.split_whitespace().collect::<Vec<_>>())
}

/// A store with a tiny text model (`base`, BPE of 300 over the quick fixtures, context 256), simulated
/// ultrasound images split by patient (`us`), and a tiny random DINOv2 tower (16 px, 4 px patches) in
/// `tower/`.
fn setup(store: &Path) {
    ok_line(
        store,
        "acquire --name gen-raw --input fixtures/quick/general",
    );
    ok_line(store, "preprocess --input gen-raw --output general");
    ok_line(
        store,
        "tokenize train --name bpe --dataset general --vocab-size 300",
    );
    ok_line(
        store,
        "tokenize encode --name general-bpe --dataset general --tokenizer bpe",
    );
    let cfg = store.join("tiny.toml");
    std::fs::write(
        &cfg,
        "[model]\nhidden_size = 32\nintermediate_size = 64\nlayers = 2\nheads = 2\nkv_heads = 1\ncontext = 256\n\n\
         [train]\nsteps = 2\nbatch_size = 2\nseq_len = 32\n",
    )
    .unwrap();
    ok_line(
        store,
        &format!(
            "train --name base --tokens general-bpe --tokenizer bpe --config {}",
            cfg.display()
        ),
    );
    let raw = store.join("raw-us");
    ok_line(
        store,
        &format!(
            "domain ultrasound-images --out {} --count 48 --size 48 --seed 3",
            raw.display()
        ),
    );
    ok_line(
        store,
        &format!("acquire --name us-raw --input {}", raw.display()),
    );
    ok_line(
        store,
        "preprocess --input us-raw --output us --split-by-patient --val-fraction 0.15 --test-fraction 0.25",
    );
    python_check(
        "vision_reference.py",
        &[
            store.join("tower").as_os_str(),
            "--seed".as_ref(),
            "21".as_ref(),
        ],
    );
}

fn finetune(store: &Path, extra: &[&str]) -> common::Run {
    let mut args = vec![
        "finetune",
        "--images",
        "us",
        "--image-size",
        "16",
        "--batch-size",
        "4",
    ];
    args.extend_from_slice(extra);
    run(strata(store).args(&args))
}

/// Strata's logits for a prompt with one image (16 px, `rows` image tokens), written for
/// check_llava_model.py.
fn expect_file(store: &Path, model: &str, out: &Path, rows: usize) {
    let dir = store.join("models").join(model);
    let dev = candle_core::Device::Cpu;
    let llava = strata_model::Llava::load(&dir, &dev).unwrap();
    let recs = strata_image::dataset::read_records(&store.join("datasets/us")).unwrap();
    let frame =
        strata_image::pixels::Frame::read_png(&store.join("datasets/us").join(&recs[0].file))
            .unwrap();
    let px = frame.tower_pixels(16, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
    let px = candle_core::Tensor::from_vec(px, (1, 3, 16, 16), &dev).unwrap();
    assert_eq!(llava.cfg.image_seq_length, rows);
    let img = llava.cfg.image_token_id;
    let mut ids = vec![5u32, 17, 40];
    ids.extend(std::iter::repeat_n(img, rows));
    ids.extend([61u32, 7, 99, 12]);
    let t = ids.len();
    let x = candle_core::Tensor::from_vec(ids.clone(), (1, t), &dev).unwrap();
    let logits = llava
        .logits(&x, &llava.image_features(&px).unwrap())
        .unwrap()
        .squeeze(0)
        .unwrap();
    #[allow(clippy::cast_precision_loss)]
    let ids_f: Vec<f32> = ids.iter().map(|&i| i as f32).collect();
    let e = std::collections::HashMap::from([
        (
            "ids".to_string(),
            candle_core::Tensor::from_vec(ids_f, t, &dev).unwrap(),
        ),
        ("pixel_values".to_string(), px),
        ("logits".to_string(), logits),
    ]);
    strata_model::save_safetensors(&e, out, &[]).unwrap();
}

const QUESTION: &str = "Write the report for this ultrasound image.";

/// `strata generate --image PNG` with the report question, greedy, 12 tokens at most.
fn cli_answer(store: &Path, model: &str, png: &Path) -> common::Run {
    let args = [
        "generate",
        "--model",
        model,
        "--image",
        png.to_str().unwrap(),
        "--prompt",
        QUESTION,
        "--temperature",
        "0",
        "--max-tokens",
        "12",
    ];
    ok(store, &args)
}

/// `strata generate --image` (the engine: KV cache, image rows in place of the image tokens' embeddings)
/// answers greedily what the training forward (candle, the whole sequence each step) answers.
fn greedy_answer_matches_the_training_forward(store: &Path, model: &str) {
    let dir = store.join("models").join(model);
    let recs = strata_image::dataset::read_records(&store.join("datasets/us")).unwrap();
    let png = store.join("datasets/us").join(&recs[1].file);
    let question = QUESTION;
    let r = cli_answer(store, model, &png);
    assert!(r.stderr.contains("\"encode_ms\""), "{}", r.stderr);
    // the same answer by argmax over the training forward's logits
    let dev = candle_core::Device::Cpu;
    let llava = strata_model::Llava::load(&dir, &dev).unwrap();
    let frame = strata_image::pixels::Frame::read_png(&png).unwrap();
    let px = frame.tower_pixels(16, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
    let px = candle_core::Tensor::from_vec(px, (1, 3, 16, 16), &dev).unwrap();
    let feats = llava.image_features(&px).unwrap();
    let tk = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let tmpl = std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap();
    assert!(tmpl.contains("im_start"), "a ChatML template");
    let text = format!("<|im_start|>user\n<image>\n{question}<|im_end|>\n<|im_start|>assistant\n");
    let mut ids: Vec<u32> = Vec::new();
    for id in tk.encode(text.as_str(), false).unwrap().get_ids() {
        if *id == llava.cfg.image_token_id {
            ids.extend(std::iter::repeat_n(*id, llava.cfg.image_seq_length));
        } else {
            ids.push(*id);
        }
    }
    // the tokens the engine stops at (the template's end of turn and the model's end-of-text ids)
    let stops = strata_tokenize::stop_ids(&dir, &tk).unwrap();
    assert!(stops.contains(&tk.token_to_id("<|im_end|>").unwrap()));
    let mut answer = Vec::new();
    for _ in 0..12 {
        let x = candle_core::Tensor::from_vec(ids.clone(), (1, ids.len()), &dev).unwrap();
        let logits = llava.logits(&x, &feats).unwrap();
        let last: Vec<f32> = logits
            .squeeze(0)
            .unwrap()
            .get(ids.len() - 1)
            .unwrap()
            .to_vec1()
            .unwrap();
        let next = (0..last.len())
            .max_by(|&a, &b| last[a].total_cmp(&last[b]))
            .unwrap();
        let next = u32::try_from(next).unwrap();
        if stops.contains(&next) {
            break;
        }
        answer.push(next);
        ids.push(next);
    }
    assert!(answer.len() > 3, "a few tokens to compare: {answer:?}");
    let want = tk.decode(&answer, true).unwrap();
    assert_eq!(
        r.stdout.trim_end(),
        want.trim_end(),
        "engine against the training forward"
    );
}

/// `strata serve` with the model: the official openai client sends images as data URLs and as http URLs on
/// the allowed host (the CLI's greedy answer over HTTP, image and text requests in one batch, the feature
/// cache, bad input as 400/413).
fn serves_images_to_the_openai_client(store: &Path, model: &str) {
    let recs = strata_image::dataset::read_records(&store.join("datasets/us")).unwrap();
    let png = |i: usize| store.join("datasets/us").join(&recs[i].file);
    let r = cli_answer(store, model, &png(1));
    let expect = store.join("expect-answer.txt");
    std::fs::write(&expect, r.stdout.trim_end()).unwrap();
    let server = common::serve(
        store,
        &[
            "--max-image-bytes",
            "60000",
            "--image-url-hosts",
            "127.0.0.1",
        ],
    );
    let out = python_check(
        "check_openai_vision.py",
        &[
            server.url.as_ref(),
            model.as_ref(),
            png(1).as_os_str(),
            png(4).as_os_str(),
            "base".as_ref(),
            expect.as_os_str(),
        ],
    );
    assert!(out.contains("OK"), "{out}");
    // the chat page: attach the image, ask, read the answer beside the image
    let out = python_check(
        "check_chat_page_image.py",
        &[
            server.url.as_ref(),
            model.as_ref(),
            png(1).as_os_str(),
            expect.as_os_str(),
        ],
    );
    assert!(out.contains("OK"), "{out}");
}

/// Stage 1 and stage 2 on simulated images; the published folder is LlavaForConditionalGeneration's and its
/// forward is the numpy one's; the cached features are reused; the eval prints the model beside its baselines
/// and stores them; the decoder's text perplexity is scored as a text model's.
#[test]
fn vision_language_model_trains_in_two_stages_and_matches_numpy() {
    let store = fresh_dir("vlm-chain");
    setup(&store);
    let tower = store.join("tower");
    let r = finetune(
        &store,
        &[
            "--parent",
            "base",
            "--vision",
            tower.to_str().unwrap(),
            "--name",
            "vlm-align",
            "--steps",
            "4",
            "--lr",
            "3e-3",
            "--vision-layer",
            "-1",
        ],
    );
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stdout.contains("stage=align"), "{}", r.stdout);
    let dir = store.join("models/vlm-align");
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "LlavaForConditionalGeneration");
    assert_eq!(cfg["vision_feature_layer"], -1);
    assert_eq!(cfg["image_seq_length"], 16);
    // the tokenizer gained <image> after its 300 entries; the decoder's vocabulary holds it
    assert!(
        cfg["image_token_index"].as_u64().unwrap()
            < cfg["text_config"]["vocab_size"].as_u64().unwrap()
    );
    let losses = common::run_losses(&store, "vlm-align");
    assert_eq!(losses.len(), 4);
    let cache: Vec<_> = std::fs::read_dir(store.join("cache/features"))
        .unwrap()
        .collect();
    assert_eq!(cache.len(), 1, "one feature file for the tower and dataset");

    // stage 2 from stage 1: projector + LoRA, the adapter merged into the published decoder
    let args = "--parent vlm-align --vision-stage instruct --name vlm-instruct --steps 3 --lr 3e-3 --lora-r 4 \
                --guard-dataset general --max-general-ppl-increase 10 --tokens general-bpe --replay-share 0.5 \
                --seq-len 64 --reply-weight 0.5";
    let r = finetune(&store, &args.split_whitespace().collect::<Vec<_>>());
    assert!(r.ok, "{}", r.stderr);
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(store.join("models/vlm-instruct/manifest.json")).unwrap(),
    )
    .unwrap();
    let g = &m["counts"]["guard"];
    assert!(
        g["passed"] == true && g["parent_ppl"].as_f64().unwrap() > 1.0,
        "{g}"
    );
    // general text replayed beside the images: 2 windows of 64 tokens a step (half the batch of 4)
    assert_eq!(m["config"]["replay_windows"], 2, "{}", m["config"]);
    // replies weighed half by the token, half by the reply (in the fingerprint)
    assert_eq!(m["config"]["reply_weight"], 0.5, "{}", m["config"]);
    let seen: Vec<u64> = common::run_metrics(&store, "vlm-instruct")
        .iter()
        .map(|r| r["tokens_seen"].as_u64().unwrap())
        .collect();
    assert!(seen[0] >= 2 * 64 && seen[1] - seen[0] >= 2 * 64, "{seen:?}");
    let before = strata_model::read_weights(&dir, &candle_core::Device::Cpu).unwrap();
    let after = strata_model::read_weights(
        &store.join("models/vlm-instruct"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let key = "model.language_model.layers.0.self_attn.q_proj.weight";
    let diff = (&before[key] - &after[key])
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert!(
        diff.to_scalar::<f32>().unwrap() > 0.0,
        "the merged adapter changed q_proj"
    );
    let key = "model.vision_tower.encoder.layer.0.mlp.fc1.weight";
    let flat = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(
        flat(&before[key]) == flat(&after[key]),
        "the tower stays frozen"
    );
    check_and_eval(&store);
    std::fs::remove_dir_all(&store).unwrap();
}

/// The stage-2 model against the numpy forward; its image task beside the baselines, stored; its decoder
/// scored on text as any model.
fn check_and_eval(store: &Path) {
    let store = store.to_path_buf();
    greedy_answer_matches_the_training_forward(&store, "vlm-instruct");
    serves_images_to_the_openai_client(&store, "vlm-instruct");
    // the forward against numpy, in transformers' names and semantics
    let expect = store.join("expect.safetensors");
    // 16 px in 4 px patches, the class token dropped
    expect_file(&store, "vlm-instruct", &expect, 16);

    let out = python_check(
        "check_llava_model.py",
        &[
            store.join("models/vlm-instruct").as_os_str(),
            expect.as_os_str(),
        ],
    );
    assert!(out.contains("OK"), "{out}");

    // the image task beside its baselines, stored; the decoder scored on text as any model
    let r = ok(
        &store,
        &[
            "eval",
            "--model",
            "vlm-instruct",
            "--images",
            "us",
            "--dataset",
            "general",
        ],
    );
    for want in [
        "linear probe",
        "majority class",
        "chance",
        "F1 per finding",
        "ppl general",
    ] {
        assert!(r.stdout.contains(want), "{want}: {}", r.stdout);
    }
    let db = strata_store::Store::open(&store).unwrap();
    let evals = db
        .registry()
        .evals(strata_store::Kind::Model, "vlm-instruct")
        .unwrap();
    // the chain report: base → stage 1 → stage 2, the image task beside the text
    let r = ok(&store, &["report", "vlm-instruct"]);
    for want in [
        "base",
        "vlm-align",
        "vlm-instruct",
        "images:us",
        "ppl:general",
    ] {
        assert!(r.stdout.contains(want), "{want}: {}", r.stdout);
    }
    for metric in ["acc", "probe", "majority", "chance", "report_f1"] {
        assert!(
            evals
                .iter()
                .any(|e| e.eval == "images:us" && e.metric == metric),
            "{metric}: {evals:?}"
        );
    }
}

/// Each mistake is one line naming what is wrong, and nothing is published.
#[test]
fn bad_vision_language_input_is_refused_by_name() {
    let store = fresh_dir("vlm-bad");
    setup(&store);
    let tower = store.join("tower");
    let t = tower.to_str().unwrap();
    // after `--parent base --vision TOWER --name x` unless the case names its own start
    let cases: [(&[&str], &str); 8] = [
        (&["--parent", "base", "--name", "x"], "--vision"),
        (&["--vision-stage", "pretrain"], "pretrain"),
        (&["--vision-layer", "7"], "vision_feature_layer 7"),
        (&["--parent", "nope", "--vision", t, "--name", "x"], "nope"),
        (&["--tokens", "general-bpe"], "only --vision-stage instruct"),
        (&["--grad-accum", "2"], "not supported for vision steps"),
        (&["--vision-features", "cls"], "--vision-features \"cls\""),
        (&["--reply-weight", "1.5"], "--reply-weight 1.5"),
    ];
    for (extra, want) in cases {
        let mut args = Vec::new();
        if !extra.contains(&"--parent") {
            args.extend(["--parent", "base", "--vision", t, "--name", "x"]);
        }
        args.extend_from_slice(extra);
        let r = finetune(&store, &args);
        assert!(!r.ok, "{args:?} succeeded");
        assert!(r.stderr.contains(want), "{args:?}: {}", r.stderr);
    }
    // a text dataset given as images
    let r = run(strata(&store).args([
        "finetune", "--images", "general", "--parent", "base", "--vision", t, "--name", "x",
    ]));
    assert!(!r.ok && r.stderr.contains("text dataset"), "{}", r.stderr);
    // an image that does not decode, named
    let recs = strata_image::dataset::read_records(&store.join("datasets/us")).unwrap();
    std::fs::write(store.join("datasets/us").join(&recs[2].file), b"not a png").unwrap();
    let r = finetune(&store, &["--parent", "base", "--vision", t, "--name", "x"]);
    assert!(!r.ok && r.stderr.contains(&recs[2].id), "{}", r.stderr);
    // a text model scored on images
    let r = run(strata(&store).args(["eval", "--model", "base", "--images", "us"]));
    assert!(!r.ok && r.stderr.contains("text model"), "{}", r.stderr);
    assert!(!store.join("models/x").exists());
    std::fs::remove_dir_all(&store).unwrap();
}

/// `kill -9` during stage 1 once a checkpoint is written: nothing is published; the same command resumes
/// from the checkpoint and publishes the model an uninterrupted run makes, bit for bit.
#[test]
fn a_killed_vision_step_resumes_and_matches_an_uninterrupted_run() {
    let store = fresh_dir("vlm-resume");
    setup(&store);
    let tower = store.join("tower");
    let cmd = |name: &str| {
        let mut c = strata(&store);
        let args = format!(
            "finetune --images us --image-size 16 --batch-size 4 --parent base --vision {} --name {name} \
             --steps 150 --checkpoint-every 20 --lr 3e-3",
            tower.display()
        );
        c.args(args.split_whitespace());
        c
    };
    let mut child = cmd("resumed")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !has_checkpoint(&store.join("runs")) {
        assert!(t0.elapsed().as_secs() < 120, "no checkpoint appeared");
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before it could be killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !store.join("models/resumed").exists(),
        "a killed run publishes nothing"
    );
    let r = run(&mut cmd("resumed"));
    assert!(
        r.ok && r.stderr.contains("resumed from step"),
        "{}",
        r.stderr
    );
    let r = run(&mut cmd("straight"));
    assert!(r.ok && !r.stderr.contains("resumed"), "{}", r.stderr);
    let w = |n: &str| {
        strata_model::read_weights(&store.join("models").join(n), &candle_core::Device::Cpu)
            .unwrap()
    };
    let (a, b) = (w("resumed"), w("straight"));
    let flat = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for k in [
        "model.multi_modal_projector.linear_1.weight",
        "model.multi_modal_projector.linear_2.bias",
    ] {
        assert!(flat(&a[k]) == flat(&b[k]), "{k} differs after resuming");
    }
    std::fs::remove_dir_all(&store).unwrap();
}

/// A checkpoint file in any run folder under `runs`.
fn has_checkpoint(runs: &Path) -> bool {
    let Ok(rd) = std::fs::read_dir(runs) else {
        return false;
    };
    rd.filter_map(Result::ok).any(|e| {
        std::fs::read_dir(e.path().join("checkpoints")).is_ok_and(|c| {
            c.filter_map(Result::ok)
                .any(|f| f.file_name().to_string_lossy().starts_with("checkpoint-"))
        })
    })
}

/// `--vision scratch`: a DINOv2-layout tower trained here on the images' labels (its loss falls; the label
/// head is not published), cached and reused, read by the LLaVA step as a downloaded tower is (the exported
/// folder matches the numpy forward); a size its patches do not divide is refused by name.
#[test]
fn a_tower_trained_from_scratch_is_cached_and_read_as_a_downloaded_one() {
    let store = fresh_dir("vlm-scratch");
    setup(&store);
    let args = |name: &'static str| {
        vec![
            "--parent",
            "base",
            "--vision",
            "scratch",
            "--vision-steps",
            "30",
            "--steps",
            "2",
            "--name",
            name,
        ]
    };
    let r = finetune(&store, &args("s1"));
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stderr.contains("a 4-block ViT (patch 8)"), "{}", r.stderr);
    let towers: Vec<_> = std::fs::read_dir(store.join("cache/towers"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(towers.len(), 1, "{towers:?}");
    let tower = &towers[0];
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tower.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model_type"], "dinov2");
    assert_eq!(
        (cfg["image_size"].as_u64(), cfg["patch_size"].as_u64()),
        (Some(16), Some(8))
    );
    assert!(tower.join("preprocessor_config.json").is_file());
    let (w, _) =
        strata_model::read_safetensors(&tower.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    assert!(w.keys().all(|k| !k.contains("head")), "{:?}", w.keys());
    assert_eq!(w["embeddings.position_embeddings"].dims(), &[1, 5, 128]);
    // the tower's loss fell over its 30 steps
    let tower_run = std::fs::read_dir(store.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("tower-")
        })
        .unwrap();
    let losses: Vec<f64> = std::fs::read_to_string(tower_run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert_eq!(losses.len(), 30);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / 5.0;
    assert!(mean(&losses[25..]) < 0.8 * mean(&losses[..5]), "{losses:?}");
    // the vision-language model reads it as any tower: 2 x 2 patches, the class token dropped
    let llava: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("models/s1/config.json")).unwrap())
            .unwrap();
    assert_eq!(llava["vision_config"]["hidden_size"], 128);
    let expect = store.join("expect-scratch.safetensors");
    expect_file(&store, "s1", &expect, 4);
    let out = python_check(
        "check_llava_model.py",
        &[store.join("models/s1").as_os_str(), expect.as_os_str()],
    );
    assert!(out.contains("OK"), "{out}");
    // a second step with the same images and settings takes the cached tower
    let r = finetune(&store, &args("s2"));
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stderr.contains("cached"), "{}", r.stderr);
    assert_eq!(
        std::fs::read_dir(store.join("cache/towers"))
            .unwrap()
            .count(),
        1
    );
    // 20 px is no multiple of 8 px patches
    let mut bad = vec!["finetune", "--images", "us", "--image-size", "20"];
    bad.extend(args("s3"));
    let r = run(strata(&store).args(&bad));
    assert!(!r.ok);
    assert!(
        r.stderr.contains("--vision scratch at --image-size 20"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("patch_size"), "{}", r.stderr);
}
