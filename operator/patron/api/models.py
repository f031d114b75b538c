"""The CustomerSLO spec as frozen pydantic models: the single source of the CRD schema.

Every constraint that the API server can check is expressed here (bounds, enums, patterns) or as a
CEL rule in `x-kubernetes-validations`, so that `kubectl apply` refuses a bad spec with a message
naming the field. `patron.api.crd` turns these models into crds/customerslo.yaml.
"""

from __future__ import annotations

from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from patron.api.durations import DURATION_PATTERN, parse_duration
from patron.api.regex import compile_re2
from patron.api.selectors import Selector, parse_selector

API_GROUP = "patron.dev"
API_VERSION = "v1alpha1"
KIND = "CustomerSLO"
PLURAL = "customerslos"

Severity = Literal["warning", "critical"]
SEVERITY_ORDER: dict[str, int] = {"none": 0, "warning": 1, "critical": 2}

LABEL_NAME_PATTERN = r"^[a-zA-Z_][a-zA-Z0-9_]*$"
# Kubernetes label keys ([DNS-subdomain prefix/]name, the name at most 63 characters) and values, as the
# API server checks metadata.labels. No backslash: the key pattern goes into a CEL string literal.
_K8S_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
K8S_LABEL_KEY_PATTERN = rf"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?{_K8S_LABEL_NAME}$"
K8S_LABEL_VALUE_PATTERN = rf"^({_K8S_LABEL_NAME})?$"
# The annotation naming the CustomerSLO (`<namespace>/<name>`) that changed or owns an object.
OWNER_ANNOTATION = f"{API_GROUP}/owner"
# Kubernetes object names (RFC 1123 subdomain), for targets in the CustomerSLO's own namespace.
OBJECT_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
# Labels Patron sets itself on alerts; user labels may not override them.
RESERVED_ALERT_LABELS = frozenset({"alertname", "namespace", "customerslo", "service", "severity", "customer", "tier"})


def _check_duration(value: str) -> str:
    parse_duration(value)
    return value


def _check_regex(value: str) -> str:
    compile_re2(value)
    return value


def _check_selector(value: str) -> str:
    parse_selector(value)
    return value


Duration = Annotated[
    str,
    Field(pattern=DURATION_PATTERN, max_length=32, description="A duration such as 30s, 5m, 1h or 30d."),
    AfterValidator(_check_duration),
]
# The API server's CEL compiles a regex with Go's regexp, whose syntax is RE2's: `''.matches(self)`
# fails to evaluate on a pattern RE2 refuses, so kubectl apply refuses it naming the field.
# Patron compiles it with RE2 again (compile_re2), which also bounds its memory.
Regex = Annotated[
    str,
    Field(
        max_length=256,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "type(''.matches(self)) == bool",
                    "message": "must be an RE2 regular expression (no backreferences or lookarounds)",
                }
            ]
        },
    ),
    AfterValidator(_check_regex),
]
VectorSelector = Annotated[
    str,
    Field(
        min_length=1,
        max_length=1024,
        description='A Prometheus vector selector such as http_requests_total{service="checkout"}; '
        "not free PromQL (no functions, ranges or operators).",
    ),
    AfterValidator(_check_selector),
]
ObjectName = Annotated[str, Field(pattern=OBJECT_NAME_PATTERN, min_length=1, max_length=253)]


def _cel_seconds(field: str) -> str:
    """A CEL expression giving the seconds of duration string `field` (mirrors parse_duration)."""
    units = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
    terms = [
        f"({field}.find('[0-9]+{u}') != '' ? int({field}.find('[0-9]+{u}').replace('{u}', '')) * {k} : 0)"
        for u, k in units.items()
    ]
    return " + ".join(terms)


def cel_rule(rule: str, message: str) -> ConfigDict:
    """Model config (merged into Model's by pydantic) carrying one CEL rule for the CRD schema."""
    return ConfigDict(json_schema_extra={"x-kubernetes-validations": [{"rule": rule, "message": message}]})


