#!/usr/bin/env python3
"""ONNX Runtime, the strongest CPU embedding peer (what fastembed and infinity run), for
all-MiniLM-L6-v2 built from the very files anya serves:

  ort_embed.py export MODEL_DIR OUT.onnx
      Writes the BERT encoder as an ONNX graph (opset 17) from MODEL_DIR's model.safetensors and
      config.json: the layers a PyTorch export of `BertModel` gives (Gather embeddings,
      LayerNormalization, MatMul/Add/Reshape/Transpose attention with the additive mask, Erf
      GELU), then runs ONNX Runtime's own transformer optimizer on it (`model_type="bert"`:
      fused Attention, SkipLayerNormalization, BiasGelu, EmbedLayerNormalization), the way a
      performance-minded team ships it. Prints which fusions it made. No torch needed.

  ort_embed.py speed MODEL.onnx MODEL_DIR [--set mixed|uniform] [--batch N] [--rounds R]
      In process, like `examples/embed_speed` does for anya: the sentences are tokenised once
      (outside the timing), each batch is padded to its longest sentence (batch 32 sorts the set
      by length first: its best case), then `InferenceSession.run` + mean pooling + L2
      normalisation are timed. Prints one JSON line.

  ort_embed.py serve MODEL.onnx MODEL_DIR --port P
      A FastAPI + uvicorn server around the same session, as a team would write it: an OpenAI
      compatible `POST /v1/embeddings` (`input` a string or a list), a plain `def` endpoint so
      that Starlette runs it in its thread pool (ONNX Runtime releases the GIL), `GET /health`.

  ort_embed.py check MODEL.onnx MODEL_DIR FIXTURE.json
      The lowest cosine between this graph's vectors and sentence-transformers' in
      tests/fixtures/embeddings_reference.json (the export is checked before it is timed).

Threads: ONNX Runtime's intra-op pool has `--threads` threads (default: the number of cores,
like anya), inter-op 1, sequential execution.
"""

import argparse
import json
import os
import struct
import sys
import time
from pathlib import Path

import numpy as np

WORDS = ("the model serves a quick brown fox across river to city market every morning while "
         "engineers measure latency and throughput of their servers under heavy load with many "
         "small requests music garden window cloud signal paper light story ocean bridge "
         "mountain embedding vectors search documents quietly because nobody remembered "
         "unbelievable").split()
MASK64 = (1 << 64) - 1


def sentence(i, uniform=False):
    """Sentence i of examples/embed_speed.rs (8 to 40 words), or of its uniform set (16 words,
    about 18 tokens with [CLS] and [SEP]). The same generator as the Rust example."""
    x = ((i * 0x9E3779B97F4A7C15) & MASK64) ^ 0xD1B54A32D192ED03

    def nxt():
        nonlocal x
        x ^= (x << 13) & MASK64
        x ^= x >> 7
        x ^= (x << 17) & MASK64
        return x

    n = 8 + nxt() % 33
    if uniform:
        n = 16
    return " ".join(WORDS[nxt() % len(WORDS)] for _ in range(n))


# ----------------------------------------------------------------------------------- export


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    dtypes = {"F32": np.float32, "F16": np.float16, "I64": np.int64}
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype=dtypes[meta["dtype"]]).reshape(meta["shape"])
    return out


