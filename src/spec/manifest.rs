//! The model manifest (`anya.yaml` in `models/<id>/<version>/`), file hashing and path safety.
//!
//! A manifest lists every file of a model version with its sha256; `verify_files` checks them
//! all before a model loads. Every path that comes from a manifest goes through `safe_join`,
//! which refuses absolute paths, `..`, and symlinks that lead out of the version folder.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The file name of a manifest inside a version folder.
pub const MANIFEST_FILE: &str = "anya.yaml";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    TextGeneration,
    Embedding,
    /// A sequence classifier (BERT `*ForSequenceClassification`): labels with scores.
    Classification,
    /// Returns its inputs unchanged: measures the server without a model, and smoke tests.
    Echo,
}

impl Task {
    pub fn as_str(self) -> &'static str {
        match self {
            Task::TextGeneration => "text-generation",
            Task::Embedding => "embedding",
            Task::Classification => "classification",
            Task::Echo => "echo",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Gguf,
    Safetensors,
    /// No weights (the echo task).
    None,
}

impl Format {
    pub fn framework(self) -> &'static str {
        match self {
            Format::Gguf => "candle (gguf, quantized)",
            Format::Safetensors => "candle (safetensors)",
            Format::None => "builtin",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamType {
    Integer,
    Number,
    Boolean,
    String,
    /// A list of strings; `max` bounds its length.
    StringList,
}

/// One request parameter a model accepts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ParamType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Dynamic batching knobs of one model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchingConfig {
    /// Most inputs in one forward pass.
    pub max_batch_size: usize,
    /// Most tokens (sum over the batch's inputs) in one batch.
    pub max_batch_tokens: usize,
    /// How long the oldest waiting request may wait for others to join its batch.
    pub max_queue_delay_ms: u64,
    /// Most requests waiting; one more is answered 503 at once.
    pub queue_capacity: usize,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        Self {
            max_batch_size: 32,
            max_batch_tokens: 16_384,
            max_queue_delay_ms: 2,
            queue_capacity: 256,
        }
    }
}

/// A remote OpenAI-compatible model served in place of local files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    /// Only `openai` (any server speaking OpenAI's `/v1`: OpenAI, vLLM, llama.cpp, anya).
    pub kind: ProviderKind,
    /// Up to and including the API prefix, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// The model name the provider knows.
    pub model: String,
    /// The API key is read from this environment variable...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// ...or from this file (its first line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<String>,
    /// One attempt's limit (the request's own deadline also applies).
    #[serde(default = "default_provider_timeout_ms")]
    pub timeout_ms: u64,
    /// Further attempts after a failure worth another try (connection error, timeout, 408,
    /// 429, 5xx), with exponential backoff and jitter, honouring `Retry-After`.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// How often `GET {base_url}/models` is probed (seconds).
    #[serde(default = "default_probe_interval_s")]
    pub probe_interval_s: f64,
}

fn default_provider_timeout_ms() -> u64 {
    30_000
}
fn default_max_retries() -> u32 {
    2
}
fn default_probe_interval_s() -> f64 {
    15.0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Openai,
}

/// When a target's circuit opens, and for how long (config `model.breaker`, overridable per
/// manifest).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSettings {
    /// Open after this many failures in a row.
    pub consecutive_failures: u32,
    /// ...or when at least this share of the window's requests failed...
    pub failure_rate: f64,
    /// ...and the window holds at least this many requests.
    pub min_requests: u32,
    /// The window's length, in milliseconds.
    pub window_ms: u64,
    /// How long the circuit stays open before one probe is let through (milliseconds).
    pub cooldown_ms: u64,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: 0.5,
            min_requests: 20,
            window_ms: 30_000,
            cooldown_ms: 10_000,
        }
    }
}

impl BreakerSettings {
    pub fn check(&self) -> Result<(), String> {
        if self.consecutive_failures == 0 || self.min_requests == 0 {
            return Err("breaker: consecutive_failures and min_requests must be at least 1".into());
        }
        if !(self.failure_rate > 0.0 && self.failure_rate <= 1.0) {
            return Err("breaker: failure_rate must be in (0, 1]".into());
        }
        if self.window_ms == 0 || self.cooldown_ms == 0 {
            return Err("breaker: window_ms and cooldown_ms must be at least 1".into());
        }
        Ok(())
    }
}

