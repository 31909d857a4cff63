#!/usr/bin/env python3
"""Streamed generation against any OpenAI-compatible server (anya's /v1, llama.cpp's
llama-server, ...): time to first token, inter-token latency and aggregate tokens/s.

    scripts/bench/stream_bench.py --url http://127.0.0.1:8080 --label llama-server \\
        --extra '{"ignore_eos": true}' --concurrency 1,8,16 --requests 4

Standard library only. For each concurrency C it starts C client threads; each sends
--requests requests one after the other (closed loop, one in flight per client), every one a
`POST /v1/chat/completions` with `"stream": true`, `stream_options: {"include_usage": true}`,
`temperature: 0` and `max_tokens`, and reads the server-sent events (`data: {...}` lines up to
`data: [DONE]`). Prompts are the load generator's (examples/loadgen.rs `$PROMPT`, ported here:
`loadgen --print-prompt I` prints the same string): --prompt-words words that are one SmolLM2
token each, the first word changing with the request index so no two consecutive prompts share
a prefix. Request indices run on across concurrency levels, so no prompt repeats in a run.

Per concurrency it reports:
  ttft p50/p99   from sending the request to the first chunk whose delta has non-empty content
  itl p50/p99    gaps between consecutive content chunks (all requests pooled)
  tok/s          sum of completion tokens / wall time of the level (first send to last end);
                 tokens from the final usage chunk when the server sends one, else the number
                 of content chunks
  done, errors   requests completed with status 200 and a [DONE], and the rest
  short          completed requests with a token count other than max_tokens (a server that
                 stopped at end-of-sequence: pass {"ignore_eos": true} to llama-server)
It prints a Markdown table and writes the figures as JSON (--json-out). Only loopback targets
are accepted; every loop is bounded (requests, lines per response, socket timeout, --deadline).
"""

import argparse
import datetime as dt
import http.client
import ipaddress
import json
import math
import os
import socket
import sys
import threading
import time
import urllib.parse

# --------------------------------------------------------------------- prompts (loadgen's)

WORDS = [
    "the", "model", "serves", "quick", "brown", "fox", "batch", "queue", "token", "vector",
    "server", "request", "latency", "river", "mountain", "city", "music", "garden", "window",
    "engine", "cloud", "signal", "paper", "light", "story", "ocean", "market", "bridge",
]
M64 = (1 << 64) - 1


def _words(i):
    x = (i * 6364136223846793005 + 1442695040888963407) & M64
    while True:
        x ^= x >> 33
        x = (x * 0xFF51AFD7ED558CCD) & M64
        x ^= x >> 33
        yield WORDS[x % len(WORDS)]


def prompt(i, n):
    """examples/loadgen.rs `prompt(i, n)`: n words, each with a leading space; the first is
    WORDS[i % len]."""
    it = _words(i)
    out = []
    for k in range(n):
        out.append(" " + (WORDS[i % len(WORDS)] if k == 0 else next(it)))
    return "".join(out)


# ------------------------------------------------------------------------------- helpers


def log(msg):
    print(f"stream_bench: {msg}", file=sys.stderr, flush=True)


def pct(values, p):
    """Nearest-rank percentile (p in 0..100); None for no values."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(p / 100.0 * len(s)) - 1))
    return s[k]


def loopback_only(host):
    """Refuse anything that does not resolve to a loopback address only."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror as e:
        raise SystemExit(f"stream_bench: cannot resolve {host}: {e}")
    addrs = {info[4][0] for info in infos}
    for a in addrs:
        if not ipaddress.ip_address(a.split("%")[0]).is_loopback:
            raise SystemExit(f"stream_bench: {host} resolves to {a}, not loopback; refusing")


def fmt(v, nd=1):
    return "–" if v is None else f"{v:.{nd}f}"


# ---------------------------------------------------------------------------- one request


