//! The live registry: model id → versions → state (loading, ready with a handle, or failed),
//! and which version answers when a request names none.
//!
//! A plain `std::sync::RwLock` guards the map: it is held only to read or swap an entry, never
//! across an `.await`, and lookups vastly outnumber the writes (loads).

/// The on-disk description of models lives in `spec`; the old paths still work.
pub use crate::spec::{manifest, repository, signing};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use semver::Version;
use time::OffsetDateTime;

use crate::config::DeviceKind;
use crate::engine::{LoadSpec, ModelHandle};
use manifest::Manifest;
use repository::ModelSource;

#[derive(Debug, Clone)]
pub enum VersionState {
    Loading,
    Ready(ModelHandle),
    /// Unloading: no new request is routed to it; the ones it holds finish.
    Draining(ModelHandle),
    Failed(String),
}

impl VersionState {
    pub fn as_str(&self) -> &'static str {
        match self {
            VersionState::Loading => "loading",
            VersionState::Ready(_) => "ready",
            VersionState::Draining(_) => "draining",
            VersionState::Failed(_) => "failed",
        }
    }
}

#[derive(Debug, Clone)]
pub struct VersionRecord {
    pub manifest: Arc<Manifest>,
    pub dir: PathBuf,
    pub state: VersionState,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub load_ms: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct ModelRecord {
    pub id: String,
    pub versions: BTreeMap<Version, VersionRecord>,
    pub default_version: Version,
}

/// A model version a request can be sent to.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub manifest: Arc<Manifest>,
    pub handle: ModelHandle,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    #[error("model `{0}` not found")]
    NotFound(String),
    #[error("model `{0}` has no version {1}")]
    VersionNotFound(String, String),
    #[error("model `{id}` version {version} is still loading")]
    Loading { id: String, version: Version },
    #[error("model `{id}` version {version} failed to load: {reason}")]
    Failed {
        id: String,
        version: Version,
        reason: String,
    },
    #[error("model `{0}` version {1} is registered twice")]
    Duplicate(String, Version),
    #[error("model `{id}` version {version} is being unloaded")]
    Draining { id: String, version: Version },
}

