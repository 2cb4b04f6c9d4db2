"""Models an operator took out of routing: a capability filter the decision lists as `paused`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType

from routing_sidecar.core.health import clock
from routing_sidecar.domain import ModelSpec, Rejection, Task
from routing_sidecar.ports import PauseRecord

Verdict = tuple[Rejection, str] | None


class ModelPauses:
    """The paused models; swapped whole on every change, so a decision reads one version."""

    def __init__(self, pauses: Iterable[PauseRecord] = ()) -> None:
        self._by_model: Mapping[str, PauseRecord] = MappingProxyType({p.model: p for p in pauses})

    @property
    def paused(self) -> Mapping[str, PauseRecord]:
        """Paused models by name."""
        return self._by_model

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

    def as_filter(self) -> Callable[[Task, ModelSpec, int], Verdict]:
        """A selection capability filter over the pauses as they stand now."""
        by_model = self._by_model

        def paused_filter(task: Task, model: ModelSpec, cost: int) -> Verdict:
            pause = by_model.get(model.name)
            if pause is None:
                return None
            note = f": {pause.reason}" if pause.reason else ""
            return Rejection.PAUSED, f"paused by an operator since {clock(pause.paused_at)}{note}"

        return paused_filter
