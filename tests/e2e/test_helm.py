"""The Helm chart on the test bed: server-side validation, install, least privilege, upgrade, uninstall.

Pods on kwok nodes run nothing, so the operator runs outside the cluster as `patron run`
(tests/support/operator.py) with a kubeconfig that holds a token of the chart's ServiceAccount
(`kubectl create token`): the kube-apiserver enforces exactly the RBAC the chart installed.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tests.e2e.conftest import (
    CHART,
    INSTANCE,
    Namespaces,
    forbidden_lines,
    get_json,
    helm,
    kubectl_as,
    service_account_kubeconfig,
    unique,
)
from tests.support.audit import differences, granted, kopf_dev_peering, read_audit, service_account
from tests.support.catalog import manifest
from tests.support.operator import OperatorProcess
from tests.support.promserver import PrometheusServer
from tests.support.wait import wait_for

if TYPE_CHECKING:  # imported by name, pytest would try to collect the class
    from tests.e2e.conftest import Testbed

# Everything the chart creates, by kind; none of it may survive `helm uninstall`.
CHART_KINDS = "deployments,replicasets,pods,services,serviceaccounts,roles,rolebindings,kopfpeerings.zalando.org"
CLUSTER_KINDS = "clusterroles,clusterrolebindings,clusterkopfpeerings.zalando.org"
KEPT_CRDS = ("customerslos.patron.dev", "kopfpeerings.zalando.org", "clusterkopfpeerings.zalando.org")


def scheduled_pods(testbed: Testbed, namespace: str, release: str) -> list[str]:
    """Names of the release's pods that passed admission and were bound to a node.

    `helm install --wait` is not used: it waits for Ready, which on the test bed only says whether
    kwok's fake nodes kept their heartbeat, not whether the chart is right."""
    pods = get_json(testbed, "pods", "-n", namespace, "-l", f"{INSTANCE}={release}")["items"]
    return [p["metadata"]["name"] for p in pods if p["spec"].get("nodeName")]


@dataclass
class Release:
    name: str
    namespace: str
    watched: list[str]
    unwatched: str
    kubeconfig: Path  # the chart's ServiceAccount
    install_seconds: float
    notes: str


# ---------------------------------------------------------------- server-side validation


@pytest.mark.parametrize(
    "values",
    [
        {},
        {
            "watchNamespaces": ["LISTED"],
            "alertmanagerUrls": ["http://am:9093"],
            "dryRun": True,
            "logFormat": "json",
            "tenancy": {"namespaceLabel": "namespace"},
            "grafana": {"dashboard": {"enabled": True}},
        },
        {"peering": {"enabled": True, "name": "patron-dry"}},
        {"watchNamespaces": ["LISTED"], "peering": {"enabled": True, "name": "patron-dry"}},
    ],
    ids=["all namespaces", "listed namespaces", "peering, all namespaces", "peering, listed namespaces"],
)
def test_rendered_chart_passes_server_side_dry_run(
    testbed: Testbed, namespace: str, values: dict[str, Any], tmp_path: Path
) -> None:
    """`helm template | kubectl apply --dry-run=server`: the API server validates every object."""
    watched = f"t-helm-dry-{secrets.token_hex(3)}"
    testbed.kubectl("create", "namespace", watched)
    try:
        values = json.loads(json.dumps(values).replace("LISTED", watched))
        values_file = tmp_path / "values.yaml"
        values_file.write_text(yaml.safe_dump(values))
        # Helm installs crds/ before the templates; a server-side dry run cannot create the CRDs the
        # peering objects need, so they are applied for real first (as `helm install` does).
        testbed.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
        testbed.kubectl("wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{c}" for c in KEPT_CRDS))
        rendered = helm(
            testbed, "template", "patron-dry", str(CHART), "--namespace", namespace, "--values", str(values_file),
        ).stdout  # fmt: skip
        result = testbed.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered)
        lines = result.stdout.strip().splitlines()
        assert lines and all(line.endswith("(server dry run)") for line in lines), result.stdout
        assert result.stderr == "", result.stderr  # no warnings (deprecated APIs, unknown fields, ...)
        kinds = {line.split("/")[0].split(".")[0] for line in lines}
        assert {"serviceaccount", "deployment", "service"} <= kinds
        if "watchNamespaces" in values:  # a Role in each; listed namespaces need no cluster-wide rule
            assert {"role", "rolebinding"} <= kinds and not {"clusterrole", "clusterrolebinding"} & kinds
        else:
            assert {"clusterrole", "clusterrolebinding"} <= kinds
        if "grafana" in values:
            assert "configmap" in kinds  # the Grafana dashboard
        if "peering" in values:
            assert ("kopfpeering" if "watchNamespaces" in values else "clusterkopfpeering") in kinds
    finally:
        testbed.kubectl("delete", "namespace", watched, "--wait=false", check=False)


