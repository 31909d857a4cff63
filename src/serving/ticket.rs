//! The envelope of one request, whatever carried it (HTTP, gRPC, a WebSocket message, a batch
//! job's inference): a [`Ticket`].
//!
//! Getting one is the admission: the drain check, a concurrency place (permit and in-flight
//! count), the caller's credentials, scope and request rate (`admission::admit`). Holding one
//! bounds the work by the request timeout ([`Ticket::within`]). Closing it ([`Ticket::close`],
//! or dropping it) keeps the books exactly once: request metrics, the canary's observation,
//! usage and cost (unless a stream records its own when it ends) and the access log line. A
//! streaming answer keeps the ticket's [`Hold`] (permit and in-flight count) until its last
//! byte, so an open stream counts against `server.max_concurrent_requests` and a drain waits
//! for it. The messages of these refusals are written here and nowhere else.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::admission::{admit, Need};
use crate::auth::{Authenticator, Principal, ANONYMOUS};
use crate::error::{ApiError, ErrorDetails, ErrorKind};
use crate::lifecycle::{InFlightOwned, Lifecycle};
use crate::metrics::{Metrics, ModelLabel};
use crate::ratelimit::{Decision, RateLimits};
use crate::usage::{now_unix, UsageEvent, UsageStore};

use super::Caller;

/// What admission and the books need; one per server, shared by every entry point.
pub struct Gate {
    pub lifecycle: Arc<Lifecycle>,
    /// Requests processed at once (`server.max_concurrent_requests`).
    pub concurrency: Arc<Semaphore>,
    /// How long a request may take (`server.request_timeout_ms`).
    pub request_timeout: Duration,
    /// Token checks; `None` when `security.auth_required` is false.
    pub auth: Option<Arc<Authenticator>>,
    /// Per-principal limits; `None` when `rate_limits.enabled` is false.
    pub limits: Option<Arc<RateLimits>>,
    pub metrics: Arc<Metrics>,
    pub usage: Arc<UsageStore>,
    /// Traffic policies: a running canary judges its version by the requests it answers.
    pub traffic: Arc<crate::traffic::Traffic>,
    /// Request metrics are kept (`monitoring.enabled`).
    pub monitoring: bool,
}

/// Who asks, and what admission checks of them.
#[derive(Debug, Clone, Copy)]
pub enum Who<'a> {
    /// Nobody needs to be known (the console's files): no token, no rate limit.
    Anyone,
    /// A credential to check: the token, the scope `need` asks, the model a route names (`None`
    /// where the core checks the request's model), and the request rate of `client`'s principal.
    Token {
        need: Need,
        token: Option<&'a str>,
        client: IpAddr,
        model: Option<&'a str>,
    },
    /// A principal admitted earlier on this connection (a WebSocket message, a later message of
    /// a gRPC stream): its request rate only.
    Known(&'a Principal),
    /// A principal admitted earlier whose request was counted then (a stream's first message).
    Counted(&'a Principal),
}

/// One request as it arrives at an entry point.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// Where it came in: a route template (never a raw path), `grpc/<Rpc>`, `job/<kind>` —
    /// static names, so a ticket allocates nothing for them.
    pub endpoint: &'static str,
    /// The HTTP method, `gRPC`, `WS` or `JOB`.
    pub method: &'static str,
    pub who: Who<'a>,
    /// Take a place: refused while draining or when `server.max_concurrent_requests` are in
    /// flight. False for a message inside a call that holds one already.
    pub place: bool,
}

/// A permit and the in-flight count: what a request holds until its last byte is sent.
pub struct Hold {
    _permit: OwnedSemaphorePermit,
    _in_flight: InFlightOwned,
}

/// An admitted request (see the module's documentation).
pub struct Ticket {
    gate: Arc<Gate>,
    endpoint: &'static str,
    method: &'static str,
    started: Instant,
    principal: Option<Principal>,
    decision: Option<Decision>,
    label: ModelLabel,
    hold: Option<Hold>,
    closed: bool,
}

