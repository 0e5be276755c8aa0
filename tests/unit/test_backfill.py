import collections
import concurrent.futures
import datetime as dt
import io
import json
import types

import pytest

import schemas
from publisher import backfill
from streaming.sources.contract import notification_for
from streaming.sources.notifications import parse_notification

RESOURCE = schemas.notification_contract()["example"]["data"]


def test_backfill_message_parses_like_the_bucket_notification():
    data, attrs = notification_for(RESOURCE)
    real = schemas.notification_contract()["example"]
    assert set(real["attributes"]) <= set(attrs) and attrs["backfill"] == "true"
    mine = parse_notification(data, attrs)
    theirs = parse_notification(json.dumps(real["data"]).encode(), real["attributes"])
    assert mine.source == "backfill" and theirs.source == "notification"
    for field in (
        "bucket",
        "name",
        "generation",
        "metageneration",
        "content_type",
        "size",
        "md5_hash",
        "crc32c",
        "time_created",
        "updated",
        "metadata",
        "key",
    ):
        assert getattr(mine, field) == getattr(theirs, field), field


def test_filters_by_type_prefix_and_dates():
    f = backfill.Filters(
        prefix="2019/",
        content_types=("image/",),
        extensions=(".jpg",),
        updated_since=backfill.parse_time("2020-01-01T00:00:00Z"),
        updated_until=backfill.parse_time("2021-01-01T00:00:00Z"),
    )
    ok = {"name": "2019/a.jpg", "contentType": "image/jpeg", "updated": "2020-06-01T00:00:00Z"}
    assert f.accepts(ok)
    assert not f.accepts({**ok, "name": "2018/a.jpg"})
    assert not f.accepts({**ok, "name": "2019/a.txt", "contentType": "text/plain"})
    assert f.accepts({**ok, "name": "2019/a.bin", "contentType": "image/png"})
    assert not f.accepts({**ok, "updated": "2019-12-31T23:59:59Z"})
    assert not f.accepts({**ok, "updated": "2021-01-01T00:00:00Z"})
    assert not f.accepts({**ok, "name": "2019/folder/"})


def done(exc=None):
    fut = concurrent.futures.Future()
    fut.set_exception(exc) if exc else fut.set_result("id")
    return fut


def test_checkpoint_only_moves_over_a_contiguous_finished_prefix(tmp_path):
    path = str(tmp_path / "resume.json")
    cp = backfill.Checkpoint(path, "gs://b", "projects/p/topics/t")
    counts = collections.Counter()
    flight = backfill.InFlight(cp, counts)
    pending = concurrent.futures.Future()
    flight.add("a", done())
    flight.add("b", pending)
    flight.add("c", done())
    flight.advance()
    assert cp.after == "a" and len(flight) == 2
    pending.set_exception(RuntimeError("publish failed"))
    flight.advance()
    assert cp.after == "c" and cp.failed == ["b"]
    assert counts == {"published": 2, "failed": 1}
    cp.save(force=True)
    again = backfill.Checkpoint(path, "gs://b", "projects/p/topics/t")
    assert (again.after, again.failed) == ("c", ["b"])
    retry = backfill.InFlight(again, collections.Counter())
    retry.add("b", done(), ordered=False)  # a retried failure does not move `after` back
    retry.advance()
    assert (again.after, again.failed) == ("c", [])


def test_resume_file_of_another_source_is_refused(tmp_path):
    path = str(tmp_path / "resume.json")
    backfill.Checkpoint(path, "gs://a", "t").save(force=True)
    with pytest.raises(ValueError, match="belongs to gs://a"):
        backfill.Checkpoint(path, "gs://b", "t")


def test_the_source_is_a_bucket_and_a_prefix():
    from streaming.config.names import split_gcs_uri

    assert split_gcs_uri("gs://my-images") == ("my-images", "")
    assert split_gcs_uri("gs://my-images/x/y") == ("my-images", "x/y")
    for bad in ("/local/path", "gs://", "gs://b/x"):
        with pytest.raises(ValueError):
            split_gcs_uri(bad)


