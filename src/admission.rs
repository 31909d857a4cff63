//! Admission: the one check every protocol runs before it serves a call — bearer JWT →
//! `Principal` (401), the call's scope (403), the token's model list (403) and the
//! per-principal request rate (429). HTTP's `guard` middleware and the gRPC service both call
//! `admit`; neither copies its rules.

use std::net::IpAddr;

use crate::auth::{AuthError, Authenticator, Principal};
use crate::error::{ApiError, ErrorKind};
use crate::ratelimit::{Decision, RateLimits};

/// What a call asks of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Probes: no token, no rate limit.
    Open,
    /// Any valid token.
    Authenticated,
    /// A token with this scope (`admin` implies every scope).
    Scope(&'static str),
}

/// A call that may go on, and the rate-limit state to report.
#[derive(Debug)]
pub struct Admitted {
    pub principal: Principal,
    pub decision: Option<Decision>,
}

/// A call refused, with whatever was learnt before (for the access log and the headers).
#[derive(Debug)]
pub struct Refused {
    pub error: ApiError,
    pub principal: Option<Principal>,
    pub decision: Option<Decision>,
}

/// The token in an `Authorization: Bearer …` value (HTTP header or gRPC metadata).
pub fn bearer(value: Option<&str>) -> Option<&str> {
    value
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

/// Run the checks for a call that needs `need` (not `Open`), names `model` (when the call is
/// about one) and came from `client` with `token`.
pub async fn admit(
    auth: Option<&Authenticator>,
    limits: Option<&RateLimits>,
    need: Need,
    token: Option<&str>,
    client: IpAddr,
    model: Option<&str>,
) -> Result<Admitted, Box<Refused>> {
    let refuse = |error: ApiError, principal: Option<Principal>| {
        Box::new(Refused {
            error,
            principal,
            decision: None,
        })
    };
    let principal = match auth {
        None => Principal::anonymous(&client.to_string()),
        Some(auth) => {
            let verified = match token {
                None | Some("") => Err(AuthError::Missing),
                Some(t) => auth.verify(t),
            };
            verified
                .map_err(|e| refuse(ApiError::new(ErrorKind::Unauthorized, e.to_string()), None))?
        }
    };
    if let Need::Scope(scope) = need {
        if !principal.has_scope(scope) {
            let e = ApiError::new(
                ErrorKind::Forbidden,
                format!("this route needs the `{scope}` scope"),
            );
            return Err(refuse(e, Some(principal)));
        }
    }
    if let Some(id) = model {
        if !principal.may_use(id) {
            let e = ApiError::new(
                ErrorKind::Forbidden,
                format!("this token may not use model `{id}`"),
            );
            return Err(refuse(e, Some(principal)));
        }
    }
    let decision = match limits {
        Some(l) => {
            l.check_request(&principal.sub, principal.tier.as_deref())
                .await
        }
        None => None,
    };
    match decision {
        Some(d) if !d.allowed => Err(Box::new(Refused {
            error: refusal(&d),
            principal: Some(principal),
            decision: (!d.unavailable).then_some(d),
        })),
        _ => Ok(Admitted {
            principal,
            decision,
        }),
    }
}

/// The error of a refused rate-limit check: 429, or 503 when the shared limits are unreachable
/// and `rate_limits.redis_failure` is `closed`.
pub fn refusal(d: &Decision) -> ApiError {
    if d.unavailable {
        return ApiError::unavailable(
            "the shared rate limits are unreachable (rate_limits.redis_failure: closed); retry later",
            d.reset_s.max(1),
        );
    }
    let mut e = ApiError::new(
        ErrorKind::RateLimited,
        format!("more than {} requests per minute", d.limit),
    );
    e.retry_after_s = Some(d.reset_s);
    e
}
