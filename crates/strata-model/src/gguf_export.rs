//! Export a Hugging Face folder to a llama.cpp GGUF file (F32, F16 or Q8_0 weights; norms stay F32), with
//! the tokenizer (byte-level BPE vocabulary, merges, special tokens) and chat template in its metadata.
//! Llama and Mistral are written as llama.cpp's `llama` (Q and K permuted into its interleaved-RoPE row order,
//! the inverse of the import), Qwen2 and Qwen3 as `qwen2` and `qwen3` (rows as they are, biases, Qwen3's
//! query and key norms), Gemma 3 as `gemma3` (its four norms per layer under llama.cpp's names, every gain
//! written as 1 + w as llama.cpp's converter writes it, and its SentencePiece vocabulary: the tokens, scores
//! from which the import rebuilds the same merges, and token types).

use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use serde_json::Value as Json;

use crate::{Context, LlamaConfig, ModelError, Result};

/// The weight type of an exported GGUF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufType {
    F32,
    F16,
    Q8_0,
}

impl GgufType {
    fn ggml(self) -> GgmlDType {
        match self {
            GgufType::F32 => GgmlDType::F32,
            GgufType::F16 => GgmlDType::F16,
            GgufType::Q8_0 => GgmlDType::Q8_0,
        }
    }
    /// llama.cpp's `general.file_type` (LLAMA_FTYPE_ALL_F32 = 0, MOSTLY_F16 = 1, MOSTLY_Q8_0 = 7).
    fn file_type(self) -> u32 {
        match self {
            GgufType::F32 => 0,
            GgufType::F16 => 1,
            GgufType::Q8_0 => 7,
        }
    }
}

impl std::str::FromStr for GgufType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(GgufType::F32),
            "f16" => Ok(GgufType::F16),
            "q8_0" => Ok(GgufType::Q8_0),
            other => Err(format!(
                "unknown GGUF type {other:?} (choose f32, f16 or q8_0)"
            )),
        }
    }
}

/// HF name → GGUF name in a model of `cfg`: as [`gguf_name`], except Gemma 3's sandwich norms (the inverse
/// of [`crate::gguf::hf_name_of`]).
fn gguf_name_of(cfg: &LlamaConfig, hf: &str) -> Option<String> {
    if cfg.sandwich_norms() {
        if let Some((layer, part)) = hf
            .strip_prefix("model.layers.")
            .and_then(|r| r.split_once('.'))
        {
            if let Some((g, _)) = crate::gguf::SANDWICH_NORMS.iter().find(|(_, h)| *h == part) {
                return Some(format!("blk.{layer}.{g}"));
            }
        }
    }
    gguf_name(hf)
}

/// HF name → GGUF name.
fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let g = match part {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.o_proj.bias" => "attn_output.bias",
        "self_attn.q_norm.weight" => "attn_q_norm.weight",
        "self_attn.k_norm.weight" => "attn_k_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}"))
}

/// llama.cpp's architecture for the model: `qwen2`, `qwen3`, or `llama` (Llama and Mistral; Q and K
/// permuted for its interleaved rotation).
fn gguf_arch(cfg: &LlamaConfig) -> &'static str {
    if cfg.gemma() {
        "gemma3"
    } else if cfg.architectures.iter().any(|a| a == "Qwen3ForCausalLM") {
        "qwen3"
    } else if cfg.architectures.iter().any(|a| a == "Qwen2ForCausalLM") {
        "qwen2"
    } else {
        "llama"
    }
}

/// llama.cpp's `permute`: HF rows (n, 2, hd/2) → (n, hd/2, 2).
fn permute(w: &Tensor, n_head: usize) -> Result<Tensor> {
    let (rows, _) = w.dims2().ctx("permute")?;
    crate::gguf::reorder_rows(w, &crate::gguf::qk_row_order(rows, n_head, false))
}

fn u32v(x: usize) -> Value {
    Value::U32(u32::try_from(x).unwrap_or(u32::MAX))
}

