"""Builds ResNet50's ONNX graph for some weights once, into the cache a Dataflow job reads.

  python -m streaming.model.prepare --weights gs://B/models/r50.weights.h5 \\
      --model_cache_dir gs://B/models/onnx-cache/

Run it before the first launch (and after new weights): the job's workers then find the
graph under `--model_cache_dir` and load it without importing TensorFlow, instead of
the first worker on each cache building it (seconds for a weights file; `imagenet` and
`.keras` files also import TensorFlow and build the Keras model). A cache that already
holds the entry is left as it is.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from streaming.config import cli

PROG = "python -m streaming.model.prepare"


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument(
        "--weights",
        type=str,
        required=True,
        help="The job's --weights: imagenet, random:SEED, or a local or "
        "gs:// .weights.h5/.keras file.",
    )
    parser.add_argument(
        "--model_cache_dir",
        type=str,
        required=True,
        help="The job's --model_cache_dir: a folder or gs:// prefix.",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    cli.setup_logging(False)
    try:
        from streaming.model import inference

        with cli.quiet_native_stderr():
            loaded = inference.load_embedding_model(args.weights, "onnx", args.model_cache_dir)
    except Exception as e:  # noqa: BLE001 - one line, the traceback at debug level
        return cli.fail(PROG, e)
    print(f"{args.model_cache_dir}: {loaded.model_id} ready ({loaded.runtime_version})")
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
