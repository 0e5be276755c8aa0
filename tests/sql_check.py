"""Checks of the shipped SQL (schemas/sql/) with sqlglot's BigQuery dialect, for what
the BigQuery emulator cannot run (VECTOR_SEARCH, CREATE VECTOR INDEX).

- `problems`: a rendered file parses as BigQuery SQL (not as an opaque command), every
  column it names exists in the tables' schemas (schemas/*.json), and every
  VECTOR_SEARCH call is well formed: the searched column is a selected ARRAY<FLOAT64>
  of the base query, the query table offers a column of the same name, the output is
  used only as `base.<a selected column>`, `query` and `distance`.
- `vector_index_problems`: CREATE VECTOR INDEX follows BigQuery's grammar (sqlglot
  parses it only as a command, so its tokens are checked), on existing columns.
- `exact_vector_search`: the query with each VECTOR_SEARCH replaced by its exact
  definition (cosine distance by brute force, the top_k nearest), which the emulator
  runs, so the rest of the shipped query runs for real.
"""

from __future__ import annotations

import json

import sqlglot
from sqlglot import exp
from sqlglot.optimizer.qualify import qualify

import schemas

VECTOR_SEARCH_OUTPUT = {"base", "query", "distance"}
DISTANCE_TYPES = {"COSINE", "EUCLIDEAN", "DOT_PRODUCT"}
INDEX_OPTIONS = {"index_type", "distance_type", "ivf_options", "tree_ah_options"}


def column_types(schema_file: str) -> dict[str, str]:
    """{column: BigQuery type} of a table in schemas/ (REPEATED -> ARRAY<...>)."""
    out = {}
    for field in schemas.table_schema(schema_file):
        kind = {"FLOAT": "FLOAT64", "INTEGER": "INT64", "BOOLEAN": "BOOL"}.get(
            field["type"], field["type"]
        )
        out[field["name"]] = f"ARRAY<{kind}>" if field.get("mode") == "REPEATED" else kind
    return out


def catalog(tables: dict[str, str]) -> dict:
    """sqlglot's nested schema for {"project.dataset.table": schema file}."""
    nested: dict = {}
    for table_id, schema_file in tables.items():
        project, dataset, table = table_id.split(".")
        nested.setdefault(project, {}).setdefault(dataset, {})[table] = column_types(schema_file)
    return nested


def parse(rendered: str) -> exp.Expression:
    """One statement in the BigQuery dialect; ValueError if sqlglot only sees an
    unsupported command or cannot parse it."""
    trees = sqlglot.parse(rendered, read="bigquery", error_level=sqlglot.ErrorLevel.RAISE)
    trees = [t for t in trees if t is not None]
    if len(trees) != 1:
        raise ValueError(f"expected one statement, got {len(trees)}")
    if isinstance(trees[0], exp.Command):
        raise ValueError(f"not parsed as BigQuery SQL: {str(trees[0])[:80]!r}")
    return trees[0]


def problems(rendered: str, tables: dict[str, str]) -> list[str]:
    """What is wrong with a rendered file (see the module docstring)."""
    try:
        tree = parse(rendered)
    except (ValueError, sqlglot.errors.ParseError) as e:
        return [str(e)]
    found = []
    for search in tree.find_all(exp.VectorSearch):
        found += _vector_search_problems(tree, search, tables)
    try:
        qualify(
            tree.copy(), schema=catalog(tables), dialect="bigquery", validate_qualify_columns=True
        )
    except sqlglot.errors.OptimizeError as e:
        found.append(str(e))
    return found


def _kwarg(search: exp.VectorSearch, name: str) -> exp.Expression | None:
    value = search.args.get(name)
    return value.expression if isinstance(value, exp.Kwarg) else value


def _selected(query: exp.Expression) -> dict[str, exp.Expression]:
    select = query.this if isinstance(query, exp.Subquery) else query
    if not isinstance(select, exp.Select):
        return {}
    return {e.alias_or_name: e for e in select.expressions}


def _vector_search_problems(tree, search: exp.VectorSearch, tables) -> list[str]:
    found = []
    column = search.args.get("column_to_search")
    column = column.name if isinstance(column, exp.Literal) and column.is_string else None
    base = _selected(search.this)
    query = _selected(search.args.get("query_table"))
    if column is None:
        found.append("VECTOR_SEARCH: the column to search is not a string literal")
    elif column not in base:
        found.append(f"VECTOR_SEARCH: the base query does not select {column!r}")
    else:
        for table in search.this.find_all(exp.Table):
            typ = column_types(tables[".".join(p.name for p in table.parts)]).get(column)
            if typ != "ARRAY<FLOAT64>":
                found.append(f"VECTOR_SEARCH: {column!r} is {typ}, not ARRAY<FLOAT64>")
    if column and not _kwarg(search, "query_column_to_search") and column not in query:
        found.append(f"VECTOR_SEARCH: the query table has no column {column!r}")
    distance = _kwarg(search, "distance_type")
    if distance is not None and distance.name.upper() not in DISTANCE_TYPES:
        found.append(f"VECTOR_SEARCH: unknown distance_type {distance.name!r}")
    top_k = _kwarg(search, "top_k")
    if top_k is not None and not (isinstance(top_k, exp.Literal) and top_k.is_int):
        found.append("VECTOR_SEARCH: top_k is not an integer")
    alias = search.parent.alias if isinstance(search.parent, exp.Table) else None
    for col in tree.find_all(exp.Column) if alias else ():
        parts = [p.name for p in col.parts]
        if parts[0] != alias:
            continue
        field = parts[1] if len(parts) > 1 else None
        if field not in VECTOR_SEARCH_OUTPUT:
            found.append(f"VECTOR_SEARCH output has no field {field!r}")
        elif field == "base" and len(parts) > 2 and parts[2] not in base:
            found.append(f"VECTOR_SEARCH base has no column {parts[2]!r}")
    return found


