"""The `patron` command: run the operator, or evaluate/report/replay from a terminal."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import yaml

from patron.config import MAX_CONCURRENT_EVALUATIONS, OperatorConfig, split_list
from patron.impact.connection import Connection
from patron.text import printable, table


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _parse_time(text: str) -> datetime:
    """RFC 3339 (`2026-11-26T10:04:30Z`) or a Unix timestamp."""
    try:
        return datetime.fromtimestamp(float(text), tz=UTC)
    except ValueError:
        pass
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _load_manifest(path: str) -> dict[str, Any]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    docs = [d for d in yaml.safe_load_all(text) if d]
    slos = [d for d in docs if isinstance(d, dict) and d.get("kind") == "CustomerSLO"]
    if len(slos) != 1:
        raise SystemExit(f"error: {path} must hold exactly one CustomerSLO (found {len(slos)})")
    return slos[0]


def _manifest_namespace(manifest: dict[str, Any]) -> str:
    """The manifest's namespace; `default`, as kubectl's, when it names none."""
    return str((manifest.get("metadata") or {}).get("namespace") or "default")


def _manifest_name(manifest: dict[str, Any]) -> str:
    return str((manifest.get("metadata") or {}).get("name") or "")


def _label_name(text: str) -> str:
    from patron.api.tenancy import check_label_name

    try:
        return check_label_name(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_namespace_label(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--enforce-namespace-label",
        dest="namespace_label",
        metavar="LABEL",
        type=_label_name,
        default=os.environ.get("PATRON_ENFORCE_NAMESPACE_LABEL") or None,
        help='tenancy: add LABEL="<the CustomerSLO\'s namespace>" to every selector and refuse selectors that '
        "set LABEL otherwise (default: $PATRON_ENFORCE_NAMESPACE_LABEL; unset: off)",
    )


def _add_connection(parser: argparse.ArgumentParser, target: str) -> None:
    """--<target>-ca-file, -bearer-token-file, -basic-auth-file, -header; env PATRON_<TARGET>_CA_FILE etc."""
    env = f"PATRON_{target.upper()}_"
    for option, what in (
        ("ca-file", "PEM CA bundle to verify its TLS certificate (default: the system's)"),
        ("bearer-token-file", "file holding a bearer token, re-read at every request"),
        ("basic-auth-file", "file holding user:password for basic auth, re-read at every request"),
    ):
        variable = env + option.upper().replace("-", "_")
        parser.add_argument(
            f"--{target}-{option}", metavar="FILE", default=os.environ.get(variable), help=f"{what} (${variable})"
        )
    headers = os.environ.get(env + "HEADERS")
    parser.add_argument(
        f"--{target}-header",
        action="append",
        metavar="'NAME: VALUE'",
        default=[h for h in headers.splitlines() if h.strip()] if headers else None,
        help=f"extra request header, repeatable, e.g. 'X-Scope-OrgID: team-a' (${env}HEADERS, one per line)",
    )


def _connection(args: argparse.Namespace, target: str) -> Connection:
    from patron.impact.connection import ConnectionOptionError, parse_header

    def get(option: str) -> Any:
        return getattr(args, f"{target}_{option}")

    try:
        return Connection(
            flag=f"--{target}",
            ca_file=get("ca_file"),
            bearer_token_file=get("bearer_token_file"),
            basic_auth_file=get("basic_auth_file"),
            headers=tuple(parse_header(h) for h in get("header") or ()),
        )
    except ConnectionOptionError as err:
        raise SystemExit(printable(f"error: {err}")) from None


def _priority(value: str | None, peering: str | None) -> int:
    """Kopf peering priority: given, else random among replicas (Kopf pauses peers of equal priority)."""
    if value:
        return int(value)
    return secrets.randbelow(32767) + 1 if peering else 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return value


def _rule_labels(values: list[str] | None) -> tuple[tuple[str, str], ...]:
    """--prometheus-rule-label KEY=VALUE (repeatable or comma separated), checked as Kubernetes labels."""
    import re

    from patron.api.models import K8S_LABEL_KEY_PATTERN, K8S_LABEL_VALUE_PATTERN

    labels = []
    for item in split_list(values):
        key, eq, value = item.partition("=")
        if not eq or not re.fullmatch(K8S_LABEL_KEY_PATTERN, key) or not re.fullmatch(K8S_LABEL_VALUE_PATTERN, value):
            raise SystemExit(
                printable(
                    f"error: --prometheus-rule-label {item!r}: expected KEY=VALUE, a Kubernetes label "
                    "([prefix/]name, value of at most 63 letters, digits, '-', '_' or '.')"
                )
            )
        labels.append((key, value))
    return tuple(labels)


def cmd_run(args: argparse.Namespace) -> int:
    import kopf
    from prometheus_client import start_http_server

    import patron.handlers  # noqa: F401  (registers the handlers)
    from patron.api.durations import parse_duration

    if not args.prometheus_url:
        raise SystemExit("error: --prometheus-url (or PATRON_PROMETHEUS_URL) is required")
    try:
        release_give_up = parse_duration(args.release_give_up)
    except ValueError as err:
        raise SystemExit(f"error: --release-give-up: {err}") from None
    config = OperatorConfig(
        prometheus_url=args.prometheus_url,
        alertmanager_urls=split_list(args.alertmanager_url),
        namespaces=split_list(args.namespace),
        dry_run=args.dry_run,
        metrics_port=args.metrics_port,
        metrics_address=args.metrics_address,
        liveness_endpoint=args.liveness,
        peering=args.peering or None,
        priority=_priority(args.priority, args.peering),
        release_give_up=release_give_up,
        namespace_label=args.namespace_label,
        prometheus_connection=_connection(args, "prometheus"),
        alertmanager_connection=_connection(args, "alertmanager"),
        max_concurrent_evaluations=args.max_concurrent_evaluations,
        manage_prometheus_rules=args.manage_prometheus_rules,
        prometheus_rule_labels=_rule_labels(args.prometheus_rule_label),
    )
    # Kopf's own formatters: FULL for people, JSON (one object per line, with the object's
    # namespace/name) for log pipelines.
    kopf.configure(
        verbose=args.verbose,
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.FULL,
        log_refkey="k8s" if args.log_format == "json" else None,
    )
    if config.metrics_port:
        start_http_server(config.metrics_port, addr=config.metrics_address)
    asyncio.run(
        kopf.operator(
            standalone=config.peering is None,
            peering_name=config.peering,
            priority=config.priority,
            clusterwide=not config.namespaces,
            namespaces=list(config.namespaces),
            liveness_endpoint=config.liveness_endpoint,
            memo=kopf.Memo(config=config),
        )
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from patron.impact.assess import DataProblem
    from patron.impact.evaluate import evaluate
    from patron.impact.prometheus import Prometheus
    from patron.reconcile import evaluated, parse_spec

    manifest = _load_manifest(args.file)
    at = _parse_time(args.at) if args.at else datetime.now(UTC)
    try:
        spec = parse_spec(manifest.get("spec") or {}, args.namespace_label, _manifest_namespace(manifest))
        slo = f"{_manifest_namespace(manifest)}/{_manifest_name(manifest)}"
        assessment = evaluate(spec, Prometheus(args.prometheus, connection=_connection(args, "prometheus")), at, slo)
    except DataProblem as problem:
        print(printable(f"error: {problem.reason}: {problem.message}"), file=sys.stderr)
        return 2
    generation = (manifest.get("metadata") or {}).get("generation")
    status = evaluated(spec, {}, assessment, generation, at).status
    for key in ("conditions", "actions", "observedGeneration"):
        status.pop(key, None)
    if args.output == "json":
        print(json.dumps(status, ensure_ascii=False))
    else:
        _print_table(status)
    return 0


def _print_table(status: dict[str, Any]) -> None:
    print(
        f"severity={status['severity']} active={status['activeCustomers']} impacted={status['impactedCustomers']} "
        f"fraction={status['impactedFraction']:.2%} weighted={status['weightedImpact']:.2%} "
        f"lost={status['lostCustomers']} storming={status['stormingCustomers']} at={status['lastEvaluationTime']}"
    )
    header = ("CUSTOMER", "TIER", "ERROR RATIO", "BURN RATE", "BUDGET LEFT", "REQ/S", "LOST", "STORMING")
    rows = []
    for i in status["impacted"]:
        rows.append(
            (
                i["customer"],
                i["tier"],
                f"{i['errorRatio']:.2%}",
                f"{i['burnRate']:.1f}",
                f"{i['budgetRemaining']:.1%}",
                f"{i['requestRate']:.3g}",
                "yes" if i["lost"] else "",
                "yes" if i["storming"] else "",
            )
        )
    print("\n".join(table(header, rows)))


def _report_target(args: argparse.Namespace) -> tuple[str, str]:
    """NAMESPACE/NAME, or NAME with -n/--namespace, else the kubeconfig context's namespace (as kubectl)."""
    import kubernetes

    namespace, slash, name = args.target.rpartition("/")
    if slash and (not namespace or not name or args.namespace not in (None, namespace)):
        raise SystemExit("error: name the CustomerSLO as NAMESPACE/NAME, or NAME with -n NAMESPACE")
    if not slash:
        name, namespace = args.target, args.namespace or ""
    if not namespace:
        try:
            contexts, current = kubernetes.config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
                config_file=args.kubeconfig
            )
            chosen = next((c for c in contexts if c["name"] == args.context), None) if args.context else current
            namespace = str((chosen or {}).get("context", {}).get("namespace") or "default")
        except (kubernetes.config.ConfigException, OSError):
            namespace = "default"
    return namespace, name


