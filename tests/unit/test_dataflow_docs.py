"""docs/dataflow.md's commands use what exists: the direct launch builds (dry run) with
options the job parses, the template launches pass the template's parameters, and the
Terraform outputs it reads are declared."""
import json
import pathlib
import re
import shlex

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from streaming import main
from streaming.pipeline import build_pipeline

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "dataflow.md").read_text()
PARAMS = {p["name"]: p for p in
          json.loads((ROOT / "flex_template" / "metadata.json").read_text())["parameters"]}
EXAMPLE_ENV = {
    "PROJECT": "my-project", "REGION": "us-central1", "DATAFLOW_BUCKET": "my-dataflow",
    "SA": "embedder@my-project.iam.gserviceaccount.com",
    "IMAGE": "us-central1-docker.pkg.dev/my-project/embeddings/embed:abc123",
    "SUBSCRIPTION": "projects/my-project/subscriptions/embed",
    "TABLE": "my-project:images.embeddings", "DEAD_LETTER_TABLE": "my-project:images.dead_letters",
    "VECTORS": "gs://my-vectors/embeddings/",
    "WEIGHTS": "gs://my-dataflow/models/resnet50_notop.weights.h5",
    "TEMPLATE": "gs://my-dataflow/templates/embed-abc123.json",
}


def commands(prefix: str) -> list[list[str]]:
    """Every shell command in the doc's sh blocks starting with `prefix`, as argv."""
    found = []
    for block in re.findall(r"```sh\n(.*?)```", DOC, re.S):
        for cmd in re.sub(r"\\\n\s*", " ", block).splitlines():
            if cmd.startswith(prefix):
                expanded = re.sub(r"\$(\w+)", lambda m: EXAMPLE_ENV[m.group(1)], cmd)
                found.append(shlex.split(expanded, comments=True))
    assert found, f"no `{prefix}` command in docs/dataflow.md"
    return found


def test_direct_launch_builds_the_streaming_job():
    (argv,) = commands("embed-stream --runner DataflowRunner")
    args = argv[1:]
    known = set(PipelineOptions().get_all_options())
    flags = {a[2:].split("=")[0] for a in args if a.startswith("--")}
    assert flags <= known, f"options the job does not parse: {flags - known}"
    opts = main.make_options(args + ["--dry_run", "True"])
    pipeline = beam.Pipeline(options=opts)
    build_pipeline(pipeline, opts)
    assert pipeline.run().job.proto.type.name == "JOB_TYPE_STREAMING"


@pytest.mark.parametrize("argv", commands("gcloud dataflow flex-template run"),
                         ids=lambda a: "update" if "--update" in a else "launch")
def test_template_launches_pass_the_templates_parameters(argv):
    given = {}
    for i, arg in enumerate(argv):
        if arg == "--parameters":
            given.update(kv.split("=", 1) for kv in argv[i + 1].split(","))
    assert set(given) <= set(PARAMS)
    assert {n for n, p in PARAMS.items() if not p["isOptional"]} <= set(given)
    for name, value in given.items():
        assert all(re.search(rx, value) for rx in PARAMS[name]["regexes"]), (name, value)


def test_terraform_outputs_read_by_the_doc_are_declared():
    declared = set(re.findall(r'^output\s+"(\w+)"', "\n".join(
        p.read_text() for p in (ROOT / "infra").glob("*.tf")), re.M))
    read = set(re.findall(r"terraform -chdir=infra output -raw (\w+)", DOC))
    assert read and read <= declared
