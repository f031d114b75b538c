"""Throttle decisions (pure): limits, the ratelimit YAML, the JSON patch, TTL, recovery, dry run."""

from __future__ import annotations

import json
import math
from typing import Any

import jsonpatch  # type: ignore[import-untyped]
import yaml
from hypothesis import given
from hypothesis import strategies as st

from patron.actions import throttle, throttle_configmap
from patron.actions.plan import complete, merge
from patron.actions.throttle import limit_for
from patron.actions.throttle_configmap import ConfigMapState, WriteKey, pointer, render
from patron.api.models import ThrottleAction
from tests.unit.test_actions_plan import Timeline, assessment, customer, make_spec

THROTTLE = {"configMap": "ratelimit", "domain": "checkout", "headroom": 1.2, "ttl": "1m", "minSeverity": "warning"}
KEY = "patron-checkout.yaml"
CM = ("ConfigMap", "ratelimit")
OTHER = {"config.yaml": "domain: other\ndescriptors: []\n"}


def cm(data: dict[str, str] | None = None, rv: str = "7") -> dict[tuple[str, str], ConfigMapState | None]:
    return {CM: ConfigMapState("ratelimit", rv, OTHER | (data or {}))}


def storm(severity: str = "warning", *names: str, baseline: float = 30.0) -> Any:
    storming = [customer(n, impacted=True, storming=True, baseline=baseline) for n in names or ("bigbot",)]
    return assessment(severity, *storming, customer("quiet", impacted=True))


def write_owner(plan: throttle.Plan) -> str | None:
    return throttle_configmap.owner_of(plan.effects[0].content)


def step(tl: Timeline, a: Any, data: dict[str, str] | None = None, dry_run: bool = False) -> throttle.Plan:
    sit = tl.situation(a, dry_run=dry_run)
    plan = throttle.plan(sit, cm(data))
    tl.records = merge(sit, complete(sit, plan.steps))  # the writes succeeded
    return plan


@given(st.floats(0.001, 1e6), st.floats(0.01, 100), st.integers(1, 1000))
def test_limit_is_ceil_of_baseline_times_headroom_never_below_the_minimum(
    base: float, headroom: float, low: int
) -> None:
    limit = limit_for(base, headroom, low)
    assert limit >= low >= 1
    product = round(base * headroom, 6)
    assert limit == max(math.ceil(product), low)


def test_limit_examples() -> None:
    assert limit_for(30, 1.2, 1) == 36  # not 37: 30 x 1.2 is 36.000000000000004 in floating point
    assert limit_for(0.1, 1.2, 1) == 1
    assert limit_for(0.1, 1.2, 5) == 5


@given(st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=8, unique=True), st.booleans())
def test_rendered_config_round_trips_any_customer_name(names: list[str], shadow: bool) -> None:
    spec = ThrottleAction.model_validate(THROTTLE | {"shadow": shadow, "descriptorKey": "customer_id"})
    from tests.unit.test_actions_plan import record

    records = [record(type_="Throttle", customer=n, limit=i + 1) for i, n in enumerate(names)]
    text = render(spec, records, "shop/checkout")
    assert throttle_configmap.owner_of(text) == "shop/checkout"
    doc = yaml.safe_load(text)
    assert doc["domain"] == "checkout"
    by_name = {d["value"]: d for d in doc["descriptors"]}
    assert set(by_name) == set(names)
    for i, n in enumerate(names):
        entry = by_name[n]
        assert entry["key"] == "customer_id"
        assert entry["rate_limit"] == {"unit": "second", "requests_per_unit": i + 1}
        assert entry.get("shadow_mode", False) is shadow


@given(st.text(min_size=1, max_size=30))
def test_pointer_escapes_per_rfc6901(key: str) -> None:
    doc = {"data": {key: "old", "other": "x"}}
    patched = jsonpatch.apply_patch(doc, [{"op": "replace", "path": pointer("data", key), "value": "new"}])
    assert patched == {"data": {key: "new", "other": "x"}}


@given(
    st.dictionaries(st.from_regex(r"[-._a-zA-Z0-9]{1,20}", fullmatch=True), st.text(max_size=20), max_size=5),
    st.from_regex(r"[-._a-zA-Z0-9]{1,20}", fullmatch=True),
    st.one_of(st.none(), st.text(max_size=50)),
)
def test_write_touches_only_its_key(data: dict[str, str], key: str, content: str | None) -> None:
    """Whatever the ConfigMap holds, the patch changes /data/<key> and nothing else."""
    obj = {"metadata": {"resourceVersion": "5"}, "data": dict(data)} if data else {"metadata": {"resourceVersion": "5"}}
    if content is None and key not in data:
        return  # plan never removes a key that is absent
    patched = jsonpatch.apply_patch(obj, WriteKey("ratelimit", key, content, "5", bool(data)).ops())
    others = {k: v for k, v in (patched.get("data") or {}).items() if k != key}
    assert others == {k: v for k, v in data.items() if k != key}
    assert (patched.get("data") or {}).get(key) == content


