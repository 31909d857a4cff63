//! A fleet behaves as one server (issue 19): three real `anya serve` processes share one
//! `redis-server` for their rate limits (and fall back to local limits while it is down), and
//! models are served from an S3-compatible repository (moto's server on loopback), verified,
//! cached, and not downloaded twice. Needs `redis-server`, moto (`.ci/run` installs both) and,
//! for the S3 test, the real models; fails under CI without them.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anya::auth::{mint_hs256, MintRequest};
use futures::StreamExt;
use serde_json::{json, Value};

const SECRET: &str = "fleet-secret-0123456789";

fn anya() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_anya"));
    c.env_remove("RUST_LOG");
    for (k, _) in std::env::vars() {
        if k.starts_with("ANYA__") || k.starts_with("AWS_") {
            c.env_remove(k);
        }
    }
    c
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One `anya serve` with `config` (YAML), on its own port.
struct Replica {
    base: String,
    _proc: Proc,
}

impl Replica {
    fn start(dir: &Path, name: &str, config: &str, env: &[(&str, String)]) -> Replica {
        let port = free_port();
        let file = dir.join(format!("{name}.yaml"));
        std::fs::write(
            &file,
            format!("server:\n  host: 127.0.0.1\n  port: {port}\n  request_timeout_ms: 300000\n{config}"),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let mut cmd = anya();
        cmd.args(["serve", "--config"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Replica {
            base: format!("http://127.0.0.1:{port}"),
            _proc: Proc(cmd.spawn().expect("start anya")),
        }
    }

    /// `kill -9`.
    fn kill(&mut self) {
        let _ = self._proc.0.kill();
        let _ = self._proc.0.wait();
    }

    async fn wait_up(&self, client: &reqwest::Client, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Ok(r) = client.get(format!("{}/health", self.base)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} not up after {secs}s",
                self.base
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn token(sub: &str, scopes: &[&str]) -> String {
    mint_hs256(
        SECRET.as_bytes(),
        &MintRequest {
            sub: sub.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ttl_s: 600,
            ..Default::default()
        },
        None,
        None,
    )
    .unwrap()
}

/// A `redis-server` on a Unix socket in a temp dir; killed on drop.
struct Redis {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Redis {
    fn start() -> Option<Redis> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            if std::env::var_os("CI").is_some() {
                panic!("redis-server is missing: .ci/run installs it with apt-get");
            }
            eprintln!(
                "\n*** SKIPPING: redis-server not found (apt-get install redis-server) ***\n"
            );
            return None;
        }
        let mut r = Redis {
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        r.spawn();
        Some(r)
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("r.sock")
    }

    fn url(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(self.socket())
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
            ])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.socket().exists() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a burst of requests got, per replica.
#[derive(Debug, Default)]
struct Burst {
    admitted: [usize; 3],
    refused: usize,
    other: Vec<u16>,
    limits_seen: std::collections::BTreeSet<String>,
    took: Duration,
}

impl Burst {
    fn admitted(&self) -> usize {
        self.admitted.iter().sum()
    }
}

/// `n` predictions as `tok`, round robin over the replicas, 12 at a time.
async fn burst(client: &reqwest::Client, fleet: &[Replica], tok: &str, n: usize) -> Burst {
    let started = Instant::now();
    let results: Vec<(usize, u16, reqwest::header::HeaderMap)> =
        futures::stream::iter((0..n).map(|i| {
            let url = format!("{}/models/echo/predict", fleet[i % fleet.len()].base);
            let req = client
                .post(url)
                .bearer_auth(tok)
                .json(&json!({"inputs": [1]}));
            async move {
                let r = req.send().await.expect("request failed");
                (i % 3, r.status().as_u16(), r.headers().clone())
            }
        }))
        .buffer_unordered(12)
        .collect()
        .await;
    let mut b = Burst {
        took: started.elapsed(),
        ..Default::default()
    };
    for (replica, status, h) in results {
        match status {
            200 => b.admitted[replica] += 1,
            429 => {
                b.refused += 1;
                assert!(h.contains_key("retry-after"), "{h:?}");
                assert_eq!(h["x-ratelimit-remaining"], "0");
                assert!(h.contains_key("x-ratelimit-reset"), "{h:?}");
                b.limits_seen
                    .insert(h["x-ratelimit-limit"].to_str().unwrap().to_string());
            }
            s => b.other.push(s),
        }
    }
    b
}

/// The `x-ratelimit-limit` a fresh principal sees on `r` (60: fleet-wide; 30: local fallback).
async fn limit_seen(client: &reqwest::Client, r: &Replica, sub: &str) -> String {
    let resp = client
        .post(format!("{}/models/echo/predict", r.base))
        .bearer_auth(token(sub, &["predict"]))
        .json(&json!({"inputs": [1]}))
        .send()
        .await
        .unwrap();
    resp.headers()
        .get("x-ratelimit-limit")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

async fn fallbacks(client: &reqwest::Client, r: &Replica) -> f64 {
    let text = client
        .get(format!("{}/metrics", r.base))
        .bearer_auth(token("ops", &["metrics"]))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("anya_ai_ratelimit_fallbacks_total{mode=\"local\"}"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_hold_across_three_replicas_and_survive_redis_going_away() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let repo = common::EchoRepo::new();
    repo.add("echo", "1.0.0", "");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    // A generous time-out: the test is about counts, not speed, and shares two cores with
    // three servers; a refused connection (Redis killed) still fails at once.
    let config = format!(
        "model:\n  models_dir: {}\n  device: cpu\n  warmup: false\n\
         security:\n  auth_required: true\n  jwt_secret_file: {}\n\
         rate_limits:\n  enabled: true\n  default_tier: fleet\n  redis_url: {}\n  redis_timeout_ms: 2000\n  expected_replicas: 2\n  redis_failure: local\n  tiers:\n    fleet:\n      requests_per_minute: 60\n",
        repo.path().display(),
        dir.path().join("secret").display(),
        redis.url(),
    );
    let fleet: Vec<Replica> = (0..3)
        .map(|i| Replica::start(dir.path(), &format!("replica{i}"), &config, &[]))
        .collect();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    for r in &fleet {
        r.wait_up(&client, 60).await;
        assert_eq!(limit_seen(&client, r, "warm-up").await, "60");
    }

    // 1. Fleet-wide: 300 requests over the three replicas, 60 admitted in all.
    let one = burst(&client, &fleet, &token("alice", &["predict"]), 300).await;
    eprintln!("fleet-wide: {one:?}");
    assert!(one.other.is_empty(), "{one:?}");
    assert!(one.took < Duration::from_secs(10), "{one:?}");
    assert!((57..=63).contains(&one.admitted()), "{one:?}");
    assert_eq!(one.admitted() + one.refused, 300);
    assert_eq!(one.limits_seen.iter().collect::<Vec<_>>(), ["60"]);

    // 2. Redis killed: no 5xx; each replica limits alone to 60 / expected_replicas = 30.
    redis.kill();
    let two = burst(&client, &fleet, &token("bob", &["predict"]), 300).await;
    eprintln!("redis down: {two:?}");
    assert!(two.other.is_empty(), "no 5xx while Redis is down: {two:?}");
    // Each replica admits on its own share of the limit, never more; fewer only if the share's
    // refill clock saw a burst spread over time (a loaded machine), so the floor is loose.
    for n in two.admitted {
        assert!((10..=33).contains(&n), "local limit per replica: {two:?}");
    }
    assert_eq!(two.limits_seen.iter().collect::<Vec<_>>(), ["30"]);
    for r in &fleet {
        assert!(fallbacks(&client, r).await >= 1.0);
    }

    // 3. Redis back on the same socket: every replica returns to it by itself.
    redis.spawn();
    let back = Instant::now();
    for (i, r) in fleet.iter().enumerate() {
        loop {
            if limit_seen(&client, r, &format!("probe{i}")).await == "60" {
                break;
            }
            assert!(
                back.elapsed() < Duration::from_secs(15),
                "replica {i} never returned to Redis"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!(
        "fleet-wide again {:?} after Redis restarted",
        back.elapsed()
    );
    let three = burst(&client, &fleet, &token("carol", &["predict"]), 300).await;
    eprintln!("redis back: {three:?}");
    assert!(three.other.is_empty(), "{three:?}");
    assert!((57..=63).contains(&three.admitted()), "{three:?}");
    assert_eq!(three.limits_seen.iter().collect::<Vec<_>>(), ["60"]);
}

// ---------------------------------------------------------------------------------------------
// Models from S3

const EMBED: &str = "all-minilm-l6-v2";
const GEN: &str = "smollm2-135m-instruct";
const BUCKET: &str = "models";

/// moto's S3 server (tests/sdk/moto_s3.py), counting object GETs.
struct Moto {
    _proc: Proc,
    port: u16,
}

impl Moto {
    fn start() -> Option<Moto> {
        let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/venv/bin/python");
        let ok = Command::new(&python)
            .args(["-c", "import moto.server, boto3"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            if std::env::var_os("CI").is_some() {
                panic!("moto is missing in .cache/venv: .ci/run installs it");
            }
            eprintln!("\n*** SKIPPING: moto not installed (.cache/venv/bin/pip install 'moto[server]' boto3) ***\n");
            return None;
        }
        let mut child = Command::new(python)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/moto_s3.py"))
            .arg(BUCKET)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("moto said {line:?}"));
        Some(Moto {
            _proc: Proc(child),
            port,
        })
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// Object GETs so far, by key (`bucket/…`).
    async fn gets(&self, client: &reqwest::Client) -> std::collections::BTreeMap<String, u64> {
        client
            .get(format!("http://127.0.0.1:{}/_anya/gets", self.port))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

fn push(moto: &Moto, dir: &Path, url: &str) {
    let out = anya()
        .args(["models", "push"])
        .arg(dir)
        .arg(url)
        .envs(moto.env())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "push {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn model_state(client: &reqwest::Client, base: &str, id: &str) -> Value {
    client
        .get(format!("{base}/models/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn wait_settled(client: &reqwest::Client, base: &str, secs: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Ok(r) = client.get(format!("{base}/models")).send().await {
            if let Ok(body) = r.json::<Value>().await {
                let settled = body["models"]
                    .as_array()
                    .is_some_and(|ms| !ms.is_empty() && ms.iter().all(|m| m["state"] != "loading"));
                if settled {
                    return body;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "{base}: models not settled after {secs}s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn outputs(client: &reqwest::Client, base: &str) -> (Value, Value) {
    let post = |model: &str, body: Value| {
        client
            .post(format!("{base}/models/{model}/predict"))
            .json(&body)
            .send()
    };
    let e: Value = post(EMBED, json!({"inputs": ["a fleet behaves as one server"]}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let g: Value = post(
        GEN,
        json!({"inputs": ["The capital of France is"], "parameters": {"temperature": 0, "max_tokens": 8}}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    (e["outputs"][0].clone(), g["outputs"][0].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_are_served_from_s3_verified_and_cached() {
    let Some(models) = common::real_models() else {
        return;
    };
    let Some(moto) = Moto::start() else {
        return;
    };
    let url = format!("s3://{BUCKET}/repo");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap();
    push(&moto, &models.join(EMBED).join("1.0.0"), &url);
    push(&moto, &models.join(GEN).join("1.0.0"), &url);
    // A third version whose object is replaced after publishing (tampered).
    let work = tempfile::tempdir().unwrap();
    let tampered = work.path().join("tampered/1.0.0");
    std::fs::create_dir_all(&tampered).unwrap();
    std::fs::write(tampered.join("data.bin"), b"the published bytes").unwrap();
    let sha = anya::spec::manifest::sha256_file(&tampered.join("data.bin")).unwrap();
    std::fs::write(
        tampered.join("anya.yaml"),
        format!("id: tampered\nversion: 1.0.0\ntask: echo\nformat: none\nmax_input_length: 8\nmax_inputs: 2\nfiles:\n  - path: data.bin\n    sha256: {sha}\n"),
    )
    .unwrap();
    push(&moto, &tampered, &url);
    use object_store::ObjectStoreExt;
    let store = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(BUCKET)
        .with_endpoint(format!("http://127.0.0.1:{}", moto.port))
        .with_allow_http(true)
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .with_region("us-east-1")
        .build()
        .unwrap();
    {
        store
            .put(
                &object_store::path::Path::from("repo/tampered/1.0.0/data.bin"),
                object_store::PutPayload::from_static(b"some other bytes!!"),
            )
            .await
            .unwrap();
    }

    // The reference: the local repository, in process.
    let local = common::start(common::settings(&models), &[EMBED, GEN]).await;
    local.wait_ready(300).await;
    let want = outputs(&client, &local.base).await;
    assert!(want.0.is_array() && !want.1.is_null(), "{want:?}");
    drop(local);

    let cache = work.path().join("cache");
    let config = format!(
        "model:\n  models_dir: {url}\n  cache_dir: {}\n  device: cpu\n  warmup: false\n",
        cache.display()
    );
    let before = moto.gets(&client).await;
    assert!(before.is_empty(), "{before:?}");
    {
        let r = Replica::start(work.path(), "s3-first", &config, &moto.env());
        r.wait_up(&client, 300).await;
        let all = wait_settled(&client, &r.base, 300).await;
        let t = model_state(&client, &r.base, "tampered").await;
        assert_eq!(t["versions"][0]["state"], "failed", "{t}");
        assert!(t.to_string().contains("sha256 mismatch"), "{t}");
        // Readiness names it too (a failed version keeps the pod out of a Service).
        let ready = client
            .get(format!("{}/ready", r.base))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 503);
        let why = ready.text().await.unwrap();
        assert!(why.contains("tampered"), "{why}");
        let got = outputs(&client, &r.base).await;
        assert_eq!(got, want, "outputs from s3:// equal the local repository's");
        for id in [EMBED, GEN] {
            let m = model_state(&client, &r.base, id).await;
            assert_eq!(m["versions"][0]["state"], "ready", "{m} / {all}");
        }
    }
    let first = moto.gets(&client).await;
    eprintln!("GETs after the first start: {first:?}");
    let weights = format!("{BUCKET}/repo/{EMBED}/1.0.0/model.safetensors");
    assert_eq!(first.get(&weights), Some(&1), "{first:?}");

    // A restart with the same cache: the verified files are not downloaded again. With
    // polling on, a version uploaded object by object is loaded once it is complete.
    {
        let polling = format!("{config}  poll_interval_s: 0.3\n");
        let r = Replica::start(work.path(), "s3-second", &polling, &moto.env());
        r.wait_up(&client, 300).await;
        wait_settled(&client, &r.base, 300).await;
        let got = outputs(&client, &r.base).await;
        assert_eq!(got, want);
        let bytes: &'static [u8] = b"uploaded later";
        let digest = {
            let f = work.path().join("late.bin");
            std::fs::write(&f, bytes).unwrap();
            anya::spec::manifest::sha256_file(&f).unwrap()
        };
        let manifest = format!("id: late\nversion: 1.0.0\ntask: echo\nformat: none\nmax_input_length: 8\nmax_inputs: 2\nfiles:\n  - path: data.bin\n    sha256: {digest}\n");
        store
            .put(
                &object_store::path::Path::from("repo/late/1.0.0/anya.yaml"),
                object_store::PutPayload::from(manifest.into_bytes()),
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let missing = client
            .get(format!("{}/models/late", r.base))
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), 404, "loaded before its file was uploaded");
        store
            .put(
                &object_store::path::Path::from("repo/late/1.0.0/data.bin"),
                object_store::PutPayload::from_static(bytes),
            )
            .await
            .unwrap();
        let uploaded = std::time::Instant::now();
        loop {
            let m = model_state(&client, &r.base, "late").await;
            if m["versions"][0]["state"] == "ready" {
                eprintln!(
                    "a version uploaded to the bucket was serving {:?} after its last object",
                    uploaded.elapsed()
                );
                break;
            }
            assert!(uploaded.elapsed() < Duration::from_secs(20), "{m}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let second = moto.gets(&client).await;
    eprintln!("GETs after the restart: {second:?}");
    // The tampered object is judged once: polling does not fetch it again while it is unchanged.
    let bad = format!("{BUCKET}/repo/tampered/1.0.0/data.bin");
    assert_eq!(second.get(&bad), Some(&1), "{second:?}");
    for (k, n) in &second {
        if !k.contains("/tampered/") && !k.contains("/late/") {
            assert_eq!(first.get(k), Some(n), "{k} was downloaded again");
        }
    }
}

/// `rate_limits.redis_failure: closed` refuses with 503 (the limit is unknown, not exceeded) and
/// `open` admits, while the Redis named cannot be reached; never a 500.
#[tokio::test]
async fn redis_failure_closed_is_503_and_open_admits() {
    let repo = common::EchoRepo::new();
    repo.add("echo", "1.0.0", "");
    let nowhere = tempfile::tempdir().unwrap();
    for (mode, want) in [
        (anya::config::RedisFailure::Closed, 503),
        (anya::config::RedisFailure::Open, 200),
        (anya::config::RedisFailure::Local, 200),
    ] {
        let mut st = common::settings(repo.path());
        st.rate_limits.enabled = true;
        st.rate_limits.redis_url = Some(format!(
            "unix://{}",
            nowhere.path().join("no.sock").display()
        ));
        st.rate_limits.redis_failure = mode;
        let srv = common::start(st, &[]).await;
        srv.wait_ready(10).await;
        for _ in 0..3 {
            let (s, h, body) = srv
                .post("/models/echo/predict", json!({"inputs": [1]}))
                .await;
            assert_eq!(s, want, "{mode:?}: {body}");
            if want == 503 {
                assert_eq!(body["error"]["code"], "service_unavailable", "{body}");
                assert_eq!(h["retry-after"], "1");
                assert!(!h.contains_key("x-ratelimit-limit"));
            }
        }
        if want == 503 {
            // /metrics on the main port is a limited route too: scrape monitoring.metrics_port.
            continue;
        }
        let metrics = srv.metrics_text().await;
        let series = format!(
            "anya_ai_ratelimit_fallbacks_total{{mode=\"{}\"}} ",
            mode.as_str()
        );
        // The three predictions, and the scrape itself (a limited route).
        let n: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series)?.parse().ok())
            .unwrap_or_else(|| panic!("{mode:?}: {series} missing"));
        assert!(n >= 3.0, "{mode:?}: {n}");
    }
}

/// A counter's value in `/metrics` (summed over the lines starting with `prefix`).
async fn metric(client: &reqwest::Client, base: &str, prefix: &str) -> f64 {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn job_state(client: &reqwest::Client, base: &str, id: &str) -> Value {
    let r = client
        .get(format!("{base}/jobs/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{base}");
    r.json().await.unwrap()
}

async fn wait_job(client: &reqwest::Client, base: &str, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let j = job_state(client, base, id).await;
        if j["status"] == status {
            return j;
        }
        assert!(Instant::now() < deadline, "never {status}: {j}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn submit(client: &reqwest::Client, base: &str, inputs: &[String]) -> String {
    let r = client
        .post(format!("{base}/jobs"))
        .json(&json!({"model": "echo", "inputs": inputs, "parameters": {"delay_ms": 100}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let job: Value = r.json().await.unwrap();
    job["id"].as_str().unwrap().to_string()
}

/// Issue 17's fleet mode: with `jobs.redis_url` the replicas share the jobs and work one queue
/// (a Redis Stream consumer group); a replica killed with `kill -9` leaves its chunks pending,
/// another claims them, and the job ends with exactly one result per input. A job submitted to
/// one replica is seen, cancelled and read on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_works_one_job_queue_and_takes_over_a_dead_replicas_chunks() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let repo = common::EchoRepo::new();
    repo.add("echo", "1.0.0", common::DELAY_PARAM);
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "model:\n  models_dir: {}\n  device: cpu\n  warmup: false\n\
         jobs:\n  redis_url: {}\n  chunk: 4\n  concurrency: 2\n  claim_idle_ms: 1500\n",
        repo.path().display(),
        redis.url(),
    );
    let mut a = Replica::start(dir.path(), "a", &config, &[]);
    let b = Replica::start(dir.path(), "b", &config, &[]);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    a.wait_up(&client, 60).await;
    b.wait_up(&client, 60).await;

    // 200 chunks of 4 inputs, 100 ms each: seconds of work for two replicas.
    const N: usize = 800;
    let inputs: Vec<String> = (0..N).map(|i| format!("doc-{i}")).collect();
    let id = submit(&client, &a.base, &inputs).await;
    // One store: the job submitted to `a` is on `b` too.
    let j = job_state(&client, &b.base, &id).await;
    assert_eq!(j["counts"]["total"], N, "{j}");
    let killed_at = loop {
        let j = job_state(&client, &b.base, &id).await;
        let done = j["counts"]["completed"].as_u64().unwrap();
        if done >= 200 {
            assert!(done < N as u64, "the job ended before the kill: {j}");
            break done;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let a_computed = metric(
        &client,
        &a.base,
        "anya_ai_job_chunks_total{outcome=\"computed\"}",
    )
    .await;
    a.kill();
    eprintln!("killed `a` with {killed_at} of {N} done; it had computed {a_computed} chunks");
    assert!(a_computed >= 1.0, "`a` took no part in the job");

    let started = Instant::now();
    let job = wait_job(&client, &b.base, &id, "completed").await;
    eprintln!(
        "`b` finished the job {:.1} s after the kill",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(job["counts"]["completed"], N, "{job}");
    assert_eq!(job["counts"]["failed"], 0, "{job}");
    let claimed = metric(
        &client,
        &b.base,
        "anya_ai_job_chunks_total{outcome=\"claimed\"}",
    )
    .await;
    assert!(claimed >= 1.0, "`b` claimed none of `a`'s chunks");
    let text = client
        .get(format!("{}/jobs/{id}/results", b.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), N, "one line per input");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["index"], i, "{l}");
        assert_eq!(l["output"], inputs[i], "{l}");
    }

    // A replica that joins later works the queue too; a job submitted to it and cancelled
    // through another ends `cancelled` with the results computed so far, each once.
    let c = Replica::start(dir.path(), "c", &config, &[]);
    c.wait_up(&client, 60).await;
    let id = submit(&client, &c.base, &inputs).await;
    loop {
        let j = job_state(&client, &c.base, &id).await;
        if j["counts"]["completed"].as_u64().unwrap() >= 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = client
        .post(format!("{}/jobs/{id}/cancel", b.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let job = wait_job(&client, &c.base, &id, "cancelled").await;
    let done = job["counts"]["completed"].as_u64().unwrap();
    assert!(done < N as u64, "{job}");
    let text = client
        .get(format!("{}/jobs/{id}/results", c.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for l in text.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        let i = v["index"].as_u64().unwrap() as usize;
        assert!(seen.insert(i), "index {i} twice");
        assert_eq!(v["output"], inputs[i], "{v}");
    }
    assert_eq!(seen.len() as u64, done, "{job}");
    drop(redis);
}

/// The official `openai` SDK runs a batch on the real embedding model through a fleet whose
/// jobs live in Redis: the file is uploaded and the batch created on one replica, then polled,
/// listed and read back (input, output file) on the other; the vectors equal direct answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_runs_a_batch_across_two_replicas_sharing_redis() {
    let Some(models) = common::real_models() else {
        return;
    };
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/venv/bin/python");
    let has_sdk = Command::new(&python)
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_sdk {
        assert!(
            std::env::var_os("CI").is_none(),
            "the openai SDK is missing in .cache/venv: .ci/run installs it"
        );
        eprintln!("\n*** SKIPPING: no openai SDK in .cache/venv ***\n");
        return;
    }
    let Some(redis) = Redis::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "model:\n  models_dir: {}\n  name: {EMBED}\n  device: cpu\n  warmup: false\n\
         cache:\n  enabled: false\n\
         jobs:\n  redis_url: {}\n",
        models.display(),
        redis.url(),
    );
    let a = Replica::start(dir.path(), "a", &config, &[]);
    let b = Replica::start(dir.path(), "b", &config, &[]);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    a.wait_up(&client, 120).await;
    b.wait_up(&client, 120).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/batch_sdk.py");
    let (a_base, b_base) = (a.base.clone(), b.base.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .args([a_base, b_base, "--embeddings-only".into()])
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
    drop(redis);
}
