//! One generate path for `/v1/chat/completions` and `/v1/completions`: both requests map into
//! one `Generation` (inputs, parameters, choices, stream options), the core answers it, and the
//! answer becomes a `ChatCompletion` / `TextCompletion` or a stream of chunks. No axum here:
//! `run` takes the typed request and returns a typed reply, for the handlers and for batch
//! lines alike.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use serde_json::{json, Map, Value};

use super::chunks::{ChunkHeader, ChunkStream, Chunker, Shape};
use super::types::{
    AssistantMessage, AssistantRole, ChatChoice, ChatCompletion, ChatCompletionObject, ChatRequest,
    ChoiceLogprobs, Completion, CompletionRequest, FinishReasonV1, Sampling, Stop, TextChoice,
    TextCompletion, TextCompletionObject, TokenLogprobV1, TopLogprob, Usage,
};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::metrics::ModelLabel;
use crate::models::generate::TokenLogprob;
use crate::models::{ChatMessage, FinishReason, Frontend};
use crate::serving::tasks::{self, OpenAiEndpoint};
use crate::serving::{Answer, Caller, Core, Input, Item, Route, ServeRequest};

/// A generating request, as it came in.
#[derive(Debug, Clone)]
pub enum GenerateRequest {
    Chat(ChatRequest),
    Completion(CompletionRequest),
}

impl From<ChatRequest> for GenerateRequest {
    fn from(r: ChatRequest) -> Self {
        Self::Chat(r)
    }
}

impl From<CompletionRequest> for GenerateRequest {
    fn from(r: CompletionRequest) -> Self {
        Self::Completion(r)
    }
}

/// What the core answered, ready to render.
pub enum Reply {
    /// The whole completion (a JSON body).
    Finished { body: Completion, route: Route },
    /// Chunks as they come (server-sent events).
    Stream {
        chunks: Box<ChunkStream>,
        route: Route,
    },
}

/// The one internal request both routes map into.
#[derive(Debug)]
struct Generation {
    shape: Shape,
    /// The model as the request named it (`id` or `id@version`).
    model: String,
    /// One per output: chat repeats the conversation `n` times, text each prompt `n` times.
    inputs: Vec<Input>,
    params: Map<String, Value>,
    /// With `logprobs`: this many alternatives per token.
    logprobs: Option<usize>,
    stream: bool,
    include_usage: bool,
    user: Option<String>,
}

/// Answers a chat or text completion through the core. The label (once a version is known)
/// comes back whatever the outcome, for metrics, usage and `x-model-version`.
pub async fn run(
    core: &Arc<Core>,
    principal: Option<&Principal>,
    headers: HeaderMap,
    req: GenerateRequest,
    background: bool,
) -> (Option<ModelLabel>, Result<Reply, ApiError>) {
    let g = match req {
        GenerateRequest::Chat(r) => Generation::chat(r),
        GenerateRequest::Completion(r) => Generation::completion(r),
    };
    let g = match g {
        Ok(g) => g,
        Err(e) => return (None, Err(e)),
    };
    let (model, version) = split_model(&g.model);
    if let Err(e) = require_task(core, &model, version.as_deref(), OpenAiEndpoint::Generation) {
        return (None, Err(e));
    }
    let choices = g.inputs.len();
    let serve = ServeRequest {
        model,
        version,
        inputs: g.inputs,
        params: g.params,
        cache: true,
        logprobs: g.logprobs,
        headers,
        user: g.user,
        background,
    };
    let caller = Caller { principal };
    let prefix = match g.shape {
        Shape::Chat => "chatcmpl",
        Shape::Text => "cmpl",
    };
    let header = ChunkHeader {
        id: format!("{prefix}-{}", uuid::Uuid::new_v4().simple()),
        created: now(),
        model: g.model,
    };
    if g.stream {
        let (label, outcome) = core.infer_stream(caller, serve).await;
        let reply = outcome.map(|s| Reply::Stream {
            route: s.route().clone(),
            chunks: Box::new(ChunkStream::new(
                s,
                Chunker::new(g.shape, header, choices, g.include_usage),
            )),
        });
        return (label, reply);
    }
    let (label, outcome) = core.infer(caller, serve).await;
    let reply = outcome.map(|answer| {
        let body = match g.shape {
            Shape::Chat => {
                Completion::Chat(chat_completion(core, &answer, header, g.logprobs, choices))
            }
            Shape::Text => Completion::Text(text_completion(&answer, header)),
        };
        Reply::Finished {
            body,
            route: answer.route,
        }
    });
    (label, reply)
}