/// Prices for cost accounting (currency by convention USD).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Pricing {
    pub per_1k_input_tokens: f64,
    pub per_1k_output_tokens: f64,
    pub per_request: f64,
}

impl Pricing {
    pub fn cost(&self, tokens_input: u64, tokens_output: u64) -> f64 {
        self.per_request
            + self.per_1k_input_tokens * tokens_input as f64 / 1000.0
            + self.per_1k_output_tokens * tokens_output as f64 / 1000.0
    }
}

fn default_true() -> bool {
    true
}
fn default_max_inputs() -> usize {
    64
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub id: String,
    pub version: semver::Version,
    /// This version answers requests that name no version.
    #[serde(default)]
    pub default: bool,
    pub task: Task,
    pub format: Format,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
    /// The weights file (`.gguf` or `.safetensors`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<String>,
    /// The model config (`config.json`) for safetensors models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// `tokenizer.json`; GGUF models may leave it out and use their metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<String>,
    /// sentence-transformers `1_Pooling/config.json` (embeddings; mean pooling without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooling_config: Option<String>,
    /// L2-normalise embeddings.
    #[serde(default = "default_true")]
    pub normalize: bool,
    /// Most tokens in one input.
    pub max_input_length: usize,
    /// Most inputs in one request.
    #[serde(default = "default_max_inputs")]
    pub max_inputs: usize,
    #[serde(default)]
    pub parameters: Vec<ParamSpec>,
    #[serde(default)]
    pub batching: BatchingConfig,
    /// Where this version runs (`cpu`, `cuda`, `cuda:N`, `auto`); overrides `model.device`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<super::device::DeviceKind>,
    #[serde(default)]
    pub files: Vec<FileEntry>,
    /// An ed25519 signature over the rest of the manifest (`anya models sign`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<ManifestSignature>,
    /// Prices, for the usage and cost figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<Pricing>,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// A remote model: requests go to this OpenAI-compatible provider (no files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderSpec>,
    /// Models tried in order when this one fails for a reason worth another try.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<String>,
    /// This version's circuit breaker (else `model.breaker`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<BreakerSettings>,
    /// A classification head over an embedding model (trained through `POST
    /// /models/{id}/heads`): the base model's files are this version's `weights`, `config`,
    /// `tokenizer` and `pooling_config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<HeadSpec>,
    /// Drift windows and thresholds (defaults: `DriftConfig::default()`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftConfig>,
}

/// Thresholds above which a signal counts as drift (configurable per manifest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftConfig {
    /// Feed the windows (false: no drift signals for this version).
    pub enabled: bool,
    /// Inputs in the reference window and the current window.
    pub window: usize,
    pub psi: f64,
    pub js: f64,
    pub centroid_cosine: f64,
    pub mmd2: f64,
    pub confidence_drop: f64,
    /// Rise of the share of unknown tokens (`[UNK]`, `<unk>`) among input tokens.
    pub unknown_share: f64,
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            window: 200,
            psi: 0.2,
            js: 0.1,
            centroid_cosine: 0.25,
            mmd2: 0.05,
            confidence_drop: 0.1,
            unknown_share: 0.05,
        }
    }
}

/// A linear classification head on an embedding model's (pooled, normalised) vectors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadSpec {
    /// The embedding model the head was trained on.
    pub base_model: String,
    pub base_version: String,
    /// Safetensors with `head.weight` `[classes, dim]` and `head.bias` `[classes]`.
    pub weights: String,
    /// Class names, by row of the head.
    pub classes: Vec<String>,
    /// What training measured (held-out accuracy, per-class F1, sizes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<serde_json::Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("manifest {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("manifest {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("unsafe path `{0}`: paths must stay inside the model folder")]
    UnsafePath(String),
    #[error("sha256 mismatch for {path}: manifest says {expected}, file has {actual}")]
    HashMismatch {
        path: String,
        expected: String,
        actual: String,
    },
}

/// A model id: letters, digits, `.`, `_`, `-`; starts with a letter or digit; at most 128 chars.
/// Such an id can never name a path outside the repository.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !id.contains("..")
}

