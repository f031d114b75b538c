"""The pure core every action kind shares: the situation it decides in, the steps it decides, and
the bookkeeping of `status.actions` (records, their retention, Events and the ActionsActive condition).

A record is identified by its key (type, target, customer). A kind's planner turns the Situation and
what it observed into Steps; `merge` applies the Steps to the previous records. Nothing here does I/O.

Record conventions (docs/actions.md):
- `since`: when the record entered its current state or value (the cooldown counts from it).
- `expires`: when Patron releases the action unless something changes (TTL, end of recovery).
- Held values are typed fields (Throttle key/limit, Scale replicas/originalReplicas); `detail` is text.
- A revert is a record in state Reverting first (written before the change is attempted); it becomes
  Reverted only when the change succeeded (`complete`), and is retried every evaluation until then.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError

from patron.api.durations import parse_duration
from patron.api.models import SEVERITY_ORDER, CustomerSLOSpec
from patron.api.status import ActionRecord
from patron.impact.assess import Assessment
from patron.reconcile import Event
from patron.status import parse_timestamp, timestamp

Key = tuple[str, str, str | None]
Verb = Literal["apply", "revert", "hold", "skip"]

# Reverted records kept for history once their incident is over (plus the newest Rollback per target).
MAX_REVERTED = 5
# At most this many records per action type: a type never pushes out another type's records.
# Records past the cap are evicted (with an ActionEvicted Event): Reverted history first, then
# Skipped decisions, then (alerts only: per-customer alerts beyond it) held ones.
MAX_RECORDS = {"Alert": 250, "Throttle": 150, "Scale": 10, "Rollback": 10}
_TYPE_ORDER = {"Rollback": 0, "Scale": 1, "Throttle": 2, "Alert": 3}
_STATE_ORDER = {"Active": 0, "Reverting": 1, "Skipped": 2, "Reverted": 3}
# ActionsActive reason while records of this type are Active, most significant first.
REASONS = (("Rollback", "RolledBack"), ("Scale", "Scaling"), ("Throttle", "Throttling"), ("Alert", "Alerting"))


class OwnedElsewhere(Exception):
    """A target was taken by another owner between Patron's read and its write."""


def key_of(record: ActionRecord) -> Key:
    return (record.type, record.target, record.customer)


def at(text: str | None) -> datetime | None:
    return parse_timestamp(text) if text else None


def parse_records(raw: Iterable[Any]) -> tuple[ActionRecord, ...]:
    """status.actions as records; entries that are not records (hand edits) are dropped."""
    out = []
    for item in raw:
        try:
            out.append(ActionRecord.model_validate(item))
        except ValidationError:
            continue
    return tuple(out)


def dump_records(records: Iterable[ActionRecord]) -> list[dict[str, Any]]:
    return [r.model_dump(by_alias=True, exclude_none=True) for r in records]


