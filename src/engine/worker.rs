//! The worker thread: loads the model, warms it up, then runs one batch at a time.
//! Compute never runs on tokio's threads; a panic in a forward pass fails that batch only.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::batcher::BatchPolicy;
use super::{
    Batch, BatchObserver, BatchReport, Completed, EngineError, Job, LoadSpec, Output, RunStats,
    Work,
};
use crate::models::{self, Backend, Frontend, ModelError};

/// Clears the `alive` flag however the thread ends.
struct AliveGuard(Arc<AtomicBool>);
impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

pub(super) fn run(
    spec: LoadSpec,
    policy: BatchPolicy,
    mut batches: mpsc::Receiver<Batch>,
    ready: oneshot::Sender<Result<Arc<Frontend>, EngineError>>,
    alive: Arc<AtomicBool>,
    active: Arc<AtomicUsize>,
) {
    let _guard = AliveGuard(alive);
    let loaded = catch_unwind(AssertUnwindSafe(|| load(&spec)))
        .unwrap_or_else(|_| Err(EngineError::Load("the model loader panicked".into())));
    let (mut backend, frontend) = match loaded {
        Ok(pair) => pair,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    if ready.send(Ok(frontend.clone())).is_err() {
        return;
    }
    if let Backend::Generation(lm) = &mut backend {
        // Continuous batching: sequences join and leave the running batch at every step.
        super::scheduler::Scheduler::new(
            lm.as_mut(),
            &frontend,
            spec.observer.as_ref(),
            policy.max_batch_tokens,
        )
        .with_active_gauge(active)
        .run(&mut batches);
        return;
    }
    while let Some(batch) = batches.blocking_recv() {
        run_batch(&mut backend, policy, batch, spec.observer.as_ref());
    }
}

/// Verify, load and warm up, all on this thread.
fn load(spec: &LoadSpec) -> Result<(Backend, Arc<Frontend>), EngineError> {
    let load_err = |e: &dyn std::fmt::Display| EngineError::Load(e.to_string());
    if let Some(keys) = &spec.trusted_keys {
        crate::spec::signing::verify(&spec.manifest, keys).map_err(|e| {
            EngineError::Load(format!(
                "refused: {e} (security.require_signed_models is on)"
            ))
        })?;
    }
    spec.manifest
        .verify_files(&spec.dir)
        .map_err(|e| load_err(&e))?;
    // The manifest's device, if it names one, beats `model.device`.
    let kind = spec.manifest.device.unwrap_or(spec.device);
    let device = models::device::select(kind).map_err(|e| load_err(&e))?;
    let (mut backend, frontend) =
        models::load(&spec.manifest, &spec.dir, &device).map_err(|e| load_err(&e))?;
    if spec.warmup {
        warmup(&mut backend, &frontend).map_err(|e| EngineError::Load(format!("warmup: {e}")))?;
    }
    Ok((backend, Arc::new(frontend)))
}

/// One tiny inference, so the first request does not pay for lazy initialisation.
fn warmup(backend: &mut Backend, frontend: &Frontend) -> Result<(), ModelError> {
    let encode = |text: &str| -> Result<Vec<u32>, ModelError> {
        let codec = frontend
            .codec
            .as_ref()
            .ok_or_else(|| ModelError::Load("no tokenizer".into()))?;
        codec
            .encode(text, true)
            .map_err(|e| ModelError::Tokenizer(format!("{e:?}")))
    };
    match backend {
        Backend::Embedding(m) => {
            let ids = encode("warm up")?;
            m.embed(&[&ids, &ids])?;
        }
        Backend::Generation(m) => {
            let ids = encode("Hello")?;
            if !ids.is_empty() {
                m.forward(&ids, 0)?;
                m.release(0);
            }
        }
        Backend::Echo => {}
    }
    Ok(())
}

fn run_batch(
    backend: &mut Backend,
    policy: BatchPolicy,
    batch: Batch,
    observer: Option<&BatchObserver>,
) {
    let Batch { jobs, done } = batch;
    // Echo requests told to fail do so here, like a model error, without touching the others.
    let (jobs, failing): (Vec<Job>, Vec<Job>) = jobs
        .into_iter()
        .partition(|j| !matches!(j.work, Work::Echo { fail: true, .. }));
    for job in failing {
        job.reply.done(Err(EngineError::Model(
            "failed on purpose (the echo parameter fail_rate)".into(),
        )));
    }
    if jobs.is_empty() {
        let _ = done.send(());
        return;
    }
    let dispatched = Instant::now();
    let batch_size: usize = jobs.iter().map(|j| j.work.items()).sum();
    let started = Instant::now();
    let results = catch_unwind(AssertUnwindSafe(|| compute(backend, policy, &jobs)));
    let compute_time = started.elapsed();
    // Observed before anyone is answered, so a client that reads /metrics after its response
    // always finds its batch counted.
    if let Some(o) = observer {
        o(&BatchReport {
            size: batch_size,
            compute: compute_time,
            cancelled: 0,
        });
    }
    match results {
        Ok(Ok(outputs)) => {
            for (job, (output, generated)) in jobs.into_iter().zip(outputs) {
                let stats = RunStats {
                    attempts: 0,
                    queue: dispatched.saturating_duration_since(job.enqueued),
                    compute: compute_time,
                    batch_size,
                    tokens_processed: job.work.input_tokens(),
                    tokens_generated: generated,
                };
                job.reply.done(Ok(Completed { output, stats }));
            }
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "inference failed");
            for job in jobs {
                job.reply.done(Err(EngineError::Model(e.to_string())));
            }
        }
        Err(_) => {
            tracing::error!("inference panicked; the batch failed, the worker goes on");
            for job in jobs {
                job.reply
                    .done(Err(EngineError::Model("inference panicked".into())));
            }
        }
    }
    let _ = done.send(());
}

/// Run every job of the batch; per job its output and the tokens it generated.
fn compute(
    backend: &mut Backend,
    policy: BatchPolicy,
    jobs: &[Job],
) -> Result<Vec<(Output, usize)>, ModelError> {
    match backend {
        Backend::Embedding(model) => {
            // One padded forward pass per `max_batch_size` inputs across all jobs.
            let all: Vec<&[u32]> = jobs
                .iter()
                .flat_map(|j| match &j.work {
                    Work::Embed { inputs } => inputs.iter().map(Vec::as_slice).collect(),
                    _ => Vec::new(),
                })
                .collect();
            let mut vectors = Vec::with_capacity(all.len());
            for chunk in all.chunks(policy.max_batch_size.max(1)) {
                vectors.extend(model.embed(chunk)?);
            }
            let mut it = vectors.into_iter();
            Ok(jobs
                .iter()
                .map(|j| {
                    (
                        Output::Vectors(it.by_ref().take(j.work.items()).collect()),
                        0,
                    )
                })
                .collect())
        }
        // Generation never comes here: the scheduler runs it (see `run`).
        Backend::Generation(_) => Err(ModelError::Inference(
            "generation runs on the scheduler".into(),
        )),
        Backend::Echo => Ok(jobs
            .iter()
            .map(|j| match &j.work {
                Work::Echo { inputs, delay, .. } => {
                    if !delay.is_zero() {
                        std::thread::sleep(*delay);
                    }
                    (Output::Values(inputs.clone()), 0)
                }
                _ => (Output::Values(vec![]), 0),
            })
            .collect()),
    }
}
