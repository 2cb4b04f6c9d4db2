"""URL credentials never reach a log line, whoever logged the URL."""

from __future__ import annotations

import io
import json
import logging

import pytest

from routing_sidecar import logs


@pytest.mark.parametrize(("text", "clean"), [
    ("exporting spans to user:secret@127.0.0.1:4317, retrying",
     "exporting spans to 127.0.0.1:4317, retrying"),
    ("http://user:secret@otel.example:4317/v1", "http://otel.example:4317/v1"),
    ("https://token@otel.example/v1", "https://otel.example/v1"),
    ("redis://:secret@cache:6379/0", "redis://cache:6379/0"),
    ("http://u:secret@[::1]:4317", "http://[::1]:4317"),
    ("endpoint='u:secret@h:1'", "endpoint='h:1'"),
    # Left alone: no credentials in them.
    ("write to bob@example.com", "write to bob@example.com"),
    ("at 12:30 the budget reset", "at 12:30 the budget reset"),
    ("http://host/path@v2", "http://host/path@v2"),
])
def test_redact_urls(text: str, clean: str) -> None:
    assert logs.redact_urls(text) == clean


def test_records_from_any_logger_are_redacted_in_message_fields_and_traceback() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(logs.RedactFilter())
    handler.setFormatter(logs.JsonFormatter())
    lib = logging.getLogger("some.library")
    lib.addHandler(handler)
    lib.propagate = False
    try:
        lib.warning("failed to export to %s", "http://user:secret@collector:4317")
        lib.warning("configured", extra={"endpoint": "user:secret@collector:4317"})
        try:
            raise ConnectionError("cannot reach https://user:secret@collector:4318/v1/traces")
        except ConnectionError:
            lib.exception("export failed")
    finally:
        lib.removeHandler(handler)
        lib.propagate = True
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert "secret" not in out.getvalue()
    assert lines[0]["msg"] == "failed to export to http://collector:4317"
    assert lines[1]["endpoint"] == "collector:4317"
    assert "https://collector:4318/v1/traces" in lines[2]["exc"]
