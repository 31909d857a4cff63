#!/usr/bin/env python3
"""Reference embeddings for all-MiniLM-L6-v2, computed with sentence-transformers.

Produces tests/fixtures/embeddings_reference.json: a fixed list of sentences
(varied length, punctuation, digits, non-ASCII, a ~60-word sentence, a single
letter) and, for each, the 384-dimensional sentence embedding computed by the
reference sentence-transformers pipeline

    Transformer (BERT, max_seq_length 256)
      -> Pooling (mean over tokens, attention-mask weighted)
      -> Normalize (L2)

The Rust implementation in anya must reproduce these vectors within a small
tolerance (f32 arithmetic differs slightly between implementations).

The pipeline is always built explicitly from the model folder (config.json,
model.safetensors, tokenizer files, 1_Pooling/config.json), so the result does
not depend on whether the folder carries a modules.json / 2_Normalize entry.
If modules.json is present, the script also loads the folder the usual way
(SentenceTransformer(folder)) and checks both pipelines agree.

Regenerate (from the repository root, inside a venv with
scripts/reference/requirements.txt installed):

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
        python3 scripts/reference/embeddings.py \
        models/all-minilm-l6-v2/1.0.0 tests/fixtures/embeddings_reference.json
"""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import sentence_transformers  # noqa: E402
import torch  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

try:  # sentence-transformers >= 6
    from sentence_transformers.sentence_transformer import modules as st_models  # noqa: E402
except ImportError:  # older releases
    from sentence_transformers import models as st_models  # noqa: E402

MODEL_NAME = "all-MiniLM-L6-v2"
MAX_SEQ_LENGTH = 256
DIMENSIONS = 384

SENTENCES = [
    "Hello",
    "The quick brown fox jumps over the lazy dog.",
    "A man is eating a piece of bread.",
    "Wait... what?! Are you serious -- (really) serious?",
    "Order #4521 shipped on 2024-03-15 for $1,299.99 (qty: 3).",
    "Café naïve — 東京",
    "Machine learning models convert text into dense vectors.",
    (
        "In the early morning light, the old fisherman pushed his small wooden "
        "boat into the calm water of the bay, checked his nets twice, and "
        "rowed slowly past the harbor wall while gulls circled overhead, "
        "hoping that today, after a long week of poor catches and bad weather, "
        "the sea would finally be generous enough to fill his baskets before noon."
    ),
    "I love programming in Rust!",
    "a",
]


def build_pipeline(folder: str) -> SentenceTransformer:
    """Transformer + mean Pooling + Normalize, built explicitly."""
    transformer = st_models.Transformer(folder, max_seq_length=MAX_SEQ_LENGTH)
    dim_fn = getattr(transformer, "get_embedding_dimension", None) or getattr(
        transformer, "get_word_embedding_dimension"
    )
    pooling = st_models.Pooling(
        dim_fn(),
        pooling_mode="mean",
    )
    normalize = st_models.Normalize()
    return SentenceTransformer(modules=[transformer, pooling, normalize], device="cpu")


def dump_json(obj: dict) -> str:
    """Pretty JSON with each list of numbers kept on one line (diff-friendly)."""
    lines = ["{"]
    items = list(obj.items())
    for i, (key, value) in enumerate(items):
        comma = "," if i + 1 < len(items) else ""
        if isinstance(value, list) and value and isinstance(value[0], (list, str)):
            lines.append(f"  {json.dumps(key)}: [")
            for j, elem in enumerate(value):
                inner = "," if j + 1 < len(value) else ""
                lines.append(f"    {json.dumps(elem, ensure_ascii=False)}{inner}")
            lines.append(f"  ]{comma}")
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}{comma}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main() -> int:
    if len(sys.argv) != 3:
        print(f"usage: {sys.argv[0]} MODEL_FOLDER OUTPUT_JSON", file=sys.stderr)
        return 2
    folder, out_path = sys.argv[1], sys.argv[2]

    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    model = build_pipeline(folder)
    model.eval()
    assert model.max_seq_length == MAX_SEQ_LENGTH, model.max_seq_length

    with torch.no_grad():
        emb = model.encode(
            SENTENCES,
            batch_size=len(SENTENCES),
            convert_to_numpy=True,
            normalize_embeddings=False,  # the Normalize module already does it
            show_progress_bar=False,
        )
    emb = np.asarray(emb, dtype=np.float32)
    assert emb.shape == (len(SENTENCES), DIMENSIONS), emb.shape
    norms = np.linalg.norm(emb, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5), norms

    # Cross-check: one sentence at a time (no padding) gives the same vectors.
    with torch.no_grad():
        single = np.stack(
            [
                model.encode([s], convert_to_numpy=True, show_progress_bar=False)[0]
                for s in SENTENCES
            ]
        )
    max_diff_single = float(np.abs(single - emb).max())
    assert max_diff_single < 1e-5, max_diff_single

    # Cross-check against the folder's own modules.json, when it has one.
    if os.path.exists(os.path.join(folder, "modules.json")):
        auto = SentenceTransformer(folder, device="cpu")
        names = [type(m).__name__ for m in auto]
        assert names == ["Transformer", "Pooling", "Normalize"], names
        with torch.no_grad():
            auto_emb = auto.encode(
                SENTENCES,
                batch_size=len(SENTENCES),
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        max_diff_auto = float(np.abs(auto_emb - emb).max())
        assert max_diff_auto < 1e-6, max_diff_auto
        print(f"modules.json pipeline agrees (max abs diff {max_diff_auto:.2e})")

    out = {
        "generator": "scripts/reference/embeddings.py",
        "library": f"sentence-transformers {sentence_transformers.__version__}",
        "torch": torch.__version__,
        "model": MODEL_NAME,
        "pooling": "mean",
        "max_seq_length": MAX_SEQ_LENGTH,
        "normalized": True,
        "dimensions": DIMENSIONS,
        "sentences": SENTENCES,
        "embeddings": [[float(x) for x in row] for row in emb],
    }
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as f:
        f.write(dump_json(out))
    print(
        f"wrote {out_path}: {len(SENTENCES)} embeddings x {DIMENSIONS} dims "
        f"(single-vs-batch max abs diff {max_diff_single:.2e})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
