"""The SQL that ships with the table (`schemas/sql/*.sql`), rendered safely.

Every file names its tables with placeholders, filled here:

  {embeddings}    the embeddings table (PROJECT:DATASET.TABLE or PROJECT.DATASET.TABLE)
  {dead_letters}  the dead-letter table
  {current}       the current-embeddings view; when no view is given, the view's own
                  query (`current_embeddings.sql`) is inlined as a subquery
  {top_k}, {num_lists}  small integers (VECTOR_SEARCH's top_k, the IVF list count)

Rendering is Python's `str.format`: `{{` and `}}` are literal
braces, e.g. in JSON option strings. Table ids are checked against a strict pattern
and back-quoted, integers are range-checked, and unknown or missing placeholders are
refused, so nothing a user types reaches the SQL text; everything else (vectors,
names, fingerprints, k) goes in as query parameters (`@name`).

Each file starts with comment lines; two of them are read by code and tests:

  -- requires: <BigQuery feature>   the bqemulator lacks it (VECTOR_SEARCH, ...)
  -- params: @a TYPE, @b TYPE        the query parameters it uses

`python -m analysis.sql NAME --embeddings P:D.T [--dead_letters ...]` prints a
rendered file (to pipe into `bq query --use_legacy_sql=false`).
"""

from __future__ import annotations

import re
import string
import sys
from collections.abc import Sequence
from importlib import resources

import schemas
from streaming.config import cli

# The one grammar of table ids and the one quoting of them in SQL, shared with the
# pipeline's catch-up; re-exported for the tests and callers of this module.
from streaming.config.names import Fragment, parse_table_id, table_ref  # noqa: F401

TABLE_PLACEHOLDERS = ("embeddings", "dead_letters", "current")
INT_PLACEHOLDERS = {"top_k": (1, 10_000), "num_lists": (1, 5_000)}
KNOWN_PLACEHOLDERS = TABLE_PLACEHOLDERS + tuple(INT_PLACEHOLDERS)
CURRENT_VIEW_FILE = "current_embeddings.sql"

_REQUIRES = re.compile(r"^--[ \t]*requires:[ \t]*(.+?)[ \t]*$", re.M)
_PARAMS = re.compile(r"^--[ \t]*params:[ \t]*(.*?)[ \t]*$", re.M)
_PARAM_USE = re.compile(r"@([A-Za-z_][A-Za-z0-9_]*)")


def list_files() -> list[str]:
    """The shipped SQL files, sorted."""
    root = resources.files(schemas).joinpath("sql")
    return sorted(p.name for p in root.iterdir() if p.name.endswith(".sql"))


def text(name: str) -> str:
    if "/" in name or "\\" in name or not name.endswith(".sql"):
        raise ValueError(f"not a shipped SQL file name: {name!r}")
    return schemas.sql(name)


def placeholders(sql_text: str) -> list[str]:
    """The `{placeholder}` names a file uses, in order of first use."""
    seen: list[str] = []
    for _, field, _, _ in string.Formatter().parse(sql_text):
        if field is not None and field not in seen:
            seen.append(field)
    return seen


def requires(sql_text: str) -> str | None:
    """The `-- requires:` header: the BigQuery feature the emulator lacks, or None."""
    m = _REQUIRES.search(_header(sql_text))
    return m.group(1) if m else None


def declared_params(sql_text: str) -> dict[str, str]:
    """`-- params: @a TYPE, @b TYPE` -> {"a": "TYPE", ...}."""
    out: dict[str, str] = {}
    for m in _PARAMS.finditer(_header(sql_text)):
        for item in filter(None, (s.strip() for s in m.group(1).split(","))):
            name, _, typ = item.partition(" ")
            out[name.lstrip("@")] = typ.strip()
    return out


def used_params(sql_text: str) -> set[str]:
    """Query parameters (`@name`) used in the SQL body (comments and strings removed)."""
    return set(_PARAM_USE.findall(strip_comments_and_strings(sql_text)))


