//! Security end to end: a matrix of forged and broken tokens (all 401, none reaching a model),
//! scopes and model lists (403), rate limits per principal (429 with headers, others
//! unaffected), X-Forwarded-For spoofing, CORS, header and concurrency limits, signed models.

mod common;

use std::time::Duration;

use anya::auth::{mint_hs256, MintRequest};
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use serde_json::json;

const SECRET: &str = "test-secret-0123456789";

fn mint(r: &MintRequest, iss: Option<&str>, aud: Option<&str>) -> String {
    mint_hs256(
        SECRET.as_bytes(),
        r,
        iss.map(String::from),
        aud.map(String::from),
    )
    .unwrap()
}

fn req(sub: &str, scopes: &[&str]) -> MintRequest {
    MintRequest {
        sub: sub.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        ttl_s: 300,
        ..Default::default()
    }
}

async fn call(
    srv: &TestServer,
    token: Option<&str>,
    method: reqwest::Method,
    path: &str,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let mut r = srv.client.request(method.clone(), srv.url(path));
    if method == reqwest::Method::POST {
        r = r.json(&json!({"inputs": [1]}));
    }
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    split(r.send().await.unwrap()).await
}

async fn hs_server(
    extra: impl FnOnce(&mut anya::config::Settings),
) -> (EchoRepo, tempfile::TempDir, TestServer) {
    let repo = EchoRepo::new();
    repo.add("echo", "1.0.0", "");
    repo.add("other", "1.0.0", "");
    let keys = tempfile::tempdir().unwrap();
    std::fs::write(keys.path().join("secret"), format!("{SECRET}\n")).unwrap();
    let mut st = settings(repo.path());
    st.security.auth_required = true;
    st.security.jwt_secret_file = Some(keys.path().join("secret"));
    st.security.jwt_issuer = Some("https://issuer.test".into());
    st.security.jwt_audience = Some("anya".into());
    st.security.jwt_leeway_s = 0;
    extra(&mut st);
    let srv = start(st, &[]).await;
    srv.wait_ready(10).await;
    (repo, keys, srv)
}

