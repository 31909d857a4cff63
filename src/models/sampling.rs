//! Next-token choice from logits: greedy at temperature 0, else temperature + top-k + top-p
//! sampling from a seeded generator (the same seed gives the same tokens).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    pub temperature: f64,
    /// 0 keeps every token.
    pub top_k: usize,
    /// 1.0 keeps every token.
    pub top_p: f64,
}

pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Scratch space reused across steps.
    scratch: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams, seed: u64) -> Self {
        Self {
            params,
            rng: StdRng::seed_from_u64(seed),
            scratch: Vec::new(),
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.params.temperature <= 0.0
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.is_greedy() || logits.len() <= 1 {
            return argmax(logits);
        }
        let t = self.params.temperature as f32;
        self.scratch.clear();
        self.scratch
            .extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l / t)));
        // Highest first; NaN logits sink to the end.
        self.scratch
            .sort_unstable_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Less));
        if self.params.top_k > 0 && self.params.top_k < self.scratch.len() {
            self.scratch.truncate(self.params.top_k);
        }
        // Softmax over what is left.
        let max = self.scratch[0].1;
        let mut sum = 0.0f32;
        for e in self.scratch.iter_mut() {
            e.1 = (e.1 - max).exp();
            sum += e.1;
        }
        for e in self.scratch.iter_mut() {
            e.1 /= sum;
        }
        // Nucleus: the smallest prefix whose mass reaches top_p.
        if self.params.top_p < 1.0 {
            let mut cum = 0.0f32;
            let mut keep = self.scratch.len();
            for (i, e) in self.scratch.iter().enumerate() {
                cum += e.1;
                if cum >= self.params.top_p as f32 {
                    keep = i + 1;
                    break;
                }
            }
            self.scratch.truncate(keep.max(1));
        }
        let total: f32 = self.scratch.iter().map(|e| e.1).sum();
        let mut r = self.rng.random::<f32>() * total;
        for e in &self.scratch {
            if r < e.1 {
                return e.0;
            }
            r -= e.1;
        }
        self.scratch.last().map(|e| e.0).unwrap_or(0)
    }
}

/// Index of the largest logit (the first one on ties, as llama.cpp's greedy sampler).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(temperature: f64, top_k: usize, top_p: f64) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
        }
    }

    #[test]
    fn greedy_takes_the_max() {
        let mut s = Sampler::new(p(0.0, 0, 1.0), 1);
        assert_eq!(s.sample(&[0.1, 3.0, 2.9, -1.0]), 1);
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = Sampler::new(p(1.5, 1, 1.0), 7);
        for _ in 0..50 {
            assert_eq!(s.sample(&[0.1, 3.0, 2.9, -1.0]), 1);
        }
    }

    #[test]
    fn top_p_cuts_the_tail() {
        // token 0 holds ~88% of the mass: top_p 0.5 keeps only it.
        let mut s = Sampler::new(p(1.0, 0, 0.5), 3);
        for _ in 0..50 {
            assert_eq!(s.sample(&[4.0, 2.0, 0.0]), 0);
        }
    }

    #[test]
    fn same_seed_same_tokens_and_sampling_spreads() {
        let logits = [1.0, 1.0, 1.0, 1.0];
        let draw = |seed| {
            let mut s = Sampler::new(p(1.0, 0, 1.0), seed);
            (0..64).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        let seen: std::collections::HashSet<u32> = draw(42).into_iter().collect();
        assert!(
            seen.len() > 1,
            "uniform logits must not always give one token"
        );
    }
}
