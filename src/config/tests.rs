//! Tests of the settings: layering of defaults, file, environment and flags, unknown keys, and
//! the range checks.

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn write(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("anya.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn devices_parse_with_an_ordinal() {
    for (text, want) in [
        ("cpu", DeviceKind::Cpu),
        ("auto", DeviceKind::Auto),
        ("cuda", DeviceKind::Cuda(0)),
        ("CUDA:3", DeviceKind::Cuda(3)),
    ] {
        assert_eq!(text.parse::<DeviceKind>(), Ok(want), "{text}");
    }
    for bad in ["cuda:", "cuda:x", "tpu", "cuda:-1"] {
        assert!(bad.parse::<DeviceKind>().is_err(), "{bad}");
    }
    assert_eq!(DeviceKind::Cuda(2).to_string(), "cuda:2");
    let e = env(&[("ANYA__MODEL__DEVICE", "cuda:1")]);
    let s = Settings::load_from(None, e, &Overrides::default()).unwrap();
    assert_eq!(s.model.device, DeviceKind::Cuda(1));
    let e = env(&[("ANYA__MODEL__DEVICE", "cuda:one")]);
    let err = Settings::load_from(None, e, &Overrides::default()).unwrap_err();
    assert!(err.to_string().contains("device"), "{err}");
}

#[test]
fn defaults_are_valid() {
    let s = Settings::load_from(None, env(&[]), &Overrides::default()).unwrap();
    assert_eq!(s.server.port, 8000);
    assert_eq!(s.server.host, "127.0.0.1");
    assert_eq!(s.model.models_dir, PathBuf::from("models"));
}

#[test]
fn layers_apply_in_order_file_env_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "server:\n  port: 7000\n  host: 0.0.0.0\n  log_level: debug\nmodel:\n  device: cpu\n",
    );
    // file only
    let s = Settings::load_from(Some(&file), env(&[]), &Overrides::default()).unwrap();
    assert_eq!((s.server.port, s.server.host.as_str()), (7000, "0.0.0.0"));
    assert_eq!(s.model.device, DeviceKind::Cpu);
    // env beats file
    let e = env(&[("ANYA__SERVER__PORT", "9000"), ("ANYA__CACHE__TTL", "5")]);
    let s = Settings::load_from(Some(&file), e.clone(), &Overrides::default()).unwrap();
    assert_eq!(s.server.port, 9000);
    assert_eq!(s.cache.ttl, 5);
    assert_eq!(s.server.log_level, "debug");
    // flags beat env
    let o = Overrides {
        port: Some(9100),
        ..Default::default()
    };
    let s = Settings::load_from(Some(&file), e, &o).unwrap();
    assert_eq!(s.server.port, 9100);
    // --workers sets server.workers.
    let o = Overrides {
        workers: Some(3),
        ..Default::default()
    };
    let s = Settings::load_from(None, env(&[("ANYA__SERVER__WORKERS", "8")]), &o).unwrap();
    assert_eq!(s.server.workers, 3);
}

#[test]
fn model_version_takes_latest_or_a_semantic_version() {
    for ok in ["latest", "1.2.3"] {
        let s = Settings::load_from(
            None,
            env(&[("ANYA__MODEL__VERSION", ok)]),
            &Overrides::default(),
        );
        assert_eq!(
            s.map(|s| s.model.version).ok().flatten().as_deref(),
            Some(ok)
        );
    }
    let err = Settings::load_from(
        None,
        env(&[("ANYA__MODEL__VERSION", "newest")]),
        &Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("model.version") && err.contains("latest"),
        "{err}"
    );
}

#[test]
fn unknown_key_in_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "server:\n  prot: 7000\n");
    let err = Settings::load_from(Some(&file), env(&[]), &Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("prot"), "{err}");
}

