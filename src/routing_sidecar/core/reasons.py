"""The sentences that say why: made here for a decision, and rebuilt here from a stored row.

The audit row keeps the common sentences as a code and the few figures the row does not
already hold (a fallback's place, a missing capability); `alternative_reason` and
`routed_reason` turn them back into the very text the decision answered with, through the
same functions `core/decide.py` used to write it. A sentence is only stored as a code when
rebuilding it gives it back exactly (`alternative_code`, `routed_code`); any other is stored
as written. Codes are stored: never renumber one, only append.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

from routing_sidecar.domain import MICROS_PER_USD, Rejection


def usd(micros: int | float) -> str:
    """Micro-USD as dollars for reasons: '$0.0123'."""
    return f"${micros / MICROS_PER_USD:.4f}"


def signed_usd(micros: int) -> str:
    """'+$0.0410' or '-$0.0020'."""
    sign = "-" if micros < 0 else "+"
    return f"{sign}${abs(micros) / MICROS_PER_USD:.4f}"


def chosen(by_value: bool, explored: bool) -> str:
    """Why the chosen model was chosen."""
    why = "highest expected net value" if by_value else "best score"
    return f"chosen: {why}" + " (exploring)" * explored


def fallback(n: int, fresh: bool) -> str:
    """Why a model is the n-th fallback (1-based)."""
    how = "different provider" if fresh else "next best, no other provider left"
    return f"fallback {n}: {how}"


# Sentences already made, by what they quote. The same figures recur from one decision to
# the next (a task type's candidates score alike until what is learned moves), and every
# sentence of a decision is made twice: once by core/decide.py, once more when its audit row
# checks that its code rebuilds it (`alternative_code`, `routed_code`). A zero is never
# looked up: 0.0 and -0.0 are one key, and their texts differ. Cleared when full.
_MADE: dict[tuple[Any, ...], str] = {}
_MADE_MAX = 4096


def _remember(key: tuple[Any, ...], text: str) -> str:
    if len(_MADE) >= _MADE_MAX:
        _MADE.clear()
    _MADE[key] = text
    return text


def below(score: float, top_score: float) -> str:
    """An outscored model's score against the chosen one's."""
    key = (BELOW, score, top_score)
    if score and top_score and (text := _MADE.get(key)) is not None:
        return text
    return _remember(key, f"score {score:.4g} below chosen {top_score:.4g}")


def ties(score: float) -> str:
    """An outscored model that tied the chosen one."""
    key = (TIES, score)
    if score and (text := _MADE.get(key)) is not None:
        return text
    return _remember(
        key, f"score {score:.4g} ties chosen; lost on estimate, slot utilisation or policy order")


def net_against(net: int, top_net: int) -> str:
    """An outscored model's expected net value against the chosen one's."""
    key = (NET_AGAINST, net, top_net)
    if (text := _MADE.get(key)) is not None:
        return text
    return _remember(key, f"expected net {signed_usd(net)} against chosen {signed_usd(top_net)}")


def tier_reserved(tier: int, why: str) -> str:
    """A model above the task's tier ceiling, and why the task could not claim it."""
    return f"tier {tier} reserved: {why}"


def lacks(missing: str) -> str:
    """A model without capabilities the task requires ('a, b', sorted)."""
    return f"lacks capability: {missing}"


def tally(reserved: int, filtered: int) -> str:
    """'; 2 higher-tier models reserved, 1 filtered' (empty when nothing fell)."""
    parts = []
    if reserved:
        parts.append(f"{reserved} higher-tier model{'s' * (reserved != 1)} reserved")
    if filtered:
        parts.append(f"{filtered} filtered")
    return f"; {', '.join(parts)}" if parts else ""


class Figures(Protocol):
    """What the audit row holds of one alternative that its sentence may quote."""

    @property
    def tier(self) -> int:
        """The model's tier."""

    @property
    def score(self) -> float:
        """Its score under the decision's objective."""

    @property
    def net_value_micros(self) -> int | None:
        """Its expected net value, when the task carried a value."""


class StoredFigures(NamedTuple):
    """Figures read back from a row (a `domain.Alternative` is Figures as it stands)."""

    tier: int
    score: float
    net_value_micros: int | None


# Stored codes of alternative sentences -> the rejection each implies. Append only.
CHOSEN_SCORE, CHOSEN_SCORE_EXPLORING, CHOSEN_VALUE, CHOSEN_VALUE_EXPLORING = 1, 2, 3, 4
FALLBACK_FRESH, FALLBACK_SAME = 5, 6
BELOW, TIES, NET_AGAINST = 7, 8, 9
TIER_RESERVED, LACKS = 10, 11
TIER_RESERVED_AGAIN = 12  # the same why as the tier_reserved alternative before it
REJECTION_OF: dict[int, Rejection] = {
    CHOSEN_SCORE: Rejection.CHOSEN, CHOSEN_SCORE_EXPLORING: Rejection.CHOSEN,
    CHOSEN_VALUE: Rejection.CHOSEN, CHOSEN_VALUE_EXPLORING: Rejection.CHOSEN,
    FALLBACK_FRESH: Rejection.FALLBACK, FALLBACK_SAME: Rejection.FALLBACK,
    BELOW: Rejection.OUTSCORED, TIES: Rejection.OUTSCORED, NET_AGAINST: Rejection.OUTSCORED,
    TIER_RESERVED: Rejection.TIER_RESERVED, LACKS: Rejection.CAPABILITY,
    TIER_RESERVED_AGAIN: Rejection.TIER_RESERVED,
}
_CHOSEN = {CHOSEN_SCORE: (False, False), CHOSEN_SCORE_EXPLORING: (False, True),
           CHOSEN_VALUE: (True, False), CHOSEN_VALUE_EXPLORING: (True, True)}


