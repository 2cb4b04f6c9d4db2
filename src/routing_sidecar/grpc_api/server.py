"""Build, start and drain the grpc.aio server with health and reflection."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from routing_sidecar.grpc_api import wire
from routing_sidecar.grpc_api.auth import ServerSecurity
from routing_sidecar.grpc_api.servicer import RouterServicer
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb

log = logging.getLogger(__name__)

ROUTER_SERVICE = pb.DESCRIPTOR.services_by_name["Router"].full_name
HEALTH_NAMES = ("", ROUTER_SERVICE)


class SidecarServer:
    """The gRPC server: Router, standard health, and reflection on one port or socket."""

    def __init__(self, servicer: RouterServicer, listen: str, max_request_bytes: int, *,
                 reuse_port: bool = False, security: ServerSecurity | None = None) -> None:
        security = security or ServerSecurity()
        self.tls = security.credentials is not None
        self.token_required = security.token is not None
        # SO_REUSEPORT only for serve --workers: otherwise a second sidecar on a taken port
        # must fail to start, not share it unnoticed.
        self._server = grpc.aio.server(
            interceptors=security.interceptors(),
            options=[
                ("grpc.max_receive_message_length", max_request_bytes),
                ("grpc.so_reuseport", int(reuse_port)),
            ],
        )
        wire.add_router(servicer, self._server)  # undecodable bodies: INVALID_ARGUMENT
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (ROUTER_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        # Tried with a plain socket first: grpc would log its own multi-line error and say
        # only "Failed to bind". Not with SO_REUSEPORT, where the port is meant to be shared.
        problem = None if reuse_port else bind_problem(listen, probe_only=True)
        if problem:
            raise OSError(f"cannot listen on {listen}: {problem}")
        try:
            if security.credentials is not None:
                self.port = self._server.add_secure_port(listen, security.credentials)
            else:
                self.port = self._server.add_insecure_port(listen)
        except RuntimeError:  # grpc says only "Failed to bind"; find out why for the message
            self.port = 0
        if self.port == 0 and not (listen.startswith("unix:") and self._unix_bound(listen)):
            raise OSError(f"cannot listen on {listen}: {bind_problem(listen)}")
        self.listen = listen

    @staticmethod
    def _unix_bound(listen: str) -> bool:
        # grpc reports port 0 for a Unix socket it did bind: the socket file tells.
        return Path(unix_path(listen)).is_socket()

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
        log.info("serving", extra={"address": self.address, "tls": self.tls,
                                   "token_required": self.token_required})

    async def set_serving(self, serving: bool) -> None:
        """SERVING or NOT_SERVING for every health name (ignored once draining has begun)."""
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in HEALTH_NAMES:
            await self.health.set(name, status)

    async def stop(self, grace_s: float) -> None:
        """Report NOT_SERVING, then let in-flight RPCs finish within the grace period."""
        await self.health.enter_graceful_shutdown()
        await self._server.stop(grace_s)

    async def wait(self) -> None:
        """Block until the server terminates."""
        await self._server.wait_for_termination()


def unix_path(listen: str) -> str:
    """The file of a unix: or unix:// address."""
    rest = listen.removeprefix("unix:")
    return rest.removeprefix("//") if rest.startswith("//") else rest


def bind_problem(listen: str, *, probe_only: bool = False) -> str | None:
    """Why `listen` cannot be bound, found by trying it with a plain socket (grpc will not say).

    None with `probe_only` when the plain socket binds (or for a Unix socket, left to grpc).
    """
    if listen.startswith("unix:"):
        parent = Path(unix_path(listen)).parent
        if not parent.is_dir():
            return f"directory {parent} does not exist"
        if not os.access(parent, os.W_OK):
            return f"directory {parent} is not writable"
        return None if probe_only else "cannot create the socket file"
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return f"cannot resolve host {host!r}"
    for family, kind, proto, _, addr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc binds
            try:
                probe.bind(addr)
            except OSError as exc:
                reason = exc.strerror or str(exc)
                return reason[:1].lower() + reason[1:]
    return None if probe_only else "the gRPC runtime refused the address"
