"""The PrometheusRule Patron owns per CustomerSLO (patron.rulesync): what it should be, what to do
about what is there, and the condition that says so; through the adapter against the fake API server."""

from __future__ import annotations

import asyncio
import copy
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from patron.api.models import CustomerSLOSpec
from patron.cli import main
from patron.config import OperatorConfig
from patron.impact.rules import prometheus_rule
from patron.kube import RESOURCES, Served
from patron.rulesync import CONDITION, FLAG_OFF, NOT_SERVED, Owner, decide, desired, sync
from tests.support.fake_kube import FakeKube, merge, refusal

LOG = logging.getLogger("test")
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
OWNER = Owner("shop", "checkout", "uid-checkout")
RATIO = {"ratio": {"errors": 'req_total{service="a",code=~"5.."}', "total": 'req_total{service="a"}'}}
PATH = f"{RESOURCES['PrometheusRule'][0]}/namespaces/shop/prometheusrules/patron-checkout"
CONFIG = OperatorConfig("http://prometheus:9090", manage_prometheus_rules=True)


def body(**rules: Any) -> dict[str, Any]:
    return {"service": "a", "objective": 99.9, "indicator": RATIO, "recordingRules": {"enabled": True, **rules}}


def spec(**rules: Any) -> CustomerSLOSpec:
    return CustomerSLOSpec.model_validate(body(**rules))


label_keys = st.from_regex(r"\A([a-z]{1,8}\.[a-z]{1,4}/)?[a-z][-a-z0-9_.]{0,10}[a-z0-9]\Z")
label_values = st.from_regex(r"\A([A-Za-z0-9]([-A-Za-z0-9_.]{0,10}[A-Za-z0-9])?)?\Z")
labels = st.dictionaries(label_keys, label_values, max_size=4)


