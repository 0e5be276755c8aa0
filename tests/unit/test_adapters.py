"""Each private API `streaming.adapters` relies on still exists and still does the job.

These fail on a library upgrade that removes or changes one of them, naming it, before
a pipeline would fail (or silently lose a property, such as deterministic insert ids).
"""
import json

import apache_beam as beam
import google.auth
from apache_beam.testing.test_pipeline import TestPipeline

from streaming import adapters


def test_object_resource_is_the_json_api_resource_the_public_attributes_read():
    from google.cloud import storage
    bucket = storage.Bucket(client=None, name="bkt")
    blob = bucket.blob("a/cat.jpg")
    blob.content_type = "image/jpeg"
    blob.metadata = {"camera": "X100"}
    resource = adapters.object_resource(blob)
    assert resource["contentType"] == "image/jpeg"
    assert resource["metadata"] == {"camera": "X100"}
    resource["contentType"] = "changed"  # a copy: the blob is left alone
    assert blob.content_type == "image/jpeg"


class _FakeBigQuery:
    """Stands in for both clients Beam's BigQueryWrapper takes as `client`: records the
    insert ids it is given in a file (the DoFn is pickled)."""

    def __init__(self, path):
        self.path = path
        self.tables = self

    def Get(self, request):  # noqa: N802 - apitools' method name
        return request

    def insert_rows_json(self, table, json_rows, row_ids, **_kwargs):
        with open(self.path, "a") as f:
            for row, row_id in zip(json_rows, row_ids):
                f.write(json.dumps([table, row["row_key"], row_id]) + "\n")
        return []


def test_bigquery_insert_fn_sends_the_given_insert_ids(tmp_path):
    """The property `WriteToBigQuery` cannot give: each row's own id as its insert id."""
    fn = adapters.bigquery_insert_fn({"fields": [{"name": "row_key", "type": "STRING",
                                                   "mode": "REQUIRED"}]}, 10, {})
    fn.test_client = _FakeBigQuery(str(tmp_path / "inserts.jsonl"))
    rows = [{"row_key": f"k{i}"} for i in range(3)]
    with TestPipeline(runner="BundleBasedDirectRunner") as p:
        (p | beam.Create(rows)
         | beam.Map(lambda r: ("my-project:dataset.table", (r, r["row_key"])))
         | beam.ParDo(fn).with_outputs(adapters.FAILED_ROWS_WITH_ERRORS, main="main"))
    got = [json.loads(line) for line in open(tmp_path / "inserts.jsonl")]
    assert sorted(got) == [["my-project.dataset.table", f"k{i}", f"k{i}"] for i in range(3)]


def test_anonymous_credentials_reach_beams_own_credential_lookup(monkeypatch):
    from apache_beam.internal.gcp import auth
    from apache_beam.options.pipeline_options import PipelineOptions
    from google.auth.credentials import AnonymousCredentials
    monkeypatch.setattr(google.auth, "default", google.auth.default)  # restored after
    monkeypatch.setattr(auth._Credentials, "_credentials_init", False)
    monkeypatch.setattr(auth._Credentials, "_credentials", None)
    adapters.use_anonymous_credentials("proj")
    default_credentials, project = google.auth.default()
    assert isinstance(default_credentials, AnonymousCredentials) and project == "proj"
    credentials = auth.get_service_credentials(PipelineOptions())
    assert isinstance(credentials.get_google_auth_credentials(), AnonymousCredentials)


def test_beams_bigquery_client_is_built_from_the_class_base_url(monkeypatch):
    from apache_beam.io.gcp.internal.clients.bigquery import bigquery_v2_client
    cls = bigquery_v2_client.BigqueryV2
    monkeypatch.setattr(cls, "BASE_URL", cls.BASE_URL)  # restored after
    adapters.point_beam_bigquery_at("http://127.0.0.1:1/bigquery/v2/")
    client = cls(get_credentials=False)
    assert client.url == "http://127.0.0.1:1/bigquery/v2/"
