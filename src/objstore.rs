//! Models from S3-compatible object storage: `model.models_dir: s3://bucket/prefix`.
//!
//! The bucket holds the same layout as a local repository (`prefix/<id>/<version>/anya.yaml`
//! and the files its manifest lists). `sync` mirrors it into `model.cache_dir`, which the server
//! then scans exactly like a local `models_dir`:
//!
//! - the manifests are found by one listing; a version whose manifest names a file the bucket
//!   does not hold (an upload still under way) is skipped whole, never half placed;
//! - files are downloaded in parallel (at most `PARALLEL_DOWNLOADS` at once) into a temporary
//!   file beside their place, hashed while they stream, and renamed into place only when their
//!   sha256 is the manifest's, so a failed or partial download never replaces a good copy;
//! - a file already cached with the manifest's sha256 is not downloaded again, and a version
//!   whose manifest object is unchanged since the last sync (its ETag, in `.anya-synced`) costs
//!   no request but the listing: `sync` is idempotent and cheap, fit to run before every rescan;
//! - an object whose bytes do not match the manifest (tampered, or corrupted in transit) is
//!   reported; when no good copy exists, the version is placed with it, so the version's load
//!   fails with the sha256 mismatch as its reason (and `GET /models/{id}` says `failed`) while
//!   the other versions serve; it is not downloaded again until one of its objects changes in
//!   the listing (`.anya-failed` keeps the listing it was judged on), so polling stays cheap.
//!
//! `push` publishes a local version folder: every file first, the manifest last, so a replica
//! that syncs meanwhile skips the version instead of loading part of it.
//!
//! Credentials, region and endpoint come from the usual AWS environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL` or
//! `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`), read by `object_store`'s S3 client.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::spec::manifest::{safe_join, sha256_file, Manifest, MANIFEST_FILE};
pub use crate::spec::repository::{is_remote, parse_url};

/// Files downloaded at once.
pub const PARALLEL_DOWNLOADS: usize = 4;

/// In a synced version folder: the ETag (or size and time) of the manifest object it came from.
const SYNCED_MARKER: &str = ".anya-synced";
/// A version whose objects did not match its manifest: the listing tags it was judged on, then
/// the reason. Unchanged objects are not downloaded again on the next sync (a poll every second
/// must not re-read a bad multi-gigabyte file); a changed one is.
const FAILED_MARKER: &str = ".anya-failed";

