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

/// Generate from `prompt`. `cancelled` is polled between steps.
pub fn generate(
    lm: &mut dyn CausalLm,
    codec: &TextCodec,
    eos: &[u32],
    prompt: &[u32],
    params: &GenParams,
    cancelled: &dyn Fn() -> bool,
) -> Result<Generation, ModelError> {
    let started = std::time::Instant::now();
    if prompt.is_empty() {
        return Err(ModelError::Inference("empty prompt".into()));
    }
    let room = lm.context_length().saturating_sub(prompt.len());
    let budget = params.max_tokens.min(room);
    let mut sampler = Sampler::new(params.sampling, params.seed);
    let mut tokens: Vec<u32> = Vec::with_capacity(budget);
    let longest_stop = params.stop.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut checked_up_to = 0usize;
    let mut ttft = 0.0;

    if budget == 0 {
        return Ok(Generation {
            text: String::new(),
            tokens,
            finish_reason: FinishReason::Length,
            time_to_first_token: 0.0,
            duration: started.elapsed().as_secs_f64(),
        });
    }
    let mut logits = lm.forward(prompt, 0)?;
    let finish = loop {
        let next = sampler.sample(&logits);
        if tokens.is_empty() {
            ttft = started.elapsed().as_secs_f64();
        }
        if eos.contains(&next) {
            break FinishReason::Eos;
        }
        tokens.push(next);
        if longest_stop > 0 {
            let text = codec.decode(&tokens)?;
            // Only the new tail can hold a stop string that was not there before.
            let from = floor_char_boundary(&text, checked_up_to.saturating_sub(longest_stop));
            if let Some(cut) = params
                .stop
                .iter()
                .filter_map(|s| text[from..].find(s.as_str()).map(|i| from + i))
                .min()
            {
                return Ok(Generation {
                    text: text[..cut].to_string(),
                    tokens,
                    finish_reason: FinishReason::Stop,
                    time_to_first_token: ttft,
                    duration: started.elapsed().as_secs_f64(),
                });
            }
            checked_up_to = text.len();
        }
        if tokens.len() >= budget {
            break FinishReason::Length;
        }
        if cancelled() {
            break FinishReason::Cancelled;
        }
        logits = lm.forward(&[next], prompt.len() + tokens.len() - 1)?;
    };
    Ok(Generation {
        text: codec.decode(&tokens)?,
        tokens,
        finish_reason: finish,
        time_to_first_token: ttft,
        duration: started.elapsed().as_secs_f64(),
    })
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

    /// A tiny deterministic LM: after token t it always predicts (t + 1) % vocab.
    struct Counter {
        vocab: usize,
        ctx: usize,
        calls: Vec<(Vec<u32>, usize)>,
    }

    impl CausalLm for Counter {
        fn forward(&mut self, tokens: &[u32], start: usize) -> Result<Vec<f32>, ModelError> {
            self.calls.push((tokens.to_vec(), start));
            let last = *tokens.last().unwrap() as usize;
            let mut l = vec![0.0; self.vocab];
            l[(last + 1) % self.vocab] = 10.0;
            Ok(l)
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
