//! Webhooks of finished jobs, signed per the Standard Webhooks specification: headers
//! `webhook-id`, `webhook-timestamp` (unix seconds) and `webhook-signature` (`v1,` + base64 of
//! HMAC-SHA256 over `id.timestamp.body` with each configured secret, space-separated, so a
//! receiver can rotate secrets).
//!
//! Delivery: one POST per attempt, a time-out each, no redirects followed; 2xx delivers; 5xx,
//! 408, 429 and transport errors are retried after the configured waits (or the receiver's
//! `Retry-After`, capped by the wait after it); any other status gives up at once.
//!
//! SSRF guard: a webhook's host must match `jobs.webhook_allowed_hosts` when that is set; a host
//! not listed there may not be, or resolve to, a loopback, private, link-local, shared, multicast
//! or unspecified address (cloud metadata lives at link-local 169.254.169.254; see [`is_private`]
//! for the full list, IPv6 forms that embed an IPv4 address included). A host name is resolved
//! at submission (within [`RESOLVE_TIMEOUT`]) and refused if any of its addresses is private;
//! the check runs again on the addresses each delivery connects to (reqwest's resolver is
//! ours), so a name that re-resolves to a private address after submission (DNS rebinding) is
//! still refused.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{KeyInit, Mac};
use serde_json::Value;

use super::Attempt;
use crate::config::JobsSection;
use crate::usage::now_unix;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// How long a webhook's host name may take to resolve at submission.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether `ip` is an address a webhook may not reach unless its host is allowed explicitly.
///
/// IPv4: loopback, private, link-local (cloud metadata), unspecified, `0/8`, broadcast,
/// multicast, documentation, shared `100.64/10` (CGNAT), IETF `192.0.0/24`, 6to4 relay
/// `192.88.99/24`, benchmarking `198.18/15` and reserved `240/4`.
///
/// IPv6: only global unicast `2000::/3` may pass, which leaves out loopback, unspecified,
/// the deprecated IPv4-compatible `::/96` (`::127.0.0.1`), unique local `fc00::/7` (AWS
/// metadata's `fd00:ec2::254` among them), link-local, site-local, multicast, discard-only
/// `100::/64` and local-use NAT64 `64:ff9b:1::/48`. Forms that carry an IPv4 address are
/// judged by it: IPv4-mapped `::ffff:0:0/96`, NAT64 `64:ff9b::/96` and 6to4 `2002::/16`.
/// Inside `2000::/3`, the IETF protocol assignments `2001::/23` (Teredo `2001::/32`,
/// benchmarking `2001:2::/48`, ORCHID) and documentation `2001:db8::/32` and `3fff::/20`
/// are refused.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => private_v4(v4),
        IpAddr::V6(v6) => private_v6(v6),
    }
}

fn private_v6(v6: Ipv6Addr) -> bool {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return private_v4(v4);
    }
    let seg = v6.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    // NAT64's well-known prefix 64:ff9b::/96 (RFC 6052): a translated IPv4 address.
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return private_v4(embedded(seg[6], seg[7]));
    }
    // 6to4 2002::/16 (RFC 3056): the IPv4 address of the site's relay follows the prefix.
    if seg[0] == 0x2002 {
        return private_v4(embedded(seg[1], seg[2]));
    }
    (seg[0] & 0xe000) != 0x2000 // outside global unicast 2000::/3
        || (seg[0] == 0x2001 && seg[1] < 0x200) // IETF protocol assignments 2001::/23
        || (seg[0] == 0x2001 && seg[1] == 0xdb8) // documentation 2001:db8::/32
        || (seg[0] == 0x3fff && seg[1] < 0x1000) // documentation 3fff::/20
}

fn private_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254/16: cloud metadata
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // shared 100.64/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF 192.0.0/24
        || (o[0] == 192 && o[1] == 88 && o[2] == 99) // 6to4 relay anycast 192.88.99/24
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18/15
        || o[0] >= 240 // reserved
}

/// Whether `host` matches a pattern of `jobs.webhook_allowed_hosts` (exact, or `*.suffix`).
pub fn host_listed(allowed: &[String], host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    allowed.iter().any(|p| {
        let p = p.trim().to_ascii_lowercase();
        match p.strip_prefix("*.") {
            Some(suffix) => host.ends_with(&format!(".{suffix}")),
            None => host == p,
        }
    })
}

