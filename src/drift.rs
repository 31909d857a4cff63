//! Drift detection, bounded in memory: per model version, a reference window (the first
//! `window` requests' inputs after load) and a sliding current window (the latest `window`),
//! and the scores between them:
//!
//! - `token_length_psi`: the population stability index of input lengths over fixed bins;
//!   `unknown_share_rise`: the current share of unknown tokens minus the reference's;
//! - `centroid_cosine`, `centroid_euclidean`: distance between the windows' mean embeddings;
//! - `mmd2`: squared maximum mean discrepancy with an RBF kernel, bandwidth by the median
//!   heuristic, on at most `MAX_MMD_SAMPLES` vectors of each window;
//! - `label_psi`, `label_js`: the predicted-label distribution (classifiers), PSI and
//!   Jensen–Shannon divergence; `mean_confidence_drop`: the reference's mean top score minus
//!   the current one.
//!
//! The formulas are plain functions, checked against `scripts/reference/drift.py`
//! (numpy/scipy). No Prometheus or tokio types here.

use std::collections::{BTreeMap, VecDeque};

/// Upper edges of the token-length bins (the last bin is everything above).
pub const LENGTH_BINS: [usize; 8] = [4, 8, 16, 32, 64, 128, 256, 512];
/// Most vectors of each window the MMD² uses (the latest ones).
pub const MAX_MMD_SAMPLES: usize = 1000;
/// Empty bins count as this share, so PSI stays finite.
pub const PSI_EPS: f64 = 1e-4;

/// PSI between two histograms (counts over the same bins): Σ (c − r) ln(c / r) over shares,
/// each share at least `PSI_EPS`.
pub fn psi(reference: &[f64], current: &[f64]) -> f64 {
    let (rt, ct) = (reference.iter().sum::<f64>(), current.iter().sum::<f64>());
    if rt <= 0.0 || ct <= 0.0 {
        return 0.0;
    }
    reference
        .iter()
        .zip(current)
        .map(|(&r, &c)| {
            let (r, c) = ((r / rt).max(PSI_EPS), (c / ct).max(PSI_EPS));
            (c - r) * (c / r).ln()
        })
        .sum()
}

/// Jensen–Shannon divergence (natural log, 0 to ln 2) between two histograms.
pub fn js(reference: &[f64], current: &[f64]) -> f64 {
    let (rt, ct) = (reference.iter().sum::<f64>(), current.iter().sum::<f64>());
    if rt <= 0.0 || ct <= 0.0 {
        return 0.0;
    }
    let kl = |p: &[f64], q: &[f64]| -> f64 {
        p.iter()
            .zip(q)
            .filter(|(&a, _)| a > 0.0)
            .map(|(&a, &b)| a * (a / b).ln())
            .sum()
    };
    let p: Vec<f64> = reference.iter().map(|r| r / rt).collect();
    let q: Vec<f64> = current.iter().map(|c| c / ct).collect();
    let m: Vec<f64> = p.iter().zip(&q).map(|(a, b)| 0.5 * (a + b)).collect();
    0.5 * kl(&p, &m) + 0.5 * kl(&q, &m)
}

/// The bin of a token length.
pub fn length_bin(len: usize) -> usize {
    LENGTH_BINS
        .iter()
        .position(|&edge| len <= edge)
        .unwrap_or(LENGTH_BINS.len())
}

/// Histogram of token lengths over `LENGTH_BINS`.
pub fn length_histogram(lengths: impl Iterator<Item = usize>) -> Vec<f64> {
    let mut h = vec![0.0; LENGTH_BINS.len() + 1];
    for l in lengths {
        h[length_bin(l)] += 1.0;
    }
    h
}

fn mean(xs: &[&[f32]]) -> Vec<f64> {
    let dim = xs.first().map_or(0, |x| x.len());
    let mut m = vec![0.0; dim];
    for x in xs {
        for (a, &v) in m.iter_mut().zip(x.iter()) {
            *a += f64::from(v);
        }
    }
    let n = xs.len().max(1) as f64;
    m.iter_mut().for_each(|a| *a /= n);
    m
}

