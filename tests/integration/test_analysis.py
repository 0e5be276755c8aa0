"""The analysts' tools against the BigQuery and Cloud Storage emulators: every shipped
SQL file that the emulator supports runs for real on rows inserted here (the others are
marked `-- requires:` and checked in tests/unit/test_analysis_sql.py), and embed-search
and embed-map work on a table, with images read from gs://.

The rows are inserted with insert_rows_json into a dataset of this test's own, so
nothing depends on the streaming job. Skipped when the emulators are not configured.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import sys

import pytest

import schemas
from analysis import map as map_cli
from analysis import search, sql
from analysis.rows import BigQueryRows, run_query
from tests import sql_check
from tests.unit.test_analysis_map import check_png, parse_page

# The unit module's helpers and per-session caches (the module pytest already
# imported when both run in one session).
local = sys.modules.get("test_analysis_search") or importlib.import_module(
    "tests.unit.test_analysis_search"
)

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def iso(t: dt.datetime) -> str:
    return t.isoformat()


# Small, hand-checkable rows for the SQL files: 3-d embeddings, a duplicate delivery,
# a deleted object, another model.
VECTORS = {
    "a.jpg": [1.0, 0.0, 0.0],
    "b.jpg": [0.9, 0.1, 0.0],
    "c.jpg": [0.0, 1.0, 0.0],
    "d.jpg": [0.0, 0.0, 1.0],
    "e.jpg": [1.0, 1.0, 1.0],
}


def small_rows() -> list[dict]:
    rows = []
    for i, (name, vector) in enumerate(VECTORS.items()):
        rows.append(
            {
                "row_key": f"key-{name}",
                "bucket": "bk",
                "name": name,
                "generation": 1,
                "event_type": "OBJECT_FINALIZE",
                "source": "notification",
                "content_type": "image/jpeg",
                "embedding": vector,
                "model_name": "resnet50-avgpool",
                "model_fingerprint": "fp2" if name == "e.jpg" else "fp1",
                "event_time": iso(NOW - dt.timedelta(seconds=3 + i)),
                "processing_time": iso(NOW),
            }
        )
    rows.append({**rows[0], "processing_time": iso(NOW + dt.timedelta(seconds=1))})  # redelivery
    rows.append(
        {
            **rows[3],
            "row_key": "key-d-del",
            "event_type": "OBJECT_DELETE",
            "embedding": [],
            "processing_time": iso(NOW + dt.timedelta(seconds=2)),
        }
    )
    return rows


def dead_rows() -> list[dict]:
    return [
        {
            "row_key": "x1",
            "bucket": "bk",
            "name": "x.jpg",
            "uri": "gs://bk/x.jpg",
            "stage": "decode",
            "reason": "not_an_image",
            "error": "cannot identify",
            "processing_time": iso(NOW),
        },
        {
            "row_key": "x2",
            "bucket": "bk",
            "name": "y.jpg",
            "uri": "gs://bk/y.jpg",
            "stage": "decode",
            "reason": "not_an_image",
            "error": "cannot identify",
            "processing_time": iso(NOW),
        },
        {
            "row_key": "x3",
            "stage": "parse",
            "reason": "not_json",
            "raw": "{",
            "processing_time": iso(NOW),
        },
    ]


def names(rows):
    return [r["name"] for r in rows]


def check_nearest(rows):
    assert names(rows) == ["a.jpg", "b.jpg", "c.jpg"]  # d deleted, e another model
    assert rows[0]["distance"] == pytest.approx(0.0, abs=1e-12)
    assert rows[1]["distance"] == pytest.approx(1 - 0.9 / (0.81 + 0.01) ** 0.5)
    assert rows[2]["distance"] == pytest.approx(1.0)


def check_daily(rows):
    today = [r for r in rows if r["day"] == NOW.date()]
    assert len(today) == 1
    assert (
        today[0]["embedded"],
        today[0]["deleted"],
        today[0]["objects"],
        today[0]["dead_letters_that_day"],
    ) == (5, 1, 5, 3)


def check_latency(rows):
    assert len(rows) == 1 and rows[0]["images"] == 5  # the redelivery counts once
    assert rows[0]["max_s"] == pytest.approx(7.0)
    assert 3.0 <= rows[0]["p50_s"] <= rows[0]["p90_s"] <= rows[0]["p99_s"] <= 7.0


def check_dead(rows):
    got = {(r["stage"], r["reason"]): (r["dead_letters"], r["objects"]) for r in rows}
    assert got == {("decode", "not_an_image"): (2, 2), ("parse", "not_json"): (1, 0)}
    assert rows[0]["reason"] == "not_an_image" and rows[0]["example_error"]


# file -> (query parameters, check of the result): every file without `-- requires:`
EMULATOR_CASES = {
    "current_embeddings.sql": None,  # a CREATE VIEW: see test_current_view_file
    "nearest_neighbours.sql": (
        dict(query_embedding=[1.0, 0.0, 0.0], model_fingerprint="fp1", k=10),
        check_nearest,
    ),
    "nearest_neighbours_of_object.sql": (dict(bucket="bk", name="a.jpg", k=10), check_nearest),
    "model_fingerprints.sql": (
        {},
        lambda rows: (
            [(r["model_fingerprint"], r["objects"]) for r in rows] == [("fp1", 3), ("fp2", 1)]
            or pytest.fail(str(rows))
        ),
    ),
    "object_current_row.sql": (
        dict(bucket="bk", name="a.jpg"),
        lambda rows: (
            (len(rows) == 1 and rows[0]["embedding"] == VECTORS["a.jpg"]) or pytest.fail(str(rows))
        ),
    ),
    "sample_current.sql": (
        dict(model_fingerprint="fp1", n=2),
        lambda rows: (
            (len(rows) == 2 and set(names(rows)) <= {"a.jpg", "b.jpg", "c.jpg"})
            or pytest.fail(str(rows))
        ),
    ),
    "daily_counts.sql": (dict(days=7), check_daily),
    "latency.sql": (dict(days=7), check_latency),
    "dead_letters_by_reason.sql": (dict(days=7), check_dead),
}


@pytest.fixture(scope="module")
def dataset(cloud):
    from google.cloud import bigquery

    name = f"analysis_{cloud.run_id}"
    cloud.bq.create_dataset(name)
    tables = {}
    for table, schema_file in (
        ("embeddings", schemas.EMBEDDINGS),
        ("dead_letters", schemas.DEAD_LETTERS),
        ("photos", schemas.EMBEDDINGS),
        ("other_model", schemas.EMBEDDINGS),
    ):
        tid = f"{cloud.project}.{name}.{table}"
        schema = [bigquery.SchemaField.from_api_repr(f) for f in schemas.table_schema(schema_file)]
        cloud.bq.create_table(bigquery.Table(tid, schema=schema))
        tables[table] = tid
    assert cloud.bq.insert_rows_json(tables["embeddings"], small_rows(), retry=None) == []
    assert cloud.bq.insert_rows_json(tables["dead_letters"], dead_rows(), retry=None) == []
    yield tables
    cloud.bq.delete_dataset(name, delete_contents=True, not_found_ok=True)


def run_file(cloud, sql_file, dataset, /, current=None, **params):
    text = sql.text(sql_file)
    body = sql.without_comment_lines(
        sql.render(
            sql_file,
            embeddings=dataset["embeddings"],
            dead_letters=dataset["dead_letters"],
            current=current,
        )
    )
    return run_query(cloud.bq, body, sql.declared_params(text), params)


@pytest.mark.parametrize("name", sorted(n for n, case in EMULATOR_CASES.items() if case))
def test_sql_file_runs_on_the_emulator(cloud, dataset, name):
    params, check = EMULATOR_CASES[name]
    check(run_file(cloud, name, dataset, **params))


def test_current_view_file_and_queries_through_the_view(cloud, dataset):
    view = dataset["embeddings"].rsplit(".", 1)[0] + ".current_embeddings"
    cloud.bq.query(
        sql.render("current_embeddings.sql", embeddings=dataset["embeddings"], current=view)
    ).result()
    rows = [dict(r) for r in cloud.bq.query(f"SELECT name FROM `{view}` ORDER BY name")]
    assert names(rows) == ["a.jpg", "b.jpg", "c.jpg", "e.jpg"]
    params, check = EMULATOR_CASES["nearest_neighbours.sql"]
    check(run_file(cloud, "nearest_neighbours.sql", dataset, current=view, **params))


def test_deleted_object_has_no_current_row(cloud, dataset):
    assert run_file(cloud, "object_current_row.sql", dataset, bucket="bk", name="d.jpg") == []


@pytest.mark.parametrize(
    "name, params",
    [
        ("vector_search.sql", dict(query_embedding=[1.0, 0.0, 0.0], model_fingerprint="fp1", k=3)),
        (
            "vector_search_of_object.sql",
            dict(bucket="bk", name="a.jpg", model_fingerprint="fp1", k=3),
        ),
    ],
)
def test_vector_search_files_find_the_known_neighbours(cloud, dataset, name, params):
    """The emulator has no VECTOR_SEARCH (tests/unit/test_analysis_sql.py parses these
    files with a BigQuery parser). Here the function is replaced by its exact answer
    (tests/sql_check.py: cosine distance by brute force, what BigQuery computes on a
    table without an index) and the rest of the shipped query runs for real: the
    pre-filter, the join to current rows on base.row_key (d.jpg is deleted, a.jpg
    delivered twice), one row per object, the order and @k."""
    text = sql.text(name)
    body = sql_check.exact_vector_search(
        sql.without_comment_lines(sql.render(name, embeddings=dataset["embeddings"], top_k=10))
    )
    check_nearest(run_query(cloud.bq, body, sql.declared_params(text), params))


# --- embed-search and embed-map on a table, images in Cloud Storage ------------------


@pytest.fixture(scope="module")
def photos(cloud, dataset, embedder):
    """Real 2048-d rows for the near-duplicate image set; some objects uploaded to the
    Cloud Storage emulator (for gs:// queries and thumbnails)."""
    bucket = cloud.storage.create_bucket(f"analysis-{cloud.run_id}")
    files = local.image_files()
    rows = local.embedding_rows(embedder, bucket.name, files, source="notification")
    assert cloud.bq.insert_rows_json(dataset["photos"], rows, retry=None) == []
    uploaded = [local.ORIGINAL, local.RESIZED]
    for name in uploaded:
        bucket.blob(name).upload_from_string(files[name], content_type="image/jpeg")
    bucket.blob("queries/copy.jpg").upload_from_string(
        files[local.REENCODED], content_type="image/jpeg"
    )
    other = [{**r, "model_fingerprint": local.OTHER_FINGERPRINT} for r in rows]
    assert cloud.bq.insert_rows_json(dataset["other_model"], other, retry=None) == []
    yield bucket.name, files, uploaded
    try:
        bucket.delete(force=True)
    except Exception:  # noqa: BLE001 - cleanup of an emulator bucket is best effort
        pass


@pytest.fixture(scope="module")
def embedder(keras_model):
    return local.session_embedder(keras_model)


def table_id(dataset, name):
    project, ds, table = dataset[name].split(".")
    return f"{project}:{ds}.{table}"


def run_search(capsys, *argv):
    code = search.main([*argv, "--local-endpoints", "--json"])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if code == 0 else None), out.err


