"""Operator-wide tenancy: every selector of a CustomerSLO reads only its own namespace's series.

As prom-label-proxy does, `patron run --enforce-namespace-label LABEL` gives each selector of the
spec the matcher LABEL="<the CustomerSLO's namespace>". A selector that already sets LABEL to
exactly that (with `=`) keeps one such matcher; any other matcher on LABEL (another value, !=,
=~, !~) is refused. A selector without a metric name is allowed: with the matcher added it reads
only the namespace's own series, which is the tenancy boundary.
"""

from __future__ import annotations

import re

from patron.api.models import LABEL_NAME_PATTERN, CustomerSLOSpec
from patron.api.selectors import Matcher, Selector, parse_selector

# Where the spec holds selectors: (path below spec, as named in errors).
SELECTOR_FIELDS = (
    ("indicator", "ratio", "errors"),
    ("indicator", "ratio", "total"),
    ("indicator", "latency", "histogram"),
)


class TenancyError(ValueError):
    """A spec whose selectors reach outside its namespace; the message names each field."""


def check_label_name(label: str) -> str:
    """A label name Prometheus allows and does not reserve (`__name__`, `__...`)."""
    if not re.fullmatch(LABEL_NAME_PATTERN, label) or label.startswith("__"):
        raise ValueError(f"{label!r} is not a label name: use [a-zA-Z_][a-zA-Z0-9_]*, not starting with __")
    return label


def confine(selector: Selector, label: str, namespace: str) -> Selector:
    """`selector` with exactly one matcher on `label`, label="namespace", appended after the others.

    TenancyError when it already matches `label` any other way.
    """
    enforced = Matcher(label, "=", namespace)
    clash = [m for m in selector.matchers if m.label == label and m != enforced]
    if clash:
        raise TenancyError(
            f"sets namespace label {label!r} with {', '.join(m.render() for m in clash)}; "
            f"this operator enforces {enforced.render()} on every selector (leave the label out: it is added)"
        )
    kept = tuple(m for m in selector.matchers if m.label != label)
    return Selector(selector.metric, kept).with_matcher(label, "=", namespace)


def enforce_namespace_label(spec: CustomerSLOSpec, label: str, namespace: str) -> CustomerSLOSpec:
    """`spec` whose every selector carries label="namespace" (see `confine`).

    TenancyError naming every offending field; a pydantic ValidationError if a selector with the
    matcher added no longer fits the spec's bounds (its length).
    """
    body = spec.model_dump(by_alias=True)
    problems = []
    for path in SELECTOR_FIELDS:
        parent = body
        for key in path[:-1]:
            parent = parent.get(key) or {}
        text = parent.get(path[-1])
        if text is None:
            continue
        try:
            parent[path[-1]] = confine(parse_selector(text), label, namespace).render()
        except TenancyError as err:
            problems.append(f"spec.{'.'.join(path)}: {err}")
    if problems:
        raise TenancyError("; ".join(problems))
    return CustomerSLOSpec.model_validate(body)
