//! Authentication: a Bearer JWT becomes a `Principal` (subject, scopes, tier, allowed models).
//!
//! Keys come from the config: an HS256 secret (file or environment variable, never logged), or
//! RS256/ES256 public keys as PEM or JWKS (several at once, chosen by `kid`, so keys rotate
//! without downtime; re-read on SIGHUP and when the file changes). Only the algorithms of the
//! configured keys are accepted, which rules out `alg: none` and HS/RS key confusion.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::SecuritySection;

pub const SCOPE_PREDICT: &str = "predict";
pub const SCOPE_ADMIN: &str = "admin";
pub const SCOPE_METRICS: &str = "metrics";
/// Train classification heads (`POST /models/{id}/heads`).
pub const SCOPE_TRAIN: &str = "train";

/// The account of requests without a principal (and of anonymous principals).
pub const ANONYMOUS: &str = "anonymous";

/// Who is calling (stored with a batch job, which runs as its owner).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Principal {
    pub sub: String,
    pub scopes: Vec<String>,
    pub tier: Option<String>,
    /// Models this principal may use; `None`: all.
    pub models: Option<Vec<String>>,
    /// No credentials were checked (auth is off).
    pub anonymous: bool,
}

impl Principal {
    /// Auth is off: every scope, keyed by the client address for rate limits.
    pub fn anonymous(client: &str) -> Self {
        Principal {
            sub: format!("ip:{client}"),
            scopes: vec![
                SCOPE_PREDICT.into(),
                SCOPE_ADMIN.into(),
                SCOPE_METRICS.into(),
            ],
            tier: None,
            models: None,
            anonymous: true,
        }
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope || s == SCOPE_ADMIN)
    }

    pub fn may_use(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|m| m.iter().any(|x| x == model))
    }

    /// The name usage is accounted under.
    pub fn account(&self) -> &str {
        if self.anonymous {
            ANONYMOUS
        } else {
            &self.sub
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scopes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    models: Option<Vec<String>>,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    #[serde(default)]
    iat: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    /// One audience or several (RFC 7519 allows both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<Audience>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("the token's algorithm is not accepted")]
    Algorithm,
    #[error("the token's key id is unknown")]
    UnknownKey,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's audience is not accepted")]
    Audience,
    #[error("the token has no audience (aud) and one is required")]
    MissingAudience,
    #[error("the token's issuer is not accepted")]
    Issuer,
    #[error("the token has no issuer (iss) and one is required")]
    MissingIssuer,
    #[error("the token's signature is invalid")]
    Signature,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("security.jwt_secret_file {0}: {1}")]
    SecretFile(PathBuf, std::io::Error),
    #[error("security.jwt_secret_env: variable {0} is not set or empty")]
    SecretEnv(String),
    #[error("security.jwt_public_keys {0}: {1}")]
    PublicKeys(PathBuf, String),
}

struct PublicKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

#[derive(Default)]
struct KeySet {
    secret: Option<(DecodingKey, Vec<u8>)>,
    public: Vec<PublicKey>,
}

pub struct Authenticator {
    cfg: SecuritySection,
    keys: RwLock<Arc<KeySet>>,
    /// Modification time of the public key file when last read.
    loaded_mtime: RwLock<Option<SystemTime>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn load_keys(cfg: &SecuritySection) -> Result<KeySet, KeyError> {
    let mut set = KeySet::default();
    let secret = match (&cfg.jwt_secret_file, &cfg.jwt_secret_env) {
        (Some(f), _) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| KeyError::SecretFile(f.clone(), e))?
                .trim_end()
                .as_bytes()
                .to_vec(),
        ),
        (None, Some(var)) => {
            let v = std::env::var(var).unwrap_or_default();
            if v.trim().is_empty() {
                return Err(KeyError::SecretEnv(var.clone()));
            }
            Some(v.trim_end().as_bytes().to_vec())
        }
        (None, None) => None,
    };
    if let Some(s) = secret {
        set.secret = Some((DecodingKey::from_secret(&s), s));
    }
    if let Some(path) = &cfg.jwt_public_keys {
        let bad = |m: String| KeyError::PublicKeys(path.clone(), m);
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        if text.trim_start().starts_with('{') {
            let jwks: JwkSet = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
            for jwk in &jwks.keys {
                let alg = match &jwk.algorithm {
                    jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                    _ => return Err(bad("only RSA and EC keys are supported".into())),
                };
                set.public.push(PublicKey {
                    kid: jwk.common.key_id.clone(),
                    alg,
                    key: DecodingKey::from_jwk(jwk).map_err(|e| bad(e.to_string()))?,
                });
            }
        } else {
            for block in text.split("-----BEGIN ").skip(1) {
                let pem = format!("-----BEGIN {block}");
                let (alg, key) = if let Ok(k) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
                    (Algorithm::RS256, k)
                } else if let Ok(k) = DecodingKey::from_ec_pem(pem.as_bytes()) {
                    (Algorithm::ES256, k)
                } else {
                    return Err(bad(
                        "a PEM block is neither an RSA nor an EC public key".into()
                    ));
                };
                set.public.push(PublicKey {
                    kid: None,
                    alg,
                    key,
                });
            }
        }
        if set.public.is_empty() {
            return Err(bad("no keys in the file".into()));
        }
    }
    Ok(set)
}

