//! Import a llama.cpp GGUF file into a Hugging Face folder: dequantised weights (F32/F16/BF16/Q8_0/Q4_0/
//! Q4_1/Q4_K/Q5_K/Q6_K, via candle's GGUF reader) under HF names, `config.json` from the GGUF metadata,
//! `tokenizer.json` rebuilt from the embedded vocabulary and merges, and the chat template in
//! `tokenizer_config.json`.
//!
//! llama.cpp stores Q and K projections permuted for its interleaved RoPE; HF Llama uses the "rotate half"
//! layout, so those two are permuted back here (the inverse of `permute` in llama.cpp's convert script).

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use serde_json::json;

use crate::{Context, LlamaConfig, ModelError, Result};

/// What an import produced.
#[derive(Debug, Clone)]
pub struct GgufImport {
    pub config: LlamaConfig,
    pub tensors: usize,
    /// GGUF tensor type → count, e.g. {"Q4_1": 210, "F32": 61}.
    pub types: std::collections::BTreeMap<String, usize>,
    pub name: Option<String>,
}

pub(crate) fn bad(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::Weights {
        path: path.into(),
        reason: reason.into(),
    }
}

struct Meta<'a> {
    path: &'a Path,
    md: &'a HashMap<String, Value>,
}

impl Meta<'_> {
    fn get(&self, key: &str) -> Result<&Value> {
        self.md
            .get(key)
            .ok_or_else(|| bad(self.path, format!("metadata key {key:?} is missing")))
    }
    fn usize(&self, key: &str) -> Result<usize> {
        let v = self.get(key)?;
        let n = v
            .to_u64()
            .or_else(|_| v.to_u32().map(u64::from))
            .or_else(|_| v.to_i32().map(|x| u64::try_from(x).unwrap_or(0)));
        n.ok().and_then(|n| usize::try_from(n).ok()).ok_or_else(|| {
            bad(
                self.path,
                format!("metadata key {key:?} is not an unsigned integer"),
            )
        })
    }
    fn f64(&self, key: &str) -> Result<f64> {
        self.get(key)?
            .to_f32()
            .map(f64::from)
            .map_err(|_| bad(self.path, format!("metadata key {key:?} is not a float")))
    }
    fn string(&self, key: &str) -> Result<&str> {
        self.get(key)?
            .to_string()
            .map(String::as_str)
            .map_err(|_| bad(self.path, format!("metadata key {key:?} is not a string")))
    }
    fn strings(&self, key: &str) -> Result<Vec<&str>> {
        let arr = self
            .get(key)?
            .to_vec()
            .map_err(|_| bad(self.path, format!("metadata key {key:?} is not an array")))?;
        arr.iter()
            .map(|v| {
                v.to_string()
                    .map(String::as_str)
                    .map_err(|_| bad(self.path, format!("{key}: not an array of strings")))
            })
            .collect()
    }
    fn opt_u32(&self, key: &str) -> Option<u32> {
        self.md.get(key).and_then(|v| v.to_u32().ok())
    }
}

/// GGUF architectures Strata reads, with the Hugging Face class each becomes. Mistral GGUFs say "llama".
const GGUF_ARCHITECTURES: [(&str, &str); 2] =
    [("llama", "LlamaForCausalLM"), ("qwen2", "Qwen2ForCausalLM")];

