//! `strata generate`: one completion from a model in the store, streamed to stdout.

use std::io::Write;
use std::process::ExitCode;

use strata_serve::{Engine, GenParams, Sampling};
use strata_store::{Kind, Store};
use strata_tokenize::ChatMessage;

use crate::cli::GenerateArgs;

pub fn run(store: &Store, a: &GenerateArgs) -> anyhow::Result<ExitCode> {
    let dir = store.require(Kind::Model, &a.model)?;
    let engine = Engine::load(&a.model, &dir)?;
    let prompt = if a.chat {
        engine.render_chat(&[ChatMessage {
            role: "user".into(),
            content: a.prompt.clone(),
        }])?
    } else {
        a.prompt.clone()
    };
    let params = GenParams {
        max_tokens: a.max_tokens,
        sampling: Sampling::from_params(a.temperature, a.top_p),
        seed: a.seed,
        stop: Vec::new(),
    };
    let mut out = std::io::stdout().lock();
    if !a.chat {
        write!(out, "{}", a.prompt)?;
    }
    engine.generate(&prompt, &params, &mut |piece| {
        let _ = write!(out, "{piece}");
        let _ = out.flush();
        true
    })?;
    writeln!(out)?;
    Ok(ExitCode::SUCCESS)
}

/// A completion as a string (for the demo's sample column).
pub fn sample(
    engine: &Engine,
    prompt: &str,
    max_tokens: usize,
    temperature: f32,
    seed: u64,
) -> anyhow::Result<String> {
    let params = GenParams {
        max_tokens,
        sampling: Sampling::from_params(temperature, 0.95),
        seed,
        stop: Vec::new(),
    };
    Ok(engine.generate(prompt, &params, &mut |_| true)?.text)
}
