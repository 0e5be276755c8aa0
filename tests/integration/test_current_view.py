"""schemas/sql/current_embeddings.sql on the BigQuery emulator: duplicates, overwrites
and deletes."""

import pytest

import schemas
from analysis import sql
from streaming.records import row_key


def row(name, generation, event="OBJECT_FINALIZE", t="2026-11-27T00:00:00Z", dim=2):
    return {
        "row_key": row_key("b", name, generation, event),
        "bucket": "b",
        "name": name,
        "generation": generation,
        "event_type": event,
        "source": "notification",
        "embedding": [float(generation)] * (dim if event == "OBJECT_FINALIZE" else 0),
        "processing_time": t,
    }


@pytest.fixture(scope="module")
def view(cloud):
    from google.cloud import bigquery

    dataset = f"view_{cloud.run_id}"
    cloud.bq.create_dataset(dataset)
    table = f"{cloud.project}.{dataset}.embeddings"
    schema = [bigquery.SchemaField.from_api_repr(f) for f in schemas.table_schema()]
    cloud.bq.create_table(bigquery.Table(table, schema=schema))
    rows = [
        row("dup.jpg", 1),
        row("dup.jpg", 1, t="2026-11-27T00:00:01Z"),
        row("dup.jpg", 1),
        row("over.jpg", 1),
        row("over.jpg", 2),  # overwritten
        row("gone.jpg", 3),
        row("gone.jpg", 3, "OBJECT_DELETE"),  # deleted
        row("back.jpg", 1),
        row("back.jpg", 1, "OBJECT_DELETE"),
        row("back.jpg", 5),  # re-uploaded
        row("late.jpg", 7, "OBJECT_DELETE"),
        row("late.jpg", 7),  # delete arrived first
    ]
    errors = cloud.bq.insert_rows_json(table, rows, retry=None)
    assert errors == []
    current = f"{cloud.project}.{dataset}.current_embeddings"
    cloud.bq.query(sql.render("current_embeddings.sql", current=current, embeddings=table)).result()
    return current


def test_current_view_keeps_one_row_per_live_object_newest_generation(cloud, view):
    got = [
        dict(r)
        for r in cloud.bq.query(
            f"SELECT name, generation, ARRAY_LENGTH(embedding) AS dim FROM `{view}` ORDER BY name"
        ).result()
    ]
    assert [(r["name"], r["generation"]) for r in got] == [
        ("back.jpg", 5),
        ("dup.jpg", 1),
        ("over.jpg", 2),
    ]
    assert all(r["dim"] == 2 for r in got)
