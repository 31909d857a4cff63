#!/usr/bin/env bash
# Benchmarks anya against the servers users would run instead, side by side, in one run:
#
#   scripts/bench/run.sh            full run (about 20 minutes on a 2-core machine)
#   scripts/bench/run.sh --quick    smoke run (about 5 minutes): short durations, 32 new tokens
#   scripts/bench/run.sh --only embed,generate   some scenarios (overhead, embed-inproc, embed,
#                                                generate)
#   scripts/bench/run.sh --legacy-peers          also the first round's peers (PyTorch
#                                                sentence-transformers, llama-cpp-python)
#   scripts/bench/run.sh --help     every option of scripts/bench/bench.py
#
# It fetches the models when absent, builds anya and the examples (release), builds llama.cpp's
# llama-server once outside the repo (scripts/bench/build-llama-server.sh), sets up the Python
# side in a cached venv (.cache/bench-venv: ONNX Runtime, FastAPI, matplotlib), starts each
# server on a free loopback port, drives it with examples/loadgen.rs, stops everything it
# started, prints one table and writes bench-results/latest.{json,md,png} (server logs:
# bench-results/logs/).
#
# Environment:
#   BENCH_VENV=DIR        use an existing venv instead of .cache/bench-venv (missing packages
#                         are added to it)
#   LEGACY_VENV=DIR       the venv of --legacy-peers (default .cache/bench-venv-legacy; its first
#                         setup downloads torch and compiles llama-cpp-python, ~15 minutes)
#   LLAMA_SERVER=PATH     use this llama-server binary instead of building one
#   BENCH_SKIP_BUILD=1    use the binaries already in target/release
#   CARGO_TARGET_DIR      honoured
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

# 2. anya, the load generator, the in-process embedding timer and the bare axum server,
#    release builds (niced: this is often a shared machine).
if [ -z "${BENCH_SKIP_BUILD:-}" ]; then
  nice -n 10 cargo build --release --example loadgen --example hello_axum --example embed_speed --bin anya
fi

# 3. The peers: llama-server (built once, cached outside the repo) and the Python venv(s).
if [ -z "${LLAMA_SERVER:-}" ]; then
  LLAMA_SERVER="$(scripts/bench/build-llama-server.sh)"
fi

# setup_venv DIR REQUIREMENTS CHECK: create or update DIR from REQUIREMENTS unless CHECK imports
setup_venv() {
  local venv="$1" req="$2" check="$3" py="$1/bin/python" stamp="$1/.requirements.sha256" want
  want="$(cat "$req" | sha256sum | cut -d' ' -f1)"
  if [ ! -x "$py" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! "$py" -c "$check" 2>/dev/null; then
    echo "bench: setting up $venv from $req" >&2
    [ -x "$py" ] || python3 -m venv "$venv"
    "$py" -m pip install -q --upgrade pip
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" nice -n 10 "$py" -m pip install -q -r "$req"
    "$py" -c "$check"
    echo "$want" >"$stamp"
  fi
}
venv="${BENCH_VENV:-.cache/bench-venv}"
setup_venv "$venv" scripts/bench/requirements.txt \
  'import onnxruntime, onnx, sympy, tokenizers, fastapi, uvicorn, matplotlib'
py="$venv/bin/python"
legacy=()
args=()
for a in "$@"; do
  if [ "$a" = "--legacy-peers" ]; then
    lv="${LEGACY_VENV:-.cache/bench-venv-legacy}"
    setup_venv "$lv" scripts/bench/requirements-legacy.txt \
      'import fastapi, uvicorn, sse_starlette, starlette_context, pydantic_settings, sentence_transformers, llama_cpp.server'
    legacy=(--legacy-python "$lv/bin/python")
  else
    args+=("$a")
  fi
done

# 4. The run (the orchestrator needs only the standard library; it uses the venv's Python).
"$py" scripts/bench/bench.py --python "$py" --llama-server "$LLAMA_SERVER" --pidfile "$pidfile" \
  "${legacy[@]}" "${args[@]}" &
py_pid=$!
set +e
wait "$py_pid"
status=$?
set -e
py_pid=""
exit "$status"
