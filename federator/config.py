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
    features: dict[str, FeatureViewConfig] = field(default_factory=dict)  # [features.NAME]

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
        k: _substitute(v, "(catalog)", k, secrets)
        for k, v in raw.items()
        if k not in ("sources", "features")
    }
    features = feature_views(raw.get("features", {}), sources)
    return CatalogConfig(
        sources=_with_feature_sources(sources, features),
        settings=settings,
        secrets=frozenset(secrets),
        features=features,
    )


@dataclass(frozen=True)
class FeatureViewConfig:
    """One ``[features.NAME]`` section: a federated query materialized under a name.

    ``offline``: ``{"path": folder, "partition": "date" | "none"}``; ``online``:
    ``{"source": redis source, "key": template of the entity columns, "grace": seconds an
    old online copy stays readable}``; ``ttl``: seconds after which a value reads as missing."""

    name: str
    query: str
    entity: tuple[str, ...]
    timestamp: str
    offline: dict[str, Any] | None = None
    online: dict[str, Any] | None = None
    ttl: float | None = None


FEATURES_SOURCE = "features"  # the source whose tables are the views' offline copies
_TEMPLATE_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def feature_views(raw: Any, sources: dict[str, SourceConfig]) -> dict[str, FeatureViewConfig]:
    """The ``[features.NAME]`` sections, checked: each error names the view and what to fix.

    >>> views = feature_views({"u": {"query": "SELECT * FROM pg.t", "entity": "id",
    ...     "timestamp": "ts", "offline": {"path": "/data/u"}}}, {})
    >>> views["u"].entity, views["u"].offline
    (('id',), {'path': '/data/u', 'partition': 'date'})
    """
    if not isinstance(raw, dict):
        raise CatalogError("[features] must hold one table per view: [features.NAME]")
    if raw and FEATURES_SOURCE in sources:
        raise CatalogError(
            f"source name {FEATURES_SOURCE!r} is taken by the feature views' tables; "
            "rename that source"
        )
    return {name: _feature_view(name, spec, sources) for name, spec in raw.items()}


def _feature_view(name: str, spec: Any, sources: dict[str, SourceConfig]) -> FeatureViewConfig:
    where = f"feature view {name!r}"
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise CatalogError(f"{where}: the name must be a plain identifier")
    if not isinstance(spec, dict):
        raise CatalogError(f"{where} must be a table of settings")
    known = {"query", "entity", "timestamp", "offline", "online", "ttl"}
    if unknown := sorted(set(spec) - known):
        raise CatalogError(f"{where}: unknown setting(s) {unknown} (known: {sorted(known)})")
    for key in ("query", "entity", "timestamp"):
        if not spec.get(key):
            raise CatalogError(f"{where} needs {key!r}")
    entity = spec["entity"]
    entity = (entity,) if isinstance(entity, str) else entity
    if not isinstance(entity, list | tuple) or not all(isinstance(e, str) for e in entity):
        raise CatalogError(f"{where}: 'entity' is a column name or a list of them")
    if not isinstance(spec["query"], str) or not isinstance(spec["timestamp"], str):
        raise CatalogError(f"{where}: 'query' (SQL text) and 'timestamp' (a column) are text")
    if "offline" not in spec and "online" not in spec:
        raise CatalogError(f"{where} needs 'offline = {{ path = ... }}' and/or 'online'")
    return FeatureViewConfig(
        name=name,
        query=spec["query"],
        entity=tuple(entity),
        timestamp=spec["timestamp"],
        offline=_offline(where, spec["offline"]) if "offline" in spec else None,
        online=_online(where, spec["online"], tuple(entity), sources) if "online" in spec else None,
        ttl=_duration(where, spec["ttl"]) if spec.get("ttl") is not None else None,
    )


def _offline(where: str, spec: Any) -> dict[str, Any]:
    if not isinstance(spec, dict) or not spec.get("path"):
        raise CatalogError(f'{where}: offline needs a folder: offline = {{ path = "..." }}')
    partition = spec.get("partition", "date")
    if partition not in ("date", "none"):
        raise CatalogError(f"{where}: offline partition is 'date' or 'none', not {partition!r}")
    return {"path": str(spec["path"]), "partition": partition}


def _online(
    where: str, spec: Any, entity: tuple[str, ...], sources: dict[str, SourceConfig]
) -> dict[str, Any]:
    if not isinstance(spec, dict) or not spec.get("source") or not spec.get("key"):
        raise CatalogError(
            f"{where}: online needs a Redis source and a key template, e.g. online = "
            f'{{ source = "kv", key = "stats:{{{entity[0]}}}" }}'
        )
    source = sources.get(str(spec["source"]))
    if source is None or source.kind != "redis":
        raise CatalogError(
            f"{where}: online source {spec['source']!r} must be a source of kind 'redis' "
            f"(sources: {', '.join(sorted(sources)) or 'none'})"
        )
    fields = _TEMPLATE_FIELD.findall(str(spec["key"]))
    if sorted(fields) != sorted(entity):
        raise CatalogError(
            f"{where}: online key {spec['key']!r} must name each entity column once as "
            f"{{column}}: {', '.join('{' + e + '}' for e in entity)}"
        )
    grace = _duration(where, spec.get("grace", 60))
    return {"source": source.name, "key": str(spec["key"]), "grace": grace}


def _duration(where: str, value: Any) -> float:
    """Seconds from a number or text such as ``"90s"``, ``"15m"``, ``"24h"``, ``"7d"``."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    m = _DURATION.fullmatch(value) if isinstance(value, str) else None
    if m is None or float(m.group(1)) <= 0:
        raise CatalogError(
            f"{where}: {value!r} is not a duration; write seconds or text like '24h', '7d'"
        )
    return float(m.group(1)) * _SECONDS[m.group(2) or "s"]


def _with_feature_sources(
    sources: dict[str, SourceConfig], views: dict[str, FeatureViewConfig]
) -> dict[str, SourceConfig]:
    """``sources`` plus the ``features`` source over the views' offline copies; a Redis
    source that holds online copies is told which (it then needs no declared tables)."""
    out = dict(sources)
    offline = {v.name: v.offline["path"] for v in views.values() if v.offline}
    if offline:
        out[FEATURES_SOURCE] = SourceConfig(FEATURES_SOURCE, "features", {"views": offline})
    for view in views.values():
        if view.online:
            src = out[view.online["source"]]
            served = [*src.options.get("serves_features", ()), view.name]
            options = {**src.options, "serves_features": served}
            out[src.name] = SourceConfig(src.name, src.kind, options, src.secrets)
    return out


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
