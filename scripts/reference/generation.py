#!/usr/bin/env python3
"""Reference greedy generations for SmolLM2-135M-Instruct (Q4_1 GGUF), via llama.cpp.

Produces tests/fixtures/generation_reference.json: for a few fixed prompts
(raw text, story, code, and chat conversations rendered with the GGUF's own
`tokenizer.chat_template` via jinja2, add_generation_prompt=True), the exact
prompt string, its token ids, and the token ids produced by greedy (argmax)
decoding for up to MAX_NEW_TOKENS steps, stopping early on the EOS token
(which is then included in `tokens`).

Decoding is done by hand, token by token, so nothing but the model's logits
decides the output:

    llm.reset(); llm.eval(prompt_tokens)
    repeat: tok = argmax(logits of the last evaluated position)
            append tok; stop if tok == llm.token_eos(); else llm.eval([tok])

Prompts are tokenized with add_bos=False (the GGUF says
tokenizer.ggml.add_bos_token = false) and special=True (so ChatML markers such
as <|im_start|> in the chat prompt become their single special-token ids).
`text` is llm.detokenize(tokens) (special tokens rendered as empty strings),
decoded as UTF-8 with errors="replace".

The Rust implementation in anya must reproduce `prompt_tokens` exactly and, with
greedy decoding, the same `tokens` (a divergence late in a sequence can be an
arithmetic near-tie; the script records, for each generated token, the gap
between the best and second-best logit in `margins`, so such cases can be
recognized).

Regenerate (from the repository root, inside a venv with
scripts/reference/requirements.txt installed; llama-cpp-python builds
llama.cpp from source, CPU only is enough):

    python3 scripts/reference/generation.py \
        models/smollm2-135m-instruct/1.0.0/SmolLM2-135M-Instruct.Q4_1.gguf \
        tests/fixtures/generation_reference.json
"""

import ctypes
import hashlib
import json
import os
import sys

import jinja2
import llama_cpp
import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment
from llama_cpp import Llama

MAX_NEW_TOKENS = 32
N_CTX = 2048
N_THREADS = 2
SEED = 0
ADD_BOS = False
SPECIAL = True

CHAT_CASES = [
    ("chat", [{"role": "user", "content": "What is the capital of France?"}]),
    # Short answers that end with EOS (<|im_end|>) well within MAX_NEW_TOKENS.
    ("chat_eos", [{"role": "user", "content": "What is 2+2?"}]),
    (
        "chat_system",
        [
            {"role": "system", "content": "You are a friendly assistant."},
            {"role": "user", "content": "Hi!"},
        ],
    ),
]

RAW_CASES = [
    ("plain", "The capital of France is"),
    ("story", "Once upon a time, in a small village by the sea,"),
    ("code", "def fibonacci(n):\n"),
]


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def render_chat_template(template: str, messages, bos_token: str, eos_token: str) -> str:
    """Render a Hugging Face style chat template the way transformers does."""

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(
        messages=messages,
        add_generation_prompt=True,
        bos_token=bos_token,
        eos_token=eos_token,
    )


def last_logits(llm: Llama) -> np.ndarray:
    """Logits of the last position evaluated by the most recent llm.eval()."""
    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    if not ptr:
        raise RuntimeError("llama_get_logits_ith(-1) returned NULL")
    arr = np.ctypeslib.as_array(
        ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(llm.n_vocab(),)
    )
    return arr.copy()


def greedy(llm: Llama, prompt_tokens, eos: int):
    llm.reset()
    llm.eval(prompt_tokens)
    out = []
    margins = []
    for _ in range(MAX_NEW_TOKENS):
        logits = last_logits(llm)
        tok = int(np.argmax(logits))
        top2 = np.partition(logits, -2)[-2:]
        margins.append(round(float(top2[1] - top2[0]), 4))
        out.append(tok)
        if tok == eos:
            break
        llm.eval([tok])
    return out, margins


