//! The `anya` binary: the command line and the process edge (anyhow, exit codes, signals).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use anya::config::{Overrides, Settings};
use anya::registry::repository;
use anya::server::{self, Server};

#[derive(Parser)]
#[command(
    name = "anya",
    version,
    about = "Serve real models over HTTP with dynamic batching"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load models and serve them over HTTP.
    Serve(ServeArgs),
    /// Inspect the model repository.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Mint a development token with the configured HS256 secret.
    Token(TokenArgs),
    /// Load-test a running server (anya or any OpenAI-compatible one): requests/s, tokens/s,
    /// time to first token, inter-token latency, p50/p99, with a progress bar.
    Bench(Box<BenchArgs>),
    /// Check configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Load every layer (file, ANYA__ environment) and validate it; exit 2 naming the bad key.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Config file (default: config/anya.yaml when present).
    #[arg(long)]
    config: Option<PathBuf>,
    /// A repository model id, or a path to a .gguf file or a safetensors model folder.
    /// Repeatable. None: serve every model in the repository.
    #[arg(long = "model", value_name = "ID|PATH")]
    models: Vec<String>,
    /// The model repository (default: models/).
    #[arg(long, value_name = "DIR")]
    models_dir: Option<PathBuf>,
    /// Address to listen on (default: 127.0.0.1).
    #[arg(long)]
    host: Option<String>,
    /// Port to listen on (default: 8000).
    #[arg(long)]
    port: Option<u16>,
    /// Log format.
    #[arg(long, value_parser = ["text", "json"])]
    log_format: Option<String>,
    /// Async runtime worker threads (server.workers; 0: one per core).
    #[arg(long)]
    workers: Option<usize>,
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// List the repository's models and versions, verifying every file's sha256.
    List {
        #[arg(long, value_name = "DIR")]
        models_dir: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Make an ed25519 signing key: writes the private key (hex) to FILE, prints the public key.
    Keygen {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Sign a version's manifest (after checking its files' sha256).
    Sign {
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The version folder, e.g. models/all-minilm-l6-v2/1.0.0
        dir: PathBuf,
    },
    /// Upload a version folder to an S3-compatible repository (every file, then the manifest),
    /// after checking its files' sha256. Credentials and endpoint: the AWS_* environment.
    Push {
        /// The version folder, e.g. models/all-minilm-l6-v2/1.0.0
        dir: PathBuf,
        /// The repository, s3://bucket/prefix
        url: String,
    },
    /// Check every version's files and signature against security.trusted_keys.
    Verify {
        #[arg(long, value_name = "DIR")]
        models_dir: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
#[command(after_help = "Examples:
  anya bench --model all-minilm-l6-v2 -c 8 -d 10
  anya bench --model smollm2-135m-instruct -c 4 -n 16 --max-tokens 128
  anya bench http://127.0.0.1:8000/models/echo/predict -c 32 -d 5 --body '{\"inputs\": [\"$SENTENCE\"]}'")]
struct BenchArgs {
    /// Benchmark this model of the server: its task picks the request (embeddings: POST
    /// /v1/embeddings; generation: streamed /v1/chat/completions; others: the predict API).
    /// Without it, give the URL and the body yourself.
    #[arg(long)]
    model: Option<String>,
    /// The server `--model` is on.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    server: String,
    /// Tokens per generation request (with --model).
    #[arg(long, default_value_t = 128)]
    max_tokens: u64,
    /// Print only the JSON summary.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    load: anya::loadgen::Args,
}

#[derive(clap::Args)]
struct TokenArgs {
    #[arg(long)]
    sub: String,
    /// predict, admin, metrics (repeatable)
    #[arg(long = "scope", required = true)]
    scopes: Vec<String>,
    #[arg(long)]
    tier: Option<String>,
    /// Lifetime: 30m, 1h, 7d, or seconds.
    #[arg(long, default_value = "1h")]
    ttl: String,
    /// Models the token may use (repeatable; none: all).
    #[arg(long = "model")]
    models: Vec<String>,
    #[arg(long)]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Models {
            command: ModelsCommand::List { models_dir, config },
        } => list_models(models_dir, config),
        Command::Models {
            command: ModelsCommand::Keygen { out },
        } => keygen(&out),
        Command::Models {
            command: ModelsCommand::Sign { key, dir },
        } => sign(&key, &dir),
        Command::Models {
            command: ModelsCommand::Push { dir, url },
        } => push(&dir, &url),
        Command::Models {
            command: ModelsCommand::Verify { models_dir, config },
        } => verify_models(models_dir, config),
        Command::Token(args) => token(args),
        Command::Bench(args) => bench(*args),
        Command::Config {
            command: ConfigCommand::Check { config },
        } => Settings::load(config.as_deref(), &Overrides::default())
            .map(|_| println!("configuration is valid"))
            .map_err(anyhow::Error::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("anya: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn bench(mut b: BenchArgs) -> anyhow::Result<()> {
    if let Some(n) = b.load.print_prompt {
        println!(
            "{}",
            serde_json::json!(anya::loadgen::prompt(n, b.load.prompt_words))
        );
        return Ok(());
    }
    if b.load.requests.is_none() && b.load.requests_pos.is_none() && b.load.duration.is_none() {
        b.load.duration = Some(10.0);
    }
    let threads = b.load.threads.max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let json_only = b.json;
    let summary = runtime.block_on(async move {
        if let Some(model) = b.model.clone() {
            pick_request(&mut b, &model).await?;
        }
        anyhow::Ok(anya::loadgen::run(b.load).await?)
    })?;
    if !json_only {
        print!("{}", anya::loadgen::render(&summary));
    }
    println!("{summary}");
    Ok(())
}

/// Fill in the URL and body that benchmark `model` on `b.server`, by its task (anya's
/// `GET /models/{id}`; a server without it is taken as OpenAI-compatible, for chat).
async fn pick_request(b: &mut BenchArgs, model: &str) -> anyhow::Result<()> {
    let base = b.server.trim_end_matches('/').to_string();
    let mut headers = reqwest::header::HeaderMap::new();
    for h in &b.load.headers {
        if let Some((k, v)) = h.split_once(':') {
            if let (Ok(k), Ok(v)) = (
                reqwest::header::HeaderName::from_bytes(k.trim().as_bytes()),
                reqwest::header::HeaderValue::from_str(v.trim()),
            ) {
                headers.insert(k, v);
            }
        }
    }
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .timeout(std::time::Duration::from_secs(10))
        .build()?;
    let r = client
        .get(format!("{base}/models/{model}"))
        .send()
        .await
        .with_context(|| format!("cannot reach {base}"))?;
    let task = if r.status().is_success() {
        let v: serde_json::Value = r.json().await?;
        v["task"].as_str().unwrap_or_default().to_string()
    } else {
        let models: serde_json::Value = client
            .get(format!("{base}/v1/models"))
            .send()
            .await?
            .json()
            .await
            .unwrap_or_default();
        let listed = models["data"]
            .as_array()
            .is_some_and(|d| d.iter().any(|m| m["id"] == model));
        anyhow::ensure!(listed, "{base} has no model `{model}`");
        "text-generation".to_string()
    };
    let input = if b.load.batch > 1 {
        "$SENTENCES"
    } else {
        "$SENTENCE"
    };
    let (path, body) = match task.as_str() {
        "embedding" => (
            "/v1/embeddings".to_string(),
            serde_json::json!({"model": model, "input": input}),
        ),
        "text-generation" => {
            b.load.stream = true;
            (
                "/v1/chat/completions".to_string(),
                serde_json::json!({
                    "model": model,
                    "messages": [{"role": "user", "content": "$PROMPT"}],
                    "max_tokens": b.max_tokens,
                    "temperature": 0,
                    "stream": true,
                    "stream_options": {"include_usage": true},
                }),
            )
        }
        _ => (
            format!("/models/{model}/predict"),
            serde_json::json!({"inputs": [input]}),
        ),
    };
    b.load.url = Some(format!("{base}{path}"));
    if b.load.body.is_none() {
        b.load.body = Some(body.to_string());
    }
    if b.load.label.is_none() {
        b.load.label = Some(model.to_string());
    }
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        host: args.host,
        port: args.port,
        models_dir: args.models_dir,
        log_format: args.log_format,
        workers: args.workers,
    };
    let settings = Settings::load(args.config.as_deref(), &overrides)?;
    anya::telemetry::init(&settings.server.log_level, &settings.server.log_format);
    if settings.model.threads > 0 {
        // candle's CPU kernels size their thread pools from this; set before any model loads.
        std::env::set_var("RAYON_NUM_THREADS", settings.model.threads.to_string());
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all().thread_name("anya-http");
    if settings.server.workers > 0 {
        runtime.worker_threads(settings.server.workers);
    }
    let runtime = runtime.build().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        if let Some(url) = settings.model.remote_repository() {
            let cache = settings.model.cache_dir.clone();
            match anya::objstore::sync(url, &cache).await {
                Ok(r) => tracing::info!(
                    repository = %url,
                    cache_dir = %cache.display(),
                    ready = r.ready(),
                    versions = r.versions.len(),
                    downloaded = r.downloaded,
                    downloaded_bytes = r.downloaded_bytes,
                    cached = r.cached,
                    "object-store repository synced"
                ),
                // The cache may still hold every version: serve what it has.
                Err(e) => tracing::error!(error = %e, cache_dir = %cache.display(), "object-store repository unreachable; serving from the cache"),
            }
        }
        let sources = server::select_sources(&settings, &args.models)?;
        let server = Server::start(settings, sources).await?;
        shutdown_signal().await;
        tracing::info!("signal received: draining (a second signal exits at once)");
        tokio::select! {
            drained = server.drain() => {
                let all = drained.context("server error")?;
                tracing::info!(clean = all, "stopped");
            }
            _ = shutdown_signal() => {
                tracing::warn!("second signal: exiting now");
                std::process::exit(130);
            }
        }
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

fn push(dir: &std::path::Path, url: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let written = runtime.block_on(anya::objstore::push(dir, url))?;
    for k in &written {
        println!("uploaded {k}");
    }
    Ok(())
}

fn list_models(models_dir: Option<PathBuf>, config: Option<PathBuf>) -> anyhow::Result<()> {
    let overrides = Overrides {
        models_dir,
        ..Default::default()
    };
    let settings = Settings::load(config.as_deref(), &overrides)?;
    let root = settings.model.local_repository();
    let (found, problems) = repository::scan(root)?;
    println!(
        "{:<28} {:<10} {:<16} {:<12} {:<8} VERIFIED",
        "ID", "VERSION", "TASK", "FORMAT", "DEFAULT"
    );
    for s in &found {
        let m = &s.manifest;
        let verified = match m.verify_files(&s.dir) {
            Ok(()) => "yes".to_string(),
            Err(e) => format!("NO: {e}"),
        };
        println!(
            "{:<28} {:<10} {:<16} {:<12} {:<8} {}",
            m.id,
            m.version.to_string(),
            m.task.as_str(),
            format!("{:?}", m.format).to_lowercase(),
            if m.default { "yes" } else { "" },
            verified
        );
    }
    for p in problems {
        println!("{:<28} unreadable: {}", p.dir.display(), p.error);
    }
    Ok(())
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let settings = Settings::load(args.config.as_deref(), &Overrides::default())?;
    let mut security = settings.security.clone();
    security.jwt_public_keys = None; // minting needs only the secret
    let auth = anya::auth::Authenticator::new(&security)?;
    let ttl_s = anya::auth::parse_ttl(&args.ttl)
        .ok_or_else(|| anyhow::anyhow!("--ttl {}: use e.g. 30m, 1h, 7d or seconds", args.ttl))?;
    for s in &args.scopes {
        if !["predict", "admin", "metrics"].contains(&s.as_str()) {
            anyhow::bail!("--scope {s}: must be predict, admin or metrics");
        }
    }
    if let Some(t) = &args.tier {
        if !settings.rate_limits.tiers.contains_key(t) {
            anyhow::bail!("--tier {t}: not one of rate_limits.tiers");
        }
    }
    let token = auth
        .mint(&anya::auth::MintRequest {
            sub: args.sub,
            scopes: args.scopes,
            tier: args.tier,
            models: (!args.models.is_empty()).then_some(args.models),
            ttl_s,
            not_before_s: None,
        })
        .map_err(|e| anyhow::anyhow!(e))?;
    println!("{token}");
    Ok(())
}

fn keygen(out: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write;
    let mut seed = [0u8; 32];
    rand::fill(&mut seed);
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(out)
        .with_context(|| format!("cannot create {} (it must not exist)", out.display()))?;
    writeln!(f, "{}", hex::encode(seed))?;
    println!(
        "{}",
        anya::registry::signing::encode_public_key(&key.verifying_key())
    );
    Ok(())
}

fn sign(key: &std::path::Path, dir: &std::path::Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(key).with_context(|| format!("cannot read {}", key.display()))?;
    let key = anya::registry::signing::parse_signing_key(&text).ok_or_else(|| {
        anyhow::anyhow!(
            "{}: not a 32-byte ed25519 key in hex or base64",
            key.display()
        )
    })?;
    let mut manifest = anya::registry::manifest::Manifest::load(dir)?;
    manifest.verify_files(dir)?;
    anya::registry::signing::sign(&mut manifest, &key);
    let path = dir.join(anya::registry::manifest::MANIFEST_FILE);
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, manifest.to_yaml())?;
    std::fs::rename(&tmp, &path)?;
    println!(
        "signed {} {} with {}",
        manifest.id,
        manifest.version,
        anya::registry::signing::encode_public_key(&key.verifying_key())
    );
    Ok(())
}

fn verify_models(models_dir: Option<PathBuf>, config: Option<PathBuf>) -> anyhow::Result<()> {
    let overrides = Overrides {
        models_dir,
        ..Default::default()
    };
    let settings = Settings::load(config.as_deref(), &overrides)?;
    let trusted: Vec<_> = settings
        .security
        .trusted_keys
        .iter()
        .filter_map(|k| anya::registry::signing::parse_public_key(k))
        .collect();
    let (found, problems) = repository::scan(settings.model.local_repository())?;
    let mut bad = problems.len();
    for p in &problems {
        println!("{}: unreadable: {}", p.dir.display(), p.error);
    }
    for s in &found {
        let m = &s.manifest;
        let files = m.verify_files(&s.dir).map_err(|e| e.to_string());
        let sig = anya::registry::signing::verify(m, &trusted).map_err(|e| e.to_string());
        match (&files, &sig) {
            (Ok(()), Ok(())) => println!("{} {}: files and signature ok", m.id, m.version),
            _ => {
                bad += 1;
                println!(
                    "{} {}: files {}, signature {}",
                    m.id,
                    m.version,
                    files.err().unwrap_or_else(|| "ok".into()),
                    sig.err().unwrap_or_else(|| "ok".into())
                );
            }
        }
    }
    if bad > 0 {
        anyhow::bail!("{bad} model version(s) failed verification");
    }
    Ok(())
}
