//! Tokenization and chat templates: the parts of a model the HTTP side needs before queueing.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;
use utoipa::ToSchema;

use super::gguf_tokenizer::GgufVocab;
use super::ModelError;

/// Why an input could not be encoded.
#[derive(Debug, Clone, PartialEq)]
pub enum EncodeError {
    /// More tokens than the model takes, and truncation was not asked for.
    TooLong {
        tokens: usize,
        limit: usize,
    },
    /// More bytes than `max_input_length` tokens can stand for; refused before tokenizing.
    TooManyBytes {
        bytes: usize,
        limit: usize,
    },
    Tokenizer(String),
}

/// A generous bound on the bytes one token stands for. Inputs longer than `max_input_length`
/// times this are refused (or, with truncation, cut) before the tokenizer sees them, so an
/// oversized input costs a length check, not seconds of tokenization.
pub const MAX_BYTES_PER_TOKEN: usize = 64;

/// A tokenizer with the model's input limit: a Hugging Face tokenizer (tokenizer.json), or a
/// vocabulary read from a GGUF's metadata and tokenized as llama.cpp does.
///
/// The tokenizer files' own truncation and padding are switched off: anya enforces
/// `max_input_length` itself (an error by default, truncation on request) and pads per batch.
pub struct TextCodec {
    backend: Backend,
    add_special_tokens: bool,
    max_input_length: usize,
}

enum Backend {
    Hf {
        tokenizer: Box<Tokenizer>,
        /// The same tokenizer truncating at `max_input_length`, for `truncate: true`.
        truncating: Box<Tokenizer>,
    },
    /// Encoded as llama.cpp's `llama_tokenize` with special tokens parsed (as llama-server
    /// tokenizes prompts), decoded as its detokenizer writes text.
    Gguf(Box<GgufVocab>),
}

impl std::fmt::Debug for TextCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextCodec")
            .field("vocab_size", &self.vocab_size())
            .field("max_input_length", &self.max_input_length)
            .finish()
    }
}

impl TextCodec {
    pub fn from_file(
        path: &Path,
        add_special_tokens: bool,
        max_input_length: usize,
    ) -> Result<Self, ModelError> {
        let tokenizer = Tokenizer::from_file(path)
            .map_err(|e| ModelError::Load(format!("tokenizer {}: {e}", path.display())))?;
        Self::new(tokenizer, add_special_tokens, max_input_length)
    }

    pub fn new(
        mut tokenizer: Tokenizer,
        add_special_tokens: bool,
        max_input_length: usize,
    ) -> Result<Self, ModelError> {
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| ModelError::Load(e.to_string()))?;
        let mut truncating = tokenizer.clone();
        truncating
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: max_input_length,
                ..Default::default()
            }))
            .map_err(|e| ModelError::Load(e.to_string()))?;
        Ok(Self {
            backend: Backend::Hf {
                tokenizer: Box::new(tokenizer),
                truncating: Box::new(truncating),
            },
            add_special_tokens,
            max_input_length,
        })
    }

    /// A GGUF vocabulary's tokenizer: BOS and EOS added as its metadata says, special tokens
    /// in the text parsed.
    pub fn from_gguf(vocab: GgufVocab, max_input_length: usize) -> Self {
        Self {
            backend: Backend::Gguf(Box::new(vocab)),
            add_special_tokens: true,
            max_input_length,
        }
    }

    /// The GGUF vocabulary this codec tokenizes with, if it is one.
    pub fn gguf_vocab(&self) -> Option<&GgufVocab> {
        match &self.backend {
            Backend::Gguf(v) => Some(v),
            Backend::Hf { .. } => None,
        }
    }

    /// Token ids run from 0 to this (special tokens included).
    pub fn vocab_size(&self) -> usize {
        match &self.backend {
            Backend::Hf { tokenizer, .. } => tokenizer.get_vocab_size(true),
            Backend::Gguf(v) => v.len(),
        }
    }

    pub fn max_input_length(&self) -> usize {
        self.max_input_length
    }

    /// Most bytes of text an input may have (`max_input_length` × [`MAX_BYTES_PER_TOKEN`]).
    pub fn max_input_bytes(&self) -> usize {
        self.max_input_length.saturating_mul(MAX_BYTES_PER_TOKEN)
    }

    /// Token ids of `text` (with the model's special tokens), within the input limit.
    pub fn encode(&self, text: &str, truncate: bool) -> Result<Vec<u32>, EncodeError> {
        let cap = self.max_input_bytes();
        if text.len() > cap && !truncate {
            return Err(EncodeError::TooManyBytes {
                bytes: text.len(),
                limit: cap,
            });
        }
        // Truncating an oversized text: a prefix that already holds well over the limit
        // tokenizes to the same first tokens as the whole text (only the last, cut word can
        // differ).
        let prefix = (text.len() > cap).then(|| {
            let mut cut = cap;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            &text[..cut]
        });
        match &self.backend {
            Backend::Hf {
                tokenizer,
                truncating,
            } => {
                if let Some(prefix) = prefix {
                    let plain = tokenizer
                        .encode(prefix, false)
                        .map_err(|e| EncodeError::Tokenizer(e.to_string()))?;
                    if plain.len() > self.max_input_length + 8 {
                        return self.encode_with(truncating, prefix);
                    }
                }
                let tok = if truncate { truncating } else { tokenizer };
                self.encode_with(tok, text)
            }
            Backend::Gguf(vocab) => {
                let encode = |t: &str| vocab.encode(t, self.add_special_tokens, true);
                if let Some(prefix) = prefix {
                    let ids = encode(prefix);
                    if ids.len() > self.max_input_length + 8 {
                        return Ok(self.cut(vocab, ids));
                    }
                }
                let ids = encode(text);
                match ids.len() > self.max_input_length {
                    false => Ok(ids),
                    true if truncate => Ok(self.cut(vocab, ids)),
                    true => Err(EncodeError::TooLong {
                        tokens: ids.len(),
                        limit: self.max_input_length,
                    }),
                }
            }
        }
    }

    /// The first `max_input_length` ids, ending with the EOS the vocabulary adds (if it does).
    fn cut(&self, vocab: &GgufVocab, mut ids: Vec<u32>) -> Vec<u32> {
        let eos = match self.add_special_tokens && vocab.add_eos() {
            true => ids.last().copied(),
            false => None,
        };
        ids.truncate(self.max_input_length);
        if let (Some(eos), Some(last)) = (eos, ids.last_mut()) {
            *last = eos;
        }
        ids
    }

    fn encode_with(&self, tok: &Tokenizer, text: &str) -> Result<Vec<u32>, EncodeError> {
        let enc = tok
            .encode(text, self.add_special_tokens)
            .map_err(|e| EncodeError::Tokenizer(e.to_string()))?;
        let ids = enc.get_ids().to_vec();
        if ids.len() > self.max_input_length {
            return Err(EncodeError::TooLong {
                tokens: ids.len(),
                limit: self.max_input_length,
            });
        }
        Ok(ids)
    }

    /// Text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        match &self.backend {
            Backend::Hf { tokenizer, .. } => tokenizer
                .decode(ids, true)
                .map_err(|e| ModelError::Tokenizer(e.to_string())),
            Backend::Gguf(vocab) => Ok(vocab.decode(ids)),
        }
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        match &self.backend {
            Backend::Hf { tokenizer, .. } => tokenizer.token_to_id(token),
            Backend::Gguf(vocab) => vocab.token_id(token),
        }
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        match &self.backend {
            Backend::Hf { tokenizer, .. } => tokenizer.id_to_token(id),
            Backend::Gguf(vocab) => vocab.token_text(id).map(str::to_string),
        }
    }
}

