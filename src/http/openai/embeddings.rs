//! `/v1/embeddings` without axum: the request's inputs go to the core, the vectors come back as
//! an `EmbeddingList` (cut to `dimensions` and normalised again, floats or base64).

use std::sync::Arc;

use base64::Engine as _;
use http::HeaderMap;
use serde_json::{Map, Value};

use super::generate::{require_task, split_model, token_ids};
use super::types::{
    Embedding, EmbeddingList, EmbeddingObjectKind, EmbeddingRequest, EmbeddingUsage,
    EmbeddingVector, ListObject,
};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::metrics::ModelLabel;
use crate::serving::tasks::OpenAiEndpoint;
use crate::serving::{Answer, Caller, Core, Input, Item, Route, ServeRequest};

/// The vectors, and which target answered.
#[derive(Debug)]
pub struct Embedded {
    pub body: EmbeddingList,
    pub route: Route,
}

/// Embeds the request's inputs through the core. The label (once a version is known) comes
/// back whatever the outcome.
pub async fn run(
    core: &Arc<Core>,
    principal: Option<&Principal>,
    headers: HeaderMap,
    req: EmbeddingRequest,
    background: bool,
) -> (Option<ModelLabel>, Result<Embedded, ApiError>) {
    let prepared = encoding(req.encoding_format.as_deref())
        .and_then(|base64| Ok((inputs(&req.input)?, base64)));
    let (inputs, base64) = match prepared {
        Ok(p) => p,
        Err(e) => return (None, Err(e)),
    };
    let (model, version) = split_model(&req.model);
    if let Err(e) = require_task(core, &model, version.as_deref(), OpenAiEndpoint::Embeddings) {
        return (None, Err(e));
    }
    let serve = ServeRequest {
        model,
        version,
        inputs,
        params: req
            .use_fallbacks
            .map(|b| Map::from_iter([("use_fallbacks".to_string(), Value::Bool(b))]))
            .unwrap_or_default(),
        cache: true,
        logprobs: None,
        headers,
        user: req.user.clone(),
        background,
    };
    let (label, outcome) = core.infer(Caller { principal }, serve).await;
    let reply = outcome.and_then(|answer| {
        Ok(Embedded {
            body: render(&answer, &req, base64)?,
            route: answer.route,
        })
    });
    (label, reply)
}

/// `encoding_format`: whether the vectors go out as base64.
fn encoding(format: Option<&str>) -> Result<bool, ApiError> {
    match format {
        None | Some("float") => Ok(false),
        Some("base64") => Ok(true),
        Some(_) => Err(ApiError::invalid(
            "encoding_format",
            "must be float or base64",
        )),
    }
}

/// `input`: one string, a list of strings, one list of token ids, or a list of such lists.
fn inputs(input: &Value) -> Result<Vec<Input>, ApiError> {
    match input {
        Value::String(s) => Ok(vec![Input::Text(s.clone())]),
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_string) => Ok(items
            .iter()
            .filter_map(|v| v.as_str().map(|s| Input::Text(s.to_string())))
            .collect()),
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_u64) => {
            token_ids(items)
                .map(|ids| vec![Input::Tokens(ids)])
                .ok_or_else(|| ApiError::invalid("input", "token ids must fit in 32 bits"))
        }
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_array) => items
            .iter()
            .map(|l| {
                l.as_array()
                    .and_then(|l| token_ids(l.as_slice()))
                    .map(Input::Tokens)
                    .ok_or_else(|| ApiError::invalid("input", "token lists must hold token ids"))
            })
            .collect(),
        _ => Err(ApiError::invalid(
            "input",
            "must be a string, a list of strings, a list of token ids or a list of such lists",
        )),
    }
}

fn render(
    answer: &Answer,
    req: &EmbeddingRequest,
    base64: bool,
) -> Result<EmbeddingList, ApiError> {
    let mut data = Vec::with_capacity(answer.items.len());
    for (i, item) in answer.items.iter().enumerate() {
        let Item::Vector(v) = item else {
            return Err(ApiError::invalid("model", "is not an embedding model"));
        };
        let mut v: Vec<f32> = v.to_vec();
        if let Some(d) = req.dimensions {
            if d == 0 || d > v.len() {
                return Err(ApiError::invalid(
                    "dimensions",
                    format!("must be between 1 and {} for this model", v.len()),
                ));
            }
            v.truncate(d);
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            if norm > 0.0 {
                v.iter_mut().for_each(|x| *x /= norm);
            }
        }
        let embedding = if base64 {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            EmbeddingVector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
        } else {
            EmbeddingVector::Float(v)
        };
        data.push(Embedding {
            object: EmbeddingObjectKind::Embedding,
            index: i,
            embedding,
        });
    }
    let tokens = answer.prompt_tokens;
    Ok(EmbeddingList {
        object: ListObject::List,
        data,
        model: req.model.clone(),
        usage: EmbeddingUsage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn inputs_take_every_openai_shape_and_refuse_the_rest() {
        assert!(matches!(&inputs(&json!("a")).unwrap()[..], [Input::Text(t)] if t == "a"));
        assert_eq!(inputs(&json!(["a", "b"])).unwrap().len(), 2);
        assert!(matches!(&inputs(&json!([1, 2])).unwrap()[..], [Input::Tokens(t)] if t == &[1, 2]));
        assert_eq!(inputs(&json!([[1], [2, 3]])).unwrap().len(), 2);
        for bad in [
            json!([]),
            json!(["a", 1]),
            json!([[1], ["x"]]),
            json!([4294967296u64]),
        ] {
            let e = inputs(&bad).unwrap_err();
            assert_eq!(e.details.field.as_deref(), Some("input"), "{bad}");
        }
        assert_eq!(encoding(None).ok(), Some(false));
        assert_eq!(encoding(Some("base64")).ok(), Some(true));
        assert!(encoding(Some("int8")).is_err());
    }

    #[test]
    fn dimensions_cut_and_renormalise() {
        let answer = Answer {
            model: "e".into(),
            version: "1".into(),
            items: vec![Item::Vector(Arc::from(&[3.0f32, 4.0, 12.0][..]))],
            stats: Default::default(),
            latency: Default::default(),
            cache_hits: 0,
            cache: None,
            prompt_tokens: 3,
            completion_tokens: 0,
            route: Route::default(),
        };
        let req: EmbeddingRequest =
            serde_json::from_value(json!({"model": "e", "input": "x", "dimensions": 2})).unwrap();
        let list = render(&answer, &req, false).unwrap();
        let v = serde_json::to_value(&list).unwrap();
        assert_eq!(v["data"][0]["embedding"], json!([0.6f32, 0.8f32]));
        assert_eq!(v["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));
        let req: EmbeddingRequest =
            serde_json::from_value(json!({"model": "e", "input": "x", "dimensions": 4})).unwrap();
        let e = render(&answer, &req, false).unwrap_err();
        assert_eq!(e.details.field.as_deref(), Some("dimensions"));
    }
}
