//! The decode loop: prompt pass, then one token per step until EOS, a stop string, the token
//! budget, the context end, or the client going away.

use super::sampling::{Sampler, SamplingParams};
use super::{CausalLm, ModelError, TextCodec};

#[derive(Debug, Clone, PartialEq)]
pub struct GenParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// `max_tokens` or the context end.
    Length,
    /// A stop string.
    Stop,
    /// The model's end-of-sequence token.
    Eos,
    /// The client went away.
    Cancelled,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<u32>,
    pub finish_reason: FinishReason,
    /// Seconds from the start to the first generated token.
    pub time_to_first_token: f64,
    /// Seconds the whole generation took.
    pub duration: f64,
}

/// One generation in progress: the sampler, the tokens so far and the checks that end it.
/// The caller runs the model; [`Sequence::accept`] takes each step's logits.
pub struct Sequence {
    started: std::time::Instant,
    prompt_len: usize,
    budget: usize,
    sampler: Sampler,
    tokens: Vec<u32>,
    stop: Vec<String>,
    longest_stop: usize,
    checked_up_to: usize,
    ttft: f64,
    /// The text cut before a stop string, once one appeared.
    stopped_text: Option<String>,
}

/// What a sequence needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Run this token at position [`Sequence::position`] and hand back its logits.
    Feed(u32),
    Done(FinishReason),
}

impl Sequence {
    pub fn new(prompt_len: usize, params: &GenParams, context_length: usize) -> Sequence {
        let room = context_length.saturating_sub(prompt_len);
        let budget = params.max_tokens.min(room);
        Sequence {
            started: std::time::Instant::now(),
            prompt_len,
            budget,
            sampler: Sampler::new(params.sampling, params.seed),
            tokens: Vec::with_capacity(budget),
            stop: params.stop.clone(),
            longest_stop: params.stop.iter().map(|s| s.len()).max().unwrap_or(0),
            checked_up_to: 0,
            ttft: 0.0,
            stopped_text: None,
        }
    }

    /// Nothing may be generated (no budget or no room left in the context).
    pub fn is_empty_budget(&self) -> bool {
        self.budget == 0
    }

    /// Where the next fed token goes.
    pub fn position(&self) -> usize {
        self.prompt_len + self.tokens.len() - 1
    }

    pub fn generated(&self) -> usize {
        self.tokens.len()
    }

    /// Take the logits of the last position: choose the next token and check every end.
    pub fn accept(
        &mut self,
        logits: &[f32],
        codec: &TextCodec,
        eos: &[u32],
    ) -> Result<Next, ModelError> {
        let next = self.sampler.sample(logits);
        if self.tokens.is_empty() {
            self.ttft = self.started.elapsed().as_secs_f64();
        }
        if eos.contains(&next) {
            return Ok(Next::Done(FinishReason::Eos));
        }
        self.tokens.push(next);
        if self.longest_stop > 0 {
            let text = codec.decode(&self.tokens)?;
            // Only the new tail can hold a stop string that was not there before.
            let from =
                floor_char_boundary(&text, self.checked_up_to.saturating_sub(self.longest_stop));
            if let Some(cut) = self
                .stop
                .iter()
                .filter_map(|s| text[from..].find(s.as_str()).map(|i| from + i))
                .min()
            {
                self.stopped_text = Some(text[..cut].to_string());
                return Ok(Next::Done(FinishReason::Stop));
            }
            self.checked_up_to = text.len();
        }
        if self.tokens.len() >= self.budget {
            return Ok(Next::Done(FinishReason::Length));
        }
        Ok(Next::Feed(next))
    }

    pub fn finish(self, reason: FinishReason, codec: &TextCodec) -> Result<Generation, ModelError> {
        let text = match self.stopped_text {
            Some(t) => t,
            None => codec.decode(&self.tokens)?,
        };
        Ok(Generation {
            text,
            tokens: self.tokens,
            finish_reason: reason,
            time_to_first_token: self.ttft,
            duration: self.started.elapsed().as_secs_f64(),
        })
    }
}

