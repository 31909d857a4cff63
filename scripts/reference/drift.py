#!/usr/bin/env python3
"""Reference values for anya's drift scores (src/drift.rs), computed with numpy and scipy.

Writes tests/fixtures/drift_reference.json: for a few pairs of samples (seeded; the same
distribution twice, a shifted mean, a wider spread), the vectors (float32 values), token
lengths and label counts, and the scores anya must reproduce within 1e-3:

- mmd2: unbiased MMD² with the RBF kernel exp(-d² / (2 σ²)), σ² = the median of the pooled
  sample's pairwise squared distances (scipy.spatial.distance.pdist);
- centroid_cosine (1 - cosine of the means; scipy.spatial.distance.cosine) and
  centroid_euclidean;
- length_psi: PSI of token-length histograms over the bins (0,4], (4,8], ..., (256,512],
  above 512; label_psi and label_js: PSI and Jensen–Shannon divergence (natural log;
  scipy.spatial.distance.jensenshannon squared) of label counts. PSI = Σ (c - r) ln(c / r)
  over shares, each share at least 1e-4.

    python3 scripts/reference/drift.py     (numpy, scipy)
    python3 scripts/reference/drift.py --samples FILE   (scores of two given samples)
"""

import json
import sys

import numpy as np
from scipy.spatial.distance import cosine, jensenshannon, pdist, squareform

BINS = [4, 8, 16, 32, 64, 128, 256, 512]
EPS = 1e-4


def hist(lengths):
    h = [0.0] * (len(BINS) + 1)
    for l in lengths:
        b = next((i for i, e in enumerate(BINS) if l <= e), len(BINS))
        h[b] += 1
    return h


def psi(r, c):
    r, c = np.asarray(r, float), np.asarray(c, float)
    r, c = np.maximum(r / r.sum(), EPS), np.maximum(c / c.sum(), EPS)
    return float(np.sum((c - r) * np.log(c / r)))


def mmd2(x, y):
    z = np.vstack([x, y]).astype(np.float64)
    d2 = pdist(z, "sqeuclidean")
    gamma = 1.0 / (2.0 * np.median(d2))
    k = np.exp(-gamma * squareform(d2))
    m, n = len(x), len(y)
    kxx, kyy, kxy = k[:m, :m], k[m:, m:], k[:m, m:]
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2 * kxy.mean()
    )


def case(name, rng, shift, spread, lengths_y_scale, labels_y):
    dim, m, n = 8, 40, 50
    x = rng.normal(0.0, 1.0, (m, dim)).astype(np.float32)
    y = (rng.normal(0.0, spread, (n, dim)) + shift).astype(np.float32)
    lx = rng.integers(3, 40, m).tolist()
    ly = (rng.integers(3, 40, n) * lengths_y_scale).astype(int).tolist()
    labels_x = [20.0, 15.0, 5.0]
    mx, my = x.astype(np.float64).mean(0), y.astype(np.float64).mean(0)
    return {
        "name": name,
        "x": x.tolist(),
        "y": y.tolist(),
        "mmd2": mmd2(x, y),
        "centroid_cosine": float(cosine(mx, my)),
        "centroid_euclidean": float(np.linalg.norm(mx - my)),
        "lengths_x": lx,
        "lengths_y": ly,
        "hist_x": hist(lx),
        "length_psi": psi(hist(lx), hist(ly)),
        "labels_x": labels_x,
        "labels_y": labels_y,
        "label_psi": psi(labels_x, labels_y),
        "label_js": float(jensenshannon(labels_x, labels_y) ** 2),
    }


def scores(path):
    """`--samples FILE`: the scores of two given samples (tests/classify.rs hands anya's
    reference and current windows of real sentences over)."""
    data = json.load(open(path))
    x = np.asarray(data["x"], dtype=np.float64)
    y = np.asarray(data["y"], dtype=np.float64)
    json.dump(
        {
            "mmd2": mmd2(x, y),
            "centroid_cosine": float(cosine(x.mean(0), y.mean(0))),
            "length_psi": psi(hist(data["lengths_x"]), hist(data["lengths_y"])),
        },
        sys.stdout,
    )


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--samples":
        scores(sys.argv[2])
        return
    rng = np.random.default_rng(18)
    cases = [
        case("same", rng, 0.0, 1.0, 1, [19.0, 16.0, 5.0]),
        case("shifted", rng, 0.8, 1.0, 4, [5.0, 10.0, 25.0]),
        case("wider", rng, 0.0, 2.0, 2, [20.0, 0.0, 20.0]),
    ]
    with open("tests/fixtures/drift_reference.json", "w") as f:
        json.dump({"generator": "scripts/reference/drift.py", "cases": cases}, f)
    for c in cases:
        print(c["name"], {k: round(c[k], 4) for k in ("mmd2", "centroid_cosine", "length_psi", "label_psi", "label_js")})


if __name__ == "__main__":
    main()
