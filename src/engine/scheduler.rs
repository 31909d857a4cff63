//! Continuous batching for text generation, on the worker thread.
//!
//! Every sequence (one per prompt of a request) holds a KV-cache slot of the model from
//! admission to its end. Each step runs, as one batch, one token of every decoding sequence plus
//! prompt chunks of newly admitted ones within the step's token budget, so a long prompt is
//! prefilled over several steps while the others keep decoding. New sequences join at the next
//! step; finished and cancelled ones leave at once and free their slot. A request is answered
//! when all of its sequences have ended.
//!
//! The worker takes a new batch from the batcher only when nothing waits for a slot, so the
//! queue in front (and its 503 when full) still bounds what the engine holds.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{
    Batch, BatchObserver, BatchReport, Completed, EngineError, Job, Output, RunStats, Work,
};
use crate::models::generate::{Next, Sequence};
use crate::models::{CausalLm, Chunk, FinishReason, Frontend, GenParams, Generation, ModelError};

/// A request being served.
struct Request {
    job: Job,
    prompts: Vec<Vec<u32>>,
    params: GenParams,
    results: Vec<Option<Generation>>,
    open: usize,
    admitted: Option<Instant>,
    peak: usize,
}

/// A sequence holding a slot.
struct Running {
    request: u64,
    index: usize,
    slot: usize,
    /// Prompt tokens already in the cache.
    fed: usize,
    seq: Sequence,
    /// The token to run next once the prompt is in.
    next: Option<u32>,
}

pub(super) struct Scheduler<'a> {
    lm: &'a mut dyn CausalLm,
    frontend: &'a Frontend,
    observer: Option<&'a BatchObserver>,
    /// Tokens per step (decode tokens plus prompt chunks).
    step_tokens: usize,
    requests: HashMap<u64, Request>,
    next_id: u64,
    waiting: VecDeque<(u64, usize)>,
    running: Vec<Running>,
    free: Vec<usize>,
}

impl<'a> Scheduler<'a> {
    pub(super) fn new(
        lm: &'a mut dyn CausalLm,
        frontend: &'a Frontend,
        observer: Option<&'a BatchObserver>,
        step_tokens: usize,
    ) -> Self {
        let slots = lm.max_sequences().max(1);
        Scheduler {
            lm,
            frontend,
            observer,
            step_tokens: step_tokens.max(1),
            requests: HashMap::new(),
            next_id: 0,
            waiting: VecDeque::new(),
            running: Vec::new(),
            free: (0..slots).rev().collect(),
        }
    }

