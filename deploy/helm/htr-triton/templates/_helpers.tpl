{{/* Names and labels. */}}
{{- define "htr-triton.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "htr-triton.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 55 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 55 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "htr-triton.selectorLabels" -}}
app.kubernetes.io/name: {{ include "htr-triton.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "htr-triton.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{ include "htr-triton.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The Secret holding the admin key: the user's, or the one this chart generates. */}}
{{- define "htr-triton.adminSecret" -}}
{{- if .Values.adminKey.existingSecret -}}
{{- .Values.adminKey.existingSecret -}}
{{- else if .Values.adminKey.generate -}}
{{- printf "%s-admin-key" (include "htr-triton.fullname" .) -}}
{{- else -}}
{{- fail "adminKey: set existingSecret (a Secret you created) or generate: true; the key never goes in values" -}}
{{- end -}}
{{- end -}}

{{/* The header Triton checks on the restricted APIs (serve/server.py ADMIN_HEADER) and what it guards: the
     APIs `htr serve` restricts off loopback (RESTRICTED_APIS + shared-memory). */}}
{{- define "htr-triton.adminHeader" -}}htr-admin-key{{- end -}}
{{- define "htr-triton.restricted" -}}
model-repository,trace,logging,shared-memory:{{ include "htr-triton.adminHeader" . }}=$(HTR_ADMIN_KEY)
{{- end -}}

{{/* preStop + SIGTERM drain + the kill margin of `htr serve` (serve/cli.py _shutdown). */}}
{{- define "htr-triton.gracePeriod" -}}
{{- $s := .Values.server -}}
{{- add $s.endpointDelaySeconds (mul 2 $s.exitTimeoutSeconds) $s.killAfterSeconds -}}
{{- end -}}

{{/* Average queue time per htr request over this release's pods (microseconds): the per-pod query of
     files/queue-time-per-request.promql, which deploy/prometheus-adapter/values.yaml carries too, averaged
     as the HPA averages the adapter's per-pod values. */}}
{{- define "htr-triton.kedaQuery" -}}
{{- $matchers := printf "namespace=%q,pod=~%q" .Release.Namespace (printf "%s-[a-z0-9]+-[a-z0-9]+" (include "htr-triton.fullname" .)) -}}
{{- $q := .Files.Get "files/queue-time-per-request.promql" | replace "<<.GroupBy>>" "pod" | replace "<<.LabelMatchers>>" $matchers -}}
{{- printf "avg(%s)" (regexReplaceAll "\\s+" (trim $q) " " | replace "( " "(" | replace " )" ")") -}}
{{- end -}}
