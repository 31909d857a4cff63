//! The decode loop: prompt pass, then one token per step until EOS, a stop string, the token
//! budget, the context end, or the client going away.

use super::sampling::{Sampler, SamplingParams};
use super::{ModelError, TextCodec};

#[derive(Debug, Clone, PartialEq)]
pub struct GenParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub seed: u64,
    /// Record each generated token's log-probability and this many top alternatives.
    pub logprobs: Option<usize>,
    /// Never end at an end-of-sequence token: as llama.cpp's server does, EOS tokens are
    /// given no chance at all (their logits count as -inf when sampling), so the generation
    /// runs to its budget, a stop string or the context end.
    pub ignore_eos: bool,
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

/// A generated token's log-probability under the model (log-softmax of its logits), with the
/// most likely alternatives at that position.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
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
    /// Per generated token, when asked for (`GenParams::logprobs`).
    pub logprobs: Vec<TokenLogprob>,
    /// Tokens a remote model's provider reported generating (its ids are not known here);
    /// 0 for a local model, whose `tokens` count.
    pub counted_tokens: usize,
}

impl Generation {
    /// Tokens generated: the ids held, or what a provider reported.
    pub fn token_count(&self) -> usize {
        self.tokens.len().max(self.counted_tokens)
    }
}

/// One generation in progress: the sampler, the tokens so far, the text decoded so far
/// (incrementally) and the checks that end it. The caller runs the model;
/// [`Sequence::accept`] takes each step's logits and [`Sequence::take_delta`] hands out the
/// text that can no longer change: never half a UTF-8 character, never the start of what may
/// become a stop string. The deltas concatenated equal the final text, byte for byte.
pub struct Sequence {
    started: std::time::Instant,
    prompt_len: usize,
    budget: usize,
    sampler: Sampler,
    tokens: Vec<u32>,
    stop: Vec<String>,
    longest_stop: usize,
    ttft: f64,
    /// Text of `tokens[..read_offset]`, decoded a window at a time.
    text: String,
    prefix_offset: usize,
    read_offset: usize,
    /// Bytes of `text` searched for stop strings.
    checked_up_to: usize,
    /// Bytes of text handed out by `take_delta`.
    emitted: usize,
    /// Where a stop string begins in `text`, once one appeared.
    stopped_at: Option<usize>,
    logprobs: Option<usize>,
    token_logprobs: Vec<TokenLogprob>,
    /// Logprob entries handed out with deltas.
    logprobs_sent: usize,
    ignore_eos: bool,
    /// The logits with EOS masked, reused across steps (only with `ignore_eos`).
    masked: Vec<f32>,
}

/// What a sequence needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Run this token at position [`Sequence::position`] and hand back its logits.
    Feed(u32),
    Done(FinishReason),
}

/// A piece of streamed text and the log-probabilities of the tokens it came with.
#[derive(Debug, Clone, PartialEq)]
pub struct Delta {
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
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
            ttft: 0.0,
            text: String::new(),
            prefix_offset: 0,
            read_offset: 0,
            checked_up_to: 0,
            emitted: 0,
            stopped_at: None,
            logprobs: params.logprobs,
            token_logprobs: Vec::new(),
            logprobs_sent: 0,
            ignore_eos: params.ignore_eos,
            masked: Vec::new(),
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
        let next = if self.ignore_eos && eos.iter().any(|&e| (e as usize) < logits.len()) {
            self.masked.clear();
            self.masked.extend_from_slice(logits);
            for &e in eos {
                if let Some(l) = self.masked.get_mut(e as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
            self.sampler.sample(&self.masked)
        } else {
            self.sampler.sample(logits)
        };
        if self.tokens.is_empty() {
            self.ttft = self.started.elapsed().as_secs_f64();
        }
        if eos.contains(&next) {
            return Ok(Next::Done(FinishReason::Eos));
        }
        if let Some(top) = self.logprobs {
            self.token_logprobs.push(token_logprob(logits, next, top));
        }
        self.tokens.push(next);
        self.decode_more(codec)?;
        if self.longest_stop > 0 {
            // Only the new tail can hold a stop string that was not there before.
            let from = floor_char_boundary(
                &self.text,
                self.checked_up_to.saturating_sub(self.longest_stop),
            );
            if let Some(cut) = self
                .stop
                .iter()
                .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
                .min()
            {
                self.stopped_at = Some(cut);
                return Ok(Next::Done(FinishReason::Stop));
            }
            self.checked_up_to = self.text.len();
        }
        if self.tokens.len() >= self.budget {
            return Ok(Next::Done(FinishReason::Length));
        }
        Ok(Next::Feed(next))
    }

    /// Decode the tokens past `read_offset`, with the previous window as context, once they
    /// make whole characters.
    fn decode_more(&mut self, codec: &TextCodec) -> Result<(), ModelError> {
        let prefix = codec.decode(&self.tokens[self.prefix_offset..self.read_offset])?;
        let full = codec.decode(&self.tokens[self.prefix_offset..])?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') {
            match full.strip_prefix(prefix.as_str()) {
                Some(new) => self.text.push_str(new),
                // A decoder whose windows do not concatenate: take the whole text again.
                None => self.text = codec.decode(&self.tokens)?,
            }
            self.prefix_offset = self.read_offset;
            self.read_offset = self.tokens.len();
        }
        Ok(())
    }

