//! Streaming answers: the engine's text deltas as they become final, then the whole answer.
//! Inputs answered from the cache stream their cached text at once. The books (cache writes,
//! inference metrics, usage) are closed when the stream ends — or when it is dropped, with
//! what was sent by then.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use super::{items_of, Answer, Caller, Core, Item, Prepared, Route, ServeRequest};
use crate::auth::Principal;
use crate::engine::{EngineError, Event, EventStream, RunStats};
use crate::error::ApiError;
use crate::metrics::ModelLabel;
use crate::models::generate::TokenLogprob;
use crate::models::Generation;

/// What a stream yields.
#[derive(Debug)]
pub enum StreamItem {
    /// New final text of input `index`.
    Delta {
        index: usize,
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    /// The end: the whole answer (texts, finish reasons, usage).
    Done(Answer),
    /// The end, failed after the stream had started.
    Error(ApiError),
}

/// A streaming answer; `next` until `Done` or `Error`.
pub struct AnswerStream {
    core: Arc<Core>,
    prepared: Prepared,
    events: Option<EventStream>,
    /// The first event, read before the stream started (to fall back on a failure).
    pending: Option<Event>,
    ready: VecDeque<StreamItem>,
    label: ModelLabel,
    account: String,
    /// Tokens streamed so far (what usage records if the stream is dropped early).
    streamed_tokens: u64,
    finished: bool,
    route: Route,
}

impl Core {
    /// Start a request whose text streams. The label (once the version is known) comes back
    /// at once; tokens and usage are recorded when the stream ends. A failure worth another
    /// try before the first token falls back (see `fallback`).
    pub async fn infer_stream(
        self: &Arc<Self>,
        caller: Caller<'_>,
        req: ServeRequest,
    ) -> (Option<ModelLabel>, Result<AnswerStream, ApiError>) {
        let account = caller
            .principal
            .map_or(crate::auth::ANONYMOUS, Principal::account)
            .to_string();
        let (label, outcome) = self.stream_routed(caller, req).await;
        (
            label,
            outcome.map(|mut s| {
                s.account = account;
                s
            }),
        )
    }

    /// Submit a prepared request as a stream and wait for its first event: a failure worth
    /// another try comes back as an error (nothing was sent yet), anything else starts the
    /// stream.
    pub(super) async fn open_stream(
        self: Arc<Self>,
        mut p: Prepared,
    ) -> Result<AnswerStream, (Prepared, EngineError)> {
        let label = Self::label(&p.resolved);
        let mut events = match p.valid_work.take() {
            Some(work) => {
                match p
                    .resolved
                    .handle
                    .submit_within(work, true, self.request_timeout)
                {
                    Ok(s) => Some(s),
                    Err(e) => return Err((p, e)),
                }
            }
            None => None,
        };
        let mut pending = None;
        if let Some(ev) = events.as_mut() {
            match tokio::time::timeout(self.request_timeout, ev.next()).await {
                Ok(Some(Event::Done(Err(e)))) if e.fallback_reason().is_some() => {
                    return Err((p, e))
                }
                Ok(first) => pending = first,
                Err(_) => {
                    let e = EngineError::Timeout {
                        model: label.model.clone(),
                        timeout_ms: self.request_timeout.as_millis(),
                    };
                    return Err((p, e));
                }
            }
        }
        let ready = p
            .items
            .iter()
            .enumerate()
            .filter_map(|(index, item)| {
                let g = item.as_ref()?.generation()?;
                Some(StreamItem::Delta {
                    index,
                    text: g.text.clone(),
                    logprobs: Vec::new(),
                })
            })
            .collect();
        Ok(AnswerStream {
            core: self,
            prepared: p,
            events,
            pending,
            ready,
            label,
            account: String::new(),
            streamed_tokens: 0,
            finished: false,
            route: Route::default(),
        })
    }
}

impl AnswerStream {
    pub(super) fn set_route(&mut self, route: Route) {
        self.route = route;
    }

    /// Which target answers this stream.
    pub fn route(&self) -> &Route {
        &self.route
    }

    /// The next item; `None` once `Done` or `Error` was given.
    pub async fn next(&mut self) -> Option<StreamItem> {
        if let Some(item) = self.ready.pop_front() {
            return Some(item);
        }
        if self.finished {
            return None;
        }
        let Some(events) = self.events.as_mut() else {
            return Some(self.finish(RunStats::default()));
        };
        let timeout = self.core.request_timeout;
        let next = match self.pending.take() {
            Some(e) => Ok(Some(e)),
            None => tokio::time::timeout(timeout, events.next()).await,
        };
        let event = match next {
            Ok(Some(e)) => e,
            Ok(None) => return None,
            Err(_) => {
                self.finished = true;
                return Some(StreamItem::Error(
                    crate::engine::EngineError::Timeout {
                        model: self.label.model.clone(),
                        timeout_ms: timeout.as_millis(),
                    }
                    .into(),
                ));
            }
        };
        match event {
            Event::Delta { index, delta } => {
                self.streamed_tokens += delta.logprobs.len().max(1) as u64;
                let index = self.prepared.missing.get(index).copied().unwrap_or(index);
                Some(StreamItem::Delta {
                    index,
                    text: delta.text,
                    logprobs: delta.logprobs,
                })
            }
            Event::Done(Ok(done)) => {
                let computed = items_of(done.output);
                self.core.store(&self.prepared, &computed).await;
                let fresh: Vec<&Generation> = computed
                    .iter()
                    .filter_map(Item::generation)
                    .map(|g| g.as_ref())
                    .collect();
                if self.core.monitoring {
                    self.core
                        .metrics
                        .observe_inference(&self.label, &done.stats, &fresh);
                }
                for (&slot, item) in self.prepared.missing.iter().zip(computed) {
                    self.prepared.items[slot] = Some(item);
                }
                Some(self.finish(done.stats))
            }
            Event::Done(Err(e)) => {
                self.finished = true;
                self.close_books(true);
                Some(StreamItem::Error(e.into()))
            }
        }
    }

    fn finish(&mut self, stats: RunStats) -> StreamItem {
        self.finished = true;
        match self.core.answer(&self.prepared, stats, &mut self.label) {
            Ok(mut answer) => {
                if self.core.monitoring {
                    self.core.observe_drift(&self.prepared, &answer);
                }
                answer.route = self.route.clone();
                answer.route.attempts += stats.attempts.saturating_sub(1);
                self.close_books(false);
                StreamItem::Done(answer)
            }
            Err(e) => {
                self.close_books(true);
                StreamItem::Error(e)
            }
        }
    }

    /// Usage for this stream, once.
    fn close_books(&mut self, error: bool) {
        if self.label.deferred {
            return;
        }
        self.label.deferred = true; // marks the books as closed
        if !error && self.label.tokens_output == 0 {
            self.label.tokens_output = self.streamed_tokens;
        }
        let latency = self.prepared.arrived.elapsed();
        self.core
            .record_usage(&self.label, &self.account, latency, error);
    }

    /// Time since the request arrived.
    pub fn elapsed(&self) -> Duration {
        self.prepared.arrived.elapsed()
    }
}

impl Drop for AnswerStream {
    fn drop(&mut self) {
        // A client that went away: the engine stops its sequences at the next step (the event
        // receiver is dropped with us); usage records what was streamed.
        if !self.finished {
            self.label.tokens_output = self.streamed_tokens;
            self.close_books(false);
        }
    }
}
