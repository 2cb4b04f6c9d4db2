"""Fuzz every Router RPC over a real channel: documented statuses only, books untouched.

For each example: the status is one of the documented set; a refused request leaves the
budget standing and every audit table as they were; health still says SERVING; nothing was
logged at ERROR or with a traceback. Accepted requests move the books, as they should.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.message import Message
from hypothesis import event, given
from hypothesis import strategies as st

from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from tests.fuzz import strategies as fz
from tests.fuzz.conftest import DOCUMENTED, PROFILE, LiveSidecar

ROUTER = "/routing_sidecar.v1.Router"
UNARY = ["Route", "ReportOutcome", "GetBudgetStatus", "GetRoutingStats", "GetCacheStats",
         "PurgeCache"]
DECODE = {"Route": pb.Decision, "ReportOutcome": pb.OutcomeAck,
          "GetBudgetStatus": pb.BudgetStatusList, "GetRoutingStats": pb.RoutingStats,
          "GetCacheStats": pb.CacheStats, "PurgeCache": pb.PurgeCacheResult}


def call_raw(live: LiveSidecar, method: str, body: bytes) -> tuple[grpc.StatusCode, Any]:
    """One unary call with a raw body; the status and the decoded answer (None if refused)."""
    call = live.channel.unary_unary(f"{ROUTER}/{method}",
                                    response_deserializer=DECODE[method].FromString)

    async def go() -> tuple[grpc.StatusCode, Any]:
        try:
            return grpc.StatusCode.OK, await call(body, timeout=30)
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details()
    return live.run(go)


def check(live: LiveSidecar, method: str, body: bytes) -> None:
    """Call, then hold the sidecar to the contract for what the call got."""
    before = live.books()
    code, answer = call_raw(live, method, body)
    event(f"{method}: {code.name}")
    assert code in DOCUMENTED, (code, answer)
    if code is grpc.StatusCode.OK:
        if method == "Route" and answer.decision_id:
            RECENT.add(answer.decision_id)
    else:
        assert isinstance(answer, str) and "<class" not in answer and "Error" not in answer
        assert live.books() == before, f"{method} refused with {code} but changed the books"
    assert live.serving()
    assert not live.errors.records, [r.getMessage() for r in live.errors.records]


RECENT = fz.Recent()  # decisions made, for outcomes to report on
REQUESTS = fz.requests(RECENT)
RAW = {method: fz.raw_bodies(strategy) for method, strategy in REQUESTS.items()}
STREAM_BODY = st.one_of(REQUESTS["RouteStream"].map(lambda m: m.SerializeToString()),
                        RAW["RouteStream"])


@PROFILE
@given(data=st.data())
def test_fuzz_unary_messages(live: LiveSidecar, data: st.DataObject) -> None:
    method = data.draw(st.sampled_from(UNARY), label="method")
    msg: Message = data.draw(REQUESTS[method], label="request")
    check(live, method, msg.SerializeToString())


@PROFILE
@given(data=st.data())
def test_fuzz_raw_bodies(live: LiveSidecar, data: st.DataObject) -> None:
    method = data.draw(st.sampled_from(UNARY), label="method")
    body = data.draw(RAW[method], label="body")
    check(live, method, body)


@PROFILE
@given(body=RAW["Complete"] | REQUESTS["Complete"].map(lambda m: m.SerializeToString()))
def test_fuzz_complete(live: LiveSidecar, body: bytes) -> None:
    call = live.channel.unary_stream(f"{ROUTER}/Complete",
                                     response_deserializer=pb.CompleteEvent.FromString)

    async def go() -> tuple[grpc.StatusCode, str, list[str]]:
        kinds: list[str] = []
        stream = call(body, timeout=30)
        try:
            async for ev in stream:
                kinds.append(ev.WhichOneof("event") or "")
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or "", kinds
        return grpc.StatusCode.OK, "", kinds

    before = live.books()
    code, details, kinds = live.run(go)
    event(f"Complete: {code.name}" + (" after done" if kinds else ""))
    assert code in DOCUMENTED, (code, details)
    if kinds:  # decided (and audited) first, then done: always that order, done last
        assert kinds[0] == "decision" and kinds[-1] == "done" and kinds.count("done") == 1
    if code is not grpc.StatusCode.OK:
        assert "<class" not in details
        if not kinds:  # refused before deciding: nothing written, nothing charged
            assert live.books() == before
    assert live.serving()
    assert not live.errors.records, [r.getMessage() for r in live.errors.records]


@PROFILE
@given(data=st.data())
def test_fuzz_route_stream(live: LiveSidecar, data: st.DataObject) -> None:
    bodies = data.draw(st.lists(STREAM_BODY, min_size=1, max_size=6), label="stream")

    async def go() -> tuple[grpc.StatusCode, list[pb.Decision], str]:
        # Lockstep: each answer is read before the next message is written, so that the
        # status seen is the server's. (A grpc.aio client still writing when the server ends
        # the stream may report INTERNAL "Internal error from Core" instead: grpc#36066.)
        call = live.channel.stream_stream(
            f"{ROUTER}/RouteStream", response_deserializer=pb.Decision.FromString)(timeout=30)
        got: list[pb.Decision] = []
        try:
            for b in bodies:
                await call.write(b)
                answer = await call.read()
                if answer is grpc.aio.EOF:
                    break
                got.append(answer)
            else:
                await call.done_writing()
                assert await call.read() is grpc.aio.EOF
        except grpc.aio.AioRpcError:
            pass
        return await call.code(), got, await call.details() or ""

    _, before = live.books()
    code, got, details = live.run(go)
    _, after = live.books()
    event(f"RouteStream: {code.name}, {len(got)} answered")
    assert code in DOCUMENTED, (code, details)
    assert len(got) <= len(bodies)
    if code is not grpc.StatusCode.OK:
        assert len(got) < len(bodies) and "<class" not in details
    # Each answered message wrote its decision; the refused one (and any after it) nothing.
    assert after[0] - before[0] == len(got)
    assert live.serving()
    assert not live.errors.records, [r.getMessage() for r in live.errors.records]
