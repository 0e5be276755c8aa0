"""docs/dataflow.md's commands use what exists: the direct launch builds (dry run) with
options the job parses, the template launches pass the template's parameters, and the
Terraform outputs it reads are declared."""

import json
import pathlib
import re
import shlex
import subprocess
import sys

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, WorkerOptions

from streaming import main
from streaming.pipeline import build_pipeline

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "dataflow.md").read_text()
PARAMS = {
    p["name"]: p
    for p in json.loads((ROOT / "flex_template" / "metadata.json").read_text())["parameters"]
}
EXAMPLE_ENV = {
    "PROJECT": "my-project",
    "REGION": "us-central1",
    "DATAFLOW_BUCKET": "my-dataflow",
    "SA": "embedder@my-project.iam.gserviceaccount.com",
    "IMAGE": "us-central1-docker.pkg.dev/my-project/embeddings/embed:abc123",
    "SUBSCRIPTION": "projects/my-project/subscriptions/embed",
    "TABLE": "my-project:images.embeddings",
    "DEAD_LETTER_TABLE": "my-project:images.dead_letters",
    "VECTORS": "gs://my-vectors/embeddings/",
    "WEIGHTS": "gs://my-dataflow/models/resnet50_notop.weights.h5",
    "TEMPLATE": "gs://my-dataflow/templates/embed-abc123.json",
    "MODEL_CACHE": "gs://my-dataflow/image-embeddings/onnx",
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


@pytest.mark.parametrize(
    "argv",
    commands("gcloud dataflow flex-template run"),
    ids=lambda a: "update" if "--update" in a else "launch",
)
def test_template_launches_pass_the_templates_parameters(argv):
    given = {}
    for i, arg in enumerate(argv):
        if arg == "--parameters":
            given.update(kv.split("=", 1) for kv in argv[i + 1].split(","))
    assert set(given) <= set(PARAMS)
    assert {n for n, p in PARAMS.items() if not p["isOptional"]} <= set(given)
    for name, value in given.items():
        assert all(re.search(rx, value) for rx in PARAMS[name]["regexes"]), (name, value)


@pytest.mark.parametrize(
    "argv",
    commands("gcloud dataflow flex-template run"),
    ids=lambda a: "update" if "--update" in a else "launch",
)
def test_template_launches_run_as_the_launcher_runs_them(argv, capsys):
    """The documented template launch, as the launcher runs the entry file in the image
    (built offline here: --dry_run; tests/integration/test_launch.py writes the job
    file against the emulators)."""
    from tests.launcher import launcher_argv

    sys.path.insert(0, str(ROOT / "flex_template"))
    try:
        import main as entry
    finally:
        sys.path.pop(0)
    args = launcher_argv(argv, "gs://my-dataflow/staging/template_launches/1/job_object")
    # --update looks the running job up on the service, even in a dry run.
    offline = [a for a in args if a != "--update"]
    assert entry.main(offline + ["--dry_run=True"]) == 0
    assert "nothing submitted (dry run)" in capsys.readouterr().out
    opts = main.make_options(args)
    assert opts.model_cache_dir == EXAMPLE_ENV["MODEL_CACHE"]
    assert opts.view_as(WorkerOptions).sdk_container_image == EXAMPLE_ENV["IMAGE"]


@pytest.mark.slow
def test_the_one_time_conversion_fills_the_cache_the_launch_names(tmp_path):
    """`python -m streaming.model.prepare` as documented (random weights, a local cache
    folder for the bucket); a fresh process then loads from it without TensorFlow."""
    (argv,) = commands("python -m streaming.model.prepare")
    cache = str(tmp_path / "onnx-cache")
    args = [
        cache
        if a == EXAMPLE_ENV["MODEL_CACHE"]
        else "random:0"
        if a == EXAMPLE_ENV["WEIGHTS"]
        else a
        for a in argv[3:]
    ]
    run = subprocess.run(
        [sys.executable, "-m", "streaming.model.prepare", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    code = (
        "import json, sys, logging\n"
        "from streaming.model import inference\n"
        f"m = inference.load_embedding_model('random:0', 'onnx', {cache!r})\n"
        "print(json.dumps([m.model_id, sorted(k for k in sys.modules "
        "if k.split('.')[0] in ('tensorflow', 'keras'))]))"
    )
    again = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-3000:]
    model_id, heavy = json.loads(again.stdout.strip().splitlines()[-1])
    assert model_id.startswith("resnet50-avgpool@") and heavy == []
    assert " once; later runs load it from " not in again.stderr  # nothing built again


def test_terraform_outputs_read_by_the_doc_are_declared():
    declared = set(
        re.findall(
            r'^output\s+"(\w+)"',
            "\n".join(p.read_text() for p in (ROOT / "infra").glob("*.tf")),
            re.M,
        )
    )
    read = set(re.findall(r"terraform -chdir=infra output -raw (\w+)", DOC))
    assert read and read <= declared


def test_every_command_of_the_doc_says_who_runs_it_with_roles_infra_grants():
    """The "Who runs what" table covers each kind of command in the doc's sh blocks, and
    every role it names for the deployer or the backfill is one infra/ grants them."""
    from tools import infra

    table = DOC[DOC.index("| command | identity |") :].split("\n\n", 1)[0]
    rows = [r.split("|")[1:4] for r in table.splitlines()[2:]]
    covered = " ".join(command for command, _, _ in rows)
    kinds = set()
    for block in re.findall(r"```sh\n(.*?)```", DOC, re.S):
        for cmd in re.sub(r"\\\n\s*", " ", block).splitlines():
            words = cmd.strip().split()
            if words and words[0] in ("gcloud", "bq", "docker", "terraform", "embed-stream"):
                kinds.add(" ".join(words[:2]) if words[0] != "gcloud" else " ".join(words[:3]))
            elif words[:3] == ["python", "-m", "streaming.model.prepare"] or words[:1] == [
                "embed-backfill"
            ]:
                kinds.add(" ".join(words[:3]) if words[0] == "python" else words[0])
    ignored = {"gcloud auth configure-docker", "gcloud auth application-default", "docker build"}
    missing = sorted(k for k in kinds - ignored if k.split(" -")[0] not in covered)
    assert missing == [], f"commands the table does not name: {missing}"
    custom = {
        f"google_project_iam_custom_role.{name}": infra.attr(body, "role_id").strip('"')
        for name, body in infra.blocks("resource", "google_project_iam_custom_role").items()
    }
    held: dict = {}
    for g in infra.iam_grants():
        held.setdefault(g.identity, set()).add(custom.get(g.role, g.role))
    who = {"deployer": "deployer", "`embedder`": "job", "`embed-backfill`": "backfill"}
    who["analyst"] = "analyst"
    for command, identity, needs in rows:
        identities = {key for name, key in who.items() if name in identity}
        if not identities:
            continue  # the project owner's apply
        roles = set().union(*(held[i] for i in identities))
        for role in re.findall(r"roles/[\w.]+|embeddings\w+", needs):
            assert role in roles, (command, identity, role)
