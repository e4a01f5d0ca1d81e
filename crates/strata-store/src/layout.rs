//! The on-disk layout of the store (see ARCHITECTURE.md) and publishing an artifact directory atomically.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{
    hash, io_err, manifest::Manifest, registry::Registry, write_json_atomic, FileEntry, Result,
    StoreError,
};

/// The kinds of artifact, each with its own top-level folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Dataset,
    Tokenizer,
    Tokens,
    Model,
    Adapter,
    /// A raw input file outside the store; appears only as a manifest input.
    Raw,
}

impl Kind {
    #[must_use]
    pub fn folder(self) -> &'static str {
        match self {
            Kind::Dataset => "datasets",
            Kind::Tokenizer => "tokenizers",
            Kind::Tokens => "tokens",
            Kind::Model => "models",
            Kind::Adapter => "adapters",
            Kind::Raw => "raw",
        }
    }

    pub const STORED: [Kind; 5] = [
        Kind::Dataset,
        Kind::Tokenizer,
        Kind::Tokens,
        Kind::Model,
        Kind::Adapter,
    ];
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Kind::Dataset => "dataset",
            Kind::Tokenizer => "tokenizer",
            Kind::Tokens => "tokens",
            Kind::Model => "model",
            Kind::Adapter => "adapter",
            Kind::Raw => "raw file",
        };
        f.write_str(s)
    }
}

/// A store rooted at one directory (default `./strata-work`).
pub struct Store {
    root: PathBuf,
    registry: Registry,
}

