"""ResNet50 embeddings through Beam's RunInference.

`EmbeddingModelHandler` implements Beam's plain `ModelHandler` contract with one
loader for every weights source (`imagenet`, a local or gs:// `.weights.h5`/`.keras`
file, or `random:SEED` for offline smoke tests). It imports neither TensorFlow nor
Beam's TensorFlow handler (which needs tensorflow_hub): Keras is imported only where a
model is built, so the launcher and `--help` start without it. RunInference loads the
model once per worker and shares it across threads; batches of uint8 images go through one compiled
`tf.function` that applies ResNet50's own `preprocess_input` and the average-pooled
ResNet50 (2048 float32 per image). Every result carries `resnet50-avgpool@<fingerprint>`
as its model id, the fingerprint being a hash of the weights actually loaded.

`--runtime` chooses what runs the forward pass: TensorFlow (the reference), or ONNX
Runtime on a graph built from the same weights (`streaming/model/resnet50.py`) and cached per
weights (`streaming/onnx_runtime.py`), which never imports TensorFlow for `random:SEED`
or a weights file, and not at all once the graph is cached. Results name the runtime
next to the fingerprint.

A job that asked for an accelerator (`streaming.config.runners.requested_accelerator`)
hands it to the handler, and its workers load the model on a GPU or not at all: where
the runtime finds none (TensorFlow without CUDA, ONNX Runtime without its CUDA
provider) the load fails with one line naming what was asked and what was found, and
Beam retries the bundle, instead of embedding at CPU speed on GPU machines.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import (
    KeyedModelHandler,
    ModelHandler,
    PredictionResult,
    RunInference,
)

from streaming import failures, metrics
from streaming.config import flags
from streaming.model import resnet50
from streaming.model import spec as model_spec

# EMBEDDING_DIM and MODEL_NAME are re-exported: callers of the model read them here.
from streaming.model.spec import EMBEDDING_DIM, INPUT_SHAPE, MODEL_NAME  # noqa: F401
from streaming.records import DeadLetter

RUNTIMES, DEFAULT_RUNTIME = flags.RUNTIMES, flags.DEFAULT_RUNTIME
_LOG = logging.getLogger(__name__)


class WeightsUnavailableError(RuntimeError):
    """The requested weights cannot be loaded; raised once, at start-up."""


class AcceleratorUnavailableError(RuntimeError):
    """The job asked for an accelerator and the runtime finds no GPU on this worker."""


def _no_gpu(accelerator: str, found: str, remedy: str) -> AcceleratorUnavailableError:
    return AcceleratorUnavailableError(f"this job asked for {accelerator} but {found}; {remedy}")


def require_gpu(runtime: str, accelerator: str) -> None:
    """Before the weights load: raises when `runtime` finds no GPU on this machine.

    Raises:
      AcceleratorUnavailableError: one line naming `accelerator` and what was found.
    """
    if runtime == "tensorflow":
        import tensorflow as tf

        if tf.config.list_logical_devices("GPU"):
            return
        devices = ", ".join(d.name for d in tf.config.list_logical_devices()) or "none"
        raise _no_gpu(
            accelerator,
            f"TensorFlow {tf.__version__} on this worker sees no GPU (devices: {devices})",
            "run the GPU image (docker build --build-arg EXTRAS=gpu), whose TensorFlow has "
            "CUDA, as --sdk_container_image",
        )
    from streaming.model import onnx_runtime

    offered = onnx_runtime.available_providers()
    if onnx_runtime.CUDA_PROVIDER not in offered:
        raise _no_gpu(
            accelerator,
            f"ONNX Runtime on this worker offers no {onnx_runtime.CUDA_PROVIDER} "
            f"(providers: {', '.join(offered)})",
            "use --runtime tensorflow (a GPU job's default), or a worker image with "
            "onnxruntime-gpu",
        )


def _keras():
    import keras  # heavy import, only where a model is built

    return keras


def build_resnet50(weights: str | None = None):
    """The Keras ResNet50 trunk with global average pooling (no classifier)."""
    return _keras().applications.ResNet50(
        include_top=False, weights=weights, pooling="avg", input_shape=INPUT_SHAPE
    )


def weights_fingerprint(model) -> str:
    """sha256 (first 16 hex digits) over every weight tensor, in order."""
    return resnet50.fingerprint(model.get_weights())


def load_keras_model(spec: str):
    """Builds ResNet50 with the weights `spec` names.

    Args:
      spec: `imagenet`, `random:SEED`, or a local path / gs:// URI of a
        `.weights.h5` (or `.keras`) file.

    Raises:
      WeightsUnavailableError: with a message naming the alternatives.
    """
    keras = _keras()
    kind = model_spec.weights_kind(spec)
    if kind == model_spec.IMAGENET:
        try:
            return build_resnet50("imagenet")
        except Exception as e:  # network, proxy, cache permission...: named, re-raised
            raise WeightsUnavailableError(
                f"Cannot load the ImageNet weights for ResNet50 ({type(e).__name__}: {e}). "
                "Keras downloads them on first use; without network access pass "
                "--weights PATH.weights.h5 (local or gs://, e.g. a copy of "
                "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 saved with "
                "model.save_weights) or --weights random:SEED for a smoke test."
            ) from e
    if kind == model_spec.RANDOM:
        return _seeded(build_resnet50(None), random_seed(spec))
    local = _local_copy(spec)
    try:
        if local.endswith(".keras"):
            return keras.models.load_model(local, compile=False)
        model = build_resnet50(None)
        model.load_weights(local)
        return model
    except Exception as e:  # h5py/keras raise many kinds on bad files: named, re-raised
        raise WeightsUnavailableError(
            f"Cannot load ResNet50 weights from {spec!r} ({type(e).__name__}: {e}). "
            "Expected a Keras .weights.h5 or .keras file for ResNet50(include_top=False, "
            "pooling='avg'); alternatives: --weights imagenet or random:SEED."
        ) from e


def random_seed(spec: str) -> int:
    """The seed of a `random:SEED` spec."""
    try:
        return model_spec.parse_weights(spec).seed
    except ValueError as e:
        raise WeightsUnavailableError(str(e)) from None


def _seeded(model, seed: int):
    """Gives every kernel Glorot-uniform values from a private generator.

    Keras draws its initial seeds from Python's global `random`, which any other
    thread (a retry's jitter, a Beam worker) may advance mid-build, so `random:0`
    would not name one model. Biases and batch-norm statistics start as constants.
    `resnet50.random_weights` draws the same values without building the model.
    """
    rng = np.random.default_rng(seed)
    for var in model.weights:
        shape = tuple(var.shape)
        if len(shape) < 2:
            continue
        receptive = int(np.prod(shape[:-2]))
        limit = np.sqrt(6.0 / (receptive * (shape[-2] + shape[-1])))
        var.assign((rng.random(shape, dtype=np.float32) * 2.0 - 1.0) * np.float32(limit))
    return model


def _local_copy(spec: str) -> str:
    """A local path for the weights file, copying it from gs:// (or any Beam
    filesystem) once. Keras insists on the original suffix, so the name is kept."""
    from apache_beam.io.filesystems import FileSystems

    if "://" not in spec:
        if not os.path.exists(spec):
            raise WeightsUnavailableError(
                f"Weights file {spec!r} does not exist; pass --weights imagenet, "
                "random:SEED, or an existing .weights.h5 path / gs:// URI."
            )
        return spec
    target = os.path.join(tempfile.mkdtemp(prefix="weights-"), os.path.basename(spec))
    try:
        with (
            FileSystems.open(spec, compression_type="uncompressed") as src,
            open(target, "wb") as dst,
        ):
            shutil.copyfileobj(src, dst, 1 << 20)
    except Exception as e:
        raise WeightsUnavailableError(f"Cannot read weights {spec!r}: {e}") from e
    return target


class EmbeddingModel:
    """A loaded ResNet50 plus its compiled batch function and identity."""

    runtime = "tensorflow"

    def __init__(self, keras_model):
        import tensorflow as tf
        from keras.applications.resnet50 import preprocess_input

        self.keras_model = keras_model
        self.fingerprint = weights_fingerprint(keras_model)
        self.model_id = f"{MODEL_NAME}@{self.fingerprint}"
        self.runtime_version = f"tensorflow-{tf.__version__}"
        # Where the forward pass runs: TensorFlow places it on the first GPU it sees.
        gpus = tf.config.list_logical_devices("GPU")
        self.device = gpus[0].name if gpus else "CPU"
        self.on_gpu = bool(gpus)

        # One signature, traced once at warm-up: every batch size reuses the graph (a new
        # shape would otherwise trace again, seconds, on the first batch of that size).
        @tf.function(input_signature=[tf.TensorSpec([None, *INPUT_SHAPE], tf.uint8)])
        def embed(batch_uint8):
            x = preprocess_input(tf.cast(batch_uint8, tf.float32))
            return keras_model(x, training=False)

        self._embed = embed

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (n, 224, 224, 3) RGB -> float32 (n, 2048)."""
        return self._embed(batch).numpy()

    def warm_up(self) -> None:
        """Traces the graph now, not on the first element (seconds in a new process)."""
        self(np.zeros((1, *INPUT_SHAPE), np.uint8))


