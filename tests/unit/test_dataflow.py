"""The streaming job builds for Dataflow offline (`--dry_run`), with the right parts."""

import json
import os
import subprocess
import sys

import apache_beam as beam
import pytest

from streaming import main
from streaming.pipeline import build_pipeline
from tests import fixtures

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATAFLOW_ARGS = [
    *fixtures.DATAFLOW_DRY_RUN,
    "--input_subscription",
    "projects/my-project/subscriptions/images",
    "--output_table",
    "my-project:embeddings.images",
    "--dead_letter_table",
    "my-project:embeddings.dead_letters",
    "--output_gcs",
    "gs://my-vectors/embeddings/",
    "--weights",
    "gs://my-models/r50.weights.h5",
]


def test_the_launcher_builds_the_dataflow_job_without_tensorflow():
    """A remote runner's launcher checks the options and submits; the workers build the
    model. Built in a fresh process, which must never have imported TensorFlow."""
    code = (
        "import json, sys\n"
        "from streaming import main\n"
        f"rc = main.main({DATAFLOW_ARGS!r})\n"
        "print(json.dumps({'rc': rc, 'tensorflow': sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('tensorflow', 'keras'))}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    *printed, last = proc.stdout.strip().splitlines()
    assert json.loads(last) == {"rc": 0, "tensorflow": []}
    assert any("nothing submitted (dry run)" in line for line in printed)


def with_weights(spec: str) -> list[str]:
    return [a if a != "gs://my-models/r50.weights.h5" else spec for a in DATAFLOW_ARGS]


def test_a_relative_weights_path_is_refused_for_a_remote_runner(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.weights.h5").write_bytes(b"x")
    assert main.main(with_weights("w.weights.h5")) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("embed-stream: error: --weights w.weights.h5:")


def test_weights_baked_into_the_image_are_accepted_for_a_remote_runner(capsys):
    """An absolute path names a file of the worker image (Dockerfile, WEIGHTS): a launch
    from a machine without it goes on, naming the one check it could not make."""
    baked = "/opt/image-embeddings/weights/resnet50_notop.weights.h5"
    assert main.main(with_weights(baked)) == 0
    out = capsys.readouterr()
    assert "nothing submitted (dry run)" in out.out
    (warning,) = [ln for ln in out.err.splitlines() if ln.startswith("embed-stream: ")]
    assert warning.startswith("embed-stream: warning: not checked: --weights " + baked)
    opts = main.make_options(with_weights(baked))
    assert opts.weights == baked and opts.model_cache_dir is None  # the image's own cache


def test_baked_weights_that_exist_here_are_checked_like_any_file(tmp_path, capsys):
    """Where the launcher runs inside the image (a Flex Template launch), the file is
    there: its name is checked, and nothing is skipped."""
    baked = tmp_path / "r50.weights.h5"
    baked.write_bytes(b"x")
    assert main.main(with_weights(str(baked))) == 0
    assert "warning" not in capsys.readouterr().err
    assert main.main(with_weights(str(tmp_path / "r50.h5x"))) == 2


def test_streaming_job_builds_for_dataflow_offline():
    opts = main.make_options(
        [
            *DATAFLOW_ARGS,
            "--max_num_workers",
            "4",
            "--autoscaling_algorithm",
            "THROUGHPUT_BASED",
        ]
    )
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


GROUP_BY_KEY = "beam:transform:group_by_key:v1"
PAR_DO = "beam:transform:pardo:v1"
# Where decoded pixels end: the step that keeps only the vectors, and the one that turns
# a failed batch into dead letters.
PIXELS_END = ("Drop pixels", "Embed with ResNet50/Dead-letter failed batches")


def dataflow_graph(extra=()):
    """The streaming job's Dataflow dry-run pipeline proto."""
    opts = main.make_options(DATAFLOW_ARGS + list(extra))
    pipeline = beam.Pipeline(options=opts)
    build_pipeline(pipeline, opts)
    return pipeline.run().job.proto_pipeline


def shuffles_or_state(proto, transform) -> bool:
    """A GroupByKey, or a ParDo with state or timers: a step whose input is shuffled
    by key and may be held in the runner's state."""
    from apache_beam.portability.api import beam_runner_api_pb2

    if transform.spec.urn == GROUP_BY_KEY:
        return True
    if transform.spec.urn != PAR_DO:
        return False
    payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
    return bool(payload.state_specs or payload.timer_family_specs)


def steps_carrying_pixels(proto) -> list:
    """Leaf steps that consume decoded images: downstream of the load stage's images
    output, up to the steps that drop the pixels."""
    transforms = proto.components.transforms
    leaves = {i: t for i, t in transforms.items() if not t.subtransforms}
    consumers: dict = {}
    for i, t in leaves.items():
        for pcoll in t.inputs.values():
            consumers.setdefault(pcoll, []).append(i)
    load = next(t for t in leaves.values() if t.unique_name.startswith("Load and resize/"))
    todo = [pcoll for tag, pcoll in load.outputs.items() if tag != "dead_letters"]
    seen: set = set()
    while todo:
        for i in consumers.get(todo.pop(), []):
            if i in seen:
                continue
            seen.add(i)
            if not leaves[i].unique_name.startswith(PIXELS_END):
                todo.extend(leaves[i].outputs.values())
    return [leaves[i] for i in seen]


@pytest.mark.parametrize(
    "extra", [[], ["--max_batch_duration_secs", "0"]], ids=["stateful batching", "bundle batching"]
)
def test_no_decoded_pixels_are_shuffled_or_held_in_state(extra):
    """Decoded images (150 KB each) never cross a shuffle or wait in state on Dataflow:
    streaming batches are formed from refs before the load stage."""
    proto = dataflow_graph(extra)
    carrying = steps_carrying_pixels(proto)
    assert any("RunInference" in t.unique_name for t in carrying)  # the walk reached the model
    assert any(t.unique_name.startswith(PIXELS_END) for t in carrying)
    offending = [t.unique_name for t in carrying if shuffles_or_state(proto, t)]
    assert offending == []
    everywhere = [
        t.unique_name
        for t in proto.components.transforms.values()
        if not t.subtransforms and shuffles_or_state(proto, t)
    ]
    if not extra:  # a lone image still waits at most --max_batch_duration_secs: refs are batched
        assert any(n.startswith("Batch references/") for n in everywhere), everywhere
    # The vector writes are spread by a shuffle of the small vectors after the model.
    assert any(n.startswith("Spread writes/") for n in everywhere), everywhere
