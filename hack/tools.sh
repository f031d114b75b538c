#!/usr/bin/env bash
# Builds the pinned test-bed binaries (kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl, etcd, kwok, helm, ratelimit, thanos) from the wrapper Go modules in hack/tools/*, into a cache
# outside the repository keyed by those modules and the Go version, renders Envoy Gateway's CRDs
# from its Go module (envoy-gateway-crds) and copies the Prometheus Operator's PrometheusRule CRD
# from its module (prometheusrule-crd). See docs/testbed.md.
#
#   hack/tools.sh build [NAME...]   build what is missing (all tools by default); reuse the rest
#   hack/tools.sh path              print the bin directory for the current versions
#   hack/tools.sh verify            check that every binary runs and reports its pinned version
#
# Environment: PATRON_TOOLS_CACHE (default ~/.cache/patron/tools), GO (default: go on PATH, else
# /usr/local/go/bin/go). GOCACHE/GOMODCACHE are Go's own and are honoured as usual.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODULES=$ROOT/hack/tools
CACHE_ROOT=${PATRON_TOOLS_CACHE:-$HOME/.cache/patron/tools}
# Bump when the build recipe below changes in a way the go.mod/go.sum files do not show.
RECIPE=1
TOOLS=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok helm ratelimit thanos envoy-gateway-crds prometheusrule-crd)
# Envoy Gateway's module; its chart charts/gateway-crds-helm holds the BackendTrafficPolicy CRD and
# the Gateway API CRDs (standard channel), rendered with helm into envoy-gateway-crds.yaml.
ENVOY_GATEWAY=v1.9.1
# Tools keyed by their own module alone, in $CACHE_ROOT/NAME-<key> and linked into $BIN: adding or
# bumping one of them rebuilds only it, not the Kubernetes binaries (minutes of CPU).
OWN_KEY=(ratelimit thanos prometheusrule-crd)
KWOK_STAGES=(
  node/fast/node-initialize.yaml
  node/heartbeat-with-lease/node-heartbeat-with-lease.yaml
  pod/fast/pod-ready.yaml
  pod/fast/pod-complete.yaml
  pod/fast/pod-delete.yaml
)

log() { echo "tools: $*" >&2; }
die() { log "error: $*"; exit 1; }
# Seconds since a `date +%s%N` timestamp, with one decimal.
elapsed() { local ms=$((($(date +%s%N) - $1) / 1000000)); printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)); }

find_go() {
  if [ -n "${GO:-}" ]; then echo "$GO"
  elif command -v go >/dev/null; then command -v go
  elif [ -x /usr/local/go/bin/go ]; then echo /usr/local/go/bin/go
  else die "no Go toolchain (set GO=/path/to/go)"
  fi
}
GO=$(find_go)

own_key() { [[ " ${OWN_KEY[*]} " == *" $1 "* ]]; }

# A cache key: the given wrapper go.mod/go.sum files, the Go version and the recipe revision.
cache_key() {
  local f
  {
    for f in "$@"; do
      echo "== ${f#"$ROOT"/}"
      cat "$f"
    done
    "$GO" version
    echo "recipe $RECIPE"
  } | sha256sum | cut -c1-16
}
# The shared key covers every wrapper module except those of OWN_KEY tools.
shared_modules() {
  local f
  for f in "$MODULES"/*/go.mod "$MODULES"/*/go.sum; do
    own_key "$(basename "$(dirname "$f")")" || echo "$f"
  done
}
mapfile -t SHARED_MODULES < <(shared_modules)
TOOL_DIR=$CACHE_ROOT/$(cache_key "${SHARED_MODULES[@]}")
BIN=$TOOL_DIR/bin
# The directory an OWN_KEY tool is built into.
own_dir() { echo "$CACHE_ROOT/$1-$(cache_key "$MODULES/$1/go.mod" "$MODULES/$1/go.sum")"; }

# Version of a module as required by one wrapper module, read with the go command itself.
module_version() { (cd "$MODULES/$1" && "$GO" list -m -f '{{.Version}}' "$2"); }