def _header(sql_text: str) -> str:
    lines = []
    for line in sql_text.splitlines():
        if line.strip() and not line.lstrip().startswith("--"):
            break
        lines.append(line.strip())
    return "\n".join(lines)


def strip_comments_and_strings(sql_text: str) -> str:
    """The SQL with `--`/`#`/`/* */` comments removed and string literals emptied (so
    brackets and @ inside them are not counted). Raises ValueError on an unterminated
    string or comment."""
    out, i, n = [], 0, len(sql_text)
    while i < n:
        c = sql_text[i]
        if sql_text.startswith("--", i) or c == "#":
            j = sql_text.find("\n", i)
            i = n if j < 0 else j
        elif sql_text.startswith("/*", i):
            j = sql_text.find("*/", i + 2)
            if j < 0:
                raise ValueError("unterminated /* comment")
            i = j + 2
        elif c in "'\"`":
            quote = sql_text[i : i + 3] if sql_text[i : i + 3] in ("'''", '"""') else c
            j = i + len(quote)
            while True:
                if j >= n:
                    raise ValueError(f"unterminated string starting at offset {i}")
                if sql_text[j] == "\\":
                    j += 2
                    continue
                if sql_text.startswith(quote, j):
                    break
                j += 1
            out.append(quote + quote if c != "`" else "`x`")
            i = j + len(quote)
        else:
            out.append(c)
            i += 1
    return "".join(out)


def structural_problems(sql_text: str) -> list[str]:
    """What a structural check finds wrong with a (raw, unrendered) file: unbalanced
    brackets, unterminated strings, unknown placeholders, undeclared parameters."""
    problems = []
    try:
        unknown = [p for p in placeholders(sql_text) if p not in KNOWN_PLACEHOLDERS]
        comments = "\n".join(
            line for line in sql_text.splitlines() if line.lstrip().startswith("--")
        )
        in_comments = placeholders(comments)
    except ValueError as e:  # a lone { or }
        return [f"bad placeholder syntax: {e}"]
    if unknown:
        problems.append(f"unknown placeholders {unknown}")
    if in_comments:
        # a rendered subquery would spill out of the comment line
        problems.append(f"placeholders inside comments {in_comments} (write {{{{name}}}})")
    try:
        body = strip_comments_and_strings(sql_text)
    except ValueError as e:
        return problems + [str(e)]
    stack = []
    pairs = {")": "(", "]": "[", "}": "{"}
    for pos, c in enumerate(body):
        if c in "([{":
            stack.append(c)
        elif c in pairs:
            if not stack or stack.pop() != pairs[c]:
                problems.append(f"unbalanced {c!r} at offset {pos} of the comment-free text")
                break
    if stack:
        problems.append(f"unclosed {stack}")
    undeclared = used_params(sql_text) - set(declared_params(sql_text))
    if undeclared:
        problems.append(f"parameters used but not declared in '-- params:': {sorted(undeclared)}")
    unused = set(declared_params(sql_text)) - used_params(sql_text)
    if unused:
        problems.append(f"parameters declared but not used: {sorted(unused)}")
    if not body.strip():
        problems.append("no SQL")
    return problems


def current_relation(embeddings: str, view: str | None = None) -> Fragment:
    """What `{current}` becomes: the view if one is named, else the view's query
    (schemas/sql/current_embeddings.sql, minus its CREATE VIEW line) as a subquery."""
    if view:
        return table_ref(view)
    body = text(CURRENT_VIEW_FILE)
    body = "\n".join(line for line in body.splitlines() if not line.lstrip().startswith("--"))
    body = re.sub(
        r"^\s*CREATE\s+(?:OR\s+REPLACE\s+)?VIEW\s+(?:IF\s+NOT\s+EXISTS\s+)?"
        r"\{current\}\s+AS\s+",
        "",
        body,
        count=1,
        flags=re.I,
    )
    if "{current}" in body:
        raise ValueError(f"cannot inline {CURRENT_VIEW_FILE}: it refers to {{current}}")
    inner = _format(body, {"embeddings": table_ref(embeddings)})
    return Fragment("(\n" + inner.strip().rstrip(";") + "\n)")


