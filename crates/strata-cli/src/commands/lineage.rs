//! `strata lineage NAME`: the chain from an artifact back to its raw files, with hashes.

use std::process::ExitCode;

use strata_store::{Kind, Store};

use crate::cli::LineageArgs;

pub fn run(store: &Store, a: &LineageArgs) -> anyhow::Result<ExitCode> {
    // A name is looked up among models first (the usual question), then the other kinds.
    for kind in [
        Kind::Model,
        Kind::Adapter,
        Kind::Tokenizer,
        Kind::Tokens,
        Kind::Dataset,
    ] {
        if let Some(tree) = store.registry().lineage(kind, &a.name)? {
            print!("{}", tree.render());
            return Ok(ExitCode::SUCCESS);
        }
    }
    anyhow::bail!(
        "no artifact named {:?} in the store at {} (see `strata ls`)",
        a.name,
        store.root().display()
    )
}
