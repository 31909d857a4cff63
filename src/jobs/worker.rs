//! Fleet mode's worker: each replica takes chunks from the shared stream (new ones, and those a
//! dead replica left idle), computes them on the background lane, and settles them. See
//! `shared` for the keys and the protocol.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::shared::{Chunk, Shared};
use super::{count_results, JobError, JobRecord, Jobs, Status};
use crate::usage::now_unix;

/// How often undelivered webhooks of finished jobs are looked for (a replica that died while
/// delivering one leaves it to the next sweep once its lease ends).
const WEBHOOK_SWEEP: Duration = Duration::from_secs(60);

impl Jobs {
    /// Work the fleet's queue until shutdown.
    pub(super) async fn work(self: Arc<Self>, shared: Arc<Shared>) {
        let idle = Duration::from_millis(self.cfg.claim_idle_ms);
        let refresh = idle / 4;
        let slots = self.cfg.concurrency.max(1);
        let in_flight: Arc<Mutex<HashSet<String>>> = Arc::new(Mutex::new(HashSet::new()));
        let mut tasks: JoinSet<()> = JoinSet::new();
        let long_ago = Instant::now()
            .checked_sub(idle.max(WEBHOOK_SWEEP))
            .unwrap_or_else(Instant::now);
        let (mut last_claim, mut last_refresh, mut last_sweep) =
            (long_ago, Instant::now(), long_ago);
        let mut last_error: Option<Instant> = None;
        let mut grouped = false;
        tracing::info!(
            consumer = shared.consumer(),
            "joined the fleet's job workers"
        );
        while !self.stopping.load(Ordering::Relaxed) {
            while tasks.try_join_next().is_some() {}
            if last_refresh.elapsed() >= refresh {
                let entries: Vec<String> = in_flight
                    .lock()
                    .map(|s| s.iter().cloned().collect())
                    .unwrap_or_default();
                if let Err(e) = shared.touch(&entries).await {
                    tracing::warn!(error = %e, "cannot refresh the chunks in flight");
                }
                last_refresh = Instant::now();
            }
            if last_sweep.elapsed() >= WEBHOOK_SWEEP {
                last_sweep = Instant::now();
                let (me, sh) = (self.clone(), shared.clone());
                tokio::spawn(async move { me.sweep_webhooks(&sh, idle).await });
            }
            let free = slots.saturating_sub(tasks.len());
            if free == 0 {
                tokio::select! {
                    _ = tasks.join_next() => {}
                    _ = tokio::time::sleep(refresh) => {}
                }
                continue;
            }
            let got = async {
                if !grouped {
                    shared.ensure_group().await?;
                    grouped = true;
                }
                let mut got = Vec::new();
                if last_claim.elapsed() >= idle / 2 {
                    last_claim = Instant::now();
                    got = shared.claim_stale(free, idle.as_millis() as u64).await?;
                    for c in &got {
                        tracing::info!(job = %c.job, from = c.from, to = c.to, "claimed a chunk another replica left idle");
                        self.core.metrics.job_chunk("claimed");
                    }
                }
                if got.is_empty() {
                    got = shared.read(free).await?;
                }
                Ok::<Vec<Chunk>, JobError>(got)
            }
            .await;
            let chunks = match got {
                Ok(c) => c,
                Err(e) => {
                    if last_error.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        tracing::warn!(error = %e, "the jobs' Redis did not answer; retrying");
                        last_error = Some(Instant::now());
                    }
                    grouped = false;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            for c in chunks {
                if let Ok(mut s) = in_flight.lock() {
                    s.insert(c.entry.clone());
                }
                let (me, sh, flight) = (self.clone(), shared.clone(), in_flight.clone());
                tasks.spawn(async move {
                    let entry = c.entry.clone();
                    if let Err(e) = me.settle(&sh, c).await {
                        // Left pending: claimed again once idle (here or elsewhere).
                        tracing::warn!(error = %e, "a job chunk failed; it will be retried");
                    }
                    if let Ok(mut s) = flight.lock() {
                        s.remove(&entry);
                    }
                });
            }
        }
        // Shutdown: chunks in flight finish (or, if the process ends first, stay pending and
        // are claimed by another replica).
        while tasks.join_next().await.is_some() {}
    }

    /// Compute one chunk (unless its job is cancelled or it is settled already), store its
    /// results, acknowledge it, and end the job if it was the last.
    async fn settle(self: &Arc<Self>, shared: &Shared, c: Chunk) -> Result<(), JobError> {
        let Some(job) = shared.job(&c.job).await? else {
            return shared.ack(&c.entry).await;
        };
        if job.status.is_final() {
            return shared.ack(&c.entry).await;
        }
        let results =
            if job.status == Status::Cancelling || shared.is_settled(&c.job, c.from).await? {
                self.core.metrics.job_chunk("skipped");
                Vec::new()
            } else {
                let job = if job.status == Status::Queued {
                    shared
                        .update_job(&c.job, &|j: &mut JobRecord| {
                            if j.status == Status::Queued {
                                j.status = Status::Running;
                                j.started_at = Some(now_unix());
                            }
                        })
                        .await?
                        .1
                } else {
                    job
                };
                let exec = self
                    .executor(job.kind)
                    .ok_or_else(|| JobError::Store("no executor for this kind of job".into()))?;
                let inputs = shared.inputs(&c.job, c.from, c.to).await?;
                let results = exec.run(&job, inputs).await;
                count_results(&self.core.metrics, &results);
                self.core.metrics.job_chunk("computed");
                results
            };
        let (settled, chunks) = shared.put_results(&c.job, c.from, &results).await?;
        shared.ack(&c.entry).await?;
        if settled >= chunks {
            self.finish_shared(shared, &c.job).await?;
        }
        Ok(())
    }

    /// Deliver the webhooks of finished jobs still pending (their replica died meanwhile).
    async fn sweep_webhooks(self: &Arc<Self>, shared: &Shared, idle: Duration) {
        if let Err(e) = shared
            .forget_idle_consumers((idle * 20).as_millis() as u64)
            .await
        {
            tracing::debug!(error = %e, "cannot tidy the consumer group");
        }
        let jobs = match shared.jobs().await {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the shared jobs");
                return;
            }
        };
        for j in jobs {
            if !j.status.is_final() {
                // Its last chunk was settled by a replica that died before ending it.
                if let Ok((settled, chunks)) = shared.progress(&j.id).await {
                    if chunks > 0 && settled >= chunks {
                        if let Err(e) = self.finish_shared(shared, &j.id).await {
                            tracing::warn!(job = %j.id, error = %e, "cannot end a settled job");
                        }
                    }
                }
                continue;
            }
            if j.status.is_final() && j.webhook.as_ref().is_some_and(|w| w.state == "pending") {
                let me = self.clone();
                tokio::spawn(async move { me.notify(j).await });
            }
        }
    }
}
