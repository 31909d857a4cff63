//! Batch jobs: the official `openai` SDK runs batches on both real models (outputs equal the
//! direct requests); a 10,000-input embedding job survives `kill -9` of its server and ends with
//! exactly one result per input, each equal to the direct answer; webhooks are signed (checked
//! with Standard Webhooks' own Python library), retried after 500s, and refused for private
//! addresses; jobs belong to their owner; quotas and cancellation hold.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anya::auth::{mint_hs256, MintRequest};
use common::*;
use serde_json::{json, Value};

/// The venv Python (`.ci/run` makes it) with the SDK and `standardwebhooks`.
fn python(module: &str) -> Option<PathBuf> {
    let p = std::env::var_os("ANYA_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/venv/bin/python")
        });
    let ok = Command::new(&p)
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(p);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "`{module}` is missing in {}: .ci/run installs it",
            p.display()
        );
    }
    eprintln!(
        "\n*** SKIPPING: no Python with `{module}` ({}) ***\n",
        p.display()
    );
    None
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sdk")
        .join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_runs_batches_on_both_real_models() {
    let Some(models) = real_models() else {
        return;
    };
    let Some(python) = python("openai") else {
        return;
    };
    let jobs = tempfile::tempdir().unwrap();
    let mut st = settings(&models);
    // Direct answers must be computed, not read back from the batch's cache entries.
    st.cache.enabled = false;
    st.model.warmup = false;
    st.jobs.dir = Some(jobs.path().to_path_buf());
    let server = start(st, &[]).await;
    server.wait_ready(180).await;
    let base = server.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script("batch_sdk.py"))
            .arg(base)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "the SDK script failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("checks passed"), "{stdout}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `anya serve` in its own process (so it can be killed with SIGKILL), embedding model only.
fn serve(models: &Path, config: &Path, port: u16) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_anya"));
    for (k, _) in std::env::vars() {
        if k.starts_with("ANYA__") {
            c.env_remove(k);
        }
    }
    c.args(["serve", "--config"])
        .arg(config)
        .args(["--models-dir"])
        .arg(models)
        .args(["--model", "all-minilm-l6-v2", "--port", &port.to_string()])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start anya serve")
}

