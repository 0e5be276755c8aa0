"""Shared test set-up: quiet TensorFlow, no metadata-server probes, fixture images."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("NO_GCE_CHECK", "true")
os.environ.setdefault("GCE_METADATA_HOST", "127.0.0.1:1")
os.environ.setdefault("GCE_METADATA_IP", "127.0.0.1:1")
os.environ.setdefault("GCE_METADATA_ROOT", "127.0.0.1:1")
# The tests start jobs with fork + exec (tools/processes.py) from a process whose gRPC
# clients (Pub/Sub, the Write API) are live. gRPC's fork handlers restart its poller in
# the forked child, where closing the inherited descriptors before exec makes it abort
# (SIGABRT, "epoll_wait error: Bad file descriptor"), now and then. Nothing here
# forks without exec, so the handlers are not needed. Read when gRPC initializes.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
# Converted ONNX models (--runtime onnx) go to a cache inside the checkout, shared by the
# tests' subprocesses, instead of the user's own cache folder.
os.environ.setdefault(
    "XDG_CACHE_HOME",
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".test-cache"),
)

import pytest


@pytest.fixture(scope="session")
def keras_model():
    """ResNet50 with `random:0` weights, built once for the whole session."""
    from streaming.model import inference

    return inference.load_keras_model("random:0")


@pytest.fixture(scope="session")
def direct_embed(keras_model):
    """Embeds uint8 224x224 images by calling the Keras model directly, the way a
    user would: preprocess_input on float32, then the model."""
    import numpy as np
    from keras.applications.resnet50 import preprocess_input

    def embed(pixels):
        x = preprocess_input(np.asarray(pixels, np.float32)[None].copy())
        return np.asarray(keras_model(x, training=False))[0]

    return embed
