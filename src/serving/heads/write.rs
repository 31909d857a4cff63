//! Writing a trained head as a new version of its model: the base's files, the head, and the
//! manifest, written last.

use std::path::Path;

use serde_json::json;

use super::HeadMetrics;
use crate::error::ApiError;
use crate::serving::Core;
use crate::spec::manifest::{sha256_file, FileEntry, HeadSpec, Manifest, Task, MANIFEST_FILE};

/// The next version of `model`: 1.0.0 for a new one, else the next minor of the highest seen
/// (registered or in the repository).
pub(super) fn next_version(core: &Core, models_dir: &Path, model: &str) -> semver::Version {
    let mut seen: Vec<semver::Version> = core
        .registry
        .get(model)
        .map(|r| r.versions.keys().cloned().collect())
        .unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir(models_dir.join(model)) {
        seen.extend(
            entries
                .flatten()
                .filter_map(|e| semver::Version::parse(&e.file_name().to_string_lossy()).ok()),
        );
    }
    match seen.into_iter().max() {
        Some(v) => semver::Version::new(v.major, v.minor + 1, 0),
        None => semver::Version::new(1, 0, 0),
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn write_version(
    base: &Manifest,
    base_dir: &Path,
    dir: &Path,
    model: &str,
    version: semver::Version,
    first: bool,
    classes: Vec<String>,
    metrics: &HeadMetrics,
    weights: &[f32],
    bias: &[f32],
) -> Result<Manifest, ApiError> {
    let io = |e: std::io::Error| ApiError::internal(format!("writing {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    for f in &base.files {
        let from = base
            .path_of(base_dir, &f.path)
            .map_err(ApiError::internal)?;
        let to = crate::spec::manifest::safe_join(dir, &f.path).map_err(ApiError::internal)?;
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let _ = std::fs::remove_file(&to);
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).map_err(io)?;
        }
    }
    let head_file = "head.safetensors";
    crate::models::classify::save_head(&dir.join(head_file), weights, bias)
        .map_err(ApiError::internal)?;
    let mut files = base.files.clone();
    files.push(FileEntry {
        path: head_file.into(),
        sha256: sha256_file(&dir.join(head_file)).map_err(io)?,
    });
    let mut m = base.clone();
    m.id = model.to_string();
    m.version = version;
    m.default = first;
    m.task = Task::Classification;
    m.description = Some(format!(
        "a classification head ({}) on {}@{}, trained through the API",
        classes.join(", "),
        base.id,
        base.version
    ));
    m.signature = None;
    m.files = files;
    m.head = Some(HeadSpec {
        base_model: base.id.clone(),
        base_version: base.version.to_string(),
        weights: head_file.into(),
        classes,
        metrics: Some(json!(metrics)),
    });
    m.check().map_err(ApiError::internal)?;
    std::fs::write(dir.join(MANIFEST_FILE), m.to_yaml()).map_err(io)?;
    Ok(m)
}