@dataclass(frozen=True)
class Situation:
    """What every decision depends on, besides the objects each kind observes.

    `assessment` None: the data cannot be trusted; nothing is started and nothing is reverted.
    `releasing`: the CustomerSLO is being deleted; everything Patron can give back is given back now.
    """

    now: datetime
    namespace: str
    name: str
    spec: CustomerSLOSpec
    records: tuple[ActionRecord, ...]
    assessment: Assessment | None
    incident: Mapping[str, Any] | None  # status.incident after this evaluation
    dry_run: bool = False
    releasing: bool = False

    @property
    def fresh(self) -> bool:
        return self.assessment is not None

    @property
    def severity(self) -> str:
        return self.assessment.severity if self.assessment is not None else "none"

    def reaches(self, min_severity: str) -> bool:
        """Fresh data, not releasing, and the severity is at least `min_severity`."""
        return self.fresh and not self.releasing and SEVERITY_ORDER[self.severity] >= SEVERITY_ORDER[min_severity]

    @property
    def release_at(self) -> datetime | None:
        """incident.ended + recovery: when actions are reverted unless impact returns."""
        ended = at(self.incident.get("ended")) if self.incident else None
        return ended + timedelta(seconds=parse_duration(self.spec.recovery)) if ended else None

    @property
    def recovered(self) -> bool:
        """Revert time: releasing, or fresh data and no impact for `recovery` (or no incident at all)."""
        if self.releasing:
            return True
        if not self.fresh:
            return False
        if not self.incident:
            return True
        release = self.release_at
        return release is not None and self.now >= release

    @property
    def incident_open_since(self) -> datetime | None:
        """incident.started while the incident has not ended."""
        if not self.incident or self.incident.get("ended"):
            return None
        return at(self.incident.get("started"))

    def previous(self, key: Key) -> ActionRecord | None:
        return next((r for r in self.records if key_of(r) == key), None)

    @property
    def owner(self) -> str:
        """The owner mark of what this CustomerSLO changes: <namespace>/<name>."""
        return f"{self.namespace}/{self.name}"

    def of_type(self, type_: str, *states: str) -> list[ActionRecord]:
        return [r for r in self.records if r.type == type_ and (not states or r.state in states)]

    def stamp(self) -> str:
        return timestamp(self.now)


@dataclass(frozen=True)
class Step:
    """One decision about one record. `record` None: the record is dropped (a lapsed dry-run decision)."""

    verb: Verb
    key: Key
    record: ActionRecord | None
    message: str


@dataclass(frozen=True)
class Plan:
    """A kind's decisions (`steps`) and the changes to the world they need (`effects`, kind-specific)."""

    steps: tuple[Step, ...] = ()
    effects: tuple[Any, ...] = ()
    conflicts: tuple[str, ...] = field(default=())  # targets owned by another CustomerSLO (messages)
    notes: tuple[str, ...] = field(default=())  # e.g. storming customers left out at the cap


def apply(sit: Situation, record: ActionRecord, message: str) -> Step:
    """Start or change an action; under dry run the decision is recorded as Skipped instead."""
    if sit.dry_run:
        before = sit.previous(key_of(record))
        if before is not None and before.state == "Active":
            return hold(before)  # dry run freezes what is already held
        return skip(sit, record.model_copy(update={"state": "Skipped"}), f"dry run: would {message}")
    return Step("apply", key_of(record), record, message)


def revert(sit: Situation, record: ActionRecord, detail: str, message: str) -> Step:
    """Give back a held action: state Reverting (since now) until `complete` makes it Reverted.
    A record already Reverting keeps its `since` (the same revert, retried). Under dry run nothing
    Active is released (unless the CustomerSLO is being deleted); a Skipped decision that lapses is
    dropped with an ActionSkipped Event."""
    if record.state == "Skipped":
        lapsed = f"dry run: would {message}" if sit.dry_run else f"{message} (it was not done: {record.detail})"
        return Step("skip", key_of(record), None, lapsed)
    if record.state == "Reverting":
        return Step("revert", key_of(record), record.model_copy(update={"detail": detail}), message)
    if sit.dry_run and not sit.releasing:
        return hold(record)
    update = {"state": "Reverting", "since": sit.stamp(), "detail": detail}
    return Step("revert", key_of(record), record.model_copy(update=update), message)


def complete(sit: Situation, steps: Iterable[Step]) -> tuple[Step, ...]:
    """The steps after their changes succeeded: each Reverting record becomes Reverted (since now)."""
    return tuple(
        replace(s, record=s.record.model_copy(update={"state": "Reverted", "since": sit.stamp()}))
        if s.record is not None and s.record.state == "Reverting"
        else s
        for s in steps
    )


