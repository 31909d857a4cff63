//! The hardening probe's findings, each as an end-to-end test on a real server: stalled bodies,
//! slowloris and idle connections, the connection cap, oversized inputs, fair queueing, strict
//! JSON, the envelope on every error (raw sockets where a client library would refuse to send
//! the request), the header limit on probes, and query-string secrets kept out of the logs.

mod common;

use std::time::{Duration, Instant};

use common::{settings, start, EchoRepo, TestServer, DELAY_PARAM};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw exchange: what the server answered (status, head, body), or `None` if it closed the
/// connection without answering. Gives up (panics) after `limit`.
async fn exchange(addr: std::net::SocketAddr, request: &[u8], limit: Duration) -> Option<Raw> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    read_response(&mut s, limit).await
}

#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: String,
}

impl Raw {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// Our envelope with this code, served as JSON.
    fn assert_envelope(&self, code: &str) {
        assert!(
            self.head
                .to_ascii_lowercase()
                .contains("content-type: application/json"),
            "not JSON: {self:?}"
        );
        assert_eq!(self.json()["error"]["code"], code, "{self:?}");
        assert!(
            self.json()["error"]["message"].as_str().is_some(),
            "{self:?}"
        );
    }
}

async fn read_response(s: &mut TcpStream, limit: Duration) -> Option<Raw> {
    let deadline = Instant::now() + limit;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
                return Some(Raw { status, head, body });
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no answer within {limit:?}");
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("no answer within {limit:?}"),
        }
    }
}

/// Whether the server closes `s` within `limit` (reads until EOF or error).
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut chunk = [0u8; 1024];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

fn echo_repo() -> EchoRepo {
    let repo = EchoRepo::new();
    repo.add("echo", "1.0.0", DELAY_PARAM);
    repo
}

async fn echo_server(tune: impl FnOnce(&mut anya::config::Settings)) -> (EchoRepo, TestServer) {
    let repo = echo_repo();
    let mut st = settings(repo.path());
    tune(&mut st);
    let srv = start(st, &[]).await;
    srv.wait_ready(10).await;
    (repo, srv)
}

const STALLED: &[u8] = b"POST /models/echo/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"inputs\":";

#[tokio::test]
async fn a_stalled_body_gets_408_and_frees_its_slot() {
    let (_repo, srv) = echo_server(|st| {
        st.server.body_timeout_ms = 300;
        st.server.max_concurrent_requests = 2;
    })
    .await;
    let addr = srv.server.addr;
    // Two stalled bodies take both slots, then time out with 408 in our envelope.
    let stalled: Vec<_> = (0..2)
        .map(|_| tokio::spawn(exchange(addr, STALLED, Duration::from_secs(10))))
        .collect();
    for s in stalled {
        let r = s.await.unwrap().expect("an answer, not a closed socket");
        assert_eq!(r.status, 408, "{r:?}");
        r.assert_envelope("request_timeout");
    }
    // The slots are free again.
    let (s, _, b) = srv
        .post("/models/echo/predict", json!({"inputs": [1]}))
        .await;
    assert_eq!(s, 200, "{b}");
}

