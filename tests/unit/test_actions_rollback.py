"""Rollback decisions (pure): when, pause or undo, once per revision, release."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st

from patron.actions import rollback
from patron.actions.plan import complete, events, failed, merge
from patron.actions.rollback import DeploymentState, Revision, undo_template
from tests.unit.test_actions_plan import T0, Timeline, assessment, customer, make_spec

ROLLBACK = {"target": {"name": "web"}, "within": "5m", "mode": "pause", "minSeverity": "warning"}
BAD = assessment("warning", customer("acme", impacted=True))
GOOD = assessment("none", customer("acme"))


def template(image: str, hash_: str) -> dict[str, object]:
    return {
        "metadata": {"labels": {"app": "web", "pod-template-hash": hash_}, "creationTimestamp": None},
        "spec": {"containers": [{"name": "web", "image": image}]},
    }


def deployment(paused: bool = False, rolled_out_ago: float = 60) -> DeploymentState:
    return DeploymentState(
        name="web",
        template=template("web:2", "bbb"),
        paused=paused,
        revisions=(
            Revision(1, T0 - timedelta(days=1), template("web:1", "aaa")),
            Revision(2, T0 - timedelta(seconds=rolled_out_ago), template("web:2", "bbb")),
        ),
    )


def run(tl: Timeline, a: object, dep: DeploymentState | None) -> rollback.Plan:
    sit = tl.situation(a)  # type: ignore[arg-type]
    plan = rollback.plan(sit, {"web": dep})
    done = replace(plan, steps=complete(sit, plan.steps))  # the changes succeeded
    tl.records = merge(sit, done.steps)
    return done


def test_impact_soon_after_a_rollout_pauses_it_once() -> None:
    tl = Timeline(make_spec({"rollback": ROLLBACK}))
    plan = run(tl, BAD, deployment())
    (patch,) = plan.effects
    assert patch.ops == (
        {"op": "test", "path": "/spec/template", "value": template("web:2", "bbb")},
        {"op": "add", "path": "/spec/paused", "value": True},
    )
    (rec,) = tl.records
    assert (rec.type, rec.target, rec.state, rec.revision) == ("Rollback", "Deployment/web", "Active", "2")
    assert rec.detail == "paused at revision 2: impact began 60s after revision 2 rolled out"
    # A person resumes it; impact goes on: never twice for revision 2.
    tl.advance(10)
    plan = run(tl, BAD, deployment(paused=False))
    assert plan.effects == ()
    assert [e.message for e in events(plan.steps)] == ["Rollback Deployment/web: released: the Deployment was resumed"]
    tl.advance(10)
    assert run(tl, BAD, deployment(paused=False)).effects == ()


def test_pause_is_held_after_recovery_until_someone_resumes() -> None:
    tl = Timeline(make_spec({"rollback": ROLLBACK}))
    run(tl, BAD, deployment())
    tl.advance(2)
    run(tl, GOOD, deployment(paused=True))
    tl.advance(60)
    assert events(run(tl, GOOD, deployment(paused=True)).steps) == ()
    assert tl.records[0].state == "Active"


def test_undo_sets_the_previous_template_without_its_hash() -> None:
    tl = Timeline(make_spec({"rollback": ROLLBACK | {"mode": "undo"}}))
    plan = run(tl, BAD, deployment())
    (patch,) = plan.effects
    assert patch.ops[1] == {
        "op": "replace",
        "path": "/spec/template",
        "value": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "web:1"}]}},
    }
    assert tl.records[0].detail.startswith("undone: revision 2 -> template of revision 1")
    # After the undo the old ReplicaSet is revision 3, created a day ago: nothing more to do.
    revisions = (
        Revision(3, T0 - timedelta(days=1), template("web:1", "aaa")),
        Revision(2, T0 - timedelta(seconds=60), template("web:2", "bbb")),
    )
    undone = DeploymentState("web", template("web:1", "aaa"), False, revisions)
    tl.advance(5)
    assert run(tl, BAD, undone).effects == ()
    tl.advance(2)
    run(tl, GOOD, undone)
    tl.advance(20)
    plan = run(tl, GOOD, undone)
    assert [e.message for e in events(plan.steps)] == ["Rollback Deployment/web: released: no impact for 20s"]


def test_an_undo_is_not_undone_even_when_the_reused_replica_set_is_recent() -> None:
    """After an undo the newest revision (3) is the reused ReplicaSet of revision 1; when that one
    is young too, it looks like a rollout just before the impact. Once per incident stops a flip-flop."""
    tl = Timeline(make_spec({"rollback": ROLLBACK | {"mode": "undo"}}))
    run(tl, BAD, deployment(rolled_out_ago=20))
    revisions = (
        Revision(3, T0 - timedelta(seconds=40), template("web:1", "aaa")),
        Revision(2, T0 - timedelta(seconds=20), template("web:2", "bbb")),
    )
    tl.advance(2)
    assert run(tl, BAD, DeploymentState("web", template("web:1", "aaa"), False, revisions)).effects == ()
    assert tl.records[0].revision == "2"


def test_a_failed_change_is_decided_again() -> None:
    """E.g. the template changed between reading and patching: the next evaluation tries again."""
    tl = Timeline(make_spec({"rollback": ROLLBACK}))
    sit = tl.situation(BAD)
    plan = rollback.plan(sit, {"web": deployment()})
    tl.records = merge(sit, failed(sit, plan.steps, "HTTP 422 Unprocessable Entity"))
    assert (tl.records[0].state, tl.records[0].detail) == ("Skipped", "failed: HTTP 422 Unprocessable Entity")
    tl.advance(2)
    plan = run(tl, BAD, deployment())
    assert len(plan.effects) == 1 and tl.records[0].state == "Active"


def test_no_action_when_impact_began_before_or_long_after_the_rollout() -> None:
    tl = Timeline(make_spec({"rollback": ROLLBACK}))
    assert run(tl, BAD, deployment(rolled_out_ago=301)).steps == ()
    tl = Timeline(make_spec({"rollback": ROLLBACK}))
    assert run(tl, BAD, deployment(rolled_out_ago=-5)).steps == ()  # the rollout came after: maybe the fix


def test_skips_with_reasons() -> None:
    tl = Timeline(make_spec({"rollback": ROLLBACK}))
    plan = run(tl, BAD, deployment(paused=True))
    assert plan.effects == () and plan.steps[0].record is not None
    assert plan.steps[0].record.detail.startswith("not paused: revision 2 was already paused")
    only = DeploymentState(
        "web", template("web:1", "aaa"), False, (Revision(1, T0 - timedelta(seconds=30), template("web:1", "aaa")),)
    )
    tl = Timeline(make_spec({"rollback": ROLLBACK | {"mode": "undo"}}))
    assert run(tl, BAD, only).steps[0].message.startswith("not undone: there is no earlier revision")


def test_dry_run_decides_once_and_changes_nothing() -> None:
    tl = Timeline(make_spec({"rollback": ROLLBACK}, dryRun=True))
    plan = run(tl, BAD, deployment())
    assert plan.effects == ()
    assert [e.message for e in events(plan.steps)] == [
        "dry run: would Rollback Deployment/web: paused at revision 2: impact began 60s after revision 2 rolled out"
    ]
    tl.advance(2)
    assert run(tl, BAD, deployment()).steps == ()


@given(st.lists(st.tuples(st.booleans(), st.booleans(), st.integers(1, 30)), max_size=40))
def test_at_most_one_change_per_revision(history: list[tuple[bool, bool, int]]) -> None:
    tl = Timeline(make_spec({"rollback": ROLLBACK}))
    paused, changes = False, 0
    for bad, resume, dt in history:
        tl.advance(dt)
        if resume:
            paused = False
        plan = run(
            tl, BAD if bad else GOOD, deployment(paused=paused, rolled_out_ago=60 + (tl.now - T0).total_seconds())
        )
        changes += len(plan.effects)
        paused = paused or bool(plan.effects)
    assert changes <= 1


def test_undo_template_leaves_the_input_alone() -> None:
    t = template("web:1", "aaa")
    assert "pod-template-hash" not in undo_template(t)["metadata"]["labels"]
    assert t["metadata"]["labels"]["pod-template-hash"] == "aaa"  # type: ignore[index]