def skip(sit: Situation, record: ActionRecord, reason: str, message: str | None = None) -> Step:
    """Decided but not done (dry run, bounds, cooldown, missing target), with `reason` as detail.
    A decision that stands keeps its record (and `since`), so it posts its Event once."""
    before = sit.previous(key_of(record))
    if before is not None and (before.state, before.detail) == (record.state, reason):
        return hold(before)
    return Step("skip", key_of(record), record.model_copy(update={"detail": reason}), message or reason)


def hold(record: ActionRecord, **update: Any) -> Step:
    """Keep a record (optionally with updated fields, e.g. `expires`); no Event."""
    return Step("hold", key_of(record), record.model_copy(update=update) if update else record, "")


def merge(sit: Situation, steps: Sequence[Step]) -> tuple[ActionRecord, ...]:
    """The previous records with `steps` applied, trimmed by `retain` and in a stable order."""
    return merge_evicting(sit, steps)[0]


def merge_evicting(sit: Situation, steps: Sequence[Step]) -> tuple[tuple[ActionRecord, ...], tuple[ActionRecord, ...]]:
    """`merge`, and the records it evicted past a per-type cap."""
    records: dict[Key, ActionRecord] = {key_of(r): r for r in sit.records}
    for step in steps:
        if step.record is None:
            records.pop(step.key, None)
        else:
            records[step.key] = step.record
    return retain(records.values(), sit.incident_open_since)


def retain(
    records: Iterable[ActionRecord], open_since: datetime | None
) -> tuple[tuple[ActionRecord, ...], tuple[ActionRecord, ...]]:
    """(kept, evicted). Kept: held and Skipped records; Reverted ones from the open incident (a
    throttle lifted by its TTL is not set again in the same incident), the newest Rollback per
    target (never twice for one revision), and the last MAX_REVERTED others (older history is
    dropped silently). Then at most MAX_RECORDS[type] per type: the rest is evicted. Reverting
    records are never evicted (their change is not given back yet)."""
    items = list(records)
    reverted = sorted((r for r in items if r.state == "Reverted"), key=lambda r: r.since, reverse=True)
    newest_rollback: dict[str, ActionRecord] = {}
    for r in reverted:
        if r.type == "Rollback":
            newest_rollback.setdefault(r.target, r)
    keep = {id(r) for r in reverted[:MAX_REVERTED]} | {id(r) for r in newest_rollback.values()}
    if open_since is not None:
        keep |= {id(r) for r in reverted if parse_timestamp(r.since) >= open_since}
    kept: list[ActionRecord] = []
    evicted: list[ActionRecord] = []
    for type_, cap in MAX_RECORDS.items():
        of_type = sorted(
            (r for r in items if r.type == type_ and (r.state != "Reverted" or id(r) in keep)),
            key=lambda r: (_STATE_ORDER[r.state], r.customer is not None, -_epoch(r)),
        )
        room = max(cap - sum(1 for r in of_type if r.state == "Reverting"), 0)
        others = [r for r in of_type if r.state != "Reverting"]
        kept += [r for r in of_type if r.state == "Reverting"] + others[:room]
        evicted += others[room:]
    kept.sort(key=lambda r: (_STATE_ORDER[r.state], _TYPE_ORDER[r.type], r.target, r.customer or ""))
    return tuple(kept), tuple(evicted)


def _epoch(r: ActionRecord) -> float:
    """Reverted records sort newest first; the others keep their order."""
    return parse_timestamp(r.since).timestamp() if r.state == "Reverted" else 0.0


def evictions(evicted: Sequence[ActionRecord]) -> tuple[Event, ...]:
    """One ActionEvicted Event (Warning) naming the records dropped past their type's cap."""
    if not evicted:
        return ()
    names = "; ".join(f"{r.type} {r.target}{f' {r.customer}' if r.customer else ''} ({r.state})" for r in evicted[:20])
    more = f" (+{len(evicted) - 20} more)" if len(evicted) > 20 else ""
    caps = ", ".join(f"{t} {n}" for t, n in MAX_RECORDS.items())
    return (
        Event(
            "ActionEvicted",
            f"{len(evicted)} record(s) past the per-type cap ({caps}) dropped: {names}{more}",
            "Warning",
        ),
    )


