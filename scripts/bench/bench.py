#!/usr/bin/env python3
"""Side-by-side benchmarks of anya against the servers users would run instead.

Run through scripts/bench/run.sh (it builds, sets up the peers and cleans up). This script only
needs the standard library (matplotlib for the chart); it starts every server itself on a free
loopback port, waits for it to be ready, drives it with the one load generator
(examples/loadgen.rs, the code of `anya bench`), stops it, prints one table and writes
bench-results/latest.json (+ latest.md, the table in Markdown, and latest.png, the chart).

Scenarios (anya and each peer on the same inputs, back to back, the order rotating, each with a
warm-up; every ratio is against the strongest peer of the row):
  overhead      anya's echo model (the full stack)   vs a bare axum handler, c=32 and 256
  embed-inproc  anya's BERT in process               vs ONNX Runtime in process (2 threads),
                mixed-length and uniform sentences, batch 1 and 32
  embed         anya /v1/embeddings, 1 and 32 sentences per request, c=1/8/32/64
                                                     vs FastAPI + ONNX Runtime (same session)
  generate      anya /v1/completions, streamed and not, c=1/4/8/16, 128 new tokens
                                                     vs llama.cpp's llama-server -np 8 (-np 16
                                                     for c=16); TTFT and ITL p50/p99 streamed;
                a 1,000-token prompt alone and beside 4 decoding streams
and for every server: RSS idle and peak (VmRSS / VmHWM) and time from start to ready.
With --legacy-python the first round's peers (FastAPI + sentence-transformers, llama-cpp-python's
server) are added as extra columns.

The ONNX model is exported by scripts/bench/ort_embed.py from the same safetensors anya serves and
checked against sentence-transformers' vectors (tests/fixtures) before anything is timed.

Quiet-machine check: before each pair the script waits a settle period and measures the CPU
used by processes that are not part of the benchmark (machine busy time from /proc/stat minus
the CPU time of our servers, our load generator and this script); it measures the same during
every run. When that foreign load passes --max-foreign cores the pair is marked busy and no
ratio is printed for it. The 1-minute load average is recorded beside it, but it is not the
test: the benchmark's own load keeps it near 2 on a 2-core machine for a minute after each run.
"""

import argparse
import datetime as dt
import json
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HZ = os.sysconf("SC_CLK_TCK")

EMBED_ID = "all-minilm-l6-v2"
GEN_ID = "smollm2-135m-instruct"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# --gen-model picks another generation model of the repository (its one .gguf file), e.g.
# gemma-3-270m (Q4_K_M): the generate scenario then runs on it, on both sides.
ECHO_MANIFEST = (
    "id: echo\nversion: 1.0.0\ntask: echo\nformat: none\nmax_input_length: 64\nmax_inputs: 64\n"
)

# Durations per mode. Each loadgen run: warm-up (seconds or requests), then the measurement.
PROFILES = {
    # About 20 minutes on a quiet 2-core machine; pairs are skipped once `budget` seconds have
    # passed.
    "full": {
        "settle": 4.0,
        "max_wait": 20.0,
        "budget": 40 * 60.0,
        "overhead": {"concurrency": [32, 256], "warmup": 2.0, "duration": 8.0},
        "inproc": {"rounds": 5},
        "embed_concurrency": [1, 8, 32, 64],
        "embed": {"warmup": 2.0, "duration": 8.0},
        "gen_concurrency": [1, 4, 8, 16],
        "gen_tokens": 128,
        "gen_requests": {1: 3, 4: 8, 8: 16, 16: 16},
        "gen_warmup_requests": 1,
        # no new requests after this many seconds (those in flight finish); a client gives up
        # on one request after gen_timeout seconds (counted as an error)
        "gen_cap": 40.0,
        "gen_timeout": 240.0,
        "long_prompt": {"requests": 2, "beside_tokens": 512, "beside_head_start": 1.0},
    },
    # A smoke test of the harness (about 5 minutes): the figures are not worth comparing.
    "quick": {
        "settle": 1.0,
        "max_wait": 6.0,
        "budget": 10 * 60.0,
        "overhead": {"concurrency": [32], "warmup": 0.5, "duration": 2.0},
        "inproc": {"rounds": 1},
        "embed_concurrency": [1, 32],
        "embed": {"warmup": 0.5, "duration": 2.0},
        "gen_concurrency": [1, 8],
        "gen_tokens": 32,
        "gen_requests": {1: 1, 8: 8},
        "gen_warmup_requests": 1,
        "gen_cap": 10.0,
        "gen_timeout": 120.0,
        "long_prompt": {"requests": 1, "beside_tokens": 128, "beside_head_start": 0.5},
    },
}


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=2.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, ""
    except (OSError, ValueError):
        return None, ""


def http_post(url, body, timeout=300.0):
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


# ---------------------------------------------------------------------------- CPU accounting


STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def stat_ticks():
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    v = [int(x) for x in parts[:8]] + [0] * (8 - len(parts[:8]))
    return dict(zip(STAT_FIELDS, v))


def busy_of(t):
    """Busy ticks of all CPUs; includes steal (capacity the hypervisor gave to others) and
    softirq (loopback networking, which per-process times only partly show)."""
    return sum(t[k] for k in ("user", "nice", "system", "irq", "softirq", "steal"))


