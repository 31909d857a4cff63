#!/usr/bin/env python3
"""Side-by-side benchmarks of anya against the servers users would run instead.

Run through scripts/bench/run.sh (it builds, sets up the Python peers and cleans up). This
script only needs the standard library; it starts every server itself on a free loopback port,
waits for it to be ready, drives it with the one load generator (examples/loadgen.rs), stops it,
prints one table and writes bench-results/latest.json (+ latest.md, the table in Markdown).

Pairs (anya vs its peer, same inputs, back to back, order alternating, each with a warm-up):
  embed        anya all-minilm-l6-v2       vs FastAPI + uvicorn + sentence-transformers
  embed-batch  32 sentences per request    vs the same
  generate     anya smollm2-135m-instruct  vs llama-cpp-python's OpenAI server (streaming)
  overhead     anya's echo model           vs a bare axum handler (examples/hello_axum.rs)
and for every server: RSS idle and peak (VmRSS / VmHWM) and time from start to ready.

Quiet-machine check: before each pair the script waits a settle period and measures the CPU
used by processes that are not part of the benchmark (machine busy time from /proc/stat minus
the CPU time of our servers, our load generator and this script); it measures the same during
both runs. When that foreign load passes --max-foreign cores the pair is marked busy and no
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
ECHO_MANIFEST = (
    "id: echo\nversion: 1.0.0\ntask: echo\nformat: none\nmax_input_length: 64\nmax_inputs: 64\n"
)

# Durations per mode. Each loadgen run: warm-up (seconds or requests), then the measurement.
PROFILES = {
    # About 9 minutes on a quiet 2-core machine (anya's generation, ~9 s per 128-token request
    # there, is most of it); pairs are skipped once `budget` seconds have passed.
    "full": {
        "settle": 4.0,
        "max_wait": 20.0,
        "budget": 14 * 60.0,
        "embed_concurrency": [1, 8, 32, 64],
        "embed": {"warmup": 2.0, "duration": 10.0},
        "embed_batch": {"concurrency": 4, "batch": 32, "warmup": 2.0, "duration": 15.0},
        "gen_concurrency": [1, 4, 8],
        "gen_tokens": 128,
        "gen_requests": {1: 3, 4: 8, 8: 16},
        "gen_warmup_requests": 1,
        # no new requests after this many seconds (those in flight finish); a client gives up
        # on one request after gen_timeout seconds (counted as an error)
        "gen_cap": 30.0,
        "gen_timeout": 240.0,
        "overhead": {"concurrency": 32, "warmup": 2.0, "duration": 8.0},
    },
    # A smoke test of the harness (about 3 minutes): the figures are not worth comparing.
    "quick": {
        "settle": 2.0,
        "max_wait": 6.0,
        "budget": 6 * 60.0,
        "embed_concurrency": [1, 8, 32, 64],
        "embed": {"warmup": 0.5, "duration": 2.0},
        "embed_batch": {"concurrency": 4, "batch": 32, "warmup": 0.5, "duration": 3.0},
        "gen_concurrency": [1, 4, 8],
        "gen_tokens": 32,
        "gen_requests": {1: 1, 4: 4, 8: 8},
        "gen_warmup_requests": 1,
        "gen_cap": 10.0,
        "gen_timeout": 120.0,
        "overhead": {"concurrency": 32, "warmup": 0.5, "duration": 2.0},
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


def embed_peer(ctx):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [ctx.args.python, ROOT / "scripts/bench/embed_server.py",
           "--model-dir", ctx.models / EMBED_ID / "1.0.0", "--port", port,
           "--endpoint", ctx.args.embed_endpoint]
    s = Server("fastapi-sentence-transformers", "peer", cmd, f"{base}/health")
    s.base = base
    return s


def llama_peer(ctx):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    t = str(ctx.args.llama_threads)
    cmd = [ctx.args.python, "-m", "llama_cpp.server",
           "--model", ctx.models / GEN_ID / "1.0.0" / GGUF,
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


def loadgen(ctx, url, concurrency, seed, body, label, duration=None, warmup=None,
            requests=None, warmup_requests=None, batch=None, stream=False, expect_tokens=None,
            timeout=None):
    cmd = [str(ctx.loadgen), url, "-c", str(concurrency), "--seed", str(seed),
           "--body", json.dumps(body), "--label", label,
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
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
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
    """sides: [(who, thunk)] with who in {'anya','peer'}; runs them back to back, the order
    alternating from one pair to the next, after a settle period; checks foreign load."""
    if time.monotonic() - ctx.t0 > ctx.profile["budget"]:
        log(f"{scenario} {params}: skipped, past the time budget of {ctx.profile['budget']:.0f} s")
        ctx.results["skipped"].append({"scenario": scenario, "params": params})
        return None
    ctx.pair_no += 1
    order = sides if ctx.pair_no % 2 == 1 else list(reversed(sides))
    before = settle(ctx)
    result = {"scenario": scenario, "params": params, "before": before, "order": [w for w, _ in order]}
    for who, thunk in order:
        w = CpuWindow(ctx.running())
        r = thunk()
        r["cpu"] = w.close()
        result[who] = r
    foreign = max([before["foreign_cores"]] + [result[w]["cpu"]["foreign_cores"] for w, _ in sides])
    result["foreign_cores_max"] = foreign
    result["busy"] = foreign > ctx.args.max_foreign
    log(
        f"{scenario} {params}: anya {brief(result['anya'])} | peer {brief(result['peer'])}"
        f" | foreign {foreign:.2f} cores, load1 {before['loadavg1']:.2f}"
        + (" BUSY" if result["busy"] else "")
    )
    ctx.results["pairs"].append(result)
    return result


def brief(r):
    s = f"{r['rps']:.1f} req/s p50 {fmt_num(r['latency_ms'] and r['latency_ms']['p50'])} ms"
    if r.get("tokens_generated"):
        s += f", {r['tokens_per_s']:.1f} tok/s"
    if r["errors"] or r.get("short"):
        s += f", errors {r['errors']} short {r.get('short')}"
    return s


# ---------------------------------------------------------------- anya's /metrics histograms


def scrape_hist(base, name, model):
    """Cumulative buckets, sum and count of one histogram series from /metrics."""
    status, text = http_get(f"{base}/metrics", timeout=5.0)
    buckets, total, count = {}, 0.0, 0.0
    if status != 200:
        return None
    for line in text.splitlines():
        if not line.startswith(name) or f'model="{model}"' not in line:
            continue
        metric, _, value = line.rpartition(" ")
        if metric.startswith(name + "_bucket"):
            le = metric.split('le="')[1].split('"')[0]
            buckets[float("inf") if le == "+Inf" else float(le)] = float(value)
        elif metric.startswith(name + "_sum"):
            total = float(value)
        elif metric.startswith(name + "_count"):
            count = float(value)
    return {"buckets": buckets, "sum": total, "count": count}


def hist_delta(a, b):
    if not a or not b:
        return None
    return {
        "buckets": {le: b["buckets"].get(le, 0) - a["buckets"].get(le, 0) for le in b["buckets"]},
        "sum": b["sum"] - a["sum"],
        "count": b["count"] - a["count"],
    }


def hist_quantile(h, q):
    """Prometheus' histogram_quantile: linear interpolation inside the bucket."""
    if not h or h["count"] <= 0:
        return None
    les = sorted(h["buckets"])
    rank = q * h["count"]
    prev_le, prev_c = 0.0, 0.0
    for le in les:
        c = h["buckets"][le]
        if c >= rank:
            if le == float("inf"):
                return prev_le
            if c == prev_c:
                return le
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
        prev_le, prev_c = le, c
    return les[-1]


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
        seed = ctx.pair_no * 1_000_000
        c = p["concurrency"]
        run_pair(ctx, "overhead", {"concurrency": c}, [
            ("anya", lambda: loadgen(ctx, f"{anya.base}/models/echo/predict", c, seed, body,
                                     "anya-echo", duration=p["duration"], warmup=p["warmup"])),
            ("peer", lambda: loadgen(ctx, f"{peer.base}/", c, seed, body, "axum-hello",
                                     duration=p["duration"], warmup=p["warmup"])),
        ])
    finally:
        anya.stop(ctx)
        peer.stop(ctx)
    ctx.pairs_of_servers.append(("echo/hello", anya, peer))