#[allow(clippy::cast_possible_truncation)]
fn f32v(x: f64) -> Value {
    Value::F32(x as f32)
}

/// What GGUF stores of a BPE tokenizer: byte-level (`gpt2`) or SentencePiece (`llama`).
struct Vocab {
    /// By id.
    tokens: Vec<String>,
    /// llama.cpp token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte.
    types: Vec<i32>,
    merges: Vec<String>,
    /// llama.cpp's pre-tokenizer name.
    pre: &'static str,
    /// A SentencePiece vocabulary: its scores (for byte-level BPE, None) and whether "▁" goes before the text.
    spm: Option<(Vec<f32>, bool)>,
}

/// SentencePiece scores that give back `merges`: llama.cpp joins the pair whose joined piece scores highest,
/// and the import ranks every split of a piece by that piece's score, so a piece scores minus the rank of the
/// first merge that makes it; a piece no merge makes (characters, bytes, specials) scores below them all, so
/// that the import ranks any split of it after every merge.
fn spm_scores(tokens: &[String], merges: &[String]) -> Vec<f32> {
    let ids: std::collections::HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    #[allow(clippy::cast_precision_loss)]
    let mut scores = vec![-((merges.len() + 1) as f32); tokens.len()];
    let mut made = vec![false; tokens.len()];
    for (rank, m) in merges.iter().enumerate() {
        let joined: String = m.split(' ').collect();
        if let Some(&id) = ids.get(joined.as_str()) {
            if !made[id] {
                made[id] = true;
                #[allow(clippy::cast_precision_loss)]
                {
                    scores[id] = -((rank + 1) as f32);
                }
            }
        }
    }
    scores
}

/// SentencePiece's byte-fallback pieces <0x00>..<0xFF> get llama.cpp's byte type (6).
fn mark_bytes(tokens: &[String], types: &mut [i32]) {
    for (t, ty) in tokens.iter().zip(types.iter_mut()) {
        let byte = t.len() == 6
            && t.starts_with("<0x")
            && t.ends_with('>')
            && u8::from_str_radix(&t[3..5], 16).is_ok();
        if byte && *ty == 1 {
            *ty = 6;
        }
    }
}

/// Whether a tokenizer.json is a SentencePiece BPE as Hugging Face writes Gemma's and Llama 2's (and as the
/// import writes a `llama` GGUF vocabulary): byte fallback, spaces replaced by "▁" in the normaliser, no
/// pre-tokenizer. Returns whether a "▁" is prepended to the text.
fn spm_form(tk: &Json) -> Option<bool> {
    if tk["model"]["byte_fallback"] != true || !tk["pre_tokenizer"].is_null() {
        return None;
    }
    let n = &tk["normalizer"];
    let steps: Vec<&Json> = if n["type"] == "Sequence" {
        n["normalizers"].as_array()?.iter().collect()
    } else {
        vec![n]
    };
    let replaces = steps.iter().any(|s| {
        s["type"] == "Replace" && s["pattern"]["String"] == " " && s["content"] == "\u{2581}"
    });
    let prepends = steps
        .iter()
        .any(|s| s["type"] == "Prepend" && s["prepend"] == "\u{2581}");
    let known = steps
        .iter()
        .all(|s| s["type"] == "Replace" || s["type"] == "Prepend");
    (replaces && known).then_some(prepends)
}

/// The regex of a `Sequence [Split (regex, isolated), ByteLevel]` pre-tokenizer (Llama 3's and Qwen2's).
fn split_regex(pre: &Json) -> Option<&str> {
    let s = pre["pretokenizers"].as_array()?;
    (pre["type"] == "Sequence"
        && s.len() == 2
        && s[0]["type"] == "Split"
        && s[0]["behavior"] == "Isolated"
        && s[1]["type"] == "ByteLevel")
        .then(|| s[0]["pattern"]["Regex"].as_str())
        .flatten()
}

