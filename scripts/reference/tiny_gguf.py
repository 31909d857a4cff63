#!/usr/bin/env python3
"""Tiny random-weight GGUF models for anya's GGUF fidelity tests.

    python3 scripts/reference/tiny_gguf.py --arch ARCH --type TYPE [--seed 0] --out FILE
    python3 scripts/reference/tiny_gguf.py --describe        # the hyperparameters, as JSON

ARCH: llama qwen2 qwen3 gemma3 mistral phi3.
TYPE (all 2-D matrices: token_embd, output when untied, attention and FFN weights):
      F32 F16 BF16 Q8_0 Q4_0 Q5_0 Q4_K Q5_K Q6_K. Norm weights, biases and rope_freqs stay F32.

The file is a pure function of (ARCH, TYPE, SEED) and of the pinned numpy and gguf versions
(scripts/reference/requirements.txt): CI regenerates it with this script and checks its sha256
against tests/fixtures/gguf_reference.json before comparing anya's outputs with llama.cpp's.
Nothing here reads the clock or the environment; the float weights come from
numpy.random.default_rng([SEED, arch index]) and depend on the architecture only, so the nine
types of one architecture quantize the same float weights. Only elementwise numpy operations
and max/min reductions are used on weights (no sums whose order could vary), so the bytes do
not depend on the CPU.

Quantization: F16 is numpy's float16 cast; BF16, Q8_0, Q4_0 and Q5_0 are gguf-py's own
quantizers (gguf.quants.quantize). gguf-py 0.19 cannot quantize Q4_K, Q5_K or Q6_K (it only
dequantizes them), so this script writes those blocks itself from the float weights, with a
plain min/max scheme (not llama.cpp's search for the best scales): per 32-value sub-block a
scale (max-min)/15 (Q4_K) or /31 (Q5_K) and an offset -min (clamped to >= 0), both encoded as
6-bit multiples of a per-256-block f16 `d` / `dmin`; Q6_K uses a signed 8-bit scale per 16
values (max|x|/31, times an f16 `d`). The block layouts are ggml's (the same that gguf-py's
dequantizers read); any reader that dequantizes them as ggml does gets the same weights.

Tokenizers are made here too, from a small built-in English/code corpus: a byte-level BPE
(GPT-2 byte-to-unicode alphabet of 256 tokens + merges learned on the corpus split at spaces
only, so merges may cross the boundaries a model's pre-tokenizer regex draws: "it's", "2024",
"CamelCase" become tokens, which makes the regexes matter) for llama/qwen2/qwen3/phi3, and a
SentencePiece-style vocabulary (byte tokens <0x00>..<0xFF>, the corpus's characters, and the
same kind of merges over "▁"-marked words, scored -rank) for mistral and gemma3. Every
vocabulary has exactly 512 tokens.
"""

import argparse
import json
import re
import sys
from collections import Counter

import numpy as np

ARCHS = ["llama", "qwen2", "qwen3", "gemma3", "mistral", "phi3"]
TYPES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q5_0", "Q4_K", "Q5_K", "Q6_K"]
N_VOCAB = 512

# --- hyperparameters ------------------------------------------------------------------------------

HPARAMS = {
    "llama": dict(
        gguf_arch="llama", n_embd=256, n_ff=512, n_head=4, n_head_kv=2, head_dim=64, n_layer=2,
        n_ctx=512, rms_eps=1e-5, rope_base=500000.0, tied=False, rope_type="norm",
        llama3_rope=dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_context=256),
        tokenizer="gpt2", pre="llama-bpe"),
    "qwen2": dict(
        gguf_arch="qwen2", n_embd=256, n_ff=512, n_head=4, n_head_kv=2, head_dim=64, n_layer=2,
        n_ctx=512, rms_eps=1e-6, rope_base=1000000.0, tied=True, rope_type="neox", qkv_bias=True,
        tokenizer="gpt2", pre="qwen2"),
    "qwen3": dict(
        gguf_arch="qwen3", n_embd=256, n_ff=512, n_head=4, n_head_kv=2, head_dim=128, n_layer=2,
        n_ctx=512, rms_eps=1e-6, rope_base=1000000.0, tied=False, rope_type="neox", qk_norm=True,
        tokenizer="gpt2", pre="qwen2"),
    "gemma3": dict(
        gguf_arch="gemma3", n_embd=256, n_ff=512, n_head=4, n_head_kv=1, head_dim=128, n_layer=7,
        n_ctx=512, rms_eps=1e-6, rope_base=1000000.0, tied=True, rope_type="neox", qk_norm=True,
        sliding_window=8, tokenizer="spm-gemma"),
    "mistral": dict(
        gguf_arch="llama", n_embd=256, n_ff=512, n_head=4, n_head_kv=2, head_dim=64, n_layer=2,
        n_ctx=512, rms_eps=1e-5, rope_base=1000000.0, tied=False, rope_type="norm",
        tokenizer="spm-llama"),
    "phi3": dict(
        gguf_arch="phi3", n_embd=256, n_ff=512, n_head=4, n_head_kv=2, head_dim=64, n_layer=2,
        n_ctx=512, rms_eps=1e-5, rope_base=10000.0, tied=False, rope_type="neox", fused=True,
        tokenizer="gpt2", pre="gpt-4o"),
}

