//! The server: `Server::start` binds, registers the models, loads them in the background and
//! serves the HTTP application (`http::app`) until told to stop; `drain` and `shutdown`.
//!
//! The listener is bound before any model loads, so `/health` answers at once and `/ready`
//! says 503 until every model is loaded and warmed up — what a Kubernetes probe expects.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::config::Settings;
pub use crate::http::app::{app, AppState, ANONYMOUS};
use crate::lifecycle::Lifecycle;
use crate::ratelimit::RateLimits;
use crate::registry::Registry;
use crate::spec::repository::{self, ModelSource, RepositoryError};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Repository(#[from] RepositoryError),
    #[error("no models to serve: the repository {0} is empty (run scripts/fetch-models.sh, or pass --model PATH)")]
    NoModels(String),
    #[error("{0}")]
    Registry(#[from] crate::registry::RegistryError),
    #[error("{0}")]
    Services(#[from] crate::services::BuildError),
}

/// The model versions to serve: every `--model` (ids from the repository, or paths), else
/// `model.name` from the config, else the whole repository.
pub fn select_sources(
    settings: &Settings,
    model_args: &[String],
) -> Result<Vec<ModelSource>, StartupError> {
    let root = settings.model.local_repository();
    let mut args: Vec<String> = model_args.to_vec();
    if args.is_empty() {
        if let Some(name) = &settings.model.name {
            args.push(name.clone());
        }
    }
    let needs_repo = args.is_empty()
        || args
            .iter()
            .any(|a| crate::spec::manifest::is_valid_id(a) && !std::path::Path::new(a).exists());
    let found = if root.is_dir() || needs_repo {
        let (found, problems) = repository::scan(root)?;
        for p in problems {
            tracing::error!(dir = %p.dir.display(), error = %p.error, "model version skipped");
        }
        found
    } else {
        Vec::new()
    };
    let sources = if args.is_empty() {
        found
    } else {
        let mut out = Vec::new();
        for a in &args {
            out.extend(repository::resolve_model_arg(a, &found, root)?);
        }
        out
    };
    if sources.is_empty() {
        return Err(StartupError::NoModels(root.display().to_string()));
    }
    Ok(sources)
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    /// Where the KServe v2 gRPC service listens (`server.grpc_port`), when it is on.
    pub grpc_addr: Option<SocketAddr>,
    pub registry: Arc<Registry>,
    pub lifecycle: Arc<Lifecycle>,
    drain_timeout: Duration,
    shutdown: Option<tokio::sync::watch::Sender<bool>>,
    serving: JoinHandle<std::io::Result<()>>,
    grpc: Option<JoinHandle<()>>,
    loading: JoinHandle<()>,
}

/// The registry with every source registered (`loading`), and the configured default version.
fn registry_of(
    settings: &Settings,
    sources: &[ModelSource],
) -> Result<Arc<Registry>, StartupError> {
    let registry = Arc::new(Registry::new());
    for s in sources {
        registry.register(s)?;
    }
    if let (Some(name), Some(version)) = (&settings.model.name, &settings.model.version) {
        let id = sources
            .iter()
            .find(|s| &s.manifest.id == name || s.dir.to_string_lossy() == name.as_str())
            .map(|s| s.manifest.id.clone());
        let version = match version.as_str() {
            // The highest version of the model among those served.
            "latest" => sources
                .iter()
                .filter(|s| Some(&s.manifest.id) == id.as_ref())
                .map(|s| s.manifest.version.clone())
                .max(),
            v => semver::Version::parse(v).ok(),
        };
        if let (Some(id), Some(v)) = (id, version) {
            registry.set_default(&id, &v)?;
        }
    }
    Ok(registry)
}

/// The connection limits of the HTTP ports and of the gRPC port.
fn conn_limits(settings: &Settings) -> (crate::conn::ConnLimits, crate::conn::ConnLimits) {
    let conn_limits = crate::conn::ConnLimits {
        header_read_timeout: Duration::from_millis(settings.server.header_read_timeout_ms),
        keep_alive_timeout: Duration::from_millis(settings.server.keep_alive_timeout_ms),
        max_head_bytes: settings
            .server
            .max_header_bytes
            .saturating_mul(4)
            .max(128 * 1024),
        protocol: crate::conn::Protocol::Http1,
    };
    let grpc_limits = crate::conn::ConnLimits {
        protocol: crate::conn::Protocol::Http2 {
            keepalive_interval: Duration::from_millis(settings.server.grpc_keepalive_interval_ms),
            keepalive_timeout: Duration::from_millis(settings.server.grpc_keepalive_timeout_ms),
            max_concurrent_streams: settings.server.grpc_max_concurrent_streams,
        },
        ..conn_limits
    };
    (conn_limits, grpc_limits)
}

/// HTTP, gRPC and the metrics port share one set of places, within the open-file limit.
fn places(settings: &Settings) -> Arc<crate::conn::Places> {
    let (max_connections, nofile) =
        crate::conn::effective_max_connections(settings.server.max_connections);
    if max_connections < settings.server.max_connections {
        tracing::warn!(
            configured = settings.server.max_connections,
            effective = max_connections,
            nofile,
            "server.max_connections lowered to fit the open-file limit (raise `ulimit -n`)"
        );
    }
    tracing::info!(
        max_connections,
        nofile,
        max_concurrent_requests = settings.server.max_concurrent_requests,
        grpc_max_concurrent_streams = settings.server.grpc_max_concurrent_streams,
        "connection limits"
    );
    crate::conn::Places::new(max_connections)
}

/// The core's background tasks (lifecycle, fleet), the jobs' stop at shutdown, and the loading
/// of every source (then the jobs left unfinished resume).
fn spawn_background(
    services: &Arc<crate::services::Services>,
    sources: Vec<ModelSource>,
    shutdown_rx: &tokio::sync::watch::Receiver<bool>,
) -> JoinHandle<()> {
    let core = services.core.clone();
    let loader = services.registry.clone();
    core.restore_traffic();
    let lifecycle_core = core.clone();
    tokio::spawn(lifecycle_core.clone().run_lifecycle(shutdown_rx.clone()));
    tokio::spawn(lifecycle_core.run_fleet(shutdown_rx.clone()));
    let jobs = services.jobs.clone();
    let stop_jobs = jobs.clone();
    let mut jobs_stop = shutdown_rx.clone();
    tokio::spawn(async move {
        let _ = jobs_stop.wait_for(|stop| *stop).await;
        stop_jobs.stop();
    });
    tokio::spawn(async move {
        let loads = sources.iter().map(|s| core.load_source(s));
        futures::future::join_all(loads).await;
        core.mark_started();
        // Jobs left unfinished by the last run resume once their models are loaded.
        jobs.resume().await;
        let r = loader.readiness();
        if r.ready {
            tracing::info!(models = sources.len(), "ready");
        } else {
            tracing::warn!(failed = ?r.failed, "not ready: some models failed to load");
        }
    })
}

impl Server {
    /// Bind, register `sources`, start loading them in the background, and serve.
    pub async fn start(
        settings: Settings,
        sources: Vec<ModelSource>,
    ) -> Result<Server, StartupError> {
        let registry = registry_of(&settings, &sources)?;
        let addr = format!("{}:{}", settings.server.host, settings.server.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|source| StartupError::Bind {
                addr: addr.clone(),
                source,
            })?;
        let local = listener
            .local_addr()
            .map_err(|source| StartupError::Bind { addr, source })?;

        announce_exposure(&settings);
        let metrics_port = settings
            .monitoring
            .metrics_port
            .filter(|_| settings.monitoring.enabled);
        let metrics_host = settings.server.host.clone();
        let grpc_listener = match settings.server.grpc_port {
            Some(port) => {
                let addr = format!("{}:{port}", settings.server.host);
                Some(
                    crate::grpc::bind(&settings.server.host, port)
                        .await
                        .map_err(|source| StartupError::Bind { addr, source })?,
                )
            }
            None => None,
        };
        let drain_timeout = Duration::from_secs(settings.server.drain_timeout_s);
        let (conn_limits, grpc_limits) = conn_limits(&settings);
        let places = places(&settings);
        let (tx, shutdown_rx) = tokio::sync::watch::channel(false);
        // The composition root: the services, then the adapters over them.
        let services = Arc::new(crate::services::Services::build(
            settings,
            registry.clone(),
            crate::http::batches::openai_executor,
        )?);
        let state = AppState::new(services.clone());
        let lifecycle = state.lifecycle.clone();
        let loading = spawn_background(&services, sources, &shutdown_rx);
        if let Some(port) = metrics_port {
            // /metrics on its own port too, so it can stay off the public ingress.
            let addr = format!("{metrics_host}:{port}");
            let listener = tokio::net::TcpListener::bind(&addr)
                .await
                .map_err(|source| StartupError::Bind { addr, source })?;
            let metrics_app = crate::http::app::metrics_app(state.clone());
            let stop = shutdown_rx.clone();
            let places = places.clone();
            tokio::spawn(async move {
                let _ = crate::conn::serve(listener, metrics_app, conn_limits, places, stop).await;
            });
        }
        spawn_housekeeping(&state);
        let (grpc, grpc_addr) = match grpc_listener {
            Some((listener, addr)) => {
                let (services, stop, places) =
                    (services.clone(), shutdown_rx.clone(), places.clone());
                let task = tokio::spawn(async move {
                    if let Err(e) =
                        crate::grpc::serve(listener, services, grpc_limits, places, stop).await
                    {
                        tracing::error!(error = %e, "the gRPC server stopped");
                    }
                });
                tracing::info!(addr = %addr, "gRPC listening");
                (Some(task), Some(addr))
            }
            None => (None, None),
        };
        let router = app(state);
        let serving = tokio::spawn(crate::conn::serve(
            listener,
            router,
            conn_limits,
            places,
            shutdown_rx,
        ));
        tracing::info!(addr = %local, "listening");
        Ok(Server {
            addr: local,
            grpc_addr,
            grpc,
            registry,
            lifecycle,
            drain_timeout,
            shutdown: Some(tx),
            serving,
            loading,
        })
    }

    /// Drain: `/ready` turns 503 and new work is refused at once; requests in flight finish
    /// (up to `server.drain_timeout_s`); then the listener closes. Returns whether everything
    /// in flight finished in time.
    pub async fn drain(self) -> std::io::Result<bool> {
        self.lifecycle.start_draining();
        let in_flight = self.lifecycle.in_flight();
        tracing::info!(
            in_flight,
            deadline_s = self.drain_timeout.as_secs(),
            "draining"
        );
        let finished = tokio::time::timeout(self.drain_timeout, self.lifecycle.drained())
            .await
            .is_ok();
        if !finished {
            tracing::warn!(
                in_flight = self.lifecycle.in_flight(),
                "drain deadline passed; closing with requests in flight"
            );
        }
        let grace = Duration::from_secs(1);
        match tokio::time::timeout(grace, self.shutdown()).await {
            Ok(r) => r.map(|()| finished),
            Err(_) => Ok(false),
        }
    }

    /// Stop accepting, let open connections finish, and return.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
        self.loading.abort();
        if let Some(grpc) = self.grpc.take() {
            let _ = grpc.await;
        }
        match self.serving.await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}

/// Say how exposed the server is: without auth it should listen on loopback only.
fn announce_exposure(settings: &Settings) {
    let host = settings.server.host.as_str();
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false);
    match (settings.security.auth_required, loopback) {
        (true, _) => {
            tracing::info!("auth is on: every route but /health and /ready needs a bearer token")
        }
        (false, true) => tracing::info!(
            host,
            "auth is off: listening on loopback only (set security.auth_required to expose anya)"
        ),
        (false, false) => tracing::warn!(
            host,
            "auth is off and anya listens beyond loopback: anyone who reaches it can use it"
        ),
    }
}

/// Background upkeep: JWT keys re-read on SIGHUP or when their file changes; idle rate-limit
/// keys evicted every minute.
fn spawn_housekeeping(state: &AppState) {
    if let Some(auth) = state.auth.clone() {
        tokio::spawn(async move {
            #[cfg(unix)]
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                #[cfg(unix)]
                let forced = match hup.as_mut() {
                    Some(h) => tokio::select! {
                        _ = h.recv() => true,
                        _ = tokio::time::sleep(Duration::from_secs(2)) => false,
                    },
                    None => {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        false
                    }
                };
                #[cfg(not(unix))]
                let forced = {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    false
                };
                let outcome = if forced {
                    Some(auth.reload())
                } else {
                    auth.reload_if_changed()
                };
                match outcome {
                    Some(Ok(())) => tracing::info!("JWT keys reloaded"),
                    Some(Err(e)) => {
                        tracing::error!(error = %e, "JWT keys not reloaded; the old keys stay")
                    }
                    None => {}
                }
            }
        });
    }
    if let Some(limits) = state.limits.clone() {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RateLimits::evict_every()).await;
                limits.evict_idle();
            }
        });
    }
}
