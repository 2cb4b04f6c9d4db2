"""Hostile input over a real server: undecodable bodies, newline ids, label variants, caps."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from routing_sidecar.app import Sidecar
from routing_sidecar.config import parse_config
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc
from tests.conftest import config_dict

ROUTER = "/routing_sidecar.v1.Router"
GARBAGE = [
    b"\xff\xff\xff",  # a varint that never ends
    b"\x0a\x05ab",  # field 1 with length 5, and two bytes follow
    b"\x0f",  # wire type 7 does not exist
    b"\x00",  # field number 0 does not exist
]
UNARY = [("Route", "RouteRequest"), ("ReportOutcome", "Outcome"),
         ("GetBudgetStatus", "BudgetQuery"), ("GetRoutingStats", "StatsQuery")]


def bad_utf8(message: str) -> bytes:
    """A body whose first string field holds bytes that are not UTF-8."""
    field = next(f for f in getattr(pb, message).DESCRIPTOR.fields
                 if f.type == f.TYPE_STRING)
    return bytes([field.number << 3 | 2, 2, 0xC3, 0x28])


def req(**kw: Any) -> pb.RouteRequest:
    kw.setdefault("task_id", "t-1")
    kw.setdefault("task_type", "fix_bug")
    kw.setdefault("estimated_input_tokens", 2000)
    kw.setdefault("max_output_tokens", 1000)
    return pb.RouteRequest(**kw)


Car = Callable[..., Awaitable[Sidecar]]


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Car]:
    """Start sidecars on the shipped config with `limits` and `budgets` overridden."""
    cars: list[Sidecar] = []

    async def start(limits: dict[str, Any] | None = None,
                    budgets: list[dict[str, Any]] | None = None) -> Sidecar:
        raw = config_dict(tmp_path)
        if limits is not None:
            raw["limits"] = limits
        if budgets is not None:
            raw["budgets"] = budgets
        car = Sidecar(parse_config(yaml.safe_dump(raw), "test"))
        await car.start()
        cars.append(car)
        return car

    yield start
    for car in cars:
        await car.stop()


def rows(car: Sidecar) -> tuple[int, int, int]:
    """(decisions, selections, ledger rows) in the store, read on a connection of our own."""
    path = car.cfg.store.path
    with sqlite3.connect(path) as db:
        return tuple(
            db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("model_routing_decisions", "model_selections", "budget_ledger"))


async def books(car: Sidecar, stub: pb_grpc.RouterStub) -> tuple[Any, ...]:
    """Everything a refused request must leave alone: budget status and the store's rows."""
    status = await stub.GetBudgetStatus(pb.BudgetQuery())
    return status.SerializeToString(deterministic=True), rows(car)


async def serving(channel: grpc.aio.Channel) -> bool:
    health = health_pb2_grpc.HealthStub(channel)
    resp = await health.Check(health_pb2.HealthCheckRequest(service="routing_sidecar.v1.Router"))
    return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


# -- undecodable bodies ----------------------------------------------------------------------


