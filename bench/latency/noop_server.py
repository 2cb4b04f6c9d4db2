"""A no-op Router: same method path and codec as the sidecar, answers a pre-built Decision.

Run as `python -m bench.latency.noop_server --port N [--decision-file F] [--loop uvloop]`; it
reports SERVING on the standard health service, like the sidecar, and exits cleanly on SIGTERM
or SIGINT. It runs on asyncio's own loop (the yardstick of every ratio) unless `--loop uvloop`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bench.latency.workload import representative_decision
from bench.procs import ROUTER_SERVICE
from routing_sidecar.event_loop import loop_factory
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc


class NoopRouter(pb_grpc.RouterServicer):
    """Parses each RouteRequest (as the sidecar must) and answers the same Decision.

    RouteStream answers every message of a stream with it too, in order.
    """

    def __init__(self, decision: pb.Decision) -> None:
        self._decision = decision

    async def Route(
        self, request: pb.RouteRequest, context: grpc.aio.ServicerContext
    ) -> pb.Decision:
        return self._decision

    async def RouteStream(
        self, request_iterator: AsyncIterator[pb.RouteRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.Decision]:
        async for _request in request_iterator:
            yield self._decision


def load_decision(path: str | None) -> pb.Decision:
    """The Decision to answer: from a file of serialized bytes, else a representative one."""
    if path is None:
        return representative_decision()
    return pb.Decision.FromString(Path(path).read_bytes())


async def serve(port: int, decision: pb.Decision) -> None:
    """Serve on 127.0.0.1:port until SIGTERM or SIGINT."""
    # The same server options as the sidecar's, so only the handler differs.
    server = grpc.aio.server(
        options=[("grpc.max_receive_message_length", 1 << 20), ("grpc.so_reuseport", 0)]
    )
    pb_grpc.add_RouterServicer_to_server(NoopRouter(decision), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    for name in ("", ROUTER_SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    await done.wait()
    await server.stop(0.5)


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--decision-file", help="serialized Decision bytes to answer with")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    decision = load_decision(args.decision_file)
    print(f"no-op Router on 127.0.0.1:{args.port}, Decision {decision.ByteSize()} bytes",
          flush=True)
    factory = loop_factory(args.loop, "--loop") if args.loop == "uvloop" else None
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(args.port, decision))


if __name__ == "__main__":
    main()
