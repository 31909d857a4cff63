//! The built-in web console (`GET /`, `/ui/*`) and its figures (`GET /stats`): headers and
//! access rules over HTTP, then the console itself driven in headless Chromium
//! (`tests/sdk/console_browser.py`, selenium + chromedriver, installed by `.ci/run`) against a
//! server with both real models and a second one with auth on. A screenshot of each page is
//! written under `CARGO_TARGET_TMPDIR/console` and checked to be non-blank.

mod common;

use std::path::PathBuf;
use std::process::Command;

use anya::auth::{mint_hs256, MintRequest};
use common::*;

const SECRET: &str = "console-test-secret-0123456789";

fn token(scopes: &[&str]) -> String {
    mint_hs256(
        SECRET.as_bytes(),
        &MintRequest {
            sub: "console".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ttl_s: 900,
            ..Default::default()
        },
        None,
        None,
    )
    .unwrap()
}

/// The Python with selenium, and chromedriver: `.cache/venv` (made by `.ci/run`) and Debian's
/// `chromium-driver`, or `ANYA_TEST_PYTHON`. Missing: a failure under CI, a loud skip elsewhere.
fn browser_python() -> Option<PathBuf> {
    let p = std::env::var_os("ANYA_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/venv/bin/python")
        });
    let python_ok = Command::new(&p)
        .args(["-c", "import selenium, PIL"])
        .output()
        .is_ok_and(|o| o.status.success());
    let driver = std::env::var_os("ANYA_TEST_CHROMEDRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromedriver"));
    if python_ok && driver.is_file() {
        return Some(p);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "the browser test needs selenium and Pillow in {} and chromedriver at {}: .ci/run installs them",
            p.display(),
            driver.display()
        );
    }
    eprintln!(
        "\n*** SKIPPING: no selenium ({}) or no chromedriver ({}) ***\n",
        p.display(),
        driver.display()
    );
    None
}

#[tokio::test]
async fn the_console_is_public_embedded_and_locked_down() {
    let repo = EchoRepo::new();
    repo.add("echo", "1.0.0", "");
    let keys = tempfile::tempdir().unwrap();
    std::fs::write(keys.path().join("secret"), SECRET).unwrap();
    let mut st = settings(repo.path());
    st.security.auth_required = true;
    st.security.jwt_secret_file = Some(keys.path().join("secret"));
    let server = start(st, &[]).await;
    let c = &server.client;

    for (path, kind) in [
        ("/", "text/html"),
        ("/ui", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
        ("/ui/icon.svg", "image/svg+xml"),
    ] {
        // Public: no token needed for the files.
        let r = c.get(server.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers().clone();
        assert!(
            h["content-type"].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert_eq!(h["cache-control"], "no-cache");
        let etag = h["etag"].clone();
        let body = r.bytes().await.unwrap();
        assert!(!body.is_empty() && body.len() < 100_000, "{path}");
        // Unchanged: 304 without a body.
        let again = c
            .get(server.url(path))
            .header("if-none-match", etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{path}");
    }
    let page = c
        .get(server.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(r#"<script src="/ui/app.js" defer></script>"#));
    assert!(!page.contains("<script>") && !page.contains("style="));

    // Every figure the console shows is guarded: /stats needs the metrics scope.
    let stats = |t: Option<String>| {
        let mut r = c.get(server.url("/stats"));
        if let Some(t) = t {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    assert_eq!(stats(None).await.unwrap().status(), 401);
    assert_eq!(
        stats(Some(token(&["predict"]))).await.unwrap().status(),
        403
    );
    let r = stats(Some(token(&["metrics"]))).await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    for key in [
        "requests",
        "client_errors",
        "server_errors",
        "latency_seconds",
        "batch_size",
        "queue_size",
        "tokens_output",
        "time_to_first_token_seconds",
        "cache_hits",
    ] {
        assert!(body.get(key).is_some(), "/stats lacks {key}: {body}");
    }
    // Polling /stats does not count as a request itself (the console polls every second).
    let again: serde_json::Value = stats(Some(token(&["metrics"])))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["requests"], body["requests"], "{again}");
    for path in ["/models", "/openapi.json"] {
        let r = c.get(server.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_works_in_a_real_browser() {
    let Some(models) = real_models() else {
        return;
    };
    let Some(python) = browser_python() else {
        return;
    };
    let open = start(settings(&models), &[]).await;
    let keys = tempfile::tempdir().unwrap();
    std::fs::write(keys.path().join("secret"), SECRET).unwrap();
    let mut st = settings(&models);
    st.security.auth_required = true;
    st.security.jwt_secret_file = Some(keys.path().join("secret"));
    let guarded = start(st, &["all-minilm-l6-v2"]).await;
    open.wait_ready(300).await;
    let good = token(&["predict", "metrics"]);
    for _ in 0..3000 {
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

    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console");
    let _ = std::fs::remove_dir_all(&out_dir);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/console_browser.py");
    let args = [
        open.base.clone(),
        guarded.base.clone(),
        good,
        out_dir.display().to_string(),
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
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the browser script failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("checks passed"), "{stdout}");
    for page in ["models", "live", "playground", "api", "auth"] {
        let png = out_dir.join(format!("{page}.png"));
        let bytes = std::fs::read(&png).unwrap_or_default();
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
            "{} is missing or tiny",
            png.display()
        );
    }
}
