//! Settings, layered: built-in defaults < `config/anya.yaml` < environment `ANYA__…` < flags.
//!
//! Every section is parsed with `deny_unknown_fields`, so a misspelt key is an error that names
//! the key instead of a silently ignored line. `Settings::validate` checks the values the types
//! cannot (ranges, log levels) and names the key too.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod sections;
mod validate;

#[cfg(test)]
mod tests;

pub use crate::spec::device::DeviceKind;
pub use sections::{
    CacheSection, JobsSection, ModelSection, MonitoringSection, RateLimitSection, RedisFailure,
    SecuritySection, ServerSection, TierLimits,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub model: ModelSection,
    pub server: ServerSection,
    pub monitoring: MonitoringSection,
    pub cache: CacheSection,
    pub security: SecuritySection,
    pub rate_limits: RateLimitSection,
    pub jobs: JobsSection,
}

/// A setting that could not be read or is out of range; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("configuration: {0}")]
    Parse(String),
    #[error("configuration key `{key}`: {issue}")]
    Invalid { key: &'static str, issue: String },
}

/// Values given on the command line; they override every other layer.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub models_dir: Option<PathBuf>,
    pub log_format: Option<String>,
    /// `--workers`: the async runtime's worker threads (`server.workers`).
    pub workers: Option<usize>,
}

/// The default config file, used when present.
pub const DEFAULT_CONFIG_FILE: &str = "config/anya.yaml";

impl Settings {
    /// Layer defaults, the file (`explicit` must exist; otherwise `config/anya.yaml` if present),
    /// the environment (`ANYA__SECTION__KEY`) and the flags, then validate.
    pub fn load(explicit: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let env = std::env::vars().filter(|(k, _)| k.starts_with("ANYA__"));
        Self::load_from(explicit, env, overrides)
    }

    /// `load` with the environment passed in, so tests need not touch the process's.
    pub fn load_from(
        explicit: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let parse = |e: config::ConfigError| ConfigError::Parse(e.to_string());
        let defaults = config::Config::try_from(&Settings::default()).map_err(parse)?;
        let mut builder = config::Config::builder().add_source(defaults);

        let file = match explicit {
            Some(p) if !p.exists() => return Err(ConfigError::MissingFile(p.to_path_buf())),
            Some(p) => Some(p.to_path_buf()),
            None => Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.exists()),
        };
        if let Some(path) = file {
            builder = builder
                .add_source(config::File::from(path.as_path()).format(config::FileFormat::Yaml));
        }

        let env: config::Map<String, String> = env.into_iter().collect();
        let environment = config::Environment::with_prefix("ANYA")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",");
        // Every list setting takes a comma-separated value from the environment (how Kubernetes
        // users configure); the keys come from the settings themselves, so none is forgotten.
        let environment = list_keys()
            .into_iter()
            .fold(environment, |e, key| e.with_list_parse_key(&key))
            .source(Some(env));
        builder = builder.add_source(environment);

        if let Some(h) = &overrides.host {
            builder = builder
                .set_override("server.host", h.as_str())
                .map_err(parse)?;
        }
        if let Some(p) = overrides.port {
            builder = builder.set_override("server.port", p).map_err(parse)?;
        }
        if let Some(d) = &overrides.models_dir {
            builder = builder
                .set_override("model.models_dir", d.to_string_lossy().as_ref())
                .map_err(parse)?;
        }
        if let Some(w) = overrides.workers {
            builder = builder
                .set_override("server.workers", w as u64)
                .map_err(parse)?;
        }
        if let Some(f) = &overrides.log_format {
            builder = builder
                .set_override("server.log_format", f.as_str())
                .map_err(parse)?;
        }

        let settings: Settings = builder
            .build()
            .map_err(parse)?
            .try_deserialize()
            .map_err(parse)?;
        settings.validate()?;
        Ok(settings)
    }
}

/// The dotted keys of every list setting (`jobs.webhook_allowed_hosts`, …), read from the
/// defaults' own shape.
pub fn list_keys() -> Vec<String> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Array(_) => out.push(prefix.to_string()),
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(v) = serde_json::to_value(Settings::default()) {
        walk("", &v, &mut out);
    }
    out
}
