"""The streaming job builds for Dataflow offline (`--dry_run`), with the right parts."""
import apache_beam as beam

from streaming import main
from streaming.pipeline import build_pipeline


def test_streaming_job_builds_for_dataflow_offline():
    opts = main.make_options([
        "--runner", "DataflowRunner", "--dry_run", "True", "--project", "my-project",
        "--region", "us-central1", "--temp_location", "gs://my-temp-bucket/tmp",
        "--input_subscription", "projects/my-project/subscriptions/images",
        "--output_table", "my-project:embeddings.images",
        "--dead_letter_table", "my-project:embeddings.dead_letters",
        "--output_gcs", "gs://my-vectors/embeddings/", "--weights", "gs://my-models/r50.weights.h5",
        "--max_num_workers", "4", "--autoscaling_algorithm", "THROUGHPUT_BASED"])
    pipeline = beam.Pipeline(options=opts)
    build_pipeline(pipeline, opts)
    result = pipeline.run()
    job = result.job
    assert job.proto.type.name == "JOB_TYPE_STREAMING"
    transforms = job.proto_pipeline.components.transforms.values()
    names = [t.unique_name for t in transforms]
    urns = {t.unique_name: t.spec.urn for t in transforms}
    assert urns["Read notifications/Read"] == "beam:transform:pubsub_read:v1"
    assert any(n.endswith("Embed with ResNet50/RunInference") for n in names)
    assert any("Write to BigQuery/Insert rows" in n for n in names)
    assert any("Write dead letters to BigQuery/Insert rows" in n for n in names)
    assert any(n.startswith("Write vectors") for n in names)
