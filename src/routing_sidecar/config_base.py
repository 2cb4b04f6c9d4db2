"""What every config section shares: the strict base model, field types and the ceilings."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
)

from routing_sidecar import domain

Usd = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
# Matched whole (fullmatch): with `$`, "project:alpha\n" would pass.
SCOPE_RE = re.compile(r"global|task|(project|provider|model|policy|worker):[A-Za-z0-9_.\-/*]+")
LABEL_KEY_RE = re.compile(r"[A-Za-z0-9_.:/@+\-]{1,64}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def admin_listen_shape(v: str) -> str:
    """HOST:PORT or "" (off); raises ValueError otherwise."""
    host, sep, port = v.rpartition(":")
    if v and (not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535):
        raise ValueError("expected HOST:PORT, or \"\" to turn the admin port off")
    return v


# -- the admin port (http_api) ------------------------------------------------------------

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback_host(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1; any other name or address is remote."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def usd_to_micros(usd: float) -> int:
    """USD as exact integer micro-USD."""
    return round(usd * domain.MICROS_PER_USD)
