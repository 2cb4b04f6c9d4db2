"""Composition root: config -> store -> ledger -> services -> server, and the lifecycle."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, cast
from zoneinfo import ZoneInfo

from routing_sidecar import listeners, logs, native, readiness, telemetry
from routing_sidecar.config import (
    RESTART_ONLY,
    RouterConfig,
    config_hash,
    load_config,
    masked_dsn,
)
from routing_sidecar.core.budget import Ledger
from routing_sidecar.errors import ConfigError, StorageError
from routing_sidecar.event_loop import running_loop_name
from routing_sidecar.grpc_api.auth import ServerSecurity
from routing_sidecar.grpc_api.observe import Observer, ProviderHealth
from routing_sidecar.grpc_api.server import SidecarServer, bind_problem
from routing_sidecar.grpc_api.servicer import RouterServicer
from routing_sidecar.http_api.backend import Backend, Settings
from routing_sidecar.ports import BudgetBook, Cache, Clock, SystemClock
from routing_sidecar.providers.registry import ProviderRegistry
from routing_sidecar.readiness import Readiness, WatchedStore
from routing_sidecar.service.admin import Operator, PolicyEditor, follow_edits
from routing_sidecar.service.budgets import LocalBudgets
from routing_sidecar.service.cache import CacheService
from routing_sidecar.service.complete import CompleteService, Execution
from routing_sidecar.service.fleet_budgets import FleetBudgets
from routing_sidecar.service.fleet_sync import FleetSync
from routing_sidecar.service.learning import LEARNED_BOOKS, Learner
from routing_sidecar.service.limits import LabelLimits, fold_entries, known_at_start
from routing_sidecar.service.outcomes import OutcomeService
from routing_sidecar.service.routing import RoutingService, RoutingState, new_decision_id
from routing_sidecar.service.upkeep import Upkeep
from routing_sidecar.settings import RouterSettings
from routing_sidecar.storage import SqliteStore, Store, open_store
from routing_sidecar.storage.outbox import Outbox
from routing_sidecar.storage.redis import Fleet, open_fleet
from routing_sidecar.storage.sqlite_cache import SqliteCache
from routing_sidecar.waiting import stop_task
from routing_sidecar.workers import worker_admin, worker_outbox

if TYPE_CHECKING:
    from routing_sidecar.http_api.server import AdminServer

log = logging.getLogger(__name__)

# The telemetry flush at stop gets at least this long, even after a drain that used the grace.
MIN_FLUSH_S = 0.5
# How often readiness looks at the breakers and, while the store refuses writes, probes it.
READINESS_INTERVAL_S = 0.5
# How often a sidecar on a shared store (PostgreSQL) takes up pauses and policy edits made
# through another sidecar.
ADMIN_FOLLOW_S = 2.0


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
        worker: int | None = None,
        allow_insecure_remote: bool = False,
    ) -> None:
        if worker is not None:  # one of several processes on one port: its own admin, outbox
            admin = admin_listen if admin_listen is not None else cfg.admin_listen()
            admin_listen = worker_admin(admin, worker)
            cfg = cfg.model_copy(update={"fleet": cfg.fleet.model_copy(
                update={"outbox_path": worker_outbox(cfg.fleet.outbox_path, worker)})})
            # A local cache file (backend sqlite beside PostgreSQL) is one per worker too.
            cfg = cfg.model_copy(update={"cache": cfg.cache.model_copy(
                update={"path": worker_outbox(cfg.cache.path, worker)})})
        self.worker = worker
        self.cfg = cfg
        self.config_path = config_path
        self.clock = clock or SystemClock()
        self._rng = rng or random.Random()  # exploration draws; the core takes randomness here
        self._listen = listen or cfg.server.listen
        self._admin_listen = admin_listen  # overrides admin.listen ("" turns it off)
        self._allow_insecure_remote = allow_insecure_remote  # or server.allow_insecure_remote
        self.admin: AdminServer | None = None
        self.store: Store | None = None
        self.server: SidecarServer | None = None
        self.complete: CompleteService | None = None
        self._upkeep_task: asyncio.Task[None] | None = None
        self._cache_task: asyncio.Task[None] | None = None
        self._ready_task: asyncio.Task[None] | None = None
        self._follow_task: asyncio.Task[None] | None = None
        self.readiness = Readiness()
        self.cache: CacheService | None = None
        # Fleet mode (fleet.redis_url): the shared books, the outbox and the sync loop.
        self.sidecar_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.fleet: Fleet | None = None
        self.outbox: Outbox | None = None
        self.fleet_sync: FleetSync | None = None
        self._stopped = False
        self.telemetry: telemetry.Telemetry | None = None

    @property
    def address(self) -> str:
        """Where clients reach this sidecar."""
        assert self.server is not None, "sidecar not started"
        return self.server.address

    @property
    def admin_address(self) -> str | None:
        """HOST:PORT of the admin port (port as bound), or None when turned off."""
        return self.admin.address if self.admin else None

    async def start(self) -> None:
        """Open the store, rebuild the ledger from it, and start serving.

        A failure on the way closes whatever was opened (store, gRPC port, tasks) before it
        propagates, so a refused start leaves no thread or port behind and the process exits.
        """
        try:
            await self._start()
        except BaseException:
            await self._close(save_learned=False)
            raise

    async def _start(self) -> None:
        cfg = self.cfg
        security = self._grpc_security(cfg)  # first: a refused listen address opens nothing
        admin = self._admin_settings(cfg)
        taken = bind_problem(admin.listen, probe_only=True) if admin else None
        if admin and taken:  # found now, not after the store is open and gRPC serves
            raise OSError(f"admin.listen: cannot bind {admin.listen}: {taken}")
        tcfg = cfg.telemetry.model_copy(update={"admin_listen": admin.listen if admin else ""})
        # Tracing off, the metric pipeline (the SDK, prometheus_client) loads once gRPC
        # serves: what the first Routes measure meanwhile is held until then.
        tel = self.telemetry = telemetry.setup(tcfg, defer=True)
        settings = cfg.settings()
        digest = config_hash(cfg)
        raw_store = await self._open_store(cfg, digest)
        # What the services write through: a refused write turns health NOT_SERVING.
        store = cast(Store, WatchedStore(raw_store, self.readiness))
        ledger = await self._budgets(settings, raw_store)
        learner = Learner.of(settings)
        learner.load({book: await raw_store.load_learned(book) for book in LEARNED_BOOKS})
        limits = LabelLimits(await known_at_start(ledger, learner.health, self.clock.now()))
        self.routing = RoutingService(
            RoutingState.of(settings, digest), self.clock, ledger, store, learner,
            new_id=lambda: logs.bind_decision(new_decision_id()),  # logs name the decision
            rng=self._rng, limits=limits,
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
            budgets=lambda: self.routing.ledger.cached_status(self.clock.now()),
            providers=lambda: (m.provider for m in self.routing.catalog.models.values()),
            loop=asyncio.get_running_loop(),
        )
        for histogram in self.observer.histograms:
            tel.export(histogram)
        self.observer.set_provider_health(self._provider_health)
        self.routing.alert_hook = self.outcomes.alert_hook = self.observer.budget_alert
        self.cache = CacheService(await self._open_cache(raw_store), self.clock,
                                  lambda: self.routing.state.settings.cache, cfg.cache.backend)
        self.cache.on_lookup = self.observer.cache_lookup
        self.routing.cache = self.outcomes.cache = self.cache
        self._cache_task = asyncio.create_task(self.cache.run(), name="cache-sweeper")
        limits.on_refused = self.observer.label_refused
        await self._join_fleet(learner, ledger)
        # Execute mode: one client per `providers` entry, keys read now (rebuilt on reload).
        self.complete = CompleteService(self.routing, self.outcomes, store, self.clock,
                                        _execution(cfg), rng=self._rng)
        self.complete.on_recorded = self.observer.reported
        servicer = RouterServicer(self.routing, self.outcomes, store, self.clock, self.observer,
                                  complete=self.complete)
        self.server = SidecarServer(servicer, self._listen, cfg.server.max_request_bytes,
                                    reuse_port=self.worker is not None, security=security)
        await self._restore_admin_state(store)
        self._upkeep_task = asyncio.create_task(self.upkeep.run(), name="upkeep")
        if cfg.store.url is not None:  # a store other sidecars share: their admin edits too
            self._follow_task = asyncio.create_task(
                follow_edits(self.operator, self.policies, ADMIN_FOLLOW_S), name="admin-follow")
        await self.server.start()
        await self.readiness.attach(self.server.set_serving)
        self._ready_task = asyncio.create_task(readiness.watch(
            self.readiness, probe_store=self._probe_store, checks=self._readiness_checks(),
            interval_s=READINESS_INTERVAL_S), name="readiness")
        await tel.ready()
        await self._start_admin(admin)
        log.info("sidecar started", extra={
            "address": self.address, "config_hash": digest, "metrics": self.admin_address,
            "event_loop": running_loop_name(), "compiled": native.in_use(),
        })

    async def _open_store(self, cfg: RouterConfig, digest: str) -> Store:
        """Open the store and write this config's version; StorageError naming the store.

        A store that cannot take that write refuses the start.
        """
        where = cfg.store.path or masked_dsn(cfg.store.url or "")
        try:
            self.store = await open_store(cfg.store, clock=self.clock)
            await self.store.record_config(digest, cfg.model_dump_json(), self.clock.now())
        except StorageError as exc:
            if where in exc.message:
                raise
            raise StorageError(f"store {where}: {exc.message}") from exc
        return self.store

    async def _budgets(self, settings: RouterSettings, store: Store) -> BudgetBook:
        """The embedded ledger rebuilt from the store, or in fleet mode the shared one."""
        tz = ZoneInfo(settings.ledger.timezone)
        fleet = self.cfg.fleet
        if not fleet.enabled:
            embedded = Ledger(settings.budgets, tz)
            # Rows of project:/worker: scopes in another case add to the folded scope's line.
            embedded.restore(fold_entries(await store.load_ledger_entries(),
                                          settings.limits.casefold_scope_labels))
            return LocalBudgets(embedded)
        self.fleet = open_fleet(fleet, settings, tz, origin=self.sidecar_id)
        self.outbox = await Outbox.open(fleet.outbox_path)
        return FleetBudgets(self.fleet.ledger, settings.budgets, tz, mode=fleet.on_redis_down,
                            local_share=fleet.local_share, outbox=self.outbox,
                            models=lambda: self.routing.catalog.models)

    async def _join_fleet(self, learner: Learner, budgets: BudgetBook) -> None:
        """Fleet mode: keep breakers, learned quality and budget copies in step with Redis."""
        if self.fleet is None or not isinstance(budgets, FleetBudgets):
            return
        def models() -> Iterable[str]:  # the catalog of the moment: reloads change it
            return self.routing.catalog.models.keys()

        self.fleet_sync = FleetSync(
            learner, budgets, self.fleet.breakers, self.fleet.learning, self.clock,
            interval_s=self.cfg.fleet.sync_interval_s, models=models,
            refresh=self.fleet.ledger.refresh)
        await self.fleet_sync.start()

    async def _open_cache(self, store: Store) -> Cache:
        """The response cache's back end: tables in the SQLite store's file, or the fleet's Redis.

        With the audit trail in PostgreSQL, backend sqlite keeps the cache in a local file of
        its own, `cache.path`.
        """
        cfg = self.cfg.cache
        if cfg.backend == "redis":
            assert self.fleet is not None, "the config check requires fleet mode for redis"
            # Imported here: only this back end needs it (redis-py is already loaded for the
            # fleet by now).
            from routing_sidecar.storage.redis.cache import RedisCache  # noqa: PLC0415

            return RedisCache(self.fleet.client, self.cfg.fleet.key_prefix)
        if isinstance(store, SqliteStore):
            return await SqliteCache.open(store)
        # Sidecars on one machine may share this file: it holds no budget rows.
        local = await SqliteStore.open(cfg.path, retention_days=1, clock=self.clock,
                                       owned=False)
        try:
            return await SqliteCache.open(local, owns_store=True)
        except BaseException:
            await local.close()
            raise

    async def _probe_store(self) -> None:
        """A harmless write (the running config's version, kept once) to see the store takes one."""
        assert self.store is not None, "probed only once started"
        await self.store.record_config(config_hash(self.cfg), self.cfg.model_dump_json(),
                                       self.clock.now())

    def _readiness_checks(self) -> dict[str, Callable[[], str | None]]:
        """What else keeps the sidecar from deciding: every circuit open; Redis, if asked."""
        def breakers() -> str | None:
            routing = self.routing
            return readiness.breakers_reason(routing.learner.health,
                                             routing.catalog.models.values(), self.clock.now())

        checks = {readiness.BREAKERS: breakers}
        fleet = self.fleet
        if fleet is not None and self.cfg.fleet.unhealthy_without_redis:
            def redis() -> str | None:
                why = fleet.ledger.unavailable
                return f"Redis is out of reach ({why})" if why else None

            checks[readiness.REDIS] = redis
        return checks

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
        await self._close(save_learned=True)
        log.info("sidecar stopped")

    async def _close(self, *, save_learned: bool) -> None:
        """Stop and close every part that was started, in order; safe on a half-done start."""
        if self._stopped:
            return
        self._stopped = True
        # One grace period for the whole stop: the telemetry flush gets what the drain left.
        deadline = asyncio.get_running_loop().time() + self.cfg.server.grace_period_s
        await self._stop_admin()
        if self.server is not None:
            await self.server.stop(self.cfg.server.grace_period_s)
        if self.complete is not None:  # settles cancelled walks before the store closes
            await self.complete.aclose()
        for task in (self._upkeep_task, self._cache_task, self._ready_task, self._follow_task):
            await stop_task(task)
        if self.cache is not None:  # before the store (its counts go through it) and the fleet
            await self.cache.close()
        if self.fleet_sync is not None:
            await self.fleet_sync.stop()
        if self.fleet is not None:
            await self.fleet.close()
        if self.outbox is not None:
            await self.outbox.close()
        if self.store is not None:
            if save_learned:
                try:
                    await self.upkeep.save_learned()
                except StorageError:  # closing must go on; the store keeps its older snapshot
                    log.exception("could not save learned state at shutdown")
            await self.store.close()
        if self.telemetry is not None:  # last: flushes the spans and metrics of the drain too
            left = deadline - asyncio.get_running_loop().time()
            await self.telemetry.shutdown_within(max(left, MIN_FLUSH_S))

    def _grpc_security(self, cfg: RouterConfig) -> ServerSecurity:
        """TLS and token of the gRPC port (--listen may make it remote); ConfigError if refused."""
        return listeners.grpc_security(cfg, self._listen, self.config_path or "config",
                                       allow_insecure=self._allow_insecure_remote)

    # -- the admin port (http_api) ------------------------------------------------------

    def _admin_settings(self, cfg: RouterConfig) -> Settings | None:
        """The admin port's settings, its token read; None when off. ConfigError if refused."""
        listen = cfg.admin_listen() if self._admin_listen is None else self._admin_listen
        return listeners.admin_settings(cfg, listen, self.config_path or "config",
                                        allow_insecure=self._allow_insecure_remote)

    async def _restore_admin_state(self, store: Store) -> None:
        """Paused models and policy edits made through the admin API, before anything routes."""
        self.policies = PolicyEditor(store, self.clock, self.apply_config, self.cfg)
        self.operator = Operator(store, self.clock, self.routing,
                                 lambda: self.routing.learner.health)
        await self.operator.restore()
        edited = await self.policies.restore()
        if edited is not None:
            await self.apply_config(edited)

    async def _start_admin(self, settings: Settings | None) -> None:
        """Serve the admin port; after gRPC serves, so /health never answers before it."""
        if settings is None or self.store is None or self.server is None:
            return
        # aiohttp and the JSON wire load on a thread once gRPC serves: Routes are answered
        # meanwhile, and the start to SERVING does not wait for the admin port's imports.
        admin_server, serving = await asyncio.to_thread(_admin_modules)
        tel = self.telemetry or telemetry.disabled()
        health = self.server.health
        backend = Backend(
            self.routing, self.outcomes, self.store, self.clock, self.observer, self.policies,
            self.operator, config=lambda: self.cfg, serving=lambda: serving(health),
            metrics=tel.metrics_text, metrics_content_type=telemetry.metrics_content_type(),
            tracer=tel.tracer() if tel.tracing else None,
        )
        admin = admin_server(backend, settings, self.cfg.server.grace_period_s)
        await admin.start()
        self.admin = admin

    async def _stop_admin(self) -> None:
        if self.admin is not None:
            await self.admin.stop()

    async def reload(self) -> bool:
        """Re-read the config file and apply it whole, or change nothing.

        A file that fails validation is logged as `config reload refused` with its problems.
        """
        if not self.config_path:
            return False
        try:
            cfg = load_config(self.config_path)
            cfg = self.policies.with_overrides(cfg)  # policy edits made over HTTP stay
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


def _admin_modules() -> tuple[type[AdminServer], Callable[[Any], Awaitable[bool]]]:
    """The admin HTTP server and the JSON wire's health reading, imported on first use."""
    from routing_sidecar.grpc_api import jsonwire  # noqa: PLC0415
    from routing_sidecar.http_api.server import AdminServer  # noqa: PLC0415

    return AdminServer, jsonwire.serving


async def serve(
    config_path: str, listen: str | None = None, admin_listen: str | None = None,
    *, worker: int | None = None, cfg: RouterConfig | None = None,
    allow_insecure_remote: bool = False, on_started: Callable[[], None] | None = None,
) -> int:
    """Run a sidecar until SIGTERM or SIGINT; SIGHUP reloads the config.

    `worker` (serve --workers): this process is worker i of a set sharing one port. `cfg`:
    the file already loaded by the caller. `on_started` is called once the start is done.
    """
    sidecar = Sidecar(cfg or load_config(config_path), config_path=config_path, listen=listen,
                      admin_listen=admin_listen, worker=worker,
                      allow_insecure_remote=allow_insecure_remote)
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
    if on_started is not None:
        on_started()
    await stop.wait()
    log.info("shutting down")
    await sidecar.stop()
    return 0
