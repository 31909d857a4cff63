//! The KServe v2 gRPC service (`inference.GRPCInferenceService`, `proto/grpc_service.proto`),
//! a tonic adapter over the same serving core as HTTP: it maps protobuf messages to the core's
//! requests and answers (`convert`) and nothing more. Every call passes the same admission as
//! HTTP (`admission::admit`: the `authorization` metadata's bearer JWT, scopes, the token's
//! model list, per-principal rate limits), the same concurrency cap and drain, the same request
//! timeout, and is recorded like an HTTP request (metrics with `endpoint="grpc/<Rpc>"`, usage,
//! one access log line). Error kinds become gRPC status codes (`status`).

mod codec;
mod convert;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::admission::{bearer, Need};
use crate::auth::SCOPE_PREDICT;
use crate::error::{ApiError, ErrorKind};
use crate::metrics::ModelLabel;
use crate::net::client_ip;
use crate::services::Services;
use crate::serving::tensor;
use crate::serving::{Caller, Entry, StreamItem, Ticket, Who};

/// Code generated from `proto/grpc_service.proto`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("inference");
}

use pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};

/// Serve the gRPC service on `listener` until `shutdown` turns true, on the same connection
/// discipline as HTTP (`conn`): HTTP/2 with a first-request timeout, idle GOAWAY, keep-alive
/// PINGs, a stream cap, and a place among the server's shared connection places.
pub async fn serve(
    listener: tokio::net::TcpListener,
    services: Arc<Services>,
    limits: crate::conn::ConnLimits,
    places: std::sync::Arc<crate::conn::Places>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    crate::conn::serve(listener, router(services), limits, places, shutdown).await
}

/// The gRPC service as a router: tonic's routes, the peer address where tonic's
/// `remote_addr` looks for it, and size refusals as `INVALID_ARGUMENT`.
fn router(services: Arc<Services>) -> axum::Router {
    let limit = services.settings.server.max_body_bytes;
    let service = GrpcInferenceServiceServer::new(Service { services })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX);
    tonic::service::Routes::new(service)
        .prepare()
        .into_axum_router()
        .layer(axum::middleware::map_response(size_refusal_status))
        .layer(axum::middleware::map_request(peer_address))
}

async fn peer_address(mut req: axum::extract::Request) -> axum::extract::Request {
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    req.extensions_mut()
        .insert(tonic::transport::server::TcpConnectInfo {
            local_addr: None,
            remote_addr: peer,
        });
    req
}

/// tonic refuses a message over `max_decoding_message_size` with `OUT_OF_RANGE`; the service
/// never answers that code itself, and the documented code for a 413 is `INVALID_ARGUMENT`.
async fn size_refusal_status(mut res: axum::response::Response) -> axum::response::Response {
    // `grpc-status` is the code's number: OUT_OF_RANGE is 11, INVALID_ARGUMENT 3.
    const _: () = assert!(Code::OutOfRange as i32 == 11 && Code::InvalidArgument as i32 == 3);
    if res
        .headers()
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"11")
    {
        res.headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static("3"));
    }
    res
}

/// A status read from a call's inbound stream, with a size refusal as `INVALID_ARGUMENT`.
fn inbound_status(s: Status) -> Status {
    if s.code() == Code::OutOfRange {
        Status::new(Code::InvalidArgument, s.message().to_string())
    } else {
        s
    }
}

/// The gRPC status of an error: its kind's code, its message.
pub fn status(e: &ApiError) -> Status {
    let code = match e.kind {
        ErrorKind::InvalidRequest
        | ErrorKind::PayloadTooLarge
        | ErrorKind::HeadersTooLarge
        | ErrorKind::UriTooLong
        | ErrorKind::UnsupportedMediaType => Code::InvalidArgument,
        ErrorKind::Unauthorized => Code::Unauthenticated,
        ErrorKind::Forbidden => Code::PermissionDenied,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::MethodNotAllowed => Code::Unimplemented,
        ErrorKind::RateLimited => Code::ResourceExhausted,
        ErrorKind::Conflict => Code::FailedPrecondition,
        ErrorKind::LoadFailed => Code::Internal,
        ErrorKind::Internal => Code::Internal,
        ErrorKind::Unavailable | ErrorKind::BadGateway => Code::Unavailable,
        ErrorKind::Timeout | ErrorKind::BodyTimeout => Code::DeadlineExceeded,
    };
    Status::new(code, e.message.clone())
}

struct Service {
    services: Arc<Services>,
}

