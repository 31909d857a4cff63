//! Tasks as modules: what differs between embedding, classification, text generation and echo
//! lives in one module per task, behind [`TaskKind`] — the parameters it reads beyond the
//! manifest's, how its inputs become engine work (local or remote), how its outputs are shaped,
//! the JSON Schemas of its native inputs and outputs, its KServe v2 tensor names and the OpenAI
//! endpoint that serves it. The rest of the house asks `tasks::of(task)` instead of matching
//! on `Task`. A new task (rerank) is a new module here and one arm in `of`.

mod classification;
mod echo;
mod embedding;
mod generation;

use serde_json::Value;

use super::classify::Shaping;
use super::params::ValidParams;
use super::Input;
use crate::engine::Work;
use crate::error::ApiError;
use crate::models::Frontend;
use crate::spec::manifest::{Manifest, ParamSpec, Task};

/// Which OpenAI-compatible endpoints serve a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenAiEndpoint {
    /// `/v1/chat/completions` and `/v1/completions`.
    Generation,
    /// `/v1/embeddings`.
    Embeddings,
}

impl OpenAiEndpoint {
    /// The task such an endpoint serves, by its manifest name.
    pub fn task_name(self) -> &'static str {
        match self {
            OpenAiEndpoint::Generation => "text-generation",
            OpenAiEndpoint::Embeddings => "embedding",
        }
    }
}

/// What validation hands a task to make its work from.
pub struct Local<'a> {
    pub frontend: &'a Frontend,
    pub params: &'a ValidParams,
    /// Log-probabilities asked for (generation only).
    pub logprobs: Option<usize>,
}

/// A remote model's request context (its provider tokenizes).
pub struct Remote<'a> {
    pub manifest: &'a Manifest,
    pub params: &'a ValidParams,
}

/// The engine work of a valid request, and how the cache may keep its outputs.
pub struct Made {
    pub work: Work,
    /// Deterministic outputs: embeddings always, generation when greedy or seeded.
    pub cacheable: bool,
    /// The parameters that change the output, canonically encoded (for cache keys).
    pub key_params: Vec<u8>,
}

/// One task's knowledge.
pub trait TaskKind: Sync {
    /// The manifest's name of the task.
    fn task(&self) -> Task;

    /// Separates the tasks' entries in cache keys.
    fn cache_kind(&self) -> &'static str;

    /// The parameters the task reads beyond the manifest's, each with its description.
    fn builtin_params(&self) -> Vec<ParamSpec> {
        Vec::new()
    }

    /// The shaping a request asks for (classification, zero-shot), from its checked
    /// parameters; `None` for plain outputs.
    fn plan(
        &self,
        _frontend: &Frontend,
        _params: &ValidParams,
    ) -> Result<Option<Shaping>, ApiError> {
        Ok(None)
    }

    /// The local engine work of these inputs.
    fn work(
        &self,
        cx: Local<'_>,
        inputs: Vec<Input>,
        shaping: &mut Option<Shaping>,
    ) -> Result<Made, ApiError>;

    /// The work of these inputs for a remote model.
    fn remote(&self, _cx: Remote<'_>, _inputs: Vec<Input>) -> Result<Made, ApiError> {
        Err(ApiError::internal(
            "a remote model is an embedding or text-generation model",
        ))
    }

    /// The JSON Schema of one native input; `None` when any JSON goes.
    fn input_item_schema(&self) -> Option<Value>;

    /// The JSON Schema of the native `outputs` (vectors of `dims` numbers, when known).
    fn output_schema(&self, dims: Option<usize>) -> Value;

    /// The KServe v2 input and output tensor names.
    fn tensor_names(&self) -> (&'static str, &'static str);

    /// Its answers are vectors (KServe's FP32 matrix; drift's embedding windows), not texts or
    /// labels.
    fn answers_vectors(&self) -> bool {
        false
    }

    /// The OpenAI endpoint that serves the task, if any.
    fn openai(&self) -> Option<OpenAiEndpoint> {
        None
    }

    /// Its answers are generated text, streamed token by token.
    fn generates(&self) -> bool {
        false
    }

    /// Inputs over the length limit may be cut (`parameters.truncate`).
    fn truncates(&self) -> bool {
        false
    }

    /// Its versions keep drift windows.
    fn drifts(&self) -> bool {
        true
    }
}

/// The module of `task`.
pub fn of(task: Task) -> &'static dyn TaskKind {
    match task {
        Task::Embedding => &embedding::Embedding,
        Task::Classification => &classification::Classification,
        Task::TextGeneration => &generation::Generation,
        Task::Echo => &echo::Echo,
    }
}

/// The parameters a model version takes: its manifest's, then its task's built-in ones that the
/// manifest does not declare.
pub fn params_of(manifest: &Manifest) -> Vec<ParamSpec> {
    let mut specs = manifest.parameters.clone();
    for b in of(manifest.task).builtin_params() {
        if !specs.iter().any(|s| s.name == b.name) {
            specs.push(b);
        }
    }
    specs
}

/// A parameter spec with a description.
fn described(mut s: ParamSpec, d: &str) -> ParamSpec {
    s.description = Some(d.into());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_task_names_itself_and_its_tensors() {
        for task in [
            Task::Embedding,
            Task::Classification,
            Task::TextGeneration,
            Task::Echo,
        ] {
            let k = of(task);
            assert_eq!(k.task(), task);
            let (i, o) = k.tensor_names();
            assert!(!i.is_empty() && !o.is_empty() && i != o);
        }
        assert_eq!(
            of(Task::TextGeneration).openai(),
            Some(OpenAiEndpoint::Generation)
        );
        assert_eq!(
            of(Task::Embedding).openai(),
            Some(OpenAiEndpoint::Embeddings)
        );
        assert_eq!(of(Task::Classification).openai(), None);
        assert!(of(Task::TextGeneration).generates() && !of(Task::Embedding).generates());
        assert!(
            of(Task::Embedding).answers_vectors() && !of(Task::Classification).answers_vectors()
        );
        assert!(!of(Task::Echo).drifts());
    }
}
