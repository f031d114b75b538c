"""Scale decisions (pure): steps, bounds, cooldown, the HPA, restore after recovery, hand edits."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from patron.actions import scale
from patron.actions.plan import complete, events, merge
from patron.actions.scale import Observed, Scalable
from tests.unit.test_actions_plan import Timeline, assessment, customer, make_spec

SCALE = {"target": {"name": "web"}, "step": 2, "maxReplicas": 7, "minSeverity": "critical", "cooldown": "10s"}
DEP = "Deployment/web"
HPA = "HorizontalPodAutoscaler/web"
BAD = assessment("critical", customer("acme", impacted=True))
GOOD = assessment("none", customer("acme"))


class World:
    """The observed values, changed only by the plans' effects (or a test's hand edit)."""

    def __init__(self, replicas: int = 2, hpa: tuple[int, int] | None = None) -> None:
        self.values = {DEP: replicas}
        self.hpa_max = None
        if hpa is not None:
            self.values[HPA] = hpa[0]
            self.hpa_max = hpa[1]

    def observed(self) -> Observed:
        objects = {DEP: Scalable(DEP, self.values[DEP])}
        if self.hpa_max is None:
            return Observed(DEP, objects)
        objects[HPA] = Scalable(HPA, self.values[HPA], self.hpa_max, self.values[DEP])
        return Observed(HPA, objects)

    def step(self, tl: Timeline, a: object, dry_run: bool = False) -> scale.Plan:
        sit = tl.situation(a, dry_run=dry_run)  # type: ignore[arg-type]
        plan = scale.plan(sit, self.observed())
        done = replace(plan, steps=complete(sit, plan.steps))  # the changes succeeded
        tl.records = merge(sit, done.steps)
        self.apply(plan.effects)
        return done

    def apply(self, effects: object) -> None:
        for change in effects:  # type: ignore[attr-defined]
            if change.value is not None:
                self.values[change.target] = change.value


def test_steps_up_to_the_bound_one_per_cooldown_then_restores() -> None:
    tl, world = Timeline(make_spec({"scale": SCALE})), World(2)
    plan = world.step(tl, BAD)
    assert world.values[DEP] == 4
    assert [e.message for e in events(plan.steps)] == ["Scale Deployment/web: replicas 2 -> 4 (original 2, max 7)"]
    (rec,) = tl.records
    assert (rec.target, rec.state, rec.original_replicas, rec.replicas, rec.detail) == (
        DEP,
        "Active",
        2,
        4,
        "4 replicas (original 2; step 2, max 7)",
    )
    tl.advance(5)
    plan = world.step(tl, BAD)
    assert world.values[DEP] == 4
    assert [e.reason for e in events(plan.steps)] == ["ActionSkipped"]
    assert plan.steps[0].message == "Scale Deployment/web: no further step, cooldown 10s until 2026-11-26T10:00:10Z"
    tl.advance(2)
    assert events(world.step(tl, BAD).steps) == ()  # the same reason: no second Event
    tl.advance(3)
    world.step(tl, BAD)
    assert world.values[DEP] == 6
    tl.advance(10)
    world.step(tl, BAD)
    assert world.values[DEP] == 7  # the bound, not 8
    tl.advance(10)
    plan = world.step(tl, BAD)
    assert world.values[DEP] == 7
    assert plan.steps[0].record is not None
    assert plan.steps[0].record.detail == "7 replicas (original 2; at the bound 7)"
    tl.advance(2)
    world.step(tl, GOOD)  # impact gone; recovery is 20s
    tl.advance(19)
    assert events(world.step(tl, GOOD).steps) == ()
    tl.advance(1)
    plan = world.step(tl, GOOD)
    assert world.values[DEP] == 2
    assert [e.message for e in events(plan.steps)] == ["Scale Deployment/web: restored 2 replicas: no impact for 20s"]
    assert tl.records[0].state == "Reverted"


def test_hpa_min_replicas_is_raised_instead_and_never_above_its_max() -> None:
    tl, world = Timeline(make_spec({"scale": SCALE})), World(3, hpa=(1, 6))
    world.step(tl, BAD)
    # The raise starts from the replicas running now (3), not from minReplicas (1).
    assert world.values == {DEP: 3, HPA: 5}
    (rec,) = tl.records
    assert (rec.target, rec.original_replicas, rec.detail) == (HPA, 1, "5 minReplicas (original 1; step 2, max 6)")
    tl.advance(10)
    world.step(tl, BAD)
    assert world.values == {DEP: 3, HPA: 6}  # the HPA's maxReplicas bounds it
    tl.advance(2)
    world.step(tl, GOOD)
    tl.advance(20)
    world.step(tl, GOOD)
    assert world.values == {DEP: 3, HPA: 1}


def test_a_value_changed_by_someone_else_is_not_restored() -> None:
    tl, world = Timeline(make_spec({"scale": SCALE})), World(2)
    world.step(tl, BAD)
    world.values[DEP] = 9  # a person scaled up by hand
    tl.advance(2)
    world.step(tl, GOOD)
    tl.advance(20)
    plan = world.step(tl, GOOD)
    assert world.values[DEP] == 9
    assert plan.steps[0].record is not None
    assert (
        plan.steps[0].record.detail
        == "left at 9 replicas: changed by someone else since Patron set 4; no impact for 20s"
    )


def test_a_lowered_value_is_raised_back_to_what_patron_holds() -> None:
    tl, world = Timeline(make_spec({"scale": SCALE})), World(2)
    world.step(tl, BAD)
    world.values[DEP] = 2  # e.g. a GitOps sync during the incident
    tl.advance(1)
    plan = world.step(tl, BAD)
    assert world.values[DEP] == 4
    assert plan.steps[0].message == "Scale Deployment/web: replicas 2 -> 4, the value Patron holds (not in place)"


def test_restart_with_the_record_written_ahead_does_not_step_twice() -> None:
    """The record is written before the change: a crash in between leaves record 4, object 2."""
    tl, world = Timeline(make_spec({"scale": SCALE})), World(2)
    world.step(tl, BAD)
    world.values[DEP] = 2  # the change never happened
    tl.advance(3)
    world.step(tl, BAD)
    assert world.values[DEP] == 4  # set to the recorded value, not 4 + 2
    assert tl.records[0].original_replicas == 2


def test_a_restart_after_the_cooldown_sets_the_value_written_ahead_before_the_next_step() -> None:
    """Regression (SIGKILL e2e, seed 1980082711): the record 6 was written ahead, the process died
    before the change, and the next evaluation came only after the cooldown: it stepped from the
    record's 6 to 8 while the Deployment was at 4 (two steps in one write)."""
    tl, world = Timeline(make_spec({"scale": SCALE})), World(2)
    world.step(tl, BAD)
    tl.advance(10)
    world.step(tl, BAD)
    assert (world.values[DEP], tl.records[0].replicas) == (6, 6)
    tl.advance(10)
    sit = tl.situation(BAD)
    tl.records = merge(sit, scale.plan(sit, world.observed()).steps)  # written ahead; the change is lost
    assert (world.values[DEP], tl.records[0].replicas) == (6, 7)
    tl.advance(15)  # no evaluation for longer than the cooldown
    plan = world.step(tl, BAD)
    assert world.values[DEP] == 7  # the value written ahead, not one step more
    assert plan.steps[0].message == "Scale Deployment/web: replicas 6 -> 7, the value Patron holds (not in place)"
    assert tl.records[0].since == "2026-11-26T10:00:20Z"  # the step's time: the cooldown counts from it