/// Generate from `prompt` in slot 0 of `lm`. `cancelled` is polled between steps.
pub fn generate(
    lm: &mut dyn CausalLm,
    codec: &TextCodec,
    eos: &[u32],
    prompt: &[u32],
    params: &GenParams,
    cancelled: &dyn Fn() -> bool,
) -> Result<Generation, ModelError> {
    if prompt.is_empty() {
        return Err(ModelError::Inference("empty prompt".into()));
    }
    let mut seq = Sequence::new(prompt.len(), params, lm.context_length());
    if seq.is_empty_budget() {
        return seq.finish(FinishReason::Length, codec);
    }
    let mut logits = lm.forward(prompt, 0)?;
    loop {
        match seq.accept(&logits, codec, eos)? {
            Next::Done(reason) => return seq.finish(reason, codec),
            Next::Feed(token) => {
                if cancelled() {
                    return seq.finish(FinishReason::Cancelled, codec);
                }
                logits = lm.forward(&[token], seq.position())?;
            }
        }
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::Chunk;

    /// A tiny deterministic LM: after token t it always predicts (t + 1) % vocab.
    struct Counter {
        vocab: usize,
        ctx: usize,
        calls: Vec<(Vec<u32>, usize)>,
    }

    impl CausalLm for Counter {
        fn step(&mut self, chunks: &[Chunk<'_>]) -> Result<Vec<Vec<f32>>, ModelError> {
            let mut out = vec![];
            for c in chunks {
                self.calls.push((c.tokens.to_vec(), c.start));
                let last = *c.tokens.last().unwrap() as usize;
                let mut l = vec![0.0; self.vocab];
                l[(last + 1) % self.vocab] = 10.0;
                out.push(l);
            }
            Ok(out)
        }
        fn context_length(&self) -> usize {
            self.ctx
        }
    }

    fn codec() -> TextCodec {
        let vocab: serde_json::Map<String, serde_json::Value> = ["a", "b", "c", "d", "e"]
            .iter()
            .enumerate()
            .map(|(i, w)| (w.to_string(), serde_json::json!(i)))
            .collect();
        let json = serde_json::json!({
            "version": "1.0",
            "pre_tokenizer": {"type": "Whitespace"},
            "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "a"}
        });
        let t = tokenizers::Tokenizer::from_bytes(serde_json::to_vec(&json).unwrap()).unwrap();
        TextCodec::new(t, false, 16).unwrap()
    }

    fn params(max_tokens: usize, stop: &[&str]) -> GenParams {
        GenParams {
            max_tokens,
            sampling: SamplingParams {
                temperature: 0.0,
                top_k: 0,
                top_p: 1.0,
            },
            stop: stop.iter().map(|s| s.to_string()).collect(),
            seed: 0,
        }
    }

    #[test]
    fn runs_prompt_once_then_one_token_per_step() {
        let mut lm = Counter {
            vocab: 5,
            ctx: 64,
            calls: vec![],
        };
        let g = generate(&mut lm, &codec(), &[], &[0], &params(3, &[]), &|| false).unwrap();
        assert_eq!(g.tokens, vec![1, 2, 3]);
        assert_eq!(g.finish_reason, FinishReason::Length);
        assert_eq!(lm.calls, vec![(vec![0], 0), (vec![1], 1), (vec![2], 2)]);
    }

    #[test]
    fn eos_ends_and_is_not_returned() {
        let mut lm = Counter {
            vocab: 5,
            ctx: 64,
            calls: vec![],
        };
        let g = generate(&mut lm, &codec(), &[3], &[0], &params(10, &[]), &|| false).unwrap();
        assert_eq!(g.tokens, vec![1, 2]);
        assert_eq!(g.finish_reason, FinishReason::Eos);
    }

    #[test]
    fn stop_string_cuts_the_text() {
        let mut lm = Counter {
            vocab: 5,
            ctx: 64,
            calls: vec![],
        };
        let g = generate(&mut lm, &codec(), &[], &[0], &params(10, &["d"]), &|| false).unwrap();
        assert_eq!(g.finish_reason, FinishReason::Stop);
        assert!(!g.text.contains('d'), "{}", g.text);
        assert!(g.text.contains('c'), "{}", g.text);
    }

    #[test]
    fn context_end_bounds_the_budget_and_cancel_stops() {
        let mut lm = Counter {
            vocab: 5,
            ctx: 3,
            calls: vec![],
        };
        let g = generate(&mut lm, &codec(), &[], &[0, 1], &params(10, &[]), &|| false).unwrap();
        assert_eq!(g.tokens.len(), 1);
        let mut lm = Counter {
            vocab: 5,
            ctx: 64,
            calls: vec![],
        };
        let g = generate(&mut lm, &codec(), &[], &[0], &params(10, &[]), &|| true).unwrap();
        assert_eq!(g.finish_reason, FinishReason::Cancelled);
        assert_eq!(g.tokens.len(), 1);
    }
}
