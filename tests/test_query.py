"""`query` and `summarize --pivot` on a small stored dataset: filters, group-by, sort, limit,
formats, the --where language (a property test against plain Python), and exit-2 errors."""

from __future__ import annotations

import csv
import io
import json
import operator

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.cli import main
from orchestrator.errors import QueryError
from orchestrator.reports.where import parse_where
from tests.results_data import decode_tok_s, write_sweep


@pytest.fixture()
def sweep(tmp_path):
    write_sweep(tmp_path / "results" / "sweep")
    return tmp_path / "results" / "sweep"


def query_json(capsys, *argv) -> list[dict]:
    assert main(["query", *map(str, argv), "--format", "json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_where_filters_rows(sweep, capsys):
    rows = query_json(capsys, sweep, "--where", "method = 'cached' and batch_size >= 4")
    assert sorted((r["method"], r["batch_size"], r["prompt_len"]) for r in rows) == [
        ("cached", 4, 32),
        ("cached", 4, 128),
    ]
    failed = query_json(capsys, sweep, "--where", "status != 'ok'", "--columns", "cell_id,error")
    assert failed == [{"cell_id": "naive-b4-p128", "error": "boom"}]
    rows = query_json(
        capsys, sweep, "--where", "prompt_len in (128) and not (method = 'naive' or batch_size = 4)"
    )
    assert [(r["method"], r["batch_size"]) for r in rows] == [("cached", 1)]
    assert len(query_json(capsys, sweep, "--where", "decode_tok_s is null")) == 1
    assert len(query_json(capsys, sweep, "--where", "finished_at >= '2026-01-01T00:00:02'")) == 1


def test_all_attempts_by_default_latest_on_request(sweep, capsys):
    assert len(query_json(capsys, sweep)) == 9
    latest = query_json(capsys, sweep, "--latest")
    assert len(latest) == 8 and {r["status"] for r in latest} == {"ok"}


def test_group_by_aggregates(sweep, capsys):
    rows = query_json(
        capsys,
        sweep,
        "--where",
        "status = 'ok'",
        "--group-by",
        "method",
        "--agg",
        "decode_tok_s:mean,decode_tok_s:median,decode_tok_s:max,prompt_len:min,count",
    )
    assert [r["method"] for r in rows] == ["cached", "naive"]  # sorted by the group keys
    by = {r["method"]: r for r in rows}
    cached = [decode_tok_s("cached", b, p) for b in (1, 4) for p in (32, 128)]
    assert by["cached"]["decode_tok_s_mean"] == pytest.approx(sum(cached) / 4)
    assert by["cached"]["decode_tok_s_median"] == pytest.approx(sorted(cached)[1:3][0] / 2 +
                                                                sorted(cached)[1:3][1] / 2)
    assert by["cached"]["decode_tok_s_max"] == pytest.approx(max(cached))
    assert by["naive"]["prompt_len_min"] == 32
    assert by["naive"]["count"] == 4 and by["cached"]["count"] == 4
    assert list(rows[0]) == [
        "method", "decode_tok_s_mean", "decode_tok_s_median", "decode_tok_s_max",
        "prompt_len_min", "count",
    ]


def test_sort_and_limit(sweep, capsys):
    rows = query_json(capsys, sweep, "--sort=-decode_tok_s", "--limit", "2",
                      "--columns", "method,batch_size,prompt_len")
    assert rows == [
        {"method": "cached", "batch_size": 4, "prompt_len": 128},
        {"method": "cached", "batch_size": 4, "prompt_len": 32},
    ]
    rows = query_json(capsys, sweep, "--where", "status = 'ok'", "--group-by", "batch_size",
                      "--agg", "decode_tok_s:sum", "--sort", "decode_tok_s_sum:desc")
    assert [r["batch_size"] for r in rows] == [4, 1]


def test_formats(sweep, capsys):
    argv = ["query", str(sweep), "--where", "status = 'ok' and batch_size = 1",
            "--columns", "method,prompt_len,decode_tok_s,decode_step_ms", "--sort", "method,prompt_len"]
    assert main([*argv, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["method"], r["prompt_len"]) for r in rows] == [
        ("cached", "32"), ("cached", "128"), ("naive", "32"), ("naive", "128")]
    assert len(json.loads(rows[0]["decode_step_ms"])) == 31  # lists as JSON text
    assert main([*argv, "--format", "markdown"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| method") and out[1].startswith("|---") and len(out) == 6
    assert main([*argv, "--format", "table"]) == 0
    out = capsys.readouterr().out
    assert "... (31)]" in out and "cached" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--where", "batch_size >= "], "expected a value"),
        (["--where", "(method = 'cached'"], "expected ')'"),
        (["--where", "method = cached"], "quote it: 'cached'"),
        (["--where", "method = 3"], "method is text; quote the value"),
        (["--where", "batch_size = 'x'"], "batch_size is a number"),
        (["--where", "batch_size ; 1"], "unexpected character ';'"),
        (["--where", "batchsize >= 4"], "unknown column 'batchsize' (did you mean 'batch_size'?)"),
        # hostile expressions (issue 15): one line, never a RecursionError or an OverflowError
        (["--where", "(" * 500 + "batch_size = 1" + ")" * 500], "more than 64 nested"),
        (["--where", "not " * 2000 + "batch_size = 1"], "more than 64 nested"),
        (["--where", "not " * 5000 + "batch_size = 1"], "longer than 10000 characters"),
        (["--where", " or ".join(["batch_size = 1"] * 300)], "more than 256 comparisons"),
        (["--where", "batch_size = 99999999999999999999999"], "outside [-9223372036854775808,"),
        (["--where", "batch_size = " + "9" * 5000], "a number of 5000 characters"),
        (["--where", "decode_tok_s < 1" + "0" * 350], "too large to compare with decode_tok_s"),
        (["--columns", "method,speed"], "unknown column 'speed'"),
        (["--sort=-speed"], "unknown --sort column 'speed'"),
        (["--group-by", "methd"], "unknown --group-by column 'methd'"),
        (["--group-by", "method", "--agg", "decode_tok_s:avg"], "--agg 'decode_tok_s:avg'"),
        (["--agg", "decode_tok_s:mean"], "--agg needs --group-by"),
    ],
)
def test_bad_queries_exit_2_with_one_line(sweep, capsys, argv, message):
    assert main(["query", str(sweep), *argv]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert message in err, err
    assert "\n" not in err and "Traceback" not in err and not captured.out
    assert len(err) < 1500, err  # a long expression is quoted shortened
    names_columns = "unknown" in message or message.startswith("expected") or "';'" in message
    if names_columns:  # malformed expressions and unknown names list the available columns
        assert "columns: schema_version, run_id" in err


def test_missing_results_dir_exits_2(tmp_path, capsys):
    assert main(["query", str(tmp_path / "none")]) == 2
    assert "no such results directory" in capsys.readouterr().err


def test_pivot_with_ratio(sweep, capsys):
    argv = ["summarize", str(sweep), "--pivot", "batch_size,prompt_len", "--columns", "method",
            "--values", "decode_tok_s", "--ratio", "cached/naive", "--format", "json"]
    assert main(argv) == 0, capsys.readouterr().err
    rows = json.loads(capsys.readouterr().out)
    assert list(rows[0]) == ["batch_size", "prompt_len", "naive", "cached", "cached/naive"]
    by = {(r["batch_size"], r["prompt_len"]): r for r in rows}
    assert by[1, 32]["cached/naive"] == pytest.approx(2.0)
    assert by[4, 128]["cached/naive"] == pytest.approx(8.0)
    assert by[4, 128]["naive"] == pytest.approx(decode_tok_s("naive", 4, 128))  # the ok retry
    # any axes: prompt length across, ratio between two of its values
    argv = ["summarize", str(sweep), "--pivot", "method", "--columns", "prompt_len,batch_size",
            "--values", "ttft_ms", "--ratio", "128/32", "--format", "json"]
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert "128/32 (1)" in rows[0] and rows[0]["128/32 (4)"] == pytest.approx(4.0)
    assert main(["summarize", str(sweep), "--ratio", "cached/eager"]) == 2
    assert "no --columns axis has both values" in capsys.readouterr().err


# -- the --where language against plain Python ----------------------------------------------------

TABLE = pa.table({
    "a": [1, 2, 3, 4, None],
    "x": [0.5, 1.5, 2.5, None, 4.5],
    "s": ["p", "q", "p", "r", None],
})
OPS = {"=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
       ">": operator.gt, ">=": operator.ge}
leaf = st.one_of(
    st.tuples(st.just("a"), st.sampled_from(list(OPS)), st.integers(0, 5)),
    st.tuples(st.just("x"), st.sampled_from(list(OPS)), st.sampled_from([0.0, 1.5, 3.0])),
    st.tuples(st.just("s"), st.sampled_from(["=", "!="]), st.sampled_from(["p", "q", "z"])),
    st.tuples(st.just("a"), st.just("in"), st.lists(st.integers(0, 5), min_size=1, max_size=3)),
    # an integer column against fractional numbers: compared by value, never truncated
    st.tuples(st.just("a"), st.sampled_from(list(OPS)), st.sampled_from([0.5, 1.9, 2.0, 3.5])),
    st.tuples(st.just("a"), st.just("in"),
              st.lists(st.sampled_from([1, 1.9, 2.0, 2.5, 4]), min_size=1, max_size=3)),
    # a literal on the left
    st.tuples(st.sampled_from([1.5, 2, 3.0]), st.sampled_from(list(OPS)), st.just("a")),
)
exprs = st.recursive(
    leaf,
    lambda inner: st.one_of(
        st.tuples(st.sampled_from(["and", "or"]), inner, inner), st.tuples(st.just("not"), inner)
    ),
    max_leaves=6,
)


def to_text(e) -> str:
    if e[0] == "not":
        return f"not ({to_text(e[1])})"
    if e[0] in ("and", "or"):
        return f"({to_text(e[1])}) {e[0]} ({to_text(e[2])})"
    col, op, value = e
    if op == "in":
        return f"{col} in ({', '.join(map(str, value))})"
    if not isinstance(col, str):  # literal first: "1.5 < a"
        return f"{col!r} {op} {value}"
    return f"{col} {op} {value!r}"


def truth(e, row) -> bool | None:
    """SQL three-valued logic, as Arrow's filter applies it (null rows are dropped)."""
    if e[0] == "not":
        v = truth(e[1], row)
        return None if v is None else not v
    if e[0] in ("and", "or"):
        a, b = truth(e[1], row), truth(e[2], row)
        if e[0] == "and":
            return False if a is False or b is False else None if None in (a, b) else True
        return True if a is True or b is True else None if None in (a, b) else False
    col, op, value = e
    if op == "in":
        return row[col] in value  # is_in: null is never in a list of numbers
    if not isinstance(col, str):
        return None if row[value] is None else OPS[op](col, row[value])
    return None if row[col] is None else OPS[op](row[col], value)


@settings(max_examples=150, deadline=None)
@given(exprs)
def test_where_agrees_with_python(expr):
    got = TABLE.filter(parse_where(to_text(expr), TABLE.schema)).to_pylist()
    assert got == [row for row in TABLE.to_pylist() if truth(expr, row)]


def test_where_compares_an_int_column_with_fractions_by_value():
    """`batch_size in (1.9)` must not match 1 (the float truncated to the column's type)."""
    table = pa.table({"batch_size": pa.array([1, 2, 4], pa.int64())})

    def rows(text):
        return table.filter(parse_where(text, table.schema))["batch_size"].to_pylist()

    assert rows("batch_size in (1.9)") == [] and rows("batch_size = 1.9") == []
    assert rows("batch_size in (1.9, 2.0, 4)") == [2, 4] and rows("batch_size != 1.9") == [1, 2, 4]
    assert rows("batch_size < 1.5") == [1] and rows("1.5 < batch_size") == [2, 4]
    small = pa.table({"u": pa.array([1, 2], pa.uint8())})
    with pytest.raises(QueryError, match=r"u holds uint8 values; 300 is outside \[0, 255\]"):
        parse_where("u in (1, 300)", small.schema)


def test_where_never_evaluates_python():
    with pytest.raises(QueryError, match="unexpected character"):
        parse_where("__import__('os').system('true')", TABLE.schema)
    with pytest.raises(QueryError, match="unknown column '__import__'"):
        parse_where("__import__ = 1", TABLE.schema)


_CELL = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet="ab ±é-_0123456789.e", max_size=12),
    st.lists(st.floats(allow_nan=False), max_size=5),
)


@settings(max_examples=150, deadline=None)
@given(
    names=st.lists(st.text(alphabet="abcxyz _±", max_size=9), min_size=1, max_size=5, unique=True),
    rows=st.lists(st.lists(_CELL, min_size=5, max_size=5), min_size=1, max_size=8),
)
def test_text_tables_are_laid_out_exactly_as_tabulate_would(names, rows):
    """The text table is laid out without tabulate when the text is plain (a 500k-line compare
    went from a minute to seconds): it must be tabulate's "simple" layout, character for
    character, whatever the columns hold."""
    from tabulate import tabulate

    from orchestrator.reports import formats

    dicts = [dict(zip(names, values)) for values in rows]
    columns = [formats._column_texts([d.get(n) for d in dicts]) for n in names]
    body = [list(line) for line in zip(*(texts for texts, _ in columns))]
    want = tabulate(
        body,
        headers=names,
        tablefmt="simple",
        disable_numparse=True,
        colalign=[align for _, align in columns],
    )
    assert formats.render(dicts, "table") == want
