"""The launch paths on Dataflow, run here: a Flex Template launch (the launcher runs the
entry file with --template_location and submits the job file it writes) and a direct
launch from a checkout start the same job, with the worker defaults and the model cache
of a Dataflow job."""

import json
import os
import re
import subprocess
import sys

import pytest
from apache_beam.options.pipeline_options import DebugOptions, GoogleCloudOptions, StandardOptions
from apache_beam.runners.dataflow.dataflow_runner import DataflowPipelineResult, DataflowRunner

from streaming import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMAGE = "us-central1-docker.pkg.dev/my-project/embeddings/embed:abc123"
LAUNCH = [
    "--runner=DataflowRunner",
    "--project=my-project",
    "--region=us-central1",
    "--temp_location=gs://my-dataflow/tmp",
    "--staging_location=gs://my-dataflow/staging",
    f"--sdk_container_image={IMAGE}",
    "--input_subscription=projects/my-project/subscriptions/embed",
    "--output_table=my-project:images.embeddings",
    "--output_gcs=gs://my-vectors/embeddings/",
    "--weights=gs://my-dataflow/models/r50.weights.h5",
]
GPU = [
    "--dataflow_service_options=worker_accelerator=type:nvidia-tesla-t4;count:1;"
    "install-nvidia-driver",
    "--machine_type=n1-standard-8",
]


def test_a_template_launch_writes_the_job_file_and_exits_0(monkeypatch, capsys):
    """With --template_location Beam writes the job file and returns a result with no
    job (DataflowApplicationClient.create_job returns None): the launch succeeded."""
    seen = {}

    def template_run(runner, pipeline, options):
        seen["template"] = options.view_as(GoogleCloudOptions).template_location
        return DataflowPipelineResult(None, runner)

    monkeypatch.setattr(DataflowRunner, "run_pipeline", template_run)
    # Offline: Beam would ask Cloud Storage for the temp bucket's soft-delete policy.
    monkeypatch.setattr(
        GoogleCloudOptions, "_warn_if_soft_delete_policy_enabled", lambda self, arg: None
    )
    monkeypatch.setattr(main, "check_before_start", lambda opts: None)
    job_file = "gs://my-dataflow/staging/template_launches/1/job_object"
    assert main.main(LAUNCH + [f"--template_location={job_file}"]) == 0
    assert seen["template"] == job_file
    assert capsys.readouterr().out.strip() == f"wrote the job file {job_file}; nothing submitted"


def dataflow_options(argv):
    opts = main.make_options(argv + ["--dry_run=True"])
    return opts, opts.view_as(DebugOptions)


def test_every_dataflow_job_runs_one_sdk_process_per_vm():
    opts, debug = dataflow_options(LAUNCH)
    assert "no_use_multiple_sdk_containers" in debug.experiments
    assert debug.number_of_worker_harness_threads == 2
    assert (opts.decode_threads, opts.max_batch_size, opts.runtime) == (2, 8, "onnx")


def test_a_gpu_job_runs_tensorflow_with_large_batches():
    opts, debug = dataflow_options(LAUNCH + GPU)
    assert "no_use_multiple_sdk_containers" in debug.experiments
    assert debug.number_of_worker_harness_threads == 4
    assert (opts.max_batch_size, opts.runtime) == (64, "tensorflow")


@pytest.mark.parametrize(
    "flag, value, attribute",
    [
        ("--max_batch_size", "32", "max_batch_size"),
        ("--decode_threads", "4", "decode_threads"),
        ("--runtime", "onnx", "runtime"),
    ],
)
def test_a_flag_given_at_launch_wins_over_the_defaults(flag, value, attribute):
    opts, _ = dataflow_options(LAUNCH + GPU + [flag, value])
    assert str(getattr(opts, attribute)) == value


def test_local_runs_get_no_worker_defaults():
    opts = main.make_options(["--input_dir", ".", "--output_dir", "out"])
    assert not opts.view_as(DebugOptions).experiments
    assert opts.max_batch_size == 8 and opts.model_cache_dir is None


