{{/* Names, labels and the checks a JSON schema cannot express. */}}

{{- define "sluice.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sluice.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "sluice.serviceAccountName" -}}
{{- default (include "sluice.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "sluice.leaseName" -}}
{{- default (include "sluice.fullname" .) .Values.leaderElection.leaseName -}}
{{- end -}}

{{- define "sluice.tlsSecretName" -}}
{{- default (printf "%s-api-tls" (include "sluice.fullname" .)) .Values.api.tls.secretName -}}
{{- end -}}

{{- define "sluice.metricsJob" -}}
{{- default (include "sluice.fullname" .) .Values.monitoring.prometheusRule.job -}}
{{- end -}}

{{- define "sluice.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sluice.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end -}}

{{- define "sluice.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "sluice.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ include "sluice.imageTag" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sluice
{{- end -}}

{{/*
The image tag: the chart's appVersion unless given. `latest` and an empty tag are refused, with the reason.
*/}}
{{- define "sluice.imageTag" -}}
{{- $tag := .Values.image.tag -}}
{{- if kindIs "invalid" $tag -}}
{{- $tag = .Chart.AppVersion -}}
{{- end -}}
{{- $tag = toString $tag -}}
{{- if eq (trim $tag) "" -}}
{{- fail "image.tag must not be empty: leave it unset (null) to deploy the chart's appVersion, or name a released version" -}}
{{- end -}}
{{- if eq (lower $tag) "latest" -}}
{{- fail "image.tag must not be \"latest\": a moving tag makes replicas (and chart rollbacks) run whatever was pushed last; name a released version such as the chart's appVersion" -}}
{{- end -}}
{{- $tag -}}
{{- end -}}

{{- define "sluice.image" -}}
{{- $ref := printf "%s:%s" .Values.image.repository (include "sluice.imageTag" .) -}}
{{- if .Values.image.digest -}}
{{- $ref = printf "%s@%s" $ref .Values.image.digest -}}
{{- end -}}
{{- $ref -}}
{{- end -}}

{{/*
Whether an optional monitoring object is rendered: `auto` when the cluster serves its kind, else the boolean.
Call with (list $ "monitoring.coreos.com/v1/ServiceMonitor" .Values.monitoring.serviceMonitor.enabled).
*/}}
{{- define "sluice.enabledOrServed" -}}
{{- $root := index . 0 -}}
{{- $kind := index . 1 -}}
{{- $enabled := index . 2 -}}
{{- if eq (toString $enabled) "auto" -}}
{{- if $root.Capabilities.APIVersions.Has $kind }}true{{ end -}}
{{- else if $enabled -}}
true
{{- end -}}
{{- end -}}

{{/* Pod and container security: non-root, read-only root filesystem, no capabilities, RuntimeDefault seccomp. */}}
{{- define "sluice.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "sluice.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* An alert's runbook: <base>/<alert name in kebab case>.md. Call with (list $base "SluiceRolloutAborted"). */}}
{{- define "sluice.runbook" -}}
{{- $base := index . 0 -}}
{{- $alert := index . 1 -}}
{{- printf "%s/%s.md" (trimSuffix "/" $base) (regexReplaceAll "([a-z0-9])([A-Z])" $alert "${1}-${2}" | lower) -}}
{{- end -}}
