//! KServe v2 / Open Inference Protocol over REST (`/v2`) and gRPC, on one real server with
//! both real models, auth, rate limits and `server.grpc_port`: the real Python clients
//! (`tritonclient.http` binary and JSON, `tritonclient.grpc` unary and `ModelStreamInfer`,
//! `kserve`'s REST and gRPC clients; `tests/sdk/kserve_clients.py`) against the native API's
//! outputs, their error types; malformed and 1,000 random v2 bodies (400 each, the server
//! stays up); gRPC calls in the metrics.

mod common;

use std::path::PathBuf;
use std::process::Command;

use anya::auth::{mint_hs256, MintRequest};
use anya::config::TierLimits;
use common::*;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// The Python with the v2 clients: `.cache/venv` (made by `.ci/run`), or `ANYA_TEST_PYTHON`.
fn clients_python() -> Option<PathBuf> {
    let p = std::env::var_os("ANYA_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/venv/bin/python")
        });
    // (Two processes: the two packages' protobuf modules cannot be imported into one.)
    let ok = [
        "import tritonclient.http, tritonclient.grpc",
        "import kserve",
    ]
    .iter()
    .all(|code| {
        Command::new(&p)
            .args(["-c", *code])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if ok {
        return Some(p);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "tritonclient[http,grpc] or kserve is missing in {}: .ci/run installs them",
            p.display()
        );
    }
    eprintln!(
        "\n*** SKIPPING the client checks: no Python with tritonclient and kserve ({}) ***\n",
        p.display()
    );
    None
}

const SECRET: &str = "kserve-test-secret-0123456789";
const EMBED: &str = "all-minilm-l6-v2";

fn token(sub: &str, scopes: &[&str], tier: Option<&str>, models: Option<&[&str]>) -> String {
    mint_hs256(
        SECRET.as_bytes(),
        &MintRequest {
            sub: sub.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            tier: tier.map(str::to_string),
            models: models.map(|m| m.iter().map(|s| s.to_string()).collect()),
            ttl_s: 600,
            ..Default::default()
        },
        None,
        None,
    )
    .unwrap()
}

