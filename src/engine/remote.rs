//! Remote models: an OpenAI-compatible provider behind the same [`ModelHandle`] as a local
//! model, so the serving core, every protocol, streaming, the cache and accounting treat both
//! alike. A request becomes one call per prompt (chat or text completions) or one embeddings
//! call; a streamed generation relays the provider's SSE deltas as they arrive.
//!
//! Each call retries on the same provider when the failure is worth another try (connection
//! error, timeout, 408, 429, 5xx): exponential backoff with full jitter, `Retry-After` honoured,
//! at most `max_retries` more attempts and never past the request's deadline. Base URLs come
//! only from manifests; the API key is never logged or echoed. Responses are bounded in size.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::{Completed, EngineError, Event, Output, RunStats};
use crate::models::generate::Delta;
use crate::models::{ChatMessage, FinishReason, GenParams, Generation};
use crate::spec::manifest::{Manifest, ProviderSpec};

/// Most bytes of a non-streamed answer, and of one SSE line.
const MAX_RESPONSE_BYTES: usize = 32 << 20;
const MAX_SSE_LINE_BYTES: usize = 1 << 20;
/// Most bytes of an upstream error body kept for the message.
const MAX_ERROR_BYTES: usize = 2048;
/// First backoff step, and the longest single wait between attempts.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// An input to embed remotely.
#[derive(Debug, Clone)]
pub enum RemoteInput {
    Text(String),
    Tokens(Vec<u32>),
}

/// A prompt to complete remotely.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// A raw prompt (`/completions`).
    Text(String),
    /// A conversation (`/chat/completions`).
    Chat(Vec<ChatMessage>),
}

/// What a request asks of a remote model (validated, not tokenized: the provider tokenizes).
#[derive(Debug, Clone)]
pub enum RemoteWork {
    Embed {
        inputs: Vec<RemoteInput>,
    },
    Generate {
        prompts: Vec<Prompt>,
        params: GenParams,
    },
}

impl RemoteWork {
    pub fn items(&self) -> usize {
        match self {
            RemoteWork::Embed { inputs } => inputs.len(),
            RemoteWork::Generate { prompts, .. } => prompts.len(),
        }
    }

    /// Bytes of text (a bound on tokens, for the token budget).
    pub fn text_bytes(&self) -> usize {
        match self {
            RemoteWork::Embed { inputs } => inputs
                .iter()
                .map(|i| match i {
                    RemoteInput::Text(t) => t.len(),
                    RemoteInput::Tokens(t) => t.len(),
                })
                .sum(),
            RemoteWork::Generate { prompts, .. } => prompts
                .iter()
                .map(|p| match p {
                    Prompt::Text(t) => t.len(),
                    Prompt::Chat(m) => m.iter().map(|m| m.content.len()).sum(),
                })
                .sum(),
        }
    }

    pub fn subset(&self, idx: &[usize]) -> RemoteWork {
        match self {
            RemoteWork::Embed { inputs } => RemoteWork::Embed {
                inputs: idx.iter().filter_map(|&i| inputs.get(i).cloned()).collect(),
            },
            RemoteWork::Generate { prompts, params } => RemoteWork::Generate {
                prompts: idx
                    .iter()
                    .filter_map(|&i| prompts.get(i).cloned())
                    .collect(),
                params: params.clone(),
            },
        }
    }
}

/// The provider's state as the last probe saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeState {
    Unknown,
    Up,
    Down,
}

/// A remote model version: its provider and an HTTP client with a connection pool.
pub struct RemoteModel {
    name: String,
    spec: ProviderSpec,
    api_key: Option<String>,
    client: reqwest::Client,
    up: AtomicBool,
    probed: AtomicBool,
    /// Attempts that reached the provider (each retry counts).
    attempts: AtomicU64,
}

impl std::fmt::Debug for RemoteModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("RemoteModel")
            .field("name", &self.name)
            .field("base_url", &self.spec.base_url)
            .field("model", &self.spec.model)
            .finish()
    }
}

