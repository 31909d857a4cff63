#!/usr/bin/env python3
"""Idle-socket probe (issue 42): starts `anya serve` under `nofile` 1,024 with the gRPC port on,
opens N silent TCP connections to EACH port, and measures `/health` latency over a fresh
connection per request while they are open; then reports how many of the idle sockets the
server closed, and when.

    scripts/bench/idle_sockets.py target/debug/anya [--sockets 1100] [--nofile 1024]

Loopback only. Prints one JSON object.
"""
import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def health_ms(port):
    t = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=120) as r:
        r.read()
        assert r.status == 200
    return (time.perf_counter() - t) * 1000


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("anya")
    ap.add_argument("--sockets", type=int, default=1100)
    ap.add_argument("--nofile", type=int, default=1024)
    ap.add_argument("--samples", type=int, default=200)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * a.sockets + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    repo = tempfile.mkdtemp()
    os.makedirs(f"{repo}/echo/1.0.0")
    with open(f"{repo}/echo/1.0.0/anya.yaml", "w") as f:
        f.write("id: echo\nversion: 1.0.0\ntask: echo\nformat: none\nmax_input_length: 64\n")
    http_port, grpc_port = free_port(), free_port()
    env = dict(os.environ, ANYA__SERVER__GRPC_PORT=str(grpc_port), RUST_LOG="info")
    # The server's own limit: soft = hard = nofile (so it cannot raise it), as under systemd.
    cmd = ["prlimit", f"--nofile={a.nofile}:{a.nofile}", a.anya, "serve", "--models-dir", repo,
           "--port", str(http_port)]
    log = open(f"{repo}/anya.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(200):
            try:
                health_ms(http_port)
                break
            except OSError:
                time.sleep(0.1)
        idle = {"http": [], "grpc": []}
        for name, port in (("grpc", grpc_port), ("http", http_port)):
            for _ in range(a.sockets):
                s = socket.socket()
                s.setblocking(True)
                s.connect(("127.0.0.1", port))
                s.setblocking(False)
                idle[name].append(s)
        opened = time.time()
        lat = [health_ms(http_port) for _ in range(a.samples)]
        # Which idle sockets has the server closed (EOF or reset), and by when.
        closed_at = {"http": [], "grpc": []}
        deadline = time.time() + 30
        while time.time() < deadline:
            for name, socks in idle.items():
                keep = []
                for s in socks:
                    try:
                        data = s.recv(4096)
                        if data == b"":
                            closed_at[name].append(time.time() - opened)
                            s.close()
                            continue
                    except BlockingIOError:
                        pass
                    except OSError:
                        closed_at[name].append(time.time() - opened)
                        s.close()
                        continue
                    keep.append(s)
                idle[name] = keep
            if not idle["http"] and not idle["grpc"]:
                break
            time.sleep(0.2)
        caps = [l.strip() for l in open(f"{repo}/anya.log") if "connection limits" in l]
        print(json.dumps({
            "sockets_per_port": a.sockets,
            "nofile": a.nofile,
            "health_ms": {"p50": round(pct(lat, 50), 2), "p99": round(pct(lat, 99), 2),
                          "max": round(max(lat), 2)},
            "idle_closed": {k: len(v) for k, v in closed_at.items()},
            "idle_open_after_30s": {k: len(v) for k, v in idle.items()},
            "closed_by_s": {k: round(max(v), 1) if v else None for k, v in closed_at.items()},
            "server_log": caps[-1][-200:] if caps else None,
        }, indent=1))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
