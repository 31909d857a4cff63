//! The `anya` binary: exit code 2 and one clear line for every startup mistake, and a real
//! `anya serve` that answers over HTTP.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn anya() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_anya"));
    c.env_remove("RUST_LOG");
    for (k, _) in std::env::vars() {
        if k.starts_with("ANYA__") {
            c.env_remove(k);
        }
    }
    c
}

fn fails_with(cmd: &mut Command, needle: &str) {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains(needle), "expected `{needle}` in: {stderr}");
}

#[test]
fn startup_mistakes_exit_2_with_one_clear_line() {
    let repo = common::EchoRepo::new();
    repo.add("echo", "1.0.0", "");
    let dir = repo.path().to_str().unwrap();
    fails_with(anya().args(["serve", "--bogus"]), "--bogus");
    fails_with(anya().args(["serve", "--port", "nope"]), "--port");
    fails_with(
        anya()
            .args(["serve", "--models-dir", dir, "--port", "0"])
            .env("ANYA__SERVER__PROT", "1"),
        "prot",
    );
    fails_with(
        anya()
            .args(["serve", "--models-dir", dir, "--port", "0"])
            .env("ANYA__MODEL__DEVICE", "tpu"),
        "tpu",
    );
    let cfg = repo.path().join("bad.yaml");
    std::fs::write(&cfg, "server:\n  log_level: loud\n").unwrap();
    fails_with(
        anya().args([
            "serve",
            "--models-dir",
            dir,
            "--config",
            cfg.to_str().unwrap(),
        ]),
        "server.log_level",
    );
    fails_with(
        anya().args(["serve", "--config", "/no/such.yaml"]),
        "/no/such.yaml",
    );
    fails_with(
        anya().args(["serve", "--models-dir", dir, "--model", "missing"]),
        "missing",
    );
    fails_with(
        anya().args(["serve", "--model", "/no/such/model.gguf"]),
        "model.gguf",
    );
    fails_with(
        anya().args(["serve", "--models-dir", "/no/such/dir"]),
        "/no/such/dir",
    );
    // a port in use
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    fails_with(
        anya().args(["serve", "--models-dir", dir, "--port", &port]),
        "cannot listen",
    );
}

