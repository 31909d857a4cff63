#!/usr/bin/env python3
"""Interactive embedding latency while a head training runs (issue 42, item 5).

Against a running server with all-minilm-l6-v2 (start it with the cache off, so every request
computes:  ANYA__CACHE__ENABLED=false target/debug/anya serve --port 18431 \
--models-dir models --model all-minilm-l6-v2), it times 30 short /predict calls idle, starts a
training of N examples of 300 words into head HEAD, times 40 back-to-back calls and 8 calls
1.5 s apart while it runs, and waits for the training to finish.

    scripts/bench/heads_interleave.py N HEAD [BASE_URL]
"""
import json, time, urllib.request, sys, random, statistics
BASE = sys.argv[3] if len(sys.argv) > 3 else "http://127.0.0.1:18431"
def post(path, body):
    req = urllib.request.Request(BASE + path, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
def get(path):
    with urllib.request.urlopen(BASE + path, timeout=60) as r:
        return json.loads(r.read())
def one(k):
    t0 = time.perf_counter()
    s, b = post("/models/all-minilm-l6-v2/predict", {"inputs": [f"short sentence {k} {random.random()}"]})
    return (time.perf_counter()-t0)*1000
def rep(name, xs):
    xs = sorted(xs)
    print(f"{name}: n={len(xs)} p50={statistics.median(xs):.0f} ms p90={xs[int(len(xs)*0.9)-1]:.0f} ms max={xs[-1]:.0f} ms", flush=True)
rep("idle closed loop", [one(k) for k in range(30)])
words = "the quick brown fox jumps over the lazy dog while markets rally and storms gather near the coast".split()
ex = []
for i in range(int(sys.argv[1])):
    random.seed(i)
    ex.append({"text": " ".join(random.choice(words) for _ in range(300)) + f" {i}", "label": "abcd"[i % 4]})
t0 = time.perf_counter()
s, t = post(f"/models/{sys.argv[2]}/heads", {"base": "all-minilm-l6-v2", "examples": ex})
print("start", s, flush=True)
rep("training, closed loop", [one(k) for k in range(40)])
xs = []
for k in range(8):
    time.sleep(1.5); xs.append(one(k))
rep("training, one every 1.5 s", xs)
st = get(f"/models/{sys.argv[2]}/heads/{t['id']}")
print("progress", st["progress"], flush=True)
while st["status"] == "running":
    time.sleep(1); st = get(f"/models/{sys.argv[2]}/heads/{t['id']}")
print("training", st["status"], f"{time.perf_counter()-t0:.1f} s", flush=True)