/// Cosine distance (1 − cosine) and euclidean distance between the two sets' means.
pub fn centroid_distances(reference: &[&[f32]], current: &[&[f32]]) -> (f64, f64) {
    let (a, b) = (mean(reference), mean(current));
    let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    let cos = if na > 0.0 && nb > 0.0 {
        dot / (na * nb)
    } else {
        1.0
    };
    let euclid = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt();
    (1.0 - cos, euclid)
}

fn sq_dist(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum()
}

/// The unbiased MMD² estimate between two samples with the kernel exp(−d² / (2σ²)), σ² the
/// median squared distance between distinct points of the pooled sample (the median
/// heuristic). 0 when either sample has fewer than 2 points.
pub fn mmd2_rbf(x: &[&[f32]], y: &[&[f32]]) -> f64 {
    let (m, n) = (x.len(), y.len());
    if m < 2 || n < 2 {
        return 0.0;
    }
    let pooled: Vec<&[f32]> = x.iter().chain(y).copied().collect();
    let mut d2 = Vec::with_capacity(pooled.len() * (pooled.len() - 1) / 2);
    for i in 0..pooled.len() {
        for j in i + 1..pooled.len() {
            d2.push(sq_dist(pooled[i], pooled[j]));
        }
    }
    let mut sorted = d2.clone();
    sorted.sort_by(f64::total_cmp);
    let k = sorted.len();
    let median = if k % 2 == 1 {
        sorted[k / 2]
    } else {
        0.5 * (sorted[k / 2 - 1] + sorted[k / 2])
    };
    if median <= 0.0 {
        return 0.0;
    }
    let gamma = 1.0 / (2.0 * median);
    let total = m + n;
    // d2 holds the pairs (i, j), i < j, of the pooled sample in row order.
    let index = |i: usize, j: usize| i * (2 * total - i - 1) / 2 + (j - i - 1);
    let kern = |i: usize, j: usize| (-gamma * d2[index(i.min(j), i.max(j))]).exp();
    let (mut kxx, mut kyy, mut kxy) = (0.0, 0.0, 0.0);
    for i in 0..m {
        for j in i + 1..m {
            kxx += 2.0 * kern(i, j);
        }
        for j in 0..n {
            kxy += kern(i, m + j);
        }
    }
    for i in 0..n {
        for j in i + 1..n {
            kyy += 2.0 * kern(m + i, m + j);
        }
    }
    let (mf, nf) = (m as f64, n as f64);
    kxx / (mf * (mf - 1.0)) + kyy / (nf * (nf - 1.0)) - 2.0 * kxy / (mf * nf)
}

pub use crate::spec::manifest::DriftConfig;

/// One input as drift sees it.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub tokens: usize,
    /// Of those, the tokenizer's unknown token.
    pub unknown: usize,
    pub vector: Option<Vec<f32>>,
    /// A classifier's top label and its score.
    pub label: Option<(String, f64)>,
    /// A generation's output tokens and why it ended (`length`, `stop`, `eos`, `cancelled`).
    pub output: Option<(usize, &'static str)>,
}

/// One signal's value against its threshold.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Signal {
    pub signal: &'static str,
    pub value: f64,
    pub threshold: f64,
    pub drifted: bool,
}

/// The reference and current windows of one model version.
#[derive(Debug, Clone)]
pub struct DriftWindows {
    pub config: DriftConfig,
    pub reference: Vec<Sample>,
    pub current: VecDeque<Sample>,
}

impl DriftWindows {
    pub fn new(config: DriftConfig) -> Self {
        Self {
            config,
            reference: Vec::new(),
            current: VecDeque::new(),
        }
    }

    /// Add one input: to the reference until it is full, then to the current window.
    pub fn observe(&mut self, sample: Sample) {
        let cap = self.config.window.max(1);
        if self.reference.len() < cap {
            self.reference.push(sample);
            return;
        }
        if self.current.len() == cap {
            self.current.pop_front();
        }
        self.current.push_back(sample);
    }

    /// Replace the reference window (a stored reference set); the current window restarts.
    pub fn set_reference(&mut self, samples: Vec<Sample>) {
        self.reference = samples;
        self.current.clear();
    }

