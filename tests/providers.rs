//! Remote models, fallbacks, retries and circuit breakers against real upstream servers on
//! loopback: a second anya process serving the real models through its `/v1` is the provider,
//! reached through a fault-injecting HTTP proxy this test starts (it forwards, or answers 500,
//! 429 with `Retry-After`, 400, hangs, drops the connection, or slows an SSE stream down; it
//! counts every request that reaches it).

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use common::{real_models, TestServer};
use futures::StreamExt;
use serde_json::{json, Value};

/// What the proxy does with the next request.
#[derive(Debug, Clone)]
enum Fault {
    Forward,
    Status(u16, Option<&'static str>),
    Hang,
    Drop,
    /// Forward, holding each chunk of the answer back this long.
    Slow(Duration),
}

struct Proxy {
    upstream: String,
    /// Faults for the next requests, in order; then `default`.
    queue: Mutex<VecDeque<Fault>>,
    default: Mutex<Fault>,
    /// POSTs that reached the proxy (the probes' GETs are not counted).
    posts: AtomicU64,
    client: reqwest::Client,
}

async fn proxy(State(p): State<Arc<Proxy>>, req: Request<Body>) -> Response {
    if req.method() == axum::http::Method::POST {
        p.posts.fetch_add(1, Ordering::SeqCst);
    }
    let fault = {
        let next = p.queue.lock().unwrap().pop_front();
        next.unwrap_or_else(|| p.default.lock().unwrap().clone())
    };
    let slow = match fault {
        Fault::Status(code, retry_after) => {
            let mut r = (
                StatusCode::from_u16(code).unwrap(),
                axum::Json(json!({"error": {"message": format!("injected {code}"), "type": "test", "code": null, "param": null}})),
            )
                .into_response();
            if let Some(ra) = retry_after {
                r.headers_mut().insert("retry-after", ra.parse().unwrap());
            }
            return r;
        }
        Fault::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return StatusCode::GATEWAY_TIMEOUT.into_response();
        }
        Fault::Drop => {
            // Headers, then a body that breaks: the connection is torn down mid-answer.
            let broken = futures::stream::once(async {
                Err::<axum::body::Bytes, std::io::Error>(std::io::Error::other("dropped"))
            });
            return Response::new(Body::from_stream(broken));
        }
        Fault::Slow(d) => Some(d),
        Fault::Forward => None,
    };
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 1 << 24).await else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let url = format!("{}{}", p.upstream, parts.uri.path());
    let mut out = p
        .client
        .request(parts.method.clone(), url)
        .body(body.to_vec());
    if let Some(ct) = parts.headers.get("content-type") {
        out = out.header("content-type", ct.clone());
    }
    let upstream = match out.send().await {
        Ok(r) => r,
        Err(_) => return StatusCode::BAD_GATEWAY.into_response(),
    };
    let status = upstream.status();
    let ct = upstream.headers().get("content-type").cloned();
    let stream = upstream.bytes_stream().then(move |chunk| async move {
        if let Some(d) = slow {
            tokio::time::sleep(d).await;
        }
        chunk.map_err(std::io::Error::other)
    });
    let mut r = Response::new(Body::from_stream(stream));
    *r.status_mut() = status;
    if let Some(ct) = ct {
        r.headers_mut().insert("content-type", ct);
    }
    r
}