def render(
    name: str,
    *,
    embeddings: str | None = None,
    dead_letters: str | None = None,
    current: str | None = None,
    current_view: str | None = None,
    **ints: int,
) -> str:
    """A shipped file with its placeholders filled.

    Args:
      name: file name under schemas/sql/.
      embeddings, dead_letters: table ids (P:D.T or P.D.T).
      current: the current view's table id; or leave it out and give `embeddings`,
        and the view's query is inlined. (`current_view` is an alias.)
      ints: `top_k`, `num_lists` where the file uses them.
    """
    sql_text = text(name)
    values: dict[str, str] = {}
    for field in placeholders(sql_text):
        if field == "embeddings" or field == "dead_letters":
            table = embeddings if field == "embeddings" else dead_letters
            if not table:
                raise ValueError(f"{name} needs the {field} table")
            values[field] = table_ref(table)
        elif field == "current":
            view = current or current_view
            if not view and not embeddings:
                raise ValueError(f"{name} needs the current view or the embeddings table")
            values[field] = (
                current_relation(embeddings or "", view) if not view else table_ref(view)
            )
        elif field in INT_PLACEHOLDERS:
            if field not in ints:
                raise ValueError(f"{name} needs {field}")
            values[field] = str(_checked_int(field, ints[field]))
        else:
            raise ValueError(f"{name}: unknown placeholder {{{field}}}")
    extra = set(ints) - set(values)
    if extra:
        raise ValueError(f"{name} has no placeholders {sorted(extra)}")
    return _format(sql_text, values)


def without_comment_lines(sql_text: str) -> str:
    """The SQL without its whole-line `--` comments (what is sent to BigQuery: the
    emulator counts `@name` in comments as parameters)."""
    return (
        "\n".join(
            line for line in sql_text.splitlines() if not line.lstrip().startswith("--")
        ).strip()
        + "\n"
    )


def _checked_int(field: str, value) -> int:
    lo, hi = INT_PLACEHOLDERS[field]
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{field} must be an integer in [{lo}, {hi}], not {value!r}")
    return value


def _format(sql_text: str, values: dict[str, str]) -> str:
    return sql_text.format(**values)


def suggest_num_lists(rows: int) -> int:
    """A starting IVF list count: rows/1000 up to a million rows, sqrt(rows) above
    (the usual IVF rule of thumb), within BigQuery's 1..5000."""
    guess = rows // 1000 if rows <= 1_000_000 else int(rows**0.5)
    return max(1, min(5000, guess))


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(
        prog="python -m analysis.sql",
        description="Print a shipped SQL file with its table placeholders filled in.",
    )
    parser.add_argument("name", nargs="?", help="file under schemas/sql/ (omit to list them)")
    parser.add_argument("--embeddings", "--table", dest="embeddings", help="embeddings table P:D.T")
    parser.add_argument(
        "--dead_letters", "--dead-letters", dest="dead_letters", help="dead-letter table P:D.T"
    )
    parser.add_argument(
        "--current",
        help="current-embeddings view P:D.V (default: inline the view's query over --embeddings)",
    )
    parser.add_argument("--top_k", "--top-k", dest="top_k", type=int, default=None)
    parser.add_argument("--num_lists", "--num-lists", dest="num_lists", type=int, default=None)
    args = parser.parse_args(argv)
    if not args.name:
        for name in list_files():
            feature = requires(text(name))
            print(name + (f"  (requires {feature})" if feature else ""))
        return 0
    ints = {
        k: v for k, v in (("top_k", args.top_k), ("num_lists", args.num_lists)) if v is not None
    }
    try:
        print(
            render(
                args.name,
                embeddings=args.embeddings,
                dead_letters=args.dead_letters,
                current=args.current,
                **ints,
            )
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
