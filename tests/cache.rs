//! The response cache end to end on the real embedding model: hits and misses, opt-out,
//! partial hits, TTL, version invalidation, clearing, and a real `redis-server` (started here on
//! a Unix socket) shared by two anya instances, killed under load and restarted.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const EMBED: &str = "all-minilm-l6-v2";
const URL: &str = "/models/all-minilm-l6-v2/predict";

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

/// A repository with the real embedding model under two versions (hard links, no copies).
fn two_versions(real: &Path) -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    let src = real.join(EMBED).join("1.0.0");
    for (v, default) in [("1.0.0", true), ("1.1.0", false)] {
        let dst = repo.path().join(EMBED).join(v);
        std::fs::create_dir_all(dst.join("1_Pooling")).unwrap();
        for f in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "1_Pooling/config.json",
        ] {
            if std::fs::hard_link(src.join(f), dst.join(f)).is_err() {
                std::fs::copy(src.join(f), dst.join(f)).unwrap();
            }
        }
        let manifest = std::fs::read_to_string(src.join("anya.yaml"))
            .unwrap()
            .replace("version: 1.0.0", &format!("version: {v}"))
            .replace("default: true", &format!("default: {default}"));
        std::fs::write(dst.join("anya.yaml"), manifest).unwrap();
    }
    repo
}

async fn embed(srv: &TestServer, inputs: Value) -> (u16, Option<String>, Value) {
    let (s, h, b) = srv.post(URL, json!({ "inputs": inputs })).await;
    let x = h.get("x-cache").map(|v| v.to_str().unwrap().to_string());
    (s, x, b)
}

