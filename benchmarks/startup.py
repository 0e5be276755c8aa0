"""Start-up time of `embed-stream --help`: the median of whole-process runs.

  python benchmarks/startup.py [--runs 5] [--out benchmarks/results]

Each run is a fresh interpreter (`python -m streaming.main --help`, what the console
script runs), so the figure includes Python's own start-up and every import the job
makes before it can answer. Wall time depends on what else the machine is doing; the
child's CPU time (user + system) is recorded next to it. Writes startup.json and
startup.md under --out.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _common  # noqa: E402


def child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def time_help() -> tuple[float, float]:
    """(wall s, CPU s) of one `embed-stream --help` process."""
    cpu, t = child_cpu(), time.perf_counter()
    subprocess.run([sys.executable, "-m", "streaming.main", "--help"], cwd=_common.ROOT,
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t, child_cpu() - cpu


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5, help="processes to time (default 5)")
    p.add_argument("--out", default=_common.RESULTS, help="folder for startup.json/.md")
    args = p.parse_args(argv)
    info = _common.print_header("embed-stream --help start-up", {"runs": args.runs})
    runs = [time_help() for _ in range(args.runs)]
    walls, cpus = [w for w, _ in runs], [c for _, c in runs]
    result = {**info, "command": "python -m streaming.main --help",
              "wall_s": [round(w, 3) for w in walls], "cpu_s": [round(c, 3) for c in cpus],
              "median_wall_s": round(statistics.median(walls), 3),
              "median_cpu_s": round(statistics.median(cpus), 3),
              "load_average_after": round(os.getloadavg()[0], 2)}
    _common.write_json(os.path.join(args.out, "startup.json"), result)
    md = ["# `embed-stream --help` start-up", "",
          f"{args.runs} fresh processes of `{result['command']}` on "
          f"{info['machine']['cores']} cores ({info['date']}); load average "
          f"{result['load_average_after']} after the runs.", "",
          _common.table(["", "median", "runs"], [
              ["wall time (s)", result["median_wall_s"],
               ", ".join(f"{w:.2f}" for w in walls)],
              ["CPU time (s)", result["median_cpu_s"], ", ".join(f"{c:.2f}" for c in cpus)]]),
          ""]
    with open(os.path.join(args.out, "startup.md"), "w") as f:
        f.write("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