def scenario_embeddings(ctx, which):
    anya = anya_server(ctx, "anya-embed", EMBED_ID, ctx.models)
    peer = embed_peer(ctx)
    try:
        anya.start(ctx)
        peer.start(ctx)
        aurl = f"{anya.base}/models/{EMBED_ID}/predict"
        purl = f"{peer.base}/embed"
        if "embed" in which:
            p = ctx.profile["embed"]
            body = {"inputs": ["$SENTENCE"]}
            for c in ctx.profile["embed_concurrency"]:
                seed = (ctx.pair_no + 1) * 1_000_000
                run_pair(ctx, "embed", {"concurrency": c, "sentences_per_request": 1}, [
                    ("anya", lambda: loadgen(ctx, aurl, c, seed, body, "anya-embed",
                                             duration=p["duration"], warmup=p["warmup"])),
                    ("peer", lambda: loadgen(ctx, purl, c, seed, body, "fastapi-embed",
                                             duration=p["duration"], warmup=p["warmup"])),
                ])
        if "embed-batch" in which:
            p = ctx.profile["embed_batch"]
            body = {"inputs": "$SENTENCES"}
            c, k = p["concurrency"], p["batch"]
            seed = (ctx.pair_no + 1) * 1_000_000
            run_pair(ctx, "embed-batch", {"concurrency": c, "sentences_per_request": k}, [
                ("anya", lambda: loadgen(ctx, aurl, c, seed, body, "anya-embed-batch",
                                         duration=p["duration"], warmup=p["warmup"], batch=k)),
                ("peer", lambda: loadgen(ctx, purl, c, seed, body, "fastapi-embed-batch",
                                         duration=p["duration"], warmup=p["warmup"], batch=k)),
            ])
    finally:
        anya.stop(ctx)
        peer.stop(ctx)
    ctx.pairs_of_servers.append(("embed", anya, peer))


