//! Batch jobs: many inputs answered in the background, stored as they finish, resumed after a
//! restart. One runner serves both protocols: a native job (`/jobs`, inputs of one model) and an
//! OpenAI batch (`/v1/batches`, lines each holding a `/v1` request); what differs is the
//! `Executor` that turns stored inputs into result lines. Native inputs run through the serving
//! core here; OpenAI lines through the executor the OpenAI adapter provides (given at `open`).
//! Every inference a job makes holds a background ticket (`serving::Gate::background`), so its
//! tokens and cost reach `/usage`, the per-model windows and the metrics like any request's.
//!
//! A job is validated whole before it is stored (nothing is stored for a bad input), then runs
//! in chunks on the engine's background lane (behind interactive requests, never refused for a
//! full queue). Each chunk's results are committed (fsync) together with the job's counts; at
//! start every job still `queued` or `running` resumes from the indices without a result, so no
//! input is lost and none appears twice. On completion, failure or cancellation a signed
//! webhook goes out (see `webhook`).

mod native;
mod record;
pub mod shared;
pub mod store;
pub mod webhook;
mod worker;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;

use crate::auth::Principal;
use crate::config::JobsSection;
use crate::error::{ApiError, ErrorKind};
use crate::serving::Core;
use crate::usage::now_unix;
use shared::Shared;
use store::{Store, StoredResult};

pub use native::validate_native;
pub use record::{Attempt, FileRecord, JobKind, JobRecord, NewJob, Status, WebhookState};

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("job store: {0}")]
    Store(String),
    #[error("no job or file `{0}`")]
    NotFound(String),
    #[error("the job store task failed: {0}")]
    Task(String),
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        match e {
            JobError::NotFound(id) => {
                ApiError::new(ErrorKind::NotFound, format!("no job or file `{id}`"))
            }
            other => ApiError::internal(other),
        }
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Turns a chunk of a job's stored inputs into result lines, one per input, in order. It
/// waits (never fails an input) while the model is busy or over a budget.
pub trait Executor: Send + Sync {
    fn run<'a>(
        &'a self,
        job: &'a JobRecord,
        inputs: Vec<(u64, Vec<u8>)>,
    ) -> BoxFuture<'a, Vec<StoredResult>>;

    /// Inputs per call.
    fn chunk(&self, cfg: &JobsSection) -> usize;
}

/// Run blocking store work on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, JobError> + Send + 'static,
) -> Result<T, JobError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| JobError::Task(e.to_string()))?
}

/// A change to a job's record (may run more than once: a shared store retries it when another
/// replica changed the record meanwhile).
type Change = Arc<dyn Fn(&mut JobRecord) + Send + Sync>;

/// Where jobs are kept: this replica's embedded store, or a Redis shared by the fleet.
#[derive(Clone)]
enum Backend {
    Local(Arc<Store>),
    Shared(Arc<Shared>),
}

impl Backend {
    async fn job(&self, id: &str) -> Result<Option<JobRecord>, JobError> {
        match self {
            Backend::Local(store) => {
                let (store, key) = (store.clone(), id.to_string());
                blocking(move || store.job(&key)).await
            }
            Backend::Shared(shared) => shared.job(id).await,
        }
    }

    async fn jobs(&self) -> Result<Vec<JobRecord>, JobError> {
        match self {
            Backend::Local(store) => {
                let store = store.clone();
                blocking(move || store.jobs()).await
            }
            Backend::Shared(shared) => shared.jobs().await,
        }
    }

    async fn update_job(&self, id: &str, change: Change) -> Result<JobRecord, JobError> {
        match self {
            Backend::Local(store) => {
                let (store, key) = (store.clone(), id.to_string());
                blocking(move || store.update_job(&key, |j| change(j))).await
            }
            Backend::Shared(shared) => Ok(shared.update_job(id, &*change).await?.1),
        }
    }