fn config_from(meta: &Meta<'_>) -> Result<LlamaConfig> {
    let arch = meta.string("general.architecture")?;
    let Some(&(_, hf_arch)) = GGUF_ARCHITECTURES.iter().find(|(a, _)| *a == arch) else {
        let names: Vec<&str> = GGUF_ARCHITECTURES.iter().map(|(a, _)| *a).collect();
        return Err(bad(
            meta.path,
            format!(
                "architecture {arch:?} is not supported (supported: {})",
                names.join(", ")
            ),
        ));
    };
    let k = |key: &str| format!("{arch}.{key}");
    let heads = meta.usize(&k("attention.head_count"))?;
    let hidden = meta.usize(&k("embedding_length"))?;
    let vocab = match meta.usize(&k("vocab_size")) {
        Ok(v) => v,
        Err(_) => meta.strings("tokenizer.ggml.tokens")?.len(),
    };
    let head_dim = meta
        .usize(&k("rope.dimension_count"))
        .ok()
        .filter(|&d| d != hidden / heads.max(1));
    if meta.md.contains_key(&k("rope.scaling.type"))
        && meta.string(&k("rope.scaling.type")).unwrap_or("none") != "none"
    {
        return Err(bad(
            meta.path,
            format!(
                "{} is not supported yet (import the Hugging Face folder instead)",
                k("rope.scaling.type")
            ),
        ));
    }
    let cfg = LlamaConfig {
        architectures: vec![hf_arch.to_string()],
        model_type: arch.to_string(),
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: meta.usize(&k("feed_forward_length"))?,
        num_hidden_layers: meta.usize(&k("block_count"))?,
        num_attention_heads: heads,
        num_key_value_heads: Some(meta.usize(&k("attention.head_count_kv")).unwrap_or(heads)),
        head_dim,
        max_position_embeddings: meta.usize(&k("context_length"))?,
        rms_norm_eps: meta.f64(&k("attention.layer_norm_rms_epsilon"))?,
        rope_theta: meta.f64(&k("rope.freq_base")).unwrap_or(10_000.0),
        tie_word_embeddings: false, // set below from the presence of output.weight
        bos_token_id: meta.opt_u32("tokenizer.ggml.bos_token_id").map(crate::TokenIds::One),
        eos_token_id: meta.opt_u32("tokenizer.ggml.eos_token_id").map(crate::TokenIds::One),
        ..serde_json::from_value(json!({"vocab_size": 0, "hidden_size": 0, "intermediate_size": 0, "num_hidden_layers": 0, "num_attention_heads": 0, "max_position_embeddings": 0}))
            .map_err(|e| bad(meta.path, e.to_string()))?
    };
    Ok(cfg)
}

/// Whether llama.cpp stored Q and K permuted for its interleaved RoPE: it does for `llama` (whose HF
/// weights rotate halves), not for `qwen2` (run with the NEOX rotation, the HF layout as it is).
pub(crate) fn qk_permuted(cfg: &LlamaConfig) -> bool {
    cfg.architectures.iter().any(|a| a == "LlamaForCausalLM")
}

/// GGUF tensor name → Hugging Face name.
pub(crate) fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "attn_output.bias" => "self_attn.o_proj.bias",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// Undoes llama.cpp's Q/K permutation: rows (n, 2, hd/2) → (n, hd/2, 2) order back to HF's.
pub(crate) fn unpermute(w: &Tensor, n_head: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2().ctx("unpermute")?;
    let hd = rows / n_head;
    w.reshape((n_head, hd / 2, 2, cols))
        .ctx("unpermute reshape")? // (n, hd/2, 2, D): GGUF row order
        .transpose(1, 2)
        .ctx("unpermute transpose")? // (n, 2, hd/2, D): HF row order
        .contiguous()
        .ctx("unpermute contiguous")?
        .reshape((rows, cols))
        .ctx("unpermute back")
}

/// Opens a GGUF file and reads its header (metadata and tensor directory).
pub(crate) fn open(path: &Path) -> Result<(Content, BufReader<File>)> {
    let file = File::open(path).map_err(|source| ModelError::Io {
        path: path.into(),
        source,
    })?;
    let mut reader = BufReader::new(file);
    let content = read_header(path, &mut reader)?;
    Ok((content, reader))
}