impl Generation {
    fn chat(req: ChatRequest) -> Result<Self, ApiError> {
        refuse_unsupported(&req.other)?;
        let messages = req
            .messages
            .iter()
            .enumerate()
            .map(|(i, m)| message(m, i))
            .collect::<Result<Vec<_>, _>>()?;
        if messages.is_empty() {
            return Err(ApiError::invalid("messages", "must not be empty"));
        }
        let logprobs = match (req.logprobs, req.top_logprobs) {
            (Some(true), t) => Some(t.unwrap_or(0).min(20)),
            (_, Some(_)) => return Err(ApiError::invalid("top_logprobs", "needs logprobs: true")),
            _ => None,
        };
        let n = req.sampling.choices()?;
        Self::new(
            Shape::Chat,
            req.model,
            vec![Input::Chat(messages); n],
            logprobs,
            req.sampling,
        )
    }

    fn completion(req: CompletionRequest) -> Result<Self, ApiError> {
        refuse_unsupported(&req.other)?;
        if req.echo == Some(true) {
            return Err(ApiError::invalid("echo", "is not supported"));
        }
        if req.suffix.as_ref().is_some_and(|s| !s.is_null()) {
            return Err(ApiError::invalid("suffix", "is not supported"));
        }
        if req.logprobs.is_some() {
            return Err(ApiError::invalid(
                "logprobs",
                "is supported on /v1/chat/completions only",
            ));
        }
        let prompts = prompts(&req.prompt)?;
        let n = req.sampling.choices()?;
        let inputs = prompts
            .into_iter()
            .flat_map(|p| std::iter::repeat_n(p, n))
            .collect();
        Self::new(Shape::Text, req.model, inputs, None, req.sampling)
    }

    fn new(
        shape: Shape,
        model: String,
        inputs: Vec<Input>,
        logprobs: Option<usize>,
        sampling: Sampling,
    ) -> Result<Self, ApiError> {
        Ok(Self {
            shape,
            model,
            inputs,
            params: sampling.params()?,
            logprobs,
            stream: sampling.stream == Some(true),
            include_usage: sampling
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
            user: sampling.user,
        })
    }
}

/// `prompt`: one string, a list of them, or one list of token ids.
fn prompts(prompt: &Value) -> Result<Vec<Input>, ApiError> {
    match prompt {
        Value::String(s) => Ok(vec![Input::Text(s.clone())]),
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_string) => Ok(items
            .iter()
            .filter_map(|v| v.as_str().map(|s| Input::Text(s.to_string())))
            .collect()),
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_u64) => {
            Ok(vec![Input::Tokens(token_ids(items).ok_or_else(|| {
                ApiError::invalid("prompt", "token ids must fit in 32 bits")
            })?)])
        }
        _ => Err(ApiError::invalid(
            "prompt",
            "must be a string, a list of strings or a list of token ids",
        )),
    }
}

/// Fields that change the output and that anya does not implement: refused, never ignored.
const UNSUPPORTED: &[&str] = &[
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "logit_bias",
    "audio",
    "modalities",
    "prediction",
    "web_search_options",
    "best_of",
];

fn refuse_unsupported(other: &Map<String, Value>) -> Result<(), ApiError> {
    for (k, v) in other {
        let unsupported = UNSUPPORTED.contains(&k.as_str())
            || (k == "response_format" && v.get("type").and_then(Value::as_str) != Some("text"));
        if unsupported && !v.is_null() {
            return Err(ApiError::invalid(
                k.clone(),
                "is not supported by this server",
            ));
        }
    }
    Ok(())
}

