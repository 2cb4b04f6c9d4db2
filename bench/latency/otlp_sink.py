"""A no-op OTLP/gRPC receiver: accepts trace and metric exports, counts them, keeps nothing.

Run as `python -m bench.latency.otlp_sink --port N`; it reports SERVING on the standard health
service and prints what it received when it exits on SIGTERM or SIGINT. The traced bench variant
exports to it, so tracing's cost is measured with a real exporter and a real network hop but
no collector work.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Counts:
    """Exports and spans received."""

    def __init__(self) -> None:
        self.trace_exports = 0
        self.spans = 0
        self.metric_exports = 0


class Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, counts: Counts) -> None:
        self.counts = counts

    async def Export(self, request: Any, context: Any) -> Any:
        self.counts.trace_exports += 1
        self.counts.spans += sum(len(ss.spans) for rs in request.resource_spans
                                 for ss in rs.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()


class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, counts: Counts) -> None:
        self.counts = counts

    async def Export(self, request: Any, context: Any) -> Any:
        self.counts.metric_exports += 1
        return metrics_service_pb2.ExportMetricsServiceResponse()


async def serve(port: int) -> Counts:
    """Serve on 127.0.0.1:port until SIGTERM or SIGINT."""
    counts = Counts()
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(counts), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(counts), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    await done.wait()
    await server.stop(0.5)
    return counts


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    print(f"no-op OTLP receiver on 127.0.0.1:{args.port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        c = asyncio.run(serve(args.port))
        print(f"received {c.trace_exports} trace exports ({c.spans} spans), "
              f"{c.metric_exports} metric exports", flush=True)


if __name__ == "__main__":
    main()
