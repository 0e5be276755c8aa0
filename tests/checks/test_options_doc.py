"""docs/options.md against the job's own options, as test_flex_template.py checks
flex_template/metadata.json: the table lists every option `embed-stream` defines and
nothing else, plain defaults in it are the parser's, and every `--flag` the page mentions
is one the job accepts (its own or Beam's)."""

import argparse
import pathlib
import re

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from streaming.config.options import EmbedOptions

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "options.md").read_text()
FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9_]*)")


def job_options() -> dict[str, argparse.Action]:
    """dest -> argparse action of the job's own options, not Beam's."""
    parser = argparse.ArgumentParser()
    EmbedOptions._add_argparse_args(parser)
    return {a.dest: a for a in parser._actions if a.dest != "help"}


def table_rows() -> list[tuple[list[str], str]]:
    """(option names, default cell) of each row of the options table."""
    body = DOC.split("\n| option | default | |\n|---|---|---|\n", 1)
    assert len(body) == 2, "docs/options.md: the options table is missing"
    rows = []
    for line in body[1].split("\n\n", 1)[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 3, f"docs/options.md: not a table row: {line}"
        rows.append((FLAG.findall(cells[0]), cells[1]))
    return rows


DOCUMENTED = [name for names, _ in table_rows() for name in names]


def test_every_option_of_the_job_is_in_the_table():
    assert sorted(set(job_options()) - set(DOCUMENTED)) == []


def test_every_option_in_the_table_is_an_option_of_the_job():
    assert sorted(set(DOCUMENTED) - set(job_options())) == []
    assert len(DOCUMENTED) == len(set(DOCUMENTED)), "an option is in the table twice"


def plain_defaults() -> list[tuple[str, str]]:
    """(option, default) where a row's default cell is one plain value per option
    (a number, a `word`, or off); cells that explain themselves in words are skipped."""
    out = []
    for names, cell in table_rows():
        values = [v.strip() for v in cell.split(",")] if cell else []
        if len(values) == len(names):
            out += [
                (n, v) for n, v in zip(names, values) if re.fullmatch(r"[0-9.]+|`[^`\s]+`|off", v)
            ]
    return out


def test_plain_defaults_are_checked():
    assert len(plain_defaults()) >= 10


@pytest.mark.parametrize("name, documented", plain_defaults())
def test_the_documented_default_is_the_parsers(name, documented):
    default = job_options()[name].default
    if documented == "off":
        assert default in (False, None, ""), f"--{name}: default {default!r}, doc says off"
    elif documented.startswith("`"):
        assert str(default) == documented.strip("`"), f"--{name}: default {default!r}"
    else:
        assert float(default) == float(documented), f"--{name}: default {default!r}"


def test_every_flag_the_page_mentions_is_accepted():
    accepted = set(PipelineOptions([]).get_all_options()) | {"help"}
    assert sorted(set(FLAG.findall(DOC)) - accepted) == []
