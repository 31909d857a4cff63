#!/usr/bin/env bash
# The quick start: fetch the default models if absent, build, and run `anya serve`.
#   scripts/serve.sh [anya serve flags...]      e.g. scripts/serve.sh --port 9000
set -euo pipefail
cd "$(dirname "$0")/.."
models="${ANYA__MODEL__MODELS_DIR:-models}"
scripts/fetch-models.sh "$models"
# Batch jobs survive restarts: stored under data/jobs unless the environment says otherwise.
export ANYA__JOBS__DIR="${ANYA__JOBS__DIR:-data/jobs}"
exec cargo run --release --quiet --bin anya -- serve "$@"
