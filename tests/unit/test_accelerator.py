"""A job that asks for an accelerator gets GPU workers and runs its model on a GPU or not
at all: either spelling of the request picks the GPU defaults and reaches the model
stage, whose load fails in one line, naming what was asked and what was found, where the
runtime finds no GPU (this machine has none: TensorFlow and ONNX Runtime answer for
real). A job that asks for nothing, or runs here, loads on the CPU as before."""

import logging

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import DebugOptions, PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline

from streaming import main
from streaming.config import runners
from streaming.model import inference, onnx_runtime
from streaming.pipeline import model_handler
from tests.unit.test_dataflow_launch import LAUNCH

ACCELERATOR = "worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver"
SPELLINGS = {
    "service option": f"--dataflow_service_options={ACCELERATOR}",
    "experiment": f"--experiments={ACCELERATOR}",
    "experiment, singular": f"--experiment={ACCELERATOR}",
}
MACHINE = "--machine_type=n1-standard-8"


def job(*extra, cache=None):
    """A Dataflow job's options (built offline) with random:0 weights and a local cache,
    so that loading its model reads nothing remote."""
    argv = [*LAUNCH, *extra, "--weights=random:0", "--dry_run=True"]
    if cache:
        argv.append(f"--model_cache_dir={cache}")
    return main.make_options(argv)


@pytest.mark.parametrize("spelling", SPELLINGS.values(), ids=SPELLINGS.keys())
def test_either_spelling_asks_for_an_accelerator_and_gets_the_gpu_defaults(spelling):
    opts = job(spelling, MACHINE)
    debug = opts.view_as(DebugOptions)
    assert main.worker_kind(opts) == "gpu"
    assert debug.number_of_worker_harness_threads == 4
    assert (opts.max_batch_size, opts.runtime) == (64, "tensorflow")
    # The defaults' experiment joins the job's own; neither replaces the other.
    assert "no_use_multiple_sdk_containers" in debug.experiments
    if spelling.startswith("--experiment"):
        assert ACCELERATOR in debug.experiments
    assert runners.requested_accelerator(opts) == ACCELERATOR


@pytest.mark.parametrize("spelling", SPELLINGS.values(), ids=SPELLINGS.keys())
def test_the_model_stage_gets_what_the_job_asked_for(spelling):
    assert model_handler(job(spelling, MACHINE)).accelerator == ACCELERATOR


@pytest.mark.parametrize(
    "argv",
    [
        ["--runner=DataflowRunner", "--experiments=no_use_multiple_sdk_containers"],
        ["--runner=DataflowRunner", "--dataflow_service_options=enable_prime"],
        # Only Dataflow attaches GPUs: a local run ignores the request.
        ["--runner=DirectRunner", f"--dataflow_service_options={ACCELERATOR}"],
        ["--runner=DirectRunner", f"--experiments={ACCELERATOR}"],
    ],
)
def test_a_job_that_asks_for_nothing_or_runs_here_has_no_accelerator(argv):
    assert runners.requested_accelerator(PipelineOptions(argv)) is None


def one_line_error(error: BaseException) -> str:
    assert type(error).__name__ == "AcceleratorUnavailableError", repr(error)
    message = str(error)
    assert "\n" not in message, message
    return message


def test_tensorflow_without_a_gpu_fails_the_load_of_a_job_that_asked_for_one(tmp_path):
    handler = model_handler(job(SPELLINGS["experiment"], MACHINE, cache=tmp_path))
    with pytest.raises(RuntimeError) as failed:
        handler.load_model()
    message = one_line_error(failed.value)
    assert f"asked for {ACCELERATOR}" in message
    assert "TensorFlow" in message and "sees no GPU (devices: /device:CPU:0)" in message


def test_onnx_runtime_without_cuda_fails_the_load_of_a_job_that_asked_for_a_gpu(tmp_path):
    opts = job(SPELLINGS["service option"], MACHINE, "--runtime=onnx", cache=tmp_path)
    with pytest.raises(RuntimeError) as failed:
        model_handler(opts).load_model()
    message = one_line_error(failed.value)
    assert f"asked for {ACCELERATOR}" in message
    assert "offers no CUDAExecutionProvider (providers: " in message
    assert "CPUExecutionProvider)" in message
    assert not list(tmp_path.iterdir())  # refused before any graph was built


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider':UserWarning")
def test_a_cuda_provider_that_does_not_start_is_refused_not_run_on_the_cpu(tmp_path, monkeypatch):
    """ONNX Runtime offered CUDA but the session fell back to the CPU (here: a CPU build
    that claims CUDA, so the session really starts without it)."""
    monkeypatch.setattr(
        onnx_runtime,
        "available_providers",
        lambda: [onnx_runtime.CUDA_PROVIDER, onnx_runtime.CPU_PROVIDER],
    )
    with pytest.raises(RuntimeError) as failed:
        inference.build_embedding_model("random:0", "onnx", str(tmp_path), accelerator=ACCELERATOR)
    message = one_line_error(failed.value)
    assert f"asked for {ACCELERATOR}" in message
    assert "could not start a GPU on this worker (it runs on CPUExecutionProvider" in message


def test_the_failed_load_stops_the_step_and_dead_letters_no_image(tmp_path):
    """The load runs in RunInference's set-up, outside its exception handling: the
    bundle fails (Dataflow retries it) instead of every image becoming a dead letter."""
    handler = model_handler(job(SPELLINGS["experiment"], "--runtime=onnx", cache=tmp_path))
    pipeline = TestPipeline()
    images = pipeline | beam.Create([("a", np.zeros((224, 224, 3), np.uint8))])
    _ = images | inference.EmbedImages(handler)
    with pytest.raises(Exception, match=f"asked for {ACCELERATOR}"):
        pipeline.run().wait_until_finish()


@pytest.mark.parametrize(
    "argv",
    [
        [],  # a Dataflow job that asked for nothing
        ["--runner=DirectRunner", f"--experiments={ACCELERATOR}"],  # a local run
    ],
    ids=["dataflow without accelerator", "local run"],
)
def test_a_job_that_asked_for_nothing_loads_on_the_cpu_and_says_so_once(argv, tmp_path, caplog):
    handler = model_handler(job(*argv, "--runtime=onnx", cache=tmp_path))
    with caplog.at_level(logging.INFO, logger=inference.__name__):
        model = handler.load_model()
        assert handler.load_model() is model  # once per process
    assert model.device == "CPUExecutionProvider"
    loaded = [r for r in caplog.records if r.getMessage().startswith("Loaded ")]
    assert len(loaded) == 1 and loaded[0].levelno == logging.INFO
    assert loaded[0].getMessage().endswith("device CPUExecutionProvider")
    assert handler.accelerator is None and model.on_gpu is False