def _incident_data(
    prom: Any, spec: Any, namespace: str, name: str, window: tuple[datetime, datetime]
) -> tuple[dict[str, Any] | None, Any]:
    """From Prometheus: per-customer counts, per-minute series and the operator's customer counts.

    Each part that cannot be read is left out (None) with a warning; nothing is made up.
    """
    from patron.impact.assess import DataProblem
    from patron.report import (
        IncidentData,
        chart_step,
        incident_queries,
        minute_queries,
        operator_query,
        range_step,
    )

    counts: dict[str, Any] | None = None
    minutes: dict[str, Any] | None = None
    customers: Any = None
    step = range_step(*window)
    try:
        counts = {k: prom.query(q, window[1]) for k, q in incident_queries(spec, *window).items()}
        minutes = {k: prom.query_range(q, window[0], window[1], step) for k, q in minute_queries(spec, step).items()}
    except DataProblem as problem:
        print(printable(f"warning: {problem.message}; failed requests per customer are left out"), file=sys.stderr)
    try:
        customers = prom.query_range(operator_query(namespace, name), *window, chart_step(*window))
    except DataProblem as problem:
        print(printable(f"warning: {problem.message}; the customers chart is left out"), file=sys.stderr)
    return counts, IncidentData(minutes=minutes, customers=customers)


