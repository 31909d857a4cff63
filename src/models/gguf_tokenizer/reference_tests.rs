//! Our GGUF tokenizers against llama.cpp's `llama_tokenize` on real vocabularies:
//! `tests/fixtures/gguf_tokenizer_reference.json` (made by `scripts/reference/gguf_fidelity.py`)
//! holds, per case, a source GGUF, metadata overrides, the two flags and llama.cpp's ids for
//! every string. Where neither flag is set, decoding the ids must also give the string back.
//!
//! The real files come from `scripts/fetch-models.sh` (under `ANYA_TEST_MODELS`, default
//! `models/`); the Gemma file may instead be named by `ANYA_GEMMA_GGUF`. Missing real files fail
//! the test under `CI` and skip it otherwise. The tiny vocabularies are made by
//! `scripts/reference/tiny_gguf.py`, run here with `.cache/venv`'s Python (`ANYA_TINY_GGUF_DIR`
//! may name a folder holding `tiny-<arch>-Q8_0-s0.gguf` instead); like the real files, they
//! are required under `CI`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::quantized::gguf_file::{Content, Value};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use super::GgufVocab;

/// llama.cpp's end-of-generation tokens of each source's own metadata (its load log).
const EOG: &[(&str, &[u32])] = &[
    ("gemma3-270m", &[1, 106, 212]),
    ("smollm2-135m", &[0, 2, 4]),
    ("tiny-mistral", &[2]),
    ("tiny-gemma3", &[1, 6]),
    ("tiny-llama", &[508, 511]),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn models_dir() -> PathBuf {
    std::env::var_os("ANYA_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models"))
}

/// Where a fixture source's file is, and whether it is a real model (required under CI).
fn source_path(name: &str, source: &Json) -> (Option<PathBuf>, bool) {
    let existing = |p: PathBuf| p.is_file().then_some(p);
    match name {
        "gemma3-270m" => {
            let env = std::env::var_os("ANYA_GEMMA_GGUF").map(PathBuf::from);
            let default = models_dir().join("gemma-3-270m/1.0.0/gemma-3-270m-q4_k_m.gguf");
            (env.or(Some(default)).and_then(existing), true)
        }
        "smollm2-135m" => {
            let p =
                models_dir().join("smollm2-135m-instruct/1.0.0/SmolLM2-135M-Instruct.Q4_1.gguf");
            (existing(p), true)
        }
        _ => {
            let tiny = &source["tiny_gguf"];
            let file = format!(
                "tiny-{}-{}-s{}.gguf",
                tiny["arch"].as_str().unwrap_or(""),
                tiny["type"].as_str().unwrap_or(""),
                tiny["seed"].as_u64().unwrap_or(0)
            );
            if let Some(d) = std::env::var_os("ANYA_TINY_GGUF_DIR").map(PathBuf::from) {
                return (existing(d.join(file)), false);
            }
            (write_tiny(tiny, &file), true)
        }
    }
}

