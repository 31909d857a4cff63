//! The `/v1` wire types: requests as OpenAI's SDKs send them, answers and stream chunks as they
//! expect them, with the `ToSchema` derives the OpenAPI document is built from. No logic here
//! but serde's.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// `"object": "list"`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ListObject {
    List,
}

/// `"object": "model"`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModelObjectKind {
    Model,
}

/// One model, as OpenAI lists them.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelObject {
    /// The model id (send it as `model`; `id@version` picks a version).
    pub id: String,
    pub object: ModelObjectKind,
    /// Always 0.
    pub created: u64,
    /// Always `anya`.
    pub owned_by: String,
}

/// The answer of `GET /v1/models`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelListV1 {
    pub object: ListObject,
    pub data: Vec<ModelObject>,
}

/// A `stop` given as one string or a list.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub(crate) struct StreamOptions {
    /// A last chunk, with no choices, carries the usage.
    #[serde(default)]
    pub(crate) include_usage: bool,
}

/// The sampling fields shared by chat and text completions. A model's own ranges (`GET
/// /models/{id}`) apply: a value outside them is a 400 naming the field.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub(crate) struct Sampling {
    pub(crate) max_tokens: Option<u64>,
    /// Wins over `max_tokens`.
    pub(crate) max_completion_tokens: Option<u64>,
    pub(crate) temperature: Option<f64>,
    pub(crate) top_p: Option<f64>,
    pub(crate) seed: Option<u64>,
    /// Up to 4 strings that end the generation.
    pub(crate) stop: Option<Stop>,
    /// Choices per prompt.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 16)]
    pub(crate) n: Option<usize>,
    /// Answer with server-sent events (`text/event-stream`).
    #[serde(default)]
    pub(crate) stream: Option<bool>,
    pub(crate) stream_options: Option<StreamOptions>,
    pub(crate) user: Option<String>,
    /// Only 0 (or null).
    pub(crate) frequency_penalty: Option<f64>,
    /// Only 0 (or null).
    pub(crate) presence_penalty: Option<f64>,
    /// Not OpenAI's: vLLM's and llama.cpp's extra field, the model parameter `ignore_eos`.
    pub(crate) ignore_eos: Option<bool>,
    /// Not OpenAI's: `false` answers from the named model only, never from its fallbacks.
    pub(crate) use_fallbacks: Option<bool>,
}

/// A message's content: a string, or a list of text parts.
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
enum ContentDoc {
    Text(String),
    Parts(Vec<TextPartDoc>),
}

/// `"type": "text"`.
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(rename_all = "snake_case")]
enum TextPartKind {
    Text,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct TextPartDoc {
    #[serde(rename = "type")]
    kind: TextPartKind,
    text: String,
}

/// One message of the conversation.
#[derive(ToSchema)]
#[allow(dead_code)]
struct MessageDoc {
    /// `system` (or `developer`), `user` or `assistant`.
    role: String,
    content: ContentDoc,
}

/// A chat completion request.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ChatRequest {
    /// A model id, or `id@version`.
    pub(crate) model: String,
    #[schema(value_type = Vec<MessageDoc>, min_items = 1)]
    pub(crate) messages: Vec<Value>,
    #[serde(flatten)]
    pub(crate) sampling: Sampling,
    /// Return the log-probability of each generated token.
    pub(crate) logprobs: Option<bool>,
    /// With `logprobs`: the most likely alternatives per token (at most 20 are returned).
    pub(crate) top_logprobs: Option<usize>,
    /// Other fields: those that would change the output and are not implemented (`tools`,
    /// `logit_bias`, a `response_format` other than text, ...) are refused with 400.
    #[serde(flatten)]
    #[schema(ignore)]
    pub(crate) other: Map<String, Value>,
}

/// `prompt`: one string, a list of them (one completion each), or one list of token ids.
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
enum PromptDoc {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
}

/// A text completion request.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CompletionRequest {
    /// A model id, or `id@version`.
    pub(crate) model: String,
    #[schema(value_type = PromptDoc)]
    pub(crate) prompt: Value,
    #[serde(flatten)]
    pub(crate) sampling: Sampling,
    /// Refused (chat completions have log-probabilities).
    #[schema(ignore)]
    pub(crate) logprobs: Option<usize>,
    /// Refused when true.
    #[schema(ignore)]
    pub(crate) echo: Option<bool>,
    /// Refused unless null.
    #[schema(ignore)]
    pub(crate) suffix: Option<Value>,
    #[serde(flatten)]
    #[schema(ignore)]
    pub(crate) other: Map<String, Value>,
}

/// An embeddings request.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct EmbeddingRequest {
    /// A model id, or `id@version`.
    pub(crate) model: String,
    #[schema(value_type = EmbeddingInputDoc)]
    pub(crate) input: Value,
    /// `float` (the default) or `base64` (little-endian f32s).
    #[schema(value_type = Option<EncodingFormat>)]
    pub(crate) encoding_format: Option<String>,
    /// Keep the first `dimensions` components (then L2-normalised again); at most the
    /// model's size.
    #[schema(minimum = 1)]
    pub(crate) dimensions: Option<usize>,
    pub(crate) user: Option<String>,
    /// Not OpenAI's: `false` answers from the named model only, never from its fallbacks.
    pub(crate) use_fallbacks: Option<bool>,
}