# --- corpus for the tokenizers (written for this script) ------------------------------------------

CORPUS = """
The lighthouse keeper wrote in his log every evening. It's a quiet job, he said, but it isn't
lonely: the ships talk to him with their lights, and the gulls argue on the rail. We're told
that the old lamp used oil until 1921, and that the new one runs on a battery that they've
replaced twice since 2004. I'm not sure the numbers are right; you'll have to check them. He'd
say the sea never repeats itself, yet the tides come back at the same hours, 365 days a year.
On Monday the wind turned north. On Tuesday it rained. On Wednesday the supply boat came with
bread, coffee, 12 eggs, 3 apples and a letter from his daughter, who lives in the city now and
works on computers. She writes about her work in a way he doesn't follow: a ModelServer, a
TokenCache, a RequestQueue, and something called a HashMap that she says is faster than a list.
She'd like him to visit in the spring. He thinks he will, if the weather holds and if the
keeper from the next island can watch both lights for a week. The distance is 14 kilometres,
or about 8 miles, and the crossing takes 45 minutes when the water is calm.
In the evening he reads. Tonight it is a book about the history of maps: how the first ones
showed the world as a flat disc, how sailors drew coasts they had only seen from far away, and
how the lines of latitude and longitude made it possible to say exactly where a ship was.
"Where are we?" is the oldest question at sea, and "when will we arrive?" is the second.

def count_words(text):
    counts = {}
    for word in text.split():
        counts[word] = counts.get(word, 0) + 1
    return counts

fn main() {
    let values: Vec<i32> = vec![1, 2, 3, 10, 20, 30];
    let total: i32 = values.iter().sum();
    println!("total = {}", total);
}

{"name": "lighthouse", "year": 1921, "active": true, "lights": [1, 2, 3]}
"""


# --- byte-level BPE (GPT-2 alphabet) --------------------------------------------------------------

