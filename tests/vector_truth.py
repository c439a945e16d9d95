"""Brute-force truths for the vector tests: pgvector's distances computed by numpy."""

from __future__ import annotations

import numpy as np


def brute(vectors: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    """Each row's distance to ``q`` by ``metric`` (``l2``, ``cosine``, ``neg_ip``), in float64."""
    v, q = vectors.astype(np.float64), q.astype(np.float64)
    if metric == "l2":
        return np.linalg.norm(v - q, axis=1)
    if metric == "cosine":
        return 1 - v @ q / (np.linalg.norm(v, axis=1) * np.linalg.norm(q))
    return -(v @ q)


def top_k(ids: np.ndarray, dist: np.ndarray, k: int) -> list[int]:
    """The ``k`` ids nearest first (ties in the order given)."""
    return ids[np.argsort(dist, kind="stable")[:k]].tolist()
