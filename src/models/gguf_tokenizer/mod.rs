//! Tokenizers built from a GGUF file's `tokenizer.ggml.*` metadata (no tokenizer.json), giving
//! the ids llama.cpp's `llama_tokenize` gives and the text its detokenizer writes.
//!
//! Two vocabulary kinds: `llama` (SentencePiece-style BPE over scores, with `▁` for spaces and
//! `<0xNN>` byte fallback: Llama 2, Mistral, Phi-3, Gemma) and `gpt2` (byte-level BPE over
//! `tokenizer.ggml.merges`, after one of the pre-tokenizers of [`Pre`]). Before either runs, the
//! text is cut at the special tokens it holds, as llama.cpp does: user-defined tokens always,
//! control and unknown tokens only when parsing special tokens, longest first. The loading side
//! (special ids, end-of-generation tokens, attributes) is in `load.rs`.

mod bpe;
mod load;
mod pre;
mod spm;

use std::collections::HashMap;
use std::ops::Range;

use aho_corasick::AhoCorasick;
use candle_core::quantized::gguf_file::Content;

pub use pre::Pre;

use super::ModelError;

/// Token attributes, from `tokenizer.ggml.token_type` (1 normal, 2 unknown, 3 control,
/// 4 user-defined, 5 unused, 6 byte); other types have none of these.
mod attr {
    pub const NORMAL: u8 = 1;
    pub const UNKNOWN: u8 = 2;
    pub const CONTROL: u8 = 4;
    pub const USER_DEFINED: u8 = 8;
    pub const UNUSED: u8 = 16;
    pub const BYTE: u8 = 32;
}

/// Why a GGUF's tokenizer metadata could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GgufTokenizerError {
    #[error("GGUF tokenizer: no {0} in the metadata")]
    Missing(&'static str),
    #[error("GGUF tokenizer: {key}: {problem}")]
    Invalid { key: &'static str, problem: String },
    #[error(
        "GGUF tokenizer: tokenizer model `{0}` is not supported (`llama` and `gpt2` are); place a tokenizer.json beside the .gguf and name it in the manifest"
    )]
    UnsupportedModel(String),
    #[error("GGUF tokenizer: pre-tokenizer `{name}` is not supported; supported: {supported}")]
    UnsupportedPre { name: String, supported: String },
}

impl From<GgufTokenizerError> for ModelError {
    fn from(e: GgufTokenizerError) -> Self {
        ModelError::Load(e.to_string())
    }
}

enum Model {
    /// SentencePiece-style BPE over token scores.
    Spm,
    /// Byte-level BPE over merge ranks.
    Bpe { merges: bpe::Merges, pre: Pre },
}

/// A GGUF vocabulary with llama.cpp's tokenizer and detokenizer.
pub struct GgufVocab {
    model: Model,
    tokens: Vec<Box<str>>,
    /// Text to id; of tokens with the same text, the last.
    ids: HashMap<Box<str>, u32>,
    scores: Vec<f32>,
    attrs: Vec<u8>,
    /// The token of each byte, for SentencePiece byte fallback.
    byte_tokens: [Option<u32>; 256],
    /// Tokens matched in the text before tokenizing (control, user-defined and unknown ones),
    /// in the order they are looked for: longest first.
    specials: Vec<u32>,
    /// Finds which of `specials` occur in a text (patterns in the order of `specials`).
    special_finder: Option<AhoCorasick>,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    /// Every token that ends a generation, ascending.
    eog: Vec<u32>,
    chat_template: Option<String>,
}

impl std::fmt::Debug for GgufVocab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufVocab")
            .field("tokens", &self.tokens.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eog", &self.eog)
            .finish_non_exhaustive()
    }
}

/// A piece of the text: raw text to tokenize, or a special token found in it.
#[derive(Debug, Clone, PartialEq)]
enum Fragment {
    Text(Range<usize>),
    Token(u32),
}

impl GgufVocab {
    /// The vocabulary a GGUF's header describes.
    pub fn from_gguf(content: &Content) -> Result<GgufVocab, GgufTokenizerError> {
        load::from_metadata(&content.metadata)
    }

    /// Token ids run from 0 to this.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    /// A token's text as the vocabulary writes it (`▁` for spaces, `<0x0A>`, `Ġ`...).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(|t| &**t)
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// Whether encoding with special tokens starts with BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }

    /// Whether encoding with special tokens ends with EOS.
    pub fn add_eos(&self) -> bool {
        self.add_eos && self.eos.is_some()
    }