/// Join a relative path from a manifest onto `base`, refusing anything that could leave it:
/// absolute paths, `..`, and (once the file exists) symlinks resolving outside `base`.
pub fn safe_join(base: &Path, rel: &str) -> Result<PathBuf, ManifestError> {
    let unsafe_path = || ManifestError::UnsafePath(rel.to_string());
    let p = Path::new(rel);
    if rel.is_empty() || rel.contains('\0') || rel.contains('\\') {
        return Err(unsafe_path());
    }
    if !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(unsafe_path());
    }
    let joined = base.join(p);
    if joined.exists() {
        let real = joined.canonicalize().map_err(|_| unsafe_path())?;
        let real_base = base.canonicalize().map_err(|_| unsafe_path())?;
        if !real.starts_with(&real_base) {
            return Err(unsafe_path());
        }
    }
    Ok(joined)
}

/// The sha256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

impl Manifest {
    /// A manifest for the built-in echo task (no files): what a repository needs to serve the
    /// server without a model, and the base of test manifests.
    pub fn echo(id: &str, version: semver::Version) -> Manifest {
        Manifest {
            id: id.into(),
            version,
            default: true,
            task: Task::Echo,
            format: Format::None,
            description: None,
            license: None,
            weights: None,
            config: None,
            tokenizer: None,
            pooling_config: None,
            normalize: true,
            max_input_length: 8,
            max_inputs: 4,
            parameters: vec![],
            batching: BatchingConfig::default(),
            device: None,
            files: vec![],
            pricing: None,
            signature: None,
            labels: BTreeMap::new(),
            provider: None,
            fallbacks: vec![],
            breaker: None,
            head: None,
            drift: None,
        }
    }

