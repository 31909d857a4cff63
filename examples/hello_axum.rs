//! The floor for the overhead benchmark (`scripts/bench/`): a bare axum server with no model, no
//! middleware, no JSON. Every route and method answers `hello`, after reading the request body
//! (any real handler has to), on the same runtime anya uses (multi-threaded, one worker per core).
//!
//! cargo run --release --example hello_axum -- PORT     (listens on 127.0.0.1:PORT; default 3000)
//!
//! anya's `echo` task against this floor measures what anya itself adds per request: the JSON
//! envelope and validation, request ids and tracing, metrics, the queue, the batcher and the
//! worker thread.

use axum::body::Bytes;
use axum::Router;

async fn hello(_body: Bytes) -> &'static str {
    "hello"
}

#[tokio::main]
async fn main() {
    let port: u16 = match std::env::args().nth(1) {
        None => 3000,
        Some(p) => p.parse().unwrap_or_else(|_| {
            eprintln!("usage: hello_axum [PORT]");
            std::process::exit(2)
        }),
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| {
            eprintln!("hello_axum: cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(2)
        });
    let app = Router::new().fallback(hello);
    if let Err(e) = axum::serve(listener, app).await {
        eprintln!("hello_axum: {e}");
        std::process::exit(1);
    }
}
