"""Each private API `streaming.support.library_patches` relies on still exists and still
does the job.

These fail on a library upgrade that removes or changes one of them, naming it, before
a pipeline would fail.
"""

import google.auth
import pytest

from streaming.support import library_patches


def test_object_resource_is_the_json_api_resource_the_public_attributes_read():
    from google.cloud import storage

    bucket = storage.Bucket(client=None, name="bkt")
    blob = bucket.blob("a/cat.jpg")
    blob.content_type = "image/jpeg"
    blob.metadata = {"camera": "X100"}
    resource = library_patches.object_resource(blob)
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
    library_patches.use_anonymous_credentials("proj")
    default_credentials, project = google.auth.default()
    assert isinstance(default_credentials, AnonymousCredentials) and project == "proj"
    credentials = auth.get_service_credentials(PipelineOptions())
    assert isinstance(credentials.get_google_auth_credentials(), AnonymousCredentials)


class _Subscriber:
    """Stands in for the Pub/Sub client the local runner pulls with."""

    def __init__(self, messages=0, deadline=False):
        self.pulls, self.acked, self._messages, self._deadline = [], [], messages, deadline

    def pull(self, **kwargs):
        from google.api_core.exceptions import DeadlineExceeded
        from google.pubsub_v1 import PubsubMessage, PullResponse, ReceivedMessage

        self.pulls.append(kwargs)
        if self._deadline:
            raise DeadlineExceeded("no message")
        return PullResponse(
            received_messages=[
                ReceivedMessage(
                    ack_id=f"a{i}",
                    message=PubsubMessage(data=b"m%d" % i, publish_time={"seconds": 1_700_000_000}),
                )
                for i in range(self._messages)
            ]
        )

    def acknowledge(self, subscription, ack_ids):
        self.acked += ack_ids


def _local_read(monkeypatch, subscriber, idle_secs=0.0):
    """The local runner's own Pub/Sub read, with `subscriber` under the wrapper."""
    from apache_beam.runners.direct.transform_evaluator import _PubSubReadEvaluator as reader

    monkeypatch.setattr(reader, "_unwrapped_subscriber_client", None, raising=False)
    monkeypatch.setattr(
        reader, "_get_subscriber_client", classmethod(lambda _cls, _transform: subscriber)
    )
    library_patches.pull_more_locally(1000, 0.5, idle_secs)
    evaluator = object.__new__(reader)
    evaluator._applied_ptransform, evaluator._sub_name = object(), "projects/p/subscriptions/s"
    return evaluator._read_from_pubsub(None)


def test_the_local_pubsub_read_pulls_up_to_the_given_count_and_acknowledges(monkeypatch):
    subscriber = _Subscriber(messages=25)
    read = _local_read(monkeypatch, subscriber)
    assert [m.data for _, m in read] == [b"m%d" % i for i in range(25)]
    assert subscriber.pulls[0]["max_messages"] == 1000 and subscriber.pulls[0]["timeout"] == 0.5
    assert subscriber.acked == [f"a{i}" for i in range(25)]


def test_a_pull_that_finds_nothing_in_time_is_an_empty_read_not_an_error(monkeypatch):
    assert _local_read(monkeypatch, _Subscriber(deadline=True)) == []


@pytest.mark.parametrize("messages, sleeps", [(0, True), (3, False)])
def test_an_empty_pull_that_answers_at_once_waits_out_the_idle_time(monkeypatch, messages, sleeps):
    """The emulator answers an empty pull at once: without the wait, an idle local job
    would pull again and again, a core's worth; a pull with messages never waits."""
    slept = []
    monkeypatch.setattr(library_patches.time, "sleep", slept.append)
    _local_read(monkeypatch, _Subscriber(messages=messages), idle_secs=0.2)
    assert bool(slept) is sleeps
    if sleeps:
        assert 0.15 < slept[0] <= 0.2


@pytest.mark.parametrize("runner, widened", [(None, True), ("DataflowRunner", False)])
def test_only_a_local_pubsub_job_widens_the_runners_read(monkeypatch, runner, widened):
    import apache_beam as beam
    from apache_beam.runners.direct.transform_evaluator import _PubSubReadEvaluator as reader

    from streaming import pipeline
    from streaming.main import make_options

    subscriber = _Subscriber(messages=1)
    monkeypatch.setattr(reader, "_unwrapped_subscriber_client", None, raising=False)
    monkeypatch.setattr(
        reader, "_get_subscriber_client", classmethod(lambda _cls, _transform: subscriber)
    )
    opts = make_options(
        [
            "--input_subscription",
            "projects/my-project/subscriptions/images",
            "--output_table",
            "my-project:ds.t",
            *(
                [
                    "--runner",
                    runner,
                    "--project",
                    "my-project",
                    "--region",
                    "us-central1",
                    "--temp_location",
                    "gs://b/t",
                ]
                if runner
                else []
            ),
        ]
    )
    pipeline.read_source(beam.Pipeline(), opts)  # the job as built; only `opts` name the runner
    reader._get_subscriber_client(None).pull(subscription="s", max_messages=10, timeout=30)
    expected = pipeline.LOCAL_PULL_MESSAGES if widened else 10
    assert subscriber.pulls[0]["max_messages"] == expected
