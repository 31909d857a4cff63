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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{
    Batch, BatchObserver, BatchReport, Completed, EngineError, Job, Output, RunStats, Work,
};
use crate::models::generate::{Next, Sequence};
use crate::models::{CausalLm, Chunk, FinishReason, Frontend, GenParams, Generation, ModelError};

/// Prompt tokens per step while other sequences decode: an eighth of the step's budget (64 of
/// 512), at least 16, so a new prompt holds each decoding stream up by a bounded amount and
/// still starts within a few steps.
fn decoding_prefill(step_tokens: usize) -> usize {
    (step_tokens / 8).max(16).min(step_tokens)
}

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
    /// Sequences holding a slot, for the metrics (read at scrape time).
    active: Option<Arc<AtomicUsize>>,
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
            active: None,
        }
    }

    /// Publish the number of sequences holding a slot into `gauge` after every change.
    pub(super) fn with_active_gauge(mut self, gauge: Arc<AtomicUsize>) -> Self {
        self.active = Some(gauge);
        self
    }

    fn publish_active(&self) {
        if let Some(g) = &self.active {
            g.store(self.running.len(), Ordering::Relaxed);
        }
    }

    /// Serve until the batcher goes away and every sequence has ended.
    pub(super) fn run(mut self, batches: &mut mpsc::Receiver<Batch>) {
        loop {
            self.publish_active();
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
            self.publish_active();
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
                job.reply
                    .done(Err(EngineError::Model("wrong work for a generator".into())));
                continue;
            };
            if prompts.iter().any(Vec::is_empty) {
                job.reply
                    .done(Err(EngineError::Model("empty prompt".into())));
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
            self.evict(id);
            self.requests.remove(&id);
        }
        gone.len()
    }

    /// Take request `id`'s prompts out of the waiting line and its sequences out of their slots.
    fn evict(&mut self, id: u64) {
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
        if !plan.is_empty() {
            // Sequences are decoding: a prompt chunk delays every one of their next tokens, so
            // prompts go in smaller pieces (prefill costs about the same in any chunking).
            prefill_budget = prefill_budget.min(decoding_prefill(self.step_tokens));
        }
        for (i, r) in self.running.iter().enumerate() {
            if r.next.is_none() && prefill_budget > 0 {
                let prompt = &self.requests[&r.request].prompts[r.index];
                let len = (prompt.len() - r.fed).min(prefill_budget);
                prefill_budget -= len;
                plan.push((i, r.fed, len, r.fed + len == prompt.len()));
            }
        }
        // Chunks borrow the prompts and the pending tokens where they are: no copies per step.
        let (running, requests) = (&self.running, &self.requests);
        let chunks: Vec<Chunk> = plan
            .iter()
            .map(|&(i, from, len, logits)| {
                let r = &running[i];
                match &r.next {
                    Some(t) => Chunk {
                        slot: r.slot,
                        start: r.seq.position(),
                        tokens: std::slice::from_ref(t),
                        logits,
                    },
                    None => Chunk {
                        slot: r.slot,
                        start: from,
                        tokens: &requests[&r.request].prompts[r.index][from..from + len],
                        logits,
                    },
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
            let accepted = r.seq.accept(&l, codec, eos);
            if let Some(req) = self.requests.get(&r.request) {
                if req.job.reply.is_streaming() {
                    if let Some(d) = r.seq.take_delta() {
                        req.job.reply.delta(r.index, d);
                    }
                }
            }
            match accepted {
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
        let generation = match codec.map(|c| seq.finish_streamed(reason, c)) {
            Some(Ok((g, last))) => {
                req.job.reply.delta(index, last);
                g
            }
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
            attempts: 0,
            queue: admitted.saturating_duration_since(req.job.enqueued),
            compute: now.saturating_duration_since(admitted),
            batch_size: req.peak.max(1),
            tokens_processed: super::sum_lengths(&req.prompts),
            tokens_generated: gens.iter().map(|g| g.tokens.len()).sum(),
        };
        req.job.reply.done(Ok(Completed {
            output: Output::Generations(gens),
            stats,
        }));
    }

    /// Answer these requests with an error and free everything they hold.
    fn fail(&mut self, ids: &[u64], message: &str) {
        for &id in ids {
            self.evict(id);
            if let Some(req) = self.requests.remove(&id) {
                req.job
                    .reply
                    .done(Err(EngineError::Model(message.to_string())));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::sampling::SamplingParams;
    use crate::models::TextCodec;
    use crate::spec::manifest::Task;
    use tokio::sync::oneshot;

    /// After token t it predicts (t + 1) % 8; remembers every step's chunks as
    /// (slot, start, len, logits).
    struct Counter {
        slots: usize,
        steps: Vec<Vec<(usize, usize, usize, bool)>>,
        fail_on_slot: Option<usize>,
    }

    impl CausalLm for Counter {
        fn step(&mut self, chunks: &[Chunk<'_>]) -> Result<Vec<Vec<f32>>, ModelError> {
            self.steps.push(
                chunks
                    .iter()
                    .map(|c| (c.slot, c.start, c.tokens.len(), c.logits))
                    .collect(),
            );
            if chunks.iter().any(|c| Some(c.slot) == self.fail_on_slot) {
                return Err(ModelError::Inference("boom".into()));
            }
            Ok(chunks
                .iter()
                .filter(|c| c.logits)
                .map(|c| {
                    let mut l = vec![0.0; 8];
                    l[(*c.tokens.last().unwrap() as usize + 1) % 8] = 1.0;
                    l
                })
                .collect())
        }
        fn context_length(&self) -> usize {
            1024
        }
        fn max_sequences(&self) -> usize {
            self.slots
        }
    }

    fn frontend() -> Frontend {
        let vocab: serde_json::Map<String, serde_json::Value> = (0..8)
            .map(|i| (format!("w{i}"), serde_json::json!(i)))
            .collect();
        let json = serde_json::json!({
            "version": "1.0",
            "pre_tokenizer": {"type": "Whitespace"},
            "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "w0"}
        });
        let t = tokenizers::Tokenizer::from_bytes(serde_json::to_vec(&json).unwrap()).unwrap();
        Frontend {
            task: Task::TextGeneration,
            codec: Some(TextCodec::new(t, false, 64).unwrap()),
            chat_template: None,
            dimensions: None,
            eos_token_ids: vec![],
            context_length: Some(1024),
            device: "cpu".into(),
            classes: None,
            weights: None,
        }
    }

    type Rx = tokio::sync::mpsc::Receiver<crate::engine::Event>;

    fn job(prompts: Vec<Vec<u32>>, max_tokens: usize) -> (Job, Rx) {
        job_streaming(prompts, max_tokens, false)
    }

    fn job_streaming(prompts: Vec<Vec<u32>>, max_tokens: usize, stream: bool) -> (Job, Rx) {
        let params = GenParams {
            max_tokens,
            sampling: SamplingParams {
                temperature: 0.0,
                top_k: 0,
                top_p: 1.0,
            },
            stop: vec![],
            seed: 0,
            logprobs: None,
            ignore_eos: false,
        };
        let work = Work::Generate { prompts, params };
        let (reply, rx) = crate::engine::Reply::channel(&work, stream);
        let job = Job {
            work,
            enqueued: Instant::now(),
            reply,
            piece: 0,
            last: true,
            background: false,
        };
        (job, rx)
    }

    /// Run the scheduler over these batches (all queued up front) until it has ended them all.
    fn serve(lm: &mut Counter, step_tokens: usize, batches: Vec<Vec<Job>>) {
        let (tx, mut rx) = mpsc::channel(batches.len().max(1));
        for jobs in batches {
            let (done, _) = oneshot::channel();
            tx.try_send(Batch { jobs, done }).ok().unwrap();
        }
        drop(tx);
        let fe = frontend();
        Scheduler::new(lm, &fe, None, step_tokens).run(&mut rx);
    }

    /// The final answer, skipping deltas.
    fn done(rx: &mut Rx) -> Result<Completed, EngineError> {
        loop {
            match rx.blocking_recv().expect("an answer") {
                crate::engine::Event::Done(r) => return r,
                crate::engine::Event::Delta { .. } => continue,
            }
        }
    }

    fn tokens(mut rx: Rx) -> Vec<Vec<u32>> {
        match done(&mut rx).unwrap().output {
            Output::Generations(g) => g.into_iter().map(|g| g.tokens).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sequences_decode_together_and_a_waiting_one_takes_a_freed_slot() {
        let mut lm = Counter {
            slots: 2,
            steps: vec![],
            fail_on_slot: None,
        };
        let (a, ra) = job(vec![vec![1, 2]], 2);
        let (b, rb) = job(vec![vec![5]], 5);
        let (c, rc) = job(vec![vec![3, 3, 3]], 3);
        serve(&mut lm, 64, vec![vec![a, b], vec![c]]);
        assert_eq!(tokens(ra), vec![vec![3, 4]]);
        assert_eq!(tokens(rb), vec![vec![6, 7, 0, 1, 2]]);
        assert_eq!(tokens(rc), vec![vec![4, 5, 6]]);
        // step 1: both prompts; step 2: both decode; a ends, c's prompt joins b's decode.
        assert_eq!(lm.steps[0], vec![(0, 0, 2, true), (1, 0, 1, true)]);
        assert_eq!(lm.steps[1].len(), 2);
        assert!(
            lm.steps[2].contains(&(0, 0, 3, true)),
            "c takes a's slot: {:?}",
            lm.steps
        );
        assert!(lm.steps.iter().all(|s| s.len() <= 2));
    }

    #[test]
    fn long_prompts_are_chunked_without_stalling_decoders() {
        let mut lm = Counter {
            slots: 2,
            steps: vec![],
            fail_on_slot: None,
        };
        let (a, ra) = job(vec![vec![1]], 6);
        let (b, rb) = job(vec![vec![2; 40]], 1);
        serve(&mut lm, 20, vec![vec![a], vec![b]]);
        assert_eq!(tokens(ra), vec![vec![2, 3, 4, 5, 6, 7]]);
        assert_eq!(tokens(rb), vec![vec![3]]);
        // b's 40 prompt tokens arrive in chunks within the 20-token budget (a's decode token
        // counts), in order, while a decodes one token in each of those steps; as a decodes,
        // b's chunks are at most 16 tokens (`decoding_prefill`) instead of 19.
        let b_chunks: Vec<(usize, usize, bool)> = lm
            .steps
            .iter()
            .flatten()
            .filter(|c| c.0 == 1)
            .map(|c| (c.1, c.2, c.3))
            .collect();
        assert_eq!(
            b_chunks,
            vec![(0, 16, false), (16, 16, false), (32, 8, true)],
            "{:?}",
            lm.steps
        );
        for s in &lm.steps[1..4] {
            assert!(s.iter().any(|c| c.0 == 0), "a stalled: {:?}", lm.steps);
        }
        assert!(lm
            .steps
            .iter()
            .all(|s| s.iter().map(|c| c.2).sum::<usize>() <= 20));
    }

    #[test]
    fn prefill_while_decoding_is_an_eighth_of_the_step() {
        assert_eq!(decoding_prefill(512), 64);
        assert_eq!(decoding_prefill(20), 16);
        assert_eq!(decoding_prefill(8), 8);
    }

    #[test]
    fn a_failed_step_answers_its_requests_with_an_error_and_frees_the_slots() {
        let mut lm = Counter {
            slots: 1,
            steps: vec![],
            fail_on_slot: Some(0),
        };
        let (a, ra) = job(vec![vec![1]], 3);
        let (b, rb) = job(vec![vec![1]], 3);
        serve(&mut lm, 64, vec![vec![a, b]]);
        let (mut ra, mut rb) = (ra, rb);
        assert!(matches!(done(&mut ra), Err(EngineError::Model(_))));
        // the slot came back, so the second request ran (and failed the same way)
        assert!(matches!(done(&mut rb), Err(EngineError::Model(_))));
        assert_eq!(lm.steps.len(), 2);
    }

    #[test]
    fn a_gone_client_frees_its_slot() {
        let mut lm = Counter {
            slots: 1,
            steps: vec![],
            fail_on_slot: None,
        };
        let (a, ra) = job(vec![vec![1]], 100);
        let (b, rb) = job(vec![vec![4]], 2);
        drop(ra);
        serve(&mut lm, 64, vec![vec![a, b]]);
        assert_eq!(tokens(rb), vec![vec![5, 6]]);
        assert!(lm.steps.len() <= 2, "{:?}", lm.steps);
    }

    #[test]
    fn a_streaming_request_gets_deltas_per_input_that_add_up_to_its_text() {
        let mut lm = Counter {
            slots: 2,
            steps: vec![],
            fail_on_slot: None,
        };
        let (a, mut ra) = job_streaming(vec![vec![1], vec![4, 5]], 4, true);
        let (b, mut rb) = job(vec![vec![2]], 3);
        serve(&mut lm, 64, vec![vec![a, b]]);
        let mut streamed = vec![String::new(), String::new()];
        let texts = loop {
            match ra.blocking_recv().expect("events") {
                crate::engine::Event::Delta { index, delta } => streamed[index] += &delta.text,
                crate::engine::Event::Done(r) => match r.unwrap().output {
                    Output::Generations(g) => {
                        break g.into_iter().map(|g| g.text).collect::<Vec<_>>()
                    }
                    other => panic!("{other:?}"),
                },
            }
        };
        assert_eq!(streamed, texts);
        assert!(texts.iter().all(|t| !t.is_empty()));
        // a request that did not ask to stream gets its answer alone
        assert!(matches!(
            rb.blocking_recv(),
            Some(crate::engine::Event::Done(Ok(_)))
        ));
    }
}