def test_write_is_refused_when_the_config_map_changed() -> None:
    obj = {"metadata": {"resourceVersion": "6"}, "data": {}}
    try:
        jsonpatch.apply_patch(obj, WriteKey("ratelimit", KEY, "x", "5", True).ops())
    except jsonpatch.JsonPatchTestFailed:
        return
    raise AssertionError("the resourceVersion test did not guard the write")


def test_storming_customer_gets_an_entry_with_the_exact_limit() -> None:
    tl = Timeline(make_spec({"throttle": THROTTLE}))
    plan = step(tl, storm())
    (rec,) = tl.records
    assert (rec.type, rec.target, rec.customer, rec.state) == ("Throttle", "ConfigMap/ratelimit", "bigbot", "Active")
    assert rec.detail == "36 req/s (baseline 30 x 1.2)"
    assert (rec.key, rec.limit, rec.since, rec.expires) == (KEY, 36, "2026-11-26T10:00:00Z", "2026-11-26T10:01:00Z")
    assert write_owner(plan) == "shop/checkout"
    (write,) = plan.effects
    assert (write.config_map, write.key, write.resource_version) == ("ratelimit", KEY, "7")
    assert yaml.safe_load(write.content) == {
        "domain": "checkout",
        "descriptors": [
            {"key": "customer_id", "value": "bigbot", "rate_limit": {"unit": "second", "requests_per_unit": 36}}
        ],
    }
    assert [s.verb for s in plan.steps] == ["apply"]


def test_held_limit_is_not_recomputed_and_the_key_is_reasserted_only_when_it_differs() -> None:
    tl = Timeline(make_spec({"throttle": THROTTLE}))
    content = step(tl, storm()).effects[0].content
    tl.advance(2)
    plan = step(tl, storm(baseline=100.0), {KEY: content})
    assert plan.steps == () and plan.effects == ()
    assert tl.records[0].detail.startswith("36 req/s")
    tl.advance(2)
    # Someone (or a crash before the write) left the key without the entry: it is written again.
    (write,) = step(tl, storm(), {KEY: "domain: checkout\ndescriptors: []\n"}).effects
    assert write.content == content


def test_below_min_severity_or_without_a_storm_nothing_is_throttled() -> None:
    tl = Timeline(make_spec({"throttle": THROTTLE | {"minSeverity": "critical"}}))
    assert step(tl, storm("warning")).steps == ()
    tl = Timeline(make_spec({"throttle": THROTTLE}))
    assert step(tl, assessment("critical", customer("acme", impacted=True))).steps == ()


def test_ttl_lifts_the_entry_and_it_is_not_set_again_in_the_same_incident() -> None:
    tl = Timeline(make_spec({"throttle": THROTTLE}))
    content = step(tl, storm()).effects[0].content
    tl.advance(61)
    plan = step(tl, storm(), {KEY: content})
    assert [s.verb for s in plan.steps] == ["revert"]
    assert plan.steps[0].message == "Throttle ConfigMap/ratelimit customer bigbot: lifted, ttl 1m expired"
    assert [(w.key, w.content) for w in plan.effects] == [(KEY, None)]
    tl.advance(2)
    assert step(tl, storm()).steps == ()
    assert tl.records[0].state == "Reverted"


def test_entries_are_removed_after_recovery_only() -> None:
    tl = Timeline(make_spec({"throttle": THROTTLE | {"ttl": "1h"}}))
    content = step(tl, storm()).effects[0].content
    healthy = assessment("none", customer("bigbot"))
    tl.advance(2)
    assert step(tl, healthy, {KEY: content}).steps == ()  # the incident ended: recovery (20s) begins
    tl.advance(19)
    assert step(tl, healthy, {KEY: content}).steps == ()
    tl.advance(1)
    plan = step(tl, healthy, {KEY: content})
    assert [(s.verb, s.message) for s in plan.steps] == [
        ("revert", "Throttle ConfigMap/ratelimit customer bigbot: lifted, no impact for 20s")
    ]
    assert [(w.key, w.content) for w in plan.effects] == [(KEY, None)]


def test_missing_data_holds_the_entry() -> None:
    tl = Timeline(make_spec({"throttle": THROTTLE | {"ttl": "1h"}}))
    content = step(tl, storm()).effects[0].content
    tl.advance(3600 * 2)
    # No data at all: TTL still lifts (it is a promise, not a measurement)...
    assert [s.verb for s in step(tl, None, {KEY: content}).steps] == ["revert"]
    tl = Timeline(make_spec({"throttle": THROTTLE | {"ttl": "1h"}}))
    content = step(tl, storm()).effects[0].content
    tl.advance(600)
    # ...but no recovery is concluded from missing data.
    tl.incident = {**(tl.incident or {}), "ended": "2026-11-26T10:00:02Z"}
    assert step(tl, None, {KEY: content}).steps == ()


