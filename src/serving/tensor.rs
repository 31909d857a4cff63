//! The Open Inference Protocol (KServe v2) mapping shared by the REST and gRPC adapters:
//! which tensors a model takes and gives (by task), a text tensor → the core's inputs, the
//! core's answer → output tensors, and the length-prefixed `BYTES` encoding. No wire types:
//! each adapter reads its own body into these and writes these into its own body.

use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::registry::manifest::Task;
use crate::registry::{ModelRecord, Registry, VersionRecord, VersionState};
use crate::serving::{Answer, Input, Item, ServeRequest};

/// What `GET /v2` and `ServerMetadata` list.
pub const EXTENSIONS: &[&str] = &["binary_tensor_data"];

/// The platform every model reports.
pub const PLATFORM: &str = "anya";

/// A tensor's name, datatype and shape (`-1`: any size).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorMeta {
    pub name: &'static str,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
}

/// A model's v2 metadata.
#[derive(Debug, Clone)]
pub struct ModelMeta {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: &'static str,
    pub inputs: Vec<TensorMeta>,
    pub outputs: Vec<TensorMeta>,
}

/// The input and output tensor names of a task.
pub fn io_names(task: Task) -> (&'static str, &'static str) {
    super::tasks::of(task).tensor_names()
}

/// Metadata of `name` (the version named, or the default one); 404 for an unknown model or
/// version. The embedding size is known once the version has loaded (`-1` before).
pub fn model_meta(
    registry: &Registry,
    name: &str,
    version: Option<&str>,
) -> Result<ModelMeta, ApiError> {
    let (record, rec) = version_record(registry, name, version)?;
    let task = rec.manifest.task;
    let (input, output) = io_names(task);
    let dim = match &rec.state {
        VersionState::Ready(h) => h.frontend().dimensions.map_or(-1, |d| d as i64),
        _ => -1,
    };
    let out = if super::tasks::of(task).answers_vectors() {
        TensorMeta {
            name: output,
            datatype: "FP32",
            shape: vec![-1, dim],
        }
    } else {
        TensorMeta {
            name: output,
            datatype: "BYTES",
            shape: vec![-1],
        }
    };
    Ok(ModelMeta {
        name: record.id.clone(),
        versions: record.versions.keys().map(|v| v.to_string()).collect(),
        platform: PLATFORM,
        inputs: vec![TensorMeta {
            name: input,
            datatype: "BYTES",
            shape: vec![-1],
        }],
        outputs: vec![out],
    })
}

/// Whether `name` (at `version`, or its default) is loaded and its worker alive; 404 for an
/// unknown model or version.
pub fn model_ready(
    registry: &Registry,
    name: &str,
    version: Option<&str>,
) -> Result<bool, ApiError> {
    version_record(registry, name, version)?;
    Ok(registry
        .resolve(name, version)
        .is_ok_and(|r| r.handle.is_alive()))
}

/// The task of the version a request goes to (404 when unknown; its state is the core's
/// business).
pub fn task_of(registry: &Registry, name: &str, version: Option<&str>) -> Result<Task, ApiError> {
    Ok(version_record(registry, name, version)?.1.manifest.task)
}

/// A model and the version named (or its default); 404 for an unknown model or version.
fn version_record(
    registry: &Registry,
    name: &str,
    version: Option<&str>,
) -> Result<(ModelRecord, VersionRecord), ApiError> {
    let record = registry
        .get(name)
        .ok_or_else(|| ApiError::not_found(format!("model `{name}` not found")))?;
    let missing = |v: &dyn std::fmt::Display| {
        ApiError::not_found(format!("model `{name}` has no version {v}"))
    };
    let wanted = match version {
        None => record.default_version.clone(),
        Some(v) => semver::Version::parse(v).map_err(|_| missing(&v))?,
    };
    let rec = record
        .versions
        .get(&wanted)
        .cloned()
        .ok_or_else(|| missing(&wanted))?;
    Ok((record, rec))
}

/// A tensor's element count from its shape: every dimension at least 0, the product at most
/// `limit` (a bound from the body size: no element takes less than a byte).
pub fn element_count(field: &str, shape: &[i64], limit: usize) -> Result<usize, ApiError> {
    let mut n: usize = 1;
    for &d in shape {
        let d = usize::try_from(d).map_err(|_| {
            ApiError::invalid(format!("{field}.shape"), "dimensions must be at least 0")
        })?;
        n = n.checked_mul(d).filter(|&n| n <= limit).ok_or_else(|| {
            ApiError::invalid(
                format!("{field}.shape"),
                format!("more elements than the body can hold (server.max_body_bytes is {limit})"),
            )
        })?;
    }
    Ok(n)
}

/// A text tensor's shape: `[n]` or `[n, 1]`.
pub fn check_text_shape(field: &str, shape: &[i64]) -> Result<(), ApiError> {
    match shape {
        [_] | [_, 1] => Ok(()),
        _ => Err(ApiError::invalid(
            format!("{field}.shape"),
            format!("must be [n] or [n, 1] (one element per text); got {shape:?}"),
        )),
    }
}