async fn batches_run(srv: &TestServer) -> f64 {
    let text = srv
        .client
        .get(srv.url("/metrics"))
        .bearer_auth(mint(
            &req("ops", &["metrics"]),
            Some("https://issuer.test"),
            Some("anya"),
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("anya_ai_batch_size_count"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

#[tokio::test]
async fn forged_and_broken_tokens_get_401_and_never_reach_a_model() {
    let (_r, _k, srv) = hs_server(|_| {}).await;
    let iss = Some("https://issuer.test");
    let aud = Some("anya");
    let good = mint(&req("alice", &["predict"]), iss, aud);
    let mut expired = req("alice", &["predict"]);
    expired.ttl_s = 1;
    let expired = mint(&expired, iss, aud);
    let mut later = req("alice", &["predict"]);
    later.not_before_s = Some(3600);
    let payload = good.split('.').nth(1).unwrap().to_string();
    let mut tampered: Vec<String> = good.split('.').map(String::from).collect();
    // add a scope by re-encoding the payload with `admin`, keeping the old signature
    let claims: serde_json::Value =
        serde_json::from_slice(&base64_url_decode(&tampered[1])).unwrap();
    let mut forged_claims = claims.clone();
    forged_claims["scope"] = json!("predict admin");
    tampered[1] = base64_url_encode(&serde_json::to_vec(&forged_claims).unwrap());
    let cases: Vec<(&str, Option<String>)> = vec![
        ("none", None),
        ("not a jwt", Some("abc.def".into())),
        (
            "expired",
            Some({
                tokio::time::sleep(Duration::from_millis(2100)).await;
                expired
            }),
        ),
        ("not yet valid", Some(mint(&later, iss, aud))),
        (
            "wrong audience",
            Some(mint(&req("alice", &["predict"]), iss, Some("other"))),
        ),
        (
            "wrong issuer",
            Some(mint(
                &req("alice", &["predict"]),
                Some("https://evil.test"),
                aud,
            )),
        ),
        (
            "wrong key",
            Some(
                mint_hs256(
                    b"another-secret",
                    &req("alice", &["predict"]),
                    iss.map(String::from),
                    aud.map(String::from),
                )
                .unwrap(),
            ),
        ),
        (
            "alg none",
            Some(format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.")),
        ),
        ("tampered", Some(tampered.join("."))),
    ];
    for (name, token) in &cases {
        let (s, h, b) = call(
            &srv,
            token.as_deref(),
            reqwest::Method::POST,
            "/models/echo/predict",
        )
        .await;
        assert_eq!(s, 401, "{name}: {b}");
        assert_eq!(b["error"]["code"], "unauthorized", "{name}");
        let challenge = h["www-authenticate"].to_str().unwrap();
        if *name == "none" {
            assert_eq!(challenge, r#"Bearer realm="anya""#);
        } else {
            assert!(
                challenge.starts_with(
                    r#"Bearer realm="anya", error="invalid_token", error_description=""#
                ),
                "{name}: {challenge}"
            );
        }
        assert!(!b.to_string().contains(SECRET), "{name}: the secret leaked");
    }
    assert_eq!(
        batches_run(&srv).await,
        0.0,
        "a forged token reached a model"
    );
    // probes stay open, everything else is closed
    assert_eq!(
        call(&srv, None, reqwest::Method::GET, "/health").await.0,
        200
    );
    assert_eq!(
        call(&srv, None, reqwest::Method::GET, "/ready").await.0,
        200
    );
    assert_eq!(
        call(&srv, None, reqwest::Method::GET, "/models").await.0,
        401
    );
    assert_eq!(
        call(&srv, None, reqwest::Method::GET, "/metrics").await.0,
        401
    );
    // and the good token works
    let (s, _, b) = predict_as(&srv, &good).await;
    assert_eq!(s, 200, "{b}");
}

/// An HS256 token with exactly these claims (signed with the right secret).
fn raw_token(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// With `jwt_issuer` and `jwt_audience` configured, a token must carry both and both must
/// match: every combination of missing, wrong and right (string and array `aud`), on a predict
/// route and on admin routes, with the reason in `WWW-Authenticate`.
#[tokio::test]
async fn a_configured_issuer_and_audience_are_required() {
    let (_r, _k, srv) = hs_server(|_| {}).await;
    let exp = anya::usage::now_unix() + 300;
    let issuers = [
        ("no iss", None),
        ("wrong iss", Some(json!("https://evil.test"))),
        ("right iss", Some(json!("https://issuer.test"))),
    ];
    let audiences = [
        ("no aud", None),
        ("wrong aud", Some(json!("other"))),
        ("right aud", Some(json!("anya"))),
        ("aud list with it", Some(json!(["other", "anya"]))),
        ("aud list without it", Some(json!(["other", "more"]))),
        ("empty aud list", Some(json!([]))),
    ];
    for (iname, iss) in &issuers {
        for (aname, aud) in &audiences {
            let mut claims = json!({"sub": "mallory", "scope": "admin", "exp": exp});
            if let Some(i) = iss {
                claims["iss"] = i.clone();
            }
            if let Some(a) = aud {
                claims["aud"] = a.clone();
            }
            let token = raw_token(claims);
            let ok = *iname == "right iss" && matches!(*aname, "right aud" | "aud list with it");
            for (method, path) in [
                (reqwest::Method::POST, "/models/echo/predict"),
                (reqwest::Method::GET, "/models"),
                (reqwest::Method::DELETE, "/cache"),
                (reqwest::Method::GET, "/metrics"),
            ] {
                let (s, h, b) = call(&srv, Some(&token), method, path).await;
                let case = format!("{iname}, {aname}: {path}");
                if ok {
                    assert_eq!(s, 200, "{case}: {b}");
                    continue;
                }
                assert_eq!(s, 401, "{case}: {b}");
                let challenge = h["www-authenticate"].to_str().unwrap().to_string();
                // A missing claim is named before a wrong one; with both missing, either.
                let mut reasons = Vec::new();
                if *iname == "no iss" {
                    reasons.push("no issuer");
                }
                if *aname == "no aud" {
                    reasons.push("no audience");
                }
                if reasons.is_empty() {
                    reasons.push(if *iname == "wrong iss" {
                        "issuer is not accepted"
                    } else {
                        "audience is not accepted"
                    });
                }
                let message = b["error"]["message"].as_str().unwrap();
                assert!(
                    reasons
                        .iter()
                        .any(|r| challenge.contains(r) && message.contains(r)),
                    "{case}: {challenge} / {message}"
                );
            }
        }
    }
    // the same on /v1 (OpenAI's shape) and gRPC-free KServe REST
    let bare = raw_token(json!({"sub": "mallory", "scope": "admin", "exp": exp}));
    for path in ["/v1/models", "/v2/models/echo"] {
        let (s, h, _) = call(&srv, Some(&bare), reqwest::Method::GET, path).await;
        assert_eq!(s, 401, "{path}");
        let challenge = h["www-authenticate"].to_str().unwrap();
        assert!(
            challenge.contains("no issuer") || challenge.contains("no audience"),
            "{path}"
        );
    }
}

/// POST one input to the echo model with `token`.
async fn predict_as(
    srv: &TestServer,
    token: &str,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    call(
        srv,
        Some(token),
        reqwest::Method::POST,
        "/models/echo/predict",
    )
    .await
}

fn base64_url_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}
fn base64_url_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[tokio::test]
async fn public_keys_kid_rotation_and_key_confusion() {
    let sk = p256::SecretKey::from_slice(&[0x42; 32]).unwrap();
    let private_pem = sk.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
    let public_pem = sk.public_key().to_public_key_pem(LineEnding::LF).unwrap();
    let jwk: serde_json::Value = serde_json::from_str(&sk.public_key().to_jwk_string()).unwrap();
    let mut jwk = jwk;
    jwk["kid"] = json!("k1");
    jwk["alg"] = json!("ES256");
    jwk["use"] = json!("sig");
    let keys = tempfile::tempdir().unwrap();
    std::fs::write(
        keys.path().join("jwks.json"),
        json!({"keys": [jwk]}).to_string(),
    )
    .unwrap();
    let repo = EchoRepo::new();
    repo.add("echo", "1.0.0", "");
    let mut st = settings(repo.path());
    st.security.auth_required = true;
    st.security.jwt_public_keys = Some(keys.path().join("jwks.json"));
    let srv = start(st, &[]).await;
    srv.wait_ready(10).await;

    let claims = json!({"sub": "svc", "scope": "predict", "exp": anya::usage::now_unix() + 300});
    let es = |kid: Option<&str>| {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = kid.map(String::from);
        jsonwebtoken::encode(
            &h,
            &claims,
            &EncodingKey::from_ec_pem(private_pem.as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let (s, _, b) = call(
        &srv,
        Some(&es(Some("k1"))),
        reqwest::Method::POST,
        "/models/echo/predict",
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (s, _, _) = call(
        &srv,
        Some(&es(Some("k9"))),
        reqwest::Method::POST,
        "/models/echo/predict",
    )
    .await;
    assert_eq!(s, 401, "unknown kid");
    // HS256 signed with the public key as the HMAC secret: the classic confusion attack
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(public_pem.as_bytes()),
    )
    .unwrap();
    let (s, _, _) = predict_as(&srv, &confused).await;
    assert_eq!(s, 401, "HS/ES key confusion");
}

#[tokio::test]
async fn scopes_and_model_lists_give_403() {
    let (_r, _k, srv) = hs_server(|_| {}).await;
    let t = |r: MintRequest| mint(&r, Some("https://issuer.test"), Some("anya"));
    let metrics_only = t(req("ops", &["metrics"]));
    let (s, _, b) = predict_as(&srv, &metrics_only).await;
    assert_eq!((s, b["error"]["code"].as_str()), (403, Some("forbidden")));
    let mut limited = req("bob", &["predict"]);
    limited.models = Some(vec!["other".into()]);
    let limited = t(limited);
    assert_eq!(predict_as(&srv, &limited).await.0, 403);
    assert_eq!(
        call(
            &srv,
            Some(&limited),
            reqwest::Method::POST,
            "/models/other/predict"
        )
        .await
        .0,
        200
    );
    // A limited token lists only its models and reads no other model's metadata.
    for (path, list) in [("/models", "models"), ("/v1/models", "data")] {
        let (s, _, b) = call(&srv, Some(&limited), reqwest::Method::GET, path).await;
        assert_eq!(s, 200);
        let ids: Vec<&str> = b[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, vec!["other"], "{path}: {b}");
    }
    for path in ["/models/echo", "/models/echo/versions", "/v2/models/echo"] {
        let (s, _, b) = call(&srv, Some(&limited), reqwest::Method::GET, path).await;
        assert_eq!(s, 403, "{path}: {b}");
    }
    assert_eq!(
        call(&srv, Some(&limited), reqwest::Method::GET, "/models/other")
            .await
            .0,
        200
    );
    let predict = t(req("carol", &["predict"]));
    assert_eq!(predict_as(&srv, &predict).await.0, 200);
    let (_, _, b) = call(&srv, Some(&predict), reqwest::Method::GET, "/models").await;
    assert_eq!(b["models"].as_array().unwrap().len(), 2, "{b}");
    assert_eq!(
        call(&srv, Some(&predict), reqwest::Method::DELETE, "/cache")
            .await
            .0,
        403
    );
    assert_eq!(
        call(&srv, Some(&predict), reqwest::Method::GET, "/metrics")
            .await
            .0,
        403
    );
    let admin = t(req("root", &["admin"]));
    assert_eq!(
        call(&srv, Some(&admin), reqwest::Method::DELETE, "/cache")
            .await
            .0,
        200
    );
    // principals see their own usage; admins see everyone's
    let (_, _, own) = call(
        &srv,
        Some(&limited),
        reqwest::Method::GET,
        "/usage?group_by=principal",
    )
    .await;
    let keys: Vec<&str> = own["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, vec!["bob"], "{own}");
    let (_, _, all) = call(
        &srv,
        Some(&admin),
        reqwest::Method::GET,
        "/usage?group_by=principal",
    )
    .await;
    assert!(all["rows"].as_array().unwrap().len() >= 2, "{all}");
}

#[tokio::test]
async fn the_n_plus_first_request_gets_429_and_other_principals_are_unaffected() {
    let (_r, _k, srv) = hs_server(|st| {
        st.rate_limits.enabled = true;
        st.rate_limits.tiers.insert(
            "tiny".into(),
            anya::config::TierLimits {
                requests_per_minute: 3,
                tokens_per_minute: None,
            },
        );
    })
    .await;
    let t = |sub: &str| {
        let mut r = req(sub, &["predict"]);
        r.tier = Some("tiny".into());
        mint(&r, Some("https://issuer.test"), Some("anya"))
    };
    let (a, b) = (t("a"), t("b"));
    for left in [2, 1, 0] {
        let (s, h, _) = predict_as(&srv, &a).await;
        assert_eq!(s, 200);
        assert_eq!(h["x-ratelimit-limit"], "3");
        assert_eq!(h["x-ratelimit-remaining"], left.to_string().as_str());
        // Reset is a Unix time within the minute.
        let reset: u64 = h["x-ratelimit-reset"].to_str().unwrap().parse().unwrap();
        let now = anya::usage::now_unix();
        assert!((now..=now + 61).contains(&reset), "{reset} vs now {now}");
    }
    let (s, h, body) = predict_as(&srv, &a).await;
    assert_eq!(s, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry), "{retry}");
    assert_eq!(h["x-ratelimit-remaining"], "0");
    let (s, _, _) = predict_as(&srv, &b).await;
    assert_eq!(s, 200, "another principal is unaffected");
}

#[tokio::test]
async fn spoofed_forwarded_for_changes_nothing_unless_the_peer_is_trusted() {
    let limited = |trusted: Vec<String>| {
        let repo = EchoRepo::new();
        repo.add("echo", "1.0.0", "");
        let mut st = settings(repo.path());
        st.rate_limits.enabled = true;
        st.rate_limits
            .tiers
            .get_mut("free")
            .unwrap()
            .requests_per_minute = 2;
        st.security.trusted_proxies = trusted;
        (repo, st)
    };
    // untrusted peer: a new X-Forwarded-For per request is still the same client
    let (_r1, st) = limited(vec![]);
    let srv = start(st, &[]).await;
    srv.wait_ready(10).await;
    let mut statuses = Vec::new();
    for i in 0..3 {
        let r = srv
            .client
            .post(srv.url("/models/echo/predict"))
            .header("x-forwarded-for", format!("10.9.9.{i}"))
            .json(&json!({"inputs": [1]}))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, vec![200, 200, 429]);
    // a trusted proxy: its X-Forwarded-For names the client
    let (_r2, st) = limited(vec!["127.0.0.1".into(), "::1".into()]);
    let srv = start(st, &[]).await;
    srv.wait_ready(10).await;
    for i in 0..3 {
        let r = srv
            .client
            .post(srv.url("/models/echo/predict"))
            .header("x-forwarded-for", format!("203.0.113.{i}"))
            .json(&json!({"inputs": [1]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

#[tokio::test]
async fn cors_preflights_answer_only_for_listed_origins() {
    let repo = EchoRepo::new();
    repo.add("echo", "1.0.0", "");
    let mut st = settings(repo.path());
    st.security.allowed_origins = vec!["https://app.example.com".into()];
    let srv = start(st, &[]).await;
    srv.wait_ready(10).await;
    let preflight = |origin: &'static str| {
        srv.client
            .request(reqwest::Method::OPTIONS, srv.url("/models/echo/predict"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,authorization",
            )
            .send()
    };
    let ok = preflight("https://app.example.com").await.unwrap();
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert!(ok
        .headers()
        .get("access-control-allow-credentials")
        .is_none());
    let evil = preflight("https://evil.example.com").await.unwrap();
    assert!(evil.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn header_and_concurrency_limits() {
    let repo = EchoRepo::new();
    repo.add("echo", "1.0.0", DELAY_PARAM);
    let mut st = settings(repo.path());
    st.server.max_header_bytes = 2048;
    st.server.max_concurrent_requests = 1;
    let srv = start(st, &[]).await;
    srv.wait_ready(10).await;
    let r = srv
        .client
        .get(srv.url("/models"))
        .header("x-big", "y".repeat(4096))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    let slow = {
        let c = srv.client.clone();
        let u = srv.url("/models/echo/predict");
        tokio::spawn(async move {
            c.post(u)
                .json(&json!({"inputs": [1], "parameters": {"delay_ms": 500}}))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (s, h, _) = srv
        .post("/models/echo/predict", json!({"inputs": [2]}))
        .await;
    assert_eq!(s, 503);
    assert_eq!(h["retry-after"], "1");
    assert_eq!(slow.await.unwrap(), 200);
}

#[tokio::test]
async fn unsigned_or_tampered_models_are_refused_when_signing_is_required() {
    use anya::registry::manifest::Manifest;
    use anya::registry::signing;
    let key = ed25519_dalek::SigningKey::from_bytes(&[5u8; 32]);
    let repo = EchoRepo::new();
    repo.add("signed", "1.0.0", "")
        .add("unsigned", "1.0.0", "")
        .add("tampered", "1.0.0", "");
    for id in ["signed", "tampered"] {
        let dir = repo.path().join(id).join("1.0.0");
        let mut m = Manifest::load(&dir).unwrap();
        signing::sign(&mut m, &key);
        if id == "tampered" {
            m.max_inputs = 64;
        }
        std::fs::write(dir.join("anya.yaml"), m.to_yaml()).unwrap();
    }
    let mut st = settings(repo.path());
    st.security.require_signed_models = true;
    st.security.trusted_keys = vec![signing::encode_public_key(&key.verifying_key())];
    let srv = start(st, &[]).await;
    srv.wait_settled(10).await;
    let state = |id: &'static str| {
        let srv = &srv;
        async move { srv.get(&format!("/models/{id}")).await.1["versions"][0].clone() }
    };
    assert_eq!(state("signed").await["state"], "ready");
    let u = state("unsigned").await;
    assert_eq!(u["state"], "failed");
    assert!(u["error"].as_str().unwrap().contains("not signed"), "{u}");
    let t = state("tampered").await;
    assert!(
        t["error"].as_str().unwrap().contains("does not match"),
        "{t}"
    );
    let text = srv.metrics_text().await;
    assert!(
        text.contains(
            r#"anya_ai_model_load_count{model="unsigned",result="failure",version="1.0.0"} 1"#
        ),
        "{text}"
    );
}