def proc_ticks(pid):
    """utime + stime (all threads) of a live process, in ticks; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return 0
    fields = s[s.rindex(")") + 2 :].split()
    # utime, stime, and cutime, cstime: the children it has waited for (Python servers run
    # helper processes while importing)
    return sum(int(x) for x in fields[11:15])


def loadavg1():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


class CpuWindow:
    """Foreign CPU (cores busy with processes that are not ours) over a window."""

    def __init__(self, servers):
        self.servers = servers
        self.t = time.monotonic()
        self.stat = stat_ticks()
        self.ours = sum(proc_ticks(s.pid) for s in servers if s.pid)
        self.children = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.me = resource.getrusage(resource.RUSAGE_SELF)

    def close(self):
        wall = time.monotonic() - self.t
        stat = stat_ticks()
        ours = sum(proc_ticks(s.pid) for s in self.servers if s.pid)
        ch = resource.getrusage(resource.RUSAGE_CHILDREN)
        me = resource.getrusage(resource.RUSAGE_SELF)
        ours_s = (ours - self.ours) / HZ
        ours_s += (ch.ru_utime - self.children.ru_utime) + (ch.ru_stime - self.children.ru_stime)
        ours_s += (me.ru_utime - self.me.ru_utime) + (me.ru_stime - self.me.ru_stime)
        machine_s = (busy_of(stat) - busy_of(self.stat)) / HZ
        if wall <= 0:
            wall = 1e-9
        return {
            "wall_s": round(wall, 2),
            "stat_cores": {k: round((stat[k] - self.stat[k]) / HZ / wall, 3) for k in STAT_FIELDS},
            "machine_cores": round(machine_s / wall, 3),
            "ours_cores": round(ours_s / wall, 3),
            "foreign_cores": round(max(0.0, machine_s - ours_s) / wall, 3),
        }


# ---------------------------------------------------------------------------------- servers


class Server:
    """A server process we started: own process group, log file, readiness, memory."""

    def __init__(self, name, role, cmd, ready_url, env=None, cwd=None, ready_timeout=300.0):
        self.name, self.role, self.cmd, self.ready_url = name, role, cmd, ready_url
        self.env, self.cwd, self.ready_timeout = env, cwd, ready_timeout
        self.proc = None
        self.pid = None
        self.info = {"cmd": " ".join(str(c) for c in cmd)}

    def start(self, ctx):
        logf = open(ctx.logs / f"{self.name}.log", "w")
        env = dict(os.environ)
        env.update(self.env or {})
        # Was the machine quiet around the start? Judged on the second before it and the idle
        # second after it: the start itself makes kernel work (reading the model files into the
        # page cache) that no process is charged for, and a start of a few ms is below
        # /proc/stat's 10 ms resolution.
        window = CpuWindow(ctx.running())
        time.sleep(1.0)
        before = window.close()["foreign_cores"]
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [str(c) for c in self.cmd],
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=self.cwd,
            start_new_session=True,
        )
        self.pid = self.proc.pid
        ctx.register(self)
        deadline = t0 + self.ready_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} before it was ready "
                    f"(see {ctx.logs / (self.name + '.log')})"
                )
            status, _ = http_get(self.ready_url, timeout=1.0)
            if status == 200:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {self.ready_timeout:.0f} s")
            # fine-grained at first: the Rust servers are ready within milliseconds
            time.sleep(0.005 if time.monotonic() - t0 < 2.0 else 0.05)
        self.info["ready_s"] = round(time.monotonic() - t0, 3)
        window = CpuWindow(ctx.running())
        time.sleep(1.0)
        self.info["rss_idle_mb"] = self.memory()[0]
        self.info["ready_foreign_cores"] = max(before, window.close()["foreign_cores"])
        log(f"{self.name} ready in {self.info['ready_s']:.2f} s, idle RSS {self.info['rss_idle_mb']} MB")

    def memory(self):
        """(VmRSS, VmHWM) in MB."""
        rss = hwm = None
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss = round(int(line.split()[1]) / 1024, 1)
                    elif line.startswith("VmHWM:"):
                        hwm = round(int(line.split()[1]) / 1024, 1)
        except OSError:
            pass
        return rss, hwm

    def stop(self, ctx=None):
        if not self.proc:
            return
        if self.proc.poll() is None:
            rss, hwm = self.memory()
            self.info["rss_end_mb"], self.info["rss_peak_mb"] = rss, hwm
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()
        if ctx:
            ctx.unregister(self)
        self.proc = None


class Context:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out).resolve()
        self.logs = self.out.parent / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pidfile = Path(args.pidfile) if args.pidfile else None
        self.servers = {}
        self.live = []
        self.tmp = Path(tempfile.mkdtemp(prefix="anya-bench-"))
        self.target = Path(args.target_dir)
        self.loadgen = self.target / "release" / "examples" / "loadgen"
        self.hello = self.target / "release" / "examples" / "hello_axum"
        self.anya = self.target / "release" / "anya"
        self.models = Path(args.models_dir).resolve()
        self.pair_no = 0

    def running(self):
        return list(self.live)

    def register(self, s):
        self.live.append(s)
        self.servers[s.name] = s
        self._write_pids()

    def unregister(self, s):
        if s in self.live:
            self.live.remove(s)
        self._write_pids()

    def _write_pids(self):
        if self.pidfile:
            self.pidfile.write_text("".join(f"{s.pid}\n" for s in self.live))

    def stop_all(self):
        for s in list(self.live):
            s.stop(self)


# ------------------------------------------------------------------------ the server zoo


def anya_server(ctx, name, model_id, models_dir, env=None):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # cwd: an empty folder, so no config/anya.yaml is picked up: anya runs on its defaults
    # (plus the env overrides named here, which are recorded in the results).
    cwd = ctx.tmp / f"cwd-{name}"
    cwd.mkdir(exist_ok=True)
    cmd = [ctx.anya, "serve", "--models-dir", models_dir, "--model", model_id,
           "--host", "127.0.0.1", "--port", port]
    s = Server(name, "anya", cmd, f"{base}/ready", env=env, cwd=cwd)
    s.base = base
    s.info["env"] = env or {}
    return s


def ort_http_peer(ctx):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [ctx.args.python, ROOT / "scripts/bench/ort_embed.py", "serve", ctx.onnx,
           ctx.models / EMBED_ID / "1.0.0", "--port", port]
    s = Server("fastapi-onnxruntime", "peer", cmd, f"{base}/health")
    s.base = base
    return s


def st_peer(ctx):
    """Legacy peer (--legacy-python): FastAPI + sentence-transformers (PyTorch)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [ctx.args.legacy_python, ROOT / "scripts/bench/embed_server.py",
           "--model-dir", ctx.models / EMBED_ID / "1.0.0", "--port", port,
           "--endpoint", ctx.args.embed_endpoint]
    s = Server("fastapi-sentence-transformers", "peer", cmd, f"{base}/health")
    s.base = base
    return s


