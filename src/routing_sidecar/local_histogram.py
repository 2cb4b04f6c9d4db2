"""A histogram aggregated in the process: a bucket increment per measurement, read at export.

The OpenTelemetry SDK's `Histogram.record` copies, checks and hashes the attributes of every
measurement and takes a lock in three layers: 12 to 40 µs a call, the largest single cost of a
Route outside its own work (bench/latency/phases.py, "count"). Here a measurement is a dict
lookup by a key the caller already holds, a bisect and a few additions under one lock.
`telemetry.py` turns the points into the SDK's histogram data when a reader collects, so
Prometheus and OTLP see the metric as before: same name, unit, buckets and labels.

Each reader that wants deltas gets a `Stream` of its own, emptied at each of its reads; the
cumulative one lives as long as the histogram. Only the standard library is used.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Point:
    """What one attribute set measured in a stream's window."""

    attributes: dict[str, str]
    bucket_counts: tuple[int, ...]
    count: int
    sum: float
    min: float
    max: float


class _Tally:
    __slots__ = ("attributes", "count", "counts", "max", "min", "sum")

    def __init__(self, attributes: dict[str, str], buckets: int) -> None:
        self.attributes = attributes
        self.counts = [0] * buckets
        self.count = 0
        self.sum = 0.0
        self.min = float("inf")
        self.max = float("-inf")


class Stream:
    """The measurements since a start: for ever (cumulative) or since the last read (delta)."""

    def __init__(self, buckets: int, *, delta: bool) -> None:
        self.delta = delta
        self.start_ns = time.time_ns()
        self._buckets = buckets
        self._tallies: dict[Hashable, _Tally] = {}

    def _add(self, key: K, attributes: Callable[[K], dict[str, str]], index: int,
             value: float) -> None:
        tally = self._tallies.get(key)
        if tally is None:
            tally = self._tallies[key] = _Tally(attributes(key), self._buckets)
        tally.counts[index] += 1
        tally.count += 1
        tally.sum += value
        tally.min = min(tally.min, value)
        tally.max = max(tally.max, value)

    def _read(self) -> tuple[int, list[Point]]:
        points = [Point(t.attributes, tuple(t.counts), t.count, t.sum, t.min, t.max)
                  for t in self._tallies.values()]
        start = self.start_ns
        if self.delta:
            self._tallies = {}
            self.start_ns = time.time_ns()
        return start, points


class LocalHistogram:
    """One histogram metric: explicit bucket bounds, points keyed by the caller's labels."""

    def __init__(self, name: str, unit: str, description: str,
                 bounds: Sequence[float]) -> None:
        self.name, self.unit, self.description = name, unit, description
        self.bounds = tuple(bounds)
        self._lock = threading.Lock()  # readers collect on their own threads
        self._streams = [Stream(len(self.bounds) + 1, delta=False)]

    def record(self, value: float, key: K, attributes: Callable[[K], dict[str, str]]) -> None:
        """Count `value` for the labels `key` stands for (`attributes(key)` makes them, once).

        Negative and non-finite values are dropped, as the SDK's histogram drops them.
        """
        if not 0.0 <= value < float("inf"):
            return
        # Bucket i holds bounds[i-1] < value <= bounds[i]; the last one everything above.
        index = bisect.bisect_left(self.bounds, value)
        with self._lock:
            for stream in self._streams:
                stream._add(key, attributes, index, value)

    def cumulative(self) -> Stream:
        """The stream of every measurement since the histogram was made."""
        return self._streams[0]

    def delta_stream(self) -> Stream:
        """A new stream of its own for a reader that exports deltas, starting now."""
        stream = Stream(len(self.bounds) + 1, delta=True)
        with self._lock:
            self._streams.append(stream)
        return stream

    def read(self, stream: Stream) -> tuple[int, list[Point]]:
        """(window start in ns since the epoch, its points); a delta stream starts again."""
        with self._lock:
            return stream._read()


Reading = tuple[LocalHistogram, int, list[Point]]


class Feed:
    """The local histograms of one sidecar, and each reader's streams of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._histograms: list[LocalHistogram] = []
        self._readers: list[tuple[bool, dict[int, Stream]]] = []

    def add(self, histogram: LocalHistogram) -> None:
        """Export `histogram` through every reader, those made so far and those to come."""
        with self._lock:
            self._histograms.append(histogram)
            for delta, streams in self._readers:
                streams[id(histogram)] = _stream(histogram, delta)

    def reader(self, *, delta: bool) -> Callable[[], list[Reading]]:
        """What one reader calls at each collection: every histogram's window and points."""
        streams: dict[int, Stream] = {}
        with self._lock:
            for histogram in self._histograms:
                streams[id(histogram)] = _stream(histogram, delta)
            self._readers.append((delta, streams))

        def read() -> list[Reading]:
            with self._lock:
                histograms = list(self._histograms)
            return [(h, *h.read(streams[id(h)])) for h in histograms]

        return read


def _stream(histogram: LocalHistogram, delta: bool) -> Stream:
    return histogram.delta_stream() if delta else histogram.cumulative()