/// `input`: one string, a list of strings, one list of token ids, or a list of such lists.
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
enum EmbeddingInputDoc {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(rename_all = "snake_case")]
enum EncodingFormat {
    Float,
    Base64,
}

/// `"object": "embedding"`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EmbeddingObjectKind {
    Embedding,
}

/// One vector: floats, or with `encoding_format: base64` the little-endian f32 bytes in
/// base64.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingVector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Embedding {
    pub object: EmbeddingObjectKind,
    pub index: usize,
    pub embedding: EmbeddingVector,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

/// The answer of `POST /v1/embeddings`: one vector per input, in order.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingList {
    pub object: ListObject,
    pub data: Vec<Embedding>,
    /// The model as the request named it.
    pub model: String,
    pub usage: EmbeddingUsage,
}

/// Why a choice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FinishReasonV1 {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens`, or the end of the model's context.
    Length,
}

/// `"role": "assistant"`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AssistantRole {
    Assistant,
}

/// Token counts of a request.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Usage {
    /// Prompt tokens (counted once when `n` choices share the prompt).
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

/// `"object": "chat.completion"`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub enum ChatCompletionObject {
    #[serde(rename = "chat.completion")]
    ChatCompletion,
}

/// `"object": "chat.completion.chunk"`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub enum ChatChunkObject {
    #[serde(rename = "chat.completion.chunk")]
    ChatCompletionChunk,
}

/// `"object": "text_completion"` (answers and stream chunks alike).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TextCompletionObject {
    TextCompletion,
}

/// The answer of `POST /v1/chat/completions` without `stream`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletion {
    pub id: String,
    pub object: ChatCompletionObject,
    /// Unix seconds.
    pub created: u64,
    /// The model as the request named it.
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChatChoice {
    pub index: usize,
    pub message: AssistantMessage,
    /// With `logprobs: true`; else null.
    pub logprobs: Option<ChoiceLogprobs>,
    pub finish_reason: FinishReasonV1,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AssistantMessage {
    pub role: AssistantRole,
    pub content: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChoiceLogprobs {
    /// One entry per generated token.
    pub content: Vec<TokenLogprobV1>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenLogprobV1 {
    pub token: String,
    pub logprob: f32,
    /// The token's UTF-8 bytes.
    pub bytes: Vec<u8>,
    /// The most likely tokens at this position (`top_logprobs` of them).
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

/// One event of a streamed chat completion (`data: {...}`; the stream ends with
/// `data: [DONE]`). The first chunk of each choice carries the role; the finishing chunk
/// carries the finish reason. An error after the stream started is a `data:` event holding
/// `OpenAiErrorEnvelope`, then `[DONE]`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: ChatChunkObject,
    pub created: u64,
    pub model: String,
    /// Empty in the usage chunk.
    pub choices: Vec<ChatChunkChoice>,
    /// Only with `stream_options.include_usage`: null except in the last chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Usage>)]
    pub usage: Option<Option<Usage>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChatChunkChoice {
    pub index: usize,
    pub delta: ChatDelta,
    /// Always null in chunks.
    #[schema(value_type = Option<ChoiceLogprobs>)]
    pub logprobs: Option<ChoiceLogprobs>,
    pub finish_reason: Option<FinishReasonV1>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChatDelta {
    /// In the first chunk of each choice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<AssistantRole>,
    pub content: String,
}

/// The answer of `POST /v1/completions` without `stream`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TextCompletion {
    pub id: String,
    pub object: TextCompletionObject,
    pub created: u64,
    pub model: String,
    /// `n` per prompt, prompt by prompt.
    pub choices: Vec<TextChoice>,
    pub usage: Usage,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TextChoice {
    pub index: usize,
    pub text: String,
    /// Always null (log-probabilities are on chat completions).
    #[schema(value_type = Option<ChoiceLogprobs>)]
    pub logprobs: Option<ChoiceLogprobs>,
    pub finish_reason: FinishReasonV1,
}

/// One event of a streamed text completion (`data: {...}`, then `data: [DONE]`).
#[derive(Debug, Serialize, ToSchema)]
pub struct TextCompletionChunk {
    pub id: String,
    pub object: TextCompletionObject,
    pub created: u64,
    pub model: String,
    pub choices: Vec<TextChunkChoice>,
    /// Only with `stream_options.include_usage`: null except in the last chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Usage>)]
    pub usage: Option<Option<Usage>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TextChunkChoice {
    pub index: usize,
    pub text: String,
    /// Always null.
    #[schema(value_type = Option<ChoiceLogprobs>)]
    pub logprobs: Option<ChoiceLogprobs>,
    pub finish_reason: Option<FinishReasonV1>,
}

/// A finished (not streamed) completion: the chat or the text shape, serialized as itself.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Completion {
    Chat(ChatCompletion),
    Text(TextCompletion),
}