/// The tokens of a tokenizer.json by id (its vocabulary, then its added tokens) and llama.cpp's type of each.
fn tokens_and_types(
    tk: &Json,
    spm: bool,
    bad: &dyn Fn(String) -> ModelError,
) -> Result<(Vec<String>, Vec<i32>)> {
    let vocab = tk["model"]["vocab"]
        .as_object()
        .ok_or_else(|| bad("model.vocab is missing".into()))?;
    let mut tokens = vec![String::new(); vocab.len()];
    let mut types = vec![1i32; vocab.len()];
    for (tok, id) in vocab {
        let id = id
            .as_u64()
            .and_then(|i| usize::try_from(i).ok())
            .filter(|&i| i < tokens.len())
            .ok_or_else(|| bad(format!("bad id for token {tok:?}")))?;
        tokens[id].clone_from(tok);
    }
    for added in tk["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(content)) = (
            added["id"].as_u64().and_then(|i| usize::try_from(i).ok()),
            added["content"].as_str(),
        ) else {
            continue;
        };
        if id >= tokens.len() {
            tokens.resize(id + 1, String::new());
            types.resize(id + 1, 1);
        }
        tokens[id] = content.to_string();
        types[id] = if tk["model"]["unk_token"].as_str() == Some(content) {
            2
        } else if added["special"].as_bool().unwrap_or(false) {
            3
        } else {
            4
        };
    }
    if spm {
        mark_bytes(&tokens, &mut types);
    }
    Ok((tokens, types))
}

/// Reads a tokenizer.json into what GGUF stores.
fn tokenizer_metadata(path: &Path) -> Result<Vocab> {
    let bad = |reason: String| ModelError::Weights {
        path: path.into(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
        path: path.into(),
        source,
    })?;
    let tk: Json = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    let spm = spm_form(&tk);
    if tk["model"]["type"] != "BPE" {
        return Err(bad(format!(
            "only BPE tokenizers can be exported to GGUF (found {})",
            tk["model"]["type"]
        )));
    }
    let (tokens, types) = tokens_and_types(&tk, spm.is_some(), &bad)?;
    let merges: Vec<String> = tk["model"]["merges"]
        .as_array()
        .ok_or_else(|| bad("model.merges is missing".into()))?
        .iter()
        .map(|m| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(pair) if pair.len() == 2 => Ok(format!(
                "{} {}",
                pair[0].as_str().unwrap_or(""),
                pair[1].as_str().unwrap_or("")
            )),
            other => Err(bad(format!("unexpected merge {other}"))),
        })
        .collect::<Result<_>>()?;
    let pre = &tk["pre_tokenizer"];
    let is_byte_level = |p: &Json| p["type"] == "ByteLevel";
    if let Some(prefix) = spm {
        let scores = spm_scores(&tokens, &merges);
        return Ok(Vocab {
            tokens,
            types,
            merges: Vec::new(),
            pre: "default",
            spm: Some((scores, prefix)),
        });
    }
    let pre_name = if is_byte_level(pre) {
        "gpt2"
    } else if pre["type"] == "Sequence"
        && pre["pretokenizers"].as_array().is_some_and(|s| {
            s.len() == 2
                && s[0]["type"] == "Digits"
                && s[0]["individual_digits"] == true
                && is_byte_level(&s[1])
        })
    {
        "smollm"
    } else if let Some(regex) = split_regex(pre) {
        // the split regexes of Llama 3 and Qwen2 differ in their digits: runs of up to three, or one by one
        if regex.contains(r"\p{N}{1,3}") {
            "llama-bpe"
        } else if regex.contains(r"|\p{N}|") {
            "qwen2"
        } else {
            return Err(bad(format!(
                "pre-tokenizer split {regex:?} has no llama.cpp equivalent that Strata knows"
            )));
        }
    } else {
        return Err(bad(format!(
            "pre-tokenizer {pre} has no llama.cpp equivalent that Strata knows"
        )));
    };
    Ok(Vocab {
        tokens,
        types,
        merges,
        pre: pre_name,
        spm: None,
    })
}

