"""Route and RouteStream over a real grpc.aio server and channel."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from routing_sidecar.app import Sidecar
from routing_sidecar.config import RouterConfig
from routing_sidecar.grpc_api import route_stream
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc


def req(task_type: str = "fix_bug", **kw: object) -> pb.RouteRequest:
    kw.setdefault("task_id", "t-1")
    kw.setdefault("priority", 50)
    kw.setdefault("estimated_input_tokens", 2000)
    kw.setdefault("max_output_tokens", 1000)
    return pb.RouteRequest(task_type=task_type, **kw)  # type: ignore[arg-type]


async def test_fix_bug_routes_to_code_policy_with_fallbacks_and_reasons(
    stub: pb_grpc.RouterStub, cfg: RouterConfig
) -> None:
    d = await stub.Route(req("fix_bug"))
    code_models = cfg.policies["code"].models
    assert d.status == pb.DECISION_STATUS_ROUTED
    assert d.reason_code == pb.REASON_CODE_SELECTED
    assert d.policy == "code"
    assert d.model in code_models
    assert d.provider == cfg.models[d.model].provider
    assert len(d.fallbacks) == cfg.policies["code"].fallbacks
    assert d.fallbacks[0].provider != d.provider
    assert [a.model for a in d.alternatives] == code_models
    assert sum(a.chosen for a in d.alternatives) == 1
    assert all(a.reason for a in d.alternatives)
    assert d.model in d.reason and "code" in d.reason
    assert d.estimated_cost_micros > 0
    assert len(d.decision_id) == 32 and d.task_id == "t-1"
    assert d.decided_at.seconds > 0


async def test_decision_ids_follow_the_order_routes_were_decided(
    stub: pb_grpc.RouterStub,
) -> None:
    # Time-ordered ids keep the audit table's key growing at its end.
    ids = []
    for i in range(3):
        ids.append((await stub.Route(req("fix_bug", task_id=f"ordered-{i}"))).decision_id)
        await asyncio.sleep(0.002)  # the next millisecond at least
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert all(int(i[:12], 16) <= time.time_ns() // 1_000_000 for i in ids)


async def test_link_checker_never_gets_a_tier_3_model(stub: pb_grpc.RouterStub) -> None:
    d = await stub.Route(req("check_links", priority=10))
    assert d.status == pb.DECISION_STATUS_ROUTED
    assert d.tier == 1
    reserved = [a for a in d.alternatives if a.rejection == "tier_reserved"]
    assert all(a.tier > 1 for a in reserved)


async def test_slots_only_offered_models_and_await_slot(stub: pb_grpc.RouterStub) -> None:
    slots = [pb.Slot(slot_id="w1", model="minimax-m2", utilisation=0.5)]
    d = await stub.Route(req("fix_bug", available_slots=slots))
    assert (d.model, d.slot_id) == ("minimax-m2", "w1")
    busy = [pb.Slot(slot_id="w1", model="minimax-m2", utilisation=1.0)]
    d = await stub.Route(req("fix_bug", available_slots=busy))
    assert d.status == pb.DECISION_STATUS_AWAIT_SLOT
    assert d.reason_code == pb.REASON_CODE_AWAITING_SLOT
    assert d.model == ""


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (req(task_id=""), "task_id"),
        (req(task_type=""), "task_type"),
        (req(priority=300), "priority"),
        (req(priority=-1), "priority"),
        (req(estimated_input_tokens=-5), "estimated_input_tokens"),
        (req(max_output_tokens=-1), "max_output_tokens"),
        (req(task_id="x" * 129), "task_id"),
        (req(task_id="bad id with spaces"), "task_id"),
        (req(ev=float("nan")), "ev"),
        (req(objective=9), "objective"),  # type: ignore[arg-type]
        (req(policy="nope"), "policy"),
        (req(requires=pb.Requirements(min_tier=7)), "requires.min_tier"),
        (req(requires=pb.Requirements(min_quality=1.5)), "requires.min_quality"),
        (req(labels={"project": "p" * 300}), "labels[project]"),
        (req(available_slots=[pb.Slot(slot_id="s", model="gpt-9")]), "available_slots[0].model"),
        (req(available_slots=[pb.Slot(slot_id="", model="gpt-5")]), "available_slots[0].slot_id"),
        (
            req(available_slots=[pb.Slot(slot_id="s", model="gpt-5", utilisation=-0.1)]),
            "available_slots[0].utilisation",
        ),
    ],
)
async def test_bad_fields_get_invalid_argument_naming_the_field(
    stub: pb_grpc.RouterStub, request_: pb.RouteRequest, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Route(request_)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(f"{field}:")
    # The server keeps serving after a bad request.
    ok = await stub.Route(req())
    assert ok.status == pb.DECISION_STATUS_ROUTED


async def test_oversize_request_is_refused_and_server_keeps_serving(
    stub: pb_grpc.RouterStub,
) -> None:
    huge = req(labels={f"k{i}": "v" * 200 for i in range(8000)})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Route(huge)
    assert err.value.code() in (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert (await stub.Route(req())).status == pb.DECISION_STATUS_ROUTED


async def test_route_stream_answers_in_order(stub: pb_grpc.RouterStub) -> None:
    types = ["fix_bug", "check_links", "analyze_logs", "simple_query", "research_market"] * 20

    async def requests():  # type: ignore[no-untyped-def]
        for i, t in enumerate(types):
            yield req(t, task_id=f"s-{i}")

    decisions = [d async for d in stub.RouteStream(requests())]
    assert [d.task_id for d in decisions] == [f"s-{i}" for i in range(len(types))]
    policies = {d.task_id: d.policy for d in decisions}
    assert (policies["s-0"], policies["s-3"]) == ("code", "ops")
    assert policies["s-4"] == "deep_research"
    assert len({d.decision_id for d in decisions}) == len(types)


async def test_route_stream_bad_message_names_its_index_and_field(
    stub: pb_grpc.RouterStub,
) -> None:
    async def requests():  # type: ignore[no-untyped-def]
        yield req(task_id="a")
        yield req(task_id="b")
        yield req(task_id="c", priority=300)

    got = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for d in stub.RouteStream(requests()):
            got.append(d.task_id)
    assert got == ["a", "b"]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "stream message 2: priority: must be 0..100 (got 300)"


async def test_route_stream_commits_a_burst_in_shared_transactions(
    sidecar: Sidecar, stub: pb_grpc.RouterStub,
) -> None:
    # How many messages a commit takes depends on how fast the caller writes against how
    # fast the sidecar decides. Here the store is held busy while a burst of a window's size
    # arrives, so its decisions wait for it together, as they do behind any slow commit.
    n = route_stream.WINDOW - 4
    writer = sidecar.store.writer  # type: ignore[union-attr]
    release, held = threading.Event(), threading.Event()

    def hold(_conn: object) -> None:
        held.set()
        release.wait(30)

    holding = asyncio.create_task(writer.run(hold))
    assert await asyncio.to_thread(held.wait, 10)
    commits = writer.commits

    async def requests():  # type: ignore[no-untyped-def]
        for i in range(n):
            yield req(task_id=f"burst-{i}")

    async def answers() -> list[pb.Decision]:
        return [d async for d in stub.RouteStream(requests())]

    stream = asyncio.create_task(answers())
    await asyncio.sleep(0.3)  # the stream decides the burst, its commits queue up
    assert not stream.done()  # nothing is answered before it is committed
    release.set()
    decisions = await stream
    await holding
    assert [d.task_id for d in decisions] == [f"burst-{i}" for i in range(n)]
    # ...and the messages' rows shared transactions, each answered decision in the store.
    assert writer.commits - commits <= n // 10
    assert sidecar.store is not None
    for d in decisions[:: n // 10]:
        row = await sidecar.store.get_decision(d.decision_id)
        assert row is not None and row.task_id == d.task_id


async def test_route_stream_in_lockstep_answers_each_before_the_next(
    stub: pb_grpc.RouterStub,
) -> None:
    call = stub.RouteStream()
    for i in range(5):  # the next message is only written once this answer is read
        await call.write(req(task_id=f"step-{i}"))
        assert (await call.read()).task_id == f"step-{i}"
    await call.done_writing()
    assert await call.code() == grpc.StatusCode.OK


async def test_route_stream_burst_decides_nothing_after_a_bad_message(
    sidecar: Sidecar, stub: pb_grpc.RouterStub,
) -> None:
    call = stub.RouteStream()
    for i in range(21):  # all written before any answer is read
        await call.write(req(task_id=f"m-{i}", priority=300 if i == 10 else 50))
    await call.done_writing()
    got = []
    with pytest.raises(grpc.aio.AioRpcError):
        while True:
            got.append((await call.read()).task_id)
    assert got == [f"m-{i}" for i in range(10)]
    assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await call.details() == "stream message 10: priority: must be 0..100 (got 300)"
    assert sidecar.store is not None
    stored = await sidecar.store.list_decisions(100)
    assert sorted(d.decision.task_id for d in stored) == sorted(got)
    # Only the ten answered decisions hold budget.
    status = await stub.GetBudgetStatus(pb.BudgetQuery(scopes=["global"]))
    held = sum(d.decision.estimated_cost_micros for d in stored)
    assert held > 0 and status.budgets[0].reserved_micros == held


async def test_health_reports_serving_for_both_names(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "routing_sidecar.v1.Router"):
        resp = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await health.Check(health_pb2.HealthCheckRequest(service="nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_router_and_health(channel: grpc.aio.Channel) -> None:
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def ask():  # type: ignore[no-untyped-def]
        yield reflection_pb2.ServerReflectionRequest(list_services="")
        yield reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="routing_sidecar.v1.Router"
        )

    answers = [a async for a in refl.ServerReflectionInfo(ask())]
    names = {s.name for s in answers[0].list_services_response.service}
    assert {"routing_sidecar.v1.Router", "grpc.health.v1.Health"} <= names
    assert answers[1].file_descriptor_response.file_descriptor_proto


async def test_unix_socket_listener(cfg: RouterConfig, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sock = f"unix://{tmp_path}/sidecar.sock"
    car = Sidecar(cfg, listen=sock)
    await car.start()
    try:
        async with grpc.aio.insecure_channel(sock) as ch:
            d = await pb_grpc.RouterStub(ch).Route(req())
            assert d.policy == "code"
    finally:
        await car.stop()


async def test_ev_above_recent_p90_claims_reserved_tier(stub: pb_grpc.RouterStub) -> None:
    design = "strategic_design"
    for i in range(40):
        await stub.Route(req(design, task_id=f"warm-{i}", ev=float(i)))
    low = await stub.Route(req(design, task_id="low", ev=1.0))
    high = await stub.Route(req(design, task_id="high", ev=1000.0))
    assert low.tier < 3
    assert high.tier == 3, high.reason


async def test_value_routes_by_expected_net_value_over_grpc(stub: pb_grpc.RouterStub) -> None:
    # Without a value a fix_bug never reaches a reserved tier; worth $50, the arithmetic
    # lets the best expected net value run, and every ranked candidate shows its net.
    plain = await stub.Route(req(task_type="fix_bug"))
    assert plain.tier == 1
    valued = await stub.Route(req(task_type="fix_bug", value_micros=50_000_000))
    assert valued.status == pb.DECISION_STATUS_ROUTED and valued.tier > 1
    assert "value $50.0000" in valued.reason and "expected over" in valued.reason
    nets = {a.model: a.expected_net_value_micros for a in valued.alternatives
            if a.HasField("expected_net_value_micros")}
    assert nets[valued.model] == max(nets.values())
    cheap = await stub.Route(req(task_type="fix_bug", value_micros=1_000))
    assert cheap.tier == 1
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Route(req(task_type="fix_bug", value_micros=-5))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("value_micros:")
