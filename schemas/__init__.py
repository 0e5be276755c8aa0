"""The BigQuery table schemas and the storage-notification contract.

Data files, read through package resources so that the pipeline, the backfill
CLI, the tests and the docs all use the same definitions.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

EMBEDDINGS = "embeddings.json"
DEAD_LETTERS = "dead_letters.json"
NOTIFICATION = "notification.json"


def read_text(filename: str) -> str:
    """Returns the text of one file shipped in this package (JSON or SQL)."""
    return resources.files(__name__).joinpath(filename).read_text(encoding="utf-8")


@functools.cache
def load_json(filename: str) -> Any:
    return json.loads(read_text(filename))


def table_schema(filename: str = EMBEDDINGS) -> list[dict[str, Any]]:
    """BigQuery schema fields (the JSON the `bq` CLI takes) of one table."""
    return load_json(filename)


def beam_table_schema(filename: str = EMBEDDINGS) -> dict[str, Any]:
    """The schema in the shape `WriteToBigQuery(schema=...)` accepts."""
    return {"fields": [{k: f[k] for k in ("name", "type", "mode")} for f in table_schema(filename)]}


def field_names(filename: str = EMBEDDINGS) -> list[str]:
    return [f["name"] for f in table_schema(filename)]


def notification_contract() -> dict[str, Any]:
    """The storage-notification contract (attributes and JSON_API_V1 payload)."""
    return load_json(NOTIFICATION)


def sql(name: str) -> str:
    """Text of a shipped SQL file under schemas/sql/."""
    return read_text(f"sql/{name}")
