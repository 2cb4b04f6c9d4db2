"""A real OTLP/gRPC receiver for tests: the collector's Trace and Metrics services on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span


@dataclass
class Received:
    """Everything exporters sent: requests as received and the gRPC metadata of each call."""

    traces: list[trace_service_pb2.ExportTraceServiceRequest] = field(default_factory=list)
    metrics: list[metrics_service_pb2.ExportMetricsServiceRequest] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)

    def spans(self) -> list[Span]:
        return [s for r in self.traces for rs in r.resource_spans for ss in rs.scope_spans
                for s in ss.spans]

    def resources(self) -> list[dict[str, Any]]:
        return [attrs(rs.resource.attributes) for r in self.traces for rs in r.resource_spans]

    def metric_names(self) -> set[str]:
        return {m.name for r in self.metrics for rm in r.resource_metrics
                for sm in rm.scope_metrics for m in sm.metrics}

    def wire_bytes(self) -> bytes:
        """Every exported payload, serialized, for 'appears nowhere' checks."""
        return b"".join(r.SerializeToString() for r in [*self.traces, *self.metrics])


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, got: Received) -> None:
        self.got = got

    async def Export(self, request: Any, context: Any) -> Any:
        self.got.traces.append(request)
        self.got.metadata.append(dict(context.invocation_metadata()))
        return trace_service_pb2.ExportTraceServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, got: Received) -> None:
        self.got = got

    async def Export(self, request: Any, context: Any) -> Any:
        self.got.metrics.append(request)
        self.got.metadata.append(dict(context.invocation_metadata()))
        return metrics_service_pb2.ExportMetricsServiceResponse()


@asynccontextmanager
async def otlp_receiver() -> AsyncIterator[tuple[str, Received]]:
    """Serve on 127.0.0.1:<free port>; yields ("http://127.0.0.1:PORT", what arrived)."""
    got = Received()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(got), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(got), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"http://127.0.0.1:{port}", got
    finally:
        await server.stop(0.5)


def value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: value(kv.value) for kv in kvs if isinstance(kv, KeyValue)}
