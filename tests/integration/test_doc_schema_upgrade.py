"""docs/dataflow.md's column upgrade, run on the emulator: tables made from the former
schemas take the new rows once the doc's ALTER TABLE statements have run."""

import pathlib
import re

from google.cloud import bigquery

import schemas

DOC = pathlib.Path(__file__).parents[2] / "docs" / "dataflow.md"
NEW_COLUMNS = {schemas.EMBEDDINGS: {"vector_index"}, schemas.DEAD_LETTERS: {"retryable", "attempt"}}


def doc_alter_statements() -> list[str]:
    return re.findall(r'bq query --use_legacy_sql=false "(ALTER TABLE [^"]+)"', DOC.read_text())


def test_the_docs_alter_statements_add_every_new_column(cloud):
    dataset = f"upgrade_{cloud.run_id}"
    cloud.bq.create_dataset(dataset)
    tables = {schemas.EMBEDDINGS: "embeddings", schemas.DEAD_LETTERS: "dead_letters"}
    for schema_file, name in tables.items():
        former = [
            f
            for f in schemas.table_schema(schema_file)
            if f["name"] not in NEW_COLUMNS[schema_file]
        ]
        cloud.bq.create_table(
            bigquery.Table(
                f"{cloud.project}.{dataset}.{name}",
                schema=[bigquery.SchemaField.from_api_repr(f) for f in former],
            )
        )
    statements = doc_alter_statements()
    assert len(statements) == 3
    for sql in statements:
        cloud.bq.query(
            sql.replace("\\`", "`")
            .replace("$PROJECT", cloud.project)
            .replace(".images.", f".{dataset}.")
        ).result()
    # (bqemulator's table metadata does not follow ALTER TABLE; its data does.)
    for schema_file, name in tables.items():
        columns = ", ".join(sorted(NEW_COLUMNS[schema_file]))
        assert (
            cloud.bq.query(f"SELECT {columns} FROM `{cloud.project}.{dataset}.{name}`")
            .result()
            .total_rows
            == 0
        )
