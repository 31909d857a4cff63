//! The built-in web console: `GET /` (and `/ui`) serves a small single-page application whose
//! files (`web/console/`) are compiled into the binary, so it works offline and needs nothing
//! at run time. The pages are public; every figure they show comes from an authenticated route
//! (`GET /stats` here, the registry, traffic, `/v1` and `/openapi.json` routes elsewhere), with
//! the token the user types, kept in the page's memory only.
//!
//! Every console response carries a Content-Security-Policy without inline script or style and
//! forbids framing; assets carry an ETag and are revalidated (`no-cache`), answered 304 when
//! unchanged.

use std::sync::LazyLock;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sha2::{Digest, Sha256};

use super::app::AppState;
use crate::metrics::Stats;

/// One embedded file: its bytes, content type and strong ETag (a hash of the bytes).
struct Asset {
    body: &'static str,
    content_type: &'static str,
    etag: String,
}

impl Asset {
    fn new(body: &'static str, content_type: &'static str) -> Self {
        let digest = Sha256::digest(body.as_bytes());
        Asset {
            body,
            content_type,
            etag: format!("\"{}\"", hex::encode(&digest[..12])),
        }
    }
}

static INDEX: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        include_str!("../../web/console/index.html"),
        "text/html; charset=utf-8",
    )
});
static SCRIPT: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        include_str!("../../web/console/app.js"),
        "text/javascript; charset=utf-8",
    )
});
static STYLE: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        include_str!("../../web/console/app.css"),
        "text/css; charset=utf-8",
    )
});
static ICON: LazyLock<Asset> =
    LazyLock::new(|| Asset::new(include_str!("../../web/console/icon.svg"), "image/svg+xml"));

/// The console's policy: its own files only, no inline script or style, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
     object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn serve(asset: &Asset, request: &HeaderMap) -> Response {
    let unchanged = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim() == asset.etag || t.trim() == "*")
        });
    let mut response = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    let h = response.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&asset.etag) {
        h.insert(header::ETAG, etag);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// `GET /`, `GET /ui`: the console's page.
#[utoipa::path(
    get,
    path = "/",
    responses(
        (status = 200, description = "The console's page (also at /ui and /ui/)", content_type = "text/html", body = String),
        (status = 304, description = "Unchanged (If-None-Match matched its ETag)"),
    ),
    tag = "console"
)]
pub async fn index(headers: HeaderMap) -> Response {
    serve(&INDEX, &headers)
}

/// `GET /ui/app.js`.
#[utoipa::path(
    get,
    path = "/ui/app.js",
    responses(
        (status = 200, description = "The console's script", content_type = "text/javascript", body = String),
        (status = 304, description = "Unchanged (If-None-Match matched its ETag)"),
    ),
    tag = "console"
)]
pub async fn script(headers: HeaderMap) -> Response {
    serve(&SCRIPT, &headers)
}

/// `GET /ui/app.css`.
#[utoipa::path(
    get,
    path = "/ui/app.css",
    responses(
        (status = 200, description = "The console's style sheet", content_type = "text/css", body = String),
        (status = 304, description = "Unchanged (If-None-Match matched its ETag)"),
    ),
    tag = "console"
)]
pub async fn style(headers: HeaderMap) -> Response {
    serve(&STYLE, &headers)
}

/// `GET /ui/icon.svg`.
#[utoipa::path(
    get,
    path = "/ui/icon.svg",
    responses(
        (status = 200, description = "The console's icon", content_type = "image/svg+xml", body = String),
        (status = 304, description = "Unchanged (If-None-Match matched its ETag)"),
    ),
    tag = "console"
)]
pub async fn icon(headers: HeaderMap) -> Response {
    serve(&ICON, &headers)
}

/// The server's own figures in one compact JSON snapshot (what the console's live page
/// charts): request, error, token and cache counters and latency, batch-size and
/// time-to-first-token histograms since the start, and queue sizes now. Rates and quantiles
/// over an interval come from the difference of two snapshots.
#[utoipa::path(
    get,
    path = "/stats",
    responses((status = 200, description = "A snapshot of the server's figures", body = Stats)),
    tag = "health"
)]
pub async fn stats(State(state): State<AppState>) -> Json<Stats> {
    Json(state.metrics.summary(
        &state.registry,
        &state.core.traffic,
        state.lifecycle.in_flight(),
        state.cache.as_ref().map_or(0, |c| c.entry_count()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_small_and_have_no_inline_script() {
        let total = INDEX.body.len() + SCRIPT.body.len() + STYLE.body.len() + ICON.body.len();
        assert!(total < 200_000, "the console is {total} bytes");
        // The CSP forbids inline script and style: the page must not need them.
        assert!(!INDEX.body.contains("<script>"));
        assert!(!INDEX.body.contains("style="));
        assert!(!INDEX.body.contains("<style"));
        assert!(!INDEX.body.contains("onclick"));
        assert!(!INDEX.body.contains("http://") && !INDEX.body.contains("https://"));
    }

    #[test]
    fn an_unchanged_asset_is_not_sent_again() {
        let mut h = HeaderMap::new();
        let r = serve(&SCRIPT, &h);
        assert_eq!(r.status(), 200);
        let etag = r.headers()[header::ETAG].clone();
        assert_eq!(r.headers()[header::X_FRAME_OPTIONS], "DENY");
        h.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(serve(&SCRIPT, &h).status(), 304);
    }
}