/// Whether every registered model is ready, and which are not.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    pub ready: bool,
    pub loading: Vec<String>,
    pub failed: Vec<String>,
    pub dead: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Registry {
    models: RwLock<BTreeMap<String, ModelRecord>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, ModelRecord>> {
        self.models.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, ModelRecord>> {
        self.models.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Add a version in the `loading` state. The default version is the one whose manifest says
    /// `default: true` (the highest such), else the highest version.
    pub fn register(&self, source: &ModelSource) -> Result<(), RegistryError> {
        let m = &source.manifest;
        let now = OffsetDateTime::now_utc();
        let created_at = std::fs::metadata(source.dir.join(manifest::MANIFEST_FILE))
            .and_then(|md| md.modified())
            .map(OffsetDateTime::from)
            .unwrap_or(now);
        let mut models = self.write();
        let record = models.entry(m.id.clone()).or_insert_with(|| ModelRecord {
            id: m.id.clone(),
            versions: BTreeMap::new(),
            default_version: m.version.clone(),
        });
        if record.versions.contains_key(&m.version) {
            return Err(RegistryError::Duplicate(m.id.clone(), m.version.clone()));
        }
        record.versions.insert(
            m.version.clone(),
            VersionRecord {
                manifest: Arc::new(m.clone()),
                dir: source.dir.clone(),
                state: VersionState::Loading,
                created_at,
                updated_at: now,
                load_ms: None,
            },
        );
        // A model already serving keeps its default: a version added at run time takes
        // traffic when a traffic policy or a promotion sends it some.
        let serving = record
            .versions
            .get(&record.default_version)
            .is_some_and(|v| matches!(v.state, VersionState::Ready(_)));
        if !serving {
            record.default_version = pick_default(&record.versions);
        }
        Ok(())
    }

    /// Make `version` the default of `id` (from `model.version` in the config).
    pub fn set_default(&self, id: &str, version: &Version) -> Result<(), RegistryError> {
        let mut models = self.write();
        let record = models
            .get_mut(id)
            .ok_or_else(|| RegistryError::NotFound(id.to_string()))?;
        if !record.versions.contains_key(version) {
            return Err(RegistryError::VersionNotFound(
                id.into(),
                version.to_string(),
            ));
        }
        record.default_version = version.clone();
        Ok(())
    }

    fn set_state(&self, id: &str, version: &Version, state: VersionState, load_ms: Option<u64>) {
        let mut models = self.write();
        if let Some(v) = models.get_mut(id).and_then(|r| r.versions.get_mut(version)) {
            v.state = state;
            v.updated_at = OffsetDateTime::now_utc();
            v.load_ms = load_ms;
        }
    }

    /// The version a request for `id` (and optionally `version`) goes to.
    pub fn resolve(&self, id: &str, version: Option<&str>) -> Result<Resolved, RegistryError> {
        let models = self.read();
        let record = models
            .get(id)
            .ok_or_else(|| RegistryError::NotFound(id.to_string()))?;
        let v = match version {
            None => record.default_version.clone(),
            Some(text) => Version::parse(text)
                .map_err(|_| RegistryError::VersionNotFound(id.into(), text.into()))?,
        };
        let rec = record
            .versions
            .get(&v)
            .ok_or_else(|| RegistryError::VersionNotFound(id.into(), v.to_string()))?;
        match &rec.state {
            VersionState::Ready(handle) => Ok(Resolved {
                manifest: rec.manifest.clone(),
                handle: handle.clone(),
            }),
            VersionState::Loading => Err(RegistryError::Loading {
                id: id.into(),
                version: v,
            }),
            VersionState::Draining(_) => Err(RegistryError::Draining {
                id: id.into(),
                version: v,
            }),
            VersionState::Failed(reason) => Err(RegistryError::Failed {
                id: id.into(),
                version: v,
                reason: reason.clone(),
            }),
        }
    }

    /// The model `id`, or the one "not found" error every route gives.
    pub fn record(&self, id: &str) -> Result<ModelRecord, RegistryError> {
        self.get(id)
            .ok_or_else(|| RegistryError::NotFound(id.to_string()))
    }

    pub fn get(&self, id: &str) -> Option<ModelRecord> {
        self.read().get(id).cloned()
    }

    pub fn list(&self) -> Vec<ModelRecord> {
        self.read().values().cloned().collect()
    }

    pub fn readiness(&self) -> Readiness {
        self.readiness_of(|_, _, _| true)
    }

    /// Readiness over the versions `counts(id, version, is_default)` picks.
    pub fn readiness_of(&self, counts: impl Fn(&str, &Version, bool) -> bool) -> Readiness {
        let mut r = Readiness::default();
        for rec in self.read().values() {
            for (v, ver) in &rec.versions {
                if !counts(&rec.id, v, *v == rec.default_version) {
                    continue;
                }
                let name = format!("{}@{}", rec.id, v);
                match &ver.state {
                    VersionState::Loading => r.loading.push(name),
                    VersionState::Failed(_) => r.failed.push(name),
                    VersionState::Ready(h) if !h.is_alive() => r.dead.push(name),
                    VersionState::Ready(_) | VersionState::Draining(_) => {}
                }
            }
        }
        r.ready = r.loading.is_empty() && r.failed.is_empty() && r.dead.is_empty();
        r
    }

    /// Take `version` of `id` out of routing: its state becomes `Draining` and its handle is
    /// returned, so the caller can wait for the requests holding it. `None` when it was not
    /// ready (a loading or failed version is simply removed).
    pub fn begin_unload(&self, id: &str, version: &Version) -> Option<ModelHandle> {
        let mut models = self.write();
        let record = models.get_mut(id)?;
        let entry = record.versions.get_mut(version)?;
        match std::mem::replace(&mut entry.state, VersionState::Loading) {
            VersionState::Ready(h) | VersionState::Draining(h) => {
                entry.state = VersionState::Draining(h.clone());
                entry.updated_at = OffsetDateTime::now_utc();
                Some(h)
            }
            _ => {
                record.versions.remove(version);
                Self::after_removal(&mut models, id);
                None
            }
        }
    }

    /// Forget `version` of `id` (after draining); the model goes when its last version does.
    pub fn remove(&self, id: &str, version: &Version) {
        let mut models = self.write();
        if let Some(record) = models.get_mut(id) {
            record.versions.remove(version);
        }
        Self::after_removal(&mut models, id);
    }

    fn after_removal(models: &mut BTreeMap<String, ModelRecord>, id: &str) {
        let Some(record) = models.get_mut(id) else {
            return;
        };
        if record.versions.is_empty() {
            models.remove(id);
        } else if !record.versions.contains_key(&record.default_version) {
            record.default_version = pick_default(&record.versions);
        }
    }

    /// Register `source` if it is new, or put a changed copy of a registered version back in
    /// the `loading` state's place: the running handle keeps serving until the new one is ready.
    pub fn register_or_update(&self, source: &ModelSource) -> Result<bool, RegistryError> {
        let m = &source.manifest;
        {
            let mut models = self.write();
            if let Some(v) = models
                .get_mut(&m.id)
                .and_then(|r| r.versions.get_mut(&m.version))
            {
                v.manifest = Arc::new(m.clone());
                v.dir = source.dir.clone();
                return Ok(false);
            }
        }
        self.register(source).map(|()| true)
    }

    fn is_ready(&self, id: &str, version: &Version) -> bool {
        self.read()
            .get(id)
            .and_then(|r| r.versions.get(version))
            .is_some_and(|v| matches!(v.state, VersionState::Ready(_)))
    }

    /// The directory a registered version was loaded from.
    pub fn dir_of(&self, id: &str, version: &Version) -> Option<PathBuf> {
        self.read()
            .get(id)
            .and_then(|r| r.versions.get(version))
            .map(|v| v.dir.clone())
    }

    /// Load one registered version and record the outcome; logs one line either way. Returns
    /// whether it loaded.
    pub async fn load(
        &self,
        source: &ModelSource,
        device: DeviceKind,
        warmup: bool,
        observer: Option<crate::engine::BatchObserver>,
        trusted_keys: Option<Arc<Vec<ed25519_dalek::VerifyingKey>>>,
    ) -> bool {
        let m = &source.manifest;
        let started = Instant::now();
        let result = if m.provider.is_some() {
            start_remote(source, trusted_keys.as_deref()).await
        } else {
            ModelHandle::start(LoadSpec {
                manifest: m.clone(),
                dir: source.dir.clone(),
                device,
                warmup,
                observer,
                trusted_keys,
            })
            .await
        };
        let ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(handle) => {
                tracing::info!(
                    model = %m.id,
                    version = %m.version,
                    task = m.task.as_str(),
                    device = %handle.frontend().device,
                    load_ms = ms,
                    "model loaded"
                );
                self.set_state(&m.id, &m.version, VersionState::Ready(handle), Some(ms));
                true
            }
            Err(e) => {
                tracing::error!(model = %m.id, version = %m.version, error = %e, "model failed to load");
                if self.is_ready(&m.id, &m.version) {
                    // A reload that failed: the running copy keeps serving.
                    return false;
                }
                self.set_state(
                    &m.id,
                    &m.version,
                    VersionState::Failed(e.to_string()),
                    Some(ms),
                );
                false
            }
        }
    }
}

/// A remote model: check its signature when required, build its client, probe its provider
/// once (a provider that is down does not fail the load: the probe keeps watching), and keep
/// probing every `probe_interval_s` while the version is registered.
async fn start_remote(
    source: &ModelSource,
    trusted_keys: Option<&Vec<ed25519_dalek::VerifyingKey>>,
) -> Result<ModelHandle, crate::engine::EngineError> {
    use crate::engine::EngineError;
    let m = &source.manifest;
    if let Some(keys) = trusted_keys {
        signing::verify(m, keys).map_err(|e| EngineError::Load(e.to_string()))?;
    }
    let model = crate::engine::remote::RemoteModel::new(m, &source.dir)?;
    let handle = ModelHandle::remote(m, model);
    if let Some(remote) = handle.remote_model() {
        let state = remote.probe().await;
        tracing::info!(model = %m.id, version = %m.version, base_url = %remote.spec().base_url, state = ?state, "remote model probed");
        let weak = Arc::downgrade(remote);
        let every = std::time::Duration::from_secs_f64(remote.spec().probe_interval_s);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                // The version was unloaded once only this task could still reach it.
                let Some(remote) = weak.upgrade() else { break };
                remote.probe().await;
            }
        });
    }
    Ok(handle)
}

