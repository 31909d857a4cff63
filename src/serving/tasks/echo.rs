//! Echo: any JSON back as it came (after an optional delay, or a failure at a chosen rate) —
//! the model the protocol and policy tests run on.

use std::time::Duration;

use serde_json::{json, Value};

use super::{Local, Made, TaskKind};
use crate::engine::Work;
use crate::error::ApiError;
use crate::serving::classify::Shaping;
use crate::serving::Input;
use crate::spec::manifest::Task;

pub struct Echo;

impl TaskKind for Echo {
    fn task(&self) -> Task {
        Task::Echo
    }

    fn cache_kind(&self) -> &'static str {
        "echo"
    }

    fn work(
        &self,
        cx: Local<'_>,
        inputs: Vec<Input>,
        _shaping: &mut Option<Shaping>,
    ) -> Result<Made, ApiError> {
        Ok(Made {
            work: Work::Echo {
                inputs: inputs.into_iter().map(Input::into_json).collect(),
                delay: Duration::from_millis(cx.params.u64("delay_ms").unwrap_or(0)),
                fail: cx
                    .params
                    .f64("fail_rate")
                    .is_some_and(|rate| rand::random::<f64>() < rate),
            },
            cacheable: false,
            key_params: Vec::new(),
        })
    }

    fn input_item_schema(&self) -> Option<Value> {
        None
    }

    fn output_schema(&self, _dims: Option<usize>) -> Value {
        json!({"type": "array"})
    }

    fn tensor_names(&self) -> (&'static str, &'static str) {
        ("input", "output")
    }

    fn drifts(&self) -> bool {
        false
    }
}
