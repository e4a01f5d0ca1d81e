//! The `strata` binary: one subcommand per stage of a model's life. `main` only parses and dispatches.

use std::process::ExitCode;

use clap::Parser;

mod cli;
mod commands;
mod dist;
mod pipeline;
mod slurm;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `purge_delay` option (its index in `mi_option_t`, v2 and v3 alike).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> ExitCode {
    // Never hand freed memory back to the OS. Candle allocates every intermediate afresh; with purging, each
    // training step faulted its buffers in again from zeroed pages (20% of a step in the kernel's
    // clear_page, measured with perf on bench/train.py's model): keeping them made a step 1.2× faster for
    // 3% more peak memory. Set before any pool starts.
    // SAFETY: sets one integer option of the allocator; called once, before other threads exist.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
    }
    let args = cli::Cli::parse();
    // `train` and `finetune` on token data may run as several MPI ranks; every other command is one process
    let trains = match &args.command {
        cli::Command::Train(_) => true,
        cli::Command::Finetune(f) => f.images.is_none(),
        // one step of a pipeline (a Slurm job's command): checked against the step's type when it runs
        cli::Command::Pipeline(cli::PipelineCommand::Run(r)) => r.step.is_some(),
        _ => false,
    };
    let ranks = match dist::start(trains) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            // the other ranks of a data-parallel run would wait for this one for ever: end them all
            ranks.abort_others(1);
            ExitCode::FAILURE
        }
    }
}

fn run(args: &cli::Cli) -> anyhow::Result<ExitCode> {
    // the other ranks of a data-parallel run would repeat rank 0's lines: they say only what goes wrong
    let filter = match (args.verbose, dist::with_comm(|c| c.rank())) {
        (_, 1..) => "warn",
        (true, 0) => "debug",
        (false, 0) => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG")
                .unwrap_or_else(|_| filter.into()),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .init();
    // One thread setting (`--threads`, or STRATA_THREADS through clap), passed as a value to each pool that
    // computes: rayon's global pool (preprocessing, the training kernels' gemm calls) and the inference
    // engine's own. candle reads its matmul's thread count only from RAYON_NUM_THREADS, so that one variable
    // is set for it, before any of its work starts.
    let threads = args
        .threads
        .filter(|&n| n > 0)
        .unwrap_or_else(default_threads);
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .map_err(|e| anyhow::anyhow!("starting {threads} worker threads: {e}"))?;
    strata_engine::set_threads(threads);
    commands::dispatch(args)
}

/// Measured on 2 vCPUs (README, "Using it step by step", on `--threads`): both cores help the matmul-bound
/// steps of these models.
/// Ranks of one data-parallel run that share the machine divide its cores.
fn default_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    (cores / dist::local_ranks()).max(1)
}