    /// Every signal the windows can give (none until the current window has 2 samples).
    pub fn signals(&self) -> Vec<Signal> {
        let cur: Vec<&Sample> = self.current.iter().collect();
        if cur.len() < 2 || self.reference.len() < 2 {
            return vec![];
        }
        let c = &self.config;
        let mut out = Vec::new();
        let mut push = |signal, value: f64, threshold: f64| {
            out.push(Signal {
                signal,
                value,
                threshold,
                drifted: value >= threshold,
            })
        };
        let rh = length_histogram(self.reference.iter().map(|s| s.tokens));
        let ch = length_histogram(cur.iter().map(|s| s.tokens));
        push("token_length_psi", psi(&rh, &ch), c.psi);
        let unknown = |s: &mut dyn Iterator<Item = &Sample>| {
            let (u, t) = s.fold((0, 0), |(u, t), x| (u + x.unknown, t + x.tokens));
            u as f64 / t.max(1) as f64
        };
        push(
            "unknown_share_rise",
            unknown(&mut cur.iter().copied()) - unknown(&mut self.reference.iter()),
            c.unknown_share,
        );
        let rv: Vec<&[f32]> = self
            .reference
            .iter()
            .filter_map(|s| s.vector.as_deref())
            .collect();
        let cv: Vec<&[f32]> = cur.iter().filter_map(|s| s.vector.as_deref()).collect();
        if rv.len() >= 2 && cv.len() >= 2 {
            let (cos, euclid) = centroid_distances(&rv, &cv);
            push("centroid_cosine", cos, c.centroid_cosine);
            push("centroid_euclidean", euclid, f64::INFINITY);
            let (rl, cl) = (
                &rv[rv.len().saturating_sub(MAX_MMD_SAMPLES)..],
                &cv[cv.len().saturating_sub(MAX_MMD_SAMPLES)..],
            );
            push("mmd2", mmd2_rbf(rl, cl), c.mmd2);
        }
        let labels_of = |s: &[&Sample]| -> BTreeMap<String, f64> {
            let mut m = BTreeMap::new();
            for (l, _) in s.iter().filter_map(|s| s.label.as_ref()) {
                *m.entry(l.clone()).or_insert(0.0) += 1.0;
            }
            m
        };
        let rs: Vec<&Sample> = self.reference.iter().collect();
        let (rl, cl) = (labels_of(&rs), labels_of(&cur));
        if !rl.is_empty() && !cl.is_empty() {
            let names: std::collections::BTreeSet<&String> = rl.keys().chain(cl.keys()).collect();
            let r: Vec<f64> = names
                .iter()
                .map(|n| rl.get(*n).copied().unwrap_or(0.0))
                .collect();
            let q: Vec<f64> = names
                .iter()
                .map(|n| cl.get(*n).copied().unwrap_or(0.0))
                .collect();
            push("label_psi", psi(&r, &q), c.psi);
            push("label_js", js(&r, &q), c.js);
            let conf = |s: &[&Sample]| {
                let v: Vec<f64> = s
                    .iter()
                    .filter_map(|s| s.label.as_ref().map(|l| l.1))
                    .collect();
                v.iter().sum::<f64>() / v.len().max(1) as f64
            };
            push(
                "mean_confidence_drop",
                conf(&rs) - conf(&cur),
                c.confidence_drop,
            );
        }
        let outputs = |s: &mut dyn Iterator<Item = &Sample>| -> Vec<(usize, &'static str)> {
            s.filter_map(|x| x.output).collect()
        };
        let (ro, co) = (
            outputs(&mut self.reference.iter()),
            outputs(&mut cur.iter().copied()),
        );
        if ro.len() >= 2 && co.len() >= 2 {
            let rh = length_histogram(ro.iter().map(|o| o.0));
            let ch = length_histogram(co.iter().map(|o| o.0));
            push("output_length_psi", psi(&rh, &ch), c.psi);
            let mix = |o: &[(usize, &'static str)]| -> Vec<f64> {
                FINISH_REASONS
                    .iter()
                    .map(|r| o.iter().filter(|x| x.1 == *r).count() as f64)
                    .collect()
            };
            push("finish_reason_js", js(&mix(&ro), &mix(&co)), c.js);
        }
        out
    }
}

/// The finish reasons a generation's mix is counted over.
const FINISH_REASONS: [&str; 4] = ["length", "stop", "eos", "cancelled"];

/// A version's drift, as `GET /models/{id}/drift` shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct VersionDrift {
    pub version: String,
    pub reference_size: usize,
    pub current_size: usize,
    pub window: usize,
    /// Any signal at or above its threshold.
    pub drift_detected: bool,
    pub signals: Vec<Signal>,
}