# ---------------------------------------------------------------- one namespaced install, shared


@pytest.fixture(scope="module")
def release(
    testbed: Testbed, scenario_prometheus: PrometheusServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Release]:
    """Patron installed with Helm, serving one listed namespace; another namespace it must not touch."""
    spaces = Namespaces(testbed, "t-helm")
    name = unique("patron-e2e")
    try:
        ns, watched, unwatched = spaces.make("system"), spaces.make("shop"), spaces.make("other")
        values = {
            "prometheusUrl": scenario_prometheus.url,
            "alertmanagerUrls": [testbed.alertmanager_url],
            "watchNamespaces": [watched],
        }
        values_file = tmp_path_factory.mktemp("release") / "values.yaml"
        values_file.write_text(yaml.safe_dump(values))
        started = time.monotonic()
        out = helm(testbed, "install", name, str(CHART), "--namespace", ns, "--values", str(values_file)).stdout
        seconds = time.monotonic() - started
        kubeconfig = service_account_kubeconfig(testbed, ns, name, tmp_path_factory.mktemp("sa") / "kubeconfig")
        yield Release(name, ns, [watched], unwatched, kubeconfig, seconds, out.split("NOTES:", 1)[-1])
    finally:
        if spaces.made:
            helm(testbed, "uninstall", name, "--namespace", spaces.made[0], "--wait", check=False)
        spaces.cleanup()