    async fn results(
        &self,
        id: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<StoredResult>, JobError> {
        match self {
            Backend::Local(store) => {
                let (store, key) = (store.clone(), id.to_string());
                blocking(move || store.results(&key, from, limit)).await
            }
            Backend::Shared(shared) => shared.results(id, from, limit).await,
        }
    }

    async fn put_file(&self, file: FileRecord, data: std::fs::File) -> Result<(), JobError> {
        match self {
            Backend::Local(store) => {
                let store = store.clone();
                blocking(move || store.put_file(&file, data)).await
            }
            Backend::Shared(shared) => shared.put_file(&file, data).await,
        }
    }

    async fn file(&self, id: &str) -> Result<Option<FileRecord>, JobError> {
        match self {
            Backend::Local(store) => {
                let (store, key) = (store.clone(), id.to_string());
                blocking(move || store.file(&key)).await
            }
            Backend::Shared(shared) => shared.file(id).await,
        }
    }

    async fn files(&self) -> Result<Vec<FileRecord>, JobError> {
        match self {
            Backend::Local(store) => {
                let store = store.clone();
                blocking(move || store.files()).await
            }
            Backend::Shared(shared) => shared.files().await,
        }
    }

    async fn file_chunk(&self, id: &str, n: u64) -> Result<Option<Vec<u8>>, JobError> {
        match self {
            Backend::Local(store) => {
                let (store, key) = (store.clone(), id.to_string());
                blocking(move || store.file_chunk(&key, n)).await
            }
            Backend::Shared(shared) => shared.file_chunk(id, n).await,
        }
    }
}

/// The jobs of this replica.
pub struct Jobs {
    store: Backend,
    cfg: JobsSection,
    core: Arc<Core>,
    native: Arc<native::NativeExecutor>,
    openai: Arc<dyn Executor>,
    /// Cancellation flags of the jobs running here.
    running: Mutex<HashMap<String, Arc<AtomicBool>>>,
    hooks: webhook::Hooks,
    /// Set at shutdown: runners stop between chunks and leave their jobs to the next start.
    stopping: AtomicBool,
}

impl Jobs {
    /// Open the store; `openai` runs OpenAI batch lines (the OpenAI adapter's mapping).
    pub fn open(
        cfg: &JobsSection,
        core: Arc<Core>,
        openai: Arc<dyn Executor>,
    ) -> Result<Arc<Self>, JobError> {
        let store = match &cfg.redis_url {
            Some(url) => {
                let shared = Shared::connect(url, &cfg.redis_prefix)?;
                tracing::info!(
                    consumer = shared.consumer(),
                    "jobs are shared by the fleet through Redis (jobs.redis_url)"
                );
                Backend::Shared(Arc::new(shared))
            }
            None => {
                if cfg.dir.is_none() {
                    tracing::info!(
                        "jobs are kept in memory (set jobs.dir to keep them across restarts)"
                    );
                }
                Backend::Local(Arc::new(Store::open(cfg.dir.as_deref())?))
            }
        };
        let hooks = webhook::Hooks::new(cfg).map_err(JobError::Store)?;
        Ok(Arc::new(Self {
            store,
            cfg: cfg.clone(),
            native: Arc::new(native::NativeExecutor::new(core.clone())),
            core,
            openai,
            running: Mutex::new(HashMap::new()),
            hooks,
            stopping: AtomicBool::new(false),
        }))
    }

    pub fn config(&self) -> &JobsSection {
        &self.cfg
    }

    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    pub fn hooks(&self) -> &webhook::Hooks {
        &self.hooks
    }

    fn executor(&self, kind: JobKind) -> Option<Arc<dyn Executor>> {
        match kind {
            JobKind::Native => Some(self.native.clone() as Arc<dyn Executor>),
            JobKind::Openai => Some(self.openai.clone()),
        }
    }

