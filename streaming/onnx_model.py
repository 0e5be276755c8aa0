"""ResNet50 on ONNX Runtime, converted once per weights and cached.

Keras builds the model and loads the weights once; tf2onnx converts the pipeline's own
batch function (uint8 pixels -> `preprocess_input` -> average-pooled ResNet50) to an ONNX
graph (opset 17), which is stored under a cache key derived from the weights spec: the
content hash of a weights file, the spec itself for `imagenet` and `random:SEED`. The
entry's `meta.json` keeps the fingerprint of the weights the graph was made from, so a
process that finds its entry loads the graph into an `InferenceSession` without
importing TensorFlow or building a Keras layer, and still names the exact weights in
every row.

Beam ships `apache_beam.ml.inference.onnx_inference`, a handler around a ready `.onnx`
URI; the job needs more than that (the conversion, the fingerprint in the model id, one
model per process shared with the start-up check), so `streaming.model` keeps its own
handler and this module only supplies the model behind it.

The cache is a local folder (default: `image-embeddings/onnx` under the user's cache
folder) or any Beam filesystem prefix such as gs://: an entry is written model first,
`meta.json` last, each file whole, so a reader never sees half an entry.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Optional

import numpy as np

OPSET = 17
RUNTIME = "onnx"
# Part of every cache key: a change of the converted graph's contract (input dtype,
# preprocessing, output) must bump it so old entries are never reused.
_GRAPH_VERSION = "uint8-nhwc-preprocess-avgpool-v1"
_MODEL_FILE = "model.onnx"
_META_FILE = "meta.json"
_LOG = logging.getLogger(__name__)


def default_cache_dir() -> str:
    """`$XDG_CACHE_HOME/image-embeddings/onnx`, else `~/.cache/image-embeddings/onnx`."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "image-embeddings", "onnx")


def weights_source_id(spec: str, local_path: Optional[str] = None) -> str:
    """What identifies the weights without building the model: the spec for `imagenet`
    and `random:SEED` (both name fixed values), the sha256 of the bytes of a weights
    file (`local_path`, its local copy)."""
    if spec == "imagenet" or spec.startswith("random:"):
        return spec
    digest = hashlib.sha256()
    with open(local_path or spec, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def cache_key(source_id: str) -> str:
    """The folder name of one converted model under the cache."""
    material = f"{source_id}|opset{OPSET}|{_GRAPH_VERSION}"
    return hashlib.sha256(material.encode()).hexdigest()[:24]


def _join(root: str, *parts: str) -> str:
    from apache_beam.io.filesystems import FileSystems
    return FileSystems.join(root, *parts) if "://" in root else os.path.join(root, *parts)


def read_entry(cache_dir: str, key: str) -> Optional[tuple[bytes, dict]]:
    """(model bytes, meta) of a complete cache entry, or None."""
    from apache_beam.io.filesystems import FileSystems
    meta_path = _join(cache_dir, key, _META_FILE)
    if not FileSystems.exists(meta_path):
        return None
    with FileSystems.open(meta_path, compression_type="uncompressed") as f:
        meta = json.loads(f.read())
    with FileSystems.open(_join(cache_dir, key, _MODEL_FILE),
                          compression_type="uncompressed") as f:
        return f.read(), meta


def write_entry(cache_dir: str, key: str, model_bytes: bytes, meta: dict) -> None:
    """Writes the model, then the meta that marks the entry complete."""
    for name, data in ((_MODEL_FILE, model_bytes),
                       (_META_FILE, json.dumps(meta, indent=1).encode())):
        path = _join(cache_dir, key, name)
        if "://" in cache_dir:
            from apache_beam.io.filesystems import FileSystems
            with FileSystems.create(path, compression_type="uncompressed") as f:
                f.write(data)  # the object appears only when the upload completes
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)


def convert(keras_model) -> bytes:
    """The serialized ONNX graph of uint8 (n, 224, 224, 3) -> float32 (n, 2048),
    preprocessing included, exactly the function the TensorFlow runtime runs."""
    import tensorflow as tf
    import tf2onnx
    from keras.applications.resnet50 import preprocess_input

    @tf.function(input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.uint8, name="pixels")])
    def embed(pixels):
        return keras_model(preprocess_input(tf.cast(pixels, tf.float32)), training=False)

    proto, _ = tf2onnx.convert.from_function(
        embed, input_signature=embed.input_signature, opset=OPSET)
    return proto.SerializeToString()


class OnnxEmbeddingModel:
    """An ONNX Runtime session with the same call as `streaming.model.EmbeddingModel`."""

    runtime = RUNTIME

    def __init__(self, model_bytes: bytes, fingerprint: str, model_name: str,
                 threads: tuple[int, int] = (0, 0)):
        import onnxruntime as ort
        options = ort.SessionOptions()
        # 0 keeps ONNX Runtime's default: one intra-op thread per physical core.
        options.intra_op_num_threads, options.inter_op_num_threads = threads
        self._session = ort.InferenceSession(model_bytes, options,
                                             providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self.device = self._session.get_providers()[0]
        self.fingerprint = fingerprint
        self.runtime_version = f"onnxruntime-{ort.__version__}"
        self.model_id = f"{model_name}@{fingerprint}"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (n, 224, 224, 3) RGB -> float32 (n, 2048)."""
        return self._session.run(None, {self._input: np.ascontiguousarray(batch, np.uint8)})[0]

    def warm_up(self) -> None:
        """Runs one batch so the first element does not pay the session's set-up."""
        self(np.zeros((1, 224, 224, 3), np.uint8))