class Model(BaseModel):
    """Base: immutable, camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, alias_generator=to_camel)


class RatioIndicator(Model):
    """Error ratio = rate(errors) / rate(total), per customer."""

    errors: VectorSelector = Field(description="Selector of the failed requests counter.")
    total: VectorSelector = Field(description="Selector of the all-requests counter.")

    @cached_property
    def errors_selector(self) -> Selector:
        return parse_selector(self.errors)

    @cached_property
    def total_selector(self) -> Selector:
        return parse_selector(self.total)


class LatencyIndicator(Model):
    """A request is bad when slower than `threshold`: errors = _count - _bucket{le=threshold}."""

    histogram: VectorSelector = Field(
        description="Selector of a Prometheus histogram by its base name; Patron reads its _bucket and _count."
    )
    threshold: float = Field(gt=0, description="Seconds; must be one of the histogram's bucket bounds.")

    @cached_property
    def histogram_selector(self) -> Selector:
        return parse_selector(self.histogram)

    @model_validator(mode="after")
    def _named_histogram(self) -> LatencyIndicator:
        name = self.histogram_selector.metric
        if not name:
            raise ValueError("indicator.latency.histogram must name the histogram metric")
        if name.endswith(("_bucket", "_count", "_sum")):
            raise ValueError("indicator.latency.histogram takes the histogram's base name, without _bucket/_count/_sum")
        return self


class Indicator(Model):
    """Exactly one of `ratio` or `latency`."""

    model_config = cel_rule(
        "has(self.ratio) != has(self.latency)",
        "set exactly one of indicator.ratio or indicator.latency",
    )

    ratio: RatioIndicator | None = None
    latency: LatencyIndicator | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Indicator:
        if (self.ratio is None) == (self.latency is None):
            raise ValueError("set exactly one of indicator.ratio or indicator.latency")
        return self


class Tier(Model):
    """A group of customers with a weight; membership by explicit name or by regex."""

    name: str = Field(pattern=r"^[a-zA-Z0-9]([-a-zA-Z0-9_.]*[a-zA-Z0-9])?$", max_length=63)
    weight: float = Field(default=1.0, gt=0, le=1000, description="Weight in weightedImpact.")
    customers: list[Annotated[str, Field(max_length=256)]] = Field(default_factory=list, max_length=1000)
    pattern: Regex | None = Field(
        default=None,
        description="RE2 regular expression (no backreferences or lookarounds, linear-time matching); "
        "customers it matches anywhere in the name belong here (anchor with ^...$ for a whole-name match).",
    )


class Customers(Model):
    """Which customers count, and how much."""

    model_config = cel_rule(
        "!has(self.tiers) || self.tiers.all(t, self.tiers.exists_one(u, u.name == t.name))",
        "customers.tiers names must be unique",
    )

    min_request_rate: float = Field(
        default=0.05,
        ge=0,
        description="Requests per second over the long window for a customer to count as active.",
    )
    ignore: list[Regex] = Field(
        default_factory=list,
        max_length=50,
        description="RE2 regular expressions (no backreferences or lookarounds, linear-time matching) "
        "of customers never counted; a customer matching any of them anywhere in the name is ignored.",
    )
    tiers: list[Tier] = Field(
        default_factory=list,
        max_length=20,
        description="Customer tiers; the first tier that names or matches a customer wins; others weigh 1.",
    )

    @model_validator(mode="after")
    def _unique_tiers(self) -> Customers:
        names = [t.name for t in self.tiers]
        if len(names) != len(set(names)):
            raise ValueError("customers.tiers names must be unique")
        return self


class BurnWindow(Model):
    """Impacted when burn rate over BOTH `long` and `short` is >= `burnRate`."""

    model_config = cel_rule(
        f"{_cel_seconds('self.short')} < {_cel_seconds('self.long')}",
        "impact.windows: short must be shorter than long",
    )

    long: Duration
    short: Duration
    burn_rate: float = Field(gt=0, description="Burn-rate threshold (1 = spending the budget exactly).")

    @model_validator(mode="after")
    def _short_below_long(self) -> BurnWindow:
        if parse_duration(self.short) >= parse_duration(self.long):
            raise ValueError("impact.windows: short must be shorter than long")
        return self


class Level(Model):
    """A severity that holds when ANY of its criteria holds (each criterion is a >= threshold)."""

    model_config = cel_rule(
        "has(self.impactedCustomers) || has(self.impactedFraction) || has(self.weightedImpact)",
        "impact.levels: each level needs impactedCustomers, impactedFraction or weightedImpact",
    )

    severity: Severity
    impacted_customers: int | None = Field(default=None, ge=1)
    impacted_fraction: float | None = Field(default=None, gt=0, le=1)
    weighted_impact: float | None = Field(default=None, gt=0, le=1)

    @model_validator(mode="after")
    def _has_criterion(self) -> Level:
        if self.impacted_customers is None and self.impacted_fraction is None and self.weighted_impact is None:
            raise ValueError("impact.levels: each level needs impactedCustomers, impactedFraction or weightedImpact")
        return self


class LostCustomers(Model):
    """Lost: impacted and rate(S) < trafficDrop x rate(L) one L earlier."""

    traffic_drop: float = Field(default=0.5, gt=0, lt=1)


class RetryStorm(Model):
    """Storming: rate(S) >= amplification x rate(L) `baseline` earlier."""

    amplification: float = Field(default=3.0, gt=1)
    baseline: Duration = "1h"


def _default_windows() -> list[BurnWindow]:
    return [
        BurnWindow(long="1h", short="5m", burn_rate=14.4),
        BurnWindow(long="6h", short="30m", burn_rate=6),
    ]


def _default_levels() -> list[Level]:
    return [
        Level(severity="warning", impacted_customers=1),
        Level(severity="critical", impacted_fraction=0.05, weighted_impact=0.2),
    ]


class Impact(Model):
    """When a customer counts as impacted, and how customer impact maps to severity."""

    windows: list[BurnWindow] = Field(default_factory=_default_windows, min_length=1, max_length=6)
    levels: list[Level] = Field(default_factory=_default_levels, min_length=1, max_length=6)
    lost_customers: LostCustomers = Field(default_factory=LostCustomers)
    retry_storm: RetryStorm = Field(default_factory=RetryStorm)
    top_customers: int = Field(
        default=10, ge=1, le=100, description="How many of the worst customers status.impacted lists."
    )
    stale_after: Duration = Field(
        default="5m", description="Data whose newest sample is older than this is stale: nothing is acted on."
    )
    max_stale_fraction: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Above this fraction of active customers without a sample newer than staleAfter, "
        "Ready=False (PartialData) and nothing is acted on; below it those customers are unknown, not counted.",
    )


class AlertAction(Model):
    """Alerts to Alertmanager naming the impacted customers."""

    per_customer: bool = Field(default=False, description="Also one CustomerImpacted alert per impacted customer.")
    labels: dict[Annotated[str, Field(pattern=LABEL_NAME_PATTERN)], Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=dict, description="Extra alert labels (for routing)."
    )
    runbook_url: str | None = Field(
        default=None,
        alias="runbookURL",
        pattern=r"^https?://[^\s]+$",
        max_length=2048,
        description="Shown as the alerts' runbook_url annotation; never fetched.",
    )

    @model_validator(mode="after")
    def _no_reserved_labels(self) -> AlertAction:
        clash = sorted(RESERVED_ALERT_LABELS & self.labels.keys())
        if clash:
            raise ValueError(f"actions.alert.labels may not set {', '.join(clash)}: Patron sets them")
        return self


class Target(Model):
    """A Deployment in the CustomerSLO's own namespace."""

    kind: Literal["Deployment"] = "Deployment"
    name: ObjectName


