"""The federated SQL dialect and parsing."""

from federator.sql.dialect import Federated, parse

__all__ = ["Federated", "parse"]