    /// The text that is final now and was not handed out yet (with the log-probabilities of
    /// the tokens generated since the last delta).
    pub fn take_delta(&mut self) -> Option<Delta> {
        let end = match self.stopped_at {
            Some(cut) => cut,
            None => {
                let hold = self.stop_prefix_held();
                floor_char_boundary(&self.text, self.text.len() - hold)
            }
        };
        if end <= self.emitted && self.logprobs_sent == self.token_logprobs.len() {
            return None;
        }
        let text = self.text[self.emitted.min(end)..end.max(self.emitted)].to_string();
        self.emitted = self.emitted.max(end);
        let logprobs = self.token_logprobs[self.logprobs_sent..].to_vec();
        self.logprobs_sent = self.token_logprobs.len();
        Some(Delta { text, logprobs })
    }

    /// Bytes at the end of the text that could be the start of a stop string.
    fn stop_prefix_held(&self) -> usize {
        let t = self.text.as_bytes();
        self.stop
            .iter()
            .filter_map(|s| {
                let s = s.as_bytes();
                (1..s.len()).rev().find(|&k| t.ends_with(&s[..k]))
            })
            .max()
            .unwrap_or(0)
    }

    /// The finished generation, and the last delta: what the final text adds to what was
    /// handed out (empty when the stream already carried everything).
    pub fn finish_streamed(
        mut self,
        reason: FinishReason,
        codec: &TextCodec,
    ) -> Result<(Generation, Delta), ModelError> {
        let text = match self.stopped_at {
            Some(cut) => self.text[..cut].to_string(),
            None => codec.decode(&self.tokens)?,
        };
        let sent = &self.text[..self.emitted.min(self.text.len())];
        let rest = match text.strip_prefix(sent) {
            Some(rest) => rest.to_string(),
            None => {
                tracing::warn!("streamed text is not a prefix of the final text");
                String::new()
            }
        };
        let last = Delta {
            text: rest,
            logprobs: self.token_logprobs[self.logprobs_sent..].to_vec(),
        };
        let generation = Generation {
            text,
            tokens: std::mem::take(&mut self.tokens),
            finish_reason: reason,
            time_to_first_token: self.ttft,
            duration: self.started.elapsed().as_secs_f64(),
            logprobs: std::mem::take(&mut self.token_logprobs),
            counted_tokens: 0,
        };
        Ok((generation, last))
    }

    pub fn finish(self, reason: FinishReason, codec: &TextCodec) -> Result<Generation, ModelError> {
        self.finish_streamed(reason, codec).map(|(g, _)| g)
    }
}

