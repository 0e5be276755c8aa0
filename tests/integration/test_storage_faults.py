"""Cloud Storage write failures against the emulator: retried, then dead-lettered."""
import numpy as np
import apache_beam as beam
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from streaming import sinks
from streaming.records import ImageInfo, ImageRef


def test_vector_write_to_a_missing_bucket_is_retried_then_dead_lettered(cloud):
    info = ImageInfo(ImageRef("img", "a.jpg", 3), 10, 10, "JPEG")
    element = (info, PredictionResult(None, np.ones(4, np.float32), "resnet50-avgpool@ab"))
    with TestPipeline(runner="BundleBasedDirectRunner") as p:
        out = (p | beam.Create([element])
               | sinks.WriteVectors(f"gs://no-such-bucket-{cloud.run_id}/v/"))
        assert_that(out.rows, equal_to([]), label="no row")
        assert_that(out.dead_letters | beam.Map(lambda d: (d.stage, d.reason, d.ref.name)),
                    equal_to([("write", "vector_write_error", "a.jpg")]), label="dead")
