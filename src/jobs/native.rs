//! Native jobs: inputs of the predict API, validated whole before the job is stored, and run
//! through the serving core in chunks on the background lane. A result line is
//! `{"index", "output"}` (the predict API's output for that input) or `{"index", "error":
//! {"code", "message"}}`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::store::StoredResult;
use super::{BoxFuture, Executor, JobRecord};
use crate::auth::Principal;
use crate::config::JobsSection;
use crate::error::{ApiError, ErrorKind};
use crate::serving::{validate, Core, Input, Item, ServeRequest};

/// Validate every input of a native job as the predict API would (in requests of the model's
/// `max_inputs`), off the async runtime. An error names the input by its index in the job.
pub async fn validate_native(
    core: &Core,
    who: &Principal,
    model: &str,
    version: Option<&str>,
    inputs: &[Value],
    parameters: &Map<String, Value>,
) -> Result<(), ApiError> {
    let resolved = core
        .registry
        .resolve(model, version)
        .map_err(ApiError::from)?;
    if !who.may_use(&resolved.manifest.id) {
        return Err(ApiError::new(
            ErrorKind::Forbidden,
            format!("this token may not use model `{}`", resolved.manifest.id),
        ));
    }
    let manifest = resolved.manifest.clone();
    let frontend = resolved.handle.frontend().clone();
    // The request options of the predict API, not model parameters.
    let mut params = parameters.clone();
    match params.remove("cache") {
        None | Some(Value::Bool(_)) => {}
        Some(_) => {
            return Err(ApiError::invalid(
                "parameters.cache",
                "must be true or false",
            ))
        }
    }
    match params.remove("stream") {
        None | Some(Value::Bool(false)) => {}
        Some(_) => {
            return Err(ApiError::invalid(
                "parameters.stream",
                "a job's results are read from GET /jobs/{id}/results, not streamed",
            ))
        }
    }
    let inputs = inputs.to_vec();
    tokio::task::spawn_blocking(move || {
        let step = manifest.max_inputs.max(1);
        for (n, chunk) in inputs.chunks(step).enumerate() {
            let typed: Vec<Input> = chunk.iter().cloned().map(Input::from_json).collect();
            if let Err(mut e) = validate::validate(&manifest, &frontend, typed, &params, None) {
                let offset = n * step;
                // `inputs[i]` of the chunk is `inputs[offset + i]` of the job.
                if let Some(field) = e.details.field.as_mut() {
                    if let Some(rest) = field.strip_prefix("inputs[") {
                        if let Some((i, tail)) = rest.split_once(']') {
                            if let Ok(i) = i.parse::<usize>() {
                                *field = format!("inputs[{}]{tail}", offset + i);
                                e.message = format!("inputs[{}]: {}", offset + i, e.message);
                            }
                        }
                    }
                }
                return Err(e);
            }
        }
        Ok(())
    })
    .await
    .map_err(ApiError::internal)?
}

pub struct NativeExecutor {
    core: Arc<Core>,
}

/// Waits while a model is busy or a budget is spent, and how many before an input fails.
const RETRY_BASE: Duration = Duration::from_millis(200);
const RETRY_CAP: Duration = Duration::from_secs(30);
const MAX_TRIES: u32 = 40;

/// Errors a job waits out instead of failing an input.
pub fn worth_waiting(e: &ApiError) -> bool {
    matches!(
        e.kind,
        ErrorKind::Unavailable
            | ErrorKind::RateLimited
            | ErrorKind::Timeout
            | ErrorKind::BadGateway
    )
}

/// How long to wait before try `n` (from 1): the error's Retry-After, else doubling.
pub fn wait_before(e: &ApiError, n: u32) -> Duration {
    let doubling = RETRY_BASE.saturating_mul(1 << n.min(8)).min(RETRY_CAP);
    e.retry_after_s
        .map(|s| Duration::from_secs(s).min(RETRY_CAP))
        .unwrap_or(doubling)
}

/// The endpoint a native job's inferences are booked under.
const ENDPOINT: &str = "job/native";

