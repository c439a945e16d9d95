"""Messages are never cut mid-word: a message is whole, and only a value it echoes may be
shortened, at a word, with an ellipsis (issue 19)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from federator.errors import ParameterError, clip
from federator.plan.model import NativeRequest
from federator.sql.dialect import vector_text

ROOT = Path(__file__).resolve().parents[2]


def test_clip_keeps_what_fits_and_cuts_at_a_word() -> None:
    assert clip("short", 80) == "short"
    assert clip("x" * 80, 80) == "x" * 80
    words = "alpha beta gamma delta epsilon zeta eta theta"
    cut = clip(words, 20)
    assert cut == "alpha beta gamma …" and len(cut) <= 20
    assert words.startswith(cut[:-1])
    # a value with no space to cut at is cut where it must be, still marked
    assert clip("y" * 100, 10) == "y" * 9 + "…"


def test_a_bad_vector_echoes_its_value_cut_at_a_word() -> None:
    value = "one two three four five six seven eight nine ten eleven twelve thirteen"
    with pytest.raises(ParameterError) as e:
        vector_text(value)
    text = str(e.value)
    shown = text.removeprefix("not a vector: ").split("…;")[0]
    assert repr(value).startswith(shown) and shown.endswith(" ")
    assert text.endswith("a torch tensor or '[1.0, 2.0, …]' text")


def test_explain_shows_long_parameters_cut_at_a_word() -> None:
    request = NativeRequest(source="s", text="SELECT $1", params=["word " * 40])
    shown = request.render_params()
    assert shown.startswith("$1 = 'word word") and shown.endswith("word …")
    assert len(shown) <= len("$1 = ") + 80


def test_no_message_slices_text_mid_word() -> None:
    """No f-string cuts text by a fixed count (``{x!r:.60}``, ``{q.sql()[:60]}``): use
    :func:`federator.errors.clip` for an echoed value, or print the message whole."""
    pattern = re.compile(r"![rs]:\.\d+\}|\)\[:\d+\]\}")
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for folder in ("adapters", "federator", "rules")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert found == []
