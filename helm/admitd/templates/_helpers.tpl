{{/* Chart name, or nameOverride. */}}
{{- define "admitd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Name of every object: fullnameOverride, else "<release>-<name>", or just the release name
when it already contains the chart name (release "admitd" gives "admitd", not "admitd-admitd").
Truncated to 63 characters, the DNS label limit some names are held to.
*/}}
{{- define "admitd.fullname" -}}
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

{{- define "admitd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "admitd.labels" -}}
helm.sh/chart: {{ include "admitd.chart" . }}
{{ include "admitd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/component: admission-controller
app.kubernetes.io/part-of: admitd
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The labels a selector matches: never change them, a Deployment's selector is immutable. */}}
{{- define "admitd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "admitd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "admitd.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "admitd.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "admitd.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
Ports come from the config (one source of truth): the container listens where admitd.yaml
says, so the probes, container ports and Service follow it. Absent keys take admitd's defaults.
*/}}
{{- define "admitd.portOf" -}}
{{- $port := regexFind "[0-9]+$" (toString .) }}
{{- if not $port }}
{{- fail (printf "expected host:port in the config, got %q" (toString .)) }}
{{- end }}
{{- $port }}
{{- end }}

{{- define "admitd.grpcPort" -}}
{{- include "admitd.portOf" (.Values.config.listen | default "0.0.0.0:50051") }}
{{- end }}

{{- define "admitd.metricsPort" -}}
{{- include "admitd.portOf" (dig "observability" "metrics_listen" "0.0.0.0:9464" .Values.config) }}
{{- end }}

{{/* The plaintext health-only port (config health_listen), or "" when there is none. */}}
{{- define "admitd.healthPort" -}}
{{- with .Values.config.health_listen }}{{ include "admitd.portOf" . }}{{ end }}
{{- end }}

{{/* Kubelet's gRPC probes speak plaintext only: with TLS they use the health-only port. */}}
{{- define "admitd.probePort" -}}
{{- include "admitd.healthPort" . | default (include "admitd.grpcPort" .) }}
{{- end }}

{{- define "admitd.redisSecretName" -}}
{{- .Values.redis.existingSecret | default (printf "%s-redis" (include "admitd.fullname" .)) }}
{{- end }}

{{/* True ("true") when the chart makes the Redis Secret itself from redis.url/password. */}}
{{- define "admitd.createRedisSecret" -}}
{{- if and (not .Values.redis.existingSecret) (or .Values.redis.url .Values.redis.password) }}true{{ end }}
{{- end }}

{{/*
The settings admitd applies only at a restart, as JSON: the pod template carries their hash,
so changing one rolls the pods. Everything in .Values.config counts, except what admitd
applies live (Engine.apply in server/admitd/_engine.py): lease, queue (but queue.aging),
budget, pools, tiers, tenants, default_tenant, auth, envoy, overload. A field added to admitd later is thus
restart-only here until it is listed: an unneeded restart is safe, a missed one is not
(scripts/check_deploy.sh fails until every field of admitd's Settings is classified).
*/}}
{{- define "admitd.restartOnlyConfig" -}}
{{- $restart := omit .Values.config "lease" "queue" "budget" "pools" "tiers" "tenants" "default_tenant" "auth" "envoy" "overload" }}
{{- $_ := set $restart "queue.aging" (dig "queue" "aging" "" .Values.config) }}
{{- toJson $restart }}
{{- end }}

{{/* Fail early on combinations that would deploy but not work. */}}
{{- define "admitd.validate" -}}
{{- $backend := dig "backend" "kind" "memory" .Values.config }}
{{- if and (ne $backend "redis") (or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled) }}
{{- fail "replicaCount > 1 or autoscaling.enabled needs config.backend.kind: redis (each memory-backend replica would enforce every limit on its own)" }}
{{- end }}
{{- if and (ne $backend "redis") (or .Values.redis.existingSecret .Values.redis.url .Values.redis.password) }}
{{- fail "redis.* is set but config.backend.kind is not redis" }}
{{- end }}
{{- if and .Values.config.tls (not .Values.config.health_listen) }}
{{- fail "config.tls needs config.health_listen (e.g. 0.0.0.0:8081): kubelet's gRPC probes cannot speak TLS" }}
{{- end }}
{{- if and .Values.tls.existingSecret (not .Values.config.tls) }}
{{- fail "tls.existingSecret mounts certificates at /etc/admitd/tls, but config.tls does not use them" }}
{{- end }}
{{- end }}
