//! Text generation: prompts (raw text, token ids, or a conversation through the model's chat
//! template) → generated text, streamed token by token; KServe's `text_input` / `text_output`;
//! OpenAI's `/v1/chat/completions` and `/v1/completions`.

use serde_json::{json, Value};

use super::{Local, Made, OpenAiEndpoint, Remote, TaskKind};
use crate::engine::remote::{Prompt, RemoteWork};
use crate::engine::Work;
use crate::error::ApiError;
use crate::models::generate::GenParams;
use crate::models::sampling::SamplingParams;
use crate::models::{ChatMessage, Frontend};
use crate::serving::classify::Shaping;
use crate::serving::params::ValidParams;
use crate::serving::validate::{check_ids, check_remote_size, encode};
use crate::serving::Input;
use crate::spec::manifest::Task;

pub struct Generation;

impl TaskKind for Generation {
    fn task(&self) -> Task {
        Task::TextGeneration
    }

    fn cache_kind(&self) -> &'static str {
        "generate"
    }

    fn work(
        &self,
        cx: Local<'_>,
        inputs: Vec<Input>,
        _shaping: &mut Option<Shaping>,
    ) -> Result<Made, ApiError> {
        let (frontend, params) = (cx.frontend, cx.params);
        let mut gen = gen_params(params);
        gen.logprobs = cx.logprobs;
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
        // Greedy, or sampling from a seed the client chose: the same request gives the same
        // text, so it may be cached.
        let greedy = gen.sampling.temperature <= 0.0;
        let canonical = if greedy {
            json!([gen.max_tokens, gen.stop, 0.0, gen.ignore_eos])
        } else {
            json!([
                gen.max_tokens,
                gen.stop,
                gen.sampling.temperature,
                gen.sampling.top_k,
                gen.sampling.top_p,
                gen.seed,
                gen.ignore_eos
            ])
        };
        Ok(Made {
            // Log-probabilities are not kept in the cache: such requests always compute.
            cacheable: (greedy || params.u64("seed").is_some()) && cx.logprobs.is_none(),
            key_params: canonical.to_string().into_bytes(),
            work: Work::Generate {
                prompts,
                params: gen,
            },
        })
    }

    fn remote(&self, cx: Remote<'_>, inputs: Vec<Input>) -> Result<Made, ApiError> {
        let gen = gen_params(cx.params);
        let prompts = inputs
            .into_iter()
            .enumerate()
            .map(|(i, input)| remote_prompt(cx.manifest, i, input))
            .collect::<Result<Vec<_>, _>>()?;
        let greedy = gen.sampling.temperature <= 0.0;
        let canonical = json!([
            gen.max_tokens,
            gen.stop,
            gen.sampling.temperature,
            gen.sampling.top_p,
            if greedy { 0 } else { gen.seed },
            gen.ignore_eos
        ]);
        Ok(Made {
            cacheable: greedy || cx.params.u64("seed").is_some(),
            key_params: canonical.to_string().into_bytes(),
            work: Work::Remote(RemoteWork::Generate {
                prompts,
                params: gen,
            }),
        })
    }

    fn input_item_schema(&self) -> Option<Value> {
        Some(json!({"oneOf": [
            {"type": "string", "description": "a raw prompt"},
            {"type": "array", "description": "a conversation; the chat template is applied",
             "items": {"type": "object", "required": ["role", "content"],
                       "properties": {"role": {"enum": ["system", "user", "assistant"]},
                                      "content": {"type": "string"}}}}
        ]}))
    }

    fn output_schema(&self, _dims: Option<usize>) -> Value {
        json!({"type": "array", "items": {"type": "string"}})
    }

    fn tensor_names(&self) -> (&'static str, &'static str) {
        ("text_input", "text_output")
    }

    fn openai(&self) -> Option<OpenAiEndpoint> {
        Some(OpenAiEndpoint::Generation)
    }

    fn generates(&self) -> bool {
        true
    }
}

/// One prompt for a remote model: text or a conversation, within the byte limit.
fn remote_prompt(
    manifest: &crate::spec::manifest::Manifest,
    i: usize,
    input: Input,
) -> Result<Prompt, ApiError> {
    let field = format!("inputs[{i}]");
    let prompt = match input {
        Input::Text(t) if !t.is_empty() => Prompt::Text(t),
        Input::Json(Value::String(t)) if !t.is_empty() => Prompt::Text(t),
        Input::Chat(m) => Prompt::Chat(m),
        Input::Json(v @ Value::Array(_)) => {
            Prompt::Chat(serde_json::from_value(v).map_err(|e| {
                ApiError::invalid(
                    field.clone(),
                    format!(
                        "a conversation must be a list of {{\"role\", \"content\"}} messages: {e}"
                    ),
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
    check_remote_size(manifest, i, bytes)?;
    Ok(prompt)
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