def test_shadow_mode_and_names_are_data() -> None:
    tl = Timeline(make_spec({"throttle": THROTTLE | {"shadow": True}}))
    weird = 'bad"bot: {x}\n#y'
    (write,) = step(tl, storm("warning", weird)).effects
    (entry,) = yaml.safe_load(write.content)["descriptors"]
    assert entry["value"] == weird and entry["shadow_mode"] is True


def test_missing_config_map_is_skipped_with_a_reason_never_created() -> None:
    tl = Timeline(make_spec({"throttle": THROTTLE}))
    sit = tl.situation(storm())
    plan = throttle.plan(sit, {CM: None})
    assert plan.effects == ()
    (s,) = plan.steps
    assert s.verb == "skip" and s.record is not None and s.record.state == "Skipped"
    assert s.record.detail.startswith("ConfigMap ratelimit not found in namespace shop")


def test_throttle_decisions_are_capped_over_what_stands_not_per_evaluation() -> None:
    """Regression (issue 9): MAX_THROTTLED limited new throttles per evaluation, not those held."""
    tl = Timeline(make_spec({"throttle": THROTTLE | {"ttl": "1h"}}))
    for i in range(4):
        names = [f"bot{i}-{j}" for j in range(40)]
        plan = step(tl, storm("warning", *names))
        assert len([r for r in tl.records if r.state in ("Active", "Skipped")]) <= throttle.MAX_THROTTLED
        tl.advance(2)
    assert len([r for r in tl.records if r.state == "Active"]) == throttle.MAX_THROTTLED
    assert plan.notes == ("40 storming customer(s) not throttled: 50 are held at most",)
    # Without the ConfigMap the Skipped decisions are capped the same way, and stand (no new Event).
    tl = Timeline(make_spec({"throttle": THROTTLE}))
    names = [f"bot{j}" for j in range(300)]
    first = throttle.plan(tl.situation(storm("warning", *names)), {CM: None})
    tl.records = merge(tl.situation(storm("warning", *names)), first.steps)
    assert len(tl.records) == throttle.MAX_THROTTLED and len(first.steps) == throttle.MAX_THROTTLED
    tl.advance(2)
    again = throttle.plan(tl.situation(storm("warning", *names)), {CM: None})
    assert [s for s in again.steps if s.verb != "hold"] == []


def test_dry_run_records_and_changes_nothing() -> None:
    tl = Timeline(make_spec({"throttle": THROTTLE}, dryRun=True))
    plan = step(tl, storm())
    assert plan.effects == ()
    (rec,) = tl.records
    assert (rec.state, rec.detail) == (
        "Skipped",
        "dry run: would Throttle ConfigMap/ratelimit key patron-checkout.yaml customer bigbot: "
        "36 req/s (baseline 30 x 1.2)",
    )
    tl.advance(2)
    assert step(tl, storm()).steps == ()  # the decision stands: no second Event


def test_removing_throttle_from_the_spec_lifts_entries() -> None:
    tl = Timeline(make_spec({"throttle": THROTTLE}))
    content = step(tl, storm()).effects[0].content
    tl.spec = make_spec({})
    tl.advance(2)
    plan = step(tl, storm(), {KEY: content})
    assert [s.verb for s in plan.steps] == ["revert"]
    assert [(w.key, w.content) for w in plan.effects] == [(KEY, None)]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["none", "warning", "critical", "nodata"]),
            st.sets(st.sampled_from(["a", "b", "c", "d"])),
            st.integers(1, 40),
        ),
        max_size=40,
    ),
    st.booleans(),
)
def test_invariants_over_any_history(history: list[tuple[str, set[str], int]], dry_run: bool) -> None:
    """Whatever happens: the key holds exactly the Active entries, limits are >= 1, dry run writes
    nothing, and no other key is ever written."""
    tl = Timeline(make_spec({"throttle": THROTTLE}))
    data: dict[str, str] = dict(OTHER)
    for severity, stormers, dt in history:
        tl.advance(dt)
        a = None
        if severity != "nodata":
            a = assessment(severity, *(customer(n, True, n in stormers, 7.5) for n in "abcd"))
        sit = tl.situation(a, dry_run=dry_run)
        plan = throttle.plan(sit, {CM: ConfigMapState("ratelimit", "1", dict(data))})
        tl.records = merge(sit, complete(sit, plan.steps))
        if dry_run:
            assert plan.effects == () and all(r.state != "Active" for r in tl.records)
        for write in plan.effects:
            assert write.key == KEY
            if write.content is None:
                data.pop(KEY)
            else:
                data[KEY] = write.content
        active = sorted(r.customer for r in tl.records if r.state == "Active")
        held = yaml.safe_load(data[KEY])["descriptors"] if KEY in data else []
        assert sorted(d["value"] for d in held) == active
        assert all(d["rate_limit"]["requests_per_unit"] == 9 for d in held)  # ceil(7.5 x 1.2)
        assert {k: v for k, v in data.items() if k != KEY} == OTHER
        assert len({(r.type, r.target, r.customer) for r in tl.records}) == len(tl.records)
    json.dumps([r.model_dump() for r in tl.records])
