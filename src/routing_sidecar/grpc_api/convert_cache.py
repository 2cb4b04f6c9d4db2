"""Response cache messages: CacheQuery in, CacheStats and CacheUsage out."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from routing_sidecar.errors import InvalidArgument
from routing_sidecar.grpc_api.convert import check_label_value, check_name, timestamp
from routing_sidecar.ports import CacheUsage
from routing_sidecar.service.cache import CacheReport
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb

MAX_NAMESPACE = 128
MAX_HOURS = 24 * 366


@dataclass(frozen=True, slots=True)
class Query:
    """A validated CacheQuery."""

    namespace: str | None
    project: str | None
    hours: int
    all: bool


def namespace(field: str, value: str) -> str:
    """A cache namespace: empty (the default) or a name of up to 128 characters."""
    return check_name(field, value, required=False, max_len=MAX_NAMESPACE)


def query_from_pb(q: pb.CacheQuery, casefold: bool = False) -> Query:
    """Validate a CacheQuery, naming the field at fault.

    `casefold` (limits.casefold_scope_labels): the project is folded as requests' labels are.
    """
    ns = namespace("namespace", q.namespace) if q.HasField("namespace") else None
    project = None
    if q.HasField("project"):
        project = check_label_value("project", q.project)
        project = project.lower() if casefold else project
    if not 0 <= q.hours <= MAX_HOURS:
        raise InvalidArgument("hours", f"must be 0..{MAX_HOURS} (got {q.hours})")
    return Query(ns, project, q.hours or 24, q.all)


def purge_scope(q: Query) -> tuple[str | None, str | None]:
    """What a purge deletes; purging everything must be asked for with `all`."""
    if q.namespace is None and q.project is None and not q.all:
        raise InvalidArgument("all", "give a namespace or a project, or set all to purge "
                                     "every entry")
    if q.all and (q.namespace is not None or q.project is not None):
        raise InvalidArgument("all", "purges everything: it goes without namespace and project")
    return q.namespace, q.project


def _rate(hits: int, misses: int) -> float:
    return hits / (hits + misses) if hits + misses else 0.0


def usage_to_pb(u: CacheUsage) -> pb.CacheUsage:
    """One usage row with its hit rate."""
    return pb.CacheUsage(namespace=u.namespace, policy=u.policy, project=u.project,
                         hits=u.hits, misses=u.misses, stores=u.stores,
                         saved_micros=u.saved_micros, hit_rate=_rate(u.hits, u.misses))


def total(rows: Iterable[CacheUsage]) -> pb.CacheUsage:
    """The rows added up (namespace, policy and project left empty)."""
    hits = misses = stores = saved = 0
    for u in rows:
        hits, misses = hits + u.hits, misses + u.misses
        stores, saved = stores + u.stores, saved + u.saved_micros
    return pb.CacheUsage(hits=hits, misses=misses, stores=stores, saved_micros=saved,
                         hit_rate=_rate(hits, misses))


def stats_to_pb(report: CacheReport, until: float) -> pb.CacheStats:
    """GetCacheStats' answer."""
    msg = pb.CacheStats(
        backend=report.backend, entries=report.footprint.entries, bytes=report.footprint.bytes,
        max_entries=report.max_entries, max_bytes=report.max_bytes,
        usage=[usage_to_pb(u) for u in report.usage], total=total(report.usage),
    )
    msg.window_start.CopyFrom(timestamp(report.since))
    msg.window_end.CopyFrom(timestamp(until))
    return msg
