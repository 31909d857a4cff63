#!/usr/bin/env python3
"""The hardening probe, as figures: run it against a running anya (default models) before and
after a change.

  scripts/bench/hardening_probe.py [BASE_URL] [--pid PID] [--seconds S]

1. /health latency (p50/p99) while 4 clients send 1.9 MB prompts to the generation model
   (refused with 400), and a 1-sentence embedding's latency meanwhile.
2. A 1-sentence embedding's latency (p50/p99) while 4 clients send 256-sentence requests.
3. Server RSS (with --pid): before, after 8 large legal bodies, and 10 s later.

Standard library only; every loop is bounded in count and time, and only BASE_URL (loopback)
is contacted.
"""

import argparse
import http.client
import json
import statistics
import threading
import time
import urllib.parse

EMBED = "/models/all-minilm-l6-v2/predict"
GEN = "/models/smollm2-135m-instruct/predict"


def request(base, method, path, body=None, timeout=60):
    u = urllib.parse.urlparse(base)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    data = None if body is None else json.dumps(body).encode()
    headers = {"content-type": "application/json"} if data is not None else {}
    t0 = time.perf_counter()
    c.request(method, path, body=data, headers=headers)
    r = c.getresponse()
    r.read()
    c.close()
    return r.status, (time.perf_counter() - t0) * 1e3


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def under_load(base, seconds, load_body, load_path, probe):
    stop = time.time() + seconds
    statuses = {}
    lock = threading.Lock()

    def loader():
        while time.time() < stop:
            try:
                s, _ = request(base, "POST", load_path, load_body, timeout=120)
            except Exception as e:  # noqa: BLE001 - a probe records what happened
                s = type(e).__name__
            with lock:
                statuses[s] = statuses.get(s, 0) + 1

    threads = [threading.Thread(target=loader) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    lat = []
    while time.time() < stop:
        try:
            _, ms = probe()
            lat.append(ms)
        except Exception:  # noqa: BLE001
            lat.append(float("inf"))
        time.sleep(0.05)
    for t in threads:
        t.join()
    return lat, statuses


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base", nargs="?", default="http://127.0.0.1:8000")
    ap.add_argument("--pid", type=int)
    ap.add_argument("--seconds", type=float, default=10)
    a = ap.parse_args()
    base = a.base.rstrip("/")
    rows = []
    start_rss = rss_mb(a.pid) if a.pid else None

    idle = [request(base, "GET", "/health")[1] for _ in range(50)]
    rows.append(("/health idle", pct(idle, 50), pct(idle, 99), ""))

    big_prompt = {"inputs": ["hello world " * 160_000], "parameters": {"max_tokens": 1}}
    lat, st = under_load(base, a.seconds, big_prompt, GEN, lambda: request(base, "GET", "/health"))
    rows.append(("/health, 4 clients × 1.9 MB prompts", pct(lat, 50), pct(lat, 99), st))
    one = {"inputs": ["a small request"], "parameters": {"cache": False}}
    lat, st = under_load(base, a.seconds, big_prompt, GEN, lambda: request(base, "POST", EMBED, one))
    rows.append(("1 sentence, 4 clients × 1.9 MB prompts", pct(lat, 50), pct(lat, 99), st))

    for n in (32, 256):
        big = {
            "inputs": [f"sentence {i} about the weather in a town by the sea" for i in range(n)],
            "parameters": {"cache": False},
        }
        lat, st = under_load(base, a.seconds, big, EMBED, lambda: request(base, "POST", EMBED, one))
        rows.append((f"1 sentence, 4 clients × {n} sentences", pct(lat, 50), pct(lat, 99), st))

    print("| scenario | p50 ms | p99 ms | load answers |")
    print("|---|---|---|---|")
    for name, p50, p99, st in rows:
        print(f"| {name} | {p50:.1f} | {p99:.1f} | {st} |")

    if a.pid:
        before = rss_mb(a.pid)
        legal = {"inputs": ["word " * 380_000], "parameters": {"truncate": True, "cache": False}}
        for _ in range(8):
            request(base, "POST", EMBED, legal, timeout=120)
        after = rss_mb(a.pid)
        time.sleep(10)
        later = rss_mb(a.pid)
        print(f"\nRSS MB: idle at start {start_rss:.0f}; after the scenarios above {before:.0f}; "
              f"after 8 more × 1.9 MB bodies {after:.0f}; 10 s later {later:.0f}")


if __name__ == "__main__":
    main()