impl Sampling {
    /// The model parameters, named as the manifests name them.
    fn params(&self) -> Result<Map<String, Value>, ApiError> {
        for (name, v) in [
            ("frequency_penalty", self.frequency_penalty),
            ("presence_penalty", self.presence_penalty),
        ] {
            if v.is_some_and(|x| x != 0.0) {
                return Err(ApiError::invalid(name, "is not supported (only 0)"));
            }
        }
        let mut p = Map::new();
        if let Some(m) = self.max_completion_tokens.or(self.max_tokens) {
            p.insert("max_tokens".into(), m.into());
        }
        if let Some(t) = self.temperature {
            p.insert("temperature".into(), t.into());
        }
        if let Some(t) = self.top_p {
            p.insert("top_p".into(), t.into());
        }
        if let Some(s) = self.seed {
            p.insert("seed".into(), s.into());
        }
        if let Some(b) = self.ignore_eos {
            p.insert("ignore_eos".into(), b.into());
        }
        if let Some(b) = self.use_fallbacks {
            p.insert("use_fallbacks".into(), b.into());
        }
        match &self.stop {
            Some(Stop::One(s)) => {
                p.insert("stop".into(), json!([s]));
            }
            Some(Stop::Many(v)) if v.len() > 4 => {
                return Err(ApiError::invalid("stop", "at most 4 stop sequences"));
            }
            Some(Stop::Many(v)) => {
                p.insert("stop".into(), json!(v));
            }
            None => {}
        }
        Ok(p)
    }

    fn choices(&self) -> Result<usize, ApiError> {
        match self.n.unwrap_or(1) {
            n @ 1..=16 => Ok(n),
            _ => Err(ApiError::invalid("n", "must be between 1 and 16")),
        }
    }
}

/// A message's content: a string, or a list of text parts.
fn message(v: &Value, i: usize) -> Result<ChatMessage, ApiError> {
    let field = format!("messages[{i}]");
    let obj = v
        .as_object()
        .ok_or_else(|| ApiError::invalid(field.clone(), "must be an object"))?;
    let role = obj
        .get("role")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid(format!("{field}.role"), "is required"))?;
    let role = if role == "developer" { "system" } else { role };
    let content = match obj.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for p in parts {
                match (p.get("type").and_then(Value::as_str), p.get("text")) {
                    (Some("text"), Some(Value::String(t))) => text.push_str(t),
                    _ => {
                        return Err(ApiError::invalid(
                            format!("{field}.content"),
                            "only text parts are supported",
                        ))
                    }
                }
            }
            text
        }
        _ => {
            return Err(ApiError::invalid(
                format!("{field}.content"),
                "must be a string or a list of text parts",
            ))
        }
    };
    Ok(ChatMessage {
        role: role.to_string(),
        content,
    })
}

fn chat_completion(
    core: &Core,
    answer: &Answer,
    header: ChunkHeader,
    logprobs: Option<usize>,
    n: usize,
) -> ChatCompletion {
    // The version that answered, resolved once for the token texts of its log-probabilities.
    let frontend = logprobs.and_then(|_| frontend(core, answer));
    let choices = generations(answer)
        .enumerate()
        .map(|(index, g)| ChatChoice {
            index,
            message: AssistantMessage {
                role: AssistantRole::Assistant,
                content: g.text.clone(),
            },
            logprobs: logprobs.map(|_| ChoiceLogprobs {
                content: token_logprobs(frontend.as_deref(), &g.logprobs),
            }),
            finish_reason: g.finish_reason.into(),
        })
        .collect();
    ChatCompletion {
        id: header.id,
        object: ChatCompletionObject::ChatCompletion,
        created: header.created,
        model: header.model,
        choices,
        usage: Usage::of(answer, n),
    }
}

fn text_completion(answer: &Answer, header: ChunkHeader) -> TextCompletion {
    let choices = generations(answer)
        .enumerate()
        .map(|(index, g)| TextChoice {
            index,
            text: g.text.clone(),
            logprobs: None,
            finish_reason: g.finish_reason.into(),
        })
        .collect();
    TextCompletion {
        id: header.id,
        object: TextCompletionObject::TextCompletion,
        created: header.created,
        model: header.model,
        choices,
        usage: Usage::of(answer, 1),
    }
}

/// The generated outputs of an answer, in order.
fn generations(answer: &Answer) -> impl Iterator<Item = &crate::models::Generation> {
    answer
        .items
        .iter()
        .filter_map(Item::generation)
        .map(|g| g.as_ref())
}

