//! Models: what a worker thread owns and runs. No HTTP and no tokio here.
//!
//! A loaded model is split in two:
//! - a [`Backend`] (the weights and their forward pass), owned by exactly one worker thread, so
//!   it needs `Send` but never `Sync`;
//! - a [`Frontend`] (tokenizer, chat template, shapes), shared read-only with the HTTP handlers
//!   through an `Arc`, so requests are tokenized and validated before they queue.

pub mod bert;
pub mod bert_fast;
pub mod classify;
pub mod device;
pub mod generate;
pub mod gguf_meta;
pub mod gguf_tokenizer;
pub mod kernels;
pub mod llama;
pub mod llama_candle;
pub mod llama_cpu;
pub mod logreg;
pub mod quant;
pub mod sampling;
pub mod sgemm;
#[cfg(test)]
pub(crate) mod test_gguf;
pub mod text;

use std::path::Path;

use candle_core::Device;

use crate::spec::manifest::{Format, Manifest, Task};
pub use generate::{FinishReason, GenParams, Generation};
pub use text::{ChatMessage, ChatTemplate, TextCodec};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model load failed: {0}")]
    Load(String),
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

impl From<candle_core::Error> for ModelError {
    fn from(e: candle_core::Error) -> Self {
        ModelError::Inference(e.to_string())
    }
}

/// A model that turns token sequences into fixed-size vectors.
pub trait Embedder: Send {
    /// One forward pass over the whole batch; one vector per sequence, in order.
    fn embed(&mut self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, ModelError>;
}

/// Tokens of one sequence to run in a step: `tokens` at positions `start..start + len` of the
/// sequence held in KV-cache slot `slot`. What the slot held from `start` on is replaced.
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    pub slot: usize,
    pub start: usize,
    pub tokens: &'a [u32],
    /// Return the logits of the chunk's last token.
    pub logits: bool,
}