/// Walks the metadata of a GGUF stream for `general.alignment`, which must be a power of two (candle divides
/// by it unchecked). Anything else malformed is left to candle's reader, which reports it.
fn check_alignment<R: std::io::Read + std::io::Seek>(r: &mut R) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind, SeekFrom};
    fn u32_of<R: std::io::Read>(r: &mut R) -> std::io::Result<u32> {
        let mut b = [0u8; 4];
        r.read_exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    fn u64_of<R: std::io::Read>(r: &mut R) -> std::io::Result<u64> {
        let mut b = [0u8; 8];
        r.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    /// Bytes of a fixed-size value type, None for string (8) and array (9).
    fn width(ty: u32) -> std::io::Result<Option<u64>> {
        Ok(Some(match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 | 9 => return Ok(None),
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidData,
                    format!("value type {ty}"),
                ))
            }
        }))
    }
    fn skip<R: std::io::Read + std::io::Seek>(r: &mut R, n: u64) -> std::io::Result<()> {
        let n = i64::try_from(n).map_err(|_| Error::new(ErrorKind::InvalidData, "length"))?;
        r.seek(SeekFrom::Current(n)).map(|_| ())
    }
    r.seek(SeekFrom::Start(0))?;
    let magic = u32_of(r)?;
    let version = u32_of(r)?;
    if magic != 0x4655_4747 || !(2..=3).contains(&version) {
        return Ok(()); // candle names what is wrong
    }
    let _tensors = u64_of(r)?;
    let kvs = u64_of(r)?;
    for _ in 0..kvs {
        let len = u64_of(r)?;
        if len > 1 << 16 {
            return Ok(());
        }
        let mut key = vec![0u8; usize::try_from(len).unwrap_or(0)];
        r.read_exact(&mut key)?;
        let ty = u32_of(r)?;
        if key == b"general.alignment" {
            let v = match width(ty)? {
                Some(w @ 1..=8) if ty != 6 && ty != 12 && ty != 7 => {
                    let mut b = [0u8; 8];
                    r.read_exact(&mut b[..usize::try_from(w).unwrap_or(8)])?;
                    u64::from_le_bytes(b)
                }
                _ => return Ok(()),
            };
            if !v.is_power_of_two() {
                return Err(Error::new(
                    ErrorKind::InvalidData,
                    format!("general.alignment is {v}, not a power of two"),
                ));
            }
            return Ok(());
        }
        match (ty, width(ty)?) {
            (_, Some(w)) => skip(r, w)?,
            (8, None) => {
                let n = u64_of(r)?;
                skip(r, n)?;
            }
            _ => {
                let ety = u32_of(r)?;
                let n = u64_of(r)?;
                match width(ety)? {
                    Some(w) => skip(r, n.checked_mul(w).ok_or(ErrorKind::InvalidData)?)?,
                    None if ety == 8 => {
                        for _ in 0..n {
                            let l = u64_of(r)?;
                            skip(r, l)?;
                        }
                    }
                    None => return Ok(()), // nested arrays: left to candle
                }
            }
        }
    }
    Ok(())
}

/// Reads the header of a GGUF stream; `path` names it in errors.
pub(crate) fn read_header<R: std::io::Read + std::io::Seek>(
    path: &Path,
    reader: &mut R,
) -> Result<Content> {
    check_alignment(reader).map_err(|e| bad(path, format!("not a readable GGUF file: {e}")))?;
    reader
        .seek(std::io::SeekFrom::Start(0))
        .map_err(|source| ModelError::Io {
            path: path.into(),
            source,
        })?;
    Content::read(reader).map_err(|e| {
        bad(
            path,
            format!("not a readable GGUF file: {}", crate::candle_msg(&e)),
        )
    })
}

/// Llama 3.1-style files carry their RoPE frequency factors as a tensor; running without them would be silently
/// wrong at every position, so they are refused until the engine applies them.
fn refuse_rope_freqs(path: &Path, content: &Content) -> Result<()> {
    if content.tensor_infos.contains_key("rope_freqs.weight") {
        return Err(bad(
            path,
            "rope_freqs.weight (Llama 3.1 RoPE frequency factors) is not supported from GGUF yet: import the \
             Hugging Face folder, whose config.json rope_scaling Strata applies",
        ));
    }
    Ok(())
}

/// The model config of an opened GGUF file (`tie_word_embeddings` from the presence of `output.weight`).
pub(crate) fn config_of(path: &Path, content: &Content) -> Result<LlamaConfig> {
    let mut cfg = config_from(&Meta {
        path,
        md: &content.metadata,
    })?;
    cfg.tie_word_embeddings = !content.tensor_infos.contains_key("output.weight");
    refuse_rope_freqs(path, content)?;
    Ok(cfg)
}

