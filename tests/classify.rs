//! Classification end to end: a tiny BERT sequence classifier (written by
//! `scripts/reference/classifier.py` into `tests/fixtures/tiny_classifier/`) served on the
//! native API and KServe v2, equal to the reference forward pass; zero-shot classification by
//! similarity on the real embedding model (needs `scripts/fetch-models.sh`; fails under CI
//! without it).

mod common;

use std::path::Path;

use anya::registry::manifest::sha256_file;
use common::*;
use serde_json::{json, Value};

const TINY: &str = "tiny-classifier";
const EMBED: &str = "all-minilm-l6-v2";

fn fixture_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn reference() -> Value {
    let p = fixture_dir().join("classifier_reference.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// A repository holding the tiny classifier, its manifest listing every file's sha256.
fn tiny_repo() -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    let dir = repo.path().join(TINY).join("1.0.0");
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = String::new();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture_dir().join("tiny_classifier").join(f), dir.join(f)).unwrap();
        let sha = sha256_file(&dir.join(f)).unwrap();
        files.push_str(&format!("  - path: {f}\n    sha256: {sha}\n"));
    }
    std::fs::write(
        dir.join("anya.yaml"),
        format!(
            "id: {TINY}\nversion: 1.0.0\ntask: classification\nformat: safetensors\n\
             weights: model.safetensors\nconfig: config.json\ntokenizer: tokenizer.json\n\
             max_input_length: 32\nmax_inputs: 16\nfiles:\n{files}"
        ),
    )
    .unwrap();
    repo
}