def test_install_reports_what_it_installed(testbed: Testbed, release: Release) -> None:
    print(f"helm install: {release.install_seconds:.1f} s")
    assert release.install_seconds < 30
    assert f"It serves CustomerSLOs in: {release.watched[0]} (a Role in each; nothing elsewhere)." in release.notes
    assert "Helm keeps the CustomerSLO CRD" in release.notes
    assert "Actions it may take (RBAC, values actions.<name>.enabled): throttle, scale;" in release.notes
    status = json.loads(helm(testbed, "status", release.name, "-n", release.namespace, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    deployment = json.loads(
        testbed.kubectl("get", "deployment", release.name, "-n", release.namespace, "-o", "json").stdout
    )
    wait_for(lambda: scheduled_pods(testbed, release.namespace, release.name), 60, "the operator pod scheduled")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PATRON_NAMESPACES"] == release.watched[0]
    assert env["PATRON_ALERTMANAGER_URL"] == testbed.alertmanager_url


# (verb, resource, namespace or None for all namespaces / cluster scope); "WATCHED"/"UNWATCHED"/"RELEASE"
# are replaced by the release's namespaces.
GRANTED = [
    ("get", "customerslos.patron.dev", "WATCHED"),
    ("watch", "customerslos.patron.dev", "WATCHED"),
    ("patch", "customerslos.patron.dev", "WATCHED"),
    ("patch", "customerslos.patron.dev/status", "WATCHED"),
    ("create", "events", "WATCHED"),
    ("patch", "deployments.apps", "WATCHED"),
    ("list", "horizontalpodautoscalers.autoscaling", "WATCHED"),
    ("patch", "horizontalpodautoscalers.autoscaling", "WATCHED"),
    ("get", "configmaps", "WATCHED"),
    ("patch", "configmaps", "WATCHED"),
]
REFUSED = [
    # Never Secrets, anywhere.
    ("get", "secrets", "WATCHED"),
    ("list", "secrets", "WATCHED"),
    ("list", "secrets", "RELEASE"),
    ("list", "secrets", None),
    # Nothing in a namespace it does not serve.
    ("get", "deployments.apps", "UNWATCHED"),
    ("patch", "deployments.apps", "UNWATCHED"),
    ("patch", "deployments.apps/scale", "UNWATCHED"),
    ("patch", "configmaps", "UNWATCHED"),
    ("list", "customerslos.patron.dev", "UNWATCHED"),
    ("create", "events", "UNWATCHED"),
    ("list", "deployments.apps", None),
    # Nor more than it needs where it does: no reading every ConfigMap, no rollback by default.
    ("list", "configmaps", "WATCHED"),
    ("watch", "configmaps", "WATCHED"),
    ("create", "events.events.k8s.io", "WATCHED"),  # Kopf posts core v1 Events only
    ("patch", "events", "WATCHED"),
    ("list", "configmaps", None),
    ("list", "deployments.apps", "WATCHED"),
    ("watch", "deployments.apps", "WATCHED"),
    ("patch", "deployments.apps/scale", "WATCHED"),  # scale patches the Deployment itself
    ("update", "deployments.apps/scale", "WATCHED"),
    ("list", "replicasets.apps", "WATCHED"),
    ("update", "customerslos.patron.dev/status", "WATCHED"),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io", None),  # no CRD scanning when namespaced
    ("create", "configmaps", "WATCHED"),
    ("delete", "configmaps", "WATCHED"),
    ("delete", "deployments.apps", "WATCHED"),
    ("create", "customerslos.patron.dev", "WATCHED"),
    ("delete", "customerslos.patron.dev", "WATCHED"),
    ("get", "pods", "WATCHED"),
    ("create", "pods/exec", "WATCHED"),
    ("list", "namespaces", None),
    ("create", "customresourcedefinitions.apiextensions.k8s.io", None),
    ("patch", "clusterroles.rbac.authorization.k8s.io", None),
    ("create", "rolebindings.rbac.authorization.k8s.io", "WATCHED"),
    ("patch", "clusterkopfpeerings.zalando.org", None),  # peering is off in this release
]


def can_i(testbed: Testbed, release: Release, verb: str, resource: str, where: str | None) -> str:
    ns = {"WATCHED": release.watched[0], "UNWATCHED": release.unwatched, "RELEASE": release.namespace}
    scope = ["--all-namespaces"] if where is None else ["-n", ns[where]]
    subresource = []
    if "/" in resource:
        resource, sub = resource.split("/")
        subresource = [f"--subresource={sub}"]
    result = kubectl_as(testbed, release.kubeconfig, "auth", "can-i", verb, resource, *scope, *subresource)
    return result.stdout.strip()


def test_service_account_holds_what_the_operator_needs(testbed: Testbed, release: Release) -> None:
    answers = {(v, r, w): can_i(testbed, release, v, r, w) for v, r, w in GRANTED}
    assert {k: a for k, a in answers.items() if a != "yes"} == {}


def test_service_account_is_refused_what_the_chart_does_not_grant(testbed: Testbed, release: Release) -> None:
    answers = {(v, r, w): can_i(testbed, release, v, r, w) for v, r, w in REFUSED}
    assert {k: a for k, a in answers.items() if a != "no"} == {}
    # And real requests with the token are refused by the API server.
    for args in (
        ("get", "secrets", "-n", release.watched[0]),
        ("get", "secrets", "-A"),
        ("get", "deployments", "-n", release.unwatched),
        ("get", "configmaps", "-n", release.unwatched),
    ):
        result = kubectl_as(testbed, release.kubeconfig, *args)
        assert result.returncode != 0 and "Forbidden" in result.stderr, (args, result.stdout, result.stderr)
        assert f"system:serviceaccount:{release.namespace}:{release.name}" in result.stderr


# ---------------------------------------------------------------- the operator with the chart's token

STORM_AND_OUTAGE = 'service=~"all-down|storm"'


def checkout_slo(name: str, **actions: Any) -> dict[str, Any]:
    """Scenarios all-down (20 customers at 50% errors: critical) and storm (bigbot at 5x its traffic,
    baseline 2 req/s) read as one service: impact and a retry storm at once."""
    body = manifest("all-down", name=name, interval="2s", recovery="4s", actions=actions)
    body["spec"]["indicator"]["ratio"] = {
        "errors": f'http_requests_total{{{STORM_AND_OUTAGE},code=~"5.."}}',
        "total": f"http_requests_total{{{STORM_AND_OUTAGE}}}",
    }
    return body


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), {})