impl Service {
    /// Admit a call through the serving gate (not draining, a place, the caller's token,
    /// scope, model list and request rate). A refusal is booked by the gate.
    async fn enter(
        &self,
        rpc: &'static str,
        meta: &tonic::metadata::MetadataMap,
        peer: Option<SocketAddr>,
        need: Need,
        model: Option<&str>,
    ) -> Result<Ticket, Status> {
        let text = |k: &str| meta.get(k).and_then(|v| v.to_str().ok());
        let peer = peer
            .map(|a| a.ip())
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let client = client_ip(
            peer,
            text("x-forwarded-for"),
            &self.services.trusted_proxies,
        );
        let entry = Entry {
            endpoint: endpoint(rpc),
            method: "gRPC",
            who: Who::Token {
                need,
                token: bearer(text("authorization")),
                client,
                model,
            },
            place: true,
        };
        self.services
            .gate
            .admit(entry)
            .await
            .map_err(|r| status(&r.error))
    }

    /// Run an admitted unary call within the request timeout and close its books.
    async fn finish<T>(
        &self,
        mut ticket: Ticket,
        work: impl std::future::Future<Output = (Option<ModelLabel>, Result<T, ApiError>)>,
    ) -> Result<Response<T>, Status> {
        let (label, outcome) = ticket.within(work).await.unwrap_or_else(|e| (None, Err(e)));
        ticket.answered_by(label);
        drop(ticket.close_with(&outcome));
        outcome.map(Response::new).map_err(|e| status(&e))
    }
}