    /// Store a validated job and start it. Refuses a principal over its quota (429).
    pub async fn submit(
        self: &Arc<Self>,
        owner: &Principal,
        new: NewJob,
    ) -> Result<JobRecord, ApiError> {
        if new.inputs.is_empty() {
            return Err(ApiError::invalid("inputs", "must not be empty"));
        }
        if new.inputs.len() > self.cfg.max_inputs {
            return Err(ApiError::too_large(
                "inputs",
                format!(
                    "{} inputs; a job holds at most {} (jobs.max_inputs)",
                    new.inputs.len(),
                    self.cfg.max_inputs
                ),
            ));
        }
        if let Some(url) = &new.webhook {
            self.hooks
                .check_url_resolved(url)
                .await
                .map_err(|issue| ApiError::invalid("webhook", issue))?;
        }
        let active = self
            .store
            .jobs()
            .await?
            .iter()
            .filter(|j| j.owner.sub == owner.sub && !j.status.is_final())
            .count();
        if active >= self.cfg.max_active_per_principal {
            let mut e = ApiError::new(
                ErrorKind::RateLimited,
                format!(
                    "{active} jobs of this principal are queued or running; at most {} (jobs.max_active_per_principal)",
                    self.cfg.max_active_per_principal
                ),
            );
            e.retry_after_s = Some(10);
            return Err(e);
        }
        let kind = new.kind.unwrap_or(JobKind::Native);
        let prefix = match kind {
            JobKind::Native => "job_",
            JobKind::Openai => "batch_",
        };
        let record = JobRecord {
            id: format!("{prefix}{}", uuid::Uuid::new_v4().simple()),
            kind,
            owner: owner.clone(),
            model: new.model,
            version: new.version,
            parameters: new.parameters,
            endpoint: new.endpoint,
            input_file_id: new.input_file_id,
            output_file_id: None,
            error_file_id: None,
            completion_window: new.completion_window,
            metadata: new.metadata,
            status: Status::Queued,
            total: new.inputs.len() as u64,
            completed: 0,
            failed: 0,
            created_at: now_unix(),
            started_at: None,
            finished_at: None,
            cancelling_at: None,
            error: None,
            webhook: new.webhook.map(|url| WebhookState {
                url,
                state: "pending".into(),
                message_id: None,
                attempts: Vec::new(),
            }),
        };
        match &self.store {
            Backend::Local(store) => {
                let (store, stored, inputs) = (store.clone(), record.clone(), new.inputs);
                blocking(move || store.create_job(&stored, &inputs)).await?;
                self.spawn(record.id.clone());
            }
            Backend::Shared(shared) => {
                let chunk = self
                    .executor(kind)
                    .map_or(self.cfg.chunk, |e| e.chunk(&self.cfg));
                shared.create_job(&record, &new.inputs, chunk).await?;
            }
        }
        Ok(record)
    }

    /// A job `who` may see (404 otherwise: ids of others' jobs are not confirmed).
    pub async fn get(&self, who: &Principal, id: &str) -> Result<JobRecord, ApiError> {
        match self.store.job(id).await? {
            Some(j) if j.visible_to(who) => Ok(j),
            _ => Err(ApiError::new(ErrorKind::NotFound, format!("no job `{id}`"))),
        }
    }

    /// The jobs `who` may see, newest first.
    pub async fn list(&self, who: &Principal, kind: JobKind) -> Result<Vec<JobRecord>, ApiError> {
        let mut jobs = self.store.jobs().await?;
        jobs.retain(|j| j.kind == kind && j.visible_to(who));
        jobs.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        Ok(jobs)
    }

