//! What a GGUF's header says about its weights: architecture, the mix of tensor types, the
//! parameter count and the context length — shown by `GET /models/{id}` and used to generate a
//! manifest for a bare `.gguf`.

use std::collections::BTreeMap;

use candle_core::quantized::gguf_file::Content;
use serde::Serialize;
use utoipa::ToSchema;

/// A loaded GGUF's weights, described.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct WeightsInfo {
    /// `general.architecture` (llama, qwen2, qwen3, gemma3, phi3 …).
    pub architecture: String,
    /// What runs it: `anya-cpu` (our kernels), `candle-cuda` or `candle-cpu`.
    pub engine: String,
    /// Tensors per type (`Q4_K`: 27, `F32`: 109 …).
    pub quantization: BTreeMap<String, usize>,
    /// Number of weights in all tensors.
    pub parameters: u64,
    /// Positions the model was trained for (`{arch}.context_length`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_length: Option<usize>,
}

/// The architecture name the file gives (empty if none).
pub fn architecture(content: &Content) -> String {
    content
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok().cloned())
        .unwrap_or_default()
}

/// `{arch}.context_length`.
pub fn context_length_of(content: &Content) -> Option<usize> {
    let arch = architecture(content);
    content
        .metadata
        .get(&format!("{arch}.context_length"))
        .and_then(|v| v.to_u32().ok())
        .map(|v| v as usize)
}

fn type_name(t: candle_core::quantized::GgmlDType) -> String {
    match super::llama_cpu::ggml_type(t) {
        Some(t) => t.name().to_string(),
        None => format!("{t:?}"),
    }
}

/// The description of `content`'s weights (the engine left empty: the loader fills it in).
pub fn weights_info(content: &Content, context_length: usize) -> WeightsInfo {
    let mut quantization = BTreeMap::new();
    let mut parameters = 0u64;
    for t in content.tensor_infos.values() {
        *quantization.entry(type_name(t.ggml_dtype)).or_insert(0) += 1;
        parameters += t.shape.elem_count() as u64;
    }
    WeightsInfo {
        architecture: architecture(content),
        engine: String::new(),
        quantization,
        parameters,
        context_length: Some(context_length),
    }
}
