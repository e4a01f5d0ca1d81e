//! The SQLite lineage registry: one row per artifact with its hash and parents, so lineage queries need not
//! open every manifest. Manifests stay the source of truth; the registry is rebuilt from them on publish.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

use crate::{InputRef, Kind, Manifest, Result, StoreError};

pub struct Registry {
    path: PathBuf,
    conn: Mutex<Connection>,
}

/// One artifact in a lineage tree, with the artifacts (or raw files) it was made from.
#[derive(Debug, Clone)]
pub struct LineageNode {
    pub kind: Kind,
    pub name: String,
    pub sha256: String,
    pub parents: Vec<LineageNode>,
}

impl Registry {
    /// # Errors
    /// When the database cannot be opened or created.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let err = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS artifacts (
                kind TEXT NOT NULL, name TEXT NOT NULL, sha256 TEXT NOT NULL, parents TEXT NOT NULL,
                created_by TEXT NOT NULL, created_at INTEGER NOT NULL, counts TEXT NOT NULL,
                PRIMARY KEY (kind, name));",
        )
        .map_err(err)?;
        Ok(Self {
            path,
            conn: Mutex::new(conn),
        })
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// # Errors
    /// On a database failure.
    pub fn record(&self, m: &Manifest) -> Result<()> {
        let conn = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let parents = serde_json::to_string(&m.inputs).unwrap_or_default();
        let counts = serde_json::Value::Object(m.counts.clone()).to_string();
        conn.execute(
            "INSERT OR REPLACE INTO artifacts VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                m.kind.to_string(),
                m.name,
                m.sha256,
                parents,
                m.created_by,
                i64::try_from(m.created_at).unwrap_or(i64::MAX),
                counts
            ],
        )
        .map_err(self.err())?;
        Ok(())
    }

    /// The hash and parents of one artifact, if recorded.
    ///
    /// # Errors
    /// On a database failure.
    pub fn get(&self, kind: Kind, name: &str) -> Result<Option<(String, Vec<InputRef>)>> {
        let conn = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let row: Option<(String, String)> = conn
            .query_row(
                "SELECT sha256, parents FROM artifacts WHERE kind = ?1 AND name = ?2",
                params![kind.to_string(), name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(self.err())?;
        Ok(row.map(|(sha, parents)| (sha, serde_json::from_str(&parents).unwrap_or_default())))
    }

    /// The tree from an artifact back to the raw files it came from.
    ///
    /// # Errors
    /// On a database failure.
    pub fn lineage(&self, kind: Kind, name: &str) -> Result<Option<LineageNode>> {
        let Some((sha256, parents)) = self.get(kind, name)? else {
            return Ok(None);
        };
        let mut node = LineageNode {
            kind,
            name: name.to_string(),
            sha256,
            parents: Vec::new(),
        };
        for p in parents {
            let child = match p.kind {
                Kind::Raw => None,
                k => self.lineage(k, &p.name)?,
            };
            node.parents.push(child.unwrap_or(LineageNode {
                kind: p.kind,
                name: p.name,
                sha256: p.sha256,
                parents: Vec::new(),
            }));
        }
        Ok(Some(node))
    }
}

impl LineageNode {
    /// Renders the tree, one artifact per line, indented by depth: parent models first, then tokenizer,
    /// token shards, datasets and raw files. An artifact reached a second time is listed with
    /// "(shown above)" instead of its whole subtree again.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut seen = std::collections::HashSet::new();
        self.render_into(&mut out, "", None, &mut seen);
        out
    }

    /// `branch`: `None` for the root, else whether this node is its parent's last child.
    fn render_into(
        &self,
        out: &mut String,
        prefix: &str,
        branch: Option<bool>,
        seen: &mut std::collections::HashSet<(Kind, String)>,
    ) {
        let short = &self.sha256[..self.sha256.len().min(12)];
        let first = seen.insert((self.kind, self.name.clone()));
        let again = if first || self.parents.is_empty() {
            ""
        } else {
            "  (shown above)"
        };
        let (mark, child_prefix) = match branch {
            None => ("", String::new()),
            Some(true) => ("└── ", format!("{prefix}    ")),
            Some(false) => ("├── ", format!("{prefix}│   ")),
        };
        let _ = writeln!(
            out,
            "{prefix}{mark}{} {}  sha256:{short}{again}",
            self.kind, self.name
        );
        if !first {
            return;
        }
        let mut parents: Vec<&LineageNode> = self.parents.iter().collect();
        parents.sort_by_key(|p| rank(p.kind));
        for (i, p) in parents.iter().enumerate() {
            p.render_into(out, &child_prefix, Some(i + 1 == parents.len()), seen);
        }
    }
}

/// The order in which a node's parents are listed.
fn rank(kind: Kind) -> u8 {
    match kind {
        Kind::Model | Kind::Adapter => 0,
        Kind::Tokenizer => 1,
        Kind::Tokens => 2,
        Kind::Dataset => 3,
        Kind::Raw => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lineage_walks_back_to_raw_files() {
        let d = tempfile::tempdir().unwrap();
        let reg = Registry::open(d.path().join("r.sqlite")).unwrap();
        let raw = InputRef {
            kind: Kind::Raw,
            name: "data/a.txt".into(),
            sha256: "aa".repeat(32),
        };
        let mut ds = Manifest::new(Kind::Dataset, "general", "t")
            .with_config(vec![raw], serde_json::Value::Null);
        ds.sha256 = "bb".repeat(32);
        reg.record(&ds).unwrap();
        let parent = InputRef {
            kind: Kind::Dataset,
            name: "general".into(),
            sha256: ds.sha256.clone(),
        };
        let mut model = Manifest::new(Kind::Model, "base", "t")
            .with_config(vec![parent], serde_json::Value::Null);
        model.sha256 = "cc".repeat(32);
        reg.record(&model).unwrap();
        let tree = reg.lineage(Kind::Model, "base").unwrap().unwrap().render();
        assert_eq!(
            tree,
            "model base  sha256:cccccccccccc\n└── dataset general  sha256:bbbbbbbbbbbb\n    └── raw file data/a.txt  sha256:aaaaaaaaaaaa\n"
        );
    }
}
