"""docker-compose.yml runs the whole service: structure checks that need no Docker engine."""

import argparse
import pathlib
import re

import pytest
import yaml

from streaming import main
from streaming.config.options import EmbedOptions

ROOT = pathlib.Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
ONE_SHOT = {"pubsub-init", "setup"}


def depends(name: str) -> dict:
    return SERVICES[name].get("depends_on", {})


def upstream(name: str) -> set:
    seen, todo = set(), list(depends(name))
    while todo:
        dep = todo.pop()
        if dep not in seen:
            seen.add(dep)
            todo.extend(depends(dep))
    return seen


def job_command() -> list[str]:
    return SERVICES["embedder"]["command"]


def test_the_services():
    assert set(SERVICES) == {"pubsub", "pubsub-init", "gcs", "bigquery", "setup", "embedder"}
    for name, service in SERVICES.items():
        assert "image" in service or "build" in service, name


def test_the_job_is_built_from_the_worker_dockerfile():
    for name in ("setup", "embedder"):
        build = SERVICES[name]["build"]
        assert (ROOT / build["context"]).resolve() == ROOT
        assert build["dockerfile"] == "Dockerfile" and (ROOT / "Dockerfile").is_file()
    assert SERVICES["embedder"]["entrypoint"] == ["embed-stream"]


def test_every_dependency_waits_for_health_or_completion():
    for name in SERVICES:
        for dep, spec in depends(name).items():
            assert dep in SERVICES, f"{name} depends on unknown {dep}"
            if dep in ONE_SHOT:
                assert spec["condition"] == "service_completed_successfully", (name, dep)
                assert SERVICES[dep]["restart"] == "no"
            else:
                assert spec["condition"] == "service_healthy", (name, dep)
                assert SERVICES[dep]["healthcheck"]["test"], dep


def test_start_order():
    # The topic exists before the first storage event (an event for a missing topic is
    # dropped), and the job starts after every emulator and every resource.
    assert "pubsub-init" in upstream("gcs")
    assert upstream("embedder") == {"pubsub", "pubsub-init", "gcs", "bigquery", "setup"}


@pytest.fixture(autouse=True)
def job_environment(monkeypatch):
    """The job's environment is the compose file's, not the test's."""
    for var in ("PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "BIGQUERY_EMULATOR_HOST"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("BIGQUERY_EMULATOR_GRPC_HOST", raising=False)
    for var, value in SERVICES["embedder"]["environment"].items():
        monkeypatch.setenv(var, str(value))


def test_job_command_uses_only_options_the_job_parses():
    parser = argparse.ArgumentParser()
    EmbedOptions._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(job_command())
    assert unknown == []
    opts = main.make_options(job_command())  # the job's own validation
    assert opts.local_endpoints and opts.weights == "random:0"


def test_job_reads_and_writes_what_the_set_up_creates():
    opts = main.make_options(job_command())
    init = " ".join(SERVICES["pubsub-init"]["command"])
    setup = SERVICES["setup"]["command"][0]
    gcs = " ".join(SERVICES["gcs"]["command"])
    project, sub = re.fullmatch(
        r"projects/([^/]+)/subscriptions/(.+)", opts.input_subscription
    ).groups()
    assert f"/projects/{project}" in init and f"/subscriptions/{sub}" in init
    topic = re.search(r"-event\.pubsub-topic=(\S+)", gcs).group(1)
    assert f"/topics/{topic}" in init
    assert f'"topic":"projects/{project}/topics/{topic}"' in init
    vectors = re.fullmatch(r"gs://([^/]+)/.*", opts.output_gcs).group(1)
    watched = re.search(r"-event\.bucket=(\S+)", gcs).group(1)
    assert opts.buckets == watched != vectors  # vectors must never notify
    for bucket in (watched, vectors):
        assert f'"{bucket}"' in setup
    for table in (opts.output_table, opts.dead_letter_table):
        dataset, name = re.fullmatch(rf"{project}:(\w+)\.(\w+)", table).groups()
        assert f'create_dataset("{dataset}"' in setup and f'("{name}",' in setup


@pytest.mark.parametrize(
    "var, service, port",
    [
        ("PUBSUB_EMULATOR_HOST", "pubsub", 8085),
        ("STORAGE_EMULATOR_HOST", "gcs", 4443),
        ("BIGQUERY_EMULATOR_HOST", "bigquery", 9050),
    ],
)
def test_job_talks_to_the_emulator_services(var, service, port):
    for name in ("setup", "embedder"):
        value = SERVICES[name]["environment"][var]
        assert re.fullmatch(rf"(http://)?{service}:{port}", value), (name, value)
    published = [p.split(":")[-1] for p in SERVICES[service]["ports"]]
    assert str(port) in published