def events(steps: Iterable[Step]) -> tuple[Event, ...]:
    """ActionApplied / ActionReverted / ActionSkipped per step that is not a hold; a revert posts
    its Event when it is done (Reverted), not while it is pending (Reverting)."""
    reasons = {"apply": "ActionApplied", "revert": "ActionReverted", "skip": "ActionSkipped"}
    return tuple(
        Event(reasons[s.verb], s.message)
        for s in steps
        if s.verb in reasons and not (s.record is not None and s.record.state == "Reverting")
    )


FAILED = "failed: "


def is_failure(record: ActionRecord) -> bool:
    """A Skipped record of a change that failed (decided again next evaluation, not "done")."""
    return record.state == "Skipped" and record.detail.startswith(FAILED)


def failed(sit: Situation, steps: Iterable[Step], error: str) -> tuple[Step, ...]:
    """A kind's changes failed (`error`: the failure kind; its ActionFailed Event is posted once,
    from the note): held records stay as they were, a pending revert stays Reverting (retried next
    evaluation), a new decision becomes a Skipped record naming the error. No per-step Event."""
    out = []
    for step in steps:
        before = sit.previous(step.key)
        if step.verb == "revert" and step.record is not None:
            out.append(hold(step.record))
        elif before is not None and before.held:
            out.append(hold(before))
        elif step.record is not None:
            decided = skip(sit, step.record.model_copy(update={"state": "Skipped"}), FAILED + error)
            out.append(Step("hold", decided.key, decided.record, ""))
        elif before is not None:
            out.append(hold(before))
    return tuple(out)


def actions_condition(
    records: Sequence[ActionRecord], notes: Sequence[str] = (), conflicts: Sequence[str] = ()
) -> tuple[str, str, str]:
    """ActionsActive as (status, reason, message): True while anything is held (reason Conflict when
    a target is owned by another CustomerSLO, else that of the most significant kind held),
    False/DryRun when only dry-run decisions stand, else False/None (or False/Conflict)."""
    active = [r for r in records if r.state == "Active"]
    reverting = [r for r in records if r.state == "Reverting"]
    skipped = [r for r in records if r.state == "Skipped"]
    parts = [_describe(type_, [r for r in active if r.type == type_]) for type_, _ in REASONS]
    message = "; ".join(p for p in parts if p) or "no action held"
    if reverting:
        message += f"; {len(reverting)} being given back: " + "; ".join(_one(r) for r in reverting[:5])
    if skipped:
        message += f"; {len(skipped)} decided but not done: " + "; ".join(_one(r) for r in skipped[:5])
    if conflicts:
        message += "; " + "; ".join(conflicts)
    if notes:
        message += "; " + "; ".join(notes)
    if conflicts:
        return ("True" if active or reverting else "False"), "Conflict", message
    if reverting and not active:
        return "True", "Reverting", message
    for type_, reason in REASONS:
        if any(r.type == type_ for r in active):
            return "True", reason, message
    if skipped and all(r.detail.startswith("dry run") for r in skipped):
        return "False", "DryRun", message
    return "False", "None", message


def _one(r: ActionRecord) -> str:
    who = f" {r.customer}" if r.customer else ""
    return f"{r.type} {r.target}{who}: {r.detail}"


def _describe(type_: str, records: Sequence[ActionRecord]) -> str:
    if not records:
        return ""
    if type_ == "Throttle":
        names = ", ".join(sorted(r.customer or "" for r in records)[:10])
        more = f" (+{len(records) - 10} more)" if len(records) > 10 else ""
        return f"throttling {len(records)} customer(s) in {records[0].target}: {names}{more}"
    if type_ == "Alert":
        return f"{len(records)} alert(s) firing"
    return "; ".join(f"{r.target}: {r.detail}" for r in records)