#[tokio::test]
async fn memory_cache_hits_partial_hits_opt_out_versions_and_clear() {
    let Some(real) = real_models() else { return };
    let repo = two_versions(&real);
    let srv = start(settings(repo.path()), &[]).await;
    srv.wait_ready(120).await;

    let (s, x, first) = embed(&srv, json!(["the cache keeps this"])).await;
    assert_eq!((s, x.as_deref()), (200, Some("miss")));
    assert_eq!(first["metadata"]["cached"], false);
    let (_, x, again) = embed(&srv, json!(["the cache keeps this"])).await;
    assert_eq!(x.as_deref(), Some("hit"));
    assert_eq!(again["metadata"]["cached"], true);
    assert_eq!(
        again["metadata"]["tokens_processed"], 0,
        "nothing was computed"
    );
    assert_eq!(
        again["outputs"], first["outputs"],
        "a hit returns the same vector"
    );

    // opt-out by parameter and by header
    let (_, h, b) = srv
        .post(
            URL,
            json!({"inputs": ["the cache keeps this"], "parameters": {"cache": false}}),
        )
        .await;
    assert!(h.get("x-cache").is_none());
    assert_eq!(b["metadata"]["cached"], false);
    assert!(b["metadata"]["tokens_processed"].as_u64().unwrap() > 0);
    let r = srv
        .client
        .post(srv.url(URL))
        .header("cache-control", "no-cache")
        .json(&json!({"inputs": ["the cache keeps this"]}))
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("x-cache").is_none());
    let (s, _, b) = srv
        .post(
            URL,
            json!({"inputs": ["x"], "parameters": {"cache": "yes"}}),
        )
        .await;
    assert_eq!(
        (s, b["error"]["details"]["field"].clone()),
        (400, json!("parameters.cache"))
    );

    // 31 known sentences and one new: only the new one is computed, in its place
    let known: Vec<String> = (0..31)
        .map(|i| format!("known sentence number {i}"))
        .collect();
    let (_, _, warm) = embed(&srv, json!(known)).await;
    let mut mixed = known.clone();
    mixed.insert(17, "a sentence never seen before".into());
    let (_, x, b) = embed(&srv, json!(mixed)).await;
    assert_eq!(x.as_deref(), Some("miss"));
    assert_eq!(b["metadata"]["cache_hits"], 31);
    assert_eq!(b["metadata"]["batch_size"], 1, "one input computed");
    assert_eq!(b["outputs"][16], warm["outputs"][16]);
    assert_eq!(b["outputs"][18], warm["outputs"][17]);
    let (_, _, alone) = embed(&srv, json!(["a sentence never seen before"])).await;
    let cos = cosine(&floats(&alone["outputs"][0]), &floats(&b["outputs"][17]));
    assert!(cos > 0.99999, "{cos}");

    // a new version never serves the old one's entries
    let (_, h, _) = srv
        .post(
            &format!("/models/{EMBED}/versions/1.1.0/predict"),
            json!({"inputs": ["the cache keeps this"]}),
        )
        .await;
    assert_eq!(h["x-cache"], "miss");

    // clearing one model's entries
    let r = srv
        .client
        .delete(srv.url(&format!("/cache?model={EMBED}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cleared: Value = r.json().await.unwrap();
    assert!(
        cleared["cleared"]["memory"].as_u64().unwrap() >= 33,
        "{cleared}"
    );
    let (_, x, _) = embed(&srv, json!(["the cache keeps this"])).await;
    assert_eq!(x.as_deref(), Some("miss"));
    let r = srv
        .client
        .delete(srv.url("/cache?model=nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let text = srv.metrics_text().await;
    assert!(
        text.contains(r#"anya_ai_cache_requests_total{result="hit",tier="memory"}"#),
        "{text}"
    );
}

#[tokio::test]
async fn entries_expire_after_the_ttl() {
    let Some(real) = real_models() else { return };
    let mut st = settings(&real);
    st.cache.ttl = 1;
    let srv = start(st, &[EMBED]).await;
    srv.wait_ready(120).await;
    let (_, x, _) = embed(&srv, json!(["short lived"])).await;
    assert_eq!(x.as_deref(), Some("miss"));
    let (_, x, _) = embed(&srv, json!(["short lived"])).await;
    assert_eq!(x.as_deref(), Some("hit"));
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (_, x, _) = embed(&srv, json!(["short lived"])).await;
    assert_eq!(x.as_deref(), Some("miss"), "the entry outlived its ttl");
}

#[tokio::test]
async fn greedy_generation_is_cached_and_sampling_is_not() {
    let Some(real) = real_models() else { return };
    let srv = start(settings(&real), &["smollm2-135m-instruct"]).await;
    srv.wait_ready(120).await;
    let url = "/models/smollm2-135m-instruct/predict";
    let greedy =
        json!({"inputs": ["Hello there"], "parameters": {"temperature": 0, "max_tokens": 4}});
    let (_, h1, a) = srv.post(url, greedy.clone()).await;
    let (_, h2, b) = srv.post(url, greedy).await;
    assert_eq!(
        (
            h1["x-cache"].to_str().unwrap(),
            h2["x-cache"].to_str().unwrap()
        ),
        ("miss", "hit")
    );
    assert_eq!(a["outputs"], b["outputs"]);
    assert_eq!(
        b["metadata"]["finish_reasons"],
        a["metadata"]["finish_reasons"]
    );
    let sampled =
        json!({"inputs": ["Hello there"], "parameters": {"temperature": 0.9, "max_tokens": 4}});
    let (_, h, _) = srv.post(url, sampled).await;
    assert!(
        h.get("x-cache").is_none(),
        "unseeded sampling must not be cached"
    );
}

/// Two instances share Redis; killing Redis under load fails no request; restarting it brings
/// hits back without restarting anya.
#[tokio::test]
async fn redis_is_shared_and_never_a_single_point_of_failure() {
    let Some(real) = real_models() else { return };
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let mut st = settings(&real);
    st.cache.redis_url = Some(redis.url());
    st.cache.redis_timeout_ms = 200;
    let a = start(st.clone(), &[EMBED]).await;
    let b = start(st, &[EMBED]).await;
    a.wait_ready(120).await;
    b.wait_ready(120).await;

    let (_, x, from_a) = embed(&a, json!(["shared between replicas"])).await;
    assert_eq!(x.as_deref(), Some("miss"));
    // the write to Redis is in the background: wait until it is there
    wait_for_keys(&redis, 1).await;
    let (_, x, from_b) = embed(&b, json!(["shared between replicas"])).await;
    assert_eq!(
        x.as_deref(),
        Some("hit"),
        "instance b did not find a's entry in Redis"
    );
    assert_eq!(from_a["outputs"], from_b["outputs"]);

    // Kill Redis in the middle of a load: every request still succeeds.
    let mut tasks = Vec::new();
    for i in 0..60 {
        let c = a.client.clone();
        let url = a.url(URL);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10 * i)).await;
            let r = c
                .post(url)
                .json(&json!({"inputs": [format!("load sentence {i}")]}))
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    redis.kill();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200, "a request failed because Redis died");
    }
    let (s, _, _) = embed(&a, json!(["while redis is down"])).await;
    assert_eq!(s, 200);
    let text = a.metrics_text().await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("anya_ai_cache_errors_total") && !l.ends_with(" 0")),
        "Redis failures were not counted: {text}"
    );

    // Restart Redis: hits through Redis resume, with no restart of anya.
    redis.spawn();
    let deadline = Instant::now() + Duration::from_secs(20);
    // Each round writes a fresh sentence through a and reads it through b, so a hit can only
    // come from Redis (b's first calls may still find its connection down: fail-open misses).
    let mut n = 0;
    loop {
        n += 1;
        let probe = format!("after the restart, probe {n}");
        let before = redis_keys(&redis).await.unwrap_or(0);
        let _ = embed(&a, json!([probe.clone()])).await;
        let written = Instant::now() + Duration::from_secs(1);
        while redis_keys(&redis).await.unwrap_or(0) <= before && Instant::now() < written {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (s, x, _) = embed(&b, json!([probe])).await;
        assert_eq!(s, 200);
        if x.as_deref() == Some("hit") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "hits never resumed after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn redis_keys(redis: &Redis) -> Option<usize> {
    let client = ::redis::Client::open(redis.url()).ok()?;
    let mut con = client.get_multiplexed_async_connection().await.ok()?;
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg("anya:v1:*")
        .query_async(&mut con)
        .await
        .ok()?;
    Some(keys.len())
}

async fn wait_for_keys(redis: &Redis, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis_keys(redis).await.unwrap_or(0) < n {
        assert!(Instant::now() < deadline, "nothing reached Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
