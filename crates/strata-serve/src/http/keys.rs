//! API keys from a file: one key per line, then the models it may use, comma-separated, or `*` for all
//! (which also allows loading and unloading adapters). `#` starts a comment.
//!
//! ```text
//! # key                      models
//! sk-radiology-7f3a          base,medical,ultrasound
//! sk-admin-91c2              *
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::ApiError;

#[derive(Debug, Clone)]
pub struct Keys {
    by_key: HashMap<String, Access>,
}

/// What one key may use.
#[derive(Debug, Clone)]
pub struct Access {
    all: bool,
    models: Arc<Vec<String>>,
}

impl Access {
    /// # Errors
    /// 403 when the key may not use `model`.
    pub fn check(&self, model: &str) -> Result<(), ApiError> {
        if self.all || self.models.iter().any(|m| m == model) {
            Ok(())
        } else {
            Err(ApiError::forbidden(&format!(
                "this API key may not use model {model:?}"
            )))
        }
    }

    /// # Errors
    /// 403 unless the key has `*`.
    pub fn check_admin(&self) -> Result<(), ApiError> {
        if self.all {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "loading and unloading adapters needs a key with access to every model (*)",
            ))
        }
    }
}

impl Keys {
    /// Parses a key file's text; `path` names it in errors.
    ///
    /// # Errors
    /// On a line without models, a repeated key, or no key at all, with its line number.
    pub fn parse(text: &str, path: &Path) -> Result<Self, String> {
        let mut by_key = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let at = || format!("{}:{}", path.display(), i + 1);
            let mut parts = line.split_whitespace();
            let key = parts.next().unwrap_or_default();
            let models = parts.collect::<Vec<_>>().join("");
            if models.is_empty() {
                return Err(format!(
                    "{}: key without models (write `KEY model1,model2` or `KEY *`)",
                    at()
                ));
            }
            let list: Vec<String> = models
                .split(',')
                .filter(|m| !m.is_empty())
                .map(String::from)
                .collect();
            let access = Access {
                all: list.iter().any(|m| m == "*"),
                models: Arc::new(list),
            };
            if by_key.insert(key.to_string(), access).is_some() {
                return Err(format!("{}: key repeated", at()));
            }
        }
        if by_key.is_empty() {
            return Err(format!("{}: no API key in the file", path.display()));
        }
        Ok(Self { by_key })
    }

    /// Reads a key file.
    ///
    /// # Errors
    /// When it cannot be read or parsed.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text, path)
    }

    #[must_use]
    pub fn access(&self, key: &str) -> Option<Access> {
        self.by_key.get(key).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_lines_and_errors() {
        let p = Path::new("keys.txt");
        let k = Keys::parse("# comment\nsk-a base, medical  # two\n\nsk-root *\n", p).unwrap();
        let a = k.access("sk-a").unwrap();
        assert!(a.check("base").is_ok() && a.check("medical").is_ok());
        assert_eq!(a.check("ultrasound").unwrap_err().status, 403);
        assert!(a.check_admin().is_err());
        assert!(k.access("sk-root").unwrap().check_admin().is_ok());
        assert!(k.access("sk-b").is_none());
        assert_eq!(
            Keys::parse("sk-a\n", p).unwrap_err(),
            "keys.txt:1: key without models (write `KEY model1,model2` or `KEY *`)"
        );
        assert_eq!(
            Keys::parse("a *\nb x\na y\n", p).unwrap_err(),
            "keys.txt:3: key repeated"
        );
        assert!(Keys::parse("# nothing\n", p)
            .unwrap_err()
            .contains("no API key"));
    }
}