def test_search_table_with_a_local_image(capsys, tmp_path, dataset, photos, embedder):
    _, files, _ = photos
    path = tmp_path / "original.jpg"
    path.write_bytes(files[local.ORIGINAL])
    code, answer, err = run_search(
        capsys,
        str(path),
        "--table",
        table_id(dataset, "photos"),
        "--weights",
        "random:0",
        "-k",
        "20",
    )
    assert code == 0, err
    local.assert_near_duplicates_first(answer)
    assert answer["results"][0]["uri"] == f"gs://{photos[0]}/{local.ORIGINAL}"
    assert len(answer["results"]) == 3 + len(local.UNRELATED) + 1  # current rows only


def test_search_table_with_a_gs_image_and_a_stored_object(capsys, dataset, photos, embedder):
    bucket, _, _ = photos
    table = table_id(dataset, "photos")
    code, answer, err = run_search(
        capsys,
        f"gs://{bucket}/queries/copy.jpg",
        "--table",
        table,
        "--weights",
        "random:0",
        "-k",
        "3",
    )
    assert code == 0, err
    assert local.ranked_names(answer)[0] == local.REENCODED  # the same bytes
    assert answer["results"][0]["distance"] == pytest.approx(0.0, abs=1e-6)
    code, answer, err = run_search(
        capsys, "--object", f"gs://{bucket}/{local.ORIGINAL}", "--table", table, "-k", "20"
    )
    assert code == 0, err
    assert answer["query"]["embedding_from"] == "stored row"
    local.assert_near_duplicates_first(answer)