/// Decode `BYTES` elements in the binary form: each a 4-byte little-endian length, then that
/// many bytes. Exactly `expected` elements must fill `raw`; each must be UTF-8 text.
pub fn decode_bytes(field: &str, raw: &[u8], expected: usize) -> Result<Vec<String>, ApiError> {
    let mut out = Vec::with_capacity(expected.min(raw.len() / 4 + 1));
    let mut rest = raw;
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Err(ApiError::invalid(
                field,
                format!(
                    "{} bytes left where a 4-byte element length was expected",
                    rest.len()
                ),
            ));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if len > tail.len() {
            return Err(ApiError::invalid(
                field,
                format!(
                    "element {} says {len} bytes but only {} remain",
                    out.len(),
                    tail.len()
                ),
            ));
        }
        if out.len() == expected {
            return Err(ApiError::invalid(
                field,
                format!("holds more than the {expected} elements its shape says"),
            ));
        }
        let (bytes, next) = tail.split_at(len);
        out.push(utf8(field, out.len(), bytes.to_vec())?);
        rest = next;
    }
    if out.len() != expected {
        return Err(ApiError::invalid(
            field,
            format!("holds {} elements; its shape says {expected}", out.len()),
        ));
    }
    Ok(out)
}

/// One `BYTES` element as text.
pub fn utf8(field: &str, index: usize, bytes: Vec<u8>) -> Result<String, ApiError> {
    String::from_utf8(bytes)
        .map_err(|_| ApiError::invalid(format!("{field}[{index}]"), "must be UTF-8 text"))
}

/// Encode `BYTES` elements in the binary form.
pub fn encode_bytes(elements: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(elements.iter().map(|e| e.len() + 4).sum());
    for e in elements {
        out.extend_from_slice(&(e.len() as u32).to_le_bytes());
        out.extend_from_slice(e);
    }
    out
}

/// The one input tensor of a request, read by an adapter.
pub struct TextTensor<'a> {
    pub name: &'a str,
    pub datatype: &'a str,
    pub shape: &'a [i64],
}

/// Check the input tensor's datatype and shape before its data is read (before the model is
/// looked up: a malformed request is a 400 whatever it names); returns the element count.
pub fn check_tensor(t: &TextTensor<'_>, limit: usize) -> Result<usize, ApiError> {
    if t.datatype != "BYTES" {
        return Err(ApiError::invalid(
            "inputs[0].datatype",
            format!("`{}` must be BYTES (text); got {}", t.name, t.datatype),
        ));
    }
    check_text_shape("inputs[0]", t.shape)?;
    element_count("inputs[0]", t.shape, limit)
}

/// Check the input's name against the model's.
pub fn check_input_name(task: Task, name: &str) -> Result<(), ApiError> {
    let (want, _) = io_names(task);
    if name != want {
        return Err(ApiError::invalid(
            "inputs[0].name",
            format!("unknown input `{name}`; this model takes `{want}`"),
        ));
    }
    Ok(())
}

/// Check requested output names against the model's.
pub fn check_outputs<'a>(
    task: Task,
    names: impl IntoIterator<Item = &'a str>,
) -> Result<(), ApiError> {
    let (_, want) = io_names(task);
    for (i, name) in names.into_iter().enumerate() {
        if name != want {
            return Err(ApiError::invalid(
                format!("outputs[{i}].name"),
                format!("unknown output `{name}`; this model gives `{want}`"),
            ));
        }
    }
    Ok(())
}

/// Parameters the protocol's clients send for themselves, never for the model.
fn protocol_param(name: &str) -> bool {
    name == "binary_data_output" || name.starts_with("triton_")
}

/// The core's request from a v2 request: texts, and the model parameters (typed scalar values
/// or lists of strings; `cache: false` skips the response cache).
pub fn serve_request(
    model: &str,
    version: Option<&str>,
    texts: Vec<String>,
    mut params: Map<String, Value>,
    no_cache: bool,
) -> Result<ServeRequest, ApiError> {
    params.retain(|k, _| !protocol_param(k));
    let cache = match params.remove("cache") {
        None => true,
        Some(Value::Bool(b)) => b,
        Some(_) => {
            return Err(ApiError::invalid(
                "parameters.cache",
                "must be true or false",
            ))
        }
    };
    for (k, v) in &params {
        let scalar = |v: &Value| matches!(v, Value::Bool(_) | Value::Number(_) | Value::String(_));
        let ok =
            scalar(v) || matches!(v, Value::Array(items) if items.iter().all(Value::is_string));
        if !ok {
            return Err(ApiError::invalid(
                format!("parameters.{k}"),
                "must be a boolean, a number, a string or a list of strings",
            ));
        }
    }
    Ok(ServeRequest {
        model: model.to_string(),
        version: version.filter(|v| !v.is_empty()).map(str::to_string),
        inputs: texts.into_iter().map(Input::Text).collect(),
        params,
        cache: cache && !no_cache,
        logprobs: None,
        headers: Default::default(),
        user: None,
        background: false,
    })
}