def cmd_report(args: argparse.Namespace) -> int:
    import kubernetes

    from patron.api.models import API_GROUP, API_VERSION, PLURAL
    from patron.impact.assess import DataProblem
    from patron.impact.prometheus import Prometheus
    from patron.kube import api_client
    from patron.reconcile import parse_spec
    from patron.report import IncidentData, build_report, render, report_time
    from patron.report_html import render_html

    namespace, name = _report_target(args)
    try:
        client = api_client(args.kubeconfig, args.context)
    except (kubernetes.config.ConfigException, OSError) as err:
        raise SystemExit(printable(f"error: cannot load the Kubernetes configuration: {err}")) from None
    try:
        obj = cast(
            dict[str, Any],
            kubernetes.client.CustomObjectsApi(client).get_namespaced_custom_object(
                API_GROUP, API_VERSION, namespace, PLURAL, name
            ),
        )
    except kubernetes.client.exceptions.ApiException as err:
        raise SystemExit(f"error: cannot read customerslo {namespace}/{name}: {err.reason}") from None
    listing = kubernetes.client.CoreV1Api(client).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name},involvedObject.kind=CustomerSLO"
    )
    events = [client.sanitize_for_serialization(e) for e in listing.items]  # type: ignore[no-untyped-call]
    try:
        spec = parse_spec(obj.get("spec") or {}, args.namespace_label, namespace)
    except DataProblem as problem:
        raise SystemExit(printable(f"error: {problem.message}")) from None
    counts, data = None, IncidentData()
    window = report_time(obj, datetime.now(UTC))
    if window and args.prometheus:
        counts, data = _incident_data(
            Prometheus(args.prometheus, connection=_connection(args, "prometheus")), spec, namespace, name, window
        )
    report = build_report(obj, events, counts, spec, data)
    text = render_html(report) if args.output == "html" else render(report, args.output)
    if args.file:
        Path(args.file).write_text(text, encoding="utf-8", newline="")
    else:
        sys.stdout.write(text)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from patron.api.durations import parse_duration
    from patron.impact.assess import DataProblem
    from patron.impact.prometheus import Prometheus
    from patron.reconcile import parse_spec
    from patron.replay import render, replay

    manifest = _load_manifest(args.file)
    namespace = _manifest_namespace(manifest)
    try:
        spec = parse_spec(manifest.get("spec") or {}, args.namespace_label, namespace)
        steps = replay(
            spec,
            Prometheus(args.prometheus, connection=_connection(args, "prometheus")),
            _parse_time(args.start),
            _parse_time(args.end),
            timedelta(seconds=parse_duration(args.step)),
            replicas=args.replicas,
            name=str((manifest.get("metadata") or {}).get("name") or "replay"),
            namespace=namespace,
        )
    except DataProblem as problem:
        print(printable(f"error: {problem.reason}: {problem.message}"), file=sys.stderr)
        return 2
    except ValueError as err:
        print(printable(f"error: {err}"), file=sys.stderr)
        return 2
    print(render(steps, args.output), end="")
    return 0


