#!/usr/bin/env bash
# Memory and start-up, anya against llama.cpp's llama-server (issue 20):
#
#   scripts/bench/memory.sh [MODELS_DIR]          (default MODELS_DIR: models)
#
# For each server: the time from exec to ready, the resident set (VmRSS) once idle, and the
# peak resident set while 8 and then 16 long sequences decode at once (each a PROMPT_WORDS-token
# prompt plus MAX_TOKENS generated tokens, ignore_eos, streamed through
# scripts/bench/stream_bench.py). RSS is sampled from /proc/PID/status every 50 ms.
#   anya          `anya serve` with both real models (the embedding and the chat model) loaded
#   llama-server  -m the same GGUF -t 2 -np 16 -c 16*CTX_PER_SLOT (its KV cache, f16 like
#                 anya's, is allocated whole at start; flash attention and mmap at defaults)
# Prints a Markdown table and writes it to bench-results/memory/memory.md.
#
# Environment:
#   ANYA_BIN=PATH       the anya binary (default target/release/anya)
#   LLAMA_SERVER=PATH   the llama-server binary (default: scripts/bench/build-llama-server.sh);
#                       LLAMA_SERVER=none skips it
#   MAX_TOKENS=N        generated tokens per sequence (default 400)
#   PROMPT_WORDS=N      prompt tokens per sequence (default 200)
#   CTX_PER_SLOT=N      llama-server context per slot (default 1024)
#   LABEL=TEXT          the anya column's name (default anya)
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"
models="$(cd "${1:-models}" && pwd)"
gguf="$models/smollm2-135m-instruct/1.0.0/SmolLM2-135M-Instruct.Q4_1.gguf"
[ -f "$gguf" ] || { echo "memory: no $gguf (scripts/fetch-models.sh $models)" >&2; exit 2; }
anya_bin="${ANYA_BIN:-$root/target/release/anya}"
[ -x "$anya_bin" ] || { echo "memory: no anya binary at $anya_bin (cargo build --release)" >&2; exit 2; }
max_tokens="${MAX_TOKENS:-400}"
prompt_words="${PROMPT_WORDS:-200}"
ctx_per_slot="${CTX_PER_SLOT:-1024}"
label="${LABEL:-anya}"
out="$root/bench-results/memory"
mkdir -p "$out"
work="$(mktemp -d)"
pid=""
sampler=""
cleanup() {
  [ -n "$sampler" ] && kill "$sampler" 2>/dev/null || true
  if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
now_ms() { date +%s%3N; }

# Sample the RSS of $pid into $1 (the highest value seen) until killed.
sample_peak() {
  local file="$1" peak=0 v
  while kill -0 "$pid" 2>/dev/null; do
    v="$(rss_kb "$pid")"
    [ "${v:-0}" -gt "$peak" ] && { peak="$v"; echo "$peak" >"$file"; }
    sleep 0.05
  done
}

# wait_ready URL: poll until it answers 200 (at most 300 s).
wait_ready() {
  local url="$1" deadline=$(( $(date +%s) + 300 ))
  until curl -fsS -o /dev/null "$url" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { echo "memory: the server exited" >&2; return 1; }
    [ "$(date +%s)" -lt "$deadline" ] || { echo "memory: $url not ready after 300 s" >&2; return 1; }
    sleep 0.05
  done
}

# measure NAME URL MODEL EXTRA: idle RSS, then the peak at 8 and at 16 sequences.
measure() {
  local name="$1" url="$2" model="$3" extra="$4" c
  sleep 2
  local idle; idle="$(rss_kb "$pid")"
  local row="| $name | $startup ms | $((idle / 1024)) MiB"
  for c in 8 16; do
    echo 0 >"$work/peak"
    sample_peak "$work/peak" & sampler=$!
    python3 scripts/bench/stream_bench.py --url "$url" --model "$model" --extra "$extra" \
      --concurrency "$c" --requests 1 --warmup 0 --max-tokens "$max_tokens" \
      --prompt-words "$prompt_words" --seed $((5000 + c * 100)) --label "$name" \
      --json-out "$out/$name-c$c.json" >"$out/$name-c$c.txt"
    kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true; sampler=""
    row="$row | $(( $(cat "$work/peak") / 1024 )) MiB"
  done
  echo "$row |" >>"$work/rows"
  echo "memory: $row |" >&2
}

# anya, both models.
port="$(free_port)"
cat >"$work/anya.yaml" <<EOF
model:
  models_dir: $models
  device: cpu
server:
  host: 127.0.0.1
  port: $port
cache:
  enabled: false
EOF
t0="$(now_ms)"
"$anya_bin" serve --config "$work/anya.yaml" >"$out/$label.log" 2>&1 & pid=$!
wait_ready "http://127.0.0.1:$port/ready"
startup=$(( $(now_ms) - t0 ))
measure "$label" "http://127.0.0.1:$port" smollm2-135m-instruct '{"ignore_eos": true}'
kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; pid=""

if [ "${LLAMA_SERVER:-}" != none ]; then
  if [ -z "${LLAMA_SERVER:-}" ]; then LLAMA_SERVER="$(scripts/bench/build-llama-server.sh)"; fi
  port="$(free_port)"
  t0="$(now_ms)"
  "$LLAMA_SERVER" -m "$gguf" -t 2 -np 16 -c $((16 * ctx_per_slot)) --host 127.0.0.1 --port "$port" \
    >"$out/llama-server.log" 2>&1 & pid=$!
  wait_ready "http://127.0.0.1:$port/health"
  startup=$(( $(now_ms) - t0 ))
  measure "llama-server -np 16" "http://127.0.0.1:$port" smollm2 \
    '{"ignore_eos": true, "cache_prompt": false}'
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; pid=""
fi

{
  echo "Sequences: $prompt_words prompt + $max_tokens generated tokens each. $(date -u +%FT%TZ), $(nproc) cores."
  echo
  echo "| server | start to ready | RSS idle | RSS peak, 8 sequences | RSS peak, 16 sequences |"
  echo "|---|---|---|---|---|"
  cat "$work/rows"
} | tee "$out/memory.md"
