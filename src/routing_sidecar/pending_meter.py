"""A meter whose instruments keep what they measure until the real meter arrives.

The sidecar starts serving before the OpenTelemetry SDK and prometheus_client have loaded
(telemetry.py builds the metric pipeline on a thread once gRPC serves): what the first Routes
count or time meanwhile is held here, in order, and handed to the real instruments when
`PendingMeter.attach` creates them. Only the OpenTelemetry API is used.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackT


class PendingInstrument:
    """Stands for one instrument: holds measurements, then passes them on once attached.

    After `attach` its `add` / `record` / `set` are the real instrument's own bound methods,
    so a measurement costs what it costs on the real instrument.
    """

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._held: list[tuple[str, Any, dict[str, Any] | None, Any]] = []
        self._real: Any = None

    def _measure(self, method: str, amount: Any, attributes: Any, context: Any) -> None:
        with self._lock:
            if self._real is None:  # copied: a caller may reuse its attribute dict
                self._held.append((method, amount, dict(attributes) if attributes else None,
                                   context))
                return
        getattr(self._real, method)(amount, attributes, context)

    def add(self, amount: Any, attributes: Any = None, context: Any = None) -> None:
        """A counter's add."""
        self._measure("add", amount, attributes, context)

    def record(self, amount: Any, attributes: Any = None, context: Any = None) -> None:
        """A histogram's record."""
        self._measure("record", amount, attributes, context)

    def set(self, amount: Any, attributes: Any = None, context: Any = None) -> None:
        """A gauge's set."""
        self._measure("set", amount, attributes, context)

    def attach(self, real: Any) -> None:
        """Replay what was held into `real`, then hand every later call straight to it."""
        for method, amount, attributes, context in self._held:
            getattr(real, method)(amount, attributes, context)
        self._held.clear()
        self._real = real
        for method in ("add", "record", "set"):
            if hasattr(real, method):  # shadows the holding method on this instance
                setattr(self, method, getattr(real, method))


class PendingMeter(metrics.Meter):
    """A Meter whose instruments are made on the real meter once `attach` gives it."""

    def __init__(self, name: str, version: str | None = None) -> None:
        super().__init__(name, version)
        self._lock = threading.Lock()
        self._made: list[tuple[str, tuple[Any, ...], dict[str, Any], PendingInstrument]] = []
        self._real: metrics.Meter | None = None

    @property
    def attached(self) -> bool:
        """Whether the real meter has arrived."""
        return self._real is not None

    def attach(self, real: metrics.Meter) -> None:
        """Make every instrument on `real` and pass on what each one held, in order."""
        with self._lock:
            for method, args, kwargs, pending in self._made:
                pending.attach(getattr(real, method)(*args, **kwargs))
            self._made.clear()
            self._real = real

    def _make(self, method: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            if self._real is None:
                pending = PendingInstrument(self._lock)
                self._made.append((method, args, kwargs, pending))
                return pending
        return getattr(self._real, method)(*args, **kwargs)

    # The Meter API: each one made now on the real meter, or when it arrives.

    def create_counter(self, name: str, unit: str = "", description: str = "") -> Any:
        """A Counter."""
        return self._make("create_counter", name, unit, description)

    def create_up_down_counter(self, name: str, unit: str = "", description: str = "") -> Any:
        """An UpDownCounter."""
        return self._make("create_up_down_counter", name, unit, description)

    def create_histogram(self, name: str, unit: str = "", description: str = "",
                         *, explicit_bucket_boundaries_advisory: Sequence[float] | None = None,
                         ) -> Any:
        """A Histogram."""
        return self._make("create_histogram", name, unit, description,
                          explicit_bucket_boundaries_advisory=explicit_bucket_boundaries_advisory)

    def create_gauge(self, name: str, unit: str = "", description: str = "") -> Any:
        """A synchronous Gauge."""
        return self._make("create_gauge", name, unit, description)

    def create_observable_counter(self, name: str, callbacks: Sequence[CallbackT] | None = None,
                                  unit: str = "", description: str = "") -> Any:
        """An ObservableCounter: its callbacks are first read once attached."""
        return self._make("create_observable_counter", name, callbacks, unit, description)

    def create_observable_gauge(self, name: str, callbacks: Sequence[CallbackT] | None = None,
                                unit: str = "", description: str = "") -> Any:
        """An ObservableGauge: its callbacks are first read once attached."""
        return self._make("create_observable_gauge", name, callbacks, unit, description)

    def create_observable_up_down_counter(
        self, name: str, callbacks: Sequence[CallbackT] | None = None, unit: str = "",
        description: str = "",
    ) -> Any:
        """An ObservableUpDownCounter: its callbacks are first read once attached."""
        return self._make("create_observable_up_down_counter", name, callbacks, unit,
                          description)

