//! A `tokenizers` tokenizer assembled from a GGUF file's `tokenizer.ggml.*` metadata.
//!
//! candle's own GGUF tokenizer adds a GPT-2 leading space and so disagrees with llama.cpp on
//! GPT-2-style BPE vocabularies (SmolLM2: "Hello" must be 19556). This builds the same pipeline
//! llama.cpp uses for them: digits split one by one, byte-level pre-tokenization without a prefix
//! space, BPE with the file's merges, and control tokens (`token_type` 3) as special tokens.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::{Content, Value};
use serde_json::{json, Map};
use tokenizers::Tokenizer;

use super::ModelError;

/// What a GGUF says about its tokenizer beyond the vocabulary.
pub struct GgufTokenizer {
    pub tokenizer: Tokenizer,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub add_bos_token: bool,
    pub chat_template: Option<String>,
}

fn md<'a>(ct: &'a Content, key: &str) -> Option<&'a Value> {
    ct.metadata.get(key)
}

fn err(msg: impl Into<String>) -> ModelError {
    ModelError::Load(format!("GGUF tokenizer: {}", msg.into()))
}

pub fn from_gguf(ct: &Content) -> Result<GgufTokenizer, ModelError> {
    let kind = md(ct, "tokenizer.ggml.model")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    if kind != "gpt2" {
        return Err(err(format!(
            "tokenizer model `{kind}` is not built from metadata yet; place a tokenizer.json beside the .gguf and name it in the manifest"
        )));
    }
    let strings = |key: &str| -> Result<Vec<String>, ModelError> {
        let v = md(ct, key).ok_or_else(|| err(format!("no {key}")))?;
        v.to_vec()
            .map_err(|e| err(e.to_string()))?
            .iter()
            .map(|x| x.to_string().cloned().map_err(|e| err(e.to_string())))
            .collect()
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges = strings("tokenizer.ggml.merges")?;
    let types: Vec<i64> = match md(ct, "tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .map_err(|e| err(e.to_string()))?
            .iter()
            .map(|x| x.to_i32().map(i64::from).unwrap_or(1))
            .collect(),
        None => vec![1; tokens.len()],
    };

    let mut vocab = Map::new();
    let mut seen: HashMap<&str, ()> = HashMap::new();
    for (i, t) in tokens.iter().enumerate() {
        if seen.insert(t.as_str(), ()).is_none() {
            vocab.insert(t.clone(), json!(i));
        }
    }
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| types.get(*i) == Some(&3))
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let spec = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
        ]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges}
    });
    let bytes = serde_json::to_vec(&spec).map_err(|e| err(e.to_string()))?;
    let tokenizer = Tokenizer::from_bytes(bytes).map_err(|e| err(e.to_string()))?;
    let id = |key: &str| md(ct, key).and_then(|v| v.to_u32().ok());
    Ok(GgufTokenizer {
        tokenizer,
        bos_token_id: id("tokenizer.ggml.bos_token_id"),
        eos_token_id: id("tokenizer.ggml.eos_token_id"),
        add_bos_token: md(ct, "tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(false),
        chat_template: md(ct, "tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned(),
    })
}