/// A causal language model with a KV cache per sequence slot.
pub trait CausalLm: Send {
    /// Run every chunk (each in a different slot) as one batch; for each chunk that asks, in
    /// order, the logits of its last token.
    fn step(&mut self, chunks: &[Chunk<'_>]) -> Result<Vec<Vec<f32>>, ModelError>;
    /// Most positions a sequence may use (prompt plus generated tokens).
    fn context_length(&self) -> usize;
    /// Sequences that can be in flight at once (KV-cache slots).
    fn max_sequences(&self) -> usize {
        1
    }
    /// Forget what `slot` holds (its memory can be reused).
    fn release(&mut self, _slot: usize) {}
    /// One sequence in slot 0: run `tokens` from `start`, return the last token's logits.
    fn forward(&mut self, tokens: &[u32], start: usize) -> Result<Vec<f32>, ModelError> {
        self.step(&[Chunk {
            slot: 0,
            start,
            tokens,
            logits: true,
        }])?
        .pop()
        .ok_or_else(|| ModelError::Inference("no logits".into()))
    }
}

/// Check a step before running it: every slot exists and appears once, no chunk is empty,
/// starts after what its slot holds (`lens`) or runs past `context`, and every token is in the
/// vocabulary.
pub(crate) fn check_chunks(
    chunks: &[Chunk<'_>],
    lens: &[usize],
    context: usize,
    vocab: usize,
) -> Result<(), ModelError> {
    let bad = |m: String| Err(ModelError::Inference(m));
    for (i, c) in chunks.iter().enumerate() {
        let Some(&len) = lens.get(c.slot) else {
            return bad(format!("slot {} of {}", c.slot, lens.len()));
        };
        if chunks[..i].iter().any(|o| o.slot == c.slot) {
            return bad(format!("slot {} twice in one step", c.slot));
        }
        if c.tokens.is_empty() {
            return bad("an empty chunk".into());
        }
        if c.start > len {
            return bad(format!(
                "chunk starts at {} after the cached {len}",
                c.start
            ));
        }
        if c.start + c.tokens.len() > context {
            return bad(format!("past the context of {context}"));
        }
        if let Some(t) = c.tokens.iter().find(|&&t| t as usize >= vocab) {
            return bad(format!("token {t} is outside the vocabulary"));
        }
    }
    Ok(())
}

/// Threads for a model's compute pool: `RAYON_NUM_THREADS` (set from `model.threads`) or one per
/// core.
pub fn compute_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The compute side of a model, owned by its worker thread.
pub enum Backend {
    Embedding(Box<dyn Embedder>),
    Generation(Box<dyn CausalLm>),
    /// The identity: outputs are the inputs.
    Echo,
}

/// The request side of a model, shared with the handlers.
#[derive(Debug)]
pub struct Frontend {
    pub task: Task,
    pub codec: Option<TextCodec>,
    pub chat_template: Option<ChatTemplate>,
    /// Embedding size.
    pub dimensions: Option<usize>,
    /// Tokens that end a generation.
    pub eos_token_ids: Vec<u32>,
    pub context_length: Option<usize>,
    pub device: String,
    /// A classifier's labels and problem type.
    pub classes: Option<classify::ClassifierInfo>,
    /// A GGUF's architecture, tensor types, size and engine.
    pub weights: Option<gguf_meta::WeightsInfo>,
}

/// Load a model version from its folder onto `device`. Runs on the worker thread.
pub fn load(
    manifest: &Manifest,
    dir: &Path,
    device: &Device,
) -> Result<(Backend, Frontend), ModelError> {
    match (manifest.task, manifest.format) {
        (Task::Embedding, Format::Safetensors) => load_embedder(manifest, dir, device),
        (Task::Classification, Format::Safetensors) => load_classifier(manifest, dir, device),
        (Task::TextGeneration, Format::Gguf) => load_generator(manifest, dir, device),
        (Task::Echo, _) => Ok((
            Backend::Echo,
            Frontend {
                task: Task::Echo,
                codec: None,
                chat_template: None,
                dimensions: None,
                eos_token_ids: vec![],
                context_length: None,
                device: "cpu".into(),
                classes: None,
                weights: None,
            },
        )),
        (task, format) => Err(ModelError::Load(format!(
            "task {} with format {format:?} is not supported",
            task.as_str()
        ))),
    }
}

/// The file the manifest names in `rel` (a `what`), inside the version's folder.
fn manifest_path(
    manifest: &Manifest,
    dir: &Path,
    rel: &Option<String>,
    what: &str,
) -> Result<std::path::PathBuf, ModelError> {
    let rel = rel
        .as_ref()
        .ok_or_else(|| ModelError::Load(format!("the manifest names no {what}")))?;
    manifest
        .path_of(dir, rel)
        .map_err(|e| ModelError::Load(e.to_string()))
}

/// An embedding model (safetensors BERT) on `device`.
fn load_embedder(
    manifest: &Manifest,
    dir: &Path,
    device: &Device,
) -> Result<(Backend, Frontend), ModelError> {
    let device_name = device::describe(device);
    let codec = TextCodec::from_file(
        &manifest_path(manifest, dir, &manifest.tokenizer, "tokenizer")?,
        true,
        manifest.max_input_length,
    )?;
    let model = bert_embedder(manifest, dir, device)?;
    let dims = model.dimensions();
    Ok((
        Backend::Embedding(Box::new(model)),
        Frontend {
            task: Task::Embedding,
            codec: Some(codec),
            chat_template: None,
            dimensions: Some(dims),
            eos_token_ids: vec![],
            context_length: None,
            device: device_name,
            classes: None,
            weights: None,
        },
    ))
}

/// The BERT embedder a manifest describes (weights, config, pooling from `1_Pooling` or mean).
fn bert_embedder(
    manifest: &Manifest,
    dir: &Path,
    device: &Device,
) -> Result<bert::BertEmbedder, ModelError> {
    let pooling = match &manifest.pooling_config {
        Some(_) => bert::Pooling::from_file(&manifest_path(
            manifest,
            dir,
            &manifest.pooling_config,
            "pooling config",
        )?)?,
        None => bert::Pooling::Mean,
    };
    bert::BertEmbedder::load(
        &manifest_path(manifest, dir, &manifest.weights, "weights")?,
        &manifest_path(manifest, dir, &manifest.config, "config")?,
        pooling,
        manifest.normalize,
        device,
    )
}

/// A classifier (a BERT classifier, or a trained head on an embedding model), on the CPU.
fn load_classifier(
    manifest: &Manifest,
    dir: &Path,
    device: &Device,
) -> Result<(Backend, Frontend), ModelError> {
    // The classifier runs on the CPU encoder whatever the device setting says.
    if !device.is_cpu() {
        tracing::warn!(model = %manifest.id, "classification models run on the CPU");
    }
    let codec = TextCodec::from_file(
        &manifest_path(manifest, dir, &manifest.tokenizer, "tokenizer")?,
        true,
        manifest.max_input_length,
    )?;
    let (model, classes): (Box<dyn Embedder>, _) = match &manifest.head {
        // A trained head on an embedding model's vectors.
        Some(head) => {
            let base = bert_embedder(manifest, dir, &Device::Cpu)?;
            let m = classify::HeadClassifier::new(
                base,
                &manifest_path(manifest, dir, &Some(head.weights.clone()), "head weights")?,
                head.classes.clone(),
            )?;
            let info = m.info().clone();
            (Box::new(m), info)
        }
        None => {
            let m = classify::BertClassifier::load(
                &manifest_path(manifest, dir, &manifest.weights, "weights")?,
                &manifest_path(manifest, dir, &manifest.config, "config")?,
            )?;
            let info = m.info().clone();
            (Box::new(m), info)
        }
    };
    Ok((
        Backend::Embedding(model),
        Frontend {
            task: Task::Classification,
            codec: Some(codec),
            chat_template: None,
            dimensions: Some(classes.labels.len()),
            eos_token_ids: vec![],
            context_length: None,
            device: "cpu".into(),
            classes: Some(classes),
            weights: None,
        },
    ))
}

/// A text generation model (GGUF llama) on `device`.
fn load_generator(
    manifest: &Manifest,
    dir: &Path,
    device: &Device,
) -> Result<(Backend, Frontend), ModelError> {
    let device_name = device::describe(device);
    let tokenizer = match &manifest.tokenizer {
        Some(_) => Some(manifest_path(
            manifest,
            dir,
            &manifest.tokenizer,
            "tokenizer",
        )?),
        None => None,
    };
    let loaded = llama::GgufLlama::load(
        &manifest_path(manifest, dir, &manifest.weights, "weights")?,
        tokenizer.as_deref(),
        manifest.max_input_length,
        device,
        manifest.batching.max_batch_size,
        compute_threads(),
    )?;
    let frontend = Frontend {
        task: Task::TextGeneration,
        codec: Some(loaded.codec),
        chat_template: loaded.chat_template,
        dimensions: None,
        eos_token_ids: loaded.eos_token_ids,
        context_length: Some(loaded.model.context_length()),
        device: device_name,
        classes: None,
        weights: Some(loaded.info),
    };
    Ok((Backend::Generation(loaded.model), frontend))
}
