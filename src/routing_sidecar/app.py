"""Composition root: config -> store -> ledger -> services -> server, and the lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
from zoneinfo import ZoneInfo

from routing_sidecar import logs, telemetry
from routing_sidecar.config import RESTART_ONLY, RouterConfig, config_hash, load_config
from routing_sidecar.core.budget import Ledger
from routing_sidecar.errors import ConfigError, StorageError
from routing_sidecar.grpc_api.observe import Observer, ProviderHealth
from routing_sidecar.grpc_api.server import SidecarServer
from routing_sidecar.grpc_api.servicer import RouterServicer
from routing_sidecar.ports import Clock, SystemClock
from routing_sidecar.providers.registry import ProviderRegistry
from routing_sidecar.service.complete import CompleteService, Execution
from routing_sidecar.service.learning import LEARNED_BOOKS, Learner
from routing_sidecar.service.outcomes import OutcomeService
from routing_sidecar.service.routing import RoutingService, RoutingState, new_decision_id
from routing_sidecar.service.upkeep import Upkeep
from routing_sidecar.storage import SqliteStore

log = logging.getLogger(__name__)


class Sidecar:
    """One running sidecar: its config, store, services and server."""

    def __init__(
        self,
        cfg: RouterConfig,
        *,
        config_path: str | None = None,
        listen: str | None = None,
        admin_listen: str | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.clock = clock or SystemClock()
        self._rng = rng or random.Random()  # exploration draws; the core takes randomness here
        self._listen = listen or cfg.server.listen
        self._admin_listen = admin_listen  # overrides telemetry.admin_listen ("" turns it off)
        self.store: SqliteStore | None = None
        self.server: SidecarServer | None = None
        self.complete: CompleteService | None = None
        self._upkeep_task: asyncio.Task[None] | None = None
        self._stopped = False
        self.telemetry: telemetry.Telemetry | None = None

    @property
    def address(self) -> str:
        """Where clients reach this sidecar."""
        assert self.server is not None, "sidecar not started"
        return self.server.address

    @property
    def admin_address(self) -> str | None:
        """HOST:PORT serving Prometheus /metrics (port as bound), or None when turned off."""
        return self.telemetry.admin_address if self.telemetry else None

    async def start(self) -> None:
        """Open the store, rebuild the ledger from it, and start serving."""
        cfg = self.cfg
        # First, so a busy admin port stops the start before anything else is opened.
        tcfg = cfg.telemetry
        if self._admin_listen is not None:
            tcfg = tcfg.model_copy(update={"admin_listen": self._admin_listen})
        tel = self.telemetry = telemetry.setup(tcfg)
        store = await SqliteStore.open(
            cfg.store.path, retention_days=cfg.store.retention_days, clock=self.clock
        )
        self.store = store
        settings = cfg.settings()
        ledger = Ledger(settings.budgets, ZoneInfo(settings.ledger.timezone))
        ledger.restore(await store.load_ledger_entries())
        digest = config_hash(cfg)
        await store.record_config(digest, cfg.model_dump_json(), self.clock.now())
        learner = Learner.of(settings)
        learner.load({book: await store.load_learned(book) for book in LEARNED_BOOKS})
        self.routing = RoutingService(
            RoutingState.of(settings, digest), self.clock, ledger, store, learner,
            new_id=lambda: logs.bind_decision(new_decision_id()),  # logs name the decision
            rng=self._rng,
        )
        self.outcomes = OutcomeService(
            lambda: self.routing.catalog, ledger, store, self.clock, learner,
            settings.outcomes,
        )
        self.upkeep = Upkeep(
            ledger, store, store, self.clock, learner,
            interval_s=min(30.0, cfg.ledger.reservation_ttl_s / 4),
            retention_days=cfg.store.retention_days,
        )
        self.observer = Observer(
            tel.tracer(), tel.meter(), self.clock, tracing=tel.tracing,
            budgets=lambda: self.routing.ledger.status(self.clock.now()),
            providers=lambda: (m.provider for m in self.routing.catalog.models.values()),
            loop=asyncio.get_running_loop(),
        )
        self.observer.set_provider_health(self._provider_health)
        self.routing.alert_hook = self.outcomes.alert_hook = self.observer.budget_alert
        # Execute mode: one client per `providers` entry, keys read now (rebuilt on reload).
        self.complete = CompleteService(self.routing, self.outcomes, store, self.clock,
                                        _execution(cfg), rng=self._rng)
        self.complete.on_recorded = self.observer.reported
        servicer = RouterServicer(self.routing, self.outcomes, store, self.clock, self.observer,
                                  complete=self.complete)
        self.server = SidecarServer(servicer, self._listen, cfg.server.max_request_bytes)
        self._upkeep_task = asyncio.create_task(self.upkeep.run(), name="upkeep")
        await self.server.start()
        log.info("sidecar started", extra={
            "address": self.address, "config_hash": digest, "metrics": self.admin_address,
        })

    def _provider_health(self) -> list[ProviderHealth]:
        """Detection and breaker state of every catalog provider, for the provider gauges."""
        now = self.clock.now()
        health = self.routing.learner.health
        states = health.detection(now, providers=self.routing.catalog.providers())
        return [
            ProviderHealth(
                key.removeprefix("provider:"), state.value,
                health.breaker(key, now).status.value,
            )
            for key, state in states.items()
            if key.startswith("provider:")
        ]

    async def stop(self) -> None:
        """Drain in-flight RPCs within the grace period, then flush and close the store."""
        if self._stopped:
            return
        self._stopped = True
        if self.server is not None:
            await self.server.stop(self.cfg.server.grace_period_s)
        if self.complete is not None:  # settles cancelled walks before the store closes
            await self.complete.aclose()
        if self._upkeep_task is not None:
            self._upkeep_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._upkeep_task
        if self.store is not None:
            try:
                await self.upkeep.save_learned()
            except StorageError:  # closing must go on; the store keeps its older snapshot
                log.exception("could not save learned state at shutdown")
            await self.store.close()
        if self.telemetry is not None:  # last: flushes the spans and metrics of the drain too
            await asyncio.to_thread(self.telemetry.shutdown)
        log.info("sidecar stopped")

    async def reload(self) -> bool:
        """Re-read the config file and apply it whole, or change nothing.

        A file that fails validation is logged as `config reload refused` with its problems.
        """
        if not self.config_path:
            return False
        try:
            cfg = load_config(self.config_path)
        except ConfigError as exc:
            log.error("config reload refused", extra={"problems": exc.problems})
            return False
        await self.apply_config(cfg)
        return True

    async def apply_config(self, cfg: RouterConfig) -> None:
        """Apply a validated config at once: everything derived from it is rebuilt, then swapped.

        Settings in RESTART_ONLY (listen addresses, store, telemetry, the ledger's time zone)
        keep their running values until a restart, with a warning.
        """
        old = self.cfg
        stale = [key for key, read in RESTART_ONLY.items() if read(cfg) != read(old)]
        if stale:
            log.warning("these settings change only on restart", extra={"settings": stale})
        digest = config_hash(cfg)
        state = RoutingState.of(cfg.settings(), digest)  # built before anything is swapped
        execution = _execution(cfg)
        self.routing.apply(state)
        if self.complete is not None:  # walks under way finish on the clients they started with
            self.complete.use(execution)
        self.outcomes.limits = state.settings.outcomes
        self.cfg = cfg
        if self.store is not None:
            await self.store.record_config(digest, cfg.model_dump_json(), self.clock.now())
        log.info("config reloaded", extra={"config_hash": digest})


def _execution(cfg: RouterConfig) -> Execution:
    """The provider clients and upstream ids of a config (keys read from env or files now)."""
    settings = cfg.execution_settings()
    return Execution(ProviderRegistry.from_settings(settings), settings)


async def serve(
    config_path: str, listen: str | None = None, admin_listen: str | None = None
) -> int:
    """Run a sidecar until SIGTERM or SIGINT; SIGHUP reloads the config."""
    sidecar = Sidecar(load_config(config_path), config_path=config_path, listen=listen,
                      admin_listen=admin_listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[bool]] = set()

    def _reload() -> None:
        task = loop.create_task(sidecar.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, _reload)
    await sidecar.start()
    await stop.wait()
    log.info("shutting down")
    await sidecar.stop()
    return 0
