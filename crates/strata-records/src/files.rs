//! Walking an input folder the one way every reader does: depth first, each folder's entries in path order.

use std::path::{Path, PathBuf};

use crate::{io_err, Result};

/// Every file below `dir`, depth first, each folder's entries sorted by path; entries whose name starts with
/// `.` (and all below them) are left out when `skip_hidden`.
///
/// # Errors
/// When a folder cannot be listed (the error names it).
pub fn files_under(dir: &Path, skip_hidden: bool) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    walk(dir, skip_hidden, &mut out)?;
    Ok(out)
}

fn walk(dir: &Path, skip_hidden: bool, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(std::result::Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if skip_hidden
            && p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        if p.is_dir() {
            walk(&p, skip_hidden, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_first_in_name_order_with_hidden_entries_optional() {
        let d = tempfile::tempdir().unwrap();
        for f in ["b.txt", "a/z.txt", "a/c/y.txt", ".hidden/x.txt", ".h.txt"] {
            let p = d.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "x").unwrap();
        }
        let rel = |skip| -> Vec<String> {
            files_under(d.path(), skip)
                .unwrap()
                .iter()
                .map(|p| p.strip_prefix(d.path()).unwrap().display().to_string())
                .collect()
        };
        assert_eq!(rel(true), ["a/c/y.txt", "a/z.txt", "b.txt"]);
        assert_eq!(
            rel(false),
            [".h.txt", ".hidden/x.txt", "a/c/y.txt", "a/z.txt", "b.txt"]
        );
        assert!(files_under(&d.path().join("missing"), true).is_err());
    }
}
