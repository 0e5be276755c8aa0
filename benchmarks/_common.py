"""Shared helpers of the benchmarks: machine/versions, CPU accounting, the pipeline
subprocess with its peak memory, tables."""
from __future__ import annotations

import atexit
import shutil
import dataclasses
import json
import os
import platform
import resource
import sys
import tempfile
import threading
import time
from typing import Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from tests.processes import Child  # noqa: E402 - the one child-process runner
RESULTS = os.path.join(HERE, "results")
CHILD = os.path.join(HERE, "_child.py")
if ROOT not in sys.path:  # tools.samples (the synthetic images) lives at the repository root
    sys.path.append(ROOT)


def work_dir(path: Optional[str], prefix: str = "embed-bench-") -> str:
    """The folder for generated images and job outputs: `path` when given (kept, so the
    next run with the same `--workdir` reuses its images), else a new temporary folder
    that is removed when the script exits."""
    if path:
        os.makedirs(path, exist_ok=True)
        return path
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path
_CLK = os.sysconf("SC_CLK_TCK")


def quiet_tf() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# --------------------------------------------------------------------------- machine
def machine() -> dict:
    cpu_model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_gib = round(int(line.split()[1]) / 1024 ** 2, 1)
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    flags = " ".join(x for x in ("avx2", "fma", "avx512f", "avx512_bf16",
                                                 "amx_bf16") if x in have)
                    break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "usable_cores": usable, "cpu_model": cpu_model,
            "cpu_flags": flags, "memory_gib": mem_gib, "kernel": platform.release()}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for mod, name in (("apache_beam", "beam"), ("tensorflow", "tensorflow"), ("keras", "keras"),
                      ("PIL", "pillow"), ("numpy", "numpy")):
        try:
            out[name] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            out[name] = None
    return out