def event_reasons(testbed: Testbed, namespace: str, name: str) -> list[str]:
    events = get_json(testbed, "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}")
    return [e["reason"] for e in events["items"]]


@pytest.fixture
def operator_as_service_account(
    testbed: Testbed, release: Release, scenario_prometheus: PrometheusServer, tmp_path: Path
) -> Iterator[OperatorProcess]:
    op = OperatorProcess(
        kubeconfig=release.kubeconfig,
        prometheus_url=scenario_prometheus.url,
        namespaces=release.watched,
        alertmanager_urls=[testbed.alertmanager_url],
        log_path=tmp_path / "operator.log",
    )
    op.start()
    try:
        yield op
    finally:
        # Delete the CustomerSLOs while the operator still runs, so that it removes its finalizer.
        for ns in release.watched:
            testbed.kubectl("delete", "customerslos", "--all", "-n", ns, "--timeout=60s", check=False)
        op.stop()


@pytest.mark.slow
def test_service_account_token_is_enough_for_impact_status_and_events(
    testbed: Testbed, release: Release, operator_as_service_account: OperatorProcess
) -> None:
    ns = release.watched[0]
    testbed.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(checkout_slo("checkout")))
    testbed.kubectl("wait", "-n", ns, "--for=condition=CustomerImpact", "cslo/checkout", "--timeout=150s")
    obj = get_json(testbed, "cslo", "checkout", "-n", ns)
    status = obj["status"]
    assert condition(obj, "Ready")["status"] == "True"
    assert (status["severity"], status["impactedCustomers"], status["activeCustomers"]) == ("critical", 20, 31)
    assert status["stormingCustomers"] == 1
    wait_for(lambda: "ImpactStarted" in event_reasons(testbed, ns, "checkout"), 30, "the ImpactStarted Event")
    assert forbidden_lines(operator_as_service_account.log()) == []


def throttle_key(testbed: Testbed, ns: str) -> dict[str, Any] | None:
    data = get_json(testbed, "configmap", "ratelimit-config", "-n", ns).get("data") or {}
    text = data.get("patron-checkout-act.yaml")
    return yaml.safe_load(text) if text else None


def replicas(testbed: Testbed, ns: str) -> int:
    return int(get_json(testbed, "deployment", "web", "-n", ns)["spec"]["replicas"])


