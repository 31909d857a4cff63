//! Protobuf ↔ core for the v2 gRPC service: a `ModelInferRequest` (its one `BYTES` input in
//! `raw_input_contents` or typed `contents`) becomes the core's request; an answer becomes a
//! `ModelInferResponse` whose data is in `raw_output_contents` (what `tritonclient.grpc`
//! reads). The tensor rules are the REST adapter's (`http::kserve::tensor`).

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::pb;
use super::pb::infer_parameter::ParameterChoice;
use crate::error::ApiError;
use crate::registry::manifest::Task;
use crate::registry::Registry;
use crate::serving::tensor::{self, ModelMeta, OutTensor, TextTensor};
use crate::serving::{Answer, ServeRequest};

pub fn model_metadata(m: ModelMeta) -> pb::ModelMetadataResponse {
    let tensors = |ts: Vec<tensor::TensorMeta>| {
        ts.into_iter()
            .map(|t| pb::model_metadata_response::TensorMetadata {
                name: t.name.into(),
                datatype: t.datatype.into(),
                shape: t.shape,
            })
            .collect()
    };
    pb::ModelMetadataResponse {
        name: m.name,
        versions: m.versions,
        platform: m.platform.into(),
        inputs: tensors(m.inputs),
        outputs: tensors(m.outputs),
    }
}

/// How to answer a request once the core has: its task, names and input shape.
pub struct Reply {
    task: Task,
    model: String,
    version: String,
    id: String,
    shape: Vec<i64>,
}

fn param_value(p: &pb::InferParameter) -> Value {
    match &p.parameter_choice {
        Some(ParameterChoice::BoolParam(b)) => Value::Bool(*b),
        Some(ParameterChoice::Int64Param(i)) => Value::from(*i),
        Some(ParameterChoice::Uint64Param(u)) => Value::from(*u),
        Some(ParameterChoice::DoubleParam(d)) => Value::from(*d),
        Some(ParameterChoice::StringParam(s)) => Value::String(s.clone()),
        None => Value::Null,
    }
}

/// The core's request and how to answer it.
pub fn read_request(
    registry: &Registry,
    mut req: pb::ModelInferRequest,
    limit: usize,
) -> Result<(ServeRequest, Reply), ApiError> {
    if req.inputs.len() != 1 {
        return Err(ApiError::invalid(
            "inputs",
            format!("must hold exactly one tensor; got {}", req.inputs.len()),
        ));
    }
    let input = req.inputs.remove(0);
    let n = tensor::check_tensor(
        &TextTensor {
            name: &input.name,
            datatype: &input.datatype,
            shape: &input.shape,
        },
        limit,
    )?;
    let typed = input
        .contents
        .map(|c| c.bytes_contents)
        .filter(|b| !b.is_empty());
    let texts = match (req.raw_input_contents.len(), typed) {
        (0, Some(elements)) => {
            if elements.len() != n {
                return Err(ApiError::invalid(
                    "inputs[0].contents.bytes_contents",
                    format!("holds {} elements; its shape says {n}", elements.len()),
                ));
            }
            elements
                .into_iter()
                .enumerate()
                .map(|(i, e)| tensor::utf8("inputs[0].contents.bytes_contents", i, e))
                .collect::<Result<Vec<_>, _>>()?
        }
        (0, None) if n == 0 => Vec::new(),
        (0, None) => {
            return Err(ApiError::invalid(
                "inputs[0]",
                "no data: give raw_input_contents or contents.bytes_contents",
            ))
        }
        (1, None) => tensor::decode_bytes("raw_input_contents[0]", &req.raw_input_contents[0], n)?,
        (1, Some(_)) => {
            return Err(ApiError::invalid(
                "inputs[0].contents",
                "give either raw_input_contents or contents, not both",
            ))
        }
        (k, _) => {
            return Err(ApiError::invalid(
                "raw_input_contents",
                format!("has {k} entries for 1 input"),
            ))
        }
    };
    let version = (!req.model_version.is_empty()).then_some(req.model_version.as_str());
    let task = tensor::task_of(registry, &req.model_name, version)?;
    tensor::check_input_name(task, &input.name)?;
    tensor::check_outputs(task, req.outputs.iter().map(|o| o.name.as_str()))?;
    let params: Map<String, Value> = req
        .parameters
        .iter()
        .map(|(k, v)| (k.clone(), param_value(v)))
        .collect();
    let serve = tensor::serve_request(&req.model_name, version, texts, params, false)?;
    let reply = Reply {
        task,
        model: req.model_name,
        version: req.model_version,
        id: req.id,
        shape: input.shape,
    };
    Ok((serve, reply))
}

fn out_tensor(t: &OutTensor) -> pb::model_infer_response::InferOutputTensor {
    pb::model_infer_response::InferOutputTensor {
        name: t.name.into(),
        datatype: t.datatype.into(),
        shape: t.shape.clone(),
        parameters: HashMap::new(),
        contents: None,
    }
}

impl Reply {
    /// Whether the answer streams text (generation).
    pub fn generates(&self) -> bool {
        crate::serving::tasks::of(self.task).generates()
    }

    /// The whole answer.
    pub fn answer(&self, a: &Answer) -> Result<pb::ModelInferResponse, ApiError> {
        let out = tensor::output(self.task, a, &self.shape)?;
        Ok(pb::ModelInferResponse {
            model_name: a.model.clone(),
            model_version: a.version.clone(),
            id: self.id.clone(),
            parameters: HashMap::new(),
            outputs: vec![out_tensor(&out)],
            raw_output_contents: vec![out.raw()],
        })
    }

    /// One text delta of input `index` (as a `[1]` text tensor; `index` as a parameter).
    pub fn delta(&self, index: usize, text: String) -> pb::ModelInferResponse {
        let (_, name) = tensor::io_names(self.task);
        let out = OutTensor::text(name, text);
        let mut parameters = HashMap::new();
        parameters.insert("index".to_string(), int_param(index as i64));
        pb::ModelInferResponse {
            model_name: self.model.clone(),
            model_version: self.version.clone(),
            id: self.id.clone(),
            parameters,
            outputs: vec![out_tensor(&out)],
            raw_output_contents: vec![out.raw()],
        }
    }

    /// The empty response that ends a streamed request.
    pub fn last(&self) -> pb::ModelInferResponse {
        finalize(pb::ModelInferResponse {
            model_name: self.model.clone(),
            model_version: self.version.clone(),
            id: self.id.clone(),
            ..Default::default()
        })
    }
}

fn int_param(v: i64) -> pb::InferParameter {
    pb::InferParameter {
        parameter_choice: Some(ParameterChoice::Int64Param(v)),
    }
}

/// Flag a response as the last of its request (Triton's `triton_final_response`).
pub fn finalize(mut r: pb::ModelInferResponse) -> pb::ModelInferResponse {
    r.parameters.insert(
        "triton_final_response".to_string(),
        pb::InferParameter {
            parameter_choice: Some(ParameterChoice::BoolParam(true)),
        },
    );
    r
}
