"""The proto3 JSON mapping of the Router messages, for the HTTP API.

A JSON body is checked field by field against the message's descriptor (every problem names
its path, as the gRPC converters do: `requires.min_tier`, `available_slots[1].utilisation`,
`labels[project]`), parsed into the generated message with `google.protobuf.json_format`, and
then handed to the very converters the gRPC servicer uses, so both transports validate and
convert alike. Answers are the converters' messages printed as proto3 JSON (lowerCamelCase
names, 64-bit integers as strings, enums by name, every field present).
"""

from __future__ import annotations

import math
import re
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health, health_pb2

from routing_sidecar import domain
from routing_sidecar.errors import InvalidArgument
from routing_sidecar.grpc_api import convert, convert_outcome, convert_stats
from routing_sidecar.service.outcomes import OutcomeAck
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb

M = TypeVar("M", bound=Message)
JsonObject = dict[str, Any]

F = FieldDescriptor
_INT_RANGES = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1), F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1), F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1), F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1), F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1), F.TYPE_FIXED64: (0, 2**64 - 1),
}
_FLOATS = frozenset({F.TYPE_DOUBLE, F.TYPE_FLOAT})
_SPECIAL_FLOATS = frozenset({"NaN", "Infinity", "-Infinity"})
_INTEGER_TEXT = re.compile(r"-?[0-9]{1,20}")
DURATION_TEXT = re.compile(r"-?[0-9]{1,12}(\.[0-9]{1,9})?s")
TIMESTAMP = "google.protobuf.Timestamp"
DURATION = "google.protobuf.Duration"


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def check_message(value: object, desc: Descriptor, path: str = "") -> None:
    """Raise InvalidArgument at the first field of `value` that `desc` cannot take."""
    if not isinstance(value, dict):
        raise InvalidArgument(path or "body", f"expected a JSON object (a {desc.name})")
    seen: dict[str, str] = {}
    for key, item in value.items():
        field = desc.fields_by_camelcase_name.get(key) or desc.fields_by_name.get(key)
        if field is None:
            raise InvalidArgument(_join(path, str(key)), f"not a field of {desc.name}")
        where = _join(path, field.name)
        if field.name in seen:
            raise InvalidArgument(where, f"given twice (as {seen[field.name]!r} and {key!r})")
        seen[field.name] = key
        if item is not None:  # null: the field's default, as proto3 JSON says
            _check_field(item, field, where)


def _check_field(value: object, field: FieldDescriptor, path: str) -> None:
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        if not isinstance(value, dict):
            raise InvalidArgument(path, "expected a JSON object")
        for key, item in value.items():
            _check_value(item, entry.fields_by_name["value"], f"{path}[{key}]")
    elif field.is_repeated:
        if not isinstance(value, list):
            raise InvalidArgument(path, "expected a JSON array")
        for i, item in enumerate(value):
            _check_value(item, field, f"{path}[{i}]")
    else:
        _check_value(value, field, path)


def _check_value(value: object, field: FieldDescriptor, path: str) -> None:
    msg = field.message_type
    if msg is not None:
        _check_nested(value, msg, path)
    elif field.enum_type is not None:
        names = field.enum_type.values_by_name
        if isinstance(value, str) and value not in names:
            raise InvalidArgument(path, f"unknown value {_shown(value)}; one of "
                                  + ", ".join(names))
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise InvalidArgument(path, f"expected an enum name (got {_shown(value)})")
    elif field.type in _INT_RANGES:
        _check_int(value, _INT_RANGES[field.type], path)
    elif field.type in _FLOATS:
        _check_float(value, path)
    elif field.type == F.TYPE_BOOL:
        if not isinstance(value, bool):
            raise InvalidArgument(path, f"expected true or false (got {_shown(value)})")
    elif not isinstance(value, str):  # string, and bytes as base64
        raise InvalidArgument(path, f"expected a string (got {_shown(value)})")