def test_search_table_refuses_another_model(capsys, dataset, photos, embedder):
    bucket, _, _ = photos
    code, _, err = run_search(
        capsys,
        f"gs://{bucket}/{local.ORIGINAL}",
        "--table",
        table_id(dataset, "other_model"),
        "--weights",
        "random:0",
    )
    assert code == 2 and "model fingerprint mismatch" in err
    assert local.OTHER_FINGERPRINT in err


def test_vector_search_option_fails_cleanly_on_the_emulator(capsys, dataset, photos):
    bucket, _, _ = photos
    code, _, err = run_search(
        capsys,
        "--object",
        f"gs://{bucket}/{local.ORIGINAL}",
        "--table",
        table_id(dataset, "photos"),
        "--use-vector-search",
    )
    assert code == 1 and "BadRequest" in err


def test_map_of_a_table(tmp_path, capsys, dataset, photos):
    bucket, _, uploaded = photos
    png, page = str(tmp_path / "map.png"), str(tmp_path / "map.html")
    code = map_cli.main(
        [
            "--table",
            table_id(dataset, "photos"),
            "--local-endpoints",
            "--png",
            png,
            "--html",
            page,
            "--color-by",
            "prefix",
        ]
    )
    assert code == 0, capsys.readouterr().err
    check_png(png)
    parser, _ = parse_page(page)
    points = json.loads(parser.script_json)
    assert len(parser.circles) == len(points) == 3 + len(local.UNRELATED) + 1
    with_thumbs = {p["info"]["name"] for p in points if p["thumb"]}
    assert with_thumbs == set(uploaded)  # read from gs://; the others are not uploaded
    assert all(p["info"]["uri"].startswith(f"gs://{bucket}/") for p in points)


def test_bigquery_rows_sample_and_fingerprints(cloud, dataset, photos, embedder):
    src = BigQueryRows(cloud.bq, table_id(dataset, "photos"))
    assert src.fingerprints() == [(embedder.fingerprint, 3 + len(local.UNRELATED) + 1)]
    first = names(src.sample(embedder.fingerprint, 4))
    assert len(first) == 4 and names(src.sample(embedder.fingerprint, 4)) == first
