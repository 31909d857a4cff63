#!/usr/bin/env bash
# Streamed generation, anya's /v1 against llama.cpp's own server, side by side (issue 13):
#
#   scripts/bench/stream_compare.sh [MODELS_DIR]          (default MODELS_DIR: models)
#
# 1. Starts `llama-server -m MODELS_DIR/smollm2-135m-instruct/1.0.0/SmolLM2-135M-Instruct.Q4_1.gguf
#    -t 2 -np 8 -c 4096` on a free loopback port, waits for its /health, and runs
#    scripts/bench/stream_bench.py against its /v1/chat/completions at 1 and 8 streams; then
#    (unless STREAM_NO_16=1) the same server with -np 16 -c 8192 (the same 512-token context per
#    slot) at 16 streams.
# 2. If ANYA_URL answers GET /v1/models, runs the same requests against anya (already running;
#    this script does not start it) at 1, 8 and 16 streams.
# 3. Prints one side-by-side table with ratios anya / llama-server and writes everything to
#    bench-results/stream/ (JSON per run, llama-server logs, compare.md).
#
# Environment:
#   LLAMA_SERVER=BIN      the llama-server binary (default: scripts/bench/build-llama-server.sh,
#                         which builds it outside the repo the first time, 15–25 min on 2 cores)
#   ANYA_URL=URL          a running anya, e.g. http://127.0.0.1:8080 (default: none, skipped)
#   ANYA_MODEL=ID         the `model` field sent to anya (default smollm2-135m-instruct)
#   REQUESTS=N            requests per client per level (default 4)
#   MAX_TOKENS=N          tokens per request (default 128)
#   THREADS=N             llama-server -t (default 2)
#   LLAMA_EXTRA=JSON      extra body fields for llama-server (default
#                         {"ignore_eos": true, "cache_prompt": false}: every request generates
#                         exactly MAX_TOKENS tokens and no prompt prefix is reused, as in anya)
#   ANYA_EXTRA=JSON       extra body fields for anya (default {"ignore_eos": true}: exactly
#                         MAX_TOKENS tokens per request, as llama-server)
#   STREAM_NO_16=1        skip the -np 16 server and the 16-stream row
# Latency (TTFT, inter-token): lower is better, so a ratio below 1 favours anya; tokens/s:
# higher is better, a ratio above 1 favours anya.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"
models="$(cd "${1:-models}" && pwd)"
gguf="$models/smollm2-135m-instruct/1.0.0/SmolLM2-135M-Instruct.Q4_1.gguf"
[ -f "$gguf" ] || { echo "stream_compare: no $gguf (scripts/fetch-models.sh $models)" >&2; exit 2; }

requests="${REQUESTS:-4}"
max_tokens="${MAX_TOKENS:-128}"
threads="${THREADS:-2}"
default_llama_extra='{"ignore_eos": true, "cache_prompt": false}'
llama_extra="${LLAMA_EXTRA:-$default_llama_extra}"
default_anya_extra='{"ignore_eos": true}'
anya_extra="${ANYA_EXTRA:-$default_anya_extra}"
anya_url="${ANYA_URL:-}"
anya_model="${ANYA_MODEL:-smollm2-135m-instruct}"

if [ -z "${LLAMA_SERVER:-}" ]; then
  LLAMA_SERVER="$(scripts/bench/build-llama-server.sh)"
fi
[ -x "$LLAMA_SERVER" ] || { echo "stream_compare: no llama-server at $LLAMA_SERVER" >&2; exit 2; }

