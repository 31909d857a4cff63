"""sentence-transformers in process: all-MiniLM-L6-v2 `encode` over the 128 sentences of
examples/embed_speed.rs (same generator), at a batch size, a few rounds; the compute floor the
embedding benchmarks compare against. Includes tokenization; `encode` sorts the sentences by
length before batching, which is its own padding saver.

    BENCH_VENV/bin/python scripts/bench/st_encode_speed.py MODEL_DIR [BATCH] [ROUNDS]
"""
import statistics
import sys
import time

WORDS = ("the model serves a quick brown fox across river to city market every morning while "
         "engineers measure latency and throughput of their servers under heavy load with many "
         "small requests music garden window cloud signal paper light story ocean bridge "
         "mountain embedding vectors search documents quietly because nobody remembered "
         "unbelievable").split()
MASK = (1 << 64) - 1


def sentence(i: int) -> str:
    x = ((i * 0x9E3779B97F4A7C15) & MASK) ^ 0xD1B54A32D192ED03

    def nxt() -> int:
        nonlocal x
        x ^= (x << 13) & MASK
        x ^= x >> 7
        x ^= (x << 17) & MASK
        return x

    n = 8 + nxt() % 33
    return " ".join(WORDS[nxt() % len(WORDS)] for _ in range(n))


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    from sentence_transformers import SentenceTransformer
    model_dir = sys.argv[1]
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    model = SentenceTransformer(model_dir, device="cpu")
    sentences = [sentence(i) for i in range(128)]
    model.encode(sentences[:32], batch_size=batch)
    rates = []
    for _ in range(rounds):
        t = time.perf_counter()
        model.encode(sentences, batch_size=batch, normalize_embeddings=True)
        rates.append(len(sentences) / (time.perf_counter() - t))
    print(f"sentence-transformers batch {batch}: median {statistics.median(rates):.1f} "
          f"sentences/s (rounds {', '.join(f'{r:.1f}' for r in rates)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