class Client:
    """One closed-loop client. By default a new connection per request (connect time counts in
    TTFT; on loopback well under a millisecond): llama-server answers a stream with
    `Keep-Alive: timeout=5, max=100` but closes the connection after it, so the next request on
    it fails (RemoteDisconnected). --keep-alive reuses one connection (reopened after errors)."""

    def __init__(self, host, port, timeout, headers, keep_alive=False):
        self.host, self.port, self.timeout, self.headers = host, port, timeout, headers
        self.keep_alive = keep_alive
        self.conn = None

    def close(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except OSError:
                pass
            self.conn = None

    def stream(self, path, body, max_lines):
        """Send one streamed request; return a dict of timings (seconds, perf_counter based)."""
        r = {"status": None, "ttft": None, "gaps": [], "chunks": 0, "usage_tokens": None,
             "done": False, "error": None, "finish_reason": None}
        data = json.dumps(body).encode()
        hdrs = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        hdrs.update(self.headers)
        t0 = time.perf_counter()
        r["t0"] = t0
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self.conn.request("POST", path, body=data, headers=hdrs)
            resp = self.conn.getresponse()
            r["status"] = resp.status
            if resp.status != 200:
                r["error"] = f"HTTP {resp.status}: {resp.read(2000).decode(errors='replace')[:300]}"
                self.close()
                return r
            last = None
            for _ in range(max_lines):
                line = resp.readline()
                if not line:
                    break
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue  # blank separators, comments (": ping"), event:/id: fields
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    r["done"] = True
                    break
                now = time.perf_counter()
                try:
                    ev = json.loads(payload)
                except ValueError:
                    r["error"] = f"bad event: {payload[:200]!r}"
                    break
                if isinstance(ev, dict) and "error" in ev:
                    r["error"] = f"error event: {json.dumps(ev['error'])[:300]}"
                    break
                usage = ev.get("usage") if isinstance(ev, dict) else None
                if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                    r["usage_tokens"] = usage["completion_tokens"]
                for ch in ev.get("choices") or []:
                    if ch.get("finish_reason"):
                        r["finish_reason"] = ch["finish_reason"]
                    delta = ch.get("delta") or {}
                    text = delta.get("content")
                    if text is None:
                        text = ch.get("text")  # /v1/completions chunks
                    if text:
                        r["chunks"] += 1
                        if last is None:
                            r["ttft"] = now - t0
                        else:
                            r["gaps"].append(now - last)
                        last = now
            else:
                r["error"] = f"more than {max_lines} lines"
            if r["error"] is None and not r["done"]:
                r["error"] = "stream ended without data: [DONE]"
            if r["done"] and self.keep_alive:
                # Drain what is left (normally nothing) so the connection can be reused.
                resp.read()
            else:
                self.close()
        except (OSError, http.client.HTTPException) as e:
            r["error"] = f"{type(e).__name__}: {e}"
            self.close()
        finally:
            r["t1"] = time.perf_counter()
        return r


# ------------------------------------------------------------------------ one concurrency


def build_body(args, i):
    p = prompt(i, args.prompt_words)
    if args.path.rstrip("/").endswith("/chat/completions"):
        body = {"model": args.model, "messages": [{"role": "user", "content": p}]}
    else:
        body = {"model": args.model, "prompt": p}
    body.update({"max_tokens": args.max_tokens, "temperature": 0, "stream": True})
    if not args.no_usage:
        body["stream_options"] = {"include_usage": True}
    body.update(args.extra)
    return body


def run_level(args, conc, first_index, deadline):
    results = []
    lock = threading.Lock()
    barrier = threading.Barrier(conc)

    def worker(cid):
        c = Client(args.host, args.port, args.timeout, args.headers, args.keep_alive)
        try:
            barrier.wait(timeout=30)
        except threading.BrokenBarrierError:
            return
        for k in range(args.requests):
            if time.monotonic() > deadline:
                break
            i = first_index + cid * args.requests + k
            res = c.stream(args.path, build_body(args, i), args.max_lines)
            with lock:
                results.append(res)
        c.close()

    threads = [threading.Thread(target=worker, args=(cid,), daemon=True) for cid in range(conc)]
    load_before = os.getloadavg()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1.0, deadline - time.monotonic() + args.timeout + 5))
    load_after = os.getloadavg()
    return summarize(args, conc, results, load_before, load_after)