#[test]
fn unknown_key_in_env_is_named() {
    let err = Settings::load_from(
        None,
        env(&[("ANYA__SERVER__NOPE", "1")]),
        &Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn bad_values_name_their_key() {
    let cases = [
        ("ANYA__SERVER__PORT", "99999", "port"),
        ("ANYA__SERVER__LOG_LEVEL", "loud", "server.log_level"),
        ("ANYA__MODEL__DEVICE", "tpu", "tpu"),
        (
            "ANYA__SERVER__REQUEST_TIMEOUT_MS",
            "0",
            "server.request_timeout_ms",
        ),
        (
            "ANYA__SECURITY__ALLOWED_ORIGINS",
            "*",
            "security.allowed_origins",
        ),
        (
            "ANYA__SECURITY__AUTH_REQUIRED",
            "true",
            "no key is configured",
        ),
        (
            "ANYA__SECURITY__TRUSTED_PROXIES",
            "not-an-ip",
            "security.trusted_proxies",
        ),
        (
            "ANYA__SECURITY__REQUIRE_SIGNED_MODELS",
            "true",
            "security.trusted_keys is empty",
        ),
        (
            "ANYA__RATE_LIMITS__DEFAULT_TIER",
            "gold",
            "rate_limits.default_tier",
        ),
        ("ANYA__CACHE__REDIS_URL", "http://x", "cache.redis_url"),
        ("ANYA__CACHE__MAX_BYTES", "1000", "cache.max_bytes"),
        (
            "ANYA__RATE_LIMITS__REDIS_URL",
            "http://x",
            "rate_limits.redis_url",
        ),
        (
            "ANYA__RATE_LIMITS__EXPECTED_REPLICAS",
            "0",
            "rate_limits.expected_replicas",
        ),
        (
            "ANYA__RATE_LIMITS__REDIS_TIMEOUT_MS",
            "0",
            "rate_limits.redis_timeout_ms",
        ),
        ("ANYA__RATE_LIMITS__REDIS_FAILURE", "maybe", "maybe"),
        (
            "ANYA__MODEL__MODELS_DIR",
            "ftp://host/x",
            "model.models_dir",
        ),
        ("ANYA__MODEL__MODELS_DIR", "s3://", "model.models_dir"),
    ];
    for (k, v, needle) in cases {
        let err = Settings::load_from(None, env(&[(k, v)]), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{k}={v}: {err}");
    }
}

#[test]
fn list_from_env() {
    let s = Settings::load_from(
        None,
        env(&[(
            "ANYA__SECURITY__ALLOWED_ORIGINS",
            "https://a.example,https://b.example",
        )]),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(s.security.allowed_origins.len(), 2);
}

#[test]
fn the_shipped_config_file_documents_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CONFIG_FILE);
    let s = Settings::load_from(Some(&path), env(&[]), &Overrides::default()).unwrap();
    assert_eq!(s, Settings::default());
}

#[test]
fn missing_explicit_file_is_an_error() {
    let err = Settings::load_from(
        Some(Path::new("/nonexistent/anya.yaml")),
        env(&[]),
        &Overrides::default(),
    )
    .unwrap_err();
    assert!(matches!(err, ConfigError::MissingFile(_)));
}

/// Every list setting, found by walking the settings (a new one cannot be forgotten), takes a
/// comma-separated value from the environment.
#[test]
fn every_list_setting_is_read_from_the_environment() {
    let keys = list_keys();
    for known in [
        "jobs.webhook_secrets",
        "jobs.webhook_allowed_hosts",
        "jobs.webhook_retry_delays_ms",
        "security.allowed_origins",
        "security.trusted_proxies",
        "security.trusted_keys",
    ] {
        assert!(
            keys.iter().any(|k| k == known),
            "{known} missing from {keys:?}"
        );
    }
    let value = |key: &str| {
        match key {
        "jobs.webhook_retry_delays_ms" => ("100,250", serde_json::json!([100, 250])),
        "jobs.webhook_secrets" => (
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw,whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            serde_json::json!([
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
            ]),
        ),
        "security.allowed_origins" => (
            "https://a.example,https://b.example",
            serde_json::json!(["https://a.example", "https://b.example"]),
        ),
        "security.trusted_proxies" => (
            "10.0.0.0/8,192.168.1.1",
            serde_json::json!(["10.0.0.0/8", "192.168.1.1"]),
        ),
        // Two ed25519 public keys (the base point, and the key of RFC 8032's first test).
        "security.trusted_keys" => (
            "5866666666666666666666666666666666666666666666666666666666666666,d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            serde_json::json!([
                "5866666666666666666666666666666666666666666666666666666666666666",
                "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
            ]),
        ),
        _ => ("a.example,b.example", serde_json::json!(["a.example", "b.example"])),
    }
    };
    for key in &keys {
        let (text, want) = value(key);
        let var = format!("ANYA__{}", key.to_ascii_uppercase().replace('.', "__"));
        let loaded = Settings::load_from(None, env(&[(var.as_str(), text)]), &Overrides::default());
        let settings = loaded.unwrap_or_else(|e| panic!("{var}={text}: {e}"));
        let got = serde_json::to_value(&settings).unwrap();
        let at = key.split('.').fold(&got, |v, k| &v[k]);
        assert_eq!(at, &want, "{var}={text}");
    }
}
