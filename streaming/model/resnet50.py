"""ResNet50's weights as plain arrays, and its ONNX graph built straight from them.

ResNet50 is a fixed architecture, so the graph ONNX Runtime runs is written here with
`onnx.helper` from the weights alone: no TensorFlow, no Keras layer, no graph
conversion. Building it takes a second and little more memory than the weights
(94 MB), where converting the Keras model with tf2onnx took tens of seconds and
gigabytes (see docs/performance.md).

The weights are the list Keras's `ResNet50(include_top=False, pooling="avg")` returns
from `get_weights()`, in that order (`weight_specs()`), so the fingerprint computed
over them is the one the TensorFlow runtime reports for the same model. They come
from `random_weights(seed)` (the values `random:SEED` gives the Keras model, drawn
without building it) or `read_weights_h5` (a Keras `.weights.h5` file, or a
Keras 2 style file such as the published `..._notop.h5`, read with h5py); anything
else goes through Keras once (`streaming.model.inference`).

The graph computes exactly the TensorFlow runtime's function: uint8 RGB pixels
(n, 224, 224, 3) -> `preprocess_input` ("caffe": BGR, ImageNet mean subtracted) ->
ResNet50 -> global average pooling -> float32 (n, 2048). Each batch normalization is
folded into the convolution before it (inference mode) and the RGB->BGR swap into the
first convolution's kernel.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np

from streaming.model.spec import CAFFE_MEAN_BGR, EMBEDDING_DIM, INPUT_SHAPE

BN_EPSILON = 1.001e-5  # keras.applications.resnet's BatchNormalization(epsilon=...)
# (stage name, filters, blocks, stride of its first block) of ResNet50.
STAGES = (("conv2", 64, 3, 1), ("conv3", 128, 4, 2), ("conv4", 256, 6, 2), ("conv5", 512, 3, 2))
_BN_VARS = ("gamma", "beta", "moving_mean", "moving_variance")


def _conv_layers() -> list[tuple[str, int, int, int, int]]:
    """(name, kernel size, in channels, out channels, stride) of every convolution, in
    the order Keras lists the model's layers (a block's shortcut after its second
    convolution)."""
    convs = [("conv1_conv", 7, 3, 64, 2)]
    channels = 64
    for stage, filters, blocks, stride in STAGES:
        for b in range(1, blocks + 1):
            name, first = f"{stage}_block{b}", b == 1
            s = stride if first else 1
            convs += [
                (f"{name}_1_conv", 1, channels, filters, s),
                (f"{name}_2_conv", 3, filters, filters, 1),
            ]
            if first:
                convs.append((f"{name}_0_conv", 1, channels, 4 * filters, s))
            convs.append((f"{name}_3_conv", 1, filters, 4 * filters, 1))
            channels = 4 * filters
    return convs


def _layer_order() -> list[str]:
    """Names of the layers that hold weights, in Keras's `model.layers` order: each
    convolution's batch normalization follows it, except in a block with a shortcut,
    where Keras lists `_0_conv, _3_conv, _0_bn, _3_bn`."""
    order: list[str] = []
    for name, *_ in _conv_layers():
        bn = name.replace("_conv", "_bn")
        if name.endswith("_3_conv") and order[-1].endswith("_0_conv"):
            order += [name, order[-1].replace("_conv", "_bn"), bn]
        elif name.endswith("_0_conv"):
            order.append(name)
        else:
            order += [name, bn]
    return order


def weight_specs() -> list[tuple[str, tuple[int, ...]]]:
    """(`layer/variable`, shape) of every weight, in `model.get_weights()` order."""
    convs = {name: (k, cin, cout) for name, k, cin, cout, _ in _conv_layers()}
    specs = []
    for layer in _layer_order():
        if layer in convs:
            k, cin, cout = convs[layer]
            specs += [(f"{layer}/kernel", (k, k, cin, cout)), (f"{layer}/bias", (cout,))]
        else:
            cout = convs[layer.replace("_bn", "_conv")][2]
            specs += [(f"{layer}/{v}", (cout,)) for v in _BN_VARS]
    return specs


def random_weights(seed: int) -> list[np.ndarray]:
    """The weights `random:SEED` names: every kernel Glorot-uniform from
    `np.random.default_rng(seed)`, drawn in weight order; biases and batch-norm betas
    and means zero, gammas and variances one (Keras's initial values)."""
    rng = np.random.default_rng(seed)
    weights = []
    for path, shape in weight_specs():
        if len(shape) >= 2:
            receptive = int(np.prod(shape[:-2]))
            limit = np.sqrt(6.0 / (receptive * (shape[-2] + shape[-1])))
            weights.append((rng.random(shape, dtype=np.float32) * 2.0 - 1.0) * np.float32(limit))
        else:
            one = path.endswith(("/gamma", "/moving_variance"))
            weights.append(np.full(shape, 1.0 if one else 0.0, np.float32))
    return weights


def fingerprint(weights: Iterable[np.ndarray]) -> str:
    """sha256 (first 16 hex digits) over every weight tensor, in order."""
    digest = hashlib.sha256()
    for w in weights:
        arr = np.ascontiguousarray(w, dtype=np.float32)
        digest.update(str(arr.shape).encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()[:16]


def check_weights(weights: Sequence[np.ndarray]) -> None:
    """Raises ValueError naming the first weight whose shape is not ResNet50's."""
    specs = weight_specs()
    if len(weights) != len(specs):
        raise ValueError(
            f"{len(weights)} weight tensors; ResNet50 (include_top=False) has {len(specs)}"
        )
    for (path, shape), w in zip(specs, weights):
        if tuple(np.shape(w)) != shape:
            raise ValueError(f"weight {path} has shape {tuple(np.shape(w))}, expected {shape}")


def read_weights_h5(path: str) -> list[np.ndarray] | None:
    """The weights in a ResNet50 weights file, read with h5py, or None when the file
    is laid out neither as Keras 3 writes `.weights.h5` (`layers/<class>_<i>/vars/<j>`,
    numbered per layer class in model order) nor as Keras 2 wrote `.h5` weights
    (`<layer>/<layer>/<variable>:0`, by layer name). A file that is not HDF5 raises
    OSError."""
    import h5py

    order = _layer_order()
    with h5py.File(path, "r") as f:
        if "layers" in f and "conv2d" in f["layers"]:
            names, seen = [], {"conv2d": 0, "batch_normalization": 0}
            for layer in order:
                kind = "conv2d" if layer.endswith("_conv") else "batch_normalization"
                i, seen[kind] = seen[kind], seen[kind] + 1
                names.append(f"layers/{kind}_{i}/vars" if i else f"layers/{kind}/vars")
            groups = [f.get(n) for n in names]
            if any(g is None for g in groups):
                return None
            return _arrays(g[str(j)] for g in groups for j in range(len(g)))
        if all(layer in f for layer in order):
            arrays = []
            for layer in order:
                group = f[layer]
                wanted = ("kernel", "bias") if layer.endswith("_conv") else _BN_VARS
                held = {n.split("/")[-1].split(":")[0]: n for n in _names(group)}
                if set(held) != set(wanted):
                    return None
                arrays += [group[held[v]] for v in wanted]
            return _arrays(arrays)
    return None


def write_weights_h5(path: str, weights: Sequence[np.ndarray]) -> None:
    """Writes `weights` as Keras 3 writes ResNet50's `.weights.h5` (what
    `read_weights_h5` and Keras's `load_weights` read), without TensorFlow."""
    import h5py

    check_weights(weights)
    it = iter(weights)
    seen = {"conv2d": 0, "batch_normalization": 0}
    with h5py.File(path, "w") as f:
        for layer in _layer_order():
            kind = "conv2d" if layer.endswith("_conv") else "batch_normalization"
            i, seen[kind] = seen[kind], seen[kind] + 1
            group = f.create_group(f"layers/{kind}_{i}/vars" if i else f"layers/{kind}/vars")
            for j in range(2 if kind == "conv2d" else 4):
                group.create_dataset(str(j), data=np.asarray(next(it), np.float32))
        f.create_group("vars")


def _names(group) -> list[str]:
    """Every dataset path under an h5py group."""
    import h5py

    found: list[str] = []
    group.visititems(lambda n, o: found.append(n) if isinstance(o, h5py.Dataset) else None)
    return found


def _arrays(datasets) -> list[np.ndarray]:
    return [np.asarray(d[()], dtype=np.float32) for d in datasets]


def to_onnx(weights: Sequence[np.ndarray], opset: int = 17) -> bytes:
    """The serialized ONNX graph `pixels` uint8 (n, 224, 224, 3) -> `embedding`
    float32 (n, 2048) for ResNet50 with these weights (`weight_specs()` order)."""
    from onnx import TensorProto, helper, numpy_helper

    check_weights(weights)
    by_path = {path: w for (path, _), w in zip(weight_specs(), weights)}
    nodes, inits = [], []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value, np.float32), name))
        return name

    def conv_bn(x: str, layer: str, k: int, stride: int, relu: bool) -> str:
        """Conv with its batch normalization folded in (float64, then float32)."""
        kernel = by_path[f"{layer}/kernel"].astype(np.float64)
        bias = by_path[f"{layer}/bias"].astype(np.float64)
        gamma, beta, mean, var = (
            by_path[f"{layer[:-5]}_bn/{v}"].astype(np.float64) for v in _BN_VARS
        )
        scale = gamma / np.sqrt(var + BN_EPSILON)
        if layer == "conv1_conv":
            kernel = kernel[:, :, ::-1, :]  # the graph's input is RGB; Keras's is BGR
        w = kernel.transpose(3, 2, 0, 1) * scale[:, None, None, None]  # (out, in, kh, kw)
        b = (bias - mean) * scale + beta
        pad = (k - 1) // 2 if layer != "conv1_conv" else 3
        out = f"{layer}_out"
        nodes.append(
            helper.make_node(
                "Conv",
                [x, const(f"{layer}/w", w), const(f"{layer}/b", b)],
                [out],
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[pad] * 4,
                name=layer,
            )
        )
        if not relu:
            return out
        nodes.append(helper.make_node("Relu", [out], [f"{layer}_relu"]))
        return f"{layer}_relu"

    nodes += [
        helper.make_node("Transpose", ["pixels"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Cast", ["nchw"], ["nchw_f"], to=TensorProto.FLOAT),
        helper.make_node(
            "Sub",
            ["nchw_f", const("mean_rgb", np.array(CAFFE_MEAN_BGR[::-1]).reshape(1, 3, 1, 1))],
            ["centered"],
        ),
    ]
    x = conv_bn("centered", "conv1_conv", 7, 2, relu=True)
    # Keras pads with zeros before max pooling; after a ReLU every value is >= 0, so
    # ONNX's padding (ignored by the max) gives the same result.
    nodes.append(
        helper.make_node(
            "MaxPool", [x], ["pool1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
        )
    )
    x = "pool1"
    for stage, _filters, blocks, stride in STAGES:
        for b in range(1, blocks + 1):
            name, s = f"{stage}_block{b}", stride if b == 1 else 1
            shortcut = conv_bn(x, f"{name}_0_conv", 1, s, relu=False) if b == 1 else x
            y = conv_bn(x, f"{name}_1_conv", 1, s, relu=True)
            y = conv_bn(y, f"{name}_2_conv", 3, 1, relu=True)
            y = conv_bn(y, f"{name}_3_conv", 1, 1, relu=False)
            nodes += [
                helper.make_node("Add", [shortcut, y], [f"{name}_add"]),
                helper.make_node("Relu", [f"{name}_add"], [f"{name}_out"]),
            ]
            x = f"{name}_out"
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["avg_pool"]),
        helper.make_node("Flatten", ["avg_pool"], ["embedding"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "resnet50_avgpool",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["n", *INPUT_SHAPE])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", EMBEDDING_DIM])],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="image-embeddings"
    )
    model.ir_version = 8  # what opset 17 needs; readable by older ONNX Runtimes too
    return model.SerializeToString()