impl NativeExecutor {
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    /// One request of these inputs, waiting out a busy model.
    async fn infer(&self, job: &JobRecord, inputs: &[Value]) -> Result<Vec<Value>, ApiError> {
        let mut params = job.parameters.clone();
        let cache = !matches!(params.remove("cache"), Some(Value::Bool(false)));
        let mut tries = 0;
        loop {
            let req = ServeRequest {
                model: job.model.clone().unwrap_or_default(),
                version: job.version.clone(),
                inputs: inputs.iter().cloned().map(Input::from_json).collect(),
                params: params.clone(),
                cache,
                logprobs: None,
                headers: Default::default(),
                user: None,
                background: true,
            };
            // The books of this inference: background traffic of the job's owner.
            let mut ticket = self.core.gate.background(ENDPOINT, &job.owner);
            let (label, outcome) = self.core.infer(ticket.caller(), req).await;
            ticket.answered_by(label);
            match outcome {
                Ok(answer) => {
                    drop(ticket.close(200, None));
                    return Ok(answer.items.into_iter().map(output).collect());
                }
                Err(e) if worth_waiting(&e) && tries < MAX_TRIES => {
                    ticket.retried();
                    tries += 1;
                    tokio::time::sleep(wait_before(&e, tries)).await;
                }
                Err(e) => {
                    drop(ticket.close(e.status().as_u16(), Some(e.kind.code())));
                    return Err(e);
                }
            }
        }
    }
}

/// The predict API's output of one item.
fn output(item: Item) -> Value {
    match item {
        Item::Vector(v) => Value::from(v.to_vec()),
        Item::Generation(g) => Value::from(g.text.clone()),
        Item::Value(v) => v,
    }
}

fn line(index: u64, result: Result<Value, &ApiError>) -> StoredResult {
    let (ok, body) = match result {
        Ok(output) => (true, json!({"index": index, "output": output})),
        Err(e) => (
            false,
            json!({"index": index, "error": {"code": e.kind.code(), "message": e.message}}),
        ),
    };
    StoredResult {
        index,
        ok,
        line: serde_json::to_vec(&body).unwrap_or_default(),
    }
}

impl Executor for NativeExecutor {
    fn chunk(&self, cfg: &JobsSection) -> usize {
        cfg.chunk
    }

    fn run<'a>(
        &'a self,
        job: &'a JobRecord,
        inputs: Vec<(u64, Vec<u8>)>,
    ) -> BoxFuture<'a, Vec<StoredResult>> {
        Box::pin(async move {
            let (indices, values): (Vec<u64>, Vec<Value>) = inputs
                .into_iter()
                .map(|(i, bytes)| (i, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
                .unzip();
            match self.infer(job, &values).await {
                Ok(outputs) if outputs.len() == values.len() => indices
                    .into_iter()
                    .zip(outputs)
                    .map(|(i, o)| line(i, Ok(o)))
                    .collect(),
                Ok(_) => indices
                    .into_iter()
                    .map(|i| {
                        line(
                            i,
                            Err(&ApiError::internal("the model answered too few outputs")),
                        )
                    })
                    .collect(),
                // One bad input fails its request: run the chunk's inputs one by one so only
                // that one is an error.
                Err(_) if values.len() > 1 => {
                    let mut out = Vec::with_capacity(values.len());
                    for (i, v) in indices.into_iter().zip(values) {
                        let r = self.infer(job, std::slice::from_ref(&v)).await;
                        out.push(match r {
                            Ok(mut o) if o.len() == 1 => line(i, Ok(o.remove(0))),
                            Ok(_) => line(i, Err(&ApiError::internal("no output"))),
                            Err(e) => line(i, Err(&e)),
                        });
                    }
                    out
                }
                Err(e) => indices.into_iter().map(|i| line(i, Err(&e))).collect(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_models_and_budgets_are_waited_out_with_growing_waits() {
        let busy = ApiError::unavailable("queue full", 2);
        assert!(worth_waiting(&busy));
        assert_eq!(wait_before(&busy, 1), Duration::from_secs(2));
        let timeout = ApiError::new(ErrorKind::Timeout, "slow");
        assert!(worth_waiting(&timeout));
        assert!(wait_before(&timeout, 1) < wait_before(&timeout, 3));
        assert_eq!(wait_before(&timeout, 30), RETRY_CAP);
        assert!(!worth_waiting(&ApiError::invalid("inputs[0]", "too long")));
    }
}
