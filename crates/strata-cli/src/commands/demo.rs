//! `strata demo`: fetch the data if missing, run the demo pipeline (general corpus → tokenizer → base
//! model → medical → ultrasound), then print held-out perplexity of every model on every domain and a
//! sample completion from each; then the image part: simulated ultrasound scans through the image stages to a
//! contact sheet, simulated ultrasound DICOM de-identified, and a vision-language model on the scans (the
//! chain's last model reading them through a ViT trained from scratch) writing a held-out scan's report.

use std::process::ExitCode;
use std::time::Instant;

use strata_serve::Engine;
use strata_store::{Kind, Store};

use crate::cli::DemoArgs;
use crate::pipeline::PipelineFile;

pub const DEMO: &str = include_str!("../../../../configs/demo.toml");
pub const QUICK: &str = include_str!("../../../../configs/demo-quick.toml");

/// The quick demo's fixtures, built into the binary: `(path under fixtures/quick, content)`.
const FIXTURES: [(&str, &str); 6] = [
    (
        "general/sentences.jsonl",
        include_str!("../../../../fixtures/quick/general/sentences.jsonl"),
    ),
    (
        "general/story-0.txt",
        include_str!("../../../../fixtures/quick/general/story-0.txt"),
    ),
    (
        "general/story-1.txt",
        include_str!("../../../../fixtures/quick/general/story-1.txt"),
    ),
    (
        "general/story-2.txt",
        include_str!("../../../../fixtures/quick/general/story-2.txt"),
    ),
    (
        "medical/notes.jsonl",
        include_str!("../../../../fixtures/quick/medical/notes.jsonl"),
    ),
    (
        "ultrasound/reports.jsonl",
        include_str!("../../../../fixtures/quick/ultrasound/reports.jsonl"),
    ),
];

/// Outside a checkout (no `fixtures/quick` here), the built-in fixtures are written into the store's folder
/// and the quick pipeline reads them from there: `strata demo --quick` runs from any directory.
fn with_fixtures(store: &Store, mut pipeline: PipelineFile) -> anyhow::Result<PipelineFile> {
    const HERE: &str = "fixtures/quick/";
    if std::path::Path::new(HERE).is_dir() {
        return Ok(pipeline);
    }
    let dir = store.root().join("demo-fixtures");
    for (path, text) in FIXTURES {
        strata_store::write_atomic(dir.join(path), text.as_bytes())?;
    }
    for step in &mut pipeline.steps {
        if let crate::pipeline::Step::Acquire(a) = step {
            for input in &mut a.inputs {
                if let Some(rest) = input.strip_prefix(HERE) {
                    *input = dir.join(rest).display().to_string();
                }
            }
        }
    }
    Ok(pipeline)
}

pub fn run(store: &Store, a: &DemoArgs) -> anyhow::Result<ExitCode> {
    let t0 = Instant::now();
    let pipeline = match (&a.config, a.quick) {
        (Some(path), _) => PipelineFile::load(path)?,
        (None, true) => with_fixtures(
            store,
            PipelineFile::parse(QUICK, "configs/demo-quick.toml")?,
        )?,
        (None, false) => PipelineFile::parse(DEMO, "configs/demo.toml")?,
    };
    let demo = pipeline
        .demo
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("the pipeline has no [demo] table"))?;
    crate::pipeline::run(store, &pipeline, true)?;

    println!();
    println!("Held-out perplexity (lower is better); rows = models, columns = domains");
    let rows = super::eval::table(store, &demo.models, &demo.eval, demo.max_windows, None)?;
    super::eval::print_table(&demo.eval, &rows);
    println!();
    // Each fine-tuned model against its parent, on its own domain, and on the first (general) data: what
    // it gained and what it forgot.
    for (i, (model, row)) in rows.iter().enumerate().skip(1) {
        let (parent, prow) = &rows[i - 1];
        if let Some(col) = demo.eval.iter().position(|d| d == model) {
            let (before, after) = (prow[col], row[col]);
            let verdict = if after < before {
                "better"
            } else {
                "NOT better"
            };
            println!(
                "{model} vs {parent} on {model}: {before:.2} → {after:.2} ({:+.1}%, {verdict})",
                (after / before - 1.0) * 100.0
            );
        }
        if let Some(general) = demo.eval.first().filter(|d| *d != model) {
            let (before, after) = (prow[0], row[0]);
            let what = if after > before {
                "forgetting"
            } else {
                "nothing forgotten"
            };
            println!(
                "{model} vs {parent} on {general}: {before:.2} → {after:.2} ({:+.1}%, {what})",
                (after / before - 1.0) * 100.0
            );
        }
    }
    println!();
    println!(
        "Sample completions of {:?} (temperature {}, seed {}):",
        demo.prompt, demo.temperature, demo.seed
    );
    for model in &demo.models {
        let engine = Engine::load(model, &store.require(Kind::Model, model)?)?;
        let text = super::generate::sample(
            &engine,
            &demo.prompt,
            demo.max_tokens,
            demo.temperature,
            demo.seed,
        )?;
        println!("  [{model}] {}{}", demo.prompt, text.replace('\n', " ⏎ "));
    }
    println!();
    super::images::demo(store, a.quick && a.config.is_none())?;
    if let Some(parent) = demo.models.last() {
        super::vlm::demo(store, parent, a.quick && a.config.is_none())?;
    }
    println!();
    println!(
        "demo finished in {:.1}s; artifacts in {} (try `strata lineage {}`)",
        t0.elapsed().as_secs_f64(),
        store.root().display(),
        demo.models.last().map_or("base", String::as_str)
    );
    Ok(ExitCode::SUCCESS)
}