def greedy_via_library(llm: Llama, prompt_tokens, eos: int):
    """Cross-check: the library's own sampler with top_k=1."""
    llm.reset()
    out = []
    for tok in llm.generate(prompt_tokens, top_k=1, temp=0.0, reset=True):
        out.append(int(tok))
        if tok == eos or len(out) >= MAX_NEW_TOKENS:
            break
    return out


def main() -> int:
    if len(sys.argv) != 3:
        print(f"usage: {sys.argv[0]} MODEL_GGUF OUTPUT_JSON", file=sys.stderr)
        return 2
    model_path, out_path = sys.argv[1], sys.argv[2]

    llm = Llama(
        model_path=model_path,
        n_ctx=N_CTX,
        n_threads=N_THREADS,
        n_threads_batch=N_THREADS,
        seed=SEED,
        logits_all=False,
        verbose=False,
    )
    meta = llm.metadata
    eos = llm.token_eos()
    bos = llm.token_bos()

    def piece(tok: int) -> str:
        return llm.detokenize([tok], special=True).decode("utf-8", errors="replace")

    template = meta.get("tokenizer.chat_template")
    if not template:
        raise SystemExit("GGUF has no tokenizer.chat_template")
    cases = [{"name": n, "prompt": p} for n, p in RAW_CASES]
    for name, messages in CHAT_CASES:
        prompt = render_chat_template(template, messages, piece(bos), piece(eos))
        cases.append({"name": name, "messages": messages, "prompt": prompt})

    results = []
    for case in cases:
        prompt_tokens = llm.tokenize(case["prompt"].encode("utf-8"), add_bos=ADD_BOS, special=SPECIAL)
        tokens, margins = greedy(llm, prompt_tokens, eos)
        check = greedy_via_library(llm, prompt_tokens, eos)
        if check != tokens:
            print(f"WARNING [{case['name']}]: library sampler disagrees:\n  manual  {tokens}\n  library {check}", file=sys.stderr)
        text = llm.detokenize(tokens).decode("utf-8", errors="replace")
        entry = dict(case)
        entry.update(
            prompt_tokens=prompt_tokens,
            tokens=tokens,
            hit_eos=bool(tokens and tokens[-1] == eos),
            text=text,
            margins=margins,
        )
        results.append(entry)
        print(f"[{case['name']}] {len(prompt_tokens)} prompt tokens, {len(tokens)} generated, "
              f"eos={entry['hit_eos']} min_margin={min(margins):.3f}: {text!r}")

    out = {
        "generator": "scripts/reference/generation.py",
        "library": f"llama-cpp-python {llama_cpp.__version__}",
        "model_file": os.path.basename(model_path),
        "model_sha256": sha256_file(model_path),
        "decoding": "greedy (argmax), manual eval loop",
        "max_new_tokens": MAX_NEW_TOKENS,
        "n_ctx": N_CTX,
        "tokenize": {"add_bos": ADD_BOS, "special": SPECIAL},
        "gguf_add_bos_token": meta.get("tokenizer.ggml.add_bos_token"),
        "bos_token_id": bos,
        "eos_token_id": eos,
        "chat_template": template,
        "cases": results,
    }
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as f:
        f.write(dump_json(out))
    print(f"wrote {out_path}")
    return 0


def dump_json(obj) -> str:
    """Pretty JSON, but lists of numbers stay on one line (diff-friendly)."""

    def enc(value, indent):
        pad = "  " * indent
        if isinstance(value, dict):
            if not value:
                return "{}"
            items = [f'{pad}  {json.dumps(k)}: {enc(v, indent + 1)}' for k, v in value.items()]
            return "{\n" + ",\n".join(items) + f"\n{pad}}}"
        if isinstance(value, list) and value and not all(isinstance(v, (int, float)) for v in value):
            items = [f"{pad}  {enc(v, indent + 1)}" for v in value]
            return "[\n" + ",\n".join(items) + f"\n{pad}]"
        return json.dumps(value, ensure_ascii=False)

    return enc(obj, 0) + "\n"


if __name__ == "__main__":
    sys.exit(main())