impl RemoteModel {
    /// The client for `manifest`'s provider; the key is read now (env or file).
    pub fn new(manifest: &Manifest, dir: &std::path::Path) -> Result<Self, EngineError> {
        let spec = manifest
            .provider
            .clone()
            .ok_or_else(|| EngineError::Load("the manifest names no provider".into()))?;
        let api_key = match (&spec.api_key_env, &spec.api_key_file) {
            (Some(var), _) => Some(std::env::var(var).map_err(|_| {
                EngineError::Load(format!("provider.api_key_env: `{var}` is not set"))
            })?),
            (None, Some(file)) => {
                let path = dir.join(file);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    EngineError::Load(format!("provider.api_key_file {}: {e}", path.display()))
                })?;
                Some(text.lines().next().unwrap_or("").trim().to_string())
            }
            (None, None) => None,
        };
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_millis(spec.timeout_ms.min(5_000)))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| EngineError::Load(format!("HTTP client: {e}")))?;
        Ok(Self {
            name: format!("{}@{}", manifest.id, manifest.version),
            spec,
            api_key,
            client,
            up: AtomicBool::new(false),
            probed: AtomicBool::new(false),
            attempts: AtomicU64::new(0),
        })
    }

    pub fn spec(&self) -> &ProviderSpec {
        &self.spec
    }

    /// Attempts made so far (requests and retries that reached for the provider).
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }

    pub fn probe_state(&self) -> ProbeState {
        match (
            self.probed.load(Ordering::Relaxed),
            self.up.load(Ordering::Relaxed),
        ) {
            (false, _) => ProbeState::Unknown,
            (true, true) => ProbeState::Up,
            (true, false) => ProbeState::Down,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{}", self.spec.base_url.trim_end_matches('/'), path)
    }

    fn authed(&self, b: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_key {
            Some(k) => b.bearer_auth(k),
            None => b,
        }
    }

    /// `GET {base_url}/models`: records whether the provider answers.
    pub async fn probe(&self) -> ProbeState {
        let req = self
            .authed(self.client.get(self.url("models")))
            .timeout(Duration::from_millis(self.spec.timeout_ms.min(5_000)));
        let up = matches!(req.send().await, Ok(r) if r.status().is_success());
        self.up.store(up, Ordering::Relaxed);
        self.probed.store(true, Ordering::Relaxed);
        self.probe_state()
    }

    /// Run `work`, sending deltas (when `stream`) and then `Done` on `tx`. Stops early when the
    /// receiver goes away (the client left).
    pub(crate) async fn run(
        self: Arc<Self>,
        work: RemoteWork,
        stream: bool,
        deadline: Instant,
        tx: mpsc::Sender<Event>,
    ) {
        let started = Instant::now();
        let result = tokio::select! {
            r = self.execute(work, stream, deadline, &tx) => r,
            _ = tx.closed() => return,
        };
        let result = result.map(|(output, mut stats)| {
            stats.compute = started.elapsed();
            Completed { output, stats }
        });
        let _ = tx.send(Event::Done(result)).await;
    }

    async fn execute(
        &self,
        work: RemoteWork,
        stream: bool,
        deadline: Instant,
        tx: &mpsc::Sender<Event>,
    ) -> Result<(Output, RunStats), EngineError> {
        let mut stats = RunStats {
            batch_size: work.items(),
            ..RunStats::default()
        };
        match work {
            RemoteWork::Embed { inputs } => {
                let input: Vec<Value> = inputs
                    .iter()
                    .map(|i| match i {
                        RemoteInput::Text(t) => Value::String(t.clone()),
                        RemoteInput::Tokens(t) => Value::from(t.clone()),
                    })
                    .collect();
                let body =
                    json!({"model": self.spec.model, "input": input, "encoding_format": "float"});
                let (resp, attempts) = self.send("embeddings", &body, deadline).await?;
                stats.attempts = attempts;
                let v = self.read_json(resp, attempts).await?;
                let vectors =
                    parse_embeddings(&v, inputs.len()).map_err(|m| self.bad_answer(m, attempts))?;
                stats.tokens_processed = usage(&v, "prompt_tokens");
                Ok((Output::Vectors(vectors), stats))
            }
            RemoteWork::Generate { prompts, params } => {
                let calls = prompts.iter().enumerate().map(|(index, prompt)| {
                    self.generate(index, prompt, &params, stream, deadline, tx)
                });
                let mut gens = Vec::with_capacity(prompts.len());
                for r in futures::future::join_all(calls).await {
                    let (g, prompt_tokens, completion_tokens, attempts) = r?;
                    stats.tokens_processed += prompt_tokens;
                    stats.tokens_generated += completion_tokens;
                    stats.attempts = stats.attempts.max(attempts);
                    gens.push(g);
                }
                Ok((Output::Generations(gens), stats))
            }
        }
    }

    /// One prompt: its generation, prompt and completion tokens (the provider's `usage`),
    /// and the attempts it took.
    async fn generate(
        &self,
        index: usize,
        prompt: &Prompt,
        params: &GenParams,
        stream: bool,
        deadline: Instant,
        tx: &mpsc::Sender<Event>,
    ) -> Result<(Generation, usize, usize, u32), EngineError> {
        let started = Instant::now();
        let (path, body) = self.completion_body(prompt, params, stream);
        let (resp, attempts) = self.send(path, &body, deadline).await?;
        if !stream {
            return self.read_generation(resp, attempts, started).await;
        }
        self.relay_generation(index, resp, attempts, started, deadline, tx)
            .await
    }

    /// The provider's path (`completions` or `chat/completions`) and request body for one
    /// prompt.
    fn completion_body(
        &self,
        prompt: &Prompt,
        params: &GenParams,
        stream: bool,
    ) -> (&'static str, Value) {
        let mut body = Map::new();
        body.insert("model".into(), self.spec.model.clone().into());
        let path = match prompt {
            Prompt::Text(t) => {
                body.insert("prompt".into(), t.clone().into());
                "completions"
            }
            Prompt::Chat(m) => {
                body.insert("messages".into(), json!(m));
                "chat/completions"
            }
        };
        body.insert("max_tokens".into(), params.max_tokens.into());
        body.insert("temperature".into(), json!(params.sampling.temperature));
        if params.sampling.top_p < 1.0 {
            body.insert("top_p".into(), json!(params.sampling.top_p));
        }
        if !params.stop.is_empty() {
            body.insert("stop".into(), json!(params.stop));
        }
        body.insert("seed".into(), json!(params.seed));
        if params.ignore_eos {
            body.insert("ignore_eos".into(), true.into());
        }
        if stream {
            body.insert("stream".into(), true.into());
            body.insert("stream_options".into(), json!({"include_usage": true}));
        }
        (path, Value::Object(body))
    }

    /// A whole (not streamed) answer: its generation, prompt and completion tokens.
    async fn read_generation(
        &self,
        resp: reqwest::Response,
        attempts: u32,
        started: Instant,
    ) -> Result<(Generation, usize, usize, u32), EngineError> {
        let v = self.read_json(resp, attempts).await?;
        let choice = v
            .get("choices")
            .and_then(|c| c.get(0))
            .ok_or_else(|| self.bad_answer("no choices".into(), attempts))?;
        let text = choice_text(choice).unwrap_or_default().to_string();
        let elapsed = started.elapsed().as_secs_f64();
        let g = Generation {
            text,
            tokens: Vec::new(),
            finish_reason: finish_reason(choice.get("finish_reason")),
            time_to_first_token: elapsed,
            duration: elapsed,
            logprobs: Vec::new(),
            counted_tokens: usage(&v, "completion_tokens"),
        };
        Ok((
            g,
            usage(&v, "prompt_tokens"),
            usage(&v, "completion_tokens"),
            attempts,
        ))
    }

    /// A streamed answer: each delta relayed to `tx` as it arrives; the generation, prompt and
    /// completion tokens once the stream ends.
    async fn relay_generation(
        &self,
        index: usize,
        resp: reqwest::Response,
        attempts: u32,
        started: Instant,
        deadline: Instant,
        tx: &mpsc::Sender<Event>,
    ) -> Result<(Generation, usize, usize, u32), EngineError> {
        // Server-sent events: relay each delta as it arrives.
        let mut text = String::new();
        let mut finish = FinishReason::Length;
        let (mut prompt_tokens, mut completion_tokens) = (0, 0);
        let mut first: Option<f64> = None;
        let mut line = Vec::new();
        let mut bytes = resp.bytes_stream();
        let idle = Duration::from_millis(self.spec.timeout_ms);
        'read: loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = match tokio::time::timeout(idle.min(left), bytes.next()).await {
                Err(_) => {
                    return Err(EngineError::Unreachable {
                        model: self.name.clone(),
                        message: "the stream stalled".into(),
                        attempts,
                    })
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    return Err(EngineError::Unreachable {
                        model: self.name.clone(),
                        message: format!("the stream broke: {}", without_url(&e)),
                        attempts,
                    })
                }
                Ok(Some(Ok(c))) => c,
            };
            for &b in chunk.iter() {
                if b != b'\n' {
                    line.push(b);
                    if line.len() > MAX_SSE_LINE_BYTES {
                        return Err(self.bad_answer("an SSE line is too long".into(), attempts));
                    }
                    continue;
                }
                let l = String::from_utf8_lossy(&line)
                    .trim_end_matches('\r')
                    .to_string();
                line.clear();
                let Some(data) = l.strip_prefix("data:") else {
                    continue;
                };
                let data = data.trim();
                if data == "[DONE]" {
                    break 'read;
                }
                let Ok(v) = serde_json::from_str::<Value>(data) else {
                    return Err(self.bad_answer("an SSE event is not JSON".into(), attempts));
                };
                if let Some(e) = v.get("error") {
                    return Err(EngineError::Upstream {
                        model: self.name.clone(),
                        status: 502,
                        message: e.to_string().chars().take(MAX_ERROR_BYTES).collect(),
                        retry_after_ms: None,
                        attempts,
                    });
                }
                if v.get("usage").is_some_and(Value::is_object) {
                    prompt_tokens = usage(&v, "prompt_tokens");
                    completion_tokens = usage(&v, "completion_tokens");
                }
                let Some(choice) = v.get("choices").and_then(|c| c.get(0)) else {
                    continue;
                };
                if let Some(delta) = choice_text(choice).filter(|d| !d.is_empty()) {
                    first.get_or_insert_with(|| started.elapsed().as_secs_f64());
                    text.push_str(delta);
                    let event = Event::Delta {
                        index,
                        delta: Delta {
                            text: delta.to_string(),
                            logprobs: Vec::new(),
                        },
                    };
                    if tx.send(event).await.is_err() {
                        finish = FinishReason::Cancelled;
                        break 'read;
                    }
                }
                if choice.get("finish_reason").is_some_and(|f| !f.is_null()) {
                    finish = finish_reason(choice.get("finish_reason"));
                }
            }
        }
        let duration = started.elapsed().as_secs_f64();
        let g = Generation {
            text,
            tokens: Vec::new(),
            finish_reason: finish,
            time_to_first_token: first.unwrap_or(duration),
            duration,
            logprobs: Vec::new(),
            counted_tokens: completion_tokens,
        };
        Ok((g, prompt_tokens, completion_tokens, attempts))
    }

    /// POST `body` to `path`, retrying what is worth another try; the successful response and
    /// the attempts it took.
    async fn send(
        &self,
        path: &str,
        body: &Value,
        deadline: Instant,
    ) -> Result<(reqwest::Response, u32), EngineError> {
        let url = self.url(path);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            self.attempts.fetch_add(1, Ordering::Relaxed);
            let left = deadline.saturating_duration_since(Instant::now());
            let limit = Duration::from_millis(self.spec.timeout_ms).min(left);
            let req = self.authed(self.client.post(&url)).json(body);
            // The limit covers the response's head; a streamed body has its own idle limit.
            let outcome = tokio::time::timeout(limit, req.send()).await;
            let err = match outcome {
                Ok(Ok(resp)) if resp.status().is_success() => return Ok((resp, attempt)),
                Ok(Ok(resp)) => {
                    let status = resp.status().as_u16();
                    let retry_after_ms = retry_after(resp.headers());
                    let message = error_text(resp).await;
                    EngineError::Upstream {
                        model: self.name.clone(),
                        status,
                        message,
                        retry_after_ms,
                        attempts: attempt,
                    }
                }
                Ok(Err(e)) => EngineError::Unreachable {
                    model: self.name.clone(),
                    message: without_url(&e),
                    attempts: attempt,
                },
                Err(_) => EngineError::Unreachable {
                    model: self.name.clone(),
                    message: format!("no answer within {} ms", limit.as_millis()),
                    attempts: attempt,
                },
            };
            if err.fallback_reason().is_none() || attempt > self.spec.max_retries {
                return Err(err);
            }
            let wait = match &err {
                EngineError::Upstream {
                    retry_after_ms: Some(ms),
                    ..
                } => Duration::from_millis(*ms),
                _ => backoff(attempt, rand::random::<f64>()),
            };
            if Instant::now() + wait >= deadline {
                return Err(err);
            }
            tracing::debug!(model = %self.name, attempt, wait_ms = wait.as_millis() as u64, error = %err, "retrying the provider");
            tokio::time::sleep(wait).await;
        }
    }

    async fn read_json(
        &self,
        resp: reqwest::Response,
        attempts: u32,
    ) -> Result<Value, EngineError> {
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
        {
            return Err(self.bad_answer("the answer is too large".into(), attempts));
        }
        let mut body = Vec::new();
        let mut bytes = resp.bytes_stream();
        while let Some(chunk) = bytes.next().await {
            let chunk = chunk.map_err(|e| EngineError::Unreachable {
                model: self.name.clone(),
                message: format!("the answer broke off: {}", without_url(&e)),
                attempts,
            })?;
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(self.bad_answer("the answer is too large".into(), attempts));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body)
            .map_err(|e| self.bad_answer(format!("not JSON: {e}"), attempts))
    }

    fn bad_answer(&self, message: String, attempts: u32) -> EngineError {
        EngineError::Upstream {
            model: self.name.clone(),
            status: 502,
            message: format!("unexpected answer: {message}"),
            retry_after_ms: None,
            attempts,
        }
    }
}

