#!/usr/bin/env python3
"""A tiny BERT sequence classifier and its reference outputs, for tests/classify.rs.

Writes, from a fixed seed:
  tests/fixtures/tiny_classifier/config.json        BertForSequenceClassification config
  tests/fixtures/tiny_classifier/model.safetensors  random f32 weights, Hugging Face names
  tests/fixtures/tiny_classifier/tokenizer.json     a word-level tokenizer ([CLS] x [SEP])
  tests/fixtures/classifier_reference.json          sentences, token ids, logits, softmax,
                                                    sigmoid

The reference forward pass is `transformers`' BertForSequenceClassification (eval mode)
written out in numpy, in float64: embeddings (word + position + token type 0) -> LayerNorm ->
N x [self-attention -> dense -> residual LayerNorm -> dense -> exact GELU -> dense -> residual
LayerNorm] -> pooler (the [CLS] row -> dense -> tanh) -> classifier dense -> logits.

The committed reference comes from PyTorch itself: with torch and transformers installed
(from PyPI, in a venv outside the repository), `--torch` loads the written folder with
`BertForSequenceClassification.from_pretrained` (float64), asserts the numpy pass agrees, and
writes transformers' logits as the reference (how the committed fixture was made:
torch==2.15.0, transformers==5.23.0, see requirements.txt).

Run from the repository root:
    /path/to/venv/bin/python scripts/reference/classifier.py --torch
(without `--torch`, numpy alone: the same files, logits from the numpy pass.)
"""

import json
import math
import os
import re
import struct
import sys

import numpy as np

SEED = 18
OUT_DIR = "tests/fixtures/tiny_classifier"
REFERENCE = "tests/fixtures/classifier_reference.json"

HIDDEN, LAYERS, HEADS, INTERMEDIATE, MAX_POS = 16, 2, 2, 32, 64
EPS = 1e-12
LABELS = ["sports", "cooking", "weather"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
WORDS = (
    "the a team won match goal player scored ball game chef cooked soup bread oven "
    "recipe salt rain sun cloud storm wind cold warm today tomorrow very and was is "
    "in of . , ! ?"
).split()
VOCAB = SPECIALS + WORDS

SENTENCES = [
    "The team won the match.",
    "The chef cooked soup in the oven!",
    "Rain and wind today, very cold.",
    "A player scored a goal",
    "salt",
    "The sun is warm tomorrow, and the bread was very warm.",
    "unknown words become unk tokens",
]


def weights(rng):
    w = {}

    def normal(*shape, std=0.4):
        return rng.normal(0.0, std, size=shape)

    def norm(name):
        w[f"{name}.weight"] = 1.0 + normal(HIDDEN, std=0.1)
        w[f"{name}.bias"] = normal(HIDDEN, std=0.1)

    def dense(name, out, inp, std=0.4):
        w[f"{name}.weight"] = normal(out, inp, std=std)
        w[f"{name}.bias"] = normal(out, std=0.1)

    w["bert.embeddings.word_embeddings.weight"] = normal(len(VOCAB), HIDDEN, std=1.0)
    w["bert.embeddings.position_embeddings.weight"] = normal(MAX_POS, HIDDEN, std=0.3)
    w["bert.embeddings.token_type_embeddings.weight"] = normal(2, HIDDEN, std=0.3)
    norm("bert.embeddings.LayerNorm")
    for i in range(LAYERS):
        p = f"bert.encoder.layer.{i}"
        for part in ("query", "key", "value"):
            dense(f"{p}.attention.self.{part}", HIDDEN, HIDDEN)
        dense(f"{p}.attention.output.dense", HIDDEN, HIDDEN)
        norm(f"{p}.attention.output.LayerNorm")
        dense(f"{p}.intermediate.dense", INTERMEDIATE, HIDDEN)
        dense(f"{p}.output.dense", HIDDEN, INTERMEDIATE)
        norm(f"{p}.output.LayerNorm")
    dense("bert.pooler.dense", HIDDEN, HIDDEN)
    dense("classifier", len(LABELS), HIDDEN, std=1.0)
    # Stored as f32: the reference computes from exactly the stored values.
    return {k: v.astype(np.float32) for k, v in w.items()}


def save_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name in sorted(tensors):
        data = np.ascontiguousarray(tensors[name], dtype="<f4").tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(tensors[name].shape),
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
        blobs.append(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for b in blobs:
            f.write(b)


def tokenizer_json():
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": t, "single_word": False, "lstrip": False,
             "rstrip": False, "normalized": False, "special": True}
            for i, t in enumerate(SPECIALS)
        ],
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 1}},
                {"SpecialToken": {"id": "[SEP]", "type_id": 1}},
            ],
            "special_tokens": {
                t: {"id": t, "ids": [VOCAB.index(t)], "tokens": [t]}
                for t in ("[CLS]", "[SEP]")
            },
        },
        "decoder": None,
        "model": {
            "type": "WordLevel",
            "vocab": {t: i for i, t in enumerate(VOCAB)},
            "unk_token": "[UNK]",
        },
    }


