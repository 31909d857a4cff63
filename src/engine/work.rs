//! What a request asks a model to do, what it answers, and how it can fail.

use std::sync::Arc;
use std::time::Duration;

use super::remote;
use crate::models::{GenParams, Generation};

/// What a request asks a model to do; inputs are already tokenized and validated.
#[derive(Debug, Clone)]
pub enum Work {
    Embed {
        inputs: Vec<Vec<u32>>,
    },
    Generate {
        prompts: Vec<Vec<u32>>,
        params: GenParams,
    },
    Echo {
        inputs: Vec<serde_json::Value>,
        delay: Duration,
        /// Fail this request on purpose (the echo parameter `fail_rate`, for tests of canary
        /// analysis and fallbacks).
        fail: bool,
    },
    /// For a remote model: the validated inputs, which its provider tokenizes.
    Remote(remote::RemoteWork),
}

impl Work {
    pub fn items(&self) -> usize {
        match self {
            Work::Embed { inputs } => inputs.len(),
            Work::Generate { prompts, .. } => prompts.len(),
            Work::Echo { inputs, .. } => inputs.len(),
            Work::Remote(r) => r.items(),
        }
    }

    /// The same work for the inputs at `idx` only (the others came from the cache).
    pub fn subset(&self, idx: &[usize]) -> Work {
        let pick = |v: &Vec<Vec<u32>>| idx.iter().filter_map(|&i| v.get(i).cloned()).collect();
        match self {
            Work::Embed { inputs } => Work::Embed {
                inputs: pick(inputs),
            },
            Work::Generate { prompts, params } => Work::Generate {
                prompts: pick(prompts),
                params: params.clone(),
            },
            Work::Echo {
                inputs,
                delay,
                fail,
            } => Work::Echo {
                inputs: idx.iter().filter_map(|&i| inputs.get(i).cloned()).collect(),
                delay: *delay,
                fail: *fail,
            },
            Work::Remote(r) => Work::Remote(r.subset(idx)),
        }
    }

    /// Tokens of the inputs (sentences or prompts): what the model reads, and what a client is
    /// told it sent. The one place they are counted.
    pub fn input_tokens(&self) -> usize {
        match self {
            Work::Embed { inputs } => sum_lengths(inputs),
            Work::Generate { prompts, .. } => sum_lengths(prompts),
            Work::Echo { .. } | Work::Remote(_) => 0,
        }
    }

    /// What a request may cost at most, in tokens: its inputs plus, for generation,
    /// `max_tokens` per prompt (the batch's token budget and the generation rate limit).
    /// Echo inputs count one each.
    pub fn tokens(&self) -> usize {
        match self {
            Work::Generate { prompts, params } => {
                sum_lengths(prompts) + prompts.len() * params.max_tokens
            }
            Work::Echo { inputs, .. } => inputs.len(),
            Work::Embed { .. } => self.input_tokens(),
            // The provider tokenizes: a byte is at most a token.
            Work::Remote(r @ remote::RemoteWork::Generate { params, .. }) => {
                r.text_bytes() + r.items() * params.max_tokens
            }
            Work::Remote(r) => r.text_bytes(),
        }
    }
}

/// Tokens in a list of token sequences.
pub(crate) fn sum_lengths(seqs: &[Vec<u32>]) -> usize {
    seqs.iter().map(Vec::len).sum()
}

#[derive(Debug, Clone)]
pub enum Output {
    Vectors(Vec<Vec<f32>>),
    Generations(Vec<Generation>),
    Values(Vec<serde_json::Value>),
}

/// How a request went through the engine.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunStats {
    pub queue: Duration,
    pub compute: Duration,
    /// Inputs in the batch this request ran in.
    pub batch_size: usize,
    pub tokens_processed: usize,
    pub tokens_generated: usize,
    /// Attempts a remote call took (0 for a local model: one attempt, no retries).
    pub attempts: u32,
}

/// What the engine reports after each batch (and after dropping cancelled requests), so the
/// metrics can count per batch without the engine knowing about them.
#[derive(Debug, Clone, Copy, Default)]
pub struct BatchReport {
    /// Inputs in the batch (0 when only reporting cancellations).
    pub size: usize,
    pub compute: Duration,
    /// Requests dropped before compute because their client had gone.
    pub cancelled: usize,
}

pub type BatchObserver = Arc<dyn Fn(&BatchReport) + Send + Sync>;

#[derive(Debug, Clone)]
pub struct Completed {
    pub output: Output,
    pub stats: RunStats,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("the queue of {model} is full ({capacity} waiting)")]
    Overloaded { model: String, capacity: usize },
    #[error("no answer from {model} within {timeout_ms} ms")]
    Timeout { model: String, timeout_ms: u128 },
    #[error("the worker of {0} has stopped")]
    Stopped(String),
    #[error("{0}")]
    Model(String),
    #[error("model load failed: {0}")]
    Load(String),
    /// A remote model's provider answered an error status.
    #[error("the provider of {model} answered {status}: {message}")]
    Upstream {
        model: String,
        status: u16,
        message: String,
        retry_after_ms: Option<u64>,
        attempts: u32,
    },
    /// A remote model's provider could not be reached, or did not answer in time.
    #[error("the provider of {model} is unreachable: {message}")]
    Unreachable {
        model: String,
        message: String,
        attempts: u32,
    },
}

impl EngineError {
    /// Whether another target (a fallback) may succeed where this one failed: the target is
    /// unreachable, overloaded, timed out or failed on its side; never the client's own error.
    pub fn fallback_reason(&self) -> Option<&'static str> {
        match self {
            EngineError::Overloaded { .. } => Some("queue_full"),
            EngineError::Timeout { .. } => Some("timeout"),
            EngineError::Stopped(_) => Some("unavailable"),
            EngineError::Unreachable { .. } => Some("unreachable"),
            EngineError::Upstream { status: 429, .. } => Some("rate_limited"),
            EngineError::Upstream { status: 408, .. } => Some("timeout"),
            EngineError::Upstream { status, .. } if *status >= 500 => Some("upstream_5xx"),
            EngineError::Upstream { .. } | EngineError::Model(_) | EngineError::Load(_) => None,
        }
    }

    /// Whether this failure says the target itself is unhealthy (what a circuit breaker
    /// counts). A full queue is load, not ill health: it spills over without opening a circuit.
    pub fn is_target_failure(&self) -> bool {
        self.fallback_reason().is_some() && !matches!(self, EngineError::Overloaded { .. })
    }

    /// Attempts a remote call made (1 for anything else).
    pub fn attempts(&self) -> u32 {
        match self {
            EngineError::Upstream { attempts, .. } | EngineError::Unreachable { attempts, .. } => {
                *attempts
            }
            _ => 1,
        }
    }
}
