//! anya: a model-serving daemon.
//!
//! Module map (dependencies point down: `server` → the adapters `http` and `grpc`, siblings
//! that never import each other → `services` → `jobs` → `serving` → `registry` → `engine` →
//! `models` → `spec`; the rest is cross-cutting and imports no adapter; see
//! `docs/architecture.md`):
//! - [`server`]: binds the listeners, builds the [`services`], serves `http` and `grpc`, drains.
//! - [`services`]: the composition root: core, gate, jobs, fleet, cache, limits, built once.
//! - [`http`]: the HTTP adapters; `http::routes` is the one route table, each route with its
//!   access rule; `http::app` the state, the layers and the request envelope's HTTP side.
//! - [`grpc`]: the KServe v2 gRPC service (tonic), a thin adapter over `serving`.
//! - [`jobs`]: batch jobs (native and OpenAI batches), their stores, runners and webhooks.
//! - [`serving`]: the serving core every protocol adapter calls: typed requests, the request
//!   envelope (`serving::ticket`), tasks as modules (`serving::tasks`), validation, model
//!   access, cache, token budget, streaming answers, fallbacks, traffic, heads, the KServe v2
//!   tensor mapping (`serving::tensor`).
//! - [`registry`]: the model repository on disk and the live map id → versions → handle.
//! - [`engine`]: per model version a bounded queue, a batching policy and a worker thread.
//! - [`models`]: the model code (BERT, llama, kernels, tokenizers, chat templates, echo).
//! - [`spec`]: manifests, signing and repository scans (a leaf).
//! - [`admission`]: token, scope, model list, request rate (called by the gate).
//! - [`auth`], [`ratelimit`], [`cache`], [`config`], [`error`], [`metrics`], [`usage`],
//!   [`lifecycle`], [`drift`], [`traffic`], [`fleet`], [`objstore`], [`net`], [`conn`],
//!   [`telemetry`], [`loadgen`]: cross-cutting pieces, each documented in its own module.

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