def configure_threads(intra_op: int = 0, inter_op: int = 0) -> None:
    """Sizes TensorFlow's thread pools (0 keeps TensorFlow's default, one thread per
    core) and lets it take GPU memory as needed. Effective only before TensorFlow's
    runtime starts, so the handler calls it before it builds the model; later calls
    (a second handler in the same process) are logged and ignored."""
    import tensorflow as tf

    try:
        if intra_op:
            tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        if inter_op:
            tf.config.threading.set_inter_op_parallelism_threads(inter_op)
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError as e:  # the runtime is already initialised
        _LOG.warning("TensorFlow threads left as they are: %s", e)


_LOADED: dict[tuple, Any] = {}
_LOAD_LOCK = threading.Lock()


def load_embedding_model(
    spec: str,
    runtime: str = DEFAULT_RUNTIME,
    cache_dir: str | None = None,
    threads: tuple[int, int] = (0, 0),
    accelerator: str | None = None,
):
    """The model for `spec` on `runtime`, loaded once per process. This is the only
    model cache: the job's start-up check, RunInference (whose shared handle keeps a
    reference to this object for its threads) and embed-search all get the same copy.
    Only the latest (spec, runtime) is kept, so a process never holds two ResNet50s.

    `threads` (intra-op, inter-op; 0 keeps the runtime's default) size the runtime's
    thread pools; TensorFlow takes them only before its runtime starts. `accelerator`
    (what the job asked for, or None) requires a GPU: see `build_embedding_model`.

    Returns an `EmbeddingModel` or an `onnx_runtime.OnnxEmbeddingModel`: both map uint8
    (n, 224, 224, 3) to float32 (n, 2048) and carry `model_id` and `runtime_version`.
    """
    key = (spec, runtime, cache_dir, tuple(threads), accelerator)
    with _LOAD_LOCK:
        if key not in _LOADED:
            _LOADED.clear()
            _LOADED[key] = build_embedding_model(spec, runtime, cache_dir, threads, accelerator)
        return _LOADED[key]


