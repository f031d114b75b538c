#!/usr/bin/env bash
# Patron on a local kind cluster, for users with Docker (docs/install.md, "kind").
#
#   hack/kind.sh up     create the cluster, build and load the image, install Prometheus and
#                       Alertmanager (unless given), install the chart, apply examples/checkout.yaml
#   hack/kind.sh down   delete the cluster
#
# Needs docker, kind, kubectl and helm on PATH. Environment:
#   KIND_CLUSTER       cluster name (default: patron)
#   PATRON_NAMESPACE   the operator's namespace (default: patron-system)
#   IMAGE              image name:tag to build and load (default: patron:<appVersion of the chart>)
#   PROMETHEUS_URL     use this Prometheus instead of installing kube-prometheus-stack
#   ALERTMANAGER_URL   with PROMETHEUS_URL: this Alertmanager (optional)
#   HELM_EXTRA_ARGS    more arguments for `helm upgrade --install` of Patron (e.g. "--set dryRun=true")
#
# Every step is idempotent: running `up` again rebuilds and reloads the image and upgrades the release.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLUSTER=${KIND_CLUSTER:-patron}
NAMESPACE=${PATRON_NAMESPACE:-patron-system}
MONITORING=monitoring
APP_VERSION=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$ROOT/charts/patron/Chart.yaml")
IMAGE=${IMAGE:-patron:$APP_VERSION}
CONTEXT=kind-$CLUSTER

log() { echo "kind.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
need() { command -v "$1" >/dev/null || die "$1 is not on PATH ($2)"; }
k() { kubectl --context "$CONTEXT" "$@"; }
h() { helm --kube-context "$CONTEXT" "$@"; }

create_cluster() {
  if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    log "cluster $CLUSTER exists"
  else
    log "creating kind cluster $CLUSTER"
    kind create cluster --name "$CLUSTER" --wait 120s
  fi
}

build_image() {
  log "building $IMAGE"
  docker build -t "$IMAGE" "$ROOT"
  log "loading $IMAGE into $CLUSTER"
  kind load docker-image "$IMAGE" --name "$CLUSTER"
}

# Prometheus and Alertmanager from kube-prometheus-stack, selecting every ServiceMonitor and
# PrometheusRule (so Patron's own are picked up). Sets PROM and AM.
install_monitoring() {
  if [ -n "${PROMETHEUS_URL:-}" ]; then
    PROM=$PROMETHEUS_URL AM=${ALERTMANAGER_URL:-} MONITORING_CRDS=false
    log "using the existing Prometheus $PROM"
    return
  fi
  log "installing kube-prometheus-stack into namespace $MONITORING (a few minutes)"
  h repo add prometheus-community https://prometheus-community.github.io/helm-charts >/dev/null
  h repo update prometheus-community >/dev/null
  h upgrade --install monitoring prometheus-community/kube-prometheus-stack \
    --namespace "$MONITORING" --create-namespace --wait --timeout 10m \
    --set grafana.enabled=false \
    --set prometheus.prometheusSpec.serviceMonitorSelectorNilUsesHelmValues=false \
    --set prometheus.prometheusSpec.ruleSelectorNilUsesHelmValues=false
  PROM=http://prometheus-operated.$MONITORING.svc:9090
  AM=http://alertmanager-operated.$MONITORING.svc:9093
  MONITORING_CRDS=true
}

install_patron() {
  local repo=${IMAGE%:*} tag=${IMAGE##*:} args=()
  args=(--set "image.repository=$repo" --set "image.tag=$tag" --set image.pullPolicy=Never
    --set "prometheusUrl=$PROM" --set actions.rollback.enabled=true) # examples/checkout.yaml rolls back
  [ -z "$AM" ] || args+=(--set "alertmanagerUrls={$AM}")
  if [ "$MONITORING_CRDS" = true ]; then
    args+=(--set metrics.serviceMonitor.enabled=true --set prometheusRule.enabled=true)
  fi
  # shellcheck disable=SC2206  # HELM_EXTRA_ARGS is split on purpose
  args+=(${HELM_EXTRA_ARGS:-})
  log "installing Patron ($IMAGE) into namespace $NAMESPACE"
  h upgrade --install patron "$ROOT/charts/patron" --namespace "$NAMESPACE" --create-namespace \
    --wait --timeout 5m "${args[@]}"
}

apply_example() {
  local ns
  ns=$(sed -n 's/^  namespace: *//p' "$ROOT/examples/checkout.yaml" | head -n1)
  log "applying examples/checkout.yaml in namespace $ns"
  k create namespace "$ns" --dry-run=client -o yaml | k apply -f - >/dev/null
  k apply -f "$ROOT/examples/checkout.yaml"
  cat >&2 <<EOF

Patron is running. Next:
  kubectl --context $CONTEXT get customerslos -A
  kubectl --context $CONTEXT -n $ns describe customerslo checkout
  kubectl --context $CONTEXT -n $NAMESPACE logs deployment/patron
The example reads http_requests_total{service="checkout"}; until a workload exports it, its Ready
condition says NoData. Delete everything with: hack/kind.sh down
EOF
}

cmd_up() {
  local tool
  for tool in docker kind kubectl helm; do need "$tool" "see docs/install.md"; done
  docker info >/dev/null 2>&1 || die "docker cannot reach a Docker engine"
  create_cluster
  build_image
  install_monitoring
  install_patron
  apply_example
}

cmd_down() {
  need kind "see docs/install.md"
  kind delete cluster --name "$CLUSTER"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  *) echo "usage: $0 up | down" >&2; exit 2 ;;
esac
