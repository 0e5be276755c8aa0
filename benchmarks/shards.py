"""Vector shards at the rates users run: objects per 1,000 images and rows' waits.

  .venv/bin/python benchmarks/shards.py [--quick] [--out DIR]

A simulation of the streaming job's shard buffer with timers that fire on time, as on
Dataflow, driving the job's own decisions (`streaming.sinks.vectors`: `RateKeys` picks
each vector's key, `on_vector` says when the key's open shard closes). Uploads arrive at
random (a Poisson process) at each offered rate, for `--seconds` of traffic (at least
`--images`, at most 100,000); each arrival first fires the timers due before it. Per
rate: shards written per 1,000 images (each one Cloud Storage write, a Class A
operation) and the time a row waits for its shard (p50, p95, max). Beside them, the
former rule (16 keys, every shard closed at the idle gap). No machine's speed enters:
the result is the rule's. The local runner's own figures at the rates this machine
offers are in stream.{json,md}.
Writes shards.{json,md}.
"""

from __future__ import annotations

import heapq
import random
import statistics
import sys

import _common as C

from streaming.config import flags
from streaming.sinks import vectors

RATES = (1, 5, 20, 200, 1000, 5000)  # images a second offered to the job
GOALS = {20: 50, 200: 10}  # most shards per 1,000 images at that rate
MAX_IMAGES = 100_000  # a run's span is cut to this many images at high rates


class _FormerKeys:
    """The rule before shards followed the traffic: `keys` random keys, always."""

    def __init__(self, keys: int):
        self._keys = keys

    def __call__(self, element):
        return random.randrange(self._keys), element


def _former_on_vector(n, first, rate, now, size, wait_secs, idle_secs):
    if n >= size:
        return None, rate
    return vectors.flush_at(now if first is None else first, now, wait_secs, idle_secs), rate