#[derive(Debug, thiserror::Error)]
pub enum ObjStoreError {
    #[error("{url}: not an object store URL (expected s3://bucket/prefix)")]
    Url { url: String },
    #[error("object store {url}: {source}")]
    Store {
        url: String,
        source: object_store::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Manifest(#[from] crate::spec::manifest::ManifestError),
}

/// The S3 client for `url`'s bucket, configured from the AWS environment.
pub fn s3_store(url: &str) -> Result<(Arc<dyn ObjectStore>, String), ObjStoreError> {
    let (bucket, prefix) = parse_url(url).ok_or_else(|| ObjStoreError::Url { url: url.into() })?;
    let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
    // `from_env` knows AWS_ENDPOINT and AWS_ENDPOINT_URL; say which wins when both are set.
    if let Ok(e) = std::env::var("AWS_ENDPOINT_URL").or_else(|_| std::env::var("AWS_ENDPOINT")) {
        b = b.with_endpoint(e);
    }
    if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err() {
        b = b.with_region("us-east-1");
    }
    let store = b.build().map_err(|source| ObjStoreError::Store {
        url: url.into(),
        source,
    })?;
    Ok((Arc::new(store), prefix))
}

/// What became of one version in a sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionOutcome {
    /// Every file is in the cache with the manifest's sha256.
    Ready,
    /// Not placed (a listed file is missing in the bucket, or the manifest is unreadable).
    Skipped(String),
    /// Placed, but it will fail to load: an object does not match the manifest.
    Failed(String),
}

#[derive(Debug, Clone, Default)]
pub struct SyncReport {
    /// `(id, version)` → outcome.
    pub versions: BTreeMap<(String, String), VersionOutcome>,
    /// Objects read in full (manifests and files).
    pub downloaded: usize,
    pub downloaded_bytes: u64,
    /// Files found in the cache with the right sha256 (not downloaded).
    pub cached: usize,
}

impl SyncReport {
    pub fn ready(&self) -> usize {
        self.versions
            .values()
            .filter(|o| **o == VersionOutcome::Ready)
            .count()
    }
}

/// Mirror the repository at `url` (`s3://bucket/prefix`) into `cache_dir`.
pub async fn sync(url: &str, cache_dir: &Path) -> Result<SyncReport, ObjStoreError> {
    let (store, prefix) = s3_store(url)?;
    sync_store(store.as_ref(), &prefix, cache_dir, url).await
}

/// `sync` against any object store (`url` only names it in errors).
pub async fn sync_store(
    store: &dyn ObjectStore,
    prefix: &str,
    cache_dir: &Path,
    url: &str,
) -> Result<SyncReport, ObjStoreError> {
    let store_err = |source| ObjStoreError::Store {
        url: url.to_string(),
        source,
    };
    let list_prefix = (!prefix.is_empty()).then(|| ObjectPath::from(prefix));
    let objects: Vec<object_store::ObjectMeta> = store
        .list(list_prefix.as_ref())
        .try_collect()
        .await
        .map_err(store_err)?;
    let strip = |p: &ObjectPath| -> Option<String> {
        let s = p.as_ref();
        if prefix.is_empty() {
            Some(s.to_string())
        } else {
            s.strip_prefix(prefix)?
                .strip_prefix('/')
                .map(str::to_string)
        }
    };
    // relative key → (size, etag or size+time)
    let mut listing: HashMap<String, (u64, String)> = HashMap::new();
    for o in &objects {
        if let Some(rel) = strip(&o.location) {
            let tag = o
                .e_tag
                .clone()
                .unwrap_or_else(|| format!("{}-{}", o.size, o.last_modified.timestamp_millis()));
            listing.insert(rel, (o.size, tag));
        }
    }
    let mut manifests: Vec<(String, String)> = listing
        .keys()
        .filter_map(|k| {
            let mut parts = k.split('/');
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some(id), Some(v), Some(MANIFEST_FILE), None) => {
                    Some((id.to_string(), v.to_string()))
                }
                _ => None,
            }
        })
        .collect();
    manifests.sort();
    let mut report = SyncReport::default();
    for (id, version) in manifests {
        let outcome = sync_version(
            store,
            prefix,
            cache_dir,
            &listing,
            &id,
            &version,
            &mut report,
        )
        .await
        .unwrap_or_else(|e| VersionOutcome::Skipped(e.to_string()));
        match &outcome {
            VersionOutcome::Ready => {}
            VersionOutcome::Skipped(why) => {
                tracing::warn!(model = %id, version = %version, reason = %why, "object store: version not placed")
            }
            VersionOutcome::Failed(why) => {
                tracing::error!(model = %id, version = %version, reason = %why, "object store: version placed but will fail to load")
            }
        }
        report.versions.insert((id, version), outcome);
    }
    Ok(report)
}

