//! Classification: texts → ranked labels (a classifier's logits through softmax or sigmoid);
//! KServe's BYTES `labels` tensor (JSON per input); no OpenAI endpoint.

use serde_json::{json, Value};

use super::embedding::encoder_work;
use super::{described, Local, Made, TaskKind};
use crate::error::ApiError;
use crate::models::Frontend;
use crate::serving::classify::{self, Function, Shaping};
use crate::serving::params::ValidParams;
use crate::serving::Input;
use crate::spec::manifest::{ParamSpec, ParamType, Task};

pub struct Classification;

impl TaskKind for Classification {
    fn task(&self) -> Task {
        Task::Classification
    }

    fn cache_kind(&self) -> &'static str {
        "classify"
    }

    fn builtin_params(&self) -> Vec<ParamSpec> {
        vec![
            described(
                classify::spec("truncate", ParamType::Boolean, Some(json!(false)), None),
                "cut inputs longer than max_input_length instead of refusing them",
            ),
            described(
                classify::spec("top_k", ParamType::Integer, None, Some(10_000.0)),
                "how many labels to answer per input, highest score first (default: all)",
            ),
            described(
                classify::spec("function_to_apply", ParamType::String, None, Some(16.0)),
                "softmax, sigmoid or none (raw scores); default softmax for single-label models with more than one label, else sigmoid",
            ),
        ]
    }

    fn plan(&self, frontend: &Frontend, params: &ValidParams) -> Result<Option<Shaping>, ApiError> {
        let info = frontend
            .classes
            .as_ref()
            .ok_or_else(|| ApiError::internal("a classifier without labels"))?;
        let function = match params.str("function_to_apply") {
            Some(s) => Function::parse(s)?,
            None if info.multi_label || info.labels.len() == 1 => Function::Sigmoid,
            None => Function::Softmax,
        };
        let n = info.labels.len();
        let top_k = params.u64("top_k").map_or(n, |k| (k as usize).min(n));
        Ok(Some(Shaping::Classify {
            labels: info.labels.clone().into(),
            function,
            top_k,
        }))
    }

    fn work(
        &self,
        cx: Local<'_>,
        inputs: Vec<Input>,
        shaping: &mut Option<Shaping>,
    ) -> Result<Made, ApiError> {
        encoder_work(cx, inputs, shaping)
    }

    fn input_item_schema(&self) -> Option<Value> {
        Some(json!({"type": "string"}))
    }

    fn output_schema(&self, _dims: Option<usize>) -> Value {
        classify::output_schema()
    }

    fn tensor_names(&self) -> (&'static str, &'static str) {
        ("text", "labels")
    }

    fn truncates(&self) -> bool {
        true
    }
}