def tokenize(text):
    """What the tokenizer above does: lowercase, split `\\w+|[^\\w\\s]+`, [CLS] ... [SEP]."""
    ids = [VOCAB.index("[CLS]")]
    for piece in re.findall(r"\w+|[^\w\s]+", text.lower()):
        ids.append(VOCAB.index(piece) if piece in VOCAB else VOCAB.index("[UNK]"))
    ids.append(VOCAB.index("[SEP]"))
    return ids


def layer_norm(x, w, prefix):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + EPS) * w[f"{prefix}.weight"] + w[f"{prefix}.bias"]


def dense(x, w, prefix):
    return x @ w[f"{prefix}.weight"].T + w[f"{prefix}.bias"]


def gelu(x):
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def forward(w, ids):
    w = {k: v.astype(np.float64) for k, v in w.items()}
    n = len(ids)
    x = (
        w["bert.embeddings.word_embeddings.weight"][ids]
        + w["bert.embeddings.position_embeddings.weight"][:n]
        + w["bert.embeddings.token_type_embeddings.weight"][0]
    )
    x = layer_norm(x, w, "bert.embeddings.LayerNorm")
    d = HIDDEN // HEADS
    for i in range(LAYERS):
        p = f"bert.encoder.layer.{i}"
        q, k, v = (dense(x, w, f"{p}.attention.self.{t}") for t in ("query", "key", "value"))
        heads = []
        for h in range(HEADS):
            s = slice(h * d, (h + 1) * d)
            scores = q[:, s] @ k[:, s].T / math.sqrt(d)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            heads.append(scores @ v[:, s])
        attn = dense(np.concatenate(heads, -1), w, f"{p}.attention.output.dense")
        x = layer_norm(attn + x, w, f"{p}.attention.output.LayerNorm")
        up = gelu(dense(x, w, f"{p}.intermediate.dense"))
        x = layer_norm(dense(up, w, f"{p}.output.dense") + x, w, f"{p}.output.LayerNorm")
    pooled = np.tanh(dense(x[0], w, "bert.pooler.dense"))
    return dense(pooled, w, "classifier")


def torch_logits(ids_list, logits):
    """The logits of `transformers`' own BertForSequenceClassification (float64) loaded from
    the written folder; asserts the numpy forward pass agrees."""
    import torch
    import transformers
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(OUT_DIR).double().eval()
    out = []
    for ids, want in zip(ids_list, logits):
        with torch.no_grad():
            got = model(torch.tensor([ids])).logits[0].numpy()
        assert np.abs(got - want).max() < 1e-9, (got, want)
        out.append(got)
    print(
        f"transformers {transformers.__version__} / torch {torch.__version__} agree with the numpy forward pass"
    )
    return out, f"transformers {transformers.__version__} BertForSequenceClassification (torch {torch.__version__}, float64)"


def main():
    rng = np.random.default_rng(SEED)
    w = weights(rng)
    os.makedirs(OUT_DIR, exist_ok=True)
    config = {
        "architectures": ["BertForSequenceClassification"],
        "model_type": "bert",
        "vocab_size": len(VOCAB),
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": INTERMEDIATE,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "max_position_embeddings": MAX_POS,
        "type_vocab_size": 2,
        "initializer_range": 0.02,
        "layer_norm_eps": EPS,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "problem_type": "single_label_classification",
        "id2label": {str(i): l for i, l in enumerate(LABELS)},
        "label2id": {l: i for i, l in enumerate(LABELS)},
    }
    with open(f"{OUT_DIR}/config.json", "w") as f:
        json.dump(config, f, indent=2)
    save_safetensors(f"{OUT_DIR}/model.safetensors", w)
    with open(f"{OUT_DIR}/tokenizer.json", "w") as f:
        json.dump(tokenizer_json(), f, indent=1)
    ids_list = [tokenize(s) for s in SENTENCES]
    logits = [forward(w, ids) for ids in ids_list]
    generator = "scripts/reference/classifier.py (numpy float64 BertForSequenceClassification)"
    if "--torch" in sys.argv:
        logits, generator = torch_logits(ids_list, logits)
    softmax = [np.exp(l - l.max()) / np.exp(l - l.max()).sum() for l in logits]
    sigmoid = [1.0 / (1.0 + np.exp(-l)) for l in logits]
    ref = {
        "generator": generator,
        "labels": LABELS,
        "sentences": SENTENCES,
        "token_ids": ids_list,
        "logits": [l.tolist() for l in logits],
        "softmax": [s.tolist() for s in softmax],
        "sigmoid": [s.tolist() for s in sigmoid],
    }
    with open(REFERENCE, "w") as f:
        json.dump(ref, f, indent=1)
    print(f"wrote {OUT_DIR}/ and {REFERENCE}")


if __name__ == "__main__":
    main()
