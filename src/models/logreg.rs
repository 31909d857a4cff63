//! Multinomial logistic regression fitted with L-BFGS, for classification heads on embeddings.
//!
//! The objective is scikit-learn's `LogisticRegression(C=c)` (multinomial, L2 on the weights,
//! the intercepts unpenalised), divided by `c · n` so its scale does not depend on the data
//! size: `(1/n) Σᵢ −log softmax(W xᵢ + b)[yᵢ] + ‖W‖² / (2 c n)`. It is strictly convex in `W`,
//! so any converged solver lands on the same probabilities as scikit-learn's.

/// A fitted head: `weights` row-major `[classes, dim]`.
#[derive(Debug, Clone)]
pub struct LogReg {
    pub classes: usize,
    pub dim: usize,
    pub weights: Vec<f64>,
    pub bias: Vec<f64>,
    /// L-BFGS iterations taken.
    pub iterations: usize,
    /// The objective at the end.
    pub loss: f64,
}

impl LogReg {
    /// Class probabilities of one vector.
    pub fn predict_proba(&self, x: &[f32]) -> Vec<f64> {
        let z = logits(&self.weights, &self.bias, self.dim, x);
        softmax(&z)
    }
}

fn logits(w: &[f64], b: &[f64], dim: usize, x: &[f32]) -> Vec<f64> {
    w.chunks_exact(dim)
        .zip(b)
        .map(|(row, b)| {
            b + row
                .iter()
                .zip(x)
                .map(|(w, &x)| w * f64::from(x))
                .sum::<f64>()
        })
        .collect()
}