def summarize(args, conc, results, load_before, load_after):
    ok = [r for r in results if r["error"] is None and r["status"] == 200 and r["done"]]
    errors = [r for r in results if r not in ok]
    ttfts = [r["ttft"] for r in ok if r["ttft"] is not None]
    gaps = [g for r in ok for g in r["gaps"]]
    toks = [r["usage_tokens"] if r["usage_tokens"] is not None else r["chunks"] for r in ok]
    short = sum(1 for t in toks if t != args.max_tokens)
    wall = (max(r["t1"] for r in results) - min(r["t0"] for r in results)) if results else 0.0
    per_req_tps = [
        (t / (r["t1"] - r["t0"])) for r, t in zip(ok, toks) if r["t1"] > r["t0"]
    ]
    ms = lambda v: None if v is None else v * 1000.0  # noqa: E731
    out = {
        "concurrency": conc,
        "requests_sent": len(results),
        "completed": len(ok),
        "errors": len(errors),
        "short": short,
        "completion_tokens": sum(toks),
        "tokens_from_usage": sum(1 for r in ok if r["usage_tokens"] is not None),
        "content_chunks": sum(r["chunks"] for r in ok),
        "wall_s": round(wall, 3),
        "tokens_per_s": round(sum(toks) / wall, 2) if wall > 0 else None,
        "per_request_tokens_per_s_p50": pct(per_req_tps, 50),
        "ttft_ms": {"p50": ms(pct(ttfts, 50)), "p99": ms(pct(ttfts, 99)),
                    "max": ms(max(ttfts) if ttfts else None)},
        "itl_ms": {"p50": ms(pct(gaps, 50)), "p99": ms(pct(gaps, 99)),
                   "max": ms(max(gaps) if gaps else None), "n": len(gaps)},
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "finish_reasons": sorted({str(r["finish_reason"]) for r in ok}),
        "error_samples": [r["error"] for r in errors[:3]],
    }
    return out


# ------------------------------------------------------------------------------- output


