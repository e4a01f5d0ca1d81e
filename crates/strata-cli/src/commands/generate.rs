//! `strata generate`: one completion from a model in the store, streamed to stdout.

use std::io::Write;
use std::process::ExitCode;

use strata_serve::{Engine, GenParams, Sampling};
use strata_store::Store;
use strata_tokenize::ChatMessage;

use crate::cli::GenerateArgs;

pub fn run(store: &Store, a: &GenerateArgs) -> anyhow::Result<ExitCode> {
    if let Some(image) = &a.image {
        return super::vlm::generate(store, a, image);
    }
    // an adapter runs unmerged on its base, as the server runs it (one base in memory, the chain's low-rank
    // updates added to the sequence's rows)
    let (engine, adapters) =
        strata_serve::load_target(store, &a.model, strata_engine::parse_weight_type(&a.quant)?)?;
    let prompt = if a.chat {
        engine.render_chat(&[ChatMessage {
            role: "user".into(),
            content: a.prompt.clone(),
        }])?
    } else {
        a.prompt.clone()
    };
    let sampling = Sampling::from_params(a.temperature, a.top_p)
        .with_top_k(a.top_k)
        .with_min_p(a.min_p);
    let mut params = GenParams::new(a.max_tokens, sampling, a.seed);
    params.repetition_penalty = a.repetition_penalty;
    params.stop.clone_from(&a.stop);
    params.ignore_eos = a.ignore_eos;
    params.add_special_tokens = !a.chat;
    let mut out = std::io::stdout().lock();
    if !a.chat {
        write!(out, "{}", a.prompt)?;
    }
    engine.generate_with(&prompt, &params, adapters.as_ref(), &mut |piece| {
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
    let params = GenParams::new(max_tokens, Sampling::from_params(temperature, 0.95), seed);
    Ok(engine.generate(prompt, &params, &mut |_| true)?.text)
}
