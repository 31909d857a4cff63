#!/usr/bin/env bash
# Memory of one 50 MB `POST /v1/files` upload (issue 42, item 11e): starts BINARY on an echo
# model, uploads a generated 50 MB JSONL file with curl, prints VmRSS/VmHWM (MB) before and after.
#   scripts/bench/upload_memory.sh target/debug/anya [JOBS_DIR]   (JOBS_DIR: the on-disk store)
set -euo pipefail
BIN=$1; JOBS_DIR=${2:-}
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
mkdir -p "$WORK/m/echo/1.0.0"
printf "id: echo\nversion: 1.0.0\ntask: echo\nformat: none\nmax_input_length: 64\nmax_inputs: 4\n" > "$WORK/m/echo/1.0.0/anya.yaml"
python3 - "$WORK/50mb.jsonl" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    i, size = 0, 0
    while size < 50_000_000:
        line = json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/embeddings",
                           "body": {"model": "echo", "input": "x" * 400}}) + "\n"
        f.write(line); size += len(line); i += 1
PY
if [ -n "$JOBS_DIR" ]; then export ANYA__JOBS__DIR=$JOBS_DIR; fi
"$BIN" serve --models-dir "$WORK/m" --port "$PORT" >"$WORK/server.log" 2>&1 &
PID=$!
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT/health" && break; sleep 0.2; done
st() { awk -v k="$1:" '$1==k{printf "%d", $2/1024}' "/proc/$PID/status"; }
echo "before: VmRSS=$(st VmRSS) MB VmHWM=$(st VmHWM) MB"
curl -s -o "$WORK/resp.json" -w "upload: HTTP %{http_code} in %{time_total}s\n" \
  -F purpose=batch -F "file=@$WORK/50mb.jsonl" "http://127.0.0.1:$PORT/v1/files"
sleep 2
echo "after:  VmRSS=$(st VmRSS) MB VmHWM=$(st VmHWM) MB"
kill "$PID"; wait "$PID" 2>/dev/null || true