/// Reads the GGUF at `path` and writes an HF folder into `out` (which must exist).
///
/// # Errors
/// On a missing or malformed file, an unsupported architecture, tensor type or tokenizer, or a tensor
/// whose shape does not match the metadata.
pub fn import_gguf(path: &Path, out: &Path) -> Result<GgufImport> {
    let (content, mut reader) = open(path)?;
    let meta = Meta {
        path,
        md: &content.metadata,
    };
    let mut cfg = config_from(&meta)?;
    refuse_rope_freqs(path, &content)?;
    let device = Device::Cpu;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors = HashMap::new();
    let mut types = std::collections::BTreeMap::new();
    for name in names {
        let Some(hf) = hf_name(name) else {
            // tensors HF does not have (rope_freqs.weight is refused above)
            tracing::debug!("skipping GGUF tensor {name}");
            continue;
        };
        let info = &content.tensor_infos[name];
        *types.entry(format!("{:?}", info.ggml_dtype)).or_insert(0) += 1;
        let q = content
            .tensor(&mut reader, name, &device)
            .map_err(|e| bad(path, format!("tensor {name}: {}", crate::candle_msg(&e))))?;
        let mut t = q
            .dequantize(&device)
            .map_err(|e| bad(path, format!("tensor {name}: {}", crate::candle_msg(&e))))?;
        if qk_permuted(&cfg) && hf.ends_with("q_proj.weight") {
            t = unpermute(&t, cfg.num_attention_heads)?;
        } else if qk_permuted(&cfg) && hf.ends_with("k_proj.weight") {
            t = unpermute(&t, cfg.kv_heads())?;
        }
        tensors.insert(hf, t);
    }
    cfg.tie_word_embeddings = !tensors.contains_key("lm_head.weight");
    // Check every shape against the config before writing anything.
    let vb = candle_nn::VarBuilder::from_tensors(tensors.clone(), candle_core::DType::F32, &device);
    crate::Llama::load(&vb, &cfg).map_err(|e| bad(path, e.to_string()))?;
    crate::save_safetensors(&tensors, &out.join("model.safetensors"), &[])?;
    crate::write_hf_config(out, &cfg)?;
    write_tokenizer(&meta, &cfg, out)?;
    Ok(GgufImport {
        config: cfg,
        tensors: tensors.len(),
        types,
        name: meta.string("general.name").ok().map(str::to_string),
    })
}

/// The split regex of Llama 3's tokenizer (`tokenizer.ggml.pre` "llama-bpe"): digits in runs of up to three.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The split regex of Qwen2's tokenizer (`tokenizer.ggml.pre` "qwen2"): every digit alone.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The normaliser and pre-tokenizer of a GGUF `tokenizer.ggml.pre` name, as the model family's own
/// `tokenizer.json` has them on the Hugging Face Hub.
fn pre_tokenizer(path: &Path, pre: &str) -> Result<(serde_json::Value, serde_json::Value)> {
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let split = |regex: &str| {
        json!({
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}
            ]
        })
    };
    match pre {
        // GPT-2's regex after splitting digits one by one (StarCoder-family vocabularies, SmolLM)
        "smollm" | "starcoder" | "refact" | "codeshell" => Ok((
            serde_json::Value::Null,
            json!({
                "type": "Sequence",
                "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level]
            }),
        )),
        "gpt2" | "default" => Ok((serde_json::Value::Null, byte_level)),
        "llama-bpe" | "llama3" => Ok((serde_json::Value::Null, split(LLAMA3_SPLIT))),
        "qwen2" => Ok((json!({"type": "NFC"}), split(QWEN2_SPLIT))),
        other => Err(bad(path, format!("tokenizer pre-tokenizer {other:?} is not supported yet (supported: smollm, starcoder, refact, codeshell, gpt2, llama-bpe, qwen2)"))),
    }
}

