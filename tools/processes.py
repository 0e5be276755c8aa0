"""Child processes of the tests and the benchmarks (embed-stream, embed-backfill).

A child writes its output to a log file as it runs, never to a pipe nobody reads (a
full pipe blocks the child: Beam and TensorFlow log a lot); it runs in its own session,
so stopping it stops what it started; `stop()` sends SIGTERM, then SIGKILL after a
grace period. Waiting is for a condition (`wait_until`), not for a fixed time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T = TypeVar("T")


class Child:
    """`argv` running in the background with its stdout and stderr in one log file.

    Args:
      argv: the command; `python_module(...)` builds one for `python -m MODULE`.
      log_path: where the output goes (default: a temporary file, removed on `stop`).
      env: variables added to this process's environment.
    """

    def __init__(
        self,
        argv: Sequence[str],
        log_path: str | None = None,
        env: dict | None = None,
        cwd: str = ROOT,
    ):
        self._own_log = log_path is None
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix="child-", suffix=".log")
            os.close(fd)
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.started = time.time()
        self.proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
            preexec_fn=_default_sigint,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def poll(self) -> int | None:
        return self.proc.poll()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log_tail(self, n: int = 4000) -> str:
        return self.output()[-n:]

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float | None = None) -> int:
        """The exit status; kills the child and raises TimeoutExpired after `timeout` s."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(grace=0)
            raise

    def stop(self, grace: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` s; returns the exit status."""
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def remove_log(self) -> None:
        if self._own_log and os.path.exists(self.log_path):
            os.unlink(self.log_path)

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()
        self.remove_log()


def _default_sigint() -> None:
    """A child started from a shell's background job inherits an ignored SIGINT (POSIX
    shells ignore it for `cmd &` without job control), and Python then never raises
    KeyboardInterrupt: the tests that press Ctrl-C need the default back."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def python_module(module: str, *args: str) -> list[str]:
    """`python -m MODULE ARGS` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def run(argv: Sequence[str], timeout: float, env: dict | None = None) -> tuple[int, str]:
    """Runs `argv` to the end: (exit status, stdout and stderr interleaved)."""
    with Child(argv, env=env) as child:
        code = child.wait(timeout)
        return code, child.output()


def python_json(code: str, timeout: float) -> tuple[object, str]:
    """Runs Python `code` in a fresh interpreter from the repository root and returns
    (the JSON its last stdout line holds, its stderr); fails the test if it fails."""
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    what: str = "condition",
    job: Child | None = None,
    interval: float = 0.5,
) -> T:
    """Polls `predicate` until it returns something truthy, and returns that.

    Raises:
      AssertionError: after `timeout` s, or as soon as the child `job` exits (with its
        log).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if job is not None and job.poll() is not None:
            raise AssertionError(
                f"{' '.join(job.proc.args[1:4])}... exited "
                f"({job.returncode}) while waiting for {what}:\n"
                f"{job.log_tail()}"
            )
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what}"
                + (f":\n{job.log_tail()}" if job is not None else "")
            )
        time.sleep(interval)


def tree_rss(pid: int) -> int:
    """Bytes resident in process `pid` and every descendant (psutil), 0 once it is gone."""
    return _tree_sum(pid, lambda p: p.memory_info().rss)


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of process `pid` and its live descendants (psutil), 0 once it is gone."""
    return _tree_sum(pid, lambda p: sum(p.cpu_times()[:2]))


def _tree_sum(pid: int, measure: Callable) -> float:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += measure(p)
        except psutil.Error:  # exited meanwhile
            pass
    return total


def cloud_job_args(
    subscription: str,
    table: str,
    vectors_bucket: str,
    images_bucket: str,
    dead_letter_table: str | None = None,
) -> list[str]:
    """`embed-stream` options of a job on the emulators: one subscription in, rows to
    `table` (and dead letters to `dead_letter_table`), vectors to `vectors_bucket`, the
    catch-up over `images_bucket`, random weights, batches flushed after 1 s."""
    dead = ["--dead_letter_table", dead_letter_table] if dead_letter_table else []
    return [
        "--input_subscription",
        subscription,
        "--output_table",
        table,
        *dead,
        "--output_gcs",
        f"gs://{vectors_bucket}/",
        "--buckets",
        images_bucket,
        "--weights",
        "random:0",
        "--local_endpoints",
        "--max_batch_duration_secs",
        "1",
    ]
