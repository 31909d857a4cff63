//! The engine: per model version, a bounded queue, a batcher task and a worker OS thread that
//! owns the model. No HTTP types here.
//!
//! ```text
//! submit() ──try enqueue (capacity)──▶ unbounded channel ──▶ batcher task (BatchQueue policy)
//!    ▲                                                         │ one batch at a time
//!    └──── event stream (deltas, done) ◀── worker thread (model) ◀──┘
//! ```
//! A request's answer is a stream of events: for a streaming generation, text deltas per input
//! as they become final, then `Done`; otherwise `Done` alone. `infer` drains it. Dropping the
//! receiver is a cancellation: queued work is dropped, running sequences leave at the next step.
//! The queue bound is an atomic count, checked before sending, so a full queue answers
//! `Overloaded` at once. The batcher hands the worker one batch and waits for it to finish,
//! so while the model computes, new requests pile up and form the next (larger) batch.

pub mod batcher;
mod events;
pub mod remote;
mod scheduler;
mod work;
mod worker;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::models::Frontend;
use crate::spec::manifest::Manifest;
use batcher::{BatchPolicy, BatchQueue, Next, Pending};
pub(crate) use events::Reply;
pub use events::{Event, EventStream};
pub(crate) use work::sum_lengths;
pub use work::{BatchObserver, BatchReport, Completed, EngineError, Output, RunStats, Work};

struct Job {
    work: Work,
    enqueued: Instant,
    reply: Reply,
    /// Which piece of its request this is (large requests are cut, see `infer`).
    piece: usize,
    /// Whether this is its request's last piece: the queue count drops when it leaves.
    last: bool,
    /// Batch-job work: not counted against the queue's capacity, and behind every interactive
    /// request in the batcher.
    background: bool,
}

impl Pending for Job {
    fn items(&self) -> usize {
        self.work.items()
    }
    fn tokens(&self) -> usize {
        self.work.tokens()
    }
    fn enqueued(&self) -> Instant {
        self.enqueued
    }
    fn is_cancelled(&self) -> bool {
        self.reply.is_closed()
    }
    fn piece(&self) -> usize {
        self.piece
    }
    fn background(&self) -> bool {
        self.background
    }
}

/// Requests leaving the queue among `jobs` (each counts once, with its last piece).
fn requests_in(jobs: &[Job]) -> usize {
    jobs.iter().filter(|j| j.last && !j.background).count()
}

struct Batch {
    jobs: Vec<Job>,
    done: oneshot::Sender<()>,
}

struct Inner {
    name: String,
    tx: mpsc::UnboundedSender<Job>,
    /// Requests sent to the batcher and not yet handed to the worker.
    queued: Arc<AtomicUsize>,
    capacity: usize,
    frontend: Arc<Frontend>,
    alive: Arc<AtomicBool>,
    cancelled: Arc<AtomicUsize>,
    /// Generation sequences holding a KV-cache slot.
    active: Arc<AtomicUsize>,
    /// Inputs per piece when a large request is cut (a quarter of a batch).
    piece_items: usize,
    /// A remote model: requests go to its provider instead of a worker thread.
    remote: Option<Arc<remote::RemoteModel>>,
}

/// A cheap, cloneable handle on a running model version.
#[derive(Clone)]
pub struct ModelHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ModelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelHandle")
            .field("name", &self.inner.name)
            .finish()
    }
}

/// What the worker needs to load a model.
pub struct LoadSpec {
    pub manifest: Manifest,
    pub dir: PathBuf,
    pub device: crate::config::DeviceKind,
    pub warmup: bool,
    pub observer: Option<BatchObserver>,
    /// When set, the manifest must carry a valid signature by one of these keys.
    pub trusted_keys: Option<Arc<Vec<ed25519_dalek::VerifyingKey>>>,
}

