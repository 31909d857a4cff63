//! Shared test helpers: start the real server on 127.0.0.1:0 and talk HTTP to it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use anya::config::{DeviceKind, Settings};
use anya::registry::repository::ModelSource;
use anya::server::{self, Server};
use serde_json::Value;

pub struct TestServer {
    pub base: String,
    pub server: Server,
    pub client: reqwest::Client,
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, reqwest::header::HeaderMap, Value) {
        let r = self
            .client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("request failed");
        split(r).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("request failed");
        let (s, _, v) = split(r).await;
        (s, v)
    }

    /// The `/metrics` exposition (no token: for servers without auth).
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("request failed")
            .text()
            .await
            .expect("metrics body")
    }

    /// Wait until `/ready` says 200 (or panic after `secs`).
    pub async fn wait_ready(&self, secs: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let (s, body) = self.get("/ready").await;
            if s == 200 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not ready after {secs}s: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl TestServer {
    /// Wait until no model version is still loading (some may have failed).
    pub async fn wait_settled(&self, secs: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let (_, body) = self.get("/models").await;
            let loading = body["models"]
                .as_array()
                .map(|ms| ms.iter().any(|m| m["state"] == "loading"))
                .unwrap_or(true);
            if !loading {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still loading after {secs}s: {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub async fn split(r: reqwest::Response) -> (u16, reqwest::header::HeaderMap, Value) {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap_or_default();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, v)
}

pub fn settings(models_dir: &Path) -> Settings {
    let mut s = Settings::default();
    s.server.port = 0;
    s.server.host = "127.0.0.1".into();
    s.model.models_dir = models_dir.to_path_buf();
    s.model.device = DeviceKind::Cpu;
    // Tests share two cores with each other: never let a slow machine turn into a 504.
    s.server.request_timeout_ms = 300_000;
    s
}

pub async fn start(settings: Settings, model_args: &[&str]) -> TestServer {
    let args: Vec<String> = model_args.iter().map(|s| s.to_string()).collect();
    let sources = server::select_sources(&settings, &args).expect("select models");
    start_sources(settings, sources).await
}

pub async fn start_sources(settings: Settings, sources: Vec<ModelSource>) -> TestServer {
    let server = Server::start(settings, sources)
        .await
        .expect("server start");
    TestServer {
        base: format!("http://{}", server.addr),
        server,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap(),
    }
}

/// The repository with the real models (`scripts/fetch-models.sh`). Under CI a missing
/// repository fails the test; elsewhere the test says loudly that it is skipped.
/// The Python that imports `modules` (e.g. `"openai"`, `"numpy, sklearn"`): `ANYA_TEST_PYTHON`,
/// else `.cache/venv` (made by `.ci/run`). Under CI a missing one fails the test; elsewhere the
/// test skips and says so.
pub fn venv_python(modules: &str) -> Option<PathBuf> {
    let python = std::env::var_os("ANYA_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/venv/bin/python"));
    let ok = std::process::Command::new(&python)
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(python);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{} cannot import {modules}: .ci/run installs it",
            python.display()
        );
    }
    eprintln!(
        "\n*** SKIPPING: no Python with {modules} at {} (set ANYA_TEST_PYTHON) ***\n",
        python.display()
    );
    None
}

pub fn real_models() -> Option<PathBuf> {
    let dir = std::env::var_os("ANYA_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models"));
    let ok = dir.join("all-minilm-l6-v2/1.0.0/anya.yaml").is_file()
        && dir.join("smollm2-135m-instruct/1.0.0/anya.yaml").is_file();
    if ok {
        return Some(dir);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "real models missing in {}: run scripts/fetch-models.sh",
            dir.display()
        );
    }
    eprintln!(
        "\n*** SKIPPING: real models missing in {} — run scripts/fetch-models.sh ***\n",
        dir.display()
    );
    None
}

/// A repository holding echo models written by the test.
pub struct EchoRepo {
    pub dir: tempfile::TempDir,
}

impl EchoRepo {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Add `id@version` with the given extra manifest YAML (batching, parameters, …).
    pub fn add(&self, id: &str, version: &str, extra: &str) -> &Self {
        let d = self.dir.path().join(id).join(version);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("anya.yaml"),
            format!(
                "id: {id}\nversion: {version}\ntask: echo\nformat: none\nmax_input_length: 64\nmax_inputs: 4\n{extra}"
            ),
        )
        .unwrap();
        self
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

pub const DELAY_PARAM: &str =
    "parameters:\n  - name: delay_ms\n    type: integer\n    default: 0\n    min: 0\n    max: 10000\n";

pub fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}

pub fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}
