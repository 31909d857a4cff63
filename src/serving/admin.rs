//! Model lifecycle without a restart: load a version from the repository, unload one after its
//! requests finish, rescan the repository (by hand or every `model.poll_interval_s`), and the
//! background task that runs the canary analysis and applies what it decides.
//!
//! A version folder is loaded only once every file its manifest lists is present and matches
//! its sha256; one still being copied waits for the next scan. A folder whose files stay the
//! same across two scans and still do not match is a bad version: it is registered and fails
//! to load with the reason, and the other versions keep serving.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use semver::Version;
use serde::Serialize;
use utoipa::ToSchema;

use super::Core;
use crate::config::DeviceKind;
use crate::error::{ApiError, ErrorKind};
use crate::registry::{RegistryError, VersionState};
use crate::spec::manifest::{Manifest, MANIFEST_FILE};
use crate::spec::repository::{self, ModelSource};
use crate::traffic::{TrafficError, Verdict};

/// What loading a version needs, from the configuration.
#[derive(Debug, Clone)]
pub struct LoadSettings {
    /// The folder scanned (for an object-store repository, its local mirror).
    pub models_dir: PathBuf,
    /// An object-store repository (`s3://bucket/prefix`) mirrored into `models_dir` before
    /// each scan.
    pub remote: Option<String>,
    pub device: DeviceKind,
    pub warmup: bool,
    pub trusted_keys: Option<Arc<Vec<ed25519_dalek::VerifyingKey>>>,
    /// How long an unload waits for the requests holding the version.
    pub drain_timeout: Duration,
    /// 0: no polling.
    pub poll_interval_s: f64,
}

/// The state of repository scans: what each version folder looked like when last acted on.
#[derive(Debug, Default)]
pub struct Loading {
    pub settings: Option<LoadSettings>,
    started: std::sync::atomic::AtomicBool,
    /// The versions (`id@version`) found at start that failed to load: `/ready` stays 503
    /// while they stay failed, whether or not they would take traffic.
    failed_at_start: std::sync::Mutex<std::collections::HashSet<String>>,
    scans: tokio::sync::Mutex<ScanState>,
}

impl Loading {
    pub fn new(settings: LoadSettings) -> Self {
        Loading {
            settings: Some(settings),
            started: Default::default(),
            failed_at_start: Default::default(),
            scans: Default::default(),
        }
    }
}

#[derive(Debug, Default)]
struct ScanState {
    /// Fingerprints of folders registered as they are.
    seen: HashMap<(String, Version), Fingerprint>,
    /// Fingerprints of folders found incomplete or not matching, at the last scan.
    pending: HashMap<(String, Version), Fingerprint>,
}

/// The manifest's bytes and each listed file's size and modification time.
type Fingerprint = (Vec<u8>, Vec<(String, Option<(u64, SystemTime)>)>);

fn fingerprint(dir: &Path, manifest: &Manifest) -> Fingerprint {
    let bytes = std::fs::read(dir.join(MANIFEST_FILE)).unwrap_or_default();
    let files = manifest
        .files
        .iter()
        .map(|f| {
            let meta = manifest
                .path_of(dir, &f.path)
                .ok()
                .and_then(|p| std::fs::metadata(p).ok())
                .and_then(|m| Some((m.len(), m.modified().ok()?)));
            (f.path.clone(), meta)
        })
        .collect();
    (bytes, files)
}

/// What a rescan did.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct RescanReport {
    /// New versions now ready (`id@version`).
    pub loaded: Vec<String>,
    /// Changed versions reloaded.
    pub reloaded: Vec<String>,
    /// Versions whose folder went away, drained and unloaded.
    pub unloaded: Vec<String>,
    /// Versions that failed to load (their reason is on `GET /models/{id}`).
    pub failed: Vec<String>,
    /// Folders still incomplete (a file missing or not yet matching): tried again next scan.
    pub pending: Vec<String>,
}

fn name(id: &str, v: &Version) -> String {
    format!("{id}@{v}")
}

fn parse_version(v: &str) -> Result<Version, ApiError> {
    Version::parse(v)
        .map_err(|e| ApiError::invalid("version", format!("not a semantic version: {e}")))
}