/// One message of a chat conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

/// A model's Jinja chat template (from the GGUF's `tokenizer.chat_template`).
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// Drop a leading BOS / trailing EOS from the rendered prompt, for a tokenizer that adds
    /// them itself (as llama.cpp's server does).
    strip_bos: bool,
    strip_eos: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, ModelError> {
        let mut env = minijinja::Environment::new();
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| ModelError::Load(format!("chat template: {e}")))?;
        Ok(Self {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            strip_bos: false,
            strip_eos: false,
        })
    }

    /// Rendered prompts lose a leading BOS (`bos`) and a trailing EOS (`eos`): the tokenizer
    /// adds those itself.
    pub fn without_added_tokens(mut self, bos: bool, eos: bool) -> Self {
        self.strip_bos = bos;
        self.strip_eos = eos;
        self
    }

    /// The prompt for `messages`, ending with the assistant's turn opened.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, String> {
        let tmpl = self.env.get_template("chat").map_err(|e| e.to_string())?;
        let mut out = tmpl
            .render(minijinja::context! {
                messages => minijinja::Value::from(minijinja::value::Serde(messages)),
                add_generation_prompt => true,
                bos_token => self.bos_token.as_str(),
                eos_token => self.eos_token.as_str(),
            })
            .map_err(|e| e.to_string())?;
        if self.strip_bos && out.starts_with(&self.bos_token) {
            out.drain(..self.bos_token.len());
        }
        if self.strip_eos && out.ends_with(&self.eos_token) {
            out.truncate(out.len() - self.eos_token.len());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are helpful<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn chatml_renders_with_default_system_prompt() {
        let t = ChatTemplate::new(CHATML, "<|im_start|>", "<|im_end|>").unwrap();
        let out = t
            .render(&[ChatMessage {
                role: "user".into(),
                content: "Hi".into(),
            }])
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are helpful<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn tokens_the_tokenizer_adds_are_not_rendered_twice() {
        let source =
            "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}{{ eos_token }}";
        let msgs = [ChatMessage {
            role: "user".into(),
            content: "Hi".into(),
        }];
        let t = ChatTemplate::new(source, "<bos>", "<eos>").unwrap();
        assert_eq!(t.render(&msgs).unwrap(), "<bos>Hi<eos>");
        let t = t.without_added_tokens(true, false);
        assert_eq!(t.render(&msgs).unwrap(), "Hi<eos>");
        let t = t.without_added_tokens(true, true);
        assert_eq!(t.render(&msgs).unwrap(), "Hi");
    }

    #[test]
    fn template_errors_are_reported_not_panics() {
        let t = ChatTemplate::new("{{ raise_exception('no') }}", "", "").unwrap();
        assert!(t.render(&[]).is_err());
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
    }

    fn word_level() -> Tokenizer {
        let json = serde_json::json!({
            "version": "1.0",
            "added_tokens": [],
            "pre_tokenizer": {"type": "Whitespace"},
            "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "a": 1, "b": 2}, "unk_token": "[UNK]"}
        });
        Tokenizer::from_bytes(serde_json::to_vec(&json).unwrap()).unwrap()
    }

    #[test]
    fn limit_is_enforced_or_truncated() {
        let c = TextCodec::new(word_level(), false, 3).unwrap();
        assert_eq!(c.encode("a b a", false).unwrap(), vec![1, 2, 1]);
        assert_eq!(
            c.encode("a b a b", false),
            Err(EncodeError::TooLong {
                tokens: 4,
                limit: 3
            })
        );
        assert_eq!(c.encode("a b a b", true).unwrap(), vec![1, 2, 1]);
    }
}