def prompt_text(ctx, i):
    r = subprocess.run([str(ctx.loadgen), "--print-prompt", str(i)], capture_output=True,
                       text=True, check=True)
    return json.loads(r.stdout)


def scenario_generation(ctx):
    n_tokens = ctx.profile["gen_tokens"]
    # anya's default request timeout (30 s) is shorter than a request waiting behind 7 others
    # at 8 clients; the benchmark measures throughput, not the timeout policy.
    anya = anya_server(ctx, "anya-generate", GEN_ID, ctx.models,
                       env={"ANYA__SERVER__REQUEST_TIMEOUT_MS": "900000"})
    peer = llama_peer(ctx)
    try:
        anya.start(ctx)
        peer.start(ctx)
        aurl = f"{anya.base}/models/{GEN_ID}/predict"
        purl = f"{peer.base}/v1/completions"
        abody = {"inputs": ["$PROMPT"], "parameters": {"temperature": 0, "max_tokens": n_tokens}}
        # Greedy like anya: temperature 0, and llama-cpp-python's default repeat_penalty 1.1 off.
        pbody = {"prompt": "$PROMPT", "max_tokens": n_tokens, "temperature": 0,
                 "repeat_penalty": 1.0, "stream": True}
        # Both tokenise the prompt the same way: check it is 64 tokens on both.
        p0 = prompt_text(ctx, 0)
        st, a0 = http_post(aurl, {"inputs": [p0], "parameters": {"temperature": 0, "max_tokens": 1}})
        st2, l0 = http_post(purl, {"prompt": p0, "max_tokens": 1, "temperature": 0})
        ctx.results["generation_check"] = {
            "prompt_0": p0,
            "anya_prompt_tokens": a0["metadata"]["tokens_processed"] if st == 200 else f"HTTP {st}",
            "llama_prompt_tokens": l0["usage"]["prompt_tokens"] if st2 == 200 else f"HTTP {st2}",
            "new_tokens": n_tokens,
        }
        log(f"generation check: {ctx.results['generation_check']}")
        for c in ctx.profile["gen_concurrency"]:
            n = ctx.profile["gen_requests"][c]
            wn = ctx.profile["gen_warmup_requests"]
            seed = (ctx.pair_no + 1) * 1_000_000

            cap, tmo = ctx.profile["gen_cap"], ctx.profile["gen_timeout"]

            def run_anya(c=c, n=n, wn=wn, seed=seed):
                loadgen(ctx, aurl, c, seed, abody, "anya-generate-warmup",
                        requests=wn, stream=False, timeout=tmo)
                h0 = scrape_hist(anya.base, "anya_ai_time_to_first_token_seconds", GEN_ID)
                r = loadgen(ctx, aurl, c, seed + wn, abody, "anya-generate", requests=n,
                            duration=cap, timeout=tmo, expect_tokens=n_tokens)
                h1 = scrape_hist(anya.base, "anya_ai_time_to_first_token_seconds", GEN_ID)
                h = hist_delta(h0, h1)
                if h and h["count"] > 0:
                    r["server_ttft_ms"] = {
                        "source": "anya /metrics anya_ai_time_to_first_token_seconds "
                                  "(compute only, no queue wait; p50/p99 interpolated in buckets)",
                        "mean": 1e3 * h["sum"] / h["count"],
                        "p50": 1e3 * hist_quantile(h, 0.50),
                        "p99": 1e3 * hist_quantile(h, 0.99),
                        "count": h["count"],
                    }
                    q = (r.get("queue_ms") or {}).get("mean") or 0.0
                    # means add: client-side TTFT ≈ queue wait + compute TTFT (HTTP and
                    # tokenisation are well under a millisecond here)
                    r["ttft_mean_ms_estimate"] = q + r["server_ttft_ms"]["mean"]
                return r

            def run_peer(c=c, n=n, wn=wn, seed=seed):
                loadgen(ctx, purl, c, seed, pbody, "llama-warmup", requests=wn, stream=True,
                        timeout=tmo)
                return loadgen(ctx, purl, c, seed + wn, pbody, "llama-generate", requests=n,
                               duration=cap, timeout=tmo, stream=True, expect_tokens=n_tokens)

            run_pair(ctx, "generate",
                     {"concurrency": c, "prompt_tokens": 64, "new_tokens": n_tokens,
                      "requests": n}, [("anya", run_anya), ("peer", run_peer)])
    finally:
        anya.stop(ctx)
        peer.stop(ctx)
    ctx.pairs_of_servers.append(("generate", anya, peer))


