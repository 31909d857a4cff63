"""Embeddings over the native API, KServe v2 REST (JSON and binary tensors) and KServe v2 gRPC,
against one running anya, in one run: the same sentence per request, CONCURRENCY client threads
per protocol, the protocols interleaved in rounds so machine noise hits each alike.

  python scripts/bench/v2_bench.py --url http://127.0.0.1:8000 --grpc 127.0.0.1:8001 \
      [--concurrency 32] [--seconds 10] [--rounds 2] [--json-out FILE]

The clients send pre-built bodies over keep-alive connections (http.client; a raw gRPC channel
with the request serialized once), so the figures measure the server, not a client library.
Needs grpcio (tritonclient[grpc] pulls it in); run with .cache/venv/bin/python.
"""

import argparse
import http.client
import json
import statistics
import struct
import threading
import time
import urllib.parse

import grpc

MODEL = "all-minilm-l6-v2"
SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."


def pb_string(field, s):
    b = s.encode()
    return bytes([field << 3 | 2]) + varint(len(b)) + b


def pb_bytes(field, b):
    return bytes([field << 3 | 2]) + varint(len(b)) + b


def varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def grpc_request():
    """A ModelInferRequest, hand-encoded (fields per proto/grpc_service.proto)."""
    raw = struct.pack("<I", len(SENTENCE.encode())) + SENTENCE.encode()
    shape = bytes([3 << 3 | 2]) + varint(1) + varint(1)  # packed int64 shape [1]
    tensor = pb_string(1, "text") + pb_string(2, "BYTES") + shape
    return pb_string(1, MODEL) + pb_bytes(5, tensor) + pb_bytes(7, raw)


def http_cases():
    native = json.dumps({"inputs": [SENTENCE]}).encode()
    v2_json = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                      "data": [SENTENCE]}],
                          "outputs": [{"name": "embedding",
                                       "parameters": {"binary_data": False}}]}).encode()
    raw = struct.pack("<I", len(SENTENCE.encode())) + SENTENCE.encode()
    header = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    json_h = {"content-type": "application/json"}
    return {
        "native": (f"/models/{MODEL}/predict", native, json_h),
        "v2 REST json": (f"/v2/models/{MODEL}/infer", v2_json, json_h),
        "v2 REST binary": (f"/v2/models/{MODEL}/infer", header + raw,
                           {"content-type": "application/octet-stream",
                            "inference-header-content-length": str(len(header))}),
    }


def run_http(url, path, body, headers, concurrency, seconds):
    u = urllib.parse.urlparse(url)
    lat, errors = [], [0]
    stop = time.monotonic() + seconds
    lock = threading.Lock()

    def worker():
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        mine = []
        while time.monotonic() < stop:
            t = time.perf_counter()
            try:
                conn.request("POST", path, body, headers)
                r = conn.getresponse()
                r.read()
                ok = r.status == 200
            except Exception:
                conn.close()
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
                ok = False
            if ok:
                mine.append(time.perf_counter() - t)
            else:
                with lock:
                    errors[0] += 1
        with lock:
            lat.extend(mine)

    return timed(worker, concurrency, seconds, lat, errors)


def run_grpc(addr, body, concurrency, seconds):
    lat, errors = [], [0]
    stop = time.monotonic() + seconds
    lock = threading.Lock()
    channels = [grpc.insecure_channel(addr) for _ in range(max(1, concurrency // 8))]

    def worker(i):
        call = channels[i % len(channels)].unary_unary(
            "/inference.GRPCInferenceService/ModelInfer")
        mine = []
        while time.monotonic() < stop:
            t = time.perf_counter()
            try:
                call(body, timeout=60)
                mine.append(time.perf_counter() - t)
            except grpc.RpcError:
                with lock:
                    errors[0] += 1
        with lock:
            lat.extend(mine)

    return timed(worker, concurrency, seconds, lat, errors, indexed=True)


def timed(worker, concurrency, seconds, lat, errors, indexed=False):
    threads = [threading.Thread(target=worker, args=(i,) if indexed else ())
               for i in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.perf_counter() - t0
    lat.sort()
    pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1e3 if lat else float("nan")
    return {"requests": len(lat), "errors": errors[0], "rps": len(lat) / took,
            "p50_ms": pct(0.50), "p99_ms": pct(0.99)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--grpc", default="127.0.0.1:8001")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json-out")
    a = ap.parse_args()
    cases = http_cases()
    body = grpc_request()
    runners = {name: (lambda c, s, p=p: run_http(a.url, *p, c, s)) for name, p in cases.items()}
    runners["v2 gRPC"] = lambda c, s: run_grpc(a.grpc, body, c, s)
    for name, run in runners.items():  # warm-up, not counted
        run(a.concurrency, 2)
    results = {name: [] for name in runners}
    for _ in range(a.rounds):
        for name, run in runners.items():
            results[name].append(run(a.concurrency, a.seconds))
    print(f"embeddings, 1 sentence per request, c={a.concurrency}, "
          f"{a.rounds} rounds x {a.seconds:g} s each, interleaved")
    print(f"{'protocol':<16} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    summary = {}
    for name, rs in results.items():
        s = {"rps": statistics.median(r["rps"] for r in rs),
             "p50_ms": statistics.median(r["p50_ms"] for r in rs),
             "p99_ms": statistics.median(r["p99_ms"] for r in rs),
             "errors": sum(r["errors"] for r in rs), "rounds": rs}
        summary[name] = s
        print(f"{name:<16} {s['rps']:>8.1f} {s['p50_ms']:>8.1f} {s['p99_ms']:>8.1f} "
              f"{s['errors']:>7}")
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump({"concurrency": a.concurrency, "seconds": a.seconds, "results": summary},
                      f, indent=2)


if __name__ == "__main__":
    main()
