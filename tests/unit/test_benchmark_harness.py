"""The benchmarks' harness: paired rounds, and whole processes measured with their
children."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import _common as C


def test_the_order_alternates_every_round():
    names = ["job", "job on tensorflow", "script"]
    assert C.paired_order(names, 0) == names
    assert C.paired_order(names, 1) == names[::-1]
    assert C.paired_order(names, 2) == names


def test_a_drifting_machine_is_compared_round_by_round():
    # The machine gets 50% faster in round 3; in every round the job takes 0.5 of the
    # script's time. The ratio of the medians would say 10 / 24 = 0.42.
    job, script = [10.0, 10.0, 6.0], [20.0, 24.0, 12.0]
    assert C.paired_ratios(job, script) == {"per_round": [0.5, 0.417, 0.5], "median": 0.5}
    assert C.paired_ratios([None, 3.0], [2.0, 6.0]) == {"per_round": [0.5], "median": 0.5}


def test_a_process_tree_is_measured_with_its_grandchildren():
    # The child holds nothing; the grandchild holds 300 MB until it exits.
    grandchild = "b = bytearray(300 * 10**6); import time; time.sleep(1.5)"
    child = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {grandchild!r}])"
    run = C.run_process([sys.executable, "-c", child + "; print('done')"])
    assert run["peak_mib"] * 2**20 >= 300 * 10**6
    assert run["wall_s"] >= 1.5
    assert run["output"].strip() == "done"
    assert run["other_cores"] >= 0


def test_a_failing_process_is_an_error_with_its_output():
    with pytest.raises(RuntimeError, match="exited 3:\nwhy"):
        C.run_process([sys.executable, "-c", "import sys; print('why'); sys.exit(3)"])


def test_a_rate_above_the_hosts_gemm_bound_is_refused():
    assert C.check_rate("L", 10.0, 7.7, 100.0) == 0.77
    with pytest.raises(C.AboveGemm, match="above this host's float32 GEMM rate 100"):
        C.check_rate("L", 13.0, 7.7, 100.0)


def test_the_graph_cost_counts_convolutions_and_matrix_products(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "w")
    m = numpy_helper.from_array(np.zeros((8, 4), np.float32), "m")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
            helper.make_node("GlobalAveragePool", ["y"], ["p"]),
            helper.make_node("Flatten", ["p"], ["f"]),
            helper.make_node("MatMul", ["f", "m"], ["z"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4])],
        initializer=[w, m],
    )
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph), str(path))
    macs = 8 * 16 * 16 * 3 * 3 * 3 + 8 * 4  # each output of the conv: 3x3x3 multiply-adds
    assert C.graph_gflop(str(path)) == round(2 * macs / 1e9, 3)
