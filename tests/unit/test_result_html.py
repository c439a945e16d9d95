"""``Result._repr_html_`` (what Jupyter shows): the rows and types SQLite and Arrow hold, escaped,
the first ``html_max_rows`` of them, a "… N more rows" line, the row count and the time."""

from __future__ import annotations

import re
import sqlite3
from html.parser import HTMLParser
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import federator
from federator.result import Result

PAYLOAD = "<script>alert('x')</script> & \"q\""


class Cells(HTMLParser):
    """The header cells, body rows and paragraphs of the rendered HTML, as text."""

    def __init__(self) -> None:
        super().__init__()
        self.header: list[str] = []
        self.rows: list[list[str]] = []
        self.paragraphs: list[str] = []
        self.tags: list[str] = []
        self._text: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)
        if tag == "tr" and self.header:
            self.rows.append([])
        if tag in ("th", "td", "p"):
            self._text = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("th", "td", "p") and self._text is not None:
            text = " ".join(t for t in self._text if t)
            if tag == "th":
                self.header.append(text)
            elif tag == "td":
                self.rows[-1].append(text)
            else:
                self.paragraphs.append(text)
            self._text = None

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data.strip())


def parse(markup: str) -> Cells:
    cells = Cells()
    cells.feed(markup)
    return cells


@pytest.fixture
def fed(tmp_path: Path):
    db = tmp_path / "t.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT, score REAL)")
        con.executemany(
            "INSERT INTO notes VALUES (?, ?, ?)",
            [
                (i, PAYLOAD if i == 3 else f"note {i}", None if i == 5 else i / 4)
                for i in range(1, 26)
            ],
        )
    con.close()
    lake = tmp_path / "lake"
    lake.mkdir()
    pq.write_table(
        pa.table({"id": [1, 2], "tags": pa.array([[1, 2], []], pa.list_(pa.int64()))}),
        lake / "tagged.parquet",
    )
    sources = {
        "db": {"kind": "sqlite", "path": str(db)},
        "lake": {"kind": "files", "path": str(lake)},
    }
    with federator.connect({"sources": sources}) as f:
        yield f, db


def test_html_shows_first_rows_types_count_and_time_escaped(fed) -> None:
    f, db = fed
    result = f.sql("SELECT id, body, score FROM db.notes ORDER BY id")
    markup = result._repr_html_()
    assert "<script" not in markup and "&lt;script&gt;" in markup
    cells = parse(markup)
    assert set(cells.tags) <= {
        "div",
        "table",
        "thead",
        "tbody",
        "tr",
        "th",
        "td",
        "br",
        "small",
        "p",
        "i",
    }
    assert cells.header == ["id int64", "body string", "score double"]
    con = sqlite3.connect(db)
    truth = con.execute("SELECT id, body, score FROM notes ORDER BY id LIMIT 20").fetchall()
    con.close()
    assert Result.html_max_rows == len(cells.rows) == 20
    want = [[str(i), b, "NULL" if s is None else str(s)] for i, b, s in truth]
    assert cells.rows == want
    assert cells.paragraphs[0] == "… 5 more rows"
    assert re.fullmatch(r"25 rows · [\d.]+ (ms|s)", cells.paragraphs[1]), cells.paragraphs


def test_html_limit_is_settable_and_small_answers_have_no_more_line(fed) -> None:
    f, _ = fed
    result = f.sql("SELECT id FROM db.notes WHERE id <= 2 ORDER BY id")
    cells = parse(result._repr_html_())
    assert cells.rows == [["1"], ["2"]]
    assert len(cells.paragraphs) == 1 and cells.paragraphs[0].startswith("2 rows · ")
    result = f.sql("SELECT id FROM db.notes ORDER BY id")
    result.html_max_rows = 3
    cells = parse(result._repr_html_())
    assert [r[0] for r in cells.rows] == ["1", "2", "3"]
    assert cells.paragraphs[0] == "… 22 more rows"


def test_html_of_an_empty_answer_and_a_nested_type(fed) -> None:
    f, _ = fed
    cells = parse(f.sql("SELECT id, body FROM db.notes WHERE id > 100")._repr_html_())
    assert cells.header == ["id int64", "body string"] and cells.rows == []
    assert cells.paragraphs[0].startswith("0 rows · ")
    markup = f.sql("SELECT id, tags FROM lake.tagged ORDER BY id")._repr_html_()
    cells = parse(markup)
    assert cells.header[1].startswith("tags list<")
    assert "list&lt;" in markup
    assert cells.rows == [["1", "[1, 2]"], ["2", "[]"]]
