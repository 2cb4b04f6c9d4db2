"""JSON Schemas (OpenAPI 3.1 / JSON Schema 2020-12) of messages' proto3 JSON mapping.

Generated from the protobuf descriptors, so the HTTP API's document can never drift from the
contract: each message becomes an object schema keyed by its JSON field names, each nested
message a `$ref` to its own component (named by its full proto name).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from routing_sidecar.grpc_api.jsonwire import DURATION, TIMESTAMP
from routing_sidecar_api.routing_sidecar.v1 import router_pb2 as pb

Schema = dict[str, Any]
F = FieldDescriptor
REF_PREFIX = "#/components/schemas/"

_INT32 = frozenset({F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32})
_UINT32 = frozenset({F.TYPE_UINT32, F.TYPE_FIXED32})
_INT64 = frozenset({F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64})
_UINT64 = frozenset({F.TYPE_UINT64, F.TYPE_FIXED64})
_WELL_KNOWN: dict[str, Schema] = {
    TIMESTAMP: {"type": "string", "format": "date-time",
                "description": "RFC 3339, UTC, e.g. 2026-01-02T03:04:05Z"},
    DURATION: {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$",
               "description": "seconds with an s suffix, e.g. 1.5s"},
}


def _enum(enum: EnumDescriptor) -> Schema:
    return {"type": "string", "enum": [v.name for v in enum.values],
            "description": f"{enum.full_name} by name (the number is accepted too)"}


def _scalar(field: FieldDescriptor) -> Schema:
    t = field.type
    if field.enum_type is not None:
        return _enum(field.enum_type)
    if t in _INT32:
        return {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}
    if t in _UINT32:
        return {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**32 - 1}
    if t in _INT64 | _UINT64:
        # Printed as a decimal string; a JSON number is accepted too.
        return {"type": ["string", "integer"], "pattern": "^-?[0-9]+$",
                "format": "int64" if t in _INT64 else "uint64"}
    if t in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return {"anyOf": [{"type": "number"},
                          {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]}]}
    if t == F.TYPE_BOOL:
        return {"type": "boolean"}
    if t == F.TYPE_BYTES:
        return {"type": "string", "contentEncoding": "base64"}
    return {"type": "string"}


def _value(field: FieldDescriptor, pending: list[Descriptor]) -> Schema:
    msg = field.message_type
    if msg is None:
        return _scalar(field)
    if msg.full_name in _WELL_KNOWN:
        return dict(_WELL_KNOWN[msg.full_name])
    pending.append(msg)
    return {"$ref": REF_PREFIX + msg.full_name}


def _field(field: FieldDescriptor, pending: list[Descriptor]) -> Schema:
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        return {"type": "object",
                "additionalProperties": _value(entry.fields_by_name["value"], pending)}
    if field.is_repeated:
        return {"type": "array", "items": _value(field, pending)}
    return _value(field, pending)


def message_schema(desc: Descriptor, pending: list[Descriptor]) -> Schema:
    """One message's schema; the messages it refers to are appended to `pending`."""
    return {
        "type": "object",
        "title": desc.name,
        "description": f"{desc.full_name} in the proto3 JSON mapping (lowerCamelCase names; "
                       "the proto field names are accepted too)",
        "properties": {f.json_name: _field(f, pending) for f in desc.fields},
        "additionalProperties": False,
    }


def schemas(full_names: Iterable[str]) -> dict[str, Schema]:
    """Schemas of the named routing_sidecar.v1 messages and of every message they use."""
    out: dict[str, Schema] = {}
    pending = [pb.DESCRIPTOR.message_types_by_name[n.rpartition(".")[2]] for n in full_names]
    while pending:
        desc = pending.pop()
        if desc.full_name not in out:
            out[desc.full_name] = message_schema(desc, pending)
    return dict(sorted(out.items()))
