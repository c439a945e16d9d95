"""An online inference service: features for a batch of users from PostgreSQL and Redis in
one federated lookup, scored by a PyTorch model, served with FastAPI.

    POST /score   {"user_ids": [3, 17, 42]}
    → {"scores": [0.31, 0.72, null], "missing": [42], "lookup_ms": 1.9}

Profiles live in PostgreSQL (``demo_serving.profiles``), fresh counters in Redis hashes
(``serving:counters:{user_id}``). Both are read at once by ``FeatureLookup`` — one pushed
``IN (…)`` query and one pipelined ``HGETALL`` batch — within a latency budget: past it the
request answers 504 and names the source that was late. A user missing from either source
gets ``null``, never a made-up score.

Run it (``--setup`` writes demo data)::

    python examples/inference_service.py \\
        --pg postgresql://postgres@127.0.0.1/postgres --redis redis://127.0.0.1:6379/0 \\
        --setup --port 8000
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

import federator
from federator.lookup import FeatureLookup, FeatureTable
from federator.torch import to_torch

FEATURES = ["age", "tenure_days", "clicks_7d", "carts_7d"]
REDIS_TABLES = {
    "counters": {
        "key": "serving:counters:{user_id}",
        "type": "hash",
        "columns": {"user_id": "int64", "clicks_7d": "float64", "carts_7d": "int64"},
    }
}


def catalog(pg_dsn: str, redis_url: str) -> dict[str, Any]:
    return {
        "sources": {
            "pg": {"kind": "postgres", "dsn": pg_dsn},
            "kv": {"kind": "redis", "url": redis_url, "tables": REDIS_TABLES},
        }
    }


class Scorer(torch.nn.Module):
    """A logistic model over standardized features (weights fixed for the demo)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([45.0, 700.0, 20.0, 2.0]))
        self.register_buffer("std", torch.tensor([15.0, 400.0, 10.0, 1.5]))
        self.linear = torch.nn.Linear(len(FEATURES), 1)
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor([[-0.2, -0.8, 0.9, 1.1]]))
            self.linear.bias.fill_(-0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear((x - self.mean) / self.std)).squeeze(1)


class ScoreRequest(BaseModel):
    user_ids: list[int] = Field(min_length=1, max_length=10_000)


class ScoreResponse(BaseModel):
    scores: list[float | None]
    missing: list[int]
    lookup_ms: float


def create_app(catalog_spec: dict[str, Any] | str, *, budget_s: float = 0.5) -> FastAPI:
    """The service over a federator catalog (a dict or a TOML path)."""
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        fed = federator.connect(catalog_spec)
        state["fed"] = fed
        state["lookup"] = FeatureLookup(
            fed,
            [
                FeatureTable("pg.demo_serving.profiles", "user_id", ("age", "tenure_days")),
                FeatureTable("kv.counters", "user_id", ("clicks_7d", "carts_7d")),
            ],
            timeout=budget_s,
            key_name="user_id",
        )
        state["model"] = Scorer().eval()
        try:
            yield
        finally:
            await fed.aclose()

    app = FastAPI(title="federator inference demo", lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/score")
    async def score(request: ScoreRequest) -> ScoreResponse:
        started = time.perf_counter()
        try:
            table = await state["lookup"](request.user_ids)
        except federator.QueryTimeoutError as e:
            raise HTTPException(status_code=504, detail=str(e)) from None
        except federator.FederatorError as e:
            raise HTTPException(status_code=502, detail=str(e)) from None
        lookup_ms = (time.perf_counter() - started) * 1000
        x, _, mask = to_torch(table, features=FEATURES, nulls="mask")
        with torch.inference_mode():
            scores = state["model"](x)
        complete = mask.all(dim=1)
        ids = table.column("user_id").to_pylist()
        return ScoreResponse(
            scores=[
                s if ok else None for s, ok in zip(scores.tolist(), complete.tolist(), strict=True)
            ],
            missing=[u for u, ok in zip(ids, complete.tolist(), strict=True) if not ok],
            lookup_ms=round(lookup_ms, 3),
        )

    return app


def setup(pg_dsn: str, redis_url: str, users: int = 10_000, seed: int = 3) -> None:
    """Demo data: profiles in PostgreSQL for most users, counters in Redis for most users."""
    import asyncpg
    import redis

    rng = random.Random(seed)
    profiles = [
        (u, rng.randint(18, 80), rng.randint(1, 1500)) for u in range(users) if u % 101 != 5
    ]

    async def load() -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute(
                "DROP SCHEMA IF EXISTS demo_serving CASCADE; CREATE SCHEMA demo_serving;"
                "CREATE TABLE demo_serving.profiles (user_id bigint PRIMARY KEY, age int,"
                " tenure_days int)"
            )
            await conn.copy_records_to_table(
                "profiles", records=profiles, schema_name="demo_serving"
            )
        finally:
            await conn.close()

    asyncio.run(load())
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        pipe = r.pipeline(transaction=False)
        for u in range(users):
            if u % 103 != 6:
                pipe.hset(
                    f"serving:counters:{u}",
                    mapping={
                        "clicks_7d": round(rng.uniform(0, 40), 1),
                        "carts_7d": rng.randint(0, 6),
                    },
                )
        pipe.execute()
    finally:
        r.close()


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", required=True, help="PostgreSQL DSN")
    parser.add_argument("--redis", required=True, help="redis://host:port/db")
    parser.add_argument("--setup", action="store_true", help="write the demo data first")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--budget", type=float, default=0.5, help="lookup latency budget (s)")
    args = parser.parse_args(argv)
    if args.setup:
        setup(args.pg, args.redis)
    app = create_app(catalog(args.pg, args.redis), budget_s=args.budget)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
