//! Request parameters checked against the parameter schema in the model's manifest: unknown
//! names, wrong types and out-of-range values are 400s naming the field and the allowed range;
//! missing ones take the manifest's default.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::spec::manifest::{ParamSpec, ParamType};

/// Parameters after validation: every given one checked, defaults filled in.
#[derive(Debug, Clone, Default)]
pub struct ValidParams(BTreeMap<String, Value>);

/// Names accepted for another parameter, as users of other servers send them.
const ALIASES: &[(&str, &str)] = &[
    ("max_length", "max_tokens"),
    ("max_new_tokens", "max_tokens"),
];

fn fmt_num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

fn range_text(spec: &ParamSpec) -> String {
    match (spec.min, spec.max) {
        (Some(a), Some(b)) => format!("between {} and {}", fmt_num(a), fmt_num(b)),
        (Some(a), None) => format!("at least {}", fmt_num(a)),
        (None, Some(b)) => format!("at most {}", fmt_num(b)),
        (None, None) => String::new(),
    }
}

pub fn validate(specs: &[ParamSpec], given: &Map<String, Value>) -> Result<ValidParams, ApiError> {
    let mut out = BTreeMap::new();
    for (raw_name, value) in given {
        let name = ALIASES
            .iter()
            .find(|(alias, _)| alias == raw_name)
            .map(|(_, target)| *target)
            .filter(|target| specs.iter().any(|s| s.name == *target))
            .unwrap_or(raw_name.as_str());
        let field = format!("parameters.{raw_name}");
        let Some(spec) = specs.iter().find(|s| s.name == name) else {
            let known: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            return Err(ApiError::invalid(
                field,
                format!(
                    "unknown parameter; this model takes: {}",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        };
        if out.contains_key(name) {
            return Err(ApiError::invalid(
                field,
                format!("given twice (as `{name}` and an alias)"),
            ));
        }
        if value.is_null() {
            return Err(ApiError::invalid(
                field,
                "must not be null; leave the parameter out to use its default",
            ));
        }
        out.insert(name.to_string(), check(spec, value, &field)?);
    }
    for spec in specs {
        if !out.contains_key(&spec.name) {
            if let Some(d) = &spec.default {
                out.insert(spec.name.clone(), d.clone());
            }
        }
    }
    Ok(ValidParams(out))
}

fn check(spec: &ParamSpec, value: &Value, field: &str) -> Result<Value, ApiError> {
    let in_range = |x: f64| spec.min.is_none_or(|m| x >= m) && spec.max.is_none_or(|m| x <= m);
    let out_of_range = || ApiError::invalid(field, format!("must be {}", range_text(spec)));
    match spec.kind {
        ParamType::Integer => {
            let x = value
                .as_i64()
                .or_else(|| value.as_u64().map(|u| u.min(i64::MAX as u64) as i64))
                .ok_or_else(|| ApiError::invalid(field, type_issue("an integer", spec)))?;
            if !in_range(x as f64) {
                return Err(out_of_range());
            }
            Ok(Value::from(x))
        }
        ParamType::Number => {
            let x = value
                .as_f64()
                .filter(|x| x.is_finite())
                .ok_or_else(|| ApiError::invalid(field, type_issue("a number", spec)))?;
            if !in_range(x) {
                return Err(out_of_range());
            }
            Ok(Value::from(x))
        }
        ParamType::Boolean => value
            .as_bool()
            .map(Value::from)
            .ok_or_else(|| ApiError::invalid(field, "must be true or false")),
        ParamType::String => {
            let s = value
                .as_str()
                .ok_or_else(|| ApiError::invalid(field, "must be a string"))?;
            if !in_range(s.chars().count() as f64) {
                return Err(ApiError::invalid(
                    field,
                    format!("length must be {}", range_text(spec)),
                ));
            }
            Ok(Value::from(s))
        }
        ParamType::StringList => {
            let list: Vec<&str> = match value {
                Value::String(s) => vec![s.as_str()],
                Value::Array(items) => items
                    .iter()
                    .map(|v| v.as_str())
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        ApiError::invalid(field, "must be a string or a list of strings")
                    })?,
                _ => {
                    return Err(ApiError::invalid(
                        field,
                        "must be a string or a list of strings",
                    ))
                }
            };
            if !in_range(list.len() as f64) {
                return Err(ApiError::invalid(
                    field,
                    format!("must hold {} strings", range_text(spec)),
                ));
            }
            if list.iter().any(|s| s.is_empty()) {
                return Err(ApiError::invalid(field, "strings must not be empty"));
            }
            Ok(Value::from(list))
        }
    }
}

fn type_issue(what: &str, spec: &ParamSpec) -> String {
    let r = range_text(spec);
    if r.is_empty() {
        format!("must be {what}")
    } else {
        format!("must be {what} {r}")
    }
}

impl ValidParams {
    pub fn f64(&self, name: &str) -> Option<f64> {
        self.0.get(name).and_then(Value::as_f64)
    }
    pub fn u64(&self, name: &str) -> Option<u64> {
        self.0.get(name).and_then(Value::as_u64)
    }
    pub fn str(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(Value::as_str)
    }
    pub fn bool(&self, name: &str) -> Option<bool> {
        self.0.get(name).and_then(Value::as_bool)
    }
    pub fn strings(&self, name: &str) -> Vec<String> {
        match self.0.get(name) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
            Some(Value::String(s)) => vec![s.clone()],
            _ => vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn specs() -> Vec<ParamSpec> {
        crate::spec::repository::generation_parameters()
    }

    fn given(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn defaults_fill_in() {
        let p = validate(&specs(), &Map::new()).unwrap();
        assert_eq!(p.u64("max_tokens"), Some(128));
        assert_eq!(p.f64("temperature"), Some(0.8));
        assert_eq!(p.u64("seed"), None);
    }

    #[test]
    fn out_of_range_names_field_and_range() {
        let e = validate(&specs(), &given(json!({"temperature": 5}))).unwrap_err();
        assert_eq!(e.details.field.as_deref(), Some("parameters.temperature"));
        assert_eq!(e.details.issue.as_deref(), Some("must be between 0 and 2"));
        assert_eq!(e.status(), 400);
    }

    #[test]
    fn wrong_types_and_unknown_names() {
        for bad in [
            json!({"max_tokens": "ten"}),
            json!({"max_tokens": 1.5}),
            json!({"top_p": "x"}),
            json!({"stop": [1]}),
            json!({"stop": ["a","b","c","d","e","f","g","h","i"]}),
            json!({"nope": 1}),
            json!({"max_tokens": 5, "max_length": 6}),
        ] {
            assert!(validate(&specs(), &given(bad.clone())).is_err(), "{bad}");
        }
    }

    #[test]
    fn alias_and_string_stop() {
        let p = validate(&specs(), &given(json!({"max_length": 7, "stop": "\n"}))).unwrap();
        assert_eq!(p.u64("max_tokens"), Some(7));
        assert_eq!(p.strings("stop"), vec!["\n".to_string()]);
    }
}
