"""How the Flex Template launcher runs the entry file, for tests that run a documented
`gcloud dataflow flex-template run` here.

The launcher runs `FLEX_TEMPLATE_PYTHON_PY_FILE` inside the image with the template's
parameters as `--name=value` flags, the launch's pipeline settings as Beam's options,
and `--template_location` naming where the entry file must write the job file, which
the launcher then submits. `launcher_argv` turns a documented command into that call.
"""

from __future__ import annotations

import shlex

# gcloud's launch flags and the Beam option each becomes.
_SETTINGS = {
    "--region": "region",
    "--project": "project",
    "--service-account-email": "service_account_email",
    "--staging-location": "staging_location",
    "--temp-location": "temp_location",
    "--worker-machine-type": "machine_type",
    "--max-workers": "max_num_workers",
}
_SWITCHES = {"--enable-streaming-engine": "enable_streaming_engine", "--update": "update"}
_LISTS = ("--parameters", "--additional-pipeline-options")


def launcher_argv(gcloud: list[str], job_file: str) -> list[str]:
    """The entry file's argv for a `gcloud dataflow flex-template run JOB ...` argv.

    Args:
      gcloud: the command, split (`gcloud dataflow flex-template run NAME --flag v ...`).
      job_file: the --template_location the launcher passes.
    """
    assert gcloud[:4] == ["gcloud", "dataflow", "flex-template", "run"], gcloud[:4]
    argv = ["--runner=DataflowRunner", f"--job_name={gcloud[4]}", f"--template_location={job_file}"]
    rest = gcloud[5:]
    i = 0
    while i < len(rest):
        flag = rest[i]
        if flag in _SWITCHES:
            argv.append(f"--{_SWITCHES[flag]}")
            i += 1
            continue
        value = rest[i + 1]
        i += 2
        if flag in _LISTS:
            for pair in _split_pairs(value):
                name, _, v = pair.partition("=")
                argv.append(f"--{name}={v}")
        elif flag in _SETTINGS:
            argv.append(f"--{_SETTINGS[flag]}={value}")
        elif flag == "--template-file-gcs-location":
            pass  # the spec that names the image; the launcher is already inside it
        else:
            raise ValueError(f"launcher_argv: no mapping for {flag}")
    return argv


def _split_pairs(value: str) -> list[str]:
    """`a=1,b=2` -> [`a=1`, `b=2`]; a value that holds commas keeps them when the next
    piece has no `=` (gcloud's `^;^` escapes are not used in the docs)."""
    pairs: list[str] = []
    for piece in value.split(","):
        if "=" in piece or not pairs:
            pairs.append(piece)
        else:
            pairs[-1] += "," + piece
    return pairs


def quoted(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)