#[tokio::test]
async fn the_request_timeout_covers_the_body_read() {
    let (_repo, srv) = echo_server(|st| {
        st.server.body_timeout_ms = 60_000;
        st.server.request_timeout_ms = 300;
    })
    .await;
    let r = exchange(srv.server.addr, STALLED, Duration::from_secs(10))
        .await
        .expect("an answer");
    assert_eq!(r.status, 504, "{r:?}");
    r.assert_envelope("timeout");
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_413_at_once() {
    let (_repo, srv) = echo_server(|_| {}).await;
    let req = b"POST /models/echo/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n";
    // No body byte is ever sent: the answer cannot wait for one.
    let r = exchange(srv.server.addr, req, Duration::from_secs(5))
        .await
        .expect("an answer");
    assert_eq!(r.status, 413, "{r:?}");
    r.assert_envelope("payload_too_large");
}

#[tokio::test]
async fn slowloris_and_idle_keep_alive_connections_are_closed() {
    let (_repo, srv) = echo_server(|st| {
        st.server.header_read_timeout_ms = 400;
        st.server.keep_alive_timeout_ms = 600;
    })
    .await;
    let addr = srv.server.addr;
    // One header byte every 100 ms: the headers never complete within 400 ms of their start.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut closed = false;
    for b in request.iter() {
        if slow.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        if closed_within(&mut slow, Duration::from_millis(100)).await {
            closed = true;
            break;
        }
    }
    assert!(closed, "the slow client was never cut off");
    assert!(started.elapsed() < Duration::from_secs(3));

    // A keep-alive connection: one request answered, then silence: closed after 600 ms.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut idle, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let since = Instant::now();
    assert!(
        closed_within(&mut idle, Duration::from_secs(5)).await,
        "idle keep-alive connection left open"
    );
    assert!(
        since.elapsed() >= Duration::from_millis(300),
        "closed too early"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_are_capped_and_idle_ones_make_room() {
    let repo = echo_repo();
    let mut st = settings(repo.path());
    st.server.max_connections = 2;
    // No pooled client here: every connection below is one the test holds or closes.
    let srv = start(st, &[]).await;
    let addr = srv.server.addr;
    let ready = b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    while exchange(addr, ready, Duration::from_secs(5))
        .await
        .is_none_or(|r| r.status != 200)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Two idle connections fill the cap; a third client makes them close (the header timeout,
    // 10 s, is far away) and is served at once.
    let mut a = TcpStream::connect(addr).await.unwrap();
    let mut b = TcpStream::connect(addr).await.unwrap();
    // (a connection gets 200 ms to send its request before it counts as idle)
    tokio::time::sleep(Duration::from_millis(400)).await;
    let started = Instant::now();
    let r = exchange(
        addr,
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    )
    .await
    .expect("served");
    assert_eq!(r.status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // (one place was wanted: at least one of them gave its place up)
    let a_closed = closed_within(&mut a, Duration::from_secs(1)).await;
    let b_closed = closed_within(&mut b, Duration::from_secs(1)).await;
    assert!(a_closed || b_closed, "no idle connection made room");
    drop((a, b));

    // Two connections with a request in progress are not idle: a third waits for a place.
    let slow = b"POST /models/echo/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 47\r\n\r\n{\"inputs\":[\"a\"],\"parameters\":{\"delay_ms\":1500}}";
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(slow).await.unwrap();
        busy.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut third = TcpStream::connect(addr).await.unwrap();
    third
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    let waited = tokio::time::timeout(Duration::from_millis(500), third.read(&mut byte)).await;
    assert!(
        waited.is_err(),
        "a third connection was served over the cap"
    );
    for mut s in busy {
        let r = read_response(&mut s, Duration::from_secs(5))
            .await
            .expect("the requests in progress finish");
        assert_eq!(r.status, 200, "{r:?}");
    }
    let r = read_response(&mut third, Duration::from_secs(5))
        .await
        .expect("served once a place is free");
    assert_eq!(r.status, 200);
}

/// A connection must deliver its first head within the header timeout, not the keep-alive
/// one; and a head that starts on an idle keep-alive connection gets the header timeout from
/// its first byte (the watchdog was asleep until the keep-alive deadline).
#[tokio::test]
async fn silent_and_partial_heads_get_the_header_timeout() {
    let (_repo, srv) = echo_server(|st| {
        st.server.header_read_timeout_ms = 500;
        st.server.keep_alive_timeout_ms = 20_000;
    })
    .await;
    let addr = srv.server.addr;
    // Silent from the start.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let t = Instant::now();
    assert!(closed_within(&mut silent, Duration::from_secs(5)).await);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // Partial heads: on a new connection after a pause, and on a kept-alive one.
    let mut fresh = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    fresh
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert!(closed_within(&mut fresh, Duration::from_secs(5)).await);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    for _ in 0..4 {
        let mut kept = TcpStream::connect(addr).await.unwrap();
        kept.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let r = read_response(&mut kept, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t = Instant::now();
        kept.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        assert!(closed_within(&mut kept, Duration::from_secs(5)).await);
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "a partial head lived {:?}",
            t.elapsed()
        );
    }
}

/// The gRPC port under the same discipline: silent sockets are closed after the header
/// timeout, and idle sockets on it cannot lock the HTTP port out of the shared places.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_idle_sockets_are_closed_and_cannot_starve_http() {
    let (_repo, srv) = echo_server(|st| {
        st.server.grpc_port = Some(0);
        st.server.header_read_timeout_ms = 1500;
        st.server.max_connections = 16;
    })
    .await;
    let grpc = srv.server.grpc_addr.expect("gRPC is on");
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(TcpStream::connect(grpc).await.unwrap());
    }
    let t = Instant::now();
    for s in &mut idle {
        assert!(
            closed_within(s, Duration::from_secs(5)).await,
            "an idle gRPC socket stayed open"
        );
    }
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());

    // Fill every place with silent gRPC sockets: HTTP still answers at once.
    let mut hold = Vec::new();
    for _ in 0..16 {
        hold.push(TcpStream::connect(grpc).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let t = Instant::now();
    let r = exchange(
        srv.server.addr,
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await
    .expect("served");
    assert_eq!(r.status, 200);
    // (without making room it would wait for the header timeout, 1.5 s after they opened)
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
}

/// Refusals answered before the body is read (401, 403, 429) leave a keep-alive connection
/// usable: 150 POSTs on one connection past a rate limit, every one answered.
#[tokio::test]
async fn refusals_keep_the_connection_usable() {
    let (_repo, srv) = echo_server(|st| {
        st.rate_limits.enabled = true;
        st.rate_limits.tiers.insert(
            st.rate_limits.default_tier.clone(),
            anya::config::TierLimits {
                requests_per_minute: 5,
                tokens_per_minute: None,
            },
        );
    })
    .await;
    let mut s = TcpStream::connect(srv.server.addr).await.unwrap();
    let body = r#"{"inputs":["a"]}"#;
    let head = format!(
        "POST /models/echo/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut limited = 0;
    for i in 0..150 {
        // The body follows the head a moment later, as from a client that writes them apart:
        // the refusal is decided before the body has arrived.
        s.write_all(head.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        tokio::time::sleep(Duration::from_millis(5)).await;
        if let Err(e) = s.write_all(body.as_bytes()).await {
            panic!("request {i}: the body could not be sent: {e}");
        }
        let r = read_response(&mut s, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("request {i}: the connection was closed"));
        assert!(matches!(r.status, 200 | 429), "{r:?}");
        assert!(
            !r.head.to_ascii_lowercase().contains("connection: close"),
            "{r:?}"
        );
        limited += usize::from(r.status == 429);
    }
    assert!(limited >= 140, "{limited}");
    // A large refused body is not read: the answer says the connection closes.
    let big = "x".repeat(200_000);
    let req = format!(
        "POST /models/echo/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        big.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let r = read_response(&mut s, Duration::from_secs(5))
        .await
        .expect("an answer");
    assert_eq!(r.status, 429);
    assert!(
        r.head.to_ascii_lowercase().contains("connection: close"),
        "{r:?}"
    );
}

#[tokio::test]
async fn lenient_json_is_refused() {
    let (_repo, srv) = echo_server(|_| {}).await;
    let raw = |body: &'static str| {
        let c = srv.client.clone();
        let u = srv.url("/models/echo/predict");
        async move {
            let r = c
                .post(u)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    for (body, needle) in [
        (r#"{"inputs":["a"]} xyz"#, "after the JSON object"),
        (
            r#"{"inputs":["a"]}{"inputs":["b"]}"#,
            "after the JSON object",
        ),
        (r#"["hello"]"#, "must be a JSON object"),
        (r#""hello""#, "must be a JSON object"),
        (
            r#"{"inputs":["a"],"parameters":{"delay_ms":null}}"#,
            "must not be null",
        ),
        (
            r#"{"inputs":["a"],"parameters":{"cache":null}}"#,
            "true or false",
        ),
        (r#"{"inputs":["a"],"parameters":null}"#, "parameters"),
    ] {
        let (s, b) = raw(body).await;
        assert_eq!(s, 400, "{body} → {b}");
        assert_eq!(b["error"]["code"], "invalid_request", "{body} → {b}");
        assert!(b.to_string().contains(needle), "{body} → {b}");
    }
    // Still accepted: a bare string as `inputs`, and surrounding whitespace.
    let (s, b) = raw("  {\"inputs\": \"one\"}\n").await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["outputs"], json!(["one"]));
    // The documents agree on the shape of `inputs`: one input or a list, never "an object".
    let (_, doc) = srv.get("/openapi.json").await;
    let inputs = &doc["components"]["schemas"]["PredictRequest"]["properties"]["inputs"];
    assert_ne!(inputs["type"], "object", "{inputs}");
    let shape = doc["components"]["schemas"]["InputsDoc"].to_string();
    assert!(
        shape.contains("oneOf") && shape.contains("array"),
        "{shape}"
    );
}

/// Every error the server sends, from any layer, is our JSON envelope.
#[tokio::test]
async fn every_error_is_our_envelope() {
    let (_repo, srv) = echo_server(|_| {}).await;
    let addr = srv.server.addr;
    let many_headers: String = (0..120).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (
            b"GET /models HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\n\r\n".to_vec(),
            400,
            "invalid_request",
        ),
        (
            b"POST /models/echo/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n{}".to_vec(),
            400,
            "invalid_request",
        ),
        (
            b"POST /models/echo/predict HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n".to_vec(),
            400,
            "invalid_request",
        ),
        (
            format!("GET /models HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n").into_bytes(),
            431,
            "headers_too_large",
        ),
        (
            format!(
                "GET /models HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "a".repeat(1 << 20)
            )
            .into_bytes(),
            431,
            "headers_too_large",
        ),
        (
            format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(100_000)).into_bytes(),
            414,
            "uri_too_long",
        ),
        (
            b"GET /models/%FF%FE HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            400,
            "invalid_request",
        ),
        (
            b"GET /usage?period=%FF HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            400,
            "invalid_request",
        ),
        (
            b"POST /models/echo/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\n{}".to_vec(),
            415,
            "unsupported_media_type",
        ),
    ];
    for (request, status, code) in cases {
        let shown = String::from_utf8_lossy(&request[..request.len().min(80)]).to_string();
        let r = exchange(addr, &request, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("no answer to {shown:?}"));
        assert_eq!(r.status, status, "{shown:?} → {r:?}");
        r.assert_envelope(code);
    }
}

#[tokio::test]
async fn probes_get_the_header_limit_too() {
    let (_repo, srv) = echo_server(|st| {
        st.server.max_header_bytes = 2048;
    })
    .await;
    for path in ["/health", "/ready", "/metrics"] {
        let r = srv
            .client
            .get(srv.url(path))
            .header("x-big", "y".repeat(4096))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 431, "{path}");
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["error"]["code"], "headers_too_large", "{path}");
    }
    let (s, _) = srv.get("/health").await;
    assert_eq!(s, 200);
}

/// A token in the query string never reaches the logs.
#[test]
fn tokens_in_query_strings_are_redacted_in_logs() {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    let repo = echo_repo();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_anya"))
        .args([
            "serve",
            "--models-dir",
            repo.path().to_str().unwrap(),
            "--port",
            &port.to_string(),
        ])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let secret = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXNlY3JldA.c2ln";
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut answered = false;
    while Instant::now() < deadline && !answered {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let req = format!(
                "GET /models?access_token={secret}&period=daily HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            );
            s.write_all(req.as_bytes()).unwrap();
            let mut resp = String::new();
            let _ = s.read_to_string(&mut resp);
            answered = resp.starts_with("HTTP/1.1 200");
        }
        if !answered {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(answered, "anya serve never answered");
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(logs.contains("/models"), "no access log line: {logs}");
    assert!(!logs.contains(secret), "the token was logged: {logs}");
    assert!(
        !logs.contains("eyJ"),
        "part of the token was logged: {logs}"
    );
    assert!(logs.contains("access_token=REDACTED"), "{logs}");
}

/// Oversized inputs are refused by length before any tokenizer runs; truncation of a huge
/// input still gives the same vector as truncating a short one; and a 1-sentence request is
/// not stuck behind queued large ones. On the real models (one server for all three).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_model_inputs_oversized_truncated_and_fair() {
    let Some(models) = common::real_models() else {
        return;
    };
    let srv = start(
        settings(&models),
        &["all-minilm-l6-v2", "smollm2-135m-instruct"],
    )
    .await;
    srv.wait_ready(120).await;

    // A conversation's messages must be objects (serde alone would read a pair as one).
    let (s, _, b) = srv
        .post(
            "/models/smollm2-135m-instruct/predict",
            json!({"inputs": [[["user", "hi"]]], "parameters": {"max_tokens": 1}}),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["error"]["details"]["field"], "inputs[0][0]", "{b}");
    // An oversized conversation is refused by length before templating.
    let (s, _, b) = srv
        .post(
            "/models/smollm2-135m-instruct/predict",
            json!({"inputs": [[{"role": "user", "content": "hi ".repeat(200_000)}]]}),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("bytes"),
        "{b}"
    );

    // 1.5 MB in one input: refused by its byte length (no tokenizer ran).
    let huge = "word ".repeat(300_000);
    let (s, _, b) = srv
        .post(
            "/models/all-minilm-l6-v2/predict",
            json!({"inputs": [huge.clone()]}),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("bytes"),
        "{b}"
    );
    assert_eq!(b["error"]["details"]["field"], "inputs[0]");

    // With truncation the same input gives the vector of its first 256 tokens.
    let (s, _, long) = srv
        .post(
            "/models/all-minilm-l6-v2/predict",
            json!({"inputs": [huge], "parameters": {"truncate": true, "cache": false}}),
        )
        .await;
    assert_eq!(s, 200, "{long}");
    let (_, _, short) = srv
        .post(
            "/models/all-minilm-l6-v2/predict",
            json!({"inputs": ["word ".repeat(600)], "parameters": {"truncate": true, "cache": false}}),
        )
        .await;
    assert_eq!(long["outputs"], short["outputs"]);

    // Three large requests queue up, then one sentence arrives: it is answered before the
    // last large one (in arrival order it would be last).
    let sentences: Vec<String> = (0..192)
        .map(|i| format!("sentence number {i} about the weather in a town by the sea"))
        .collect();
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for k in 0..3 {
        let (c, u, body, order) = (
            srv.client.clone(),
            srv.url("/models/all-minilm-l6-v2/predict"),
            json!({"inputs": sentences, "parameters": {"cache": false}}),
            order.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let r = c.post(u).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 200);
            order.lock().unwrap().push(format!("large{k}"));
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (s, _, b) = srv
        .post(
            "/models/all-minilm-l6-v2/predict",
            json!({"inputs": ["a small request"], "parameters": {"cache": false}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    order.lock().unwrap().push("small".into());
    for t in tasks {
        t.await.unwrap();
    }
    let order = order.lock().unwrap().clone();
    assert_ne!(
        order.last().map(String::as_str),
        Some("small"),
        "the small request waited for every large one: {order:?}"
    );
}

/// Item 4: oversized inputs must not leave the process holding hundreds of MB (they used to be
/// tokenized, with several copies of the body, before being refused: +340 MB after a few
/// dozen). A bound with a wide margin, on the real binary and its real allocator; the exact
/// figures come from `scripts/bench/hardening_probe.py`.
#[cfg(target_os = "linux")]
#[test]
fn oversized_bodies_do_not_grow_memory() {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    let Some(models) = common::real_models() else {
        return;
    };
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_anya"))
        .args([
            "serve",
            "--models-dir",
            models.to_str().unwrap(),
            "--port",
            &port.to_string(),
        ])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let send = |path: &str, body: &str| -> String {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return String::new();
        };
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = s.write_all(req.as_bytes());
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        resp
    };
    let rss = |pid: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
            / 1024
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let ready = || -> bool {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let _ = s.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        resp.starts_with("HTTP/1.1 200")
    };
    while !ready() {
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    let before = rss(child.id());
    let prompt = serde_json::json!({"inputs": ["hello world ".repeat(160_000)]}).to_string();
    for _ in 0..24 {
        let r = send("/models/smollm2-135m-instruct/predict", &prompt);
        assert!(r.starts_with("HTTP/1.1 400"), "{}", &r[..r.len().min(200)]);
    }
    std::thread::sleep(Duration::from_secs(2));
    let after = rss(child.id());
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        after < before + 150,
        "RSS grew from {before} MB to {after} MB after 24 oversized prompts"
    );
}

/// A 50 MB `POST /v1/files` upload is spooled to disk and stored a chunk at a time: the
/// server's peak memory (VmHWM, its own process, the store on disk) grows by far less than the
/// file (it grew by 150 MB, three copies, when the upload was held whole). The file's bytes
/// come back intact.
#[test]
fn a_large_upload_is_not_held_in_memory() {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    let repo = EchoRepo::new();
    repo.add("echo", "1.0.0", "");
    let jobs = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_anya"))
        .args([
            "serve",
            "--models-dir",
            repo.path().to_str().unwrap(),
            "--port",
            &port.to_string(),
        ])
        .env("ANYA__JOBS__DIR", jobs.path())
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status_mb = |pid: u32, key: &str| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
            / 1024
    };
    let request = |head: String, body: &mut dyn FnMut(&mut std::net::TcpStream)| -> String {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return String::new(); // not listening yet
        };
        s.write_all(head.as_bytes()).unwrap();
        body(&mut s);
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        String::from_utf8_lossy(&resp).into_owned()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !request(
        "GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(),
        &mut |_| {},
    )
    .starts_with("HTTP/1.1 200")
    {
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    let before = status_mb(child.id(), "VmHWM:");

    // 50 MiB of JSON lines, written to the socket 64 KiB at a time (never whole here either).
    let line = format!(
        "{}\n",
        json!({"custom_id": "x", "method": "POST", "url": "/v1/embeddings",
               "body": {"model": "echo", "input": "hello world ".repeat(20)}})
    );
    let lines = (50 << 20) / line.len() + 1;
    let size = lines * line.len();
    let boundary = "anyaUploadBoundary7MA4YWxkTrZu0gW";
    let open = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jsonl\"\r\n\
         Content-Type: application/jsonl\r\n\r\n"
    );
    let close = format!("\r\n--{boundary}--\r\n");
    let head = format!(
        "POST /v1/files HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        open.len() + size + close.len()
    );
    let block = line.repeat((64 << 10) / line.len());
    let answer = request(head, &mut |s| {
        s.write_all(open.as_bytes()).unwrap();
        let mut left = size;
        while left > 0 {
            let n = left.min(block.len()) / line.len() * line.len();
            let n = if n == 0 { left } else { n };
            s.write_all(&block.as_bytes()[..n]).unwrap();
            left -= n;
        }
        s.write_all(close.as_bytes()).unwrap();
    });
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "{}",
        &answer[..answer.len().min(300)]
    );
    std::thread::sleep(Duration::from_secs(1));
    let peak = status_mb(child.id(), "VmHWM:");
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let file: Value = serde_json::from_str(body).unwrap();
    assert_eq!(file["bytes"], size as u64, "{file}");

    // The stored bytes are the uploaded ones.
    let id = file["id"].as_str().unwrap();
    let content = request(
        format!("GET /v1/files/{id}/content HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        &mut |_| {},
    );
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        content.starts_with("HTTP/1.1 200"),
        "{}",
        &content[..content.len().min(300)]
    );
    let (head, mut rest) = content.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    let mut text = String::with_capacity(size);
    loop {
        let (len, after) = rest.split_once("\r\n").unwrap();
        let len = usize::from_str_radix(len.trim(), 16).unwrap();
        if len == 0 {
            break;
        }
        text.push_str(&after[..len]);
        rest = &after[len + 2..];
    }
    assert_eq!(text.len(), size);
    assert!(text.lines().all(|l| format!("{l}\n") == line));
    assert!(
        peak < before + 40,
        "peak RSS grew from {before} MB to {peak} MB for a 50 MB upload"
    );
}