fn softmax(z: &[f64]) -> Vec<f64> {
    let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|v| (v - max).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

/// The objective and its gradient at `theta` (`W` then `b`).
fn objective(theta: &[f64], x: &[Vec<f32>], y: &[usize], k: usize, c: f64) -> (f64, Vec<f64>) {
    let dim = x.first().map_or(0, Vec::len);
    let (w, b) = theta.split_at(k * dim);
    let n = x.len() as f64;
    let mut grad = vec![0.0; theta.len()];
    let mut loss = 0.0;
    for (xi, &yi) in x.iter().zip(y) {
        let z = logits(w, b, dim, xi);
        let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
        loss += lse - z[yi];
        for (j, zj) in z.iter().enumerate() {
            let g = (zj - lse).exp() - if j == yi { 1.0 } else { 0.0 };
            let row = &mut grad[j * dim..(j + 1) * dim];
            for (gr, &xv) in row.iter_mut().zip(xi) {
                *gr += g * f64::from(xv);
            }
            grad[k * dim + j] += g;
        }
    }
    let reg = 1.0 / (c * n);
    let mut f = loss / n;
    for (i, g) in grad.iter_mut().enumerate() {
        *g /= n;
        if i < k * dim {
            *g += reg * theta[i];
            f += 0.5 * reg * theta[i] * theta[i];
        }
    }
    (f, grad)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Fit on `x` (one vector per example, all of one length) with labels `y` in `0..classes`;
/// `c` is scikit-learn's `C` (inverse regularisation strength). Stops when the largest
/// gradient component is below `tol` or after `max_iter` iterations. `progress` hears the
/// iteration count.
pub fn fit(
    x: &[Vec<f32>],
    y: &[usize],
    classes: usize,
    c: f64,
    tol: f64,
    max_iter: usize,
    mut progress: impl FnMut(usize),
) -> LogReg {
    let dim = x.first().map_or(0, Vec::len);
    let size = classes * (dim + 1);
    let mut theta = vec![0.0; size];
    let (mut f, mut g) = objective(&theta, x, y, classes, c);
    let memory = 10;
    let mut history: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)> = Default::default();
    let mut iterations = 0;
    while iterations < max_iter {
        if g.iter().fold(0.0f64, |m, v| m.max(v.abs())) < tol {
            break;
        }
        iterations += 1;
        progress(iterations);
        // Two-loop recursion: d = -H g.
        let mut q = g.clone();
        let mut alphas = Vec::with_capacity(history.len());
        for (s, yv, rho) in history.iter().rev() {
            let a = rho * dot(s, &q);
            q.iter_mut().zip(yv).for_each(|(qi, yi)| *qi -= a * yi);
            alphas.push(a);
        }
        if let Some((s, yv, _)) = history.back() {
            let gamma = dot(s, yv) / dot(yv, yv);
            q.iter_mut().for_each(|v| *v *= gamma);
        }
        for ((s, yv, rho), a) in history.iter().zip(alphas.into_iter().rev()) {
            let beta = rho * dot(yv, &q);
            q.iter_mut()
                .zip(s)
                .for_each(|(qi, si)| *qi += (a - beta) * si);
        }
        let mut d: Vec<f64> = q.into_iter().map(|v| -v).collect();
        let mut slope = dot(&g, &d);
        if slope >= 0.0 {
            // Not a descent direction: restart from the gradient.
            history.clear();
            d = g.iter().map(|v| -v).collect();
            slope = dot(&g, &d);
        }
        // Backtracking line search (Armijo).
        let mut step = 1.0;
        let (next, f_next, g_next) = loop {
            let cand: Vec<f64> = theta.iter().zip(&d).map(|(t, di)| t + step * di).collect();
            let (fc, gc) = objective(&cand, x, y, classes, c);
            if fc <= f + 1e-4 * step * slope || step < 1e-12 {
                break (cand, fc, gc);
            }
            step *= 0.5;
        };
        let s: Vec<f64> = next.iter().zip(&theta).map(|(a, b)| a - b).collect();
        let yv: Vec<f64> = g_next.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &yv);
        if sy > 1e-16 {
            if history.len() == memory {
                history.pop_front();
            }
            history.push_back((s, yv, 1.0 / sy));
        }
        let stalled = (f - f_next).abs() <= 1e-15 * f.abs().max(1.0);
        (theta, f, g) = (next, f_next, g_next);
        if stalled {
            break;
        }
    }
    let bias = theta.split_off(classes * dim);
    LogReg {
        classes,
        dim,
        weights: theta,
        bias,
        iterations,
        loss: f,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three separable-ish clusters in 2-D.
    fn data() -> (Vec<Vec<f32>>, Vec<usize>) {
        let centers = [(1.0f32, 0.0f32), (-0.5, 0.8), (-0.5, -0.8)];
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..60 {
            let c = i % 3;
            let jitter = (
                (i * 37 % 17) as f32 / 17.0 - 0.5,
                (i * 53 % 19) as f32 / 19.0 - 0.5,
            );
            x.push(vec![centers[c].0 + jitter.0, centers[c].1 + jitter.1]);
            y.push(c);
        }
        (x, y)
    }

    #[test]
    fn converges_to_a_stationary_point_that_classifies_the_clusters() {
        let (x, y) = data();
        let m = fit(&x, &y, 3, 1.0, 1e-9, 1000, |_| {});
        let theta: Vec<f64> = m.weights.iter().chain(&m.bias).copied().collect();
        let (_, g) = objective(&theta, &x, &y, 3, 1.0);
        assert!(g.iter().all(|v| v.abs() < 1e-8), "gradient {g:?}");
        let right = x
            .iter()
            .zip(&y)
            .filter(|(xi, &yi)| {
                let p = m.predict_proba(xi);
                (p.iter().sum::<f64>() - 1.0).abs() < 1e-12
                    && p.iter().enumerate().all(|(j, &pj)| j == yi || pj < p[yi])
            })
            .count();
        assert_eq!(right, x.len());
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (x, y) = data();
        let theta: Vec<f64> = (0..9).map(|i| (i as f64 * 0.37).sin()).collect();
        let (f, g) = objective(&theta, &x, &y, 3, 0.5);
        for i in 0..theta.len() {
            let mut t = theta.clone();
            t[i] += 1e-6;
            let (f2, _) = objective(&t, &x, &y, 3, 0.5);
            assert!(((f2 - f) / 1e-6 - g[i]).abs() < 1e-4, "component {i}");
        }
    }

    #[test]
    fn stronger_regularisation_shrinks_the_weights() {
        let (x, y) = data();
        let norm = |m: &LogReg| m.weights.iter().map(|w| w * w).sum::<f64>();
        let loose = fit(&x, &y, 3, 10.0, 1e-9, 1000, |_| {});
        let tight = fit(&x, &y, 3, 0.01, 1e-9, 1000, |_| {});
        assert!(norm(&tight) < norm(&loose) / 10.0);
    }
}
