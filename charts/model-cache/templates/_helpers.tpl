{{/*
Expand the name of the chart.
*/}}
{{- define "model-cache.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name, cut at 63 characters because some
Kubernetes name fields are limited to that (DNS-1123). If the release name
contains the chart name it is used as the full name.
*/}}
{{- define "model-cache.fullname" -}}
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

{{/*
Chart name and version as used by the helm.sh/chart label.
*/}}
{{- define "model-cache.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The namespace everything is installed into.
*/}}
{{- define "model-cache.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels (never used as selectors: helm.sh/chart changes on upgrade).
*/}}
{{- define "model-cache.labels" -}}
helm.sh/chart: {{ include "model-cache.chart" . }}
{{ include "model-cache.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: agent
app.kubernetes.io/part-of: model-cache
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels: stable across upgrades.
*/}}
{{- define "model-cache.selectorLabels" -}}
app.kubernetes.io/name: {{ include "model-cache.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Name of the ServiceAccount the agent runs as.
*/}}
{{- define "model-cache.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "model-cache.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image reference: registry/repository:tag[@digest]; tag defaults to the
chart's appVersion. A digest, when set, wins over the tag at pull time.
*/}}
{{- define "model-cache.image" -}}
{{- $registry := .Values.image.registry -}}
{{- $repository := .Values.image.repository -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag | toString -}}
{{- $ref := $repository -}}
{{- if $registry }}{{ $ref = printf "%s/%s" $registry $repository }}{{ end -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" $ref $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $ref $tag -}}
{{- end -}}
{{- end }}

{{/*
Where the agent's config file is mounted.
*/}}
{{- define "model-cache.configDir" -}}/etc/model-cache{{- end }}

{{/*
The agent's config file (the ConfigMap's only key), in the format
`preload agent --config` reads: `config` as it is, plus `models`. Passed through
whole, so the agent sees every key (and refuses unknown ones) and
values.schema.json, generated from the agent's parser by
scripts/gen-config-schema.py, maps one to one onto it.
*/}}
{{- define "model-cache.config" -}}
{{- $cfg := deepCopy (.Values.config | default dict) -}}
{{- $_ := set $cfg "models" .Values.models -}}
{{- toYaml $cfg -}}
{{- end }}
