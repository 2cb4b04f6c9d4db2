"""The routing-sidecar command: serve, validate, route, complete, budgets, report, cache, ..."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import traceback
import uuid
from typing import Any

import grpc

from routing_sidecar import logs
from routing_sidecar.errors import ConfigError, InvalidArgument, RoutingError
from routing_sidecar.grpc_api import auth, client, complete_client
from routing_sidecar.workers import WORKER_FLAG, check_workers, supervise
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb

# app and config (pydantic, the OTel SDK) are imported where used: `health` runs every few
# seconds as a container's health check, and starts about three times faster without them.

DEFAULT_TARGET = "127.0.0.1:50051"


def _admin_listen(value: str) -> str:
    from routing_sidecar.config import TelemetryConfig  # noqa: PLC0415

    try:
        return TelemetryConfig(admin_listen=value).admin_listen
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT or \"\" (got {value!r})") from exc


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="routing-sidecar", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the sidecar")
    s.add_argument("--config", default="config/router.yaml")
    s.add_argument("--listen", help="HOST:PORT or unix:///path.sock (overrides server.listen)")
    s.add_argument("--admin-listen", type=_admin_listen,
                   help='HOST:PORT of the admin port (/metrics, HTTP API, dashboard), or "" '
                        "for none (overrides admin.listen)")
    s.add_argument("--log-level", default="INFO")
    s.add_argument("--allow-insecure-remote", action="store_true",
                   help="serve a non-loopback --listen without TLS or a token (as "
                        "server.allow_insecure_remote: a network trusted as it is)")
    s.add_argument("--debug", action="store_true",
                   help="a refused start prints its traceback before the one-line reason")
    s.add_argument("--workers", type=int, default=1,
                   help="server processes on one port (SO_REUSEPORT); more than one needs "
                        "fleet.redis_url and store.url")
    s.add_argument(WORKER_FLAG, type=int, dest="worker_index", help=argparse.SUPPRESS)
    v = sub.add_parser("validate", help="check a config file; prints ok or every problem")
    v.add_argument("path")
    r = sub.add_parser("route", help="ask a running sidecar for a decision")
    r.add_argument("--target", default=DEFAULT_TARGET)
    r.add_argument("--task-type", required=True)
    r.add_argument("--task-id", default="")
    r.add_argument("--priority", type=int, default=50)
    r.add_argument("--ev", type=float)
    r.add_argument("--value", type=float, metavar="USD",
                   help="what a good result is worth: route by expected net value")
    r.add_argument("--min-quality", type=float, help="quality floor 0..1 for this task")
    r.add_argument("--input-tokens", type=int, default=0)
    r.add_argument("--max-output-tokens", type=int, default=0)
    r.add_argument("--objective", choices=sorted(client.OBJECTIVES), default="auto")
    r.add_argument("--policy", default="")
    r.add_argument("--capability", action="append", default=[])
    r.add_argument("--min-tier", type=int, default=0)
    r.add_argument("--label", action="append", default=[], help="key=value")
    r.add_argument("--slot", action="append", default=[], help="id=model[:utilisation]")
    r.add_argument("--exclude", action="append", default=[])
    r.add_argument("--dry-run", action="store_true")
    r.add_argument("--json", action="store_true")
    _complete_parser(sub)
    b = sub.add_parser("budgets", help="budget scopes: limit, spent, reserved, state")
    b.add_argument("--target", default=DEFAULT_TARGET)
    b.add_argument("--scope", action="append", default=[], help="scope or glob, repeatable")
    b.add_argument("--json", action="store_true")
    rep = sub.add_parser("report", help="decisions and spend by model, task type and provider")
    rep.add_argument("--target", default=DEFAULT_TARGET)
    rep.add_argument("--hours", type=int, default=24)
    rep.add_argument("--label-key", action="append", default=[], help="break down by label")
    rep.add_argument("--json", action="store_true")
    _cache_parser(sub)
    h = sub.add_parser("health", help="check a sidecar through the gRPC health protocol: "
                       "prints one line, exits 0 when SERVING, 1 otherwise")
    h.add_argument("--target", default=DEFAULT_TARGET, help="HOST:PORT or unix:///path.sock")
    h.add_argument("--service", default="", help='health name: "" (the server, default) or '
                   "routing_sidecar.v1.Router")
    h.add_argument("--timeout", type=_seconds, default=2.0, metavar="S")
    for cmd in (r, b, rep, h):
        _auth_args(cmd)
    fp = sub.add_parser("fake-provider", help="run the bundled fake LLM provider (OpenAI and "
                        "Anthropic wire formats, scripted by model name) until SIGTERM")
    fp.add_argument("--listen", default="127.0.0.1:9900", help="HOST:PORT")
    return p


def _complete_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    c = sub.add_parser("complete", help="let a running sidecar decide and make the call: the "
                       "answer streams, then every attempt as a table")
    c.add_argument("--target", default=DEFAULT_TARGET)
    c.add_argument("--task-type", required=True)
    c.add_argument("--prompt", required=True, help="the user message")
    c.add_argument("--system", help="a system message before it")
    c.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True,
                   help="print the answer as it arrives (default) or whole at the end")
    c.add_argument("--task-id", default="")
    c.add_argument("--priority", type=int, default=50)
    c.add_argument("--label", action="append", default=[], help="key=value")
    c.add_argument("--policy", default="")
    c.add_argument("--value", type=float, metavar="USD",
                   help="what a good result is worth: route by expected net value")
    c.add_argument("--max-output-tokens", type=int, default=0)
    c.add_argument("--temperature", type=float)
    c.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                   help="the deadline of the whole call, retries and fallbacks included")
    c.add_argument("--json", action="store_true", help="one JSON object per event")
    _auth_args(c)


def _auth_args(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--token-file", help="send the bearer token in this file (the server's "
                     "server.token_file)")
    cmd.add_argument("--tls-ca", metavar="PEM", help="dial with TLS, trusting this CA (or the "
                     "server's self-signed certificate)")


def _client_auth(args: argparse.Namespace) -> None:
    """Read --token-file and --tls-ca, if given, for every channel this command dials."""
    token_file, ca_file = getattr(args, "token_file", None), getattr(args, "tls_ca", None)
    if token_file or ca_file:
        auth.use_client_auth(auth.ClientAuth(
            token=auth.read_token(token_file, "--token-file", "cli") if token_file else None,
            ca=auth.read_pem(ca_file, "--tls-ca", "cli", "CERTIFICATE") if ca_file else None))


def _complete(args: argparse.Namespace) -> int:
    messages = [pb.ChatMessage(role="system", content=args.system)] if args.system else []
    messages.append(pb.ChatMessage(role="user", content=args.prompt))
    request = pb.CompleteRequest(
        route=pb.RouteRequest(
            task_id=args.task_id or f"cli-{uuid.uuid4().hex[:12]}", task_type=args.task_type,
            priority=args.priority, labels=client.parse_labels(args.label),
            policy=args.policy, max_output_tokens=args.max_output_tokens),
        messages=messages, stream=args.stream)
    if args.value is not None:
        request.route.value_micros = round(args.value * 1_000_000)
    if args.temperature is not None:
        request.temperature = args.temperature
    events = complete_client.stream(args.target, request, args.timeout)
    done = complete_client.print_events(events, json_lines=args.json)
    return 0 if done is not None and done.success else 1


def _fake_provider(listen: str) -> int:
    # Imported here: aiohttp is needed by this command only, not by every CLI start.
    from routing_sidecar.providers import fake_server  # noqa: PLC0415

    def ready(url: str) -> None:
        print(f"fake provider listening on {url}", flush=True)

    try:
        return asyncio.run(fake_server.serve(listen, on_ready=ready))
    except ValueError as exc:
        print(f"error: --listen: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        print(f"error: cannot listen on {listen}: {reason}", file=sys.stderr)
        return 1


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds <= 3600:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"expected seconds in (0, 3600] (got {value!r})")
    return seconds


def _health(target: str, service: str, timeout_s: float) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415

    name = service or '""'
    try:
        with auth.dial(target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
    except grpc.RpcError as exc:
        details = " ".join(str(exc.details()).split())  # one line, whatever the transport says
        print(f"error: {target} {name}: {exc.code().name}: {details}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{target} {name}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def _validate(path: str) -> int:
    from routing_sidecar.config import load_config  # noqa: PLC0415

    try:
        load_config(path)
    except ConfigError as exc:
        print(exc.message, file=sys.stderr)
        return 1
    print("ok")
    return 0


def _route(args: argparse.Namespace) -> int:
    request = pb.RouteRequest(
        task_id=args.task_id or f"cli-{uuid.uuid4().hex[:12]}",
        task_type=args.task_type,
        priority=args.priority,
        requires=pb.Requirements(min_tier=args.min_tier, capabilities=args.capability),
        estimated_input_tokens=args.input_tokens,
        max_output_tokens=args.max_output_tokens,
        labels=client.parse_labels(args.label),
        objective=client.OBJECTIVES[args.objective],  # type: ignore[arg-type]
        policy=args.policy,
        available_slots=[client.parse_slot(s) for s in args.slot],
        exclude_models=args.exclude,
        dry_run=args.dry_run,
    )
    if args.ev is not None:
        request.ev = args.ev
    if args.value is not None:
        request.value_micros = round(args.value * 1_000_000)
    if args.min_quality is not None:
        request.requires.min_quality = args.min_quality
    decision = client.route(args.target, request)
    print(client.to_json(decision) if args.json else client.render_decision(decision))
    return 0


def _cache_parser(sub: Any) -> None:
    c = sub.add_parser("cache", help="the response cache: stats, or purge entries")
    cache_sub = c.add_subparsers(dest="cache_command", required=True)
    cs = cache_sub.add_parser("stats", help="entries, bytes, hits, misses and savings")
    cp = cache_sub.add_parser("purge", help="delete the entries of a namespace and/or project")
    for cmd in (cs, cp):
        cmd.add_argument("--target", default=DEFAULT_TARGET)
        cmd.add_argument("--namespace", help='only this namespace ("" is the default one)')
        cmd.add_argument("--project", help="only entries of this project")
        cmd.add_argument("--json", action="store_true")
        _auth_args(cmd)
    cs.add_argument("--hours", type=int, default=24, help="window of the hit counts")
    cp.add_argument("--all", action="store_true", help="purge every entry")


def _cache(args: argparse.Namespace) -> int:
    if args.cache_command == "stats":
        stats = client.cache_stats(args.target, args.namespace, args.project, args.hours)
        print(client.to_json(stats) if args.json else client.render_cache_stats(stats))
        return 0
    result = client.purge_cache(args.target, args.namespace, args.project, args.all)
    print(client.to_json(result) if args.json else f"purged {result.deleted} entries")
    return 0


def _supervise(args: argparse.Namespace) -> int:
    from routing_sidecar.config import load_config  # noqa: PLC0415

    cfg = load_config(args.config)
    check_workers(cfg, args.workers, args.listen or cfg.server.listen)
    argv = [sys.executable, "-m", "routing_sidecar", "serve", "--config", args.config,
            "--log-level", args.log_level]
    if args.listen:
        argv += ["--listen", args.listen]
    if args.admin_listen is not None:
        argv += ["--admin-listen", args.admin_listen]
    if args.allow_insecure_remote:
        argv.append("--allow-insecure-remote")
    return supervise(argv, args.workers, cfg.server.grace_period_s)


def _started() -> None:
    """Once the sidecar serves: collect garbage again, leaving out what the start made."""
    gc.freeze()  # it lives as long as the process: no later collection need scan it
    gc.enable()


def _serve(args: argparse.Namespace) -> int:
    """Run the sidecar; a start that fails exits 1 (2: bad config) with one line on stderr."""
    logs.configure(args.log_level)
    supervisor = args.workers > 1 and args.worker_index is None
    if not supervisor:
        # A start allocates a few hundred thousand objects (modules, classes, the config)
        # and frees almost none: the collector's passes over them until the sidecar serves
        # are wasted, about a tenth of the time to SERVING.
        gc.disable()
    try:
        if supervisor:
            return _supervise(args)
        from routing_sidecar.config import load_config  # noqa: PLC0415

        cfg = load_config(args.config)  # before the server's imports: a bad file fails fast
        from routing_sidecar.app import serve  # noqa: PLC0415
        from routing_sidecar.event_loop import loop_factory  # noqa: PLC0415

        factory = loop_factory(cfg.server.event_loop, args.config)
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(serve(args.config, args.listen, args.admin_listen,
                                    worker=args.worker_index, cfg=cfg,
                                    allow_insecure_remote=args.allow_insecure_remote,
                                    on_started=_started))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # every failure becomes one line; --debug shows the traceback
        if args.debug:
            traceback.print_exc()
        print(f"error: {start_failure(exc)}", file=sys.stderr, flush=True)
        return 2 if isinstance(exc, ConfigError) else 1
    finally:
        gc.enable()  # after a refused start; a no-op once _started ran


def start_failure(exc: BaseException) -> str:
    """One line saying what failed at start and where, without internals."""
    if isinstance(exc, ConfigError):
        return f"{exc.source}: invalid configuration: {'; '.join(exc.problems)}"
    if isinstance(exc, RoutingError):
        text = exc.message
    elif isinstance(exc, OSError):
        text = str(exc) if not exc.filename else (
            f"{exc.filename}: {exc.strerror or exc}")
    else:
        text = f"cannot start ({type(exc).__name__}: {exc}); run with --debug for the traceback"
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    """Entry point of the routing-sidecar command."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        _client_auth(args)
        if args.command == "health":
            return _health(args.target, args.service, args.timeout)
        if args.command == "validate":
            return _validate(args.path)
        if args.command == "fake-provider":
            return _fake_provider(args.listen)
        if args.command == "budgets":
            msg = client.budgets(args.target, args.scope)
            print(client.to_json(msg) if args.json else client.render_budgets(msg))
            return 0
        if args.command == "cache":
            return _cache(args)
        if args.command == "report":
            rep = client.stats(args.target, args.hours, args.label_key)
            print(client.to_json(rep) if args.json else client.render_stats(rep))
            return 0
        if args.command == "complete":
            return _complete(args)
        return _route(args)
    except ConfigError as exc:
        print(exc.message if exc.source != "cli" else f"error: {'; '.join(exc.problems)}",
              file=sys.stderr)
        return 2
    except InvalidArgument as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
