"""Composition root: config -> catalog -> service -> server, and the process lifecycle."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from routing_sidecar.config import RouterConfig, config_hash, load_config
from routing_sidecar.core.catalog import Catalog
from routing_sidecar.errors import ConfigError
from routing_sidecar.grpc_api.server import SidecarServer
from routing_sidecar.ports import Clock, SystemClock
from routing_sidecar.service.routing import RoutingService

log = logging.getLogger(__name__)


class Sidecar:
    """One running sidecar: its config, service and server."""

    def __init__(
        self,
        cfg: RouterConfig,
        *,
        config_path: str | None = None,
        listen: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.clock = clock or SystemClock()
        self.service = RoutingService(Catalog.from_config(cfg), self.clock)
        self.server = SidecarServer(
            self.service, listen or cfg.server.listen, cfg.server.max_request_bytes
        )

    @property
    def address(self) -> str:
        """Where clients reach this sidecar."""
        return self.server.address

    async def start(self) -> None:
        """Open stores and start serving."""
        await self.server.start()
        log.info(
            "sidecar started",
            extra={"address": self.address, "config_hash": config_hash(self.cfg)},
        )

    async def stop(self) -> None:
        """Drain in-flight RPCs within the grace period, then close stores."""
        await self.server.stop(self.cfg.server.grace_period_s)
        log.info("sidecar stopped")

    def reload(self) -> bool:
        """Re-read the config file; one that fails validation never replaces the running one."""
        if not self.config_path:
            return False
        try:
            cfg = load_config(self.config_path)
        except ConfigError as exc:
            log.error("config reload refused", extra={"problems": exc.problems})
            return False
        if cfg.server != self.cfg.server or cfg.store != self.cfg.store:
            log.warning("server and store settings change only on restart")
        self.service.catalog = Catalog.from_config(cfg)
        self.cfg = cfg
        log.info("config reloaded", extra={"config_hash": config_hash(cfg)})
        return True


async def serve(config_path: str, listen: str | None = None) -> int:
    """Run a sidecar until SIGTERM or SIGINT; SIGHUP reloads the config."""
    cfg = load_config(config_path)
    Path(cfg.store.path).parent.mkdir(parents=True, exist_ok=True)
    sidecar = Sidecar(cfg, config_path=config_path, listen=listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, sidecar.reload)
    await sidecar.start()
    await stop.wait()
    log.info("shutting down")
    await sidecar.stop()
    return 0
