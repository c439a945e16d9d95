"""The examples run as a user runs them, on small data: the training script's loss goes down,
and the inference service answers real HTTP requests with the databases' features."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from federator.embedded import free_port

pytest.importorskip("torch")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def test_training_example_loss_goes_down(pg_dsn: str, tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        str(EXAMPLES / "train_from_federated_features.py"),
        "--pg", pg_dsn, "--sqlite", str(tmp_path / "events.db"), "--setup",
        "--customers", "4000", "--epochs", "4", "--workers", "2", "--batch-size", "256",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=_env())
    assert done.returncode == 0, done.stdout + done.stderr
    epochs = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]
    assert all(e["rows"] == 4000 for e in epochs)  # every row once per epoch, 2 workers
    losses = [e["loss"] for e in epochs]
    assert losses[-1] < losses[0], losses


@pytest.fixture(scope="module")
def service(pg_dsn: str, redis_dsn: str) -> Iterator[str]:
    port = free_port()
    cmd = [
        sys.executable, str(EXAMPLES / "inference_service.py"),
        "--pg", pg_dsn, "--redis", redis_dsn, "--setup", "--port", str(port), "--budget", "5",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env()
    )
    base = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read() if proc.stdout else ""
                pytest.fail(f"inference service exited with {proc.returncode}:\n{out}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("inference service did not start within 90 s")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _truth(pg_dsn: str, redis_dsn: str, ids: list[int]) -> dict[int, dict[str, Any]]:
    import asyncpg
    import redis

    from .conftest import run_async

    async def fetch() -> dict[int, Any]:
        conn = await asyncpg.connect(pg_dsn)
        try:
            rows = await conn.fetch(
                "SELECT user_id, age, tenure_days FROM demo_serving.profiles"
                " WHERE user_id = ANY($1)",
                ids,
            )
        finally:
            await conn.close()
        return {r["user_id"]: dict(r) for r in rows}

    profiles = run_async(fetch())
    r = redis.Redis.from_url(redis_dsn, decode_responses=True)
    try:
        counters = {u: r.hgetall(f"serving:counters:{u}") for u in ids}
    finally:
        r.close()
    out = {}
    for u in ids:
        if u in profiles and counters[u]:
            out[u] = {
                "age": profiles[u]["age"],
                "tenure_days": profiles[u]["tenure_days"],
                "clicks_7d": float(counters[u]["clicks_7d"]),
                "carts_7d": int(counters[u]["carts_7d"]),
            }
    return out


def test_inference_service_scores_from_both_sources(
    service: str, pg_dsn: str, redis_dsn: str
) -> None:
    import httpx
    import torch

    sys.path.insert(0, str(EXAMPLES))
    try:
        from inference_service import FEATURES, Scorer
    finally:
        sys.path.remove(str(EXAMPLES))

    ids = [*range(0, 600, 3), 5, 6, 106, 109, 20_000]  # 5, 106: no profile; 6, 109: no counters
    with httpx.Client(base_url=service, timeout=30) as client:
        response = client.post("/score", json={"user_ids": ids})
        assert response.status_code == 200, response.text
        body = response.json()
        assert client.post("/score", json={"user_ids": []}).status_code == 422

    truth = _truth(pg_dsn, redis_dsn, ids)
    assert sorted(body["missing"]) == sorted(u for u in ids if u not in truth)
    assert {5, 6, 106, 109, 20_000} <= set(body["missing"])
    model = Scorer().eval()
    for u, got in zip(ids, body["scores"], strict=True):
        if u not in truth:
            assert got is None
            continue
        x = torch.tensor([[float(truth[u][f]) for f in FEATURES]])
        assert got == pytest.approx(model(x).item(), rel=1e-5)
    assert body["lookup_ms"] > 0


def test_inference_service_answers_504_past_its_budget(pg_dsn: str, redis_dsn: str) -> None:
    """The app object itself, run by uvicorn on a loopback port, with a budget it cannot meet."""
    import threading

    import httpx
    import uvicorn

    sys.path.insert(0, str(EXAMPLES))
    try:
        from inference_service import catalog, create_app
    finally:
        sys.path.remove(str(EXAMPLES))

    port = free_port()
    app = create_app(catalog(pg_dsn, redis_dsn), budget_s=1e-6)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        response = httpx.post(
            f"http://127.0.0.1:{port}/score", json={"user_ids": [1, 2, 3]}, timeout=30
        )
        assert response.status_code == 504
        assert "timed out" in response.json()["detail"]
    finally:
        server.should_exit = True
        thread.join(timeout=15)