async fn start_proxy(upstream: String) -> (Arc<Proxy>, SocketAddr) {
    let p = Arc::new(Proxy {
        upstream,
        queue: Mutex::new(VecDeque::new()),
        default: Mutex::new(Fault::Forward),
        posts: AtomicU64::new(0),
        client: reqwest::Client::new(),
    });
    let app = axum::Router::new().fallback(proxy).with_state(p.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (p, addr)
}

/// The provider: `anya serve` in its own process on `port`, serving the real models.
fn start_provider(models: &Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_anya"))
        .args([
            "serve",
            "--models-dir",
            models.to_str().unwrap(),
            "--port",
            &port.to_string(),
        ])
        .env("ANYA__MODEL__DEVICE", "cpu")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the provider")
}

async fn wait_provider(port: u16, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let c = reqwest::Client::new();
    loop {
        let ok = c
            .get(format!("http://127.0.0.1:{port}/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "the provider is not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write(dir: &Path, id: &str, yaml: &str) {
    let d = dir.join(id).join("1.0.0");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("anya.yaml"),
        format!("id: {id}\nversion: 1.0.0\n{yaml}"),
    )
    .unwrap();
}

/// `to` gets `from`'s files as hard links (copies across file systems).
fn link_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            link_tree(&entry.path(), &dest);
        } else if std::fs::hard_link(entry.path(), &dest).is_err() {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

struct Setup {
    front: TestServer,
    proxy: Arc<Proxy>,
    provider: Child,
    provider_port: u16,
    real: std::path::PathBuf,
    _repo: tempfile::TempDir,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = self.provider.kill();
        let _ = self.provider.wait();
    }
}

async fn setup() -> Option<Setup> {
    let real = real_models()?;
    let provider_port = free_port();
    let provider = start_provider(&real, provider_port);
    let (proxy, proxy_addr) = start_proxy(format!("http://127.0.0.1:{provider_port}")).await;
    let repo = tempfile::tempdir().unwrap();
    let r = repo.path();
    link_tree(
        &real.join("all-minilm-l6-v2/1.0.0"),
        &r.join("all-minilm-l6-v2/1.0.0"),
    );
    let base = format!("http://{proxy_addr}/v1");
    let provider_yaml = |model: &str, retries: u32| {
        format!(
            "format: none\nmax_input_length: 512\nprovider:\n  kind: openai\n  base_url: {base}\n  model: {model}\n  api_key_env: ANYA_TEST_PROVIDER_KEY\n  timeout_ms: 1500\n  max_retries: {retries}\n  probe_interval_s: 3600\n"
        )
    };
    write(
        r,
        "remote-embed",
        &format!(
            "task: embedding\n{}fallbacks: [all-minilm-l6-v2]\nbreaker:\n  consecutive_failures: 3\n  failure_rate: 0.5\n  min_requests: 20\n  window_ms: 10000\n  cooldown_ms: 2000\npricing:\n  per_1k_input_tokens: 1.0\n",
            provider_yaml("all-minilm-l6-v2", 1)
        ),
    );
    write(
        r,
        "remote-chat",
        &format!(
            "task: text-generation\n{}parameters:\n  - {{name: max_tokens, type: integer, default: 16, min: 1, max: 256}}\n  - {{name: temperature, type: number, default: 0.0, min: 0, max: 2}}\n",
            provider_yaml("smollm2-135m-instruct", 2)
        ),
    );
    let echo = "task: echo\nformat: none\nmax_input_length: 64\nmax_inputs: 4\nparameters:\n  - {name: delay_ms, type: integer, default: 0, min: 0, max: 10000}\n";
    write(
        r,
        "busy",
        &format!("{echo}batching: {{max_batch_size: 1, queue_capacity: 1}}\nfallbacks: [spare]\n"),
    );
    write(r, "spare", echo);
    std::env::set_var("ANYA_TEST_PROVIDER_KEY", "sk-test-secret-key");
    wait_provider(provider_port, 120).await;
    let front = common::start(common::settings(r), &[]).await;
    front.wait_ready(120).await;
    Some(Setup {
        front,
        proxy,
        provider,
        provider_port,
        real,
        _repo: repo,
    })
}

async fn embed(
    srv: &TestServer,
    model: &str,
    texts: &[&str],
) -> (u16, reqwest::header::HeaderMap, Value) {
    srv.post("/v1/embeddings", json!({"model": model, "input": texts}))
        .await
}

fn vectors(v: &Value) -> Vec<Vec<f64>> {
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| common::floats(&d["embedding"]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn remote_models_retries_fallbacks_and_breakers() {
    let Some(mut s) = setup().await else { return };
    let texts = [
        "The cat sat on the mat.",
        "Rust is a systems language.",
        "¿Dónde está la biblioteca?",
    ];

    // 1. A remote embedding model equals the local model's vectors.
    let (code, h, remote) = embed(&s.front, "remote-embed", &texts).await;
    assert_eq!(code, 200, "{remote}");
    assert_eq!(h["x-anya-served-by"], "remote-embed@1.0.0");
    let (_, _, local) = embed(&s.front, "all-minilm-l6-v2", &texts).await;
    for (a, b) in vectors(&remote).iter().zip(vectors(&local)) {
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(diff < 1e-5, "remote and local vectors differ by {diff}");
    }
    assert!(
        remote["usage"]["prompt_tokens"].as_u64().unwrap() > 0,
        "{remote}"
    );
    // The key never shows in answers or model listings.
    let (_, listing) = s.front.get("/models/remote-embed").await;
    assert!(
        !listing.to_string().contains("sk-test-secret-key"),
        "{listing}"
    );
    assert_eq!(
        listing["versions"][0]["provider"]["state"], "up",
        "{listing}"
    );

    // 2. A remote generation streams through anya as the provider's SSE arrives.
    *s.proxy.default.lock().unwrap() = Fault::Slow(Duration::from_millis(60));
    let body = json!({"model": "remote-chat", "messages": [{"role": "user", "content": "Name three colours."}],
        "max_tokens": 16, "temperature": 0, "stream": true});
    let started = Instant::now();
    let r = s
        .front
        .client
        .post(s.front.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-anya-served-by"], "remote-chat@1.0.0");
    let mut arrivals = Vec::new();
    let mut text = String::new();
    let mut bytes = r.bytes_stream();
    let mut buf = String::new();
    while let Some(chunk) = bytes.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while let Some(end) = buf.find("\n\n") {
            let event = buf[..end].to_string();
            buf.drain(..end + 2);
            let Some(data) = event.strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(data).unwrap();
            if let Some(d) = v["choices"][0]["delta"]["content"].as_str() {
                if !d.is_empty() {
                    arrivals.push(started.elapsed());
                    text.push_str(d);
                }
            }
        }
    }
    *s.proxy.default.lock().unwrap() = Fault::Forward;
    assert!(arrivals.len() >= 8, "{} deltas: {text:?}", arrivals.len());
    let spread = *arrivals.last().unwrap() - arrivals[0];
    assert!(
        spread >= Duration::from_millis(300),
        "deltas came all at once ({spread:?})"
    );
    let (code, _, whole) = s.front.post("/v1/chat/completions", json!({"model": "remote-chat",
        "messages": [{"role": "user", "content": "Name three colours."}], "max_tokens": 16, "temperature": 0})).await;
    assert_eq!(code, 200, "{whole}");
    assert_eq!(whole["choices"][0]["message"]["content"], text.as_str());
    assert!(whole["usage"]["completion_tokens"].as_u64().unwrap() > 0);

    // 3. Retries honour Retry-After; a 400 is not retried and reaches the client as 400.
    s.proxy
        .queue
        .lock()
        .unwrap()
        .push_back(Fault::Status(429, Some("1")));
    let before = s.proxy.posts.load(Ordering::SeqCst);
    let t = Instant::now();
    let (code, _, v) = s
        .front
        .post(
            "/models/remote-embed/predict",
            json!({"inputs": ["retry me"], "parameters": {"cache": false}}),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    assert!(
        t.elapsed() >= Duration::from_millis(950),
        "retried before Retry-After: {:?}",
        t.elapsed()
    );
    assert_eq!(s.proxy.posts.load(Ordering::SeqCst) - before, 2);
    assert_eq!(v["metadata"]["attempts"], 2, "{v}");
    assert_eq!(v["metadata"]["served_by"], "remote-embed@1.0.0");
    s.proxy
        .queue
        .lock()
        .unwrap()
        .push_back(Fault::Status(400, None));
    let before = s.proxy.posts.load(Ordering::SeqCst);
    let (code, _, v) = s
        .front
        .post(
            "/v1/chat/completions",
            json!({"model": "remote-chat",
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0.7}),
        )
        .await;
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("injected 400"),
        "{v}"
    );
    assert_eq!(
        s.proxy.posts.load(Ordering::SeqCst) - before,
        1,
        "a 400 was retried"
    );

    // A 500, a hang and a dropped connection each fall back to the local model at once.
    for fault in [Fault::Status(500, None), Fault::Hang, Fault::Drop] {
        for _ in 0..2 {
            s.proxy.queue.lock().unwrap().push_back(fault.clone());
        }
        let (code, h, v) = embed(&s.front, "remote-embed", &["fault"]).await;
        assert_eq!(code, 200, "{fault:?}: {v}");
        assert_eq!(h["x-anya-served-by"], "all-minilm-l6-v2@1.0.0", "{fault:?}");
        assert!(
            h["x-anya-fallbacks"]
                .to_str()
                .unwrap()
                .starts_with("remote-embed@1.0.0"),
            "{fault:?}"
        );
        s.proxy.queue.lock().unwrap().clear();
    }
    // The three failures in a row opened the circuit: after its cooldown, one probe closes it.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (code, h, _) = embed(&s.front, "remote-embed", &["probe"]).await;
    assert_eq!(code, 200);
    assert_eq!(h["x-anya-served-by"], "remote-embed@1.0.0");
    // `use_fallbacks: false` answers the provider's failure instead.
    s.proxy
        .queue
        .lock()
        .unwrap()
        .extend([Fault::Status(503, None), Fault::Status(503, None)]);
    let (code, _, v) = s
        .front
        .post(
            "/v1/embeddings",
            json!({"model": "remote-embed", "input": "x", "use_fallbacks": false}),
        )
        .await;
    assert_eq!(code, 502, "{v}");
    s.proxy.queue.lock().unwrap().clear();
    // Close the circuit again (the faults above counted as failures).
    for _ in 0..3 {
        let (code, _, _) = embed(&s.front, "remote-embed", &["warm again"]).await;
        assert_eq!(code, 200);
    }

    // 4. A full local queue spills over to the fallback instead of answering 503.
    let calls = (0..6).map(|i| {
        let c = s.front.client.clone();
        let url = s.front.url("/models/busy/predict");
        async move {
            let r = c
                .post(url)
                .json(&json!({"inputs": [format!("job {i}")], "parameters": {"delay_ms": 400}}))
                .send()
                .await
                .unwrap();
            let code = r.status().as_u16();
            (code, r.json::<Value>().await.unwrap())
        }
    });
    let answers = futures::future::join_all(calls).await;
    assert!(answers.iter().all(|(c, _)| *c == 200), "{answers:?}");
    let spilled = answers
        .iter()
        .filter(|(_, v)| v["metadata"]["served_by"] == "spare@1.0.0")
        .count();
    assert!(spilled >= 1, "nothing spilled over: {answers:?}");
    assert!(answers
        .iter()
        .any(|(_, v)| v["metadata"]["fallback_from"] == "busy"));
    // Streams spill over too (before their first event).
    let calls = (0..6).map(|i| {
        let c = s.front.client.clone();
        let url = s.front.url("/models/busy/predict");
        async move {
            let r = c.post(url).json(&json!({"inputs": [format!("stream {i}")], "parameters": {"delay_ms": 400, "stream": true}})).send().await.unwrap();
            let code = r.status().as_u16();
            (code, r.text().await.unwrap())
        }
    });
    let streams = futures::future::join_all(calls).await;
    assert!(
        streams
            .iter()
            .all(|(c, body)| *c == 200 && body.contains("event: done")),
        "{streams:?}"
    );
    assert!(
        streams
            .iter()
            .any(|(_, body)| body.contains("\"served_by\":\"spare@1.0.0\"")),
        "{streams:?}"
    );

    // 5. Kill the provider under 8 concurrent clients for 20 s: every request is answered by
    // the fallback, the breaker opens and keeps the dead address quiet during its cooldowns,
    // and once the provider is back the breaker half-opens, closes, and traffic returns.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let served_remote = Arc::new(AtomicU64::new(0));
    let total = Arc::new(AtomicU64::new(0));
    let front = Arc::new(s.front.client.clone());
    let url = s.front.url("/v1/embeddings");
    let mut clients = Vec::new();
    for i in 0..8 {
        let (stop, failures, served_remote, total, c, url) = (
            stop.clone(),
            failures.clone(),
            served_remote.clone(),
            total.clone(),
            front.clone(),
            url.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let r = c.post(&url).json(&json!({"model": "remote-embed", "input": format!("client {i} request {n}")})).send().await.unwrap();
                total.fetch_add(1, Ordering::Relaxed);
                if r.status() != 200 {
                    failures.fetch_add(1, Ordering::Relaxed);
                } else if r.headers()["x-anya-served-by"] == "remote-embed@1.0.0" {
                    served_remote.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = s.provider.kill();
    let _ = s.provider.wait();
    let down_from = s.proxy.posts.load(Ordering::SeqCst);
    let total_at_kill = total.load(Ordering::Relaxed);
    let mut saw_open = false;
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let m = s.front.metrics_text().await;
        saw_open |= metric(&m, "anya_ai_circuit_state", &["remote-embed@1.0.0"]) == 2.0;
    }
    let down_posts = s.proxy.posts.load(Ordering::SeqCst) - down_from;
    let during = total.load(Ordering::Relaxed) - total_at_kill;
    // Each request may try once plus one retry; at most 3 failures in a row plus the 8
    // requests in flight reach the address before the circuit opens, then one probe (and its
    // retry) per 2 s cooldown.
    let bound = (3 + 8) * 2 + (20 / 2 + 1) * 2;
    println!("provider down 20 s: {during} requests answered, {down_posts} reached the dead address (bound {bound})");
    assert!(saw_open, "the circuit never opened");
    assert!(
        down_posts <= bound,
        "{down_posts} attempts reached the dead provider (bound {bound})"
    );
    assert!(during > 100, "only {during} requests in 20 s");
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed while the provider was down"
    );

    // The provider comes back.
    s.provider = start_provider(&s.real, s.provider_port);
    wait_provider(s.provider_port, 120).await;
    let back = Instant::now();
    let remote_before = served_remote.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let m = s.front.metrics_text().await;
        let closed = metric(&m, "anya_ai_circuit_state", &["remote-embed@1.0.0"]) == 0.0;
        if closed && served_remote.load(Ordering::Relaxed) > remote_before + 20 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "traffic did not return to the provider"
        );
    }
    println!(
        "traffic back on the provider {:?} after it was ready",
        back.elapsed()
    );
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0);

    let m = s.front.metrics_text().await;
    assert!(
        metric(
            &m,
            "anya_ai_fallbacks_total",
            &["model=\"remote-embed\"", "reason=\"circuit_open\""]
        ) > 0.0
    );
    assert!(
        metric(
            &m,
            "anya_ai_fallbacks_total",
            &["model=\"busy\"", "reason=\"queue_full\""]
        ) > 0.0
    );
    assert!(metric(&m, "anya_ai_retries_total", &["model=\"remote-embed\""]) > 0.0);
    let (_, usage) = s.front.get("/models/remote-embed/metrics").await;
    let rate = usage["fallback_rate"]
        .as_f64()
        .or_else(|| usage["hourly"]["fallback_rate"].as_f64());
    assert!(rate.is_some_and(|r| r > 0.0 && r < 1.0), "{usage}");
}