impl Authenticator {
    pub fn new(cfg: &SecuritySection) -> Result<Self, KeyError> {
        let keys = load_keys(cfg)?;
        Ok(Self {
            cfg: cfg.clone(),
            keys: RwLock::new(Arc::new(keys)),
            loaded_mtime: RwLock::new(cfg.jwt_public_keys.as_deref().and_then(mtime)),
        })
    }

    /// Re-read the keys (SIGHUP); on failure the old keys stay.
    pub fn reload(&self) -> Result<(), KeyError> {
        let keys = load_keys(&self.cfg)?;
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
        *self.loaded_mtime.write().unwrap_or_else(|p| p.into_inner()) =
            self.cfg.jwt_public_keys.as_deref().and_then(mtime);
        Ok(())
    }

    /// Reload when the public key file changed since it was read.
    pub fn reload_if_changed(&self) -> Option<Result<(), KeyError>> {
        let path = self.cfg.jwt_public_keys.as_deref()?;
        let now = mtime(path);
        let before = *self.loaded_mtime.read().unwrap_or_else(|p| p.into_inner());
        (now != before).then(|| self.reload())
    }

    fn keys(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Check a token and turn it into a principal.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let keys = self.keys();
        let candidates: Vec<(&DecodingKey, Algorithm)> = match header.alg {
            Algorithm::HS256 => match &keys.secret {
                Some((k, _)) => vec![(k, Algorithm::HS256)],
                None => return Err(AuthError::Algorithm),
            },
            Algorithm::RS256 | Algorithm::ES256 => {
                let same_alg: Vec<&PublicKey> =
                    keys.public.iter().filter(|k| k.alg == header.alg).collect();
                if same_alg.is_empty() {
                    return Err(AuthError::Algorithm);
                }
                let chosen: Vec<&PublicKey> = match &header.kid {
                    Some(kid) => same_alg
                        .into_iter()
                        .filter(|k| k.kid.as_deref() == Some(kid))
                        .collect(),
                    None => same_alg,
                };
                if chosen.is_empty() {
                    return Err(AuthError::UnknownKey);
                }
                chosen.into_iter().map(|k| (&k.key, k.alg)).collect()
            }
            _ => return Err(AuthError::Algorithm),
        };
        let mut last = AuthError::Signature;
        for (key, alg) in candidates {
            let mut v = Validation::new(alg);
            v.leeway = self.cfg.jwt_leeway_s;
            v.validate_nbf = true;
            // A configured issuer or audience is required, not only checked when present.
            let mut required = HashSet::from(["exp".to_string(), "sub".to_string()]);
            match &self.cfg.jwt_issuer {
                Some(iss) => {
                    v.set_issuer(&[iss]);
                    required.insert("iss".to_string());
                }
                None => v.iss = None,
            }
            match &self.cfg.jwt_audience {
                Some(aud) => {
                    v.set_audience(&[aud]);
                    required.insert("aud".to_string());
                }
                None => v.validate_aud = false,
            }
            v.required_spec_claims = required;
            match jsonwebtoken::decode::<Claims>(token, key, &v) {
                Ok(data) => {
                    let c = data.claims;
                    let mut scopes: Vec<String> = c.scopes.unwrap_or_default();
                    if let Some(s) = c.scope {
                        scopes.extend(s.split_whitespace().map(String::from));
                    }
                    return Ok(Principal {
                        sub: c.sub,
                        scopes,
                        tier: c.tier,
                        models: c.models,
                        anonymous: false,
                    });
                }
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    last = match e.kind() {
                        K::ExpiredSignature => AuthError::Expired,
                        K::ImmatureSignature => AuthError::NotYetValid,
                        K::InvalidAudience => AuthError::Audience,
                        K::InvalidIssuer => AuthError::Issuer,
                        K::InvalidSignature => AuthError::Signature,
                        K::InvalidAlgorithm => AuthError::Algorithm,
                        K::MissingRequiredClaim(c) if c == "iss" => AuthError::MissingIssuer,
                        K::MissingRequiredClaim(c) if c == "aud" => AuthError::MissingAudience,
                        K::MissingRequiredClaim(_) | K::Json(_) | K::Base64(_) | K::Utf8(_) => {
                            AuthError::Malformed
                        }
                        _ => AuthError::Signature,
                    };
                }
            }
        }
        Err(last)
    }

    /// Mint an HS256 token with the configured secret (`anya token`, tests).
    pub fn mint(&self, req: &MintRequest) -> Result<String, String> {
        let keys = self.keys();
        let (_, secret) = keys.secret.as_ref().ok_or(
            "no HS256 secret is configured (security.jwt_secret_file or security.jwt_secret_env)",
        )?;
        mint_hs256(
            secret,
            req,
            self.cfg.jwt_issuer.clone(),
            self.cfg.jwt_audience.clone(),
        )
    }
}