# -------------------------------------------------------------------------------- the table


def fmt_num(x, digits=None):
    if x is None:
        return "n/a"
    if isinstance(x, str):
        return x
    if digits is None:
        digits = 0 if abs(x) >= 100 else (1 if abs(x) >= 10 else (2 if abs(x) >= 0.1 else 3))
    return f"{x:,.{digits}f}"


def add_row(rows, scenario, metric, a, p, higher_better, busy=False, note="", ratio_ok=True):
    ratio = None
    if a is not None and p not in (None, 0) and not isinstance(a, str) and not isinstance(p, str):
        ratio = a / p
    verdict = ""
    if busy:
        verdict = "busy: no ratio"
    elif ratio is not None and ratio_ok:
        better = ratio > 1 if higher_better else ratio < 1
        if 0.95 <= ratio <= 1.05:
            verdict = "even (±5%)"
        else:
            verdict = "anya better" if better else "anya worse"
    rows.append({
        "scenario": scenario, "metric": metric, "anya": a, "peer": p,
        "ratio": None if (busy or not ratio_ok) else ratio,
        "higher_is_better": higher_better, "verdict": verdict, "note": note, "busy": busy,
    })


def build_rows(ctx):
    rows = []
    for pr in ctx.results["pairs"]:
        a, p, busy, sc = pr["anya"], pr["peer"], pr["busy"], pr["scenario"]
        c = pr["params"]["concurrency"]
        errs = ""
        if a["errors"] or p["errors"] or a.get("short") or p.get("short"):
            errs = f"errors anya {a['errors'] or 0} peer {p['errors'] or 0}"
            if a.get("short") or p.get("short"):
                errs += f"; wrong token count anya {a.get('short')} peer {p.get('short')}"
        lat = lambda r, k: (r["latency_ms"] or {}).get(k)  # noqa: E731
        if sc == "embed":
            name = f"embed 1/req c={c}"
            add_row(rows, name, "requests/s", a["rps"], p["rps"], True, busy, errs)
            add_row(rows, name, "p50 ms", lat(a, "p50"), lat(p, "p50"), False, busy)
            add_row(rows, name, "p99 ms", lat(a, "p99"), lat(p, "p99"), False, busy)
        elif sc == "embed-batch":
            k = pr["params"]["sentences_per_request"]
            name = f"embed {k}/req c={c}"
            add_row(rows, name, "sentences/s", a["inputs_per_s"], p["inputs_per_s"], True, busy, errs)
            add_row(rows, name, "p50 ms", lat(a, "p50"), lat(p, "p50"), False, busy)
        elif sc == "generate":
            name = f"generate c={c}"
            add_row(rows, name, "tokens/s (all clients)", a["tokens_per_s"], p["tokens_per_s"],
                    True, busy, errs)
            add_row(rows, name, "TTFT mean ms", a.get("ttft_mean_ms_estimate"),
                    (p["ttft_ms"] or {}).get("mean"), False, busy,
                    "anya: queue wait + compute TTFT from /metrics (no streaming yet)")
            st = a.get("server_ttft_ms") or {}
            add_row(rows, name, "TTFT p50 ms", st.get("p50"), (p["ttft_ms"] or {}).get("p50"),
                    False, busy, "anya: compute only, bucketed; no ratio", ratio_ok=False)
            add_row(rows, name, "TTFT p99 ms", st.get("p99"), (p["ttft_ms"] or {}).get("p99"),
                    False, busy, "anya: compute only, bucketed; no ratio", ratio_ok=False)
            add_row(rows, name, "request p50 ms", lat(a, "p50"), lat(p, "p50"), False, busy)
            add_row(rows, name, "request p99 ms", lat(a, "p99"), lat(p, "p99"), False, busy)
        elif sc == "overhead":
            name = f"overhead c={c}"
            add_row(rows, name, "requests/s", a["rps"], p["rps"], True, busy,
                    "anya echo model vs bare axum" + (f"; {errs}" if errs else ""))
            add_row(rows, name, "p50 ms", lat(a, "p50"), lat(p, "p50"), False, busy)
    for sk in ctx.results.get("skipped", []):
        rows.append({"scenario": f"{sk['scenario']} c={sk['params'].get('concurrency')}",
                     "metric": "-", "anya": None, "peer": None, "ratio": None,
                     "higher_is_better": True, "verdict": "skipped", "busy": False,
                     "note": "not run: past the time budget"})
    for group, a, p in ctx.pairs_of_servers:
        ai, pi = a.info, p.info
        busy = max(ai.get("ready_foreign_cores", 0), pi.get("ready_foreign_cores", 0)) > ctx.args.max_foreign
        name = f"server {group}"
        add_row(rows, name, "RSS idle MB", ai.get("rss_idle_mb"), pi.get("rss_idle_mb"), False, False,
                f"{a.name} vs {p.name}")
        add_row(rows, name, "RSS peak MB", ai.get("rss_peak_mb"), pi.get("rss_peak_mb"), False, False)
        add_row(rows, name, "start to ready s", ai.get("ready_s"), pi.get("ready_s"), False, busy)
    return rows


