//! Streamed completions as OpenAI chunks: `Chunker` is the state machine that turns the core's
//! `StreamItem`s into `chat.completion.chunk`s (or `text_completion` chunks), with no I/O, so
//! it is tested by feeding it items; `ChunkStream` drives it from an `AnswerStream`.
//!
//! The rules: every chunk has the same id, created and model; the first chunk of each choice
//! carries the role (chat); each delta is a chunk of its own choice index; when the answer is
//! done one chunk carries every choice's finish reason; with `include_usage` every chunk has
//! `"usage": null` and a last chunk with no choices carries the usage; then `[DONE]`. An error
//! after the start is a `data: {"error": …}` event, then `[DONE]`. Log-probabilities are not
//! streamed: a chunk's `logprobs` is always null (the finished answer carries them).

use std::collections::VecDeque;

use serde::Serialize;

use super::errors::{stream_envelope, OpenAiErrorEnvelope};
use super::generate::finish_reasons;
use super::types::{
    AssistantRole, ChatChunkChoice, ChatChunkObject, ChatCompletionChunk, ChatDelta,
    FinishReasonV1, TextChunkChoice, TextCompletionChunk, TextCompletionObject, Usage,
};
use crate::serving::{AnswerStream, StreamItem};

/// Which chunks: chat (`chat.completion.chunk`, deltas with a role) or text completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Chat,
    Text,
}

/// One `data:` event of the stream.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Chunk {
    Chat(ChatCompletionChunk),
    Text(TextCompletionChunk),
    /// The stream failed after it started.
    Error(OpenAiErrorEnvelope),
    /// `[DONE]`, the last event.
    #[serde(skip)]
    Done,
}

impl Chunk {
    /// The event's data: the chunk's JSON, or `[DONE]`.
    pub fn data(&self) -> String {
        match self {
            Chunk::Done => String::from("[DONE]"),
            other => serde_json::to_string(other).unwrap_or_else(|_| String::from("{}")),
        }
    }
}

/// What every chunk of one stream shares.
#[derive(Debug, Clone)]
pub struct ChunkHeader {
    /// `chatcmpl-…` or `cmpl-…`.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// The model as the request named it.
    pub model: String,
}

/// The stream's state: which choices have started, whether it has ended.
#[derive(Debug)]
pub struct Chunker {
    shape: Shape,
    header: ChunkHeader,
    /// Per choice index: whether a chunk of it went out (the next one carries no role).
    started: Vec<bool>,
    include_usage: bool,
    /// `[DONE]` has been given: later items are dropped.
    ended: bool,
}

/// A choice's part of one chunk.
struct Part {
    index: usize,
    text: String,
    first: bool,
    finish_reason: Option<FinishReasonV1>,
}

impl Chunker {
    /// A stream of `choices` outputs (chat: `n`; text: prompts × `n`).
    pub fn new(shape: Shape, header: ChunkHeader, choices: usize, include_usage: bool) -> Self {
        Self {
            shape,
            header,
            started: vec![false; choices],
            include_usage,
            ended: false,
        }
    }

    /// Whether `[DONE]` has been given.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The chunks one item of the core's stream becomes.
    pub fn push(&mut self, item: StreamItem) -> Vec<Chunk> {
        if self.ended {
            return Vec::new();
        }
        match item {
            StreamItem::Delta { index, text, .. } => {
                let first = self.start(index);
                vec![self.chunk(
                    vec![Part {
                        index,
                        text,
                        first,
                        finish_reason: None,
                    }],
                    None,
                )]
            }
            StreamItem::Done(answer) => {
                self.ended = true;
                let finals = finish_reasons(&answer)
                    .into_iter()
                    .enumerate()
                    .map(|(index, reason)| Part {
                        index,
                        text: String::new(),
                        first: self.start(index),
                        finish_reason: Some(reason),
                    })
                    .collect();
                let mut out = vec![self.chunk(finals, None)];
                if self.include_usage {
                    // `n` chat choices share one prompt; text completions count each prompt.
                    let shared = match self.shape {
                        Shape::Chat => self.started.len(),
                        Shape::Text => 1,
                    };
                    out.push(self.chunk(Vec::new(), Some(Usage::of(&answer, shared))));
                }
                out.push(Chunk::Done);
                out
            }
            StreamItem::Error(e) => {
                self.ended = true;
                vec![Chunk::Error(stream_envelope(e)), Chunk::Done]
            }
        }
    }