# The module directory, package and -ldflags of each tool.
tool_recipe() {
  local name=$1 v
  case $name in
    kube-apiserver | kube-controller-manager | kube-scheduler | kubectl)
      v=$(module_version kubernetes k8s.io/kubernetes)
      local minor=${v#v1.}
      minor=${minor%%.*}
      local ld="-s -w" p
      for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ld+=" -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
      done
      echo kubernetes "k8s.io/kubernetes/cmd/$name" "$ld"
      ;;
    etcd)
      v=$(module_version etcd go.etcd.io/etcd/server/v3)
      echo etcd go.etcd.io/etcd/server/v3 "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$v"
      ;;
    kwok)
      echo kwok sigs.k8s.io/kwok/cmd/kwok "-s -w"
      ;;
    helm)
      # Helm's own release build stamps its version and the Kubernetes version of its client-go
      # (client-go v0.X.Y -> Kubernetes 1.X); without them `helm template` assumes Kubernetes 1.20.
      v=$(module_version helm helm.sh/helm/v3)
      local kminor
      kminor=$(module_version helm k8s.io/client-go | cut -d. -f2)
      local ld="-s -w -X helm.sh/helm/v3/internal/version.version=$v"
      ld+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
      for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
        ld+=" -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$kminor"
      done
      echo helm helm.sh/helm/v3/cmd/helm "$ld"
      ;;
    ratelimit)
      echo ratelimit github.com/envoyproxy/ratelimit/src/service_cmd "-s -w"
      ;;
    thanos)
      v=$(module_version thanos github.com/thanos-io/thanos)
      echo thanos github.com/thanos-io/thanos/cmd/thanos "-s -w -X github.com/prometheus/common/version.Version=${v#v}"
      ;;
    *) die "unknown tool '$name' (known: ${TOOLS[*]})" ;;
  esac
}

# Build tags of a tool. Thanos's release build (its .promu.yml) uses slicelabels: its gRPC label
# types are cast from Prometheus's labels without copying, which only holds for the slice layout.
tool_tags() {
  case $1 in
    thanos) echo netgo,slicelabels ;;
  esac
}

build_tool() {
  local name=$1 recipe module pkg ldflags start out=$BIN
  if own_key "$name"; then
    out=$(own_dir "$name")/bin
    # The link in $BIN must point at the build of the current key.
    [ -x "$out/$name" ] && [ "$(readlink "$BIN/$name")" = "$out/$name" ] && return 0
  fi
  if [ ! -x "$out/$name" ]; then
    recipe=$(tool_recipe "$name")
    read -r module pkg ldflags <<<"$recipe"
    log "building $name from hack/tools/$module ($pkg)"
    start=$(date +%s%N)
    mkdir -p "$out"
    (cd "$MODULES/$module" && CGO_ENABLED=0 "$GO" build -trimpath -tags "$(tool_tags "$name")" -ldflags "$ldflags" -o "$out/.$name.tmp" "$pkg")
    mv -f "$out/.$name.tmp" "$out/$name"
    log "built $name in $(elapsed "$start") s"
  fi
  [ "$out" = "$BIN" ] || ln -sfn "$out/$name" "$BIN/$name"
}