fn pick_default(versions: &BTreeMap<Version, VersionRecord>) -> Version {
    versions
        .iter()
        .rev()
        .find(|(_, r)| r.manifest.default)
        .or_else(|| versions.iter().next_back())
        .map(|(v, _)| v.clone())
        .unwrap_or_else(|| Version::new(0, 0, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(id: &str, v: &str, default: bool) -> ModelSource {
        let mut manifest = Manifest::echo(id, Version::parse(v).unwrap());
        manifest.default = default;
        ModelSource {
            dir: PathBuf::from("/nonexistent"),
            manifest,
        }
    }

    #[test]
    fn default_version_rules() {
        let r = Registry::new();
        r.register(&source("m", "1.0.0", false)).unwrap();
        r.register(&source("m", "2.0.0", false)).unwrap();
        assert_eq!(r.get("m").unwrap().default_version, Version::new(2, 0, 0));
        r.register(&source("m", "1.5.0", true)).unwrap();
        assert_eq!(r.get("m").unwrap().default_version, Version::new(1, 5, 0));
        r.set_default("m", &Version::new(1, 0, 0)).unwrap();
        assert_eq!(r.get("m").unwrap().default_version, Version::new(1, 0, 0));
        assert!(matches!(
            r.register(&source("m", "1.0.0", false)),
            Err(RegistryError::Duplicate(..))
        ));
    }

    #[test]
    fn resolve_reports_state() {
        let r = Registry::new();
        r.register(&source("m", "1.0.0", true)).unwrap();
        assert!(matches!(
            r.resolve("m", None),
            Err(RegistryError::Loading { .. })
        ));
        assert!(matches!(
            r.resolve("x", None),
            Err(RegistryError::NotFound(_))
        ));
        assert!(matches!(
            r.resolve("m", Some("9.9.9")),
            Err(RegistryError::VersionNotFound(..))
        ));
        assert!(!r.readiness().ready);
        r.set_state(
            "m",
            &Version::new(1, 0, 0),
            VersionState::Failed("bad".into()),
            None,
        );
        assert!(matches!(
            r.resolve("m", None),
            Err(RegistryError::Failed { .. })
        ));
        assert_eq!(r.readiness().failed, vec!["m@1.0.0".to_string()]);
    }

    #[tokio::test]
    async fn echo_model_loads_and_becomes_ready() {
        let r = Registry::new();
        let s = source("echo", "1.0.0", true);
        r.register(&s).unwrap();
        assert!(r.load(&s, DeviceKind::Cpu, true, None, None).await);
        assert!(r.resolve("echo", None).is_ok());
        assert!(r.readiness().ready);
    }
}