def render(rows, markdown=False):
    head = ["scenario", "metric", "anya", "peer", "anya/peer", "verdict", "note"]
    body = []
    for r in rows:
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else ("-" if not r["busy"] else "busy")
        body.append([r["scenario"], r["metric"], fmt_num(r["anya"]), fmt_num(r["peer"]), ratio,
                     r["verdict"], r["note"]])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(b) + " |" for b in body]
        return "\n".join(out)
    widths = [max(len(str(x[i])) for x in [head] + body) for i in range(len(head))]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


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
    v["python_packages"] = cmd(ctx.args.python, "-c", (
        "import importlib.metadata as m, json, platform; print(json.dumps({'python': "
        "platform.python_version(), **{p: m.version(p) for p in ['torch', "
        "'sentence-transformers', 'transformers', 'llama_cpp_python', 'fastapi', 'uvicorn']}}))"))
    try:
        v["python_packages"] = json.loads(v["python_packages"])
    except (TypeError, ValueError):
        pass
    return v


# ------------------------------------------------------------------------------------ main


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short smoke run (about 2 minutes)")
    ap.add_argument("--only", default="overhead,embed,embed-batch,generate",
                    help="comma-separated scenarios (default: all)")
    ap.add_argument("--out", default=str(ROOT / "bench-results" / "latest.json"))
    ap.add_argument("--python", default=sys.executable, help="the venv python of the peers")
    ap.add_argument("--target-dir", default=os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target")))
    ap.add_argument("--models-dir", default=str(ROOT / "models"))
    ap.add_argument("--max-foreign", type=float, default=0.25,
                    help="cores of foreign CPU load above which a pair gets no ratio")
    ap.add_argument("--max-wait", type=float, default=None,
                    help="seconds to wait for a quiet machine before each pair "
                         "(default: 30 full, 6 quick)")
    ap.add_argument("--llama-threads", type=int, default=os.cpu_count() or 2,
                    help="llama.cpp threads (default: one per core, like anya)")
    ap.add_argument("--embed-endpoint", choices=["async", "sync"], default="async")
    ap.add_argument("--loadgen-threads", type=int, default=1)
    ap.add_argument("--pidfile", default=None)
    args = ap.parse_args()

    ctx = Context(args)
    ctx.profile = PROFILES["quick" if args.quick else "full"]
    if args.max_wait is None:
        args.max_wait = ctx.profile["max_wait"]
    ctx.pairs_of_servers = []
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    for p in (ctx.loadgen, ctx.hello, ctx.anya):
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
            "embed_endpoint": args.embed_endpoint, "loadgen_threads": args.loadgen_threads,
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
        if "overhead" in only:
            scenario_overhead(ctx)
        if only & {"embed", "embed-batch"}:
            scenario_embeddings(ctx, only)
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
    print(f"results: {ctx.out} (table: {md}; server logs: {ctx.logs})")
    return status


if __name__ == "__main__":
    sys.exit(main())