    /// Read and check the manifest of the version folder `dir`.
    pub fn load(dir: &Path) -> Result<Self, ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::Io {
            path: path.clone(),
            source,
        })?;
        let manifest: Manifest = serde_yaml::from_str(&text).map_err(|e| ManifestError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        manifest.check().map_err(|message| ManifestError::Invalid {
            path: path.clone(),
            message,
        })?;
        Ok(manifest)
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_default()
    }

    /// Internal consistency: ids, paths, referenced files listed, parameters sane (checked in
    /// this order; the first problem is the error).
    pub fn check(&self) -> Result<(), String> {
        self.check_ids_and_limits()?;
        self.check_files()?;
        self.check_remote_and_fallbacks()?;
        self.check_task_format()?;
        self.check_pricing_and_parameters()?;
        Ok(())
    }

    /// The id, the input limits and the batching sizes.
    fn check_ids_and_limits(&self) -> Result<(), String> {
        if !is_valid_id(&self.id) {
            return Err(format!(
                "id `{}` must be letters, digits, `.`, `_` or `-`, starting with a letter or digit",
                self.id
            ));
        }
        if self.max_input_length == 0 {
            return Err("max_input_length must be at least 1".into());
        }
        if self.max_inputs == 0 {
            return Err("max_inputs must be at least 1".into());
        }
        let b = &self.batching;
        if b.max_batch_size == 0 || b.queue_capacity == 0 || b.max_batch_tokens == 0 {
            return Err(
                "batching: max_batch_size, max_batch_tokens and queue_capacity must be at least 1"
                    .into(),
            );
        }
        Ok(())
    }

    /// Every file's path and sha256, and every file the manifest refers to listed.
    fn check_files(&self) -> Result<(), String> {
        for f in &self.files {
            safe_join(Path::new("."), &f.path).map_err(|e| e.to_string())?;
            if f.sha256.len() != 64 || !f.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(format!("file {}: sha256 must be 64 hex digits", f.path));
            }
        }
        for (what, file) in [
            ("weights", &self.weights),
            ("config", &self.config),
            ("tokenizer", &self.tokenizer),
            ("pooling_config", &self.pooling_config),
        ] {
            if let Some(file) = file {
                if !self.files.iter().any(|f| &f.path == file) {
                    return Err(format!(
                        "{what} `{file}` is not listed under files (every file needs its sha256)"
                    ));
                }
            }
        }
        Ok(())
    }

    /// A remote model's provider, the fallbacks and the circuit breaker.
    fn check_remote_and_fallbacks(&self) -> Result<(), String> {
        if let Some(p) = &self.provider {
            if !(p.base_url.starts_with("http://") || p.base_url.starts_with("https://")) {
                return Err("provider.base_url must start with http:// or https://".into());
            }
            if p.model.trim().is_empty() {
                return Err("provider.model must not be empty".into());
            }
            if p.api_key_env.is_some() && p.api_key_file.is_some() {
                return Err("provider: give api_key_env or api_key_file, not both".into());
            }
            if p.timeout_ms == 0 || p.probe_interval_s.is_nan() || p.probe_interval_s <= 0.0 {
                return Err("provider: timeout_ms and probe_interval_s must be above 0".into());
            }
            if self.format != Format::None || self.weights.is_some() {
                return Err("a remote model (provider) has format none and no weights".into());
            }
            if !matches!(self.task, Task::Embedding | Task::TextGeneration) {
                return Err("a remote model's task is embedding or text-generation".into());
            }
        }
        for f in &self.fallbacks {
            if !is_valid_id(f) || *f == self.id {
                return Err(format!("fallbacks: `{f}` must be another model's id"));
            }
        }
        if let Some(b) = &self.breaker {
            b.check()?;
        }
        Ok(())
    }

    /// The task and format go together, with the files each needs.
    fn check_task_format(&self) -> Result<(), String> {
        match (self.task, self.format) {
            (Task::Embedding | Task::TextGeneration, Format::None) if self.provider.is_some() => {}
            (Task::Embedding, Format::Safetensors) => {
                if self.weights.is_none() || self.config.is_none() || self.tokenizer.is_none() {
                    return Err("an embedding model needs weights, config and tokenizer".into());
                }
            }
            (Task::Classification, Format::Safetensors) => {
                if self.weights.is_none() || self.config.is_none() || self.tokenizer.is_none() {
                    return Err("a classification model needs weights, config and tokenizer".into());
                }
                if let Some(h) = &self.head {
                    if !self.files.iter().any(|f| f.path == h.weights) {
                        return Err(format!(
                            "head weights `{}` are not listed under files",
                            h.weights
                        ));
                    }
                    if h.classes.len() < 2 {
                        return Err("a head needs at least 2 classes".into());
                    }
                }
            }
            (Task::TextGeneration, Format::Gguf) => {
                if self.weights.is_none() {
                    return Err("a text-generation model needs weights (the .gguf file)".into());
                }
            }
            (Task::Echo, _) => {}
            (task, format) => {
                return Err(format!(
                    "task {} with format {:?} is not supported",
                    task.as_str(),
                    format
                ))
            }
        }
        Ok(())
    }

    /// Prices, and the parameters (each once, min at most max).
    fn check_pricing_and_parameters(&self) -> Result<(), String> {
        if let Some(p) = &self.pricing {
            let prices = [p.per_1k_input_tokens, p.per_1k_output_tokens, p.per_request];
            if prices.iter().any(|x| !x.is_finite() || *x < 0.0) {
                return Err("pricing: prices must be zero or more".into());
            }
        }
        let mut seen = std::collections::HashSet::new();
        for p in &self.parameters {
            if !seen.insert(p.name.as_str()) {
                return Err(format!("parameter `{}` is listed twice", p.name));
            }
            if let (Some(min), Some(max)) = (p.min, p.max) {
                if min > max {
                    return Err(format!("parameter `{}`: min is above max", p.name));
                }
            }
        }
        Ok(())
    }

    /// Check every listed file against its sha256 (and that it stays inside `dir`).
    pub fn verify_files(&self, dir: &Path) -> Result<(), ManifestError> {
        for f in &self.files {
            let path = safe_join(dir, &f.path)?;
            let actual = sha256_file(&path).map_err(|source| ManifestError::Io {
                path: path.clone(),
                source,
            })?;
            if !actual.eq_ignore_ascii_case(&f.sha256) {
                return Err(ManifestError::HashMismatch {
                    path: f.path.clone(),
                    expected: f.sha256.clone(),
                    actual,
                });
            }
        }
        Ok(())
    }

    /// Resolve one of the manifest's files inside `dir`.
    pub fn path_of(&self, dir: &Path, rel: &str) -> Result<PathBuf, ManifestError> {
        safe_join(dir, rel)
    }

    pub fn param(&self, name: &str) -> Option<&ParamSpec> {
        self.parameters.iter().find(|p| p.name == name)
    }
}

