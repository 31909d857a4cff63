#!/usr/bin/env bash
# What anya's features cost or save, each measured against itself in one run (interleaved):
#   1. metrics + access logs on vs off          (echo model, concurrency 32)
#   2. JWT auth + rate limiting on vs off        (echo model, concurrency 32)
#   3. response cache: miss vs memory hit vs Redis hit (all-minilm-l6-v2, concurrency 8)
#
#   scripts/bench/features.sh            (needs scripts/fetch-models.sh and redis-server)
# Prints one JSON line per measurement and a table at the end; writes bench-results/features.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"
cargo build --release --quiet --bin anya --example loadgen
anya="$root/target/release/anya"
loadgen="$root/target/release/examples/loadgen"
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p bench-results
out="bench-results/features.json"
: > "$out"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() { for _ in $(seq 300); do curl -sf "http://127.0.0.1:$1/ready" >/dev/null && return 0; sleep 0.1; done; echo "not ready on $1" >&2; return 1; }
serve() { # serve PORT ENV... -> pid in $last_pid
  local port="$1"; shift
  env "$@" "$anya" serve --port "$port" >"$work/anya-$port.log" 2>&1 &
  last_pid=$!; pids+=("$last_pid"); wait_ready "$port"
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
run() { # run LABEL URL ARGS...
  local label="$1" url="$2"; shift 2
  "$loadgen" "$url" --label "$label" "$@" | tee -a "$out"
}

# An echo model repository.
mkdir -p "$work/repo/echo/1.0.0"
printf 'id: echo\nversion: 1.0.0\ntask: echo\nformat: none\nmax_input_length: 64\nmax_inputs: 64\n' > "$work/repo/echo/1.0.0/anya.yaml"
printf '%s\n' "bench-secret-$(date +%s%N)" > "$work/secret"
echo_env=(ANYA__MODEL__MODELS_DIR="$work/repo")

echo "== 1. metrics and logs: on vs off (echo, c=32)" >&2
for round in 1 2; do
  p=$(free_port); serve "$p" "${echo_env[@]}"
  run "observability on #$round" "http://127.0.0.1:$p/models/echo/predict" -c 32 -n 20000 --warmup-requests 2000 --body '{"inputs": ["$SENTENCE"]}'
  stop "$last_pid"
  p=$(free_port); serve "$p" "${echo_env[@]}" ANYA__MONITORING__ENABLED=false ANYA__SERVER__LOG_LEVEL=warn
  run "observability off #$round" "http://127.0.0.1:$p/models/echo/predict" -c 32 -n 20000 --warmup-requests 2000 --body '{"inputs": ["$SENTENCE"]}'
  stop "$last_pid"
done

echo "== 2. auth + rate limits: on vs off (echo, c=32)" >&2
token=$(ANYA__SECURITY__JWT_SECRET_FILE="$work/secret" "$anya" token --sub bench --scope predict --tier enterprise --ttl 1h)
for round in 1 2; do
  p=$(free_port); serve "$p" "${echo_env[@]}"
  run "auth+limits off #$round" "http://127.0.0.1:$p/models/echo/predict" -c 32 -n 20000 --warmup-requests 2000 --body '{"inputs": ["$SENTENCE"]}'
  stop "$last_pid"
  p=$(free_port); serve "$p" "${echo_env[@]}" ANYA__SECURITY__AUTH_REQUIRED=true ANYA__SECURITY__JWT_SECRET_FILE="$work/secret" \
    ANYA__RATE_LIMITS__ENABLED=true ANYA__RATE_LIMITS__TIERS__ENTERPRISE__REQUESTS_PER_MINUTE=100000000
  run "auth+limits on #$round" "http://127.0.0.1:$p/models/echo/predict" -c 32 -n 20000 --warmup-requests 2000 --body '{"inputs": ["$SENTENCE"]}' --header "authorization: Bearer $token"
  stop "$last_pid"
done

echo "== 3. cache: miss vs memory hit vs Redis hit (all-minilm-l6-v2, c=8)" >&2
if command -v redis-server >/dev/null; then
  redis-server --port 0 --unixsocket "$work/r.sock" --save '' --appendonly no --daemonize no --dir "$work" >/dev/null 2>&1 &
  pids+=("$!"); for _ in $(seq 100); do [ -S "$work/r.sock" ] && break; sleep 0.05; done
  redis_env=(ANYA__CACHE__REDIS_URL="unix://$work/r.sock")
else
  echo "redis-server not found: the Redis row is skipped" >&2; redis_env=()
fi
embed=(--body '{"inputs": ["$SENTENCE"]}')
pa=$(free_port); serve "$pa" ANYA__MODEL__NAME=all-minilm-l6-v2 "${redis_env[@]}"; a=$last_pid
url="http://127.0.0.1:$pa/models/all-minilm-l6-v2/predict"
# distinct sentences: every request a miss (lookup + compute + store)
run "cache miss" "$url" -c 8 -n 1500 --seed 100000 "${embed[@]}"
# the same sentences again: every request a memory hit
run "cache hit (memory)" "$url" -c 8 -n 1500 --seed 100000 "${embed[@]}"
if [ ${#redis_env[@]} -gt 0 ]; then
  pb=$(free_port); serve "$pb" ANYA__MODEL__NAME=all-minilm-l6-v2 "${redis_env[@]}"
  # a second replica: its memory is empty, so every request is a Redis hit
  run "cache hit (redis, 2nd replica)" "http://127.0.0.1:$pb/models/all-minilm-l6-v2/predict" -c 8 -n 1500 --seed 100000 "${embed[@]}"
  stop "$last_pid"
fi
stop "$a"

python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
print(f"\n{'measurement':34} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
for r in rows:
    errs = sum(r.get("errors", {}).values()) if isinstance(r.get("errors"), dict) else r.get("errors", 0)
    print(f"{r.get('label','?'):34} {r.get('rps',0):9.1f} {r.get('p50_ms',0):8.2f} {r.get('p99_ms',0):8.2f} {errs:>7}")
def mean(prefix):
    v = [r["rps"] for r in rows if r.get("label","").startswith(prefix)]
    return sum(v)/len(v) if v else float("nan")
print(f"\nobservability on/off: {mean('observability on')/mean('observability off'):.3f}x requests/s")
print(f"auth+limits on/off:   {mean('auth+limits on')/mean('auth+limits off'):.3f}x requests/s")
PY