/// The wait before attempt `attempt + 1`: full jitter over an exponential step, capped.
/// `unit` is a uniform draw in [0, 1).
pub fn backoff(attempt: u32, unit: f64) -> Duration {
    let step = BACKOFF_BASE.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let step = step.min(BACKOFF_CAP);
    step.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

/// `Retry-After` in milliseconds: delta-seconds, or an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(s) = v.parse::<f64>() {
        return (s.is_finite() && s >= 0.0).then(|| (s * 1000.0).min(3.6e6) as u64);
    }
    let when =
        time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc2822).ok()?;
    let ms = (when - time::OffsetDateTime::now_utc()).whole_milliseconds();
    Some(ms.clamp(0, 3_600_000) as u64)
}

/// The error's message without its URL (which may carry credentials in userinfo).
fn without_url(e: &reqwest::Error) -> String {
    let mut msg = if e.is_connect() {
        "connection failed"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_body() || e.is_decode() {
        "the body broke off"
    } else {
        "the request failed"
    }
    .to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// The start of an error answer's body, for the message.
async fn error_text(resp: reqwest::Response) -> String {
    let mut body = Vec::new();
    let mut bytes = resp.bytes_stream();
    while let Some(Ok(chunk)) = bytes.next().await {
        body.extend_from_slice(&chunk);
        if body.len() >= MAX_ERROR_BYTES {
            break;
        }
    }
    body.truncate(MAX_ERROR_BYTES);
    let text = String::from_utf8_lossy(&body).to_string();
    // OpenAI's error shape: keep its message.
    serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.get("message"))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or(text)
}

fn usage(v: &Value, field: &str) -> usize {
    v.get("usage")
        .and_then(|u| u.get(field))
        .and_then(Value::as_u64)
        .unwrap_or(0) as usize
}

/// A choice's text: chat (`message.content` / `delta.content`) or text completions (`text`).
fn choice_text(choice: &Value) -> Option<&str> {
    choice
        .pointer("/delta/content")
        .or_else(|| choice.pointer("/message/content"))
        .or_else(|| choice.get("text"))
        .and_then(Value::as_str)
}

fn finish_reason(v: Option<&Value>) -> FinishReason {
    match v.and_then(Value::as_str) {
        Some("stop") => FinishReason::Stop,
        _ => FinishReason::Length,
    }
}

/// `data[i].embedding` in `index` order.
fn parse_embeddings(v: &Value, n: usize) -> Result<Vec<Vec<f32>>, String> {
    let data = v.get("data").and_then(Value::as_array).ok_or("no data")?;
    if data.len() != n {
        return Err(format!("{} embeddings for {n} inputs", data.len()));
    }
    let mut out: Vec<Option<Vec<f32>>> = vec![None; n];
    for (pos, d) in data.iter().enumerate() {
        let i = d
            .get("index")
            .and_then(Value::as_u64)
            .map_or(pos, |i| i as usize);
        let e = d
            .get("embedding")
            .and_then(Value::as_array)
            .ok_or("an embedding is not a list of numbers")?;
        let vec = e
            .iter()
            .map(|x| x.as_f64().map(|x| x as f32))
            .collect::<Option<Vec<f32>>>()
            .ok_or("an embedding is not a list of numbers")?;
        let slot = out.get_mut(i).ok_or("an index is out of range")?;
        *slot = Some(vec);
    }
    out.into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| "an index is missing".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1, 0.0), Duration::from_millis(50));
        assert_eq!(backoff(1, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(3, 1.0), Duration::from_millis(400));
        assert_eq!(backoff(30, 1.0), BACKOFF_CAP);
        assert!(backoff(2, 0.3) >= Duration::from_millis(100));
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(2000));
        h.insert(reqwest::header::RETRY_AFTER, "0.5".parse().unwrap());
        assert_eq!(retry_after(&h), Some(500));
        let past = "Wed, 21 Oct 2015 07:28:00 GMT";
        h.insert(reqwest::header::RETRY_AFTER, past.parse().unwrap());
        assert_eq!(retry_after(&h), Some(0));
        h.insert(reqwest::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn embeddings_come_back_in_index_order() {
        let v = json!({"data": [
            {"index": 1, "embedding": [1.0, 2.0]},
            {"index": 0, "embedding": [3.0, 4.0]}
        ]});
        assert_eq!(
            parse_embeddings(&v, 2).unwrap(),
            vec![vec![3.0, 4.0], vec![1.0, 2.0]]
        );
        assert!(parse_embeddings(&v, 3).is_err());
        let bad = json!({"data": [{"index": 5, "embedding": [1.0]}]});
        assert!(parse_embeddings(&bad, 1).is_err());
    }

    #[test]
    fn choices_read_chat_and_text() {
        assert_eq!(choice_text(&json!({"delta": {"content": "a"}})), Some("a"));
        assert_eq!(
            choice_text(&json!({"message": {"content": "b"}})),
            Some("b")
        );
        assert_eq!(choice_text(&json!({"text": "c"})), Some("c"));
        assert_eq!(finish_reason(Some(&json!("stop"))), FinishReason::Stop);
        assert_eq!(finish_reason(Some(&json!("length"))), FinishReason::Length);
    }
}
