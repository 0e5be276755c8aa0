"""The throughput benchmark's paired E/L: each run against the L rounds around it."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
throughput = pytest.importorskip("throughput")


def _run(e_window, fwd):
    return {"all": {"ok": True, "E_window": e_window, "inference_img_s": fwd}}


def test_a_drifting_machine_pairs_each_run_with_the_l_rounds_around_it():
    # The machine speeds up 10 -> 10 -> 14 img/s; each E run is 0.8 of the L around it
    # (the ratio of medians, 8.8 / 10 at the best batch size, would say 0.88).
    res = {"L": {"best_batch_size": 8, "L_img_s": 10.0,
                 "rounds": {"4": [9.0, 9.0, 9.0], "8": [10.0, 10.0, 14.0]}},
           "E": {"12mp": {"runs": [_run(8.0, 10.0), _run(9.6, 12.0)],
                          "l_rounds_around": [[0, 1], [1, 2]]}},
           "S": {"12mp": {"S_img_s": 3.0, "S_each": [2.0, 4.0]}}}
    throughput.pair_with_l(res)
    e = res["E"]["12mp"]
    assert e["E_over_L_paired_each"] == pytest.approx([0.8, 0.8])
    assert e["E_over_L_paired"] == pytest.approx(0.8)
    assert e["E_over_own_fwd_each"] == pytest.approx([0.8, 0.8])
    # S slices pair with the run just before them: 8 / 2, 9.6 / 4
    assert e["E_over_S_paired_each"] == pytest.approx([4.0, 2.4])
    assert e["E_over_S_paired"] == pytest.approx(3.2)


def test_failed_runs_and_results_without_rounds_give_no_paired_ratio():
    res = {"L": {"best_batch_size": 8, "L_img_s": 12.0, "rounds": {"8": [10.0, 12.0]}},
           "E": {"small": {"runs": [{"all": {"ok": False, "E_window": None}}],
                           "l_rounds_around": [[0, 1]]},
                 "old": {"runs": [_run(9.0, 10.0)]}}}
    throughput.pair_with_l(res)
    assert res["E"]["small"]["E_over_L_paired"] is None
    assert res["E"]["old"]["E_over_L_paired"] is None
