"""Mistakes a new user makes, caught before the model loads: each run is a real
process, exits 2 (or 1) with one line on stderr naming the bad value."""

import os
import subprocess
import sys

import pytest

from streaming.config import cli, names

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def clean_env(tmp_path) -> dict:
    """No credentials anywhere (a fresh HOME), no emulators: as on a new laptop."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "GOOGLE_APPLICATION_CREDENTIALS",
            "PUBSUB_EMULATOR_HOST",
            "STORAGE_EMULATOR_HOST",
            "BIGQUERY_EMULATOR_HOST",
            "CLOUDSDK_CONFIG",
        )
    }
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), CLOUDSDK_CONFIG=str(home / "gcloud"))
    return env


def run_cli(module: str, *argv, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "in").mkdir()
    return tmp_path


def stream(folder, *argv):
    return run_cli(
        "streaming.main",
        "--input_dir",
        str(folder / "in"),
        "--weights",
        "random:0",
        *argv,
        env=clean_env(folder),
    )


@pytest.mark.slow
def test_misspelled_option_names_the_closest_valid_one(folder):
    proc = stream(folder, "--ouput_dir", str(folder / "out"))
    assert proc.returncode == 2
    line = one_line(proc)
    assert "--ouput_dir" in line and "did you mean --output_dir?" in line


@pytest.mark.slow
def test_the_backfills_spelling_of_local_endpoints_is_the_same_option(folder):
    """`--local-endpoints` was dropped by Beam's parser and the job went to real GCP;
    now it is --local_endpoints (which then wants the emulators' variables)."""
    proc = stream(folder, "--output_table", "my-project:images.embeddings", "--local-endpoints")
    assert proc.returncode == 2
    assert "--local_endpoints needs at least one of PUBSUB_EMULATOR_HOST" in one_line(proc)


@pytest.mark.slow
def test_beam_and_dataflow_options_still_pass(folder):
    proc = stream(
        folder,
        "--output_dir",
        str(folder / "o"),
        "--direct_num_workers",
        "1",
        "--max_num_workers",
        "3",
        "--input_dir",
        str(folder / "missing"),
    )
    assert proc.returncode == 2
    assert str(folder / "missing") in one_line(proc)  # past option parsing


@pytest.mark.slow
def test_missing_input_dir(folder):
    proc = stream(folder, "--output_dir", str(folder / "o"), "--input_dir", str(folder / "nope"))
    assert proc.returncode == 2
    assert f"--input_dir {folder / 'nope'} does not exist" in one_line(proc)


@pytest.mark.slow
@pytest.mark.parametrize(
    "table, needle",
    [
        ("not a table", "'not a table'"),
        ("images.embeddings", "'images.embeddings' has no project"),
    ],
)
def test_table_names_that_do_not_parse(folder, table, needle):
    proc = stream(folder, "--output_table", table)
    assert proc.returncode == 2
    line = one_line(proc)
    assert line.startswith("embed-stream: error: --output_table") and needle in line


@pytest.mark.slow
def test_a_table_without_project_takes_it_from_project(folder):
    """`--project` completes `D.T`; the run then stops at the next check (credentials)."""
    proc = stream(folder, "--output_table", "images.embeddings", "--project", "my-project")
    assert proc.returncode == 2
    assert "gcloud auth application-default login" in one_line(proc)


@pytest.mark.slow
@pytest.mark.parametrize(
    "option, value",
    [
        ("--input_subscription", "projects/my-project/topics/not-a-subscription"),
        ("--input_subscription", "my subscription"),
        ("--input_topic", "projects/P/topics/t"),
    ],
)
def test_pubsub_names_that_do_not_parse(folder, option, value):
    proc = run_cli(
        "streaming.main",
        option,
        value,
        "--output_dir",
        str(folder / "o"),
        "--weights",
        "random:0",
        env=clean_env(folder),
    )
    assert proc.returncode == 2
    line = one_line(proc)
    assert option in line and repr(value) in line


@pytest.mark.slow
def test_read_only_output_dir(folder):
    if os.geteuid() == 0:  # root writes through file modes; /sys refuses even root
        target = "/sys/fs/embeddings-out"
    else:
        (folder / "ro").mkdir()
        os.chmod(folder / "ro", 0o555)
        target = str(folder / "ro" / "out")
    proc = stream(folder, "--output_dir", target)
    assert proc.returncode == 2
    assert f"--output_dir {target} is not writable" in one_line(proc)


@pytest.mark.slow
def test_output_table_without_credentials_or_local_endpoints(folder):
    """No interactive prompt, no retries: one line naming both ways out."""
    proc = stream(folder, "--output_table", "my-project:images.embeddings")
    assert proc.returncode == 2
    line = one_line(proc)
    assert "gcloud auth application-default login" in line and "--local_endpoints" in line


@pytest.mark.slow
def test_weights_file_that_does_not_exist(folder):
    proc = run_cli(
        "streaming.main",
        "--input_dir",
        str(folder / "in"),
        "--output_dir",
        str(folder / "o"),
        "--weights",
        str(folder / "w.weights.h5"),
        env=clean_env(folder),
    )
    assert proc.returncode == 2
    assert str(folder / "w.weights.h5") in one_line(proc)


@pytest.mark.slow
@pytest.mark.parametrize(
    "module, argv, bad, closest",
    [
        (
            "publisher.backfill",
            ["gs://bucket", "--topic", "projects/my-project/topics/images", "--dry-rnu"],
            "--dry-rnu",
            "--dry-run",
        ),
        (
            "analysis.search",
            ["x.jpg", "--output_dir", "o", "--wieghts", "random:0"],
            "--wieghts",
            "--weights",
        ),
        ("analysis.map", ["--output_dir", "o", "--colour_by", "date"], "--colour_by", "--color_by"),
        ("tools.samples", ["d", "--cuont", "3"], "--cuont", "--count"),
    ],
)
def test_every_cli_refuses_unknown_options_naming_the_closest(tmp_path, module, argv, bad, closest):
    proc = run_cli(module, *argv, env=clean_env(tmp_path))
    assert proc.returncode == 2
    line = one_line(proc)
    assert f"unknown option {bad}" in line
    assert closest.replace("-", "_") in line.replace("-", "_").split("did you mean ")[1]


@pytest.mark.slow
@pytest.mark.parametrize(
    "module, argv",
    [
        (
            "publisher.backfill",
            [
                "gs://b-ok",
                "--topic",
                "projects/my-project/topics/images",
                "--local_endpoints",
                "--max_in_flight",
                "x",
            ],
        ),
        ("analysis.search", ["x.jpg", "--output-dir", "o", "--max-pixels", "x"]),
        ("tools.samples", ["d", "--with_bad", "--count", "x"]),
    ],
)
def test_both_spellings_reach_the_option(tmp_path, module, argv):
    """`--a_b` and `--a-b` both parse: the error is about the value, not the name."""
    proc = run_cli(module, *argv, env=clean_env(tmp_path))
    assert proc.returncode == 2
    assert "invalid int value: 'x'" in one_line(proc)


@pytest.mark.slow
def test_backfill_without_credentials_says_how_to_get_them(tmp_path):
    proc = run_cli(
        "publisher.backfill",
        "gs://my-bucket",
        "--topic",
        "projects/my-project/topics/images",
        env=clean_env(tmp_path),
    )
    assert proc.returncode == 2
    line = one_line(proc)
    assert "gcloud auth application-default login" in line and "--local_endpoints" in line


@pytest.mark.slow
def test_importing_the_job_does_not_import_tensorflow():
    """`embed-stream --help` and the launcher stay fast: TensorFlow loads only where a
    model is built."""
    code = (
        "import sys, streaming.main\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'tensorflow_hub', 'apache_beam'))\n"
        "print(heavy)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.slow
def test_help_shows_defaults_and_mentions_beam_options(tmp_path):
    proc = run_cli("streaming.main", "--help", env=clean_env(tmp_path))
    assert proc.returncode == 0
    assert "(default: 8)" in proc.stdout and "Beam and Dataflow pipeline options" in proc.stdout


def test_respell_uses_the_spelling_the_tool_defines():
    known = {"--output_dir", "--dry-run"}
    assert cli.respell(
        ["--output-dir=o", "--dry_run", "--other-x", "--", "--output-dir"], known
    ) == ["--output_dir=o", "--dry-run", "--other-x", "--", "--output-dir"]


def test_closest_option():
    known = ["--output_dir", "--output_table", "--input_dir"]
    assert cli.closest("--ouput_dir", known) == "--output_dir"
    assert cli.closest("--zzz", known) is None


@pytest.mark.parametrize(
    "value, project, expected",
    [
        ("p-roject:d.t", None, "p-roject:d.t"),
        ("my-project.d.t", None, "my-project:d.t"),
        ("d.t", "my-project", "my-project:d.t"),
    ],
)
def test_table_ids(value, project, expected):
    assert names.full_table_id(value, project) == expected


def test_pubsub_paths():
    assert (
        names.pubsub_path("images", "subscriptions", "my-project")
        == "projects/my-project/subscriptions/images"
    )
    with pytest.raises(ValueError, match="projects/PROJECT/topics/NAME"):
        names.pubsub_path("images", "topics")
    with pytest.raises(ValueError):
        names.pubsub_path("projects/my-project/subscriptions/goog-x", "subscriptions")
