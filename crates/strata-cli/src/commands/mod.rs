//! One file per subcommand; `dispatch` routes the parsed arguments.

use std::process::ExitCode;

use strata_store::Store;

use crate::cli::{BenchCommand, Cli, Command, DomainCommand, PipelineCommand};

mod acquire;
mod bench;
mod deid;
pub mod demo;
pub mod eval;
mod export;
mod generate;
pub(crate) mod images;
pub mod import;
mod lineage;
mod ls;
mod merge;
pub mod preprocess;
mod serve;
mod tokenize;
pub mod train;
mod vit;
pub mod vlm;
mod vlm_eval;

pub fn open_store(args: &Cli) -> anyhow::Result<Store> {
    Store::open(&args.workdir)
        .map_err(|e| anyhow::anyhow!("cannot open the store at {}: {e}", args.workdir.display()))
}

pub fn dispatch(args: &Cli) -> anyhow::Result<ExitCode> {
    // de-identification reads and writes plain files: no store is opened (or created)
    if let Command::Deid(c) = &args.command {
        return deid::run(c);
    }
    if let Command::Domain(c) = &args.command {
        return domain(args, c);
    }
    let store = open_store(args)?;
    match &args.command {
        Command::Acquire(a) => match strata_image::acquire::image_inputs(&a.inputs)? {
            Some(found) => images::acquire(&store, a, &found),
            None => acquire::run(&store, a),
        },
        Command::Preprocess(a)
            if strata_image::dataset::is_image_dataset(
                &store.dir(strata_store::Kind::Dataset, &a.input),
            ) =>
        {
            images::preprocess(&store, a)
        }
        Command::Preprocess(a) => {
            let image = images::image_flags(&a.images);
            if !image.is_empty() {
                anyhow::bail!(
                    "{} is a text dataset: {} are image stages",
                    a.input,
                    image.join(", ")
                );
            }
            preprocess::run(&store, a)
        }
        Command::Tokenize(c) => tokenize::run(&store, c),
        Command::Train(a) => train::run_train(&store, a),
        Command::Finetune(a) => train::run_finetune(&store, a),
        Command::Eval(a) => eval::run(&store, a),
        Command::Generate(a) => generate::run(&store, a),
        Command::Serve(a) => serve::run(store, a),
        Command::Pipeline(PipelineCommand::Run(a)) => {
            let p = crate::pipeline::PipelineFile::load(&a.file)?;
            match (a.executor.as_str(), a.step) {
                ("slurm", _) => crate::slurm::submit(&store, a, &p)?,
                (_, Some(k)) => crate::pipeline::run_one(&store, &p, k, a)?,
                _ => crate::pipeline::run(&store, &p, true)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(a) => demo::run(&store, a),
        Command::Import(a) => import::run(&store, a),
        Command::Deid(c) => deid::run(c),
        Command::Bench(BenchCommand::Decode(a)) => bench::run(&store, a),
        Command::Bench(BenchCommand::Logits(a)) => bench::logits(&store, a),
        Command::Export(a) => export::run(&store, a),
        Command::Merge(a) => merge::run(&store, a),
        Command::Report(a) => {
            let steps = strata_eval::report::chain(&store, &a.name)?;
            print!("{}", strata_eval::report::table(&steps));
            if let Some(png) = &a.png {
                strata_eval::report::plot(&steps, png)?;
                println!("report drawn to {}", png.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Lineage(a) => lineage::run(&store, a),
        Command::Show(a) => images::show(&store, a),
        Command::Ls => ls::run(&store),
        Command::Domain(c) => domain(args, c),
    }
}

/// `strata domain`: the simulator needs no store (none is created); the others read a dataset of one.
fn domain(args: &Cli, c: &DomainCommand) -> anyhow::Result<ExitCode> {
    match c {
        DomainCommand::Reports {
            dataset,
            out,
            prefix,
            seed,
        } => {
            let dir = open_store(args)?.require(strata_store::Kind::Dataset, dataset)?;
            let c = strata_domain::build_report_task(&dir, out, prefix, *seed)?;
            println!(
                "{dataset} → {}: {} held-out reports as a 4-choice task, {} training reports as chat pairs, \
                 {} without FINDINGS/IMPRESSION skipped",
                out.display(),
                c.test,
                c.train,
                c.skipped
            );
            Ok(ExitCode::SUCCESS)
        }
        DomainCommand::Terms {
            dataset,
            out,
            prefix,
        } => {
            let dir = open_store(args)?.require(strata_store::Kind::Dataset, dataset)?;
            let n = strata_domain::build_terminology_pairs(&dir, out, prefix)?;
            println!("{dataset} → {}: {n} terminology pairs", out.display());
            Ok(ExitCode::SUCCESS)
        }
        DomainCommand::Pubmedqa { out } => {
            let c = strata_domain::build_pubmedqa(out)?;
            println!(
                "pubmedqa → {}: {} test questions (task + abstracts), {} training items (documents + chat)",
                out.display(),
                c.test,
                c.train
            );
            Ok(ExitCode::SUCCESS)
        }
        DomainCommand::UltrasoundImages {
            out,
            count,
            seed,
            size,
            dicom,
            frames,
        } => images::simulate(out, *count, *seed, *size, *dicom, *frames),
    }
}
