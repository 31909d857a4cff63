//! `/metrics`: exact counts after a load of known size, no series from raw input, and the
//! exposition passes `promtool check metrics` (extracted from Debian's prometheus package by
//! .ci/run; set PROMTOOL to point at it).

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::*;
use serde_json::json;

fn promtool() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("PROMTOOL").map(PathBuf::from),
        Some(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join(".cache/tools/prometheus/usr/bin/promtool"),
        ),
        Some(PathBuf::from("/usr/bin/promtool")),
    ];
    if let Some(p) = candidates.into_iter().flatten().find(|p| p.is_file()) {
        return Some(p);
    }
    if std::env::var_os("CI").is_some() {
        panic!("promtool is missing: .ci/run extracts it from Debian's prometheus package");
    }
    eprintln!("\n*** SKIPPING the promtool check: promtool not found (see .ci/run) ***\n");
    None
}

/// The value of the one sample whose line starts with `prefix` (name and labels, in the
/// exposition's label order).
fn sample(text: &str, prefix: &str) -> f64 {
    let hits: Vec<&str> = text.lines().filter(|l| l.starts_with(prefix)).collect();
    assert_eq!(hits.len(), 1, "{prefix}: {hits:?}");
    hits[0].rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn counts_are_exact_and_the_exposition_is_valid() {
    let repo = EchoRepo::new();
    repo.add("echo", "1.0.0", DELAY_PARAM);
    let srv = start(settings(repo.path()), &[]).await;
    srv.wait_ready(10).await;
    for i in 0..7 {
        let (s, _, _) = srv
            .post("/models/echo/predict", json!({"inputs": [i, i]}))
            .await;
        assert_eq!(s, 200);
    }
    for _ in 0..3 {
        let (s, _, _) = srv
            .post(
                "/models/echo/predict",
                json!({"inputs": [1], "parameters": {"delay_ms": -5}}),
            )
            .await;
        assert_eq!(s, 400);
    }
    let (s, _, _) = srv
        .post("/models/nope-secret-id/predict", json!({"inputs": [1]}))
        .await;
    assert_eq!(s, 404);
    let text = srv.metrics_text().await;

    let ep = r#"endpoint="/models/{id}/predict""#;
    assert_eq!(
        sample(
            &text,
            &format!(r#"anya_ai_requests_total{{{ep},model="echo",status="200",version="1.0.0"}}"#)
        ),
        7.0
    );
    assert_eq!(
        sample(
            &text,
            &format!(r#"anya_ai_requests_total{{{ep},model="echo",status="400",version="1.0.0"}}"#)
        ),
        3.0
    );
    assert_eq!(
        sample(
            &text,
            &format!(r#"anya_ai_requests_total{{{ep},model="",status="404",version=""}}"#)
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            &format!(
                r#"anya_ai_errors_total{{code="invalid_request",{ep},model="echo",version="1.0.0"}}"#
            )
        ),
        3.0
    );
    assert_eq!(
        sample(
            &text,
            &format!(
                r#"anya_ai_request_duration_seconds_count{{{ep},model="echo",version="1.0.0"}}"#
            )
        ),
        10.0
    );
    // every input was in exactly one batch
    assert_eq!(
        sample(
            &text,
            r#"anya_ai_batch_size_sum{model="echo",version="1.0.0"}"#
        ),
        14.0
    );
    assert_eq!(
        sample(
            &text,
            r#"anya_ai_queue_duration_seconds_count{model="echo",version="1.0.0"}"#
        ),
        7.0
    );
    assert_eq!(
        sample(
            &text,
            r#"anya_ai_model_load_count{model="echo",result="success",version="1.0.0"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(&text, r#"anya_ai_queue_size{model="echo",version="1.0.0"}"#),
        0.0
    );
    assert_eq!(sample(&text, r#"anya_ai_models{state="ready"}"#), 1.0);
    assert_eq!(
        sample(
            &text,
            r#"anya_ai_model_info{device="cpu",model="echo",version="1.0.0"}"#
        ),
        1.0
    );
    assert!(text.contains("anya_ai_build_info{version="));
    assert!(text.contains("process_resident_memory_bytes"));
    assert!(
        !text.contains("nope-secret-id"),
        "a raw model id became a label value"
    );

    if let Some(promtool) = promtool() {
        let mut child = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn metrics_port_serves_metrics_too() {
    let repo = EchoRepo::new();
    repo.add("echo", "1.0.0", "");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut st = settings(repo.path());
    st.monitoring.metrics_port = Some(port);
    let srv = start(st, &[]).await;
    srv.wait_ready(10).await;
    let text = srv
        .client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("anya_ai_models"), "{text}");
}

#[tokio::test]
async fn token_counters_equal_the_responses_metadata() {
    let Some(dir) = real_models() else { return };
    let srv = start(settings(&dir), &[]).await;
    srv.wait_ready(120).await;
    let (mut emb_in, mut gen_in, mut gen_out) = (0u64, 0u64, 0u64);
    for i in 0..5 {
        let (_, _, b) = srv
            .post(
                "/models/all-minilm-l6-v2/predict",
                json!({"inputs": [format!("sentence {i}"), "another one here"]}),
            )
            .await;
        emb_in += b["metadata"]["tokens_processed"].as_u64().unwrap();
    }
    for i in 0..2 {
        let (_, _, b) = srv
            .post(
                "/models/smollm2-135m-instruct/predict",
                json!({"inputs": [format!("Count to {i}:")], "parameters": {"max_tokens": 5, "temperature": 0}}),
            )
            .await;
        gen_in += b["metadata"]["tokens_processed"].as_u64().unwrap();
        gen_out += b["metadata"]["tokens_generated"].as_u64().unwrap();
    }
    let text = srv.metrics_text().await;
    let emb = r#"anya_ai_tokens_total{direction="input",model="all-minilm-l6-v2",version="1.0.0"}"#;
    assert_eq!(sample(&text, emb), emb_in as f64);
    let gi =
        r#"anya_ai_tokens_total{direction="input",model="smollm2-135m-instruct",version="1.0.0"}"#;
    let go =
        r#"anya_ai_tokens_total{direction="output",model="smollm2-135m-instruct",version="1.0.0"}"#;
    assert_eq!(sample(&text, gi), gen_in as f64);
    assert_eq!(sample(&text, go), gen_out as f64);
    assert_eq!(
        sample(
            &text,
            r#"anya_ai_time_to_first_token_seconds_count{model="smollm2-135m-instruct",version="1.0.0"}"#
        ),
        2.0
    );
}

#[tokio::test]
async fn usage_and_model_windows_add_up() {
    let repo = EchoRepo::new();
    repo.add(
        "echo",
        "1.0.0",
        &format!("pricing:\n  per_request: 0.25\n  per_1k_input_tokens: 1.0\n{DELAY_PARAM}"),
    );
    let srv = start(settings(repo.path()), &[]).await;
    srv.wait_ready(10).await;
    for i in 0..4 {
        let (s, _, _) = srv
            .post("/models/echo/predict", json!({"inputs": [i]}))
            .await;
        assert_eq!(s, 200);
    }
    let (s, _, _) = srv
        .post(
            "/models/echo/predict",
            json!({"inputs": [1], "parameters": {"delay_ms": "x"}}),
        )
        .await;
    assert_eq!(s, 400);
    let (s, w) = srv.get("/models/echo/metrics?period=hourly").await;
    assert_eq!(s, 200, "{w}");
    assert_eq!(w["requests_count"], 5);
    assert_eq!(w["errors_count"], 1);
    assert!((w["error_rate"].as_f64().unwrap() - 0.2).abs() < 1e-9);
    assert!(
        (w["estimated_cost"].as_f64().unwrap() - 1.0).abs() < 1e-9,
        "4 answered × 0.25: {w}"
    );
    assert!(w["p99_response_ms"].as_f64().unwrap() >= w["p50_response_ms"].as_f64().unwrap());
    let (s, u) = srv.get("/usage?period=daily&group_by=principal").await;
    assert_eq!(s, 200);
    assert_eq!(u["rows"][0]["key"], "anonymous");
    assert_eq!(u["rows"][0]["requests"], 5);
    for bad in [
        "/usage?period=weekly",
        "/usage?group_by=x",
        "/usage?nope=1",
        "/models/echo/metrics?period=x",
    ] {
        let (s, b) = srv.get(bad).await;
        assert_eq!(s, 400, "{bad}: {b}");
    }
    let (s, _) = srv.get("/models/nope/metrics").await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn usage_tokens_equal_the_responses_metadata() {
    let Some(dir) = real_models() else { return };
    let srv = start(settings(&dir), &["all-minilm-l6-v2"]).await;
    srv.wait_ready(120).await;
    let mut sent = 0u64;
    for i in 0..6 {
        let (_, _, b) = srv
            .post(
                "/models/all-minilm-l6-v2/predict",
                json!({"inputs": [format!("usage check number {i}")]}),
            )
            .await;
        sent += b["metadata"]["tokens_processed"].as_u64().unwrap();
    }
    let (_, u) = srv.get("/usage?group_by=model").await;
    let total: u64 = u["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["tokens_input"].as_u64().unwrap())
        .sum();
    assert_eq!(total, sent);
    let (_, w) = srv.get("/models/all-minilm-l6-v2/metrics").await;
    assert_eq!(w["tokens_input"].as_u64().unwrap(), sent);
    assert_eq!(w["requests_count"], 6);
}

/// Every metric the shipped Grafana dashboard queries is one the server really exports.
#[test]
fn the_dashboard_queries_exported_metrics() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/grafana/anya.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(e) = m.get("expr").and_then(|e| e.as_str()) {
                    out.push(e.to_string());
                }
                m.values().for_each(|x| walk(x, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(&dash, &mut exprs);
    assert!(exprs.len() >= 8, "{exprs:?}");
    let metrics = anya::metrics::Metrics::new();
    let families: std::collections::HashSet<&str> =
        metrics.family_names().iter().map(String::as_str).collect();
    for e in &exprs {
        for name in e
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("anya_ai_"))
        {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| families.contains(b)))
                .unwrap_or(name);
            assert!(
                families.contains(base),
                "the dashboard queries {name}, which is not exported"
            );
        }
    }
    for wanted in [
        "anya_ai_requests_total",
        "anya_ai_request_duration_seconds_bucket",
        "anya_ai_batch_size",
        "anya_ai_queue_size",
        "anya_ai_tokens_total",
        "anya_ai_time_to_first_token_seconds_bucket",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(wanted)),
            "no panel uses {wanted}"
        );
    }
}
