{{/*
Name of the chart, or nameOverride.
*/}}
{{- define "torcus.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects: fullnameOverride, or <release>-<chart>
(just <release> when it already contains the chart's name).
*/}}
{{- define "torcus.fullname" -}}
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

{{- define "torcus.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every object of the chart.
*/}}
{{- define "torcus.labels" -}}
helm.sh/chart: {{ include "torcus.chart" . }}
{{ include "torcus.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: torcus
{{- end }}

{{/*
Labels that select the operator's pods.
*/}}
{{- define "torcus.selectorLabels" -}}
app.kubernetes.io/name: {{ include "torcus.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
Labels the operator puts on every MPC node pod (operator/src/resources.rs
`node_selector`): they select the nodes of every cluster.
*/}}
{{- define "torcus.nodeSelectorLabels" -}}
app.kubernetes.io/name: torcus-node
app.kubernetes.io/managed-by: torcus-operator
{{- end }}

{{- define "torcus.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "torcus.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "torcus.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "torcus.nodeImage" -}}
{{- printf "%s:%s" .Values.nodeImage.repository (default .Chart.AppVersion .Values.nodeImage.tag) }}
{{- end }}

{{- define "torcus.leaseName" -}}
{{- default (include "torcus.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/*
The URL of the node registry and relay the operator serves: its Service.
*/}}
{{- define "torcus.registryURL" -}}
{{- printf "http://%s.%s.svc:%d" (include "torcus.fullname" .) .Release.Namespace (int .Values.service.port) }}
{{- end }}

{{/*
The one namespace the operator watches, or "" for all of them. The operator
binary takes one namespace (--namespace) or none; more is refused here
rather than half honoured.
*/}}
{{- define "torcus.watchNamespace" -}}
{{- if gt (len .Values.watchNamespaces) 1 }}
{{- fail (printf "watchNamespaces: the operator watches one namespace or all of them, not %d; install one release per namespace" (len .Values.watchNamespaces)) }}
{{- end }}
{{- first .Values.watchNamespaces | default "" }}
{{- end }}

{{/*
Namespaces the node NetworkPolicy goes into, as a JSON list.
*/}}
{{- define "torcus.networkPolicyNamespaces" -}}
{{- $ns := .Values.networkPolicy.namespaces }}
{{- if not $ns }}{{ $ns = .Values.watchNamespaces }}{{ end }}
{{- if not $ns }}{{ $ns = list .Release.Namespace }}{{ end }}
{{- toJson (uniq $ns) }}
{{- end }}

{{/*
RBAC rules of the operator in the namespaces it manages: exactly the calls
the operator makes (operator/src). MpcCluster children are server-side
applied (create + patch), Secrets and the policy ledger ConfigMap are also created and patched directly, pods are only listed and watched, status is server-side applied,
Events are events.k8s.io (kube-runtime's Recorder creates and patches them).
Nodes get nothing: their pods do not mount a token.
*/}}
{{- define "torcus.rules" }}
- apiGroups: [mpc.torcus.io]
  resources: [mpcclusters, signingrequests]
  verbs: [get, list, watch]
- apiGroups: [mpc.torcus.io]
  resources: [mpcclusters/status, signingrequests/status]
  verbs: [patch]
# Secrets by name only: the operator never lists or watches them, so its
# token cannot enumerate the Secrets in its scope.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create, patch]
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: [get, list, watch, create, patch]
- apiGroups: [apps]
  resources: [statefulsets]
  verbs: [get, list, watch, create, patch]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
# A node's volume claim, by name: its keys Secret is bound to it, so the
# store key outlives the MpcCluster exactly as long as the shares do.
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end }}
