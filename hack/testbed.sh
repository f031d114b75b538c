#!/usr/bin/env bash
# Local test bed: a real control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler), kwok with fake Nodes, Prometheus, Alertmanager and a webhook receiver, and the
# envoyproxy/ratelimit service (with its redis-server and a kubelet-style mirror of its ConfigMap),
# all on free loopback ports, no containers. See docs/testbed.md.
#
#   hack/testbed.sh up                 start what is not running (idempotent); print `export` lines
#   hack/testbed.sh down               stop every test-bed process and delete the state directory
#   hack/testbed.sh env                print the `export` lines of the running test bed
#   hack/testbed.sh status             show each component, its PID, memory and health
#   hack/testbed.sh stop NAME...       stop components, keeping their ports and data
#   hack/testbed.sh start NAME...      start stopped components again and wait until they are ready
#   hack/testbed.sh restart NAME...    stop, then start
#   hack/testbed.sh ratelimit-config NAMESPACE/NAME
#                                      mirror this ConfigMap into the ratelimit service (default
#                                      shop/ratelimit-config); restarts the mirror
#
# Progress goes to stderr; stdout carries only the `export` lines, so `eval "$(hack/testbed.sh up)"`
# works. Environment: PATRON_TESTBED_DIR (state, default <repo>/.testbed), PATRON_ETCD=debian (use
# Debian's /usr/bin/etcd instead of the pinned 3.6 build), PATRON_TESTBED_TIMEOUT (seconds to wait
# for each component, default 60).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${PATRON_TESTBED_DIR:-$ROOT/.testbed}
mkdir -p "$(dirname "$STATE")"
STATE=$(cd "$(dirname "$STATE")" && pwd)/$(basename "$STATE")
TIMEOUT=${PATRON_TESTBED_TIMEOUT:-60}
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok prometheus alertmanager alert-receiver
  redis ratelimit-mirror ratelimit)
NODES=3

PKI=$STATE/pki
KUBECONFIG_FILE=$STATE/kubeconfig
PROM_DIR=$STATE/prometheus
AM_DIR=$STATE/alertmanager
ALERT_LOG=$STATE/alerts.jsonl
AUDIT_LOG=$STATE/audit.log
# The ratelimit service reads RATELIMIT_RUNTIME/ratelimit/config, where the mirror writes the ConfigMap
# named in RATELIMIT_SOURCE (NAMESPACE/NAME) the way the kubelet mounts a ConfigMap volume.
RATELIMIT_RUNTIME=$STATE/ratelimit/runtime
RATELIMIT_MOUNT=$RATELIMIT_RUNTIME/ratelimit/config
RATELIMIT_SOURCE=$STATE/ratelimit/source

log() { echo "testbed: $*" >&2; }
die() { log "error: $*"; exit 1; }
now_ns() { date +%s%N; }
# Seconds since a now_ns timestamp, with one decimal.
elapsed() { local ms=$((($(now_ns) - $1) / 1000000)); printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)); }

is_component() { [[ " ${COMPONENTS[*]} " == *" $1 "* ]] || die "unknown component '$1' (known: ${COMPONENTS[*]})"; }
pid_file() { echo "$STATE/pids/$1.pid"; }
log_file() { echo "$STATE/logs/$1.log"; }