/// The weights under GGUF names, Q/K permuted, quantised to `ty` (norms F32, ragged rows F16).
fn quantize_all(dir: &Path, cfg: &LlamaConfig, ty: GgufType) -> Result<Vec<(String, QTensor)>> {
    // one file or shards, any float dtype
    let tensors = crate::read_weights(dir, &Device::Cpu)?;
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let Some(g) = gguf_name_of(cfg, name) else {
            continue;
        };
        if cfg.tie_word_embeddings && g == "output.weight" {
            continue;
        }
        let mut t = tensors[name]
            .to_dtype(candle_core::DType::F32)
            .map_err(|e| ModelError::Weights {
                path: dir.to_path_buf(),
                reason: format!("{name}: {}", crate::candle_msg(&e)),
            })?;
        let shift = cfg.norm_shift();
        if shift != 0.0 && name.ends_with("norm.weight") {
            // Gemma's gains as llama.cpp's converter writes them: 1 + w (the import takes the 1 back off)
            t = t
                .affine(1.0, f64::from(shift))
                .map_err(|e| ModelError::Weights {
                    path: dir.to_path_buf(),
                    reason: format!("{name}: {}", crate::candle_msg(&e)),
                })?;
        }
        if crate::gguf::qk_permuted(cfg) && name.ends_with("q_proj.weight") {
            t = permute(&t, cfg.num_attention_heads)?;
        } else if crate::gguf::qk_permuted(cfg) && name.ends_with("k_proj.weight") {
            t = permute(&t, cfg.kv_heads())?;
        }
        // 1-D tensors (norm gains) stay F32, as llama.cpp's converter writes them; a matrix whose rows are
        // not a whole number of Q8_0 blocks (32 values) falls back to F16, as the converter does too.
        let row = t.dims().last().copied().unwrap_or(0);
        let dtype = match (t.rank(), ty) {
            (1, _) => GgmlDType::F32,
            (_, GgufType::Q8_0) if row % GgmlDType::Q8_0.block_size() != 0 => {
                tracing::warn!("{name}: rows of {row} are not whole Q8_0 blocks; writing F16");
                GgmlDType::F16
            }
            _ => ty.ggml(),
        };
        let q = QTensor::quantize(&t, dtype).map_err(|e| ModelError::Weights {
            path: dir.to_path_buf(),
            reason: format!("{name}: {e}"),
        })?;
        out.push((g, q));
    }
    Ok(out)
}