fn key(prefix: &str, rel: &str) -> ObjectPath {
    if prefix.is_empty() {
        ObjectPath::from(rel)
    } else {
        ObjectPath::from(format!("{prefix}/{rel}"))
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ObjStoreError + '_ {
    move |source| ObjStoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[allow(clippy::too_many_arguments)]
async fn sync_version(
    store: &dyn ObjectStore,
    prefix: &str,
    cache_dir: &Path,
    listing: &HashMap<String, (u64, String)>,
    id: &str,
    version: &str,
    report: &mut SyncReport,
) -> Result<VersionOutcome, ObjStoreError> {
    if !crate::spec::manifest::is_valid_id(id) || semver::Version::parse(version).is_err() {
        return Ok(VersionOutcome::Skipped(format!(
            "`{id}/{version}` is not a model id and a semantic version"
        )));
    }
    let dir = cache_dir.join(id).join(version);
    let manifest_rel = format!("{id}/{version}/{MANIFEST_FILE}");
    let manifest_tag = listing
        .get(&manifest_rel)
        .map(|(_, t)| t.clone())
        .unwrap_or_default();
    let marker = dir.join(SYNCED_MARKER);
    if tokio::fs::read_to_string(&marker).await.ok().as_deref() == Some(manifest_tag.as_str())
        && dir.join(MANIFEST_FILE).is_file()
    {
        return Ok(VersionOutcome::Ready);
    }
    let version_tag = version_tag(listing, id, version);
    let failed_marker = dir.join(FAILED_MARKER);
    if let Ok(text) = tokio::fs::read_to_string(&failed_marker).await {
        if let Some((tag, reason)) = text.split_once("\n\n") {
            if tag == version_tag && dir.join(MANIFEST_FILE).is_file() {
                return Ok(VersionOutcome::Failed(reason.to_string()));
            }
        }
    }
    let manifest_bytes = get_manifest(store, prefix, &manifest_rel).await?;
    report.downloaded += 1;
    report.downloaded_bytes += manifest_bytes.len() as u64;
    let manifest = match check_manifest(&manifest_bytes, &manifest_rel, &dir, listing, id, version)?
    {
        Ok(m) => m,
        Err(why) => return Ok(VersionOutcome::Skipped(why)),
    };
    remove_partials(&dir);
    tokio::fs::create_dir_all(&dir).await.map_err(io(&dir))?;
    let mismatches = fetch_files(store, prefix, &dir, id, version, &manifest, report).await?;
    // The manifest last: the scan sees the version only once its files are in place.
    write_atomically(&dir.join(MANIFEST_FILE), &manifest_bytes).await?;
    if mismatches.is_empty() {
        let _ = tokio::fs::remove_file(&failed_marker).await;
        write_atomically(&marker, manifest_tag.as_bytes()).await?;
        Ok(VersionOutcome::Ready)
    } else {
        let _ = tokio::fs::remove_file(&marker).await;
        let reason = mismatches.join("; ");
        write_atomically(
            &failed_marker,
            format!("{version_tag}\n\n{reason}").as_bytes(),
        )
        .await?;
        Ok(VersionOutcome::Failed(reason))
    }
}

/// The version's objects as listed, one `key size tag` line each, sorted: what its failed
/// marker was written for.
fn version_tag(listing: &HashMap<String, (u64, String)>, id: &str, version: &str) -> String {
    let version_prefix = format!("{id}/{version}/");
    let mut objects: Vec<String> = listing
        .iter()
        .filter(|(k, _)| k.starts_with(&version_prefix))
        .map(|(k, (size, tag))| format!("{k} {size} {tag}"))
        .collect();
    objects.sort();
    objects.join("\n")
}

/// The bytes of the version's manifest (`manifest_rel`, under `prefix`).
async fn get_manifest(
    store: &dyn ObjectStore,
    prefix: &str,
    manifest_rel: &str,
) -> Result<axum::body::Bytes, ObjStoreError> {
    store
        .get(&key(prefix, manifest_rel))
        .await
        .map_err(|source| ObjStoreError::Store {
            url: manifest_rel.to_string(),
            source,
        })?
        .bytes()
        .await
        .map_err(|source| ObjStoreError::Store {
            url: manifest_rel.to_string(),
            source,
        })
}

/// The manifest parsed and checked: valid, naming `id@version`, with every file in the listing
/// and inside the version's folder. `Ok(Err(why))` when the version is skipped for now.
fn check_manifest(
    manifest_bytes: &[u8],
    manifest_rel: &str,
    dir: &Path,
    listing: &HashMap<String, (u64, String)>,
    id: &str,
    version: &str,
) -> Result<Result<Manifest, String>, ObjStoreError> {
    let text = String::from_utf8_lossy(manifest_bytes);
    let manifest: Manifest = match serde_yaml::from_str(&text) {
        Ok(m) => m,
        Err(e) => return Ok(Err(format!("{manifest_rel}: {e}"))),
    };
    if let Err(e) = manifest.check() {
        return Ok(Err(format!("{manifest_rel}: {e}")));
    }
    if manifest.id != id || manifest.version.to_string() != version {
        return Ok(Err(format!(
            "{manifest_rel} names {}@{}",
            manifest.id, manifest.version
        )));
    }
    for f in &manifest.files {
        safe_join(dir, &f.path)?;
        if !listing.contains_key(&format!("{id}/{version}/{}", f.path)) {
            return Ok(Err(format!(
                "`{}` is listed in the manifest but not in the bucket yet",
                f.path
            )));
        }
    }
    Ok(Ok(manifest))
}

/// Download the manifest's files into `dir` (those already there with the right hash are
/// kept), counting them in `report`; answers the hash mismatches.
async fn fetch_files(
    store: &dyn ObjectStore,
    prefix: &str,
    dir: &Path,
    id: &str,
    version: &str,
    manifest: &Manifest,
    report: &mut SyncReport,
) -> Result<Vec<String>, ObjStoreError> {
    // Owned values only: the downloads run inside spawned tasks (repository polling).
    let jobs: Vec<(object_store::path::Path, String, String)> = manifest
        .files
        .iter()
        .map(|f| {
            let rel = format!("{id}/{version}/{}", f.path);
            (key(prefix, &rel), f.path.clone(), f.sha256.clone())
        })
        .collect();
    let results: Vec<Result<FileOutcome, ObjStoreError>> =
        futures::stream::iter(jobs.into_iter().map(|(object, path, sha)| {
            let dir = dir.to_path_buf();
            async move { fetch_file(store, &object, &dir, &path, &sha).await }
        }))
        .buffer_unordered(PARALLEL_DOWNLOADS)
        .collect()
        .await;
    let mut mismatches = Vec::new();
    for r in results {
        match r? {
            FileOutcome::Cached => report.cached += 1,
            FileOutcome::Downloaded(n) => {
                report.downloaded += 1;
                report.downloaded_bytes += n;
            }
            FileOutcome::Mismatch(n, why) => {
                report.downloaded += 1;
                report.downloaded_bytes += n;
                mismatches.push(why);
            }
        }
    }
    Ok(mismatches)
}

/// Remove temporary files a killed process left in `dir` (one sync per cache at a time).
fn remove_partials(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        match e.file_type() {
            Ok(t) if t.is_dir() => remove_partials(&path),
            Ok(t) if t.is_file() && name.starts_with('.') && name.ends_with(".part") => {
                let _ = std::fs::remove_file(&path);
            }
            _ => {}
        }
    }
}

enum FileOutcome {
    Cached,
    Downloaded(u64),
    /// Downloaded, but its sha256 is not the manifest's.
    Mismatch(u64, String),
}

fn part_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.{}.part", uuid::Uuid::new_v4().simple()))
}