# A component runs when its PID is alive and that process's command line names this state
# directory (so a recycled PID is never mistaken for ours, nor signalled).
component_pid() {
  local file pid
  file=$(pid_file "$1")
  [ -f "$file" ] || return 1
  pid=$(<"$file")
  [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$STATE" || return 1
  echo "$pid"
}
is_running() { component_pid "$1" >/dev/null; }

fail_component() {
  log "error: $1: $2"
  log "---- last lines of $(log_file "$1"):"
  tail -n 30 "$(log_file "$1")" >&2 || true
  log "----"
  die "$1 did not come up; inspect $STATE, then run: hack/testbed.sh down"
}

# Start a command in the background, in its own session, detached from our stdio.
spawn() {
  local name=$1 log
  shift
  log=$(log_file "$name")
  echo "==== $(date -u +%FT%TZ) starting: $*" >>"$log"
  # 8>&-: the component must not inherit (and so hold) the lock of lock_state.
  setsid "$@" </dev/null >>"$log" 2>&1 8>&- &
  echo $! >"$(pid_file "$name")"
}

free_ports() {
  python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

need_debian() { # BINARY PACKAGE: install the Debian package when the binary is absent
  [ -x "$1" ] && return 0
  log "$1 is missing: installing Debian package $2"
  local sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "$2"
}

tools_bin() { "$ROOT/hack/tools.sh" path; }

etcd_binary() {
  if [ "${PATRON_ETCD:-}" = debian ]; then
    need_debian /usr/bin/etcd etcd-server
    echo /usr/bin/etcd
  else
    echo "$BIN/etcd"
  fi
}

load_ports() {
  [ -f "$STATE/ports" ] || die "no test bed in $STATE (run: hack/testbed.sh up)"
  # shellcheck source=/dev/null
  source "$STATE/ports"
  BIN=$(tools_bin)
}

# ---------------------------------------------------------------- one-time preparation

prepare_state() {
  mkdir -p "$STATE"/{pids,logs} "$PKI" "$PROM_DIR"/{targets,rules,data} "$AM_DIR/data"
  install -d -m 700 "$STATE/etcd"
  if [ ! -f "$STATE/ports" ]; then
    local p
    read -r -a p <<<"$(free_ports 9)"
    cat >"$STATE/ports" <<EOF
ETCD_PORT=${p[0]}
ETCD_PEER_PORT=${p[1]}
APISERVER_PORT=${p[2]}
CONTROLLER_MANAGER_PORT=${p[3]}
SCHEDULER_PORT=${p[4]}
KWOK_PORT=${p[5]}
PROMETHEUS_PORT=${p[6]}
ALERTMANAGER_PORT=${p[7]}
RECEIVER_PORT=${p[8]}
EOF
  fi
  if ! grep -q '^RATELIMIT_PORT=' "$STATE/ports"; then
    read -r -a p <<<"$(free_ports 4)"
    cat >>"$STATE/ports" <<EOF
REDIS_PORT=${p[0]}
RATELIMIT_PORT=${p[1]}
RATELIMIT_GRPC_PORT=${p[2]}
RATELIMIT_DEBUG_PORT=${p[3]}
EOF
  fi
  mkdir -p "$STATE/ratelimit/redis" "$RATELIMIT_RUNTIME"
  [ -f "$RATELIMIT_SOURCE" ] || echo shop/ratelimit-config >"$RATELIMIT_SOURCE"
  load_ports
  if [ ! -f "$PKI/sa.key" ]; then
    openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
    openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  fi
  if [ ! -f "$PKI/tokens.csv" ]; then
    (umask 077 && echo "$(openssl rand -hex 32),admin,admin-uid,system:masters" >"$PKI/tokens.csv")
  fi
  write_monitoring_configs
  write_audit_policy
}

# The API server's audit log (AUDIT_LOG, JSON lines): requests made by ServiceAccounts only, at
# Metadata level (who, verb, resource, response code; no bodies). tests/e2e/test_rbac_audit.py
# compares what the chart's ServiceAccount did with what the chart grants.
write_audit_policy() {
  cat >"$STATE/audit-policy.yaml" <<EOF
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
  - level: None
EOF
}

write_monitoring_configs() {
  cat >"$PROM_DIR/prometheus.yml" <<EOF
# Written by hack/testbed.sh. Tests add scrape targets by dropping file_sd JSON files into
# $PROM_DIR/targets and recording/alerting rules into $PROM_DIR/rules (then POST /-/reload).
global:
  scrape_interval: 1s
  evaluation_interval: 1s
alerting:
  alertmanagers:
    - static_configs: [{targets: ["127.0.0.1:$ALERTMANAGER_PORT"]}]
rule_files: ["$PROM_DIR/rules/*.yml", "$PROM_DIR/rules/*.yaml"]
scrape_configs:
  - job_name: prometheus
    static_configs: [{targets: ["127.0.0.1:$PROMETHEUS_PORT"]}]
  - job_name: testbed
    honor_labels: true
    file_sd_configs:
      - files: ["$PROM_DIR/targets/*.json"]
        refresh_interval: 1s
EOF
  cat >"$AM_DIR/alertmanager.yml" <<EOF
# Written by hack/testbed.sh: every alert is its own group and goes to hack/alert_receiver.py.
route:
  receiver: alert-receiver
  group_by: ["..."]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: alert-receiver
    webhook_configs:
      - url: http://127.0.0.1:$RECEIVER_PORT/
        send_resolved: true
EOF
}

write_kubeconfig() {
  local token ca
  token=$(cut -d, -f1 "$PKI/tokens.csv")
  ca=$(base64 -w0 "$PKI/apiserver.crt")
  (umask 077 && cat >"$KUBECONFIG_FILE" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: patron-testbed
    cluster:
      server: https://127.0.0.1:$APISERVER_PORT
      certificate-authority-data: $ca
users:
  - name: admin
    user:
      token: $token
contexts:
  - name: patron-testbed
    context: {cluster: patron-testbed, user: admin}
current-context: patron-testbed
EOF
  )
}

write_env() {
  {
    printf 'export %s=%q\n' \
      KUBECONFIG "$KUBECONFIG_FILE" \
      PROMETHEUS_URL "http://127.0.0.1:$PROMETHEUS_PORT" \
      ALERTMANAGER_URL "http://127.0.0.1:$ALERTMANAGER_PORT" \
      ALERT_RECEIVER_URL "http://127.0.0.1:$RECEIVER_PORT" \
      ALERT_LOG "$ALERT_LOG" \
      AUDIT_LOG "$AUDIT_LOG" \
      PROMETHEUS_TARGETS_DIR "$PROM_DIR/targets" \
      PROMETHEUS_RULES_DIR "$PROM_DIR/rules" \
      RATELIMIT_URL "http://127.0.0.1:$RATELIMIT_PORT" \
      RATELIMIT_DEBUG_URL "http://127.0.0.1:$RATELIMIT_DEBUG_PORT" \
      RATELIMIT_GRPC_ADDRESS "127.0.0.1:$RATELIMIT_GRPC_PORT" \
      PATRON_TESTBED_DIR "$STATE" \
      PATRON_TOOLS_BIN "$BIN"
  } >"$STATE/env"
}

# ---------------------------------------------------------------- components

# The command line of each component, in the global array CMD.
component_command() {
  local kubeconfig=(--kubeconfig="$KUBECONFIG_FILE" --authentication-kubeconfig="$KUBECONFIG_FILE"
    --authorization-kubeconfig="$KUBECONFIG_FILE")
  case $1 in
    etcd)
      CMD=("$(etcd_binary)" --name=testbed --data-dir="$STATE/etcd" --log-level=warn
        --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT"
        --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT"
        --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT"
        --initial-cluster="testbed=http://127.0.0.1:$ETCD_PEER_PORT")
      # Test data is disposable: skip fsync where the etcd version supports it (3.5+).
      [ "${PATRON_ETCD:-}" = debian ] || CMD+=(--unsafe-no-fsync)
      ;;
    kube-apiserver)
      CMD=("$BIN/kube-apiserver" --etcd-servers="http://127.0.0.1:$ETCD_PORT"
        --bind-address=127.0.0.1 --secure-port="$APISERVER_PORT" --cert-dir="$PKI"
        --token-auth-file="$PKI/tokens.csv" --authorization-mode=RBAC
        --service-account-issuer="https://127.0.0.1:$APISERVER_PORT"
        --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key"
        --service-cluster-ip-range=10.0.0.0/24 --disable-admission-plugins=ServiceAccount
        --allow-privileged=true --endpoint-reconciler-type=none
        --audit-policy-file="$STATE/audit-policy.yaml" --audit-log-path="$AUDIT_LOG"
        --audit-log-maxsize=100 --audit-log-maxbackup=1)
      ;;
    kube-controller-manager)
      CMD=("$BIN/kube-controller-manager" "${kubeconfig[@]}" --bind-address=127.0.0.1
        --secure-port="$CONTROLLER_MANAGER_PORT" --leader-elect=false --controllers='*'
        --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/apiserver.crt")
      ;;
    kube-scheduler)
      CMD=("$BIN/kube-scheduler" "${kubeconfig[@]}" --bind-address=127.0.0.1
        --secure-port="$SCHEDULER_PORT" --leader-elect=false)
      ;;
    kwok)
      CMD=("$BIN/kwok" --kubeconfig="$KUBECONFIG_FILE" --server-address="127.0.0.1:$KWOK_PORT"
        --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake
        --cidr=10.244.0.0/16 --node-lease-duration-seconds=40)
      # Without a lease duration kwok renews no Node leases, and the node controller marks the
      # fake Nodes NotReady every ~40 s (seen 26 times in 40 minutes), which evicts pods.
      local stage
      for stage in "$BIN"/../kwok-stages/*.yaml; do CMD+=(--config="$stage"); done
      ;;
    prometheus)
      need_debian /usr/bin/prometheus prometheus
      CMD=(/usr/bin/prometheus --config.file="$PROM_DIR/prometheus.yml"
        --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" --web.enable-lifecycle --web.enable-admin-api
        --storage.tsdb.path="$PROM_DIR/data" --storage.tsdb.retention.time=1d
        --rules.alert.resend-delay=1s)
      ;;
    alertmanager)
      need_debian /usr/bin/prometheus-alertmanager prometheus-alertmanager
      CMD=(/usr/bin/prometheus-alertmanager --config.file="$AM_DIR/alertmanager.yml"
        --storage.path="$AM_DIR/data" --web.listen-address="127.0.0.1:$ALERTMANAGER_PORT"
        --cluster.listen-address=)
      ;;
    alert-receiver)
      CMD=(python3 "$ROOT/hack/alert_receiver.py" --port="$RECEIVER_PORT" --log="$ALERT_LOG")
      ;;
    redis)
      # Counters only: no persistence (--save '', no AOF); set-proc-title no keeps the command line
      # (and so this state directory in it) visible to component_pid.
      need_debian /usr/bin/redis-server redis-server
      CMD=(/usr/bin/redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no
        --dir "$STATE/ratelimit/redis" --set-proc-title no)
      ;;
    ratelimit-mirror)
      # The interpreter itself, not a version-manager shim (pyenv's shim is a chain of scripts).
      CMD=("$(python3 -c 'import sys; print(sys.executable)')" "$ROOT/hack/configmap_mirror.py" --server="https://127.0.0.1:$APISERVER_PORT"
        --token-file="$PKI/tokens.csv" --ca-file="$PKI/apiserver.crt"
        --config-map="$(<"$RATELIMIT_SOURCE")" --dir="$RATELIMIT_MOUNT")
      ;;
    ratelimit)
      # The settings a ConfigMap volume needs (docs/throttling.md): RUNTIME_IGNOREDOTFILES=true, or
      # the timestamped `..<time>/` directory's copies load too ("duplicate domain", and no config
      # at all while /healthcheck still answers 200); RUNTIME_WATCH_ROOT=false, or it watches only
      # the directory above RUNTIME_ROOT, never sees the `..data` swap in the mount and never
      # reloads. The binary is started through a
      # link in the state directory so that its command line names that directory.
      ln -sfn "$BIN/ratelimit" "$STATE/ratelimit/ratelimit"
      CMD=(env USE_STATSD=false LOG_LEVEL=info LOG_FORMAT=json
        HOST=127.0.0.1 PORT="$RATELIMIT_PORT" GRPC_HOST=127.0.0.1 GRPC_PORT="$RATELIMIT_GRPC_PORT"
        DEBUG_HOST=127.0.0.1 DEBUG_PORT="$RATELIMIT_DEBUG_PORT"
        REDIS_SOCKET_TYPE=tcp REDIS_URL="127.0.0.1:$REDIS_PORT"
        RUNTIME_ROOT="$RATELIMIT_RUNTIME" RUNTIME_SUBDIRECTORY=ratelimit RUNTIME_APPDIRECTORY=config
        RUNTIME_IGNOREDOTFILES=true RUNTIME_WATCH_ROOT=false
        "$STATE/ratelimit/ratelimit")
      ;;
  esac
}

# One readiness probe of a component; succeeds when it serves.
probe() {
  local get=(curl -fsS -m 2 -o /dev/null)
  case $1 in
    etcd) curl -fsS -m 2 "http://127.0.0.1:$ETCD_PORT/health" 2>/dev/null | grep -q '"health":"true"' ;;
    kube-apiserver)
      [ -f "$PKI/apiserver.crt" ] && "${get[@]}" --cacert "$PKI/apiserver.crt" "https://127.0.0.1:$APISERVER_PORT/readyz"
      ;;
    # Their serving certificates are self-signed in memory; only health is checked here.
    kube-controller-manager) "${get[@]}" -k "https://127.0.0.1:$CONTROLLER_MANAGER_PORT/healthz" ;;
    kube-scheduler) "${get[@]}" -k "https://127.0.0.1:$SCHEDULER_PORT/healthz" ;;
    kwok) "${get[@]}" "http://127.0.0.1:$KWOK_PORT/healthz" ;;
    prometheus) "${get[@]}" "http://127.0.0.1:$PROMETHEUS_PORT/-/ready" ;;
    alertmanager) "${get[@]}" "http://127.0.0.1:$ALERTMANAGER_PORT/-/ready" ;;
    alert-receiver) "${get[@]}" "http://127.0.0.1:$RECEIVER_PORT/" ;;
    redis) [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping)" = PONG ] ;;
    ratelimit-mirror) [ -L "$RATELIMIT_MOUNT/..data" ] ;;
    ratelimit) "${get[@]}" "http://127.0.0.1:$RATELIMIT_PORT/healthcheck" ;;
  esac 2>/dev/null
}

start_component() {
  is_running "$1" && return 0
  component_command "$1"
  spawn "$1" "${CMD[@]}"
}

wait_ready() {
  local name=$1 start
  start=$(now_ns)
  until probe "$name"; do
    is_running "$name" || fail_component "$name" "the process exited"
    [ $((($(now_ns) - start) / 1000000000)) -lt "$TIMEOUT" ] || fail_component "$name" "not ready after ${TIMEOUT}s"
    sleep 0.2
  done
  log "$name ready (pid $(component_pid "$name"), $(elapsed "$start") s)"
}

stop_components() {
  local name pid pids=() deadline
  for name in "$@"; do
    if pid=$(component_pid "$name"); then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
      log "stopping $name (pid $pid)"
    fi
    rm -f "$(pid_file "$name")"
  done
  deadline=$((SECONDS + 15))
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { log "pid $pid ignored SIGTERM: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; }
  done
  return 0
}

# ---------------------------------------------------------------- nodes

apply_nodes() {
  local i manifest=""
  for ((i = 0; i < NODES; i++)); do
    manifest+="---
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations: {kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: \"0\"}
  labels: {type: kwok, kubernetes.io/hostname: kwok-node-$i, kubernetes.io/os: linux, kubernetes.io/arch: amd64}
status:
  allocatable: {cpu: \"32\", memory: 128Gi, pods: \"110\"}
  capacity: {cpu: \"32\", memory: 128Gi, pods: \"110\"}
"
  done
  kubectl apply -f - <<<"$manifest" >/dev/null
  kubectl wait --for=condition=Ready node -l type=kwok --timeout="${TIMEOUT}s" >/dev/null ||
    fail_component kwok "the fake Nodes did not become Ready"
  log "$NODES kwok Nodes Ready"
}

kubectl() { "$BIN/kubectl" --kubeconfig="$KUBECONFIG_FILE" "$@"; }

# ---------------------------------------------------------------- commands

all_healthy() {
  local name
  for name in "${COMPONENTS[@]}"; do
    is_running "$name" && probe "$name" || return 1
  done
}

any_running() {
  local name
  for name in "${COMPONENTS[@]}"; do is_running "$name" && return 0; done
  return 1
}

cmd_up() {
  local start name
  start=$(now_ns)
  if [ -f "$STATE/env" ] && load_ports && all_healthy; then
    log "already up in $STATE"
    cat "$STATE/env"
    return 0
  fi
  if [ -d "$STATE" ] && ! any_running; then
    log "removing stale state in $STATE (nothing of it runs)"
    rm -rf "$STATE"
  fi
  "$ROOT/hack/tools.sh" build >&2
  prepare_state
  start_component etcd
  wait_ready etcd
  for name in kube-apiserver prometheus alertmanager alert-receiver redis; do start_component "$name"; done
  wait_ready kube-apiserver
  write_kubeconfig
  # The ratelimit service starts once its runtime directory exists (the mirror made it).
  for name in kube-controller-manager kube-scheduler kwok ratelimit-mirror; do start_component "$name"; done
  wait_ready ratelimit-mirror
  start_component ratelimit
  for name in kube-controller-manager kube-scheduler kwok prometheus alertmanager alert-receiver redis ratelimit; do
    wait_ready "$name"
  done
  apply_nodes
  write_env
  log "up in $(elapsed "$start") s; state in $STATE"
  cat "$STATE/env"
}

cmd_down() {
  if [ ! -d "$STATE" ]; then
    log "nothing to stop: no $STATE"
    return 0
  fi
  local reversed=() i
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do reversed+=("${COMPONENTS[i]}"); done
  stop_components "${reversed[@]}"
  rm -rf "$STATE"
  log "down; removed $STATE"
}

cmd_env() {
  [ -f "$STATE/env" ] || die "no test bed in $STATE (run: hack/testbed.sh up)"
  cat "$STATE/env"
}

cmd_status() {
  load_ports
  local name pid rss health ok=0
  printf '%-24s %-8s %-10s %s\n' COMPONENT PID RSS HEALTH
  for name in "${COMPONENTS[@]}"; do
    if pid=$(component_pid "$name"); then
      rss=$(awk '/^VmRSS:/ {printf "%d MiB", $2 / 1024}' "/proc/$pid/status")
      if probe "$name"; then health=ready; else health="NOT READY"; ok=1; fi
    else
      pid=- rss=- health=stopped ok=1
    fi
    printf '%-24s %-8s %-10s %s\n' "$name" "$pid" "$rss" "$health"
  done
  return $ok
}

cmd_stop() {
  load_ports
  local name
  for name in "$@"; do is_component "$name"; done
  stop_components "$@"
}

cmd_start() {
  load_ports
  local name
  for name in "$@"; do is_component "$name"; done
  for name in "$@"; do start_component "$name"; done
  for name in "$@"; do wait_ready "$name"; done
}

# Point the mirror (and so the ratelimit service) at another ConfigMap; it reloads at once.
cmd_ratelimit_config() {
  load_ports
  [[ $1 =~ ^[a-z0-9.-]+/[a-z0-9.-]+$ ]] || die "ratelimit-config takes NAMESPACE/NAME, got '$1'"
  echo "$1" >"$RATELIMIT_SOURCE"
  stop_components ratelimit-mirror
  start_component ratelimit-mirror
  wait_ready ratelimit-mirror
  log "the ratelimit service now reads ConfigMap $1"
}

# Commands that change the test bed run one at a time per state directory. The lock file lives
# outside the state directory, which `down` deletes.
lock_state() {
  exec 8>"${TMPDIR:-/tmp}/patron-testbed-lock-$(echo "$STATE" | sha256sum | cut -c1-12)"
  flock 8
}

usage() {
  echo "usage: $0 up | down | env | status | stop NAME... | start NAME... | restart NAME... | ratelimit-config NAMESPACE/NAME" >&2
  echo "components: ${COMPONENTS[*]}" >&2
  exit 2
}

case "${1:-}" in
  up | down | stop | start | restart | ratelimit-config) lock_state ;;
esac
case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  env) cmd_env ;;
  status) cmd_status ;;
  ratelimit-config)
    [ $# = 2 ] || usage
    cmd_ratelimit_config "$2"
    ;;
  stop | start | restart)
    [ $# -ge 2 ] || usage
    cmd=$1
    shift
    [ "$cmd" = start ] || cmd_stop "$@"
    [ "$cmd" = stop ] || cmd_start "$@"
    ;;
  *) usage ;;
esac