/// llama.cpp's metadata keys for the architecture, the tokenizer and the chat template.
fn metadata(
    name: String,
    cfg: &LlamaConfig,
    vocab: Vocab,
    tc: &Json,
    ty: GgufType,
) -> Vec<(String, Value)> {
    let token_id = |key: &str| {
        tc[key]
            .as_str()
            .and_then(|t| vocab.tokens.iter().position(|x| x == t))
    };
    let ids: Vec<(&str, Option<usize>)> = [
        ("bos_token_id", "bos_token"),
        ("eos_token_id", "eos_token"),
        ("padding_token_id", "pad_token"),
        ("unknown_token_id", "unk_token"),
    ]
    .into_iter()
    .map(|(g, k)| (g, token_id(k)))
    .collect();
    let arch = gguf_arch(cfg);
    let k = |key: &str| format!("{arch}.{key}");
    // llama.cpp needs a token for every row of the embedding: rows past the vocabulary are its padding
    let (mut tokens, mut types) = (vocab.tokens, vocab.types);
    let mut spm = vocab.spm;
    while tokens.len() < cfg.vocab_size {
        tokens.push(format!("[PAD{}]", tokens.len()));
        types.push(5);
        if let Some((scores, _)) = &mut spm {
            scores.push(0.0);
        }
    }
    let tok_model = if spm.is_some() { "llama" } else { "gpt2" };
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("general.name".into(), Value::String(name)),
        ("general.file_type".into(), Value::U32(ty.file_type())),
        ("general.quantization_version".into(), Value::U32(2)),
        (k("block_count"), u32v(cfg.num_hidden_layers)),
        (k("context_length"), u32v(cfg.max_position_embeddings)),
        (k("embedding_length"), u32v(cfg.hidden_size)),
        (k("feed_forward_length"), u32v(cfg.intermediate_size)),
        (k("attention.head_count"), u32v(cfg.num_attention_heads)),
        (k("attention.head_count_kv"), u32v(cfg.kv_heads())),
        (k("rope.freq_base"), f32v(cfg.rope_theta)),
        (k("rope.dimension_count"), u32v(cfg.head_dim())),
        (
            k("attention.layer_norm_rms_epsilon"),
            f32v(cfg.rms_norm_eps),
        ),
        (k("vocab_size"), u32v(cfg.vocab_size)),
        (
            "tokenizer.ggml.model".into(),
            Value::String(tok_model.into()),
        ),
        ("tokenizer.ggml.pre".into(), Value::String(vocab.pre.into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        (
            "tokenizer.ggml.add_bos_token".into(),
            Value::Bool(tc["add_bos_token"].as_bool().unwrap_or(false)),
        ),
    ];
    if let Some((scores, prefix)) = spm {
        md.push((
            "tokenizer.ggml.scores".into(),
            Value::Array(scores.into_iter().map(Value::F32).collect()),
        ));
        md.push((
            "tokenizer.ggml.add_space_prefix".into(),
            Value::Bool(prefix),
        ));
    } else {
        md.push((
            "tokenizer.ggml.merges".into(),
            Value::Array(vocab.merges.into_iter().map(Value::String).collect()),
        ));
    }
    if let Some(w) = cfg.sliding_window.filter(|_| cfg.gemma()) {
        md.push((k("attention.sliding_window"), u32v(w)));
    }
    if cfg.gemma() || cfg.head_dim() != cfg.hidden_size / cfg.num_attention_heads.max(1) {
        // as llama.cpp's converter states a head size that is not hidden / heads (Qwen3)
        md.push((k("attention.key_length"), u32v(cfg.head_dim())));
        md.push((k("attention.value_length"), u32v(cfg.head_dim())));
    }
    for (gguf_key, id) in ids {
        if let Some(id) = id {
            md.push((format!("tokenizer.ggml.{gguf_key}"), u32v(id)));
        }
    }
    if let Some(t) = tc["chat_template"].as_str() {
        md.push(("tokenizer.chat_template".into(), Value::String(t.into())));
    }
    md
}

/// What a Gemma 3 config sets that llama.cpp's `gemma3` leaves to its own code and decides otherwise (see
/// [`crate::gguf`]'s import): every 6th layer global, a local RoPE base of 10000, scores scaled by
/// key_length^-1/2 (n_embd / n_head at 62 layers), the tanh GELU, no RoPE scaling.
fn gemma3_unwritable(cfg: &LlamaConfig) -> Option<String> {
    let n = cfg.num_hidden_layers;
    if let Some(l) = (0..n).find(|&l| cfg.window(l).is_some() == (l + 1).is_multiple_of(6)) {
        return Some(format!(
            "layer {l}'s attention is not llama.cpp's (every 6th layer global, the others sliding)"
        ));
    }
    if cfg.sliding_window.is_none() {
        return Some("no sliding_window".into());
    }
    let differs = |a: f64, b: f64| (a - b).abs() > 1e-9 * b.abs();
    if differs(cfg.rope_local_base_freq.unwrap_or(10_000.0), 10_000.0) {
        return Some("rope_local_base_freq is not 10000".into());
    }
    #[allow(clippy::cast_precision_loss)]
    let scalar = if n == 62 {
        cfg.hidden_size / cfg.num_attention_heads.max(1)
    } else {
        cfg.head_dim()
    } as f64;
    if differs(cfg.query_pre_attn_scalar.unwrap_or(scalar), scalar) {
        return Some(format!("query_pre_attn_scalar is not {scalar}"));
    }
    if cfg.activation() != "gelu_pytorch_tanh" {
        return Some(format!("activation {:?}", cfg.activation()));
    }
    if cfg.rope_scaling.is_some() {
        return Some("rope_scaling".into());
    }
    None
}

/// Writes the model folder `dir` as a GGUF file at `out` (atomically).
///
/// # Errors
/// On a missing or malformed model folder, a tokenizer that GGUF cannot express, or an I/O failure.
pub fn export_gguf(dir: &Path, out: &Path, ty: GgufType) -> Result<()> {
    let cfg: LlamaConfig = crate::read_config(&dir.join("config.json"))?;
    if cfg.gemma() {
        if let Some(reason) = gemma3_unwritable(&cfg) {
            return Err(ModelError::Config {
                path: dir.join("config.json"),
                reason: format!(
                    "this Gemma 3 model has no form in llama.cpp's gemma3 GGUF: {reason}"
                ),
            });
        }
    }
    // llama.cpp's qwen2 and qwen3 attend in full on every layer: a window switched on has no GGUF form
    if matches!(gguf_arch(&cfg), "qwen2" | "qwen3")
        && (0..cfg.num_hidden_layers).any(|l| cfg.window(l).is_some())
    {
        return Err(ModelError::Config {
            path: dir.join("config.json"),
            reason: "a sliding window on Qwen layers has no form in llama.cpp's qwen2/qwen3 GGUF"
                .into(),
        });
    }
    let vocab = tokenizer_metadata(&dir.join("tokenizer.json"))?;
    let tc: Json = std::fs::read(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Json::Null);
    let qtensors = quantize_all(dir, &cfg, ty)?;
    let name = dir
        .file_name()
        .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned());
    let md = metadata(name, &cfg, vocab, &tc, ty);
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = qtensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut buf = std::io::Cursor::new(Vec::new());
    candle_core::quantized::gguf_file::write(&mut buf, &md_refs, &t_refs).map_err(|e| {
        ModelError::Weights {
            path: out.into(),
            reason: e.to_string(),
        }
    })?;
    strata_store::write_atomic(out, buf.get_ref()).map_err(|e| ModelError::Weights {
        path: out.into(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute_then_unpermute_is_identity_and_names_round_trip() {
        let w = Tensor::arange(0f32, 48., &Device::Cpu)
            .unwrap()
            .reshape((12, 4))
            .unwrap(); // 3 heads of hd 4
        let back = crate::gguf::unpermute(&permute(&w, 3).unwrap(), 3).unwrap();
        assert_eq!(w.to_vec2::<f32>().unwrap(), back.to_vec2::<f32>().unwrap());
        // by hand, as llama.cpp's converter: w.reshape(n, 2, hd/2, D).swapaxes(1, 2); one head of hd 4, rows
        // [a0 a1 b0 b1] (the two rotary halves) become [a0 b0 a1 b1]
        let hf = Tensor::new(&[[0f32], [1.], [10.], [11.]], &Device::Cpu).unwrap();
        let g: Vec<Vec<f32>> = permute(&hf, 1).unwrap().to_vec2().unwrap();
        assert_eq!(g, vec![vec![0.], vec![10.], vec![1.], vec![11.]]);
        for hf in [
            "model.embed_tokens.weight",
            "lm_head.weight",
            "model.layers.3.mlp.up_proj.weight",
            "model.layers.0.self_attn.k_proj.weight",
        ] {
            assert_eq!(
                crate::gguf::hf_name(&gguf_name(hf).unwrap()).as_deref(),
                Some(hf)
            );
        }
    }
}