@pytest.mark.slow
def test_service_account_token_is_enough_to_act_and_revert(
    testbed: Testbed, release: Release, operator_as_service_account: OperatorProcess
) -> None:
    ns = release.watched[0]

    def explain() -> str:
        status = get_json(testbed, "cslo", "checkout-act", "-n", ns).get("status", {})
        log = operator_as_service_account.log()
        return f"\nstatus: {json.dumps(status, indent=1)}\noperator log (end):\n{log[-3000:]}"

    testbed.kubectl("create", "configmap", "ratelimit-config", "-n", ns, "--from-literal=other.yaml=keep: me")
    testbed.kubectl("create", "deployment", "web", "-n", ns, "--image=registry.invalid/web:1", "--replicas=2")
    slo = checkout_slo(
        "checkout-act",
        throttle={"configMap": "ratelimit-config", "domain": "checkout", "descriptorKey": "customer_id"},
        scale={"target": {"kind": "Deployment", "name": "web"}, "step": 2, "maxReplicas": 4, "cooldown": "1h"},
    )
    testbed.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(slo))

    # Applied: bigbot (baseline 2 req/s x headroom 1.2) throttled in its own key; web scaled 2 -> 4.
    key = wait_for(
        lambda: throttle_key(testbed, ns), 150, "the throttle key in ConfigMap ratelimit-config", explain=explain
    )
    assert key == {
        "domain": "checkout",
        "descriptors": [
            {"key": "customer_id", "value": "bigbot", "rate_limit": {"unit": "second", "requests_per_unit": 3}}
        ],
    }
    wait_for(lambda: replicas(testbed, ns) == 4, 30, "Deployment web scaled to 4", explain=explain)
    data = get_json(testbed, "configmap", "ratelimit-config", "-n", ns)["data"]
    assert data["other.yaml"] == "keep: me"  # the user's other keys are never touched
    actions = get_json(testbed, "cslo", "checkout-act", "-n", ns)["status"]["actions"]
    assert {(a["type"], a["state"]) for a in actions} >= {("Throttle", "Active"), ("Scale", "Active")}
    wait_for(lambda: "ActionApplied" in event_reasons(testbed, ns, "checkout-act"), 30, "the ActionApplied Event")

    # The outage ends (errors now read from the storm scenario alone, which has none): after
    # `recovery` both actions are reverted.
    slo["spec"]["indicator"]["ratio"]["errors"] = 'http_requests_total{service="storm",code=~"5.."}'
    testbed.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(slo))
    wait_for(lambda: replicas(testbed, ns) == 2, 90, "Deployment web scaled back to 2", explain=explain)
    wait_for(lambda: throttle_key(testbed, ns) is None, 30, "the throttle key lifted", explain=explain)
    assert get_json(testbed, "configmap", "ratelimit-config", "-n", ns)["data"]["other.yaml"] == "keep: me"
    reasons = wait_for(
        lambda: (
            (r := event_reasons(testbed, ns, "checkout-act")) and {"ImpactResolved", "ActionReverted"} <= set(r) and r
        ),
        30,
        "ImpactResolved and ActionReverted Events",
    )
    assert "ActionApplied" in reasons
    assert forbidden_lines(operator_as_service_account.log()) == []


@pytest.mark.slow
def test_an_action_the_chart_does_not_grant_is_refused_and_shown(
    testbed: Testbed, release: Release, operator_as_service_account: OperatorProcess
) -> None:
    """Rollback's RBAC is off by default: a CustomerSLO asking for it gets the API server's 403 on
    its ActionsActive condition and an ActionFailed Event; its evaluation goes on, nothing changes."""
    ns = release.watched[0]
    testbed.kubectl("create", "deployment", "rb", "-n", ns, "--image=registry.invalid/rb:1")
    rollback = {"target": {"name": "rb"}, "within": "15m", "mode": "pause", "minSeverity": "warning"}
    testbed.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(checkout_slo("no-rollback", rollback=rollback)))

    def refused() -> str:
        message = str(condition(get_json(testbed, "cslo", "no-rollback", "-n", ns), "ActionsActive").get("message"))
        return message if "403" in message else ""

    message = wait_for(refused, 90, "the 403 on ActionsActive")
    assert "replicaset" in message.lower() and "list" in message, message  # names the request refused
    wait_for(lambda: "ActionFailed" in event_reasons(testbed, ns, "no-rollback"), 30, "the ActionFailed Event")
    obj = get_json(testbed, "cslo", "no-rollback", "-n", ns)
    assert condition(obj, "Ready")["status"] == "True" and obj["status"]["severity"] == "critical"
    assert not get_json(testbed, "deployment", "rb", "-n", ns)["spec"].get("paused")