# The CRDs of the Envoy Gateway chart the e2e tests write through: BackendTrafficPolicy and the
# Gateway API (its templates are wrapped in `if .Values.crds.*.enabled`, so helm renders them).
# Keyed by the module version alone, in $CACHE_ROOT/envoy-gateway-crds-VERSION, linked into TOOL_DIR.
render_envoy_gateway_crds() {
  local dir=$CACHE_ROOT/envoy-gateway-crds-$ENVOY_GATEWAY src start
  if [ ! -s "$dir/crds.yaml" ]; then
    build_tool helm
    start=$(date +%s%N)
    src=$(cd "$CACHE_ROOT" && "$GO" mod download -json "github.com/envoyproxy/gateway@$ENVOY_GATEWAY" |
      sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    [ -d "$src/charts/gateway-crds-helm" ] || die "github.com/envoyproxy/gateway@$ENVOY_GATEWAY has no charts/gateway-crds-helm"
    mkdir -p "$dir"
    "$BIN/helm" template envoy-gateway-crds "$src/charts/gateway-crds-helm" \
      --set crds.envoyGateway.enabled=true --set crds.gatewayAPI.enabled=true --set crds.gatewayAPI.channel=standard \
      --show-only templates/generated/gateway.envoyproxy.io_backendtrafficpolicies.yaml \
      --show-only templates/standard-gatewayapi-crds.yaml >"$dir/.crds.yaml.tmp"
    mv -f "$dir/.crds.yaml.tmp" "$dir/crds.yaml"
    log "rendered Envoy Gateway $ENVOY_GATEWAY CRDs in $(elapsed "$start") s"
  fi
  ln -sfn "$dir/crds.yaml" "$TOOL_DIR/envoy-gateway-crds.yaml"
}

# The PrometheusRule CRD (monitoring.coreos.com/v1) of the Prometheus Operator module that
# hack/tools/prometheusrule-crd pins, copied as it is: the e2e tests of --manage-prometheus-rules apply
# it. Keyed by that wrapper module alone (OWN_KEY), linked into TOOL_DIR as prometheusrule-crd.yaml.
copy_prometheusrule_crd() {
  local dir file=example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml src
  dir=$(own_dir prometheusrule-crd)
  if [ ! -s "$dir/prometheusrule-crd.yaml" ]; then
    src=$(cd "$MODULES/prometheusrule-crd" && "$GO" mod download -json github.com/prometheus-operator/prometheus-operator |
      sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    [ -s "$src/$file" ] || die "github.com/prometheus-operator/prometheus-operator has no $file"
    mkdir -p "$dir"
    install -m 0644 "$src/$file" "$dir/.prometheusrule-crd.yaml.tmp"
    mv -f "$dir/.prometheusrule-crd.yaml.tmp" "$dir/prometheusrule-crd.yaml"
    log "copied the PrometheusRule CRD from $(module_version prometheusrule-crd github.com/prometheus-operator/prometheus-operator)"
  fi
  ln -sfn "$dir/prometheusrule-crd.yaml" "$TOOL_DIR/prometheusrule-crd.yaml"
}

# kwok v0.8 ships no built-in stages: copy the ones the test bed uses from the module source.
copy_kwok_stages() {
  local dest=$TOOL_DIR/kwok-stages src stage
  [ -f "$dest/.complete" ] && return 0
  (cd "$MODULES/kwok" && "$GO" mod download sigs.k8s.io/kwok)
  src=$(cd "$MODULES/kwok" && "$GO" list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
  mkdir -p "$dest"
  for stage in "${KWOK_STAGES[@]}"; do
    install -m 0644 "$src/kustomize/stage/$stage" "$dest/$(basename "$stage")"
  done
  touch "$dest/.complete"
}

cmd_build() {
  local names=("$@") name start
  [ ${#names[@]} -gt 0 ] || names=("${TOOLS[@]}")
  mkdir -p "$BIN"
  start=$(date +%s%N)
  # One builder at a time per key: a second caller waits, then finds everything built.
  exec 9>"$TOOL_DIR/.lock"
  flock 9
  for name in "${names[@]}"; do
    case $name in
      envoy-gateway-crds) render_envoy_gateway_crds ;;
      prometheusrule-crd) copy_prometheusrule_crd ;;
      *) build_tool "$name" ;;
    esac
    [ "$name" != kwok ] || copy_kwok_stages
  done
  flock -u 9
  log "tools ready in $BIN ($(elapsed "$start") s)"
}

cmd_path() { echo "$BIN"; }

# check NAME EXPECTED COMMAND...: the command must succeed and print EXPECTED somewhere.
check() {
  local name=$1 want=$2 out
  shift 2
  if out=$("$@" 2>&1) && [[ $out == *"$want"* ]]; then
    log "ok      $name: $want"
  else
    log "FAILED  $name: wanted '$want', got: ${out:0:200}"
    failed=1
  fi
}

# Each binary must run and report the version its wrapper module pins.
cmd_verify() {
  local k8s etcd kwok helm ratelimit thanos promop name
  failed=0
  k8s=$(module_version kubernetes k8s.io/kubernetes)
  ratelimit=$(module_version ratelimit github.com/envoyproxy/ratelimit)
  etcd=$(module_version etcd go.etcd.io/etcd/server/v3)
  kwok=$(module_version kwok sigs.k8s.io/kwok)
  helm=$(module_version helm helm.sh/helm/v3)
  thanos=$(module_version thanos github.com/thanos-io/thanos)
  promop=$(module_version prometheusrule-crd github.com/prometheus-operator/prometheus-operator)
  for name in kube-apiserver kube-controller-manager kube-scheduler; do
    check "$name" "Kubernetes $k8s" "$BIN/$name" --version
  done
  check kubectl "\"gitVersion\": \"$k8s\"" "$BIN/kubectl" version --client -o json
  check etcd "etcd Version: ${etcd#v}" "$BIN/etcd" --version
  check kwok "${kwok#v}" "$BIN/kwok" --version
  check helm "$helm" "$BIN/helm" version --short
  # ratelimit prints no version: its build information names the module version it was built from.
  check ratelimit "github.com/envoyproxy/ratelimit	$ratelimit" "$GO" version -m "$BIN/ratelimit"
  check thanos "thanos, version ${thanos#v}" "$BIN/thanos" --version
  check envoy-gateway-crds "name: backendtrafficpolicies.gateway.envoyproxy.io" cat "$TOOL_DIR/envoy-gateway-crds.yaml"
  check prometheusrule-crd "operator.prometheus.io/version: ${promop#v}" cat "$TOOL_DIR/prometheusrule-crd.yaml"
  for name in "${KWOK_STAGES[@]}"; do
    check "stage $(basename "$name")" "kind: Stage" cat "$TOOL_DIR/kwok-stages/$(basename "$name")"
  done
  [ $failed = 0 ] || die "some tools are missing or wrong; run: hack/tools.sh build"
}

case "${1:-}" in
  build) shift; cmd_build "$@" ;;
  path) cmd_path ;;
  verify) cmd_verify ;;
  *) echo "usage: $0 build [NAME...] | path | verify" >&2; exit 2 ;;
esac