def byte_alphabet():
    """The GPT-2 byte-to-unicode table: printable Latin-1 bytes map to themselves, the other 68
    bytes to U+0100 upward, in byte order. Returns a list of 256 one-character strings."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table = {}
    extra = 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def learn_merges(words, n_merges):
    """Plain BPE over a Counter of words (tuples of symbols): repeatedly merge the most frequent
    adjacent pair (ties: the smaller pair in string order). Returns the merges in order."""
    words = {tuple(w): c for w, c in words.items()}
    merges = []
    for _ in range(n_merges):
        pairs = Counter()
        for w, c in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merges.append(best)
        joined = best[0] + best[1]
        new_words = {}
        for w, c in words.items():
            out = []
            i = 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words[tuple(out)] = new_words.get(tuple(out), 0) + c
        words = new_words
    return merges


def gpt2_vocab(specials):
    """512 tokens: 256 byte symbols, learned merges, then `specials` (control tokens) last."""
    alphabet = byte_alphabet()
    chunks = re.findall(r" ?[^\s]+|\s+", CORPUS)
    words = Counter(tuple(alphabet[b] for b in ch.encode("utf-8")) for ch in chunks)
    n_merges = N_VOCAB - 256 - len(specials)
    merges = learn_merges(words, n_merges)
    tokens = list(alphabet)
    for a, b in merges:
        tokens.append(a + b)
    assert len(set(tokens)) == len(tokens), "duplicate merged token"
    tokens += specials
    types = [1] * (N_VOCAB - len(specials)) + [3] * len(specials)
    return tokens, types, [f"{a} {b}" for a, b in merges]


# --- SentencePiece-style vocabulary ---------------------------------------------------------------

def spm_vocab(head, head_types):
    """512 tokens: `head` (special tokens), the 256 byte tokens, the corpus's characters and
    merged pieces over "▁"-marked words; scores 0 for the head and byte tokens, -rank after."""
    text = CORPUS.replace(" ", "\u2581")
    # words start at "▁" or at a newline; newlines stay their own symbol (byte fallback <0x0A>)
    chunks = re.findall(r"\u2581?[^\u2581\n]+|\u2581|\n", "\u2581" + text)
    chars = sorted({c for c in text if c != "\n"})
    words = Counter(tuple(ch) for ch in chunks if ch != "\n")
    n_merges = N_VOCAB - len(head) - 256 - len(chars)
    merges = learn_merges(words, n_merges)
    tokens = list(head) + [f"<0x{b:02X}>" for b in range(256)] + chars
    types = list(head_types) + [6] * 256 + [1] * len(chars)
    scores = [0.0] * (len(head) + 256)
    rank = 0
    for c in chars:
        scores.append(-1000.0 - rank)
        rank += 1
    for i, (a, b) in enumerate(merges):
        tokens.append(a + b)
        types.append(1)
        scores.append(-float(i))
    assert len(tokens) == N_VOCAB and len(set(tokens)) == N_VOCAB
    return tokens, types, scores


def add_tokenizer(w, arch, hp):
    import gguf

    kind = hp["tokenizer"]
    if kind == "gpt2":
        if arch == "llama":
            specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                        "<|end_header_id|>", "<|eot_id|>"]
            bos, eos, add_bos = "<|begin_of_text|>", "<|end_of_text|>", True
        elif arch in ("qwen2", "qwen3"):
            specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
            bos, eos, add_bos = "<|endoftext|>", "<|im_end|>", False
        else:  # phi3 (Phi-4-mini style: a GPT-4o-like BPE)
            specials = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
            bos, eos, add_bos = "<|endoftext|>", "<|end|>", False
        tokens, types, merges = gpt2_vocab(specials)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(hp["pre"])
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(tokens.index(bos))
        w.add_eos_token_id(tokens.index(eos))
        w.add_add_bos_token(add_bos)
    elif kind == "spm-llama":  # Llama-2 / Mistral layout
        head = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"]
        tokens, types, scores = spm_vocab(head, [2, 3, 3, 3, 3])
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)
        w.add_add_space_prefix(True)
    else:  # spm-gemma: Gemma 3 layout
        head = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>",
                "\n", "\n\n"]
        tokens, types, scores = spm_vocab(head, [3, 3, 3, 3, 3, 3, 3, 4, 4])
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(2)
        w.add_eos_token_id(1)
        w.add_unk_token_id(3)
        w.add_pad_token_id(0)
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)
        w.add_add_space_prefix(False)
    assert len(tokens) == N_VOCAB
    del gguf


# --- k-quant block writers (from float weights; see the module docstring) -------------------------

def _f16(x):
    return np.asarray(x, dtype=np.float32).astype(np.float16)


def _pack_k_scales(sc, mn):
    """Pack eight 6-bit scales and eight 6-bit mins per block into ggml's 12-byte layout."""
    sc = sc.astype(np.uint8)
    mn = mn.astype(np.uint8)
    out = np.zeros(sc.shape[:-1] + (12,), dtype=np.uint8)
    out[..., 0:4] = (sc[..., 0:4] & 0x3F) | ((sc[..., 4:8] >> 4) << 6)
    out[..., 4:8] = (mn[..., 0:4] & 0x3F) | ((mn[..., 4:8] >> 4) << 6)
    out[..., 8:12] = (sc[..., 4:8] & 0x0F) | ((mn[..., 4:8] & 0x0F) << 4)
    return out


