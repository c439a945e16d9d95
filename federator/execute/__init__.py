"""Async execution of plans: fan-out to sources, bind joins, residual on DuckDB."""

from federator.execute.executor import Execution

__all__ = ["Execution"]