    /// The core's stream ended: `[DONE]`, unless it was given already.
    pub fn finish(&mut self) -> Vec<Chunk> {
        if std::mem::replace(&mut self.ended, true) {
            return Vec::new();
        }
        vec![Chunk::Done]
    }

    /// Marks choice `index` started; whether this is its first chunk. An index past the
    /// choices announced never counts as first.
    fn start(&mut self, index: usize) -> bool {
        match self.started.get_mut(index) {
            Some(started) => !std::mem::replace(started, true),
            None => false,
        }
    }

    fn chunk(&self, parts: Vec<Part>, usage: Option<Usage>) -> Chunk {
        let usage = self.include_usage.then_some(usage);
        let ChunkHeader { id, created, model } = self.header.clone();
        match self.shape {
            Shape::Chat => Chunk::Chat(ChatCompletionChunk {
                id,
                object: ChatChunkObject::ChatCompletionChunk,
                created,
                model,
                choices: parts
                    .into_iter()
                    .map(|p| ChatChunkChoice {
                        index: p.index,
                        delta: ChatDelta {
                            role: p.first.then_some(AssistantRole::Assistant),
                            content: p.text,
                        },
                        logprobs: None,
                        finish_reason: p.finish_reason,
                    })
                    .collect(),
                usage,
            }),
            Shape::Text => Chunk::Text(TextCompletionChunk {
                id,
                object: TextCompletionObject::TextCompletion,
                created,
                model,
                choices: parts
                    .into_iter()
                    .map(|p| TextChunkChoice {
                        index: p.index,
                        text: p.text,
                        logprobs: None,
                        finish_reason: p.finish_reason,
                    })
                    .collect(),
                usage,
            }),
        }
    }
}

/// The chunks of an answer as it streams. Owns the `AnswerStream` (its drop closes the books
/// and stops the engine's sequences) until the stream has ended.
pub struct ChunkStream {
    stream: Option<AnswerStream>,
    chunker: Chunker,
    ready: VecDeque<Chunk>,
}

impl ChunkStream {
    pub fn new(stream: AnswerStream, chunker: Chunker) -> Self {
        Self {
            stream: Some(stream),
            chunker,
            ready: VecDeque::new(),
        }
    }

