"""Backend adapters, loaded lazily by kind so importing federator imports no driver."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from federator.errors import CatalogError

if TYPE_CHECKING:
    from federator.adapters.base import Adapter

BUILT_IN = {
    "postgres": "federator.adapters.postgres:PostgresAdapter",
    "mysql": "federator.adapters.mysql:MySQLAdapter",
    "sqlite": "federator.adapters.sqlite:SQLiteAdapter",
    "files": "federator.adapters.files:FilesAdapter",
    "features": "federator.adapters.feature_files:FeatureViewsAdapter",
    "mongo": "federator.adapters.mongo:MongoAdapter",
    "redis": "federator.adapters.redis:RedisAdapter",
    "milvus": "federator.adapters.milvus:MilvusAdapter",
    "qdrant": "federator.adapters.qdrant:QdrantAdapter",
    "falkordb": "federator.adapters.graph:FalkorDBAdapter",
    "neo4j": "federator.adapters.graph:Neo4jAdapter",
}
ALIASES = {"postgresql": "postgres", "mariadb": "mysql", "mongodb": "mongo"}
ALIASES.update({"bolt": "neo4j", "memgraph": "neo4j"})
EXTRAS = {"postgres": "postgres", "mysql": "mysql", "mongo": "mongo", "redis": "redis"}
EXTRAS.update({"milvus": "milvus", "qdrant": "qdrant", "falkordb": "graph", "neo4j": "graph"})


def adapter_class(kind: str) -> type[Adapter]:
    """The adapter class for a kind: built in, or from entry point group federator.adapters."""
    kind = ALIASES.get(kind, kind)
    target = BUILT_IN.get(kind)
    if target is None:
        found = [ep for ep in entry_points(group="federator.adapters") if ep.name == kind]
        if not found:
            known = ", ".join(sorted(BUILT_IN))
            raise CatalogError(f"unknown source kind {kind!r} (known kinds: {known})")
        return found[0].load()
    module_name, _, cls = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        extra = EXTRAS.get(kind, kind)
        raise CatalogError(
            f"source kind {kind!r} needs a driver that is not installed ({e.name}); "
            f"install it with: pip install 'federator[{extra}]'"
        ) from None
    return getattr(module, cls)
