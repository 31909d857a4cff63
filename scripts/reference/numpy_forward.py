#!/usr/bin/env python3
"""An independent float64 forward pass of the tiny GGUF models, checked against llama.cpp.

    python3 scripts/reference/numpy_forward.py [--types F32,Q8_0] [--archs gemma3,phi3]

For each (arch, type) entry of tests/fixtures/gguf_reference.json it regenerates the file
with tiny_gguf.py, checks its sha256, dequantizes every tensor with gguf-py, runs the fixture's
prompt through a plain numpy transcription of the architecture (as read from llama.cpp's
src/models/*.cpp; written for this repository) and prints the largest difference between its
logits after the prompt and llama.cpp's `logits0`, and whether the argmax agrees.

It documents, in runnable form, what a reimplementation has to do to match llama.cpp; it is
not used by CI. Measured with the committed fixture (max |difference| over the 512 logits,
logits spanning about -12..13): F32 and F16 0.004-0.016, BF16 0.035-0.08, the quantized types
0.11-0.36, and the argmax agrees in 53 of 54 files (phi3 Q5_K: a near tie). The float types
differ mostly through llama.cpp's F16 K/V cache and CPU flash attention (F16 Q and F16
accumulation of V). For the quantized types llama.cpp also rounds the activations entering
each matmul to Q8_0 (for Q4_0/Q5_0/Q8_0 weights) or Q8_K (k-quants); act_quant() below does
the same, but on these random models a 1e-4 relative change of the input already moves the
logits by ~0.15 once activations are quantized (rounding decisions flip), so no independent
implementation gets much closer than ~0.1-0.3 there without being bit-exact.
"""

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

import tiny_gguf  # noqa: E402


