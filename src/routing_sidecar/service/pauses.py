"""Models an operator took out of routing: the records behind RoutingState.paused."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from routing_sidecar.core.health import clock
from routing_sidecar.ports import PauseRecord


def pause_reason(pause: PauseRecord) -> str:
    """What a paused model's candidate says ("paused: by an operator since 12:03:10Z: ...")."""
    note = f": {pause.reason}" if pause.reason else ""
    return f"by an operator since {clock(pause.paused_at)}{note}"


class ModelPauses:
    """The paused models by name; swapped whole on every change."""

    def __init__(self, pauses: Iterable[PauseRecord] = ()) -> None:
        self._by_model: Mapping[str, PauseRecord] = MappingProxyType({p.model: p for p in pauses})

    @property
    def paused(self) -> Mapping[str, PauseRecord]:
        """Paused models by name."""
        return self._by_model

    def reasons(self) -> dict[str, str]:
        """Each paused model with the reason its candidate is given, for RoutingState.paused."""
        return {name: pause_reason(p) for name, p in self._by_model.items()}

    def set(self, pause: PauseRecord) -> None:
        """Take a model out of routing (replacing an earlier pause of it)."""
        self._by_model = MappingProxyType({**self._by_model, pause.model: pause})

    def clear(self, model: str) -> bool:
        """Put a model back into routing; False when it was not paused."""
        if model not in self._by_model:
            return False
        self._by_model = MappingProxyType(
            {name: p for name, p in self._by_model.items() if name != model}
        )
        return True
