"""Hypothesis strategies for every Router request message, built from the generated descriptors.

Each field gets values of its wire type, mixed with values that mean something to the sidecar
(known models, task types, policies, decision ids, label variants) and with hostile ones
(newlines, NUL, control and zero-width characters, huge numbers, NaN, unknown enum values), so
that examples reach past validation into deciding, reserving and settling as well.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb

F = FieldDescriptor
INT_RANGES = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1), F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1), F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1), F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1), F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1), F.TYPE_FIXED64: (0, 2**64 - 1),
}
# Values that break naive checks: a trailing newline, NUL, tabs, zero-width and bidi controls,
# a line separator, case and space variants, a glob, fullwidth letters, and sheer length.
HOSTILE = ["", " ", "x\n", "x\r\n", "\n", "a\x00b", "a\tb", "a\u200bb", "\u202ex", "a\u2028b",
           "ALPHA", "alpha ", " alpha", "alpha\n", "al pha", "alpha*",
           "\uff41\uff4c\uff50\uff48\uff41", "project:alpha", "../../etc",
           "'; DROP TABLE x;--", "x" * 129, "y" * 300]
UNSET = object()


class Recent:
    """Ids of decisions the sidecar made, picked by a drawn index.

    The ids are only known at run time; drawing an index of fixed range (instead of sampling
    from a list that grows) keeps what Hypothesis draws the same from one run to the next.
    """

    def __init__(self, size: int = 32) -> None:
        self.ids: list[str] = []
        self.size = size

    def add(self, decision_id: str) -> None:
        """Remember a decision id, keeping the newest `size`."""
        self.ids = [*self.ids[-(self.size - 1):], decision_id]

    def pick(self, i: int) -> str:
        """The i-th newest id (wrapping); an unknown one when there are none yet."""
        return self.ids[-1 - i % len(self.ids)] if self.ids else "0" * 32

    def strategy(self) -> st.SearchStrategy[str]:
        """One of the recent ids."""
        return st.integers(0, self.size - 1).map(self.pick)


NO_RECENT = Recent()

# Strings per field name that the server knows, so examples also get past validation.
KNOWN: dict[str, list[str]] = {
    "task_id": ["t-1", "t-2", "task.3"],
    "task_type": ["fix_bug", "check_links", "research_market", "simple_query", "docs_x"],
    "policy": ["code", "ops", "normal", "deep_research", "nope"],
    "model": ["gpt-5", "gpt-5-mini", "claude-haiku-4-5", "minimax-m2", "gpt-9"],
    "provider": ["openai", "anthropic", "minimax", "acme"],
    "slot_id": ["w1", "w2"],
    "cache_key": ["k1", "k2"],
    "error_type": ["timeout", "rate_limited", "openai.APIError"],
    "capabilities": ["code", "tools", "vision", "teleport"],
    "exclude_models": ["gpt-5", "claude-opus-4-1"],
    "scopes": ["global", "project:*", "project:alpha", "worker:*", "model:gpt-5", "*"],
    "label_keys": ["project", "lane", "layer", "worker"],
    "namespace": ["", "nightly"],
    "project": ["alpha", "beta"],
}
LABEL_KEYS = ["project", "worker", "lane", "layer", "team", "complexity", "risk"]
LABEL_VALUES = ["alpha", "ALPHA", "Alpha ", "beta", "gamma", "delta", "w1", "w2", "fast",
                "payments", "high", "low", "api", "db"]


def text() -> st.SearchStrategy[str]:
    """Any text protobuf accepts (no lone surrogates), short or long."""
    return st.text(st.characters(exclude_categories=["Cs"]), max_size=40) | st.text(
        st.characters(exclude_categories=["Cs"]), min_size=100, max_size=400)


def string_for(name: str, recent: Recent) -> st.SearchStrategy[str]:
    """Known values for this field (weighted up), hostile ones, and any text."""
    parts = [st.sampled_from(HOSTILE), text()]
    if name == "decision_id":
        parts = [recent.strategy(), recent.strategy(), *parts]
    elif name in KNOWN:
        parts = [st.sampled_from(KNOWN[name]), st.sampled_from(KNOWN[name]), *parts]
    return st.one_of(parts)


def _scalar(f: FieldDescriptor, recent: Recent) -> st.SearchStrategy[Any]:
    if f.type == F.TYPE_STRING:
        return string_for(f.name, recent)
    if f.type == F.TYPE_BYTES:
        return st.binary(max_size=64)
    if f.type == F.TYPE_BOOL:
        return st.booleans()
    if f.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return st.floats(width=64 if f.type == F.TYPE_DOUBLE else 32) | st.sampled_from(
            [0.0, 0.5, 1.0, -0.0, 1.5, -1.0, float("nan"), float("inf")])
    if f.type == F.TYPE_ENUM:
        # Known values, and unknown ones: proto3 enums are open on the wire.
        return st.sampled_from([v.number for v in f.enum_type.values]) | st.integers(-3, 99)
    lo, hi = INT_RANGES[f.type]
    small = st.integers(max(lo, -5), min(hi, 5000))
    return small | small | st.integers(lo, hi) | st.sampled_from([lo, hi])


def _value(f: FieldDescriptor, recent: Recent, depth: int
           ) -> st.SearchStrategy[Any]:
    if f.type == F.TYPE_MESSAGE:
        return message(f.message_type, recent, depth + 1)
    return _scalar(f, recent)


def _labels(recent: Recent) -> st.SearchStrategy[dict[str, str]]:
    keys = st.sampled_from(LABEL_KEYS) | string_for("label_key", recent)
    values = st.sampled_from(LABEL_VALUES) | string_for("label_value", recent)
    return st.dictionaries(keys, values, max_size=5)


def _field(f: FieldDescriptor, recent: Recent, depth: int
           ) -> st.SearchStrategy[Any]:
    entry = f.message_type if f.type == F.TYPE_MESSAGE else None
    if entry is not None and entry.GetOptions().map_entry:
        if f.name == "labels":
            return _labels(recent)
        key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
        return st.dictionaries(_scalar(key, recent), _value(value, recent, depth), max_size=4)
    if f.is_repeated:
        return st.lists(_value(f, recent, depth), max_size=4)
    return _value(f, recent, depth)


def _build(cls: type[Message], values: Mapping[str, Any]) -> Message:
    msg = cls()
    for name, value in values.items():
        if value is UNSET:
            continue
        f = cls.DESCRIPTOR.fields_by_name[name]
        target = getattr(msg, name)
        if f.type == F.TYPE_MESSAGE and f.message_type.GetOptions().map_entry:
            for k, v in value.items():
                if isinstance(v, Message):
                    target[k].CopyFrom(v)
                else:
                    target[k] = v
        elif f.is_repeated:
            for v in value:
                if isinstance(v, Message):
                    target.add().CopyFrom(v)
                else:
                    target.append(v)
        elif f.type == F.TYPE_MESSAGE:
            target.CopyFrom(value)
        else:
            setattr(msg, name, value)
    return msg


def message(desc: Descriptor, recent: Recent = NO_RECENT,
            depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of `desc`'s type: each field left unset or given a drawn value."""
    cls = message_factory.GetMessageClass(desc)
    if depth > 3:
        return st.just(cls())
    fields = {f.name: st.just(UNSET) | _field(f, recent, depth) for f in desc.fields}
    return st.fixed_dictionaries(fields).map(lambda values: _build(cls, values))


