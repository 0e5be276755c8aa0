"""--runtime onnx: the converted graph against TensorFlow's vectors on real photos, the
cache keyed by the weights, and a cached start that never imports TensorFlow."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from streaming.model import inference, onnx_runtime
from streaming.stages.load import decode_image

ROOT = pathlib.Path(__file__).resolve().parents[2]
PHOTOS = sorted((ROOT / "samples" / "images").glob("*/*.jpg"))


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    """A cache holding random:0's converted graph, made through the job's own miss path."""
    cache = str(tmp_path_factory.mktemp("onnx-cache"))
    loaded = inference.load_embedding_model("random:0", "onnx", cache)
    return cache, loaded


@pytest.mark.slow
def test_onnx_vectors_match_tensorflow_on_real_photos(onnx_cache, keras_model):
    _, onnx_embed = onnx_cache
    pixels = np.stack([decode_image(p.read_bytes()).pixels for p in PHOTOS])
    assert len(pixels) >= 6
    tf_vectors = inference.EmbeddingModel(keras_model)(pixels)
    onnx_vectors = onnx_embed(pixels)
    cosine = (tf_vectors * onnx_vectors).sum(1) / (
        np.linalg.norm(tf_vectors, axis=1) * np.linalg.norm(onnx_vectors, axis=1)
    )
    assert cosine.min() >= 0.99999, cosine
    assert onnx_vectors.shape == (len(PHOTOS), inference.EMBEDDING_DIM)
    assert onnx_embed.fingerprint == inference.weights_fingerprint(keras_model)


def test_results_name_the_fingerprint_and_the_runtime(onnx_cache):
    _, onnx_embed = onnx_cache
    [result] = inference.embed_batch(onnx_embed, [np.zeros((224, 224, 3), np.uint8)])
    name, fingerprint, runtime = inference.split_model_id(result.model_id)
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
