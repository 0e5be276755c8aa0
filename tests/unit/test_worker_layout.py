"""The worker-layout options reach TensorFlow, and the image's job defaults parse and
yield to the flags a launch passes."""
import json
import os
import re
import subprocess
import sys

import pytest
from apache_beam.options.pipeline_options import DebugOptions

from streaming import cli, main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATAFLOW = ["--runner", "DataflowRunner", "--project", "my-project", "--region",
            "us-central1", "--temp_location", "gs://my-temp-bucket/tmp",
            "--input_subscription", "projects/my-project/subscriptions/images",
            "--output_table", "my-project:embeddings.images"]


def image_defaults(kind: str) -> str:
    """The Dockerfile's job defaults for the CPU or the GPU image."""
    dockerfile = open(os.path.join(ROOT, "Dockerfile")).read()
    # GPU image (EXTRAS=gpu): its own; CPU image: the second ENV fills the empty value.
    assert 'ENV EMBED_STREAM_DEFAULTS="${EXTRAS:+$GPU_JOB_DEFAULTS}"\n' \
           'ENV EMBED_STREAM_DEFAULTS="${EMBED_STREAM_DEFAULTS:-$CPU_JOB_DEFAULTS}"' in dockerfile
    return re.search(rf'^ARG {kind}_JOB_DEFAULTS="([^"]*)"', dockerfile, re.M).group(1)


@pytest.mark.parametrize("kind, harness_threads, max_batch_size",
                         [("CPU", 2, 8), ("GPU", 4, 64)])
def test_the_images_run_one_sdk_process_per_vm_and_yield_to_launch_flags(
        monkeypatch, kind, harness_threads, max_batch_size):
    monkeypatch.setenv(main.DEFAULTS_ENV, image_defaults(kind))
    opts = main.make_options(DATAFLOW)
    assert "no_use_multiple_sdk_containers" in opts.view_as(DebugOptions).experiments
    assert opts.view_as(DebugOptions).number_of_worker_harness_threads == harness_threads
    assert (opts.max_batch_size, opts.decode_threads) == (max_batch_size, 2)
    assert main.make_options(DATAFLOW + ["--max_batch_size", "32"]).max_batch_size == 32


def test_without_the_variable_nothing_is_added(monkeypatch):
    monkeypatch.delenv(main.DEFAULTS_ENV, raising=False)
    opts = main.make_options(DATAFLOW)
    assert opts.max_batch_size == 8
    assert "no_use_multiple_sdk_containers" not in (
        opts.view_as(DebugOptions).experiments or [])


@pytest.mark.parametrize("flag", ["--intra_op_threads", "--inter_op_threads"])
def test_negative_thread_counts_are_refused_in_one_line(flag):
    with pytest.raises(cli.UsageError, match=flag):
        main.make_options(["--input_dir", "i", "--output_dir", "o", flag, "-1"])


@pytest.mark.slow
def test_the_model_handler_sizes_tensorflows_threads_before_it_builds_the_model():
    """In a fresh process: TensorFlow's pools can only be sized before its runtime starts."""
    code = (
        "import json, tensorflow as tf\n"
        "from streaming.main import make_options\n"
        "from streaming.pipeline import model_handler\n"
        "opts = make_options(['--input_dir', 'i', '--output_dir', 'o', '--weights',"
        " 'random:0', '--runtime', 'tensorflow', '--intra_op_threads', '1',"
        " '--inter_op_threads', '2'])\n"
        "handler = model_handler(opts)\n"
        "model = handler.load_model()\n"
        "print(json.dumps([tf.config.threading.get_intra_op_parallelism_threads(),"
        " tf.config.threading.get_inter_op_parallelism_threads(), model.model_id]))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    intra, inter, model_id = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (intra, inter) == (1, 2) and model_id.startswith("resnet50-avgpool@")