async fn write_atomically(target: &Path, bytes: &[u8]) -> Result<(), ObjStoreError> {
    let tmp = part_path(target);
    tokio::fs::write(&tmp, bytes).await.map_err(io(&tmp))?;
    tokio::fs::rename(&tmp, target).await.map_err(io(target))
}

async fn fetch_file(
    store: &dyn ObjectStore,
    location: &ObjectPath,
    dir: &Path,
    rel: &str,
    expected: &str,
) -> Result<FileOutcome, ObjStoreError> {
    let target = safe_join(dir, rel)?;
    if target.is_file() {
        let t = target.clone();
        let actual = tokio::task::spawn_blocking(move || sha256_file(&t))
            .await
            .ok()
            .and_then(Result::ok);
        if actual.is_some_and(|a| a.eq_ignore_ascii_case(expected)) {
            return Ok(FileOutcome::Cached);
        }
    }
    if let Some(parent) = target.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(io(parent))?;
    }
    let tmp = part_path(&target);
    let downloaded = download(store, location, &tmp).await;
    let (bytes, actual) = match downloaded {
        Ok(x) => x,
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
    };
    if actual.eq_ignore_ascii_case(expected) {
        tokio::fs::rename(&tmp, &target)
            .await
            .map_err(io(&target))?;
        return Ok(FileOutcome::Downloaded(bytes));
    }
    let why =
        format!("sha256 mismatch for {rel}: manifest says {expected}, the object has {actual}");
    // Never replace a good copy; with none, place the bad bytes so the load fails and says why.
    let good_copy =
        target.is_file() && sha256_file(&target).is_ok_and(|a| a.eq_ignore_ascii_case(expected));
    if good_copy {
        let _ = tokio::fs::remove_file(&tmp).await;
    } else {
        tokio::fs::rename(&tmp, &target)
            .await
            .map_err(io(&target))?;
    }
    Ok(FileOutcome::Mismatch(bytes, why))
}