/// BPE merges equivalent to a SentencePiece vocabulary's scores: every split of a piece into two pieces of
/// the vocabulary is a merge, ranked by the merged piece's score (highest first, then lowest id), which is
/// the order in which llama.cpp's SentencePiece tokenizer joins symbols. Byte (6), control (3) and unknown
/// (2) tokens take no part.
fn spm_merges(tokens: &[&str], scores: &[f32], types: &[i32]) -> Vec<(String, String)> {
    let usable = |i: usize| matches!(types.get(i), Some(1 | 4) | None);
    let ids: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| usable(*i))
        .map(|(i, t)| (*t, i))
        .collect();
    let mut ranked: Vec<(f32, usize, &str, &str)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        if !usable(id) {
            continue;
        }
        let score = scores.get(id).copied().unwrap_or(0.0);
        for (cut, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(cut);
            if ids.contains_key(l) && ids.contains_key(r) {
                ranked.push((score, id, l, r));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    ranked
        .into_iter()
        .map(|(_, _, l, r)| (l.to_string(), r.to_string()))
        .collect()
}

/// Whether to add BOS, which token, and the HF post-processor that adds it. llama.cpp adds BOS when the file
/// says so, and by default for SentencePiece and Llama 3 vocabularies; HF does it in the tokenizer's
/// post-processor, which is what `encode(text, add_special_tokens=True)` applies.
fn bos_policy(
    meta: &Meta<'_>,
    cfg: &LlamaConfig,
    tokens: &[&str],
    spm: bool,
    pre: &str,
) -> (bool, Option<(u32, String)>, serde_json::Value) {
    let add_bos = meta
        .md
        .get("tokenizer.ggml.add_bos_token")
        .and_then(|v| v.to_bool().ok())
        .unwrap_or(spm || matches!(pre, "llama-bpe" | "llama3"));
    let bos = cfg
        .bos_token_id
        .as_ref()
        .and_then(crate::TokenIds::first)
        .and_then(|i| tokens.get(i as usize).map(|t| (i, (*t).to_string())));
    let post_processor = match (&bos, add_bos) {
        (Some((id, tok)), true) => json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": tok, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {tok.as_str(): {"id": tok, "ids": [id], "tokens": [tok]}}
        }),
        _ => serde_json::Value::Null,
    };
    (add_bos, bos, post_processor)
}

/// A SentencePiece vocabulary's decoder ("▁" back to spaces, bytes fused, the prefix space dropped) and its
/// unknown token.
fn spm_decoder(
    meta: &Meta<'_>,
    tokens: &[&str],
    types: &[i32],
    add_space_prefix: bool,
) -> (serde_json::Value, Option<String>) {
    let unk = meta
        .opt_u32("tokenizer.ggml.unknown_token_id")
        .and_then(|i| tokens.get(i as usize))
        .or_else(|| {
            tokens
                .iter()
                .zip(types)
                .find(|(_, ty)| **ty == 2)
                .map(|(t, _)| t)
        })
        .map(|t| (*t).to_string());
    let decoder = json!({"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": usize::from(add_space_prefix), "stop": 0}
    ]});
    (decoder, unk)
}

