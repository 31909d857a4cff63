//! Reading a vocabulary from GGUF metadata as llama.cpp's loader does: token types to
//! attributes, special token ids (defaults per vocabulary kind, then the metadata's), the
//! tokens it recognises by their text (end of turn, fill-in-the-middle), and the set of
//! end-of-generation tokens.

use std::collections::HashMap;

use aho_corasick::AhoCorasick;
use candle_core::quantized::gguf_file::Value;

use super::{attr, bpe, GgufTokenizerError, GgufVocab, Model, Pre};

type Metadata = HashMap<String, Value>;

/// Texts of end-of-generation tokens, whatever the metadata says.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// Texts that name a role when the metadata gives no id for it.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];

/// Special token roles, with their metadata keys (a later key for the same role wins).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Bos,
    Eos,
    Eot,
    Eom,
    Unk,
    FimPre,
    FimSuf,
    FimMid,
    FimPad,
    FimRep,
    FimSep,
}

const ROLE_KEYS: &[(&str, Role)] = &[
    ("tokenizer.ggml.bos_token_id", Role::Bos),
    ("tokenizer.ggml.eos_token_id", Role::Eos),
    ("tokenizer.ggml.eot_token_id", Role::Eot),
    ("tokenizer.ggml.eom_token_id", Role::Eom),
    ("tokenizer.ggml.unknown_token_id", Role::Unk),
    ("tokenizer.ggml.fim_pre_token_id", Role::FimPre),
    ("tokenizer.ggml.fim_suf_token_id", Role::FimSuf),
    ("tokenizer.ggml.fim_mid_token_id", Role::FimMid),
    ("tokenizer.ggml.fim_pad_token_id", Role::FimPad),
    ("tokenizer.ggml.fim_rep_token_id", Role::FimRep),
    ("tokenizer.ggml.fim_sep_token_id", Role::FimSep),
    ("tokenizer.ggml.prefix_token_id", Role::FimPre),
    ("tokenizer.ggml.suffix_token_id", Role::FimSuf),
    ("tokenizer.ggml.middle_token_id", Role::FimMid),
];

const ROLE_TEXTS: &[(Role, &[&str])] = &[
    (Role::Eot, EOT_TEXTS),
    (Role::Eom, EOM_TEXTS),
    (Role::FimPre, FIM_PRE_TEXTS),
    (Role::FimSuf, FIM_SUF_TEXTS),
    (Role::FimMid, FIM_MID_TEXTS),
    (Role::FimPad, FIM_PAD_TEXTS),
    (Role::FimRep, FIM_REP_TEXTS),
    (Role::FimSep, FIM_SEP_TEXTS),
];

/// The id of each [`Role`], if it has one.
#[derive(Default)]
struct Roles([Option<u32>; Role::FimSep as usize + 1]);

impl Roles {
    fn get(&self, role: Role) -> Option<u32> {
        self.0[role as usize]
    }
    fn set(&mut self, role: Role, id: Option<u32>) {
        self.0[role as usize] = id;
    }
}

fn integer(v: &Value) -> Option<u64> {
    match *v {
        Value::U8(x) => Some(x.into()),
        Value::U16(x) => Some(x.into()),
        Value::U32(x) => Some(x.into()),
        Value::U64(x) => Some(x),
        Value::I8(x) => u64::try_from(x).ok(),
        Value::I16(x) => u64::try_from(x).ok(),
        Value::I32(x) => u64::try_from(x).ok(),
        Value::I64(x) => u64::try_from(x).ok(),
        _ => None,
    }
}

fn flag(md: &Metadata, key: &str) -> Option<bool> {
    md.get(key).and_then(|v| v.to_bool().ok())
}

fn text<'a>(md: &'a Metadata, key: &str) -> Option<&'a str> {
    md.get(key)
        .and_then(|v| v.to_string().ok())
        .map(|s| s.as_str())
}

fn array<'a>(
    md: &'a Metadata,
    key: &'static str,
) -> Result<Option<&'a Vec<Value>>, GgufTokenizerError> {
    md.get(key)
        .map(|v| {
            v.to_vec().map_err(|_| GgufTokenizerError::Invalid {
                key,
                problem: "not an array".into(),
            })
        })
        .transpose()
}

fn strings<'a>(values: &'a [Value], key: &'static str) -> Result<Vec<&'a str>, GgufTokenizerError> {
    values
        .iter()
        .map(|v| v.to_string().map(|s| s.as_str()))
        .collect::<Result<_, _>>()
        .map_err(|_| GgufTokenizerError::Invalid {
            key,
            problem: "not an array of strings".into(),
        })
}

