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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Models {
            command: ModelsCommand::List { models_dir, config },
        } => list_models(models_dir, config),
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

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        host: args.host,
        port: args.port,
        models_dir: args.models_dir,
        log_format: args.log_format,
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

fn list_models(models_dir: Option<PathBuf>, config: Option<PathBuf>) -> anyhow::Result<()> {
    let overrides = Overrides {
        models_dir,
        ..Default::default()
    };
    let settings = Settings::load(config.as_deref(), &overrides)?;
    let root = &settings.model.models_dir;
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