out="$root/bench-results/stream"
mkdir -p "$out"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_health() { # wait_health PORT PID: up to 120 s for 200 from /health
  for _ in $(seq 1200); do
    kill -0 "$2" 2>/dev/null || { echo "stream_compare: llama-server exited" >&2; return 1; }
    curl -sf "http://127.0.0.1:$1/health" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "stream_compare: llama-server not healthy on port $1" >&2
  return 1
}
bench() { # bench LABEL URL MODEL EXTRA CONCURRENCY JSON
  python3 scripts/bench/stream_bench.py --url "$2" --model "$3" --extra "$4" \
    --concurrency "$5" --requests "$requests" --max-tokens "$max_tokens" \
    --deadline 600 --label "$1" --json-out "$6" --md-out "${6%.json}.md"
}
llama() { # llama NP CTX CONCURRENCY JSON
  local port; port="$(free_port)"
  echo "stream_compare: llama-server -t $threads -np $1 -c $2 (port $port); load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  "$LLAMA_SERVER" -m "$gguf" -t "$threads" -np "$1" -c "$2" --host 127.0.0.1 --port "$port" \
    >"$out/llama-server-np$1.log" 2>&1 &
  server_pid=$!
  wait_health "$port" "$server_pid"
  bench "llama-server -np $1" "http://127.0.0.1:$port" "smollm2" "$llama_extra" "$3" "$4"
  cleanup
}

rm -f "$out"/llama-np8.json "$out"/llama-np16.json "$out"/anya.json
llama 8 4096 1,8 "$out/llama-np8.json"
levels="1,8"
if [ "${STREAM_NO_16:-}" != 1 ]; then
  llama 16 8192 16 "$out/llama-np16.json"
  levels="1,8,16"
fi

if [ -n "$anya_url" ] && curl -sf "$anya_url/v1/models" >/dev/null 2>&1; then
  echo "stream_compare: anya at $anya_url; load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  bench "anya" "$anya_url" "$anya_model" "$anya_extra" "$levels" "$out/anya.json" || true
else
  echo "stream_compare: no anya answering ${anya_url:-(ANYA_URL unset)}/v1/models; llama-server only" >&2
fi

python3 - "$out" "$max_tokens" <<'EOF'
import json, os, sys
out, max_tokens = sys.argv[1], sys.argv[2]
def load(name):
    p = os.path.join(out, name)
    return json.load(open(p)) if os.path.exists(p) else None
def by_c(run):
    return {lv["concurrency"]: lv for lv in run["levels"]} if run else {}
llama = by_c(load("llama-np8.json"))
llama.update(by_c(load("llama-np16.json")))
anya = by_c(load("anya.json"))
metrics = [
    ("TTFT p50 ms", lambda lv: lv["ttft_ms"]["p50"], "lower"),
    ("TTFT p99 ms", lambda lv: lv["ttft_ms"]["p99"], "lower"),
    ("ITL p50 ms", lambda lv: lv["itl_ms"]["p50"], "lower"),
    ("ITL p99 ms", lambda lv: lv["itl_ms"]["p99"], "lower"),
    ("tok/s aggregate", lambda lv: lv["tokens_per_s"], "higher"),
]
def f(v, nd):
    return "–" if v is None else f"{v:.{nd}f}"
rows = [f"Streamed chat completions, {max_tokens} tokens per request, greedy; "
        "ratio = anya / llama-server (latency: lower is better, so < 1 favours anya; "
        "tok/s: higher is better, so > 1 favours anya).", "",
        "| streams | metric | llama-server | anya | anya / llama-server |",
        "|---:|---|---:|---:|---:|"]
for c in sorted(set(llama) | set(anya)):
    l, a = llama.get(c), anya.get(c)
    for name, get, better in metrics:
        lv = get(l) if l else None
        av = get(a) if a else None
        nd = 0 if name.startswith("TTFT") else 1
        ratio = f"{av / lv:.2f}" if (lv and av) else "–"
        rows.append(f"| {c} | {name} ({better} is better) | {f(lv, nd)} | "
                    f"{f(av, nd) if a else 'pending'} | {ratio} |")
    for who, lvx in (("llama-server", l), ("anya", a)):
        if lvx and (lvx["errors"] or lvx["short"]):
            rows.append(f"| {c} | {who}: errors {lvx['errors']}, short {lvx['short']} | | | |")
md = "\n".join(rows)
print(md)
open(os.path.join(out, "compare.md"), "w").write(md + "\n")
EOF