def simulate(
    rate: float,
    seconds: float,
    rule: str,
    seed: int,
    size: int = flags.DEFAULT_VECTORS_PER_SHARD,
    wait_secs: float = flags.DEFAULT_SHARD_WAIT_SECS,
    idle_secs: float = flags.DEFAULT_SHARD_IDLE_SECS,
    max_keys: int = flags.DEFAULT_SHARD_KEYS,
) -> dict:
    """One run of `seconds` of Poisson arrivals at `rate` through `rule` ("traffic": the
    job's; "former": 16 keys, the idle gap always)."""
    rng = random.Random(seed)
    random.seed(seed)  # the key pickers draw from the module's generator, as in the job
    now = [0.0]
    if rule == "traffic":
        vectors.RateKeys._rate, vectors.RateKeys._at = 0.0, None
        pick, decide = (
            vectors.RateKeys(size, wait_secs, max_keys, clock=lambda: now[0]),
            (vectors.on_vector),
        )
    else:
        pick, decide = _FormerKeys(max_keys), _former_on_vector
    open_shards: dict[int, list[float]] = {}  # key -> arrival times in its open shard
    first: dict[int, float] = {}
    key_rate: dict[int, tuple[float, float]] = {}
    timers: list[tuple[float, int, int]] = []  # (when, key, generation)
    generation: dict[int, int] = {}
    shards, waits = [], []

    def close(key: int, at: float) -> None:
        arrivals = open_shards.pop(key, [])
        first.pop(key, None)
        generation[key] = generation.get(key, 0) + 1  # a set timer is now stale
        if arrivals:
            shards.append(len(arrivals))
            waits.extend(at - t for t in arrivals)

    t = 0.0
    while True:
        t += rng.expovariate(rate)
        if t > seconds:
            break
        while timers and timers[0][0] <= t:  # timers fire on time, before later arrivals
            when, key, gen = heapq.heappop(timers)
            if generation.get(key, 0) == gen:
                close(key, when)
        now[0] = t
        key, _ = pick(None)
        open_shards.setdefault(key, []).append(t)
        n = len(open_shards[key])
        when, key_rate[key] = decide(
            n, first.get(key), key_rate.get(key), t, size, wait_secs, idle_secs
        )
        if when is None:
            close(key, t)
            continue
        first.setdefault(key, t)
        heapq.heappush(timers, (when, key, generation.get(key, 0)))  # replaces the last
    for when, key, gen in sorted(timers):
        if generation.get(key, 0) == gen:
            close(key, when)
    waits.sort()
    images = sum(shards)
    return {
        "images": images,
        "shards": len(shards),
        "objects_per_1000": round(1000 * len(shards) / images, 1),
        "mean_vectors_per_shard": round(images / len(shards), 1),
        "wait_p50_s": round(waits[len(waits) // 2], 3),
        "wait_p95_s": round(waits[min(len(waits) - 1, int(0.95 * len(waits)))], 3),
        "wait_max_s": round(waits[-1], 3),
    }


def run(seconds: float, min_images: int, seeds: int) -> dict:
    result = {"machine": C.machine(), "seconds": seconds, "min_images": min_images}
    result["settings"] = {
        "vectors_per_shard": flags.DEFAULT_VECTORS_PER_SHARD,
        "shard_wait_secs": flags.DEFAULT_SHARD_WAIT_SECS,
        "shard_idle_secs": flags.DEFAULT_SHARD_IDLE_SECS,
        "shard_keys": flags.DEFAULT_SHARD_KEYS,
        "busy_key_rate": vectors.BUSY_KEY_RATE,
        "seeds": seeds,
    }
    result["goals"] = {str(k): v for k, v in GOALS.items()}
    result["rates"] = {}
    for rate in RATES:
        span = max(min_images / rate, min(seconds, MAX_IMAGES / rate))
        per_rule = {}
        for rule in ("traffic", "former"):
            runs = [simulate(rate, span, rule, seed) for seed in range(seeds)]
            per_rule[rule] = {
                "runs": runs,
                **{
                    k: statistics.median(r[k] for r in runs)
                    for k in ("objects_per_1000", "wait_p50_s", "wait_p95_s", "wait_max_s")
                },
            }
        result["rates"][str(rate)] = {"seconds": span, **per_rule}
        print(rate, {r: per_rule[r]["objects_per_1000"] for r in per_rule}, flush=True)
    return result


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [
        "## Vector shards at the rates users run (`benchmarks/shards.py`)",
        "",
        f"A simulation of the job's shard buffer with timers on time (the job's own "
        f"`RateKeys` and `on_vector`), Poisson arrivals, defaults: {s['vectors_per_shard']} "
        f"vectors a shard, wait {s['shard_wait_secs']:g} s, idle gap "
        f"{s['shard_idle_secs']:g} s (while a key gets under {s['busy_key_rate']:g} a "
        f"second), at most {s['shard_keys']} keys; median of {s['seeds']} seeds, each "
        f"{result['seconds']:g} s of traffic, at least {result['min_images']:,} and at most "
        f"{MAX_IMAGES:,} images. Former rule: "
        f"{s['shard_keys']} keys always, every shard closed at the idle gap.",
        "",
        "| images/s | shards per 1,000 images | row's wait for its shard: p50 / p95 / max s "
        "| former rule: shards per 1,000 | former: wait p95 s | goal |",
        "|---:|---:|---|---:|---:|---|",
    ]
    for rate, d in result["rates"].items():
        t, f = d["traffic"], d["former"]
        goal = result["goals"].get(rate)
        lines.append(
            f"| {rate} | {t['objects_per_1000']:g} | {t['wait_p50_s']:g} / {t['wait_p95_s']:g}"
            f" / {t['wait_max_s']:g} | {f['objects_per_1000']:g} | {f['wait_p95_s']:g} | "
            + (f"<= {goal}" if goal else "")
            + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    p = C.parser(__doc__, rounds=5)
    p.add_argument("--seconds", type=float, default=300.0, help="seconds of traffic a run")
    p.add_argument("--images", type=int, default=3000, help="fewest images a run")
    args = p.parse_args()
    seconds, images, seeds = (
        (20.0, 200, 1) if args.quick else (args.seconds, args.images, args.rounds)
    )
    result = run(seconds, images, seeds)
    C.write_results(args.out, "shards", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