impl ModelHandle {
    /// Start the worker thread, load the model on it (verifying file hashes first), warm it up,
    /// and start the batcher. Resolves once the model is ready or has failed to load.
    pub async fn start(spec: LoadSpec) -> Result<ModelHandle, EngineError> {
        let name = format!("{}@{}", spec.manifest.id, spec.manifest.version);
        let b = &spec.manifest.batching;
        let policy = BatchPolicy {
            max_batch_size: b.max_batch_size,
            max_batch_tokens: b.max_batch_tokens,
            max_delay: Duration::from_millis(b.max_queue_delay_ms),
        };
        let capacity = b.queue_capacity;
        let (batch_tx, batch_rx) = mpsc::channel::<Batch>(1);
        let (ready_tx, ready_rx) = oneshot::channel();
        let alive = Arc::new(AtomicBool::new(true));
        let thread_alive = alive.clone();
        let active = Arc::new(AtomicUsize::new(0));
        let active_w = active.clone();
        let observer = spec.observer.clone();
        std::thread::Builder::new()
            .name(format!("anya-worker-{}", spec.manifest.id))
            .spawn(move || worker::run(spec, policy, batch_rx, ready_tx, thread_alive, active_w))
            .map_err(|e| EngineError::Load(format!("cannot start worker thread: {e}")))?;
        let frontend: Arc<Frontend> = ready_rx
            .await
            .map_err(|_| EngineError::Load("the worker thread died while loading".into()))??;

        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let cancelled = Arc::new(AtomicUsize::new(0));
        tokio::spawn(batcher_task(
            policy,
            rx,
            batch_tx,
            queued.clone(),
            cancelled.clone(),
            observer,
        ));
        Ok(ModelHandle {
            inner: Arc::new(Inner {
                name,
                tx,
                queued,
                capacity,
                frontend,
                alive,
                cancelled,
                active,
                piece_items: (policy.max_batch_size / 4).max(1),
                remote: None,
            }),
        })
    }

    /// A handle on a remote model: at most `queue_capacity` requests in flight to its
    /// provider; no worker thread.
    pub fn remote(manifest: &Manifest, model: remote::RemoteModel) -> ModelHandle {
        let (tx, _rx) = mpsc::unbounded_channel();
        let frontend = Frontend {
            task: manifest.task,
            codec: None,
            chat_template: None,
            dimensions: None,
            eos_token_ids: Vec::new(),
            context_length: None,
            device: format!("remote ({})", model.spec().base_url),
            classes: None,
            weights: None,
        };
        ModelHandle {
            inner: Arc::new(Inner {
                name: format!("{}@{}", manifest.id, manifest.version),
                tx,
                queued: Arc::new(AtomicUsize::new(0)),
                capacity: manifest.batching.queue_capacity,
                frontend: Arc::new(frontend),
                alive: Arc::new(AtomicBool::new(true)),
                cancelled: Arc::new(AtomicUsize::new(0)),
                active: Arc::new(AtomicUsize::new(0)),
                piece_items: 1,
                remote: Some(Arc::new(model)),
            }),
        }
    }

    /// The provider of a remote model.
    pub fn remote_model(&self) -> Option<&Arc<remote::RemoteModel>> {
        self.inner.remote.as_ref()
    }