    /// Every token that ends a generation (EOS, EOT, EOM and those llama.cpp recognises by
    /// their text, such as `<end_of_turn>`, `<|im_end|>` and `<|eot_id|>`), ascending.
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The ids of `text`, as `llama_tokenize(text, add_special, parse_special)` gives them.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos() {
            out.extend(self.bos);
        }
        let fragments = self.partition(text, parse_special);
        match &self.model {
            Model::Spm => self.encode_spm(text, &fragments, &mut out),
            Model::Bpe { merges, pre } => {
                let mut session = bpe::Session::default();
                let mut word = String::new();
                for fragment in fragments {
                    let range = match fragment {
                        Fragment::Token(id) => {
                            out.push(id);
                            continue;
                        }
                        Fragment::Text(range) => range,
                    };
                    let piece = &text[range];
                    for w in pre.split(piece) {
                        word.clear();
                        word.extend(piece[w].bytes().map(bpe::byte_char));
                        session.word(&word, &self.ids, merges, pre.ignore_merges(), &mut out);
                    }
                }
            }
        }
        if add_special && self.add_eos() {
            out.extend(self.eos);
        }
        out
    }

    fn encode_spm(&self, text: &str, fragments: &[Fragment], out: &mut Vec<u32>) {
        let vocab = spm::Vocab {
            ids: &self.ids,
            scores: &self.scores,
            bytes: &self.byte_tokens,
            unk: self.unk,
        };
        // A space is prefixed to the text at the start and after each special token.
        let mut after_special = true;
        let mut buf = String::new();
        for fragment in fragments {
            match fragment {
                Fragment::Token(id) => {
                    out.push(*id);
                    after_special = true;
                }
                Fragment::Text(range) => {
                    buf.clear();
                    if self.add_space_prefix && after_special {
                        buf.push('▁');
                    }
                    for c in text[range.clone()].chars() {
                        buf.push(if c == ' ' { '▁' } else { c });
                    }
                    spm::tokenize(&buf, &vocab, out);
                    after_special = false;
                }
            }
        }
    }

    /// Cut `text` at the special tokens it holds: for each special token, longest first, every
    /// leftmost occurrence in what is still raw text. With `parse_special` off, control and
    /// unknown tokens stay text (user-defined ones are still cut out).
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let mut fragments = Vec::new();
        if text.is_empty() {
            return fragments;
        }
        fragments.push(Fragment::Text(0..text.len()));
        let Some(finder) = &self.special_finder else {
            return fragments;
        };
        let mut present = vec![false; self.specials.len()];
        for m in finder.find_overlapping_iter(text) {
            present[m.pattern().as_usize()] = true;
        }
        for (k, &id) in self.specials.iter().enumerate() {
            let skipped =
                !parse_special && self.attrs[id as usize] & (attr::CONTROL | attr::UNKNOWN) != 0;
            if !present[k] || skipped {
                continue;
            }
            let pattern = &*self.tokens[id as usize];
            let mut next = Vec::with_capacity(fragments.len() + 2);
            for fragment in fragments {
                let Fragment::Text(range) = fragment else {
                    next.push(fragment);
                    continue;
                };
                let mut at = range.start;
                for (i, _) in text[range.clone()].match_indices(pattern) {
                    let start = range.start + i;
                    if start > at {
                        next.push(Fragment::Text(at..start));
                    }
                    next.push(Fragment::Token(id));
                    at = start + pattern.len();
                }
                if at < range.end {
                    next.push(Fragment::Text(at..range.end));
                }
            }
            fragments = next;
        }
        fragments
    }

    /// The text of `ids` as `llama_detokenize(remove_special = true, unparse_special = false)`
    /// writes it: control and unknown tokens left out, `▁` as a space, byte tokens joined into
    /// UTF-8 (an incomplete or invalid sequence becomes U+FFFD), and with `add_space_prefix` the
    /// leading space of the first token dropped (not after a BOS the vocabulary adds itself).
    ///
    /// Decoding a window of tokens that starts where an earlier window started gives that
    /// window's text followed by the new text, which is what streaming relies on.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut ids = ids;
        let mut strip_space = self.add_space_prefix;
        if self.add_bos() && ids.first().copied() == self.bos {
            ids = &ids[1..];
            strip_space = false;
        }
        if self.add_eos() && ids.last().copied() == self.eos {
            ids = &ids[..ids.len() - 1];
        }
        let mut out = Vec::with_capacity(ids.len() * 4);
        for (i, &id) in ids.iter().enumerate() {
            let start = out.len();
            self.piece(id, &mut out);
            if i == 0 && strip_space && out.get(start) == Some(&b' ') {
                out.remove(start);
            }
        }
        match String::from_utf8(out) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    /// The bytes token `id` stands for in decoded text (nothing for control, unknown and unused
    /// tokens, and for ids past the vocabulary).
    fn piece(&self, id: u32, out: &mut Vec<u8>) {
        let (Some(text), Some(&a)) = (self.tokens.get(id as usize), self.attrs.get(id as usize))
        else {
            return;
        };
        if a & (attr::CONTROL | attr::UNKNOWN) != 0 {
            return;
        }
        if a & attr::USER_DEFINED != 0 {
            out.extend_from_slice(text.as_bytes());
        } else if a & attr::NORMAL != 0 {
            match self.model {
                Model::Spm => {
                    for c in text.chars() {
                        let c = if c == '▁' { ' ' } else { c };
                        out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                    }
                }
                Model::Bpe { .. } => bpe::token_bytes(text, out),
            }
        } else if a & attr::BYTE != 0 {
            if let Some(b) = text.get(3..5).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
            }
        }
    }
}

#[cfg(test)]
mod reference_tests;
#[cfg(test)]
mod tests;
