{{/* Labels every weir-cni object carries. */}}
{{- define "weir-cni.labels" -}}
app.kubernetes.io/name: weir-cni
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: weir
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
operator.istio.io/component: Cni
{{- end }}

{{/* The agent image: a full reference when `image` contains "/", else hub/image:tag. */}}
{{- define "weir-cni.image" -}}
{{- if contains "/" .Values.image -}}
{{ .Values.image }}
{{- else -}}
{{ .Values.hub | default .Values.global.hub }}/{{ .Values.image }}:{{ .Values.tag | default .Values.global.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end }}

{{/* True when the repair controller re-programs pods in place (and so reads the host's /proc). */}}
{{- define "weir-cni.repairInPlace" -}}
{{- if and .Values.repair.enabled .Values.repair.repairPods }}true{{ end -}}
{{- end }}