class ScaleAction(Model):
    """Add `step` replicas (or raise the HPA's minReplicas) up to `maxReplicas`."""

    target: Target
    step: int = Field(default=1, ge=1, le=100)
    max_replicas: int = Field(ge=1, le=1000)
    min_severity: Severity = "critical"
    cooldown: Duration = "5m"


# An HTTP header name (RFC 9110 token), as Envoy Gateway matches it.
HEADER_NAME_PATTERN = r"^[-!#$%&'*+.^_`|~0-9A-Za-z]+$"
DEFAULT_THROTTLE_HEADER = "x-customer-id"


# The throttle target's CEL rules (checked at apply time) and messages; ThrottleAction checks the same.
_THROTTLE_RULES = (
    (
        "has(self.configMap) != has(self.backendTrafficPolicy)",
        "set exactly one of actions.throttle.configMap or actions.throttle.backendTrafficPolicy",
    ),
    ("!has(self.configMap) || has(self.domain)", "actions.throttle.domain is required with actions.throttle.configMap"),
    (
        "!has(self.backendTrafficPolicy) || (!has(self.key) && !has(self.domain))",
        "actions.throttle.key and actions.throttle.domain are for configMap only; a backendTrafficPolicy takes neither",
    ),
    (
        "!has(self.configMap) || !has(self.header)",
        "actions.throttle.header is for backendTrafficPolicy only "
        "(with configMap, Envoy's route config maps the header to descriptorKey)",
    ),
)


class PolicyRef(Model):
    """An Envoy Gateway BackendTrafficPolicy (gateway.envoyproxy.io/v1alpha1) in the CustomerSLO's namespace."""

    name: ObjectName