def _affine_k(blocks, qmax):
    """Shared part of Q4_K/Q5_K: blocks (n, 8, 32) -> d, dmin (f16), sc, mn (0..63), q (0..qmax)."""
    lo = np.minimum(blocks.min(axis=-1), np.float32(0))          # (n, 8), <= 0
    hi = blocks.max(axis=-1)
    scale = (hi - lo) / np.float32(qmax)                          # (n, 8), >= 0
    offset = -lo                                                   # (n, 8), >= 0
    d = _f16(scale.max(axis=-1) / np.float32(63))
    dmin = _f16(offset.max(axis=-1) / np.float32(63))
    d32 = d.astype(np.float32)[:, None]
    m32 = dmin.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d32 > 0, np.rint(scale / d32), 0).clip(0, 63)
        mn = np.where(m32 > 0, np.rint(offset / m32), 0).clip(0, 63)
    eff_scale = (d32 * sc)[..., None]
    eff_min = (m32 * mn)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(eff_scale > 0, np.rint((blocks + eff_min) / eff_scale), 0).clip(0, qmax)
    return d, dmin, sc, mn, q.astype(np.uint8)


def quant_q4_k(x):
    n = x.size // 256
    blocks = x.reshape(n, 8, 32).astype(np.float32)
    d, dmin, sc, mn, q = _affine_k(blocks, 15)
    qs = (q[:, 0::2, :] | (q[:, 1::2, :] << 4)).reshape(n, 128)
    return np.concatenate([d.reshape(n, 1).view(np.uint8), dmin.reshape(n, 1).view(np.uint8),
                           _pack_k_scales(sc, mn), qs], axis=1)


def quant_q5_k(x):
    n = x.size // 256
    blocks = x.reshape(n, 8, 32).astype(np.float32)
    d, dmin, sc, mn, q = _affine_k(blocks, 31)
    low = q & 0x0F
    qs = (low[:, 0::2, :] | (low[:, 1::2, :] << 4)).reshape(n, 128)
    qh = np.zeros((n, 32), dtype=np.uint8)
    for j in range(8):
        qh |= ((q[:, j, :] >> 4) & 1) << j
    return np.concatenate([d.reshape(n, 1).view(np.uint8), dmin.reshape(n, 1).view(np.uint8),
                           _pack_k_scales(sc, mn), qh, qs], axis=1)


def quant_q6_k(x):
    n = x.size // 256
    sub = x.reshape(n, 16, 16).astype(np.float32)
    amax = np.abs(sub).max(axis=-1)                                # (n, 16)
    scale = amax / np.float32(31)
    d = _f16(scale.max(axis=-1) / np.float32(127))
    d32 = d.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d32 > 0, np.rint(scale / d32), 0).clip(-128, 127)
    eff = (d32 * sc)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(eff > 0, np.rint(sub / eff), 0).clip(-32, 31) + 32
    q = q.astype(np.uint8).reshape(n, 256)
    # value e = h*128 + s*64 + b (h, s in 0..1, b in 0..63): low 4 bits in nibble s of
    # ql[h*64 + b]; high 2 bits in bits 2t..2t+1 of qh[h*32 + c] with t = (s*64 + b) // 32, c = b % 32
    ql = np.zeros((n, 128), dtype=np.uint8)
    qh = np.zeros((n, 64), dtype=np.uint8)
    for h in range(2):
        for s in range(2):
            part = q[:, h * 128 + s * 64: h * 128 + s * 64 + 64]
            ql[:, h * 64: h * 64 + 64] |= (part & 0x0F) << (4 * s)
            for half in range(2):
                t = s * 2 + half
                qh[:, h * 32: h * 32 + 32] |= ((part[:, half * 32: half * 32 + 32] >> 4) & 0x03) << (2 * t)
    return np.concatenate([ql, qh, sc.astype(np.int8).view(np.uint8), d.reshape(n, 1).view(np.uint8)], axis=1)


K_QUANTS = {"Q4_K": quant_q4_k, "Q5_K": quant_q5_k, "Q6_K": quant_q6_k}


def encode(weight, qtype):
    """(array, raw_dtype or None) for GGUFWriter.add_tensor; weight is float32 (rows, cols)."""
    import gguf

    qt = gguf.GGMLQuantizationType[qtype]
    if qtype == "F32":
        return weight.astype(np.float32), None
    if qtype == "F16":
        return weight.astype(np.float16), None
    if qtype in K_QUANTS:
        rows, cols = weight.shape
        assert cols % 256 == 0
        data = K_QUANTS[qtype](weight.reshape(-1))
        return data.reshape(rows, -1), qt
    return gguf.quants.quantize(weight, qt), qt


