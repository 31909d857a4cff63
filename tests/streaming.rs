//! Streams end cleanly: the WebSocket API (`GET /v1/ws`: several requests at once on one
//! connection, cancel, auth, closing the socket), a client that goes away mid-stream (its slot
//! and its in-flight count return to idle), and SIGTERM with 5 open streams (each finishes, then
//! the process exits 0). Real models; one in-process server per test.

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anya::auth::{mint_hs256, MintRequest};
use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const GEN: &str = "smollm2-135m-instruct";
const EMB: &str = "all-minilm-l6-v2";

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(base: &str, token: Option<&str>) -> Result<Ws, u16> {
    let url = format!("{}/v1/ws", base.replacen("http://", "ws://", 1));
    let mut req = url.into_client_request().unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("websocket connect failed: {e}"),
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// The next JSON message (pings and pongs skipped), at most 120 s away.
async fn recv(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(120), ws.next())
            .await
            .expect("no message within 120 s")
            .expect("the socket closed")
            .expect("a websocket error");
        match m {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

/// A gauge's value (summed over its series) from `/metrics`.
async fn gauge(server: &TestServer, name: &str) -> f64 {
    server
        .metrics_text()
        .await
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Wait until no sequence holds a slot and no request is in flight.
async fn assert_idle_within(server: &TestServer, secs: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let active = gauge(server, "anya_ai_active_sequences").await;
        let in_flight = gauge(server, "anya_ai_requests_in_flight").await;
        if active == 0.0 && in_flight == 0.0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {active} active sequences and {in_flight} requests in flight after {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until at least one sequence holds a slot.
async fn wait_active(server: &TestServer) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while gauge(server, "anya_ai_active_sequences").await < 1.0 {
        assert!(Instant::now() < deadline, "no sequence ever became active");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn long_chat(id: &str) -> Value {
    json!({"type": "chat", "id": id, "model": GEN,
           "messages": [{"role": "user", "content": "Write a very long story about a dragon."}],
           "parameters": {"temperature": 0.8, "seed": 7, "max_tokens": 2000, "cache": false}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_multiplexes_cancels_and_cleans_up() {
    let Some(models) = real_models() else {
        return;
    };
    let server = start(settings(&models), &[]).await;
    server.wait_ready(120).await;
    let prompt = "The capital of France is";
    let (s, _, plain) = server
        .post(
            &format!("/models/{GEN}/predict"),
            json!({"inputs": [prompt], "parameters": {"temperature": 0, "max_tokens": 16}}),
        )
        .await;
    assert_eq!(s, 200, "{plain}");
    let (s, _, vectors) = server
        .post(
            &format!("/models/{EMB}/predict"),
            json!({"inputs": ["a sentence"]}),
        )
        .await;
    assert_eq!(s, 200, "{vectors}");

    let mut ws = connect(&server.base, None).await.expect("upgrade");
    // Five requests at once on one connection, answered by id.
    send(
        &mut ws,
        json!({"type": "predict", "id": "gen", "model": GEN, "inputs": [prompt],
                         "parameters": {"temperature": 0, "max_tokens": 16, "cache": false}}),
    )
    .await;
    send(
        &mut ws,
        json!({"type": "chat", "id": "chat", "model": GEN,
                         "messages": [{"role": "user", "content": "What is 2+2?"}],
                         "parameters": {"temperature": 0, "max_tokens": 12}}),
    )
    .await;
    send(
        &mut ws,
        json!({"type": "predict", "id": "emb", "model": EMB, "inputs": ["a sentence"]}),
    )
    .await;
    send(
        &mut ws,
        json!({"type": "predict", "id": "bad", "model": GEN, "inputs": ["x"], "bogus": 1}),
    )
    .await;
    send(
        &mut ws,
        json!({"type": "predict", "id": "nope", "model": "no-such-model", "inputs": ["x"]}),
    )
    .await;
    send(
        &mut ws,
        json!({"type": "predict", "id": "range", "model": GEN, "inputs": ["x"],
                         "parameters": {"temperature": -1}}),
    )
    .await;
    ws.send(Message::Text("{not json".into())).await.unwrap();

    let mut text: HashMap<String, String> = HashMap::new();
    let mut done: HashMap<String, Value> = HashMap::new();
    let mut errors: HashMap<String, Value> = HashMap::new();
    while done.len() + errors.len() < 7 {
        let m = recv(&mut ws).await;
        let id = m["id"].as_str().unwrap_or("-").to_string();
        match m["type"].as_str().unwrap() {
            "delta" => {
                assert!(!done.contains_key(&id), "a delta after done: {m}");
                assert_eq!(m["index"], 0);
                *text.entry(id).or_default() += m["text"].as_str().unwrap();
            }
            "done" => {
                done.insert(id, m);
            }
            "error" => {
                errors.insert(id, m);
            }
            other => panic!("unexpected {other}: {m}"),
        }
    }
    // Streamed text adds up to the non-streamed greedy text, byte for byte.
    assert_eq!(json!(text["gen"]), plain["outputs"][0]);
    assert_eq!(done["gen"]["outputs"], plain["outputs"]);
    assert_eq!(done["gen"]["model"], GEN);
    assert_eq!(json!(text["chat"]), done["chat"]["outputs"][0]);
    assert!(
        done["chat"]["metadata"]["tokens_generated"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(done["emb"]["outputs"], vectors["outputs"]);
    assert!(!text.contains_key("emb"), "embeddings have no deltas");
    assert_eq!(errors["bad"]["error"]["code"], "invalid_request");
    assert!(errors["bad"]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("bogus"));
    assert_eq!(errors["nope"]["error"]["code"], "not_found");
    assert_eq!(errors["range"]["error"]["code"], "invalid_request");
    assert_eq!(
        errors["range"]["error"]["details"]["field"],
        "parameters.temperature"
    );
    assert_eq!(
        errors["-"]["error"]["code"], "invalid_request",
        "{:?}",
        errors["-"]
    );

    // Cancel: a long generation stops at once and its slot comes back; a second request with
    // the same id while the first is open is refused.
    send(&mut ws, long_chat("long")).await;
    let first = recv(&mut ws).await;
    assert_eq!(
        (first["type"].as_str(), first["id"].as_str()),
        (Some("delta"), Some("long")),
        "{first}"
    );
    send(&mut ws, long_chat("long")).await;
    loop {
        let m = recv(&mut ws).await;
        if m["type"] == "error" {
            assert_eq!(m["id"], "long");
            assert!(
                m["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("still open"),
                "{m}"
            );
            break;
        }
        assert_eq!(m["type"], "delta", "{m}");
    }
    send(&mut ws, json!({"type": "cancel", "id": "long"})).await;
    loop {
        let m = recv(&mut ws).await;
        if m["type"] == "cancelled" {
            assert_eq!(m["id"], "long");
            break;
        }
        assert_eq!(
            m["type"], "delta",
            "nothing but deltas before the cancel lands: {m}"
        );
    }
    assert_idle_within(&server, 10, "after a cancel").await;
    send(&mut ws, json!({"type": "cancel", "id": "long"})).await;
    let m = recv(&mut ws).await;
    assert_eq!(
        (m["type"].as_str(), m["error"]["code"].as_str()),
        (Some("error"), Some("not_found")),
        "{m}"
    );

    // Closing the socket cancels its sequences.
    send(&mut ws, long_chat("a")).await;
    send(&mut ws, long_chat("b")).await;
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 2 {
        let m = recv(&mut ws).await;
        assert_eq!(m["type"], "delta", "{m}");
        seen.insert(m["id"].as_str().unwrap().to_string());
    }
    ws.close(None).await.unwrap();
    drop(ws);
    assert_idle_within(&server, 10, "after the socket closed").await;

    // The WebSocket requests are in the request metrics under their own route.
    let metrics = server.metrics_text().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("anya_ai_requests_total")
                && l.contains("endpoint=\"/v1/ws\"")
                && l.contains("status=\"200\"")),
        "no /v1/ws request counted"
    );

    // A plain GET is not an upgrade: a 400 in the /v1 error shape.
    let (s, body) = server.get("/v1/ws").await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_stream_frees_its_slot() {
    let Some(models) = real_models() else {
        return;
    };
    let server = start(settings(&models), &[GEN]).await;
    server.wait_ready(120).await;
    // OpenAI streaming and native SSE: read the first piece, then hang up.
    let requests = [
        (
            "/v1/chat/completions".to_string(),
            json!({"model": GEN, "stream": true, "max_tokens": 2000, "temperature": 0.8, "seed": 3,
                   "messages": [{"role": "user", "content": "Tell me a very long story."}]}),
        ),
        (
            format!("/models/{GEN}/predict"),
            json!({"inputs": ["Once upon a time"],
                   "parameters": {"stream": true, "max_tokens": 2000, "temperature": 0.8, "seed": 3}}),
        ),
    ];
    for (path, body) in requests {
        let mut r = server
            .client
            .post(server.url(&path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let first = r.chunk().await.unwrap().expect("a first chunk");
        assert!(!first.is_empty());
        wait_active(&server).await;
        assert_eq!(gauge(&server, "anya_ai_requests_in_flight").await, 1.0);
        drop(r);
        assert_idle_within(
            &server,
            10,
            &format!("after the client of {path} went away"),
        )
        .await;
    }
    // The server is fine afterwards.
    let (s, _, v) = server
        .post(
            &format!("/models/{GEN}/predict"),
            json!({"inputs": ["Hi"], "parameters": {"max_tokens": 4}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
}

const SECRET: &str = "streaming-test-secret-0123456789";

fn token(scopes: &[&str], models: Option<Vec<String>>) -> String {
    mint_hs256(
        SECRET.as_bytes(),
        &MintRequest {
            sub: "ws-user".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            models,
            ttl_s: 600,
            ..Default::default()
        },
        None,
        None,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_auth_scopes_model_lists_and_rate_limits() {
    let repo = EchoRepo::new();
    repo.add("echo", "1.0.0", "").add("other", "1.0.0", "");
    let keys = tempfile::tempdir().unwrap();
    std::fs::write(keys.path().join("secret"), SECRET).unwrap();
    let mut st = settings(repo.path());
    st.security.auth_required = true;
    st.security.jwt_secret_file = Some(keys.path().join("secret"));
    st.rate_limits.enabled = true;
    for t in st.rate_limits.tiers.values_mut() {
        t.requests_per_minute = 4;
    }
    let server = start(st, &[]).await;
    server.wait_ready(30).await;
    assert_eq!(connect(&server.base, None).await.err(), Some(401));
    assert_eq!(
        connect(&server.base, Some("not-a-jwt")).await.err(),
        Some(401)
    );
    assert_eq!(
        connect(&server.base, Some(&token(&["metrics"], None)))
            .await
            .err(),
        Some(403)
    );
    // The upgrade is one request of the principal's 4 a minute; each message is another.
    let t = token(&["predict"], Some(vec!["echo".into()]));
    let mut ws = connect(&server.base, Some(&t)).await.expect("upgrade");
    send(
        &mut ws,
        json!({"type": "predict", "id": "1", "model": "echo", "inputs": [{"k": 1}]}),
    )
    .await;
    let m = recv(&mut ws).await;
    assert_eq!(
        (m["type"].as_str(), m["id"].as_str()),
        (Some("done"), Some("1")),
        "{m}"
    );
    assert_eq!(m["outputs"], json!([{"k": 1}]));
    send(
        &mut ws,
        json!({"type": "predict", "id": "2", "model": "other", "inputs": ["x"]}),
    )
    .await;
    let m = recv(&mut ws).await;
    assert_eq!(m["error"]["code"], "forbidden", "{m}");
    send(
        &mut ws,
        json!({"type": "predict", "id": "3", "model": "echo", "inputs": ["x"]}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "done");
    send(
        &mut ws,
        json!({"type": "predict", "id": "4", "model": "echo", "inputs": ["x"]}),
    )
    .await;
    let m = recv(&mut ws).await;
    assert_eq!(m["error"]["code"], "rate_limit_exceeded", "{m}");
    assert!(m["error"]["retry_after_s"].as_u64().is_some(), "{m}");
}

/// SIGTERM with 5 open streams: `/ready` turns 503, each stream runs to its end, then the
/// process exits 0.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_open_streams_finishes_them_then_exits_0() {
    let Some(models) = real_models() else {
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
            "--model",
            GEN,
            "--port",
            &port.to_string(),
        ])
        .env("ANYA__SERVER__DRAIN_TIMEOUT_S", "120")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ok = client
            .get(format!("{base}/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut streams = Vec::new();
    for i in 0..5 {
        let r = client
            .post(format!("{base}/v1/chat/completions"))
            .json(&json!({"model": GEN, "stream": true, "max_tokens": 40, "temperature": 0.7,
                          "seed": i, "ignore_eos": true,
                          "messages": [{"role": "user", "content": format!("Story number {i}, please.")}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        streams.push(r);
    }
    // Every stream has started.
    let mut bodies = Vec::new();
    for r in streams.iter_mut() {
        let first = r.chunk().await.unwrap().expect("a first chunk");
        bodies.push(String::from_utf8_lossy(&first).to_string());
    }
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let signalled = Instant::now();
    // New work is refused while draining.
    let mut refused = None;
    while signalled.elapsed() < Duration::from_secs(5) {
        match client.get(format!("{base}/ready")).send().await {
            Ok(r) if r.status() == 503 => {
                refused = Some(r.status());
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    assert_eq!(
        refused.map(|s| s.as_u16()),
        Some(503),
        "/ready never turned 503"
    );
    let tasks: Vec<_> = streams
        .into_iter()
        .zip(bodies)
        .map(|(mut r, mut body)| {
            tokio::spawn(async move {
                while let Some(c) = r.chunk().await.expect("the stream broke") {
                    body += &String::from_utf8_lossy(&c);
                }
                body
            })
        })
        .collect();
    for t in tasks {
        let body = t.await.unwrap();
        assert!(
            body.trim_end().ends_with("data: [DONE]"),
            "a stream did not finish: {body}"
        );
        assert!(!body.contains("\"error\""), "{body}");
        let finish: Vec<String> = body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| {
                v["choices"][0]["finish_reason"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        assert_eq!(
            finish.len(),
            1,
            "each stream ends with one finish_reason: {body}"
        );
    }
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
