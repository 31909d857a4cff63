#!/usr/bin/env bash
# Benchmarks anya against the servers users would run instead, side by side, in one run:
#
#   scripts/bench/run.sh            full run (under 15 minutes on a 2-core machine)
#   scripts/bench/run.sh --quick    smoke run (about 3 minutes): short durations, 32 new tokens
#   scripts/bench/run.sh --only embed,generate   some scenarios (overhead, embed, embed-batch, generate)
#   scripts/bench/run.sh --help     every option of scripts/bench/bench.py
#
# It fetches the models when absent, builds anya and the examples (release), sets up the Python
# peers in a cached venv (.cache/bench-venv), starts each server on a free loopback port, drives
# it with examples/loadgen.rs, stops everything it started, prints one table and writes
# bench-results/latest.json and bench-results/latest.md (server logs: bench-results/logs/).
#
# Environment:
#   BENCH_VENV=DIR        use an existing venv (e.g. one with llama-cpp-python already built)
#                         instead of .cache/bench-venv; missing server packages are added to it
#   BENCH_SKIP_BUILD=1    use the binaries already in target/release
#   CARGO_TARGET_DIR      honoured
# The first setup of .cache/bench-venv downloads torch and compiles llama-cpp-python from source
# (a C/C++ compiler is needed; about 15 minutes on 2 cores); later runs reuse it.
set -euo pipefail
cd "$(dirname "$0")/../.."

case " $* " in
  *" --help "* | *" -h "*) exec python3 scripts/bench/bench.py --help ;;
esac

out_dir=bench-results
mkdir -p "$out_dir"
pidfile="$out_dir/.pids"
: >"$pidfile"
py_pid=""

cleanup() {
  trap - EXIT INT TERM
  if [ -n "$py_pid" ] && kill -0 "$py_pid" 2>/dev/null; then
    kill -TERM "$py_pid" 2>/dev/null || true
    wait "$py_pid" 2>/dev/null || true
  fi
  # Whatever the orchestrator could not stop itself: each server leads its own process group.
  if [ -s "$pidfile" ]; then
    while read -r pid; do
      [ -n "$pid" ] && kill -TERM -- "-$pid" 2>/dev/null || true
    done <"$pidfile"
  fi
  rm -f "$pidfile"
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

# 1. Models (the same files anya's tests use).
if [ ! -f models/all-minilm-l6-v2/1.0.0/anya.yaml ] || [ ! -f models/smollm2-135m-instruct/1.0.0/anya.yaml ]; then
  scripts/fetch-models.sh models
fi

# 2. anya, the load generator and the bare axum server, release builds (niced: this is often
#    a shared machine).
if [ -z "${BENCH_SKIP_BUILD:-}" ]; then
  nice -n 10 cargo build --release --example loadgen --example hello_axum --bin anya
fi

# 3. The Python peers.
req=scripts/bench/requirements.txt
check='import fastapi, uvicorn, sse_starlette, starlette_context, pydantic_settings, sentence_transformers, llama_cpp.server'
if [ -n "${BENCH_VENV:-}" ]; then
  venv="$BENCH_VENV"
  py="$venv/bin/python"
  [ -x "$py" ] || { echo "bench: BENCH_VENV=$venv has no bin/python" >&2; exit 2; }
  if ! "$py" -c "$check" 2>/dev/null; then
    echo "bench: adding the server packages to $venv" >&2
    nice -n 10 "$py" -m pip install -q $(grep -E '^[A-Za-z]' "$req")
  fi
else
  venv=.cache/bench-venv
  py="$venv/bin/python"
  stamp="$venv/.requirements.sha256"
  want="$(cat "$req" scripts/reference/requirements.txt | sha256sum | cut -d' ' -f1)"
  if [ ! -x "$py" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! "$py" -c "$check" 2>/dev/null; then
    echo "bench: setting up $venv (first time: downloads torch, compiles llama-cpp-python)" >&2
    python3 -m venv "$venv"
    "$py" -m pip install -q --upgrade pip
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" nice -n 10 "$py" -m pip install -r "$req"
    "$py" -c "$check"
    echo "$want" >"$stamp"
  fi
fi

# 4. The run (the orchestrator needs only the standard library; it uses the venv's Python).
"$py" scripts/bench/bench.py --python "$py" --pidfile "$pidfile" "$@" &
py_pid=$!
set +e
wait "$py_pid"
status=$?
set -e
py_pid=""
exit "$status"