def check_k_quants():
    """Self-check: gguf-py's dequantizers read back what the writers above meant."""
    import gguf

    rng = np.random.default_rng(7)
    x = (rng.standard_normal((4, 512)) * 0.05).astype(np.float32)
    for name, fn in K_QUANTS.items():
        blocks = fn(x.reshape(-1)).reshape(4, -1)
        back = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType[name]).reshape(x.shape)
        err = np.abs(back - x).max() / np.abs(x).max()
        assert err < {"Q4_K": 0.08, "Q5_K": 0.04, "Q6_K": 0.03}[name], (name, err)


# --- weights ----------------------------------------------------------------------------------------

FILE_TYPES = {"F32": "ALL_F32", "F16": "MOSTLY_F16", "BF16": "MOSTLY_BF16", "Q8_0": "MOSTLY_Q8_0",
              "Q4_0": "MOSTLY_Q4_0", "Q5_0": "MOSTLY_Q5_0", "Q4_K": "MOSTLY_Q4_K_S",
              "Q5_K": "MOSTLY_Q5_K_S", "Q6_K": "MOSTLY_Q6_K"}


def llama3_rope_factors(hp):
    """The per-frequency divisors of Llama 3 rope scaling, as convert_hf_to_gguf writes them
    into rope_freqs.weight (n_rot/2 floats). Computed in float64, stored as float32."""
    import math

    cfg = hp["llama3_rope"]
    dim = hp["head_dim"]
    base = hp["rope_base"]
    lo_wavelen = cfg["original_context"] / cfg["low_freq_factor"]
    hi_wavelen = cfg["original_context"] / cfg["high_freq_factor"]
    out = []
    for i in range(0, dim, 2):
        freq = 1.0 / (base ** (i / dim))
        wavelen = 2 * math.pi / freq
        if wavelen < hi_wavelen:
            out.append(1.0)
        elif wavelen > lo_wavelen:
            out.append(cfg["factor"])
        else:
            smooth = (cfg["original_context"] / wavelen - cfg["low_freq_factor"]) / (
                cfg["high_freq_factor"] - cfg["low_freq_factor"])
            out.append(1.0 / ((1 - smooth) / cfg["factor"] + smooth))
    return np.array(out, dtype=np.float32)


