//! GGUF llama-family text generation: the metadata (tokenizer, chat template, EOS), then the
//! weights on our own CPU forward pass ([`super::llama_cpu`]); on a GPU on the candle-tensor
//! llama ([`super::llama_candle`], weights dequantized to f16, several sequences per step); on
//! the CPU for formats our kernels do not cover, on candle's quantized llama (one sequence at a
//! time).

use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;

use super::llama_candle::CandleLlama;
use super::llama_cpu::CpuLlama;
use super::{gguf_tokenizer, CausalLm, ChatTemplate, Chunk, ModelError, TextCodec};

pub struct GgufLlama {
    weights: ModelWeights,
    device: Device,
    context_length: usize,
}

/// A loaded GGUF model with what its metadata says about text.
pub struct LoadedLlama {
    pub model: Box<dyn CausalLm>,
    pub codec: TextCodec,
    pub chat_template: Option<ChatTemplate>,
    pub eos_token_ids: Vec<u32>,
}

impl GgufLlama {
    /// Load weights, and the tokenizer from `tokenizer_json` or else the GGUF metadata.
    /// `sequences` sequences can decode together (on the CPU on `threads` threads), except on
    /// the CPU fallback for formats our kernels lack.
    pub fn load(
        path: &Path,
        tokenizer_json: Option<&Path>,
        max_input_length: usize,
        device: &Device,
        sequences: usize,
        threads: usize,
    ) -> Result<LoadedLlama, ModelError> {
        let load = |e: &dyn std::fmt::Display| ModelError::Load(format!("{}: {e}", path.display()));
        let (mut file, content, context_length) = open_gguf(path)?;
        let meta = gguf_tokenizer::from_gguf(&content);
        let (codec, chat_template, eos) = match tokenizer_json {
            Some(tj) => {
                let codec = TextCodec::from_file(tj, false, max_input_length)?;
                let eos = meta.as_ref().ok().and_then(|m| m.eos_token_id);
                let template = match meta.as_ref().ok().and_then(|m| m.chat_template.clone()) {
                    Some(t) => Some(chat_template(&t, &codec, meta.as_ref().ok())?),
                    None => None,
                };
                (codec, template, eos)
            }
            None => {
                let m = meta?;
                let codec = TextCodec::new(m.tokenizer.clone(), false, max_input_length)?;
                if m.add_bos_token {
                    return Err(ModelError::Load(
                        "GGUF asks for a BOS token; place a tokenizer.json with its post-processor beside the .gguf".into(),
                    ));
                }
                let template = match &m.chat_template {
                    Some(t) => Some(chat_template(t, &codec, Some(&m))?),
                    None => None,
                };
                (codec, template, m.eos_token_id)
            }
        };
        let mut eos_token_ids: Vec<u32> = eos.into_iter().collect();
        // ChatML models end a turn with <|im_end|>; treat it as an end even if it is not the EOS.
        if let Some(id) = codec.token_id("<|im_end|>") {
            if !eos_token_ids.contains(&id) {
                eos_token_ids.push(id);
            }
        }
        let model: Box<dyn CausalLm> = if device.is_cpu() && CpuLlama::supports(&content) {
            Box::new(CpuLlama::load(
                path, &content, &mut file, sequences, threads,
            )?)
        } else if !device.is_cpu() {
            Box::new(CandleLlama::load(
                path,
                &content,
                &mut file,
                device,
                CandleLlama::dtype_for(device),
                sequences,
            )?)
        } else {
            let weights =
                ModelWeights::from_gguf(content, &mut file, device).map_err(|e| load(&e))?;
            Box::new(GgufLlama {
                weights,
                device: device.clone(),
                context_length,
            })
        };
        Ok(LoadedLlama {
            model,
            codec,
            chat_template,
            eos_token_ids,
        })
    }
}

/// Open a GGUF and read its header; with the context length its metadata gives (else 2048).
fn open_gguf(path: &Path) -> Result<(std::fs::File, gguf_file::Content, usize), ModelError> {
    let load = |e: &dyn std::fmt::Display| ModelError::Load(format!("{}: {e}", path.display()));
    let mut file = std::fs::File::open(path).map_err(|e| load(&e))?;
    let content = gguf_file::Content::read(&mut file).map_err(|e| load(&e))?;
    let context_length = content
        .metadata
        .get("llama.context_length")
        .and_then(|v| v.to_u32().ok())
        .unwrap_or(2048) as usize;
    Ok((file, content, context_length))
}

impl GgufLlama {
    /// candle's quantized llama on `path`, whatever the device (the baseline our CPU forward
    /// pass is measured against).
    pub fn open_candle(path: &Path, device: &Device) -> Result<GgufLlama, ModelError> {
        let load = |e: &dyn std::fmt::Display| ModelError::Load(format!("{}: {e}", path.display()));
        let (mut file, content, context_length) = open_gguf(path)?;
        let weights = ModelWeights::from_gguf(content, &mut file, device).map_err(|e| load(&e))?;
        Ok(GgufLlama {
            weights,
            device: device.clone(),
            context_length,
        })
    }
}

fn chat_template(
    source: &str,
    codec: &TextCodec,
    meta: Option<&gguf_tokenizer::GgufTokenizer>,
) -> Result<ChatTemplate, ModelError> {
    let name = |id: Option<u32>| id.and_then(|i| codec.id_to_token(i)).unwrap_or_default();
    ChatTemplate::new(
        source,
        &name(meta.and_then(|m| m.bos_token_id)),
        &name(meta.and_then(|m| m.eos_token_id)),
    )
}

impl CausalLm for GgufLlama {
    /// One sequence (slot 0) at a time: candle's model keeps a single KV cache.
    fn step(&mut self, chunks: &[Chunk<'_>]) -> Result<Vec<Vec<f32>>, ModelError> {
        let [chunk] = chunks else {
            return Err(ModelError::Inference(
                "this model runs one sequence per step".into(),
            ));
        };
        if chunk.slot != 0 {
            return Err(ModelError::Inference(format!("slot {} of 1", chunk.slot)));
        }
        let x = Tensor::new(chunk.tokens, &self.device)?.unsqueeze(0)?;
        let logits = self.weights.forward(&x, chunk.start)?;
        let logits = logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        Ok(if chunk.logits { vec![logits] } else { vec![] })
    }

    fn context_length(&self) -> usize {
        self.context_length
    }
}
