//! `strata eval`: held-out perplexity of each model on each dataset, as a table.

use std::fmt::Write as _;
use std::process::ExitCode;

use strata_store::Store;

use crate::cli::EvalArgs;

/// Perplexity of `model` on the held-out split of `dataset`, encoded with the model's own tokenizer.
pub fn perplexity(
    store: &Store,
    model: &strata_model::Llama,
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
    let ctx = model.config().max_position_embeddings;
    let p = strata_train::perplexity(model, &ids, ctx, Some(max_windows))?;
    Ok(p.ppl)
}

/// Evaluates every model on every dataset; rows are models.
pub fn table(
    store: &Store,
    models: &[String],
    datasets: &[String],
    max_windows: usize,
) -> anyhow::Result<Vec<(String, Vec<f64>)>> {
    let mut rows = Vec::new();
    for m in models {
        let (model, tk) = strata_train::parent::load_merged(store, m, &candle_core::Device::Cpu)?;
        let mut row = Vec::new();
        for d in datasets {
            row.push(perplexity(store, &model, &tk, d, max_windows)?);
        }
        rows.push((m.clone(), row));
    }
    Ok(rows)
}

pub fn print_table(datasets: &[String], rows: &[(String, Vec<f64>)]) {
    let mut header = format!("{:<12}", "model");
    for d in datasets {
        let _ = write!(header, "{:>18}", format!("ppl {d}"));
    }
    println!("{header}");
    println!("{}", "-".repeat(header.len()));
    for (m, row) in rows {
        let mut line = format!("{m:<12}");
        for v in row {
            let _ = write!(line, "{v:>18.2}");
        }
        println!("{line}");
    }
}

pub fn run(store: &Store, a: &EvalArgs) -> anyhow::Result<ExitCode> {
    let rows = table(store, &a.models, &a.datasets, a.max_windows)?;
    print_table(&a.datasets, &rows);
    Ok(ExitCode::SUCCESS)
}
