//! `strata eval`: held-out perplexity of each model on each dataset, and multiple-choice task accuracy,
//! as tables; every figure is also stored in the registry against the model (or adapter) it scores.

use std::fmt::Write as _;
use std::process::ExitCode;

use strata_store::Store;

use crate::cli::EvalArgs;

/// Perplexity of `model` on the held-out split of `dataset`, encoded with the model's own tokenizer, on
/// the inference engine (the weight type it is served with).
pub fn perplexity(
    store: &Store,
    model: &strata_engine::CpuModel,
    tokenizer: &strata_tokenize::TokenizerDir,
    dataset: &str,
    max_windows: usize,
) -> anyhow::Result<f64> {
    let ids = strata_tokenize::encode_heldout(
        store,
        dataset,
        tokenizer,
        strata_tokenize::default_val_fraction(),
    )?;
    let ctx = strata_train::eval_window(model.config());
    let p = strata_eval::engine_perplexity(model, &ids, ctx, Some(max_windows))?;
    Ok(p.ppl)
}

/// Evaluates every model (or adapter, merged on its base) on every dataset; rows are models. `want`: the
/// engine's weight type (None: as served).
pub fn table(
    store: &Store,
    models: &[String],
    datasets: &[String],
    max_windows: usize,
    want: Option<strata_engine::WeightType>,
) -> anyhow::Result<Vec<(String, Vec<f64>)>> {
    let mut rows = Vec::new();
    for m in models {
        let (engine, tk, _, _) = strata_train::parent::load_engine(store, m, want)?;
        rows.push((
            m.clone(),
            perplexities(store, &engine, &tk, datasets, max_windows)?,
        ));
    }
    Ok(rows)
}

/// One model's perplexity on each dataset, in order.
fn perplexities(
    store: &Store,
    model: &strata_engine::CpuModel,
    tokenizer: &strata_tokenize::TokenizerDir,
    datasets: &[String],
    max_windows: usize,
) -> anyhow::Result<Vec<f64>> {
    datasets
        .iter()
        .map(|d| perplexity(store, model, tokenizer, d, max_windows))
        .collect()
}

/// Width of a text column: its longest entry and two spaces, at least `min`.
fn width<'a>(min: usize, entries: impl Iterator<Item = &'a str>) -> usize {
    entries.map(|e| e.chars().count() + 2).fold(min, usize::max)
}

pub fn print_table(datasets: &[String], rows: &[(String, Vec<f64>)]) {
    let mw = width(12, rows.iter().map(|(m, _)| m.as_str()));
    let heads: Vec<String> = datasets.iter().map(|d| format!("ppl {d}")).collect();
    let cw: Vec<usize> = heads
        .iter()
        .map(|h| width(18, std::iter::once(h.as_str())))
        .collect();
    let mut header = format!("{:<mw$}", "model");
    for (h, w) in heads.iter().zip(&cw) {
        let _ = write!(header, "{h:>w$}");
    }
    println!("{header}");
    println!("{}", "-".repeat(header.chars().count()));
    for (m, row) in rows {
        let mut line = format!("{m:<mw$}");
        for (v, w) in row.iter().zip(&cw) {
            let _ = write!(line, "{v:>w$.2}");
        }
        println!("{line}");
    }
}

/// `NAME=PATH` or `PATH` (named by its file stem).
fn task_arg(s: &str) -> (String, std::path::PathBuf) {
    match s.split_once('=') {
        Some((n, p)) if !n.contains('/') => (n.to_string(), p.into()),
        _ => {
            let p = std::path::PathBuf::from(s);
            let stem = p
                .file_stem()
                .map_or_else(|| s.to_string(), |x| x.to_string_lossy().into());
            (stem.trim_end_matches(".jsonl").to_string(), p)
        }
    }
}

fn record(
    store: &Store,
    (kind, sha): &(strata_store::Kind, String),
    name: &str,
    eval: &str,
    metric: &str,
    (value, lo, hi, n): (f64, Option<f64>, Option<f64>, usize),
) -> anyhow::Result<()> {
    store.registry().record_eval(&strata_store::EvalRecord {
        kind: *kind,
        name: name.to_string(),
        sha256: sha.clone(),
        eval: eval.to_string(),
        metric: metric.to_string(),
        value,
        lo,
        hi,
        n,
    })?;
    Ok(())
}

