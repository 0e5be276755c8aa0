"""The shard rule at the rates users run: benchmarks/shards.py drives the job's own
decisions (`RateKeys`, `on_vector`) with timers on time; the goals hold for it and were
missed by the former rule (16 keys, every shard closed at the idle gap)."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import shards


@pytest.mark.parametrize("rate,most", sorted(shards.GOALS.items()))
def test_shards_per_thousand_images_meet_the_goal_at_that_rate(rate, most):
    run = shards.simulate(rate, 120.0, "traffic", seed=1)
    assert run["objects_per_1000"] <= most
    assert run["wait_max_s"] <= 2.0 + 1e-9  # no row waits past --shard_wait_secs
    assert shards.simulate(rate, 120.0, "former", seed=1)["objects_per_1000"] > most


def test_at_one_image_a_second_a_row_waits_only_the_idle_gap():
    run = shards.simulate(1, 600.0, "traffic", seed=1)
    assert run["wait_p95_s"] <= shards.flags.DEFAULT_SHARD_IDLE_SECS + 1e-9
