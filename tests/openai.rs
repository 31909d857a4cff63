//! The OpenAI-compatible `/v1` routes, driven by the official `openai` Python SDK (strict
//! response validation, no retries) on both real models; then native streaming (SSE) and the
//! SDK's error classes on a server with auth and rate limits.

mod common;

use std::path::PathBuf;
use std::process::Command;

use anya::auth::{mint_hs256, MintRequest};
use common::*;
use serde_json::json;

const SECRET: &str = "openai-test-secret-0123456789";

fn token(models: Option<Vec<String>>) -> String {
    mint_hs256(
        SECRET.as_bytes(),
        &MintRequest {
            sub: format!("sdk-{}", models.is_some()),
            scopes: vec!["predict".into()],
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
async fn the_official_sdk_works_unchanged() {
    let Some(models) = real_models() else {
        return;
    };
    let Some(python) = venv_python("openai") else {
        return;
    };
    let open = start(settings(&models), &[]).await;
    open.wait_ready(120).await;

    // Native streaming on the same server: deltas add up to the non-streamed text.
    let body = json!({"inputs": ["The capital of France is"],
                      "parameters": {"temperature": 0, "max_tokens": 16, "cache": false}});
    let (s, _, plain) = open
        .post("/models/smollm2-135m-instruct/predict", body.clone())
        .await;
    assert_eq!(s, 200, "{plain}");
    let mut streaming = body.clone();
    streaming["parameters"]["stream"] = json!(true);
    let r = open
        .client
        .post(open.url("/models/smollm2-135m-instruct/predict"))
        .json(&streaming)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let sse = r.text().await.unwrap();
    let mut text = String::new();
    let mut done = None;
    let mut event = "";
    for line in sse.lines() {
        if let Some(e) = line.strip_prefix("event: ") {
            event = if e == "delta" { "delta" } else { "done" };
        } else if let Some(d) = line.strip_prefix("data: ") {
            let v: serde_json::Value = serde_json::from_str(d).unwrap();
            if event == "delta" {
                assert_eq!(v["index"], 0);
                text += v["text"].as_str().unwrap();
            } else {
                done = Some(v);
            }
        }
    }
    assert_eq!(json!(text), plain["outputs"][0], "{sse}");
    let done = done.expect("a done event");
    assert_eq!(done["outputs"], plain["outputs"]);
    assert_eq!(
        done["metadata"]["tokens_generated"],
        plain["metadata"]["tokens_generated"]
    );

    // A second server with auth and a tight rate limit, for the SDK's error classes.
    let keys = tempfile::tempdir().unwrap();
    std::fs::write(keys.path().join("secret"), SECRET).unwrap();
    let mut st = settings(&models);
    st.security.auth_required = true;
    st.security.jwt_secret_file = Some(keys.path().join("secret"));
    st.rate_limits.enabled = true;
    for t in st.rate_limits.tiers.values_mut() {
        t.requests_per_minute = 3;
    }
    let guarded = start(st, &["all-minilm-l6-v2"]).await;
    let good = token(None);
    let no_model = token(Some(vec!["smollm2-135m-instruct".into()]));
    for _ in 0..600 {
        let r = guarded
            .client
            .get(guarded.url("/ready"))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/openai_sdk.py");
    let (open_base, guarded_base) = (open.base.clone(), guarded.base.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .args([open_base, guarded_base, good, no_model])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the SDK script failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("checks passed"), "{stdout}");
}