def gen_gguf(ctx):
    """The GGUF of the generation model both sides serve."""
    if ctx.args.gen_model == GEN_ID:
        return ctx.models / GEN_ID / "1.0.0" / GGUF
    files = sorted((ctx.models / ctx.args.gen_model / "1.0.0").glob("*.gguf"))
    if len(files) != 1:
        sys.exit(f"--gen-model {ctx.args.gen_model}: expected one .gguf in its 1.0.0 folder")
    return files[0]


def llama_server_peer(ctx, slots):
    """llama.cpp's own C++ server with `slots` parallel slots, 2048 tokens of context each."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [ctx.args.llama_server, "-m", gen_gguf(ctx),
           "-t", str(ctx.args.llama_threads), "-np", str(slots), "-c", str(2048 * slots),
           "--host", "127.0.0.1", "--port", port, "--no-webui"]
    s = Server(f"llama-server-np{slots}", "peer", cmd, f"{base}/health")
    s.base = base
    return s


def llama_cpp_python_peer(ctx):
    """Legacy peer (--legacy-python): llama-cpp-python's OpenAI server, one request at a time."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    t = str(ctx.args.llama_threads)
    cmd = [ctx.args.legacy_python, "-m", "llama_cpp.server",
           "--model", gen_gguf(ctx),
           "--host", "127.0.0.1", "--port", port,
           "--n_ctx", "2048", "--n_threads", t, "--n_threads_batch", t,
           # Off by default it cuts the running stream as soon as another request waits:
           # concurrent clients would get truncated answers.
           "--interrupt_requests", "False",
           "--verbose", "False"]
    s = Server("llama-cpp-python-server", "peer", cmd, f"{base}/v1/models")
    s.base = base
    return s


def hello_peer(ctx):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    s = Server("axum-hello", "peer", [ctx.hello, port], f"{base}/")
    s.base = base
    return s


# ------------------------------------------------------------------------------- load runs


def loadgen_cmd(ctx, url, concurrency, seed, body, label, duration=None, warmup=None,
                requests=None, warmup_requests=None, batch=None, stream=False,
                expect_tokens=None, timeout=None, prompt_words=None, fresh=False):
    cmd = [str(ctx.loadgen), url, "-c", str(concurrency), "--seed", str(seed),
           "--body", json.dumps(body), "--label", label, "--quiet",
           "--threads", str(ctx.args.loadgen_threads)]
    if timeout:
        cmd += ["--timeout", str(timeout)]
    if duration:
        cmd += ["-d", str(duration)]
    if requests:
        cmd += ["-n", str(requests)]
    if warmup:
        cmd += ["--warmup", str(warmup)]
    if warmup_requests:
        cmd += ["--warmup-requests", str(warmup_requests)]
    if batch:
        cmd += ["--batch", str(batch)]
    if stream:
        cmd += ["--stream"]
    if expect_tokens:
        cmd += ["--expect-tokens", str(expect_tokens)]
    if prompt_words:
        cmd += ["--prompt-words", str(prompt_words)]
    if fresh:
        cmd += ["--fresh-connections"]
    return cmd


