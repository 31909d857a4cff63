//! The HTTP API end to end on the built-in echo model: routes, every error case, versions,
//! backpressure, timeouts, cancellation and readiness. A real server on 127.0.0.1:0.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn assert_envelope(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(body["error"]["details"].is_object(), "{body}");
}

async fn echo_server(extra: &str) -> (EchoRepo, TestServer) {
    let repo = EchoRepo::new();
    repo.add("echo", "1.0.0", extra);
    let srv = start(settings(repo.path()), &[]).await;
    srv.wait_ready(10).await;
    (repo, srv)
}

#[tokio::test]
async fn predict_echo_returns_inputs_and_metadata() {
    let (_repo, srv) = echo_server(DELAY_PARAM).await;
    let (s, h, body) = srv
        .post(
            "/models/echo/predict",
            json!({"inputs": ["a", {"b": 1}, 3]}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["outputs"], json!(["a", {"b": 1}, 3]));
    assert_eq!(body["model"], "echo");
    assert_eq!(body["model_version"], "1.0.0");
    assert_eq!(body["metadata"]["batch_size"], 3);
    assert!(body["metadata"]["latency_ms"].as_f64().unwrap() >= 0.0);
    assert!(h.contains_key("x-request-id"));
    // a single value is a list of one
    let (s, _, body) = srv
        .post("/models/echo/predict", json!({"inputs": "solo"}))
        .await;
    assert_eq!((s, body["outputs"].clone()), (200, json!(["solo"])));
}

#[tokio::test]
async fn request_id_is_kept_from_the_client() {
    let (_repo, srv) = echo_server("").await;
    let r = srv
        .client
        .get(srv.url("/health"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
}

#[tokio::test]
async fn every_bad_request_gets_the_envelope() {
    let (_repo, srv) = echo_server(DELAY_PARAM).await;
    let url = srv.url("/models/echo/predict");
    let raw = |body: &'static str, ct: &'static str| {
        let c = srv.client.clone();
        let url = url.clone();
        async move {
            let r = c
                .post(url)
                .header("content-type", ct)
                .body(body)
                .send()
                .await
                .unwrap();
            split(r).await
        }
    };
    // malformed JSON
    let (s, _, b) = raw("{\"inputs\": [", "application/json").await;
    assert_eq!(s, 400);
    assert_envelope(&b, "invalid_request");
    // not JSON at all
    let (s, _, b) = raw("inputs=1", "application/x-www-form-urlencoded").await;
    assert_eq!(s, 400);
    assert_envelope(&b, "invalid_request");
    // wrong type for a field
    let (s, _, b) = raw("{\"inputs\": [1], \"parameters\": 5}", "application/json").await;
    assert_eq!(s, 400);
    assert_envelope(&b, "invalid_request");
    assert_eq!(b["error"]["details"]["field"], "parameters", "{b}");
    // unknown top-level field
    let (s, _, b) = raw("{\"inputs\": [1], \"extra\": true}", "application/json").await;
    assert_eq!(s, 400);
    assert_envelope(&b, "invalid_request");
    // missing inputs
    let (s, _, b) = srv
        .post("/models/echo/predict", json!({"parameters": {}}))
        .await;
    assert_eq!(s, 400);
    assert_envelope(&b, "invalid_request");
    // empty inputs
    let (s, _, b) = srv
        .post("/models/echo/predict", json!({"inputs": []}))
        .await;
    assert_eq!(s, 400);
    assert_eq!(b["error"]["details"]["field"], "inputs");
    // too many inputs: 413 naming the limit
    let (s, _, b) = srv
        .post("/models/echo/predict", json!({"inputs": [1, 2, 3, 4, 5]}))
        .await;
    assert_eq!(s, 413);
    assert_envelope(&b, "payload_too_large");
    assert!(
        b["error"]["details"]["issue"]
            .as_str()
            .unwrap()
            .contains("at most 4"),
        "{b}"
    );
    // parameter out of range names field and range
    let (s, _, b) = srv
        .post(
            "/models/echo/predict",
            json!({"inputs": [1], "parameters": {"delay_ms": -1}}),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(b["error"]["details"]["field"], "parameters.delay_ms");
    assert_eq!(
        b["error"]["details"]["issue"],
        "must be between 0 and 10000"
    );
    // unknown parameter
    let (s, _, b) = srv
        .post(
            "/models/echo/predict",
            json!({"inputs": [1], "parameters": {"nope": 1}}),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(b["error"]["details"]["field"], "parameters.nope");
    // unknown model, unknown version, bad version
    let (s, _, b) = srv
        .post("/models/nope/predict", json!({"inputs": [1]}))
        .await;
    assert_eq!(s, 404);
    assert_envelope(&b, "not_found");
    let (s, _, b) = srv
        .post(
            "/models/echo/versions/9.9.9/predict",
            json!({"inputs": [1]}),
        )
        .await;
    assert_eq!(s, 404);
    assert_envelope(&b, "not_found");
    let (s, _, _) = srv
        .post(
            "/models/echo/versions/..%2F..%2Fetc/predict",
            json!({"inputs": [1]}),
        )
        .await;
    assert_eq!(s, 404);
    // unknown route and wrong method
    let (s, b) = srv.get("/nowhere").await;
    assert_eq!(s, 404);
    assert_envelope(&b, "not_found");
    let (s, b) = srv.get("/models/echo/predict").await;
    assert_eq!(s, 405);
    assert_envelope(&b, "method_not_allowed");
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let repo = EchoRepo::new();
    repo.add("echo", "1.0.0", "");
    let mut st = settings(repo.path());
    st.server.max_body_bytes = 4096;
    let srv = start(st, &[]).await;
    srv.wait_ready(10).await;
    let big = "x".repeat(10_000);
    let (s, _, b) = srv
        .post("/models/echo/predict", json!({"inputs": [big]}))
        .await;
    assert_eq!(s, 413, "{b}");
    assert_envelope(&b, "payload_too_large");
}

#[tokio::test]
async fn versions_default_and_explicit() {
    let repo = EchoRepo::new();
    repo.add("echo", "1.0.0", "default: true\n")
        .add("echo", "2.0.0", "");
    let srv = start(settings(repo.path()), &[]).await;
    srv.wait_ready(10).await;
    let (_, _, b) = srv
        .post("/models/echo/predict", json!({"inputs": [1]}))
        .await;
    assert_eq!(b["model_version"], "1.0.0", "the manifest's default wins");
    let (_, _, b) = srv
        .post(
            "/models/echo/versions/2.0.0/predict",
            json!({"inputs": [1]}),
        )
        .await;
    assert_eq!(b["model_version"], "2.0.0");
    let (s, b) = srv.get("/models/echo/versions").await;
    assert_eq!(s, 200);
    let vs = b["versions"].as_array().unwrap();
    assert_eq!(vs.len(), 2);
    assert_eq!(vs[0]["default"], true);
    assert_eq!(vs[1]["state"], "ready");
    drop(srv);
    // `model.version: latest` makes the highest version the default, over the manifest's.
    let mut st = settings(repo.path());
    st.model.name = Some("echo".into());
    st.model.version = Some("latest".into());
    let srv = start(st, &[]).await;
    srv.wait_ready(10).await;
    let (_, _, b) = srv
        .post("/models/echo/predict", json!({"inputs": [1]}))
        .await;
    assert_eq!(b["model_version"], "2.0.0", "latest is the highest version");
    // One model served: `POST /predict` is its predict.
    let (s, _, b) = srv.post("/predict", json!({"inputs": [7]})).await;
    assert_eq!((s, &b["outputs"]), (200, &json!([7])), "{b}");
    drop(srv);
    // Two: a 400 that names them.
    repo.add("other", "1.0.0", "");
    let srv = start(settings(repo.path()), &[]).await;
    srv.wait_ready(10).await;
    let (s, _, b) = srv.post("/predict", json!({"inputs": [7]})).await;
    assert_eq!(s, 400, "{b}");
    let msg = b["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("echo") && msg.contains("other"), "{b}");
}

#[tokio::test]
async fn model_listing_and_detail() {
    let (_repo, srv) = echo_server(DELAY_PARAM).await;
    let (s, b) = srv.get("/models").await;
    assert_eq!(s, 200);
    assert_eq!(b["models"][0]["id"], "echo");
    assert_eq!(b["models"][0]["task"], "echo");
    let (s, b) = srv.get("/models/echo").await;
    assert_eq!(s, 200);
    for key in [
        "id",
        "versions",
        "task",
        "framework",
        "input_schema",
        "output_schema",
        "parameters",
        "created_at",
        "updated_at",
    ] {
        assert!(!b[key].is_null(), "missing {key}: {b}");
    }
    assert_eq!(b["parameters"][0]["name"], "delay_ms");
    assert_eq!(b["parameters"][0]["max"], 10000.0);
    assert_eq!(b["limits"]["max_inputs"], 4);
    assert_eq!(b["versions"][0]["device"], "cpu", "{b}");
    let (s, b) = srv.get("/models/nope").await;
    assert_eq!(s, 404);
    assert_envelope(&b, "not_found");
}

#[tokio::test]
async fn openapi_documents_every_route() {
    let (_repo, srv) = echo_server("").await;
    let (s, doc) = srv.get("/openapi.json").await;
    assert_eq!(s, 200);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/models/{id}/predict",
        "/models/{id}/versions/{version}/predict",
        "/models",
        "/models/{id}",
        "/models/{id}/versions",
        "/health",
        "/ready",
        "/metrics",
        "/openapi.json",
        "/v1/models",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
    ] {
        assert!(paths.contains_key(p), "undocumented {p}");
    }
    // The served document names this server's models as examples.
    let id = &paths["/models/{id}"]["get"]["parameters"][0];
    assert_eq!(id["schema"]["examples"], json!(["echo"]), "{id}");
    let predict = &paths["/models/{id}/predict"]["post"]["responses"];
    for code in ["200", "400", "404", "413", "503", "504"] {
        assert!(predict.get(code).is_some(), "predict lacks {code}");
    }
    assert!(doc["components"]["schemas"]["ErrorEnvelope"].is_object());
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after_and_nothing_hangs() {
    let batching = "batching:\n  max_batch_size: 1\n  max_batch_tokens: 100\n  max_queue_delay_ms: 0\n  queue_capacity: 2\n";
    let (_repo, srv) = echo_server(&format!("{batching}{DELAY_PARAM}")).await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..24 {
        let c = srv.client.clone();
        let url = srv.url("/models/echo/predict");
        tasks.push(tokio::spawn(async move {
            let r = c
                .post(url)
                .json(&json!({"inputs": [i], "parameters": {"delay_ms": 100}}))
                .send()
                .await
                .unwrap();
            split(r).await
        }));
    }
    let (mut ok, mut busy) = (0, 0);
    for t in tasks {
        let (s, h, b) = t.await.unwrap();
        match s {
            200 => ok += 1,
            503 => {
                busy += 1;
                assert_envelope(&b, "service_unavailable");
                assert_eq!(h["retry-after"], "1");
            }
            other => panic!("unexpected {other}: {b}"),
        }
    }
    assert!(ok >= 1 && busy >= 1, "ok={ok} busy={busy}");
    assert_eq!(ok + busy, 24);
    // 24 requests of 100 ms on one worker would take 2.4 s if they all waited.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn slow_requests_time_out_with_504() {
    let repo = EchoRepo::new();
    repo.add("echo", "1.0.0", DELAY_PARAM);
    let mut st = settings(repo.path());
    st.server.request_timeout_ms = 200;
    let srv = start(st, &[]).await;
    srv.wait_ready(10).await;
    let (s, _, b) = srv
        .post(
            "/models/echo/predict",
            json!({"inputs": [1], "parameters": {"delay_ms": 1000}}),
        )
        .await;
    assert_eq!(s, 504, "{b}");
    assert_envelope(&b, "timeout");
}

#[tokio::test]
async fn requests_of_gone_clients_are_dropped_before_compute() {
    let batching = "batching:\n  max_batch_size: 1\n  max_batch_tokens: 100\n  max_queue_delay_ms: 0\n  queue_capacity: 64\n";
    let (_repo, srv) = echo_server(&format!("{batching}{DELAY_PARAM}")).await;
    // Occupy the worker for 1.5 s, longer than the five clients below wait in all.
    let c = srv.client.clone();
    let url = srv.url("/models/echo/predict");
    let busy = tokio::spawn(async move {
        c.post(url)
            .json(&json!({"inputs": [0], "parameters": {"delay_ms": 1500}}))
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Five clients that give up after 100 ms, while their requests still wait in the queue.
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    for i in 0..5 {
        let r = quick
            .post(srv.url("/models/echo/predict"))
            .json(&json!({"inputs": [i], "parameters": {"delay_ms": 600}}))
            .send()
            .await;
        assert!(r.is_err(), "the client should have timed out");
    }
    busy.await.unwrap().unwrap();
    let handle = srv.server.registry.resolve("echo", None).unwrap().handle;
    let deadline = Instant::now() + Duration::from_secs(3);
    while handle.cancelled_count() < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        handle.cancelled_count(),
        5,
        "all five were skipped, none computed"
    );
    // and the model still answers
    let (s, _, _) = srv
        .post("/models/echo/predict", json!({"inputs": [1]}))
        .await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn a_model_with_a_bad_hash_is_refused_and_others_still_serve() {
    let repo = EchoRepo::new();
    repo.add("echo", "1.0.0", "");
    let bad = repo.path().join("broken/1.0.0");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("weights.bin"), b"tampered").unwrap();
    std::fs::write(
        bad.join("anya.yaml"),
        format!(
            "id: broken\nversion: 1.0.0\ntask: echo\nformat: none\nmax_input_length: 8\nfiles:\n  - path: weights.bin\n    sha256: {}\n",
            "0".repeat(64)
        ),
    )
    .unwrap();
    // A second version of a serving model, failing its hash check at start: not the one that
    // takes traffic, but /ready still stays 503 for it (the README's rule).
    let bad2 = repo.path().join("echo/0.9.0");
    std::fs::create_dir_all(&bad2).unwrap();
    std::fs::write(bad2.join("weights.bin"), b"tampered").unwrap();
    std::fs::write(
        bad2.join("anya.yaml"),
        format!(
            "id: echo\nversion: 0.9.0\ntask: echo\nformat: none\nmax_input_length: 8\nfiles:\n  - path: weights.bin\n    sha256: {}\n",
            "0".repeat(64)
        ),
    )
    .unwrap();
    let srv = start(settings(repo.path()), &[]).await;
    srv.wait_settled(10).await;
    let (_, b) = srv.get("/models/broken").await;
    assert_eq!(b["versions"][0]["state"], "failed", "{b}");
    assert!(
        b["versions"][0]["error"]
            .as_str()
            .unwrap()
            .contains("sha256 mismatch"),
        "{b}"
    );
    let (s, _, b) = srv
        .post("/models/broken/predict", json!({"inputs": [1]}))
        .await;
    assert_eq!(s, 503);
    assert_envelope(&b, "service_unavailable");
    let (s, _, _) = srv
        .post("/models/echo/predict", json!({"inputs": [1]}))
        .await;
    assert_eq!(s, 200, "the good model still serves");
    let (s, b) = srv.get("/ready").await;
    assert_eq!(s, 503, "a failed model keeps the server out of rotation");
    assert!(
        b["error"]["details"]["issue"]
            .as_str()
            .unwrap()
            .contains("broken@1.0.0"),
        "{b}"
    );
    assert!(
        b["error"]["details"]["issue"]
            .as_str()
            .unwrap()
            .contains("echo@0.9.0"),
        "{b}"
    );
    // Still 503 once the start is long past (the rule does not lapse).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (s, b) = srv.get("/ready").await;
    assert_eq!(s, 503, "{b}");
    let (s, _) = srv.get("/health").await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn a_manifest_path_escaping_the_repository_is_refused() {
    let repo = EchoRepo::new();
    repo.add("echo", "1.0.0", "");
    repo.add(
        "sneaky",
        "1.0.0",
        &format!(
            "files:\n  - path: ../../../etc/passwd\n    sha256: {}\n",
            "0".repeat(64)
        ),
    );
    let srv = start(settings(repo.path()), &[]).await;
    srv.wait_ready(10).await;
    let (s, _) = srv.get("/models/sneaky").await;
    assert_eq!(s, 404, "the unsafe manifest is not registered at all");
}

#[tokio::test]
async fn ready_settles_at_200_and_names_the_models() {
    let repo = EchoRepo::new();
    repo.add("echo", "1.0.0", "");
    let srv = start(settings(repo.path()), &[]).await;
    // An echo model loads in microseconds, so a first probe could be either answer; 503 while
    // loading is covered by the registry's unit test (`resolve_reports_state`) and by
    // `a_model_with_a_bad_hash_is_refused_and_others_still_serve`.
    srv.wait_ready(10).await;
    let (s, b) = srv.get("/ready").await;
    assert_eq!(s, 200);
    assert_eq!(b["models"], json!(["echo@1.0.0"]));
}

#[tokio::test]
async fn concurrent_requests_are_batched() {
    let batching = "batching:\n  max_batch_size: 4\n  max_batch_tokens: 100\n  max_queue_delay_ms: 50\n  queue_capacity: 64\n";
    let (_repo, srv) = echo_server(batching).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let c = srv.client.clone();
        let url = srv.url("/models/echo/predict");
        tasks.push(tokio::spawn(async move {
            let r = c
                .post(url)
                .json(&json!({"inputs": [i]}))
                .send()
                .await
                .unwrap();
            split(r).await.2
        }));
    }
    let mut sizes = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let b = t.await.unwrap();
        assert_eq!(b["outputs"], json!([i]), "each client gets its own answer");
        sizes.push(b["metadata"]["batch_size"].as_u64().unwrap());
    }
    assert!(sizes.iter().all(|&s| s <= 4), "{sizes:?}");
    assert!(sizes.iter().any(|&s| s > 1), "no batching seen: {sizes:?}");
}

// The serving core in process, without HTTP: what every protocol adapter relies on.

mod core_in_process {
    use std::sync::Arc;
    use std::time::Duration;

    use anya::services::Services;
    use anya::serving::{Caller, Core, Input, ServeRequest, StreamItem};
    use serde_json::{json, Map, Value};

    use super::common::{settings, EchoRepo};

    /// The services over an echo repository, every model loaded.
    async fn core(repo: &EchoRepo) -> (Arc<Services>, Arc<Core>) {
        let st = settings(repo.path());
        let sources = anya::server::select_sources(&st, &[]).expect("sources");
        let registry = Arc::new(anya::registry::Registry::new());
        for s in &sources {
            registry.register(s).expect("registered");
        }
        let services = Arc::new(
            Services::build(st, registry, |core, settings| {
                anya::http::batches::openai_executor(core, settings)
            })
            .expect("services"),
        );
        let core = services.core.clone();
        for s in &sources {
            assert!(core.load_source(s).await, "{s:?} loads");
        }
        (services, core)
    }

    fn request(model: &str, inputs: Vec<Value>, delay_ms: u64) -> ServeRequest {
        let mut params = Map::new();
        params.insert("delay_ms".into(), json!(delay_ms));
        ServeRequest {
            model: model.into(),
            version: None,
            inputs: inputs.into_iter().map(Input::from_json).collect(),
            params,
            cache: false,
            logprobs: None,
            headers: Default::default(),
            user: None,
            background: false,
        }
    }

    fn echo_repo() -> EchoRepo {
        let repo = EchoRepo::new();
        let echo = super::common::DELAY_PARAM;
        repo.add("echo", "1.0.0", echo);
        repo.add(
            "busy",
            "1.0.0",
            &format!(
                "{echo}batching: {{max_batch_size: 1, queue_capacity: 1}}\nfallbacks: [spare]\n"
            ),
        );
        repo.add("spare", "1.0.0", echo);
        repo
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn infer_answers_every_input_in_order_and_names_its_version() {
        let repo = echo_repo();
        let (_services, core) = core(&repo).await;
        let inputs = vec![json!({"a": 1}), json!("two"), json!([3])];
        let (label, answer) = core
            .infer(Caller::default(), request("echo", inputs.clone(), 0))
            .await;
        let answer = answer.expect("answered");
        assert_eq!(label.expect("a label").model, "echo");
        assert_eq!(
            (answer.model.as_str(), answer.version.as_str()),
            ("echo", "1.0.0")
        );
        let outputs: Vec<Value> = answer
            .items
            .iter()
            .map(|i| match i {
                anya::serving::Item::Value(v) => v.clone(),
                other => panic!("an echo answers values: {other:?}"),
            })
            .collect();
        assert_eq!(outputs, inputs);
        // Too many inputs is the caller's error, named by its field.
        let (_, bad) = core
            .infer(Caller::default(), request("echo", vec![json!(1); 5], 0))
            .await;
        let e = bad.expect_err("too many inputs");
        assert_eq!(e.status(), 413, "{e:?}");
        assert_eq!(e.details.field.as_deref(), Some("inputs"), "{e:?}");
        let (_, missing) = core
            .infer(Caller::default(), request("nope", vec![json!(1)], 0))
            .await;
        assert_eq!(missing.expect_err("no such model").status(), 404);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn infer_stream_ends_with_the_whole_answer() {
        let repo = echo_repo();
        let (_services, core) = core(&repo).await;
        let (_, stream) = core
            .infer_stream(Caller::default(), request("echo", vec![json!("x")], 0))
            .await;
        let mut stream = stream.expect("a stream");
        let mut done = None;
        while let Some(item) = stream.next().await {
            match item {
                StreamItem::Delta { .. } => {}
                StreamItem::Done(a) => done = Some(a),
                StreamItem::Error(e) => panic!("{e:?}"),
            }
        }
        let answer = done.expect("a Done item");
        assert_eq!(answer.items.len(), 1);
        assert!(stream.next().await.is_none(), "nothing after the end");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_model_falls_back_to_its_spare() {
        let repo = echo_repo();
        let (_services, core) = core(&repo).await;
        // One running and one queued fill `busy`; the rest go to `spare`.
        let calls = (0..4).map(|i| {
            let core = core.clone();
            async move {
                core.infer(Caller::default(), request("busy", vec![json!(i)], 300))
                    .await
                    .1
            }
        });
        let answers: Vec<_> = futures::future::join_all(calls).await;
        let mut by = Vec::new();
        for a in answers {
            let a = a.expect("every request is answered, by one or the other");
            by.push(a.route.served_by.clone());
            if a.route.served_by.starts_with("spare@") {
                assert_eq!(
                    a.route.fallback_from.as_deref(),
                    Some("busy"),
                    "{:?}",
                    a.route
                );
            }
        }
        assert!(by.iter().any(|b| b.starts_with("busy@")), "{by:?}");
        assert!(by.iter().any(|b| b.starts_with("spare@")), "{by:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_stream_closes_its_books_once_and_frees_the_model() {
        let repo = echo_repo();
        let (services, core) = core(&repo).await;
        let (_, stream) = core
            .infer_stream(Caller::default(), request("echo", vec![json!(1)], 300))
            .await;
        drop(stream.expect("a stream"));
        // The books: one request, recorded when the stream was dropped.
        let hourly = anya::usage::Period::parse("hourly").unwrap();
        let w = services
            .usage
            .model_window("echo", hourly, None, anya::usage::now_unix());
        assert_eq!(w.requests_count, 1, "{w:?}");
        // The model goes on serving.
        let (_, next) = tokio::time::timeout(
            Duration::from_secs(10),
            core.infer(Caller::default(), request("echo", vec![json!(2)], 0)),
        )
        .await
        .expect("answered in time");
        next.expect("answered");
        let w = services
            .usage
            .model_window("echo", hourly, None, anya::usage::now_unix());
        assert_eq!(
            w.requests_count, 1,
            "infer books through its caller's ticket: {w:?}"
        );
    }
}