    /// Ask a job to stop: chunks in flight finish and are kept; the rest is not computed.
    pub async fn cancel(
        self: &Arc<Self>,
        who: &Principal,
        id: &str,
    ) -> Result<JobRecord, ApiError> {
        let job = self.get(who, id).await?;
        if job.status.is_final() {
            return Ok(job);
        }
        let record = self
            .store
            .update_job(
                id,
                Arc::new(|j: &mut JobRecord| {
                    if !j.status.is_final() {
                        j.status = Status::Cancelling;
                        j.cancelling_at = Some(now_unix());
                    }
                }),
            )
            .await?;
        if let Backend::Shared(shared) = &self.store {
            // The replicas skip its chunks still queued; if none is left, it ends here.
            let (settled, chunks) = shared.progress(id).await?;
            if settled >= chunks {
                return Ok(self.finish_shared(shared, id).await?.unwrap_or(record));
            }
            return Ok(record);
        }
        let flag = self.running.lock().ok().and_then(|m| m.get(id).cloned());
        match flag {
            Some(f) => f.store(true, Ordering::Relaxed),
            // Not running here (queued behind a restart): it ends now.
            None => {
                self.spawn(id.to_string());
            }
        }
        Ok(record)
    }

    /// Stored results of `job` from index `from` (`ok`: only successes or only errors).
    pub async fn results(
        &self,
        job: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<StoredResult>, JobError> {
        self.store.results(job, from, limit).await
    }

    /// Every result line of `job` in input order (`ok`: only successes, or only errors), as a
    /// stream of newline-terminated lines read from the store in pages.
    pub fn result_lines(
        self: &Arc<Self>,
        job: String,
        ok: Option<bool>,
    ) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
        let me = self.clone();
        futures::stream::unfold(Some(0u64), move |from| {
            let (me, job) = (me.clone(), job.clone());
            async move {
                let from = from?;
                match me.results(&job, from, 512).await {
                    Ok(page) if page.is_empty() => None,
                    Ok(page) => {
                        let next = page.last().map(|r| r.index + 1);
                        let mut out = Vec::new();
                        for r in page.into_iter().filter(|r| ok.is_none_or(|ok| r.ok == ok)) {
                            out.extend_from_slice(&r.line);
                            out.push(b'\n');
                        }
                        Some((Ok(out), next))
                    }
                    Err(e) => Some((Err(std::io::Error::other(e.to_string())), None)),
                }
            }
        })
    }

    /// Store an uploaded file, its bytes read from `data` (a spooled upload, at its start)
    /// a chunk at a time.
    pub async fn put_file(&self, file: FileRecord, data: std::fs::File) -> Result<(), JobError> {
        self.store.put_file(file, data).await
    }

    pub async fn file(&self, id: &str) -> Result<Option<FileRecord>, JobError> {
        self.store.file(id).await
    }

    pub async fn files(&self) -> Result<Vec<FileRecord>, JobError> {
        self.store.files().await
    }

    /// Bytes of an uploaded file, chunk by chunk.
    pub async fn file_chunk(&self, id: &str, n: u64) -> Result<Option<Vec<u8>>, JobError> {
        self.store.file_chunk(id, n).await
    }

    /// At start: resume every unfinished job and every webhook not yet delivered. In fleet
    /// mode: join the fleet's workers instead (they take queued chunks, and claim those a dead
    /// replica left), and look after undelivered webhooks.
    pub async fn resume(self: &Arc<Self>) {
        if let Backend::Shared(shared) = &self.store {
            let (me, shared) = (self.clone(), shared.clone());
            tokio::spawn(me.work(shared));
            return;
        }
        let jobs = match self.store.jobs().await {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the stored jobs");
                return;
            }
        };
        for j in jobs {
            if !j.status.is_final() {
                tracing::info!(job = %j.id, done = j.completed + j.failed, total = j.total, "resuming job");
                self.spawn(j.id);
            } else if j.webhook.as_ref().is_some_and(|w| w.state == "pending") {
                let me = self.clone();
                tokio::spawn(async move { me.notify(j).await });
            }
        }
    }

