"""Logging setup: JSON lines when not on a terminal, readable lines when on one.

Every record handled here carries the current span's trace_id and span_id and the decision_id
of the request it was logged for, when there are such.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from contextvars import ContextVar

from opentelemetry import trace

# Attributes every LogRecord has; anything else was passed with extra= and is structured data.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


# Libraries whose INFO lines would repeat, once per provider call, what the walk logs itself.
QUIET_LOGGERS = ("httpx", "httpcore")

# The decision the current request is about; set when its id is made (Route) or read (outcome).
_DECISION_ID: ContextVar[str] = ContextVar("decision_id", default="")


def bind_decision(decision_id: str) -> str:
    """Tag this request's later log records with `decision_id`; returns it unchanged."""
    _DECISION_ID.set(decision_id)
    return decision_id


class ContextFilter(logging.Filter):
    """Adds trace_id and span_id of the current span, and the current decision_id."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate the record (never drops it)."""
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid and not hasattr(record, "trace_id"):
            record.trace_id = trace.format_trace_id(ctx.trace_id)
            record.span_id = trace.format_span_id(ctx.span_id)
        decision_id = _DECISION_ID.get()
        if decision_id and not hasattr(record, "decision_id"):
            record.decision_id = decision_id
        return True


# A URL's userinfo (scheme://anything@), and a bare user:password@host (the OTLP gRPC exporter
# logs its endpoint as a netloc). A plain user@host without a scheme is left alone.
_URL_CREDS = re.compile(r"\b([A-Za-z][A-Za-z0-9+.\-]*://)[^\s/@'\"]*@")
_NETLOC_CREDS = re.compile(r"(?<![\w.~%+\-])[\w.~%!$&*+\-]+:[^\s/@'\"]*@(?=[\w\[])")


def redact_urls(text: str) -> str:
    """`text` with the credentials of every URL or user:password@host taken out."""
    return _NETLOC_CREDS.sub("", _URL_CREDS.sub(r"\1", text))


class RedactFilter(logging.Filter):
    """Strips URL credentials from every record's message and string fields, whoever logs it.

    Libraries log URLs too (the OTLP exporter logs its endpoint on every failed export).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record in place (never drops it)."""
        message = record.getMessage()
        clean = redact_urls(message)
        if clean != message:
            record.msg, record.args = clean, None
        for key, value in vars(record).items():
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, redact_urls(value))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line with the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record as a JSON line."""
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            out["exc"] = redact_urls(self.formatException(record.exc_info))
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """Readable single lines with extra fields appended as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record as text."""
        base = redact_urls(super().format(record))  # the traceback too
        extras = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD)
        return f"{base} {extras}" if extras else base


def configure(level: str = "INFO", json_lines: bool | None = None) -> None:
    """Install one stderr handler on the root logger."""
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactFilter())
    handler.setFormatter(
        JsonFormatter() if json_lines else TextFormatter("%(asctime)s %(levelname)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every provider request at INFO: a line per attempt is the walk's job, not its.
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