def _valid_route(recent: Recent) -> st.SearchStrategy[Message]:
    def known(name: str) -> st.SearchStrategy[str]:
        return st.sampled_from(KNOWN[name])
    slot = st.builds(pb.Slot, slot_id=known("slot_id"), model=known("model"),
                     utilisation=st.floats(0, 1))
    return st.builds(
        pb.RouteRequest, task_id=known("task_id"), task_type=known("task_type"),
        priority=st.integers(0, 100), estimated_input_tokens=st.integers(0, 50_000),
        max_output_tokens=st.integers(0, 8000),
        labels=st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES),
                               max_size=3),
        policy=st.sampled_from(["", "", "code", "ops"]), dry_run=st.booleans(),
        available_slots=st.lists(slot, max_size=2) | st.just([]),
        exclude_models=st.lists(known("exclude_models"), max_size=1),
        ev=st.none() | st.floats(0, 1000),
    )


def _valid_outcome(recent: Recent) -> st.SearchStrategy[Message]:
    attempt = st.builds(
        pb.Attempt, model=st.sampled_from(KNOWN["model"][:4]), status=st.integers(1, 5),
        input_tokens=st.integers(0, 10_000), output_tokens=st.integers(0, 10_000),
        cost_micros=st.none() | st.integers(0, 100_000))
    return st.builds(pb.Outcome, decision_id=recent.strategy() | st.just("0" * 32),
                     attempts=st.lists(attempt, max_size=3), success=st.booleans(),
                     quality=st.none() | st.floats(0, 1))