def export(model_dir, out_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model_dir = Path(model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    w = read_safetensors(model_dir / "model.safetensors")
    w = {k.removeprefix("bert."): v for k, v in w.items()}
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    head_dim = hidden // heads
    eps = float(cfg.get("layer_norm_eps", 1e-12))
    nodes, inits = [], []
    counter = [0]

    def name(prefix):
        counter[0] += 1
        return f"{prefix}_{counter[0]}"

    def const(arr, prefix="c"):
        n = name(prefix)
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), n))
        return n

    def node(op, inputs, **attrs):
        out = name(op.lower())
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def linear(x, prefix):
        # y = x W^T + b: the MatMul + Add pair a PyTorch export of nn.Linear gives
        wt = const(w[f"{prefix}.weight"].T.astype(np.float32), prefix.replace(".", "_") + "_wT")
        b = const(w[f"{prefix}.bias"].astype(np.float32), prefix.replace(".", "_") + "_b")
        return node("Add", [node("MatMul", [x, wt]), b])

    def layer_norm(x, prefix):
        g = const(w[f"{prefix}.weight"], prefix.replace(".", "_") + "_g")
        b = const(w[f"{prefix}.bias"], prefix.replace(".", "_") + "_b")
        return node("LayerNormalization", [x, g, b], axis=-1, epsilon=eps)

    # Embeddings: word + position + token type (all zeros: row 0), then LayerNorm.
    word = node("Gather", [const(w["embeddings.word_embeddings.weight"], "word_emb"), "input_ids"])
    shape = node("Shape", ["input_ids"])
    seq = node("Gather", [shape, const(np.array([1], dtype=np.int64), "one")], axis=0)
    pos_ids = node("Range", [const(np.array(0, dtype=np.int64)),
                             node("Squeeze", [seq, const(np.array([0], dtype=np.int64))]),
                             const(np.array(1, dtype=np.int64))])
    pos_ids = node("Unsqueeze", [pos_ids, const(np.array([0], dtype=np.int64))])
    pos = node("Gather", [const(w["embeddings.position_embeddings.weight"], "pos_emb"), pos_ids])
    tok_type = node("Gather", [const(w["embeddings.token_type_embeddings.weight"], "type_emb"),
                               "token_type_ids"])
    x = node("Add", [node("Add", [word, pos]), tok_type])
    x = layer_norm(x, "embeddings.LayerNorm")

    # The additive attention mask: (1 - mask) * -10000, shaped [B, 1, 1, S].
    m = node("Unsqueeze", ["attention_mask", const(np.array([1], dtype=np.int64))])
    m = node("Cast", [node("Unsqueeze", [m, const(np.array([2], dtype=np.int64))])],
             to=TensorProto.FLOAT)
    bias = node("Mul", [node("Sub", [const(np.array(1.0, dtype=np.float32)), m]),
                        const(np.array(-10000.0, dtype=np.float32))])
    split = const(np.array([0, 0, heads, head_dim], dtype=np.int64), "split_heads")
    merge = const(np.array([0, 0, hidden], dtype=np.int64), "merge_heads")
    scale = const(np.array(np.sqrt(head_dim), dtype=np.float32), "sqrt_d")
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        q = node("Transpose", [node("Reshape", [linear(x, f"{p}.attention.self.query"), split])],
                 perm=[0, 2, 1, 3])
        k = node("Transpose", [node("Reshape", [linear(x, f"{p}.attention.self.key"), split])],
                 perm=[0, 2, 3, 1])
        v = node("Transpose", [node("Reshape", [linear(x, f"{p}.attention.self.value"), split])],
                 perm=[0, 2, 1, 3])
        scores = node("Add", [node("Div", [node("MatMul", [q, k]), scale]), bias])
        probs = node("Softmax", [scores], axis=-1)
        ctx = node("Reshape", [node("Transpose", [node("MatMul", [probs, v])], perm=[0, 2, 1, 3]),
                               merge])
        attn = linear(ctx, f"{p}.attention.output.dense")
        x = layer_norm(node("Add", [attn, x]), f"{p}.attention.output.LayerNorm")
        h = linear(x, f"{p}.intermediate.dense")
        # exact GELU: 0.5 x (1 + erf(x / sqrt 2))
        g = node("Mul", [node("Mul", [h, node("Add", [node("Erf", [node("Div", [
            h, const(np.array(np.sqrt(2.0), dtype=np.float32))])]),
            const(np.array(1.0, dtype=np.float32))])]), const(np.array(0.5, dtype=np.float32))])
        o = linear(g, f"{p}.output.dense")
        x = layer_norm(node("Add", [o, x]), f"{p}.output.LayerNorm")
    nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"]))

    dyn = ["batch", "sequence"]
    graph = helper.make_graph(
        nodes, "all_minilm_l6_v2",
        [helper.make_tensor_value_info(n, TensorProto.INT64, dyn)
         for n in ("input_ids", "attention_mask", "token_type_ids")],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, dyn + [hidden])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="pytorch",  # the optimizer keys its BERT patterns on it
                              doc_string="built by anya scripts/bench/ort_embed.py from model.safetensors")
    model.ir_version = 8
    onnx.checker.check_model(model)
    raw = Path(out_path).with_suffix(".raw.onnx")
    onnx.save(model, raw)

    from onnxruntime.transformers.optimizer import optimize_model

    opt = optimize_model(str(raw), model_type="bert", num_heads=heads, hidden_size=hidden,
                         opt_level=0)
    fused = opt.get_fused_operator_statistics()
    opt.save_model_to_file(str(out_path))
    raw.unlink()
    print(json.dumps({"onnx": str(out_path),
                      "fused": {k: v for k, v in fused.items() if v}}))