def _check_nested(value: object, msg: Descriptor, path: str) -> None:
    if msg.full_name == TIMESTAMP:
        try:
            Timestamp().FromJsonString(value)  # type: ignore[arg-type]
        except (ValueError, TypeError, AttributeError):
            raise InvalidArgument(path, "expected an RFC 3339 time such as "
                                  "\"2026-01-02T03:04:05Z\"") from None
    elif msg.full_name == DURATION:
        if not isinstance(value, str) or not DURATION_TEXT.fullmatch(value):
            raise InvalidArgument(path, f"expected seconds such as \"1.5s\" (got {_shown(value)})")
    else:
        check_message(value, msg, path)


def _check_int(value: object, bounds: tuple[int, int], path: str) -> None:
    integral = (
        (isinstance(value, int) and not isinstance(value, bool))
        or (isinstance(value, float) and value.is_integer())
        or (isinstance(value, str) and _INTEGER_TEXT.fullmatch(value) is not None)
    )
    if not integral:
        raise InvalidArgument(path, f"expected an integer (got {_shown(value)})")
    number = int(value)  # type: ignore[call-overload]
    low, high = bounds
    if not low <= number <= high:
        raise InvalidArgument(path, f"must be {low}..{high} (got {number})")


def _check_float(value: object, path: str) -> None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return
    if isinstance(value, str):
        if value in _SPECIAL_FLOATS:
            return
        try:
            if math.isfinite(float(value)):
                return
        except ValueError:
            pass
    raise InvalidArgument(path, f"expected a number (got {_shown(value)})")


def parse(value: object, message: type[M]) -> M:
    """A JSON value (already decoded) as `message`, or InvalidArgument naming the field."""
    desc: Descriptor = message.DESCRIPTOR  # type: ignore[assignment]
    check_message(value, desc)
    assert isinstance(value, dict)  # check_message refuses anything else
    try:
        return json_format.ParseDict(value, message())
    except json_format.ParseError:  # what the check above let through, e.g. bad base64
        raise InvalidArgument("body", f"not a valid {desc.name}") from None


def to_json(message: Message) -> JsonObject:
    """A message in the proto3 JSON mapping, with every field present."""
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


# -- the Router messages the HTTP API speaks -----------------------------------------------

# Component names of the messages the HTTP bodies are, for the OpenAPI document.
ROUTE_REQUEST = pb.RouteRequest.DESCRIPTOR.full_name
DECISION = pb.Decision.DESCRIPTOR.full_name
OUTCOME = pb.Outcome.DESCRIPTOR.full_name
OUTCOME_ACK = pb.OutcomeAck.DESCRIPTOR.full_name


def task_from_json(value: object) -> domain.Task:
    """A RouteRequest body, validated exactly as `Route` validates it."""
    return convert.task_from_pb(parse(value, pb.RouteRequest))


def outcome_from_json(value: object) -> domain.Outcome:
    """An Outcome body, validated exactly as `ReportOutcome` validates it."""
    return convert_outcome.outcome_from_pb(parse(value, pb.Outcome))


def decision_to_json(decision: domain.Decision) -> JsonObject:
    """A Decision as `Route` answers it, in proto3 JSON."""
    return to_json(convert.decision_to_pb(decision))


def ack_to_json(ack: OutcomeAck) -> JsonObject:
    """An OutcomeAck as `ReportOutcome` answers it, in proto3 JSON."""
    return to_json(convert_stats.ack_to_pb(ack))


def check_name(field: str, value: str, max_len: int = convert.MAX_ID_LEN) -> str:
    """An identifier (model, task type, decision id) checked as the RPCs check theirs."""
    return convert.check_name(field, value, max_len=max_len)


def check_label_key(field: str, key: str) -> str:
    """A label key named in a query, checked as GetRoutingStats checks `label_keys`."""
    return convert.check_label_key(field, key)


async def serving(servicer: health.aio.HealthServicer) -> bool:
    """Whether the gRPC health service reports the server (name "") as SERVING."""
    reply = await servicer.Check(health_pb2.HealthCheckRequest(service=""), None)
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