def test_the_owned_rule_is_patron_rules_output_owned(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    the_spec = spec(labels={"release": "kps"})
    want = desired(OWNER, the_spec, {"release": "chart", "team": "sre"})
    manifest = {"kind": "CustomerSLO", "metadata": {"name": "checkout", "namespace": "shop"}, "spec": body()}
    manifest["spec"]["recordingRules"]["labels"] = {"release": "kps"}
    (tmp_path / "slo.yaml").write_text(yaml.safe_dump(manifest))
    assert main(["rules", "-f", str(tmp_path / "slo.yaml"), "-o", "prometheusrule"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert want["spec"] == printed["spec"] == prometheus_rule(the_spec, "shop", "checkout")["spec"]
    assert want["metadata"] == {
        "name": "patron-checkout",
        "namespace": "shop",
        # the chart's labels, then the spec's, which win
        "labels": {"app.kubernetes.io/managed-by": "patron", "release": "kps", "team": "sre"},
        "annotations": {"patron.dev/owner": "shop/checkout"},
        "ownerReferences": [
            {
                "apiVersion": "patron.dev/v1alpha1",
                "kind": "CustomerSLO",
                "name": "checkout",
                "uid": "uid-checkout",
                "controller": True,
            }
        ],
    }


def served_copy(obj: dict[str, Any], version: str = "7") -> dict[str, Any]:
    """`obj` as the API server would hold it: with a uid, a resourceVersion and others' metadata."""
    out = copy.deepcopy(obj)
    out["metadata"].update({"uid": "uid-rule", "resourceVersion": version, "generation": 1})
    out["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] = "{}"
    return out


@given(labels, labels, labels, st.sampled_from(["30s", "1m"]), st.sampled_from(["30s", "2m"]), st.booleans())
def test_an_owned_rule_out_of_step_is_patched_into_step_in_one_write(
    chart: dict[str, str], before: dict[str, str], after: dict[str, str], old: str, new: str, drop_owner: bool
) -> None:
    """Whatever the labels and spec were (the user's edits included), one merge patch guarded by the
    resourceVersion brings the rule in step; then nothing is to do. Other annotations stay."""
    current = served_copy(desired(OWNER, spec(labels=before, interval=old), chart))
    if drop_owner:
        del current["metadata"]["annotations"]["patron.dev/owner"]
    want = desired(OWNER, spec(labels=after, interval=new), chart)
    step = decide(want, current, OWNER)
    in_step = current["spec"] == want["spec"] and current["metadata"]["labels"] == want["metadata"]["labels"]
    if in_step and not drop_owner:
        assert step.verb == "none"
        return
    assert step.verb == "update" and step.body is not None
    assert step.body["metadata"]["resourceVersion"] == "7"
    patched = merge(current, step.body)
    assert patched["metadata"]["labels"] == want["metadata"]["labels"]
    assert patched["spec"] == want["spec"]
    assert patched["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] == "{}"
    assert decide(want, patched, OWNER).verb == "none"


refs = st.lists(
    st.fixed_dictionaries(
        {"uid": st.sampled_from(["uid-other", "uid-checkout"]), "controller": st.sampled_from([False, None, True])}
    ),
    max_size=3,
).filter(lambda rs: not any(r["uid"] == "uid-checkout" and r["controller"] is True for r in rs))


@given(refs, st.booleans(), st.booleans())
def test_a_rule_this_customerslo_does_not_control_is_never_touched(
    owner_refs: list[dict[str, Any]], enabled: bool, annotated: bool
) -> None:
    """Not a controller ownerReference with this CustomerSLO's uid: not its own, whatever it says
    (a namesake's uid, a non-controller reference, the patron.dev/owner annotation alone)."""
    current = served_copy(desired(OWNER, spec(), {}))
    current["metadata"]["ownerReferences"] = owner_refs
    if not annotated:
        del current["metadata"]["annotations"]["patron.dev/owner"]
    step = decide(desired(OWNER, spec(), {}) if enabled else None, current, OWNER)
    assert step.verb == ("conflict" if enabled else "none") and step.body is None


def test_create_when_absent_delete_when_disabled_with_preconditions() -> None:
    want = desired(OWNER, spec(), {})
    assert decide(want, None, OWNER).verb == "create"
    assert decide(None, None, OWNER).verb == "none"
    step = decide(None, served_copy(want), OWNER)
    assert (step.verb, step.body) == ("delete", {"uid": "uid-rule", "resourceVersion": "7"})


# ---------------------------------------------------------------- through the adapter (fake API server)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def customerslo(**rules: Any) -> dict[str, Any]:
    meta = {"name": "checkout", "namespace": "shop", "uid": "uid-checkout", "generation": 2}
    return {"metadata": meta, "spec": body(**rules)}


def condition(status: dict[str, Any]) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c["type"] == CONDITION), None)


class World:
    def __init__(self, config: OperatorConfig = CONFIG, crd: bool = True) -> None:
        self.kube, self.clock, self.config = FakeKube(), Clock(), config
        if crd:
            self.kube.discoverable.add("PrometheusRule")
        self.served = Served(self.kube, "PrometheusRule", ttl=60, clock=self.clock)
        self.status: dict[str, Any] = {"conditions": [{"type": "Ready", "status": "True", "reason": "Evaluated"}]}

    def sync(self, **rules: Any) -> dict[str, Any] | None:
        obj = customerslo(**rules)
        model = CustomerSLOSpec.model_validate(obj["spec"])
        self.kube.requests.clear()
        self.status = asyncio.run(sync(self.kube, self.served, self.config, obj, model, self.status, NOW, LOG))
        return condition(self.status)

    def rule(self) -> dict[str, Any] | None:
        return self.kube.objects.get(PATH)

    def writes(self) -> list[str]:
        return [m for m, _ in self.kube.requests if m != "GET"]


def test_created_kept_in_step_without_writes_updated_then_deleted() -> None:
    world = World()
    cond = world.sync(labels={"release": "kps"})
    assert cond is not None and (cond["status"], cond["reason"]) == ("True", "Managed")
    assert "PrometheusRule patron-checkout" in cond["message"] and cond["observedGeneration"] == 2
    rule = world.rule()
    assert rule is not None and rule["metadata"]["labels"]["release"] == "kps"
    version = rule["metadata"]["resourceVersion"]
    assert world.sync(labels={"release": "kps"}) == cond
    assert world.writes() == [] and world.kube.requests == [("GET", PATH)]  # discovery cached
    assert world.rule()["metadata"]["resourceVersion"] == version  # type: ignore[index]
    world.sync(labels={"release": "other"}, interval="1m")
    assert world.writes() == ["PATCH"]
    assert world.rule()["metadata"]["labels"]["release"] == "other"  # type: ignore[index]
    assert world.rule()["spec"]["groups"][0]["interval"] == "1m"  # type: ignore[index]
    assert world.sync(enabled=False) is None  # deleted: nothing left to say
    assert world.writes() == ["DELETE"] and world.rule() is None
    assert world.sync(enabled=False) is None and world.kube.requests == []  # disabled: nothing asked at all


def test_a_foreign_rule_is_left_untouched_and_named() -> None:
    world = World()
    foreign = {"metadata": {"name": "patron-checkout", "labels": {"team": "x"}}, "spec": {"groups": []}}
    world.kube.add("PrometheusRule", "shop", foreign)
    before = copy.deepcopy(world.rule())
    cond = world.sync()
    assert cond is not None and (cond["status"], cond["reason"]) == ("False", "NotOwned")
    assert "PrometheusRule patron-checkout exists and is not owned by this CustomerSLO" in cond["message"]
    assert world.writes() == [] and world.rule() == before
    assert world.sync(enabled=False) is None and world.writes() == [] and world.rule() == before


def test_crd_not_served_says_not_managed_and_asks_discovery_again_after_the_ttl() -> None:
    world = World(crd=False)
    cond = world.sync()
    assert cond is not None and (cond["reason"], cond["message"]) == ("NotManaged", NOT_SERVED)
    assert world.kube.requests == [("GET", "/apis/monitoring.coreos.com/v1")]
    world.kube.discoverable.add("PrometheusRule")  # the Prometheus Operator is installed
    world.clock.now = 59
    assert world.sync()["reason"] == "NotManaged"  # type: ignore[index]
    assert world.kube.requests == []
    world.clock.now = 60
    assert world.sync()["reason"] == "Managed"  # type: ignore[index]
    assert world.rule() is not None


def test_flag_off_asks_nothing_and_says_so() -> None:
    world = World(config=OperatorConfig("http://prometheus:9090"))
    cond = world.sync()
    assert cond is not None and (cond["status"], cond["reason"], cond["message"]) == ("False", "NotManaged", FLAG_OFF)
    assert world.sync(enabled=False) is None
    assert world.kube.requests == []


def test_forbidden_is_said_on_the_condition_and_retried() -> None:
    world = World()
    world.kube.faults.append(lambda method, path: refusal(403, "Forbidden") if method == "POST" else None)
    cond = world.sync()
    assert cond is not None and (cond["status"], cond["reason"]) == ("False", "Forbidden")
    assert cond["message"].startswith("the operator may not create PrometheusRule patron-checkout (HTTP 403 Forbidden)")
    assert "recordingRules.managePrometheusRules" in cond["message"]
    world.kube.faults.clear()
    assert world.sync()["reason"] == "Managed"  # type: ignore[index]


def test_a_rule_that_went_away_with_its_crd_is_rediscovered() -> None:
    world = World()
    world.sync()
    world.kube.discoverable.discard("PrometheusRule")
    world.kube.objects.clear()
    cond = world.sync()
    assert cond is not None and cond["reason"] == "Failed"
    assert cond["message"] == (
        "create PrometheusRule patron-checkout failed: HTTP 404 Not Found; retried next evaluation"
    )
    assert world.sync()["message"] == NOT_SERVED  # type: ignore[index]


def test_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from patron.cli import _rule_labels, build_parser

    assert _rule_labels(["release=kps,app.kubernetes.io/part-of=shop", "empty="]) == (
        ("release", "kps"),
        ("app.kubernetes.io/part-of", "shop"),
        ("empty", ""),
    )
    for bad in ("release", "bad key=x", "x=a b", "_x=1"):
        with pytest.raises(SystemExit, match=f"--prometheus-rule-label '{bad}': expected KEY=VALUE"):
            _rule_labels([bad])
    assert not build_parser().parse_args(["run"]).manage_prometheus_rules
    monkeypatch.setenv("PATRON_MANAGE_PROMETHEUS_RULES", "true")
    monkeypatch.setenv("PATRON_PROMETHEUS_RULE_LABELS", "release=kps,team=sre")
    args = build_parser().parse_args(["run"])
    assert args.manage_prometheus_rules and _rule_labels(args.prometheus_rule_label) == (
        ("release", "kps"),
        ("team", "sre"),
    )