/// Why each generated output ended, in order.
pub(super) fn finish_reasons(answer: &Answer) -> Vec<FinishReasonV1> {
    generations(answer)
        .map(|g| g.finish_reason.into())
        .collect()
}

impl From<FinishReason> for FinishReasonV1 {
    fn from(r: FinishReason) -> Self {
        match r {
            FinishReason::Length => FinishReasonV1::Length,
            _ => FinishReasonV1::Stop,
        }
    }
}

impl Usage {
    /// An answer's usage, the prompt counted once when `shared` choices share it.
    pub(super) fn of(answer: &Answer, shared: usize) -> Usage {
        let prompt = answer.prompt_tokens / shared.max(1);
        let completion = answer.completion_tokens;
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
        }
    }
}

/// The frontend (tokenizer) of the version that answered, if it is still loaded.
fn frontend(core: &Core, answer: &Answer) -> Option<Arc<Frontend>> {
    core.registry
        .resolve(&answer.model, Some(&answer.version))
        .ok()
        .map(|r| r.handle.frontend().clone())
}

fn token_logprobs(frontend: Option<&Frontend>, lps: &[TokenLogprob]) -> Vec<TokenLogprobV1> {
    let text = |id: u32| {
        frontend
            .and_then(|f| f.codec.as_ref()?.decode(&[id]).ok())
            .unwrap_or_default()
    };
    lps.iter()
        .map(|lp| {
            let token = text(lp.token);
            TokenLogprobV1 {
                bytes: token.as_bytes().to_vec(),
                token,
                logprob: lp.logprob,
                top_logprobs: lp
                    .top
                    .iter()
                    .map(|&(id, logprob)| {
                        let token = text(id);
                        TopLogprob {
                            bytes: token.as_bytes().to_vec(),
                            token,
                            logprob,
                        }
                    })
                    .collect(),
            }
        })
        .collect()
}

/// A model of another task is refused before any work (the core would run it, and its
/// outputs are not what this route answers with). A model that does not resolve is left to the
/// core, which answers 404 or 503.
pub(super) fn require_task(
    core: &Core,
    model: &str,
    version: Option<&str>,
    endpoint: OpenAiEndpoint,
) -> Result<(), ApiError> {
    match core.registry.resolve(model, version) {
        Ok(r) if tasks::of(r.manifest.task).openai() != Some(endpoint) => Err(ApiError::invalid(
            "model",
            format!(
                "`{model}` serves {}; this route needs {}",
                r.manifest.task.as_str(),
                endpoint.task_name()
            ),
        )),
        _ => Ok(()),
    }
}

/// `model` or `model@version`.
pub(super) fn split_model(model: &str) -> (String, Option<String>) {
    match model.split_once('@') {
        Some((id, v)) => (id.to_string(), Some(v.to_string())),
        None => (model.to_string(), None),
    }
}

