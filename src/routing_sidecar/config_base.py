"""What every config section shares: the strict base model, field types and the ceilings."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from routing_sidecar import domain

# The ceilings of README "Configuration ranges": a number beyond one is a typo or an attack,
# and would overflow the integer micro-USD the ledger counts in.
MAX_USD_PER_MTOK = 1_000_000.0  # a price: USD per million tokens
MAX_USD = 1_000_000_000.0  # a budget limit or a per-task cap
MAX_TOKENS = 100_000_000  # a context window or an output cap
MAX_COUNT = 1_000_000  # a count of values, samples, failures or entries
DAY_S = 86_400.0
MIN_TTL_S = 1.0  # a reservation, expired and swept this often at most

Usd = Annotated[float, Field(ge=0, le=MAX_USD_PER_MTOK)]  # a price per million tokens
Fraction = Annotated[float, Field(ge=0, le=1)]
Count = Annotated[int, Field(ge=1, le=MAX_COUNT)]
Weight = Annotated[float, Field(ge=0, le=MAX_COUNT)]  # a pseudo-count or evidence weight
Seconds = Annotated[float, Field(gt=0, le=3600)]  # a timeout or a short interval
Duration = Annotated[float, Field(gt=0, le=30 * DAY_S)]  # a window or an idle time
# Matched whole (fullmatch): with `$`, "project:alpha\n" would pass.
SCOPE_RE = re.compile(r"global|task|(project|provider|model|policy|worker):[A-Za-z0-9_.\-/*]+")
LABEL_KEY_RE = re.compile(r"[A-Za-z0-9_.:/@+\-]{1,64}")


class _Strict(BaseModel):
    # No inf or nan anywhere: every float field is finite (and bounded where it is declared).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def url_with_scheme(v: str, schemes: Collection[str], kind: str, expected: str) -> str:
    """`v` if it parses with a port that fits and one of `schemes`; ValueError otherwise.

    The messages never quote the value: a URL may hold a password.
    """
    try:
        parts = urlsplit(v)
        _ = parts.port
    except ValueError:
        raise ValueError(f"not a valid {kind} URL (bad host or port)") from None
    if parts.scheme not in schemes:
        raise ValueError(f"expected {expected}")
    return v


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
