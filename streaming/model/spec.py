"""The model's contract, written once: what goes in, what comes out, and how `--weights`
names the weights.

In: uint8 RGB images of `INPUT_SHAPE` (224x224, made by `stages/preprocess.py`); the
model applies ResNet50's own `preprocess_input` ("caffe": BGR, `CAFFE_MEAN_BGR`
subtracted) per batch, so uint8 travels between stages. Out: `EMBEDDING_DIM` float32
per image, named `MODEL_NAME@<fingerprint>`. Weights: `imagenet`, `random:SEED` (seeded
random values, for offline smoke tests) or a `.weights.h5` / `.keras` file, a local path
or any Beam filesystem URI such as gs://. The options, the preflight checks, the Keras
loader and the ONNX Runtime cache all read a spec through `parse_weights`.

Pure and light: `--help` and the option checks import it without Beam or TensorFlow.
"""

from __future__ import annotations

import dataclasses

from streaming.config.names import is_gcs_uri

MODEL_NAME = "resnet50-avgpool"
INPUT_SIZE = 224
INPUT_SHAPE = (INPUT_SIZE, INPUT_SIZE, 3)
EMBEDDING_DIM = 2048
# preprocess_input's ImageNet mean, in the BGR order it subtracts it.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

RANDOM_PREFIX = "random:"
WEIGHTS_FILE_SUFFIXES = (".weights.h5", ".keras", ".h5")
IMAGENET, RANDOM, FILE = "imagenet", "random", "file"


@dataclasses.dataclass(frozen=True)
class Weights:
    """One `--weights` value, parsed: its kind and, for `random:SEED`, the seed."""

    spec: str
    kind: str  # IMAGENET, RANDOM or FILE
    seed: int | None = None

    @property
    def on_gcs(self) -> bool:
        return self.kind == FILE and is_gcs_uri(self.spec)


def weights_kind(spec: str) -> str:
    """IMAGENET, RANDOM (any `random:` value, checked or not) or FILE."""
    if spec == IMAGENET:
        return IMAGENET
    return RANDOM if spec.startswith(RANDOM_PREFIX) else FILE


def is_fixed(spec: str) -> bool:
    """Whether the spec itself names the values (no file to read or hash)."""
    return weights_kind(spec) != FILE


def parse_weights(spec: str) -> Weights:
    """The kind of a `--weights` value. A file is any other value; whether its name has
    a weights file's suffix is `weights_syntax_problem`'s question.

    Raises:
      ValueError: `random:` without an integer seed, naming the value.
    """
    kind = weights_kind(spec)
    if kind == RANDOM:
        try:
            seed = int(spec[len(RANDOM_PREFIX) :])
        except ValueError:
            raise ValueError(
                f"--weights {spec!r}: expected random:<integer seed> (random:SEED)"
            ) from None
        return Weights(spec, RANDOM, seed)
    return Weights(spec, kind)


def weights_syntax_problem(spec: str) -> str | None:
    """Why `spec` is no `--weights` value (one line naming it), or None."""
    try:
        weights = parse_weights(spec)
    except ValueError as e:
        return str(e)
    if weights.kind == FILE and not spec.endswith(WEIGHTS_FILE_SUFFIXES):
        return (
            f"--weights {spec!r}: expected imagenet, random:SEED, or a .weights.h5 / "
            ".keras file (local or gs://)"
        )
    return None


def split_model_id(model_id: str | None) -> tuple[str, str, str | None]:
    """(model name, weights fingerprint, runtime or None) of a result's model id,
    `<name>@<fingerprint>+<runtime>` (`inference.result_model_id`)."""
    name, _, rest = (model_id or "").partition("@")
    fingerprint, _, runtime = rest.partition("+")
    return name, fingerprint, runtime or None
