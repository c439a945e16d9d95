"""The files source (Parquet, CSV, Arrow IPC in a folder) end to end, checked against DuckDB
reading the same files directly and against values computed by hand."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
from _data import EVENTS, PRODUCTS, RATINGS, normalize, rows_of
from federator.adapters.base import TableRef
from federator.adapters.files import FilesAdapter

import federator
from federator.config import SourceConfig


def adapter(folder: Path, **options: object) -> FilesAdapter:
    return FilesAdapter(SourceConfig("lake", "files", {"path": str(folder), **options}))


def direct(lake_dir: Path, query: str) -> list[tuple[object, ...]]:
    """The query on DuckDB with views over the same files (the independent truth)."""
    con = duckdb.connect()
    try:
        con.execute(
            f"CREATE VIEW products AS SELECT * FROM read_parquet('{lake_dir}/products.parquet')"
        )
        con.execute(f"CREATE VIEW events AS SELECT * FROM read_csv_auto('{lake_dir}/events.csv')")
        con.register("ratings", feather.read_table(lake_dir / "ratings.arrow"))
        return con.execute(query).fetchall()
    finally:
        con.close()


def test_tables_schemas_and_row_counts(lake_dir: Path) -> None:
    infos = {i.ref.name: i for i in asyncio.run(adapter(lake_dir).tables())}
    assert sorted(infos) == ["events", "products", "ratings"]  # notes.txt is not a table
    assert all(i.ref == TableRef("main", name) and i.source == "lake" for name, i in infos.items())
    assert infos["products"].schema == pa.schema([
        ("id", pa.int64()), ("name", pa.string()), ("category", pa.string()),
        ("price", pa.decimal128(8, 2)),
    ])  # fmt: skip
    assert infos["products"].rows == len(PRODUCTS)
    assert infos["events"].schema == pa.schema([
        ("user_id", pa.int64()), ("kind", pa.string()), ("at", pa.timestamp("us")),
    ])  # fmt: skip
    assert infos["events"].rows == len(EVENTS)
    assert infos["ratings"].schema == pa.schema([("product_id", pa.int64()), ("stars", pa.int32())])
    assert infos["ratings"].rows == len(RATINGS)


def test_missing_folder_is_a_catalog_error(tmp_path: Path) -> None:
    catalog = {"sources": {"lake": {"kind": "files", "path": str(tmp_path / "nowhere")}}}
    with (
        federator.connect(catalog) as fed,
        pytest.raises(federator.CatalogError, match=r"files folder .*nowhere.* does not exist"),
    ):
        fed.sql("SELECT * FROM lake.t")
    file = tmp_path / "plain.txt"
    file.write_text("x")
    with pytest.raises(federator.CatalogError, match="is not a folder"):
        adapter(file).scan()


def test_two_files_one_stem_is_refused(tmp_path: Path) -> None:
    pq.write_table(pa.table({"a": [1]}), tmp_path / "t.parquet")
    (tmp_path / "t.csv").write_text("a\n1\n")
    with pytest.raises(
        federator.CatalogError, match=r"two files make table 't' \(t\.csv, t\.parquet\)"
    ):
        adapter(tmp_path).scan()


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(federator.CatalogError, match=r"cannot read parquet file 'broken\.parquet'"):
        asyncio.run(adapter(tmp_path).tables())


QUERIES = [
    "SELECT id, name, price FROM {s}products WHERE category = 'books' ORDER BY id",
    "SELECT category, count(*) AS n, sum(price) AS total, max(price) AS top FROM {s}products "
    "GROUP BY category HAVING count(*) > 1 ORDER BY category",
    "SELECT kind, count(*) AS n FROM {s}events GROUP BY kind ORDER BY n DESC, kind",
    "SELECT user_id, min(\"at\") AS first FROM {s}events WHERE kind <> 'view' GROUP BY user_id "
    "ORDER BY user_id",
    "SELECT p.name, avg(r.stars) AS stars FROM {s}products AS p JOIN {s}ratings AS r "
    "ON r.product_id = p.id GROUP BY p.name ORDER BY stars DESC, p.name",
    "SELECT p.name, r.stars FROM {s}products AS p LEFT JOIN {s}ratings AS r ON r.product_id = p.id "
    "ORDER BY p.id, r.stars",
    "SELECT name, rank() OVER (PARTITION BY category ORDER BY price DESC) AS r FROM {s}products "
    "ORDER BY name",
    "SELECT id FROM {s}products WHERE name ILIKE 'T%' ORDER BY id",
    "SELECT id FROM {s}products ORDER BY price DESC LIMIT 2",
]


@pytest.mark.parametrize("query", QUERIES)
def test_matches_duckdb_directly(fed: federator.Federation, lake_dir: Path, query: str) -> None:
    result = fed.sql(query.format(s="lake."))
    assert result.plan.residual is None  # one source: pushed whole to the files source
    assert normalize(rows_of(result.to_arrow())) == normalize(direct(lake_dir, query.format(s="")))


def test_hand_computed_values(fed: federator.Federation) -> None:
    got = fed.sql(
        "SELECT category, sum(price) AS total FROM lake.products "
        "GROUP BY category ORDER BY category"
    ).to_arrow()
    want: dict[str, decimal.Decimal] = {}
    for _, _, category, price in PRODUCTS:
        want[category] = want.get(category, decimal.Decimal(0)) + price
    assert got.to_pylist() == [{"category": c, "total": want[c]} for c in sorted(want)]
    assert pa.types.is_decimal(got.schema.field("total").type)
    clicks = fed.sql("SELECT count(*) AS n FROM lake.events WHERE kind = 'click'").to_arrow()
    assert clicks.to_pylist() == [{"n": sum(1 for e in EVENTS if e[1] == "click")}]


def test_exact_types_come_back(fed: federator.Federation) -> None:
    table = fed.sql("SELECT * FROM lake.products ORDER BY id").to_arrow()
    assert table.schema.field("price").type == pa.decimal128(8, 2)
    assert table.column("price").to_pylist() == [p[3] for p in PRODUCTS]
    events = fed.sql("SELECT at FROM lake.events ORDER BY at LIMIT 1").to_arrow()
    assert events.column("at").to_pylist() == [min(e[2] for e in EVENTS)]
    ratings = fed.sql("SELECT stars FROM lake.ratings").to_arrow()
    assert ratings.schema.field("stars").type == pa.int32()


def test_params_are_bound(fed: federator.Federation) -> None:
    q = "SELECT name FROM lake.products WHERE category = :c AND price < :cap ORDER BY name"
    result = fed.sql(q, {"c": "games", "cap": 20})
    assert result.to_arrow().to_pylist() == [{"name": "tetris"}]
    assert '"category" = ? AND "products"."price" < ?' in result.explain()
    assert fed.sql(q, {"c": "x' OR 1=1 --", "cap": 1000}).to_arrow().num_rows == 0


def test_empty_result_keeps_schema(fed: federator.Federation) -> None:
    table = fed.sql("SELECT id, price FROM lake.products WHERE id < 0").to_arrow()
    assert table.num_rows == 0
    assert table.schema == pa.schema([("id", pa.int64()), ("price", pa.decimal128(8, 2))])


def test_streams_in_batches(tmp_path: Path) -> None:
    pq.write_table(pa.table({"n": pa.array(range(1000), pa.int64())}), tmp_path / "big.parquet")
    catalog = {"sources": {"f": {"kind": "files", "path": str(tmp_path), "batch_rows": 128}}}
    with federator.connect(catalog) as fed:
        reader = fed.sql("SELECT n FROM f.big").to_batches()
        batches = list(reader)
        assert len(batches) > 1
        assert all(b.num_rows <= 128 for b in batches)
        assert sorted(pa.Table.from_batches(batches).column("n").to_pylist()) == list(range(1000))
        # Stopping early is fine, and the source stays usable.
        first = fed.sql("SELECT n FROM f.big").to_batches()
        assert first.read_next_batch().num_rows <= 128
        first.close()
        assert fed.sql("SELECT count(*) AS c FROM f.big").to_arrow().to_pylist() == [{"c": 1000}]


def test_new_file_after_refresh(fed: federator.Federation, lake_dir: Path) -> None:
    assert fed.sql("SELECT count(*) AS n FROM lake.products").to_arrow().num_rows == 1
    pq.write_table(pa.table({"x": [1, 2]}), lake_dir / "late.parquet")
    with pytest.raises(federator.UnknownTableError):
        fed.sql("SELECT x FROM lake.late")
    fed.catalog.refresh("lake")
    assert fed.sql("SELECT sum(x) AS s FROM lake.late").to_arrow().column(0).to_pylist() == [3]


def test_arrow_stream_format_and_feather(tmp_path: Path) -> None:
    table = pa.table(
        {"k": pa.array([1, 2, 3], pa.int64()), "d": [dt.date(2024, 1, i) for i in (1, 2, 3)]}
    )
    with (
        pa.OSFile(str(tmp_path / "s.arrow"), "wb") as sink,
        pa.ipc.new_stream(sink, table.schema) as w,
    ):
        w.write_table(table)
    feather.write_feather(table, tmp_path / "f.feather")
    catalog = {"sources": {"f": {"kind": "files", "path": str(tmp_path)}}}
    with federator.connect(catalog) as fed:
        for name in ("s", "f"):
            got = fed.sql(f"SELECT k, d FROM f.{name} WHERE k >= 2 ORDER BY k").to_arrow()
            assert got.to_pylist() == [
                {"k": 2, "d": dt.date(2024, 1, 2)},
                {"k": 3, "d": dt.date(2024, 1, 3)},
            ]


def test_bind_join_into_files_as_array_parameter(fed: federator.Federation) -> None:
    """DuckDB takes the keys as one list parameter (= ANY(?)) when the files side is bound."""
    fed.catalog.adapters["lake"].rules.capabilities |= {"bind_join"}
    q = (
        "SELECT u.name, e.kind FROM shop.users AS u JOIN lake.events AS e ON e.user_id = u.id "
        "WHERE u.country = 'US' ORDER BY u.name, e.kind"
    )
    result = fed.sql(q)
    text = result.explain()
    assert '"e"."user_id" = ANY ?' in text or '"e"."user_id" = ANY(?)' in text
    assert "bind join" in text
    want_users = {3: "grace", 5: "barbara"}
    want = sorted((want_users[e[0]], e[1]) for e in EVENTS if e[0] in want_users)
    assert [tuple(r.values()) for r in result.to_arrow().to_pylist()] == want
    analyzed = result.explain(analyze=True)
    assert "bound keys 2" in analyzed


SLOW = "SELECT count(*) AS c FROM f.n AS a CROSS JOIN f.n AS b WHERE (a.n * 7 + b.n) % 1000003 = 5"


@pytest.fixture
def numbers(tmp_path: Path) -> dict[str, object]:
    pq.write_table(pa.table({"n": pa.array(range(200_000), pa.int64())}), tmp_path / "n.parquet")
    return {"sources": {"f": {"kind": "files", "path": str(tmp_path)}}}


def test_timeout_interrupts_duckdb_and_source_stays_usable(numbers: dict[str, object]) -> None:
    with federator.connect(numbers) as fed:
        started = time.perf_counter()
        with pytest.raises(federator.QueryTimeoutError, match=r"timed out after 0\.5s"):
            fed.sql(SLOW, timeout=0.5).to_arrow()
        assert time.perf_counter() - started < 10
        assert fed.sql("SELECT count(*) AS c FROM f.n").to_arrow().to_pylist() == [{"c": 200_000}]


def test_timeout_names_the_fragment(numbers: dict[str, object]) -> None:
    named = pytest.raises(federator.QueryTimeoutError, match="fragment f0 on source 'f'")
    with federator.connect(numbers) as fed, named:
        fed.sql(SLOW, timeout=0.5).to_arrow()