/// Stream `location` into `tmp`, hashing as it goes: (bytes, sha256 hex).
async fn download(
    store: &dyn ObjectStore,
    location: &ObjectPath,
    tmp: &Path,
) -> Result<(u64, String), ObjStoreError> {
    let store_err = |source| ObjStoreError::Store {
        url: location.to_string(),
        source,
    };
    let mut stream = store.get(location).await.map_err(store_err)?.into_stream();
    let mut file = tokio::fs::File::create(tmp).await.map_err(io(tmp))?;
    let mut hash = Sha256::new();
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|source| ObjStoreError::Store {
            url: location.to_string(),
            source,
        })?;
        hash.update(&chunk);
        n += chunk.len() as u64;
        file.write_all(&chunk).await.map_err(io(tmp))?;
    }
    file.flush().await.map_err(io(tmp))?;
    file.sync_all().await.map_err(io(tmp))?;
    Ok((n, hex::encode(hash.finalize())))
}

/// Upload the version folder `dir` (its manifest checked against its files first) to `url`:
/// every file, then the manifest. Returns the keys written.
pub async fn push(dir: &Path, url: &str) -> Result<Vec<String>, ObjStoreError> {
    let (store, prefix) = s3_store(url)?;
    push_store(store.as_ref(), &prefix, dir, url).await
}

/// `push` to any object store.
pub async fn push_store(
    store: &dyn ObjectStore,
    prefix: &str,
    dir: &Path,
    url: &str,
) -> Result<Vec<String>, ObjStoreError> {
    let manifest = Manifest::load(dir)?;
    manifest.verify_files(dir)?;
    let base = format!("{}/{}", manifest.id, manifest.version);
    let mut order: Vec<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
    order.push(MANIFEST_FILE);
    let mut written = Vec::new();
    for rel in order {
        let path = safe_join(dir, rel)?;
        let k = key(prefix, &format!("{base}/{rel}"));
        upload(store, &k, &path)
            .await
            .map_err(|source| ObjStoreError::Store {
                url: format!("{url}/{base}/{rel}"),
                source,
            })?;
        written.push(k.to_string());
    }
    Ok(written)
}

/// Files up to this size go up in one PUT; larger ones in parts of this size, read as they go.
const PART_BYTES: usize = 16 * 1024 * 1024;

