//! The chat template, stored in `tokenizer_config.json` (HF convention) and rendered with minijinja,
//! used unchanged for SFT formatting and for serving.

use serde::{Deserialize, Serialize};

use crate::{Result, TokenizeError};

/// ChatML, as written by Qwen2/SmolLM2 tokenizer configs.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Gemma's turns, for a Gemma vocabulary (`<start_of_turn>`, `<end_of_turn>`) whose file carries no template
/// (llama.cpp's GGUFs of the base models): `<start_of_turn>user` / `<start_of_turn>model`, each turn's text
/// trimmed and closed by `<end_of_turn>`, a system message put before the first user turn's text, `<bos>`
/// first (as Gemma's own template: a chat request is encoded without the tokenizer's special tokens, as
/// transformers' `apply_chat_template` encodes it).
pub const GEMMA_TEMPLATE: &str = "{{ bos_token }}{% if messages and messages[0]['role'] == 'system' %}{% set prefix = messages[0]['content'] | trim + '\n\n' %}{% set turns = messages[1:] %}{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}{% for message in turns %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}{{ '<start_of_turn>' + role + '\n' + (prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}";

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

    #[test]
    fn gemma_renders_the_string_worked_by_hand_from_its_turn_format() {
        let t = ChatTemplate::new(GEMMA_TEMPLATE)
            .unwrap()
            .with_special_tokens("<bos>", "<eos>");
        let m = |role: &str, content: &str| ChatMessage {
            role: role.into(),
            content: content.into(),
        };
        let msgs = vec![
            m("system", "You are terse."),
            m("user", " Liver size? "),
            m("assistant", "14 cm."),
            m("user", "Spleen?"),
        ];
        assert_eq!(
            t.render(&msgs, true).unwrap(),
            "<bos><start_of_turn>user\nYou are terse.\n\nLiver size?<end_of_turn>\n<start_of_turn>model\n14 cm.\
             <end_of_turn>\n<start_of_turn>user\nSpleen?<end_of_turn>\n<start_of_turn>model\n"
        );
        // without a system message, and each prefix of turns a prefix of the whole (what SFT relies on)
        let plain = t.render(&msgs[1..3], false).unwrap();
        assert_eq!(
            plain,
            "<bos><start_of_turn>user\nLiver size?<end_of_turn>\n<start_of_turn>model\n14 cm.<end_of_turn>\n"
        );
        assert!(plain.starts_with(&t.render(&msgs[1..2], true).unwrap()));
    }
}