    /// Stop the runners between chunks (shutdown); their jobs resume at the next start.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        if let Ok(m) = self.running.lock() {
            for f in m.values() {
                f.store(true, Ordering::Relaxed);
            }
        }
    }

    fn spawn(self: &Arc<Self>, id: String) {
        let flag = Arc::new(AtomicBool::new(false));
        if let Ok(mut m) = self.running.lock() {
            if m.contains_key(&id) {
                return;
            }
            m.insert(id.clone(), flag.clone());
        }
        let me = self.clone();
        tokio::spawn(async move {
            let outcome = me.run(&id, &flag).await;
            if let Ok(mut m) = me.running.lock() {
                m.remove(&id);
            }
            match outcome {
                Ok(Some(job)) => me.notify(job).await,
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(job = %id, error = %e, "job failed");
                    let msg = e.to_string();
                    let failed = me
                        .store
                        .update_job(
                            &id,
                            Arc::new(move |j: &mut JobRecord| {
                                j.status = Status::Failed;
                                j.error = Some(msg.clone());
                                j.finished_at = Some(now_unix());
                            }),
                        )
                        .await;
                    if let Ok(job) = failed {
                        me.notify(job).await;
                    }
                }
            }
        });
    }

    /// Run job `id` to its end. `Ok(Some(job))`: it ended (completed or cancelled);
    /// `Ok(None)`: stopped for shutdown, left to resume.
    async fn run(&self, id: &str, cancel: &AtomicBool) -> Result<Option<JobRecord>, JobError> {
        let Backend::Local(store) = &self.store else {
            return Err(JobError::Store(
                "a shared job runs on the fleet's workers".into(),
            ));
        };
        let (st, key) = (store.clone(), id.to_string());
        let job = blocking(move || {
            st.update_job(&key, |j| {
                if j.status == Status::Queued {
                    j.status = Status::Running;
                    j.started_at = Some(now_unix());
                }
            })
        })
        .await?;
        if job.status.is_final() {
            return Ok(None);
        }
        let cancelled = job.status == Status::Cancelling;
        let Some(exec) = self.executor(job.kind) else {
            return Err(JobError::Store(
                "no executor for this kind of job".to_string(),
            ));
        };
        if !cancelled {
            let (st, key, total) = (store.clone(), id.to_string(), job.total);
            let missing = blocking(move || st.missing(&key, total)).await?;
            let chunk = exec.chunk(&self.cfg).max(1);
            let chunks: Vec<Vec<u64>> = missing.chunks(chunk).map(<[u64]>::to_vec).collect();
            let job = &job;
            let exec = &exec;
            let metrics = &self.core.metrics;
            let mut runs = futures::stream::iter(chunks)
                .map(|indices| async move {
                    if cancel.load(Ordering::Relaxed) {
                        return Ok(false);
                    }
                    let (st, key) = (store.clone(), id.to_string());
                    let inputs = blocking(move || st.inputs(&key, &indices)).await?;
                    let results = exec.run(job, inputs).await;
                    count_results(metrics, &results);
                    let (st, key) = (store.clone(), id.to_string());
                    blocking(move || st.put_results(&key, &results)).await?;
                    metrics.job_chunk("computed");
                    Ok::<bool, JobError>(true)
                })
                .buffer_unordered(self.cfg.concurrency.max(1));
            while let Some(r) = runs.next().await {
                r?;
            }
        }
        if self.stopping.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let (st, key) = (store.clone(), id.to_string());
        let finished = blocking(move || {
            st.update_job(&key, |j| {
                j.status = if j.status == Status::Cancelling {
                    Status::Cancelled
                } else {
                    Status::Completed
                };
                j.finished_at = Some(now_unix());
            })
        })
        .await?;
        Ok(Some(finished))
    }

    /// Fleet mode: end job `id` if no other replica did (its last chunk is settled, or it was
    /// cancelled with none in flight); the replica that ends it sends its webhook. Answers the
    /// ended record when this call ended it.
    async fn finish_shared(
        self: &Arc<Self>,
        shared: &Shared,
        id: &str,
    ) -> Result<Option<JobRecord>, JobError> {
        let (before, after) = shared
            .update_job(id, &|j: &mut JobRecord| {
                if !j.status.is_final() {
                    j.status = if j.status == Status::Cancelling {
                        Status::Cancelled
                    } else {
                        Status::Completed
                    };
                    j.started_at.get_or_insert_with(now_unix);
                    j.finished_at = Some(now_unix());
                }
            })
            .await?;
        if before.status.is_final() || !after.status.is_final() {
            return Ok(None);
        }
        tracing::info!(job = %id, status = ?after.status, completed = after.completed, failed = after.failed, "job finished");
        let me = self.clone();
        let job = after.clone();
        tokio::spawn(async move { me.notify(job).await });
        Ok(Some(after))
    }

    /// Send a finished job's webhook (if it has one), recording each attempt on the job. In
    /// fleet mode one replica at a time holds the delivery (a lease outliving every retry).
    async fn notify(self: &Arc<Self>, job: JobRecord) {
        let Some(hook) = job.webhook.clone().filter(|w| w.state == "pending") else {
            return;
        };
        if let Backend::Shared(shared) = &self.store {
            let schedule: u64 = self.cfg.webhook_retry_delays_ms.iter().sum::<u64>()
                + (self.cfg.webhook_retry_delays_ms.len() as u64 + 1) * self.cfg.webhook_timeout_ms;
            let lease = std::time::Duration::from_millis(schedule + 60_000);
            match shared.lease_webhook(&job.id, lease).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(job = %job.id, error = %e, "cannot take the webhook lease; a later sweep retries");
                    return;
                }
            }
        }
        let message_id = hook
            .message_id
            .clone()
            .unwrap_or_else(|| format!("msg_{}", uuid::Uuid::new_v4().simple()));
        let event_type = match job.status {
            Status::Completed => "job.completed",
            Status::Cancelled => "job.cancelled",
            _ => "job.failed",
        };
        let data = serde_json::json!({
            "id": job.id,
            "status": job.status,
            "counts": {"total": job.total, "completed": job.completed, "failed": job.failed},
        });
        let me = self.clone();
        let (id, mid) = (job.id.clone(), message_id.clone());
        // `attempt`: (n, what happened), n counting all attempts at this event from 0.
        let record = move |attempt: Option<(usize, Attempt)>, state: Option<&'static str>| {
            let (store, key, mid) = (me.store.clone(), id.clone(), mid.clone());
            async move {
                let change: Change = Arc::new(move |j: &mut JobRecord| {
                    if let Some(w) = j.webhook.as_mut() {
                        w.message_id = Some(mid.clone());
                        // Attempt n is added once: a change can be applied more than once (a
                        // store retrying it), and two attempts can be equal in every field
                        // (same second, same status, same duration), so the count decides
                        // (fewer than n recorded: an earlier record was lost; add this one).
                        if let Some((n, a)) = &attempt {
                            if w.attempts.len() <= *n {
                                w.attempts.push(a.clone());
                            }
                        }
                        if let Some(s) = state {
                            w.state = s.to_string();
                        }
                    }
                });
                let _ = store.update_job(&key, change).await;
            }
        };
        record(None, None).await;
        let delivered = self
            .hooks
            .deliver(
                &hook.url,
                &message_id,
                event_type,
                data,
                hook.attempts.len(),
                |n, a| record(Some((n, a)), None),
            )
            .await;
        record(None, Some(if delivered { "delivered" } else { "failed" })).await;
        if let Backend::Shared(shared) = &self.store {
            let _ = shared.release_webhook(&job.id).await;
        }
    }
}

/// Count a chunk's computed inputs by result.
fn count_results(metrics: &crate::metrics::Metrics, results: &[StoredResult]) {
    let ok = results.iter().filter(|r| r.ok).count() as u64;
    metrics.job_inputs("ok", ok);
    metrics.job_inputs("error", results.len() as u64 - ok);
}
