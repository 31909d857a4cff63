//! A request's answer as a stream of events: the sending side the worker holds, and the
//! receiving side the caller reads.

use tokio::sync::mpsc;

use super::{Completed, EngineError, Work};
use crate::models::generate::Delta;

/// What a request's event stream carries.
#[derive(Debug)]
pub enum Event {
    /// New final text of input `index` (streaming generation only).
    Delta { index: usize, delta: Delta },
    /// The request is done: its outputs and stats, or why it failed.
    Done(Result<Completed, EngineError>),
}

/// The sending side of a request's events. The channel is sized for every event the request
/// can produce (one delta per generated token and input, plus one), so sending never waits
/// and never fails but for a receiver that has gone.
pub(crate) struct Reply {
    tx: mpsc::Sender<Event>,
    stream: bool,
}

impl Reply {
    pub(super) fn channel(work: &Work, stream: bool) -> (Reply, mpsc::Receiver<Event>) {
        let cap = match work {
            Work::Generate { prompts, params } if stream => {
                prompts.len().saturating_mul(params.max_tokens + 2) + 1
            }
            _ => 1,
        };
        let (tx, rx) = mpsc::channel(cap.clamp(1, 1 << 20));
        (Reply { tx, stream }, rx)
    }

    pub(crate) fn done(self, result: Result<Completed, EngineError>) {
        let _ = self.tx.try_send(Event::Done(result));
    }

    /// Send a delta when the request streams (otherwise nothing is sent).
    pub(crate) fn delta(&self, index: usize, delta: Delta) {
        if self.stream && !(delta.text.is_empty() && delta.logprobs.is_empty()) {
            let _ = self.tx.try_send(Event::Delta { index, delta });
        }
    }

    pub(crate) fn is_streaming(&self) -> bool {
        self.stream
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// The events of one request, in order; the last is `Done`.
pub struct EventStream {
    rx: mpsc::Receiver<Event>,
    name: String,
    finished: bool,
}

impl EventStream {
    pub(super) fn new(rx: mpsc::Receiver<Event>, name: String) -> Self {
        Self {
            rx,
            name,
            finished: false,
        }
    }

    /// The next event; `None` after `Done`. A worker that went away without answering reads
    /// as `Done(Err(Stopped))`.
    pub async fn next(&mut self) -> Option<Event> {
        if self.finished {
            return None;
        }
        let event = self
            .rx
            .recv()
            .await
            .unwrap_or_else(|| Event::Done(Err(EngineError::Stopped(self.name.clone()))));
        self.finished = matches!(event, Event::Done(_));
        Some(event)
    }

    /// Skip the deltas; the final answer.
    pub async fn done(mut self) -> Result<Completed, EngineError> {
        while let Some(e) = self.next().await {
            if let Event::Done(r) = e {
                return r;
            }
        }
        Err(EngineError::Stopped(self.name))
    }
}