@pytest.mark.parametrize(("method", "message"), UNARY)
async def test_undecodable_body_unary_is_invalid_argument_without_internals(
    sidecar: Sidecar, channel: grpc.aio.Channel, stub: pb_grpc.RouterStub,
    caplog: pytest.LogCaptureFixture, method: str, message: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    await stub.Route(req(task_id="before"))
    before = await books(sidecar, stub)
    call = channel.unary_unary(f"{ROUTER}/{method}")
    for body in [*GARBAGE, bad_utf8(message)]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(body)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, body
        assert err.value.details() == f"request: not a valid {message}"
    assert await books(sidecar, stub) == before
    assert await serving(channel)
    no_tracebacks(caplog)


async def test_undecodable_body_on_complete_is_invalid_argument(
    sidecar: Sidecar, channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    call = channel.unary_stream(f"{ROUTER}/Complete")
    for body in [*GARBAGE, bad_utf8("CompleteRequest")]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in call(body):
                pass
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details() == "request: not a valid CompleteRequest"
    assert rows(sidecar) == (0, 0, 0)
    no_tracebacks(caplog)


async def test_undecodable_body_on_route_stream_names_its_index(
    sidecar: Sidecar, channel: grpc.aio.Channel, stub: pb_grpc.RouterStub,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    # Lockstep (read each answer before the next write), so that the status seen is the
    # server's: a grpc.aio client still writing when the server ends the stream may report
    # INTERNAL "Internal error from Core" instead (grpc#36066).
    call = channel.stream_stream(f"{ROUTER}/RouteStream",
                                 response_deserializer=pb.Decision.FromString)()
    bodies = [req(task_id="a").SerializeToString(), req(task_id="b").SerializeToString(),
              GARBAGE[0], req(task_id="never").SerializeToString()]
    got = []
    with pytest.raises(grpc.aio.AioRpcError):
        for body in bodies:
            await call.write(body)
            got.append((await call.read()).task_id)
    assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await call.details() == "stream message 2: request: not a valid RouteRequest"
    assert got == ["a", "b"]
    # The two answered decisions were written; the refused message nothing.
    assert rows(sidecar)[0] == 2
    assert await serving(channel)
    no_tracebacks(caplog)


async def test_undecodable_body_first_on_route_stream(
    sidecar: Sidecar, channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    stream = channel.stream_stream(f"{ROUTER}/RouteStream")
    for body in [*GARBAGE, bad_utf8("RouteRequest")]:
        call = stream()  # written then read, never written after its end: see above
        await call.write(body)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call.read()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details() == "stream message 0: request: not a valid RouteRequest"
    assert rows(sidecar) == (0, 0, 0)
    no_tracebacks(caplog)


async def test_cancelled_route_stream_is_not_an_error(
    sidecar: Sidecar, channel: grpc.aio.Channel, stub: pb_grpc.RouterStub,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    call = stub.RouteStream()
    await call.write(req(task_id="one"))
    assert (await call.read()).task_id == "one"
    call.cancel()
    assert (await stub.Route(req(task_id="after"))).task_id == "after"
    assert await serving(channel)
    no_tracebacks(caplog)


# -- identifiers -----------------------------------------------------------------------------


OK, FAILED = pb.ATTEMPT_STATUS_SUCCESS, pb.ATTEMPT_STATUS_TRANSIENT_ERROR


def _route(**kw: Any) -> tuple[str, Any]:
    return "Route", req(**kw)


NEWLINE_FIELDS: list[tuple[str, tuple[str, Any]]] = [
    ("task_id", _route(task_id="t-1\n")),
    ("task_type", _route(task_type="fix_bug\n")),
    ("labels", _route(labels={"project\n": "alpha"})),
    ("cache_key", _route(cache_key="k-1\n")),
    ("policy", _route(policy="code\n")),
    ("exclude_models[0]", _route(exclude_models=["gpt-5\n"])),
    ("requires.capabilities[0]", _route(requires=pb.Requirements(capabilities=["code\n"]))),
    ("available_slots[0].slot_id",
     _route(available_slots=[pb.Slot(slot_id="w1\n", model="gpt-5")])),
    ("available_slots[0].model",
     _route(available_slots=[pb.Slot(slot_id="w1", model="gpt-5\n")])),
    ("labels[project]", _route(labels={"project": "alpha\n"})),
    ("labels[lane]", _route(labels={"lane": "fast\n"})),
    ("decision_id", ("ReportOutcome", pb.Outcome(decision_id="d" * 32 + "\n"))),
    ("attempts[0].model", ("ReportOutcome", pb.Outcome(
        decision_id="d1", attempts=[pb.Attempt(model="gpt-5\n", status=OK)]))),
    ("attempts[0].provider", ("ReportOutcome", pb.Outcome(
        decision_id="d1", attempts=[pb.Attempt(model="gpt-5", provider="openai\n", status=OK)]))),
    ("attempts[0].error_type", ("ReportOutcome", pb.Outcome(
        decision_id="d1", attempts=[pb.Attempt(model="gpt-5", status=FAILED, error_type="x\n")]))),
    ("scopes[0]", ("GetBudgetStatus", pb.BudgetQuery(scopes=["project:alpha\n"]))),
    ("label_keys[0]", ("GetRoutingStats", pb.StatsQuery(label_keys=["project\n"]))),
]


def _attempt(**kw: Any) -> tuple[str, Any]:
    return "ReportOutcome", pb.Outcome(decision_id="d1", attempts=[
        pb.Attempt(model="gpt-5", status=OK, **kw)])


BAD_TIMES: list[tuple[str, tuple[str, Any]]] = [
    ("attempts[0].started_at", _attempt(started_at=Timestamp(seconds=-5))),
    ("attempts[0].started_at", _attempt(started_at=Timestamp(seconds=2**62))),
    ("attempts[0].started_at", _attempt(started_at=Timestamp(seconds=1, nanos=-1))),
    ("attempts[0].started_at", _attempt(started_at=Timestamp(seconds=1, nanos=10**9))),
    ("attempts[0].duration", _attempt(duration=Duration(seconds=10**12))),
    ("attempts[0].duration", _attempt(duration=Duration(seconds=0, nanos=-1))),
    ("attempts[0].duration", _attempt(duration=Duration(seconds=5, nanos=2 * 10**9))),
    ("attempts[0].retry_after", _attempt(retry_after=Duration(seconds=-1))),
]


@pytest.mark.parametrize(("field", "call"), NEWLINE_FIELDS, ids=[f for f, _ in NEWLINE_FIELDS])
async def test_trailing_newline_ids_refused(
    sidecar: Sidecar, stub: pb_grpc.RouterStub, field: str, call: tuple[str, Any],
) -> None:
    method, message = call
    before = await books(sidecar, stub)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await getattr(stub, method)(message)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(f"{field}:"), err.value.details()
    assert await books(sidecar, stub) == before


async def test_attempt_times_out_of_range_refused(
    sidecar: Sidecar, stub: pb_grpc.RouterStub,
) -> None:
    # Times the audit trail could hold but an exported attempt span could not (OTLP encodes
    # unsigned 64-bit nanoseconds): one of these would lose a whole batch of traces.
    before = await books(sidecar, stub)
    for field, (method, message) in BAD_TIMES:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await getattr(stub, method)(message)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.value.details() or "").startswith(f"{field}:"), err.value.details()
    assert await books(sidecar, stub) == before


async def test_label_values_with_control_characters_refused(
    sidecar: Sidecar, stub: pb_grpc.RouterStub,
) -> None:
    before = await books(sidecar, stub)
    for value in ["alpha\x00", "al\tpha", "alpha\r", "alpha\u2028", "alpha\u200b", "\u202ealpha",
                  "\x7f"]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Route(req(labels={"layer": value}))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.value.details() or "").startswith("labels[layer]: must not contain control")
    assert await books(sidecar, stub) == before


LISTS: list[tuple[str, int, Callable[[int], dict[str, Any]]]] = [
    ("labels", 32, lambda n: {"labels": {f"k{i}": "v" for i in range(n)}}),
    ("exclude_models", 256, lambda n: {"exclude_models": [f"m{i}" for i in range(n)]}),
    ("available_slots", 256, lambda n: {"available_slots": [
        pb.Slot(slot_id=f"s{i}", model="gpt-5-mini") for i in range(n)]}),
    ("requires.capabilities", 32, lambda n: {"requires": pb.Requirements(
        capabilities=[f"c{i}" for i in range(n)])}),
]


@pytest.mark.parametrize(("field", "limit", "fields"), LISTS, ids=[f for f, _, _ in LISTS])
async def test_lists_past_their_bound_are_refused_by_name(
    sidecar: Sidecar, stub: pb_grpc.RouterStub, field: str, limit: int,
    fields: Callable[[int], dict[str, Any]],
) -> None:
    before = await books(sidecar, stub)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Route(req(**fields(limit + 1)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(
        f"{field}: has {limit + 1} entries; at most {limit} allowed"), err.value.details()
    assert await books(sidecar, stub) == before
    try:  # at the bound: refused for something else (a made-up capability), never the count
        await stub.Route(req(**fields(limit), dry_run=True))
    except grpc.aio.AioRpcError as exc:
        assert not (exc.details() or "").startswith(f"{field}: has"), exc.details()


async def test_free_text_label_values_are_trimmed_and_kept(
    sidecar: Sidecar, stub: pb_grpc.RouterStub,
) -> None:
    d = await stub.Route(req(labels={"team": "  Café Noir  "}))
    assert d.status == pb.DECISION_STATUS_ROUTED
    record = await sidecar.store.get_decision(d.decision_id)  # type: ignore[union-attr]
    assert record is not None and '"team":"Café Noir"' in record.labels_json.replace(" :", ":")


# -- label variants and budget scopes --------------------------------------------------------

WIDE = "\uff41\uff4c\uff50\uff48\uff41"  # alpha in fullwidth letters
# A budget written with another case in the file: folded, it is the scope requests meet.
ALPHA_BUDGET = [{"scope": "project:Alpha", "period": "day", "limit_usd": 100},
                {"scope": "project:*", "period": "month", "limit_usd": 1000}]


async def test_label_variants_share_one_budget_scope(make: Car) -> None:
    car = await make(budgets=ALPHA_BUDGET)
    async with grpc.aio.insecure_channel(car.address) as ch:
        stub = pb_grpc.RouterStub(ch)
        shared, refused = [], []
        for i, value in enumerate(["alpha", "ALPHA", "alpha ", " Alpha", "aLpHa\t ", "alpha\n",
                                   "alpha\x00", WIDE, "al pha", "alpha*"]):
            try:
                d = await stub.Route(req(task_id=f"v{i}", labels={"project": value}))
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert (exc.details() or "").startswith("labels[project]:")
                refused.append(value)
                continue
            assert {b.scope for b in d.budgets} >= {"project:alpha"}
            assert not {b.scope for b in d.budgets} & {f"project:{value}"} - {"project:alpha"}
            shared.append(d.estimated_cost_micros)
        assert refused == ["aLpHa\t ", "alpha\n", "alpha\x00", WIDE, "al pha", "alpha*"]
        status = await stub.GetBudgetStatus(pb.BudgetQuery(scopes=["project:*"]))
        projects = {(b.scope, b.period) for b in status.budgets}
        assert projects == {("project:alpha", pb.BUDGET_PERIOD_DAY),
                            ("project:alpha", pb.BUDGET_PERIOD_MONTH)}
        # Every accepted variant's reservation landed on the one scope: none escaped.
        assert {b.reserved_micros for b in status.budgets} == {sum(shared)}
        assert len(shared) == 4


async def test_label_variants_exhaust_the_same_budget(make: Car) -> None:
    # Room for a few decisions: the variants cannot buy more between them.
    car = await make(budgets=[{"scope": "project:alpha", "period": "day", "limit_usd": 0.01}])
    async with grpc.aio.insecure_channel(car.address) as ch:
        stub = pb_grpc.RouterStub(ch)
        decisions = [
            await stub.Route(req(task_id=f"x{i}", policy="code", labels={"project": v}))
            for i, v in enumerate(["alpha", "ALPHA", "Alpha ", " alpha", "ALPHA", "alpHA"] * 2)
        ]
        (alpha,) = (await stub.GetBudgetStatus(pb.BudgetQuery(scopes=["project:alpha"]))).budgets
    assert alpha.reserved_micros == sum(d.estimated_cost_micros for d in decisions)
    assert alpha.reserved_micros <= alpha.limit_micros
    # The budget, not luck, held them back: later variants met the blocked scope.
    assert any(a.rejection == "budget" and "project:alpha" in a.reason
               for a in decisions[-1].alternatives)


async def test_scope_labels_keep_their_case_when_casefold_is_off(make: Car) -> None:
    car = await make(limits={"casefold_scope_labels": False},
                     budgets=[{"scope": "project:*", "period": "day", "limit_usd": 10}])
    async with grpc.aio.insecure_channel(car.address) as ch:
        stub = pb_grpc.RouterStub(ch)
        for i, value in enumerate(["ALPHA", "ALPHA  ", "alpha"]):
            await stub.Route(req(task_id=f"c{i}", labels={"project": value}))
        status = await stub.GetBudgetStatus(pb.BudgetQuery())
        assert {b.scope for b in status.budgets if b.scope.startswith("project:")} == {
            "project:ALPHA", "project:alpha"}


# -- cardinality caps ------------------------------------------------------------------------


async def refusals(car: Sidecar, label: str) -> float:
    """routing.labels.refused for `label` on /metrics, read off the event loop (collection
    reads the ledger on the loop)."""
    def get() -> str:
        with urllib.request.urlopen(f"http://{car.admin_address}/metrics", timeout=5) as resp:
            return str(resp.read().decode())
    text = await asyncio.to_thread(get)
    return sum(s.value for family in text_string_to_metric_families(text)
               for s in family.samples
               if s.name == "routing_labels_refused_total" and s.labels.get("label") == label)


async def test_project_cap_refuses_new_values_counts_them_and_keeps_known_ones(
    make: Car, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    car = await make(limits={"max_projects": 3},
                     budgets=[{"scope": "project:*", "period": "day", "limit_usd": 10}])
    async with grpc.aio.insecure_channel(car.address) as ch:
        stub = pb_grpc.RouterStub(ch)
        for i, p in enumerate(["p1", "P2", "p3"]):
            await stub.Route(req(task_id=f"k{i}", labels={"project": p}))
        before = await books(car, stub)
        for p in ("p4", "P5", "p4"):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Route(req(task_id="new", labels={"project": p}))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert (err.value.details() or "").startswith("labels[project]: 3 distinct values")
        # A refused request charged nothing and wrote nothing.
        assert await books(car, stub) == before
        # Known values keep working, in any case the folding maps to them.
        for p in ("p1", "p2", " P3"):
            d = await stub.Route(req(task_id="old", labels={"project": p}))
            assert d.status == pb.DECISION_STATUS_ROUTED
        status = await stub.GetBudgetStatus(pb.BudgetQuery(scopes=["project:*"]))
        assert {b.scope for b in status.budgets} == {"project:p1", "project:p2", "project:p3"}
        assert await serving(ch)
    assert await refusals(car, "project") == 3
    no_tracebacks(caplog)


async def test_projects_the_config_names_are_known_and_count_toward_the_cap(make: Car) -> None:
    car = await make(limits={"max_projects": 2},
                     budgets=[{"scope": "project:Alpha", "period": "day", "limit_usd": 10}])
    assert car.routing.limits.known("project") == 1
    async with grpc.aio.insecure_channel(car.address) as ch:
        stub = pb_grpc.RouterStub(ch)
        await stub.Route(req(labels={"project": "beta"}))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Route(req(labels={"project": "gamma"}))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (await stub.Route(req(labels={"project": "ALPHA"}))).status == (
            pb.DECISION_STATUS_ROUTED)


async def test_project_cap_counts_values_known_from_the_ledger_after_restart(
    make: Car,
) -> None:
    budgets = [{"scope": "project:*", "period": "day", "limit_usd": 10}]
    first = await make(limits={"max_projects": 2}, budgets=budgets)
    async with grpc.aio.insecure_channel(first.address) as ch:
        stub = pb_grpc.RouterStub(ch)
        for p in ("one", "two"):
            await stub.Route(req(labels={"project": p}))
    await first.stop()
    again = await make(limits={"max_projects": 2}, budgets=budgets)
    async with grpc.aio.insecure_channel(again.address) as ch:
        stub = pb_grpc.RouterStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Route(req(labels={"project": "three"}))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for p in ("one", "TWO"):
            assert (await stub.Route(req(labels={"project": p}))).status == (
                pb.DECISION_STATUS_ROUTED)


async def test_project_cap_is_met_by_old_mixed_case_ledger_rows(make: Car) -> None:
    # Rows written with folding off keep counting once it is on: one scope, not two.
    budgets = [{"scope": "project:*", "period": "day", "limit_usd": 10}]
    first = await make(limits={"casefold_scope_labels": False}, budgets=budgets)
    async with grpc.aio.insecure_channel(first.address) as ch:
        before = await pb_grpc.RouterStub(ch).Route(req(labels={"project": "Beta"}))
    await first.stop()
    again = await make(budgets=budgets)
    async with grpc.aio.insecure_channel(again.address) as ch:
        stub = pb_grpc.RouterStub(ch)
        after = await stub.Route(req(labels={"project": "BETA"}))
        (beta,) = (await stub.GetBudgetStatus(pb.BudgetQuery(scopes=["project:*"]))).budgets
    assert beta.scope == "project:beta"
    assert beta.reserved_micros == before.estimated_cost_micros + after.estimated_cost_micros


@pytest.mark.parametrize(("key", "limit"), [("worker", "max_workers"), ("lane", "max_lanes"),
                                            ("layer", "max_label_values")])
async def test_other_label_caps(make: Car, key: str, limit: str) -> None:
    car = await make(limits={limit: 2})
    async with grpc.aio.insecure_channel(car.address) as ch:
        stub = pb_grpc.RouterStub(ch)
        for v in ("a", "b", "a"):
            await stub.Route(req(labels={key: v}))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Route(req(labels={key: "c"}))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (err.value.details() or "").startswith(f"labels[{key}]:")
        # Labels no cap names are free text: any number of values.
        for i in range(5):
            await stub.Route(req(labels={key: "a", "ticket": f"T-{i}"}))
    assert await refusals(car, key) == 1


async def test_project_cap_on_route_stream_names_the_message(make: Car) -> None:
    car = await make(limits={"max_projects": 1}, budgets=[])  # no project the config names
    async with grpc.aio.insecure_channel(car.address) as ch:
        call = pb_grpc.RouterStub(ch).RouteStream()
        got = []
        with pytest.raises(grpc.aio.AioRpcError):
            for p in ("p1", "P1", "p2", "p1"):  # lockstep: see the undecodable stream test
                await call.write(req(labels={"project": p}))
                got.append((await call.read()).status)
        assert got == [pb.DECISION_STATUS_ROUTED] * 2
        assert await call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert (await call.details() or "").startswith("stream message 2: labels[project]: 1 ")


async def test_a_refused_label_admits_no_other_label_of_the_request(make: Car) -> None:
    car = await make(limits={"max_projects": 1, "max_lanes": 5}, budgets=[])
    async with grpc.aio.insecure_channel(car.address) as ch:
        stub = pb_grpc.RouterStub(ch)
        await stub.Route(req(labels={"project": "p1"}))
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Route(req(labels={"project": "p2", "lane": "l1"}))
    assert car.routing.limits.known("lane") == 0


async def test_over_http_newline_ids_are_400_and_a_new_project_beyond_the_cap_is_429(
    make: Car,
) -> None:
    car = await make(limits={"max_projects": 1}, budgets=[])
    body = {"taskId": "t-1", "taskType": "fix_bug", "labels": {"project": "ALPHA "}}
    async with httpx.AsyncClient(base_url=f"http://{car.admin_address}", timeout=10) as http:
        r = await http.post("/route", json=body)
        assert r.status_code == 200, r.text
        before = rows(car)
        r = await http.post("/route", json={**body, "taskId": "t-1\n"})
        assert r.status_code == 400 and r.json()["error"]["field"] == "task_id"
        r = await http.post("/route", json={**body, "labels": {"project": "beta"}})
        assert r.status_code == 429, r.text
        error = r.json()["error"]
        assert error["code"] == "RESOURCE_EXHAUSTED" and error["field"] == "labels[project]"
        assert rows(car) == before
        # The same project in another case is the one already admitted.
        assert (await http.post("/route", json={**body, "labels": {"project": "alpha"}})
                ).status_code == 200
