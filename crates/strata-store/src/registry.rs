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

/// One evaluation of an artifact: perplexity on a dataset, or a task's accuracy with its interval.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalRecord {
    pub kind: Kind,
    pub name: String,
    pub sha256: String,
    /// `ppl:<dataset>` or `task:<task>`.
    pub eval: String,
    /// `ppl`, `acc`, `acc_norm`, `chance`.
    pub metric: String,
    pub value: f64,
    pub lo: Option<f64>,
    pub hi: Option<f64>,
    pub n: usize,
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
                PRIMARY KEY (kind, name));
             CREATE TABLE IF NOT EXISTS evals (
                kind TEXT NOT NULL, name TEXT NOT NULL, sha256 TEXT NOT NULL, eval TEXT NOT NULL,
                metric TEXT NOT NULL, value REAL NOT NULL, lo REAL, hi REAL, n INTEGER NOT NULL,
                created_at INTEGER NOT NULL, PRIMARY KEY (kind, name, eval, metric));",
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

    /// Stores one evaluation result against an artifact (replacing an earlier one of the same eval and
    /// metric); `sha256` is the artifact's hash when it was evaluated.
    ///
    /// # Errors
    /// On a database failure.
    pub fn record_eval(&self, r: &EvalRecord) -> Result<()> {
        let conn = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        conn.execute(
            "INSERT OR REPLACE INTO evals VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                r.kind.to_string(),
                r.name,
                r.sha256,
                r.eval,
                r.metric,
                r.value,
                r.lo,
                r.hi,
                i64::try_from(r.n).unwrap_or(i64::MAX),
                i64::try_from(now).unwrap_or(i64::MAX)
            ],
        )
        .map_err(self.err())?;
        Ok(())
    }

    /// Every evaluation stored against an artifact, by eval then metric.
    ///
    /// # Errors
    /// On a database failure.
    pub fn evals(&self, kind: Kind, name: &str) -> Result<Vec<EvalRecord>> {
        let conn = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut st = conn
            .prepare(
                "SELECT sha256, eval, metric, value, lo, hi, n FROM evals WHERE kind = ?1 AND name = ?2
                 ORDER BY eval, metric",
            )
            .map_err(self.err())?;
        let rows = st
            .query_map(params![kind.to_string(), name], |r| {
                Ok(EvalRecord {
                    kind,
                    name: name.to_string(),
                    sha256: r.get(0)?,
                    eval: r.get(1)?,
                    metric: r.get(2)?,
                    value: r.get(3)?,
                    lo: r.get(4)?,
                    hi: r.get(5)?,
                    n: usize::try_from(r.get::<_, i64>(6)?).unwrap_or(0),
                })
            })
            .map_err(self.err())?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(self.err())
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
    fn evaluations_are_stored_against_an_artifact_and_replaced_by_a_newer_one() {
        let d = tempfile::tempdir().unwrap();
        let reg = Registry::open(d.path().join("r.sqlite")).unwrap();
        let rec = |eval: &str, metric: &str, value: f64| EvalRecord {
            kind: Kind::Adapter,
            name: "medical".into(),
            sha256: "ab".repeat(32),
            eval: eval.into(),
            metric: metric.into(),
            value,
            lo: (metric == "acc").then_some(value - 0.05),
            hi: (metric == "acc").then_some(value + 0.05),
            n: 500,
        };
        reg.record_eval(&rec("task:pubmedqa", "acc", 0.4)).unwrap();
        reg.record_eval(&rec("ppl:medical", "ppl", 31.5)).unwrap();
        reg.record_eval(&rec("task:pubmedqa", "acc", 0.55)).unwrap(); // replaces the first
        let got = reg.evals(Kind::Adapter, "medical").unwrap();
        assert_eq!(
            got,
            vec![
                rec("ppl:medical", "ppl", 31.5),
                rec("task:pubmedqa", "acc", 0.55)
            ]
        );
        assert!(reg.evals(Kind::Model, "medical").unwrap().is_empty());
        // kept across reopening
        drop(reg);
        let reg = Registry::open(d.path().join("r.sqlite")).unwrap();
        assert_eq!(reg.evals(Kind::Adapter, "medical").unwrap().len(), 2);
    }

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
