"""federator: one SQL query over many databases, pushed down, merged in Arrow.

Quick start, with an embedded SQLite source and nothing to install:

>>> import sqlite3, tempfile, os, federator
>>> path = os.path.join(tempfile.mkdtemp(), "shop.db")
>>> with sqlite3.connect(path) as db:
...     _ = db.execute("CREATE TABLE users (id INTEGER, name TEXT)")
...     _ = db.execute("INSERT INTO users VALUES (1, 'ada'), (2, 'bob')")
>>> with federator.connect({"sources": {"shop": {"kind": "sqlite", "path": path}}}) as fed:
...     fed.sql("SELECT name FROM shop.users WHERE id = :id", {"id": 2}).to_arrow().to_pylist()
[{'name': 'bob'}]
"""

from federator.errors import (
    AmbiguousColumnError,
    BindError,
    CatalogError,
    ClusterError,
    FederationClosedError,
    FederatorError,
    JoinKeyTypeError,
    ParameterError,
    QueryTimeoutError,
    RuleError,
    SourceError,
    SourceUnreachableError,
    SQLSyntaxError,
    UnknownColumnError,
    UnknownSourceError,
    UnknownTableError,
    UnsupportedError,
)
from federator.federation import Federation, connect
from federator.result import BatchReader, Result
from federator.training import Feature

__all__ = [
    "AmbiguousColumnError",
    "BatchReader",
    "BindError",
    "CatalogError",
    "ClusterError",
    "Feature",
    "Federation",
    "FederationClosedError",
    "FederatorError",
    "JoinKeyTypeError",
    "ParameterError",
    "QueryTimeoutError",
    "Result",
    "RuleError",
    "SQLSyntaxError",
    "SourceError",
    "SourceUnreachableError",
    "UnknownColumnError",
    "UnknownSourceError",
    "UnknownTableError",
    "UnsupportedError",
    "connect",
]
__version__ = "0.1.0"