def test_below_min_severity_nothing_and_missing_data_holds() -> None:
    tl, world = Timeline(make_spec({"scale": SCALE})), World(2)
    assert events(world.step(tl, assessment("warning", customer("acme", impacted=True))).steps) == ()
    world.step(tl, BAD)
    tl.advance(60)
    assert events(world.step(tl, None).steps) == ()  # no data: no step, no revert
    assert world.values[DEP] == 4


def test_missing_target_is_skipped() -> None:
    tl = Timeline(make_spec({"scale": SCALE}))
    plan = scale.plan(tl.situation(BAD), Observed(DEP, {DEP: None}))
    assert plan.effects == ()
    assert plan.steps[0].record is not None
    assert plan.steps[0].record.detail == "Deployment/web not found in namespace shop"


def test_dry_run_decides_and_changes_nothing() -> None:
    tl, world = Timeline(make_spec({"scale": SCALE}, dryRun=True)), World(2)
    plan = world.step(tl, BAD)
    assert world.values[DEP] == 2 and plan.effects == ()
    assert [e.message for e in events(plan.steps)] == [
        "dry run: would Scale Deployment/web: replicas 2 -> 4 (original 2, max 7)"
    ]
    tl.advance(30)
    assert events(world.step(tl, BAD).steps) == ()
    tl.advance(2)
    world.step(tl, GOOD)
    tl.advance(20)
    plan = world.step(tl, GOOD)
    assert [e.reason for e in events(plan.steps)] == ["ActionSkipped"]
    assert tl.records == ()


