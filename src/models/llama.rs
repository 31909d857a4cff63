//! GGUF llama-family text generation: the metadata (tokenizer, chat template, EOS), then the
//! weights on our own CPU forward pass ([`super::llama_cpu`]); on a GPU on the candle-tensor
//! llama ([`super::llama_candle`], weights dequantized to f16, several sequences per step); on
//! the CPU for formats our kernels do not cover, on candle's quantized llama (one sequence at a
//! time).

use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::{
    quantized_gemma3, quantized_llama, quantized_phi3, quantized_qwen2, quantized_qwen3,
};

pub use super::gguf_meta::{context_length_of, weights_info, WeightsInfo};
use super::gguf_tokenizer::GgufVocab;
use super::llama_candle::CandleLlama;
use super::llama_cpu::{Arch, CpuLlama};
use super::{CausalLm, ChatTemplate, Chunk, ModelError, TextCodec};

/// candle-transformers' quantized models, one per architecture.
enum CandleWeights {
    Llama(quantized_llama::ModelWeights),
    Qwen2(quantized_qwen2::ModelWeights),
    Qwen3(quantized_qwen3::ModelWeights),
    Gemma3(quantized_gemma3::ModelWeights),
    Phi3(quantized_phi3::ModelWeights),
}

impl CandleWeights {
    fn load(
        arch: Arch,
        content: gguf_file::Content,
        file: &mut std::fs::File,
        device: &Device,
    ) -> candle_core::Result<CandleWeights> {
        Ok(match arch {
            Arch::Llama => CandleWeights::Llama(quantized_llama::ModelWeights::from_gguf(
                content, file, device,
            )?),
            Arch::Qwen2 => CandleWeights::Qwen2(quantized_qwen2::ModelWeights::from_gguf(
                content, file, device,
            )?),
            Arch::Qwen3 => CandleWeights::Qwen3(quantized_qwen3::ModelWeights::from_gguf(
                content, file, device,
            )?),
            Arch::Gemma3 => CandleWeights::Gemma3(quantized_gemma3::ModelWeights::from_gguf(
                content, file, device,
            )?),
            Arch::Phi3 => CandleWeights::Phi3(quantized_phi3::ModelWeights::from_gguf(
                false, content, file, device,
            )?),
        })
    }

    fn forward(&mut self, x: &Tensor, pos: usize) -> candle_core::Result<Tensor> {
        match self {
            CandleWeights::Llama(m) => m.forward(x, pos),
            CandleWeights::Qwen2(m) => m.forward(x, pos),
            CandleWeights::Qwen3(m) => m.forward(x, pos),
            CandleWeights::Gemma3(m) => m.forward(x, pos),
            CandleWeights::Phi3(m) => m.forward(x, pos),
        }
    }
}

/// The weights of `content` on the fastest engine that runs them, and that engine's name: our
/// CPU forward pass; on a GPU, the candle-tensor llama for llama files; else candle's quantized
/// model of the architecture (one sequence at a time).
fn load_weights(
    path: &Path,
    content: gguf_file::Content,
    context_length: usize,
    file: &mut std::fs::File,
    device: &Device,
    sequences: usize,
    threads: usize,
) -> Result<(Box<dyn CausalLm>, &'static str), ModelError> {
    let load = |e: &dyn std::fmt::Display| ModelError::Load(format!("{}: {e}", path.display()));
    let (_, arch) = super::llama_cpu::arch_of(&content).map_err(|e| load(&e))?;
    if device.is_cpu() && CpuLlama::supports(&content) {
        let m = CpuLlama::load(path, &content, file, sequences, threads)?;
        return Ok((Box::new(m), "anya-cpu"));
    }
    if !device.is_cpu() && arch == Arch::Llama {
        let dtype = CandleLlama::dtype_for(device);
        let m = CandleLlama::load(path, &content, file, device, dtype, sequences)?;
        return Ok((Box::new(m), "candle-cuda"));
    }
    let weights = CandleWeights::load(arch, content, file, device).map_err(|e| load(&e))?;
    let engine = if device.is_cpu() {
        "candle-cpu"
    } else {
        "candle-cuda"
    };
    let m = GgufLlama {
        weights,
        device: device.clone(),
        context_length,
    };
    Ok((Box::new(m), engine))
}

pub struct GgufLlama {
    weights: CandleWeights,
    device: Device,
    context_length: usize,
}

