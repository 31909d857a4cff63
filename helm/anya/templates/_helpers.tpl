{{/*
Names and labels.
*/}}
{{- define "anya.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: release-chart, or just the release name when it already contains the chart name
(`helm install anya ./helm/anya` gives "anya"). 63 characters at most (DNS label).
*/}}
{{- define "anya.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "anya.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "anya.selectorLabels" -}}
app.kubernetes.io/name: {{ include "anya.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "anya.labels" -}}
helm.sh/chart: {{ include "anya.chart" . }}
{{ include "anya.selectorLabels" . }}
app.kubernetes.io/version: {{ include "anya.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/component: server
app.kubernetes.io/part-of: anya
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "anya.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "anya.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Images. The anya tag defaults to appVersion; gpu.enabled appends gpu.imageTagSuffix.
*/}}
{{- define "anya.imageTag" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag | toString }}
{{- if .Values.gpu.enabled }}
{{- $tag = printf "%s%s" $tag .Values.gpu.imageTagSuffix }}
{{- end }}
{{- $tag }}
{{- end }}

{{- define "anya.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository (include "anya.imageTag" .) .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "anya.imageTag" .) }}
{{- end }}
{{- end }}

{{- define "anya.fetchImage" -}}
{{- $img := .Values.models.fetch.image }}
{{- if $img.digest }}
{{- printf "%s:%s@%s" $img.repository (toString $img.tag) $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (toString $img.tag) }}
{{- end }}
{{- end }}

{{/*
The Secret holding the JWT key: an existing one, or the chart's.
*/}}
{{- define "anya.jwtSecretName" -}}
{{- default (printf "%s-jwt" (include "anya.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{- define "anya.jwtSecretKey" -}}
{{- if .Values.auth.existingSecret }}
{{- .Values.auth.existingSecretKey }}
{{- else -}}
jwt.key
{{- end }}
{{- end }}

{{/*
Fixed paths inside the pod.
*/}}
{{- define "anya.configPath" -}}/etc/anya/anya.yaml{{- end }}
{{- define "anya.modelsPath" -}}/models{{- end }}
{{- define "anya.jwtKeyPath" -}}/etc/anya/secrets/jwt.key{{- end }}
{{- define "anya.bundledRedisName" -}}{{ include "anya.fullname" . | trunc 57 | trimSuffix "-" }}-redis{{- end }}
{{- define "anya.redisSelectorLabels" -}}
app.kubernetes.io/name: {{ include "anya.name" . }}-redis
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
{{- define "anya.bundledRedisUrl" -}}redis://{{ include "anya.bundledRedisName" . }}:6379/0{{- end }}

{{/*
Termination grace period: explicit, or preStop sleep + drain deadline + 10 s for the process to
exit after the deadline.
*/}}
{{- define "anya.terminationGracePeriodSeconds" -}}
{{- $floor := add (int .Values.preStopSleepSeconds) (int .Values.server.drainTimeoutSeconds) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $floor 10 }}
{{- else if le (int .Values.terminationGracePeriodSeconds) $floor }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds + server.drainTimeoutSeconds (%d), or pods are killed mid-drain" (int .Values.terminationGracePeriodSeconds) $floor) }}
{{- else }}
{{- int .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/*
anya's configuration file, rendered from values. anya rejects unknown keys
(deny_unknown_fields), so only keys it knows appear here; everything else goes through
ANYA__SECTION__KEY environment variables (extraEnv).
*/}}
{{- define "anya.config" -}}
{{- $model := dict
  "device" (ternary "cuda" (toString .Values.model.device) .Values.gpu.enabled)
  "models_dir" (include "anya.modelsPath" .)
  "warmup" .Values.model.warmup
  "threads" (int .Values.model.threads) }}
{{- with .Values.models.s3.url }}
{{- $_ := set $model "models_dir" . }}
{{- $_ := set $model "cache_dir" (include "anya.modelsPath" $) }}
{{- end }}
{{- with .Values.model.name }}{{- $_ := set $model "name" (toString .) }}{{- end }}
{{- with .Values.model.version }}{{- $_ := set $model "version" (toString .) }}{{- end }}
{{- $server := dict
  "host" "0.0.0.0"
  "port" (int .Values.server.port)
  "workers" (int .Values.server.workers)
  "log_level" .Values.server.logLevel
  "log_format" .Values.server.logFormat
  "request_timeout_ms" (int64 .Values.server.requestTimeoutMs)
  "max_body_bytes" (int64 .Values.server.maxBodyBytes)
  "drain_timeout_s" (int .Values.server.drainTimeoutSeconds) }}
{{- with .Values.server.grpcPort }}{{- $_ := set $server "grpc_port" (int .) }}{{- end }}
{{- $monitoring := dict "enabled" .Values.metrics.enabled }}
{{- if .Values.metrics.enabled }}{{- $_ := set $monitoring "metrics_port" (int .Values.metrics.port) }}{{- end }}
{{- $cache := dict
  "enabled" .Values.cache.enabled
  "ttl" (int64 .Values.cache.ttl)
  "max_size" (int64 .Values.cache.maxSize)
  "max_bytes" (int64 .Values.cache.maxBytes) }}
{{- with .Values.cache.redis.url }}{{- $_ := set $cache "redis_url" . }}{{- end }}
{{- if .Values.cache.redis.bundled.enabled }}{{- $_ := set $cache "redis_url" (include "anya.bundledRedisUrl" .) }}{{- end }}
{{- $expected := .Values.rateLimits.expectedReplicas | default (ternary .Values.autoscaling.minReplicas .Values.replicaCount .Values.autoscaling.enabled) }}
{{- $rateLimits := dict
  "enabled" .Values.rateLimits.enabled
  "redis_failure" .Values.rateLimits.redisFailure
  "expected_replicas" (int $expected) }}
{{- $jobs := dict "claim_idle_ms" (int64 .Values.jobs.claimIdleMs) }}
{{- with .Values.jobs.redis.url }}{{- $_ := set $jobs "redis_url" . }}{{- end }}
{{- $security := dict
  "auth_required" .Values.auth.enabled
  "allowed_origins" .Values.security.allowedOrigins }}
{{- if .Values.auth.enabled }}{{- $_ := set $security "jwt_secret_file" (include "anya.jwtKeyPath" .) }}{{- end }}
{{- $config := dict "model" $model "server" $server "monitoring" $monitoring "cache" $cache "security" $security "rate_limits" $rateLimits "jobs" $jobs -}}
# anya configuration rendered by the {{ include "anya.chart" . }} Helm chart from its values:
# change the values, not this file. Environment ANYA__SECTION__KEY overrides it.
{{ toYaml $config }}
{{- end }}

{{/*
Value combinations the schema cannot express. Included once, from the Deployment.
*/}}
{{- define "anya.validate" -}}
{{- if and (not .Values.models.existingClaim) (not .Values.models.fetch.enabled) (not .Values.models.s3.url) }}
{{- fail "models: set models.existingClaim (a PVC holding the model repository), models.s3.url or models.fetch.enabled=true" }}
{{- end }}
{{- if and .Values.models.s3.url .Values.models.existingClaim }}
{{- fail "models: set models.s3.url or models.existingClaim, not both" }}
{{- end }}
{{- if and .Values.cache.redis.bundled.enabled (or .Values.cache.redis.url .Values.cache.redis.existingSecret) }}
{{- fail "cache.redis: bundled.enabled runs its own Redis; leave url and existingSecret empty" }}
{{- end }}
{{- if and .Values.jobs.redis.url .Values.jobs.redis.existingSecret }}
{{- fail "jobs.redis: set url or existingSecret, not both" }}
{{- end }}
{{- if and .Values.cache.redis.url .Values.cache.redis.existingSecret }}
{{- fail "cache.redis: set url or existingSecret, not both" }}
{{- end }}
{{- if and .Values.autoscaling.enabled .Values.autoscaling.queueSize.enabled (not .Values.metrics.enabled) }}
{{- fail "autoscaling.queueSize needs metrics.enabled=true (the metric comes from /metrics)" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (not .Values.autoscaling.queueSize.enabled) (kindIs "invalid" .Values.autoscaling.targetCPUUtilizationPercentage) }}
{{- fail "autoscaling: enable targetCPUUtilizationPercentage, queueSize, or both" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- if and .Values.gpu.enabled (eq (toString .Values.model.device) "cpu") }}
{{- fail "gpu.enabled with model.device=cpu: leave model.device at auto (gpu.enabled sets cuda) or turn gpu off" }}
{{- end }}
{{- if and .Values.metrics.enabled (eq (int .Values.metrics.port) (int .Values.server.port)) }}
{{- fail "metrics.port must differ from server.port" }}
{{- end }}
{{- if and .Values.server.grpcPort (or (eq (int .Values.server.grpcPort) (int .Values.server.port)) (and .Values.metrics.enabled (eq (int .Values.server.grpcPort) (int .Values.metrics.port)))) }}
{{- fail "server.grpcPort must differ from server.port and metrics.port" }}
{{- end }}
{{- $_ := include "anya.terminationGracePeriodSeconds" . }}
{{- end }}
