"""The PostgreSQL DSN: where it points (for messages) and the secrets to strip from any text."""

from __future__ import annotations

import os
import re
from urllib.parse import parse_qsl, quote, unquote, urlsplit

MASK = "***"
# libpq reads a password from these too; it must no more appear in a message than the DSN's.
_PASSWORD_ENV = ("PGPASSWORD",)


class Redactor:
    """Replaces every form of the DSN's password (and $PGPASSWORD) in a text by ***."""

    def __init__(self, dsn: str) -> None:
        found: set[str] = set()
        try:
            parts = urlsplit(dsn)
            if parts.password:
                found.add(parts.password)
            found.update(v for k, v in parse_qsl(parts.query) if k == "password" and v)
        except ValueError:
            # An unparsable DSN: strip whatever sits between user: and @ as a best effort.
            found.update(m for m in re.findall(r"://[^:/@]*:([^@]*)@", dsn) if m)
        found.update(os.environ[k] for k in _PASSWORD_ENV if os.environ.get(k))
        forms = {f for s in found for f in (s, unquote(s), quote(s, safe=""))}
        self._secrets = sorted((f for f in forms if f), key=len, reverse=True)
        self.where = where(dsn)

    def __call__(self, text: object) -> str:
        """`text` with each secret masked."""
        out = str(text)
        for secret in self._secrets:
            out = out.replace(secret, MASK)
        return out


def where(dsn: str) -> str:
    """postgresql://user@host:port/db, never the password: how messages name the database."""
    try:
        parts = urlsplit(dsn)
        host = parts.hostname or "localhost"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "postgresql://(unparsable DSN)"
    user = f"{parts.username}@" if parts.username else ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path}"
