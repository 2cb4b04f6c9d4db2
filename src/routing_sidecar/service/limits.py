"""Label values a caller may introduce: budget-scope labels normalised, distinct values capped.

Each distinct `project` or `worker` becomes a budget scope (a ledger line, a GetBudgetStatus
row, a gauge series), a `lane` a health key, a `project` a metric attribute. Without a cap a
caller inventing values grows all of them without limit; without normalisation `ALPHA` and
`alpha ` would be scopes apart from the `project:alpha` budget. So, before anything is decided:

- `project` and `worker` values must be scope names (A-Z a-z 0-9 _ . - /) and are case-folded
  when the config says so, the way config.py folds its project:/worker: budget scopes;
- a value not yet known for a capped label is admitted while the label has room, else the
  request is refused (ResourceExhausted, nothing decided, written or charged) and counted.

Values known at start (the ledger's scopes, those the config names included, and the lanes
health tracks) always keep working, and count toward their cap. Caps hold per process.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping

from routing_sidecar import domain
from routing_sidecar.core.budget_rules import LedgerEntry
from routing_sidecar.core.health import HealthBook
from routing_sidecar.core.health_types import Scope
from routing_sidecar.errors import BudgetUnavailable, InvalidArgument, ResourceExhausted
from routing_sidecar.ports import BudgetBook
from routing_sidecar.settings import SCOPE_LABELS, LimitSettings

SCOPE_NAME_RE = re.compile(r"[A-Za-z0-9_.\-/]+")  # a budget scope name; fullmatch only

RefusedHook = Callable[[str], None]  # called with the label key of each refusal


class LabelLimits:
    """Normalises budget-scope labels and admits new label values up to each key's cap.

    The caps and the folding switch come with each call (the routing state's settings), so a
    reload changes them at once; what is kept here is only which values are known.
    """

    def __init__(self, known: Iterable[tuple[str, str]] = ()) -> None:
        self.on_refused: RefusedHook | None = None  # set by the app to count refusals
        self._known: dict[str, set[str]] = {}
        self.remember(known)

    def remember(self, values: Iterable[tuple[str, str]]) -> None:
        """Mark (key, value) pairs as known, beyond any cap: they were in use before."""
        for key, value in values:
            self._known.setdefault(key, set()).add(value)

    def known(self, key: str) -> int:
        """How many distinct values of `key` are admitted."""
        return len(self._known.get(key, ()))

    def admit(self, task: domain.Task, limits: LimitSettings) -> domain.Task:
        """The task with its scope labels normalised, once every capped value has room.

        Raises InvalidArgument naming `labels[key]` for a value that cannot be a scope name and
        ResourceExhausted naming it for a new value beyond the cap; then nothing is admitted.
        """
        labels = task.labels
        normal = _normalised(labels, limits.casefold_scope_labels)
        caps = limits.caps
        fresh = [(k, v) for k, v in normal.items()
                 if v and k in caps and v not in self._known.get(k, ())]
        for key, _ in fresh:  # every label is checked before any value is admitted
            cap = caps[key]
            if self.known(key) >= cap:
                if self.on_refused is not None:
                    self.on_refused(key)
                raise ResourceExhausted(
                    f"labels[{key}]",
                    f"{cap} distinct values are in use (the limits section caps them); a new "
                    "one is refused, values already in use keep working")
        for key, value in fresh:
            self._known.setdefault(key, set()).add(value)
        return task if normal is labels else dataclasses.replace(task, labels=normal)


def _normalised(labels: Mapping[str, str], casefold: bool) -> Mapping[str, str]:
    """Labels with project and worker checked as scope names and folded (same if unchanged)."""
    if not any(k in labels for k in SCOPE_LABELS):
        return labels
    out = dict(labels)
    for key in SCOPE_LABELS:
        value = out.get(key)
        if not value:
            continue
        if not SCOPE_NAME_RE.fullmatch(value):
            raise InvalidArgument(
                f"labels[{key}]",
                "names a budget scope: only letters, digits and _ . - / are allowed")
        if casefold:
            out[key] = value.lower()
    return labels if out == labels else out


async def known_at_start(budgets: BudgetBook, health: HealthBook,
                         now: float) -> list[tuple[str, str]]:
    """(label key, value) pairs already in use: budget scopes (project:X) and tracked lanes."""
    try:
        statuses = await budgets.status(now)
    except BudgetUnavailable:  # a shared ledger out of reach: what this process holds
        statuses = budgets.cached_status(now)
    scopes = sorted({s.scope for s in statuses})
    out = [(kind, name) for kind, _, name in (s.partition(":") for s in scopes)
           if kind in SCOPE_LABELS and name]
    out += [("lane", h.name) for h in health.stats(now) if h.scope is Scope.LANE]
    return out


def fold_scope(scope: str, casefold: bool) -> str:
    """A queried scope named as requests name it: `project:ALPHA` is `project:alpha`."""
    kind, sep, name = scope.partition(":")
    if casefold and sep and kind in SCOPE_LABELS:
        return f"{kind}:{name.lower()}"
    return scope


def fold_entries(entries: Iterable[LedgerEntry], casefold: bool) -> list[LedgerEntry]:
    """Persisted ledger rows with project:/worker: scopes folded as requests now name them.

    Rows written before folding was on (or by another casing) then add to the same line as
    new ones, so turning it on never hands a scope a fresh, empty period.
    """
    rows = list(entries)
    if not casefold:
        return rows
    out = []
    for e in rows:
        kind, sep, name = e.scope.partition(":")
        folded = sep and kind in SCOPE_LABELS and name != name.lower()
        out.append(dataclasses.replace(e, scope=f"{kind}:{name.lower()}") if folded else e)
    return out