/// A loaded GGUF model with what its metadata says about text.
pub struct LoadedLlama {
    pub model: Box<dyn CausalLm>,
    pub codec: TextCodec,
    pub chat_template: Option<ChatTemplate>,
    pub eos_token_ids: Vec<u32>,
    /// What the file holds, for `GET /models/{id}`.
    pub info: WeightsInfo,
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
        let (mut file, content, context_length) = open_gguf(path)?;
        let meta = GgufVocab::from_gguf(&content);
        let (codec, chat_template, eos_token_ids) = match tokenizer_json {
            Some(tj) => {
                let codec = TextCodec::from_file(tj, false, max_input_length)?;
                let meta = meta.ok();
                let template = match meta.as_ref().and_then(|m| m.chat_template()) {
                    Some(t) => Some(chat_template(t, &codec, meta.as_ref())?),
                    None => None,
                };
                let mut eos = meta.map(|m| m.eog_ids().to_vec()).unwrap_or_default();
                // ChatML models end a turn with <|im_end|>; treat it as an end even if it is not
                // the EOS.
                if let Some(id) = codec.token_id("<|im_end|>") {
                    if !eos.contains(&id) {
                        eos.push(id);
                    }
                }
                (codec, template, eos)
            }
            None => {
                let vocab = meta?;
                let codec = TextCodec::from_gguf(vocab, max_input_length);
                let vocab = codec.gguf_vocab();
                let source = vocab
                    .and_then(|v| v.chat_template())
                    .or_else(|| default_template(&content));
                let template = match source {
                    Some(t) => Some(chat_template(t, &codec, vocab)?),
                    None => None,
                };
                let eog = vocab.map(|v| v.eog_ids().to_vec()).unwrap_or_default();
                (codec, template, eog)
            }
        };
        let info = weights_info(&content, context_length);
        let (model, engine) = load_weights(
            path,
            content,
            context_length,
            &mut file,
            device,
            sequences,
            threads,
        )?;
        let info = WeightsInfo {
            engine: engine.into(),
            ..info
        };
        Ok(LoadedLlama {
            model,
            codec,
            chat_template,
            eos_token_ids,
            info,
        })
    }
}

/// Open a GGUF and read its header; with the context length its metadata gives (else 2048).
fn open_gguf(path: &Path) -> Result<(std::fs::File, gguf_file::Content, usize), ModelError> {
    let load = |e: &dyn std::fmt::Display| ModelError::Load(format!("{}: {e}", path.display()));
    let mut file = std::fs::File::open(path).map_err(|e| load(&e))?;
    let content = gguf_file::Content::read(&mut file).map_err(|e| {
        let e = e.to_string();
        if e.contains("dtype") {
            load(&format!(
                "{e} (tensor types supported: {})",
                super::llama_cpu::supported_types()
            ))
        } else {
            load(&e)
        }
    })?;
    let context_length = context_length_of(&content).unwrap_or(2048);
    Ok((file, content, context_length))
}

impl GgufLlama {
    /// candle's quantized llama on `path`, whatever the device (the baseline our CPU forward
    /// pass is measured against).
    pub fn open_candle(path: &Path, device: &Device) -> Result<GgufLlama, ModelError> {
        let load = |e: &dyn std::fmt::Display| ModelError::Load(format!("{}: {e}", path.display()));
        let (mut file, content, context_length) = open_gguf(path)?;
        let weights = quantized_llama::ModelWeights::from_gguf(content, &mut file, device)
            .map_err(|e| load(&e))?;
        Ok(GgufLlama {
            weights: CandleWeights::Llama(weights),
            device: device.clone(),
            context_length,
        })
    }
}

/// The chat template, with the BOS and EOS names of the GGUF's vocabulary; a leading BOS and a
/// trailing EOS it renders are dropped when `codec` adds them itself (as llama-server does).
/// Gemma's turn format, for Gemma files that carry no `tokenizer.chat_template` (the base
/// models): a system message opens the first user turn, the assistant's role is `model`.
const GEMMA_TEMPLATE: &str = "{{ bos_token }}\
{%- if messages[0]['role'] == 'system' -%}\
{%- set prefix = messages[0]['content'] + '\n\n' -%}{%- set turns = messages[1:] -%}\
{%- else -%}{%- set prefix = '' -%}{%- set turns = messages -%}{%- endif -%}\
{%- for message in turns -%}\
{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}\
{{ '<start_of_turn>' + role + '\n' + (prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}\
{%- endfor -%}\
{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}";

/// The chat template of a file without one, where its family has a known turn format (and its
/// vocabulary the turn tokens): Gemma's.
fn default_template(content: &gguf_file::Content) -> Option<&'static str> {
    let arch = super::gguf_meta::architecture(content);
    arch.starts_with("gemma").then_some(GEMMA_TEMPLATE)
}

fn chat_template(
    source: &str,
    codec: &TextCodec,
    meta: Option<&GgufVocab>,
) -> Result<ChatTemplate, ModelError> {
    let name = |id: Option<u32>| id.and_then(|i| codec.id_to_token(i)).unwrap_or_default();
    let template = ChatTemplate::new(
        source,
        &name(meta.and_then(|m| m.bos())),
        &name(meta.and_then(|m| m.eos())),
    )?;
    Ok(match codec.gguf_vocab() {
        Some(v) => template.without_added_tokens(v.add_bos(), v.add_eos()),
        None => template,
    })
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
