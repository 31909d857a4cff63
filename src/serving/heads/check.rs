//! Checking a training request before the 202: its parameters and examples, the base model,
//! and the model it writes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::{
    Example, HeadRequest, Plan, MAX_EXAMPLES, MAX_LABELS, MAX_LABEL_CHARS, MAX_RUNNING,
    MAX_TEXT_BYTES, MIN_PER_LABEL,
};
use crate::error::{ApiError, ErrorKind};
use crate::models::Frontend;
use crate::registry::VersionState;
use crate::serving::Core;
use crate::spec::manifest::{Manifest, Task};

/// A training request checked against the limits, the registry and the trainings running, as
/// the plan of its training.
pub(super) fn check(
    core: &Core,
    principal: Option<&crate::auth::Principal>,
    model: &str,
    req: HeadRequest,
) -> Result<Plan, ApiError> {
    let (share, c) = check_numbers(model, &req)?;
    let (classes, labels) = check_examples(&req.examples)?;
    let (base, base_dir, frontend) = check_base(core, principal, model, &req.base)?;
    check_target(core, model)?;
    Ok(Plan {
        model: model.to_string(),
        base,
        base_dir,
        frontend,
        truncate: req.truncate.unwrap_or(true),
        texts: req.examples.into_iter().map(|e| e.text).collect(),
        labels,
        classes,
        share,
        c,
    })
}

/// The model id, and the request's held-out share and regularization (defaults filled in).
fn check_numbers(model: &str, req: &HeadRequest) -> Result<(f64, f64), ApiError> {
    if !crate::spec::manifest::is_valid_id(model) {
        return Err(ApiError::invalid(
            "id",
            "a model id is letters, digits, `.`, `_` or `-`, starting with a letter or digit",
        ));
    }
    let share = req.validation_split.unwrap_or(0.2);
    if !(0.0..=0.5).contains(&share) {
        return Err(ApiError::invalid(
            "validation_split",
            "must be between 0 and 0.5",
        ));
    }
    let c = req.regularization.unwrap_or(1.0);
    if !(c.is_finite() && c > 0.0 && c <= 1e6) {
        return Err(ApiError::invalid(
            "regularization",
            "must be above 0 and at most 1000000 (inverse strength, scikit-learn's C)",
        ));
    }
    Ok((share, c))
}

/// The examples within the limits, as the classes (sorted by name) and each example's class
/// index.
fn check_examples(examples: &[Example]) -> Result<(Vec<String>, Vec<usize>), ApiError> {
    if examples.len() > MAX_EXAMPLES {
        return Err(ApiError::too_large(
            "examples",
            format!("{} examples; at most {MAX_EXAMPLES}", examples.len()),
        ));
    }
    for (i, e) in examples.iter().enumerate() {
        if e.text.is_empty() || e.text.len() > MAX_TEXT_BYTES {
            return Err(ApiError::invalid(
                format!("examples[{i}].text"),
                format!("must be 1 to {MAX_TEXT_BYTES} bytes"),
            ));
        }
        let chars = e.label.chars().count();
        if chars == 0 || chars > MAX_LABEL_CHARS {
            return Err(ApiError::invalid(
                format!("examples[{i}].label"),
                format!("must be 1 to {MAX_LABEL_CHARS} characters"),
            ));
        }
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for e in examples {
        *counts.entry(e.label.as_str()).or_default() += 1;
    }
    if counts.len() < 2 || counts.len() > MAX_LABELS {
        return Err(ApiError::invalid(
            "examples",
            format!(
                "{} distinct labels; a head needs 2 to {MAX_LABELS}",
                counts.len()
            ),
        ));
    }
    if let Some((label, n)) = counts.iter().find(|(_, &n)| n < MIN_PER_LABEL) {
        return Err(ApiError::invalid(
            "examples",
            format!("label `{label}` has {n} examples; each label needs at least {MIN_PER_LABEL}"),
        ));
    }
    let classes: Vec<String> = counts.keys().map(|s| s.to_string()).collect();
    let labels = examples
        .iter()
        .map(|e| classes.iter().position(|c| *c == e.label).unwrap_or(0))
        .collect();
    Ok((classes, labels))
}

/// The base (`id` or `id@version`): an embedding model other than `model`, loaded, that the
/// principal may use. Answers its manifest, its directory and its tokenizer.
fn check_base(
    core: &Core,
    principal: Option<&crate::auth::Principal>,
    model: &str,
    base: &str,
) -> Result<(Arc<Manifest>, PathBuf, Arc<Frontend>), ApiError> {
    let (base_id, base_version) = match base.split_once('@') {
        Some((id, v)) => (id, Some(v)),
        None => (base, None),
    };
    if base_id == model {
        return Err(ApiError::invalid("base", "the base must be another model"));
    }
    if let Some(p) = principal {
        if !p.may_use(base_id) {
            return Err(ApiError::new(
                ErrorKind::Forbidden,
                format!("this token may not use model `{base_id}`"),
            ));
        }
    }
    let rec = core
        .registry
        .get(base_id)
        .ok_or_else(|| ApiError::invalid("base", format!("no model `{base_id}`")))?;
    let version = match base_version {
        Some(v) => semver::Version::parse(v)
            .map_err(|_| ApiError::invalid("base", format!("`{v}` is not a version")))?,
        None => rec.default_version.clone(),
    };
    let vr = rec.versions.get(&version).ok_or_else(|| {
        ApiError::invalid(
            "base",
            format!("model `{base_id}` has no version {version}"),
        )
    })?;
    if vr.manifest.task != Task::Embedding
        || vr.manifest.format != crate::spec::manifest::Format::Safetensors
    {
        return Err(ApiError::invalid(
            "base",
            format!("`{base_id}` is not an embedding model"),
        ));
    }
    let VersionState::Ready(handle) = &vr.state else {
        return Err(ApiError::new(
            ErrorKind::Unavailable,
            format!("base model `{base_id}` version {version} is not loaded"),
        ));
    };
    Ok((
        vr.manifest.clone(),
        vr.dir.clone(),
        handle.frontend().clone(),
    ))
}

/// The model to write: new, or a classifier already, and not training; and room for another
/// training.
fn check_target(core: &Core, model: &str) -> Result<(), ApiError> {
    // The model to write: new, or a classifier already.
    if let Some(existing) = core.registry.get(model) {
        if existing
            .versions
            .values()
            .any(|v| v.manifest.task != Task::Classification)
        {
            return Err(ApiError::new(
                ErrorKind::Conflict,
                format!("model `{model}` exists and is not a classifier"),
            ));
        }
    }
    // Checked again when the training is recorded (`Trainings::start`), after tokenizing;
    // here so a request that cannot run now is refused before that work.
    let running = core.heads.running();
    if running.iter().any(|m| m == model) {
        return Err(ApiError::new(
            ErrorKind::Conflict,
            format!("a head for `{model}` is training already"),
        ));
    }
    if running.len() >= MAX_RUNNING {
        let mut e = ApiError::new(
            ErrorKind::Unavailable,
            format!("{MAX_RUNNING} trainings are running; try again later"),
        );
        e.retry_after_s = Some(30);
        return Err(e);
    }
    Ok(())
}