/// A tiny model written by `scripts/reference/tiny_gguf.py` with the Python of `.cache/venv`
/// (or `ANYA_TEST_PYTHON`), as CI has it; `None` when that Python lacks gguf-py.
fn write_tiny(tiny: &Json, file: &str) -> Option<PathBuf> {
    let python = std::env::var_os("ANYA_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".cache/venv/bin/python"));
    let dir = std::env::temp_dir().join(format!("anya-tiny-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let out = dir.join(file);
    let seed = tiny["seed"].as_u64().unwrap_or(0).to_string();
    let ok = std::process::Command::new(python)
        .arg(root().join("scripts/reference/tiny_gguf.py"))
        .args(["--arch", tiny["arch"].as_str().unwrap_or("")])
        .args(["--type", tiny["type"].as_str().unwrap_or("")])
        .args(["--seed", &seed, "--out"])
        .arg(&out)
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(out)
}

fn sha256(path: &Path) -> String {
    use std::io::Read;
    let mut file = std::fs::File::open(path).unwrap();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hex::encode(hasher.finalize())
}

/// A JSON override as a GGUF value of the type the key already has (else the JSON's own).
fn override_value(old: Option<&Value>, new: &Json) -> Value {
    match (old, new) {
        (_, Json::Bool(b)) => Value::Bool(*b),
        (_, Json::String(s)) => Value::String(s.clone()),
        (Some(Value::I32(_)), Json::Number(n)) => Value::I32(n.as_i64().unwrap_or(0) as i32),
        (Some(Value::F32(_)), Json::Number(n)) => Value::F32(n.as_f64().unwrap_or(0.0) as f32),
        (_, Json::Number(n)) => Value::U32(n.as_u64().unwrap_or(0) as u32),
        (_, other) => panic!("override {other} is not supported"),
    }
}

/// A source's header, read once per source.
fn header(path: &Path) -> Content {
    let mut file = std::fs::File::open(path).unwrap();
    Content::read(&mut file).unwrap()
}

#[test]
fn tokenizers_match_llama_cpp_on_real_vocabularies() {
    let fixture: Json = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/gguf_tokenizer_reference.json"))
            .unwrap(),
    )
    .unwrap();
    let strings: Vec<&str> = fixture["strings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let mut headers: std::collections::HashMap<String, Option<Content>> = Default::default();
    let mut failures = Vec::new();
    let mut summary = Vec::new();
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let source_name = case["source"].as_str().unwrap();
        let source = &fixture["sources"][source_name];
        let content = headers.entry(source_name.to_string()).or_insert_with(|| {
            let (path, real) = source_path(source_name, source);
            let Some(path) = path else {
                if real && std::env::var_os("CI").is_some() {
                    panic!("{source_name} is missing: run scripts/fetch-models.sh");
                }
                eprintln!("*** SKIPPING the {source_name} cases: its GGUF is not here ***");
                return None;
            };
            let want = source["sha256"].as_str().unwrap_or("");
            assert_eq!(
                sha256(&path),
                want,
                "{} is not the fixture's file",
                path.display()
            );
            Some(header(&path))
        });
        let Some(content) = content.as_ref() else {
            continue;
        };
        let mut content = Content {
            magic: content.magic,
            metadata: content.metadata.clone(),
            tensor_infos: Default::default(),
            tensor_data_offset: 0,
        };
        for (key, value) in case["overrides"].as_object().unwrap() {
            let v = override_value(content.metadata.get(key), value);
            content.metadata.insert(key.clone(), v);
        }
        let started = Instant::now();
        let vocab = GgufVocab::from_gguf(&content).unwrap();
        let load = started.elapsed();
        assert_eq!(
            vocab.add_bos(),
            case["add_bos"].as_bool().unwrap(),
            "{name}: add_bos"
        );
        assert_eq!(
            vocab.bos().map(u64::from),
            case["bos"].as_u64(),
            "{name}: bos"
        );
        assert_eq!(
            vocab.eos().map(u64::from),
            case["eos"].as_u64(),
            "{name}: eos"
        );
        if case["overrides"].as_object().is_some_and(|o| o.is_empty()) {
            if let Some((_, eog)) = EOG.iter().find(|(s, _)| *s == source_name) {
                assert_eq!(vocab.eog_ids(), *eog, "{name}: end-of-generation tokens");
            }
        }
        let add_special = case["add_special"].as_bool().unwrap();
        let parse_special = case["parse_special"].as_bool().unwrap();
        let expected = case["ids"].as_array().unwrap();
        assert_eq!(expected.len(), strings.len());
        let mut equal = 0;
        for (text, want) in strings.iter().zip(expected) {
            let want: Vec<u32> = serde_json::from_value(want.clone()).unwrap();
            let got = vocab.encode(text, add_special, parse_special);
            // Without special tokens in play, decoding gives the text back.
            let decoded = (!add_special && !parse_special).then(|| vocab.decode(&got));
            if decoded.as_ref().is_some_and(|d| d != text) {
                failures.push(format!("{name} {text:?}: decodes to {decoded:?}"));
            }
            if got == want {
                equal += 1;
            } else {
                failures.push(format!(
                    "{name} {text:?}:\n  llama.cpp {want:?}\n  ours      {got:?}"
                ));
            }
        }
        summary.push(format!(
            "{name}: {equal}/{} equal (vocabulary of {} built in {load:.2?})",
            strings.len(),
            vocab.len()
        ));
    }
    eprintln!("{}", summary.join("\n"));
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
