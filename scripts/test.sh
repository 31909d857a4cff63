#!/usr/bin/env bash
# The test suite: fetch the default models if absent (the integration tests use them), then
# run every unit and integration test.
#   scripts/test.sh [cargo test args...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh models
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --all-targets --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
