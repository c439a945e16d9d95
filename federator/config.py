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
from urllib.parse import parse_qsl, unquote, urlsplit

from federator.errors import CatalogError

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class SourceConfig:
    """One source as the catalog declares it. ``options`` keeps every other key."""

    name: str
    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    secrets: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        shown = {k: ("***" if k in self.secrets else v) for k, v in self.options.items()}
        if "dsn" in shown:
            shown["dsn"] = redact_dsn(str(self.options["dsn"]))
        return f"SourceConfig(name={self.name!r}, kind={self.kind!r}, options={shown!r})"


@dataclass(frozen=True)
class CatalogConfig:
    sources: dict[str, SourceConfig]
    settings: dict[str, Any] = field(default_factory=dict)


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
    settings = {k: v for k, v in raw.items() if k != "sources"}
    return CatalogConfig(sources=sources, settings=settings)


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
    if isinstance(value, str):

        def repl(m: re.Match[str]) -> str:
            var = m.group(1)
            if var not in os.environ:
                raise CatalogError(
                    f"source {source!r} setting {key!r} reads ${{{var}}}, which is not set"
                )
            if key != "dsn":
                secrets.add(key)
            return os.environ[var]

        return _ENV.sub(repl, value)
    if isinstance(value, dict):
        return {k: _substitute(v, source, f"{key}.{k}", secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, source, key, secrets) for v in value]
    return value


@dataclass(frozen=True)
class DSN:
    """A parsed database URL. ``password`` never shows in repr or str."""

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


def parse_dsn(dsn: str, default_port: int | None = None) -> DSN:
    """Parse ``scheme://user:password@host:port/database?k=v``.

    >>> parse_dsn("mysql://root:pw@127.0.0.1:3307/shop").where
    '127.0.0.1:3307'
    """
    try:
        parts = urlsplit(dsn)
        port = parts.port or default_port
    except ValueError as e:
        raise CatalogError(f"malformed DSN {redact_dsn(dsn)!r}: {e}") from None
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
    """Replace the password in a DSN with ``***``.

    >>> redact_dsn("postgresql://u:secret@h:5432/db")
    'postgresql://u:***@h:5432/db'
    """
    return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", dsn)