    /// Serve until the batcher goes away and every sequence has ended.
    pub(super) fn run(mut self, batches: &mut mpsc::Receiver<Batch>) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                match batches.blocking_recv() {
                    Some(b) => self.intake(b),
                    None => return,
                }
            }
            // Only take more when nothing waits for a slot: the queue in front stays the bound.
            while self.waiting.is_empty() {
                match batches.try_recv() {
                    Ok(b) => self.intake(b),
                    Err(_) => break,
                }
            }
            self.admit();
            let cancelled = self.drop_cancelled();
            if self.running.is_empty() {
                if cancelled > 0 {
                    self.report(0, Duration::ZERO, cancelled);
                }
                continue;
            }
            self.step(cancelled);
        }
    }

    fn intake(&mut self, batch: Batch) {
        let Batch { jobs, done } = batch;
        // The batcher may form the next batch now; it waits in the channel until we take it.
        let _ = done.send(());
        for job in jobs {
            let Work::Generate { prompts, params } = &job.work else {
                let _ = job
                    .reply
                    .send(Err(EngineError::Model("wrong work for a generator".into())));
                continue;
            };
            if prompts.iter().any(Vec::is_empty) {
                let _ = job
                    .reply
                    .send(Err(EngineError::Model("empty prompt".into())));
                continue;
            }
            let (prompts, params) = (prompts.clone(), params.clone());
            let id = self.next_id;
            self.next_id += 1;
            let n = prompts.len();
            self.waiting.extend((0..n).map(|i| (id, i)));
            self.requests.insert(
                id,
                Request {
                    job,
                    prompts,
                    params,
                    results: vec![None; n],
                    open: n,
                    admitted: None,
                    peak: 0,
                },
            );
            if n == 0 {
                self.answer(id);
            }
        }
    }

    fn admit(&mut self) {
        let context = self.lm.context_length();
        while !self.waiting.is_empty() && !self.free.is_empty() {
            let Some((id, index)) = self.waiting.pop_front() else {
                break;
            };
            let Some(req) = self.requests.get_mut(&id) else {
                continue;
            };
            let now = Instant::now();
            req.admitted.get_or_insert(now);
            let seq = Sequence::new(req.prompts[index].len(), &req.params, context);
            if seq.is_empty_budget() {
                self.end(id, index, seq, FinishReason::Length);
                continue;
            }
            let Some(slot) = self.free.pop() else { break };
            self.running.push(Running {
                request: id,
                index,
                slot,
                fed: 0,
                seq,
                next: None,
            });
        }
        let running = self.running.len();
        for r in &self.running {
            if let Some(req) = self.requests.get_mut(&r.request) {
                req.peak = req.peak.max(running);
            }
        }
    }

    /// End the sequences whose client has gone; how many requests that dropped.
    fn drop_cancelled(&mut self) -> usize {
        let gone: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, r)| r.job.reply.is_closed())
            .map(|(&id, _)| id)
            .collect();
        for &id in &gone {
            self.waiting.retain(|(w, _)| *w != id);
            let mut i = 0;
            while i < self.running.len() {
                if self.running[i].request == id {
                    let r = self.running.swap_remove(i);
                    self.release(r.slot);
                } else {
                    i += 1;
                }
            }
            self.requests.remove(&id);
        }
        gone.len()
    }

    fn release(&mut self, slot: usize) {
        self.lm.release(slot);
        self.free.push(slot);
    }

    /// One batched forward pass over every running sequence, then the next tokens.
    fn step(&mut self, cancelled: usize) {
        // Decode tokens first (one per sequence), then prompt chunks within what is left.
        let mut plan: Vec<(usize, usize, usize, bool)> = Vec::new(); // (running idx, from, len, logits)
        let mut budget = self.step_tokens;
        for (i, r) in self.running.iter().enumerate() {
            if r.next.is_some() {
                plan.push((i, 0, 1, true));
                budget = budget.saturating_sub(1);
            }
        }
        let mut prefill_budget = budget.max(16.min(self.step_tokens));
        for (i, r) in self.running.iter().enumerate() {
            if r.next.is_none() && prefill_budget > 0 {
                let prompt = &self.requests[&r.request].prompts[r.index];
                let len = (prompt.len() - r.fed).min(prefill_budget);
                prefill_budget -= len;
                plan.push((i, r.fed, len, r.fed + len == prompt.len()));
            }
        }
        let tokens: Vec<Vec<u32>> = plan
            .iter()
            .map(|&(i, from, len, _)| {
                let r = &self.running[i];
                match r.next {
                    Some(t) => vec![t],
                    None => self.requests[&r.request].prompts[r.index][from..from + len].to_vec(),
                }
            })
            .collect();
        let chunks: Vec<Chunk> = plan
            .iter()
            .zip(&tokens)
            .map(|(&(i, from, _, logits), toks)| {
                let r = &self.running[i];
                Chunk {
                    slot: r.slot,
                    start: if r.next.is_some() {
                        r.seq.position()
                    } else {
                        from
                    },
                    tokens: toks,
                    logits,
                }
            })
            .collect();
        let started = Instant::now();
        let lm = &mut *self.lm;
        let result = catch_unwind(AssertUnwindSafe(|| lm.step(&chunks)))
            .unwrap_or_else(|_| Err(ModelError::Inference("the forward pass panicked".into())));
        let elapsed = started.elapsed();
        self.report(chunks.len(), elapsed, cancelled);
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "generation step failed");
                let ids: Vec<u64> = plan
                    .iter()
                    .map(|&(i, ..)| self.running[i].request)
                    .collect();
                self.fail(&ids, &e.to_string());
                return;
            }
        };
        let codec = match self.frontend.codec.as_ref() {
            Some(c) => c,
            None => {
                let ids: Vec<u64> = self.requests.keys().copied().collect();
                self.fail(&ids, "model has no tokenizer");
                return;
            }
        };
        let eos = &self.frontend.eos_token_ids;
        let mut logits = logits.into_iter();
        let mut ended: Vec<(usize, FinishReason)> = Vec::new();
        for &(i, _, len, wants) in &plan {
            let r = &mut self.running[i];
            if r.next.is_none() {
                r.fed += len;
            }
            if !wants {
                continue;
            }
            let Some(l) = logits.next() else {
                ended.push((i, FinishReason::Length));
                continue;
            };
            match r.seq.accept(&l, codec, eos) {
                Ok(Next::Feed(t)) => r.next = Some(t),
                Ok(Next::Done(reason)) => ended.push((i, reason)),
                Err(e) => {
                    tracing::error!(error = %e, "decoding failed");
                    ended.push((i, FinishReason::Length));
                }
            }
        }
        // Remove from the back so indices stay valid.
        ended.sort_by_key(|e| std::cmp::Reverse(e.0));
        for (i, reason) in ended {
            let r = self.running.swap_remove(i);
            self.release(r.slot);
            self.end(r.request, r.index, r.seq, reason);
        }
    }

    fn end(&mut self, id: u64, index: usize, seq: Sequence, reason: FinishReason) {
        let Some(req) = self.requests.get_mut(&id) else {
            return;
        };
        let codec = self.frontend.codec.as_ref();
        let generation = match codec.map(|c| seq.finish(reason, c)) {
            Some(Ok(g)) => g,
            Some(Err(e)) => {
                self.fail(&[id], &e.to_string());
                return;
            }
            None => {
                self.fail(&[id], "model has no tokenizer");
                return;
            }
        };
        req.results[index] = Some(generation);
        req.open -= 1;
        if req.open == 0 {
            self.answer(id);
        }
    }

    fn answer(&mut self, id: u64) {
        let Some(req) = self.requests.remove(&id) else {
            return;
        };
        let now = Instant::now();
        let admitted = req.admitted.unwrap_or(now);
        let gens: Vec<Generation> = req.results.into_iter().flatten().collect();
        let stats = RunStats {
            queue: admitted.saturating_duration_since(req.job.enqueued),
            compute: now.saturating_duration_since(admitted),
            batch_size: req.peak.max(1),
            tokens_processed: req.prompts.iter().map(Vec::len).sum(),
            tokens_generated: gens.iter().map(|g| g.tokens.len()).sum(),
        };
        let _ = req.job.reply.send(Ok(Completed {
            output: Output::Generations(gens),
            stats,
        }));
    }

    /// Answer these requests with an error and free everything they hold.
    fn fail(&mut self, ids: &[u64], message: &str) {
        for &id in ids {
            self.waiting.retain(|(w, _)| *w != id);
            let mut i = 0;
            while i < self.running.len() {
                if self.running[i].request == id {
                    let r = self.running.swap_remove(i);
                    self.release(r.slot);
                } else {
                    i += 1;
                }
            }
            if let Some(req) = self.requests.remove(&id) {
                let _ = req
                    .job
                    .reply
                    .send(Err(EngineError::Model(message.to_string())));
            }
        }
    }

    fn report(&self, size: usize, compute: Duration, cancelled: usize) {
        if let Some(o) = self.observer {
            o(&BatchReport {
                size,
                compute,
                cancelled,
            });
        }
    }
}