def build_embedding_model(
    spec: str,
    runtime: str = DEFAULT_RUNTIME,
    cache_dir: str | None = None,
    threads: tuple[int, int] = (0, 0),
    accelerator: str | None = None,
):
    """A new model for `spec` on `runtime`, warmed up, outside the process's cache
    (`load_embedding_model` keeps that); a weights switch builds the next one here.

    With `accelerator` (what the job asked for) the model runs on a GPU or is not built.

    Raises:
      AcceleratorUnavailableError: `accelerator` given and the runtime finds no GPU
        here, checked before the weights load and again on the built model (ONNX
        Runtime falls back to the CPU when its CUDA provider does not start).
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    if runtime == "tensorflow":  # ONNX Runtime never imports TensorFlow
        configure_threads(*threads)
    if accelerator:
        require_gpu(runtime, accelerator)
    model = (
        _load_onnx(spec, cache_dir, threads, gpu=bool(accelerator))
        if runtime == "onnx"
        else EmbeddingModel(load_keras_model(spec))
    )
    if accelerator and not model.on_gpu:
        raise _no_gpu(
            accelerator,
            f"{model.runtime_version} could not start a GPU on this worker (it runs on "
            f"{model.device}; the runtime's own log says why)",
            "check the worker image's CUDA libraries, or use --runtime tensorflow",
        )
    model.warm_up()
    _LOG.info(
        "Loaded %s with weights %s on %s, device %s",
        model.model_id,
        spec,
        model.runtime_version,
        model.device,
    )
    return model


# How long a process waits for a graph another one claimed; a claim that old is stale
# (its builder died) and is taken over, for CLAIM_ROUNDS rounds, then it builds anyway.
CLAIM_WAIT_SECS = 300.0
CLAIM_ROUNDS = 3


def _load_onnx(spec: str, cache_dir: str | None, threads: tuple[int, int], gpu: bool = False):
    """The cached ONNX graph for `spec`; on a miss, builds it from the weights once
    (`streaming/model/resnet50.py`, no TensorFlow for `random:SEED` or a weights file) and
    stores it for the next process."""
    from streaming.model import onnx_runtime

    cache_dir = cache_dir or onnx_runtime.default_cache_dir()
    fixed = model_spec.is_fixed(spec)
    local = None if fixed else _local_copy(spec)
    try:
        key = onnx_runtime.cache_key(onnx_runtime.weights_source_id(spec, local))
        entry = onnx_runtime.read_entry(cache_dir, key)
        rounds = 0
        while (
            entry is None
            and rounds < CLAIM_ROUNDS
            and not onnx_runtime.claim_entry(cache_dir, key, CLAIM_WAIT_SECS)
        ):
            # A claim older than the wait is stale: the next round takes it over.
            _LOG.info("Another process builds the ONNX model for weights %s; waiting", spec)
            entry = onnx_runtime.wait_for_entry(cache_dir, key, CLAIM_WAIT_SECS)
            rounds += 1
        if entry is None:
            model_bytes, fingerprint = _build_entry(spec, local, cache_dir, key)
        else:
            model_bytes, meta = entry
            fingerprint = meta["fingerprint"]
    finally:
        if local is not None and local != spec:  # a downloaded copy: only needed here
            shutil.rmtree(os.path.dirname(local), ignore_errors=True)
    return onnx_runtime.OnnxEmbeddingModel(model_bytes, fingerprint, MODEL_NAME, threads, gpu)


def _build_entry(spec: str, local: str | None, cache_dir: str, key: str) -> tuple[bytes, str]:
    """Builds and stores the graph of a claimed entry; (model bytes, fingerprint). The
    claim is given back either way, so the next process tries at once instead of
    waiting."""
    from streaming.model import onnx_runtime

    where = onnx_runtime.entry_location(cache_dir, key)
    print(
        f"Building the ONNX model for weights {spec} once; later runs load it from {where}",
        file=sys.stderr,
        flush=True,
    )
    try:
        weights = resnet50_weights(spec, local)
        fingerprint = resnet50.fingerprint(weights)
        model_bytes = resnet50.to_onnx(weights, onnx_runtime.OPSET)
        del weights
        onnx_runtime.write_entry(
            cache_dir,
            key,
            model_bytes,
            {
                "weights": spec,
                "fingerprint": fingerprint,
                "model_name": MODEL_NAME,
                "opset": onnx_runtime.OPSET,
            },
        )
    finally:
        # Built or failed, the claim is given back: the next process that finds the
        # entry missing (a file deleted later) or still absent claims it at once.
        onnx_runtime.release_claim(cache_dir, key)
    _LOG.info("Stored %s@%s for ONNX Runtime in %s", MODEL_NAME, fingerprint, where)
    return model_bytes, fingerprint


def resnet50_weights(spec: str, local: str | None = None) -> list[np.ndarray]:
    """ResNet50's weights for `spec` as arrays in Keras's `get_weights()` order.

    `random:SEED` and a weights file h5py can read (`.weights.h5`, or a Keras 2
    `.h5`) need no TensorFlow; `imagenet`, a `.keras` file or any other layout are
    loaded through Keras once.

    Raises:
      WeightsUnavailableError: as `load_keras_model`, or when the file's tensors are
        not ResNet50's.
    """
    kind = model_spec.weights_kind(spec)
    if kind == model_spec.RANDOM:
        return resnet50.random_weights(random_seed(spec))
    path = local or spec
    weights = None
    if kind == model_spec.FILE and path.endswith(".h5"):
        try:
            weights = resnet50.read_weights_h5(path)
        except (OSError, KeyError, ValueError) as e:  # not HDF5, or not laid out as expected
            _LOG.debug("h5py cannot read %s (%s); loading it through Keras", spec, e)
    if weights is None:
        weights = load_keras_model(path).get_weights()
    try:
        resnet50.check_weights(weights)
    except ValueError as e:
        raise WeightsUnavailableError(
            f"Weights {spec!r} are not ResNet50(include_top=False, pooling='avg')'s: {e}"
        ) from e
    return [np.asarray(w, np.float32) for w in weights]


def result_model_id(model) -> str:
    """`<name>@<fingerprint>+<runtime>-<version>`: the id every result carries."""
    return f"{model.model_id}+{model.runtime_version}"


def embed_batch(model, batch: Sequence[np.ndarray]) -> list[PredictionResult]:
    """One forward pass per batch; the model id names the weights' fingerprint,
    whatever spec the handler was given, and the runtime that ran it."""
    model = getattr(model, "current", lambda: model)()  # one model for the whole batch
    vectors = model(np.stack(batch, axis=0))
    model_id = result_model_id(model)
    return [PredictionResult(x, v, model_id) for x, v in zip(batch, vectors)]


class EmbeddingModelHandler(ModelHandler[np.ndarray, PredictionResult, EmbeddingModel]):
    """RunInference's handler: uint8 224x224x3 images -> 2048-d ResNet50 vectors.

    Beam's base class carries the batching arguments (`batch_elements_kwargs`). The
    model is not shared across processes (`share_model_across_processes`): a copy per
    process serves each batch without a proxy hop. `accelerator`, what the job asked
    for, makes `load_model` fail rather than load on the CPU.
    """

    def __init__(
        self,
        weights: str,
        *,
        min_batch_size: int | None = None,
        max_batch_size: int | None = None,
        max_batch_duration_secs: int | None = None,
        runtime: str = DEFAULT_RUNTIME,
        cache_dir: str | None = None,
        threads: tuple[int, int] = (0, 0),
        weights_watch: str | None = None,
        weights_watch_interval: float = 60.0,
        accelerator: str | None = None,
    ):
        super().__init__(
            min_batch_size=min_batch_size,
            max_batch_size=max_batch_size,
            max_batch_duration_secs=max_batch_duration_secs,
        )
        self.weights = weights
        self.runtime = runtime
        self.cache_dir = cache_dir
        self.threads = threads
        self.weights_watch = weights_watch
        self.weights_watch_interval = weights_watch_interval
        self.accelerator = accelerator

    def load_model(self) -> EmbeddingModel:
        load = functools.partial(
            load_embedding_model,
            self.weights,
            self.runtime,
            self.cache_dir,
            self.threads,
            accelerator=self.accelerator,
        )
        if not self.weights_watch:
            return load()
        from streaming.model import weights_watch

        build = functools.partial(
            build_embedding_model,
            runtime=self.runtime,
            cache_dir=self.cache_dir,
            threads=self.threads,
            accelerator=self.accelerator,
        )
        return weights_watch.watched(
            load,
            self.weights_watch,
            self.weights_watch_interval,
            build,
            key=(
                self.weights,
                self.runtime,
                self.cache_dir,
                tuple(self.threads),
                self.weights_watch,
                self.weights_watch_interval,
                self.accelerator,
            ),
        )

    def run_inference(
        self,
        batch: Sequence[np.ndarray],
        model: EmbeddingModel,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        results = embed_batch(model, batch)
        metrics.TALLY.add(metrics.INFERRED, len(results))
        if hasattr(model, "take_counts"):  # a watched model: its switches become counters
            switches, rejected = model.take_counts()
            for name, n in (("weights_switches", switches), ("weights_rejected", rejected)):
                if n:
                    metrics.count(name, n)
        return results

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(int(np.asarray(x).nbytes) for x in batch)

    def get_metrics_namespace(self) -> str:
        return "BeamML_ResNet50"


def make_model_handler(
    weights: str,
    *,
    min_batch_size: int,
    max_batch_size: int,
    max_batch_duration_secs: int | None,
    runtime: str = DEFAULT_RUNTIME,
    cache_dir: str | None = None,
    threads: tuple[int, int] = (0, 0),
    weights_watch: str | None = None,
    weights_watch_interval: float = 60.0,
    accelerator: str | None = None,
) -> EmbeddingModelHandler:
    """The handler `RunInference` uses; wrap in `KeyedModelHandler` to carry keys.
    `accelerator`: what the job asked for (None: none), the model then runs on a GPU or
    fails to load."""
    return EmbeddingModelHandler(
        weights,
        min_batch_size=min_batch_size,
        max_batch_size=max_batch_size,
        max_batch_duration_secs=max_batch_duration_secs,
        runtime=runtime,
        cache_dir=cache_dir,
        threads=threads,
        weights_watch=weights_watch,
        weights_watch_interval=weights_watch_interval,
        accelerator=accelerator,
    )


class EmbedImages(beam.PTransform):
    """(ImageInfo, uint8 pixels) -> (ImageInfo, PredictionResult), batched through
    RunInference; a batch that fails becomes one dead letter per image."""

    def __init__(self, handler: EmbeddingModelHandler):
        super().__init__()
        self._handler = handler

    def expand(self, images):
        results, failed = (
            images
            | "RunInference"
            >> RunInference(KeyedModelHandler(self._handler)).with_exception_handling()
        )
        dead = failed.failed_inferences | "Dead-letter failed batches" >> beam.FlatMap(
            _failed_batch_to_dead_letters
        )
        return results, dead


def _failed_batch_to_dead_letters(failure) -> Iterable[DeadLetter]:
    batch, error = failure
    for info, _ in batch:
        metrics.dead_letter(failures.INFERENCE_ERROR)
        yield DeadLetter(
            "embed", failures.INFERENCE_ERROR, f"{type(error).__name__}: {error}", ref=info.ref
        )
