//! What a job and an uploaded file are, as stored and as listed: their records, states and
//! webhook attempts.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::auth::{Principal, SCOPE_ADMIN};

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Stored; its runner has not started yet.
    Queued,
    Running,
    /// Every input has a result (some may be errors: see `failed`).
    Completed,
    /// The job could not run (its model went away, the store failed).
    Failed,
    /// Cancellation asked; the chunks in flight finish.
    Cancelling,
    Cancelled,
}

impl Status {
    pub fn is_final(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }
}

/// Which protocol's inputs a job holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Inputs of the native predict API, all for `model`.
    Native,
    /// Lines of the OpenAI Batch API (`{custom_id, method, url, body}`).
    Openai,
}

/// One delivery attempt of a webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// Unix seconds.
    pub at: u64,
    /// The receiver's status code, when it answered.
    pub status: Option<u16>,
    /// Why the attempt failed, when it did not get an answer or was refused.
    pub error: Option<String>,
    pub ms: u64,
}

/// A job's webhook and its deliveries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookState {
    pub url: String,
    /// `pending` (not sent, or retrying), `delivered`, `failed` (every attempt failed).
    pub state: String,
    /// The `webhook-id` of the event (the same on each retry, so receivers can deduplicate).
    pub message_id: Option<String>,
    pub attempts: Vec<Attempt>,
}

/// A job, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub kind: JobKind,
    /// Who created it: the job runs as this principal, and only it (or an admin) sees it.
    pub owner: Principal,
    /// The model (native jobs; for OpenAI batches the first line's).
    pub model: Option<String>,
    pub version: Option<String>,
    #[serde(default)]
    pub parameters: Map<String, Value>,
    /// OpenAI: the endpoint every line calls, and the batch's own fields.
    pub endpoint: Option<String>,
    pub input_file_id: Option<String>,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub completion_window: Option<String>,
    pub metadata: Option<Value>,
    pub status: Status,
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
    pub created_at: u64,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    pub cancelling_at: Option<u64>,
    /// Why the job failed (status `failed`).
    pub error: Option<String>,
    pub webhook: Option<WebhookState>,
}

impl JobRecord {
    /// Whether `who` may see and cancel this job.
    pub fn visible_to(&self, who: &Principal) -> bool {
        who.sub == self.owner.sub || who.scopes.iter().any(|s| s == SCOPE_ADMIN)
    }
}

/// A stored file of the OpenAI Batch API: an upload, or a batch's output or error file (whose
/// bytes are its job's results, read when asked).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRecord {
    pub id: String,
    pub owner: String,
    pub filename: String,
    pub purpose: String,
    pub bytes: u64,
    pub created_at: u64,
    /// A batch's output (`ok: true`) or error file (`ok: false`).
    pub job: Option<String>,
    pub ok: Option<bool>,
}

/// What a new job holds, validated by its adapter.
#[derive(Debug, Clone, Default)]
pub struct NewJob {
    pub kind: Option<JobKind>,
    pub model: Option<String>,
    pub version: Option<String>,
    pub parameters: Map<String, Value>,
    /// Each input, serialized (JSON).
    pub inputs: Vec<Vec<u8>>,
    pub webhook: Option<String>,
    pub endpoint: Option<String>,
    pub input_file_id: Option<String>,
    pub completion_window: Option<String>,
    pub metadata: Option<Value>,
}