/// POST a raw v2 body; the status and the parsed JSON body.
async fn post_raw(
    t: &TestServer,
    auth: &str,
    body: Vec<u8>,
    header_len: Option<usize>,
) -> (u16, Value) {
    let mut r = t
        .client
        .post(t.url(&format!("/v2/models/{EMBED}/infer")))
        .header("authorization", format!("Bearer {auth}"))
        .body(body);
    if let Some(n) = header_len {
        r = r.header("inference-header-content-length", n.to_string());
    }
    let r = r.send().await.expect("request failed");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn binary(texts: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for t in texts {
        out.extend_from_slice(&(t.len() as u32).to_le_bytes());
        out.extend_from_slice(t.as_bytes());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_over_rest_and_grpc_with_the_real_clients() {
    let Some(models) = real_models() else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    std::fs::write(keys.path().join("secret"), SECRET).unwrap();
    let mut st = settings(&models);
    st.server.grpc_port = Some(0);
    st.security.auth_required = true;
    st.security.jwt_secret_file = Some(keys.path().join("secret"));
    st.security.metrics_public = true;
    st.rate_limits.enabled = true;
    st.rate_limits.tiers.insert(
        "tiny".into(),
        TierLimits {
            requests_per_minute: 2,
            tokens_per_minute: None,
        },
    );
    for (name, t) in st.rate_limits.tiers.iter_mut() {
        if name != "tiny" {
            t.requests_per_minute = 100_000;
            t.tokens_per_minute = None;
        }
    }
    let t = start(st, &[]).await;
    let grpc = t.server.grpc_addr.expect("gRPC is on");
    t.wait_ready(180).await;
    let good = token("kserve-good", &["predict"], None, None);

    // Probes need no token; the rest answer in KServe's error shape.
    assert_eq!(t.get("/v2/health/live").await, (200, json!({"live": true})));
    assert_eq!(
        t.get("/v2/health/ready").await,
        (200, json!({"ready": true}))
    );
    let (s, body) = t.get(&format!("/v2/models/{EMBED}")).await;
    assert_eq!(s, 401, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|m| m.contains("token")),
        "{body}"
    );

    // Malformed bodies: each a 400 with {"error": "..."} naming what is wrong.
    let header = |dtype: &str, shape: Value, size: Value| {
        json!({"inputs": [{"name": "text", "datatype": dtype, "shape": shape,
                           "parameters": {"binary_data_size": size}}]})
        .to_string()
    };
    let data = binary(&["hello", "world"]);
    let with_data = |h: String, extra: &[u8]| {
        let n = h.len();
        let mut b = h.into_bytes();
        b.extend_from_slice(&data);
        b.extend_from_slice(extra);
        (b, n)
    };
    let cases: Vec<(&str, Vec<u8>, Option<usize>, &str)> =
        vec![
        {
            let (b, n) = with_data(header("FP32", json!([2]), json!(18)), &[]);
            ("wrong datatype", b, Some(n), "BYTES")
        },
        {
            let (b, n) = with_data(header("BYTES", json!([3]), json!(18)), &[]);
            ("shape/data mismatch", b, Some(n), "shape says 3")
        },
        {
            let (b, n) = with_data(header("BYTES", json!([2]), json!(19)), &[]);
            ("size past the body", b, Some(n), "runs past")
        },
        {
            let (b, n) = with_data(header("BYTES", json!([2]), json!(10)), &[]);
            ("inconsistent size", b, Some(n), "binary data follow")
        },
        {
            let (b, n) = with_data(header("BYTES", json!([2]), json!(18)), &[0]);
            ("bytes left over", b, Some(n), "binary data follow")
        },
        {
            let (b, _) = with_data(header("BYTES", json!([2]), json!(18)), &[]);
            let n = b.len() + 1;
            ("header length past the body", b, Some(n), "Inference-Header-Content-Length")
        },
        {
            let mut bad = binary(&["hello"]);
            bad[0] = 200; // says 200 bytes, holds 5
            let h = header("BYTES", json!([1]), json!(bad.len()));
            let n = h.len();
            let mut b = h.into_bytes();
            b.extend_from_slice(&bad);
            ("element length past its tensor", b, Some(n), "only 5 remain")
        },
        (
            "JSON data/shape mismatch",
            json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a"]}]})
                .to_string()
                .into_bytes(),
            None,
            "shape says 2",
        ),
        (
            "JSON non-string element",
            json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [1]}]})
                .to_string()
                .into_bytes(),
            None,
            "strings",
        ),
        (
            "negative dimension",
            json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1], "data": []}]})
                .to_string()
                .into_bytes(),
            None,
            "at least 0",
        ),
        (
            "huge shape",
            json!({"inputs": [{"name": "text", "datatype": "BYTES",
                               "shape": [i64::MAX, 1], "data": []}]})
            .to_string()
            .into_bytes(),
            None,
            "max_body_bytes",
        ),
    ];
    for (what, body, n, needle) in cases {
        let (s, v) = post_raw(&t, &good, body, n).await;
        assert_eq!(s, 400, "{what}: {v}");
        let m = v["error"].as_str().unwrap_or_default();
        assert!(m.contains(needle), "{what}: {needle:?} not in {v}");
    }
    // 1,000 random byte strings (half with a random header length): 400 each.
    let mut rng = rand::rngs::StdRng::seed_from_u64(16);
    for i in 0..1000 {
        let len = rng.random_range(0..300);
        let body: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let n = (i % 2 == 0).then(|| rng.random_range(0..400));
        let (s, v) = post_raw(&t, &good, body, n).await;
        assert_eq!(s, 400, "random body {i}: {v}");
        assert!(v["error"].is_string(), "random body {i}: {v}");
    }
    assert_eq!(t.get("/v2/health/live").await.0, 200);

    // The real clients.
    if let Some(python) = clients_python() {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/kserve_clients.py");
        let args = [
            t.base.clone(),
            grpc.to_string(),
            good.clone(),
            token(
                "kserve-chat-only",
                &["predict"],
                None,
                Some(&["smollm2-135m-instruct"][..]),
            ),
            token("kserve-tiny", &["predict"], Some("tiny"), None),
            token("kserve-no-scope", &[], None, None),
        ];
        let out = tokio::task::spawn_blocking(move || {
            Command::new(python)
                .arg(script)
                .args(args)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "the client script failed:\n{stdout}\n{stderr}"
        );
        assert!(stdout.contains("checks passed"), "{stdout}");
        eprintln!("{stdout}");

        // gRPC calls are in the metrics, by method and status.
        let m = t.metrics_text().await;
        for (endpoint, status) in [
            ("grpc/ModelInfer", "200"),
            ("grpc/ModelInfer", "404"),
            ("grpc/ModelStreamInfer", "200"),
            ("/v2/models/{name}/infer", "200"),
        ] {
            let (e, s) = (
                format!("endpoint=\"{endpoint}\""),
                format!("status=\"{status}\""),
            );
            assert!(
                m.lines().any(|l| l.starts_with("anya_ai_requests_total")
                    && l.contains(&e)
                    && l.contains(&s)),
                "{endpoint} {status} not in the metrics"
            );
        }
    }
    assert_eq!(t.get("/v2/health/ready").await.0, 200);
}