    /// The next event; `None` after `[DONE]`.
    pub async fn next(&mut self) -> Option<Chunk> {
        loop {
            if let Some(c) = self.ready.pop_front() {
                return Some(c);
            }
            let stream = self.stream.as_mut()?;
            let chunks = match stream.next().await {
                Some(item) => self.chunker.push(item),
                None => self.chunker.finish(),
            };
            if self.chunker.ended() {
                self.stream = None;
            }
            self.ready.extend(chunks);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::{json, Value};

    use super::*;
    use crate::error::ApiError;
    use crate::models::generate::TokenLogprob;
    use crate::models::{FinishReason, Generation};
    use crate::serving::{Answer, Item, Route};

    fn header(id: &str) -> ChunkHeader {
        ChunkHeader {
            id: id.into(),
            created: 7,
            model: "m".into(),
        }
    }

    fn delta(index: usize, text: &str) -> StreamItem {
        StreamItem::Delta {
            index,
            text: text.into(),
            logprobs: Vec::new(),
        }
    }

    fn answer(outputs: &[(&str, FinishReason)], prompt: usize, completion: usize) -> Answer {
        let items = outputs
            .iter()
            .map(|(text, finish_reason)| {
                Item::Generation(Arc::new(Generation {
                    text: (*text).into(),
                    tokens: Vec::new(),
                    finish_reason: *finish_reason,
                    time_to_first_token: 0.0,
                    duration: 0.0,
                    logprobs: Vec::new(),
                    counted_tokens: 0,
                }))
            })
            .collect();
        Answer {
            model: "m".into(),
            version: "1".into(),
            items,
            stats: Default::default(),
            latency: Default::default(),
            cache_hits: 0,
            cache: None,
            prompt_tokens: prompt,
            completion_tokens: completion,
            route: Route::default(),
        }
    }

    /// Every event's data, as JSON (`[DONE]` as the string).
    fn events(c: &mut Chunker, items: Vec<StreamItem>) -> Vec<Value> {
        let mut chunks: Vec<Chunk> = items.into_iter().flat_map(|i| c.push(i)).collect();
        chunks.extend(c.finish());
        chunks
            .iter()
            .map(|c| serde_json::from_str(&c.data()).unwrap_or_else(|_| Value::from(c.data())))
            .collect()
    }

    #[test]
    fn chat_role_first_then_deltas_then_finish_then_done() {
        let mut c = Chunker::new(Shape::Chat, header("chatcmpl-1"), 1, false);
        let e = events(
            &mut c,
            vec![
                delta(0, "Hel"),
                delta(0, "lo"),
                StreamItem::Done(answer(&[("Hello", FinishReason::Eos)], 5, 2)),
            ],
        );
        let base = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m"});
        let with = |choices: Value| {
            let mut v = base.clone();
            v["choices"] = choices;
            v
        };
        assert_eq!(
            e,
            vec![
                with(
                    json!([{"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "logprobs": null, "finish_reason": null}])
                ),
                with(
                    json!([{"index": 0, "delta": {"content": "lo"}, "logprobs": null, "finish_reason": null}])
                ),
                with(
                    json!([{"index": 0, "delta": {"content": ""}, "logprobs": null, "finish_reason": "stop"}])
                ),
                json!("[DONE]"),
            ]
        );
        // No `usage` key at all without include_usage.
        assert!(e.iter().all(|v| v.get("usage").is_none()));
    }

    #[test]
    fn the_exact_bytes_of_a_chat_chunk_are_kept() {
        let mut c = Chunker::new(Shape::Chat, header("chatcmpl-1"), 1, true);
        let chunks = c.push(delta(0, "Hi"));
        assert_eq!(
            chunks[0].data(),
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"logprobs":null,"finish_reason":null}],"usage":null}"#
        );
    }

    #[test]
    fn text_completion_chunks_have_text_and_no_role() {
        let mut c = Chunker::new(Shape::Text, header("cmpl-1"), 1, false);
        let e = events(
            &mut c,
            vec![
                delta(0, "Paris"),
                StreamItem::Done(answer(&[("Paris", FinishReason::Length)], 5, 1)),
            ],
        );
        assert_eq!(e.len(), 3);
        assert_eq!(e[0]["object"], "text_completion");
        assert_eq!(
            e[0]["choices"],
            json!([{"index": 0, "text": "Paris", "logprobs": null, "finish_reason": null}])
        );
        assert_eq!(
            e[1]["choices"],
            json!([{"index": 0, "text": "", "logprobs": null, "finish_reason": "length"}])
        );
        assert_eq!(e[2], json!("[DONE]"));
    }

    #[test]
    fn interleaved_choices_each_get_their_role_once_and_their_finish_reason() {
        let mut c = Chunker::new(Shape::Chat, header("chatcmpl-2"), 3, false);
        let e = events(
            &mut c,
            vec![
                delta(1, "b"),
                delta(0, "a"),
                delta(1, "b"),
                delta(0, "a"),
                StreamItem::Done(answer(
                    &[
                        ("aa", FinishReason::Stop),
                        ("bb", FinishReason::Length),
                        ("", FinishReason::Eos),
                    ],
                    9,
                    4,
                )),
            ],
        );
        let roles: Vec<(Value, Value)> = e[..4]
            .iter()
            .map(|v| {
                let ch = &v["choices"][0];
                (ch["index"].clone(), ch["delta"]["role"].clone())
            })
            .collect();
        assert_eq!(
            roles,
            vec![
                (json!(1), json!("assistant")),
                (json!(0), json!("assistant")),
                (json!(1), Value::Null),
                (json!(0), Value::Null),
            ]
        );
        // One chunk ends them all; choice 2 never streamed, so its final part has the role.
        let finals = &e[4]["choices"];
        assert_eq!(finals.as_array().map(Vec::len), Some(3));
        assert_eq!(finals[0]["finish_reason"], "stop");
        assert_eq!(finals[1]["finish_reason"], "length");
        assert_eq!(finals[2]["finish_reason"], "stop");
        assert_eq!(finals[0]["delta"].get("role"), None);
        assert_eq!(finals[2]["delta"]["role"], "assistant");
        assert_eq!(e[5], json!("[DONE]"));
        assert_eq!(e.len(), 6);
    }

    #[test]
    fn include_usage_nulls_every_chunk_and_adds_a_usage_chunk_before_done() {
        let mut c = Chunker::new(Shape::Chat, header("chatcmpl-3"), 2, true);
        let e = events(
            &mut c,
            vec![
                delta(0, "x"),
                StreamItem::Done(answer(
                    &[("x", FinishReason::Eos), ("y", FinishReason::Eos)],
                    10,
                    2,
                )),
            ],
        );
        assert_eq!(e.len(), 4);
        assert_eq!(e[0]["usage"], Value::Null);
        assert!(e[0].as_object().is_some_and(|o| o.contains_key("usage")));
        assert_eq!(e[1]["usage"], Value::Null);
        // Two chat choices share one prompt of 5 tokens.
        assert_eq!(e[2]["choices"], json!([]));
        assert_eq!(
            e[2]["usage"],
            json!({"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7})
        );
        assert_eq!(e[3], json!("[DONE]"));

        // Text completions count every prompt.
        let mut c = Chunker::new(Shape::Text, header("cmpl-3"), 2, true);
        let e = events(
            &mut c,
            vec![StreamItem::Done(answer(
                &[("x", FinishReason::Eos), ("y", FinishReason::Eos)],
                10,
                2,
            ))],
        );
        assert_eq!(e[1]["usage"]["prompt_tokens"], 10);
    }

    #[test]
    fn an_error_mid_stream_is_an_error_event_then_done_and_nothing_after() {
        let mut c = Chunker::new(Shape::Chat, header("chatcmpl-4"), 1, true);
        let mut chunks = c.push(delta(0, "par"));
        chunks.extend(c.push(StreamItem::Error(ApiError::new(
            crate::error::ErrorKind::Timeout,
            "model `m` timed out",
        ))));
        assert!(c.ended());
        // Items after the end, and the end of the core's stream, add nothing.
        assert!(c.push(delta(0, "tial")).is_empty());
        assert!(c.finish().is_empty());
        let data: Vec<String> = chunks.iter().map(Chunk::data).collect();
        assert_eq!(data.len(), 3);
        assert_eq!(
            data[1],
            r#"{"error":{"message":"model `m` timed out","type":"server_error","param":null,"code":"timeout"}}"#
        );
        assert_eq!(data[2], "[DONE]");
    }

    #[test]
    fn logprobs_of_deltas_are_not_streamed() {
        let mut c = Chunker::new(Shape::Chat, header("chatcmpl-5"), 1, false);
        let chunks = c.push(StreamItem::Delta {
            index: 0,
            text: "a".into(),
            logprobs: vec![TokenLogprob {
                token: 3,
                logprob: -0.5,
                top: vec![(3, -0.5), (4, -1.5)],
            }],
        });
        let v: Value = serde_json::from_str(&chunks[0].data()).unwrap_or_default();
        assert_eq!(v["choices"][0]["logprobs"], Value::Null);
        assert_eq!(v["choices"][0]["delta"]["content"], "a");
    }

    #[test]
    fn a_stream_that_ends_without_an_answer_still_says_done() {
        let mut c = Chunker::new(Shape::Text, header("cmpl-6"), 1, true);
        assert!(c.push(delta(5, "out of range")).len() == 1);
        let done = c.finish();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].data(), "[DONE]");
        assert!(c.finish().is_empty());
    }
}
