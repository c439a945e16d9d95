"""``federator serve``: the federation as an Arrow Flight SQL endpoint.

>>> from federator.serve import FlightSQLServer, ServeSettings  # doctest: +SKIP
"""

from federator.serve.flight import FlightSQLServer, ServeSettings

__all__ = ["FlightSQLServer", "ServeSettings"]
