"""An attempt dated in the year 9999 is refused before it reaches a span: the batch it would
have shared with good spans reaches a real OTLP receiver whole."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from routing_sidecar.app import Sidecar
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc
from tests.integration.otlp_receiver import attrs, otlp_receiver
from tests.integration.test_telemetry import route_request, traced_config

YEAR_9999 = 253_402_300_799  # 9999-12-31T23:59:59Z: refused by the wire's timestamp range
YEAR_2150 = 5_680_281_600  # in range for the wire, refused by the outcome checks


async def test_far_future_attempt_is_refused_and_the_batch_is_exported(tmp_path: Path) -> None:
    async with otlp_receiver() as (endpoint, got):
        car = Sidecar(traced_config(tmp_path, endpoint))
        await car.start()
        try:
            async with grpc.aio.insecure_channel(car.address) as ch:
                stub = pb_grpc.RouterStub(ch)
                bad = await stub.Route(route_request("t-future"))
                good = await stub.Route(route_request("t-present"))
                refused = []
                for seconds in (YEAR_9999, YEAR_2150):
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await stub.ReportOutcome(pb.Outcome(
                            decision_id=bad.decision_id, attempts=[pb.Attempt(
                                model=bad.model, status=pb.ATTEMPT_STATUS_SUCCESS,
                                started_at=Timestamp(seconds=seconds),
                                duration=Duration(seconds=1), input_tokens=10)]))
                    refused.append(info.value)
                ok = await stub.ReportOutcome(pb.Outcome(
                    decision_id=good.decision_id, success=True, attempts=[
                        pb.Attempt(model=good.model, status=pb.ATTEMPT_STATUS_SUCCESS,
                                   started_at=Timestamp(seconds=int(time.time()) - 5),
                                   duration=Duration(seconds=1), input_tokens=10)]))
        finally:
            await car.stop()  # flushes the one batch all these spans are in
    assert [(e.code(), e.details()) for e in refused] == [
        (grpc.StatusCode.INVALID_ARGUMENT,
         f"attempts[0].started_at: must be between 1970 and 2199 (got {YEAR_9999}s)"),
        (grpc.StatusCode.INVALID_ARGUMENT, "attempts[0].started_at: is in the future")]
    assert not ok.duplicate
    spans = got.spans()
    names = [s.name for s in spans]
    assert names.count("routing_sidecar.v1.Router/Route") == 2
    assert names.count("routing_sidecar.v1.Router/ReportOutcome") == 3  # the refused ones too
    chats = [s for s in spans if s.name.startswith("chat ")]
    assert len(chats) == 1 and attrs(chats[0].attributes)["gen_ai.request.model"] == good.model
    latest = time.time_ns()
    assert all(s.start_time_unix_nano <= s.end_time_unix_nano <= latest for s in spans)
