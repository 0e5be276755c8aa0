"""The shipped SQL (schemas/sql/) and its renderer, without services: every file is
structurally sound, declares its parameters, and either runs on the emulator (see
tests/integration/test_analysis.py) or is marked `-- requires: <BigQuery feature>`;
table ids are validated strictly before they reach SQL text."""

from __future__ import annotations

import pytest

import schemas
from analysis import sql
from tests import sql_check

FILES = sql.list_files()
# What the emulator cannot run, and why (tests/integration/test_analysis.py runs
# every other file, and the exact fallback of these, for real).
NEEDS_BIGQUERY = {
    "vector_search.sql": "VECTOR_SEARCH",
    "vector_search_of_object.sql": "VECTOR_SEARCH",
    "create_vector_index.sql": "CREATE VECTOR INDEX",
}
EXACT_FALLBACK = {
    "vector_search.sql": "nearest_neighbours.sql",
    "vector_search_of_object.sql": "nearest_neighbours_of_object.sql",
}
TABLES = dict(
    embeddings="my-project:images.embeddings", dead_letters="my-project.images.dead_letters"
)
VIEW = "my-project:images.current_embeddings"
# Each table's columns, for sqlglot: schemas/ is what the job creates.
SCHEMAS = {
    "my-project.images.embeddings": schemas.EMBEDDINGS,
    "my-project.images.current_embeddings": schemas.EMBEDDINGS,
    "my-project.images.dead_letters": schemas.DEAD_LETTERS,
}


def rendered(name: str, current=VIEW) -> str:
    """A shipped file rendered on the tables above (the view, or its query inlined),
    its comment lines removed as when it is sent."""
    ints = {k: 10 for k in sql.INT_PLACEHOLDERS if k in sql.placeholders(sql.text(name))}
    return sql.without_comment_lines(sql.render(name, **TABLES, current=current, **ints))


def test_the_expected_files_ship():
    for name in (
        "nearest_neighbours.sql",
        "vector_search.sql",
        "create_vector_index.sql",
        "daily_counts.sql",
        "latency.sql",
        "dead_letters_by_reason.sql",
        "current_embeddings.sql",
    ):
        assert name in FILES


@pytest.mark.parametrize("name", FILES)
def test_every_file_is_structurally_sound(name):
    assert sql.structural_problems(sql.text(name)) == []


@pytest.mark.parametrize("name", FILES)
def test_every_file_renders_with_only_known_placeholders(name):
    text = sql.text(name)
    assert set(sql.placeholders(text)) <= set(sql.KNOWN_PLACEHOLDERS)
    ints = {k: 10 for k in sql.INT_PLACEHOLDERS if k in sql.placeholders(text)}
    rendered = sql.render(name, **TABLES, current="my-project:images.current_embeddings", **ints)
    assert "{" not in sql.strip_comments_and_strings(rendered)
    assert sql.structural_problems(rendered.replace("{", "{{").replace("}", "}}")) == []


@pytest.mark.parametrize("name", sorted(NEEDS_BIGQUERY))
def test_files_the_emulator_cannot_run_are_marked(name):
    text = sql.text(name)
    feature = sql.requires(text)
    assert feature and feature.startswith(NEEDS_BIGQUERY[name])
    body = sql.strip_comments_and_strings(text).upper()
    assert NEEDS_BIGQUERY[name] in " ".join(body.split())
    fallback = EXACT_FALLBACK.get(name)
    if fallback:  # the exact query with the same parameters runs on the emulator
        assert sql.requires(sql.text(fallback)) is None
        assert set(sql.declared_params(fallback and sql.text(fallback))) <= set(
            sql.declared_params(text)
        ) | {"bucket", "name"}


def test_unmarked_files_are_the_ones_the_emulator_runs():
    from tests.integration.test_analysis import EMULATOR_CASES

    unmarked = {n for n in FILES if sql.requires(sql.text(n)) is None}
    assert unmarked == set(EMULATOR_CASES)
    assert {n for n in FILES if sql.requires(sql.text(n))} == set(NEEDS_BIGQUERY)