/// A request refused at admission; its books are closed already.
#[derive(Debug)]
pub struct Refusal {
    pub error: ApiError,
    /// Who it was, when known by then (the adapter may name them in its response).
    pub principal: Option<Principal>,
    /// The rate-limit state to report (`x-ratelimit-*`), when one was taken.
    pub decision: Option<Decision>,
}

/// The status a request's books record when it ended without an answer (the client went away).
pub const CLIENT_CLOSED: u16 = 499;

impl Gate {
    /// Admit a request: not draining, a place, the caller's credentials and request rate.
    /// A refusal is recorded here, once.
    pub async fn admit(self: &Arc<Self>, entry: Entry<'_>) -> Result<Ticket, Box<Refusal>> {
        let mut ticket = self.ticket(entry.endpoint, entry.method, None);
        if entry.place {
            if self.lifecycle.is_draining() {
                return Err(ticket.refuse(shutting_down(), None));
            }
            let Ok(permit) = self.concurrency.clone().try_acquire_owned() else {
                return Err(ticket.refuse(too_many_in_flight(), None));
            };
            ticket.hold = Some(Hold {
                _permit: permit,
                _in_flight: self.lifecycle.enter_owned(),
            });
        }
        match entry.who {
            Who::Anyone => {}
            Who::Counted(p) => ticket.principal = Some(p.clone()),
            Who::Known(p) => {
                ticket.principal = Some(p.clone());
                if let Some(l) = &self.limits {
                    if let Some(d) = l.check_request(&p.sub, p.tier.as_deref()).await {
                        if !d.allowed {
                            return Err(ticket.refuse(crate::admission::refusal(&d), None));
                        }
                    }
                }
            }
            Who::Token {
                need,
                token,
                client,
                model,
            } => {
                let admitted = admit(
                    self.auth.as_deref(),
                    self.limits.as_deref(),
                    need,
                    token,
                    client,
                    model,
                )
                .await;
                match admitted {
                    Ok(a) => {
                        ticket.principal = Some(a.principal);
                        ticket.decision = a.decision;
                    }
                    Err(r) => {
                        ticket.principal = r.principal;
                        return Err(ticket.refuse(r.error, r.decision));
                    }
                }
            }
        }
        Ok(ticket)
    }

    /// The ticket of background work admitted earlier (a batch job's inference, on behalf of
    /// the job's owner): no place, no checks, the same books.
    pub fn background(self: &Arc<Self>, endpoint: &'static str, owner: &Principal) -> Ticket {
        self.ticket(endpoint, "JOB", Some(owner.clone()))
    }

    fn ticket(
        self: &Arc<Self>,
        endpoint: &'static str,
        method: &'static str,
        who: Option<Principal>,
    ) -> Ticket {
        Ticket {
            gate: self.clone(),
            endpoint,
            method,
            started: Instant::now(),
            principal: who,
            decision: None,
            label: ModelLabel::default(),
            hold: None,
            closed: false,
        }
    }

    /// The error of a request not answered within the request timeout.
    pub fn timed_out(&self) -> ApiError {
        let ms = self.request_timeout.as_millis();
        ApiError::new(
            ErrorKind::Timeout,
            format!("the request was not answered within {ms} ms"),
        )
        .with_details(ErrorDetails {
            field: None,
            issue: Some(format!("server.request_timeout_ms is {ms}")),
        })
    }
}

/// What a draining server says (refusals, readiness, a WebSocket's close frame).
pub const SHUTTING_DOWN: &str = "the server is shutting down";

fn shutting_down() -> ApiError {
    ApiError::unavailable(SHUTTING_DOWN, 1)
}

fn too_many_in_flight() -> ApiError {
    ApiError::unavailable(
        "too many requests in flight (server.max_concurrent_requests); retry later",
        1,
    )
}

impl Ticket {
    /// Who makes the request (`None` where nobody needs to be known).
    pub fn principal(&self) -> Option<&Principal> {
        self.principal.as_ref()
    }