impl Store {
    /// Opens (creating if needed) the store at `root`.
    ///
    /// # Errors
    /// When the directory or the registry cannot be created.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        for kind in Kind::STORED {
            let d = root.join(kind.folder());
            fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        let runs = root.join("runs");
        fs::create_dir_all(&runs).map_err(io_err(&runs))?;
        let registry = Registry::open(root.join("registry.sqlite"))?;
        Ok(Self { root, registry })
    }

    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    #[must_use]
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The directory of an artifact (which may not exist yet).
    #[must_use]
    pub fn dir(&self, kind: Kind, name: &str) -> PathBuf {
        self.root.join(kind.folder()).join(name)
    }

    /// The directory of a run (checkpoints, metrics, loss curve).
    #[must_use]
    pub fn run_dir(&self, id: &str) -> PathBuf {
        self.root.join("runs").join(id)
    }

    #[must_use]
    pub fn exists(&self, kind: Kind, name: &str) -> bool {
        self.dir(kind, name).join("manifest.json").is_file()
    }

    /// The directory of an existing artifact, or an error that names what is in the store.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when there is no such artifact.
    pub fn require(&self, kind: Kind, name: &str) -> Result<PathBuf> {
        if self.exists(kind, name) {
            return Ok(self.dir(kind, name));
        }
        let known = self.list(kind)?;
        Err(StoreError::NotFound {
            kind,
            name: name.to_string(),
            root: self.root.clone(),
            known: if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            },
        })
    }

    /// # Errors
    /// When the artifact is missing or its manifest is unreadable.
    pub fn manifest(&self, kind: Kind, name: &str) -> Result<Manifest> {
        let dir = self.require(kind, name)?;
        Manifest::read(dir.join("manifest.json"))
    }

    /// The existing artifact if it was made by a step with this fingerprint (same config, same inputs),
    /// so the step can be skipped.
    #[must_use]
    pub fn up_to_date(&self, kind: Kind, name: &str, fingerprint: &str) -> Option<Manifest> {
        let m = Manifest::read(self.dir(kind, name).join("manifest.json")).ok()?;
        (m.fingerprint == fingerprint).then_some(m)
    }

    /// An input reference to an existing artifact (kind, name and payload hash), for a manifest.
    ///
    /// # Errors
    /// When the artifact is missing.
    pub fn input_ref(&self, kind: Kind, name: &str) -> Result<crate::InputRef> {
        let m = self.manifest(kind, name)?;
        Ok(crate::InputRef {
            kind,
            name: name.to_string(),
            sha256: m.sha256,
        })
    }

    /// Names of the complete artifacts of one kind, sorted.
    ///
    /// # Errors
    /// When the folder cannot be listed.
    pub fn list(&self, kind: Kind) -> Result<Vec<String>> {
        let dir = self.root.join(kind.folder());
        let mut names = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && entry.path().join("manifest.json").is_file() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// A fresh, empty staging directory in which to build an artifact before [`Store::publish`].
    ///
    /// # Errors
    /// On a bad name or an I/O failure.
    pub fn staging(&self, kind: Kind, name: &str) -> Result<PathBuf> {
        validate_name(name)?;
        let folder = self.root.join(kind.folder());
        remove_stale_staging(&folder, name);
        let dir = folder.join(format!(".staging-{name}-{}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        }
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(dir)
    }

    /// Hashes the staged files, writes the manifest, and renames the staging directory into place
    /// (replacing an older artifact of the same name), then records it in the registry.
    ///
    /// # Errors
    /// On an I/O or registry failure.
    pub fn publish(&self, staging: &Path, mut manifest: Manifest) -> Result<Manifest> {
        validate_name(&manifest.name)?;
        let mut files = Vec::new();
        for entry in walk(staging)? {
            let rel = entry
                .strip_prefix(staging)
                .unwrap_or(&entry)
                .to_string_lossy()
                .into_owned();
            if rel == "manifest.json" {
                continue;
            }
            let bytes = fs::metadata(&entry).map_err(io_err(&entry))?.len();
            files.push(FileEntry {
                path: rel,
                bytes,
                sha256: hash::sha256_file(&entry)?,
            });
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        manifest.sha256 = hash::sha256_dir(staging)?;
        manifest.files = files;
        write_json_atomic(staging.join("manifest.json"), &manifest)?;
        let target = self.dir(manifest.kind, &manifest.name);
        if target.exists() {
            let trash =
                target.with_file_name(format!(".old-{}-{}", manifest.name, std::process::id()));
            fs::rename(&target, &trash).map_err(io_err(&target))?;
            fs::remove_dir_all(&trash).map_err(io_err(&trash))?;
        }
        fs::rename(staging, &target).map_err(io_err(&target))?;
        self.registry.record(&manifest)?;
        Ok(manifest)
    }
}

/// Removes staging directories of `name` left by processes that no longer run (killed mid-step).
/// A staging directory of a live process is left alone.
fn remove_stale_staging(folder: &Path, name: &str) {
    let prefix = format!(".staging-{name}-");
    let Ok(entries) = fs::read_dir(folder) else {
        return;
    };
    for entry in entries.filter_map(std::result::Result::ok) {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = file_name
            .strip_prefix(&prefix)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        if path.is_dir() {
            out.extend(walk(&path)?);
        } else {
            out.push(path);
        }
    }
    Ok(out)
}

/// # Errors
/// When the name could escape its folder or is empty.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadName(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_then_require_and_list() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let staging = store.staging(Kind::Dataset, "general").unwrap();
        fs::write(staging.join("part-00000.jsonl.zst"), b"x").unwrap();
        let m = store
            .publish(&staging, Manifest::new(Kind::Dataset, "general", "test"))
            .unwrap();
        assert_eq!(m.files.len(), 1);
        assert_eq!(store.list(Kind::Dataset).unwrap(), vec!["general"]);
        assert!(store.require(Kind::Dataset, "general").is_ok());
        assert!(!staging.exists());
    }

    #[test]
    fn staging_left_by_a_dead_process_is_removed() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        // pid 4294967295 cannot be running
        let stale = d.path().join("datasets/.staging-general-4294967295");
        fs::create_dir_all(&stale).unwrap();
        let other = d.path().join("datasets/.staging-medical-4294967295");
        fs::create_dir_all(&other).unwrap();
        let _ = store.staging(Kind::Dataset, "general").unwrap();
        assert!(!stale.exists());
        assert!(
            other.exists(),
            "only the staging of the same name is cleaned"
        );
    }

    #[test]
    fn missing_artifact_error_lists_known_names() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let staging = store.staging(Kind::Model, "base").unwrap();
        store
            .publish(&staging, Manifest::new(Kind::Model, "base", "test"))
            .unwrap();
        let err = store
            .require(Kind::Model, "medcal")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no model named \"medcal\"") && err.contains("known: base"),
            "{err}"
        );
    }

    #[test]
    fn names_that_escape_are_refused() {
        for bad in ["", "../x", "a/b", ".hidden"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        assert!(validate_name("medical-v1.2_x").is_ok());
    }
}