def load(path):
    import gguf

    r = gguf.GGUFReader(path)
    tensors = {}
    for t in r.tensors:
        shape = [int(x) for x in reversed(t.shape.tolist())]  # numpy order (rows, cols)
        data = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64)
        tensors[t.name] = data.reshape(shape)
    return tensors


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, pos, base, neox, factors=None):
    """x (T, H, d): rotate pairs (2i, 2i+1) (NORM, llama) or (i, i + d/2) (NEOX) by
    pos * base^(-2i/d) / factors[i]."""
    d = x.shape[-1]
    i = np.arange(d // 2)
    theta = base ** (-2.0 * i / d)
    if factors is not None:
        theta = theta / factors
    ang = pos[:, None, None] * theta[None, None, :]
    c, s = np.cos(ang), np.sin(ang)
    if neox:
        a, b = x[..., : d // 2], x[..., d // 2:]
        return np.concatenate([a * c - b * s, a * s + b * c], axis=-1)
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * c - b * s
    out[..., 1::2] = a * s + b * c
    return out


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def silu(x):
    return x / (1.0 + np.exp(-x))


def act_quant(x, qtype):
    """Round activations the way llama.cpp's CPU matmul does before a dot product with weights
    of `qtype`: F16/BF16 weights take F16/BF16 activations, Q4_0/Q5_0/Q8_0 take Q8_0 (32
    values, f16 scale amax/127, round half away from zero), the k-quants take Q8_K (256 values,
    f32 scale max/-127 where max is the value of largest magnitude)."""
    if qtype in (None, "F32"):
        return x
    if qtype == "F16":
        return x.astype(np.float32).astype(np.float16).astype(np.float64)
    if qtype == "BF16":
        import gguf
        b = gguf.quants.quantize(x.astype(np.float32), gguf.GGMLQuantizationType.BF16)
        return gguf.quants.dequantize(b, gguf.GGMLQuantizationType.BF16).reshape(x.shape).astype(np.float64)
    x32 = x.astype(np.float32)
    if qtype in ("Q4_0", "Q5_0", "Q8_0"):
        blk = x32.reshape(-1, 32)
        d = np.abs(blk).max(axis=-1, keepdims=True) / np.float32(127)
        with np.errstate(divide="ignore"):
            idv = np.where(d > 0, np.float32(1) / d, np.float32(0))
        v = blk * idv
        q = np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))
        return (q * d.astype(np.float16).astype(np.float32)).reshape(x.shape).astype(np.float64)
    blk = x32.reshape(-1, 256)
    idx = np.abs(blk).argmax(axis=-1)
    mx = blk[np.arange(blk.shape[0]), idx][:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = np.where(mx != 0, np.float32(-127) / mx, np.float32(0))
        q = np.minimum(127, np.rint(iscale * blk))
        d = np.where(iscale != 0, np.float32(1) / iscale, np.float32(0))
    return (q * d).reshape(x.shape).astype(np.float64)


def forward(arch, W, prompt, qtype=None):
    """Logits after the last prompt token. With `qtype`, the activations entering each weight
    matmul are rounded as llama.cpp does for that weight type (see act_quant)."""
    hp = tiny_gguf.HPARAMS[arch]

    def mm(x, name):
        return act_quant(x, qtype) @ W[name].T

    T = len(prompt)
    E = W["token_embd.weight"]
    n_head, n_kv, hd, eps = hp["n_head"], hp["n_head_kv"], hp["head_dim"], hp["rms_eps"]
    neox = hp["rope_type"] == "neox"
    pos = np.arange(T, dtype=np.float64)
    h = E[prompt].copy()
    if arch == "gemma3":
        h *= np.sqrt(hp["n_embd"])
    factors = W.get("rope_freqs.weight")
    for il in range(hp["n_layer"]):
        p = f"blk.{il}."
        x = rms_norm(h, W[p + "attn_norm.weight"], eps)
        if hp.get("fused"):
            qkv = mm(x, p + "attn_qkv.weight")
            q, k, v = np.split(qkv, [n_head * hd, n_head * hd + n_kv * hd], axis=-1)
        else:
            q, k, v = (mm(x, p + f"attn_{n}.weight") for n in "qkv")
        if hp.get("qkv_bias"):
            q, k, v = q + W[p + "attn_q.bias"], k + W[p + "attn_k.bias"], v + W[p + "attn_v.bias"]
        q, k, v = q.reshape(T, n_head, hd), k.reshape(T, n_kv, hd), v.reshape(T, n_kv, hd)
        if hp.get("qk_norm"):
            q = rms_norm(q, W[p + "attn_q_norm.weight"], eps)
            k = rms_norm(k, W[p + "attn_k_norm.weight"], eps)
        base = hp["rope_base"]
        swa = False
        if arch == "gemma3":
            swa = il % 6 < 5  # llama.cpp's default gemma3 pattern: 5 sliding layers, then 1 global
            if swa:
                base = 10000.0  # gemma3.rope.freq_base_swa, absent here -> llama.cpp's default
        q, k = rope(q, pos, base, neox, factors), rope(k, pos, base, neox, factors)
        scale = 1.0 / np.sqrt(hd)
        mask = np.tril(np.ones((T, T), dtype=bool))
        if swa:
            dist = np.arange(T)[:, None] - np.arange(T)[None, :]
            mask &= dist < hp["sliding_window"]
        out = np.zeros((T, n_head, hd))
        group = n_head // n_kv
        for hh in range(n_head):
            s = (q[:, hh, :] @ k[:, hh // group, :].T) * scale
            s = np.where(mask, s, -np.inf)
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            s /= s.sum(axis=-1, keepdims=True)
            out[:, hh, :] = s @ v[:, hh // group, :]
        o = mm(out.reshape(T, n_head * hd), p + "attn_output.weight")
        if arch == "gemma3":
            o = rms_norm(o, W[p + "post_attention_norm.weight"], eps)
        h = h + o
        x = rms_norm(h, W[p + "ffn_norm.weight"], eps)
        if hp.get("fused"):
            gu = mm(x, p + "ffn_up.weight")
            gate, up = np.split(gu, 2, axis=-1)  # first half: gate, second half: up
            f = silu(gate) * up
        elif arch == "gemma3":
            f = gelu_tanh(mm(x, p + "ffn_gate.weight")) * mm(x, p + "ffn_up.weight")
        else:
            f = silu(mm(x, p + "ffn_gate.weight")) * mm(x, p + "ffn_up.weight")
        f = mm(f, p + "ffn_down.weight")
        if arch == "gemma3":
            f = rms_norm(f, W[p + "post_ffw_norm.weight"], eps)
        h = h + f
    x = rms_norm(h[-1], W["output_norm.weight"], eps)
    return mm(x[None, :], "output.weight" if "output.weight" in W else "token_embd.weight")[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixture", default=str(ROOT / "tests/fixtures/gguf_reference.json"))
    ap.add_argument("--archs", default=None)
    ap.add_argument("--types", default=None)
    ap.add_argument("--no-act-quant", action="store_true", help="keep activations in float64 everywhere")
    args = ap.parse_args()
    fx = json.load(open(args.fixture, encoding="utf-8"))
    archs = args.archs.split(",") if args.archs else None
    types = args.types.split(",") if args.types else None
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for e in fx["tiny"]:
            if (archs and e["arch"] not in archs) or (types and e["type"] not in types):
                continue
            path = Path(tmp) / "m.gguf"
            subprocess.run([sys.executable, str(HERE / "tiny_gguf.py"), "--arch", e["arch"], "--type",
                            e["type"], "--seed", str(e["seed"]), "--out", str(path)], check=True)
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest != e["sha256"]:
                print(f"{e['arch']} {e['type']}: sha256 differs from the fixture", file=sys.stderr)
                continue
            logits = forward(e["arch"], load(path), e["prompt"], None if args.no_act_quant else e["type"])
            ref = np.array(e["logits0"])
            diff = np.abs(logits - ref).max()
            worst = max(worst, diff) if e["type"] in ("F32", "F16", "BF16") else worst
            print(f"{e['arch']:8s} {e['type']:5s} max|numpy - llama.cpp| = {diff:.2e} "
                  f"(logit range {ref.min():.2f}..{ref.max():.2f}), argmax "
                  f"{'agrees' if int(np.argmax(logits)) == e['tokens'][0] else 'DIFFERS'}")
    print(f"worst over the float types: {worst:.2e}")


if __name__ == "__main__":
    main()