/// The `webhook-signature` header of a message: `v1,<base64>` per secret, space-separated.
pub fn sign(secrets: &[Vec<u8>], id: &str, timestamp: u64, body: &[u8]) -> String {
    secrets
        .iter()
        .filter_map(|key| {
            let mut mac = HmacSha256::new_from_slice(key).ok()?;
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            let sig = mac.finalize().into_bytes();
            Some(format!(
                "v1,{}",
                base64::engine::general_purpose::STANDARD.encode(sig)
            ))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A `whsec_…` secret's key bytes.
pub fn parse_secret(s: &str) -> Result<Vec<u8>, String> {
    let s = s.trim();
    let b64 = s.strip_prefix("whsec_").unwrap_or(s);
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| "a webhook secret must be `whsec_` followed by base64".to_string())
        .and_then(|k| {
            if k.len() < 16 {
                Err("a webhook secret must hold at least 16 bytes".to_string())
            } else {
                Ok(k)
            }
        })
}

/// The resolver of the webhook client: refuses private addresses for hosts not listed.
struct GuardedResolver {
    allowed: Arc<Vec<String>>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        let listed = host_listed(&self.allowed, &host);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| listed || !is_private(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!(
                    "`{host}` resolves to no public address (list it in jobs.webhook_allowed_hosts to allow a private one)"
                )
                .into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

pub struct Hooks {
    client: reqwest::Client,
    secrets: Vec<Vec<u8>>,
    allowed: Arc<Vec<String>>,
    delays: Vec<Duration>,
}

impl Hooks {
    pub fn new(cfg: &JobsSection) -> Result<Self, String> {
        let mut raw = cfg.webhook_secrets.clone();
        if let Some(path) = &cfg.webhook_secrets_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("jobs.webhook_secrets_file {}: {e}", path.display()))?;
            raw.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_string),
            );
        }
        let secrets = raw
            .iter()
            .map(|s| parse_secret(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("jobs.webhook_secrets: {e}"))?;
        let allowed = Arc::new(cfg.webhook_allowed_hosts.clone());
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_millis(cfg.webhook_timeout_ms.max(1)))
            .dns_resolver(Arc::new(GuardedResolver {
                allowed: allowed.clone(),
            }))
            .user_agent(concat!("anya/", env!("CARGO_PKG_VERSION"), " (webhooks)"))
            .build()
            .map_err(|e| format!("the webhook client: {e}"))?;
        Ok(Self {
            client,
            secrets,
            allowed,
            delays: cfg
                .webhook_retry_delays_ms
                .iter()
                .map(|&ms| Duration::from_millis(ms))
                .collect(),
        })
    }

    /// Whether a webhook may go to `url` (checked at submission, and again at each attempt).
    pub fn check_url(&self, url: &str) -> Result<reqwest::Url, String> {
        if self.secrets.is_empty() {
            return Err(
                "webhooks are off on this server (no jobs.webhook_secrets to sign them)".into(),
            );
        }
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err("must be an http or https URL".into());
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err("must not carry credentials".into());
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| "must name a host".to_string())?;
        let listed = host_listed(&self.allowed, host);
        if !self.allowed.is_empty() && !listed {
            return Err(format!(
                "host `{host}` is not in jobs.webhook_allowed_hosts"
            ));
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            if !listed && is_private(ip) {
                return Err(format!(
                    "`{host}` is a private, loopback, link-local or reserved address"
                ));
            }
        }
        Ok(parsed)
    }

    /// Deliver one event, retrying on the schedule; `on_attempt(n, attempt)` records each
    /// attempt, `n` counting from 0 over all attempts at this event. `previous` attempts were
    /// made before a restart (they count against the schedule).
    /// Returns whether the receiver took it.
    pub async fn deliver<F, Fut>(
        &self,
        url: &str,
        message_id: &str,
        event_type: &str,
        data: Value,
        previous: usize,
        on_attempt: F,
    ) -> bool
    where
        F: Fn(usize, Attempt) -> Fut,
        Fut: Future<Output = ()>,
    {
        let body = serde_json::json!({
            "type": event_type,
            "timestamp": time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            "data": data,
        });
        let body = match serde_json::to_vec(&body) {
            Ok(b) => b,
            Err(_) => return false,
        };
        let attempts = self.delays.len() + 1;
        let mut wait = Duration::ZERO;
        for n in previous..attempts {
            tokio::time::sleep(wait).await;
            let started = Instant::now();
            let (status, error, retry_after) = self.attempt(url, message_id, &body).await;
            on_attempt(
                n,
                Attempt {
                    at: now_unix(),
                    status,
                    error: error.clone(),
                    ms: started.elapsed().as_millis() as u64,
                },
            )
            .await;
            match status {
                Some(s) if (200..300).contains(&s) => return true,
                Some(s) if s == 408 || s == 429 || s >= 500 => {}
                Some(_) => return false,
                None if error.as_deref().is_some_and(|e| e.starts_with("refused:")) => {
                    return false
                }
                None => {}
            }
            let Some(&next) = self.delays.get(n) else {
                break;
            };
            wait = match retry_after {
                Some(ra) => ra.min(next.max(Duration::from_secs(1)) * 10),
                None => next,
            };
        }
        false
    }

    /// [`Self::check_url`], and for a host name not listed in `jobs.webhook_allowed_hosts`, its
    /// resolution too (bounded by [`RESOLVE_TIMEOUT`]): a name any of whose addresses is
    /// private or loopback is refused at submission, as is one that does not resolve in time.
    /// Delivery checks again on the addresses it connects to (DNS rebinding).
    pub async fn check_url_resolved(&self, url: &str) -> Result<reqwest::Url, String> {
        let parsed = self.check_url(url)?;
        let host = parsed.host_str().unwrap_or_default();
        // A bracketed IPv6 literal or an IPv4 one was checked by `check_url` already.
        let literal = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok();
        if !literal && !host_listed(&self.allowed, host) {
            let port = parsed.port_or_known_default().unwrap_or(443);
            let addrs: Vec<SocketAddr> =
                match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port)))
                    .await
                {
                    Ok(Ok(a)) => a.collect(),
                    Ok(Err(e)) => return Err(format!("`{host}` does not resolve: {e}")),
                    Err(_) => {
                        return Err(format!(
                            "`{host}` did not resolve within {} ms",
                            RESOLVE_TIMEOUT.as_millis()
                        ))
                    }
                };
            if let Some(a) = addrs.iter().find(|a| is_private(a.ip())) {
                return Err(format!(
                    "`{host}` resolves to {}, a private, loopback, link-local or reserved address (list it in jobs.webhook_allowed_hosts to allow it)",
                    a.ip()
                ));
            }
            if addrs.is_empty() {
                return Err(format!("`{host}` resolves to no address"));
            }
        }
        Ok(parsed)
    }

    /// One POST: (status, error, Retry-After).
    async fn attempt(
        &self,
        url: &str,
        message_id: &str,
        body: &[u8],
    ) -> (Option<u16>, Option<String>, Option<Duration>) {
        if let Err(e) = self.check_url(url) {
            return (None, Some(format!("refused: {e}")), None);
        }
        let ts = now_unix();
        let signature = sign(&self.secrets, message_id, ts, body);
        let sent = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", message_id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .body(body.to_vec())
            .send()
            .await;
        match sent {
            Ok(r) => {
                let retry_after = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                (Some(r.status().as_u16()), None, retry_after)
            }
            Err(e) => {
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg = format!("{msg}: {s}");
                    src = s.source();
                }
                let refused = msg.contains("resolves to no public address");
                (
                    None,
                    Some(if refused {
                        format!("refused: {msg}")
                    } else {
                        msg
                    }),
                    None,
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_metadata_addresses_are_refused_public_ones_pass() {
        // Parsed only: nothing is ever sent to these addresses.
        for ip in [
            // IPv4
            "127.0.0.1",
            "127.255.255.254",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "192.0.0.8",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "198.19.255.255",
            "192.88.99.1",
            "240.0.0.1",
            // IPv6 loopback, unspecified, ULA (AWS metadata), link-local, site-local, multicast
            "::1",
            "::",
            "fd00:ec2::254",
            "fc00::1",
            "fd00::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "ff05::2",
            // IPv4-mapped
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            // IPv4-compatible (deprecated ::/96): refused whatever it embeds
            "::127.0.0.1",
            "::169.254.169.254",
            "::10.0.0.1",
            "::8.8.8.8",
            // NAT64 well-known prefix, embedding a private address; local-use NAT64
            "64:ff9b::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::10.0.0.1",
            "64:ff9b:1::8.8.8.8",
            // 6to4 embedding a private address
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::1",
            "2002:a00:1::",
            "2002:c0a8:101:1::1",
            "2002::1",
            // Teredo and the rest of the IETF protocol assignments 2001::/23
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:2::1",
            "2001:10::1",
            "2001:1ff::1",
            // documentation, discard-only, SRv6, outside 2000::/3
            "2001:db8::1",
            "3fff::1",
            "3fff:fff::1",
            "100::1",
            "5f00::1",
            "4000::1",
            "1::1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "192.0.1.1",
            "198.20.0.1",
            "2606:4700::1111",
            "2a00:1450:4001::1",
            "2001:200::1",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:808:808::1",
            "3ffe::1",
            "3fef:ffff::1",
            "3fff:1000::1",
        ] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn hosts_match_exactly_or_by_suffix() {
        let allowed = vec![
            "hooks.example.com".to_string(),
            "*.corp.example".to_string(),
        ];
        assert!(host_listed(&allowed, "hooks.example.com"));
        assert!(host_listed(&allowed, "HOOKS.example.com."));
        assert!(host_listed(&allowed, "a.b.corp.example"));
        assert!(!host_listed(&allowed, "corp.example"));
        assert!(!host_listed(&allowed, "evilhooks.example.com"));
    }

    #[test]
    fn the_signature_is_the_standard_webhooks_one() {
        // The example of the Standard Webhooks specification's test vectors.
        let key = parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = sign(
            &[key],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn urls_are_checked_before_anything_is_stored() {
        let cfg = JobsSection {
            webhook_secrets: vec!["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()],
            ..JobsSection::default()
        };
        let hooks = Hooks::new(&cfg).unwrap();
        assert!(hooks.check_url("https://hooks.example.com/x").is_ok());
        for bad in [
            "http://127.0.0.1:9/x",
            "http://10.0.0.5/x",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/x",
            "ftp://example.com/x",
            "https://user:pw@example.com/x",
            "not a url",
        ] {
            assert!(hooks.check_url(bad).is_err(), "{bad}");
        }
        let listed = Hooks::new(&JobsSection {
            webhook_allowed_hosts: vec!["127.0.0.1".into()],
            ..cfg.clone()
        })
        .unwrap();
        assert!(listed.check_url("http://127.0.0.1:9/x").is_ok());
        assert!(listed.check_url("https://hooks.example.com/x").is_err());
        let off = Hooks::new(&JobsSection::default()).unwrap();
        assert!(off.check_url("https://hooks.example.com/x").is_err());
    }

    /// `localhost` resolves through /etc/hosts: no query leaves the machine.
    #[tokio::test]
    async fn names_resolving_to_private_addresses_are_refused_at_submission() {
        let cfg = JobsSection {
            webhook_secrets: vec!["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()],
            ..JobsSection::default()
        };
        let hooks = Hooks::new(&cfg).unwrap();
        for bad in [
            "http://localhost:9/hook",
            "http://LOCALHOST:8080/hook",
            "https://localhost/hook",
            "http://[::1]/x",
            "http://127.0.0.1/x",
        ] {
            let e = hooks.check_url_resolved(bad).await.unwrap_err();
            assert!(e.contains("private, loopback"), "{bad}: {e}");
        }
        let listed = Hooks::new(&JobsSection {
            webhook_allowed_hosts: vec!["localhost".into()],
            ..cfg
        })
        .unwrap();
        assert!(listed
            .check_url_resolved("http://localhost:9/hook")
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn names_resolving_to_private_addresses_are_refused_at_connect_time() {
        use reqwest::dns::Resolve;
        let open = GuardedResolver {
            allowed: Arc::new(vec![]),
        };
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let refused = open.resolve(name).await;
        assert!(refused.is_err(), "localhost resolved for an unlisted host");
        let listed = GuardedResolver {
            allowed: Arc::new(vec!["localhost".into()]),
        };
        let addrs: Vec<SocketAddr> = listed
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty());
    }
}