/// Scores model `m` on image dataset `d`, prints the table and stores each figure as `images:<d>`.
fn image_task(store: &Store, m: &str, d: &str, split: &str) -> anyhow::Result<()> {
    let s = super::vlm_eval::score(store, m, d, split)?;
    super::vlm_eval::print(m, d, split, &s);
    let art = (
        strata_store::Kind::Model,
        store.manifest(strata_store::Kind::Model, m)?.sha256,
    );
    let eval = format!("images:{d}");
    record(
        store,
        &art,
        m,
        &eval,
        "acc",
        (s.acc, Some(s.lo), Some(s.hi), s.n),
    )?;
    let probe = (s.probe, Some(s.probe_lo), Some(s.probe_hi), s.n);
    record(store, &art, m, &eval, "probe", probe)?;
    record(
        store,
        &art,
        m,
        &eval,
        "majority",
        (s.majority, None, None, s.n),
    )?;
    record(store, &art, m, &eval, "chance", (s.chance, None, None, s.n))?;
    if let Some(f1) = s.report_f1 {
        record(store, &art, m, &eval, "report_f1", (f1, None, None, s.n))?;
    }
    Ok(())
}

fn print_tasks(task_lines: &[(String, String, strata_eval::tasks::McScore)]) {
    let mw = width(14, task_lines.iter().map(|(m, _, _)| m.as_str()));
    let tw = width(16, task_lines.iter().map(|(_, t, _)| t.as_str()));
    println!(
        "{:<mw$}{:<tw$}{:>7}{:>18}{:>10}{:>8}{:>6}",
        "model", "task", "acc", "95% interval", "acc_norm", "chance", "n"
    );
    for (m, label, s) in task_lines {
        println!(
            "{m:<mw$}{label:<tw$}{:>7.3}{:>18}{:>10.3}{:>8.3}{:>6}",
            s.acc,
            format!("[{:.3}, {:.3}]", s.lo, s.hi),
            s.acc_norm,
            s.chance,
            s.n
        );
    }
}

pub fn run(store: &Store, a: &EvalArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        !a.datasets.is_empty() || !a.tasks.is_empty() || !a.images.is_empty(),
        "nothing to evaluate: give --dataset NAME, --task FILE.jsonl and/or --images NAME"
    );
    let want = strata_engine::parse_weight_type(&a.quant)?;
    // every task file is read (and checked) before any model is loaded
    let tasks: Vec<(String, Vec<strata_eval::tasks::McItem>)> = a
        .tasks
        .iter()
        .map(|t| {
            let (name, path) = task_arg(t);
            let mut items = strata_eval::tasks::read_task(&path)?;
            if let Some(n) = a.max_items {
                items.truncate(n);
            }
            Ok((name, items))
        })
        .collect::<anyhow::Result<_>>()?;
    let (mut rows, mut task_lines) = (Vec::new(), Vec::new());
    for m in &a.models {
        for d in &a.images {
            image_task(store, m, d, &a.split)?;
        }
        if a.datasets.is_empty() && a.tasks.is_empty() {
            continue;
        }
        // one engine per model for its perplexities and its tasks
        let (engine, td, kind, sha) = strata_train::parent::load_engine(store, m, want)?;
        let art = (kind, sha);
        // the template the server renders requests with (ChatML when the tokenizer has none)
        let chat = if a.apply_chat_template && !tasks.is_empty() {
            Some(strata_tokenize::ChatTemplate::from_tokenizer_config(
                &td.dir.join("tokenizer_config.json"),
            )?)
        } else {
            None
        };
        let row = perplexities(store, &engine, &td, &a.datasets, a.max_windows)?;
        for (d, &v) in a.datasets.iter().zip(&row) {
            record(
                store,
                &art,
                m,
                &format!("ppl:{d}"),
                "ppl",
                (v, None, None, a.max_windows),
            )?;
        }
        rows.push((m.clone(), row));
        for (name, items) in &tasks {
            let bar = indicatif::ProgressBar::new(items.len() as u64);
            if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            let s = strata_eval::tasks::score(&engine, &td, items, chat.as_ref(), &|done, _| {
                bar.set_position(done as u64);
            })?;
            bar.finish_and_clear();
            let label = if chat.is_some() {
                format!("{name}+chat")
            } else {
                name.clone()
            };
            let eval = format!("task:{label}");
            task_lines.push((m.clone(), label, s.clone()));
            record(
                store,
                &art,
                m,
                &eval,
                "acc",
                (s.acc, Some(s.lo), Some(s.hi), s.n),
            )?;
            record(
                store,
                &art,
                m,
                &eval,
                "acc_norm",
                (s.acc_norm, None, None, s.n),
            )?;
            record(store, &art, m, &eval, "chance", (s.chance, None, None, s.n))?;
        }
    }
    if !a.datasets.is_empty() {
        print_table(&a.datasets, &rows);
    }
    if !tasks.is_empty() {
        print_tasks(&task_lines);
    }
    Ok(ExitCode::SUCCESS)
}
