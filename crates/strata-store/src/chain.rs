//! An adapter's chain: the base model it was trained on and the adapters beneath it (general → medical →
//! ultrasound: the ultrasound adapter's parent is the medical adapter, whose base is the general model).
//! Fine-tuning, merging and serving all read it here.
//!
//! Each adapter records the sha256 of the base it was trained on; a base that has changed since (a
//! re-import, a retrained model under the same name) is refused by name rather than silently combined.

use std::path::PathBuf;

use crate::{Kind, Result, Store, StoreError};

/// A model, or an adapter with its base and the adapters beneath it.
#[derive(Debug, Clone)]
pub struct Chain {
    pub base: String,
    pub base_dir: PathBuf,
    pub base_sha256: String,
    /// (name, folder) of each adapter, in the order they were trained (the named one last); empty for a
    /// model.
    pub adapters: Vec<(String, PathBuf)>,
}

impl Store {
    /// Whether `name` is a model or an adapter of the store (a model when it is neither, so that the error
    /// that follows names a missing model).
    #[must_use]
    pub fn kind_of(&self, name: &str) -> Kind {
        if self.exists(Kind::Adapter, name) && !self.exists(Kind::Model, name) {
            Kind::Adapter
        } else {
            Kind::Model
        }
    }

    /// Looks `name` up as a model, else as an adapter (then follows its chain down to its base).
    ///
    /// # Errors
    /// When nothing of that name exists, or an adapter's base is missing or has changed.
    pub fn chain(&self, name: &str) -> Result<Chain> {
        let (base, names) = if self.kind_of(name) == Kind::Model {
            (name.to_string(), Vec::new())
        } else {
            let m = self.manifest(Kind::Adapter, name)?;
            let base = m
                .counts
                .get("base")
                .and_then(|v| v.as_str())
                .ok_or_else(|| {
                    StoreError::Chain(format!("adapter {name:?} does not name its base model"))
                })?
                .to_string();
            let mut chain: Vec<String> = m
                .counts
                .get("adapters")
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            chain.push(name.to_string());
            (base, chain)
        };
        let base_dir = self.require(Kind::Model, &base)?;
        let base_sha256 = self.manifest(Kind::Model, &base)?.sha256;
        let mut adapters = Vec::new();
        for a in names {
            let m = self.manifest(Kind::Adapter, &a)?;
            let want = m.counts.get("base_sha256").and_then(|v| v.as_str());
            if want != Some(base_sha256.as_str()) {
                return Err(StoreError::Chain(format!(
                    "adapter {a:?} was trained on a base {base:?} with sha256 {}, but the store's {base:?} \
                     has {}: retrain the adapter on this base (or restore the base it was trained on)",
                    short(want.unwrap_or("(none)")),
                    short(&base_sha256)
                )));
            }
            adapters.push((a.clone(), self.require(Kind::Adapter, &a)?));
        }
        Ok(Chain {
            base,
            base_dir,
            base_sha256,
            adapters,
        })
    }
}

fn short(h: &str) -> &str {
    &h[..h.len().min(12)]
}
