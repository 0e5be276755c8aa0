"""What every command-line tool of the project shares: option spellings, unknown
options, one-line errors with their exit codes, and quiet logs.

Each tool accepts `--a_b` and `--a-b` for its own options, refuses an unknown option
with the closest valid one named, and reports any failure as one line on stderr (exit
2 for bad usage, 1 at run time, 130 after Ctrl-C); the traceback goes to the debug
log, which `--verbose` shows. Light on purpose: `--help` must not import Beam or
TensorFlow.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import logging
import os
import sys
from collections.abc import Iterable, Sequence

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

CREDENTIALS_HINT = (
    "no Google Cloud credentials found: run `gcloud auth "
    "application-default login` (or set GOOGLE_APPLICATION_CREDENTIALS), or "
    "pass --local_endpoints to use the emulators"
)
SPELLING_NOTE = "Options may be spelled --a_b or --a-b."

# Log lines that say nothing a user can act on; shown with --verbose only.
_NOISE = (
    # Beam's RunInference looks for its optional torch-based model manager.
    "Resource module is not available",
    # PipelineOptions logs unknown flags; the tools refuse them with a clearer error.
    "Discarding unparseable args",
)


class UsageError(ValueError):
    """Bad usage or configuration, found before any work starts: exit 2."""


def respell(argv: Sequence[str], known: Iterable[str]) -> list[str]:
    """Rewrites `--a-b` / `--a_b` to the spelling in `known` (values are left alone).

    Args:
      argv: command-line tokens.
      known: the long options the tool defines, as spelled there.
    """
    known = set(known)
    out: list[str] = []
    for i, token in enumerate(argv):
        if token == "--":  # everything after it is positional
            out.extend(argv[i:])
            break
        if token.startswith("--"):
            name, eq, value = token.partition("=")
            if name not in known:
                for candidate in (
                    "--" + name[2:].replace("-", "_"),
                    "--" + name[2:].replace("_", "-"),
                ):
                    if candidate in known:
                        name = candidate
                        break
            token = name + eq + value
        out.append(token)
    return out


def closest(option: str, known: Iterable[str]) -> str | None:
    """The known option most like `option` (difflib), or None if none is close."""
    name = option.partition("=")[0]
    normal = lambda s: s.lstrip("-").replace("-", "_").lower()
    by_normal = {normal(k): k for k in known}
    match = difflib.get_close_matches(normal(name), list(by_normal), n=1, cutoff=0.6)
    return by_normal[match[0]] if match else None


def unknown_option_message(extra: Sequence[str], known: Iterable[str]) -> str:
    """One line about the first unrecognised token, naming the closest valid option."""
    options = [t for t in extra if t.startswith("-")]
    if not options:
        return f"unexpected argument {extra[0]!r}"
    token = options[0].partition("=")[0]
    best = closest(token, known)
    return f"unknown option {token}" + (f"; did you mean {best}?" if best else "")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout and shows every default that is set."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (
            "%(default)" not in text
            and action.default not in (None, False, [])
            and action.default is not argparse.SUPPRESS
            and action.option_strings
        ):
            text += " (default: %(default)s)"
        return text


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's rules: both spellings of every long option, no
    abbreviations (a prefix is a typo waiting to happen), unknown options refused with
    the closest valid one named, and errors in one line with exit 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        if kwargs.get("epilog") is None:
            kwargs["epilog"] = SPELLING_NOTE
        super().__init__(*args, **kwargs)

    def long_options(self) -> set[str]:
        return {s for a in self._actions for s in a.option_strings if s.startswith("--")}

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args(respell(args, self.long_options()), namespace)

    def parse_args(self, args=None, namespace=None):
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            self.error(unknown_option_message(extra, self.long_options()))
        return parsed

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def describe(error: BaseException, permission: str | None = None) -> str:
    """One line for an error: what failed and why, without a traceback. A refusal
    names the permission (the service's, else `permission`, what the caller was doing)
    and the role of infra/ that grants it."""
    try:
        from google.api_core import exceptions as gexc
        from google.auth import exceptions as auth_exc
    except ImportError:  # pragma: no cover - the google clients are dependencies
        gexc = auth_exc = None
    if auth_exc is not None and isinstance(error, auth_exc.DefaultCredentialsError):
        return CREDENTIALS_HINT
    text = " ".join(str(error).split()) or type(error).__name__
    if gexc is not None:
        if isinstance(error, gexc.NotFound):
            return f"not found: {text}"
        if isinstance(error, (gexc.Forbidden, gexc.PermissionDenied)):
            from streaming.config.permissions import needed

            hint = needed(text, permission)
            return f"permission denied: {text}" + (f" ({hint})" if hint else "")
        if isinstance(error, gexc.Unauthorized):
            return f"not authorised ({text}); {CREDENTIALS_HINT}"
    if isinstance(error, (ValueError, OSError)) and not type(error).__module__.startswith(
        ("google", "apache_beam")
    ):
        return text
    return f"{type(error).__name__}: {text}"


def fail(prog: str, error: BaseException, usage: bool = False) -> int:
    """Prints `prog: error: <one line>` on stderr, logs the traceback at debug level,
    and returns the exit code (2 for usage errors, 1 otherwise)."""
    logging.getLogger(prog).debug("%s failed", prog, exc_info=error)
    print(f"{prog}: error: {describe(error)}", file=sys.stderr, flush=True)
    return EXIT_USAGE if usage or isinstance(error, UsageError) else EXIT_RUNTIME


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_NOISE)


def setup_logging(verbose: bool) -> None:
    """WARNING and up in one-line form; DEBUG (tracebacks, TensorFlow's C++ log, Beam's
    notices) with `verbose`. Call before TensorFlow is imported."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    root = logging.getLogger()
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        return
    # TensorFlow's C++ start-up log (e.g. "failed call to cuInit" on a CPU machine)
    # is at ERROR level; Python-side errors still surface as exceptions.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for handler in root.handlers:
        handler.addFilter(_DropNoise())
    # INFO for the tools' own progress lines; libraries speak at WARNING and up.
    root.setLevel(logging.WARNING)
    for name in ("embed-stream", "embed-backfill"):
        logging.getLogger(name).setLevel(logging.INFO)


@contextlib.contextmanager
def quiet_native_stderr(enabled: bool = True):
    """Drops what native code writes to file descriptor 2 inside the block (TensorFlow's
    C++ start-up lines such as "Could not find cuda drivers" or "failed call to cuInit",
    printed before its log level applies) while Python's own stderr keeps working."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    python_stderr = sys.stderr
    sys.stderr = open(os.dup(saved), "w", buffering=1, encoding="utf-8", errors="replace")
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        sys.stderr.close()
        sys.stderr = python_stderr


def check_credentials() -> None:
    """Raises UsageError naming the fixes when Google's default credentials are
    missing, instead of letting a client retry or open an interactive prompt."""
    import google.auth
    from google.auth import exceptions as auth_exc

    auth_log = logging.getLogger("google.auth")
    level = auth_log.level
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        auth_log.setLevel(logging.ERROR)  # its warnings say what the line below says
    try:
        google.auth.default()
    except auth_exc.DefaultCredentialsError:
        raise UsageError(CREDENTIALS_HINT) from None
    finally:
        auth_log.setLevel(level)
