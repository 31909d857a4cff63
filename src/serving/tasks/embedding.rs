//! Embedding: texts (or token ids) → vectors; zero-shot classification by cosine similarity to
//! embedded candidate labels; KServe's FP32 `embedding` tensor; OpenAI's `/v1/embeddings`.

use serde_json::{json, Value};

use super::{described, Local, Made, OpenAiEndpoint, Remote, TaskKind};
use crate::engine::remote::{RemoteInput, RemoteWork};
use crate::engine::Work;
use crate::error::ApiError;
use crate::models::Frontend;
use crate::serving::classify::{self, Shaping, MAX_CANDIDATE_LABELS};
use crate::serving::params::ValidParams;
use crate::serving::validate::{check_ids, check_remote_size, encode};
use crate::serving::Input;
use crate::spec::manifest::{ParamSpec, ParamType, Task};

pub struct Embedding;

impl TaskKind for Embedding {
    fn task(&self) -> Task {
        Task::Embedding
    }

    fn cache_kind(&self) -> &'static str {
        "embed"
    }

    fn builtin_params(&self) -> Vec<ParamSpec> {
        vec![
            described(
                classify::spec(
                    "candidate_labels",
                    ParamType::StringList,
                    None,
                    Some(MAX_CANDIDATE_LABELS as f64),
                ),
                "zero-shot classification: answer these labels ranked by cosine similarity to each input instead of vectors",
            ),
            described(
                classify::spec("hypothesis_template", ParamType::String, None, Some(512.0)),
                "with candidate_labels: the text embedded for a label, `{}` standing for it (default `{}`)",
            ),
        ]
    }

    /// Zero-shot classification when `candidate_labels` are given.
    fn plan(
        &self,
        _frontend: &Frontend,
        params: &ValidParams,
    ) -> Result<Option<Shaping>, ApiError> {
        let labels = params.strings("candidate_labels");
        let template = params.str("hypothesis_template");
        if labels.is_empty() {
            if template.is_some() {
                return Err(ApiError::invalid(
                    "parameters.hypothesis_template",
                    "only applies with parameters.candidate_labels",
                ));
            }
            return Ok(None);
        }
        if let Some(t) = template {
            if t.matches("{}").count() != 1 {
                return Err(ApiError::invalid(
                    "parameters.hypothesis_template",
                    "must contain `{}` exactly once (where the label goes)",
                ));
            }
        }
        for (j, l) in labels.iter().enumerate() {
            if labels[..j].contains(l) {
                return Err(ApiError::invalid(
                    format!("parameters.candidate_labels[{j}]"),
                    format!("label `{l}` is listed twice"),
                ));
            }
        }
        Ok(Some(Shaping::ZeroShot { inputs: 0, labels }))
    }

    fn work(
        &self,
        cx: Local<'_>,
        inputs: Vec<Input>,
        shaping: &mut Option<Shaping>,
    ) -> Result<Made, ApiError> {
        encoder_work(cx, inputs, shaping)
    }

    fn remote(&self, cx: Remote<'_>, inputs: Vec<Input>) -> Result<Made, ApiError> {
        let inputs = inputs
            .into_iter()
            .enumerate()
            .map(|(i, input)| match input {
                Input::Text(t) if !t.is_empty() => {
                    check_remote_size(cx.manifest, i, t.len())?;
                    Ok(RemoteInput::Text(t))
                }
                Input::Tokens(t) if !t.is_empty() => {
                    check_remote_size(cx.manifest, i, t.len())?;
                    Ok(RemoteInput::Tokens(t))
                }
                _ => Err(ApiError::invalid(
                    format!("inputs[{i}]"),
                    "must be a non-empty string",
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Made {
            work: Work::Remote(RemoteWork::Embed { inputs }),
            cacheable: true,
            key_params: Vec::new(),
        })
    }

    fn input_item_schema(&self) -> Option<Value> {
        Some(json!({"type": "string"}))
    }

    fn output_schema(&self, dims: Option<usize>) -> Value {
        let mut vector = json!({"type": "array", "items": {"type": "number"}});
        if let Some(d) = dims {
            vector["minItems"] = json!(d);
            vector["maxItems"] = json!(d);
        }
        json!({"type": "array", "items": vector})
    }

    fn tensor_names(&self) -> (&'static str, &'static str) {
        ("text", "embedding")
    }

    fn answers_vectors(&self) -> bool {
        true
    }

    fn openai(&self) -> Option<OpenAiEndpoint> {
        Some(OpenAiEndpoint::Embeddings)
    }

    fn truncates(&self) -> bool {
        true
    }
}

/// An encoder's work (embedding and classification): each input tokenized (cut at the limit
/// with `truncate`), then, for zero-shot, the candidate labels' hypotheses after them.
pub(super) fn encoder_work(
    cx: Local<'_>,
    inputs: Vec<Input>,
    shaping: &mut Option<Shaping>,
) -> Result<Made, ApiError> {
    let (frontend, params) = (cx.frontend, cx.params);
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
    if let Some(Shaping::ZeroShot { inputs, labels }) = shaping {
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
    Ok(Made {
        work: Work::Embed { inputs: ids },
        cacheable: true,
        key_params: Vec::new(),
    })
}