/// The log-probability of `token` and the `top` most likely tokens (log-softmax of `logits`).
fn token_logprob(logits: &[f32], token: u32, top: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let lse = max + sum.ln() as f32;
    let lp = |i: usize| logits.get(i).map_or(f32::NEG_INFINITY, |&l| l - lse);
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(top + 1);
    if top > 0 {
        for (i, &l) in logits.iter().enumerate() {
            if best.len() < top || l > best[best.len() - 1].1 {
                let at = best.partition_point(|&(_, b)| b >= l);
                best.insert(at, (i as u32, l));
                best.truncate(top);
            }
        }
    }
    TokenLogprob {
        token,
        logprob: lp(token as usize),
        top: best.into_iter().map(|(i, l)| (i, l - lse)).collect(),
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
    use crate::models::{CausalLm, Chunk};

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
            logprobs: None,
            ignore_eos: false,
        }
    }

    /// Drive a sequence by hand as the scheduler does (the prompt in one chunk, then one
    /// token per step), collecting every delta and the final one. `cancel` is polled before
    /// each step.
    fn drive(
        lm: &mut Counter,
        codec: &TextCodec,
        eos: &[u32],
        prompt: &[u32],
        p: &GenParams,
        cancel: &dyn Fn() -> bool,
    ) -> (Generation, Vec<String>) {
        let mut seq = Sequence::new(prompt.len(), p, lm.context_length());
        let mut deltas = Vec::new();
        if seq.is_empty_budget() {
            let (g, last) = seq.finish_streamed(FinishReason::Length, codec).unwrap();
            deltas.push(last.text);
            return (g, deltas);
        }
        let mut logits = lm.forward(prompt, 0).unwrap();
        loop {
            let next = seq.accept(&logits, codec, eos).unwrap();
            if let Some(d) = seq.take_delta() {
                deltas.push(d.text);
            }
            let reason = match next {
                Next::Feed(_) if cancel() => FinishReason::Cancelled,
                Next::Feed(t) => {
                    logits = lm.forward(&[t], seq.position()).unwrap();
                    continue;
                }
                Next::Done(reason) => reason,
            };
            let (g, last) = seq.finish_streamed(reason, codec).unwrap();
            deltas.push(last.text);
            return (g, deltas);
        }
    }

    fn counter(vocab: usize, ctx: usize) -> Counter {
        Counter {
            vocab,
            ctx,
            calls: vec![],
        }
    }

    fn stream(
        codec: &TextCodec,
        vocab: usize,
        first: u32,
        p: &GenParams,
    ) -> (Generation, Vec<String>) {
        drive(&mut counter(vocab, 64), codec, &[], &[first], p, &|| false)
    }

    #[test]
    fn deltas_hold_back_a_possible_stop_string_and_add_up_to_the_text() {
        let (g, deltas) = stream(&codec(), 5, 0, &params(10, &["c d"]));
        assert_eq!(g.finish_reason, FinishReason::Stop);
        assert_eq!(deltas.concat(), g.text);
        assert!(deltas.iter().all(|d| !d.contains('c')), "{deltas:?}");
        let (g, deltas) = stream(&codec(), 5, 0, &params(4, &[]));
        assert_eq!(deltas.concat(), g.text);
        assert!(deltas.len() >= 4, "one delta per token: {deltas:?}");
    }

    #[test]
    fn deltas_never_split_a_utf8_character() {
        // Byte-level BPE: "é" is two tokens (its two bytes); alone, the first decodes to U+FFFD.
        let json = serde_json::json!({
            "version": "1.0",
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "vocab": {"\u{00c3}": 0, "\u{00a9}": 1, "a": 2}, "merges": []}
        });
        let t = tokenizers::Tokenizer::from_bytes(serde_json::to_vec(&json).unwrap()).unwrap();
        let codec = TextCodec::new(t, false, 16).unwrap();
        let (g, deltas) = stream(&codec, 3, 2, &params(7, &[]));
        assert!(g.text.starts_with("éa"), "{:?}", g.text);
        // Only the final text may end in a cut character (the budget ended inside one).
        let (last, before) = deltas.split_last().unwrap();
        assert!(before.iter().all(|d| !d.contains('\u{FFFD}')), "{deltas:?}");
        assert_eq!(last, "\u{FFFD}");
        assert_eq!(deltas.concat(), g.text);
    }

    #[test]
    fn logprobs_are_log_softmax_with_sorted_alternatives() {
        let lp = token_logprob(&[0.0, 2.0, 1.0], 1, 2);
        let lse = (1f32 + 2f32.exp() + 1f32.exp()).ln();
        assert!((lp.logprob - (2.0 - lse)).abs() < 1e-5);
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
        assert!(lp.top[0].1 >= lp.top[1].1);
    }

    #[test]
    fn runs_prompt_once_then_one_token_per_step() {
        let mut lm = counter(5, 64);
        let (g, _) = drive(&mut lm, &codec(), &[], &[0], &params(3, &[]), &|| false);
        assert_eq!(g.tokens, vec![1, 2, 3]);
        assert_eq!(g.finish_reason, FinishReason::Length);
        assert_eq!(lm.calls, vec![(vec![0], 0), (vec![1], 1), (vec![2], 2)]);
    }

    #[test]
    fn eos_ends_and_is_not_returned() {
        let (g, _) = drive(
            &mut counter(5, 64),
            &codec(),
            &[3],
            &[0],
            &params(10, &[]),
            &|| false,
        );
        assert_eq!(g.tokens, vec![1, 2]);
        assert_eq!(g.finish_reason, FinishReason::Eos);
    }

    #[test]
    fn ignore_eos_masks_eos_and_runs_to_the_budget() {
        let p = GenParams {
            ignore_eos: true,
            ..params(7, &[])
        };
        let (g, _) = drive(&mut counter(5, 64), &codec(), &[3], &[0], &p, &|| false);
        // 3 (EOS) is never chosen: after 2 the best remaining logit is token 0's.
        assert_eq!(g.tokens, vec![1, 2, 0, 1, 2, 0, 1]);
        assert_eq!(g.finish_reason, FinishReason::Length);
    }

    #[test]
    fn stop_string_cuts_the_text() {
        let (g, _) = drive(
            &mut counter(5, 64),
            &codec(),
            &[],
            &[0],
            &params(10, &["d"]),
            &|| false,
        );
        assert_eq!(g.finish_reason, FinishReason::Stop);
        assert!(!g.text.contains('d'), "{}", g.text);
        assert!(g.text.contains('c'), "{}", g.text);
    }

    #[test]
    fn context_end_bounds_the_budget_and_cancel_stops() {
        let (g, _) = drive(
            &mut counter(5, 3),
            &codec(),
            &[],
            &[0, 1],
            &params(10, &[]),
            &|| false,
        );
        assert_eq!(g.tokens.len(), 1);
        let (g, _) = drive(
            &mut counter(5, 64),
            &codec(),
            &[],
            &[0],
            &params(10, &[]),
            &|| true,
        );
        assert_eq!(g.finish_reason, FinishReason::Cancelled);
        assert_eq!(g.tokens.len(), 1);
    }
}
