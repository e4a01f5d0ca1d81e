//! `strata deid`: score the de-identification stage on labelled notes, or redact one text.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use strata_data::preprocess::deid_eval::{evaluate, read_notes, DeidReport};
use strata_data::preprocess::{Deid, PiiMode, PiiRedact};
use strata_deid::lexicon::TAGGER_FILE;
use strata_deid::tagger::read_training;
use strata_deid::{Lexicon, Tagger};

use crate::cli::{DeidCommand, PiiModeArg};

/// The PII stage for `--pii MODE --pii-lexicon DIR|none`. A missing lexicon folder is not quietly replaced by
/// the rule-only mode: the stage then fails (naming the command that builds it) when the pipeline starts;
/// `none` chooses the rule-only mode explicitly, and the dataset's manifest records it (`rules_only`).
pub fn pii_config(mode: PiiModeArg, lexicon: &Path) -> PiiRedact {
    let rules_only = lexicon.as_os_str() == "none";
    PiiRedact {
        mode: match mode {
            PiiModeArg::Placeholder => PiiMode::Placeholder,
            PiiModeArg::Surrogate => PiiMode::Surrogate,
        },
        lexicon: (!rules_only).then(|| lexicon.to_path_buf()),
        rules_only,
        ..PiiRedact::default()
    }
}

/// One line per PII type from a dataset's stats.json: `pii: name 1204, date 311, …`.
pub fn print_found(stats_json: &str) {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(stats_json) else {
        return;
    };
    let stages = v
        .get("stages")
        .and_then(|s| s.as_array())
        .cloned()
        .unwrap_or_default();
    for st in stages {
        if let Some(found) = st.get("found").and_then(|f| f.as_object()) {
            let mut parts: Vec<(String, u64)> = found
                .iter()
                .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                .collect();
            parts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            let line: Vec<String> = parts.iter().map(|(k, n)| format!("{k} {n}")).collect();
            println!(
                "{}: {}",
                st.get("stage").and_then(|s| s.as_str()).unwrap_or("stage"),
                line.join(", ")
            );
        }
    }
}

fn lexicon_or_fail(dir: &Path) -> anyhow::Result<Deid> {
    if !dir.is_dir() {
        anyhow::bail!(
            "no PII lexicon at {} (build it with scripts/fetch-data.sh --lexicon, or pass --lexicon DIR)",
            dir.display()
        );
    }
    Ok(Deid::new(&PiiRedact {
        lexicon: Some(dir.to_path_buf()),
        ..PiiRedact::default()
    })?)
}

pub fn run(c: &DeidCommand) -> anyhow::Result<ExitCode> {
    match c {
        DeidCommand::Dicom(a) => super::images::deid_dicom(a),
        DeidCommand::Eval {
            notes,
            lexicon,
            json,
            show,
            no_tagger,
        } => {
            let mut deid = lexicon_or_fail(lexicon)?;
            if *no_tagger {
                deid = deid.without_tagger();
            }
            let notes = read_notes(notes)?;
            let r: DeidReport = evaluate(&deid, &notes);
            if *json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", r.table());
                for m in r.missed.iter().take(*show) {
                    println!("missed {m}");
                }
                for l in r.lost.iter().take(*show) {
                    println!("lost   {l}");
                }
                for w in r.wrong.iter().take(*show) {
                    println!("wrong  {w}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DeidCommand::Train {
            notes,
            lexicon,
            out,
            epochs,
        } => {
            if !lexicon.is_dir() {
                anyhow::bail!(
                    "no PII lexicon at {} (build it with scripts/fetch-data.sh --lexicon, or pass --lexicon DIR)",
                    lexicon.display()
                );
            }
            if *epochs == 0 {
                anyhow::bail!("--epochs must be at least 1");
            }
            let lex = Lexicon::load_lists(lexicon)?;
            let notes = read_training(notes)?;
            let with_spans = notes.iter().filter(|n| !n.spans.is_empty()).count();
            if with_spans == 0 {
                anyhow::bail!(
                    "none of the {} notes has a labelled identifier: nothing to learn",
                    notes.len()
                );
            }
            let t = std::time::Instant::now();
            let tagger = Tagger::train(&notes, Some(&lex), *epochs);
            let path = out.clone().unwrap_or_else(|| lexicon.join(TAGGER_FILE));
            tagger.save(&path)?;
            println!(
                "tagger: {} notes, {epochs} epochs, {} features, {:.1} s → {}",
                notes.len(),
                tagger.feature_count(),
                t.elapsed().as_secs_f64(),
                path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        DeidCommand::Redact {
            lexicon,
            surrogate,
            id,
        } => {
            let mut cfg = PiiRedact {
                lexicon: Some(lexicon.clone()),
                ..PiiRedact::default()
            };
            if *surrogate {
                cfg.mode = PiiMode::Surrogate;
            }
            if !lexicon.is_dir() {
                anyhow::bail!(
                    "no PII lexicon at {} (build it with scripts/fetch-data.sh --lexicon)",
                    lexicon.display()
                );
            }
            let deid = Deid::new(&cfg)?;
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            let (out, _) = deid.redact_keyed(&text, id);
            print!("{out}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
