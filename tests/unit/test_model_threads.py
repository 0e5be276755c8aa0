"""--intra_op_threads / --inter_op_threads: their defaults per worker layout, and what
each size does to ONNX Runtime's session (the threads it starts, its execution mode).
TensorFlow's side is in test_worker_layout.py."""

import pytest

from streaming import main
from streaming.config.options import EmbedOptions
from streaming.model import onnx_runtime
from streaming.pipeline import model_threads
from tools.processes import python_json

LOCAL = ["--input_dir", "i", "--output_dir", "o"]
DATAFLOW = [
    "--runner=DataflowRunner",
    "--project",
    "my-project",
    "--region",
    "us-central1",
    "--temp_location",
    "gs://my-temp-bucket/tmp",
    "--input_subscription",
    "projects/my-project/subscriptions/images",
    "--output_table",
    "my-project:embeddings.images",
]
ONE_PROCESS_PER_VM = ["--experiments=no_use_multiple_sdk_containers"]


@pytest.mark.parametrize(
    "argv, threads",
    [
        (LOCAL, (0, 0)),  # one process: the runtime's
        (DATAFLOW, (0, 0)),  # the job's worker defaults
        (LOCAL + ["--intra_op_threads", "3", "--inter_op_threads", "2"], (3, 2)),
    ],
)
def test_thread_sizes_default_per_worker_layout(argv, threads):
    assert model_threads(main.make_options(argv)) == threads


@pytest.mark.parametrize(
    "argv, threads",
    [
        ([], (1, 1)),  # one SDK process per vCPU
        (ONE_PROCESS_PER_VM, (0, 0)),
        (["--intra_op_threads", "2"], (2, 1)),  # a flag always wins
    ],
)
def test_without_the_jobs_worker_defaults_each_vcpus_process_gets_one_thread(argv, threads):
    """Options made without embed-stream's defaults (Dataflow's own layout: one SDK
    process, and one model, per vCPU)."""
    opts = EmbedOptions(DATAFLOW + argv)
    assert model_threads(opts) == threads


@pytest.mark.parametrize(
    "threads, intra, inter, parallel",
    [
        ((0, 0), 0, 0, False),
        ((2, 0), 2, 0, False),
        ((1, 1), 1, 0, False),  # one inter-op thread is the sequential default
        ((1, 3), 1, 3, True),
    ],
)
def test_onnx_runtime_session_options(threads, intra, inter, parallel):
    import onnxruntime as ort

    options = onnx_runtime.session_options(threads)
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (intra, inter)
    assert (options.execution_mode == ort.ExecutionMode.ORT_PARALLEL) is parallel


@pytest.mark.slow
def test_onnx_runtime_starts_the_threads_the_sizes_name():
    """In a fresh process, the threads each session adds: intra-op N -> N - 1 pool
    threads (the caller is the N-th), inter-op N > 1 -> N - 1 more; with 0, one per
    physical core."""
    code = (
        "import json, psutil\n"
        "from streaming.model import resnet50\n"
        "from streaming.model.onnx_runtime import OnnxEmbeddingModel\n"
        "graph = resnet50.to_onnx(resnet50.random_weights(0))\n"
        "OnnxEmbeddingModel(graph, 'fp', 'm', (1, 0)).warm_up()  # ONNX Runtime's own start\n"
        "added = {}\n"
        "for t in ((1, 0), (3, 0), (1, 1), (2, 3), (0, 0)):\n"
        "    before = psutil.Process().num_threads()\n"
        "    m = OnnxEmbeddingModel(graph, 'fp', 'm', t)\n"
        "    m.warm_up()\n"
        "    added[str(t)] = psutil.Process().num_threads() - before\n"
        "    del m\n"
        "print(json.dumps([added, psutil.cpu_count(logical=False)]))\n"
    )
    (added, physical), _ = python_json(code, timeout=300)
    assert added == {"(1, 0)": 0, "(3, 0)": 2, "(1, 1)": 0, "(2, 3)": 3, "(0, 0)": physical - 1}