fn label_scores(v: &Value) -> Vec<(String, f64)> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| {
            (
                x["label"].as_str().unwrap().to_string(),
                x["score"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// Each output (ranked labels) against the reference's per-label scores.
fn assert_scores(outputs: &Value, want: &Value, labels: &[String], top_k: usize) -> f64 {
    let mut worst = 0.0f64;
    for (i, (out, want)) in outputs
        .as_array()
        .unwrap()
        .iter()
        .zip(want.as_array().unwrap())
        .enumerate()
    {
        let got = label_scores(out);
        assert_eq!(got.len(), top_k, "input {i}: {out}");
        for pair in got.windows(2) {
            assert!(
                pair[0].1 >= pair[1].1,
                "input {i}: not highest first: {out}"
            );
        }
        for (label, score) in &got {
            let idx = labels.iter().position(|l| l == label).unwrap();
            let expected = want[idx].as_f64().unwrap();
            let diff = (score - expected).abs();
            worst = worst.max(diff);
            assert!(diff < 1e-4, "input {i} {label}: {score} vs {expected}");
        }
    }
    worst
}

#[tokio::test]
async fn tiny_classifier_equals_the_reference() {
    let repo = tiny_repo();
    let srv = start(settings(repo.path()), &[]).await;
    srv.wait_ready(60).await;
    let r = reference();
    let labels: Vec<String> = serde_json::from_value(r["labels"].clone()).unwrap();
    let path = format!("/models/{TINY}/predict");

    // Default: softmax over all labels (single-label, three labels), highest first.
    let (s, _, body) = srv.post(&path, json!({"inputs": r["sentences"]})).await;
    assert_eq!(s, 200, "{body}");
    let worst = assert_scores(&body["outputs"], &r["softmax"], &labels, 3);
    eprintln!("classifier: max abs difference to the reference (softmax) {worst:.2e}");

    // Raw scores and sigmoid, top_k.
    let (s, _, body) = srv
        .post(
            &path,
            json!({"inputs": r["sentences"], "parameters": {"function_to_apply": "none"}}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let worst = assert_scores(&body["outputs"], &r["logits"], &labels, 3);
    eprintln!("classifier: max abs difference to the reference (logits) {worst:.2e}");
    let (s, _, body) = srv
        .post(
            &path,
            json!({"inputs": r["sentences"],
                   "parameters": {"function_to_apply": "sigmoid", "top_k": 2}}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_scores(&body["outputs"], &r["sigmoid"], &labels, 2);
    // A single input alone gives the same scores as in the batch (no padding effects), and a
    // top_k larger than the labels gives them all.
    let (s, _, body) = srv
        .post(
            &path,
            json!({"inputs": r["sentences"][5], "parameters": {"top_k": 50}}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_scores(&body["outputs"], &json!([r["softmax"][5]]), &labels, 3);

    // Bad parameters are 400s naming the field.
    for (params, field) in [
        (
            json!({"function_to_apply": "tanh"}),
            "parameters.function_to_apply",
        ),
        (json!({"top_k": 0}), "parameters.top_k"),
        (
            json!({"candidate_labels": ["a", "b"]}),
            "parameters.candidate_labels",
        ),
    ] {
        let (s, _, body) = srv
            .post(&path, json!({"inputs": ["the team"], "parameters": params}))
            .await;
        assert_eq!(s, 400, "{params}: {body}");
        assert_eq!(body["error"]["details"]["field"], field, "{body}");
    }

    // The model describes itself as a classifier.
    let (s, info) = srv.get(&format!("/models/{TINY}")).await;
    assert_eq!(s, 200);
    assert_eq!(info["task"], "classification", "{info}");
    let names: Vec<&str> = info["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(names.contains(&"top_k") && names.contains(&"function_to_apply"));

    // KServe v2: the labels of each input as a JSON string in a BYTES tensor.
    let (s, _, body) = srv
        .post(
            &format!("/v2/models/{TINY}/infer"),
            json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2],
                               "data": [r["sentences"][0], r["sentences"][1]]}]}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let out = &body["outputs"][0];
    assert_eq!(out["name"], "labels");
    assert_eq!(out["datatype"], "BYTES");
    let first: Value = serde_json::from_str(out["data"][0].as_str().unwrap()).unwrap();
    assert_scores(&json!([first]), &json!([r["softmax"][0]]), &labels, 3);
}

#[tokio::test]
async fn zero_shot_ranks_candidate_labels_by_similarity() {
    let Some(models) = real_models() else {
        return;
    };
    let srv = start(settings(&models), &[EMBED]).await;
    srv.wait_ready(120).await;
    let path = format!("/models/{EMBED}/predict");
    let labels = ["sports", "cooking", "weather"];
    let (s, _, body) = srv
        .post(
            &path,
            json!({"inputs": ["The striker scored twice and the team won the league.",
                              "Simmer the onions in butter, then add the flour.",
                              "Heavy rain and strong winds are expected tomorrow."],
                   "parameters": {"candidate_labels": labels,
                                  "hypothesis_template": "This text is about {}."}}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let outputs = body["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), 3);
    for (i, out) in outputs.iter().enumerate() {
        let got = label_scores(out);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].0, labels[i], "input {i}: {out}");
        assert!(got[0].1 > got[1].1 && got[1].1 >= got[2].1);
    }
    // The score is the cosine between the input's and the label text's embeddings.
    let (_, _, vectors) = srv
        .post(
            &path,
            json!({"inputs": ["Heavy rain and strong winds are expected tomorrow.",
                              "This text is about weather."]}),
        )
        .await;
    let (a, b) = (
        floats(&vectors["outputs"][0]),
        floats(&vectors["outputs"][1]),
    );
    let weather = label_scores(&outputs[2])[0].1;
    assert!((cosine(&a, &b) - weather).abs() < 1e-5, "{weather}");

    for (params, field) in [
        (
            json!({"hypothesis_template": "about {}"}),
            "parameters.hypothesis_template",
        ),
        (
            json!({"candidate_labels": ["a"], "hypothesis_template": "no slot"}),
            "parameters.hypothesis_template",
        ),
        (
            json!({"candidate_labels": ["a", "a"]}),
            "parameters.candidate_labels[1]",
        ),
        (
            json!({"candidate_labels": []}),
            "parameters.candidate_labels",
        ),
        (
            json!({"candidate_labels": [""]}),
            "parameters.candidate_labels",
        ),
    ] {
        let (s, _, body) = srv
            .post(&path, json!({"inputs": ["hello"], "parameters": params}))
            .await;
        assert_eq!(s, 400, "{params}: {body}");
        assert_eq!(body["error"]["details"]["field"], field, "{body}");
    }
}