/// Token ids as the engine takes them: an id over `u32` is refused, never wrapped around.
pub(super) fn token_ids(items: &[Value]) -> Option<Vec<u32>> {
    items
        .iter()
        .map(|v| v.as_u64().and_then(|t| u32::try_from(t).ok()))
        .collect()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: Value) -> Result<Generation, ApiError> {
        let req: ChatRequest = serde_json::from_value(body).map_err(ApiError::internal)?;
        Generation::chat(req)
    }

    fn completion(body: Value) -> Result<Generation, ApiError> {
        let req: CompletionRequest = serde_json::from_value(body).map_err(ApiError::internal)?;
        Generation::completion(req)
    }

    fn field(r: Result<Generation, ApiError>) -> Option<String> {
        r.err().and_then(|e| e.details.field)
    }

    #[test]
    fn ignore_eos_is_passed_on_as_the_model_parameter() {
        let req: ChatRequest = serde_json::from_value(json!({
            "model": "m", "messages": [], "max_tokens": 5, "ignore_eos": true
        }))
        .unwrap();
        let p = req.sampling.params().unwrap();
        assert_eq!(p["ignore_eos"], json!(true));
        assert_eq!(p["max_tokens"], json!(5));
        assert!(!req.other.contains_key("ignore_eos"));
        let req: CompletionRequest =
            serde_json::from_value(json!({"model": "m", "prompt": "x"})).unwrap();
        assert!(!req.sampling.params().unwrap().contains_key("ignore_eos"));
    }

    #[test]
    fn chat_and_text_map_into_one_generation() {
        let g = chat(json!({
            "model": "m@2", "n": 3, "stream": true, "stream_options": {"include_usage": true},
            "messages": [{"role": "developer", "content": [{"type": "text", "text": "be"}, {"type": "text", "text": " brief"}]}],
            "max_completion_tokens": 4, "max_tokens": 9, "stop": "\n", "user": "u",
            "logprobs": true, "top_logprobs": 50
        }))
        .unwrap();
        assert_eq!(g.shape, Shape::Chat);
        assert_eq!(g.model, "m@2");
        assert_eq!(g.inputs.len(), 3);
        assert!(
            matches!(&g.inputs[2], Input::Chat(m) if m[0].role == "system" && m[0].content == "be brief")
        );
        assert_eq!(g.params["max_tokens"], json!(4));
        assert_eq!(g.params["stop"], json!(["\n"]));
        assert_eq!(g.logprobs, Some(20));
        assert!(g.stream && g.include_usage);
        assert_eq!(g.user.as_deref(), Some("u"));

        let g = completion(json!({"model": "m", "prompt": ["a", "b"], "n": 2})).unwrap();
        assert_eq!(g.shape, Shape::Text);
        let texts: Vec<&str> = g
            .inputs
            .iter()
            .filter_map(|i| match i {
                Input::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(texts, ["a", "a", "b", "b"]);
        assert!(!g.stream && !g.include_usage && g.logprobs.is_none());
        let g = completion(json!({"model": "m", "prompt": [1, 2, 3]})).unwrap();
        assert!(matches!(&g.inputs[..], [Input::Tokens(t)] if t == &[1, 2, 3]));
    }

    #[test]
    fn refusals_name_the_field() {
        let msgs = json!([{"role": "user", "content": "hi"}]);
        let cases = [
            (
                json!({"model": "m", "messages": msgs, "tools": []}),
                "tools",
            ),
            (
                json!({"model": "m", "messages": msgs, "response_format": {"type": "json_object"}}),
                "response_format",
            ),
            (json!({"model": "m", "messages": []}), "messages"),
            (
                json!({"model": "m", "messages": [{"content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
                "messages[0].content",
            ),
            (
                json!({"model": "m", "messages": msgs, "top_logprobs": 2}),
                "top_logprobs",
            ),
            (json!({"model": "m", "messages": msgs, "n": 17}), "n"),
            (
                json!({"model": "m", "messages": msgs, "stop": ["a", "b", "c", "d", "e"]}),
                "stop",
            ),
            (
                json!({"model": "m", "messages": msgs, "presence_penalty": 1.0}),
                "presence_penalty",
            ),
        ];
        for (body, name) in cases {
            assert_eq!(field(chat(body.clone())).as_deref(), Some(name), "{body}");
        }
        let cases = [
            (json!({"model": "m", "prompt": "x", "echo": true}), "echo"),
            (
                json!({"model": "m", "prompt": "x", "suffix": "y"}),
                "suffix",
            ),
            (
                json!({"model": "m", "prompt": "x", "logprobs": 1}),
                "logprobs",
            ),
            (json!({"model": "m", "prompt": []}), "prompt"),
            (json!({"model": "m", "prompt": [4294967296u64]}), "prompt"),
            (
                json!({"model": "m", "prompt": "x", "best_of": 2}),
                "best_of",
            ),
        ];
        for (body, name) in cases {
            assert_eq!(
                field(completion(body.clone())).as_deref(),
                Some(name),
                "{body}"
            );
        }
        // Null is as good as absent.
        assert!(
            completion(json!({"model": "m", "prompt": "x", "suffix": null, "tools": null})).is_ok()
        );
    }

    #[test]
    fn split_model_reads_a_pinned_version() {
        assert_eq!(split_model("m"), ("m".into(), None));
        assert_eq!(split_model("m@1.0.0"), ("m".into(), Some("1.0.0".into())));
    }
}