/// The endpoint label of an RPC (`grpc/<Rpc>`), without an allocation per call.
fn endpoint(rpc: &'static str) -> &'static str {
    match rpc {
        "ModelReady" => "grpc/ModelReady",
        "ServerMetadata" => "grpc/ServerMetadata",
        "ModelMetadata" => "grpc/ModelMetadata",
        "ModelInfer" => "grpc/ModelInfer",
        "ModelStreamInfer" => "grpc/ModelStreamInfer",
        _ => "grpc/other",
    }
}

/// A model name and version from a request (`""`: the default version).
fn version(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}

type StreamOut =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ModelStreamInferResponse, Status>> + Send>>;

#[tonic::async_trait]
impl GrpcInferenceService for Service {
    async fn server_live(
        &self,
        _req: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _req: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        let ready = self.services.is_ready();
        Ok(Response::new(pb::ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        req: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let ticket = self
            .enter(
                "ModelReady",
                req.metadata(),
                req.remote_addr(),
                Need::Authenticated,
                Some(&req.get_ref().name),
            )
            .await?;
        let r = req.get_ref();
        let ready = tensor::model_ready(&self.services.registry, &r.name, version(&r.version));
        self.finish(ticket, async move {
            (None, ready.map(|ready| pb::ModelReadyResponse { ready }))
        })
        .await
    }

    async fn server_metadata(
        &self,
        req: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        let ticket = self
            .enter(
                "ServerMetadata",
                req.metadata(),
                req.remote_addr(),
                Need::Authenticated,
                None,
            )
            .await?;
        let meta = pb::ServerMetadataResponse {
            name: "anya".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: tensor::EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        };
        self.finish(ticket, async move { (None, Ok(meta)) }).await
    }

    async fn model_metadata(
        &self,
        req: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let ticket = self
            .enter(
                "ModelMetadata",
                req.metadata(),
                req.remote_addr(),
                Need::Authenticated,
                Some(&req.get_ref().name),
            )
            .await?;
        let r = req.get_ref();
        let meta = tensor::model_meta(&self.services.registry, &r.name, version(&r.version))
            .map(convert::model_metadata);
        self.finish(ticket, async move { (None, meta) }).await
    }

    async fn model_infer(
        &self,
        req: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let ticket = self
            .enter(
                "ModelInfer",
                req.metadata(),
                req.remote_addr(),
                // The core checks the request's model against the token's list.
                Need::Scope(SCOPE_PREDICT),
                None,
            )
            .await?;
        let principal = ticket.principal().cloned();
        let services = self.services.clone();
        let limit = services.settings.server.max_body_bytes;
        let work = async move {
            let read = convert::read_request(&services.registry, req.into_inner(), limit);
            let (serve, reply) = match read {
                Ok(r) => r,
                Err(e) => return (None, Err(e)),
            };
            let caller = Caller {
                principal: principal.as_ref(),
            };
            let (label, outcome) = services.core.infer(caller, serve).await;
            (label, outcome.and_then(|a| reply.answer(&a)))
        };
        self.finish(ticket, work).await
    }

    type ModelStreamInferStream = StreamOut;

    async fn model_stream_infer(
        &self,
        req: Request<Streaming<pb::ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let ticket = self
            .enter(
                "ModelStreamInfer",
                req.metadata(),
                req.remote_addr(),
                Need::Scope(SCOPE_PREDICT),
                None,
            )
            .await?;
        let (tx, rx) = mpsc::channel(32);
        let service = Service {
            services: self.services.clone(),
        };
        let inbound = req.into_inner();
        tokio::spawn(async move { service.stream(ticket, inbound, tx).await });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

type Sender = mpsc::Sender<Result<pb::ModelStreamInferResponse, Status>>;

impl Service {
    /// Serve the requests of one `ModelStreamInfer` call in order. Generation streams one
    /// response per text delta, then an empty one flagged `triton_final_response`; other tasks
    /// answer once (flagged final). A failed request answers `error_message` and the stream
    /// goes on. The call holds its permit and in-flight count until it ends.
    async fn stream(
        &self,
        call: Ticket,
        mut inbound: Streaming<pb::ModelInferRequest>,
        tx: Sender,
    ) {
        let principal = call.principal().cloned();
        // The call's books are its messages'; it keeps its place until it ends.
        let hold = call.into_place();
        let mut first = true;
        loop {
            let msg = match inbound.message().await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(s) => {
                    let _ = tx.send(Err(inbound_status(s))).await;
                    break;
                }
            };
            // The call's admission counted its first request; each further one counts too.
            let who = match (&principal, first) {
                (Some(p), true) => Who::Counted(p),
                (Some(p), false) => Who::Known(p),
                (None, _) => Who::Anyone,
            };
            first = false;
            let id = msg.id.clone();
            let entry = Entry {
                endpoint: endpoint("ModelStreamInfer"),
                method: "gRPC",
                who,
                place: false,
            };
            let outcome = match self.services.gate.admit(entry).await {
                Err(refusal) => Err(refusal.error),
                Ok(mut ticket) => {
                    let (label, outcome) = self.stream_one(ticket.caller(), msg, &tx).await;
                    ticket.answered_by(label);
                    drop(ticket.close_with(&outcome));
                    outcome
                }
            };
            match outcome {
                Ok(true) => {}
                Ok(false) => break, // the client went away
                Err(e) => {
                    let r = pb::ModelStreamInferResponse {
                        error_message: e.message,
                        infer_response: Some(pb::ModelInferResponse {
                            id,
                            ..Default::default()
                        }),
                    };
                    if tx.send(Ok(r)).await.is_err() {
                        break;
                    }
                }
            }
        }
        drop(hold);
    }

    /// One request of a stream; `Ok(false)` when the client has gone.
    async fn stream_one(
        &self,
        caller: Caller<'_>,
        msg: pb::ModelInferRequest,
        tx: &Sender,
    ) -> (Option<ModelLabel>, Result<bool, ApiError>) {
        let limit = self.services.settings.server.max_body_bytes;
        let (serve, reply) = match convert::read_request(&self.services.registry, msg, limit) {
            Ok(r) => r,
            Err(e) => return (None, Err(e)),
        };
        let send = |r: pb::ModelInferResponse| async move {
            tx.send(Ok(pb::ModelStreamInferResponse {
                error_message: String::new(),
                infer_response: Some(r),
            }))
            .await
            .is_ok()
        };
        if !reply.generates() {
            let (label, outcome) = self.services.core.infer(caller, serve).await;
            let r = match outcome.and_then(|a| reply.answer(&a)) {
                Ok(r) => r,
                Err(e) => return (label, Err(e)),
            };
            return (label, Ok(send(convert::finalize(r)).await));
        }
        let (label, outcome) = self.services.core.infer_stream(caller, serve).await;
        let mut answer = match outcome {
            Ok(s) => s,
            Err(e) => return (label, Err(e)),
        };
        while let Some(item) = answer.next().await {
            match item {
                StreamItem::Delta { index, text, .. } => {
                    if !send(reply.delta(index, text)).await {
                        return (label, Ok(false));
                    }
                }
                StreamItem::Done(_) => return (label, Ok(send(reply.last()).await)),
                StreamItem::Error(e) => return (label, Err(e)),
            }
        }
        (label, Ok(true))
    }
}

/// Where the gRPC service listens, once bound.
pub async fn bind(host: &str, port: u16) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(format!("{host}:{port}")).await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}
