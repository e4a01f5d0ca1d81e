//! `strata ls`: every artifact in the store with its hash and main counts.

use std::process::ExitCode;

use strata_store::{Kind, Store};

pub fn run(store: &Store) -> anyhow::Result<ExitCode> {
    for kind in Kind::STORED {
        for name in store.list(kind)? {
            let m = store.manifest(kind, &name)?;
            let counts: Vec<String> = m
                .counts
                .iter()
                .filter(|(k, _)| *k != "run")
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            println!(
                "{:<10} {:<20} {}  {}",
                kind.to_string(),
                name,
                &m.sha256[..12.min(m.sha256.len())],
                counts.join(" ")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
