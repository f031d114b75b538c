"""The Helm chart, rendered offline with the pinned helm: lint, schema, hardening and least-privilege RBAC.

No server is involved; tests/e2e/test_helm.py applies and installs the same chart on the test bed.
"""

from __future__ import annotations

import subprocess
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "patron"
RELEASE, RELEASE_NS = "patron", "patron-system"
LISTED = {"watchNamespaces": ["shop", "payments"]}


@cache
def helm_binary() -> Path:
    bin_dir = subprocess.run(
        [str(REPO / "hack" / "tools.sh"), "path"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return Path(bin_dir) / "helm"


@pytest.fixture(autouse=True)
def _need_helm() -> None:
    if not helm_binary().exists():
        pytest.skip(f"{helm_binary()} is not built (run: hack/tools.sh build helm)")


def helm(*args: str, values: dict[str, Any] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(values or {}, f)
        f.flush()
        result = subprocess.run(
            [str(helm_binary()), *args, "--values", f.name], capture_output=True, text=True, timeout=60
        )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
    return result


def render(values: dict[str, Any] | None = None, *extra: str) -> list[dict[str, Any]]:
    out = helm("template", RELEASE, str(CHART), "--namespace", RELEASE_NS, *extra, values=values).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def kinds(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = kinds(docs, kind)
    return doc


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def env(docs: list[dict[str, Any]]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container(docs)["env"]}


def rules(doc: dict[str, Any]) -> set[tuple[str, str, tuple[str, ...]]]:
    """(apiGroup, resource, verbs) for every group x resource of a Role or ClusterRole."""
    return {
        (group, resource, tuple(sorted(rule["verbs"])))
        for rule in doc["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }


VALUE_SETS = {
    "defaults": {},
    "listed namespaces": LISTED,
    "peering, all namespaces": {"peering": {"enabled": True, "name": "patron"}},
    "peering, listed namespaces": {**LISTED, "peering": {"enabled": True, "name": "patron"}},
    "everything on": {
        **LISTED,
        "actions": {"throttle": {"enabled": True}, "scale": {"enabled": True}, "rollback": {"enabled": True}},
        "alertmanagerUrls": ["http://am-0:9093", "http://am-1:9093"],
        "dryRun": True,
        "maxConcurrentEvaluations": 16,
        "tenancy": {"namespaceLabel": "namespace"},
        "logFormat": "json",
        "metrics": {"port": 9000, "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"a": "b"}}},
        "prometheusRule": {"enabled": True, "labels": {"release": "monitoring"}},
        "recordingRules": {"managePrometheusRules": True, "ruleLabels": {"release": "kps", "example.com/team": "sre"}},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "affinity": {"nodeAffinity": {}},
    },
}


def test_chart_crd_is_the_generated_crd() -> None:
    """charts/patron/crds/customerslo.yaml is byte-for-byte crds/customerslo.yaml (both from `make crd`)."""
    chart_crd = CHART / "crds" / "customerslo.yaml"
    assert chart_crd.read_bytes() == (REPO / "crds" / "customerslo.yaml").read_bytes(), "run: make crd"


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_lint_strict_is_clean(values: dict[str, Any]) -> None:
    result = helm("lint", "--strict", str(CHART), "--namespace", RELEASE_NS, values=values, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


def test_deployment_runs_patron_hardened() -> None:
    docs = render()
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    c = container(docs)
    assert c["image"] == "patron:0.1.0"  # the chart's appVersion, pinned
    assert c["args"] == ["run"]  # the image's ENTRYPOINT is `patron`
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}  # never two standalone operators
    assert pod["serviceAccountName"] == "patron"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"health": 8080, "metrics": 9464}
    assert env(docs) == {
        "PATRON_PROMETHEUS_URL": "http://prometheus-operated.monitoring.svc:9090",
        "PATRON_DRY_RUN": "false",
        "PATRON_MAX_CONCURRENT_EVALUATIONS": "8",
        "PATRON_LOG_FORMAT": "plain",
        "PATRON_METRICS_PORT": "9464",
        "PATRON_METRICS_ADDRESS": "0.0.0.0",
        "PATRON_LIVENESS": "http://0.0.0.0:8080/healthz",
        "POD_ID": "",  # from the pod's name (fieldRef)
    }


def test_values_reach_the_operator_flags() -> None:
    docs = render(VALUE_SETS["everything on"], "--set", "image.tag=0.2.0-rc.1", "--set", "peering.enabled=true")
    assert env(docs) | {"POD_ID": ""} == {
        "PATRON_PROMETHEUS_URL": "http://prometheus-operated.monitoring.svc:9090",
        "PATRON_ALERTMANAGER_URL": "http://am-0:9093,http://am-1:9093",
        "PATRON_NAMESPACES": "shop,payments",
        "PATRON_DRY_RUN": "true",
        "PATRON_ENFORCE_NAMESPACE_LABEL": "namespace",
        "PATRON_MANAGE_PROMETHEUS_RULES": "true",
        "PATRON_PROMETHEUS_RULE_LABELS": "example.com/team=sre,release=kps",
        "PATRON_MAX_CONCURRENT_EVALUATIONS": "16",
        "PATRON_LOG_FORMAT": "json",
        "PATRON_METRICS_PORT": "9000",
        "PATRON_METRICS_ADDRESS": "0.0.0.0",
        "PATRON_LIVENESS": "http://0.0.0.0:8080/healthz",
        "PATRON_PEERING": "patron",
        "POD_ID": "",
    }
    assert container(docs)["image"] == "patron:0.2.0-rc.1"
    assert one(docs, "Service")["spec"]["ports"] == [
        {"name": "metrics", "port": 9000, "targetPort": "metrics", "protocol": "TCP"}
    ]
    monitor = one(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "15s", "honorLabels": True}
    ]
    service_labels = one(docs, "Service")["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service_labels.items()
    assert one(docs, "PrometheusRule")["metadata"]["labels"]["release"] == "monitoring"
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"][0]["key"] == "dedicated"


# The RBAC table (docs/install.md, RBAC): what the operator calls, per chart configuration.
# tests/e2e/test_rbac_audit.py checks against the API server's audit log that the code uses exactly
# these; here the rendered rules are pinned, so that a change to them shows in review.
FRAMEWORK = {
    ("", "events", ("create",)),
    ("patron.dev", "customerslos", ("get", "list", "patch", "watch")),
    ("patron.dev", "customerslos/status", ("patch",)),
}
THROTTLE = {("", "configmaps", ("get", "patch"))}
POLICIES = {("gateway.envoyproxy.io", "backendtrafficpolicies", ("get", "patch"))}  # throttle.backendTrafficPolicy
SCALE = {("autoscaling", "horizontalpodautoscalers", ("get", "list", "patch"))}
DEPLOYMENTS = {("apps", "deployments", ("get", "patch"))}  # scale (replicas, owner annotation) or rollback
ROLLBACK = {("apps", "replicasets", ("list",))}
# recordingRules.managePrometheusRules: the PrometheusRule of each CustomerSLO, by name (no list or watch).
PROMETHEUS_RULES = {("monitoring.coreos.com", "prometheusrules", ("create", "delete", "get", "patch"))}
NAMESPACED = FRAMEWORK | THROTTLE | SCALE | DEPLOYMENTS  # the defaults: rollback off
CRDS = {("apiextensions.k8s.io", "customresourcedefinitions", ("list", "watch"))}
PEERING_VERBS = ("list", "patch", "watch")
CLUSTER_PEERING = {(g, "clusterkopfpeerings", PEERING_VERBS) for g in ("zalando.org", "kopf.dev")}
NAMESPACED_PEERING = {(g, "kopfpeerings", PEERING_VERBS) for g in ("zalando.org", "kopf.dev")}


def actions(throttle: bool = True, scale: bool = True, rollback: bool = False, policy: bool = False) -> dict[str, Any]:
    return {
        "actions": {
            "throttle": {"enabled": throttle, "backendTrafficPolicy": {"enabled": policy}},
            "scale": {"enabled": scale},
            "rollback": {"enabled": rollback},
        }
    }


RBAC_TABLE = {
    "defaults": ({}, FRAMEWORK | THROTTLE | SCALE | DEPLOYMENTS),
    "rollback enabled": (actions(rollback=True), FRAMEWORK | THROTTLE | SCALE | DEPLOYMENTS | ROLLBACK),
    "scale disabled": (actions(scale=False), FRAMEWORK | THROTTLE),
    "scale disabled, rollback enabled": (
        actions(scale=False, rollback=True),
        FRAMEWORK | THROTTLE | DEPLOYMENTS | ROLLBACK,
    ),
    "throttle disabled": (actions(throttle=False), FRAMEWORK | SCALE | DEPLOYMENTS),
    "every action disabled": (actions(False, False, False), FRAMEWORK),
    "throttle into BackendTrafficPolicies": (actions(policy=True), NAMESPACED | POLICIES),
    "throttle into BackendTrafficPolicies only": (
        actions(throttle=False, scale=False, policy=True),
        FRAMEWORK | POLICIES,
    ),
    "prometheus rules managed": (
        {"recordingRules": {"managePrometheusRules": True}},
        FRAMEWORK | THROTTLE | SCALE | DEPLOYMENTS | PROMETHEUS_RULES,
    ),
    "prometheus rules managed, every action disabled": (
        {**actions(False, False, False), "recordingRules": {"managePrometheusRules": True}},
        FRAMEWORK | PROMETHEUS_RULES,
    ),
}


@pytest.mark.parametrize(("values", "expected"), RBAC_TABLE.values(), ids=RBAC_TABLE.keys())
def test_rbac_per_configuration_listed_namespaces(values: dict[str, Any], expected: set[Any]) -> None:
    """Listed namespaces: the rules in each namespace's Role, and no ClusterRole at all."""
    docs = render({**LISTED, **values})
    assert not kinds(docs, "ClusterRole") and not kinds(docs, "ClusterRoleBinding")
    roles = {r["metadata"]["namespace"]: r for r in kinds(docs, "Role")}
    assert set(roles) == {"shop", "payments"}
    assert all(rules(r) == expected for r in roles.values())


@pytest.mark.parametrize(("values", "expected"), RBAC_TABLE.values(), ids=RBAC_TABLE.keys())
def test_rbac_per_configuration_all_namespaces(values: dict[str, Any], expected: set[Any]) -> None:
    """All namespaces: the same rules and Kopf's CRD scanning, in one ClusterRole."""
    docs = render(values)
    assert not kinds(docs, "Role") and not kinds(docs, "RoleBinding")
    assert rules(one(docs, "ClusterRole")) == CRDS | expected


def test_no_cluster_wide_read_of_config_maps_and_no_rollback_by_default() -> None:
    for docs in (render(), render(LISTED)):
        for role in kinds(docs, "ClusterRole") + kinds(docs, "Role"):
            for rule in role["rules"]:
                if "configmaps" in rule["resources"]:
                    assert set(rule["verbs"]) == {"get", "patch"}, rule  # by name only: no list, no watch
                assert "replicasets" not in rule["resources"], rule
                assert not (
                    {"deployments/scale", "configmaps", "events"} & set(rule["resources"]) and "update" in rule["verbs"]
                )


def test_all_namespaces_get_one_cluster_role() -> None:
    docs = render()
    assert not kinds(docs, "Role") and not kinds(docs, "RoleBinding")
    assert rules(one(docs, "ClusterRole")) == CRDS | NAMESPACED
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "patron"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "patron", "namespace": RELEASE_NS}]


def test_listed_namespaces_get_a_role_each_and_no_cluster_role() -> None:
    docs = render(LISTED)
    assert not kinds(docs, "ClusterRole") and not kinds(docs, "ClusterRoleBinding")
    roles = {r["metadata"]["namespace"]: r for r in kinds(docs, "Role")}
    assert set(roles) == {"shop", "payments"}
    assert all(rules(r) == NAMESPACED for r in roles.values())
    bindings = {b["metadata"]["namespace"]: b for b in kinds(docs, "RoleBinding")}
    assert set(bindings) == {"shop", "payments"}
    for b in bindings.values():
        assert b["roleRef"]["kind"] == "Role"
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": "patron", "namespace": RELEASE_NS}]
    assert env(docs)["PATRON_NAMESPACES"] == "shop,payments"


def test_peering_objects_and_rules() -> None:
    cluster = render({"peering": {"enabled": True, "name": "ha"}})
    assert rules(one(cluster, "ClusterRole")) == CRDS | CLUSTER_PEERING | NAMESPACED
    peering = one(cluster, "ClusterKopfPeering")
    assert (peering["apiVersion"], peering["metadata"]["name"]) == ("zalando.org/v1", "ha")
    assert one(cluster, "Deployment")["spec"]["strategy"]["type"] == "RollingUpdate"
    assert env(cluster)["PATRON_PEERING"] == "ha"

    listed = render({**LISTED, "peering": {"enabled": True, "name": "ha"}})
    assert not kinds(listed, "ClusterRole")
    assert all(rules(r) == NAMESPACED | NAMESPACED_PEERING for r in kinds(listed, "Role"))
    assert {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in kinds(listed, "KopfPeering")} == {
        ("shop", "ha"),
        ("payments", "ha"),
    }
    assert not kinds(listed, "ClusterKopfPeering")
    # A cluster that also serves Kopf's newer kopf.dev kinds gets the object there too.
    both = render({"peering": {"enabled": True}}, "--api-versions", "kopf.dev/v1/ClusterKopfPeering")
    assert sorted(p["apiVersion"] for p in kinds(both, "ClusterKopfPeering")) == ["kopf.dev/v1", "zalando.org/v1"]


def test_peering_crds_ship_with_the_chart() -> None:
    docs = [d for d in yaml.safe_load_all((CHART / "crds" / "kopfpeerings.yaml").read_text()) if d]
    assert {(d["spec"]["group"], d["spec"]["names"]["kind"], d["spec"]["scope"]) for d in docs} == {
        ("zalando.org", "ClusterKopfPeering", "Cluster"),
        ("zalando.org", "KopfPeering", "Namespaced"),
    }


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_rbac_has_no_wildcards_and_no_secrets(values: dict[str, Any]) -> None:
    docs = render(values)
    roles = kinds(docs, "ClusterRole") + kinds(docs, "Role")
    assert roles
    for role in roles:
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field] and not any("*" in item for item in rule[field]), rule
            assert "secrets" not in rule["resources"], rule
            assert not {"deletecollection", "escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
            # delete: only the PrometheusRules Patron owns (recordingRules.managePrometheusRules)
            assert "delete" not in rule["verbs"] or rule["resources"] == ["prometheusrules"], rule
            assert "nonResourceURLs" not in rule and "resourceNames" not in rule


def test_every_object_is_labelled_for_the_release() -> None:
    for doc in render(VALUE_SETS["everything on"]):
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE, doc["kind"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm", doc["kind"]
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"):
            assert doc["metadata"]["namespace"] in (RELEASE_NS, "shop", "payments"), doc["kind"]


def test_more_than_one_replica_needs_peering() -> None:
    result = helm("template", RELEASE, str(CHART), values={"replicas": 2}, check=False)
    assert result.returncode != 0
    assert "replicas=2 needs peering.enabled=true" in result.stderr, result.stderr


def test_replicas_with_peering_join_one_peering() -> None:
    """Each replica's `patron run --peering` picks a random Kopf priority: one works, the rest stand by."""
    deployment = one(render({"replicas": 3, "peering": {"enabled": True}}), "Deployment")
    assert deployment["spec"]["replicas"] == 3
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PATRON_PEERING"] and "PATRON_PRIORITY" not in env
    assert one(render({"replicas": 0}), "Deployment")["spec"]["replicas"] == 0


def schema_error(values: dict[str, Any]) -> str:
    result = helm("template", RELEASE, str(CHART), values=values, check=False)
    assert result.returncode != 0, f"accepted: {values}"
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    return result.stderr


def flatten(err: str) -> str:
    return " ".join(err.split())


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        # Wrong types.
        ({"replicas": "two"}, ["/replicas", "got string, want integer"]),
        ({"dryRun": "yes"}, ["/dryRun", "got string, want boolean"]),
        ({"watchNamespaces": "shop"}, ["/watchNamespaces", "got string, want array"]),
        ({"alertmanagerUrls": [9093]}, ["/alertmanagerUrls/0", "got number, want string"]),
        # Negative or out-of-range numbers.
        ({"replicas": -1}, ["/replicas", "minimum", "-1"]),
        ({"metrics": {"port": -1}}, ["/metrics/port", "minimum: got -1, want 1"]),
        ({"metrics": {"port": 70000}}, ["/metrics/port", "maximum"]),
        ({"resources": {"requests": {"cpu": -1}}}, ["/resources/requests/cpu"]),
        ({"securityContext": {"runAsUser": -5}}, ["/securityContext/runAsUser", "minimum"]),
        # Unknown keys, at every level.
        ({"replica": 1}, ["additional properties 'replica' not allowed"]),
        ({"image": {"tags": "1.0"}}, ["/image", "additional properties 'tags' not allowed"]),
        ({"peering": {"enable": True}}, ["/peering", "additional properties 'enable' not allowed"]),
        ({"metrics": {"serviceMonitor": {"enable": True}}}, ["/metrics/serviceMonitor", "'enable' not allowed"]),
        ({"securityContext": {"runAsRoot": True}}, ["/securityContext", "'runAsRoot' not allowed"]),
        ({"actions": {"rolback": {"enabled": True}}}, ["/actions", "additional properties 'rolback' not allowed"]),
        ({"actions": {"rollback": {"enable": True}}}, ["/actions/rollback", "'enable' not allowed"]),
        ({"actions": {"rollback": {"enabled": "yes"}}}, ["/actions/rollback/enabled", "got string, want boolean"]),
        # Enums and formats.
        ({"logFormat": "xml"}, ["/logFormat", "plain", "json"]),
        ({"image": {"tag": "latest"}}, ["/image/tag"]),
        ({"prometheusUrl": "prometheus:9090"}, ["/prometheusUrl", "does not match pattern"]),
        ({"watchNamespaces": ["Shop"]}, ["/watchNamespaces/0", "does not match pattern"]),
        ({"tenancy": {"namespaceLabel": "__name__"}}, ["/tenancy/namespaceLabel", "does not match pattern"]),
        ({"tenancy": {"namespaceLabel": "kubernetes.io/ns"}}, ["/tenancy/namespaceLabel", "does not match pattern"]),
        ({"tenancy": {"namespace": "ns"}}, ["/tenancy", "additional properties 'namespace' not allowed"]),
        ({"recordingRules": {"manage": True}}, ["/recordingRules", "additional properties 'manage' not allowed"]),
        (
            {"recordingRules": {"managePrometheusRules": "yes"}},
            ["/recordingRules/managePrometheusRules", "want boolean"],
        ),
        ({"recordingRules": {"ruleLabels": {"release": "a b"}}}, ["/recordingRules/ruleLabels/release", "pattern"]),
        ({"recordingRules": {"ruleLabels": {"-bad": "a"}}}, ["invalid propertyName '-bad'", "does not match pattern"]),
    ],
)
def test_schema_rejects_bad_values_readably(values: dict[str, Any], expected: list[str]) -> None:
    err = flatten(schema_error(values))
    for text in expected:
        assert text in err, err


def test_schema_accepts_kubernetes_quantities() -> None:
    docs = render({"resources": {"requests": {"cpu": 0.5, "memory": "100Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}})
    assert container(docs)["resources"]["limits"] == {"cpu": "1", "memory": "1Gi"}
