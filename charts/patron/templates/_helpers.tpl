{{/* Names, labels and RBAC rules shared by the templates. */}}

{{- define "patron.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's object name: the release name, or <release>-patron when it does not contain "patron". */}}
{{- define "patron.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "patron.selectorLabels" -}}
app.kubernetes.io/name: {{ include "patron.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "patron.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "patron.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: patron
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "patron.serviceAccountName" -}}
{{- include "patron.fullname" . -}}
{{- end -}}

{{- define "patron.metricsServiceName" -}}
{{- printf "%s-metrics" (include "patron.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "patron.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* Refuse value combinations the schema cannot express, with a message a person can act on. */}}
{{- define "patron.validate" -}}
{{- $replicas := int .Values.replicas -}}
{{- if and (gt $replicas 1) (not .Values.peering.enabled) -}}
{{- fail (printf "replicas=%d needs peering.enabled=true: without Kopf peering every replica would act on every CustomerSLO. Set --set peering.enabled=true, or replicas=1." $replicas) -}}
{{- end -}}
{{- end -}}

{{/*
Rules for everything Patron touches inside the namespaces it serves. Rendered into the ClusterRole
when it serves all namespaces, and into one Role per namespace when watchNamespaces is listed.
No wildcards, no Secrets.
*/}}
{{- define "patron.namespacedRules" -}}
# Framework (Kopf): posting Events on CustomerSLOs (ImpactStarted, ActionApplied, ...).
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- if and .Values.peering.enabled .Values.watchNamespaces }}
# Framework (Kopf): peering for HA; namespaced operators use a KopfPeering in each namespace.
- apiGroups: [zalando.org, kopf.dev]
  resources: [kopfpeerings]
  verbs: [get, list, watch, patch]
{{- end }}
# Application: the CustomerSLOs themselves (Kopf patches finalizer and annotations on the object).
- apiGroups: [patron.dev]
  resources: [customerslos]
  verbs: [get, list, watch, patch]
- apiGroups: [patron.dev]
  resources: [customerslos/status]
  verbs: [get, patch, update]
# Application: scale action and rollback (pause or undo a rollout).
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, patch]
- apiGroups: [apps]
  resources: [deployments/scale]
  verbs: [get, patch, update]
# Application: rollback reads the ReplicaSets (revisions) of a Deployment.
- apiGroups: [apps]
  resources: [replicasets]
  verbs: [get, list, watch]
# Application: scale action respects an HPA by raising its minReplicas.
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, patch]
# Application: throttle action writes one key of the user's ratelimit ConfigMap (never creates or deletes it).
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, patch]
{{- end -}}

{{/* Cluster-scoped rules, needed in every mode. */}}
{{- define "patron.clusterRules" -}}
# Framework (Kopf): discovering and observing CRDs (resource scanning).
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
{{- if and .Values.peering.enabled (not .Values.watchNamespaces) }}
# Framework (Kopf): peering for HA; cluster-wide operators use a ClusterKopfPeering.
- apiGroups: [zalando.org, kopf.dev]
  resources: [clusterkopfpeerings]
  verbs: [get, list, watch, patch]
{{- end }}
{{- end -}}