def tensor_plan(arch):
    """[(name, shape (rows, cols) or (n,), kind)] in file order; kind: matrix|norm|bias|rope."""
    hp = HPARAMS[arch]
    e, f, hd = hp["n_embd"], hp["n_ff"], hp["head_dim"]
    q_dim, kv_dim = hp["n_head"] * hd, hp["n_head_kv"] * hd
    plan = [("token_embd.weight", (N_VOCAB, e), "matrix")]
    if "llama3_rope" in hp:
        plan.append(("rope_freqs.weight", (hd // 2,), "rope"))
    for i in range(hp["n_layer"]):
        p = f"blk.{i}."
        plan.append((p + "attn_norm.weight", (e,), "norm"))
        if hp.get("fused"):
            plan.append((p + "attn_qkv.weight", (q_dim + 2 * kv_dim, e), "matrix"))
        else:
            plan += [(p + "attn_q.weight", (q_dim, e), "matrix"),
                     (p + "attn_k.weight", (kv_dim, e), "matrix"),
                     (p + "attn_v.weight", (kv_dim, e), "matrix")]
        if hp.get("qkv_bias"):
            plan += [(p + "attn_q.bias", (q_dim,), "bias"),
                     (p + "attn_k.bias", (kv_dim,), "bias"),
                     (p + "attn_v.bias", (kv_dim,), "bias")]
        if hp.get("qk_norm"):
            plan += [(p + "attn_q_norm.weight", (hd,), "norm"),
                     (p + "attn_k_norm.weight", (hd,), "norm")]
        plan.append((p + "attn_output.weight", (e, q_dim), "matrix"))
        if arch == "gemma3":
            plan.append((p + "post_attention_norm.weight", (e,), "norm"))
        plan.append((p + "ffn_norm.weight", (e,), "norm"))
        if hp.get("fused"):
            plan.append((p + "ffn_up.weight", (2 * f, e), "matrix"))  # rows: gate then up
        else:
            plan += [(p + "ffn_gate.weight", (f, e), "matrix"),
                     (p + "ffn_up.weight", (f, e), "matrix")]
        plan.append((p + "ffn_down.weight", (e, f), "matrix"))
        if arch == "gemma3":
            plan.append((p + "post_ffw_norm.weight", (e,), "norm"))
    plan.append(("output_norm.weight", (e,), "norm"))
    if not hp["tied"]:
        plan.append(("output.weight", (N_VOCAB, e), "matrix"))
    return plan


SCALES = {"embd": 0.5, "embd_tied": 0.02, "post_norm": 3.0, "out_norm_tied": 10.0}


def float_weights(arch, seed):
    """name -> float32 array, from default_rng([seed, arch index]); the same for every type."""
    hp = HPARAMS[arch]
    rng = np.random.default_rng([seed, ARCHS.index(arch)])
    out = {}
    for name, shape, kind in tensor_plan(arch):
        if kind == "rope":
            out[name] = llama3_rope_factors(hp)
            continue
        z = rng.standard_normal(shape)
        if kind == "norm" and (".post_" in name):
            w = SCALES["post_norm"] + 0.1 * z
        elif name == "output_norm.weight" and hp["tied"]:
            w = SCALES["out_norm_tied"] * (1.0 + 0.1 * z)
        elif kind == "norm":
            w = 1.0 + 0.1 * z
        elif kind == "bias":
            w = 0.1 * z
        elif name == "token_embd.weight":
            w = SCALES["embd_tied" if hp["tied"] else "embd"] * z
        elif name == "output.weight":
            w = 0.15 * z
        else:
            w = z / np.sqrt(shape[1])  # fan-in scaling
        out[name] = w.astype(np.float32)
    return out


def write(arch, qtype, seed, path):
    import gguf

    hp = HPARAMS[arch]
    ga = hp["gguf_arch"]
    w = gguf.GGUFWriter(path, ga)
    # a neutral name: llama.cpp changes token attributes for some names (e.g. "phi3", "phi-3")
    w.add_name("anya-tiny-test-model")
    w.add_string("general.description",
                 f"random weights for tests: scripts/reference/tiny_gguf.py --arch {arch} --type {qtype} --seed {seed}")
    w.add_context_length(hp["n_ctx"])
    w.add_embedding_length(hp["n_embd"])
    w.add_block_count(hp["n_layer"])
    w.add_feed_forward_length(hp["n_ff"])
    w.add_head_count(hp["n_head"])
    w.add_head_count_kv(hp["n_head_kv"])
    w.add_layer_norm_rms_eps(hp["rms_eps"])
    w.add_rope_freq_base(hp["rope_base"])
    if ga == "llama":
        w.add_vocab_size(N_VOCAB)
        w.add_rope_dimension_count(hp["head_dim"])
    if hp["head_dim"] * hp["n_head"] != hp["n_embd"]:
        w.add_key_length(hp["head_dim"])
        w.add_value_length(hp["head_dim"])
    if arch == "gemma3":
        w.add_sliding_window(hp["sliding_window"])
    if arch == "phi3":
        w.add_rope_dimension_count(hp["head_dim"])
    w.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[qtype]))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_tokenizer(w, arch, hp)

    weights = float_weights(arch, seed)
    for name, shape, kind in tensor_plan(arch):
        x = weights[name]
        if kind == "matrix":
            data, raw = encode(x, qtype)
            w.add_tensor(name, data, raw_dtype=raw)
        else:
            w.add_tensor(name, x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def describe():
    """Hyperparameters and tensor names of every architecture (for the fixture and the report)."""
    out = {}
    for arch in ARCHS:
        hp = dict(HPARAMS[arch])
        hp["n_vocab"] = N_VOCAB
        plan = tensor_plan(arch)
        hp["tensors"] = {n.replace("blk.0.", "blk.{i}."): list(shape) for n, shape, _ in plan
                         if not n.startswith("blk.") or n.startswith("blk.0.")}
        out[arch] = hp
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=ARCHS)
    ap.add_argument("--type", choices=TYPES)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out")
    ap.add_argument("--describe", action="store_true")
    args = ap.parse_args()
    if args.describe:
        json.dump(describe(), sys.stdout, indent=1)
        sys.stdout.write("\n")
        return
    if not (args.arch and args.type and args.out):
        ap.error("--arch, --type and --out are required")
    check_k_quants()
    write(args.arch, args.type, args.seed, args.out)


if __name__ == "__main__":
    main()
