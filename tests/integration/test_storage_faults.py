"""Cloud Storage write failures against the emulator: retried, then dead-lettered."""

import os

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from streaming.records import ImageInfo, ImageRef
from streaming.sinks import files
from tools.http_proxy import HttpProxy


def test_vector_write_to_a_missing_bucket_is_retried_then_dead_lettered(cloud, monkeypatch):
    """The attempts are counted where they arrive, by a recording proxy in front of
    fake-gcs-server: more than one, then a dead letter and no row."""
    proxy = HttpProxy(os.environ["STORAGE_EMULATOR_HOST"]).start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
    bucket = f"no-such-bucket-{cloud.run_id}"
    info = ImageInfo(ImageRef("img", "a.jpg", 3), 10, 10, "JPEG")
    element = (info, PredictionResult(None, np.ones(4, np.float32), "resnet50-avgpool@ab"))
    try:
        with TestPipeline(runner="BundleBasedDirectRunner") as p:
            out = p | beam.Create([element]) | files.WriteVectors(f"gs://{bucket}/v/")
            assert_that(out.rows, equal_to([]), label="no row")
            assert_that(
                out.dead_letters | beam.Map(lambda d: (d.stage, d.reason, d.ref.name)),
                equal_to([("write", "not_found", "a.jpg")]),
                label="dead",
            )
    finally:
        proxy.stop()
    attempts = [r for r in proxy.uploads() if r.bucket_and_object[0] == bucket]
    assert len(attempts) > 1


def test_reads_are_retried_with_backoff_then_dead_lettered(cloud, monkeypatch):
    """fake-gcs-server behind a proxy that is down: the reader retries a bounded number
    of times and gives `read_error`; back up in time, the same read succeeds."""
    import threading
    import time
    from urllib.parse import urlparse

    import pytest

    from streaming.records import Rejected
    from streaming.stages.load import GcsReader
    from tests import fixtures
    from tests.integration.tcp_proxy import TcpProxy

    bucket = cloud.storage.create_bucket(f"flaky-{cloud.run_id}")
    blob = bucket.blob("x.jpg")
    blob.upload_from_string(fixtures.jpeg(), content_type="image/jpeg")
    ref = ImageRef(bucket.name, "x.jpg", blob.generation)
    proxy = TcpProxy(urlparse(os.environ["STORAGE_EMULATOR_HOST"]).port)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{proxy.port}")
    reader = GcsReader(attempts=2, initial_delay=0.2)
    started = time.monotonic()
    with pytest.raises(Rejected) as e:
        reader.read(ref, 10_000_000)
    assert e.value.reason == "read_error"
    assert time.monotonic() - started < 30
    threading.Timer(0.5, proxy.start).start()  # the service comes back during the retries
    try:
        assert (
            GcsReader(attempts=4, initial_delay=0.3).read(ref, 10_000_000)
            == blob.download_as_bytes()
        )
    finally:
        proxy.stop()
