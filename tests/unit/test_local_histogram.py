"""The in-process histogram behind routing.decision.duration: buckets, windows, readers."""

from __future__ import annotations

import math
import random
import threading

from routing_sidecar.local_histogram import Feed, LocalHistogram

BOUNDS = (0.001, 0.01, 0.1)


def _labels(key: str) -> dict[str, str]:
    return {"policy": key}


def _hist() -> LocalHistogram:
    return LocalHistogram("d", "s", "a duration", BOUNDS)


def test_a_value_on_a_bound_belongs_to_that_bucket_and_the_last_takes_the_rest() -> None:
    h = _hist()
    for v in (0.0, 0.001, 0.0011, 0.01, 0.1, 0.10001, 7.0):
        h.record(v, "a", _labels)
    _start, (p,) = h.read(h.cumulative())
    assert p.attributes == {"policy": "a"}
    assert p.bucket_counts == (2, 2, 1, 2)
    assert (p.count, p.min, p.max) == (7, 0.0, 7.0)
    assert math.isclose(p.sum, 0.0 + 0.001 + 0.0011 + 0.01 + 0.1 + 0.10001 + 7.0)


def test_negative_and_non_finite_values_are_dropped_as_the_sdk_drops_them() -> None:
    h = _hist()
    for v in (-0.5, math.nan, math.inf):
        h.record(v, "a", _labels)
    assert h.read(h.cumulative())[1] == []


def test_each_key_makes_its_labels_once_and_keeps_its_own_point() -> None:
    made: list[str] = []

    def labels(key: str) -> dict[str, str]:
        made.append(key)
        return {"policy": key}

    h = _hist()
    for k in ("a", "b", "a", "a", "b"):
        h.record(0.005, k, labels)
    _start, points = h.read(h.cumulative())
    assert made == ["a", "b"]
    assert {p.attributes["policy"]: p.count for p in points} == {"a": 3, "b": 2}


def test_a_delta_stream_starts_again_at_each_read_the_cumulative_one_never() -> None:
    h = _hist()
    feed = Feed()
    feed.add(h)
    cumulative, delta = feed.reader(delta=False), feed.reader(delta=True)
    h.record(0.005, "a", _labels)
    (_, c_start, (c1,)), = cumulative()
    (_, d_start1, (d1,)), = delta()
    h.record(0.05, "a", _labels)
    h.record(0.5, "a", _labels)
    (_, c_start2, (c2,)), = cumulative()
    (_, d_start2, (d2,)), = delta()
    assert (c1.count, c2.count) == (1, 3) and c_start2 == c_start
    assert c2.bucket_counts == (0, 1, 1, 1)
    assert (d1.count, d2.count) == (1, 2) and d_start2 > d_start1
    assert d2.bucket_counts == (0, 0, 1, 1) and (d2.min, d2.max) == (0.05, 0.5)
    (_, _, empty), = delta()
    assert empty == []


def test_a_histogram_added_after_a_reader_is_read_by_it_and_by_later_ones() -> None:
    feed = Feed()
    early = feed.reader(delta=True)
    h = _hist()
    feed.add(h)
    h.record(0.002, "a", _labels)
    late = feed.reader(delta=False)
    assert [r[2][0].count for r in early()] == [1]
    assert [r[2][0].count for r in late()] == [1]  # the cumulative stream saw it first


def test_counts_stay_whole_while_a_reader_collects_from_another_thread() -> None:
    h = _hist()
    feed = Feed()
    feed.add(h)
    read = feed.reader(delta=True)
    seen: list[int] = []
    stop = threading.Event()

    def collect() -> None:
        while not stop.is_set():
            for _h, _start, points in read():
                for p in points:
                    assert sum(p.bucket_counts) == p.count
                    seen.append(p.count)

    reader = threading.Thread(target=collect)
    reader.start()
    rng = random.Random(3)
    for _ in range(20_000):
        h.record(rng.random() / 5, "a", _labels)
    stop.set()
    reader.join()
    seen += [p.count for _h, _s, points in read() for p in points]
    assert sum(seen) == 20_000  # every measurement in exactly one window
    _start, (total,) = h.read(h.cumulative())
    assert total.count == sum(total.bucket_counts) == 20_000