def test_workers_find_converted_models_in_the_temp_locations_bucket_outside_tmp():
    opts, _ = dataflow_options(LAUNCH)
    assert opts.model_cache_dir == "gs://my-dataflow/" + main.MODEL_CACHE_PREFIX
    staged = [a for a in LAUNCH if not a.startswith(("--temp_location", "--staging_location"))]
    staged += ["--staging_location=gs://my-staging/staging"]
    only_staging, _ = dataflow_options(staged)  # Beam defaults temp from staging
    assert only_staging.model_cache_dir == "gs://my-staging/" + main.MODEL_CACHE_PREFIX
    given, _ = dataflow_options(LAUNCH + ["--model_cache_dir=gs://my-models/onnx-cache/"])
    assert given.model_cache_dir == "gs://my-models/onnx-cache/"
    gpu, _ = dataflow_options(LAUNCH + GPU)
    assert gpu.model_cache_dir is None  # TensorFlow converts nothing


def image_environment() -> dict[str, str]:
    """The environment the Dockerfile gives every process of the image (CPU build)."""
    text = re.sub(r"\\\n", " ", open(os.path.join(ROOT, "Dockerfile")).read())
    args = dict(re.findall(r'^ARG (\w+)="?([^"\n]*)"?$', text, re.M))
    env = {}
    for value in re.findall(r"^ENV (.+)$", text, re.M):
        for key, raw in re.findall(r'(\w+)=("[^"]*"|\S+)', value):
            expanded = raw.strip('"')
            expanded = re.sub(
                r"\$\{(\w+):\+\$(\w+)\}",
                lambda m: args.get(m.group(2), "") if args.get(m.group(1)) else "",
                expanded,
            )
            expanded = re.sub(
                r"\$\{(\w+):-\$(\w+)\}",
                lambda m: env.get(m.group(1)) or args.get(m.group(2), ""),
                expanded,
            )
            env[key] = expanded
    return env


PRINT_JOB = """
import json, sys
import apache_beam as beam
from streaming import main
from streaming.pipeline import build_pipeline
opts = main.make_options(sys.argv[1:])
pipeline = beam.Pipeline(options=opts)
build_pipeline(pipeline, opts)
job = pipeline.run().job
print(json.dumps({
    "options": {k: v for k, v in opts.get_all_options(drop_default=True).items()},
    "steps": sorted((t.unique_name, t.spec.urn)
                    for t in job.proto_pipeline.components.transforms.values())},
    default=str))
"""


def launched_job(argv, env_overrides):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBED_STREAM")}
    env.update(env_overrides)
    proc = subprocess.run(
        [sys.executable, "-c", PRINT_JOB, *argv, "--dry_run=True"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_the_direct_launch_is_the_template_launch():
    """The same flags give the same job from a checkout and inside the image (where the
    Flex Template launcher runs the entry file): options and graph."""
    image = image_environment()
    assert image["FLEX_TEMPLATE_PYTHON_PY_FILE"].endswith("flex_template/main.py")
    direct = launched_job(LAUNCH, {})
    template = launched_job(LAUNCH, image)
    assert template["options"] == direct["options"]
    assert template["steps"] == direct["steps"]
    assert "no_use_multiple_sdk_containers" in direct["options"]["experiments"]


def test_an_unknown_option_is_one_warning_on_dataflow_and_refused_locally(capsys):
    """A launcher of a later release may pass a flag this code does not know: on a
    remote runner it warns in one line, as Beam does; where the job runs here, a typo
    stops it."""
    from streaming.config import cli

    opts = main.make_options(LAUNCH + ["--some_later_flag=1"])
    assert opts.view_as(StandardOptions).runner == "DataflowRunner"
    ours = [x for x in capsys.readouterr().err.splitlines() if x.startswith("embed-stream:")]
    assert len(ours) == 1 and "warning: unknown option --some_later_flag" in ours[0]
    with pytest.raises(cli.UsageError, match="unknown option --some_later_flag"):
        main.make_options(["--input_dir", ".", "--output_dir", "o", "--some_later_flag=1"])
