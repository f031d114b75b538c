"""The committed CRD (and the chart's copy) is exactly what the models generate, and validates specs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from patron.api.crd import CRD_PATHS, render
from patron.api.models import CustomerSLOSpec

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", CRD_PATHS, ids=lambda p: str(p.relative_to(REPO)))
def test_committed_crd_is_generated(path: Path) -> None:
    assert path.read_text() == render(), f"{path} is stale: run `make crd`"


def test_crd_names_and_columns() -> None:
    crd = yaml.safe_load(render())
    spec = crd["spec"]
    assert (spec["group"], spec["names"]["kind"], spec["names"]["plural"]) == (
        "patron.dev",
        "CustomerSLO",
        "customerslos",
    )
    assert spec["names"]["shortNames"] == ["cslo"] and spec["names"]["categories"] == ["patron"]
    version = spec["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Severity",
        "Impacted",
        "Active",
        "Ready",
        "Age",
    ]


def _no_refs(node: object) -> None:
    if isinstance(node, dict):
        assert "$ref" not in node and "anyOf" not in node and "title" not in node
        for value in node.values():
            _no_refs(value)
    elif isinstance(node, list):
        for value in node:
            _no_refs(value)


def test_schema_is_structural() -> None:
    _no_refs(yaml.safe_load(render()))


def _rules(node: object) -> list[str]:
    if isinstance(node, dict):
        own = [v["rule"] for v in node.get("x-kubernetes-validations") or []]
        return own + [r for value in node.values() for r in _rules(value)]
    return [r for value in node for r in _rules(value)] if isinstance(node, list) else []


def test_cel_rules_hold_no_backslash() -> None:
    """A pattern in a CEL string literal: `\\.` is an invalid escape there, and the API server refuses
    the whole CRD (it did: the Kubernetes label key pattern); patterns use `[.]` instead."""
    rules = _rules(yaml.safe_load(render()))
    assert rules and not [r for r in rules if "\\" in r]


def test_recording_rule_labels_are_kubernetes_labels() -> None:
    body = yaml.safe_load((REPO / "examples" / "checkout.yaml").read_text())["spec"]
    good = {"release": "kube-prometheus-stack", "app.kubernetes.io/part-of": "shop", "Team_1": "", "x": "a.b-c_D"}
    assert CustomerSLOSpec.model_validate({**body, "recordingRules": {"labels": good}}).recording_rules.labels == good
    for bad in ({"_x": "a"}, {"a b": "c"}, {"Example.com/x": "a"}, {"x": "a b"}, {"x": "-a"}, {"x": "a" * 64}):
        with pytest.raises(ValidationError) as err:
            CustomerSLOSpec.model_validate({**body, "recordingRules": {"labels": bad}})
        assert "recordingRules.labels" in str(err.value)


def test_example_spec_from_design_parses() -> None:
    spec = CustomerSLOSpec.model_validate(yaml.safe_load((REPO / "examples" / "checkout.yaml").read_text())["spec"])
    assert spec.indicator.ratio is not None
    assert spec.first_window.burn_rate == 14.4


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"objective": 100}, "objective"),
        ({"window": "30 days"}, "window"),
        ({"indicator": {}}, "indicator"),
        ({"impact": {"windows": [{"long": "5m", "short": "1h", "burnRate": 2}]}}, "windows"),
        ({"customers": {"tiers": [{"name": "a"}, {"name": "a"}]}}, "tiers"),
        ({"indicator": {"ratio": {"errors": "rate(x[5m])", "total": "x"}}}, "errors"),
        ({"actions": {"alert": {"labels": {"severity": "page"}}}}, "labels"),
        ({"surprise": True}, "surprise"),
    ],
)
def test_bad_specs_name_the_field(patch: dict[str, object], field: str) -> None:
    body = yaml.safe_load((REPO / "examples" / "checkout.yaml").read_text())["spec"]
    body.update(patch)
    with pytest.raises(ValidationError) as err:
        CustomerSLOSpec.model_validate(body)
    assert field in str(err.value)


def test_reference_doc_is_generated() -> None:
    from patron.api import reference

    assert reference.REFERENCE_PATH.read_text() == reference.render(), "docs/crd-reference.md is stale: run `make crd`"
