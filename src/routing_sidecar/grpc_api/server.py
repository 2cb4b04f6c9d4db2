"""Build, start and drain the grpc.aio server with health and reflection."""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from routing_sidecar.grpc_api import wire
from routing_sidecar.grpc_api.servicer import RouterServicer
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb

log = logging.getLogger(__name__)

ROUTER_SERVICE = pb.DESCRIPTOR.services_by_name["Router"].full_name
HEALTH_NAMES = ("", ROUTER_SERVICE)


class SidecarServer:
    """The gRPC server: Router, standard health, and reflection on one port or socket."""

    def __init__(self, servicer: RouterServicer, listen: str, max_request_bytes: int, *,
                 reuse_port: bool = False) -> None:
        # SO_REUSEPORT only for serve --workers: otherwise a second sidecar on a taken port
        # must fail to start, not share it unnoticed.
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", max_request_bytes),
                ("grpc.so_reuseport", int(reuse_port)),
            ]
        )
        wire.add_router(servicer, self._server)  # undecodable bodies: INVALID_ARGUMENT
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (ROUTER_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        self.port = self._server.add_insecure_port(listen)
        if not listen.startswith("unix:") and self.port == 0:
            raise OSError(f"cannot bind {listen}")
        self.listen = listen

    @property
    def address(self) -> str:
        """The address clients should dial, with the port actually bound."""
        if self.listen.startswith("unix:"):
            return self.listen
        host = self.listen.rpartition(":")[0]
        return f"{host}:{self.port}"

    async def start(self) -> None:
        """Start serving and report SERVING for every health name."""
        await self._server.start()
        for name in HEALTH_NAMES:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving", extra={"address": self.address})

    async def stop(self, grace_s: float) -> None:
        """Report NOT_SERVING, then let in-flight RPCs finish within the grace period."""
        await self.health.enter_graceful_shutdown()
        await self._server.stop(grace_s)

    async def wait(self) -> None:
        """Block until the server terminates."""
        await self._server.wait_for_termination()
