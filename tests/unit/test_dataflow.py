"""The streaming job builds for Dataflow offline (`--dry_run`), with the right parts."""
import json
import os
import subprocess
import sys

import apache_beam as beam

from streaming import main
from streaming.pipeline import build_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATAFLOW_ARGS = [
    "--runner", "DataflowRunner", "--dry_run", "True", "--project", "my-project",
    "--region", "us-central1", "--temp_location", "gs://my-temp-bucket/tmp",
    "--input_subscription", "projects/my-project/subscriptions/images",
    "--output_table", "my-project:embeddings.images",
    "--dead_letter_table", "my-project:embeddings.dead_letters",
    "--output_gcs", "gs://my-vectors/embeddings/", "--weights", "gs://my-models/r50.weights.h5"]


def test_the_launcher_builds_the_dataflow_job_without_tensorflow():
    """A remote runner's launcher checks the options and submits; the workers build the
    model. Built in a fresh process, which must never have imported TensorFlow."""
    code = ("import json, sys\n"
            "from streaming import main\n"
            f"rc = main.main({DATAFLOW_ARGS!r})\n"
            "print(json.dumps({'rc': rc, 'tensorflow': sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('tensorflow', 'keras'))}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    *printed, last = proc.stdout.strip().splitlines()
    assert json.loads(last) == {"rc": 0, "tensorflow": []}
    assert any("nothing submitted (dry run)" in line for line in printed)


def test_a_local_weights_file_is_refused_for_a_remote_runner(tmp_path):
    weights = tmp_path / "w.weights.h5"
    weights.write_bytes(b"x")
    args = [a if a != "gs://my-models/r50.weights.h5" else str(weights) for a in DATAFLOW_ARGS]
    assert main.main(args) == 2


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
