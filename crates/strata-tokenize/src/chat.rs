//! The chat template, stored in `tokenizer_config.json` (HF convention) and rendered with minijinja,
//! used unchanged for SFT formatting and for serving.

use serde::{Deserialize, Serialize};

use crate::{Result, TokenizeError};

/// ChatML, as written by Qwen2/SmolLM2 tokenizer configs.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// A compiled chat template, rendered as transformers' `apply_chat_template` renders it: Jinja with
/// `trim_blocks` and `lstrip_blocks`, loop controls, `raise_exception`, Python string methods
/// (`.strip()`, `.startswith()`, …), and `bos_token` / `eos_token` in the context.
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// # Errors
    /// When the template does not compile.
    pub fn new(source: &str) -> Result<Self> {
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| TokenizeError::Template(e.to_string()))?;
        Ok(Self {
            env,
            bos_token: String::new(),
            eos_token: String::new(),
        })
    }

    /// Sets the special tokens the template may refer to.
    #[must_use]
    pub fn with_special_tokens(mut self, bos: &str, eos: &str) -> Self {
        self.bos_token = bos.to_string();
        self.eos_token = eos.to_string();
        self
    }

    /// Reads `chat_template` (and the special tokens) from a `tokenizer_config.json`, falling back to ChatML
    /// when it has none.
    ///
    /// # Errors
    /// When the file exists but is not JSON, or the template does not compile.
    pub fn from_tokenizer_config(path: &std::path::Path) -> Result<Self> {
        let Ok(bytes) = std::fs::read(path) else {
            return Self::new(CHATML_TEMPLATE);
        };
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| TokenizeError::Template(format!("{}: {e}", path.display())))?;
        // a special token is written either as a string or as {"content": "..."}
        let token = |key: &str| match &v[key] {
            serde_json::Value::String(s) => s.clone(),
            other => other["content"].as_str().unwrap_or_default().to_string(),
        };
        let source = v
            .get("chat_template")
            .and_then(|t| t.as_str())
            .unwrap_or(CHATML_TEMPLATE);
        Ok(Self::new(source)
            .map_err(|e| TokenizeError::Template(format!("{}: {e}", path.display())))?
            .with_special_tokens(&token("bos_token"), &token("eos_token")))
    }

    /// # Errors
    /// When rendering fails (e.g. the template raises an exception).
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| TokenizeError::Template(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(|e| TokenizeError::Template(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_renders_the_string_worked_by_hand_from_the_template() {
        let t = ChatTemplate::new(CHATML_TEMPLATE).unwrap();
        let msgs = vec![
            ChatMessage {
                role: "system".into(),
                content: "You are terse.".into(),
            },
            ChatMessage {
                role: "user".into(),
                content: "Liver size?".into(),
            },
        ];
        // expected string worked by hand from the template (tests/chat_template.rs compares every template
        // with Python jinja2 configured as transformers' apply_chat_template)
        assert_eq!(
            t.render(&msgs, true).unwrap(),
            "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nLiver size?<|im_end|>\n<|im_start|>assistant\n"
        );
        assert!(!t.render(&msgs, false).unwrap().ends_with("assistant\n"));
    }
}
