"""A small client for the CLI and tools: builds requests and renders answers."""

from __future__ import annotations

import json
from typing import Any

from routing_sidecar.errors import InvalidArgument
from routing_sidecar.grpc_api import auth
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb
from routing_sidecar_api.routing_sidecar.v1 import router_pb2_grpc as pb_grpc

OBJECTIVES = {"auto": 0, "cost_speed": 1, "balanced": 2, "quality": 3}


def parse_slot(text: str) -> pb.Slot:
    """Parse 'id=model:util' (util optional) into a Slot."""
    slot_id, sep, rest = text.partition("=")
    if not sep or not slot_id or not rest:
        raise InvalidArgument("--slot", f"expected id=model[:utilisation], got {text!r}")
    model, _, util = rest.partition(":")
    try:
        return pb.Slot(slot_id=slot_id, model=model, utilisation=float(util) if util else 0.0)
    except ValueError:
        raise InvalidArgument("--slot", f"utilisation must be a number in {text!r}") from None


def parse_labels(items: list[str]) -> dict[str, str]:
    """Parse k=v pairs."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidArgument("--label", f"expected key=value, got {item!r}")
        out[key] = value
    return out


def route(target: str, request: pb.RouteRequest, timeout_s: float = 5.0) -> pb.Decision:
    """Call Route on a running sidecar."""
    with auth.dial(target) as channel:
        stub = pb_grpc.RouterStub(channel)
        result: pb.Decision = stub.Route(request, timeout=timeout_s)
        return result


def to_json(message: Any, indent: int | None = 2) -> str:
    """Render a message as JSON with proto field names."""
    # Imported here: `serve` imports this module (through the CLI) and never renders JSON.
    from google.protobuf import json_format  # noqa: PLC0415

    return json.dumps(
        json_format.MessageToDict(message, preserving_proto_field_name=True), indent=indent
    )


def _usd(micros: int) -> str:
    return f"${micros / 1_000_000:.6f}"


def render_decision(d: pb.Decision) -> str:
    """A readable table of a decision, its fallbacks and every alternative."""
    status = pb.DecisionStatus.Name(d.status).removeprefix("DECISION_STATUS_")
    valued = any(a.HasField("expected_net_value_micros") for a in d.alternatives)
    code = pb.ReasonCode.Name(d.reason_code).removeprefix("REASON_CODE_")
    lines = [
        f"decision  {d.decision_id}  task {d.task_id}",
        f"status    {status} ({code})" + ("  [dry run]" if d.dry_run else "")
        + ("  [exploring]" if d.explored else ""),
        f"model     {d.model or '-'}  provider {d.provider or '-'}  tier {d.tier or '-'}"
        + (f"  slot {d.slot_id}" if d.slot_id else ""),
        f"policy    {d.policy}  objective "
        + pb.Objective.Name(d.objective).removeprefix("OBJECTIVE_").lower(),
        f"est. cost {_usd(d.estimated_cost_micros)}",
        f"reason    {d.reason}",
        "fallbacks " + (" -> ".join(f"{f.model} ({f.provider})" for f in d.fallbacks) or "-"),
        "",
        f"{'model':<22} {'provider':<10} {'tier':>4} {'score':>7} {'est. cost':>12} {'qual':>5}"
        + (f" {'net value':>12}" if valued else "") + "  outcome",
    ]
    for a in d.alternatives:
        net = ""
        if valued:
            shown = (_usd(a.expected_net_value_micros)
                     if a.HasField("expected_net_value_micros") else "-")
            net = f" {shown:>12}"
        lines.append(
            f"{a.model:<22} {a.provider:<10} {a.tier:>4} {a.score:>7.4f} "
            f"{_usd(a.estimated_cost_micros):>12} {a.estimated_quality:>5.2f}{net}  "
            f"{a.reason if a.reason.startswith(a.rejection) else f'{a.rejection}: {a.reason}'}"
        )
    return "\n".join(lines)


def budgets(target: str, scopes: list[str], timeout_s: float = 5.0) -> pb.BudgetStatusList:
    """Call GetBudgetStatus on a running sidecar."""
    with auth.dial(target) as channel:
        result: pb.BudgetStatusList = pb_grpc.RouterStub(channel).GetBudgetStatus(
            pb.BudgetQuery(scopes=scopes), timeout=timeout_s
        )
        return result


def stats(
    target: str, hours: int, label_keys: list[str], timeout_s: float = 10.0
) -> pb.RoutingStats:
    """Call GetRoutingStats on a running sidecar."""
    with auth.dial(target) as channel:
        result: pb.RoutingStats = pb_grpc.RouterStub(channel).GetRoutingStats(
            pb.StatsQuery(hours=hours, label_keys=label_keys), timeout=timeout_s
        )
        return result


def render_budgets(msg: pb.BudgetStatusList) -> str:
    """A table of budget scopes, one row each."""
    lines = [
        f"{'scope':<24} {'period':<6} {'limit':>12} {'spent':>12} {'reserved':>12} "
        f"{'remaining':>12} {'state':<8} period ends"
    ]
    for b in msg.budgets:
        period = pb.BudgetPeriod.Name(b.period).removeprefix("BUDGET_PERIOD_").lower()
        state = pb.BudgetState.Name(b.state).removeprefix("BUDGET_STATE_")
        ends = b.period_end.ToJsonString() if b.HasField("period_end") else "-"
        lines.append(
            f"{b.scope:<24} {period:<6} {_usd(b.limit_micros):>12} {_usd(b.spent_micros):>12} "
            f"{_usd(b.reserved_micros):>12} {_usd(b.remaining_micros):>12} {state:<8} {ends}"
        )
    return "\n".join(lines) if msg.budgets else "no budgets configured"


def render_stats(msg: pb.RoutingStats) -> str:
    """The model x dimension matrix and the per-provider table."""
    lines = [
        f"window {msg.window_start.ToJsonString()} .. {msg.window_end.ToJsonString()}",
        "",
        f"{'model':<22} {'dimension':<16} {'value':<22} {'decisions':>9} {'est $/dec':>11} "
        f"{'actual $/dec':>12}",
    ]
    for c in msg.cells:
        lines.append(
            f"{c.model:<22} {c.dimension:<16} {c.value:<22} {c.decisions:>9} "
            f"{_usd(c.estimated_cost_micros_per_decision):>11} "
            f"{_usd(c.actual_cost_micros_per_decision):>12}"
        )
    lines += [
        "",
        f"{'provider':<12} {'decisions':>9} {'fallback':>8} {'errors':>7} {'in tok':>10} "
        f"{'out tok':>10} {'spend':>12} {'$/Mtok':>10}  state",
    ]
    for p in msg.providers:
        lines.append(
            f"{p.provider:<12} {p.decisions:>9} {p.fallback_rate:>8.1%} {p.error_rate:>7.1%} "
            f"{p.input_tokens:>10} {p.output_tokens:>10} {_usd(p.spend_micros):>12} "
            f"{p.blended_cost_micros_per_mtok / 1e6:>10.4f}  {p.detection_state or '-'}"
        )
    rows = list(msg.cache)
    hits, misses = sum(u.hits for u in rows), sum(u.misses for u in rows)
    total = pb.CacheUsage(hits=hits, misses=misses, stores=sum(u.stores for u in rows),
                          saved_micros=sum(u.saved_micros for u in rows),
                          hit_rate=hits / (hits + misses) if hits + misses else 0.0)
    return "\n".join(lines + _render_health(msg) + _render_learned(msg)
                     + _render_cache_usage(rows, total))


def _cache_query(namespace: str | None, project: str | None, hours: int = 0,
                 everything: bool = False) -> pb.CacheQuery:
    q = pb.CacheQuery(hours=hours, all=everything)
    if namespace is not None:
        q.namespace = namespace
    if project is not None:
        q.project = project
    return q


def cache_stats(target: str, namespace: str | None, project: str | None, hours: int,
                timeout_s: float = 10.0) -> pb.CacheStats:
    """Call GetCacheStats on a running sidecar."""
    with auth.dial(target) as channel:
        result: pb.CacheStats = pb_grpc.RouterStub(channel).GetCacheStats(
            _cache_query(namespace, project, hours), timeout=timeout_s)
        return result


def purge_cache(target: str, namespace: str | None, project: str | None, everything: bool,
                timeout_s: float = 30.0) -> pb.PurgeCacheResult:
    """Call PurgeCache on a running sidecar."""
    with auth.dial(target) as channel:
        result: pb.PurgeCacheResult = pb_grpc.RouterStub(channel).PurgeCache(
            _cache_query(namespace, project, everything=everything), timeout=timeout_s)
        return result


def _render_cache_usage(rows: list[pb.CacheUsage], total: pb.CacheUsage | None = None) -> list[
        str]:
    if not rows:
        return []
    lines = ["", f"{'cache: namespace':<18} {'policy':<14} {'project':<14} {'hits':>7} "
                 f"{'misses':>7} {'hit rate':>8} {'stores':>7} {'saved':>12}"]
    for u in [*rows, *([total] if total is not None else [])]:
        name = "(all)" if u is total else (u.namespace or "-")
        lines.append(
            f"{name:<18} {u.policy or '-':<14} {u.project or '-':<14} {u.hits:>7} "
            f"{u.misses:>7} {u.hit_rate:>8.1%} {u.stores:>7} {_usd(u.saved_micros):>12}")
    return lines


def render_cache_stats(msg: pb.CacheStats) -> str:
    """What the cache holds against its bounds, then hits, misses and savings per row."""
    lines = [
        f"backend {msg.backend}  entries {msg.entries} of {msg.max_entries}  "
        f"bytes {msg.bytes} of {msg.max_bytes}",
        f"window {msg.window_start.ToJsonString()} .. {msg.window_end.ToJsonString()}",
        f"hits {msg.total.hits}  misses {msg.total.misses}  hit rate {msg.total.hit_rate:.1%}  "
        f"saved {_usd(msg.total.saved_micros)}",
    ]
    return "\n".join(lines + _render_cache_usage(list(msg.usage), msg.total))


def _render_health(msg: pb.RoutingStats) -> list[str]:
    if not msg.health:
        return []
    lines = [
        "",
        f"{'health':<30} {'volume':>7} {'success':>8} {'fallback':>8} {'latency s':>9} "
        f"{'tok/s':>7}  breaker / state",
    ]
    for h in msg.health:
        until = f" until {h.open_until.ToJsonString()}" if h.HasField("open_until") else ""
        lines.append(
            f"{h.scope + ':' + h.name:<30} {h.volume:>7.1f} {h.success_rate:>8.1%} "
            f"{h.fallback_rate:>8.1%} {h.latency_ewma_s:>9.2f} {h.tokens_per_s:>7.0f}  "
            f"{h.breaker}{until}" + (f" / {h.detection_state}" if h.detection_state else "")
        )
    return lines


def _render_learned(msg: pb.RoutingStats) -> list[str]:
    if not msg.learned:
        return []
    lines = ["", f"{'task type':<24} {'model':<24} {'mean':>6} {'lower':>6} {'samples':>8}"]
    lines += [
        f"{q.task_type:<24} {q.model:<24} {q.mean:>6.3f} {q.lower_bound:>6.3f} {q.samples:>8.1f}"
        for q in msg.learned
    ]
    return lines