/// The windows of every model version (bounded: `window` samples each, two windows).
#[derive(Debug, Default)]
pub struct DriftStore {
    windows: std::sync::Mutex<BTreeMap<(String, String), DriftWindows>>,
}

impl DriftStore {
    pub fn observe(&self, model: &str, version: &str, config: &DriftConfig, samples: Vec<Sample>) {
        let mut map = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let w = map
            .entry((model.to_string(), version.to_string()))
            .or_insert_with(|| DriftWindows::new(config.clone()));
        for s in samples {
            w.observe(s);
        }
    }

    /// Start a version's windows afresh with this reference set.
    pub fn set_reference(
        &self,
        model: &str,
        version: &str,
        config: &DriftConfig,
        samples: Vec<Sample>,
    ) {
        let mut map = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let w = map
            .entry((model.to_string(), version.to_string()))
            .or_insert_with(|| DriftWindows::new(config.clone()));
        w.set_reference(samples);
    }

    /// Empty a version's windows: the next `window` inputs are its new reference.
    pub fn reset(&self, model: &str, version: &str, config: &DriftConfig) {
        let mut map = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(
            (model.to_string(), version.to_string()),
            DriftWindows::new(config.clone()),
        );
    }

    /// Forget a version (unloaded).
    pub fn remove(&self, model: &str, version: &str) {
        let mut map = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&(model.to_string(), version.to_string()));
    }

    /// Every version of `model` (every model when `None`) with its signals.
    pub fn report(&self, model: Option<&str>) -> Vec<(String, VersionDrift)> {
        let windows: Vec<((String, String), DriftWindows)> = {
            let map = self.windows.lock().unwrap_or_else(|e| e.into_inner());
            map.iter()
                .filter(|((m, _), _)| model.is_none_or(|id| id == m))
                .map(|(k, w)| (k.clone(), w.clone()))
                .collect()
        };
        windows
            .into_iter()
            .map(|((m, version), w)| {
                let signals = w.signals();
                (
                    m,
                    VersionDrift {
                        version,
                        reference_size: w.reference.len(),
                        current_size: w.current.len(),
                        window: w.config.window,
                        drift_detected: signals.iter().any(|s| s.drifted),
                        signals,
                    },
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference() -> serde_json::Value {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/drift_reference.json");
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    }

    fn matrix(v: &serde_json::Value) -> Vec<Vec<f32>> {
        serde_json::from_value(v.clone()).unwrap()
    }

    fn floats(v: &serde_json::Value) -> Vec<f64> {
        serde_json::from_value(v.clone()).unwrap()
    }

    /// The formulas against numpy/scipy (`scripts/reference/drift.py`), within 1e-3.
    #[test]
    fn scores_agree_with_the_numpy_reference() {
        let r = reference();
        for case in r["cases"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let (x, y) = (matrix(&case["x"]), matrix(&case["y"]));
            let xs: Vec<&[f32]> = x.iter().map(Vec::as_slice).collect();
            let ys: Vec<&[f32]> = y.iter().map(Vec::as_slice).collect();
            let close = |what: &str, got: f64, want: &serde_json::Value| {
                let want = want.as_f64().unwrap();
                assert!((got - want).abs() < 1e-3, "{name} {what}: {got} vs {want}");
            };
            close("mmd2", mmd2_rbf(&xs, &ys), &case["mmd2"]);
            let (cos, euclid) = centroid_distances(&xs, &ys);
            close("centroid_cosine", cos, &case["centroid_cosine"]);
            close("centroid_euclidean", euclid, &case["centroid_euclidean"]);
            let (lx, ly): (Vec<usize>, Vec<usize>) = (
                serde_json::from_value(case["lengths_x"].clone()).unwrap(),
                serde_json::from_value(case["lengths_y"].clone()).unwrap(),
            );
            let (hx, hy) = (
                length_histogram(lx.into_iter()),
                length_histogram(ly.into_iter()),
            );
            assert_eq!(hx, floats(&case["hist_x"]), "{name}: bins");
            close("length_psi", psi(&hx, &hy), &case["length_psi"]);
            let (cx, cy) = (floats(&case["labels_x"]), floats(&case["labels_y"]));
            close("label_psi", psi(&cx, &cy), &case["label_psi"]);
            close("label_js", js(&cx, &cy), &case["label_js"]);
        }
    }

    #[test]
    fn unknown_token_share_rise() {
        let mut w = DriftWindows::new(DriftConfig {
            window: 2,
            ..Default::default()
        });
        for (tokens, unknown) in [(10, 0), (10, 1), (10, 3), (10, 2)] {
            w.observe(Sample {
                tokens,
                unknown,
                ..Default::default()
            });
        }
        let s = w.signals();
        let rise = s.iter().find(|s| s.signal == "unknown_share_rise").unwrap();
        assert!((rise.value - (5.0 / 20.0 - 1.0 / 20.0)).abs() < 1e-12);
        assert!(rise.drifted);
    }

    #[test]
    fn identical_samples_score_zero_and_windows_stay_bounded() {
        let v: Vec<Vec<f32>> = (0..10).map(|i| vec![i as f32, 1.0]).collect();
        let s: Vec<&[f32]> = v.iter().map(Vec::as_slice).collect();
        assert!(psi(&[3.0, 4.0], &[3.0, 4.0]).abs() < 1e-12);
        assert!((js(&[1.0, 0.0], &[0.0, 1.0]) - std::f64::consts::LN_2).abs() < 1e-12);
        assert!(centroid_distances(&s, &s).1 < 1e-12);
        let mut w = DriftWindows::new(DriftConfig {
            window: 3,
            ..Default::default()
        });
        assert!(w.signals().is_empty());
        for t in 0..10 {
            w.observe(Sample {
                tokens: t,
                ..Default::default()
            });
        }
        assert_eq!((w.reference.len(), w.current.len()), (3, 3));
        assert_eq!(
            w.current.iter().map(|s| s.tokens).collect::<Vec<_>>(),
            [7, 8, 9]
        );
        let s = w.signals();
        assert_eq!(s[0].signal, "token_length_psi");
        assert_eq!(s[1].signal, "unknown_share_rise");
        assert_eq!(s[1].value, 0.0);
        assert!(
            s[0].drifted,
            "lengths 0..3 vs 7..10 fall in other bins: {s:?}"
        );
    }

    #[test]
    fn generation_output_length_and_finish_mix() {
        let mut w = DriftWindows::new(DriftConfig {
            window: 20,
            ..Default::default()
        });
        let gen = |len: usize, why: &'static str| Sample {
            tokens: 10,
            output: Some((len, why)),
            ..Default::default()
        };
        // Reference: short answers that end at EOS; then the same again: no drift.
        for i in 0..40 {
            w.observe(gen(8 + i % 3, "eos"));
        }
        let s = w.signals();
        let get = |s: &[Signal], name: &str| s.iter().find(|x| x.signal == name).cloned().unwrap();
        assert!(!get(&s, "output_length_psi").drifted, "{s:?}");
        assert!(get(&s, "finish_reason_js").value.abs() < 1e-12);
        // Then long answers cut by max_tokens: both signals cross their thresholds.
        for _ in 0..20 {
            w.observe(gen(200, "length"));
        }
        let s = w.signals();
        assert!(get(&s, "output_length_psi").drifted, "{s:?}");
        let js_value = get(&s, "finish_reason_js");
        assert!(
            js_value.drifted && (js_value.value - std::f64::consts::LN_2).abs() < 1e-9,
            "{s:?}"
        );
    }
}