def test_vector_index_settings():
    text = sql.text("create_vector_index.sql")
    rendered = sql.render(
        "create_vector_index.sql", embeddings=TABLES["embeddings"], num_lists=1000
    )
    assert "index_type = 'IVF'" in rendered and "distance_type = 'COSINE'" in rendered
    assert "ivf_options = '{\"num_lists\": 1000}'" in rendered
    assert "10 MB" in text  # when BigQuery does not build the index
    with pytest.raises(ValueError):
        sql.render("create_vector_index.sql", embeddings=TABLES["embeddings"], num_lists=5001)
    assert [sql.suggest_num_lists(n) for n in (0, 640, 50_000, 1_000_000, 4_000_000, 10**9)] == [
        1,
        1,
        50,
        1000,
        2000,
        5000,
    ]


@pytest.mark.parametrize(
    "table",
    [
        "my-project:images.embeddings",
        "my-project.images.embeddings",
        "test-project:ds_1234.embeddings",
        "abcdef.d.t-1",
    ],
)
def test_table_ids_accepted(table):
    ref = sql.table_ref(table)
    assert ref.startswith("`") and ref.endswith("`") and ref.count(".") == 2


@pytest.mark.parametrize(
    "table",
    [
        "",
        "images.embeddings",
        "my-project:images",
        "my-project:images.embeddings.x",
        "my-project:images.emb`eddings",
        "my-project:images.embeddings; DROP TABLE t",
        "my-project:images.embeddings--",
        "my-project:images.emb eddings",
        "My-Project:images.embeddings",
        "p:images.embeddings",  # project ids: 6-30, lower case
        "my-project:ima-ges.embeddings",
        "my-project:images.embeddings\n",
        "my-project:images.{current}",
        "my-project:images.t'",
        "my_project:images.t",
    ],
)
def test_table_ids_refused(table):
    with pytest.raises(ValueError):
        sql.table_ref(table)


def test_render_fills_tables_and_inlines_the_current_view():
    with_view = sql.render("model_fingerprints.sql", current="my-project:images.current_embeddings")
    assert "FROM `my-project.images.current_embeddings`" in with_view
    inline = sql.render("model_fingerprints.sql", embeddings=TABLES["embeddings"])
    assert "CREATE" not in inline.upper().split("SELECT", 1)[1]
    assert "FROM `my-project.images.embeddings`" in inline
    assert "rank_in_object = 1" in inline  # the view's own rule, not a copy of it
    assert sql.structural_problems(inline) == []


def test_render_refuses_missing_unknown_and_bad_values():
    with pytest.raises(ValueError, match="dead_letters"):
        sql.render("dead_letters_by_reason.sql", embeddings=TABLES["embeddings"])
    with pytest.raises(ValueError, match="top_k"):
        sql.render("vector_search.sql", embeddings=TABLES["embeddings"])
    for bad in (0, -1, 10_001, 1.5, "10", True):
        with pytest.raises(ValueError):
            sql.render("vector_search.sql", embeddings=TABLES["embeddings"], top_k=bad)
    with pytest.raises(ValueError, match="no placeholders"):
        sql.render("latency.sql", embeddings=TABLES["embeddings"], top_k=5)
    with pytest.raises(ValueError):
        sql.render("../embeddings.json")


def test_structural_checks_catch_mistakes():
    ok = "-- params: @k INT64\nSELECT * FROM {embeddings} LIMIT @k\n"
    assert sql.structural_problems(ok) == []
    bad = {
        "SELECT (1 FROM {embeddings}": "unclosed",
        "SELECT 1) FROM {embeddings}": "unbalanced",
        "SELECT 'abc FROM {embeddings}": "unterminated string",
        "SELECT 1 FROM {tabel}": "unknown placeholders",
        "-- see {embeddings}\nSELECT 1 FROM {embeddings}": "inside comments",
        "SELECT 1 FROM {embeddings} LIMIT @k": "not declared",
        "-- params: @k INT64, @n INT64\nSELECT 1 FROM {embeddings} LIMIT @k": "not used",
        "SELECT '{' FROM x": "placeholder syntax",
    }
    for text, problem in bad.items():
        assert any(problem in p for p in sql.structural_problems(text)), (text, problem)
    # brackets, @ and -- inside strings and comments do not count
    assert (
        sql.structural_problems(
            "-- params:\nSELECT ')' AS a, '@x -- y' AS b /* ( */ FROM {embeddings} # )\n"
        )
        == []
    )