    /// A remote request: counted in flight (the queue bound) until its task ends.
    fn submit_remote(
        &self,
        model: &Arc<remote::RemoteModel>,
        work: Work,
        stream: bool,
        timeout: Duration,
    ) -> Result<EventStream, EngineError> {
        let inner = &self.inner;
        let Work::Remote(work) = work else {
            return Err(EngineError::Model(format!(
                "{} is a remote model: its work must be remote",
                inner.name
            )));
        };
        let prev = inner.queued.fetch_add(1, Ordering::AcqRel);
        if prev >= inner.capacity {
            inner.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(EngineError::Overloaded {
                model: inner.name.clone(),
                capacity: inner.capacity,
            });
        }
        struct InFlight(Arc<AtomicUsize>);
        impl Drop for InFlight {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let guard = InFlight(inner.queued.clone());
        let (tx, rx) = mpsc::channel(1024);
        let deadline = Instant::now() + timeout;
        let model = model.clone();
        tokio::spawn(async move {
            let _guard = guard;
            model.run(work, stream, deadline, tx).await;
        });
        Ok(EventStream::new(rx, inner.name.clone()))
    }

    pub fn frontend(&self) -> &Arc<Frontend> {
        &self.inner.frontend
    }

    /// Requests waiting for a batch.
    pub fn queue_len(&self) -> usize {
        self.inner.queued.load(Ordering::Relaxed)
    }

    /// Generation sequences holding a KV-cache slot now (0 for other tasks).
    pub fn active_sequences(&self) -> usize {
        self.inner.active.load(Ordering::Relaxed)
    }

    /// Requests dropped before compute because their client had gone.
    pub fn cancelled_count(&self) -> usize {
        self.inner.cancelled.load(Ordering::Relaxed)
    }

    /// Copies of this handle alive now: the registry's, plus one per request routed to it
    /// that has not finished (an unload waits for this to come down to its own copies).
    pub fn holders(&self) -> usize {
        Arc::strong_count(&self.inner)
    }

    pub fn is_alive(&self) -> bool {
        self.inner.alive.load(Ordering::Relaxed)
    }

    /// Queue `work` and wait for its answer, at most `timeout`. A full queue fails at once.
    /// Dropping the returned future (client gone) cancels the work if it has not started.
    ///
    /// A large embedding request is cut into pieces of a quarter batch that queue fairly with
    /// other requests (see `batcher`), so it cannot hold the model for long stretches while
    /// small requests wait; its answer is the pieces' outputs in order.
    pub async fn infer(&self, work: Work, timeout: Duration) -> Result<Completed, EngineError> {
        self.infer_lane(work, timeout, false).await
    }

    /// `infer` on the interactive lane or, with `background`, on the background lane: behind
    /// every interactive request, and never refused for a full queue (the caller bounds what
    /// it has in flight).
    pub async fn infer_lane(
        &self,
        work: Work,
        timeout: Duration,
        background: bool,
    ) -> Result<Completed, EngineError> {
        let inner = &self.inner;
        if let Some(model) = &inner.remote {
            let events = self.submit_remote(model, work, false, timeout)?;
            return match tokio::time::timeout(timeout, events.done()).await {
                Ok(r) => r,
                Err(_) => Err(EngineError::Timeout {
                    model: inner.name.clone(),
                    timeout_ms: timeout.as_millis(),
                }),
            };
        }
        if !self.is_alive() {
            return Err(EngineError::Stopped(inner.name.clone()));
        }
        if !background {
            let prev = inner.queued.fetch_add(1, Ordering::AcqRel);
            if prev >= inner.capacity {
                inner.queued.fetch_sub(1, Ordering::AcqRel);
                return Err(EngineError::Overloaded {
                    model: inner.name.clone(),
                    capacity: inner.capacity,
                });
            }
        }
        // Background work in pieces of a few inputs, so a batch of it can stay small while
        // interactive requests are about (see `batcher`).
        let piece_items = if background {
            batcher::BACKGROUND_BUSY_ITEMS.min(inner.piece_items).max(1)
        } else {
            inner.piece_items
        };
        let pieces = cut(work, piece_items);
        let count = pieces.len();
        let enqueued = Instant::now();
        let mut replies = Vec::with_capacity(count);
        for (piece, work) in pieces.into_iter().enumerate() {
            let (reply, rx) = Reply::channel(&work, false);
            let job = Job {
                work,
                enqueued,
                reply,
                piece,
                last: piece + 1 == count,
                background,
            };
            if inner.tx.send(job).is_err() {
                if piece == 0 && !background {
                    inner.queued.fetch_sub(1, Ordering::AcqRel);
                }
                return Err(EngineError::Stopped(inner.name.clone()));
            }
            replies.push(rx);
        }
        let answers = futures::future::join_all(
            replies
                .into_iter()
                .map(|rx| EventStream::new(rx, inner.name.clone()).done()),
        );
        match tokio::time::timeout(timeout, answers).await {
            Ok(parts) => join_parts(parts),
            Err(_) => Err(EngineError::Timeout {
                model: inner.name.clone(),
                timeout_ms: timeout.as_millis(),
            }),
        }
    }
}

impl ModelHandle {
    /// Queue `work` and return its event stream at once (a full queue fails at once). With
    /// `stream`, a generation sends its text deltas as they become final. Dropping the stream
    /// cancels the work.
    pub fn submit(&self, work: Work, stream: bool) -> Result<EventStream, EngineError> {
        self.submit_within(work, stream, Duration::from_secs(3600))
    }

