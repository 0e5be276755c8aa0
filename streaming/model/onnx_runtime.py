"""ResNet50 on ONNX Runtime, built once per weights and cached.

`streaming/model/resnet50.py` writes the pipeline's own batch function (uint8 pixels ->
`preprocess_input` -> average-pooled ResNet50) as an ONNX graph (opset 17) from the
weights, which is stored under a cache key derived from the weights spec: the
content hash of a weights file, the spec itself for `imagenet` and `random:SEED`. The
entry's `meta.json` keeps the fingerprint of the weights the graph was made from, so a
process that finds its entry loads the graph into an `InferenceSession` without
importing TensorFlow or building a Keras layer, and still names the exact weights in
every row.

Beam ships `apache_beam.ml.inference.onnx_inference`, a handler around a ready `.onnx`
URI; the job needs more than that (building the graph, the fingerprint in the model id, one
model per process shared with the start-up check), so `streaming.model.inference` keeps its own
handler and this module only supplies the model behind it.

The cache is a local folder (default: `image-embeddings/onnx` under the user's cache
folder) or any Beam filesystem prefix such as gs://: an entry is written model first,
`meta.json` last, each file whole, so a reader never sees half an entry. Before it
builds an entry a process claims it with a create-only `building` marker (an object
created with `if_generation_match=0` on gs://, `O_EXCL` locally): workers that share
the cache and start, or meet new weights, at the same time build each graph once; the
others wait for the entry and load it. A claim whose builder died goes stale and is
taken over; an entry that lost a file, or whose model is not the one its meta names, is
built again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time

import numpy as np

from streaming.config.names import gcs_parts, is_gcs_uri
from streaming.model.spec import INPUT_SHAPE, is_fixed

OPSET = 17
RUNTIME = "onnx"
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
# Part of every cache key: a change of the converted graph's contract (input dtype,
# preprocessing, output) must bump it so old entries are never reused.
_GRAPH_VERSION = "uint8-nhwc-preprocess-avgpool-v2-folded-bn"
_MODEL_FILE = "model.onnx"
_META_FILE = "meta.json"
_LOG = logging.getLogger(__name__)


def default_cache_dir() -> str:
    """`$XDG_CACHE_HOME/image-embeddings/onnx`, else `~/.cache/image-embeddings/onnx`."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "image-embeddings", "onnx")


def weights_source_id(spec: str, local_path: str | None = None) -> str:
    """What identifies the weights without building the model: the spec for `imagenet`
    and `random:SEED` (both name fixed values), the sha256 of the bytes of a weights
    file (`local_path`, its local copy)."""
    if is_fixed(spec):
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


def entry_location(cache_dir: str, key: str) -> str:
    """The folder (or gs:// prefix) of one cache entry."""
    return _join(cache_dir, key)


def read_entry(cache_dir: str, key: str) -> tuple[bytes, dict] | None:
    """(model bytes, meta) of a complete cache entry, or None: none written, or one that
    lost a file (a lifecycle rule or an operator deletes objects one by one, in any
    order) or whose model is not the one its meta names. The caller builds it again."""
    from apache_beam.io.filesystems import FileSystems

    meta_path = _join(cache_dir, key, _META_FILE)
    if not FileSystems.exists(meta_path):
        return None
    try:
        with FileSystems.open(meta_path, compression_type="uncompressed") as f:
            meta = json.loads(f.read())
        model_path = _join(cache_dir, key, _MODEL_FILE)
        with FileSystems.open(model_path, compression_type="uncompressed") as f:
            model_bytes = f.read()
    except Exception as e:  # noqa: BLE001 - a half-deleted entry: built again
        _LOG.warning("ONNX cache entry %s is incomplete (%s); building it again", key, e)
        return None
    expected = meta.get("model_sha256")
    if expected and hashlib.sha256(model_bytes).hexdigest() != expected:
        _LOG.warning(
            "ONNX cache entry %s holds another model than its meta; building it again", key
        )
        return None
    return model_bytes, meta


_CLAIM_FILE = "building"


def claim_entry(cache_dir: str, key: str, stale_after: float = 300.0) -> bool:
    """Claims the building of one entry, create-only: True for the one process (of any
    worker sharing the cache) that gets to build it, False where another did first. A
    local claim older than `stale_after` seconds (its builder died) is taken over."""
    path = _join(cache_dir, key, _CLAIM_FILE)
    stamp = f"{socket.gethostname()} {os.getpid()} {time.time():.0f}".encode()
    if "://" in cache_dir:
        from streaming.support import clients

        if is_gcs_uri(path):
            return _claim_gcs(clients.worker_storage_client(), path, stamp, stale_after)
        return True  # no create-only write on other filesystems: everyone builds
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        if time.time() - os.path.getmtime(path) < stale_after:
            return False
        fd = os.open(path, os.O_TRUNC | os.O_WRONLY)
    with os.fdopen(fd, "wb") as f:
        f.write(stamp)
    return True


