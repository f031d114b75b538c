// Pinned Prometheus Operator module, for one file alone: its PrometheusRule CRD
// (example/prometheus-operator-crd/), which the test bed serves for Patron to write
// (--manage-prometheus-rules). Nothing is built from it; hack/tools.sh copies the file.
module patron.dev/hack/tools/prometheusrule-crd

go 1.26.0

require github.com/prometheus-operator/prometheus-operator v0.85.0
