//! `strata preprocess`: dataset → normalised, filtered, deduplicated dataset.

use std::process::ExitCode;

use strata_data::preprocess::distributed::{self, Phase};
use strata_data::preprocess::{
    preprocess, C4Quality, CharQuality, DecontamConfig, EvalSet, FineWebQuality, GopherQuality,
    GopherRepetition, LanguageFilter, MinHashConfig, PreprocessConfig, StageConfig,
};
use strata_data::tasks::Task;
use strata_store::Store;

use crate::cli::PreprocessArgs;

pub fn run(store: &Store, a: &PreprocessArgs) -> anyhow::Result<ExitCode> {
    let cfg = config(a)?;
    let by = "strata preprocess";
    if a.slurm {
        crate::slurm::submit_preprocess(store, a, &cfg)?;
        return Ok(ExitCode::SUCCESS);
    }
    run_config(store, a, &cfg, by)
}

/// The stages the flags ask for, in their fixed order.
fn config(a: &PreprocessArgs) -> anyhow::Result<PreprocessConfig> {
    let mut stages = vec![
        StageConfig::Normalize,
        StageConfig::MinLength {
            min_chars: a.min_chars,
        },
    ];
    if !a.languages.is_empty() {
        stages.push(StageConfig::Language(LanguageFilter {
            languages: a.languages.clone(),
            min_confidence: a.min_language_score,
        }));
    }
    if a.gopher {
        stages.push(StageConfig::GopherQuality(GopherQuality::default()));
        stages.push(StageConfig::GopherRepetition(GopherRepetition::default()));
    }
    if a.c4 {
        stages.push(StageConfig::C4Quality(C4Quality::default()));
    }
    if a.fineweb {
        stages.push(StageConfig::FinewebQuality(FineWebQuality::default()));
    }
    if a.char_quality {
        stages.push(StageConfig::CharQuality(CharQuality::default()));
    }
    if !a.eval_sets.is_empty() {
        let mut eval_sets = Vec::new();
        for spec in &a.eval_sets {
            let Some((name, path)) = spec.split_once('=') else {
                anyhow::bail!("--eval-set {spec:?}: expected NAME=PATH");
            };
            eval_sets.push(EvalSet {
                name: name.to_string(),
                path: path.into(),
                fields: a.eval_fields.clone(),
                ids: a.eval_ids.clone(),
            });
        }
        stages.push(StageConfig::Decontaminate(DecontamConfig {
            eval_sets,
            n: 13,
        }));
    }
    if let Some(mode) = a.pii {
        stages.push(StageConfig::PiiRedact(super::deid::pii_config(
            mode,
            &a.pii_lexicon,
        )));
    }
    stages.push(StageConfig::ExactDedup);
    if a.minhash {
        stages.push(StageConfig::MinhashDedup(MinHashConfig::default()));
    }
    Ok(PreprocessConfig {
        stages,
        parquet: a.parquet,
        ..PreprocessConfig::default()
    })
}

/// `--phase P [--task I/N]` of one distributed-preprocess task (`strata preprocess`, and a Slurm job's
/// `strata pipeline run --step K`): cluster and publish are one task; the other phases need `--task`.
///
/// # Errors
/// An unknown phase, a malformed task, or a multi-task phase without one.
pub fn phase_task(phase: &str, task: Option<&str>) -> anyhow::Result<(Phase, Task)> {
    let p = Phase::parse(phase).map_err(anyhow::Error::msg)?;
    let task = match task {
        Some(t) => Task::parse(t).map_err(anyhow::Error::msg)?,
        None if p.single() => Task { index: 0, count: 1 },
        None => anyhow::bail!("--phase {phase} needs --task I/N"),
    };
    Ok((p, task))
}

fn run_config(
    store: &Store,
    a: &PreprocessArgs,
    cfg: &PreprocessConfig,
    by: &str,
) -> anyhow::Result<ExitCode> {
    if let Some(phase) = &a.phase {
        let (phase, task) = phase_task(phase, a.task.as_deref())?;
        let r = distributed::run_task(store, &a.input, &a.output, cfg, by, phase, task)?;
        println!("{}", serde_json::to_string(&r)?);
        return Ok(ExitCode::SUCCESS);
    }
    if a.task.is_some() {
        anyhow::bail!("--task needs --phase (filter, buckets, cluster, write, publish)");
    }
    let r = match a.tasks {
        Some(n) => distributed::run_all(store, &a.input, &a.output, cfg, by, n)?,
        None => preprocess(store, &a.input, &a.output, cfg, by)?,
    };
    let stats = std::fs::read_to_string(
        store
            .dir(strata_store::Kind::Dataset, &a.output)
            .join("stats.json"),
    )
    .unwrap_or_default();
    println!(
        "dataset {}{}",
        a.output,
        if r.skipped {
            " (up to date, skipped)"
        } else {
            ""
        }
    );
    println!("{stats}");
    super::deid::print_found(&stats);
    Ok(ExitCode::SUCCESS)
}