/// Upload the file at `path` to `k` (one PUT, or a multipart upload for a large file).
async fn upload(
    store: &dyn ObjectStore,
    k: &ObjectPath,
    path: &Path,
) -> Result<(), object_store::Error> {
    use tokio::io::AsyncReadExt;
    let local = |e: std::io::Error| object_store::Error::Generic {
        store: "local file",
        source: Box::new(e),
    };
    let len = tokio::fs::metadata(path).await.map_err(local)?.len();
    if len <= PART_BYTES as u64 {
        let bytes = tokio::fs::read(path).await.map_err(local)?;
        store.put(k, PutPayload::from(bytes)).await?;
        return Ok(());
    }
    let mut file = tokio::fs::File::open(path).await.map_err(local)?;
    let mut parts = object_store::WriteMultipart::new_with_chunk_size(
        store.put_multipart(k).await?,
        PART_BYTES,
    );
    let mut buf = vec![0u8; 1024 * 1024];
    loop {
        let n = match file.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                let _ = parts.abort().await;
                return Err(local(e));
            }
        };
        parts.wait_for_capacity(4).await?;
        parts.write(&buf[..n]);
    }
    parts.finish().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::local::LocalFileSystem;

    fn version(root: &Path, id: &str, v: &str, data: &[u8]) -> PathBuf {
        let d = root.join(id).join(v);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("weights.bin"), data).unwrap();
        let sha = sha256_file(&d.join("weights.bin")).unwrap();
        std::fs::write(
            d.join(MANIFEST_FILE),
            format!(
                "id: {id}\nversion: {v}\ntask: echo\nformat: none\nmax_input_length: 8\nmax_inputs: 2\nfiles:\n  - path: weights.bin\n    sha256: {sha}\n"
            ),
        )
        .unwrap();
        d
    }

    #[test]
    fn urls() {
        assert_eq!(parse_url("s3://b/a/b/"), Some(("b".into(), "a/b".into())));
        assert_eq!(parse_url("s3://b"), Some(("b".into(), String::new())));
        assert_eq!(parse_url("s3:///x"), None);
        assert_eq!(parse_url("/models"), None);
        assert!(is_remote("s3://b/p") && !is_remote("models"));
    }

    #[tokio::test]
    async fn push_then_sync_skips_incomplete_and_keeps_good_copies() {
        let local = tempfile::tempdir().unwrap();
        let bucket = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let store = LocalFileSystem::new_with_prefix(bucket.path()).unwrap();
        let a = version(local.path(), "a", "1.0.0", b"alpha");
        let written = push_store(&store, "repo", &a, "test").await.unwrap();
        assert_eq!(
            written.last().unwrap(),
            "repo/a/1.0.0/anya.yaml",
            "manifest last"
        );

        // b's manifest is there, its file not yet: skipped whole
        let b = version(local.path(), "b", "1.0.0", b"beta");
        let bdir = bucket.path().join("repo/b/1.0.0");
        std::fs::create_dir_all(&bdir).unwrap();
        std::fs::copy(b.join(MANIFEST_FILE), bdir.join(MANIFEST_FILE)).unwrap();

        let r = sync_store(&store, "repo", cache.path(), "test")
            .await
            .unwrap();
        assert_eq!(
            r.versions[&("a".into(), "1.0.0".into())],
            VersionOutcome::Ready
        );
        assert!(matches!(
            r.versions[&("b".into(), "1.0.0".into())],
            VersionOutcome::Skipped(_)
        ));
        assert!(!cache.path().join("b/1.0.0/anya.yaml").exists());
        assert_eq!(
            std::fs::read(cache.path().join("a/1.0.0/weights.bin")).unwrap(),
            b"alpha"
        );
        Manifest::load(&cache.path().join("a/1.0.0"))
            .unwrap()
            .verify_files(&cache.path().join("a/1.0.0"))
            .unwrap();
        // a unchanged: nothing of it read but the listing (b's manifest is read again: b may
        // be complete by now)
        // unchanged: nothing read but the listing
        let again = sync_store(&store, "repo", cache.path(), "test")
            .await
            .unwrap();
        assert_eq!((again.downloaded, again.ready()), (1, 1));

        // the marker gone (a new process with the same cache): files hashed, not downloaded
        std::fs::remove_file(cache.path().join("a/1.0.0").join(SYNCED_MARKER)).unwrap();
        let again = sync_store(&store, "repo", cache.path(), "test")
            .await
            .unwrap();
        assert_eq!(
            (again.downloaded, again.cached),
            (2, 1),
            "only the manifests (a's and b's)"
        );

        // a leftover of a killed download goes on the next sync that touches the version
        let leftover = cache.path().join("a/1.0.0/.weights.bin.0123.part");
        std::fs::write(&leftover, b"half").unwrap();
        std::fs::remove_file(cache.path().join("a/1.0.0").join(SYNCED_MARKER)).unwrap();
        sync_store(&store, "repo", cache.path(), "test")
            .await
            .unwrap();
        assert!(!leftover.exists());

        // tampered in the bucket: the good cached copy stays
        std::fs::remove_file(cache.path().join("a/1.0.0").join(SYNCED_MARKER)).unwrap();
        std::fs::write(bucket.path().join("repo/a/1.0.0/weights.bin"), b"evil!").unwrap();
        let again = sync_store(&store, "repo", cache.path(), "test")
            .await
            .unwrap();
        assert_eq!(again.cached, 1);
        assert_eq!(
            std::fs::read(cache.path().join("a/1.0.0/weights.bin")).unwrap(),
            b"alpha"
        );

        // tampered with no good copy: placed, and its load check fails naming the mismatch
        let cache2 = tempfile::tempdir().unwrap();
        let r = sync_store(&store, "repo", cache2.path(), "test")
            .await
            .unwrap();
        assert!(matches!(
            &r.versions[&("a".into(), "1.0.0".into())],
            VersionOutcome::Failed(why) if why.contains("sha256 mismatch")
        ));
        let d = cache2.path().join("a/1.0.0");
        let err = Manifest::load(&d).unwrap().verify_files(&d).unwrap_err();
        assert!(err.to_string().contains("sha256 mismatch"), "{err}");
        // no temporary file is left behind
        let leftovers: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
            .collect();
        assert!(leftovers.is_empty());
    }
}
