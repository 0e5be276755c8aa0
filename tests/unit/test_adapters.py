"""Each private API `streaming.adapters` relies on still exists and still does the job.

These fail on a library upgrade that removes or changes one of them, naming it, before
a pipeline would fail.
"""
import google.auth

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
