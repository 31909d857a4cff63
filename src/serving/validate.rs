//! Validation: the only place that makes a valid request. Inputs are checked against the
//! model's manifest (count, types, parameters) and tokenized with its `Frontend` (byte
//! pre-check first, truncation on request). Errors name a neutral field path (`inputs[2]`,
//! `parameters.temperature`) that each protocol adapter renders in its own terms.

use serde_json::{Map, Value};

use super::classify::Shaping;
use super::params;
use super::{tasks, Input};
use crate::engine::remote::{Prompt, RemoteInput, RemoteWork};
use crate::engine::Work;
use crate::error::ApiError;
use crate::models::text::EncodeError;
use crate::models::Frontend;
use crate::spec::manifest::Manifest;

/// A request that passed validation; only `validate` makes one.
pub struct Valid {
    pub work: Work,
    /// Deterministic: embeddings always, generation when greedy or seeded.
    pub cacheable: bool,
    /// Separates tasks in cache keys.
    pub kind: &'static str,
    /// The parameters that change the output, canonically encoded (for cache keys).
    pub key_params: Vec<u8>,
    /// How the outputs become the answer (classification, zero-shot).
    pub shaping: Option<Shaping>,
}

impl Valid {
    /// Each input's token ids (the canonical form the cache keys on); for a remote model,
    /// which tokenizes on its side, the input's canonical JSON as bytes.
    pub fn inputs(&self) -> Vec<std::borrow::Cow<'_, [u32]>> {
        use std::borrow::Cow;
        let bytes = |v: Value| -> Cow<'_, [u32]> {
            Cow::Owned(v.to_string().bytes().map(u32::from).collect())
        };
        match &self.work {
            Work::Embed { inputs } => inputs.iter().map(|i| Cow::Borrowed(i.as_slice())).collect(),
            Work::Generate { prompts, .. } => prompts
                .iter()
                .map(|p| Cow::Borrowed(p.as_slice()))
                .collect(),
            Work::Echo { .. } => Vec::new(),
            Work::Remote(RemoteWork::Embed { inputs }) => inputs
                .iter()
                .map(|i| match i {
                    RemoteInput::Text(t) => bytes(Value::from(t.as_str())),
                    RemoteInput::Tokens(t) => bytes(Value::from(t.clone())),
                })
                .collect(),
            Work::Remote(RemoteWork::Generate { prompts, .. }) => prompts
                .iter()
                .map(|p| match p {
                    Prompt::Text(t) => bytes(Value::from(t.as_str())),
                    Prompt::Chat(m) => bytes(serde_json::to_value(m).unwrap_or(Value::Null)),
                })
                .collect(),
        }
    }
}

/// Check a request against the model's manifest and tokenizer; the task's module makes its
/// work (`tasks`).
pub fn validate(
    manifest: &Manifest,
    frontend: &Frontend,
    inputs: Vec<Input>,
    parameters: &Map<String, Value>,
    logprobs: Option<usize>,
) -> Result<Valid, ApiError> {
    if inputs.is_empty() {
        return Err(ApiError::invalid("inputs", "must not be empty"));
    }
    if inputs.len() > manifest.max_inputs {
        return Err(ApiError::too_large(
            "inputs",
            format!(
                "{} inputs; this model takes at most {} per request (max_inputs)",
                inputs.len(),
                manifest.max_inputs
            ),
        ));
    }
    let task = tasks::of(manifest.task);
    let params = params::validate(&tasks::params_of(manifest), parameters)?;
    if manifest.provider.is_some() {
        if !params.strings("candidate_labels").is_empty() {
            return Err(ApiError::invalid(
                "parameters.candidate_labels",
                "zero-shot classification runs on local embedding models only",
            ));
        }
        if logprobs.is_some() {
            return Err(ApiError::invalid(
                "logprobs",
                "log-probabilities are not relayed from a remote model",
            ));
        }
        let cx = tasks::Remote {
            manifest,
            params: &params,
        };
        let made = task.remote(cx, inputs)?;
        return Ok(Valid {
            work: made.work,
            cacheable: made.cacheable,
            kind: task.cache_kind(),
            key_params: made.key_params,
            shaping: None,
        });
    }
    let mut shaping = task.plan(frontend, &params)?;
    let cx = tasks::Local {
        frontend,
        params: &params,
        logprobs,
    };
    let made = task.work(cx, inputs, &mut shaping)?;
    Ok(Valid {
        work: made.work,
        cacheable: made.cacheable,
        kind: task.cache_kind(),
        key_params: made.key_params,
        shaping,
    })
}