# ---------------------------------------------------------------- cluster-wide with peering


def test_cluster_wide_install_with_peering_serves_with_its_token(
    testbed: Testbed, scenario_prometheus: PrometheusServer, tmp_path: Path
) -> None:
    """Every action disabled, all namespaces, peering: the operator uses exactly the framework's
    rules (audit log), and may not touch a Deployment or ConfigMap anywhere."""
    spaces = Namespaces(testbed, "t-helm-cw")
    name = peering = unique("patron-cw")
    ns, app = spaces.make("system"), spaces.make("app")
    try:
        helm(
            testbed, "install", name, str(CHART), "--namespace", ns,
            "--set", f"prometheusUrl={scenario_prometheus.url}",
            "--set", "peering.enabled=true", "--set", f"peering.name={peering}",
            "--set", "actions.throttle.enabled=false", "--set", "actions.scale.enabled=false",
        )  # fmt: skip
        kubeconfig = service_account_kubeconfig(testbed, ns, name, tmp_path / "kubeconfig")
        assert kubectl_as(testbed, kubeconfig, "auth", "can-i", "list", "secrets", "-A").stdout.strip() == "no"
        for verb, resource in (("patch", "deployments"), ("get", "configmaps"), ("list", "configmaps")):
            assert kubectl_as(testbed, kubeconfig, "auth", "can-i", verb, resource, "-A").stdout.strip() == "no"
        op = OperatorProcess(
            kubeconfig=kubeconfig,
            prometheus_url=scenario_prometheus.url,
            namespaces=[],
            log_path=tmp_path / "operator.log",
            extra_args=["--peering", peering],
            env={"POD_ID": "patron-cw-test"},  # Kopf's identity in the peering object
        )
        op.start()
        try:
            body = manifest("all-down", name="outage", interval="2s")
            testbed.kubectl("apply", "-n", app, "-f", "-", input=yaml.safe_dump(body))
            testbed.kubectl("wait", "-n", app, "--for=condition=CustomerImpact", "cslo/outage", "--timeout=90s")
            peers = get_json(testbed, "clusterkopfpeerings.zalando.org", peering)
            assert "patron-cw-test" in peers.get("status", {}), peers
            testbed.kubectl("delete", "cslo", "outage", "-n", app, "--timeout=60s")
        finally:
            op.stop()
        # Cluster-wide, it also sees other tests' CustomerSLOs, whose actions it may not take here.
        assert [line for line in forbidden_lines(op.log()) if "in the namespace" not in line or app in line] == []
        audit = read_audit(testbed.state_dir / "audit.log", service_account(ns, name), namespaces={"", app})
        roles = get_json(testbed, "clusterroles", "-l", f"{INSTANCE}={name}")["items"]
        unexercised = kopf_dev_peering("clusterkopfpeerings")
        assert differences(audit, granted(roles), unexercised) == {}, sorted(map(str, audit.used))
    finally:
        helm(testbed, "uninstall", name, "--namespace", ns, "--wait", check=False)
        spaces.cleanup()


# ---------------------------------------------------------------- lifecycle


def release_objects(testbed: Testbed, name: str) -> list[str]:
    selector = f"{INSTANCE}={name}"
    out = testbed.kubectl("get", CHART_KINDS, "-A", "-l", selector, "-o", "name").stdout.split()
    out += testbed.kubectl("get", CLUSTER_KINDS, "-l", selector, "-o", "name").stdout.split()
    return out