def test_header_parsing():
    text = sql.text("vector_search.sql")
    assert sql.requires(text).startswith("VECTOR_SEARCH")
    assert sql.declared_params(text) == {
        "query_embedding": "ARRAY<FLOAT64>",
        "model_fingerprint": "STRING",
        "k": "INT64",
    }
    assert sql.requires(sql.text("latency.sql")) is None
    assert "--" not in sql.without_comment_lines(text)


def test_sql_command_lists_and_renders(capsys):
    assert sql.main([]) == 0
    listing = capsys.readouterr().out
    assert "vector_search.sql  (requires VECTOR_SEARCH" in listing
    assert (
        sql.main(
            [
                "daily_counts.sql",
                "--embeddings",
                TABLES["embeddings"],
                "--dead_letters",
                TABLES["dead_letters"],
            ]
        )
        == 0
    )
    assert "`my-project.images.dead_letters`" in capsys.readouterr().out
    assert sql.main(["daily_counts.sql", "--embeddings", "x; DROP"]) == 2


QUERIES = [n for n in FILES if n != "create_vector_index.sql"]


@pytest.mark.parametrize("current", [VIEW, None], ids=["view", "inlined"])
@pytest.mark.parametrize("name", QUERIES)
def test_every_query_is_bigquery_sql_on_the_tables_columns(name, current):
    """Parsed with sqlglot's BigQuery dialect, every column resolved against
    schemas/, VECTOR_SEARCH calls checked (the emulator cannot run them)."""
    if current is None and "current" not in sql.placeholders(sql.text(name)):
        pytest.skip("no {current} in this file")
    if current is None and name == sql.CURRENT_VIEW_FILE:
        pytest.skip("the view's own file needs its name")
    assert sql_check.problems(rendered(name, current), SCHEMAS) == []


def test_the_vector_index_ddl_follows_bigquery_grammar():
    assert sql_check.vector_index_problems(rendered("create_vector_index.sql"), SCHEMAS) == []


@pytest.mark.parametrize(
    "name, old, new, problem",
    [
        ("vector_search.sql", "hit.base.row_key", "hit.base.rowkey", "base has no column"),
        ("vector_search.sql", "hit.distance)", "hit.dist)", "no field 'dist'"),
        ("vector_search.sql", "'embedding',", "'embeding',", "does not select 'embeding'"),
        ("vector_search.sql", "AS embedding)", "AS query)", "query table has no column"),
        ("vector_search.sql", "'COSINE'", "'COSIN'", "distance_type"),
        ("vector_search_of_object.sql", "c.format,", "c.fmt,", "Unknown column: fmt"),
        ("nearest_neighbours.sql", "LIMIT @k", "LIMT @k", "nvalid expression"),
        ("create_vector_index.sql", "(embedding)", "(width)", "ARRAY<FLOAT64>"),
        ("create_vector_index.sql", "STORING (row_key", "STORING (rowkey", "unknown column"),
        ("create_vector_index.sql", "OPTIONS (", "OPTIONS ((", "expected"),
        ("create_vector_index.sql", "index_type", "index_typ", "unknown option"),
    ],
)
def test_the_sql_checks_catch_broken_sql(name, old, new, problem):
    text = rendered(name)
    assert old in text
    check = (
        sql_check.vector_index_problems if name.startswith("create_vector") else sql_check.problems
    )
    found = check(text.replace(old, new), SCHEMAS)
    assert any(problem in p for p in found), found
