//! Validation: the only place that makes a valid request. Inputs are checked against the
//! model's manifest (count, types, parameters) and tokenized with its `Frontend` (byte
//! pre-check first, truncation on request). Errors name a neutral field path (`inputs[2]`,
//! `parameters.temperature`) that each protocol adapter renders in its own terms.

use std::time::Duration;

use serde_json::{Map, Value};

use super::classify::{self, Shaping};
use super::params::{self, ValidParams};
use super::Input;
use crate::engine::remote::{Prompt, RemoteInput, RemoteWork};
use crate::engine::Work;
use crate::error::ApiError;
use crate::models::generate::GenParams;
use crate::models::sampling::SamplingParams;
use crate::models::text::EncodeError;
use crate::models::{ChatMessage, Frontend};
use crate::spec::manifest::{Manifest, Task};

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

/// Check a request against the model's manifest and tokenizer.
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
    let params = params::validate(&classify::params_of(manifest), parameters)?;
    if manifest.provider.is_some() {
        if !params.strings("candidate_labels").is_empty() {
            return Err(ApiError::invalid(
                "parameters.candidate_labels",
                "zero-shot classification runs on local embedding models only",
            ));
        }
        return validate_remote(manifest, inputs, &params, logprobs);
    }
    let mut shaping = classify::plan(manifest.task, frontend, &params)?;
    let (mut cacheable, mut kind, mut key_params) = (false, "echo", Vec::new());
    let work = match manifest.task {
        Task::Embedding | Task::Classification => {
            let truncate = params.bool("truncate").unwrap_or(false);
            let mut ids = inputs
                .iter()
                .enumerate()
                .map(|(i, input)| match input {
                    Input::Text(text) => encode(frontend, text, truncate, i),
                    Input::Tokens(ids) => check_ids(frontend, ids, truncate, i),
                    _ => Err(ApiError::invalid(
                        format!("inputs[{i}]"),
                        "must be a string",
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(Shaping::ZeroShot { inputs, labels }) = &mut shaping {
                *inputs = ids.len();
                let texts = classify::hypotheses(labels, params.str("hypothesis_template"));
                for (j, text) in texts.iter().enumerate() {
                    let label_ids = encode(frontend, text, truncate, 0).map_err(|e| {
                        ApiError::invalid(
                            format!("parameters.candidate_labels[{j}]"),
                            e.details.issue.unwrap_or(e.message),
                        )
                    })?;
                    ids.push(label_ids);
                }
            }
            cacheable = true;
            kind = match manifest.task {
                Task::Classification => "classify",
                _ => "embed",
            };
            Work::Embed { inputs: ids }
        }
        Task::TextGeneration => {
            let mut gen = gen_params(&params);
            gen.logprobs = logprobs;
            let prompts = inputs
                .into_iter()
                .enumerate()
                .map(|(i, input)| {
                    let ids = match input {
                        Input::Tokens(ids) => check_ids(frontend, &ids, false, i)?,
                        other => {
                            let prompt = prompt_text(frontend, other, i)?;
                            encode(frontend, &prompt, false, i)?
                        }
                    };
                    if ids.is_empty() {
                        return Err(ApiError::invalid(
                            format!("inputs[{i}]"),
                            "the prompt is empty",
                        ));
                    }
                    Ok(ids)
                })
                .collect::<Result<Vec<_>, _>>()?;
            // Greedy, or sampling from a seed the client chose: the same request gives the
            // same text, so it may be cached.
            let greedy = gen.sampling.temperature <= 0.0;
            // Log-probabilities are not kept in the cache: such requests always compute.
            cacheable = (greedy || params.u64("seed").is_some()) && logprobs.is_none();
            kind = "generate";
            let canonical = if greedy {
                serde_json::json!([gen.max_tokens, gen.stop, 0.0, gen.ignore_eos])
            } else {
                serde_json::json!([
                    gen.max_tokens,
                    gen.stop,
                    gen.sampling.temperature,
                    gen.sampling.top_k,
                    gen.sampling.top_p,
                    gen.seed,
                    gen.ignore_eos
                ])
            };
            key_params = canonical.to_string().into_bytes();
            Work::Generate {
                prompts,
                params: gen,
            }
        }
        Task::Echo => Work::Echo {
            inputs: inputs.into_iter().map(Input::into_json).collect(),
            delay: Duration::from_millis(params.u64("delay_ms").unwrap_or(0)),
            fail: params
                .f64("fail_rate")
                .is_some_and(|rate| rand::random::<f64>() < rate),
        },
    };
    Ok(Valid {
        work,
        cacheable,
        kind,
        key_params,
        shaping,
    })
}

/// A remote model's request: the same checks of counts, types and sizes, no tokenization (its
/// provider tokenizes). `max_input_length` bounds an input's bytes at 4 per token.
fn validate_remote(
    manifest: &Manifest,
    inputs: Vec<Input>,
    params: &ValidParams,
    logprobs: Option<usize>,
) -> Result<Valid, ApiError> {
    let max_bytes = manifest
        .max_input_length
        .saturating_mul(crate::models::text::MAX_BYTES_PER_TOKEN);
    let check_size = |i: usize, bytes: usize| {
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
    };
    if logprobs.is_some() {
        return Err(ApiError::invalid(
            "logprobs",
            "log-probabilities are not relayed from a remote model",
        ));
    }
    match manifest.task {
        Task::Embedding => {
            let inputs = inputs
                .into_iter()
                .enumerate()
                .map(|(i, input)| match input {
                    Input::Text(t) if !t.is_empty() => {
                        check_size(i, t.len())?;
                        Ok(RemoteInput::Text(t))
                    }
                    Input::Tokens(t) if !t.is_empty() => {
                        check_size(i, t.len())?;
                        Ok(RemoteInput::Tokens(t))
                    }
                    _ => Err(ApiError::invalid(
                        format!("inputs[{i}]"),
                        "must be a non-empty string",
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Valid {
                work: Work::Remote(RemoteWork::Embed { inputs }),
                cacheable: true,
                kind: "embed",
                key_params: Vec::new(),
                shaping: None,
            })
        }
        Task::TextGeneration => {
            let gen = gen_params(params);
            let prompts = inputs
                .into_iter()
                .enumerate()
                .map(|(i, input)| {
                    let field = format!("inputs[{i}]");
                    let prompt = match input {
                        Input::Text(t) if !t.is_empty() => Prompt::Text(t),
                        Input::Json(Value::String(t)) if !t.is_empty() => Prompt::Text(t),
                        Input::Chat(m) => Prompt::Chat(m),
                        Input::Json(v @ Value::Array(_)) => {
                            Prompt::Chat(serde_json::from_value(v).map_err(|e| {
                                ApiError::invalid(
                                    field.clone(),
                                    format!("a conversation must be a list of {{\"role\", \"content\"}} messages: {e}"),
                                )
                            })?)
                        }
                        _ => {
                            return Err(ApiError::invalid(
                                field,
                                "must be a non-empty string or a list of {\"role\", \"content\"} messages",
                            ))
                        }
                    };
                    let bytes = match &prompt {
                        Prompt::Text(t) => t.len(),
                        Prompt::Chat(m) => {
                            if m.is_empty() {
                                return Err(ApiError::invalid(field, "the conversation is empty"));
                            }
                            m.iter().map(|m| m.content.len()).sum()
                        }
                    };
                    check_size(i, bytes)?;
                    Ok(prompt)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let greedy = gen.sampling.temperature <= 0.0;
            let canonical = serde_json::json!([
                gen.max_tokens,
                gen.stop,
                gen.sampling.temperature,
                gen.sampling.top_p,
                if greedy { 0 } else { gen.seed },
                gen.ignore_eos
            ]);
            Ok(Valid {
                work: Work::Remote(RemoteWork::Generate {
                    prompts,
                    params: gen,
                }),
                cacheable: greedy || params.u64("seed").is_some(),
                kind: "generate",
                key_params: canonical.to_string().into_bytes(),
                shaping: None,
            })
        }
        Task::Echo | Task::Classification => Err(ApiError::internal(
            "a remote model is an embedding or text-generation model",
        )),
    }
}

fn encode(frontend: &Frontend, text: &str, truncate: bool, i: usize) -> Result<Vec<u32>, ApiError> {
    let codec = frontend
        .codec
        .as_ref()
        .ok_or_else(|| ApiError::internal("model without a tokenizer"))?;
    codec.encode(text, truncate).map_err(|e| match e {
        EncodeError::TooLong { tokens, limit } => ApiError::invalid(
            format!("inputs[{i}]"),
            format!(
                "{tokens} tokens; the limit is {limit} (max_input_length){}",
                if matches!(frontend.task, Task::Embedding | Task::Classification) {
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
                if matches!(frontend.task, Task::Embedding | Task::Classification) {
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
fn check_ids(
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

/// A raw prompt, or a conversation rendered with the model's chat template.
fn prompt_text(frontend: &Frontend, input: Input, i: usize) -> Result<String, ApiError> {
    let field = format!("inputs[{i}]");
    let v = match input {
        Input::Text(s) => return Ok(s),
        Input::Chat(messages) => return render_chat(frontend, messages, field),
        Input::Tokens(_) => return Err(ApiError::invalid(field, "must be text")),
        Input::Json(v) => v,
    };
    match v {
        Value::String(s) => Ok(s),
        Value::Array(items) => {
            // Each message must be an object: serde would also read `["user", "hi"]` as one.
            if let Some(j) = items.iter().position(|m| !m.is_object()) {
                return Err(ApiError::invalid(
                    format!("{field}[{j}]"),
                    "a message must be an object {\"role\", \"content\"}",
                ));
            }
            let messages: Vec<ChatMessage> =
                serde_json::from_value(Value::Array(items)).map_err(|e| {
                    ApiError::invalid(
                        field.clone(),
                        format!(
                        "a conversation must be a list of {{\"role\", \"content\"}} messages: {e}"
                    ),
                    )
                })?;
            render_chat(frontend, messages, field)
        }
        _ => Err(ApiError::invalid(
            field,
            "must be a string or a list of {\"role\", \"content\"} messages",
        )),
    }
}

/// A conversation rendered with the model's chat template.
fn render_chat(
    frontend: &Frontend,
    messages: Vec<ChatMessage>,
    field: String,
) -> Result<String, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid(field, "the conversation is empty"));
    }
    // Refuse an oversized conversation before rendering the template over it.
    if let Some(codec) = &frontend.codec {
        let bytes: usize = messages.iter().map(|m| m.content.len()).sum();
        if bytes > codec.max_input_bytes() {
            return Err(ApiError::invalid(
                field,
                format!(
                    "{bytes} bytes of messages; a conversation may have at most {} (max_input_length {} tokens × {} bytes)",
                    codec.max_input_bytes(),
                    codec.max_input_length(),
                    crate::models::text::MAX_BYTES_PER_TOKEN
                ),
            ));
        }
    }
    if let Some(m) = messages
        .iter()
        .find(|m| !["system", "user", "assistant"].contains(&m.role.as_str()))
    {
        return Err(ApiError::invalid(
            field,
            format!("role `{}` must be system, user or assistant", m.role),
        ));
    }
    let template = frontend.chat_template.as_ref().ok_or_else(|| {
        ApiError::invalid(
            field.clone(),
            "this model has no chat template; send a string prompt",
        )
    })?;
    template
        .render(&messages)
        .map_err(|e| ApiError::invalid(field, format!("chat template: {e}")))
}

pub(crate) fn gen_params(p: &ValidParams) -> GenParams {
    GenParams {
        max_tokens: p.u64("max_tokens").unwrap_or(128) as usize,
        sampling: SamplingParams {
            temperature: p.f64("temperature").unwrap_or(0.8),
            top_k: p.u64("top_k").unwrap_or(0) as usize,
            top_p: p.f64("top_p").unwrap_or(1.0),
        },
        stop: p.strings("stop"),
        seed: p.u64("seed").unwrap_or_else(rand::random),
        logprobs: None,
        ignore_eos: p.bool("ignore_eos").unwrap_or(false),
    }
}
