"""Actions: what Patron does about customer impact. `act` is the one entry point from reconcile.

Integration seam (issue 4): `act` receives the outcome of the evaluation (status + events) and
returns it with `status.actions`, the ActionsActive condition and action Events added.
`spec` is None when the spec is invalid; `assessment` is None when the data could not be trusted:
then nothing new is started and nothing is reverted (actions are held where they are).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from patron.api.models import CustomerSLOSpec
from patron.config import OperatorConfig
from patron.impact.assess import Assessment
from patron.kube import Kube
from patron.reconcile import Outcome


@dataclass(frozen=True)
class ActionContext:
    obj: dict[str, Any]  # the CustomerSLO as read at the start of this reconcile
    kube: Kube
    config: OperatorConfig
    alerts: Any  # the operator's Alertmanager client (set up at startup), or None
    now: datetime
    logger: logging.Logger | logging.LoggerAdapter[Any]


async def act(
    context: ActionContext, spec: CustomerSLOSpec | None, assessment: Assessment | None, outcome: Outcome
) -> Outcome:
    return outcome
