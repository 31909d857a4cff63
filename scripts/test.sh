#!/usr/bin/env bash
# The test suite: fetch the default models if absent (the integration tests use them), then
# run every unit and integration test.
#   scripts/test.sh [cargo test args...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh models
exec cargo test --all-targets "$@"
