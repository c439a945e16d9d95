"""Catalog configuration: a dict or a TOML file, with ``${ENV_VAR}`` substitution.

>>> cfg = load_catalog({"sources": {"pg": {"kind": "postgres", "dsn": "postgresql://u@h/db"}}})
>>> cfg.sources["pg"].kind
'postgres'
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from federator.errors import CatalogError

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_URL_START = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# Option names and URL query parameters whose values are credentials.
_SECRET_NAME = re.compile(
    r"pass(word|wd)?|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|"
    r"credentials?|auth(_?token)?|sslpassword|sslkey",
    re.IGNORECASE,
)
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")
_USERINFO_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:/@?#\s]*:)\S*@")
_SECRET_QUERY = re.compile(r"([?&;](?:[A-Za-z_.-]*?)(?:" + _SECRET_NAME.pattern + r")=)[^&#\s]*")


@dataclass(frozen=True)
class SourceConfig:
    """One source as the catalog declares it. ``options`` keeps every other key."""

    name: str
    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    secrets: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        shown = redact_options(self.options, self.secrets)
        return f"SourceConfig(name={self.name!r}, kind={self.kind!r}, options={shown!r})"


@dataclass(frozen=True)
class CatalogConfig:
    """The whole catalog: its sources and every other top-level setting (``[cache]``, ...).
    ``repr`` shows no credential (see :func:`redact_options`)."""

    sources: dict[str, SourceConfig]
    settings: dict[str, Any] = field(default_factory=dict)
    secrets: frozenset[str] = frozenset()  # setting paths filled from ${VAR}, e.g. "cache.redis"

    def __repr__(self) -> str:
        settings = redact_options(self.settings, self.secrets)
        return f"CatalogConfig(sources={self.sources!r}, settings={settings!r})"


def load_catalog(catalog: str | os.PathLike[str] | dict[str, Any]) -> CatalogConfig:
    """Read a catalog from a TOML path or a dict; substitute ``${VAR}`` from the environment."""
    if isinstance(catalog, dict):
        raw = catalog
    else:
        path = Path(catalog)
        if not path.exists():
            raise CatalogError(f"catalog file {str(path)!r} does not exist")
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise CatalogError(f"catalog file {str(path)!r} is not valid TOML: {e}") from None
    sources_raw = raw.get("sources")
    if not isinstance(sources_raw, dict) or not sources_raw:
        raise CatalogError("catalog needs a [sources] table with at least one source")
    sources = {name: _source(name, spec) for name, spec in sources_raw.items()}
    secrets: set[str] = set()
    settings = {
        k: _substitute(v, "(catalog)", k, secrets) for k, v in raw.items() if k != "sources"
    }
    return CatalogConfig(sources=sources, settings=settings, secrets=frozenset(secrets))


def _source(name: str, spec: Any) -> SourceConfig:
    if not isinstance(spec, dict):
        raise CatalogError(f"source {name!r} must be a table of settings")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise CatalogError(f"source name {name!r} must be a plain identifier")
    if "kind" not in spec:
        raise CatalogError(f"source {name!r} needs a 'kind' (for example 'postgres')")
    secrets: set[str] = set()
    options = {k: _substitute(v, name, k, secrets) for k, v in spec.items() if k != "kind"}
    return SourceConfig(
        name=name, kind=str(spec["kind"]), options=options, secrets=frozenset(secrets)
    )


def _substitute(value: Any, source: str, key: str, secrets: set[str]) -> Any:
    """``value`` with each ``${VAR}`` replaced by the variable's value; the setting's path goes
    into ``secrets`` (a URL's secret parts are redacted wherever it is shown anyway). Inside a
    URL's user:password or query, the value is percent-encoded, so a password with ``#``, ``/``
    or ``@`` keeps the URL parseable and reaches the server unchanged."""
    if isinstance(value, str):
        encoded = _encoded_spans(value)

        def repl(m: re.Match[str]) -> str:
            var = m.group(1)
            if var not in os.environ:
                where = f"source {source!r}" if source != "(catalog)" else "catalog"
                raise CatalogError(f"{where} setting {key!r} reads ${{{var}}}, which is not set")
            if key != "dsn":
                secrets.add(key)
            text = os.environ[var]
            return quote(text, safe="") if _inside(m.start(), encoded) else text

        return _ENV.sub(repl, value)
    if isinstance(value, dict):
        return {k: _substitute(v, source, f"{key}.{k}", secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, source, key, secrets) for v in value]
    return value


def _encoded_spans(template: str) -> list[tuple[int, int]]:
    """Where, in a URL template, substituted text must be percent-encoded: the userinfo
    (``user:password@``) and the query string. Empty for a string that is not a URL.

    >>> _encoded_spans("postgresql://u:${PW}@h/db?sslpassword=${K}")
    [(13, 20), (26, 42)]
    """
    start = _URL_START.match(template)
    if start is None:
        return []
    spans = []
    rest = template[start.end() :]
    authority_end = len(rest)
    for sep in "/?#":
        at = rest.find(sep)
        if at != -1:
            authority_end = min(authority_end, at)
    at_sign = rest.rfind("@", 0, authority_end)
    if at_sign != -1:
        spans.append((start.end(), start.end() + at_sign))
    query = template.find("?", start.end() + authority_end)
    if query != -1:
        end = template.find("#", query)
        spans.append((query + 1, len(template) if end == -1 else end))
    return spans


def _inside(pos: int, spans: list[tuple[int, int]]) -> bool:
    return any(lo <= pos < hi for lo, hi in spans)


@dataclass(frozen=True)
class DSN:
    """A parsed database URL. Its password and secret query values never show in repr or str."""

    scheme: str
    host: str
    port: int | None
    user: str | None
    password: str | None = field(repr=False)
    database: str | None
    query: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}" if self.port else self.host

    def __repr__(self) -> str:
        query = {k: ("***" if _SECRET_NAME.search(k) else v) for k, v in self.query.items()}
        return (
            f"DSN(scheme={self.scheme!r}, host={self.host!r}, port={self.port!r}, "
            f"user={self.user!r}, database={self.database!r}, query={query!r})"
        )


def parse_dsn(dsn: str, default_port: int | None = None) -> DSN:
    """Parse ``scheme://user:password@host:port/database?k=v``.

    >>> parse_dsn("mysql://root:pw@127.0.0.1:3307/shop").where
    '127.0.0.1:3307'
    """
    try:
        parts = urlsplit(dsn)
        port = parts.port or default_port
    except ValueError:
        # The parser's own message may quote a piece of a password: it is not shown.
        raise CatalogError(
            f"malformed DSN {redact_dsn(dsn)!r}: the host:port part does not parse; a password"
            " with '#', '/', '@' or '?' must be percent-encoded (a ${VAR} value is encoded"
            " for you)"
        ) from None
    if not parts.scheme:
        raise CatalogError(f"DSN {redact_dsn(dsn)!r} needs a scheme such as postgresql://")
    return DSN(
        scheme=parts.scheme,
        host=unquote(parts.hostname or "localhost"),
        port=port,
        user=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        database=unquote(parts.path.lstrip("/")) or None,
        query=dict(parse_qsl(parts.query)),
    )


def redact_dsn(dsn: str) -> str:
    """A URL with its credentials replaced by ``***``: the password of ``user:password@``
    (up to the last ``@``, so a raw ``@`` or ``/`` in it hides too) and the values of query
    parameters named like secrets (``password``, ``token``, ``secret``, ``api_key``...).

    >>> redact_dsn("postgresql://u:secret@h:5432/db")
    'postgresql://u:***@h:5432/db'
    >>> redact_dsn("mysql://h/db?user=u&password=pw&ssl=1")
    'mysql://h/db?user=u&password=***&ssl=1'
    """
    shown = _USERINFO_PASSWORD.sub(r"\1***@", dsn)
    return _SECRET_QUERY.sub(r"\1***", shown)


def redact_text(text: str) -> str:
    """Every URL inside ``text`` redacted as :func:`redact_dsn` does.

    >>> redact_text("cannot reach redis://:pw@h:6379/0 now")
    'cannot reach redis://:***@h:6379/0 now'
    """
    return _URL_IN_TEXT.sub(lambda m: redact_dsn(m.group(0)), text)


def redact_options(
    options: Any, secrets: frozenset[str] = frozenset(), path: str = "", hidden: bool = False
) -> Any:
    """Settings as they may be shown: values filled from ``${VAR}`` (their paths in
    ``secrets``) and values under keys named like credentials become ``***``, except URLs,
    which show with their credentials redacted (:func:`redact_dsn`), as URLs do anywhere.
    Nested tables and lists are walked.

    >>> redact_options({"dsn": "pg://u:pw@h/d", "auth": {"token": "t"}, "n": 1})
    {'dsn': 'pg://u:***@h/d', 'auth': {'token': '***'}, 'n': 1}
    """
    if isinstance(options, dict):
        out = {}
        for k, v in options.items():
            sub = f"{path}.{k}" if path else str(k)
            secret = hidden or sub in secrets or bool(_SECRET_NAME.fullmatch(str(k)))
            out[k] = redact_options(v, secrets, sub, secret)
        return out
    if isinstance(options, list | tuple):
        return [redact_options(v, secrets, path, hidden) for v in options]
    if isinstance(options, str):
        return "***" if hidden and "://" not in options else redact_text(options)
    return "***" if hidden and options is not None else options