fn write_tokenizer(meta: &Meta<'_>, cfg: &LlamaConfig, out: &Path) -> Result<()> {
    let path = meta.path;
    let model = meta.string("tokenizer.ggml.model")?;
    let spm = model == "llama";
    if !spm && model != "gpt2" {
        return Err(bad(path, format!("tokenizer model {model:?} is not supported yet (supported: gpt2 byte-level BPE, llama SentencePiece BPE)")));
    }
    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let types: Vec<i32> = match meta
        .md
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.to_vec().ok())
    {
        Some(v) => v.iter().map(|x| x.to_i32().unwrap_or(1)).collect(),
        None => vec![1; tokens.len()],
    };
    let pre = meta.string("tokenizer.ggml.pre").unwrap_or("default");
    let merges: Vec<(String, String)> = if spm {
        let scores: Vec<f32> = meta
            .get("tokenizer.ggml.scores")?
            .to_vec()
            .map_err(|_| bad(path, "tokenizer.ggml.scores is not an array"))?
            .iter()
            .map(|v| v.to_f32().unwrap_or(0.0))
            .collect();
        spm_merges(&tokens, &scores, &types)
    } else {
        meta.strings("tokenizer.ggml.merges")?
            .iter()
            .map(|m| {
                let (a, b) = m.split_once(' ').unwrap_or((m, ""));
                (a.to_string(), b.to_string())
            })
            .collect()
    };
    let add_space_prefix = meta
        .md
        .get("tokenizer.ggml.add_space_prefix")
        .and_then(|v| v.to_bool().ok())
        .unwrap_or(true);
    let (normalizer, pre_tokenizer) = if spm {
        // SentencePiece: "▁" for every space, and one before the text (and after each special token, as
        // llama.cpp does and the legacy HF Llama normaliser does per segment)
        let mut steps =
            vec![json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"})];
        if add_space_prefix {
            steps.insert(0, json!({"type": "Prepend", "prepend": "\u{2581}"}));
        }
        (
            json!({"type": "Sequence", "normalizers": steps}),
            serde_json::Value::Null,
        )
    } else {
        pre_tokenizer(path, pre)?
    };
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| ((*t).to_string(), json!(i)))
        .collect();
    // unknown (2), control (3) and user-defined (4) tokens are matched whole before BPE, as llama.cpp does
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, ty))| matches!(ty, 2..=4))
        .map(|(i, (t, ty))| json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": *ty == 4, "special": *ty != 4}))
        .collect();
    let (add_bos, bos, post_processor) = bos_policy(meta, cfg, &tokens, spm, pre);
    let (decoder, unk) = if spm {
        spm_decoder(meta, &tokens, &types, add_space_prefix)
    } else {
        let decoder = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
        (decoder, None)
    };
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": decoder,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": spm, "byte_fallback": spm, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        },
    });
    let tk_path = out.join("tokenizer.json");
    strata_store::write_json_atomic(&tk_path, &tokenizer).map_err(|e| ModelError::Weights {
        path: tk_path.clone(),
        reason: e.to_string(),
    })?;
    write_tokenizer_config(meta, cfg, &tokens, add_bos && bos.is_some(), out)
}

/// `tokenizer_config.json`: the special tokens by name, BOS policy and the chat template.
fn write_tokenizer_config(
    meta: &Meta<'_>,
    cfg: &LlamaConfig,
    tokens: &[&str],
    add_bos: bool,
    out: &Path,
) -> Result<()> {
    let token = |id: Option<u32>| {
        id.and_then(|i| tokens.get(i as usize))
            .map(|t| (*t).to_string())
    };
    let mut tc = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token(cfg.bos_token_id.as_ref().and_then(crate::TokenIds::first)),
        "eos_token": token(cfg.eos_token_id.as_ref().and_then(crate::TokenIds::first)),
        "pad_token": token(meta.opt_u32("tokenizer.ggml.padding_token_id")),
        "unk_token": token(meta.opt_u32("tokenizer.ggml.unknown_token_id")),
        "add_bos_token": add_bos,
        "model_max_length": cfg.max_position_embeddings,
        "clean_up_tokenization_spaces": false,
    });
    if let Ok(t) = meta.string("tokenizer.chat_template") {
        tc["chat_template"] = json!(t);
    }
    let tc_path = out.join("tokenizer_config.json");
    strata_store::write_json_atomic(&tc_path, &tc).map_err(|e| ModelError::Weights {
        path: tc_path.clone(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_hugging_face() {
        assert_eq!(
            hf_name("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(
            hf_name("blk.12.attn_output.weight").as_deref(),
            Some("model.layers.12.self_attn.o_proj.weight")
        );
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight").as_deref(),
            Some("model.layers.0.post_attention_layernorm.weight")
        );
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(n, 2, hd/2, D).swapaxes(1, 2).reshape(w.shape). With n = 1, hd = 4, D = 1,
        // rows [a0 a1 b0 b1] (HF: first half a, second half b) become [a0 b0 a1 b1].
        let gguf = Tensor::new(&[[0f32], [10.], [1.], [11.]], &Device::Cpu).unwrap();
        let hf: Vec<Vec<f32>> = unpermute(&gguf, 1).unwrap().to_vec2().unwrap();
        assert_eq!(hf, vec![vec![0.], vec![1.], vec![10.], vec![11.]]);
    }
}
