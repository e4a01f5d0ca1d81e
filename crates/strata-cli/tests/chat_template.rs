//! Chat templates render character for character as transformers' `apply_chat_template` does, checked
//! against Python jinja2 configured the same way (tests/python/render_chat.py).

#![allow(clippy::unwrap_used)]

mod common;

use serde_json::json;
use strata_tokenize::{ChatMessage, ChatTemplate, CHATML_TEMPLATE, GEMMA_TEMPLATE};

/// Templates in the styles models ship with (written for this test).
const TEMPLATES: &[(&str, &str)] = &[
    ("chatml", CHATML_TEMPLATE),
    ("gemma (Strata's fallback for a Gemma vocabulary)", GEMMA_TEMPLATE),
    (
        "chatml with default system",
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
    ),
    (
        "llama-3 style",
        "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}",
    ),
    (
        "block tags, python methods, loop controls",
        "{{ bos_token }}\n{% for m in messages %}\n    {% if m['role'] == 'system' %}\n        {% continue %}\n    {% endif %}\n    {% if m['role'] not in ['user', 'assistant'] %}\n        {{ raise_exception('unknown role ' + m['role']) }}\n    {% endif %}\n[{{ m['role'].upper() }}] {{ m['content'].strip() }}{% if m['content'].startswith('Q:') %} (question){% endif %}\n\n{% endfor %}\n{% if add_generation_prompt %}[ASSISTANT]{% endif %}\n",
    ),
];

fn conversations() -> Vec<Vec<ChatMessage>> {
    let m = |role: &str, content: &str| ChatMessage {
        role: role.into(),
        content: content.into(),
    };
    vec![
        vec![m("user", "Is the liver enlarged?")],
        vec![
            m("system", "You are terse."),
            m("user", "  Q: spleen size?  "),
            m("assistant", "12 cm."),
            m("user", "超声检查结果 😀\nline two"),
        ],
        vec![m("user", "a"), m("tool", "b")],
    ]
}

/// Every template × conversation × add_generation_prompt, rendered by Strata and by `tests/python/render_chat.py`
/// (`flags`: none for jinja2 configured as transformers configures it, `--transformers` for transformers'
/// own `apply_chat_template`), compared character for character.
fn compare_with_python(flags: &[&str]) {
    let mut cases = Vec::new();
    let mut ours = Vec::new();
    for (name, source) in TEMPLATES {
        let t = ChatTemplate::new(source)
            .unwrap()
            .with_special_tokens("<s>", "</s>");
        for msgs in conversations() {
            for agp in [true, false] {
                cases.push(json!({"template": source, "messages": msgs, "add_generation_prompt": agp, "bos_token": "<s>", "eos_token": "</s>"}));
                ours.push((name, t.render(&msgs, agp)));
            }
        }
    }
    let dir = common::fresh_dir(&format!("chat-template{}", flags.join("")));
    let path = dir.join("cases.json");
    std::fs::write(&path, serde_json::to_string(&cases).unwrap()).unwrap();
    let out = std::process::Command::new(common::venv_python())
        .arg(common::repo_root().join("tests/python/render_chat.py"))
        .args(flags)
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reference.len(), ours.len());
    let mut errors = 0;
    for ((name, got), want) in ours.iter().zip(&reference) {
        match (got, want) {
            (Ok(g), serde_json::Value::String(w)) => {
                assert_eq!(g, w, "template {name:?} {flags:?}");
            }
            (Err(e), serde_json::Value::Object(_)) => {
                errors += 1;
                assert!(e.to_string().contains("unknown role tool"), "{e}");
            }
            (g, w) => panic!("template {name:?}: strata {g:?} vs python {flags:?} {w}"),
        }
    }
    assert_eq!(
        errors, 2,
        "the tool-role conversation raises in the strict template, with and without the prompt"
    );
}

#[test]
fn rendering_matches_python_jinja2() {
    compare_with_python(&[]);
}

#[test]
fn chatml_and_every_template_render_as_transformers_apply_chat_template_does() {
    compare_with_python(&["--transformers"]);
}
