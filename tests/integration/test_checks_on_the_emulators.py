"""Names that parse but do not exist are found before the model loads, in one line:
the services are reachable (--local_endpoints), so the job asks them."""

import subprocess
import sys

import pytest

from tools.processes import ROOT


def embed_stream(*argv):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "streaming.main",
            "--weights",
            "random:0",
            "--local_endpoints",
            *argv,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def dataset(cloud):
    name = f"checks_{cloud.run_id}"
    cloud.bq.create_dataset(name)
    return name


def test_a_subscription_that_does_not_exist(cloud, dataset):
    missing = cloud.subscription("no-such-subscription")
    proc = embed_stream(
        "--input_subscription", missing, "--output_table", f"{cloud.project}:{dataset}.embeddings"
    )
    assert proc.returncode == 2
    assert one_line(proc) == (
        f"embed-stream: error: --input_subscription {missing}: subscription does not exist"
    )


def test_a_dataset_that_does_not_exist(cloud, tmp_path):
    (tmp_path / "in").mkdir()
    table = f"{cloud.project}:no_such_dataset_{cloud.run_id}.embeddings"
    proc = embed_stream("--input_dir", str(tmp_path / "in"), "--output_table", table)
    assert proc.returncode == 2
    assert f"--output_table {table}: dataset" in one_line(proc)


def test_a_bucket_that_does_not_exist(cloud, tmp_path):
    (tmp_path / "in").mkdir()
    uri = f"gs://no-such-bucket-{cloud.run_id}/vectors/"
    proc = embed_stream("--input_dir", str(tmp_path / "in"), "--output_gcs", uri)
    assert proc.returncode == 2
    assert f"--output_gcs {uri}: bucket no-such-bucket-{cloud.run_id} does not exist" in one_line(
        proc
    )
