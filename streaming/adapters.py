"""The project's only uses of other libraries' private APIs, one small function each.

Each exists because no public API does the job (its docstring says why), and each has a
test in tests/unit/test_adapters.py that fails loudly when an upgrade removes or changes
what it relies on, instead of the pipeline failing quietly at run time.
"""
from __future__ import annotations

from typing import Any

# Beam's tag for the rows BigQuery refused, as (table, row, errors).
FAILED_ROWS_WITH_ERRORS = "FailedRowsWithErrors"


def object_resource(blob) -> dict[str, Any]:
    """The JSON API resource of a listed or fetched `google.cloud.storage.Blob`.

    A storage notification carries exactly this resource (string-valued sizes and
    generations, RFC 3339 times); the Blob's public attributes convert those values and
    there is no public `to_api_repr`, so this copies the dict they read from.
    """
    return dict(blob._properties)


def bigquery_insert_fn(schema: dict[str, Any], batch_size: int,
                       additional_bq_parameters: dict[str, Any]):
    """Beam's streaming-insert DoFn, taking `(table, (row, insert_id))` elements.

    `WriteToBigQuery(method=STREAMING_INSERTS)` always makes random insert ids (a uuid
    prefix per bundle, then a reshuffle to keep them stable); there is no public way to
    pass one's own. The DoFn inside it takes them, so a row's deterministic `row_key`
    can reach BigQuery's best-effort de-duplication. The table is created if missing.
    """
    from apache_beam.io.gcp.bigquery import BigQueryDisposition, BigQueryWriteFn
    from apache_beam.io.gcp.bigquery_tools import RetryStrategy
    assert BigQueryWriteFn.FAILED_ROWS_WITH_ERRORS == FAILED_ROWS_WITH_ERRORS
    return BigQueryWriteFn(
        batch_size=batch_size, schema=schema,
        create_disposition=BigQueryDisposition.CREATE_IF_NEEDED,
        write_disposition=BigQueryDisposition.WRITE_APPEND, kms_key=None,
        retry_strategy=RetryStrategy.RETRY_ON_TRANSIENT_ERROR,
        additional_bq_parameters=additional_bq_parameters)


def use_anonymous_credentials(project: str) -> None:
    """Makes every Google client of this process, Beam's included, anonymous.

    Beam's BigQuery sink builds its clients (apitools and google-cloud-bigquery) with
    Google's default credentials and takes no credentials argument; against the
    emulator there are none, and the lookup retries for ~30 s. Replacing
    `google.auth.default` is the one place every such client asks.
    """
    import google.auth
    from google.auth.credentials import AnonymousCredentials

    def anonymous_default(*_args, **_kwargs):
        return AnonymousCredentials(), project
    google.auth.default = anonymous_default


def point_beam_bigquery_at(url: str) -> None:
    """Sends the requests of Beam's apitools BigQuery client (table look-up and
    creation) to `url` (e.g. `http://127.0.0.1:9050/bigquery/v2/`).

    Beam constructs the client itself, without a `url` argument, from the class's
    hard-coded `BASE_URL`; no option or variable changes it.
    """
    from apache_beam.io.gcp.internal.clients.bigquery import bigquery_v2_client
    bigquery_v2_client.BigqueryV2.BASE_URL = url
