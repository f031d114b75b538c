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
Exactly the verbs the code calls (tests/e2e/test_rbac_audit.py and test_prometheusrule.py compare them
with the API server's audit log); no wildcards, no Secrets, no list or watch of anything but
CustomerSLOs (and HPAs and ReplicaSets, read to find the one that belongs to a target). Each action's
rules only with its actions.<name>.enabled value; PrometheusRules only with
recordingRules.managePrometheusRules.
*/}}
{{- define "patron.namespacedRules" -}}
# Framework (Kopf): posting Events on CustomerSLOs (ImpactStarted, ActionApplied, ...); never read or changed.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- if and .Values.peering.enabled .Values.watchNamespaces }}
# Framework (Kopf): peering for HA; namespaced operators use a KopfPeering in each namespace.
- apiGroups: [zalando.org, kopf.dev]
  resources: [kopfpeerings]
  verbs: [list, watch, patch]
{{- end }}
# The CustomerSLOs: Kopf lists and watches them and patches its finalizer and annotations; Patron
# reads one by name before it evaluates or releases it, and merge-patches its status.
- apiGroups: [patron.dev]
  resources: [customerslos]
  verbs: [get, list, watch, patch]
- apiGroups: [patron.dev]
  resources: [customerslos/status]
  verbs: [patch]
{{- with .Values.actions }}
{{- if .throttle.enabled }}
# actions.throttle: reads and patches the ConfigMap a CustomerSLO names (one key of it), by name:
# no list or watch (it never reads the namespace's other ConfigMaps), no create or delete.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, patch]
{{- end }}
{{- if (.throttle.backendTrafficPolicy | default dict).enabled }}
# actions.throttle.backendTrafficPolicy: reads and merge-patches the Envoy Gateway BackendTrafficPolicy
# a CustomerSLO names (its global rate-limit rules and two patron.dev annotations), by name: no list,
# watch, create or delete.
- apiGroups: [gateway.envoyproxy.io]
  resources: [backendtrafficpolicies]
  verbs: [get, patch]
{{- end }}
{{- if .scale.enabled }}
# actions.scale: the minReplicas and patron.dev/owner annotation of the HPA that targets the
# Deployment (listed to find it, read by name for its resourceVersion, merge-patched).
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, patch]
{{- end }}
{{- if or .scale.enabled .rollback.enabled }}
# actions.scale: reads a Deployment and merge-patches its spec.replicas and patron.dev/owner
# annotation at once, guarded by resourceVersion (one owner per target). actions.rollback: reads a
# Deployment and pauses it or replaces its pod template (JSON patch guarded by a test of the template).
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, patch]
{{- end }}
{{- if .rollback.enabled }}
# actions.rollback: lists a Deployment's ReplicaSets (its revisions), by the Deployment's selector.
- apiGroups: [apps]
  resources: [replicasets]
  verbs: [list]
{{- end }}
{{- end }}
{{- if (.Values.recordingRules).managePrometheusRules }}
# recordingRules.managePrometheusRules: the PrometheusRule patron-<name> of a CustomerSLO with
# spec.recordingRules, read by name, created, merge-patched (guarded by its resourceVersion) and
# deleted when its recording rules are disabled; no list or watch. (Whether the CRD is served is
# asked of discovery, which every user may read.)
- apiGroups: [monitoring.coreos.com]
  resources: [prometheusrules]
  verbs: [get, create, patch, delete]
{{- end }}
{{- end -}}

{{/* Cluster-scoped rules: only when serving all namespaces (listed namespaces need none). */}}
{{- define "patron.clusterRules" -}}
{{- if not .Values.watchNamespaces }}
# Framework (Kopf): observing CRDs (resource scanning; off when serving listed namespaces).
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- if .Values.peering.enabled }}
# Framework (Kopf): peering for HA; cluster-wide operators use a ClusterKopfPeering.
- apiGroups: [zalando.org, kopf.dev]
  resources: [clusterkopfpeerings]
  verbs: [list, watch, patch]
{{- end }}
{{- end }}
{{- end -}}
