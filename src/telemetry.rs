//! Logging: human-readable by default, JSON on request; level from `server.log_level`, or
//! `RUST_LOG` when set.

use tracing_subscriber::EnvFilter;

pub fn init(level: &str, format: &str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},tower_http=warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    // `try_init`: tests start several servers in one process.
    let _ = if format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// Query parameters whose values may be logged; every other value is redacted, so a token
/// passed as `?access_token=…` (or any other secret a client puts in a URL) never reaches the
/// logs.
const LOGGABLE_QUERY_PARAMS: &[&str] = &["period", "group_by", "model"];

/// The request target as it may be logged: the path, and the query with every value that is
/// not known to be harmless replaced by `REDACTED`.
pub fn loggable_uri(uri: &axum::http::Uri) -> String {
    let path = uri.path();
    let Some(query) = uri.query() else {
        return path.to_string();
    };
    let redacted: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if LOGGABLE_QUERY_PARAMS.contains(&k) => format!("{k}={v}"),
            Some((k, _)) => format!("{k}=REDACTED"),
            None if LOGGABLE_QUERY_PARAMS.contains(&pair) => pair.to_string(),
            None => "REDACTED".to_string(),
        })
        .collect();
    format!("{path}?{}", redacted.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_the_query_are_redacted() {
        let uri: axum::http::Uri = "/models?access_token=eyJhbGciOi.x.y&period=daily&flag"
            .parse()
            .unwrap();
        let logged = loggable_uri(&uri);
        assert_eq!(
            logged,
            "/models?access_token=REDACTED&period=daily&REDACTED"
        );
        assert!(!logged.contains("eyJ"));
        let plain: axum::http::Uri = "/health".parse().unwrap();
        assert_eq!(loggable_uri(&plain), "/health");
    }
}
