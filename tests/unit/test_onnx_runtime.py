"""--runtime onnx: the converted graph against TensorFlow's vectors on real photos with
trained-looking weights, the cache keyed by the weights, and a cached start that never
imports TensorFlow."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from streaming.model import inference, onnx_runtime, resnet50
from streaming.model.spec import split_model_id
from streaming.stages.load import decode_image

ROOT = pathlib.Path(__file__).resolve().parents[2]
PHOTOS = sorted((ROOT / "samples" / "images").glob("*/*.jpg"))


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    """A cache holding random:0's converted graph, made through the job's own miss path."""
    cache = str(tmp_path_factory.mktemp("onnx-cache"))
    loaded = inference.load_embedding_model("random:0", "onnx", cache)
    return cache, loaded


def _calibrated(keras_model, pixels: np.ndarray, seed: int = 0):
    """Gives `keras_model` weights that look trained, in place.

    `random:SEED` leaves every batch normalization at mean 0, variance 1, where a wrong
    epsilon or a dropped conv bias barely moves the vectors. Here every conv gets a bias
    and every batch normalization a scale and shift, and each one's moving mean and
    variance are those of its own input on `pixels`, layer after layer, as training
    leaves them. About 1% of each conv's channels are nearly silent (kernel and bias
    scaled by 1e-3), so their variances fall below epsilon and epsilon counts.
    """
    from keras.applications.resnet50 import preprocess_input

    rng = np.random.default_rng(seed)
    layer = keras_model.get_layer
    convs = [path[: -len("/kernel")] for path, _ in resnet50.weight_specs() if "_conv/k" in path]
    for name in convs:
        kernel, _ = layer(name).get_weights()
        n = kernel.shape[-1]
        bias = rng.normal(0.0, 0.1, n).astype(np.float32)
        quiet = rng.choice(n, max(1, n // 100), replace=False)
        kernel[..., quiet] *= 1e-3
        bias[quiet] *= 1e-3
        layer(name).set_weights([kernel, bias])
        bn = layer(name.replace("_conv", "_bn"))
        bn.gamma.assign(rng.uniform(0.2, 1.5, n).astype(np.float32))
        bn.beta.assign(rng.normal(0.0, 0.3, n).astype(np.float32))

    def conv_bn(x, name):
        y = layer(f"{name}_conv")(x)
        bn, values = layer(f"{name}_bn"), np.asarray(y, np.float64)
        bn.moving_mean.assign(values.mean((0, 1, 2)).astype(np.float32))
        bn.moving_variance.assign(values.var((0, 1, 2)).astype(np.float32))
        return bn(y, training=False)

    inputs = preprocess_input(pixels.astype(np.float32))
    x = layer("conv1_relu")(conv_bn(layer("conv1_pad")(inputs), "conv1"))
    x = layer("pool1_pool")(layer("pool1_pad")(x))
    for stage, _filters, blocks, _stride in resnet50.STAGES:
        for b in range(1, blocks + 1):
            name = f"{stage}_block{b}"
            shortcut = conv_bn(x, f"{name}_0") if b == 1 else x
            y = layer(f"{name}_1_relu")(conv_bn(x, f"{name}_1"))
            y = layer(f"{name}_2_relu")(conv_bn(y, f"{name}_2"))
            y = conv_bn(y, f"{name}_3")
            x = layer(f"{name}_out")(layer(f"{name}_add")([shortcut, y]))
    # The walk is the model's own graph: each batch normalization saw its real input.
    np.testing.assert_allclose(
        np.asarray(layer("avg_pool")(x)), np.asarray(keras_model(inputs, training=False))
    )
    return keras_model


@pytest.fixture(scope="module")
def trained_weights(tmp_path_factory):
    """(a `.weights.h5` file, the Keras model it was saved from): ResNet50 calibrated
    on four of the sample photos, made once for the module."""
    pixels = np.stack([decode_image(p.read_bytes()).pixels for p in PHOTOS[:4]])
    keras_model = _calibrated(inference.load_keras_model("random:0"), pixels)
    path = str(tmp_path_factory.mktemp("trained") / "resnet50.weights.h5")
    keras_model.save_weights(path)
    return path, keras_model


@pytest.mark.slow
def test_onnx_vectors_match_tensorflow_on_real_photos(trained_weights, tmp_path):
    """The file goes through the job's own ONNX path (read, fold, cache). The relative
    L2 bound is what catches a near miss (an epsilon a hair off Keras's 1.001e-5, one conv
    bias slightly off), which leaves every cosine close to 1."""
    path, keras_model = trained_weights
    variances = np.concatenate(
        [w.numpy() for w in keras_model.weights if w.path.endswith("/moving_variance")]
    )
    assert (variances < resnet50.BN_EPSILON).mean() > 0.005  # epsilon matters here
    pixels = np.stack([decode_image(p.read_bytes()).pixels for p in PHOTOS])
    assert len(pixels) >= 6
    tf_vectors = inference.EmbeddingModel(keras_model)(pixels)
    onnx_embed = inference.build_embedding_model(path, "onnx", str(tmp_path))
    onnx_vectors = onnx_embed(pixels)
    assert onnx_vectors.shape == (len(PHOTOS), inference.EMBEDDING_DIM)
    tf_norms = np.linalg.norm(tf_vectors, axis=1)
    relative_l2 = np.linalg.norm(onnx_vectors - tf_vectors, axis=1) / tf_norms
    assert relative_l2.max() <= 1e-4, relative_l2
    cosine = (tf_vectors * onnx_vectors).sum(1) / (tf_norms * np.linalg.norm(onnx_vectors, axis=1))
    assert cosine.min() >= 0.99999, cosine
    assert onnx_embed.fingerprint == inference.weights_fingerprint(keras_model)


def test_results_name_the_fingerprint_and_the_runtime(onnx_cache):
    _, onnx_embed = onnx_cache
    [result] = inference.embed_batch(onnx_embed, [np.zeros((224, 224, 3), np.uint8)])
    name, fingerprint, runtime = split_model_id(result.model_id)
    assert (name, fingerprint) == ("resnet50-avgpool", onnx_embed.fingerprint)
    assert runtime.startswith("onnxruntime-")


def test_the_cache_entry_records_the_fingerprint_under_the_specs_key(onnx_cache):
    cache, onnx_embed = onnx_cache
    key = onnx_runtime.cache_key(onnx_runtime.weights_source_id("random:0"))
    model_bytes, meta = onnx_runtime.read_entry(cache, key)
    assert meta["fingerprint"] == onnx_embed.fingerprint and meta["weights"] == "random:0"
    assert len(model_bytes) > 50_000_000
    assert onnx_runtime.read_entry(cache, onnx_runtime.cache_key("random:1")) is None


def test_a_weights_file_is_keyed_by_its_content(tmp_path):
    a, b = tmp_path / "a.weights.h5", tmp_path / "b.weights.h5"
    a.write_bytes(b"same bytes")
    b.write_bytes(b"same bytes")
    assert onnx_runtime.weights_source_id(str(a)) == onnx_runtime.weights_source_id(str(b))
    b.write_bytes(b"other bytes")
    assert onnx_runtime.weights_source_id(str(a)) != onnx_runtime.weights_source_id(str(b))


def test_a_half_written_entry_is_a_miss(tmp_path):
    """The meta is written last: a model file alone (a writer killed mid-entry) is not
    an entry."""
    key = onnx_runtime.cache_key("random:7")
    (tmp_path / key).mkdir()
    (tmp_path / key / "model.onnx").write_bytes(b"partial")
    assert onnx_runtime.read_entry(str(tmp_path), key) is None


@pytest.mark.slow
def test_a_cached_run_imports_no_tensorflow_and_builds_no_keras_layer(onnx_cache, tmp_path):
    """The whole job (embed-stream on a folder) with the conversion cached."""
    cache, onnx_embed = onnx_cache
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(PHOTOS[0].read_bytes())
    code = (
        "import sys\n"
        "from streaming import main\n"
        f"rc = main.main(['--input_dir', {str(tmp_path / 'in')!r}, '--output_dir', "
        f"{str(tmp_path / 'out')!r}, '--weights', 'random:0', '--model_cache_dir', {cache!r}])\n"
        "heavy = sorted(n for n in sys.modules if n.split('.')[0] in "
        "('tensorflow', 'keras', 'tf2onnx'))\n"
        "print('RESULT', rc, heavy)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "RESULT 0 []" in proc.stdout, proc.stdout[-2000:]
    [row_file] = (tmp_path / "out" / "rows").rglob("*.json")
    row = json.loads(row_file.read_text())
    assert row["model_fingerprint"] == onnx_embed.fingerprint
    assert row["model_runtime"] == onnx_embed.runtime_version


def test_the_default_cache_is_under_the_users_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert onnx_runtime.default_cache_dir() == os.path.join(
        str(tmp_path), "image-embeddings", "onnx"
    )


def test_the_thread_options_size_onnx_runtimes_session(onnx_cache):
    cache, _ = onnx_cache
    loaded = inference.load_embedding_model("random:0", "onnx", cache, threads=(1, 2))
    options = loaded._session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 2)
    default = inference.load_embedding_model("random:0", "onnx", cache)
    assert default._session.get_session_options().intra_op_num_threads == 0
