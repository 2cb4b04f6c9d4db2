"""Decision ids: the same 32 hex digits as ever, unguessable, and in the order they were made."""

from __future__ import annotations

import time

from routing_sidecar.service.routing import new_decision_id


def test_ids_are_32_lowercase_hex_digits_and_distinct() -> None:
    ids = [new_decision_id() for _ in range(2000)]
    assert all(len(i) == 32 and int(i, 16) >= 0 and i == i.lower() for i in ids)
    assert len(set(ids)) == len(ids)


def test_ids_made_later_sort_after_earlier_ones() -> None:
    first = new_decision_id()
    time.sleep(0.002)  # the next millisecond at least
    second = new_decision_id()
    assert first < second
    assert int(first[:12], 16) <= time.time_ns() // 1_000_000


def test_the_random_part_differs_within_one_millisecond() -> None:
    # 80 random bits after the time: ids made in the same millisecond share only the prefix.
    ids = [new_decision_id() for _ in range(50)]
    tails = {i[12:] for i in ids}
    assert len(tails) == len(ids)
    assert len({i[:12] for i in ids}) < len(ids)