def cmd_rules(args: argparse.Namespace) -> int:
    from patron.impact.assess import DataProblem
    from patron.impact.rules import prometheus_rule, rule_file
    from patron.reconcile import parse_spec

    manifest = _load_manifest(args.file)
    namespace, name = _manifest_namespace(manifest), _manifest_name(manifest)
    if not name:
        raise SystemExit(f"error: {args.file}: metadata.name is required (it names the recorded series)")
    try:
        spec = parse_spec(manifest.get("spec") or {}, args.namespace_label, namespace)
    except DataProblem as problem:
        raise SystemExit(printable(f"error: {problem.message}")) from None
    build = prometheus_rule if args.output == "prometheusrule" else rule_file
    print(yaml.safe_dump(build(spec, namespace, name), sort_keys=False, width=1 << 16, allow_unicode=True), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    # Run as kubectl-patron, kubectl calls it `kubectl patron`; help and errors say so.
    prog = "kubectl patron" if Path(sys.argv[0]).name.startswith("kubectl-") else "patron"
    parser = argparse.ArgumentParser(prog=prog, description="Customer-impact SLOs for Kubernetes.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the operator")
    run.add_argument("--prometheus-url", default=os.environ.get("PATRON_PROMETHEUS_URL"))
    run.add_argument(
        "--alertmanager-url",
        action="append",
        default=[os.environ["PATRON_ALERTMANAGER_URL"]] if os.environ.get("PATRON_ALERTMANAGER_URL") else None,
        help="repeatable or comma separated",
    )
    run.add_argument(
        "--namespace",
        action="append",
        default=[os.environ["PATRON_NAMESPACES"]] if os.environ.get("PATRON_NAMESPACES") else None,
        help="namespaces to watch (repeatable or comma separated); default: all",
    )
    run.add_argument("--dry-run", action="store_true", default=_env_flag("PATRON_DRY_RUN"))
    run.add_argument("--metrics-port", type=int, default=int(os.environ.get("PATRON_METRICS_PORT", "9464")))
    run.add_argument("--metrics-address", default=os.environ.get("PATRON_METRICS_ADDRESS", "127.0.0.1"))
    run.add_argument(
        "--liveness",
        default=os.environ.get("PATRON_LIVENESS"),
        help="Kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz",
    )
    run.add_argument("--peering", default=os.environ.get("PATRON_PEERING"), help="Kopf peering name (HA)")
    run.add_argument(
        "--priority",
        default=os.environ.get("PATRON_PRIORITY"),
        help="Kopf peering priority; the highest live peer works, the others stand by (default: random with --peering)",
    )
    run.add_argument(
        "--release-give-up",
        default=os.environ.get("PATRON_RELEASE_GIVE_UP", "10m"),
        help="on delete, how long after the deletionTimestamp Patron keeps trying to give back "
        "what it holds before it lets the CustomerSLO go with a ReleaseAbandoned Event (default 10m)",
    )
    run.add_argument(
        "--max-concurrent-evaluations",
        type=_positive,
        default=os.environ.get("PATRON_MAX_CONCURRENT_EVALUATIONS", str(MAX_CONCURRENT_EVALUATIONS)),
        help="CustomerSLO evaluations running at once; the others wait, earliest due first "
        f"(default {MAX_CONCURRENT_EVALUATIONS}, $PATRON_MAX_CONCURRENT_EVALUATIONS)",
    )
    run.add_argument(
        "--manage-prometheus-rules",
        action="store_true",
        default=_env_flag("PATRON_MANAGE_PROMETHEUS_RULES"),
        help="own a PrometheusRule patron-<name> per CustomerSLO with spec.recordingRules.enabled, when the "
        "Prometheus Operator's CRD is served ($PATRON_MANAGE_PROMETHEUS_RULES)",
    )
    run.add_argument(
        "--prometheus-rule-label",
        action="append",
        metavar="KEY=VALUE",
        default=[labels] if (labels := os.environ.get("PATRON_PROMETHEUS_RULE_LABELS")) else None,
        help="label on every PrometheusRule Patron owns, e.g. release=kube-prometheus-stack for your Prometheus' "
        "ruleSelector; repeatable or comma separated; spec.recordingRules.labels win ($PATRON_PROMETHEUS_RULE_LABELS)",
    )
    run.add_argument("--log-format", choices=("plain", "json"), default=os.environ.get("PATRON_LOG_FORMAT", "plain"))
    _add_namespace_label(run)
    _add_connection(run, "prometheus")
    _add_connection(run, "alertmanager")
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(func=cmd_run)

    ev = sub.add_parser("evaluate", help="evaluate one CustomerSLO manifest against Prometheus, once")
    ev.add_argument("-f", "--file", required=True, help="manifest path, or - for stdin")
    ev.add_argument("--prometheus", required=True, help="Prometheus base URL")
    ev.add_argument("--at", help="evaluation time, RFC 3339 (default: now)")
    ev.add_argument("-o", "--output", choices=("json", "table"), default="table")
    _add_namespace_label(ev)
    _add_connection(ev, "prometheus")
    ev.set_defaults(func=cmd_evaluate)

    rep = sub.add_parser("report", help="post-mortem of a CustomerSLO's current or last incident")
    rep.add_argument("target", metavar="[NAMESPACE/]NAME")
    rep.add_argument("-n", "--namespace", help="the CustomerSLO's namespace (default: the context's, as kubectl)")
    rep.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    rep.add_argument("--context", default=None, help="kubeconfig context (default: the current one)")
    rep.add_argument(
        "--prometheus",
        default=os.environ.get("PATRON_PROMETHEUS_URL"),
        help="Prometheus base URL for failed requests per customer (default: $PATRON_PROMETHEUS_URL)",
    )
    rep.add_argument(
        "-o",
        "--output",
        choices=("table", "markdown", "json", "csv", "html"),
        default="table",
        help="csv: the outreach list, one row per affected customer; html: one self-contained page with charts",
    )
    rep.add_argument("--file", help="write the report to FILE instead of stdout")
    _add_namespace_label(rep)
    _add_connection(rep, "prometheus")
    rep.set_defaults(func=cmd_report)

    rp = sub.add_parser("replay", help="backtest a CustomerSLO over a past period with the operator's engine")
    rp.add_argument("-f", "--file", required=True, help="manifest path, or - for stdin")
    rp.add_argument("--prometheus", required=True, help="Prometheus base URL")
    rp.add_argument("--from", dest="start", required=True, help="RFC 3339 start")
    rp.add_argument("--to", dest="end", required=True, help="RFC 3339 end")
    rp.add_argument("--step", default="30s", help="evaluation step (default 30s)")
    rp.add_argument(
        "--replicas",
        type=int,
        default=3,
        help="replicas of actions.scale's target Deployment when the period starts (default 3; no HPA is assumed)",
    )
    rp.add_argument("-o", "--output", choices=("json", "table"), default="table")
    _add_namespace_label(rp)
    _add_connection(rp, "prometheus")
    rp.set_defaults(func=cmd_replay)

    ru = sub.add_parser("rules", help="print a CustomerSLO's recording rules (rule file or PrometheusRule)")
    ru.add_argument("-f", "--file", required=True, help="manifest path, or - for stdin")
    ru.add_argument("-o", "--output", choices=("rulefile", "prometheusrule"), default="rulefile")
    _add_namespace_label(ru)
    ru.set_defaults(func=cmd_rules)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