def _valid(method: str, recent: Recent) -> st.SearchStrategy[Message]:
    if method in ("Route", "RouteStream"):
        return _valid_route(recent)
    if method == "ReportOutcome":
        return _valid_outcome(recent)
    if method == "Complete":
        chat = st.builds(pb.ChatMessage, role=st.sampled_from(["system", "user", "assistant"]),
                         content=st.text(max_size=40))
        return st.builds(pb.CompleteRequest, route=_valid_route(recent),
                         messages=st.lists(chat, min_size=1, max_size=3), stream=st.booleans())
    if method == "GetBudgetStatus":
        return st.builds(pb.BudgetQuery, scopes=st.lists(st.sampled_from(KNOWN["scopes"]),
                                                          max_size=3))
    if method in ("GetCacheStats", "PurgeCache"):
        def maybe(name: str) -> st.SearchStrategy[str | None]:
            return st.none() | st.sampled_from(KNOWN[name])
        return st.builds(pb.CacheQuery, namespace=maybe("namespace"), project=maybe("project"),
                         hours=st.integers(0, 48), all=st.booleans())
    if method != "GetRoutingStats":
        raise KeyError(f"no valid-message strategy for Router.{method}: add one")
    return st.builds(pb.StatsQuery, hours=st.integers(0, 48),
                     label_keys=st.lists(st.sampled_from(KNOWN["label_keys"]), max_size=2))


def perturbed(base: st.SearchStrategy[Message], recent: Recent
              ) -> st.SearchStrategy[Message]:
    """A valid message with one field replaced by any value of its type (hostile included)."""

    def one_field(msg: Message) -> st.SearchStrategy[Message]:
        desc = msg.DESCRIPTOR

        def replace(args: tuple[str, Any]) -> Message:
            name, value = args
            out = type(msg)()
            out.CopyFrom(msg)
            out.ClearField(name)
            merged = _build(type(msg), {name: value})
            out.MergeFrom(merged)
            return out
        name = st.sampled_from([f.name for f in desc.fields])
        return name.flatmap(lambda n: st.tuples(
            st.just(n), _field(desc.fields_by_name[n], recent, 0))).map(replace)

    return base.flatmap(one_field)


def requests(recent: Recent = NO_RECENT) -> dict[str, st.SearchStrategy[Any]]:
    """Method name -> strategy of its request message, for every Router RPC.

    A mix: valid messages (which reach deciding, reserving and settling), valid ones with one
    field hostile (which reach each check), and messages drawn field by field from the
    descriptor (which reach whatever the first two miss).
    """
    service = pb.DESCRIPTOR.services_by_name["Router"]
    out: dict[str, st.SearchStrategy[Any]] = {}
    for m in service.methods:
        valid = _valid(m.name, recent)
        out[m.name] = st.one_of(valid, perturbed(valid, recent), perturbed(valid, recent),
                                message(m.input_type, recent))
    return out


def raw_bodies(base: st.SearchStrategy[Message]) -> st.SearchStrategy[bytes]:
    """Random bytes, and valid encodings truncated, spliced or with a byte flipped."""

    def mutate(args: tuple[Message, int, bytes, int]) -> bytes:
        msg, at, splice, how = args
        body = msg.SerializeToString()
        at = at % (len(body) + 1)
        if how == 0:
            return body[:at]
        if how == 1:
            return body[:at] + splice + body[at:]
        if body:
            i = at % len(body)
            return body[:i] + bytes([body[i] ^ 0xFF]) + body[i + 1:]
        return splice
    mutated = st.tuples(base, st.integers(0, 10_000), st.binary(min_size=1, max_size=8),
                        st.integers(0, 2)).map(mutate)
    return st.binary(max_size=256) | mutated