def alternative_reason(code: int, args: Sequence[Any], own: Figures, top: Figures | None,
                       earlier_why: str | None = None) -> str:
    """The sentence stored as `code` and `args`, for an alternative of a decision chose `top`.

    `earlier_why`: what the last tier_reserved alternative before this one said after
    'reserved: '. ValueError when the code is unknown or its figures are missing.
    """
    if code == TIER_RESERVED_AGAIN:
        if earlier_why is None:
            raise ValueError("a repeated tier reservation without an earlier one")
        return tier_reserved(own.tier, earlier_why)
    if code in _CHOSEN:
        return chosen(*_CHOSEN[code])
    if code in (FALLBACK_FRESH, FALLBACK_SAME):
        return fallback(int(args[0]), code == FALLBACK_FRESH)
    if code in (TIER_RESERVED, LACKS):
        text = str(args[0])
        return tier_reserved(own.tier, text) if code == TIER_RESERVED else lacks(text)
    if code == TIES:
        return ties(own.score)
    if top is None or code not in (BELOW, NET_AGAINST):
        raise ValueError(f"cannot rebuild reason code {code!r}")
    if code == BELOW:
        return below(own.score, top.score)
    if own.net_value_micros is None or top.net_value_micros is None:
        raise ValueError("a net-value reason without net values")
    return net_against(own.net_value_micros, top.net_value_micros)


_CHOSEN_CODE = {chosen(*flags): code for code, flags in _CHOSEN.items()}
_FRESH, _SAME = fallback(0, True)[len("fallback 0"):], fallback(0, False)[len("fallback 0"):]
_LACKS = lacks("")
_NO_FIGURES: list[Any] = []


def alternative_code(rejection: Rejection, reason: str, own: Figures, top: Figures | None,
                     earlier_why: str | None = None) -> tuple[int, list[Any]] | None:
    """The code and figures that rebuild this sentence exactly, or None to store it as is.

    Each branch recognises the one code `core/decide.py` would have written and checks it
    against the very function `alternative_reason` rebuilds it with (runs on every Route).
    """
    if rejection is Rejection.CHOSEN:
        code = _CHOSEN_CODE.get(reason)
        return None if code is None else (code, _NO_FIGURES)
    if rejection is Rejection.FALLBACK:
        fresh = reason.endswith(_FRESH)
        n = reason[len("fallback "):-len(_FRESH if fresh else _SAME)]
        if n.isdigit() and fallback(int(n), fresh) == reason:
            return FALLBACK_FRESH if fresh else FALLBACK_SAME, [int(n)]
        return None
    if rejection is Rejection.OUTSCORED:
        return _outscored(reason, own, top)
    if rejection is Rejection.TIER_RESERVED:
        head = tier_reserved(own.tier, "")
        if not reason.startswith(head):
            return None
        why = reason[len(head):]
        return (TIER_RESERVED_AGAIN, _NO_FIGURES) if why == earlier_why else (TIER_RESERVED, [why])
    if rejection is Rejection.CAPABILITY and reason.startswith(_LACKS):
        return LACKS, [reason[len(_LACKS):]]
    return None


def _outscored(reason: str, own: Figures, top: Figures | None) -> tuple[int, list[Any]] | None:
    if top is not None and reason.startswith("expected net"):
        if own.net_value_micros is None or top.net_value_micros is None:
            return None
        code, text = NET_AGAINST, net_against(own.net_value_micros, top.net_value_micros)
    elif top is not None and own.score < top.score:
        code, text = BELOW, below(own.score, top.score)
    else:
        code, text = TIES, ties(own.score)
    return (code, _NO_FIGURES) if text == reason else None


def reserved_why(code: int, args: Sequence[Any], earlier_why: str | None) -> str | None:
    """What a tier_reserved sentence said after 'reserved: ' (else `earlier_why`), in order."""
    if code == TIER_RESERVED:
        return str(args[0])
    return earlier_why


class Routed(NamedTuple):
    """What the audit row holds that a routed decision's sentence quotes."""

    model: str
    provider: str
    tier: int
    task_type: str
    policy: str
    objective: str
    score: float
    cost_micros: int


def routed(r: Routed, reserved: int, filtered: int) -> str:
    """A routed decision, chosen by its objective's score: what, where, on what grounds."""
    key = (ROUTED, r, reserved, filtered)
    if r.score and (text := _MADE.get(key)) is not None:
        return text
    return _remember(key, (
        f"{r.model} ({r.provider}, tier {r.tier}) for {r.task_type} under policy {r.policy}, "
        f"objective {r.objective}: best score {r.score:.4g} at est. {usd(r.cost_micros)}"
        f"{tally(reserved, filtered)}."))


ROUTED = 1  # stored code of `routed`; append others after it


def routed_reason(code: int, args: Sequence[Any], r: Routed) -> str:
    """The decision sentence stored as `code` and `args`; ValueError for an unknown code."""
    if code != ROUTED:
        raise ValueError(f"cannot rebuild decision reason code {code!r}")
    return routed(r, int(args[0]), int(args[1]))


def routed_code(reason: str, r: Routed, reserved: int,
                filtered: int) -> tuple[int, list[Any]] | None:
    """The code and figures that rebuild the decision's sentence exactly, or None."""
    if routed(r, reserved, filtered) == reason:
        return ROUTED, [reserved, filtered]
    return None