/// The `WWW-Authenticate` challenge of a 401 whose message is `message` (RFC 6750 §3): a
/// request without a token gets the bare challenge, a refused token `invalid_token` with the
/// reason as `error_description`.
pub fn challenge(message: &str) -> String {
    if message == AuthError::Missing.to_string() {
        return r#"Bearer realm="anya""#.to_string();
    }
    // error_description allows %x20-21 / %x23-5B / %x5D-7E: no quote, no backslash.
    let reason: String = message
        .chars()
        .filter(|c| matches!(c, ' '..='~') && *c != '"' && *c != '\\')
        .collect();
    format!(r#"Bearer realm="anya", error="invalid_token", error_description="{reason}""#)
}

/// What `anya token` puts in a token.
#[derive(Debug, Clone, Default)]
pub struct MintRequest {
    pub sub: String,
    pub scopes: Vec<String>,
    pub tier: Option<String>,
    pub models: Option<Vec<String>>,
    pub ttl_s: u64,
    /// Seconds from now before which the token is not valid (tests).
    pub not_before_s: Option<u64>,
}

pub fn mint_hs256(
    secret: &[u8],
    r: &MintRequest,
    iss: Option<String>,
    aud: Option<String>,
) -> Result<String, String> {
    let now = crate::usage::now_unix();
    let claims = Claims {
        sub: r.sub.clone(),
        scope: Some(r.scopes.join(" ")),
        scopes: None,
        tier: r.tier.clone(),
        models: r.models.clone(),
        exp: now + r.ttl_s,
        nbf: r.not_before_s.map(|s| now + s),
        iat: now,
        iss,
        aud: aud.map(Audience::One),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| e.to_string())
}

/// `1h`, `30m`, `90s`, `2d`, or plain seconds.
pub fn parse_ttl(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().ok()?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(mult).filter(|&v| v > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(secret_file: &Path) -> SecuritySection {
        SecuritySection {
            auth_required: true,
            jwt_secret_file: Some(secret_file.to_path_buf()),
            jwt_issuer: Some("anya-test".into()),
            jwt_audience: Some("anya".into()),
            jwt_leeway_s: 0,
            ..Default::default()
        }
    }

    fn req(sub: &str, scopes: &[&str]) -> MintRequest {
        MintRequest {
            sub: sub.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ttl_s: 60,
            ..Default::default()
        }
    }

    #[test]
    fn round_trip_and_claims() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k");
        std::fs::write(&f, "s3cret-value\n").unwrap();
        let a = Authenticator::new(&cfg(&f)).unwrap();
        let mut r = req("alice", &["predict", "metrics"]);
        r.tier = Some("pro".into());
        r.models = Some(vec!["m1".into()]);
        let p = a.verify(&a.mint(&r).unwrap()).unwrap();
        assert_eq!(p.sub, "alice");
        assert!(p.has_scope("predict") && !p.has_scope("admin"));
        assert_eq!(p.tier.as_deref(), Some("pro"));
        assert!(p.may_use("m1") && !p.may_use("m2"));
        // the trailing newline of the file is not part of the key
        let t = mint_hs256(
            b"s3cret-value",
            &r,
            Some("anya-test".into()),
            Some("anya".into()),
        )
        .unwrap();
        assert!(a.verify(&t).is_ok());
    }

    #[test]
    fn forged_tokens_fail() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k");
        std::fs::write(&f, "right").unwrap();
        let a = Authenticator::new(&cfg(&f)).unwrap();
        let r = req("bob", &["predict"]);
        let iss = Some("anya-test".to_string());
        let aud = Some("anya".to_string());
        assert_eq!(a.verify("nonsense"), Err(AuthError::Malformed));
        let wrong_key = mint_hs256(b"wrong", &r, iss.clone(), aud.clone()).unwrap();
        assert_eq!(a.verify(&wrong_key), Err(AuthError::Signature));
        let wrong_aud = mint_hs256(b"right", &r, iss.clone(), Some("other".into())).unwrap();
        assert_eq!(a.verify(&wrong_aud), Err(AuthError::Audience));
        let wrong_iss = mint_hs256(b"right", &r, Some("evil".into()), aud.clone()).unwrap();
        assert_eq!(a.verify(&wrong_iss), Err(AuthError::Issuer));
        let mut later = r.clone();
        later.not_before_s = Some(3600);
        let nbf = mint_hs256(b"right", &later, iss.clone(), aud.clone()).unwrap();
        assert_eq!(a.verify(&nbf), Err(AuthError::NotYetValid));
        // alg none: header {"alg":"none"} with the same payload and no signature
        let good = mint_hs256(b"right", &r, iss, aud).unwrap();
        let payload = good.split('.').nth(1).unwrap();
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
        assert!(a.verify(&none).is_err());
        // tampered payload
        let mut parts: Vec<String> = good.split('.').map(String::from).collect();
        parts[1] = parts[1].chars().rev().collect();
        assert!(a.verify(&parts.join(".")).is_err());
    }

    fn raw(secret: &[u8], claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    #[test]
    fn configured_issuer_and_audience_are_required_each_alone() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k");
        std::fs::write(&f, "right").unwrap();
        let exp = crate::usage::now_unix() + 60;
        let bare = raw(b"right", serde_json::json!({"sub": "x", "exp": exp}));
        let with_aud_list = raw(
            b"right",
            serde_json::json!({"sub": "x", "exp": exp, "aud": ["a", "anya"]}),
        );
        // issuer only
        let mut c = cfg(&f);
        c.jwt_audience = None;
        let a = Authenticator::new(&c).unwrap();
        assert_eq!(a.verify(&bare), Err(AuthError::MissingIssuer));
        let t = raw(
            b"right",
            serde_json::json!({"sub": "x", "exp": exp, "iss": "anya-test", "aud": ["z"]}),
        );
        assert!(
            a.verify(&t).is_ok(),
            "aud is not checked when none is configured"
        );
        // audience only
        let mut c = cfg(&f);
        c.jwt_issuer = None;
        let a = Authenticator::new(&c).unwrap();
        assert_eq!(a.verify(&bare), Err(AuthError::MissingAudience));
        assert!(a.verify(&with_aud_list).is_ok());
        let wrong_list = raw(
            b"right",
            serde_json::json!({"sub": "x", "exp": exp, "aud": ["a", "b"]}),
        );
        assert_eq!(a.verify(&wrong_list), Err(AuthError::Audience));
        // neither: neither is needed
        let mut c = cfg(&f);
        c.jwt_issuer = None;
        c.jwt_audience = None;
        let a = Authenticator::new(&c).unwrap();
        assert!(a.verify(&bare).is_ok() && a.verify(&with_aud_list).is_ok());
    }

    #[test]
    fn challenges_name_the_reason() {
        assert_eq!(challenge("missing bearer token"), r#"Bearer realm="anya""#);
        assert_eq!(
            challenge(&AuthError::MissingIssuer.to_string()),
            r#"Bearer realm="anya", error="invalid_token", error_description="the token has no issuer (iss) and one is required""#
        );
        assert!(!challenge("a \"quoted\" reason\n").contains("\"quoted"));
    }

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("1h"), Some(3600));
        assert_eq!(parse_ttl("90"), Some(90));
        assert_eq!(parse_ttl("2d"), Some(172_800));
        assert_eq!(parse_ttl("0"), None);
        assert_eq!(parse_ttl("5y"), None);
    }
}