def markdown(label, levels, max_tokens):
    lines = [
        f"| {label} (max_tokens {max_tokens}) | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | "
        "ITL p99 ms | tok/s (aggregate) | done | errors | short | load1 before→after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for lv in levels:
        lines.append(
            f"| {lv['concurrency']} streams | {fmt(lv['ttft_ms']['p50'], 0)} | "
            f"{fmt(lv['ttft_ms']['p99'], 0)} | {fmt(lv['itl_ms']['p50'], 1)} | "
            f"{fmt(lv['itl_ms']['p99'], 1)} | {fmt(lv['tokens_per_s'], 1)} | {lv['completed']} | "
            f"{lv['errors']} | {lv['short']} | "
            f"{lv['loadavg_before'][0]:.2f}→{lv['loadavg_after'][0]:.2f} |"
        )
    return "\n".join(lines)


def parse_args(argv):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True,
                    help="server base URL (loopback only), e.g. http://127.0.0.1:8080")
    ap.add_argument("--path", default="/v1/chat/completions",
                    help="endpoint (default /v1/chat/completions; /v1/completions sends `prompt`)")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="the `model` field")
    ap.add_argument("--concurrency", default="1,8",
                    help="comma-separated stream counts (default 1,8; 8,16 for throughput)")
    ap.add_argument("--requests", type=int, default=4, help="requests per client per level")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--prompt-words", type=int, default=64,
                    help="words (= SmolLM2 tokens) per prompt, as loadgen's --prompt-words")
    ap.add_argument("--extra", default="{}",
                    help='JSON object merged into every body, e.g. \'{"ignore_eos": true}\'')
    ap.add_argument("--no-usage", action="store_true",
                    help="leave out stream_options.include_usage (tokens = content chunks)")
    ap.add_argument("--keep-alive", action="store_true",
                    help="reuse one connection per client (default: a new one per request)")
    ap.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                    help="extra request header (repeatable)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="requests sent (one at a time, not counted) before the first level")
    ap.add_argument("--seed", type=int, default=1000, help="first prompt index")
    ap.add_argument("--timeout", type=float, default=120.0, help="socket timeout, seconds")
    ap.add_argument("--deadline", type=float, default=900.0,
                    help="no new request after this many seconds per level")
    ap.add_argument("--label", default="server", help="names the column / the run")
    ap.add_argument("--json-out", help="write the figures here (JSON)")
    ap.add_argument("--md-out", help="write the table here (Markdown)")
    args = ap.parse_args(argv)

    u = urllib.parse.urlsplit(args.url)
    if u.scheme != "http" or not u.hostname:
        ap.error("--url must be http://HOST:PORT (loopback)")
    loopback_only(u.hostname)
    args.host, args.port = u.hostname, u.port or 80
    args.path = (u.path.rstrip("/") + args.path) if u.path not in ("", "/") else args.path
    try:
        args.levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    except ValueError:
        ap.error("--concurrency takes integers, e.g. 1,8")
    if not args.levels or any(c < 1 or c > 256 for c in args.levels):
        ap.error("--concurrency: 1..256 each")
    if not (1 <= args.requests <= 10000) or not (1 <= args.max_tokens <= 32768):
        ap.error("--requests 1..10000, --max-tokens 1..32768")
    try:
        args.extra = json.loads(args.extra)
    except ValueError as e:
        ap.error(f"--extra is not JSON: {e}")
    if not isinstance(args.extra, dict):
        ap.error("--extra must be a JSON object")
    args.headers = {}
    for h in args.header:
        name, sep, value = h.partition(":")
        if not sep:
            ap.error(f"--header {h!r}: want 'NAME: VALUE'")
        args.headers[name.strip()] = value.strip()
    # A bound on SSE lines per response: a few per token (data + blank), plus slack.
    args.max_lines = 4 * args.max_tokens + 256
    return args


def main(argv=None):
    args = parse_args(argv if argv is not None else sys.argv[1:])
    started = dt.datetime.now(dt.timezone.utc)
    index = args.seed
    warm = Client(args.host, args.port, args.timeout, args.headers, args.keep_alive)
    for _ in range(max(0, args.warmup)):
        r = warm.stream(args.path, build_body(args, index), args.max_lines)
        index += 1
        if r["error"]:
            log(f"warm-up request failed: {r['error']}")
    warm.close()
    levels = []
    for conc in args.levels:
        deadline = time.monotonic() + args.deadline
        lv = run_level(args, conc, index, deadline)
        index += conc * args.requests
        levels.append(lv)
        log(f"{args.label} c={conc}: ttft p50 {fmt(lv['ttft_ms']['p50'], 0)} ms, "
            f"itl p50 {fmt(lv['itl_ms']['p50'], 1)} ms, {fmt(lv['tokens_per_s'])} tok/s, "
            f"done {lv['completed']}, errors {lv['errors']}, short {lv['short']}"
            + (f" ({lv['error_samples'][0]})" if lv["error_samples"] else ""))
    md = markdown(args.label, levels, args.max_tokens)
    print(md)
    result = {
        "label": args.label,
        "started": started.isoformat(timespec="seconds"),
        "url": args.url,
        "path": args.path,
        "model": args.model,
        "max_tokens": args.max_tokens,
        "prompt_words": args.prompt_words,
        "requests_per_client": args.requests,
        "extra": args.extra,
        "cpus": os.cpu_count(),
        "levels": levels,
    }
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    if args.md_out:
        with open(args.md_out, "w") as f:
            f.write(md + "\n")
    return 0 if all(lv["completed"] > 0 for lv in levels) else 1


if __name__ == "__main__":
    sys.exit(main())
