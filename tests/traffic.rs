//! Model lifecycle and traffic on the real server: weighted split and sticky A/B, a swap under
//! load with no failed request, canary analysis rolling back a failing version and promoting a
//! healthy one, shadow traffic, repository polling (a folder copied file by file, a tampered
//! one), and the real embedding model served as two versions.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const FAIL_PARAM: &str =
    "  - name: fail_rate\n    type: number\n    default: {rate}\n    min: 0\n    max: 1\n";

/// An echo version with `delay_ms` and `fail_rate` (defaulting to `rate`) parameters.
fn echo_with(repo: &EchoRepo, id: &str, version: &str, delay_ms: u64, rate: f64) {
    let params = format!(
        "parameters:\n  - name: delay_ms\n    type: integer\n    default: {delay_ms}\n    min: 0\n    max: 10000\n{}",
        FAIL_PARAM.replace("{rate}", &rate.to_string())
    );
    repo.add(id, version, &params);
}

async fn put(srv: &TestServer, path: &str, body: Value) -> (u16, Value) {
    let r = srv
        .client
        .put(srv.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let (s, _, v) = split(r).await;
    (s, v)
}

async fn delete(srv: &TestServer, path: &str) -> (u16, Value) {
    let r = srv.client.delete(srv.url(path)).send().await.unwrap();
    let (s, _, v) = split(r).await;
    (s, v)
}

/// One native predict; the status and the version that answered (header and body agree).
async fn predict(srv: &TestServer, model: &str, session: Option<&str>) -> (u16, String) {
    let mut req = srv
        .client
        .post(srv.url(&format!("/models/{model}/predict")))
        .json(&json!({"inputs": ["x"]}));
    if let Some(s) = session {
        req = req.header("x-session-id", s);
    }
    let (status, headers, body) = split(req.send().await.unwrap()).await;
    let header = headers
        .get("x-model-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if status == 200 {
        assert_eq!(body["model_version"], header.as_str(), "{body}");
    }
    (status, header)
}

fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>()
        + 0.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_and_sticky_sessions() {
    let repo = EchoRepo::new();
    echo_with(&repo, "m", "1.0.0", 0, 0.0);
    echo_with(&repo, "m", "1.1.0", 0, 0.0);
    let srv = start(settings(repo.path()), &[]).await;
    srv.wait_ready(30).await;

    // Checked like the configuration, naming the field.
    for (body, field) in [
        (
            json!({"routes": [{"version": "1.0.0", "weight": 1}, {"version": "9.9.9", "weight": 1}]}),
            "routes[1].version",
        ),
        (
            json!({"routes": [{"version": "1.0.0", "weight": 0}]}),
            "routes",
        ),
        (
            json!({"routes": [{"version": "1.0.0", "weight": 1}], "stickyy": "x"}),
            "stickyy",
        ),
        (
            json!({"routes": [{"version": "1.0.0", "weight": 1}], "shadow": {"version": "1.1.0", "percent": 101}}),
            "shadow.percent",
        ),
    ] {
        let (s, v) = put(&srv, "/models/m/traffic", body).await;
        assert_eq!(s, 400, "{v}");
        let text = v.to_string();
        assert!(text.contains(field), "{field}: {v}");
    }

    let (s, v) = put(
        &srv,
        "/models/m/traffic",
        json!({"routes": [{"version": "1.0.0", "weight": 90}, {"version": "1.1.0", "weight": 10}]}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (_, versions) = srv.get("/models/m/versions").await;
    let weights: Vec<f64> = versions["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["weight"].as_f64().unwrap())
        .collect();
    assert_eq!(weights, vec![90.0, 10.0]);

    // 2,000 requests: each version's share within ±3 points of its weight.
    let srv = Arc::new(srv);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let srv = srv.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = HashMap::<String, usize>::new();
            for _ in 0..125 {
                let (s, v) = predict(&srv, "m", None).await;
                assert_eq!(s, 200);
                *n.entry(v).or_default() += 1;
            }
            n
        }));
    }
    let mut counts = HashMap::<String, usize>::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *counts.entry(k).or_default() += v;
        }
    }
    let canary = counts.get("1.1.0").copied().unwrap_or(0) as f64 / 2000.0 * 100.0;
    println!("90/10 split over 2,000 requests: {counts:?} ({canary:.1} % on 1.1.0)");
    assert!((7.0..=13.0).contains(&canary), "{counts:?}");

    // Sticky: each of 200 sessions always gets the same version.
    let sticky = |a: u32, b: u32| {
        json!({"routes": [{"version": "1.0.0", "weight": a}, {"version": "1.1.0", "weight": b}],
               "sticky": "x-session-id"})
    };
    assert_eq!(put(&srv, "/models/m/traffic", sticky(90, 10)).await.0, 200);
    let mut first = HashMap::new();
    for i in 0..200 {
        let id = format!("session-{i}");
        let (_, v) = predict(&srv, "m", Some(&id)).await;
        for _ in 0..2 {
            assert_eq!(predict(&srv, "m", Some(&id)).await.1, v, "{id} moved");
        }
        first.insert(id, v);
    }
    // 90/10 → 80/20 moves exactly the sessions whose hash lies in [0.8, 0.9).
    assert_eq!(put(&srv, "/models/m/traffic", sticky(80, 20)).await.0, 200);
    let mut moved = 0;
    for (id, before) in &first {
        let (_, after) = predict(&srv, "m", Some(id)).await;
        let u = anya::traffic::unit_hash(id);
        if (0.8..0.9).contains(&u) {
            assert_eq!(
                (before.as_str(), after.as_str()),
                ("1.0.0", "1.1.0"),
                "{id}"
            );
            moved += 1;
        } else {
            assert_eq!(&after, before, "{id} (hash {u}) should not have moved");
        }
    }
    println!("sticky: 90/10 → 80/20 moved {moved} of 200 sessions, all in the moved band");
    assert!(moved > 0);

    let text = srv.metrics_text().await;
    assert_eq!(
        metric(&text, "anya_ai_traffic_weight", &["version=\"1.1.0\""]),
        20.0
    );
    // A pinned version bypasses the split.
    for _ in 0..20 {
        let (s, h, _) = srv
            .post("/models/m/versions/1.1.0/predict", json!({"inputs": ["x"]}))
            .await;
        assert_eq!((s, h["x-model-version"].to_str().unwrap()), (200, "1.1.0"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_shift_and_unload_under_load_lose_nothing() {
    let repo = EchoRepo::new();
    echo_with(&repo, "m", "1.0.0", 2, 0.0);
    let srv = Arc::new({
        let s = start(settings(repo.path()), &[]).await;
        s.wait_ready(30).await;
        s
    });
    // Not in the repository; the only routed version.
    assert_eq!(
        srv.post("/models/m/versions/3.0.0/load", json!({})).await.0,
        404
    );
    assert_eq!(delete(&srv, "/models/m/versions/1.0.0").await.0, 409);

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let unloaded_at: Arc<std::sync::Mutex<Option<Instant>>> = Default::default();
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (srv, stop, unloaded_at) = (srv.clone(), stop.clone(), unloaded_at.clone());
        clients.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let sent = Instant::now();
                let (s, v) = predict(&srv, "m", None).await;
                let after_unload = unloaded_at.lock().unwrap().is_some_and(|t| sent > t);
                seen.push((s, v, after_unload));
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    echo_with(&repo, "m", "1.1.0", 2, 0.0);
    let (s, v) = {
        let (s, _, v) = srv.post("/models/m/versions/1.1.0/load", json!({})).await;
        (s, v)
    };
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "ready");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (s, v) = put(
        &srv,
        "/models/m/traffic",
        json!({"routes": [{"version": "1.1.0", "weight": 100}]}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (s, v) = delete(&srv, "/models/m/versions/1.0.0").await;
    assert_eq!(s, 200, "{v}");
    *unloaded_at.lock().unwrap() = Some(Instant::now());
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    let mut by_version = HashMap::<String, usize>::new();
    for c in clients {
        for (status, version, after_unload) in c.await.unwrap() {
            total += 1;
            assert_eq!(status, 200, "a request failed during the swap");
            if after_unload {
                assert_eq!(version, "1.1.0", "served by an unloaded version");
            }
            *by_version.entry(version).or_default() += 1;
        }
    }
    println!("swap under load (8 clients, 7 s): {total} requests, all 200: {by_version:?}");
    let (_, versions) = srv.get("/models/m/versions").await;
    let left: Vec<&str> = versions["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert_eq!(left, vec!["1.1.0"]);
    // A pinned request to the unloaded version: 404.
    assert_eq!(
        srv.post("/models/m/versions/1.0.0/predict", json!({"inputs": ["x"]}))
            .await
            .0,
        404
    );
}

/// Send requests to `m` from 4 clients until `until` says stop.
async fn drive(srv: Arc<TestServer>, stop: Arc<std::sync::atomic::AtomicBool>) {
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (srv, stop) = (srv.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = predict(&srv, "m", None).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    for c in clients {
        let _ = c.await;
    }
}

async fn wait_canary(srv: &TestServer, status: &str, secs: u64) -> (Value, Duration) {
    let started = Instant::now();
    loop {
        let (_, v) = srv.get("/models/m/traffic").await;
        if v["canary"]["status"] == status {
            return (v, started.elapsed());
        }
        assert!(
            started.elapsed() < Duration::from_secs(secs),
            "canary not {status}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_analysis_rolls_back_a_failing_version_and_promotes_a_healthy_one() {
    let repo = EchoRepo::new();
    echo_with(&repo, "m", "1.0.0", 0, 0.0);
    echo_with(&repo, "m", "1.1.0", 0, 0.34); // fails a third of its requests
    echo_with(&repo, "m", "1.2.0", 0, 0.0);
    let srv = Arc::new({
        let s = start(settings(repo.path()), &[]).await;
        s.wait_ready(30).await;
        s
    });
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn(drive(srv.clone(), stop.clone()));

    let canary = |v: &str, step: u32| {
        json!({"routes": [{"version": "1.0.0", "weight": 100}],
               "canary": {"version": v, "step_weight": step, "interval_s": 1.0,
                          "max_error_rate": 0.05, "max_p99_ms": 2000, "max_failed_checks": 2,
                          "min_requests": 5}})
    };
    let (s, v) = put(&srv, "/models/m/traffic", canary("1.1.0", 20)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["canary"]["weight"], 20.0);
    let (v, took) = wait_canary(&srv, "rolled_back", 15).await;
    println!(
        "failing canary rolled back after {:.1} s: {}",
        took.as_secs_f64(),
        v["canary"]["history"]
    );
    // Two failed checks, one interval each (plus the checker's 100 ms tick and slack).
    assert!(took < Duration::from_millis(2 * 1000 + 1500), "{took:?}");
    let history = v["canary"]["history"].as_array().unwrap();
    assert_eq!(history.last().unwrap()["verdict"], "rolled_back");
    assert!(history.iter().all(|h| h["verdict"] != "stepped"), "{v}");
    assert_eq!(v["effective"].as_array().unwrap().len(), 1, "{v}");
    let (_, model) = srv.get("/models/m").await;
    assert_eq!(model["default_version"], "1.0.0");

    let (s, _) = put(&srv, "/models/m/traffic", canary("1.2.0", 50)).await;
    assert_eq!(s, 200);
    let (v, took) = wait_canary(&srv, "promoted", 20).await;
    println!(
        "healthy canary promoted after {:.1} s: {}",
        took.as_secs_f64(),
        v["canary"]["history"]
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.await.unwrap();
    let (_, model) = srv.get("/models/m").await;
    assert_eq!(model["default_version"], "1.2.0");
    let text = srv.metrics_text().await;
    assert_eq!(
        metric(
            &text,
            "anya_ai_canary_checks_total",
            &["version=\"1.1.0\"", "verdict=\"rolled_back\""]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "anya_ai_canary_checks_total",
            &["version=\"1.2.0\"", "verdict=\"promoted\""]
        ),
        1.0
    );
    assert_eq!(
        metric(&text, "anya_ai_traffic_weight", &["version=\"1.2.0\""]),
        100.0
    );
    for _ in 0..10 {
        assert_eq!(predict(&srv, "m", None).await, (200, "1.2.0".into()));
    }
    // Blue-green: back at once, then forward again.
    let (s, v) = srv
        .post("/models/m/traffic/rollback", json!({}))
        .await
        .status_body();
    assert_eq!(s, 200, "{v}");
    for _ in 0..10 {
        assert_eq!(predict(&srv, "m", None).await, (200, "1.0.0".into()));
    }
    let (s, _) = srv
        .post("/models/m/traffic/promote", json!({"version": "1.2.0"}))
        .await
        .status_body();
    assert_eq!(s, 200);
    assert_eq!(predict(&srv, "m", None).await, (200, "1.2.0".into()));
    // The policy is stored beside the versions, and a restarted server keeps it.
    let stored = std::fs::read_to_string(repo.path().join("m/traffic.yaml")).unwrap();
    assert!(stored.contains("1.2.0"), "{stored}");
    let again = start(settings(repo.path()), &[]).await;
    again.wait_ready(30).await;
    let (_, v) = again.get("/models/m/traffic").await;
    assert_eq!(
        v["effective"],
        json!([{"version": "1.2.0", "weight": 100.0}]),
        "{v}"
    );
    assert_eq!(v["stored"], true);
    for _ in 0..5 {
        assert_eq!(predict(&again, "m", None).await, (200, "1.2.0".into()));
    }
}

trait FirstAndLast {
    fn status_body(self) -> (u16, Value);
}

impl FirstAndLast for (u16, reqwest::header::HeaderMap, Value) {
    fn status_body(self) -> (u16, Value) {
        (self.0, self.2)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_shadow_never_delays_the_primary() {
    let repo = EchoRepo::new();
    echo_with(&repo, "m", "1.0.0", 0, 0.0);
    echo_with(&repo, "m", "1.1.0", 300, 0.0);
    let srv = start(settings(repo.path()), &[]).await;
    srv.wait_ready(30).await;
    let (s, v) = put(
        &srv,
        "/models/m/traffic",
        json!({"routes": [{"version": "1.0.0", "weight": 100}],
               "shadow": {"version": "1.1.0", "percent": 100}}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let mut latencies = Vec::new();
    for _ in 0..12 {
        let t = Instant::now();
        assert_eq!(predict(&srv, "m", None).await, (200, "1.0.0".into()));
        latencies.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    println!("primary median latency with a 300 ms shadow: {median:?}");
    // The shadow sleeps 300 ms per request: a primary that waited for it could not be this fast.
    assert!(median < Duration::from_millis(150), "{latencies:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = srv.metrics_text().await;
        let agree = metric(&text, "anya_ai_shadow_total", &["result=\"agree\""]);
        let dropped = metric(&text, "anya_ai_shadow_total", &["result=\"dropped\""]);
        if agree + dropped == 12.0 {
            println!("shadow: {agree} agreed, {dropped} dropped (busy)");
            assert!(agree >= 1.0);
            assert_eq!(
                metric(&text, "anya_ai_shadow_total", &["result=\"disagree\""]),
                0.0
            );
            assert!(text.contains("anya_ai_shadow_latency_seconds_count{model=\"m\",role=\"shadow\",version=\"1.1.0\"}")
                || text.contains("anya_ai_shadow_latency_seconds_count"), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "shadow results missing: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn write_version(dir: &Path, files: &[(&str, &[u8])], sha_override: Option<&str>) {
    use sha2::{Digest, Sha256};
    std::fs::create_dir_all(dir).unwrap();
    let version = dir.file_name().unwrap().to_str().unwrap();
    let mut manifest = format!(
        "id: m\nversion: {version}\ntask: echo\nformat: none\nmax_input_length: 64\nmax_inputs: 4\nfiles:\n"
    );
    for (name, bytes) in files {
        let sha = sha_override
            .map(str::to_string)
            .unwrap_or_else(|| hex::encode(Sha256::digest(bytes)));
        manifest.push_str(&format!("  - path: {name}\n    sha256: {sha}\n"));
    }
    std::fs::write(dir.join("anya.yaml"), manifest).unwrap();
}

async fn state_of(srv: &TestServer, version: &str) -> Option<String> {
    let (_, v) = srv.get("/models/m/versions").await;
    v["versions"]
        .as_array()?
        .iter()
        .find(|x| x["version"] == version)
        .map(|x| x["state"].as_str().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_loads_complete_folders_only_and_fails_tampered_ones() {
    let repo = tempfile::tempdir().unwrap();
    let a: &[u8] = b"weights a";
    let b: &[u8] = b"weights b";
    let v1 = repo.path().join("m/1.0.0");
    write_version(&v1, &[("a.bin", a)], None);
    std::fs::write(v1.join("a.bin"), a).unwrap();
    let mut s = settings(repo.path());
    s.model.poll_interval_s = 0.2;
    let srv = start(s, &[]).await;
    srv.wait_ready(30).await;

    // Copied file by file: the manifest first, then each file.
    let v2 = repo.path().join("m/1.1.0");
    write_version(&v2, &[("a.bin", a), ("b.bin", b)], None);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        state_of(&srv, "1.1.0").await,
        None,
        "loaded without its files"
    );
    std::fs::write(v2.join("a.bin"), a).unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(state_of(&srv, "1.1.0").await, None, "loaded half copied");
    // Half of the last file, then the rest.
    std::fs::write(v2.join("b.bin"), &b[..4]).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        state_of(&srv, "1.1.0").await,
        None,
        "loaded with a partial file"
    );
    std::fs::write(v2.join("b.bin"), b).unwrap();
    let started = Instant::now();
    while state_of(&srv, "1.1.0").await.as_deref() != Some("ready") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "1.1.0 never loaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "complete folder loaded {:?} after its last file",
        started.elapsed()
    );
    // A new version takes no traffic until it is given some.
    assert_eq!(predict(&srv, "m", None).await, (200, "1.0.0".into()));

    // A tampered file: that version fails, the others serve.
    let v3 = repo.path().join("m/1.2.0");
    write_version(&v3, &[("a.bin", a)], Some(&"0".repeat(64)));
    std::fs::write(v3.join("a.bin"), a).unwrap();
    let started = Instant::now();
    while state_of(&srv, "1.2.0").await.as_deref() != Some("failed") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "1.2.0 not failed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, versions) = srv.get("/models/m/versions").await;
    let failed = versions["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == "1.2.0")
        .unwrap()
        .clone();
    assert!(
        failed["error"].as_str().unwrap().contains("sha256"),
        "{failed}"
    );
    // It takes no traffic: the pod stays ready.
    assert_eq!(srv.get("/ready").await.0, 200);
    for _ in 0..5 {
        assert_eq!(predict(&srv, "m", None).await, (200, "1.0.0".into()));
    }
    assert_eq!(
        srv.post("/models/m/versions/1.1.0/predict", json!({"inputs": ["x"]}))
            .await
            .0,
        200
    );

    // A removed folder: that version drains and unloads.
    std::fs::remove_dir_all(&v2).unwrap();
    let started = Instant::now();
    while state_of(&srv, "1.1.0").await.is_some() {
        if started.elapsed() > Duration::from_secs(10) {
            let (_, r) = srv
                .post("/repository/rescan", json!({}))
                .await
                .status_body();
            let (_, v) = srv.get("/models/m/versions").await;
            panic!("1.1.0 still there: {r} {v}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An unchanged listing changes nothing.
    let (s, report) = srv
        .post("/repository/rescan", json!({}))
        .await
        .status_body();
    assert_eq!(s, 200, "{report}");
    for k in ["loaded", "reloaded", "unloaded", "failed", "pending"] {
        assert_eq!(report[k], json!([]), "{report}");
    }
}

/// The real embedding model copied as two versions: a 50/50 split serves both, their vectors
/// are the same, a shadow agrees, and unloading one leaves the other serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_embedding_model_as_two_versions() {
    let Some(real) = real_models() else {
        return;
    };
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let src = real.join("all-minilm-l6-v2/1.0.0");
    let v1 = work.path().join("all-minilm-l6-v2/1.0.0");
    let v2 = work.path().join("all-minilm-l6-v2/1.1.0");
    link_tree(&src, &v1);
    link_tree(&src, &v2);
    let manifest = std::fs::read_to_string(v2.join("anya.yaml")).unwrap();
    std::fs::remove_file(v2.join("anya.yaml")).unwrap();
    std::fs::write(
        v2.join("anya.yaml"),
        manifest.replace("version: 1.0.0", "version: 1.1.0"),
    )
    .unwrap();
    let srv = start(settings(work.path()), &[]).await;
    srv.wait_ready(120).await;
    let (s, v) = put(
        &srv,
        "/models/all-minilm-l6-v2/traffic",
        json!({"routes": [{"version": "1.0.0", "weight": 50}, {"version": "1.1.0", "weight": 50}],
               "shadow": {"version": "1.1.0", "percent": 100}}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let mut by_version: HashMap<String, Vec<f64>> = HashMap::new();
    let mut served = HashSet::new();
    for i in 0..24 {
        let (s, h, body) = srv
            .post(
                "/v1/embeddings",
                json!({"model": "all-minilm-l6-v2", "input": "The cat sits on the mat."}),
            )
            .await;
        assert_eq!(s, 200, "{body}");
        let version = h["x-model-version"].to_str().unwrap().to_string();
        served.insert(version.clone());
        by_version
            .entry(version)
            .or_insert_with(|| floats(&body["data"][0]["embedding"]));
        if i % 8 == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(served.len(), 2, "{served:?}");
    let (a, b) = (&by_version["1.0.0"], &by_version["1.1.0"]);
    assert!(cosine(a, b) > 0.99999);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = srv.metrics_text().await;
        let agree = metric(&text, "anya_ai_shadow_total", &["result=\"agree\""]);
        let dropped = metric(&text, "anya_ai_shadow_total", &["result=\"dropped\""]);
        let disagree = metric(&text, "anya_ai_shadow_total", &["result=\"disagree\""]);
        if agree + dropped + disagree >= 24.0 {
            println!("real model shadow: {agree} agree, {disagree} disagree, {dropped} dropped");
            assert!(agree >= 1.0 && disagree == 0.0);
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (s, v) = delete(&srv, "/models/all-minilm-l6-v2/versions/1.0.0").await;
    assert_eq!(s, 200, "{v}");
    for _ in 0..4 {
        let (s, h, _) = srv
            .post(
                "/v1/embeddings",
                json!({"model": "all-minilm-l6-v2", "input": "The cat sits on the mat."}),
            )
            .await;
        assert_eq!((s, h["x-model-version"].to_str().unwrap()), (200, "1.1.0"));
    }
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

/// Three replicas sharing one `redis-server`: a traffic change made on one is served by all
/// three within a second; a load and an unload made on one happen on all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_follow_a_change_made_on_one() {
    if std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "redis-server is missing: .ci/run installs it with apt-get"
        );
        eprintln!("\n*** SKIPPING: redis-server not found ***\n");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("r.sock");
    let mut redis = std::process::Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--save",
            "",
            "--appendonly",
            "no",
            "--unixsocket",
        ])
        .arg(&socket)
        .arg("--dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !socket.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "redis did not start"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let repo = EchoRepo::new();
    echo_with(&repo, "m", "1.0.0", 0, 0.0);
    echo_with(&repo, "m", "1.1.0", 0, 0.0);
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let mut s = settings(repo.path());
        s.cache.redis_url = Some(format!("unix://{}", socket.display()));
        let srv = start(s, &[]).await;
        srv.wait_ready(30).await;
        replicas.push(srv);
    }
    // The subscribers are up once a message reaches them: give them a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for srv in &replicas {
        assert_eq!(predict(srv, "m", None).await.0, 200);
    }
    let set = |a: u32, b: u32| json!({"routes": [{"version": "1.0.0", "weight": a}, {"version": "1.1.0", "weight": b}]});
    assert_eq!(
        put(&replicas[0], "/models/m/traffic", set(100, 0)).await.0,
        200
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (s, _) = put(&replicas[1], "/models/m/traffic", set(0, 100)).await;
    assert_eq!(s, 200);
    let changed = Instant::now();
    let mut delays = Vec::new();
    for srv in &replicas {
        loop {
            if predict(srv, "m", None).await == (200, "1.1.0".into()) {
                delays.push(changed.elapsed());
                break;
            }
            assert!(
                changed.elapsed() < Duration::from_secs(1),
                "a replica still serves 1.0.0 a second after the change"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    println!("100/0 → 0/100 on one replica: served by all three after {delays:?}");
    // A replica started later reads the stored policy.
    let mut s = settings(repo.path());
    s.cache.redis_url = Some(format!("unix://{}", socket.display()));
    let late = start(s, &[]).await;
    late.wait_ready(30).await;
    let started = Instant::now();
    while predict(&late, "m", None).await != (200, "1.1.0".into()) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the late replica never caught up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Unload on one: gone on all.
    let (s, v) = delete(&replicas[2], "/models/m/versions/1.0.0").await;
    assert_eq!(s, 200, "{v}");
    let started = Instant::now();
    for srv in replicas.iter().chain([&late]) {
        while state_of(srv, "1.0.0").await.is_some() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "1.0.0 still loaded somewhere"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let _ = redis.kill();
    let _ = redis.wait();
}
