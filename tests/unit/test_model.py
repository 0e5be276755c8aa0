import os
import random
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from streaming.model import inference
from streaming.model.spec import split_model_id
from streaming.stages.load import decode_image
from tests import fixtures


def test_random_weights_are_deterministic_and_fingerprinted(keras_model):
    again = inference.load_keras_model("random:0")
    other = inference.load_keras_model("random:1")
    fp = inference.weights_fingerprint(keras_model)
    assert inference.weights_fingerprint(again) == fp
    assert inference.weights_fingerprint(other) != fp
    assert keras_model.output_shape == (None, inference.EMBEDDING_DIM)


def test_random_weights_ignore_other_threads_drawing_from_random(keras_model):
    """Keras seeds from Python's global `random`; a thread using it mid-build (a retry's
    jitter) once made `random:0` two different models in one CI run."""
    stop = threading.Event()

    def draw():
        while not stop.is_set():
            random.random()
            time.sleep(0.0001)

    thread = threading.Thread(target=draw, daemon=True)
    thread.start()
    try:
        rebuilt = inference.load_keras_model("random:0")
    finally:
        stop.set()
        thread.join()
    assert inference.weights_fingerprint(rebuilt) == inference.weights_fingerprint(keras_model)


@pytest.mark.slow
def test_weights_file_round_trip_keeps_the_fingerprint(tmp_path, keras_model):
    path = str(tmp_path / "resnet.weights.h5")
    keras_model.save_weights(path)
    loaded = inference.load_embedding_model(path, "tensorflow")
    assert loaded.fingerprint == inference.weights_fingerprint(keras_model)
    assert loaded.model_id == f"resnet50-avgpool@{loaded.fingerprint}"
    assert split_model_id(inference.result_model_id(loaded)) == (
        "resnet50-avgpool",
        loaded.fingerprint,
        loaded.runtime_version,
    )
    assert loaded.runtime_version.startswith("tensorflow-")


@pytest.mark.slow
def test_batched_embedding_equals_a_direct_keras_call(keras_model, direct_embed):
    emb = inference.EmbeddingModel(keras_model)
    batch = np.stack([decode_image(fixtures.jpeg(300, 200, seed=s)).pixels for s in range(3)])
    got = emb(batch)
    assert got.shape == (3, 2048) and got.dtype == np.float32
    for pixels, vector in zip(batch, got):
        np.testing.assert_allclose(vector, direct_embed(pixels), rtol=1e-5, atol=1e-5)
    assert not np.allclose(got[0], got[1])


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("/nonexistent/w.weights.h5", "does not exist"),
        ("random:abc", "random:<integer seed>"),
    ],
)
def test_unusable_weights_give_one_clear_error(spec, needle):
    with pytest.raises(inference.WeightsUnavailableError, match=needle):
        inference.load_keras_model(spec)


def test_corrupt_weights_file_is_refused(tmp_path):
    bad = tmp_path / "bad.weights.h5"
    bad.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(inference.WeightsUnavailableError, match="Cannot load ResNet50 weights"):
        inference.load_keras_model(str(bad))


@pytest.mark.slow
@pytest.mark.parametrize(
    "weights, message",
    [
        ("imagenet", "Cannot load the ImageNet weights"),
        ("corrupt.weights.h5", "Cannot load ResNet50 weights"),
        ("missing.weights.h5", "does not exist"),
    ],
)
def test_cli_with_unusable_weights_fails_at_start_up_with_one_message(tmp_path, weights, message):
    """No network, a corrupt or a missing file: the job stops before the pipeline."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(fixtures.jpeg())
    (tmp_path / "corrupt.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    env = {
        **os.environ,
        "KERAS_HOME": str(tmp_path / "keras"),
        "https_proxy": "http://127.0.0.1:1",
        "HTTPS_PROXY": "http://127.0.0.1:1",
    }
    spec = weights if weights == "imagenet" else str(tmp_path / weights)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "streaming.main",
            "--input_dir",
            str(tmp_path / "in"),
            "--output_dir",
            str(tmp_path / "out"),
            "--weights",
            spec,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr
    assert "random:SEED" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_every_batch_size_reuses_the_graph_traced_at_warm_up():
    loaded = inference.load_embedding_model("random:0", "tensorflow")
    for n in (1, 3, 7, 32):
        assert loaded(np.zeros((n, 224, 224, 3), np.uint8)).shape == (n, inference.EMBEDDING_DIM)
    assert loaded._embed.experimental_get_tracing_count() == 1


@pytest.mark.slow
def test_a_process_loads_each_model_once_and_keeps_only_the_latest():
    first = inference.load_embedding_model("random:0", "tensorflow")
    assert inference.load_embedding_model("random:0", "tensorflow") is first
    other = inference.load_embedding_model("random:1", "tensorflow")
    assert other is not first and other.fingerprint != first.fingerprint
    assert list(inference._LOADED) == [("random:1", "tensorflow", None, (0, 0), None)]
    again = inference.load_embedding_model("random:0", "tensorflow")
    assert again is not first and again.fingerprint == first.fingerprint
