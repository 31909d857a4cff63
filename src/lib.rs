//! anya: a model-serving daemon.
//!
//! Module map (dependencies point inward: `http` knows `engine`, `engine` knows `models`,
//! `models` knows nothing of HTTP or tokio):
//! - [`admission`]: the checks every protocol runs before serving a call (token, scope, model
//!   list, request rate).
//! - [`auth`]: JWT bearer tokens → `Principal` (scopes, tier, models); key reload.
//! - [`ratelimit`]: per-principal request and token limits by tier.
//! - [`cache`]: the response cache (memory, Redis behind it, fail-open).
//! - [`config`]: layered settings (defaults < `config/anya.yaml` < `ANYA__…` env < flags).
//! - [`error`]: `ApiError`, the one error envelope every route answers with.
//! - [`registry`]: the model repository on disk (manifests, hashes, path safety) and the live
//!   map of model id → versions → handle.
//! - [`engine`]: per model version a bounded queue, a batching policy and a worker thread.
//! - [`models`]: the model code (candle BERT embeddings, quantized llama generation, echo),
//!   tokenizers and chat templates.
//! - [`net`]: client addresses and trusted proxies.
//! - [`grpc`]: the KServe v2 gRPC service (tonic), a thin adapter over `serving`.
//! - [`http`]: the routes (predict, models, health, OpenAPI) and the JSON extractor.
//! - [`lifecycle`]: serving vs draining after SIGTERM, requests in flight.
//! - [`metrics`]: every `anya_ai_*` metric, recorded in one place per event.
//! - [`conn`]: HTTP/1.1 connections on hyper with header-read and idle timeouts, a connection
//!   cap, and hyper's own parse errors rewritten into the envelope.
//! - [`serving`]: the serving core every protocol adapter calls: typed requests, validation,
//!   model access, cache, token budget, streaming answers and their accounting.
//! - [`server`]: `app(AppState) -> Router`, the layers, binding and serving.
//! - [`telemetry`]: tracing setup.
//! - [`usage`]: usage and cost accounting in time buckets.

pub mod admission;
pub mod auth;
pub mod cache;
pub mod config;
pub mod conn;
pub mod drift;
pub mod engine;
pub mod error;
pub mod fleet;
pub mod grpc;
pub mod http;
pub mod jobs;
pub mod lifecycle;
pub mod loadgen;
pub mod metrics;
pub mod models;
pub mod net;
pub mod objstore;
pub mod ratelimit;
pub mod registry;
pub mod server;
pub mod services;
pub mod serving;
pub mod spec;
pub mod telemetry;
pub mod traffic;
pub mod usage;
