"""The worker-layout options reach TensorFlow and refuse bad values (the Dataflow job's
defaults: tests/unit/test_dataflow_launch.py)."""

import json
import os
import subprocess
import sys

import pytest

from streaming import main
from streaming.config import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
        " tf.config.threading.get_inter_op_parallelism_threads(), model.model_id]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    intra, inter, model_id = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (intra, inter) == (1, 2) and model_id.startswith("resnet50-avgpool@")