    /// `submit`, with the deadline a remote call must keep (a local request's wait is bounded
    /// by its reader).
    pub fn submit_within(
        &self,
        work: Work,
        stream: bool,
        timeout: Duration,
    ) -> Result<EventStream, EngineError> {
        let inner = &self.inner;
        if let Some(model) = &inner.remote {
            return self.submit_remote(model, work, stream, timeout);
        }
        if !self.is_alive() {
            return Err(EngineError::Stopped(inner.name.clone()));
        }
        let prev = inner.queued.fetch_add(1, Ordering::AcqRel);
        if prev >= inner.capacity {
            inner.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(EngineError::Overloaded {
                model: inner.name.clone(),
                capacity: inner.capacity,
            });
        }
        let (reply, rx) = Reply::channel(&work, stream);
        let job = Job {
            work,
            enqueued: Instant::now(),
            reply,
            piece: 0,
            last: true,
            background: false,
        };
        if inner.tx.send(job).is_err() {
            inner.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(EngineError::Stopped(inner.name.clone()));
        }
        Ok(EventStream::new(rx, inner.name.clone()))
    }
}

/// Cut embedding work into pieces of at most `items` inputs; other work stays whole.
fn cut(work: Work, items: usize) -> Vec<Work> {
    match work {
        Work::Embed { inputs } if inputs.len() > items && items > 0 => {
            let mut pieces = Vec::with_capacity(inputs.len().div_ceil(items));
            let mut rest = inputs.into_iter();
            loop {
                let piece: Vec<Vec<u32>> = rest.by_ref().take(items).collect();
                if piece.is_empty() {
                    break;
                }
                pieces.push(Work::Embed { inputs: piece });
            }
            pieces
        }
        other => vec![other],
    }
}

/// One answer from the answers of a request's pieces, in order: outputs concatenated; queue
/// time is the first piece's wait, compute the span from then to the last piece's end.
fn join_parts(parts: Vec<Result<Completed, EngineError>>) -> Result<Completed, EngineError> {
    let mut parts = parts.into_iter().collect::<Result<Vec<_>, _>>()?;
    if parts.len() == 1 {
        if let Some(only) = parts.pop() {
            return Ok(only);
        }
    }
    let queue = parts
        .iter()
        .map(|p| p.stats.queue)
        .min()
        .unwrap_or_default();
    let end = parts
        .iter()
        .map(|p| p.stats.queue + p.stats.compute)
        .max()
        .unwrap_or_default();
    let mut stats = RunStats {
        queue,
        compute: end.saturating_sub(queue),
        ..RunStats::default()
    };
    let mut vectors = Vec::new();
    for p in parts {
        stats.batch_size = stats.batch_size.max(p.stats.batch_size);
        stats.tokens_processed += p.stats.tokens_processed;
        stats.tokens_generated += p.stats.tokens_generated;
        match p.output {
            Output::Vectors(v) => vectors.extend(v),
            other => {
                return Err(EngineError::Model(format!(
                    "a piece of an embedding request answered {other:?}"
                )))
            }
        }
    }
    Ok(Completed {
        output: Output::Vectors(vectors),
        stats,
    })
}

/// Gathers jobs into batches by the policy and hands them to the worker one at a time.
async fn batcher_task(
    policy: BatchPolicy,
    mut rx: mpsc::UnboundedReceiver<Job>,
    worker: mpsc::Sender<Batch>,
    queued: Arc<AtomicUsize>,
    cancelled: Arc<AtomicUsize>,
    observer: Option<BatchObserver>,
) {
    let mut queue = BatchQueue::new(policy);
    let mut open = true;
    loop {
        if queue.is_empty() {
            if !open {
                return;
            }
            match rx.recv().await {
                Some(job) => queue.push(job),
                None => return,
            }
        }
        while let Ok(job) = rx.try_recv() {
            queue.push(job);
        }
        let removed = queue.remove_cancelled();
        let gone = requests_in(&removed);
        if gone > 0 {
            queued.fetch_sub(gone, Ordering::AcqRel);
            cancelled.fetch_add(gone, Ordering::Relaxed);
            if let Some(o) = &observer {
                o(&BatchReport {
                    cancelled: gone,
                    ..Default::default()
                });
            }
        }
        match queue.poll(Instant::now()) {
            Next::Idle => continue,
            Next::WaitUntil(due) => {
                tokio::select! {
                    job = rx.recv(), if open => match job {
                        Some(job) => queue.push(job),
                        None => open = false,
                    },
                    _ = tokio::time::sleep_until(due.into()) => {}
                }
            }
            Next::Ready => {
                let jobs = queue.take_batch();
                queued.fetch_sub(requests_in(&jobs), Ordering::AcqRel);
                let (done, finished) = oneshot::channel();
                if worker.send(Batch { jobs, done }).await.is_err() {
                    return; // worker gone: dropping the jobs answers them `Stopped`
                }
                let _ = finished.await;
            }
        }
    }
}
