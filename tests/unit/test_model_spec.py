"""The model contract and the --weights syntax, read by the options, preflight, the Keras
loader and the ONNX cache alike."""

import pytest

from streaming import preflight
from streaming.model import spec
from streaming.stages import preprocess


@pytest.mark.parametrize(
    "value, kind, seed",
    [
        ("imagenet", spec.IMAGENET, None),
        ("random:7", spec.RANDOM, 7),
        ("gs://b/m/r50.weights.h5", spec.FILE, None),
        ("/opt/w/r50.keras", spec.FILE, None),
    ],
)
def test_weights_kinds(value, kind, seed):
    weights = spec.parse_weights(value)
    assert (weights.kind, weights.seed) == (kind, seed)
    assert spec.is_fixed(value) is (kind != spec.FILE)
    assert weights.on_gcs is value.startswith("gs://")


def test_a_random_spec_needs_an_integer_seed():
    with pytest.raises(ValueError, match="expected random:<integer seed>"):
        spec.parse_weights("random:x")
    assert spec.weights_kind("random:x") == spec.RANDOM  # classified, checked elsewhere


@pytest.mark.parametrize("value", ["imagenet", "random:0", "w.weights.h5", "w.keras", "w.h5"])
def test_valid_weights_have_no_syntax_problem(value):
    assert spec.weights_syntax_problem(value) is None


@pytest.mark.parametrize("value", ["random:", "weights.bin", "imagenet21k"])
def test_preflight_names_the_syntax_problem(value):
    problem = preflight.weights_problem(value, lambda _: True)
    assert problem == spec.weights_syntax_problem(value) and value in problem


def test_the_preprocessing_makes_the_models_input():
    assert preprocess.INPUT_SIZE == spec.INPUT_SHAPE[0] == spec.INPUT_SHAPE[1] == 224
