#!/usr/bin/env python3
"""scikit-learn's side of tests/classify.rs `heads_match_scikit_learn`.

Reads a JSON file (argv[1]): {"embeddings": [[...], ...], "labels": ["...", ...],
"validation_split": s, "regularization": C} — the base model's vectors of every example and
their labels, as anya saw them. Splits them as anya does (for each label, the last
round(n * s) of its examples, at least one when s > 0, held out; round half away from zero),
fits `LogisticRegression(C=C)` (multinomial, lbfgs, L2, intercept unpenalised) on the rest
to a tight tolerance, and prints JSON: the classes (sorted), the held-out indices, the
held-out accuracy and each held-out example's class probabilities.

    .cache/venv/bin/python scripts/reference/heads_sklearn.py data.json
Needs numpy and scikit-learn.
"""

import json
import math
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression


def split(labels, classes, share):
    held = []
    for c in classes:
        idx = [i for i, l in enumerate(labels) if l == c]
        n = len(idx)
        h = int(math.floor(n * share + 0.5))
        if share > 0:
            h = max(h, 1)
        h = min(h, n - 1)
        held.extend(idx[n - h:])
    held = sorted(held)
    train = [i for i in range(len(labels)) if i not in set(held)]
    return train, held


def main():
    data = json.load(open(sys.argv[1]))
    x = np.asarray(data["embeddings"], dtype=np.float64)
    labels = data["labels"]
    classes = sorted(set(labels))
    y = np.asarray([classes.index(l) for l in labels])
    train, held = split(labels, classes, data["validation_split"])
    model = LogisticRegression(C=data["regularization"], tol=1e-10, max_iter=100_000)
    model.fit(x[train], y[train])
    proba = model.predict_proba(x[held])
    accuracy = float((proba.argmax(1) == y[held]).mean())
    json.dump(
        {
            "classes": classes,
            "held": held,
            "accuracy": accuracy,
            "probabilities": proba.tolist(),
            "iterations": int(np.max(model.n_iter_)),
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