def _claim_gcs(client, path: str, stamp: bytes, stale_after: float) -> bool:
    """The create-only claim on gs://; a claim older than `stale_after` (its builder died
    or was stopped) is replaced, deleted only at the generation that was read, so of
    several takers one wins."""
    from google.api_core import exceptions as gexc

    from streaming.support import storage

    if storage.create_object(client, path, stamp):
        return True
    bucket, name = gcs_parts(path)
    held = client.bucket(bucket).get_blob(name)
    if held is None:  # given back meanwhile
        return storage.create_object(client, path, stamp)
    updated = held.updated.timestamp() if held.updated else time.time()
    if time.time() - updated < stale_after:
        return False
    try:
        held.delete(if_generation_match=held.generation)
    except gexc.PreconditionFailed:
        return False  # another process took it over first
    except gexc.Forbidden as e:
        _LOG.warning("Cannot take over the stale claim %s (%s); building anyway", path, e)
        return True
    except gexc.NotFound:
        pass
    _LOG.info("Took over the claim %s, %.0f s old", path, time.time() - updated)
    return storage.create_object(client, path, stamp)


def release_claim(cache_dir: str, key: str) -> None:
    """Removes this process's claim after a failed build (best effort)."""
    path = _join(cache_dir, key, _CLAIM_FILE)
    try:
        if is_gcs_uri(path):  # the client that made it (FileSystems may not see it yet)
            from streaming.support import clients

            bucket, name = gcs_parts(path)
            clients.worker_storage_client().bucket(bucket).blob(name).delete()
        elif "://" not in cache_dir:
            os.remove(path)
    except Exception as e:  # noqa: BLE001 - the claim then goes stale and is taken over
        _LOG.debug("Cannot remove the claim %s: %s", path, e)


def wait_for_entry(
    cache_dir: str, key: str, timeout: float, poll: float = 1.0
) -> tuple[bytes, dict] | None:
    """The entry another process claimed, once it is complete, or None after `timeout`
    seconds (the builder may have died: the caller then builds it itself)."""
    deadline = time.monotonic() + timeout
    while True:
        entry = read_entry(cache_dir, key)
        if entry is not None or time.monotonic() >= deadline:
            return entry
        time.sleep(poll)


def write_entry(cache_dir: str, key: str, model_bytes: bytes, meta: dict) -> None:
    """Writes the model, then the meta that marks the entry complete and names the
    model's sha256 (`read_entry` checks it)."""
    meta = dict(meta, model_sha256=hashlib.sha256(model_bytes).hexdigest())
    for name, data in (
        (_MODEL_FILE, model_bytes),
        (_META_FILE, json.dumps(meta, indent=1).encode()),
    ):
        from streaming.support import storage

        storage.write_atomically(_join(cache_dir, key, name), data)


def session_options(threads: tuple[int, int] = (0, 0)):
    """ONNX Runtime's session options for (intra-op, inter-op) threads.

    Intra-op threads split one operator (a convolution) over cores; 0 keeps ONNX
    Runtime's default, one per physical core. ONNX Runtime runs a graph's nodes one
    after the other unless its execution mode is parallel, and only then reads the
    inter-op size: more than one inter-op thread switches to the parallel mode (nodes
    that do not depend on each other, such as a ResNet block's shortcut, run at once);
    0 or 1 keeps the sequential default.
    """
    import onnxruntime as ort

    intra_op, inter_op = threads
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op
    if inter_op > 1:
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        options.inter_op_num_threads = inter_op
    return options


def available_providers() -> list[str]:
    """The execution providers this installation of ONNX Runtime offers (the CUDA one
    only with the onnxruntime-gpu build)."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def execution_providers(gpu: bool) -> list[str]:
    """What a session asks for: on a GPU, CUDA first and the CPU for any node CUDA does
    not run; else the CPU alone."""
    return [CUDA_PROVIDER, CPU_PROVIDER] if gpu else [CPU_PROVIDER]


class OnnxEmbeddingModel:
    """An ONNX Runtime session with the same call as `streaming.model.inference.EmbeddingModel`.

    `gpu` asks for the CUDA provider; ONNX Runtime falls back to the CPU when it cannot
    start it, so `device` (the session's first provider) and `on_gpu` say where the
    forward pass actually runs.
    """

    runtime = RUNTIME

    def __init__(
        self,
        model_bytes: bytes,
        fingerprint: str,
        model_name: str,
        threads: tuple[int, int] = (0, 0),
        gpu: bool = False,
    ):
        import onnxruntime as ort

        self._session = ort.InferenceSession(
            model_bytes, session_options(threads), providers=execution_providers(gpu)
        )
        self._input = self._session.get_inputs()[0].name
        self.device = self._session.get_providers()[0]
        self.on_gpu = self.device == CUDA_PROVIDER
        self.fingerprint = fingerprint
        self.runtime_version = f"onnxruntime-{ort.__version__}"
        self.model_id = f"{model_name}@{fingerprint}"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (n, 224, 224, 3) RGB -> float32 (n, 2048)."""
        return self._session.run(None, {self._input: np.ascontiguousarray(batch, np.uint8)})[0]

    def warm_up(self) -> None:
        """Runs one batch so the first element does not pay the session's set-up."""
        self(np.zeros((1, *INPUT_SHAPE), np.uint8))