#[test]
fn serve_answers_and_models_list_verifies() {
    let repo = common::EchoRepo::new();
    repo.add("echo", "1.0.0", "");
    let dir = repo.path().to_str().unwrap();
    let out = anya()
        .args(["models", "list", "--models-dir", dir])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        stdout.contains("echo") && stdout.contains("1.0.0") && stdout.contains("yes"),
        "{stdout}"
    );

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = anya()
        .args([
            "serve",
            "--models-dir",
            dir,
            "--port",
            &port.to_string(),
            "--log-format",
            "json",
        ])
        .stderr(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .take_while(|l| !l.contains("\"ready\""))
            .collect::<Vec<_>>()
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut ready = false;
    while Instant::now() < deadline {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            s.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut resp = String::new();
            let _ = s.read_to_string(&mut resp);
            if resp.starts_with("HTTP/1.1 200") {
                ready = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // `anya bench` picks the request by the model's task (echo: the predict API), runs the
    // load, and prints its summary; an unknown model exits 2 naming it.
    let server = format!("http://127.0.0.1:{port}");
    let out = anya()
        .args([
            "bench", "--server", &server, "--model", "echo", "-c", "4", "-n", "20",
        ])
        .args(["--body", r#"{"inputs": ["short"]}"#, "--json"])
        .output()
        .unwrap();
    let bench_stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let bench_stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let missing = anya()
        .args(["bench", "--server", &server, "--model", "nope", "-n", "1"])
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready, "anya serve never became ready");
    assert!(out.status.success(), "{bench_stdout}\n{bench_stderr}");
    let summary: serde_json::Value = serde_json::from_str(bench_stdout.trim()).unwrap();
    assert_eq!(summary["ok"], 20, "{summary}");
    assert_eq!(summary["requests"], 20, "{summary}");
    assert_eq!(summary["concurrency"], 4, "{summary}");
    assert_eq!(summary["errors"], serde_json::json!({}), "{summary}");
    assert!(summary["rps"].as_f64().unwrap() > 0.0, "{summary}");
    assert!(
        summary["url"]
            .as_str()
            .unwrap()
            .ends_with("/models/echo/predict"),
        "{summary}"
    );
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("has no model `nope`"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    let lines = lines.join().unwrap();
    assert!(
        lines.iter().any(|l| l.contains("model loaded")
            && l.contains("\"model\":\"echo\"")
            && l.contains("load_ms")),
        "no load line: {lines:?}"
    );
}

/// SIGTERM with 20 requests in flight: all 20 finish with 200, `/ready` turns 503 at once, new
/// requests are refused with 503, and the process exits 0 before the drain deadline.
#[cfg(unix)]
#[test]
fn sigterm_drains_in_flight_requests_then_exits_0() {
    use std::io::{Read, Write};
    let repo = common::EchoRepo::new();
    repo.add(
        "echo",
        "1.0.0",
        &format!("batching:\n  max_batch_size: 5\n  max_batch_tokens: 100\n  max_queue_delay_ms: 0\n  queue_capacity: 64\n{}", common::DELAY_PARAM),
    );
    let dir = repo.path().to_str().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = anya()
        .args(["serve", "--models-dir", dir, "--port", &port.to_string()])
        .env("ANYA__SERVER__DRAIN_TIMEOUT_S", "20")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let http = move |method: &str, path: &str, body: &str| -> Option<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        Some(resp)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !http("GET", "/ready", "").is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    // 20 requests of 200 ms on a worker taking 5 at a time: about 0.8 s of work.
    let workers: Vec<_> = (0..20)
        .map(|i| {
            std::thread::spawn(move || {
                http(
                    "POST",
                    "/models/echo/predict",
                    &format!(r#"{{"inputs":[{i}],"parameters":{{"delay_ms":200}}}}"#),
                )
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(150));
    let signalled = Instant::now();
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    // /ready turns 503 within 100 ms of the signal
    let mut ready_503 = None;
    while signalled.elapsed() < Duration::from_millis(500) {
        if http("GET", "/ready", "").is_some_and(|r| r.starts_with("HTTP/1.1 503")) {
            ready_503 = Some(signalled.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let ready_503 = ready_503.expect("/ready never turned 503");
    assert!(
        ready_503 < Duration::from_millis(100),
        "/ready took {ready_503:?}"
    );
    // new work is refused
    let refused = http("POST", "/models/echo/predict", r#"{"inputs":[1]}"#).unwrap_or_default();
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    for w in workers {
        let resp = w.join().unwrap().unwrap_or_default();
        assert!(
            resp.starts_with("HTTP/1.1 200"),
            "an in-flight request failed: {resp}"
        );
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        signalled.elapsed() < Duration::from_secs(20),
        "exited after the deadline"
    );
}

/// JSON logs: every line of a request carries its request id; one access line per request with
/// route, model, status and latency, and never the inputs.
#[test]
fn access_log_lines_carry_the_request_id() {
    use std::io::{Read, Write};
    let repo = common::EchoRepo::new();
    repo.add("echo", "1.0.0", "");
    let dir = repo.path().to_str().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = anya()
        .args([
            "serve",
            "--models-dir",
            dir,
            "--port",
            &port.to_string(),
            "--log-format",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let send = |req: &str| -> String {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        resp
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && send("GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .starts_with("HTTP/1.1 200");
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let body = r#"{"inputs":["secret-input-text"]}"#;
    let resp = send(&format!(
        "POST /models/echo/predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\nx-request-id: rid-4242\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("x-request-id: rid-4242"),
        "{resp}"
    );
    std::thread::sleep(Duration::from_millis(100));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let lines = reader.join().unwrap();
    let mine: Vec<&String> = lines.iter().filter(|l| l.contains("rid-4242")).collect();
    let access = mine
        .iter()
        .find(|l| l.contains(r#""message":"request""#))
        .unwrap_or_else(|| panic!("no access line with the request id: {lines:#?}"));
    let v: serde_json::Value = serde_json::from_str(access).unwrap();
    assert_eq!(v["status"], 200, "{access}");
    assert_eq!(v["model"], "echo");
    assert_eq!(v["route"], "/models/{id}/predict");
    assert!(v["latency_ms"].as_f64().is_some());
    assert!(
        !lines.iter().any(|l| l.contains("secret-input-text")),
        "inputs leaked into the logs"
    );
}

#[test]
fn token_keygen_sign_and_verify() {
    let repo = common::EchoRepo::new();
    repo.add("echo", "1.0.0", "");
    let dir = repo.path().to_str().unwrap();
    let secret = repo.path().join("secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let out = anya()
        .args([
            "token", "--sub", "alice", "--scope", "predict", "--ttl", "1h",
        ])
        .env("ANYA__SECURITY__JWT_SECRET_FILE", &secret)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    assert_eq!(token.trim().split('.').count(), 3, "{token}");
    fails_with(
        anya()
            .args(["token", "--sub", "a", "--scope", "root"])
            .env("ANYA__SECURITY__JWT_SECRET_FILE", &secret),
        "--scope root",
    );
    fails_with(
        anya().args(["token", "--sub", "a", "--scope", "predict"]),
        "no HS256 secret",
    );

    let key = repo.path().join("signing.key");
    let out = anya()
        .args(["models", "keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let public = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let version = repo.path().join("echo/1.0.0");
    fails_with(
        anya()
            .args(["models", "verify", "--models-dir", dir])
            .env("ANYA__SECURITY__TRUSTED_KEYS", &public),
        "failed verification",
    );
    let out = anya()
        .args(["models", "sign", "--key"])
        .arg(&key)
        .arg(&version)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = anya()
        .args(["models", "verify", "--models-dir", dir])
        .env("ANYA__SECURITY__TRUSTED_KEYS", &public)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest = version.join("anya.yaml");
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("max_inputs: 4", "max_inputs: 5");
    std::fs::write(&manifest, text).unwrap();
    fails_with(
        anya()
            .args(["models", "verify", "--models-dir", dir])
            .env("ANYA__SECURITY__TRUSTED_KEYS", &public),
        "failed verification",
    );
}
