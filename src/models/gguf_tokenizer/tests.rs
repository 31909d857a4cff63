use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;

use super::*;

fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect())
}

/// Token texts, types and scores of a toy SentencePiece vocabulary.
const SPM: &[(&str, i32, f32)] = &[
    ("<unk>", 2, 0.0),
    ("<s>", 3, 0.0),
    ("</s>", 3, 0.0),
    ("<0x0A>", 6, 0.0),
    ("<0xC3>", 6, 0.0),
    ("<0xA9>", 6, 0.0),
    ("▁", 1, -1.0),
    ("H", 1, -2.0),
    ("i", 1, -2.0),
    ("Hi", 1, -1.0),
    ("▁Hi", 1, -2.0),
    ("<end_of_turn>", 3, 0.0),
    ("[X]", 4, 0.0),
    ("<unused0>", 5, 0.0),
    ("▁there", 1, -3.0),
];

/// Metadata of the toy SentencePiece vocabulary, with `extra` on top.
fn spm_metadata(extra: &[(&str, Value)]) -> HashMap<String, Value> {
    let texts: Vec<&str> = SPM.iter().map(|t| t.0).collect();
    let mut md: HashMap<String, Value> = [
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.tokens", strings(&texts)),
        (
            "tokenizer.ggml.token_type",
            Value::Array(SPM.iter().map(|t| Value::I32(t.1)).collect()),
        ),
        (
            "tokenizer.ggml.scores",
            Value::Array(SPM.iter().map(|t| Value::F32(t.2)).collect()),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, v) in extra {
        md.insert(k.to_string(), v.clone());
    }
    md
}

fn spm(extra: &[(&str, Value)]) -> GgufVocab {
    load::from_metadata(&spm_metadata(extra)).unwrap()
}

fn no_prefix() -> GgufVocab {
    spm(&[("tokenizer.ggml.add_space_prefix", Value::Bool(false))])
}

#[test]
fn spm_defaults_follow_llama_cpp() {
    let v = spm(&[]);
    assert_eq!(
        (v.bos(), v.eos(), v.add_bos(), v.add_eos()),
        (Some(1), Some(2), true, false)
    );
    // </s> is the EOS; <end_of_turn> ends a turn by its text.
    assert_eq!(v.eog_ids(), [2, 11]);
    assert_eq!(v.token_id("▁Hi"), Some(10));
    assert_eq!(v.token_text(10), Some("▁Hi"));
}

#[test]
fn add_space_prefix_starts_the_text_and_follows_special_tokens() {
    let v = spm(&[]);
    assert_eq!(v.encode("Hi", true, true), [1, 10]);
    assert_eq!(v.encode("Hi Hi", false, true), [10, 10]);
    assert_eq!(v.encode("Hi<end_of_turn>Hi", false, true), [10, 11, 10]);
    let v = no_prefix();
    assert_eq!(v.encode("Hi", true, true), [1, 9]);
    assert_eq!(v.encode("Hi<end_of_turn>Hi", false, true), [9, 11, 9]);
    assert_eq!(v.encode("", true, true), [1]);
    assert_eq!(v.encode("", false, true), Vec::<u32>::new());
}

#[test]
fn control_tokens_are_text_unless_parsing_specials_but_user_defined_always_match() {
    let v = no_prefix();
    let parsed = v.encode("Hi<end_of_turn>[X]", false, true);
    assert_eq!(parsed, [9, 11, 12]);
    let raw = v.encode("Hi<end_of_turn>[X]", false, false);
    assert!(!raw.contains(&11), "{raw:?}");
    assert_eq!(raw.last(), Some(&12), "{raw:?}");
    // Unused tokens are never matched.
    assert!(!v.encode("<unused0>", false, true).contains(&13));
}

#[test]
fn longer_special_tokens_are_cut_out_first() {
    let mut md = spm_metadata(&[("tokenizer.ggml.add_space_prefix", Value::Bool(false))]);
    // A user-defined "<end" inside the control token <end_of_turn>: the longer one wins.
    let Some(Value::Array(tokens)) = md.get_mut("tokenizer.ggml.tokens") else {
        panic!()
    };
    tokens[13] = Value::String("<end".into());
    let Some(Value::Array(types)) = md.get_mut("tokenizer.ggml.token_type") else {
        panic!()
    };
    types[13] = Value::I32(4);
    let v = load::from_metadata(&md).unwrap();
    assert_eq!(v.encode("<end_of_turn><end", false, true), [11, 13]);
    // Without parse_special the control token is text, and "<end" is cut out of it.
    assert_eq!(v.encode("<end_of_turn>", false, false)[0], 13);
}

#[test]
fn bytes_fall_back_and_decode_back_to_utf8() {
    let v = no_prefix();
    assert_eq!(v.encode("é\n", false, true), [4, 5, 3]);
    assert_eq!(v.decode(&[4, 5, 3]), "é\n");
    assert_eq!(v.decode(&[9, 4]), "Hi\u{FFFD}");
    // A character with no byte token at all: <unk>.
    assert_eq!(v.encode("ü", false, true), [4, 0]);
}

#[test]
fn decode_leaves_out_control_tokens_and_strips_the_prefix_space() {
    let v = spm(&[]);
    assert_eq!(v.decode(&[10, 10, 2]), "Hi Hi");
    // After the BOS the vocabulary adds, the space stays (as llama.cpp writes it).
    assert_eq!(v.decode(&[1, 10]), " Hi");
    assert_eq!(v.decode(&[9, 11, 12, 14]), "Hi[X] there");
    assert_eq!(no_prefix().decode(&[10, 14]), " Hi there");
    // Ids past the vocabulary decode to nothing.
    assert_eq!(v.decode(&[9, 999]), "Hi");
}

#[test]
fn decode_windows_concatenate() {
    // What the streaming decoder relies on: a window's text is a prefix of a longer window's
    // text that starts at the same token.
    let v = spm(&[]);
    let ids = [14, 10, 4, 5, 3, 14];
    for start in 0..ids.len() {
        for mid in start..ids.len() {
            let short = v.decode(&ids[start..mid]);
            let long = v.decode(&ids[start..]);
            if !short.ends_with('\u{FFFD}') {
                assert!(long.starts_with(&short), "{short:?} / {long:?}");
            }
        }
    }
}

fn bpe_metadata(pre: &str) -> HashMap<String, Value> {
    let mut tokens: Vec<String> = vec!["<|endoftext|>".into(), "<|im_end|>".into()];
    tokens.extend((0..=255u8).map(|b| bpe::byte_char(b).to_string()));
    tokens.extend(
        [
            "He", "ll", "llo", "Hello", "Ġw", "Ġwor", "Ġworld", "12", "123",
        ]
        .map(String::from),
    );
    let types: Vec<Value> = (0..tokens.len())
        .map(|i| Value::I32(if i < 2 { 3 } else { 1 }))
        .collect();
    let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    [
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String(pre.into())),
        ("tokenizer.ggml.tokens", strings(&refs)),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        (
            "tokenizer.ggml.merges",
            strings(&[
                "H e", "l l", "ll o", "He llo", "Ġ w", "Ġw o", "Ġwo r", "Ġwor ld", "1 2", "12 3",
            ]),
        ),
        ("tokenizer.ggml.eos_token_id", Value::U32(0)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

#[test]
fn gpt2_vocabularies_merge_per_pre_tokenized_word() {
    let v = load::from_metadata(&bpe_metadata("smollm")).unwrap();
    let id = |t: &str| v.token_id(t).unwrap();
    assert_eq!(v.encode("Hello", true, true), [id("Hello")]);
    // "Ġwor ld" is a merge, but "ld" never forms: "l" and "d" stay apart.
    let ids = v.encode("Hello world<|im_end|>", false, true);
    assert_eq!(ids, [id("Hello"), id("Ġwor"), id("l"), id("d"), 1]);
    assert_eq!(v.decode(&ids), "Hello world");
    // smollm: digits one by one; qwen2 likewise; llama-bpe: up to three.
    assert_eq!(v.encode("123", false, true), [id("1"), id("2"), id("3")]);
    let v = load::from_metadata(&bpe_metadata("llama-bpe")).unwrap();
    assert_eq!(v.encode("123", false, true), [id("123")]);
    // llama-bpe adds a BOS unless the metadata says otherwise; gpt2's default BOS is 11.
    assert!(v.add_bos());
    assert_eq!(v.bos(), Some(11));
    assert_eq!(v.eog_ids(), [0, 1]);
}

#[test]
fn unknown_pre_tokenizers_and_models_are_refused_by_name() {
    let err = load::from_metadata(&bpe_metadata("falcon"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`falcon`") && err.contains("llama-bpe"),
        "{err}"
    );
    let mut md = bpe_metadata("default");
    md.insert("tokenizer.ggml.model".into(), Value::String("t5".into()));
    let err = load::from_metadata(&md).unwrap_err().to_string();
    assert!(err.contains("`t5`"), "{err}");
}

#[test]
fn eog_collects_metadata_ids_and_known_texts() {
    let v = spm(&[
        ("tokenizer.ggml.eos_token_id", Value::U32(14)),
        ("tokenizer.ggml.eot_token_id", Value::U32(9)),
    ]);
    // 2 (`</s>` by its text), 9 (EOT), 11 (<end_of_turn>), 14 (EOS).
    assert_eq!(v.eog_ids(), [2, 9, 11, 14]);
    // An id past the vocabulary keeps the default.
    let v = spm(&[("tokenizer.ggml.bos_token_id", Value::U32(99))]);
    assert_eq!(v.bos(), Some(1));
}

#[test]
fn codec_limits_and_truncation_keep_the_added_eos() {
    use crate::models::text::EncodeError;
    use crate::models::TextCodec;
    let codec = TextCodec::from_gguf(
        spm(&[("tokenizer.ggml.add_eos_token", Value::Bool(true))]),
        3,
    );
    assert_eq!(codec.encode("Hi", false).unwrap(), [1, 10, 2]);
    assert_eq!(
        codec.encode("Hi Hi Hi Hi", false),
        Err(EncodeError::TooLong {
            tokens: 6,
            limit: 3
        })
    );
    assert_eq!(codec.encode("Hi Hi Hi Hi", true).unwrap(), [1, 10, 2]);
    let long = "Hi ".repeat(100);
    assert!(matches!(
        codec.encode(&long, false),
        Err(EncodeError::TooManyBytes { .. })
    ));
    assert_eq!(codec.encode(&long, true).unwrap(), [1, 10, 2]);
    assert_eq!(codec.vocab_size(), SPM.len());
    assert_eq!(codec.token_id("<end_of_turn>"), Some(11));
    assert_eq!(codec.id_to_token(14).as_deref(), Some("▁there"));
    assert_eq!(codec.decode(&[1, 10, 4, 5, 2]).unwrap(), " Hié");
}

#[test]
fn streaming_through_the_codec_never_splits_a_character() {
    use crate::models::generate::{FinishReason, GenParams, Next, Sequence};
    use crate::models::sampling::SamplingParams;
    use crate::models::TextCodec;
    let codec = TextCodec::from_gguf(spm(&[]), 64);
    // "▁there", é as two byte tokens, "▁Hi", a newline byte, é again, "▁there".
    let script = [14usize, 4, 5, 10, 3, 4, 5, 14];
    let params = GenParams {
        max_tokens: script.len(),
        sampling: SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
        },
        stop: vec![],
        seed: 0,
        logprobs: None,
        ignore_eos: false,
    };
    let mut seq = Sequence::new(1, &params, 64);
    let mut deltas = Vec::new();
    for &t in &script {
        let mut logits = vec![0.0; codec.vocab_size()];
        logits[t] = 10.0;
        let next = seq.accept(&logits, &codec, &[]).unwrap();
        deltas.extend(seq.take_delta().map(|d| d.text));
        if matches!(next, Next::Done(_)) {
            break;
        }
    }
    let (g, last) = seq.finish_streamed(FinishReason::Length, &codec).unwrap();
    deltas.push(last.text);
    // The first token's prefix space goes, as llama.cpp's detokenizer drops it.
    assert_eq!(g.text, "thereé Hi\né there");
    assert_eq!(deltas.concat(), g.text);
    assert!(deltas.iter().all(|d| !d.contains('\u{FFFD}')), "{deltas:?}");
}
