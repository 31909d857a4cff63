//! Property tests ("fuzzing" on stable Rust) of the native API's request parsing and
//! validation: arbitrary bytes, arbitrary JSON and near-valid requests must each end in a
//! valid request or a 4xx `ApiError` naming a field — never a panic or a 5xx.
//! `PROPTEST_CASES` sets how many cases run (CI runs the default, a few seconds).

use proptest::prelude::*;
use serde_json::{json, Value};

use super::{serve_request, PredictRequest};
use crate::http::extract::parse_json;
use crate::models::classify::ClassifierInfo;
use crate::models::{ChatTemplate, Frontend, TextCodec};
use crate::serving::validate::validate;
use crate::spec::manifest::{Manifest, ParamSpec, ParamType, Task};

fn codec(limit: usize) -> TextCodec {
    let vocab: serde_json::Map<String, Value> = ["[UNK]", "a", "b", "hello", "world"]
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), json!(i)))
        .collect();
    let t = json!({
        "version": "1.0",
        "pre_tokenizer": {"type": "Whitespace"},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    });
    let tok = tokenizers::Tokenizer::from_bytes(serde_json::to_vec(&t).unwrap()).unwrap();
    TextCodec::new(tok, false, limit).unwrap()
}

fn model(task: Task) -> (Manifest, Frontend) {
    let mut m = Manifest::echo("m", semver::Version::new(1, 0, 0));
    m.task = task;
    m.max_input_length = 16;
    let spec = |name: &str, kind, min: Option<f64>, max: Option<f64>| ParamSpec {
        name: name.into(),
        kind,
        default: None,
        min,
        max,
        description: None,
    };
    m.parameters = match task {
        Task::Embedding | Task::Classification => {
            vec![spec("truncate", ParamType::Boolean, None, None)]
        }
        Task::TextGeneration => vec![
            spec("max_tokens", ParamType::Integer, Some(1.0), Some(64.0)),
            spec("temperature", ParamType::Number, Some(0.0), Some(2.0)),
            spec("stop", ParamType::StringList, None, Some(4.0)),
            spec("seed", ParamType::Integer, Some(0.0), None),
        ],
        Task::Echo => vec![spec("delay_ms", ParamType::Integer, Some(0.0), Some(10.0))],
    };
    let template = ChatTemplate::new(
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}",
        "<s>",
        "</s>",
    )
    .unwrap();
    let f = Frontend {
        task,
        codec: (task != Task::Echo).then(|| codec(16)),
        chat_template: (task == Task::TextGeneration).then_some(template),
        dimensions: None,
        eos_token_ids: vec![],
        context_length: Some(64),
        device: "cpu".into(),
        classes: (task == Task::Classification).then(|| ClassifierInfo {
            labels: vec!["neg".into(), "pos".into()],
            multi_label: false,
        }),
        weights: None,
    };
    (m, f)
}

/// Parse then validate as the handler does; the outcome must be a valid request or a 4xx.
fn check(bytes: &[u8], task: Task) -> Result<(), TestCaseError> {
    let (m, f) = model(task);
    let outcome = parse_json::<PredictRequest>(bytes).and_then(|req| {
        let (req, _stream) = serve_request("m", None, false, req)?;
        validate(&m, &f, req.inputs, &req.params, req.logprobs).map(|_| ())
    });
    if let Err(e) = outcome {
        let status = e.status().as_u16();
        prop_assert!((400..500).contains(&status), "{status}: {e}");
        prop_assert!(!e.message.is_empty());
    }
    Ok(())
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|x| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)),
        "[a-z \\u{80}-\\u{10ffff}]{0,24}".prop_map(Value::from),
        prop_oneof![
            Just("user"),
            Just("system"),
            Just("assistant"),
            Just("robot")
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("role".to_string()),
                    Just("content".to_string()),
                    Just("inputs".to_string()),
                    Just("parameters".to_string()),
                    Just("max_tokens".to_string()),
                    Just("temperature".to_string()),
                    Just("stop".to_string()),
                    Just("truncate".to_string()),
                    "[a-z_]{1,8}",
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn tasks() -> impl Strategy<Value = Task> {
    prop_oneof![
        Just(Task::Embedding),
        Just(Task::Classification),
        Just(Task::TextGeneration),
        Just(Task::Echo)
    ]
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256), task in tasks()) {
        check(&bytes, task)?;
    }

    #[test]
    fn arbitrary_json_never_panics(v in any_json(), task in tasks()) {
        check(v.to_string().as_bytes(), task)?;
    }

    #[test]
    fn near_valid_requests_never_panic(
        inputs in any_json(),
        params in prop::collection::btree_map(
            prop_oneof![Just("max_tokens"), Just("temperature"), Just("stop"), Just("seed"),
                        Just("truncate"), Just("delay_ms"), Just("max_length"), Just("bogus")]
                .prop_map(String::from),
            any_json(),
            0..4,
        ),
        trailing in prop_oneof![Just(""), Just(" "), Just("x"), Just("{}")],
        task in tasks(),
    ) {
        let body = json!({"inputs": inputs, "parameters": params});
        let text = format!("{body}{trailing}");
        check(text.as_bytes(), task)?;
        if !trailing.trim().is_empty() {
            prop_assert!(parse_json::<PredictRequest>(text.as_bytes()).is_err());
        }
    }
}
