{{/* Name of the release's objects: <release>-cellmesh unless the release is named cellmesh. */}}
{{- define "cellmesh.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "cellmesh.labels" -}}
app.kubernetes.io/name: cellmesh-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: cellmesh
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "cellmesh.selectorLabels" -}}
app.kubernetes.io/name: cellmesh-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "cellmesh.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "cellmesh.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "cellmesh.operatorImage" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) -}}
{{- end -}}

{{- define "cellmesh.cellImage" -}}
{{- printf "%s:%s" .Values.cell.image.repository (default .Chart.AppVersion .Values.cell.image.tag) -}}
{{- end -}}