def test_releasing_restores_at_once() -> None:
    tl, world = Timeline(make_spec({"scale": SCALE})), World(2)
    world.step(tl, BAD)
    sit = tl.situation(None, releasing=True)
    plan = scale.plan(sit, world.observed())
    assert [(c.target, c.value) for c in plan.effects] == [(DEP, 2)]
    assert "the CustomerSLO was deleted" in plan.steps[0].message


@given(
    st.integers(0, 10),
    st.lists(st.tuples(st.sampled_from(["none", "warning", "critical", "nodata"]), st.integers(1, 15)), max_size=50),
    st.booleans(),
)
def test_invariants_over_any_history(start: int, history: list[tuple[str, int]], with_hpa: bool) -> None:
    """Never above the bound; a step only after the cooldown; the original restored on release."""
    tl = Timeline(make_spec({"scale": SCALE}))
    world = World(start, hpa=(max(start, 1), 9) if with_hpa else None)
    target = HPA if with_hpa else DEP
    original = world.values[target]
    last_raise = None
    for severity, dt in history:
        tl.advance(dt)
        before = world.values[target]
        a = None if severity == "nodata" else assessment(severity, customer("acme", severity != "none"))
        world.step(tl, a)
        after = world.values[target]
        if after > before:
            assert after <= max(7, before)
            if last_raise is not None:
                assert (tl.now - last_raise).total_seconds() >= 10
            last_raise = tl.now
    sit = tl.situation(None, releasing=True)
    world.apply(scale.plan(sit, world.observed()).effects)
    assert world.values[target] == original


@given(
    st.lists(st.tuples(st.sampled_from(["none", "critical", "nodata"]), st.integers(1, 25), st.booleans()), max_size=40)
)
def test_changes_lost_to_a_crash_never_make_a_bigger_step(history: list[tuple[str, int, bool]]) -> None:
    """A process may die between the write-ahead and the change (`lost`), and the next evaluation may
    come any time later: every write raises by at most `step`, recorded steps stay a cooldown apart."""
    tl, world = Timeline(make_spec({"scale": SCALE})), World(2)
    raised_at = None
    for severity, dt, lost in history:
        tl.advance(dt)
        a = None if severity == "nodata" else assessment(severity, customer("acme", severity != "none"))
        before, held = world.values[DEP], next((r.replicas for r in tl.records if r.state == "Active"), None)
        sit = tl.situation(a)
        plan = scale.plan(sit, world.observed())
        tl.records = merge(sit, plan.steps if lost else complete(sit, plan.steps))
        if not lost:
            world.apply(plan.effects)
        assert world.values[DEP] - before <= SCALE["step"]
        now_held = next((r.replicas for r in tl.records if r.state == "Active"), None)
        if now_held is not None and now_held > (held or 0):
            assert raised_at is None or (tl.now - raised_at).total_seconds() >= 10
            raised_at = tl.now


def test_a_cooldown_skip_after_a_revert_keeps_waiting() -> None:
    """Regression: the Skipped record replaced the Reverted one and the next evaluation stepped at once."""
    tl, world = Timeline(make_spec({"scale": SCALE})), World(2)
    world.step(tl, BAD)
    tl.advance(2)
    world.step(tl, GOOD)
    tl.advance(20)
    world.step(tl, GOOD)
    assert (world.values[DEP], tl.records[0].state) == (2, "Reverted")  # reverted at t=22s
    tl.advance(3)
    plan = world.step(tl, BAD)  # a new incident within the cooldown of the revert
    assert world.values[DEP] == 2 and plan.steps[0].verb == "skip"
    tl.advance(3)
    world.step(tl, BAD)
    assert world.values[DEP] == 2  # still inside the cooldown
    tl.advance(5)
    world.step(tl, BAD)
    assert world.values[DEP] == 4  # 10 s after the revert