def vector_index_problems(rendered: str, tables: dict[str, str]) -> list[str]:
    """CREATE VECTOR INDEX [IF NOT EXISTS] name ON table(column) [STORING(cols)]
    OPTIONS(key = literal, ...), checked token by token."""
    from sqlglot.dialects.bigquery import BigQuery

    tokens = [(t.token_type.name, t.text) for t in BigQuery().tokenize(rendered)]
    words = [text.upper() if kind != "STRING" else text for kind, text in tokens]
    found = []
    pos = 0

    def expect(*wanted):
        nonlocal pos
        for w in wanted:
            if pos >= len(words) or words[pos] != w:
                found.append(
                    f"expected {w!r} at token {pos}, got "
                    f"{words[pos] if pos < len(words) else 'the end'!r}"
                )
                raise StopIteration
            pos += 1

    def name_list():
        nonlocal pos
        names = []
        expect("(")
        while True:
            names.append(tokens[pos][1])
            pos += 1
            if words[pos] == ")":
                pos += 1
                return names
            expect(",")

    try:
        expect("CREATE")
        if words[pos] == "OR":
            expect("OR", "REPLACE")
        expect("VECTOR", "INDEX")
        if words[pos] == "IF":
            expect("IF", "NOT", "EXISTS")
        pos += 1  # index name
        expect("ON")
        table = tokens[pos][1]
        pos += 1
        columns = name_list()
        stored = []
        if words[pos] == "STORING":
            pos += 1
            stored = name_list()
        expect("OPTIONS", "(")
        options = {}
        while True:
            key = tokens[pos][1]
            pos += 1
            expect("=")
            options[key] = tokens[pos]
            pos += 1
            if words[pos] == ")":
                pos += 1
                break
            expect(",")
        if pos != len(words):
            found.append(f"unexpected text after OPTIONS(...): {words[pos:]}")
    except (StopIteration, IndexError):
        return found or ["incomplete statement"]
    if table not in tables:
        return found + [f"unknown table {table!r}"]
    types = column_types(tables[table])
    if len(columns) != 1 or types.get(columns[0]) != "ARRAY<FLOAT64>":
        found.append(f"the indexed column must be one ARRAY<FLOAT64>: {columns}")
    found += [f"STORING unknown column {c!r}" for c in stored if c not in types]
    found += [f"unknown option {k!r}" for k in options if k not in INDEX_OPTIONS]
    if options.get("distance_type", ("STRING", "COSINE"))[1] not in DISTANCE_TYPES:
        found.append(f"unknown distance_type {options['distance_type'][1]!r}")
    for key in ("ivf_options", "tree_ah_options"):
        if key in options:
            try:
                json.loads(options[key][1])
            except ValueError as e:
                found.append(f"{key} is not JSON: {e}")
    return found


def exact_vector_search(rendered: str) -> str:
    """The query with every `VECTOR_SEARCH(base, 'col', query_table, top_k => K,
    distance_type => 'COSINE')` replaced by its exact answer: the K base rows of
    smallest cosine distance to the (single) query row, as `base` (a STRUCT of the
    base query's columns) and `distance`."""
    tree = parse(rendered)
    for search in list(tree.find_all(exp.VectorSearch)):
        distance = _kwarg(search, "distance_type")
        if distance is not None and distance.name.upper() != "COSINE":
            raise ValueError(f"only COSINE is rewritten, not {distance.name}")
        column = search.args["column_to_search"].name
        top_k = _kwarg(search, "top_k")
        base_columns = ", ".join(f"b.{c} AS {c}" for c in _selected(search.this))
        dot = (
            f"(SELECT SUM(x * y) FROM UNNEST(b.{column}) AS x WITH OFFSET AS i "
            f"JOIN UNNEST(q.{column}) AS y WITH OFFSET AS j ON i = j)"
        )
        norm = f"(SELECT SQRT(SUM(v * v)) FROM UNNEST({{}}.{column}) AS v)"
        exact = sqlglot.parse_one(
            f"SELECT STRUCT({base_columns}) AS base, "
            f"1 - {dot} / ({norm.format('b')} * {norm.format('q')}) AS distance "
            f"FROM {search.this.sql('bigquery')} AS b "
            f"CROSS JOIN {search.args['query_table'].sql('bigquery')} AS q "
            f"ORDER BY distance" + (f" LIMIT {top_k.sql('bigquery')}" if top_k is not None else ""),
            read="bigquery",
        )
        table = search.parent
        table.replace(exact.subquery(table.alias or None))
    return tree.sql(dialect="bigquery", pretty=True)