@pytest.mark.parametrize(
    "resume, needle, absent",
    [
        (None, "with --resume FILE to retry only what failed", "listed in"),
        ("state.json", "listed in state.json and retried first", "with --resume FILE"),
    ],
)
def test_failure_line_mentions_the_resume_file_only_when_there_is_one(resume, needle, absent):
    from google.api_core.exceptions import PermissionDenied

    args = types.SimpleNamespace(resume=resume)
    line = backfill.failure_message(
        {"failed": 3, "in_flight_abandoned": 0}, args, PermissionDenied("publish on topic t")
    )
    assert line.startswith("3 publishes failed (0 unconfirmed); last error: permission denied")
    assert needle in line and absent not in line


def backfill_args(*argv):
    return backfill.parse_args(
        [
            "gs://photos/2019/",
            "--topic",
            "projects/p/topics/t",
            "--local-endpoints",
            "--no-progress",
            *argv,
        ]
    )


def test_the_plan_reads_the_source_filters_and_the_checkpoint(tmp_path):
    resume = tmp_path / "resume.json"
    resume.write_text(
        json.dumps(
            {
                "source": "gs://photos/2019/",
                "topic": "projects/p/topics/t",
                "after": "2019/m.jpg",
                "failed": ["2019/b.jpg", "2019/a.jpg"],
            }
        )
    )
    planned = backfill.plan(
        backfill_args(
            "--resume",
            str(resume),
            "--content-type",
            "image/png",
            "--updated-since",
            "2020-01-01T00:00:00Z",
        )
    )
    assert (planned.bucket, planned.prefix) == ("photos", "2019/")
    assert planned.filters.prefix == "2019/" and planned.filters.content_types == ("image/png",)
    assert planned.filters.updated_since == dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    assert planned.checkpoint.after == "2019/m.jpg"
    assert planned.retry_names == {"2019/a.jpg", "2019/b.jpg"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--skip-existing"], "--skip-existing needs --table"),
        (["--fingerprint", "abc"], "refine --skip-existing"),
        (["--dead-letter-table", "p:d.t"], "refine --skip-existing"),
        (["--retry-dead-letters"], "refine --skip-existing"),
    ],
)
def test_options_that_cannot_run_stop_the_plan(argv, message):
    with pytest.raises(ValueError, match=message):
        backfill.plan(backfill_args(*argv))


def test_a_checkpoint_of_another_source_stops_the_plan(tmp_path):
    resume = tmp_path / "resume.json"
    resume.write_text(json.dumps({"source": "gs://other/", "topic": "projects/p/topics/t"}))
    with pytest.raises(ValueError, match="belongs to gs://other/"):
        backfill.plan(backfill_args("--resume", str(resume)))


def test_the_report_says_why_publishes_failed(capsys):
    args = backfill_args("--resume", "r.json")
    counts = collections.Counter(listed=3, published=1, failed=2, in_flight_abandoned=0)
    out = io.StringIO()
    backfill.report(args, counts, RuntimeError("quota"), out)
    assert "listed=3 published=1" in out.getvalue() and "failed=2" in out.getvalue()
    err = capsys.readouterr().err
    assert err.startswith("embed-backfill: error: 2 publishes failed") and "quota" in err
    assert "retried first on the next run" in err
    backfill.report(args, collections.Counter(listed=1, published=1), None, io.StringIO())
    assert capsys.readouterr().err == ""


class _LeastPrivilege:
    """Storage and Pub/Sub as the backfill's roles answer them (objectViewer,
    pubsub.publisher): listing and publishing allowed, buckets.get and topics.get 403."""

    def __init__(self, listing_allowed=True):
        self.listing_allowed = listing_allowed

    def bucket(self, name):
        from google.api_core import exceptions as gexc

        class Bucket:
            def exists(self, **_):
                raise gexc.Forbidden("storage.buckets.get denied")

        return Bucket()

    def list_blobs(self, bucket, **_):
        from google.api_core import exceptions as gexc

        if not self.listing_allowed:
            raise gexc.Forbidden("storage.objects.list denied")
        return iter([])

    def get_topic(self, **_):
        from google.api_core import exceptions as gexc

        raise gexc.PermissionDenied("pubsub.topics.get denied")


def test_the_targets_check_needs_only_the_backfills_own_roles():
    from publisher import backfill
    from streaming.config import cli

    fake = _LeastPrivilege()
    backfill.check_targets(fake, fake, "images", "projects/p/topics/t")  # no error
    denied = _LeastPrivilege(listing_allowed=False)
    with pytest.raises(
        cli.UsageError, match=r"storage\.objects\.list \(roles/storage\.objectViewer\)"
    ):
        backfill.check_targets(denied, None, "images", "projects/p/topics/t")