def test_bad_values_are_refused_before_anything_is_created(testbed: Testbed, namespace: str) -> None:
    for setting, message in (
        ("replicas=two", "at '/replicas': got string, want integer"),
        ("metrics.port=-1", "at '/metrics/port': minimum: got -1, want 1"),
        ("imag.tag=1.0", "additional properties 'imag' not allowed"),
    ):
        result = helm(testbed, "install", "patron-bad", str(CHART), "-n", namespace, "--set", setting, check=False)
        assert result.returncode != 0
        assert "values don't meet the specifications of the schema" in result.stderr and message in result.stderr
    assert helm(testbed, "list", "-n", namespace, "-q").stdout.strip() == ""
    assert release_objects(testbed, "patron-bad") == []


def test_upgrade_with_changed_values_then_uninstall_leaves_only_the_crds(testbed: Testbed) -> None:
    spaces = Namespaces(testbed, "t-helm-up")
    name = unique("patron-up")
    ns, first, second = spaces.make("system"), spaces.make("a"), spaces.make("b")
    try:
        helm(testbed, "install", name, str(CHART), "-n", ns, "--set", f"watchNamespaces={{{first}}}")
        assert testbed.kubectl("get", "role", name, "-n", first, "-o", "name").stdout.strip()

        # Upgrade: a second namespace, dry run, JSON logs, peering, more memory.
        helm(
            testbed, "upgrade", name, str(CHART), "-n", ns, "--reuse-values",
            "--set", f"watchNamespaces={{{first},{second}}}", "--set", "dryRun=true", "--set", "logFormat=json",
            "--set", "peering.enabled=true", "--set", "resources.limits.memory=512Mi",
        )  # fmt: skip
        deployment = get_json(testbed, "deployment", name, "-n", ns)
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["PATRON_NAMESPACES"] == f"{first},{second}"
        assert (env["PATRON_DRY_RUN"], env["PATRON_LOG_FORMAT"], env["PATRON_PEERING"]) == ("true", "json", "patron")
        assert container["resources"]["limits"]["memory"] == "512Mi"
        assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"  # with peering; Recreate without
        assert deployment["metadata"]["generation"] == 2
        wait_for(lambda: scheduled_pods(testbed, ns, name), 60, "the upgraded operator pod scheduled")
        for watched in (first, second):
            objects = testbed.kubectl("get", "role,rolebinding,kopfpeering", "-n", watched, "-o", "name").stdout.split()
            assert sorted(objects) == [
                "kopfpeering.zalando.org/patron",
                f"role.rbac.authorization.k8s.io/{name}",
                f"rolebinding.rbac.authorization.k8s.io/{name}",
            ]

        # Upgrade: the first namespace is no longer served; its Role and peering object go.
        helm(testbed, "upgrade", name, str(CHART), "-n", ns, "--reuse-values", "--set", f"watchNamespaces={{{second}}}")
        assert testbed.kubectl("get", "role,rolebinding,kopfpeering", "-n", first, "-o", "name").stdout == ""
        assert testbed.kubectl("get", "role", name, "-n", second, "-o", "name").stdout.strip()

        # A bad value on upgrade changes nothing.
        result = helm(
            testbed, "upgrade", name, str(CHART), "-n", ns, "--reuse-values", "--set", "replicas=-3", check=False
        )
        assert result.returncode != 0 and "at '/replicas': minimum: got -3, want 0" in result.stderr
        status = json.loads(helm(testbed, "status", name, "-n", ns, "-o", "json").stdout)
        assert (status["version"], status["info"]["status"]) == (3, "deployed")

        assert release_objects(testbed, name)
        helm(testbed, "uninstall", name, "-n", ns, "--wait")
        # Pods go with their ReplicaSet through the garbage collector, a moment later.
        wait_for(lambda: release_objects(testbed, name) == [], 60, f"no objects of release {name}", interval=1)
        assert testbed.kubectl("get", "secrets", "-n", ns, "-l", f"owner=helm,name={name}", "-o", "name").stdout == ""
        for crd in KEPT_CRDS:  # Helm never deletes CRDs
            testbed.kubectl("get", "crd", crd)
    finally:
        helm(testbed, "uninstall", name, "-n", ns, check=False)
        spaces.cleanup()
