"""Train a PyTorch model on features joined across PostgreSQL and SQLite, streamed by federator.

The training set is one federated query: customer features in PostgreSQL joined with activity
aggregated from an SQLite event log. ``FederatedDataset`` streams it in batches into a
DataLoader whose workers each read their own key range (no LIMIT/OFFSET, no connection per
item); strings become category codes and nulls are masked, both declared.

Run it against any PostgreSQL you can write to (``--setup`` creates the demo data)::

    python examples/train_from_federated_features.py \\
        --pg postgresql://postgres@127.0.0.1/postgres --sqlite /tmp/events.db \\
        --setup --epochs 5 --workers 2

Each epoch prints one JSON line: ``{"epoch": 1, "loss": 0.61, "rows": 20000, "seconds": 0.4}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sqlite3
import time

import torch
from torch import nn
from torch.utils.data import DataLoader

import federator
from federator.torch import FederatedDataset, Vocabulary, move_to

QUERY = """
SELECT c.id, c.age, c.income, c.tenure_days, c.plan, a.events_30d, a.spend_30d, c.churned
FROM pg.demo_ml.customers AS c
JOIN (
    SELECT customer_id, COUNT(*) AS events_30d, SUM(amount) AS spend_30d
    FROM events.events
    GROUP BY customer_id
) AS a ON a.customer_id = c.id
WHERE c.signup_year >= :since
"""
FEATURES = ["age", "income", "tenure_days", "plan", "events_30d", "spend_30d"]
PLANS = ["free", "basic", "pro"]


def setup(pg_dsn: str, sqlite_path: str, customers: int, seed: int = 7) -> None:
    """Synthetic customers in PostgreSQL and their events in SQLite; churn depends on both."""
    import asyncpg

    rng = random.Random(seed)
    rows, events = [], []
    for i in range(1, customers + 1):
        age = rng.randint(18, 80)
        income = round(rng.lognormvariate(10.5, 0.4), 2)
        tenure = rng.randint(1, 2000)
        plan = rng.choice(PLANS)
        n_events = rng.randint(1, 12)
        spend = 0.0
        for _ in range(n_events):
            amount = round(rng.uniform(1, 60), 2)
            spend += amount
            events.append((i, amount))
        logit = 2.0 - 0.002 * tenure - 0.25 * n_events + 0.6 * (plan == "free") - 0.01 * spend
        churned = int(rng.random() < 1 / (1 + math.exp(-logit)))
        rows.append((i, age, income, tenure, plan, 2015 + i % 10, churned))

    async def load() -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute(
                "DROP SCHEMA IF EXISTS demo_ml CASCADE; CREATE SCHEMA demo_ml;"
                "CREATE TABLE demo_ml.customers (id bigint PRIMARY KEY, age int, income float8,"
                " tenure_days int, plan text, signup_year int, churned int)"
            )
            await conn.copy_records_to_table("customers", records=rows, schema_name="demo_ml")
            await conn.execute("ANALYZE demo_ml.customers")
        finally:
            await conn.close()

    asyncio.run(load())
    with sqlite3.connect(sqlite_path) as db:
        db.execute("DROP TABLE IF EXISTS events")
        db.execute("CREATE TABLE events (customer_id INTEGER, amount REAL)")
        db.executemany("INSERT INTO events VALUES (?, ?)", events)


class Model(nn.Module):
    """Numeric features standardized in the model; the plan code through an embedding."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.plan = nn.Embedding(len(PLANS), 4)
        self.mlp = nn.Sequential(nn.Linear(5 + 4, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plan = x[:, 3].long()
        numeric = torch.cat([x[:, :3], x[:, 4:]], dim=1)
        numeric = (numeric - self.mean) / self.std
        return self.mlp(torch.cat([numeric, self.plan(plan)], dim=1)).squeeze(1)


def train(
    fed: federator.Federation,
    *,
    epochs: int,
    workers: int,
    batch_size: int,
    lr: float = 0.01,
    seed: int = 0,
) -> list[float]:
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dataset = FederatedDataset(
        fed,
        QUERY,
        {"since": 2015},
        key="id",
        features=FEATURES,
        label="churned",
        label_dtype=torch.float32,
        batch_size=batch_size,
        shuffle_buffer=4 * batch_size,
        seed=seed,
        strings="codes",  # plan → code; the vocabulary is read once, so workers agree
        vocabularies={"plan": Vocabulary(PLANS, frozen=True)},
    )
    stats = fed.sql(
        "SELECT AVG(age) AS age, AVG(income) AS income, AVG(tenure_days) AS tenure,"
        " STDDEV_SAMP(age) AS sage, STDDEV_SAMP(income) AS sincome,"
        " STDDEV_SAMP(tenure_days) AS stenure FROM pg.demo_ml.customers"
    ).to_arrow()
    s = stats.to_pylist()[0]
    mean = torch.tensor([s["age"], s["income"], s["tenure"], 6.5, 200.0])
    std = torch.tensor([s["sage"], s["sincome"], s["stenure"], 3.5, 120.0])
    model = Model(mean, std).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.BCEWithLogitsLoss()
    loader = DataLoader(
        dataset,
        batch_size=None,  # the dataset yields whole batches
        num_workers=workers,
        pin_memory=device == "cuda",
        persistent_workers=False,
    )
    losses = []
    for epoch in range(1, epochs + 1):
        dataset.set_epoch(epoch)
        started, total, rows = time.perf_counter(), 0.0, 0
        for batch in loader:
            x, y, _ = move_to(batch, device)
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(y)
            rows += len(y)
        losses.append(total / rows)
        line = {"epoch": epoch, "loss": round(losses[-1], 5), "rows": rows}
        print(json.dumps({**line, "seconds": round(time.perf_counter() - started, 3)}), flush=True)
    return losses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", required=True, help="PostgreSQL DSN")
    parser.add_argument("--sqlite", required=True, help="SQLite file with the events table")
    parser.add_argument("--setup", action="store_true", help="create the demo data first")
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=512)
    args = parser.parse_args(argv)
    if args.setup:
        setup(args.pg, args.sqlite, args.customers)
    catalog = {
        "sources": {
            "pg": {"kind": "postgres", "dsn": args.pg},
            "events": {"kind": "sqlite", "path": args.sqlite},
        }
    }
    with federator.connect(catalog, timeout=120) as fed:
        losses = train(fed, epochs=args.epochs, workers=args.workers, batch_size=args.batch_size)
    return 0 if losses[-1] < losses[0] else 1


if __name__ == "__main__":
    raise SystemExit(main())