/// A remote model's input size: `max_input_length` bounds an input's bytes at 4 per token (its
/// provider tokenizes).
pub(crate) fn check_remote_size(
    manifest: &Manifest,
    i: usize,
    bytes: usize,
) -> Result<(), ApiError> {
    let max_bytes = manifest
        .max_input_length
        .saturating_mul(crate::models::text::MAX_BYTES_PER_TOKEN);
    if bytes > max_bytes {
        return Err(ApiError::invalid(
            format!("inputs[{i}]"),
            format!(
                "{bytes} bytes; an input may have at most {max_bytes} (max_input_length {} tokens × {} bytes)",
                manifest.max_input_length,
                crate::models::text::MAX_BYTES_PER_TOKEN
            ),
        ));
    }
    Ok(())
}

pub(crate) fn encode(
    frontend: &Frontend,
    text: &str,
    truncate: bool,
    i: usize,
) -> Result<Vec<u32>, ApiError> {
    let codec = frontend
        .codec
        .as_ref()
        .ok_or_else(|| ApiError::internal("model without a tokenizer"))?;
    codec.encode(text, truncate).map_err(|e| match e {
        EncodeError::TooLong { tokens, limit } => ApiError::invalid(
            format!("inputs[{i}]"),
            format!(
                "{tokens} tokens; the limit is {limit} (max_input_length){}",
                if tasks::of(frontend.task).truncates() {
                    "; set parameters.truncate to true to cut longer inputs"
                } else {
                    ""
                }
            ),
        ),
        EncodeError::TooManyBytes { bytes, limit } => ApiError::invalid(
            format!("inputs[{i}]"),
            format!(
                "{bytes} bytes; an input may have at most {limit} bytes (max_input_length {} tokens × {} bytes){}",
                codec.max_input_length(),
                crate::models::text::MAX_BYTES_PER_TOKEN,
                if tasks::of(frontend.task).truncates() {
                    "; set parameters.truncate to true to cut longer inputs"
                } else {
                    ""
                }
            ),
        ),
        EncodeError::Tokenizer(msg) => ApiError::invalid(format!("inputs[{i}]"), msg),
    })
}

/// Token ids given by the client: each must be in the vocabulary, and within the input limit.
pub(crate) fn check_ids(
    frontend: &Frontend,
    ids: &[u32],
    truncate: bool,
    i: usize,
) -> Result<Vec<u32>, ApiError> {
    let codec = frontend
        .codec
        .as_ref()
        .ok_or_else(|| ApiError::internal("model without a tokenizer"))?;
    if ids.is_empty() {
        return Err(ApiError::invalid(
            format!("inputs[{i}]"),
            "must not be empty",
        ));
    }
    let vocab = codec.vocab_size();
    if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::invalid(
            format!("inputs[{i}]"),
            format!("token id {bad} is outside the vocabulary (0..{vocab})"),
        ));
    }
    let limit = codec.max_input_length();
    if ids.len() > limit {
        if truncate {
            return Ok(ids[..limit].to_vec());
        }
        return Err(ApiError::invalid(
            format!("inputs[{i}]"),
            format!(
                "{} tokens; the limit is {limit} (max_input_length)",
                ids.len()
            ),
        ));
    }
    Ok(ids.to_vec())
}