/// `key`'s per-token numbers (at least one per token), or `None` when absent.
fn per_token<T>(
    md: &Metadata,
    key: &'static str,
    n: usize,
    convert: impl Fn(&Value) -> Option<T>,
) -> Result<Option<Vec<T>>, GgufTokenizerError> {
    let Some(values) = array(md, key)? else {
        return Ok(None);
    };
    let invalid = |problem: String| GgufTokenizerError::Invalid { key, problem };
    if values.len() < n {
        return Err(invalid(format!("{} values for {n} tokens", values.len())));
    }
    values
        .iter()
        .take(n)
        .map(|v| convert(v).ok_or_else(|| invalid("not a number array".into())))
        .collect::<Result<Vec<T>, _>>()
        .map(Some)
}

fn attr_of_type(t: i32) -> u8 {
    match t {
        1 => attr::NORMAL,
        2 => attr::UNKNOWN,
        3 => attr::CONTROL,
        4 => attr::USER_DEFINED,
        5 => attr::UNUSED,
        6 => attr::BYTE,
        _ => 0,
    }
}

/// The vocabulary `md` describes.
pub(super) fn from_metadata(md: &Metadata) -> Result<GgufVocab, GgufTokenizerError> {
    let kind = text(md, "tokenizer.ggml.model")
        .ok_or(GgufTokenizerError::Missing("tokenizer.ggml.model"))?;
    let model = match kind {
        "llama" => Model::Spm,
        "gpt2" => {
            let name = text(md, "tokenizer.ggml.pre").unwrap_or("");
            let pre = Pre::from_name(name).ok_or_else(|| GgufTokenizerError::UnsupportedPre {
                name: name.to_string(),
                supported: Pre::supported(),
            })?;
            let lines = array(md, "tokenizer.ggml.merges")?
                .ok_or(GgufTokenizerError::Missing("tokenizer.ggml.merges"))?;
            let lines = strings(lines, "tokenizer.ggml.merges")?;
            let merges = bpe::Merges::new(lines.into_iter());
            Model::Bpe { merges, pre }
        }
        other => return Err(GgufTokenizerError::UnsupportedModel(other.to_string())),
    };
    let list = array(md, "tokenizer.ggml.tokens")?
        .ok_or(GgufTokenizerError::Missing("tokenizer.ggml.tokens"))?;
    let list = strings(list, "tokenizer.ggml.tokens")?;
    let n = list.len();
    let tokens: Vec<Box<str>> = list
        .iter()
        .enumerate()
        .map(|(i, t)| match t.is_empty() {
            true => format!("[EMPTY_{i}]").into_boxed_str(),
            false => Box::from(*t),
        })
        .collect();
    let scores = per_token(md, "tokenizer.ggml.scores", n, |v| match *v {
        Value::F32(x) => Some(x),
        Value::I32(x) => Some(x as f32),
        _ => None,
    })?
    .unwrap_or_else(|| vec![0.0; n]);
    let mut attrs: Vec<u8> = per_token(md, "tokenizer.ggml.token_type", n, |v| v.to_i32().ok())?
        .map(|types| types.into_iter().map(attr_of_type).collect())
        .unwrap_or_else(|| vec![attr::NORMAL; n]);
    let mut ids = HashMap::with_capacity(n);
    for (i, t) in tokens.iter().enumerate() {
        ids.insert(t.clone(), i as u32);
    }
    let spm = matches!(model, Model::Spm);
    let pre = match &model {
        Model::Bpe { pre, .. } => Some(*pre),
        Model::Spm => None,
    };
    let roles = roles(md, n, spm, &tokens, &mut attrs);
    let eog = eog_ids(&roles, &tokens, &mut attrs);
    // Defaults when the metadata does not say: SentencePiece vocabularies add a BOS and a
    // prefix space; byte-level ones neither, except Llama 3's pre-tokenizer adds a BOS.
    let add_bos = spm || pre.is_some_and(Pre::adds_bos_by_default);
    let byte_tokens = byte_tokens(&ids);
    let (specials, special_finder) = specials(&tokens, &attrs)?;
    Ok(GgufVocab {
        model,
        scores,
        byte_tokens,
        specials,
        special_finder,
        bos: roles.get(Role::Bos),
        eos: roles.get(Role::Eos),
        unk: roles.get(Role::Unk),
        add_bos: flag(md, "tokenizer.ggml.add_bos_token").unwrap_or(add_bos),
        add_eos: flag(md, "tokenizer.ggml.add_eos_token").unwrap_or(false),
        add_space_prefix: flag(md, "tokenizer.ggml.add_space_prefix").unwrap_or(spm),
        eog,
        chat_template: text(md, "tokenizer.chat_template").map(str::to_string),
        attrs,
        ids,
        tokens,
    })
}

