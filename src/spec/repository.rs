//! The model repository on disk: `models/<id>/<version>/anya.yaml` plus artifacts, and models
//! given as a bare path (a `.gguf` file, or a folder of safetensors + tokenizer), which get a
//! manifest generated on the fly, as users of llama.cpp and Ollama expect.

use std::path::{Path, PathBuf};

use super::manifest::{
    is_valid_id, safe_join, sha256_file, BatchingConfig, FileEntry, Format, Manifest,
    ManifestError, ParamSpec, ParamType, Task, MANIFEST_FILE,
};

/// One model version found on disk: its folder and its manifest.
#[derive(Debug, Clone)]
pub struct ModelSource {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

/// A version folder that could not be read; the others are still served.
#[derive(Debug)]
pub struct ScanProblem {
    pub dir: PathBuf,
    pub error: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    #[error("model repository {0} does not exist")]
    MissingRepository(PathBuf),
    #[error("model `{0}` is not in the repository {1}")]
    UnknownModel(String, PathBuf),
    #[error("{0}")]
    Manifest(#[from] ManifestError),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is neither a .gguf file nor a folder with config.json, *.safetensors and tokenizer.json")]
    UnrecognisedPath(PathBuf),
}

/// Every model version in `root`, sorted by id then version, plus what could not be read.
pub fn scan(root: &Path) -> Result<(Vec<ModelSource>, Vec<ScanProblem>), RepositoryError> {
    if !root.is_dir() {
        return Err(RepositoryError::MissingRepository(root.to_path_buf()));
    }
    let mut found = Vec::new();
    let mut problems = Vec::new();
    for id_dir in sorted_dirs(root)? {
        let id = file_name(&id_dir);
        if !is_valid_id(&id) {
            continue; // not a model folder (e.g. `.cache`)
        }
        for version_dir in sorted_dirs(&id_dir)? {
            if !version_dir.join(MANIFEST_FILE).is_file() {
                continue;
            }
            match read_version(&id, &version_dir) {
                Ok(m) => found.push(ModelSource {
                    dir: version_dir,
                    manifest: m,
                }),
                Err(error) => problems.push(ScanProblem {
                    dir: version_dir,
                    error,
                }),
            }
        }
    }
    found.sort_by(|a, b| {
        (a.manifest.id.as_str(), &a.manifest.version)
            .cmp(&(b.manifest.id.as_str(), &b.manifest.version))
    });
    Ok((found, problems))
}

fn read_version(id: &str, dir: &Path) -> Result<Manifest, String> {
    let m = Manifest::load(dir).map_err(|e| e.to_string())?;
    if m.id != id {
        return Err(format!(
            "manifest id `{}` does not match its folder `{id}`",
            m.id
        ));
    }
    if file_name(dir) != m.version.to_string() {
        return Err(format!(
            "manifest version {} does not match its folder `{}`",
            m.version,
            file_name(dir)
        ));
    }
    Ok(m)
}

fn sorted_dirs(dir: &Path) -> Result<Vec<PathBuf>, RepositoryError> {
    let entries = std::fs::read_dir(dir).map_err(|source| RepositoryError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        // `file_type` does not follow symlinks: a linked folder cannot smuggle a model in.
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    Ok(dirs)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Resolve a `--model` argument: a repository id (all its versions), or a path to a model.
pub fn resolve_model_arg(
    arg: &str,
    repo: &[ModelSource],
    root: &Path,
) -> Result<Vec<ModelSource>, RepositoryError> {
    let path = Path::new(arg);
    let looks_like_path = arg.contains('/') || arg.ends_with(".gguf") || path.exists();
    if is_valid_id(arg) && !looks_like_path {
        let versions: Vec<ModelSource> = repo
            .iter()
            .filter(|s| s.manifest.id == arg)
            .cloned()
            .collect();
        if versions.is_empty() {
            return Err(RepositoryError::UnknownModel(
                arg.to_string(),
                root.to_path_buf(),
            ));
        }
        return Ok(versions);
    }
    Ok(vec![from_path(path)?])
}

/// Build a source for a model given as a path, with a generated manifest.
pub fn from_path(path: &Path) -> Result<ModelSource, RepositoryError> {
    let io = |source| RepositoryError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.is_file() && path.extension().is_some_and(|e| e == "gguf") {
        return gguf_source(path);
    }
    if meta.is_dir() {
        if let Some(source) = safetensors_source(path)? {
            return Ok(source);
        }
    }
    Err(RepositoryError::UnrecognisedPath(path.to_path_buf()))
}

/// What a GGUF's header says for its generated manifest.
struct GgufHeader {
    arch: String,
    context: Option<usize>,
    size_label: Option<String>,
    license: Option<String>,
}

/// The header of a GGUF, if it reads.
fn gguf_header(path: &Path) -> Option<GgufHeader> {
    let mut f = std::fs::File::open(path).ok()?;
    let content = candle_core::quantized::gguf_file::Content::read(&mut f).ok()?;
    let string = |k: &str| {
        content
            .metadata
            .get(k)
            .and_then(|v| v.to_string().ok().cloned())
    };
    Some(GgufHeader {
        arch: crate::models::gguf_meta::architecture(&content),
        context: crate::models::gguf_meta::context_length_of(&content),
        size_label: string("general.size_label"),
        license: string("general.license"),
    })
}

/// A `.gguf` file as a text generation model, described from its header where it reads.
fn gguf_source(path: &Path) -> Result<ModelSource, RepositoryError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let name = file_name(path);
    let header = gguf_header(path);
    let description = match &header {
        Some(h) => format!(
            "{name}: {}{} (manifest generated from the file)",
            h.size_label
                .as_ref()
                .map_or(String::new(), |l| format!("{l} ")),
            h.arch
        ),
        None => format!("{name} (manifest generated from the path)"),
    };
    // The prompt may fill the context the model was trained for, up to 32k positions.
    let max_input_length = header
        .as_ref()
        .and_then(|h| h.context)
        .map_or(2048, |c| c.clamp(16, 32_768));
    let manifest = Manifest {
        id: derive_id(path.file_stem().map(|s| s.to_string_lossy().into_owned())),
        version: semver::Version::new(1, 0, 0),
        default: true,
        task: Task::TextGeneration,
        format: Format::Gguf,
        description: Some(description),
        license: header.as_ref().and_then(|h| h.license.clone()),
        weights: Some(name.clone()),
        config: None,
        tokenizer: None,
        pooling_config: None,
        normalize: true,
        max_input_length,
        max_inputs: 8,
        parameters: generation_parameters(),
        batching: BatchingConfig {
            max_batch_size: 8,
            max_batch_tokens: 512,
            max_queue_delay_ms: 0,
            queue_capacity: 64,
        },
        device: None,
        files: vec![hash_entry(&dir, &name)?],
        pricing: None,
        signature: None,
        labels: Default::default(),
        provider: None,
        fallbacks: vec![],
        breaker: None,
        head: None,
        drift: None,
    };
    Ok(ModelSource { dir, manifest })
}

/// A folder with `*.safetensors` weights, `config.json` and `tokenizer.json` as an embedding
/// model (a classifier when its config names a `…ForSequenceClassification` architecture);
/// `None` for another folder.
fn safetensors_source(path: &Path) -> Result<Option<ModelSource>, RepositoryError> {
    let io = |source| RepositoryError::Io {
        path: path.to_path_buf(),
        source,
    };
    let weights = std::fs::read_dir(path)
        .map_err(io)?
        .filter_map(|e| e.ok())
        .map(|e| file_name(&e.path()))
        .filter(|n| n.ends_with(".safetensors"))
        .min();
    let has = |f: &str| path.join(f).is_file();
    if let (Some(weights), true, true) = (weights, has("config.json"), has("tokenizer.json")) {
        let pooling = has("1_Pooling/config.json").then(|| "1_Pooling/config.json".to_string());
        let mut files = vec![
            hash_entry(path, "config.json")?,
            hash_entry(path, &weights)?,
            hash_entry(path, "tokenizer.json")?,
        ];
        if let Some(p) = &pooling {
            files.push(hash_entry(path, p)?);
        }
        let canonical = path.canonicalize().map_err(io)?;
        // `BertForSequenceClassification` and kin serve as classifiers.
        let classifier = std::fs::read_to_string(path.join("config.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.get("architectures").cloned())
            .and_then(|a| a.as_array().cloned())
            .is_some_and(|a| {
                a.iter().any(|x| {
                    x.as_str()
                        .is_some_and(|x| x.ends_with("ForSequenceClassification"))
                })
            });
        let manifest = Manifest {
            id: derive_id(
                canonical
                    .file_name()
                    .map(|s| s.to_string_lossy().into_owned()),
            ),
            version: semver::Version::new(1, 0, 0),
            default: true,
            task: if classifier {
                Task::Classification
            } else {
                Task::Embedding
            },
            format: Format::Safetensors,
            description: Some(format!(
                "{} (manifest generated from the path)",
                path.display()
            )),
            license: None,
            weights: Some(weights),
            config: Some("config.json".into()),
            tokenizer: Some("tokenizer.json".into()),
            pooling_config: pooling,
            normalize: true,
            max_input_length: 512,
            max_inputs: 256,
            parameters: embedding_parameters(),
            batching: BatchingConfig::default(),
            device: None,
            files,
            pricing: None,
            signature: None,
            labels: Default::default(),
            provider: None,
            fallbacks: vec![],
            breaker: None,
            head: None,
            drift: None,
        };
        return Ok(Some(ModelSource {
            dir: path.to_path_buf(),
            manifest,
        }));
    }
    Ok(None)
}

fn hash_entry(dir: &Path, rel: &str) -> Result<FileEntry, RepositoryError> {
    let p = safe_join(dir, rel)?;
    let sha256 = sha256_file(&p).map_err(|source| RepositoryError::Io { path: p, source })?;
    Ok(FileEntry {
        path: rel.to_string(),
        sha256,
    })
}

/// A model id from a file or folder name: lowercase, other characters folded into `-`.
pub fn derive_id(name: Option<String>) -> String {
    let raw = name.unwrap_or_default().to_lowercase();
    let mut id = String::new();
    for c in raw.chars() {
        let c = if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
            c
        } else {
            '-'
        };
        let repeated = (c == '-' || c == '.') && id.ends_with(c);
        if !repeated {
            id.push(c);
        }
    }
    let id = id
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string();
    if is_valid_id(&id) {
        id
    } else {
        "model".to_string()
    }
}

fn param(
    name: &str,
    kind: ParamType,
    default: serde_json::Value,
    min: Option<f64>,
    max: Option<f64>,
) -> ParamSpec {
    ParamSpec {
        name: name.into(),
        kind,
        default: (!default.is_null()).then_some(default),
        min,
        max,
        description: None,
    }
}

/// The parameters of a text-generation model whose manifest is generated.
pub fn generation_parameters() -> Vec<ParamSpec> {
    use serde_json::json;
    vec![
        param(
            "max_tokens",
            ParamType::Integer,
            json!(128),
            Some(1.0),
            Some(2048.0),
        ),
        param(
            "temperature",
            ParamType::Number,
            json!(0.8),
            Some(0.0),
            Some(2.0),
        ),
        param(
            "top_p",
            ParamType::Number,
            json!(0.95),
            Some(0.0),
            Some(1.0),
        ),
        param(
            "top_k",
            ParamType::Integer,
            json!(40),
            Some(0.0),
            Some(1000.0),
        ),
        param("stop", ParamType::StringList, json!([]), None, Some(8.0)),
        param(
            "seed",
            ParamType::Integer,
            serde_json::Value::Null,
            Some(0.0),
            None,
        ),
        param("ignore_eos", ParamType::Boolean, json!(false), None, None),
    ]
}

/// The parameters of an embedding model whose manifest is generated.
pub fn embedding_parameters() -> Vec<ParamSpec> {
    vec![param(
        "truncate",
        ParamType::Boolean,
        serde_json::json!(false),
        None,
        None,
    )]
}

/// `s3://bucket/prefix` split into its bucket and prefix (no slashes at its ends).
pub fn parse_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("s3://")?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() || bucket.contains(['?', '#']) {
        return None;
    }
    Some((bucket.to_string(), prefix.trim_matches('/').to_string()))
}

/// Whether a `models_dir` names an object store (`s3://…`) rather than a folder.
pub fn is_remote(models_dir: &str) -> bool {
    models_dir.starts_with("s3://")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_version(root: &Path, id: &str, ver: &str, manifest_id: &str) {
        let dir = root.join(id).join(ver);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(MANIFEST_FILE),
            format!(
                "id: {manifest_id}\nversion: {ver}\ntask: echo\nformat: none\nmax_input_length: 16\n"
            ),
        )
        .unwrap();
    }

    #[test]
    fn scan_finds_versions_and_reports_bad_ones() {
        let root = tempfile::tempdir().unwrap();
        write_version(root.path(), "echo", "1.0.0", "echo");
        write_version(root.path(), "echo", "1.1.0", "echo");
        write_version(root.path(), "other", "1.0.0", "mismatch");
        let (found, problems) = scan(root.path()).unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(found[1].manifest.version, semver::Version::new(1, 1, 0));
        assert_eq!(problems.len(), 1);
        assert!(problems[0].error.contains("does not match"));
    }

    #[test]
    fn model_args_resolve_ids_and_refuse_unknown() {
        let root = tempfile::tempdir().unwrap();
        write_version(root.path(), "echo", "1.0.0", "echo");
        let (found, _) = scan(root.path()).unwrap();
        assert_eq!(
            resolve_model_arg("echo", &found, root.path())
                .unwrap()
                .len(),
            1
        );
        assert!(matches!(
            resolve_model_arg("nope", &found, root.path()),
            Err(RepositoryError::UnknownModel(..))
        ));
        assert!(resolve_model_arg("/no/such/model.gguf", &found, root.path()).is_err());
    }

    #[test]
    fn gguf_path_gets_a_generated_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("My Model.Q4_1.gguf");
        std::fs::write(&f, b"not really gguf").unwrap();
        let src = from_path(&f).unwrap();
        assert_eq!(src.manifest.id, "my-model.q4_1");
        assert_eq!(src.manifest.task, Task::TextGeneration);
        src.manifest.check().unwrap();
        src.manifest.verify_files(&src.dir).unwrap();
    }

    #[test]
    fn derived_ids_are_valid() {
        assert_eq!(derive_id(Some("SmolLM2-135M".into())), "smollm2-135m");
        assert_eq!(derive_id(Some("...".into())), "model");
        assert_eq!(derive_id(Some("a  b".into())), "a-b");
    }
}