def print_header(title: str, settings: dict) -> dict:
    info = {"machine": machine(), "versions": versions(), "settings": settings,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    m, v = info["machine"], info["versions"]
    print(f"== {title} ==")
    print(f"machine: {m['cores']} cores ({m['usable_cores']} usable), {m['cpu_model']} "
          f"[{m['cpu_flags']}], {m['memory_gib']} GiB RAM, Linux {m['kernel']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in v.items()))
    print("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    return info


# --------------------------------------------------------------------------- CPU accounting
def busy_seconds() -> float:
    """CPU-seconds all cores spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    vals = [int(x) for x in parts]
    user, nice, system, idle, iowait, irq, softirq, steal = (vals + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / _CLK


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Meter:
    """Wall time and the CPU used by *other* processes during a measurement, so a
    number taken while something else ran on the machine can be recognised."""

    def __enter__(self):
        self.t0, self.busy0, self.own0 = time.perf_counter(), busy_seconds(), self_cpu()
        self.child_cpu = 0.0
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        busy = busy_seconds() - self.busy0
        own = self_cpu() - self.own0 + self.child_cpu
        self.own_cores = own / self.wall if self.wall else 0.0
        self.other_cores = max(0.0, (busy - own) / self.wall) if self.wall else 0.0
        return False


# --------------------------------------------------------------------------- subprocesses
def _tree_pids(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p in out:
            continue
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return out


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds (user+system, own and reaped children) of `pid`'s process tree."""
    total = 0
    for p in _tree_pids(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15])
        except (OSError, ValueError, IndexError):
            continue
    return total / _CLK


def _tree_rss_kib(pid: int) -> tuple[int, int]:
    """(sum of VmRSS, largest VmHWM) over `pid` and its descendants, in KiB.

    VmHWM (the process's own peak, reset by exec) catches peaks between two polls.
    ru_maxrss from wait4 is not used: on Linux it can carry the parent's RSS at fork."""
    total, hwm = 0, 0
    for p in _tree_pids(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                    elif line.startswith("VmHWM:"):
                        hwm = max(hwm, int(line.split()[1]))
        except (OSError, ValueError):
            continue
    return total, hwm


@dataclasses.dataclass
class ChildRun:
    argv: list
    rc: int
    wall: float
    started: float  # time.time() at Popen
    own_cores: float
    other_cores: float
    maxrss_mib: float  # ru_maxrss from wait4 (may include the parent's RSS at fork)
    tree_peak_mib: float  # peak of the tree's summed VmRSS and of each VmHWM (0.1 s poll)
    output: str
    trace: Optional[list] = None

    @property
    def peak_mib(self) -> float:
        return self.tree_peak_mib


def run_child(argv: Sequence[str], env: Optional[dict] = None, trace_path: Optional[str] = None,
              timeout: float = 900, log_path: Optional[str] = None) -> ChildRun:
    """Runs `python benchmarks/_child.py ARGV` (= python -m streaming.main ARGV) and
    measures its wall time, CPU, peak memory and the CPU used by others meanwhile."""
    meter = Meter().__enter__()
    started = time.time()
    child = Child([sys.executable, CHILD, *argv], log_path, env=_child_env(env, trace_path))
    proc = child.proc
    peak = [0]
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            peak[0] = max(peak[0], *_tree_rss_kib(proc.pid))
            stop.wait(0.1)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    deadline = time.monotonic() + timeout
    status, rusage = 0, None
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            _, status, rusage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stop.set()
    poller.join()
    meter.child_cpu = rusage.ru_utime + rusage.ru_stime
    meter.__exit__(None, None, None)
    child.stop()
    output = child.output()
    child.remove_log()
    trace = None
    if trace_path:
        trace = read_trace(trace_path)
    return ChildRun(list(argv), proc.returncode, meter.wall, started, meter.own_cores,
                    meter.other_cores, rusage.ru_maxrss / 1024, peak[0] / 1024, output, trace)


def read_trace(path: str) -> Optional[list]:
    """The events _child.py recorded (JSON lines), or None."""
    if not os.path.exists(path):
        return None
    events = []
    with open(path) as f:
        for line in f:
            try:
                events.append(json.loads(line))
            except ValueError:
                pass  # a line cut by a kill
    return events


def parse_summary(output: str) -> dict:
    """The numbers of embed-stream's summary (images embedded, dead letters, wall)."""
    out = {}
    for line in output.splitlines():
        if line.startswith("images embedded:"):
            out["embedded"] = int(line.split(":")[1])
        elif line.startswith("dead letters:"):
            out["dead_letters"] = int(line.split(":")[1])
        elif line.startswith("wall time:"):
            out["summary_wall_s"] = float(line.split()[2])
    return out


# --------------------------------------------------------------------------- tables
def table(headers: Sequence[str], rows: Sequence[Sequence], align: Optional[str] = None) -> str:
    """A GitHub markdown table (also readable as plain text)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = align or "l" + "r" * (len(headers) - 1)

    def fmt(r):
        return "| " + " | ".join(c.ljust(w) if a == "l" else c.rjust(w)
                                 for c, w, a in zip(r, widths, align)) + " |"
    sep = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else ("-" * (w + 2))
                         for w, a in zip(widths, align)) + "|"
    return "\n".join([fmt(cells[0]), sep] + [fmt(r) for r in cells[1:]])


def write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, default=str)
        f.write("\n")


def _child_env(env: Optional[dict], trace_path: Optional[str]) -> dict:
    """The variables _child.py runs with on top of this process's environment."""
    full_env = {"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
                "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    full_env.update(env or {})
    if trace_path:
        full_env["EMBED_BENCH_TRACE"] = trace_path
        if os.path.exists(trace_path):
            os.unlink(trace_path)
    return full_env


class BackgroundChild(Child):
    """`python benchmarks/_child.py ARGV` (= python -m streaming.main ARGV) running in
    the background, in its own session, with its log in a file and its peak memory polled."""

    def __init__(self, argv: Sequence[str], log_path: str, env: Optional[dict] = None,
                 trace_path: Optional[str] = None):
        self.trace_path = trace_path
        super().__init__([sys.executable, CHILD, *argv], log_path,
                         env=_child_env(env, trace_path))
        self.peak_kib = 0
        self.cpu_s = 0.0  # CPU seconds of the job's tree, last polled
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, daemon=True)
        self._poller.start()

    def _poll(self):
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, *_tree_rss_kib(self.proc.pid))
            self.cpu_s = max(self.cpu_s, _tree_cpu_s(self.proc.pid))
            self._stop.wait(0.2)

    def stop(self, grace: float = 30.0) -> Optional[list]:
        """SIGTERM, then SIGKILL after `grace` s; returns the trace."""
        super().stop(grace)
        self._stop.set()
        self._poller.join()
        return read_trace(self.trace_path) if self.trace_path else None


QUIET = {"threshold": None, "max_wait": 60.0, "waited": 0.0}


def wait_quiet(threshold: Optional[float] = None, max_wait: Optional[float] = None) -> float:
    """Waits (at most max_wait s) until other processes use less than `threshold` cores
    over a 1 s sample; returns the last sample. No-op unless configured (--quiet_below)."""
    threshold = QUIET["threshold"] if threshold is None else threshold
    if threshold is None:
        return 0.0
    max_wait = QUIET["max_wait"] if max_wait is None else max_wait
    t0 = time.monotonic()
    while True:
        b0, o0, w0 = busy_seconds(), self_cpu(), time.perf_counter()
        time.sleep(1.0)
        other = max(0.0, (busy_seconds() - b0 - (self_cpu() - o0)) / (time.perf_counter() - w0))
        if other < threshold or time.monotonic() - t0 > max_wait:
            QUIET["waited"] += time.monotonic() - t0
            return other