class ThrottleAction(Model):
    """Per-customer limits for storming customers, in a ratelimit ConfigMap or an Envoy Gateway BackendTrafficPolicy."""

    model_config = ConfigDict(
        json_schema_extra={"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in _THROTTLE_RULES]}
    )

    config_map: ObjectName | None = Field(
        default=None, description="The envoyproxy/ratelimit ConfigMap Patron writes one key of (never created)."
    )
    backend_traffic_policy: PolicyRef | None = Field(
        default=None,
        description="The Envoy Gateway BackendTrafficPolicy Patron adds its rules to (never created); "
        "no other rule is touched.",
    )
    key: str | None = Field(
        default=None,
        pattern=r"^[-._a-zA-Z0-9]+$",
        max_length=253,
        description="configMap: the key Patron owns (default patron-<name>.yaml); no other key is touched.",
    )
    domain: str | None = Field(
        default=None, min_length=1, max_length=253, description="configMap: the ratelimit domain (required)."
    )
    descriptor_key: str = Field(
        default="customer_id", min_length=1, max_length=253, description="configMap: the descriptor key."
    )
    header: str | None = Field(
        default=None,
        pattern=HEADER_NAME_PATTERN,
        max_length=256,
        description="backendTrafficPolicy: the request header naming the customer "
        f"(default {DEFAULT_THROTTLE_HEADER}).",
    )
    headroom: float = Field(default=1.2, gt=0, le=100, description="limit = baseline rate x headroom.")
    min_requests_per_unit: int = Field(default=1, ge=1, description="No limit is ever set below this.")
    min_severity: Severity = "warning"
    shadow: bool = Field(
        default=False,
        description="Shadow rules only (shadow_mode, or a policy rule's shadowMode): counted and logged, "
        "never enforced.",
    )
    ttl: Duration = Field(default="30m", description="A throttle is lifted after this even if impact persists.")

    @property
    def header_name(self) -> str:
        return self.header or DEFAULT_THROTTLE_HEADER

    @model_validator(mode="after")
    def _one_target(self) -> ThrottleAction:
        """The CEL rules of _THROTTLE_RULES, for a spec read without the API server."""
        has = {
            "configMap": self.config_map is not None,
            "backendTrafficPolicy": self.backend_traffic_policy is not None,
            "domain": self.domain is not None,
            "key": self.key is not None,
            "header": self.header is not None,
        }
        checks = (
            has["configMap"] != has["backendTrafficPolicy"],
            not has["configMap"] or has["domain"],
            not has["backendTrafficPolicy"] or not (has["key"] or has["domain"]),
            not has["configMap"] or not has["header"],
        )
        for ok, (_, message) in zip(checks, _THROTTLE_RULES, strict=True):
            if not ok:
                raise ValueError(message)
        return self


class RollbackAction(Model):
    """Pause or undo the target's newest rollout when impact began soon after it."""

    target: Target
    within: Duration = "15m"
    mode: Literal["pause", "undo"] = "pause"
    min_severity: Severity = "critical"


class Actions(Model):
    """Every action is optional; each is bounded, reversible and skipped under dryRun."""

    alert: AlertAction | None = None
    scale: ScaleAction | None = None
    throttle: ThrottleAction | None = None
    rollback: RollbackAction | None = None


class RecordingRules(Model):
    """Patron's own recording rules (`patron rules`): read for every window they cover, raw otherwise."""

    enabled: bool = Field(
        default=False,
        description='Read Patron\'s recorded series (patron:*, customerslo="<ns>/<name>") for every window '
        "they cover; windows they do not cover yet are read raw and named in the Ready message.",
    )
    labels: dict[
        Annotated[str, Field(pattern=K8S_LABEL_KEY_PATTERN, max_length=317)],
        Annotated[str, Field(pattern=K8S_LABEL_VALUE_PATTERN, max_length=63)],
    ] = Field(
        default_factory=dict,
        max_length=32,
        description="Kubernetes labels on the PrometheusRule patron-<name> (with --manage-prometheus-rules, "
        "and in `patron rules -o prometheusrule`), so that the ruleSelector of your Prometheus selects it.",
    )
    interval: Duration = Field(
        default="30s", description="How often the shortest-window rules are evaluated; longer levels run coarser."
    )


class CustomerSLOSpec(Model):
    """A per-customer SLO: which customers a service hurts, and what Patron does about it."""

    service: str = Field(min_length=1, max_length=253, description="Human name used in alerts and reports.")
    customer_label: str = Field(
        default="customer",
        pattern=LABEL_NAME_PATTERN,
        max_length=128,
        description="Label naming the customer.",
    )
    objective: float = Field(gt=0, lt=100, description="Per-customer target in percent, 0 < x < 100.")
    window: Duration = Field(default="30d", description="Error-budget window.")
    indicator: Indicator
    customers: Customers = Field(default_factory=Customers)
    impact: Impact = Field(default_factory=Impact)
    actions: Actions = Field(default_factory=Actions)
    interval: Duration = Field(default="30s", description="Evaluation period.")
    recovery: Duration = Field(
        default="10m", description="Impact must stay gone this long before actions are reverted."
    )
    dry_run: bool = Field(default=False, description="Decide, record and report; change nothing.")
    recording_rules: RecordingRules = Field(default_factory=RecordingRules)

    @property
    def error_budget(self) -> float:
        """1 - objective/100: the allowed error ratio."""
        return 1 - self.objective / 100

    @property
    def first_window(self) -> BurnWindow:
        return self.impact.windows[0]

    @classmethod
    def from_body(cls, spec: dict[str, Any]) -> CustomerSLOSpec:
        return cls.model_validate(spec)
