"""The observer's own tallies: totals by key, attributes made once, micro-USD reported in USD."""

from __future__ import annotations

from opentelemetry.metrics import CallbackOptions

from routing_sidecar.grpc_api.tallies import Tally


def test_totals_by_key_with_their_attributes_made_once() -> None:
    made: list[tuple[str, str]] = []

    def labels(key: tuple[str, str]) -> dict[str, str]:
        made.append(key)
        return {"model": key[0], "provider": key[1]}

    t: Tally[tuple[str, str]] = Tally(labels)
    for key, n in ((("a", "x"), 2), (("b", "y"), 1), (("a", "x"), 3), (("b", "y"), 0)):
        t.add(key, n)
    first = {tuple(o.attributes.items()): o.value for o in t.observe(CallbackOptions())}
    assert first == {(("model", "a"), ("provider", "x")): 5,
                     (("model", "b"), ("provider", "y")): 1}
    t.add(("a", "x"), 1)
    again = {o.attributes["model"]: o.value for o in t.observe(CallbackOptions())}
    assert again == {"a": 6, "b": 1}  # cumulative: what an observable counter reports
    assert made == [("a", "x"), ("b", "y")]


def test_a_scaled_tally_adds_whole_units_and_reports_them_divided() -> None:
    t: Tally[str] = Tally(lambda k: {"policy": k}, scale=1_000_000)
    for _ in range(10):
        t.add("p", 100_000)  # 0.1 USD ten times: exact as micro-USD
    (o,) = t.observe(CallbackOptions())
    assert o.value == 1.0 and o.attributes == {"policy": "p"}


def test_nothing_added_nothing_observed() -> None:
    assert Tally(lambda k: {"k": k}).observe(CallbackOptions()) == []
