"""What ``federator serve`` runs: checks of its options, then the Flight SQL server until
Ctrl-C or SIGTERM, then every pool closed.

>>> loopback("127.0.0.1"), loopback("localhost"), loopback("0.0.0.0")
(True, True, False)
"""

from __future__ import annotations

import contextlib
import getpass
import ipaddress
import signal
import sys
from pathlib import Path
from typing import IO, Any

from federator.errors import CatalogError, FederatorError
from federator.serve.auth import Authenticator, hash_password, new_token
from federator.serve.flight import FlightSQLServer, ServeSettings


class ServeUsageError(FederatorError):
    """An option of ``federator serve`` that cannot work (the CLI exits 2)."""


def loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``--insecure-local`` is allowed there)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_options(
    host: str, insecure_local: bool, tls_cert: str | None, tls_key: str | None
) -> None:
    """Refuse option sets that would serve unsafely or not at all."""
    if insecure_local and not loopback(host):
        raise ServeUsageError(
            f"--insecure-local serves without authentication, so only on loopback; "
            f"--host {host} is not (use 127.0.0.1, or configure [serve.users])"
        )
    if (tls_cert is None) != (tls_key is None):
        raise ServeUsageError("TLS needs both --tls-cert and --tls-key")


def read_secret(prompt: str, stdin: IO[str]) -> str:
    """A password from the terminal (not echoed) or one line of piped stdin."""
    secret = getpass.getpass(prompt) if stdin.isatty() else stdin.readline().rstrip("\r\n")
    if not secret:
        raise ServeUsageError("the password is empty")
    return secret


def print_password_entry(stdin: IO[str], out: IO[str]) -> None:
    """``--hash-password``: the ``[serve.users]`` line for a password read from stdin."""
    entry = hash_password(read_secret("password: ", stdin))
    print(f'USER = "{entry}"   # under [serve.users]', file=out)


def print_new_token(out: IO[str]) -> None:
    """``--new-token``: a fresh bearer token (give it to the client) and its catalog entry."""
    token, entry = new_token()
    print(f"token (give to the client, not kept anywhere): {token}", file=out)
    print(f'NAME = "{entry}"   # under [serve.tokens]', file=out)


def serve_catalog(
    catalog: str,
    *,
    host: str,
    port: int,
    metrics_port: int | None = None,
    insecure_local: bool = False,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    out: IO[str] = sys.stderr,
) -> None:
    """Serve ``catalog`` over Flight SQL at ``host:port`` until interrupted."""
    from federator.federation import connect

    check_options(host, insecure_local, tls_cert, tls_key)
    tls = _read_tls(tls_cert, tls_key)
    with connect(catalog) as fed:
        serve = fed.config.settings.get("serve", {})
        if not isinstance(serve, dict):
            raise CatalogError("[serve] must be a table of settings")
        authenticator = None if insecure_local else Authenticator(serve)
        if authenticator is not None and not authenticator.configured:
            raise ServeUsageError(
                "nobody can log in: add [serve.users] (federator serve --hash-password) or "
                "[serve.tokens] (federator serve --new-token) to the catalog, or pass "
                "--insecure-local to serve loopback without authentication"
            )
        settings = ServeSettings.from_catalog(serve)
        scheme = "grpc+tls" if tls else "grpc"
        where = f"[{host}]" if ":" in host else host
        server = FlightSQLServer(
            fed,
            f"{scheme}://{where}:{port}",
            authenticator=authenticator,
            settings=settings,
            tls_certificates=tls,
        )
        with contextlib.ExitStack() as stack:
            stack.callback(server.shutdown)
            if metrics_port is not None:
                from federator.telemetry import serve_metrics

                metrics = stack.enter_context(serve_metrics(metrics_port, host))
                print(f"federator serve: metrics at {metrics.url}", file=out)
            _announce(out, f"{scheme}://{where}:{server.port}", authenticator, tls, host)
            _serve_until_signal(server)


def _read_tls(cert: str | None, key: str | None) -> list[tuple[bytes, bytes]]:
    if cert is None or key is None:
        return []
    try:
        return [(Path(cert).read_bytes(), Path(key).read_bytes())]
    except OSError as e:
        raise ServeUsageError(f"cannot read {e.filename}: {e.strerror}") from None


def _announce(
    out: IO[str], url: str, auth: Authenticator | None, tls: list[Any], host: str
) -> None:
    mode = "no authentication (loopback only)" if auth is None else "authentication required"
    print(f"federator serve: Flight SQL at {url} ({mode}); Ctrl-C stops", file=out)
    if not tls and not loopback(host):
        print(
            "federator serve: warning: without --tls-cert/--tls-key, passwords and results "
            "cross the network unencrypted",
            file=out,
        )
    out.flush()


def _serve_until_signal(server: FlightSQLServer) -> None:
    """Block in ``serve()``; SIGTERM stops it like Ctrl-C does."""

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        server.serve()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