def loadgen(ctx, *a, **kw):
    r = subprocess.run(loadgen_cmd(ctx, *a, **kw), capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"loadgen failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def settle(ctx):
    """Wait the settle period, and longer (up to --max-wait) while foreign load is above the
    limit; return the foreign CPU of the last window, the time waited and the 1-minute load."""
    t0 = time.monotonic()
    while True:
        w = CpuWindow(ctx.running())
        time.sleep(ctx.profile["settle"])
        cpu = w.close()
        waited = time.monotonic() - t0
        if cpu["foreign_cores"] <= ctx.args.max_foreign or waited >= ctx.args.max_wait:
            break
    cpu["waited_s"] = round(waited, 1)
    cpu["loadavg1"] = loadavg1()
    return cpu


def run_pair(ctx, scenario, params, sides):
    """sides: [(who, thunk)], 'anya' and one or more peers (by name); runs them back to back,
    the order rotating from one pair to the next, after a settle period; checks foreign load."""
    if time.monotonic() - ctx.t0 > ctx.profile["budget"]:
        log(f"{scenario} {params}: skipped, past the time budget of {ctx.profile['budget']:.0f} s")
        ctx.results["skipped"].append({"scenario": scenario, "params": params})
        return None
    ctx.pair_no += 1
    k = ctx.pair_no % len(sides)
    order = sides[k:] + sides[:k]
    before = settle(ctx)
    result = {"scenario": scenario, "params": params, "before": before,
              "order": [w for w, _ in order], "peers": [w for w, _ in sides if w != "anya"]}
    for who, thunk in order:
        w = CpuWindow(ctx.running())
        try:
            r = thunk()
        except RuntimeError as e:
            log(f"{scenario} {params}: {who} failed: {e}")
            r = {"failed": str(e)[-500:]}
        r["cpu"] = w.close()
        result[who] = r
    foreign = max([before["foreign_cores"]] + [result[w]["cpu"]["foreign_cores"] for w, _ in sides])
    result["foreign_cores_max"] = foreign
    result["busy"] = foreign > ctx.args.max_foreign
    log(f"{scenario} {params}: " + " | ".join(f"{w} {brief(result[w])}" for w, _ in sides)
        + f" | foreign {foreign:.2f} cores, load1 {before['loadavg1']:.2f}"
        + (" BUSY" if result["busy"] else ""))
    ctx.results["pairs"].append(result)
    return result


def brief(r):
    if r.get("failed"):
        return "FAILED"
    if "sentences_per_s" in r:
        return f"{r['sentences_per_s']:.1f} sentences/s"
    s = f"{r['rps']:.1f} req/s p50 {fmt_num(r['latency_ms'] and r['latency_ms']['p50'])} ms"
    if r.get("tokens_generated"):
        s += f", {r['tokens_per_s']:.1f} tok/s"
    if (r.get("ttft_ms") or {}).get("p50") is not None:
        s += f", TTFT p50 {r['ttft_ms']['p50']:.0f} ms"
    if r["errors"] or r.get("short"):
        s += f", errors {r['errors']} short {r.get('short')}"
    return s


# ------------------------------------------------------------------------------ scenarios


def scenario_overhead(ctx):
    p = ctx.profile["overhead"]
    echo_repo = ctx.tmp / "echo-models"
    (echo_repo / "echo" / "1.0.0").mkdir(parents=True, exist_ok=True)
    (echo_repo / "echo" / "1.0.0" / "anya.yaml").write_text(ECHO_MANIFEST)
    anya = anya_server(ctx, "anya-echo", "echo", echo_repo)
    peer = hello_peer(ctx)
    try:
        anya.start(ctx)
        peer.start(ctx)
        body = {"inputs": ["$SENTENCE"]}
        for c in p["concurrency"]:
            seed = ctx.pair_no * 1_000_000
            run_pair(ctx, "overhead", {"concurrency": c}, [
                ("anya", lambda c=c, seed=seed: loadgen(
                    ctx, f"{anya.base}/models/echo/predict", c, seed, body, "anya-echo",
                    duration=p["duration"], warmup=p["warmup"])),
                ("axum-hello", lambda c=c, seed=seed: loadgen(
                    ctx, f"{peer.base}/", c, seed, body, "axum-hello",
                    duration=p["duration"], warmup=p["warmup"])),
            ])
    finally:
        anya.stop(ctx)
        peer.stop(ctx)
    ctx.pairs_of_servers.append(("overhead", anya, [peer]))


def scenario_embed_inproc(ctx):
    """anya's padding-free BERT in process (examples/embed_speed) against ONNX Runtime in
    process (scripts/bench/ort_embed.py speed): the compute floor, no HTTP."""
    p = ctx.profile["inproc"]
    model_dir = ctx.models / EMBED_ID / "1.0.0"

    def anya_run(sset, batch):
        env = dict(os.environ, EMBED_SET=sset, ANYA_MODELS_DIR=str(ctx.models))
        r = subprocess.run([str(ctx.embed_speed), str(p["rounds"]), "new", str(batch)],
                           capture_output=True, text=True, env=env, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"embed_speed: {r.stderr.strip()[-500:]}")
        rate = float(r.stdout.split(":", 1)[1].split()[0])
        return {"sentences_per_s": rate, "set": sset, "batch": batch}

    def ort_run(sset, batch):
        r = subprocess.run([ctx.args.python, ROOT / "scripts/bench/ort_embed.py", "speed",
                            ctx.onnx, model_dir, "--set", sset, "--batch", str(batch),
                            "--rounds", str(p["rounds"])],
                           capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"ort_embed speed: {r.stderr.strip()[-500:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])

    for sset in ("mixed", "uniform"):
        for batch in (1, 32):
            run_pair(ctx, "embed-inproc", {"set": sset, "batch": batch, "concurrency": 1}, [
                ("anya", lambda s=sset, b=batch: anya_run(s, b)),
                ("onnxruntime-in-process", lambda s=sset, b=batch: ort_run(s, b)),
            ])


def scenario_embeddings(ctx):
    p = ctx.profile["embed"]
    anya = anya_server(ctx, "anya-embed", EMBED_ID, ctx.models,
                       # the cache would answer repeated sentences without compute
                       env={"ANYA__CACHE__ENABLED": "false"})
    peers = [ort_http_peer(ctx)]
    if ctx.args.legacy_python:
        peers.append(st_peer(ctx))
    try:
        anya.start(ctx)
        for s in peers:
            s.start(ctx)
        for k in (1, 32):
            body_a = {"model": EMBED_ID, "input": "$SENTENCE" if k == 1 else "$SENTENCES"}
            for c in ctx.profile["embed_concurrency"]:
                seed = ctx.pair_no * 1_000_000
                kw = dict(duration=p["duration"], warmup=p["warmup"], batch=k if k > 1 else None)
                sides = [("anya", lambda c=c, seed=seed, kw=kw: loadgen(
                    ctx, f"{anya.base}/v1/embeddings", c, seed, body_a, "anya-embed", **kw))]
                for s in peers:
                    url = f"{s.base}/v1/embeddings" if s.name == "fastapi-onnxruntime" else f"{s.base}/embed"
                    body = body_a if s.name == "fastapi-onnxruntime" else {
                        "inputs": ["$SENTENCE"] if k == 1 else "$SENTENCES"}
                    sides.append((s.name, lambda c=c, seed=seed, kw=kw, url=url, body=body, n=s.name:
                                  loadgen(ctx, url, c, seed, body, n, **kw)))
                run_pair(ctx, "embed", {"sentences_per_request": k, "concurrency": c}, sides)
    finally:
        anya.stop(ctx)
        for s in peers:
            s.stop(ctx)
    ctx.pairs_of_servers.append(("embed", anya, peers))


def prompt_text(ctx, i, words=64):
    r = subprocess.run([str(ctx.loadgen), "--print-prompt", str(i), "--prompt-words", str(words)],
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


def scenario_generation(ctx):
    n_tokens = ctx.profile["gen_tokens"]
    anya = anya_server(ctx, "anya-generate", ctx.args.gen_model, ctx.models,
                       env={"ANYA__CACHE__ENABLED": "false"})
    np8, np16 = llama_server_peer(ctx, 8), llama_server_peer(ctx, 16)
    legacy = llama_cpp_python_peer(ctx) if ctx.args.legacy_python else None
    servers = [anya, np8, np16] + ([legacy] if legacy else [])
    cap, tmo = ctx.profile["gen_cap"], ctx.profile["gen_timeout"]

    def body(who, stream, max_tokens=n_tokens):
        b = {"prompt": "$PROMPT", "max_tokens": max_tokens, "temperature": 0, "stream": stream}
        # ignore_eos on both: every request generates exactly max_tokens (the client checks:
        # --expect-tokens), whatever a prompt makes the model say
        if who == "anya":
            b.update({"model": ctx.args.gen_model, "ignore_eos": True})
        elif who.startswith("llama-server"):
            # top_k 1 = greedy, as anya's temperature 0; no prompt reuse between requests
            b.update({"ignore_eos": True, "top_k": 1, "cache_prompt": False})
        else:
            b["repeat_penalty"] = 1.0
        return b

    try:
        for s in servers:
            s.start(ctx)
        url = {s.name: f"{s.base}/v1/completions" for s in servers}
        # Both tokenise the prompt the same way: check it is 64 tokens on both.
        p0 = prompt_text(ctx, 0)
        chk = {"prompt_0": p0, "new_tokens": n_tokens}
        for who, s in (("anya", anya), ("llama-server", np8)):
            b = dict(body(who if who == "anya" else s.name, False, 1), prompt=p0)
            st, r = http_post(url[s.name], b)
            chk[f"{who}_prompt_tokens"] = r["usage"]["prompt_tokens"] if st == 200 else f"HTTP {st}: {r}"
        ctx.results["generation_check"] = chk
        log(f"generation check: {chk}")

        def side(s, who, c, n, seed, stream, prompt_words=None, max_tokens=n_tokens):
            def run():
                b = body(who, stream, max_tokens)
                loadgen(ctx, url[s.name], c, seed, b, f"{s.name}-warmup",
                        requests=ctx.profile["gen_warmup_requests"], stream=stream, timeout=tmo,
                        prompt_words=prompt_words, fresh=True)
                return loadgen(ctx, url[s.name], c, seed + 100, b, s.name, requests=n,
                               duration=cap, timeout=tmo, stream=stream,
                               expect_tokens=max_tokens, prompt_words=prompt_words, fresh=True)
            return run

        for stream in (True, False):
            for c in ctx.profile["gen_concurrency"]:
                n = ctx.profile["gen_requests"][c]
                seed = (ctx.pair_no + 1) * 1_000_000
                peer = np16 if c > 8 else np8
                sides = [("anya", side(anya, "anya", c, n, seed, stream)),
                         (peer.name, side(peer, peer.name, c, n, seed, stream))]
                if legacy and c <= 4:
                    sides.append((legacy.name, side(legacy, legacy.name, c, n, seed, stream)))
                run_pair(ctx, "generate-stream" if stream else "generate",
                         {"concurrency": c, "prompt_tokens": 64, "new_tokens": n_tokens,
                          "requests": n}, sides)

        # A long prompt (1,000 tokens) with 128 new tokens, alone and beside 4 decoding streams.
        lp = ctx.profile["long_prompt"]

        def long_side(s, who, seed, beside):
            def run():
                bg = None
                if beside:
                    # 4 streams of 64-token prompts that keep decoding through the measurement
                    bg = subprocess.Popen(
                        loadgen_cmd(ctx, url[s.name], beside, seed + 500_000,
                                    body(who, True, lp["beside_tokens"]), f"{s.name}-beside",
                                    requests=beside * 4, stream=True, timeout=tmo,
                                    fresh=True),
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                        start_new_session=True)
                    time.sleep(lp["beside_head_start"])
                try:
                    return loadgen(ctx, url[s.name], 1, seed, body(who, True), s.name,
                                   requests=lp["requests"], stream=True, timeout=tmo,
                                   expect_tokens=n_tokens, prompt_words=1000, fresh=True)
                finally:
                    if bg:
                        os.killpg(bg.pid, signal.SIGTERM)
                        bg.wait()
            return run

        for beside in (0, 4):
            seed = (ctx.pair_no + 1) * 1_000_000
            run_pair(ctx, "long-prompt", {"concurrency": 1, "prompt_tokens": 1000,
                                          "new_tokens": n_tokens, "beside_streams": beside}, [
                ("anya", long_side(anya, "anya", seed, beside)),
                (np8.name, long_side(np8, np8.name, seed, beside)),
            ])
    finally:
        for s in servers:
            s.stop(ctx)
    ctx.pairs_of_servers.append(("generate", anya, [np8, np16] + ([legacy] if legacy else [])))


# -------------------------------------------------------------------------------- the table


def fmt_num(x, digits=None):
    if x is None:
        return "n/a"
    if isinstance(x, str):
        return x
    if digits is None:
        digits = 0 if abs(x) >= 100 else (1 if abs(x) >= 10 else (2 if abs(x) >= 0.1 else 3))
    return f"{x:,.{digits}f}"


def add_row(rows, scenario, metric, a, peers, higher_better, busy=False, note="", goal=None):
    """peers: {name: value}; the ratio is against the strongest peer (best value)."""
    vals = {k: v for k, v in peers.items() if isinstance(v, (int, float)) and v is not None}
    best = None
    if vals:
        best = (max if higher_better else min)(vals, key=lambda k: vals[k])
    p = vals.get(best)
    ratio = None
    if isinstance(a, (int, float)) and p not in (None, 0):
        ratio = a / p
    verdict = ""
    if busy:
        verdict = "busy: no ratio"
    elif ratio is not None:
        better = ratio > 1 if higher_better else ratio < 1
        if 0.95 <= ratio <= 1.05:
            verdict = "even (±5%)"
        else:
            verdict = "anya better" if better else "anya worse"
        if goal is not None:
            met = ratio >= goal if higher_better else ratio <= goal
            verdict += f"; goal {'≥' if higher_better else '≤'}{goal}x " + ("met" if met else "missed")
    others = "; ".join(f"{k} {fmt_num(v)}" for k, v in peers.items() if k != best)
    rows.append({
        "scenario": scenario, "metric": metric, "anya": a, "peer_name": best, "peer": p,
        "ratio": None if busy else ratio, "higher_is_better": higher_better, "verdict": verdict,
        "note": "; ".join(x for x in (note, others and f"other peers: {others}") if x),
        "busy": busy, "goal": goal,
    })


def build_rows(ctx):
    rows = []
    for pr in ctx.results["pairs"]:
        sc, busy, prm = pr["scenario"], pr["busy"], pr["params"]
        a = pr["anya"]
        peers = {w: pr[w] for w in pr["peers"]}
        every = [a] + list(peers.values())
        if any(r.get("failed") for r in every):
            rows.append({"scenario": sc, "metric": "-", "anya": None, "peer_name": None,
                         "peer": None, "ratio": None, "higher_is_better": True, "goal": None,
                         "verdict": "failed", "busy": busy,
                         "note": "; ".join(f"{w}: {r['failed'][:120]}" for w, r in
                                           [("anya", a)] + list(peers.items()) if r.get("failed"))})
            continue
        errs = ""
        if any(r.get("errors") or r.get("short") for r in every):
            errs = "errors " + ", ".join(
                f"{w} {r.get('errors') or 0}/{r.get('short') or 0} short"
                for w, r in [("anya", a)] + list(peers.items()))
        lat = lambda r, k: (r.get("latency_ms") or {}).get(k)  # noqa: E731
        ttft = lambda r, k: (r.get("ttft_ms") or {}).get(k)  # noqa: E731
        itl = lambda r, k: (r.get("itl_ms") or {}).get(k)  # noqa: E731
        each = lambda f: {w: f(r) for w, r in peers.items()}  # noqa: E731
        c = prm.get("concurrency")
        if sc == "overhead":
            name = f"HTTP overhead c={c}"
            add_row(rows, name, "requests/s", a["rps"], each(lambda r: r["rps"]), True, busy,
                    "anya echo model (full stack) vs bare axum" + (f"; {errs}" if errs else ""),
                    goal=0.8 if c == 32 else None)
            add_row(rows, name, "p50 ms", lat(a, "p50"), each(lambda r: lat(r, "p50")), False, busy)
        elif sc == "embed-inproc":
            name = f"embed in process, {prm['set']} set, batch {prm['batch']}"
            goal = 1.2 if prm["batch"] == 32 else 1.0
            add_row(rows, name, "sentences/s", a["sentences_per_s"],
                    each(lambda r: r["sentences_per_s"]), True, busy,
                    "no HTTP; tokenisation outside the timing on both", goal=goal)
        elif sc == "embed":
            k = prm["sentences_per_request"]
            name = f"embed HTTP {k}/req c={c}"
            add_row(rows, name, "sentences/s", a["rps"] * k, each(lambda r: r["rps"] * k),
                    True, busy, errs, goal=2.0 if c == 32 else None)
            add_row(rows, name, "p50 ms", lat(a, "p50"), each(lambda r: lat(r, "p50")), False, busy)
            add_row(rows, name, "p99 ms", lat(a, "p99"), each(lambda r: lat(r, "p99")), False, busy,
                    goal=1.0 if c == 32 else None)
        elif sc in ("generate", "generate-stream"):
            stream = sc == "generate-stream"
            name = f"generate {'streamed' if stream else 'non-streamed'} c={c}"
            goal = 1.3 if c >= 8 else (1.1 if c == 1 else None)
            add_row(rows, name, "tokens/s (all clients)", a["tokens_per_s"],
                    each(lambda r: r["tokens_per_s"]), True, busy, errs, goal=goal)
            if stream:
                add_row(rows, name, "TTFT p50 ms", ttft(a, "p50"), each(lambda r: ttft(r, "p50")),
                        False, busy, goal=0.8 if c in (1, 8) else None)
                add_row(rows, name, "TTFT p99 ms", ttft(a, "p99"), each(lambda r: ttft(r, "p99")),
                        False, busy)
                add_row(rows, name, "ITL p50 ms", itl(a, "p50"), each(lambda r: itl(r, "p50")),
                        False, busy)
                add_row(rows, name, "ITL p99 ms", itl(a, "p99"), each(lambda r: itl(r, "p99")),
                        False, busy)
            add_row(rows, name, "request p50 ms", lat(a, "p50"), each(lambda r: lat(r, "p50")),
                    False, busy)
        elif sc == "long-prompt":
            b = prm["beside_streams"]
            name = "long prompt 1000+128" + (f", beside {b} streams" if b else ", alone")
            add_row(rows, name, "TTFT p50 ms", ttft(a, "p50"), each(lambda r: ttft(r, "p50")),
                    False, busy, errs)
            dec = lambda r: (r.get("decode_tokens_per_s_per_request") or {}).get("p50")  # noqa: E731
            add_row(rows, name, "decode tok/s (this stream)", dec(a), each(dec), True, busy)
            add_row(rows, name, "request ms", lat(a, "p50"), each(lambda r: lat(r, "p50")), False,
                    busy)
    # What HTTP adds to one sentence: anya's p50 over HTTP at c=1 against its in-process time
    # per sentence at batch 1 (mixed set: 8 to 40 words, as loadgen's sentences are).
    inproc = next((pr for pr in ctx.results["pairs"] if pr["scenario"] == "embed-inproc"
                   and pr["params"]["set"] == "mixed" and pr["params"]["batch"] == 1
                   and not pr["anya"].get("failed")), None)
    http1 = next((pr for pr in ctx.results["pairs"] if pr["scenario"] == "embed"
                  and pr["params"]["sentences_per_request"] == 1
                  and pr["params"]["concurrency"] == 1 and not pr["anya"].get("failed")), None)
    if inproc and http1 and inproc["anya"]["sentences_per_s"]:
        own = 1e3 / inproc["anya"]["sentences_per_s"]
        over = (http1["anya"]["latency_ms"] or {}).get("p50")
        if over is not None:
            rows.append({"scenario": "embed batch 1: HTTP against in process", "metric":
                         "p50 ms over HTTP − ms per sentence in process", "anya": over - own,
                         "peer_name": None, "peer": None, "ratio": None, "higher_is_better": False,
                         "goal": None, "busy": inproc["busy"] or http1["busy"],
                         "verdict": "goal ≤2 ms " + ("met" if over - own <= 2.0 else "missed"),
                         "note": f"{over:.2f} ms over HTTP (loadgen sentences), {own:.2f} ms in "
                                 "process (embed_speed's mixed set)"})
    for sk in ctx.results.get("skipped", []):
        rows.append({"scenario": f"{sk['scenario']} {sk['params']}", "metric": "-", "anya": None,
                     "peer_name": None, "peer": None, "ratio": None, "higher_is_better": True,
                     "verdict": "skipped", "busy": False, "goal": None,
                     "note": "not run: past the time budget"})
    for group, a, ps in ctx.pairs_of_servers:
        ai = a.info
        name = f"server {group}"
        add_row(rows, name, "RSS idle MB", ai.get("rss_idle_mb"),
                {p.name: p.info.get("rss_idle_mb") for p in ps}, False)
        add_row(rows, name, "RSS peak MB", ai.get("rss_peak_mb"),
                {p.name: p.info.get("rss_peak_mb") for p in ps}, False)
        busy = max([ai.get("ready_foreign_cores", 0)]
                   + [p.info.get("ready_foreign_cores", 0) for p in ps]) > ctx.args.max_foreign
        add_row(rows, name, "start to ready s", ai.get("ready_s"),
                {p.name: p.info.get("ready_s") for p in ps}, False, busy)
    return rows


def render(rows, markdown=False):
    head = ["scenario", "metric", "anya", "strongest peer", "peer", "anya/peer", "verdict", "note"]
    body = []
    for r in rows:
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else ("-" if not r["busy"] else "busy")
        body.append([r["scenario"], r["metric"], fmt_num(r["anya"]), r.get("peer_name") or "-",
                     fmt_num(r["peer"]), ratio, r["verdict"], r["note"]])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(b) + " |" for b in body]
        return "\n".join(out)
    widths = [max(len(str(x[i])) for x in [head] + body) for i in range(len(head))]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


def chart(ctx, path):
    """tokens/s and TTFT against concurrency, anya and each peer (matplotlib, PNG)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("no matplotlib in this venv: no chart")
        return None
    series = {}  # (panel, who) -> [(c, value)]
    for pr in ctx.results["pairs"]:
        if pr["scenario"] not in ("generate", "generate-stream") or pr["busy"]:
            continue
        c = pr["params"]["concurrency"]
        for who in ["anya"] + pr["peers"]:
            r = pr[who]
            if r.get("failed"):
                continue
            label = "llama-server -np 8/16" if who.startswith("llama-server") else who
            kind = "streamed" if pr["scenario"] == "generate-stream" else "non-streamed"
            series.setdefault(("tok", f"{label}, {kind}"), []).append((c, r["tokens_per_s"]))
            if kind == "streamed" and (r.get("ttft_ms") or {}).get("p50") is not None:
                series.setdefault(("ttft", label), []).append((c, r["ttft_ms"]["p50"]))
    if not series:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for (panel, label), pts in sorted(series.items()):
        pts.sort()
        ax = ax1 if panel == "tok" else ax2
        style = "-" if "anya" in label else "--"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", label=label)
    ax1.set(title="Generation throughput (SmolLM2-135M Q4_1, 128 new tokens)",
            xlabel="concurrent requests", ylabel="tokens/s, all clients")
    ax2.set(title="Time to first token (streamed, 64-token prompt)",
            xlabel="concurrent requests", ylabel="TTFT p50, ms")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 4, 8, 16], labels=["1", "4", "8", "16"])
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    m = ctx.results["machine"]
    fig.suptitle(f"{m.get('cpu')} x{m.get('cores')}, one run ({ctx.results['started']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


# -------------------------------------------------------------------------------- metadata


def machine_info():
    info = {"cores": os.cpu_count(), "kernel": platform.release()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/cpuinfo") as f:
            flags = next((ln for ln in f if ln.startswith("flags")), "").split()
        info["simd"] = [x for x in ("avx", "avx2", "fma", "avx512f", "avx512_vnni") if x in flags]
        with open("/proc/meminfo") as f:
            info["mem_gb"] = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return info


def versions(ctx):
    v = {}

    def cmd(*c):
        try:
            return subprocess.run([str(x) for x in c], capture_output=True, text=True,
                                  timeout=60, cwd=ROOT).stdout.strip()
        except OSError:
            return None

    v["anya"] = cmd(ctx.anya, "--version")
    v["anya_git"] = cmd("git", "describe", "--always", "--dirty")
    v["rustc"] = cmd("rustc", "--version")
    try:  # llama-server prints its version on standard error
        r = subprocess.run([ctx.args.llama_server, "--version"], capture_output=True, text=True,
                           timeout=60)
        v["llama_server"] = " ".join((r.stdout + r.stderr).split("\n")[:2]).strip()
    except OSError:
        v["llama_server"] = None
    pkgs = ["onnxruntime", "onnx", "tokenizers", "fastapi", "uvicorn", "numpy"]
    v["python_packages"] = cmd(ctx.args.python, "-c", (
        "import importlib.metadata as m, json, platform; print(json.dumps({'python': "
        f"platform.python_version(), **{{p: m.version(p) for p in {pkgs!r}}}}}))"))
    try:
        v["python_packages"] = json.loads(v["python_packages"])
    except (TypeError, ValueError):
        pass
    return v


# ------------------------------------------------------------------------------------ main

SCENARIOS = ["overhead", "embed-inproc", "embed", "generate"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short smoke run (about 4 minutes)")
    ap.add_argument("--only", default=",".join(SCENARIOS),
                    help=f"comma-separated scenarios (default: all of {','.join(SCENARIOS)})")
    ap.add_argument("--out", default=str(ROOT / "bench-results" / "latest.json"))
    ap.add_argument("--python", default=sys.executable,
                    help="the peers' venv python (onnxruntime, onnx, tokenizers, fastapi, matplotlib)")
    ap.add_argument("--legacy-python", default=None,
                    help="a venv python with sentence-transformers and llama-cpp-python[server]: "
                         "adds the first round's peers as extra columns")
    ap.add_argument("--llama-server", required=True, help="llama.cpp's llama-server binary")
    ap.add_argument("--target-dir", default=os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target")))
    ap.add_argument("--models-dir", default=str(ROOT / "models"))
    ap.add_argument("--gen-model", default=GEN_ID,
                    help="the generation model of the repository both sides serve (default %(default)s)")
    ap.add_argument("--max-foreign", type=float, default=0.25,
                    help="cores of foreign CPU load above which a pair gets no ratio")
    ap.add_argument("--max-wait", type=float, default=None,
                    help="seconds to wait for a quiet machine before each pair "
                         "(default: 20 full, 6 quick)")
    ap.add_argument("--llama-threads", type=int, default=os.cpu_count() or 2,
                    help="llama.cpp threads (default: one per core, like anya)")
    ap.add_argument("--embed-endpoint", choices=["async", "sync"], default="async",
                    help="the legacy sentence-transformers server's endpoint style")
    ap.add_argument("--loadgen-threads", type=int, default=1)
    ap.add_argument("--pidfile", default=None)
    args = ap.parse_args()

    ctx = Context(args)
    ctx.profile = PROFILES["quick" if args.quick else "full"]
    if args.max_wait is None:
        args.max_wait = ctx.profile["max_wait"]
    ctx.pairs_of_servers = []
    ctx.embed_speed = ctx.target / "release" / "examples" / "embed_speed"
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - set(SCENARIOS)
    if unknown:
        sys.exit(f"bench: unknown scenarios {sorted(unknown)}; known: {SCENARIOS}")
    for p in (ctx.loadgen, ctx.hello, ctx.anya, ctx.embed_speed, Path(args.llama_server)):
        if not p.exists():
            sys.exit(f"bench: {p} is missing (build with scripts/bench/run.sh)")

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    started = time.time()
    ctx.t0 = time.monotonic()
    start_load = loadavg1()
    ctx.results = {
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "machine": machine_info(),
        "versions": versions(ctx),
        "settings": {
            "max_foreign_cores": args.max_foreign, "llama_threads": args.llama_threads,
            "loadgen_threads": args.loadgen_threads, "legacy_peers": bool(args.legacy_python),
            "profile": {k: (v if not isinstance(v, dict) else {str(a): b for a, b in v.items()})
                        for k, v in ctx.profile.items()},
        },
        "loadavg1_at_start": start_load,
        "pairs": [],
        "skipped": [],
    }
    log(f"mode {ctx.results['mode']}, 1-minute load average at start {start_load:.2f}")
    if start_load > 1.0:
        log("the machine looks busy (load > 1.0); pairs measured under foreign load get no ratio")
    status = 0
    try:
        if only & {"embed-inproc", "embed"}:
            # MiniLM as ONNX, from the same safetensors anya serves; checked against
            # sentence-transformers' vectors before it is timed.
            ctx.onnx = ctx.tmp / "all-minilm-l6-v2.onnx"
            r = subprocess.run([args.python, ROOT / "scripts/bench/ort_embed.py", "export",
                                ctx.models / EMBED_ID / "1.0.0", ctx.onnx],
                               capture_output=True, text=True, check=True)
            ctx.results["onnx_export"] = json.loads(r.stdout.strip().splitlines()[-1])
            r = subprocess.run([args.python, ROOT / "scripts/bench/ort_embed.py", "check", ctx.onnx,
                                ctx.models / EMBED_ID / "1.0.0",
                                ROOT / "tests/fixtures/embeddings_reference.json"],
                               capture_output=True, text=True)
            ctx.results["onnx_check"] = json.loads(r.stdout.strip().splitlines()[-1])
            log(f"ONNX export: {ctx.results['onnx_export']['fused']}; {ctx.results['onnx_check']}")
            if r.returncode != 0:
                raise RuntimeError("the ONNX export does not match sentence-transformers")
        if "overhead" in only:
            scenario_overhead(ctx)
        if "embed-inproc" in only:
            scenario_embed_inproc(ctx)
        if "embed" in only:
            scenario_embeddings(ctx)
        if "generate" in only:
            scenario_generation(ctx)
    except KeyboardInterrupt:
        log("interrupted: stopping the servers")
        status = 130
    except Exception as e:  # noqa: BLE001 - report, clean up, keep partial results
        log(f"error: {e}")
        status = 1
    finally:
        ctx.stop_all()
    ctx.results["servers"] = {n: s.info for n, s in ctx.servers.items()}
    ctx.results["seconds"] = round(time.time() - started, 1)
    rows = build_rows(ctx)
    ctx.results["rows"] = rows
    busy = sum(1 for pr in ctx.results["pairs"] if pr["busy"])
    ctx.results["busy_pairs"] = busy
    ctx.out.parent.mkdir(parents=True, exist_ok=True)
    png = chart(ctx, ctx.out.with_suffix(".png"))
    ctx.results["chart"] = png
    ctx.out.write_text(json.dumps(ctx.results, indent=2, default=str) + "\n")
    md = ctx.out.with_suffix(".md")
    m = ctx.results["machine"]
    header = (
        f"{ctx.results['mode']} run, {ctx.results['started']}, {m.get('cpu')} x{m.get('cores')}, "
        f"anya {ctx.results['versions'].get('anya_git')}, {ctx.results['seconds']} s; "
        f"pairs measured under foreign load (no ratio): {busy} of {len(ctx.results['pairs'])}"
    )
    md.write_text(header + "\n\n" + render(rows, markdown=True) + "\n")
    print()
    print(header)
    print()
    print(render(rows))
    print()
    print(f"results: {ctx.out} (table: {md}; chart: {png}; server logs: {ctx.logs})")
    return status


if __name__ == "__main__":
    sys.exit(main())