async fn wait_ready(client: &reqwest::Client, base: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Ok(r) = client.get(format!("{base}/ready")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{base} never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn get_json(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = client.get(url).send().await.expect("GET");
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_survives_kill_9_and_ends_with_exactly_one_result_per_input() {
    let Some(models) = real_models() else {
        return;
    };
    const N: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("anya.yaml");
    std::fs::write(
        &config,
        format!(
            "model:\n  device: cpu\n  warmup: false\nserver:\n  request_timeout_ms: 300000\ncache:\n  enabled: false\njobs:\n  dir: {}\n",
            dir.path().join("jobs").display()
        ),
    )
    .unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = serve(&models, &config, port);
    wait_ready(&client, &base, 180).await;

    // A bad input is refused up front, naming its index, and nothing is stored.
    let r = client
        .post(format!("{base}/jobs"))
        .json(&json!({"model": "all-minilm-l6-v2", "inputs": ["a", "b", 7, "d"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["details"]["field"], "inputs[2]", "{e}");
    let (_, list) = get_json(&client, &format!("{base}/jobs")).await;
    assert_eq!(list["data"], json!([]), "{list}");

    let texts: Vec<String> = (0..N)
        .map(|i| format!("item {i} of set {}", i % 97))
        .collect();
    let r = client
        .post(format!("{base}/jobs"))
        .json(&json!({"model": "all-minilm-l6-v2", "inputs": texts}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let job: Value = r.json().await.unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    assert_eq!(job["counts"]["total"], N);

    // Kill -9 once a good part is done.
    let killed_at = loop {
        let (_, j) = get_json(&client, &format!("{base}/jobs/{id}")).await;
        let done = j["counts"]["completed"].as_u64().unwrap();
        if done >= 2_000 {
            assert!(done < N as u64, "the job ended before the kill: {j}");
            break done;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    eprintln!("killed with {killed_at} of {N} done");

    let mut child = serve(&models, &config, port);
    wait_ready(&client, &base, 180).await;
    let started = Instant::now();
    let job = loop {
        let (s, j) = get_json(&client, &format!("{base}/jobs/{id}")).await;
        assert_eq!(s, 200, "{j}");
        if j["status"] == "completed" {
            break j;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "the resumed job never finished: {j}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "resumed and finished in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(job["counts"]["completed"], N, "{job}");
    assert_eq!(job["counts"]["failed"], 0, "{job}");
    assert!(
        job["counts"]["completed"].as_u64().unwrap() > killed_at,
        "{job}"
    );

    // Exactly one line per input, in input order, each equal to the direct answer.
    let r = client
        .get(format!("{base}/jobs/{id}/results"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let text = r.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), N);
    let mut worst = 0f64;
    for (chunk_no, chunk) in texts.chunks(32).enumerate() {
        let (s, direct) = {
            let r = client
                .post(format!("{base}/models/all-minilm-l6-v2/predict"))
                .json(&json!({"inputs": chunk, "parameters": {"cache": false}}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        };
        assert_eq!(s, 200, "{direct}");
        for (k, want) in direct["outputs"].as_array().unwrap().iter().enumerate() {
            let i = chunk_no * 32 + k;
            assert_eq!(lines[i]["index"], i, "{}", lines[i]);
            let (a, b) = (floats(&lines[i]["output"]), floats(want));
            assert_eq!(a.len(), b.len());
            let d = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f64, f64::max);
            worst = worst.max(d);
        }
    }
    eprintln!("largest difference from the direct answers: {worst:.2e}");
    assert!(worst <= 1e-5, "{worst}");
    child.kill().unwrap();
    child.wait().unwrap();
}

const SECRET: &str = "jobs-test-secret-0123456789";
const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn token(sub: &str) -> String {
    mint_hs256(
        SECRET.as_bytes(),
        &MintRequest {
            sub: sub.into(),
            scopes: vec!["predict".into()],
            ttl_s: 600,
            ..Default::default()
        },
        None,
        None,
    )
    .unwrap()
}

/// The receiver: its port, and the file it logs each request to.
fn receiver(python: &Path, failures: u32, log: &Path) -> (Child, u16) {
    let mut child = Command::new(python)
        .arg(script("webhook_receiver.py"))
        .args([WHSEC, &failures.to_string()])
        .arg(log)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the webhook receiver");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let port = first
        .trim()
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the receiver said {first:?}"));
    (child, port)
}

async fn call(
    s: &TestServer,
    method: reqwest::Method,
    path: &str,
    tok: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = s.client.request(method, s.url(path)).bearer_auth(tok);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn wait_job(s: &TestServer, tok: &str, id: &str, until: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (st, j) = call(s, reqwest::Method::GET, &format!("/jobs/{id}"), tok, None).await;
        assert_eq!(st, 200, "{j}");
        if until(&j) {
            return j;
        }
        assert!(Instant::now() < deadline, "job {id} stuck: {j}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_retried_and_guarded_and_jobs_belong_to_their_owner() {
    let Some(python) = python("standardwebhooks") else {
        return;
    };
    let repo = EchoRepo::new();
    repo.add("echo", "1.0.0", DELAY_PARAM);
    let keys = tempfile::tempdir().unwrap();
    std::fs::write(keys.path().join("secret"), SECRET).unwrap();
    let mut st = settings(repo.path());
    st.security.auth_required = true;
    st.security.jwt_secret_file = Some(keys.path().join("secret"));
    st.jobs.webhook_secrets = vec![WHSEC.into()];
    st.jobs.webhook_allowed_hosts = vec!["127.0.0.1".into()];
    st.jobs.webhook_retry_delays_ms = vec![100, 200, 300];
    st.jobs.max_active_per_principal = 2;
    st.jobs.chunk = 4;
    let s = start(st, &[]).await;
    s.wait_ready(60).await;
    let (alice, bob) = (token("alice"), token("bob"));
    let log = keys.path().join("hooks.jsonl");
    let (mut rx, port) = receiver(&python, 2, &log);
    let post = reqwest::Method::POST;
    let get = reqwest::Method::GET;

    // A job with a webhook: results equal the inputs (echo), the receiver answers 500 twice.
    let inputs: Vec<Value> = (0..50).map(|i| json!({"n": i})).collect();
    let hook = format!("http://127.0.0.1:{port}/hook");
    let (st, job) = call(
        &s,
        post.clone(),
        "/jobs",
        &alice,
        Some(json!({"model": "echo", "inputs": inputs, "webhook": hook})),
    )
    .await;
    assert_eq!(st, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("job_") && id.len() > 30, "{id}");
    let done = wait_job(&s, &alice, &id, |j| {
        j["webhook"]["state"] != "pending" && j["status"] == "completed"
    })
    .await;
    assert_eq!(
        done["counts"],
        json!({"total": 50, "completed": 50, "failed": 0})
    );
    assert_eq!(done["webhook"]["state"], "delivered", "{done}");
    let statuses: Vec<Value> = done["webhook"]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].clone())
        .collect();
    assert_eq!(statuses, [json!(500), json!(500), json!(204)], "{done}");
    let seen: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(seen.len(), 3, "{seen:?}");
    for e in &seen {
        assert_eq!(e["verified"], true, "standardwebhooks refused it: {e}");
        assert_eq!(e["webhook_id"], seen[0]["webhook_id"], "one message id");
        assert_eq!(e["payload"]["type"], "job.completed");
        assert_eq!(e["payload"]["data"]["id"], id);
        assert_eq!(e["payload"]["data"]["counts"]["completed"], 50);
    }
    let r = s
        .client
        .get(s.url(&format!("/jobs/{id}/results")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    let lines: Vec<Value> = r
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 50);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l, &json!({"index": i, "output": {"n": i}}));
    }

    // Ownership: bob sees none of alice's jobs.
    let (st, _) = call(&s, get.clone(), &format!("/jobs/{id}"), &bob, None).await;
    assert_eq!(st, 404);
    let (st, _) = call(&s, get.clone(), &format!("/jobs/{id}/results"), &bob, None).await;
    assert_eq!(st, 404);
    let (_, list) = call(&s, get.clone(), "/jobs", &bob, None).await;
    assert_eq!(list["data"], json!([]));
    let (_, list) = call(&s, get.clone(), "/jobs", &alice, None).await;
    assert_eq!(list["data"][0]["id"], id);

    // A missing file or batch is OpenAI's `No such File object` (code null, param id), never
    // `model_not_found`; nor is an unknown /v1 route. A missing model still is.
    let alice_job = format!("/v1/batches/{id}/cancel");
    let no_file = json!({"input_file_id": "file-abc", "endpoint": "/v1/embeddings",
                         "completion_window": "24h"});
    for (method, path, missing, param, body) in [
        (
            &get,
            "/v1/files/file-abc",
            "File object: file-abc",
            "id",
            None,
        ),
        (
            &get,
            "/v1/files/file-abc/content",
            "File object: file-abc",
            "id",
            None,
        ),
        (
            &get,
            "/v1/files/file-batch_x-output",
            "File object: file-batch_x-output",
            "id",
            None,
        ),
        (
            &get,
            "/v1/batches/batch_abc",
            "Batch object: batch_abc",
            "id",
            None,
        ),
        (
            &post,
            "/v1/batches/batch_abc/cancel",
            "Batch object: batch_abc",
            "id",
            None,
        ),
        (
            &post,
            &alice_job,
            &format!("Batch object: {id}"),
            "id",
            None,
        ),
        (
            &post,
            "/v1/batches",
            "File object: file-abc",
            "input_file_id",
            Some(no_file),
        ),
    ] {
        let (st, e) = call(&s, method.clone(), path, &bob, body).await;
        assert_eq!(st, 404, "{path}: {e}");
        assert_eq!(
            e,
            json!({"error": {"message": format!("No such {missing}"),
                             "type": "invalid_request_error", "param": param, "code": null}}),
            "{path}"
        );
    }
    let (st, e) = call(&s, get.clone(), "/v1/nope", &bob, None).await;
    assert_eq!(st, 404, "{e}");
    assert_eq!(e["error"]["code"], Value::Null, "{e}");
    let (st, e) = call(
        &s,
        post.clone(),
        "/v1/embeddings",
        &bob,
        Some(json!({"model": "nope", "input": "x"})),
    )
    .await;
    assert_eq!(st, 404, "{e}");
    assert_eq!(e["error"]["code"], "model_not_found", "{e}");

    // SSRF guard: private and metadata addresses are refused before anything is stored...
    for bad in [
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:9/hook",
        "file:///etc/passwd",
    ] {
        let (st, e) = call(
            &s,
            post.clone(),
            "/jobs",
            &bob,
            Some(json!({"model": "echo", "inputs": [1], "webhook": bad})),
        )
        .await;
        assert_eq!(st, 400, "{bad}: {e}");
        assert_eq!(e["error"]["details"]["field"], "webhook", "{e}");
    }
    let (_, list) = call(&s, get.clone(), "/jobs", &bob, None).await;
    assert_eq!(list["data"], json!([]), "nothing stored");

    // A name outside the allowed hosts is refused too (without an allow-list, one that resolves
    // to a private address is refused at submission and again at connect time: see the unit
    // tests in `jobs::webhook`).
    let (st, job) = call(
        &s,
        post.clone(),
        "/jobs",
        &bob,
        Some(json!({"model": "echo", "inputs": [1],
                    "webhook": format!("http://localhost:{port}/hook")})),
    )
    .await;
    assert_eq!(st, 400, "localhost is not listed: {job}");
    // Without an allow-list, a host *name* is resolved at submission: `localhost` resolves to
    // loopback, so the job is refused before anything is stored (not only at delivery).
    {
        let mut open = settings(repo.path());
        open.jobs.webhook_secrets = vec![WHSEC.into()];
        let o = start(open, &[]).await;
        o.wait_ready(60).await;
        let r = o
            .client
            .post(o.url("/jobs"))
            .json(&json!({"model": "echo", "inputs": [1],
                          "webhook": format!("http://localhost:{port}/hook")}))
            .send()
            .await
            .unwrap();
        let st = r.status().as_u16();
        let e: Value = r.json().await.unwrap();
        assert_eq!(st, 400, "a name resolving to loopback was accepted: {e}");
        assert_eq!(e["error"]["details"]["field"], "webhook", "{e}");
        let list: Value = o
            .client
            .get(o.url("/jobs"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(list["data"], json!([]), "nothing stored: {list}");
    }

    // Quota and cancellation: two slow jobs run, a third is refused; cancelling one stops it.
    let slow = json!({"model": "echo", "inputs": (0..400).collect::<Vec<_>>(),
                      "parameters": {"delay_ms": 20}});
    let (st, a) = call(&s, post.clone(), "/jobs", &bob, Some(slow.clone())).await;
    assert_eq!(st, 202, "{a}");
    let (st, b) = call(&s, post.clone(), "/jobs", &bob, Some(slow.clone())).await;
    assert_eq!(st, 202, "{b}");
    let (st, e) = call(&s, post.clone(), "/jobs", &bob, Some(slow.clone())).await;
    assert_eq!(st, 429, "{e}");
    let a = a["id"].as_str().unwrap();
    wait_job(&s, &bob, a, |j| j["counts"]["completed"].as_u64() > Some(0)).await;
    let (st, c) = call(&s, post.clone(), &format!("/jobs/{a}/cancel"), &bob, None).await;
    assert_eq!(st, 200, "{c}");
    let c = wait_job(&s, &bob, a, |j| j["status"] == "cancelled").await;
    let done = c["counts"]["completed"].as_u64().unwrap();
    assert!(done > 0 && done < 400, "{c}");
    let (st, _) = call(&s, post.clone(), &format!("/jobs/{a}/cancel"), &alice, None).await;
    assert_eq!(st, 404, "alice cannot cancel bob's job");
    let b = b["id"].as_str().unwrap();
    call(&s, post.clone(), &format!("/jobs/{b}/cancel"), &bob, None).await;
    wait_job(&s, &bob, b, |j| j["status"] == "cancelled").await;
    let _ = rx.kill();
    let _ = rx.wait();
}

/// Percentile (0..=100) of sorted values.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// 8 clients sending one sentence each, back to back, for `secs`: sorted latencies (ms).
async fn interactive(base: &str, secs: u64) -> Vec<f64> {
    let client = reqwest::Client::new();
    let until = Instant::now() + Duration::from_secs(secs);
    let tasks = (0..8).map(|c| {
        let (client, base) = (client.clone(), base.to_string());
        tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut n = 0;
            while Instant::now() < until {
                n += 1;
                let t = Instant::now();
                let r = client
                    .post(format!("{base}/models/all-minilm-l6-v2/predict"))
                    .json(
                        &json!({"inputs": [format!("client {c} asks question {n} today")],
                                  "parameters": {"cache": false}}),
                    )
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                let _ = r.bytes().await;
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
            lat
        })
    });
    let mut all: Vec<f64> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .flat_map(|r| r.unwrap())
        .collect();
    all.sort_by(f64::total_cmp);
    all
}

/// Interactive p50/p99 at c=8 alone, beside a large embedding job (background lane), and beside
/// the same inputs sent through the native API (32 per request, 2 at once); the job's and the
/// native API's inputs/s under that load. A measurement, not a check:
/// `cargo test --release --test jobs -- --ignored --nocapture bench`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_interactive_latency_beside_a_large_job() {
    let Some(models) = real_models() else {
        return;
    };
    let mut st = settings(&models);
    st.cache.enabled = false;
    st.model.warmup = true;
    let server = start(st, &["all-minilm-l6-v2"]).await;
    server.wait_ready(180).await;
    let base = server.base.clone();
    const SECS: u64 = 20;
    let texts: Vec<String> = (0..50_000)
        .map(|i| format!("document {i} talks about subject {} at length", i % 211))
        .collect();
    interactive(&base, 3).await; // warm up

    let alone = interactive(&base, SECS).await;

    let (st, _, job) = server
        .post(
            "/jobs",
            json!({"model": "all-minilm-l6-v2", "inputs": texts,
                              "parameters": {"cache": false}}),
        )
        .await;
    assert_eq!(st, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let count = |s: &TestServer, id: String| {
        let c = s.client.clone();
        let url = s.url(&format!("/jobs/{id}"));
        async move {
            let j: Value = c.get(url).send().await.unwrap().json().await.unwrap();
            j["counts"]["completed"].as_u64().unwrap()
        }
    };
    let before = count(&server, id.clone()).await;
    let t = Instant::now();
    let with_job = interactive(&base, SECS).await;
    let job_rate = (count(&server, id.clone()).await - before) as f64 / t.elapsed().as_secs_f64();
    // The job alone: once interactive traffic has been quiet for a second, full batches.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = count(&server, id.clone()).await;
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let job_alone = (count(&server, id.clone()).await - before) as f64 / t.elapsed().as_secs_f64();
    server
        .client
        .post(server.url(&format!("/jobs/{id}/cancel")))
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The same inputs through the native API, 32 per request, 2 requests at once.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let feeders: Vec<_> = (0..2)
        .map(|f| {
            let (c, url, stop, sent) = (
                server.client.clone(),
                server.url("/models/all-minilm-l6-v2/predict"),
                stop.clone(),
                sent.clone(),
            );
            let texts = texts.clone();
            tokio::spawn(async move {
                let mut k = f;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let chunk = &texts[(k * 32) % 49_000..(k * 32) % 49_000 + 32];
                    let r = c
                        .post(&url)
                        .json(&json!({"inputs": chunk, "parameters": {"cache": false}}))
                        .send()
                        .await
                        .unwrap();
                    if r.status() == 200 {
                        sent.fetch_add(32, std::sync::atomic::Ordering::Relaxed);
                    }
                    let _ = r.bytes().await;
                    k += 2;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = sent.load(std::sync::atomic::Ordering::Relaxed);
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let native_alone = (sent.load(std::sync::atomic::Ordering::Relaxed) - before) as f64
        / t.elapsed().as_secs_f64();
    let before = sent.load(std::sync::atomic::Ordering::Relaxed);
    let t = Instant::now();
    let with_native = interactive(&base, SECS).await;
    let native_rate = (sent.load(std::sync::atomic::Ordering::Relaxed) - before) as f64
        / t.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for f in feeders {
        let _ = f.await;
    }

    let row = |name: &str, l: &[f64]| {
        eprintln!(
            "{name:<34} p50 {:>7.1} ms  p99 {:>7.1} ms  ({} requests, {:.1}/s)",
            pct(l, 50.0),
            pct(l, 99.0),
            l.len(),
            l.len() as f64 / SECS as f64
        )
    };
    eprintln!("\ninteractive: 8 clients, 1 sentence per request, {SECS} s each");
    row("alone", &alone);
    row("beside a 50,000-input job", &with_job);
    row("beside native 32-input requests x2", &with_native);
    eprintln!(
        "job: {job_rate:.1} inputs/s beside the clients, {job_alone:.1} alone; \
         native API (32/request, 2 at once): {native_rate:.1} beside the clients, {native_alone:.1} alone"
    );
    eprintln!(
        "p99 ratio beside the job / alone: {:.2}; beside native requests / alone: {:.2}",
        pct(&with_job, 99.0) / pct(&alone, 99.0),
        pct(&with_native, 99.0) / pct(&alone, 99.0)
    );
}

/// A repository with the real SmolLM2 model (its weights hard-linked) and prices in its manifest.
fn priced_generation_repo(models: &Path) -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    let from = models.join("smollm2-135m-instruct/1.0.0");
    let to = repo.path().join("smollm2-135m-instruct/1.0.0");
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "anya.yaml" {
            let manifest = std::fs::read_to_string(entry.path()).unwrap();
            let priced = format!(
                "{manifest}\npricing:\n  per_request: 0.5\n  per_1k_input_tokens: 2.0\n  per_1k_output_tokens: 4.0\n"
            );
            std::fs::write(to.join(name), priced).unwrap();
        } else {
            // The loader refuses symlinks out of a version folder: a hard link, else a copy.
            if std::fs::hard_link(entry.path(), to.join(&name)).is_err() {
                std::fs::copy(entry.path(), to.join(&name)).unwrap();
            }
        }
    }
    repo
}

fn usage_row(u: &Value) -> Value {
    let rows = u["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{u}");
    rows[0].clone()
}

/// Issue 31: a job's inferences are booked like any request's. An OpenAI batch's tokens and cost
/// in `/usage` equal the sum of its answers' own `usage`; a native job's equal those of the same
/// inputs sent directly; the model's window counts both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_tokens_and_cost_reach_usage() {
    let Some(models) = real_models() else {
        return;
    };
    let repo = priced_generation_repo(&models);
    let keys = tempfile::tempdir().unwrap();
    std::fs::write(keys.path().join("secret"), SECRET).unwrap();
    let mut st = settings(repo.path());
    st.cache.enabled = false;
    st.model.warmup = false;
    st.security.auth_required = true;
    st.security.jwt_secret_file = Some(keys.path().join("secret"));
    let s = start(st, &[]).await;
    s.wait_ready(180).await;
    let model = "smollm2-135m-instruct";
    let (batcher, jobber, direct) = (token("batcher"), token("jobber"), token("direct"));

    // An OpenAI batch of three chat requests.
    let lines: String = (0..3)
        .map(|i| {
            let line = json!({"custom_id": format!("c{i}"), "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": model, "max_tokens": 6 + i, "temperature": 0,
                         "messages": [{"role": "user", "content": format!("Count to {}", i + 3)}]}});
            format!("{line}\n")
        })
        .collect();
    let boundary = "anyaUsageBoundary";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"b.jsonl\"\r\n\
         Content-Type: application/jsonl\r\n\r\n{lines}\r\n--{boundary}--\r\n"
    );
    let r = s
        .client
        .post(s.url("/v1/files"))
        .bearer_auth(&batcher)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let file: Value = r.json().await.unwrap();
    let (st, batch) = call(
        &s,
        reqwest::Method::POST,
        "/v1/batches",
        &batcher,
        Some(
            json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions",
                    "completion_window": "24h"}),
        ),
    )
    .await;
    assert_eq!(st, 200, "{batch}");
    let path = format!("/v1/batches/{}", batch["id"].as_str().unwrap());
    let deadline = Instant::now() + Duration::from_secs(180);
    let batch = loop {
        let (_, b) = call(&s, reqwest::Method::GET, &path, &batcher, None).await;
        if b["status"] == "completed" {
            break b;
        }
        assert!(Instant::now() < deadline, "batch stuck: {b}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let out = s
        .client
        .get(s.url(&format!(
            "/v1/files/{}/content",
            batch["output_file_id"].as_str().unwrap()
        )))
        .bearer_auth(&batcher)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (mut prompt, mut completion) = (0u64, 0u64);
    for line in out.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["response"]["status_code"], 200, "{v}");
        prompt += v["response"]["body"]["usage"]["prompt_tokens"]
            .as_u64()
            .unwrap();
        completion += v["response"]["body"]["usage"]["completion_tokens"]
            .as_u64()
            .unwrap();
    }
    assert!(prompt > 0 && completion > 0, "{out}");
    let (st, u) = call(&s, reqwest::Method::GET, "/usage", &batcher, None).await;
    assert_eq!(st, 200, "{u}");
    let row = usage_row(&u);
    assert_eq!(row["key"], model, "{u}");
    assert_eq!(row["requests"], 3, "{u}");
    assert_eq!(row["tokens_input"], prompt, "{u}");
    assert_eq!(row["tokens_output"], completion, "{u}");
    let cost = 3.0 * 0.5 + 2.0 * prompt as f64 / 1e3 + 4.0 * completion as f64 / 1e3;
    let booked = row["estimated_cost"].as_f64().unwrap();
    assert!((booked - cost).abs() < 1e-9, "{booked} != {cost}: {u}");

    // A native job of three prompts, and the same prompts sent directly.
    let inputs = json!(["The sky is", "Two plus two is", "Once upon a time"]);
    let params = json!({"max_tokens": 5, "temperature": 0});
    let (st, job) = call(
        &s,
        reqwest::Method::POST,
        "/jobs",
        &jobber,
        Some(json!({"model": model, "inputs": inputs, "parameters": params})),
    )
    .await;
    assert_eq!(st, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    wait_job(&s, &jobber, &id, |j| j["status"] == "completed").await;
    let (st, answer) = call(
        &s,
        reqwest::Method::POST,
        &format!("/models/{model}/predict"),
        &direct,
        Some(json!({"inputs": inputs, "parameters": params})),
    )
    .await;
    assert_eq!(st, 200, "{answer}");
    let (_, by_job) = call(&s, reqwest::Method::GET, "/usage", &jobber, None).await;
    let (_, by_hand) = call(&s, reqwest::Method::GET, "/usage", &direct, None).await;
    let (job_row, hand_row) = (usage_row(&by_job), usage_row(&by_hand));
    for k in ["tokens_input", "tokens_output", "estimated_cost"] {
        assert_eq!(
            job_row[k], hand_row[k],
            "{k}: job {by_job} vs direct {by_hand}"
        );
    }
    assert!(job_row["tokens_output"].as_u64().unwrap() > 0, "{by_job}");
    assert_eq!(
        hand_row["tokens_input"], answer["metadata"]["tokens_processed"],
        "{answer}"
    );
}
