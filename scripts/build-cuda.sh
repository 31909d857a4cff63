#!/usr/bin/env bash
# Build anya with `--features cuda` on a machine without a CUDA toolkit (and without a GPU).
#
#   scripts/build-cuda.sh            cargo build --release --features cuda  (target/release/anya)
#   scripts/build-cuda.sh --check    cargo check --features cuda --all-targets  (what CI runs)
#   scripts/build-cuda.sh --clippy   cargo clippy --features cuda --all-targets -- -D warnings
#   scripts/build-cuda.sh --env      print the environment (eval "$(scripts/build-cuda.sh --env)")
# Extra arguments go to cargo (e.g. --locked).
#
# What it does:
# - a venv (ANYA_CUDA_VENV, default .cache/cuda-venv; made once) with PyPI's CUDA 13 wheels:
#   nvcc (nvidia-cuda-nvcc), the runtime and headers (nvidia-cuda-runtime), <nv/target> and the
#   rest of CCCL (nvidia-cuda-cccl), and the libraries the link needs (nvrtc, curand, cublas);
# - a link folder (the venv's `link/lib`) with unversioned names for those libraries and a
#   `libcuda.so.1` stub (every driver entry point returns CUDA_ERROR_NO_DEVICE), built with gcc
#   from the wheel's cuda.h: the driver belongs to the GPU machine, this one has none;
# - PATH, CUDA_ROOT/CUDA_PATH/CUDA_HOME, CUDA_COMPUTE_CAP (default 90: H100/H200) and
#   CUDARC_CUDA_VERSION (default 13040: cudarc 0.19 knows CUDA up to 13.4 and refuses the wheel's
#   13.5 nvcc; the driver API it binds is the same), then cargo.
#
# Running the binary: candle turns on cudarc's `dynamic-linking`, so the binary needs
# libcuda.so.1, libcudart, libnvrtc, libcublas(Lt) and libcurand at start. On a GPU machine the
# driver provides libcuda and the toolkit the rest. Anywhere else, `--env` also prints an
# LD_LIBRARY_PATH holding the wheels' libraries and the stub: the binary then starts, `auto`
# picks the CPU and says no GPU was found, and `cuda` refuses with CUDA_ERROR_NO_DEVICE.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=build
case "${1:-}" in
  --check) mode=check; shift ;;
  --clippy) mode=clippy; shift ;;
  --env) mode=env; shift ;;
  --build) shift ;;
esac

venv="${ANYA_CUDA_VENV:-$PWD/.cache/cuda-venv}"
log() { [ "$mode" = env ] || echo "build-cuda: $*" >&2; }

if [ ! -f "$venv/.anya-ready" ]; then
  log "installing nvcc and the CUDA 13 headers and libraries from PyPI into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q nvidia-cuda-nvcc nvidia-cuda-runtime nvidia-cuda-cccl \
    nvidia-cuda-nvrtc nvidia-curand nvidia-cublas >&2
  touch "$venv/.anya-ready"
fi
cu="$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
[ -x "$cu/bin/nvcc" ] || { echo "build-cuda: no nvcc in $cu/bin" >&2; exit 1; }

link="$venv/link/lib"
if [ ! -f "$link/libcuda.so.1" ]; then
  log "making the link folder $link (unversioned toolkit libraries, libcuda stub)"
  mkdir -p "$link"
  for lib in cudart nvrtc curand cublas cublasLt; do
    real="$(ls "$cu/lib/lib$lib.so."* | head -n 1)"
    ln -sf "$real" "$link/lib$lib.so"
  done
  # The stub: one `int name(void) { return 100; }` per function cuda.h declares (after its
  # `_v2` renames), so the linker finds every driver symbol cudarc uses.
  gcc -E -P -D__CUDA_API_VERSION_INTERNAL -I"$cu/include" "$cu/include/cuda.h" 2>/dev/null \
    | grep -oE '\bCUresult[[:space:]]+cu[A-Za-z0-9_]+[[:space:]]*\(' \
    | sed -E 's/^CUresult[[:space:]]+(cu[A-Za-z0-9_]+).*/\1/' | sort -u \
    | awk 'BEGIN { print "/* libcuda stub for linking without a GPU driver; generated */" }
           { printf "int %s(void) { return 100; /* CUDA_ERROR_NO_DEVICE */ }\n", $1 }' \
    > "$venv/link/cuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$link/libcuda.so.1" "$venv/link/cuda_stub.c"
  ln -sf libcuda.so.1 "$link/libcuda.so"
fi

export PATH="$cu/bin:$PATH"
export CUDA_ROOT="$cu" CUDA_PATH="$cu" CUDA_HOME="$cu"
export CUDA_TOOLKIT_ROOT_DIR="$venv/link"   # cudarc adds its lib/ to the link search path
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13040}"
export NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:-} -I$cu/include"
runtime_libs="$cu/lib:$link"

case "$mode" in
  env)
    for v in PATH CUDA_ROOT CUDA_PATH CUDA_HOME CUDA_TOOLKIT_ROOT_DIR CUDA_COMPUTE_CAP \
      CUDARC_CUDA_VERSION NVCC_APPEND_FLAGS; do
      printf 'export %s=%q\n' "$v" "${!v}"
    done
    printf '# to run the binary on a machine without the CUDA toolkit or driver:\n'
    printf 'export LD_LIBRARY_PATH=%q\n' "$runtime_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    ;;
  check)
    log "cargo check --features cuda --all-targets (CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP)"
    cargo check --features cuda --all-targets "$@"
    ;;
  clippy)
    cargo clippy --features cuda --all-targets "$@" -- -D warnings
    ;;
  build)
    log "cargo build --release --features cuda (CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP)"
    cargo build --release --features cuda "$@"
    log "built target/release/anya; without a GPU driver run it with LD_LIBRARY_PATH=$runtime_libs"
    ;;
esac
