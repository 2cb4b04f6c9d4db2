"""What each listening port requires: the gRPC port's TLS and token, the admin port's settings.

Credential files are read here, once, at start.
"""

from __future__ import annotations

from routing_sidecar.config import (
    RouterConfig,
    is_loopback_host,
    remote_admin_problem,
    remote_grpc_problem,
)
from routing_sidecar.errors import ConfigError
from routing_sidecar.grpc_api import auth
from routing_sidecar.http_api.backend import Settings


def grpc_security(cfg: RouterConfig, listen: str, source: str, *,
                  allow_insecure: bool) -> auth.ServerSecurity:
    """TLS and token of the gRPC port at `listen`; ConfigError if refused or unreadable.

    `allow_insecure`: serve --allow-insecure-remote (server.allow_insecure_remote is read here).
    """
    server = cfg.server
    problem = remote_grpc_problem(listen, server, allow_insecure=allow_insecure)
    if problem:
        raise ConfigError(source, [f"server.listen: {problem}"])
    credentials = None
    if server.tls is not None:
        t = server.tls
        credentials = auth.tls_credentials(
            auth.read_pem(t.cert_file, "server.tls.cert_file", source, "CERTIFICATE"),
            auth.read_pem(t.key_file, "server.tls.key_file", source, "PRIVATE KEY"),
            auth.read_pem(t.client_ca_file, "server.tls.client_ca_file", source,
                          "CERTIFICATE") if t.client_ca_file else None)
    token = (auth.read_token(server.token_file, "server.token_file", source)
             if server.token_file else None)
    return auth.ServerSecurity(credentials, token)


def admin_settings(cfg: RouterConfig, listen: str, source: str, *,
                   allow_insecure: bool) -> Settings | None:
    """The admin port's settings at `listen`, its token read; None when off.

    ConfigError when a remote port has no token (unless `allow_insecure` or
    server.allow_insecure_remote) or the token file cannot be read.
    """
    if not listen:
        return None
    a = cfg.admin
    problem = remote_admin_problem(
        listen, a.token_file, allow_insecure=allow_insecure or cfg.server.allow_insecure_remote)
    if problem:
        raise ConfigError(source, [f"admin.listen: {problem}"])
    token = (auth.read_token(a.token_file, "admin.token_file", source).decode("ascii")
             if a.token_file else None)
    return Settings(listen, a.idle_timeout_s, a.read_timeout_s, a.max_request_bytes, token,
                    remote=not is_loopback_host(listen.rpartition(":")[0]))
