"""A streaming `--update` matches the running job's steps by name: a renamed or removed step
makes Dataflow refuse the update (or, with `--transform_name_mapping`, map it by hand).

`dataflow_step_names.txt` lists every step of the production job graph. When a change
renames steps on purpose, regenerate the list and say in the change how to roll it out
(docs/dataflow.md, "Changing a running job"):

    .venv/bin/python tests/unit/test_update_compatibility.py > tests/unit/dataflow_step_names.txt
"""

import difflib
import pathlib
import sys

import apache_beam as beam
import pytest

from streaming import main
from streaming.pipeline import build_pipeline

NAMES_FILE = pathlib.Path(__file__).with_name("dataflow_step_names.txt")
UPDATE_COMMAND = (
    ".venv/bin/python tests/unit/test_update_compatibility.py > tests/unit/dataflow_step_names.txt"
)

# The job as docs/dataflow.md launches it.
PRODUCTION = {
    "--runner": "DataflowRunner",
    "--dry_run": "True",
    "--project": "my-project",
    "--region": "us-central1",
    "--temp_location": "gs://my-temp-bucket/tmp",
    "--input_subscription": "projects/my-project/subscriptions/embed",
    "--output_table": "my-project:images.embeddings",
    "--dead_letter_table": "my-project:images.dead_letters",
    "--output_gcs": "gs://my-vectors/embeddings/",
    "--weights": "gs://my-models/resnet50_notop.weights.h5",
}


def step_names(changes: dict | None = None) -> list[str]:
    """Sorted unique names of every transform of the Dataflow job graph (dry run)."""
    args = {**PRODUCTION, **(changes or {})}
    opts = main.make_options([x for k, v in args.items() if v is not None for x in (k, v)])
    pipeline = beam.Pipeline(options=opts)
    build_pipeline(pipeline, opts)
    transforms = pipeline.run().job.proto_pipeline.components.transforms.values()
    return sorted(t.unique_name for t in transforms if t.spec.urn)  # the root has no urn


@pytest.fixture(scope="module")
def production_names():
    return step_names()


def test_step_names_match_the_committed_list(production_names):
    committed = NAMES_FILE.read_text().splitlines()
    diff = "\n".join(
        difflib.unified_diff(committed, production_names, "committed", "now", lineterm="", n=0)
    )
    assert production_names == committed, (
        "Dataflow step names changed; a running job can no longer be updated in place "
        "without --transform_name_mapping (or a drain). If intended, run:\n  "
        + UPDATE_COMMAND
        + "\n"
        + diff
    )


# Option changes a running job can take with `--update` keep every step name; those that
# add or remove branches change them (docs/dataflow.md has the same table).
@pytest.mark.parametrize(
    "changes, keeps_names",
    [
        ({"--weights": "gs://my-models/resnet50_v2.weights.h5"}, True),
        ({"--max_batch_size": "64", "--min_batch_size": "4"}, True),
        (
            {
                "--include_prefix": "uploads/",
                "--exclude_prefix": "thumbs/",
                "--buckets": "photos",
                "--extensions": ".jpg",
                "--content_types": "image/jpeg",
            },
            True,
        ),
        (
            {
                "--resize_policy": "pad",
                "--decode_threads": "8",
                "--decode_window": "32",
                "--max_pixels": "1000000",
                "--max_bytes": "1000000",
            },
            True,
        ),
        ({"--intra_op_threads": "1", "--inter_op_threads": "1"}, True),
        ({"--bigquery_write_method": "insert_all"}, True),
        ({"--dead_letter_table": None}, False),
        ({"--output_table": None}, False),
        ({"--output_dir": "gs://my-vectors/files/"}, False),
        ({"--max_batch_duration_secs": "0"}, False),
    ],
    ids=lambda x: ",".join(f"{k}={v}" for k, v in x.items()) if isinstance(x, dict) else str(x),
)
def test_which_option_changes_keep_the_step_names(production_names, changes, keeps_names):
    assert (step_names(changes) == production_names) is keeps_names


if __name__ == "__main__":
    sys.stdout.write("\n".join(step_names()) + "\n")