/// An output tensor's data.
#[derive(Debug, Clone, PartialEq)]
pub enum OutData {
    Fp32(Vec<f32>),
    Bytes(Vec<Vec<u8>>),
}

/// An output tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct OutTensor {
    pub name: &'static str,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
    pub data: OutData,
}

impl OutTensor {
    /// The little-endian binary form (FP32 values; length-prefixed BYTES elements).
    pub fn raw(&self) -> Vec<u8> {
        match &self.data {
            OutData::Fp32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            OutData::Bytes(e) => encode_bytes(e),
        }
    }

    /// A text output of one element (a streamed delta).
    pub fn text(name: &'static str, text: String) -> Self {
        OutTensor {
            name,
            datatype: "BYTES",
            shape: vec![1],
            data: OutData::Bytes(vec![text.into_bytes()]),
        }
    }
}

/// The answer as the model's output tensor: embeddings `FP32 [n, dim]`; texts `BYTES` shaped
/// like the input (`[n]` or `[n, 1]`).
pub fn output(task: Task, answer: &Answer, input_shape: &[i64]) -> Result<OutTensor, ApiError> {
    let (_, name) = io_names(task);
    let n = answer.items.len();
    // Embeddings are an FP32 tensor; zero-shot answers (label lists) go as JSON, like a
    // classifier's.
    let vectors = answer.items.iter().all(|i| matches!(i, Item::Vector(_)));
    if super::tasks::of(task).answers_vectors() && vectors {
        let mut dim = None;
        let mut values = Vec::new();
        for item in &answer.items {
            let Item::Vector(v) = item else {
                return Err(ApiError::internal(
                    "an embedding model answered without a vector",
                ));
            };
            if *dim.get_or_insert(v.len()) != v.len() {
                return Err(ApiError::internal(
                    "embeddings of different sizes in one answer",
                ));
            }
            values.extend_from_slice(v);
        }
        return Ok(OutTensor {
            name,
            datatype: "FP32",
            shape: vec![n as i64, dim.unwrap_or(0) as i64],
            data: OutData::Fp32(values),
        });
    }
    let elements = answer
        .items
        .iter()
        .map(|item| match item {
            Item::Generation(g) => g.text.clone().into_bytes(),
            Item::Vector(v) => Value::from(v.to_vec()).to_string().into_bytes(),
            Item::Value(Value::String(s)) => s.clone().into_bytes(),
            Item::Value(v) => v.to_string().into_bytes(),
        })
        .collect();
    let shape = if input_shape.len() == 2 {
        vec![n as i64, 1]
    } else {
        vec![n as i64]
    };
    Ok(OutTensor {
        name,
        datatype: "BYTES",
        shape,
        data: OutData::Bytes(elements),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip() {
        let e = vec![b"hello".to_vec(), Vec::new(), "é".as_bytes().to_vec()];
        let raw = encode_bytes(&e);
        assert_eq!(decode_bytes("x", &raw, 3).unwrap(), vec!["hello", "", "é"]);
    }

    #[test]
    fn inconsistent_bytes_are_refused() {
        let raw = encode_bytes(&[b"ab".to_vec()]);
        // Fewer or more elements than the shape says.
        assert!(decode_bytes("x", &raw, 2).is_err());
        assert!(decode_bytes("x", &raw, 0).is_err());
        // A length past the end, a truncated length, invalid UTF-8.
        assert!(decode_bytes("x", &[9, 0, 0, 0, b'a'], 1).is_err());
        assert!(decode_bytes("x", &[1, 0], 1).is_err());
        assert!(decode_bytes("x", &[u8::MAX; 4], 1).is_err());
        assert!(decode_bytes("x", &[1, 0, 0, 0, 0xff], 1).is_err());
    }

    #[test]
    fn shapes_are_bounded() {
        assert_eq!(element_count("i", &[3, 1], 10).unwrap(), 3);
        assert!(element_count("i", &[-1], 10).is_err());
        assert!(element_count("i", &[11], 10).is_err());
        assert!(element_count("i", &[i64::MAX, i64::MAX], usize::MAX).is_err());
        assert!(check_text_shape("i", &[2, 2]).is_err());
        assert!(check_text_shape("i", &[]).is_err());
    }

    #[test]
    fn protocol_parameters_are_not_model_parameters() {
        let mut p = Map::new();
        p.insert("binary_data_output".into(), Value::Bool(true));
        p.insert(
            "triton_enable_empty_final_response".into(),
            Value::Bool(true),
        );
        p.insert("max_tokens".into(), Value::from(4));
        let r = serve_request("m", Some(""), vec!["a".into()], p, false).unwrap();
        assert_eq!(r.params.len(), 1);
        assert!(r.version.is_none());
        let mut bad = Map::new();
        bad.insert("x".into(), serde_json::json!({"a": 1}));
        assert!(serve_request("m", None, vec![], bad, false).is_err());
    }
}
