"""ResNet50's ONNX graph built from its weights: the same weights and order as Keras,
the same vectors as TensorFlow (batch normalization included), every weights-file
layout read, and a first ONNX run that never imports TensorFlow."""

import pathlib

import numpy as np
import pytest

from streaming.model import inference, resnet50
from streaming.stages.load import decode_image
from tools.processes import python_json

ROOT = pathlib.Path(__file__).resolve().parents[2]
PHOTOS = sorted((ROOT / "samples" / "images").glob("*/*.jpg"))


def test_the_weight_list_is_keras_resnet50s_in_order(keras_model):
    assert resnet50.weight_specs() == [(w.path, tuple(w.shape)) for w in keras_model.weights]


def test_random_weights_are_the_keras_models_without_building_it(keras_model):
    ours = resnet50.random_weights(0)
    theirs = keras_model.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs))
    assert resnet50.fingerprint(ours) == inference.weights_fingerprint(keras_model)
    assert resnet50.fingerprint(resnet50.random_weights(1)) != resnet50.fingerprint(ours)


def test_a_wrong_weight_list_is_refused_by_name():
    weights = resnet50.random_weights(0)
    with pytest.raises(ValueError, match="317 weight tensors; .* has 318"):
        resnet50.check_weights(weights[:-1])
    weights[6] = np.zeros((1, 1, 64, 65), np.float32)
    with pytest.raises(ValueError, match=r"conv2_block1_1_conv/kernel has shape \(1, 1, 64, 65\)"):
        resnet50.to_onnx(weights)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.slow
def test_a_trained_looking_model_gives_tensorflows_vectors_from_both_file_layouts(tmp_path):
    """`random:SEED` leaves every batch normalization an identity; here each one gets
    its own scale, shift and statistics, so folding them into the convolutions is
    checked too. Both file layouts (Keras 3 `.weights.h5`, Keras 2 `.h5`) must read
    back the exact tensors and give TensorFlow's vectors on real photos."""
    import h5py
    import onnxruntime as ort
    from keras.src.legacy.saving import legacy_h5_format

    keras_model = inference.load_keras_model("random:3")
    rng = np.random.default_rng(3)
    for var in keras_model.weights:
        kind, shape = var.path.rsplit("/", 1)[1], tuple(var.shape)
        if kind == "gamma" or kind == "moving_variance":
            var.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))
        elif kind in ("beta", "moving_mean", "bias"):
            var.assign(rng.normal(0.0, 0.2, shape).astype(np.float32))
    keras3, keras2 = str(tmp_path / "m.weights.h5"), str(tmp_path / "m.h5")
    keras_model.save_weights(keras3)
    with h5py.File(keras2, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, keras_model)
    pixels = np.stack([decode_image(p.read_bytes()).pixels for p in PHOTOS])
    expected = inference.EmbeddingModel(keras_model)(pixels)
    for path in (keras3, keras2):
        weights = resnet50.read_weights_h5(path)
        assert all(np.array_equal(a, b) for a, b in zip(weights, keras_model.get_weights()))
        session = ort.InferenceSession(
            resnet50.to_onnx(weights), providers=["CPUExecutionProvider"]
        )
        got = session.run(None, {"pixels": pixels})[0]
        assert _cosines(expected, got).min() >= 0.99999, path
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


def test_an_h5_file_of_another_layout_is_not_read_as_resnet50(tmp_path):
    import h5py

    path = str(tmp_path / "other.weights.h5")
    with h5py.File(path, "w") as f:
        f.create_dataset("layers/dense/vars/0", data=np.zeros((3, 3), np.float32))
    assert resnet50.read_weights_h5(path) is None


@pytest.mark.slow
def test_a_first_onnx_run_imports_no_tensorflow_and_says_where_it_stores_the_model(
    tmp_path, keras_model
):
    """`random:SEED` and a `.weights.h5` file, both with an empty cache, in a fresh
    process: the graph is built and stored without TensorFlow, the process says so in
    one line, and the fingerprints are those Keras computes."""
    weights_file = str(tmp_path / "w.weights.h5")
    keras_model.save_weights(weights_file)
    cache = str(tmp_path / "cache")
    code = (
        "import json, sys\n"
        "from streaming.model import inference\n"
        f"a = inference.load_embedding_model('random:0', 'onnx', {cache!r})\n"
        f"b = inference.load_embedding_model({weights_file!r}, 'onnx', {cache!r})\n"
        "heavy = sorted(n for n in sys.modules if n.split('.')[0] in "
        "('tensorflow', 'keras', 'tf2onnx'))\n"
        "print(json.dumps([a.fingerprint, b.fingerprint, heavy]))\n"
    )
    (a, b, heavy), stderr = python_json(code, timeout=240)
    assert heavy == []
    assert a == b == inference.weights_fingerprint(keras_model)
    notices = [line for line in stderr.splitlines() if "once" in line]
    assert len(notices) == 2 and all(cache in line for line in notices), stderr
    assert "random:0" in notices[0] and weights_file in notices[1]


@pytest.mark.slow
def test_a_file_written_without_tensorflow_loads_in_keras(tmp_path, keras_model):
    path = str(tmp_path / "w.weights.h5")
    resnet50.write_weights_h5(path, resnet50.random_weights(0))
    assert inference.weights_fingerprint(
        inference.load_keras_model(path)
    ) == inference.weights_fingerprint(keras_model)
