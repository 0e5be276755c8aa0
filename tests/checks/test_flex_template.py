"""flex_template/metadata.json against the job's own options, in both directions, and its
regexes against good and bad values."""

import argparse
import json
import pathlib
import re
import subprocess
import sys

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from streaming import main
from streaming.config import flags
from streaming.config.options import EmbedOptions, validate
from tests import fixtures

ROOT = pathlib.Path(__file__).resolve().parents[2]
METADATA = json.loads((ROOT / "flex_template" / "metadata.json").read_text())
PARAMS = {p["name"]: p for p in METADATA["parameters"]}
# Options of a local run only; the template launches the Pub/Sub job on Dataflow.
LOCAL_ONLY = {
    "input_dir",
    "watch",
    "watch_interval",
    "input_topic",
    "output_dir",
    "progress_interval",
    "verbose",  # what the launching terminal shows
    "local_endpoints",
}
DATAFLOW = fixtures.DATAFLOW_DRY_RUN


def example(param) -> str:
    found = re.search(r"Example: (\S+)$", param["helpText"])
    assert found, f"{param['name']}: helpText must end with 'Example: VALUE'"
    return found.group(1)


def matches(param, value) -> bool:
    return all(re.search(rx, value) for rx in param["regexes"])


def job_options() -> set[str]:
    parser = argparse.ArgumentParser()
    EmbedOptions._add_argparse_args(parser)  # the job's own options, not Beam's
    return {a.dest for a in parser._actions if a.dest != "help"}


def test_every_parameter_is_described():
    assert METADATA["name"] and METADATA["description"]
    for p in METADATA["parameters"]:
        assert p["label"] and p["helpText"] and isinstance(p["isOptional"], bool), p["name"]
        assert p["regexes"], f"{p['name']} has no regex"


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_every_parameter_is_an_option_the_job_parses(name):
    value = example(PARAMS[name])
    parsed = PipelineOptions([f"--{name}={value}"]).view_as(EmbedOptions).get_all_options()
    got = parsed[name][-1] if isinstance(parsed[name], list) else parsed[name]
    assert str(got) == value


def test_every_job_option_is_a_parameter_or_local_only():
    assert job_options() - LOCAL_ONLY == set(PARAMS) - {"sdk_container_image"}


def required_launch(skip: str = "") -> list[str]:
    args = [f"--{n}={example(p)}" for n, p in PARAMS.items() if not p["isOptional"] and n != skip]
    return DATAFLOW + args


def test_the_required_parameters_are_enough_to_launch():
    opts = main.make_options(required_launch())
    validate(opts)
    assert opts.view_as(EmbedOptions).input_subscription


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(n for n, p in PARAMS.items() if not p["isOptional"]))
def test_each_required_parameter_is_needed(name):
    args = required_launch(skip=name)
    if name == "sdk_container_image":  # the template's own check, as the launcher runs it
        run = subprocess.run(
            [sys.executable, str(ROOT / "flex_template" / "main.py"), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 2 and "sdk_container_image" in run.stderr
    else:
        with pytest.raises(ValueError, match=name):
            main.make_options(args)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_regexes_accept_the_documented_example(name):
    assert matches(PARAMS[name], example(PARAMS[name]))


GOOD = {
    "input_subscription": ["projects/my-project/subscriptions/embed-images.v2"],
    "output_table": ["my-project.images.embeddings", "my-project:images_eu.embeddings-2026"],
    "dead_letter_table": ["my-project.images.dead_letters"],
    "output_gcs": ["gs://my-vectors", "gs://my.vectors.example.com/a/b/"],
    "weights": [
        "imagenet",
        "random:0",
        "/opt/image-embeddings/weights/r50.weights.h5",
        "gs://my-models/v2/model.keras",
    ],
    "sdk_container_image": [
        "gcr.io/my-project/embed@sha256:" + "a" * 64,
        "localhost:5000/embed:dev",
    ],
    "buckets": ["photos", "photos,my-uploads.example.com"],
    "extensions": ["", ".jpg"],
    "content_types": ["image/jpeg,image/png"],
    "max_batch_duration_secs": ["0"],
    "runtime": ["onnx", "tensorflow"],
    "model_cache_dir": ["gs://my-models/onnx-cache", "/opt/image-embeddings/onnx"],
}
BAD = {
    "input_subscription": [
        "projects/my-project/topics/gcs-notifications",
        "embed",
        "projects/P/subscriptions/embed",
        "projects/my-project/subscriptions/",
    ],
    "output_table": [
        "images.embeddings",
        "my-project:images",
        "my-project:images.t;drop",
        "My-Project:images.embeddings",
    ],
    "dead_letter_table": ["dead_letters"],
    "output_gcs": ["/local/out", "gs://", "s3://bucket/x", "gs://UPPER/x", "gs://b/x\ny"],
    "weights": [
        "gs://my-models/model.h5",
        "resnet50",
        "random:x",
        "gs://my-models/",
        "relative.weights.h5",
    ],
    "sdk_container_image": ["embed", "gcr.io/my-project/embed", "gcr.io/p/e:a b"],
    "max_batch_size": ["0", "-1", "8.5", "eight"],
    "max_batch_duration_secs": ["-1", "1s"],
    "resize_policy": ["crop", "center-crop", ""],
    "buckets": ["photos,", "Photos", "gs://photos"],
    "extensions": ["jpg", ".jpg,", ".j pg"],
    "include_prefix": [""],
    "runtime": ["tf", "ONNX", "onnxruntime", ""],
    "model_cache_dir": ["relative/cache", "gs://", "s3://b/cache", "gs://b/x\ny"],
}


@pytest.mark.parametrize("name, value", [(n, v) for n, vs in GOOD.items() for v in vs])
def test_regexes_accept_good_values(name, value):
    assert matches(PARAMS[name], value)


@pytest.mark.parametrize("name, value", [(n, v) for n, vs in BAD.items() for v in vs])
def test_regexes_reject_bad_values(name, value):
    assert not matches(PARAMS[name], value)


def test_runtime_regex_is_the_jobs_choices():
    alternatives = re.fullmatch(r"\^\((.*)\)\$", PARAMS["runtime"]["regexes"][0]).group(1)
    assert sorted(alternatives.split("|")) == sorted(flags.RUNTIMES)


def test_resize_policy_regex_is_the_jobs_choices():
    param = PARAMS["resize_policy"]
    assert all(matches(param, p) for p in flags.RESIZE_POLICIES)
    alternatives = re.fullmatch(r"\^\((.*)\)\$", param["regexes"][0]).group(1).split("|")
    assert sorted(alternatives) == sorted(flags.RESIZE_POLICIES)
