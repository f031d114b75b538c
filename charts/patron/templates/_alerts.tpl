{{/*
The alert rules of the PrometheusRule, as a `groups:` document (tests run promtool on it).
*/}}
{{- define "patron.alertGroups" -}}
{{- $sel := printf "job=%q, namespace=%q" (include "patron.metricsServiceName" .) .Release.Namespace -}}
groups:
  - name: patron.operator
    rules:
      - alert: PatronEvaluationsFailing
        expr: sum by (namespace, job, outcome) (rate(patron_evaluations_total{ {{- $sel }}, outcome!="Evaluated"}[10m])) > 0
        for: 15m
        labels:
          severity: warning
        annotations:
          summary: "Patron cannot evaluate CustomerSLOs: {{`{{ $labels.outcome }}`}}"
          description: >-
            CustomerSLO evaluations in {{`{{ $labels.namespace }}`}} have ended with
            {{`{{ $labels.outcome }}`}} for 15 minutes ({{`{{ $value | printf "%.2f" }}`}}/s). Customer impact is
            not being measured for those CustomerSLOs and their actions are held; `kubectl get cslo -A`
            shows which, and their Ready condition says why.
      - alert: PatronPrometheusUnavailable
        expr: sum by (namespace, job) (rate(patron_prometheus_queries_total{ {{- $sel }}, outcome="unavailable"}[5m])) > 0
        for: 5m
        labels:
          severity: critical
        annotations:
          summary: Patron cannot reach Prometheus
          description: >-
            Patron's queries to Prometheus have failed as unavailable for 5 minutes
            ({{`{{ $value | printf "%.2f" }}`}}/s). No customer impact is detected and actions are held
            until it is reachable again; check the prometheusUrl value and the Prometheus itself.
      - alert: PatronDown
        expr: absent(up{ {{- $sel }}} == 1)
        for: 5m
        labels:
          severity: critical
          # absent() of a comparison keeps no labels: name the operator here.
          job: {{ include "patron.metricsServiceName" . }}
          namespace: {{ .Release.Namespace }}
        annotations:
          summary: Patron is down
          description: >-
            No Patron operator has been scraped as up for 5 minutes: customer-impact SLOs are not
            enforced. Check `kubectl -n {{ .Release.Namespace }} get pods -l app.kubernetes.io/instance={{ .Release.Name }}`.
{{- end -}}
