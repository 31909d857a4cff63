"""llama.cpp in process on a GGUF, the counterpart of examples/llama_speed.rs: prompt tokens/s
(the same 64 token ids) and decode tokens/s (64 single-token evals), three rounds.

    BENCH_VENV/bin/python scripts/bench/llama_cpp_speed.py THREADS MODEL.gguf
"""
import sys
import time

from llama_cpp import Llama


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    threads, path = int(sys.argv[1]), sys.argv[2]
    llm = Llama(model_path=path, n_ctx=512, n_threads=threads, n_threads_batch=threads,
                verbose=False)
    prompt = [300 + (i * 7919) % 40000 for i in range(64)]
    for _ in range(3):
        llm.reset()
        t = time.perf_counter()
        llm.eval(prompt)
        pp = len(prompt) / (time.perf_counter() - t)
        t = time.perf_counter()
        for _ in range(64):
            llm.eval([13])
        tg = 64 / (time.perf_counter() - t)
        print(f"llama.cpp threads={threads}: prompt {pp:.1f} tok/s, decode {tg:.1f} tok/s",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