impl Core {
    pub(crate) fn load_settings(&self) -> Result<&LoadSettings, ApiError> {
        self.loading
            .settings
            .as_ref()
            .ok_or_else(|| ApiError::internal("this server has no model repository settings"))
    }

    /// Load one registered version (verify, load, warm up) and count it in the metrics.
    pub async fn load_source(&self, source: &ModelSource) -> bool {
        let Ok(s) = self.load_settings() else {
            return false;
        };
        let (id, v) = (&source.manifest.id, source.manifest.version.to_string());
        let observer = self.metrics.batch_observer(id, &v);
        let started = Instant::now();
        let ok = self
            .registry
            .load(
                source,
                s.device,
                s.warmup,
                Some(observer),
                s.trusted_keys.clone(),
            )
            .await;
        self.metrics.observe_load(id, &v, ok, started.elapsed());
        ok
    }

    /// `POST /models/{id}/versions/{v}/load`: register the version from its repository folder
    /// if it is new (or failed before), load it, and answer once it is ready or has failed.
    pub async fn load_version(&self, id: &str, version: &str) -> Result<(), ApiError> {
        let v = parse_version(version)?;
        if let Some(rec) = self.registry.get(id) {
            match rec.versions.get(&v).map(|r| &r.state) {
                Some(VersionState::Ready(_)) => return Ok(()),
                Some(VersionState::Loading) => {
                    return Err(ApiError::new(
                        ErrorKind::Conflict,
                        format!("model `{id}` version {v} is loading already"),
                    ))
                }
                Some(VersionState::Draining(_)) => {
                    return Err(ApiError::new(
                        ErrorKind::Conflict,
                        format!(
                        "model `{id}` version {v} is being unloaded; load it again once it is gone"
                    ),
                    ))
                }
                _ => {}
            }
        }
        let settings = self.load_settings()?;
        if !crate::spec::manifest::is_valid_id(id) {
            return Err(ApiError::not_found(format!("model `{id}` not found")));
        }
        let dir = settings.models_dir.join(id).join(v.to_string());
        if !dir.join(MANIFEST_FILE).is_file() {
            return Err(ApiError::not_found(format!(
                "no folder {}/{id}/{v} with a manifest in the model repository",
                settings.models_dir.display()
            )));
        }
        let manifest = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || Manifest::load(&dir))
                .await
                .map_err(ApiError::internal)?
                .map_err(|e| ApiError::new(ErrorKind::LoadFailed, e.to_string()))?
        };
        if manifest.id != id || manifest.version != v {
            return Err(ApiError::new(
                ErrorKind::LoadFailed,
                format!(
                    "the manifest in {} says {}@{}",
                    dir.display(),
                    manifest.id,
                    manifest.version
                ),
            ));
        }
        let source = ModelSource { dir, manifest };
        self.register_fresh(&source)?;
        if self.load_source(&source).await {
            self.remember(&source).await;
            Ok(())
        } else {
            let reason = self
                .registry
                .get(id)
                .and_then(|r| r.versions.get(&v).map(|r| r.state.clone()))
                .and_then(|s| match s {
                    VersionState::Failed(r) => Some(r),
                    _ => None,
                })
                .unwrap_or_else(|| "unknown".into());
            Err(ApiError::new(
                ErrorKind::LoadFailed,
                format!("model `{id}` version {v} failed to load: {reason}"),
            ))
        }
    }

    /// Register a version, replacing a failed entry of it.
    fn register_fresh(&self, source: &ModelSource) -> Result<(), ApiError> {
        let m = &source.manifest;
        let failed = self
            .registry
            .get(&m.id)
            .and_then(|r| {
                r.versions
                    .get(&m.version)
                    .map(|v| matches!(v.state, VersionState::Failed(_)))
            })
            .unwrap_or(false);
        if failed {
            self.registry.remove(&m.id, &m.version);
        }
        match self.registry.register_or_update(source) {
            Ok(_) => Ok(()),
            Err(e @ RegistryError::Duplicate(..)) => {
                Err(ApiError::new(ErrorKind::Conflict, e.to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn remember(&self, source: &ModelSource) {
        let (dir, manifest) = (source.dir.clone(), source.manifest.clone());
        let fp = tokio::task::spawn_blocking(move || fingerprint(&dir, &manifest))
            .await
            .unwrap_or_default();
        let key = (source.manifest.id.clone(), source.manifest.version.clone());
        let mut scans = self.loading.scans.lock().await;
        scans.pending.remove(&key);
        scans.seen.insert(key, fp);
    }

    /// `DELETE /models/{id}/versions/{v}`: stop routing to the version, let the requests it
    /// holds (running and queued) finish, then free it. Refused (409) when it is the only
    /// version taking traffic.
    pub async fn unload_version(&self, id: &str, version: &str) -> Result<(), ApiError> {
        let v = parse_version(version)?;
        // What the record says, without keeping its copies of the handles (an unload waits
        // for those to go).
        let (default_version, other_ready) = {
            let record = self.registry.record(id)?;
            if !record.versions.contains_key(&v) {
                return Err(RegistryError::VersionNotFound(id.into(), v.to_string()).into());
            }
            let other_ready = record
                .versions
                .iter()
                .any(|(ov, r)| *ov != v && matches!(r.state, VersionState::Ready(_)));
            (record.default_version.clone(), other_ready)
        };
        let vs = v.to_string();
        match self.traffic.routes_to(id, &vs) {
            // No policy: the default version takes all of the model's traffic.
            None if default_version == v => {
                return Err(ApiError::new(
                    ErrorKind::Conflict,
                    if other_ready {
                        format!("version {v} is the default of `{id}` and takes all its traffic; move traffic first (PUT /models/{id}/traffic or POST /models/{id}/traffic/promote)")
                    } else {
                        format!("version {v} is the only version of `{id}` that takes traffic")
                    },
                ));
            }
            _ => {}
        }
        self.traffic.remove_version(id, &vs).map_err(|e| match e {
            TrafficError::OnlyRoute { .. } => ApiError::new(ErrorKind::Conflict, e.to_string()),
            other => ApiError::internal(other),
        })?;
        // Pinned requests that named it: the default moves to another version.
        if default_version == v {
            if let Some(other) = self
                .registry
                .record(id)?
                .versions
                .iter()
                .rev()
                .find(|(ov, r)| **ov != v && matches!(r.state, VersionState::Ready(_)))
                .map(|(ov, _)| ov.clone())
            {
                let _ = self.registry.set_default(id, &other);
            }
        }
        if let Some(handle) = self.registry.begin_unload(id, &v) {
            let deadline = Instant::now()
                + self
                    .load_settings()
                    .map_or(Duration::from_secs(30), |s| s.drain_timeout);
            // Ours and the registry's copy: the rest belong to requests still running.
            while handle.holders() > 2 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if handle.holders() > 2 {
                tracing::warn!(model = %id, version = %v, holders = handle.holders() - 2, "unloaded with requests still holding the version (drain timeout)");
            }
            self.registry.remove(id, &v);
        }
        self.loading
            .scans
            .lock()
            .await
            .seen
            .remove(&(id.to_string(), v.clone()));
        tracing::info!(model = %id, version = %v, "model version unloaded");
        Ok(())
    }

    /// `POST /repository/rescan` (and each poll): load new complete version folders, reload
    /// changed ones, unload those whose folder is gone.
    pub async fn rescan(&self) -> Result<RescanReport, ApiError> {
        let settings = self.load_settings()?.clone();
        let mut scans = self.loading.scans.lock().await;
        let scanned = scan_repository(&settings).await?;
        let mut report = RescanReport::default();
        let mut present = std::collections::HashSet::new();
        for (source, fp) in scanned {
            let key = (source.manifest.id.clone(), source.manifest.version.clone());
            present.insert(key.clone());
            let label = name(&key.0, &key.1);
            let registered = self
                .registry
                .get(&key.0)
                .and_then(|r| r.versions.get(&key.1).map(|v| v.state.clone()));
            if registered.is_some()
                && !scans.seen.contains_key(&key)
                && !scans.pending.contains_key(&key)
            {
                // Registered before this scanner knew it (at startup): as it is now.
                scans.seen.insert(key, fp);
                continue;
            }
            if scans.seen.get(&key) == Some(&fp) {
                continue;
            }
            let check = {
                let s = source.clone();
                tokio::task::spawn_blocking(move || s.manifest.verify_files(&s.dir))
                    .await
                    .map_err(ApiError::internal)?
            };
            match check {
                Ok(()) => {
                    scans.pending.remove(&key);
                    let reload = matches!(registered, Some(VersionState::Ready(_)));
                    if matches!(
                        registered,
                        Some(VersionState::Draining(_)) | Some(VersionState::Loading)
                    ) {
                        continue;
                    }
                    if let Err(e) = self.register_fresh(&source) {
                        tracing::warn!(model = %key.0, version = %key.1, error = %e.message, "rescan: not registered");
                        continue;
                    }
                    let ok = self.load_source(&source).await;
                    scans.seen.insert(key.clone(), fp);
                    match (ok, reload) {
                        (true, true) => report.reloaded.push(label),
                        (true, false) => report.loaded.push(label),
                        (false, _) => report.failed.push(label),
                    }
                }
                Err(e) => {
                    let stable = scans.pending.get(&key) == Some(&fp);
                    let complete = fp.1.iter().all(|(_, meta)| meta.is_some());
                    if stable && complete && registered.is_none() {
                        // Every file is there and has not changed since the last scan, yet
                        // one does not match: a bad version, not one being copied.
                        if self.register_fresh(&source).is_ok() {
                            let ok = self.load_source(&source).await;
                            scans.seen.insert(key.clone(), fp);
                            scans.pending.remove(&key);
                            if ok {
                                report.loaded.push(label);
                            } else {
                                report.failed.push(label);
                            }
                        }
                    } else {
                        if stable && registered.is_some() {
                            tracing::warn!(model = %key.0, version = %key.1, error = %e, "rescan: the folder of a loaded version no longer matches its manifest; the loaded copy keeps serving");
                        }
                        scans.pending.insert(key, fp);
                        report.pending.push(label);
                    }
                }
            }
        }
        // Versions whose folder is gone (only those that came from the repository).
        let mut gone = Vec::new();
        for rec in self.registry.list() {
            for (v, ver) in &rec.versions {
                let key = (rec.id.clone(), v.clone());
                if present.contains(&key)
                    || !ver.dir.starts_with(&settings.models_dir)
                    || matches!(ver.state, VersionState::Draining(_))
                {
                    continue;
                }
                scans.seen.remove(&key);
                scans.pending.remove(&key);
                gone.push(key);
            }
        }
        drop(scans);
        for (id, v) in gone {
            match self.unload_version(&id, &v.to_string()).await {
                Ok(()) => report.unloaded.push(name(&id, &v)),
                Err(e) => {
                    tracing::warn!(model = %id, version = %v, error = %e.message, "rescan: the folder is gone but the version stays loaded")
                }
            }
        }
        let changed = !(report.loaded.is_empty()
            && report.reloaded.is_empty()
            && report.unloaded.is_empty()
            && report.failed.is_empty());
        if changed {
            tracing::info!(loaded = ?report.loaded, reloaded = ?report.reloaded, unloaded = ?report.unloaded, failed = ?report.failed, "repository rescanned");
        }
        Ok(report)
    }

    /// Readiness: until the versions found at start have loaded, all of them count; after
    /// that, the versions that take traffic (the default, or a weight above 0) and the versions
    /// found at start that failed (a bad file keeps the pod out of its Service, as documented),
    /// so only a version loading or failing at run time never takes the pod out.
    pub fn readiness(&self) -> crate::registry::Readiness {
        if !self
            .loading
            .started
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return self.registry.readiness();
        }
        // (held across the registry's read lock; `mark_started` never takes them the other way)
        let failed_at_start = self
            .loading
            .failed_at_start
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        self.registry.readiness_of(|id, v, is_default| {
            (!failed_at_start.is_empty() && failed_at_start.contains(&format!("{id}@{v}")))
                || self
                    .traffic
                    .routes_to(id, &v.to_string())
                    .unwrap_or(is_default)
        })
    }

    /// The versions found at start have all been tried.
    pub fn mark_started(&self) {
        let failed = self.registry.readiness().failed.into_iter().collect();
        *self
            .loading
            .failed_at_start
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = failed;
        self.loading
            .started
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Read each model's stored traffic policy (at startup, once the versions are registered).
    pub fn restore_traffic(&self) {
        for rec in self.registry.list() {
            match self.traffic.read_persisted(&rec.id) {
                None => {}
                Some(Err(e)) => {
                    tracing::error!(model = %rec.id, error = %e, "traffic policy ignored")
                }
                Some(Ok(policy)) => {
                    let registry = &self.registry;
                    match policy.check(&rec.id, |m, v| known(registry, m, v)) {
                        Ok(()) => {
                            tracing::info!(model = %rec.id, "traffic policy restored");
                            self.traffic.install(&rec.id, policy, false);
                        }
                        Err(e) => {
                            tracing::error!(model = %rec.id, error = %e, "traffic policy ignored")
                        }
                    }
                }
            }
        }
    }

    /// Apply what the canary checks decided: log, metrics, and a promotion makes the canary the
    /// default version.
    pub fn run_canary_checks(&self) {
        for e in self.traffic.tick() {
            let verdict = match e.verdict {
                Verdict::Stepped => "stepped",
                Verdict::Held => "held",
                Verdict::Failed => "failed",
                Verdict::RolledBack => "rolled_back",
                Verdict::Promoted => "promoted",
            };
            self.metrics
                .observe_canary(&e.model, &e.version, verdict, e.weight);
            match e.verdict {
                Verdict::RolledBack => {
                    tracing::warn!(model = %e.model, version = %e.version, failed_checks = e.failed_checks, error_rate = e.error_rate, p99_ms = e.p99_ms, "canary rolled back")
                }
                Verdict::Promoted => {
                    if let Ok(v) = Version::parse(&e.version) {
                        let _ = self.registry.set_default(&e.model, &v);
                    }
                    tracing::info!(model = %e.model, version = %e.version, "canary promoted: now the default version");
                }
                _ => {
                    tracing::info!(model = %e.model, version = %e.version, verdict, weight = e.weight, requests = e.requests, error_rate = e.error_rate, p99_ms = e.p99_ms, "canary check")
                }
            }
        }
    }

    /// The background work of the lifecycle until `stop` turns true: canary checks several
    /// times a second, and repository polling when it is on.
    pub async fn run_lifecycle(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let poll = self
            .loading
            .settings
            .as_ref()
            .map_or(0.0, |s| s.poll_interval_s);
        let mut next_poll = (poll > 0.0).then(|| Instant::now() + Duration::from_secs_f64(poll));
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            self.run_canary_checks();
            if let Some(at) = next_poll {
                if Instant::now() >= at {
                    if let Err(e) = self.rescan().await {
                        tracing::warn!(error = %e.message, "repository poll failed");
                    }
                    next_poll = Some(Instant::now() + Duration::from_secs_f64(poll));
                }
            }
        }
    }
}

/// Whether model `m` (and version `v`, when given) is registered.
pub fn known(registry: &crate::registry::Registry, m: &str, v: Option<&str>) -> bool {
    match registry.get(m) {
        None => false,
        Some(rec) => match v {
            None => true,
            Some(v) => Version::parse(v).is_ok_and(|v| rec.versions.contains_key(&v)),
        },
    }
}

/// The repository's complete version folders with their fingerprints (an object store is
/// mirrored first; unreachable, the local mirror is scanned as it is).
async fn scan_repository(
    settings: &LoadSettings,
) -> Result<Vec<(ModelSource, Fingerprint)>, ApiError> {
    if let Some(url) = &settings.remote {
        // Only complete, verified versions are placed in the mirror; an unreachable store
        // leaves it as it is.
        if let Err(e) = crate::objstore::sync(url, &settings.models_dir).await {
            tracing::warn!(repository = %url, error = %e, "rescan: object store unreachable; scanning the local mirror");
        }
    }
    let root = settings.models_dir.clone();
    tokio::task::spawn_blocking(move || {
        let (found, _problems) = repository::scan(&root)?;
        let with_prints: Vec<(ModelSource, Fingerprint)> = found
            .into_iter()
            .map(|s| {
                let fp = fingerprint(&s.dir, &s.manifest);
                (s, fp)
            })
            .collect();
        Ok::<_, repository::RepositoryError>(with_prints)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|e| ApiError::new(ErrorKind::Unavailable, e.to_string()))
}
