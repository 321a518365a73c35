{{/* Chart name, overridable. */}}
{{- define "trueip.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name prefix: <release>-<chart>, or the release name when it contains the chart name. */}}
{{- define "trueip.fullname" -}}
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

{{/* Labels on every resource. */}}
{{- define "trueip.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "trueip.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: trueip
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: include with (dict "root" $ "component" "agent"). */}}
{{- define "trueip.selectorLabels" -}}
app.kubernetes.io/name: {{ include "trueip.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* An image reference: include with (dict "root" $ "image" .Values.agent.image). */}}
{{- define "trueip.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}

{{/* Names of the component resources. */}}
{{- define "trueip.agent.name" -}}
{{- printf "%s-agent" (include "trueip.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- define "trueip.injector.name" -}}
{{- printf "%s-injector" (include "trueip.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{/* The agent socket's group: agent.socketGroup, or the sidecars' own group. */}}
{{- define "trueip.agent.socketGroup" -}}
{{- if eq (toString .Values.agent.socketGroup) "" }}
{{- int64 .Values.sidecar.runAsGroup }}
{{- else }}
{{- int64 .Values.agent.socketGroup }}
{{- end }}
{{- end }}
{{- define "trueip.injector.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "trueip.injector.name" .)) .Values.injector.tls.secretName }}
{{- end }}

{{/* The injector's configuration file (injector/src/config.rs reads it). */}}
{{- define "trueip.injector.config" -}}
sidecar:
  image: {{ include "trueip.image" (dict "root" . "image" .Values.sidecar.image) | quote }}
  imagePullPolicy: {{ .Values.sidecar.image.pullPolicy | quote }}
  resources: {{ toJson .Values.sidecar.resources }}
  runAsUser: {{ int64 .Values.sidecar.runAsUser }}
  runAsGroup: {{ int64 .Values.sidecar.runAsGroup }}
  agentSocket: {{ .Values.agent.socketPath | quote }}
  listenAddress: {{ .Values.sidecar.listenAddress | quote }}
  upstreamAddress: {{ .Values.sidecar.upstreamAddress | quote }}
  metricsPort: {{ int .Values.sidecar.metricsPort }}
  steerPort: {{ int .Values.sidecar.steerPort }}
  {{- with .Values.sidecar.fallback }}
  fallback: {{ . | quote }}
  {{- end }}
  logFormat: {{ .Values.sidecar.logFormat | quote }}
  logLevel: {{ .Values.sidecar.logLevel | quote }}
  allowLoopbackClients: {{ .Values.sidecar.allowLoopbackClients | default false }}
  {{- /* The sidecar's own keys, as they are: the injector checks them with the sidecar's parser. */}}
  http: {{ .Values.sidecar.http | default dict | toJson }}
  admin: {{ .Values.sidecar.admin | default dict | toJson }}
  otlp: {{ .Values.sidecar.otlp | default dict | toJson }}
defaults:
  ports: {{ .Values.sidecar.ports | toString | quote }}
  udpPorts: {{ .Values.sidecar.udpPorts | toString | quote }}
  steer: {{ .Values.sidecar.steer | toString | quote }}
  mode: {{ .Values.sidecar.mode | quote }}
  header: {{ .Values.sidecar.header | quote }}
  trustedCIDRs: {{ toJson .Values.sidecar.trustedCIDRs }}
allowedModes: {{ toJson .Values.injector.allowedModes }}
{{- /* Steering needs the agent. */}}
allowSteering: {{ and .Values.injector.allowSteering .Values.agent.enabled }}
{{- end }}

{{/* Fails rendering on values the chart cannot work with that values.schema.json cannot judge:
     the schema checks each value alone (types, enums, ranges, unknown keys) before rendering;
     these checks relate values to each other, or give a clearer message than the schema could. */}}
{{- define "trueip.validate" -}}
{{- if and (eq .Values.injector.tls.source "secret") (or (not .Values.injector.tls.secretName) (not .Values.injector.tls.caBundle)) }}
{{- fail "injector.tls.source=secret needs injector.tls.secretName and injector.tls.caBundle" }}
{{- end }}
{{- if not (has .Values.sidecar.mode .Values.injector.allowedModes) }}
{{- fail (printf "sidecar.mode %q is not in injector.allowedModes %v: every pod without a trueip.io/mode annotation would be refused" .Values.sidecar.mode .Values.injector.allowedModes) }}
{{- end }}
{{- /* The schema checks the quoted form; `--set agent.socketMode=640` gives a number. */}}
{{- if not (regexMatch "^0?[0-7][2367][0-7]$" (toString .Values.agent.socketMode)) }}
{{- fail (printf "agent.socketMode must be an octal mode like \"660\" (quoted) whose group digit allows writing (2, 3, 6 or 7: the sidecars connect through the socket's group), not %q" (toString .Values.agent.socketMode)) }}
{{- end }}
{{- if and (ne (toString .Values.agent.socketGroup) "") (ne (include "trueip.agent.socketGroup" .) (toString (int64 .Values.sidecar.runAsGroup))) }}
{{- fail (printf "agent.socketGroup (%v) must be sidecar.runAsGroup (%v), or empty: the injected sidecars connect to the agent's socket with that group" .Values.agent.socketGroup .Values.sidecar.runAsGroup) }}
{{- end }}
{{- /* The schema lets `tls` through for this message. */}}
{{- if hasKey (.Values.sidecar.http | default dict) "tls" }}
{{- fail "sidecar.http.tls cannot be set: the injector mounts no certificate into pods" }}
{{- end }}
{{- end }}
