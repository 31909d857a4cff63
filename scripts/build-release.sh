#!/usr/bin/env bash
# The one release build of the `anya` binary. The Dockerfile runs this script too, so an image is
# built exactly the way a release binary is built here.
#
#   scripts/build-release.sh                      CPU build -> target/release/anya
#   FEATURES=cuda CUDA_COMPUTE_CAP=90 scripts/build-release.sh
#                                                 CUDA build (needs nvcc and the CUDA toolkit;
#                                                 CUDA_COMPUTE_CAP e.g. 80 A100, 89 L4, 90 H100)
#
# Extra arguments go to cargo (e.g. `--target-dir DIR`).
set -euo pipefail
cd "$(dirname "$0")/.."

FEATURES="${FEATURES:-}"

case ",$FEATURES," in
  *,cuda,*)
    command -v nvcc >/dev/null || {
      echo "build-release: FEATURES=cuda needs nvcc (the CUDA toolkit) on PATH" >&2
      exit 2
    }
    # Without a GPU at build time candle's kernel build cannot detect the compute capability.
    if [ -z "${CUDA_COMPUTE_CAP:-}" ] && ! command -v nvidia-smi >/dev/null; then
      echo "build-release: FEATURES=cuda with no GPU here: set CUDA_COMPUTE_CAP (e.g. 90 for H100)" >&2
      exit 2
    fi
    ;;
esac
# An empty CUDA_COMPUTE_CAP (e.g. an unset Docker build arg) must not reach the kernel build.
[ -n "${CUDA_COMPUTE_CAP:-}" ] || unset CUDA_COMPUTE_CAP

set -x
exec cargo build --release --locked --bin anya ${FEATURES:+--features "$FEATURES"} "$@"
