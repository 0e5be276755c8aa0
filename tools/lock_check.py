"""Checks that an environment holds exactly the lock: one line per difference.

    python tools/lock_check.py requirements.lock [requirements-gpu.lock]
    python tools/lock_check.py --freeze FREEZE.txt requirements.lock   # a freeze from elsewhere

The image build and CI run it with the environment's own interpreter after installing the
lock with `pip install --no-deps`: `pip freeze --all` must list every locked distribution
at its locked version and nothing else, so the environment is the lock and not merely
consistent (`pip check`). Not compared: pip, the installer that comes with the
interpreter, and this project, installed from source. Standard library only, so it runs
in any environment. Exits 0 when they agree, 1 with one line per difference otherwise.
"""

import argparse
import re
import subprocess
import sys
from collections.abc import Iterable

NOT_LOCKED = ("pip", "image-embeddings")


def canonical(name: str) -> str:
    """The distribution name as pip compares it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lines: Iterable[str], source: str) -> dict[str, tuple[str, str]]:
    """{canonical name: (name, version)} of `name==version` lines, comments skipped.

    Args:
        lines: a lock file's or `pip freeze`'s lines.
        source: the file's name, for the error message.

    Returns:
        Every pin; a direct reference (`name @ URL`) keeps `@ URL` as its version.

    Raises:
        ValueError: a line that pins nothing (an editable install, an option).
    """
    found = {}
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:==\s*(\S+)|(@\s*\S+))", line)
        if not match:
            raise ValueError(f"{source}:{number}: not a `name==version` line: {line}")
        name, version, reference = match.groups()
        found[canonical(name)] = (name, version or reference)
    return found


def differences(
    locked: dict[str, tuple[str, str]], installed: dict[str, tuple[str, str]]
) -> list[str]:
    """One line per distribution whose installed version is not the locked one."""
    lines = []
    for key in sorted(locked.keys() | installed.keys()):
        if key in NOT_LOCKED:
            continue
        want, have = locked.get(key), installed.get(key)
        if have is None:
            lines.append(f"{want[0]}=={want[1]}: locked, not installed")
        elif want is None:
            lines.append(f"{have[0]}=={have[1]}: installed, not in the lock")
        elif have[1] != want[1]:
            lines.append(f"{want[0]}: installed {have[1]}, locked {want[1]}")
    return lines


def freeze() -> list[str]:
    """This interpreter's `pip freeze --all`, pip and the project left out."""
    excluded = [arg for name in NOT_LOCKED for arg in ("--exclude", name)]
    command = [sys.executable, "-m", "pip", "freeze", "--all", *excluded]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lock_check", description="Does this environment hold exactly the lock?"
    )
    parser.add_argument("locks", nargs="+", help="lock files (name==version lines), together")
    parser.add_argument(
        "--freeze",
        type=argparse.FileType(),
        help="compare this `pip freeze --all` output (- for stdin) instead of this interpreter's",
    )
    args = parser.parse_args(argv)
    try:
        locked = {}
        for path in args.locks:
            with open(path) as lock:
                locked.update(pins(lock, path))
        if args.freeze:
            installed = pins(args.freeze, args.freeze.name)
        else:
            installed = pins(freeze(), "pip freeze")
    except (OSError, ValueError, subprocess.CalledProcessError) as error:
        print(f"lock_check: {error}", file=sys.stderr)
        return 2
    found = differences(locked, installed)
    for line in found:
        print(f"lock_check: {line}", file=sys.stderr)
    if found:
        return 1
    print(f"lock_check: {len(locked)} distributions, exactly {' + '.join(args.locks)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