    /// The caller, as the core takes it.
    pub fn caller(&self) -> Caller<'_> {
        Caller {
            principal: self.principal.as_ref(),
        }
    }

    /// The rate-limit state taken at admission.
    pub fn decision(&self) -> Option<&Decision> {
        self.decision.as_ref()
    }

    /// Time since the request arrived.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Run `work` within the request timeout (for a stream: until it starts).
    pub async fn within<T>(&self, work: impl Future<Output = T>) -> Result<T, ApiError> {
        tokio::time::timeout(self.gate.request_timeout, work)
            .await
            .map_err(|_| self.gate.timed_out())
    }

    /// The version that answered, with its tokens and cost (what usage records).
    pub fn answered_by(&mut self, label: Option<ModelLabel>) {
        if let Some(label) = label {
            self.label = label;
        }
    }

    /// The label the books will record (its version names the answer's, for a header).
    pub fn label(&self) -> &ModelLabel {
        &self.label
    }

    /// Close the books with this outcome; what is left to hold (the place) comes back for a
    /// body that is still being sent.
    pub fn close(mut self, status: u16, code: Option<&'static str>) -> Option<Hold> {
        self.record(status, code);
        self.hold.take()
    }

    /// Close the books with a result.
    pub fn close_with<T>(self, outcome: &Result<T, ApiError>) -> Option<Hold> {
        match outcome {
            Ok(_) => self.close(200, None),
            Err(e) => self.close(e.status().as_u16(), Some(e.kind.code())),
        }
    }

    /// A call whose books are kept per message (a gRPC stream): its place, no books of its own.
    pub fn into_place(mut self) -> Option<Hold> {
        self.closed = true;
        self.hold.take()
    }

    /// An attempt that did no work and will be made again (a busy model, a budget to wait
    /// out): no books; the next attempt's ticket keeps them.
    pub fn retried(mut self) {
        self.closed = true;
    }

    /// Close the books of a refusal.
    fn refuse(mut self, error: ApiError, decision: Option<Decision>) -> Box<Refusal> {
        self.record(error.status().as_u16(), Some(error.kind.code()));
        Box::new(Refusal {
            error,
            principal: self.principal.take(),
            decision,
        })
    }

    /// The books of one request: request metrics, the canary's observation, usage (unless the
    /// answer streams and records its own when it ends) and the access log line.
    fn record(&mut self, status: u16, code: Option<&'static str>) {
        if std::mem::replace(&mut self.closed, true) {
            return;
        }
        let elapsed = self.started.elapsed();
        let (gate, label) = (&self.gate, &self.label);
        if gate.monitoring {
            gate.metrics
                .observe_http(label, self.endpoint, status, code, elapsed);
        }
        let account = self
            .principal
            .as_ref()
            .map_or(ANONYMOUS, Principal::account);
        if !label.model.is_empty() {
            gate.traffic.observe(
                &label.model,
                &label.version,
                elapsed.as_secs_f64() * 1e3,
                status >= 500,
            );
            if !label.deferred {
                gate.usage.record(
                    &UsageEvent {
                        model: &label.model,
                        version: &label.version,
                        principal: account,
                        tokens_input: label.tokens_input,
                        tokens_output: label.tokens_output,
                        cost: label.cost,
                        latency_ms: elapsed.as_secs_f64() * 1e3,
                        error: status >= 400,
                    },
                    now_unix(),
                );
            }
        }
        tracing::info!(
            target: "anya::access",
            method = %self.method,
            route = %self.endpoint,
            model = %label.model,
            version = %label.version,
            status,
            latency_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3,
            batch_size = label.batch_size.unwrap_or(0),
            principal = %account,
            "request"
        );
    }
}