/// An ed25519 signature over the canonical manifest (see `signing`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestSignature {
    /// The signer's ed25519 public key, base64.
    pub public_key: String,
    /// The signature over the canonical manifest, base64.
    pub value: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(dir: &Path) -> Manifest {
        std::fs::write(dir.join("weights.bin"), b"hello").unwrap();
        let mut m = Manifest::echo("m", semver::Version::new(1, 0, 0));
        m.files = vec![FileEntry {
            path: "weights.bin".into(),
            sha256: sha256_file(&dir.join("weights.bin")).unwrap(),
        }];
        m
    }

    #[test]
    fn sha256_of_known_bytes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"abc").unwrap();
        assert_eq!(
            sha256_file(&dir.path().join("f")).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn verify_detects_a_changed_file() {
        let dir = tempfile::tempdir().unwrap();
        let m = sample(dir.path());
        m.verify_files(dir.path()).unwrap();
        std::fs::write(dir.path().join("weights.bin"), b"hellO").unwrap();
        let err = m.verify_files(dir.path()).unwrap_err();
        assert!(matches!(err, ManifestError::HashMismatch { .. }), "{err}");
    }

    #[test]
    fn yaml_round_trip_and_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let m = sample(dir.path());
        std::fs::write(dir.path().join(MANIFEST_FILE), m.to_yaml()).unwrap();
        assert_eq!(Manifest::load(dir.path()).unwrap(), m);
        let bad = format!("{}\nsurprise: 1\n", m.to_yaml());
        std::fs::write(dir.path().join(MANIFEST_FILE), bad).unwrap();
        let err = Manifest::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("surprise"), "{err}");
    }

    #[test]
    fn a_device_override_round_trips_and_bad_ones_are_named() {
        use crate::spec::device::DeviceKind;
        let dir = tempfile::tempdir().unwrap();
        let mut m = sample(dir.path());
        assert!(!m.to_yaml().contains("device"));
        m.device = Some(DeviceKind::Cuda(1));
        assert!(m.to_yaml().contains("device: cuda:1"), "{}", m.to_yaml());
        std::fs::write(dir.path().join(MANIFEST_FILE), m.to_yaml()).unwrap();
        assert_eq!(
            Manifest::load(dir.path()).unwrap().device,
            Some(DeviceKind::Cuda(1))
        );
        let bad = m.to_yaml().replace("cuda:1", "tpu");
        std::fs::write(dir.path().join(MANIFEST_FILE), bad).unwrap();
        let err = Manifest::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("tpu"), "{err}");
    }

    #[test]
    fn unsafe_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for p in ["../x", "/etc/passwd", "a/../../b", "", "a\\..\\b", "./x"] {
            assert!(safe_join(dir.path(), p).is_err(), "{p}");
        }
        assert!(safe_join(dir.path(), "a/b.bin").is_ok());
    }

    #[cfg(unix)]
    #[test]
    fn symlink_out_of_the_folder_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("link")).unwrap();
        assert!(matches!(
            safe_join(dir.path(), "link"),
            Err(ManifestError::UnsafePath(_))
        ));
    }

    #[test]
    fn manifest_with_unsafe_file_is_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = sample(dir.path());
        m.files[0].path = "../../etc/passwd".into();
        assert!(m.check().is_err());
    }

    #[test]
    fn referenced_files_must_be_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = sample(dir.path());
        m.task = Task::TextGeneration;
        m.format = Format::Gguf;
        m.weights = Some("other.gguf".into());
        let err = m.check().unwrap_err();
        assert!(err.contains("not listed"), "{err}");
    }

    #[test]
    fn ids() {
        for ok in ["all-minilm-l6-v2", "a", "Model_1.2"] {
            assert!(is_valid_id(ok), "{ok}");
        }
        for bad in ["", "..", "../x", "a/b", ".hidden", "a..b", "-x", "a b"] {
            assert!(!is_valid_id(bad), "{bad}");
        }
    }
}