/// Special token ids: the vocabulary kind's defaults, the metadata's ids, then for roles still
/// unset the first token whose text names the role (made a control token if it was not one).
fn roles(md: &Metadata, n: usize, spm: bool, tokens: &[Box<str>], attrs: &mut [u8]) -> Roles {
    let mut roles = Roles::default();
    let defaults = if spm {
        [(Role::Bos, 1), (Role::Eos, 2), (Role::Unk, 0)].as_slice()
    } else {
        [(Role::Bos, 11), (Role::Eos, 11)].as_slice()
    };
    for &(role, id) in defaults {
        roles.set(role, (id < n as u32).then_some(id));
    }
    for &(key, role) in ROLE_KEYS {
        let Some(id) = md.get(key).and_then(integer) else {
            continue;
        };
        // An id past the vocabulary keeps the default, as llama.cpp does.
        if id < n as u64 {
            roles.set(role, Some(id as u32));
        }
    }
    for &(role, texts) in ROLE_TEXTS {
        if roles.get(role).is_some() {
            continue;
        }
        if let Some(id) = tokens.iter().position(|t| texts.contains(&&**t)) {
            roles.set(role, Some(id as u32));
            attrs[id] |= attr::CONTROL;
        }
    }
    roles
}

/// Tokens that end a generation, as llama.cpp collects them; also its attribute fix-ups that
/// go with them.
fn eog_ids(roles: &Roles, tokens: &[Box<str>], attrs: &mut [u8]) -> Vec<u32> {
    let mut eog: Vec<u32> = [Role::FimPad, Role::FimRep, Role::FimSep]
        .iter()
        .filter_map(|&r| roles.get(r))
        .collect();
    for (id, t) in tokens.iter().enumerate() {
        if EOG_TEXTS.contains(&&**t) {
            eog.push(id as u32);
            attrs[id] |= attr::CONTROL;
        }
        // gpt-oss: tokens that are always written out.
        if ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"].contains(&&**t) {
            attrs[id] = attr::USER_DEFINED;
        }
    }
    eog.extend(
        [Role::Eos, Role::Eot, Role::Eom]
            .iter()
            .filter_map(|&r| roles.get(r)),
    );
    eog.sort_unstable();
    eog.dedup();
    let with_text = |eog: &[u32], text: &str| {
        eog.iter()
            .copied()
            .find(|&id| &*tokens[id as usize] == text)
    };
    let has = |eog: &[u32], text: &str| with_text(eog, text).is_some();
    // With `<|return|>` and `<|call|>` (or `<|calls|>` and `<|flush|>`), `<|end|>` is no end.
    if let Some(end) = with_text(&eog, "<|end|>") {
        let calls = has(&eog, "<|call|>") || has(&eog, "<|calls|>");
        if calls && (has(&eog, "<|return|>") || has(&eog, "<|flush|>")) {
            eog.retain(|&id| id != end);
            attrs[end as usize] = attr::USER_DEFINED;
        }
    }
    // Where `<|tool_response>` or `<|plamo:eos|>` ends generations, `</s>` is a normal token.
    if let Some(s) = with_text(&eog, "</s>") {
        if has(&eog, "<|tool_response>") || has(&eog, "<|plamo:eos|>") {
            eog.retain(|&id| id != s);
            attrs[s as usize] = attr::NORMAL;
        }
    }
    eog
}

/// The token of each byte: `<0xNN>`, else the byte itself as a one-character token.
fn byte_tokens(ids: &HashMap<Box<str>, u32>) -> [Option<u32>; 256] {
    let mut out = [None; 256];
    for (b, slot) in out.iter_mut().enumerate() {
        *slot = ids
            .get(format!("<0x{b:02X}>").as_str())
            .copied()
            .or_else(|| {
                let c = char::from(b as u8);
                c.is_ascii()
                    .then(|| ids.get(c.encode_utf8(&mut [0; 4]) as &str).copied())
                    .flatten()
            });
    }
    out
}

/// Control, user-defined and unknown tokens, longest first (then by id), with a finder for
/// which of them a text holds.
fn specials(
    tokens: &[Box<str>],
    attrs: &[u8],
) -> Result<(Vec<u32>, Option<AhoCorasick>), GgufTokenizerError> {
    let mask = attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN;
    let mut specials: Vec<u32> = (0..tokens.len() as u32)
        .filter(|&i| attrs[i as usize] & mask != 0)
        .collect();
    specials.sort_by_key(|&i| std::cmp::Reverse(tokens[i as usize].len()));
    if specials.is_empty() {
        return Ok((specials, None));
    }
    let finder = AhoCorasick::new(specials.iter().map(|&i| tokens[i as usize].as_bytes()))
        .map_err(|e| GgufTokenizerError::Invalid {
            key: "tokenizer.ggml.tokens",
            problem: e.to_string(),
        })?;
    Ok((specials, Some(finder)))
}