impl Drop for Ticket {
    /// A request dropped before it was answered (its client went away): recorded as such.
    fn drop(&mut self) {
        self.record(CLIENT_CLOSED, Some("client_closed"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(concurrency: usize) -> Arc<Gate> {
        Arc::new(Gate {
            lifecycle: Arc::new(Lifecycle::new()),
            concurrency: Arc::new(Semaphore::new(concurrency)),
            request_timeout: Duration::from_millis(50),
            auth: None,
            limits: None,
            metrics: Metrics::new(),
            usage: Arc::new(UsageStore::new()),
            traffic: Arc::new(crate::traffic::Traffic::new(None)),
            monitoring: true,
        })
    }

    fn entry(place: bool) -> Entry<'static> {
        Entry {
            endpoint: "/models/{id}/predict",
            method: "POST",
            who: Who::Token {
                need: Need::Authenticated,
                token: None,
                client: IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
                model: None,
            },
            place,
        }
    }

    fn label(tokens_output: u64, deferred: bool) -> ModelLabel {
        ModelLabel {
            model: "m".into(),
            version: "1".into(),
            tokens_input: 3,
            tokens_output,
            cost: 0.5,
            deferred,
            ..Default::default()
        }
    }

    fn window(gate: &Gate) -> crate::usage::ModelWindow {
        let hour = crate::usage::Period::parse("hourly").expect("a period");
        gate.usage.model_window("m", hour, None, now_unix())
    }

    fn used(gate: &Gate) -> (u64, u64) {
        let w = window(gate);
        (w.requests_count, w.tokens_output)
    }

    #[tokio::test]
    async fn a_place_is_held_until_the_hold_is_dropped_and_refused_when_none_is_left() {
        let gate = gate(1);
        let first = gate.admit(entry(true)).await.expect("a place");
        assert_eq!(gate.lifecycle.in_flight(), 1);
        let refused = gate.admit(entry(true)).await.err().expect("no place left");
        assert!(refused.error.message.contains("max_concurrent_requests"));
        // A message inside a call that holds a place needs none.
        assert!(gate.admit(entry(false)).await.is_ok());
        let hold = first.close(200, None);
        assert_eq!(
            gate.lifecycle.in_flight(),
            1,
            "the body still holds the place"
        );
        drop(hold);
        assert_eq!(gate.lifecycle.in_flight(), 0);
        assert!(gate.admit(entry(true)).await.is_ok());
    }

    #[tokio::test]
    async fn draining_refuses_new_requests() {
        let gate = gate(4);
        gate.lifecycle.start_draining();
        let refused = gate.admit(entry(true)).await.err().expect("draining");
        assert_eq!(refused.error.status(), 503);
        assert!(refused.error.message.contains("shutting down"));
    }

    #[tokio::test]
    async fn the_books_are_closed_once_with_the_answers_tokens() {
        let gate = gate(4);
        let mut t = gate.admit(entry(true)).await.expect("admitted");
        t.answered_by(Some(label(7, false)));
        drop(t.close(200, None));
        assert_eq!(used(&gate), (1, 7));
        // A stream records its own usage when it ends: the ticket does not count it again.
        let mut t = gate.admit(entry(true)).await.expect("admitted");
        t.answered_by(Some(label(9, true)));
        drop(t.close(200, None));
        assert_eq!(used(&gate), (1, 7));
        // Dropped without an answer: recorded once, as the client's going.
        let mut t = gate.admit(entry(true)).await.expect("admitted");
        t.answered_by(Some(label(2, false)));
        drop(t);
        let w = window(&gate);
        assert_eq!((w.requests_count, w.errors_count), (2, 1));
    }

    #[tokio::test]
    async fn background_work_is_booked_for_its_owner_without_a_place() {
        let gate = gate(0);
        let owner = Principal::anonymous("10.0.0.1");
        let mut t = gate.background("job/native", &owner);
        assert_eq!(
            t.principal().map(|p| p.sub.as_str()),
            Some(owner.sub.as_str())
        );
        t.answered_by(Some(label(5, false)));
        drop(t.close_with(&Ok::<(), ApiError>(())));
        assert_eq!(used(&gate), (1, 5));
    }

    #[tokio::test]
    async fn within_bounds_the_work_by_the_request_timeout() {
        let gate = gate(1);
        let t = gate.admit(entry(true)).await.expect("admitted");
        let slow = t
            .within(tokio::time::sleep(Duration::from_secs(5)))
            .await
            .expect_err("timed out");
        assert_eq!(slow.status(), 504);
        assert!(slow.message.contains("not answered within 50 ms"));
        assert_eq!(t.within(async { 3 }).await.ok(), Some(3));
    }
}