# ------------------------------------------------------------------------------- inference


class Encoder:
    def __init__(self, onnx_path, model_dir, threads):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        self.tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
        self.tok.no_padding()
        self.tok.enable_truncation(256)

    def tokenize(self, texts):
        return [e.ids for e in self.tok.encode_batch(list(texts))]

    def embed_ids(self, seqs):
        """Padded to the longest of the batch; mean pooling over the mask; L2 normalised."""
        longest = max(len(s) for s in seqs)
        ids = np.zeros((len(seqs), longest), dtype=np.int64)
        mask = np.zeros((len(seqs), longest), dtype=np.int64)
        for r, s in enumerate(seqs):
            ids[r, : len(s)] = s
            mask[r, : len(s)] = 1
        (h,) = self.session.run(["last_hidden_state"], {
            "input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
        m = mask[:, :, None].astype(np.float32)
        v = (h * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def speed(args):
    enc = Encoder(args.onnx, args.model_dir, args.threads)
    seqs = enc.tokenize(sentence(i, args.set == "uniform") for i in range(128))
    if args.batch > 1:
        seqs.sort(key=len)
    batches = [seqs[i : i + args.batch] for i in range(0, len(seqs), args.batch)]
    for b in batches[:2]:
        enc.embed_ids(b)
    rates = []
    for _ in range(args.rounds):
        t = time.perf_counter()
        for b in batches:
            enc.embed_ids(b)
        rates.append(len(seqs) / (time.perf_counter() - t))
    rates.sort()
    print(json.dumps({
        "peer": "onnxruntime-in-process", "set": args.set, "batch": args.batch,
        "threads": args.threads, "sentences": len(seqs),
        "tokens_mean": round(sum(map(len, seqs)) / len(seqs), 1),
        "sentences_per_s": rates[len(rates) // 2], "rounds": [round(r, 1) for r in rates],
    }))


def check(args):
    enc = Encoder(args.onnx, args.model_dir, args.threads)
    ref = json.loads(Path(args.fixture).read_text())
    got = enc.embed_ids(enc.tokenize(ref["sentences"]))
    want = np.asarray(ref["embeddings"], dtype=np.float32)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    low = float((got * want).sum(axis=1).min())
    print(json.dumps({"lowest_cosine_to_sentence_transformers": low, "n": len(want)}))
    return 0 if low > 0.9999 else 1


def serve(args):
    import uvicorn
    from fastapi import FastAPI, HTTPException
    from pydantic import BaseModel

    enc = Encoder(args.onnx, args.model_dir, args.threads)
    app = FastAPI()

    class Req(BaseModel):
        input: str | list[str]
        model: str | None = None

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.post("/v1/embeddings")
    def embeddings(req: Req):
        texts = [req.input] if isinstance(req.input, str) else req.input
        if not texts or len(texts) > 256:
            raise HTTPException(400, "input: 1 to 256 strings")
        seqs = enc.tokenize(texts)
        vecs = enc.embed_ids(seqs)
        n = sum(len(s) for s in seqs)
        return {
            "object": "list", "model": req.model or "all-minilm-l6-v2",
            "data": [{"object": "embedding", "index": i, "embedding": v.tolist()}
                     for i, v in enumerate(vecs)],
            "usage": {"prompt_tokens": n, "total_tokens": n},
        }

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("model_dir")
    e.add_argument("out")
    for n in ("speed", "serve", "check"):
        p = sub.add_parser(n)
        p.add_argument("onnx")
        p.add_argument("model_dir")
        p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
        if n == "speed":
            p.add_argument("--set", choices=["mixed", "uniform"], default="mixed")
            p.add_argument("--batch", type=int, default=32)
            p.add_argument("--rounds", type=int, default=5)
        if n == "serve":
            p.add_argument("--port", type=int, required=True)
        if n == "check":
            p.add_argument("fixture")
    args = ap.parse_args()
    if args.cmd == "export":
        return export(args.model_dir, args.out)
    return {"speed": speed, "serve": serve, "check": check}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main() or 0)
