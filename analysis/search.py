"""`embed-search`: the k current objects nearest to an image, by cosine distance.

  embed-search photo.jpg --output_dir out --weights random:0
  embed-search gs://bucket/new.jpg --table my-project:images.embeddings
  embed-search --object gs://bucket/cats/tom.jpg --table my-project:images.embeddings -k 20 --json

The query image (a local path or gs:// URI) is embedded exactly as the pipeline does
it (streaming.stages.load.decode_image, then the ResNet50 of streaming.model.inference with the same
--weights), and refused (exit 2) if those weights' fingerprint is not the one of the
table's embeddings: vectors of different weights are not comparable. An object that
is already in the table (--object, or --bucket and --name) uses its stored embedding;
one that is not is read and embedded. Only current rows count: an object's newest
generation, and nothing for deleted objects.

Exit codes: 0 results printed; 1 a source or object problem; 2 a usage error or a
model fingerprint mismatch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from analysis import rows as rows_mod
from analysis.rows import SourceError
from streaming.config import cli

EXIT_SOURCE, EXIT_USAGE = 1, 2


class FingerprintMismatch(Exception):
    """The query's model differs from the one behind the stored embeddings."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = cli.ArgumentParser(
        prog="embed-search", description=__doc__.replace("`embed-search`: ", "", 1)
    )
    add_source_args(p)
    q = p.add_argument_group("query (one of)")
    q.add_argument("image", nargs="?", help="query image: local path or gs:// URI")
    q.add_argument(
        "--object",
        help="an object of the table: gs://BUCKET/NAME, or for local rows the file's path",
    )
    q.add_argument(
        "--bucket",
        help="with --name: the object's bucket (for local rows, the absolute input folder)",
    )
    q.add_argument("--name", help="with --bucket: the object's name")
    p.add_argument("-k", "--k", type=int, default=10, help="number of results (default 10)")
    p.add_argument(
        "--weights",
        default="imagenet",
        help="weights that embed the query, as for embed-stream: imagenet "
        "(default), a .weights.h5/.keras path or gs:// URI, or random:SEED",
    )
    p.add_argument(
        "--resize_policy",
        "--resize-policy",
        dest="resize_policy",
        default="center_crop",
        choices=("center_crop", "squash", "pad"),
        help="the job's --resize_policy (default center_crop)",
    )
    p.add_argument("--max_pixels", "--max-pixels", dest="max_pixels", type=int, default=100_000_000)
    p.add_argument(
        "--max_bytes", "--max-bytes", dest="max_bytes", type=int, default=64 * 1024 * 1024
    )
    p.add_argument(
        "--use-vector-search",
        "--use_vector_search",
        dest="use_vector_search",
        action="store_true",
        help="BigQuery only: VECTOR_SEARCH (uses a vector index when there is "
        "one; not in the emulator) instead of the exact cosine query",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    given = [x for x in (args.image, args.object, args.bucket or args.name) if x]
    if len(given) != 1:
        p.error("give exactly one query: IMAGE, --object URI, or --bucket B --name N")
    if bool(args.bucket) != bool(args.name):
        p.error("--bucket and --name go together")
    if args.k < 1 or args.k > 1000:
        p.error("-k must be between 1 and 1000")
    check_source_args(p, args)
    if args.use_vector_search and not args.table:
        p.error("--use-vector-search needs --table")
    return args


def add_source_args(p: argparse.ArgumentParser) -> None:
    s = p.add_argument_group("where the embeddings are (one of)")
    s.add_argument(
        "--output_dir",
        "--output-dir",
        dest="output_dir",
        help="embed-stream's local (or gs://) output folder (reads rows/)",
    )
    s.add_argument("--table", help="BigQuery embeddings table PROJECT:DATASET.TABLE")
    s.add_argument(
        "--current_view",
        "--current-view",
        dest="current_view",
        help="the current_embeddings view P:D.V (default: its query inlined)",
    )
    s.add_argument(
        "--billing_project",
        "--billing-project",
        dest="billing_project",
        help="project that runs the queries (default: the table's)",
    )
    s.add_argument(
        "--local-endpoints",
        "--local_endpoints",
        dest="local_endpoints",
        action="store_true",
        help="use the emulators named by BIGQUERY_EMULATOR_HOST and "
        "STORAGE_EMULATOR_HOST (see emulators/README.md)",
    )
    p.add_argument(
        "--verbose", action="store_true", help="debug logging, with the traceback of an error"
    )


def check_source_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from analysis import sql

    if bool(args.output_dir) == bool(args.table):
        p.error("give exactly one of --output_dir and --table")
    for option in ("table", "current_view"):
        value = getattr(args, option)
        if value:
            try:
                sql.parse_table_id(value)
            except ValueError as e:
                p.error(f"--{option}: {e}")
    if args.current_view and not args.table:
        p.error("--current_view needs --table")


def embed_uri(
    uri: str,
    weights: str,
    *,
    policy: str = "center_crop",
    max_pixels: int = 100_000_000,
    max_bytes: int = 64 * 1024 * 1024,
):
    """(embedding, model) of the image at a local path or gs:// URI, preprocessed
    exactly as the pipeline does."""
    from streaming.records import Rejected
    from streaming.stages.load import decode_image, read_bytes

    try:
        data = read_bytes(uri, max_bytes)
        decoded = decode_image(data, policy=policy, max_pixels=max_pixels)
    except Rejected as e:
        raise SourceError(f"cannot use {uri} as a query image ({e.reason}: {e})") from None
    from streaming.model.inference import load_embedding_model

    model = load_embedding_model(weights)
    return model(decoded.pixels[None])[0], model


def check_fingerprint(
    fingerprint: str, available: list[tuple[str, int]], where: str, weights: str
) -> None:
    if not available:
        raise SourceError(f"no current embeddings in {where}")
    if fingerprint not in {fp for fp, _ in available}:
        listed = ", ".join(f"{fp} ({n} objects)" for fp, n in available)
        raise FingerprintMismatch(
            f"model fingerprint mismatch: --weights {weights} gives {fingerprint}, but the "
            f"embeddings in {where} were made with {listed}. Embeddings of different "
            "weights are not comparable: pass the --weights the job used (embed-stream "
            "prints 'model: resnet50-avgpool@FINGERPRINT' at start-up)."
        )


def search(args: argparse.Namespace) -> dict[str, Any]:
    """Runs one search; returns the JSON-able answer."""
    if args.local_endpoints:
        from streaming.support import clients

        clients.use_local_endpoints()
    source = rows_mod.open_source(args, args.local_endpoints)
    query: dict[str, Any]
    stored = None
    if args.image:
        query = {"image": args.image}
        uri = args.image
    else:
        if args.object:
            stored = source.lookup_uri(args.object)
            uri = args.object
        else:
            stored = source.lookup(args.bucket, args.name)
            uri = rows_mod.uri_of({"bucket": args.bucket, "name": args.name})
        query = {"object": uri}
    if stored is not None and stored.get("embedding"):
        vector = np.asarray(stored["embedding"], np.float64)
        fingerprint = stored["model_fingerprint"]
        query["embedding_from"] = "stored row"
    else:
        if not args.image and not _exists(uri):
            raise SourceError(
                f"{uri} is neither a current object of {source.description} nor a readable file"
            )
        vector, model = embed_uri(
            uri,
            args.weights,
            policy=args.resize_policy,
            max_pixels=args.max_pixels,
            max_bytes=args.max_bytes,
        )
        fingerprint = model.fingerprint
        check_fingerprint(fingerprint, source.fingerprints(), source.description, args.weights)
        query["embedding_from"] = f"--weights {args.weights}"
    query["model_fingerprint"] = fingerprint
    results = source.nearest(np.asarray(vector, np.float64), fingerprint, args.k)
    for rank, r in enumerate(results, 1):
        r["rank"] = rank
    return {
        "query": query,
        "source": source.description,
        "k": args.k,
        "method": "vector_search"
        if getattr(source, "use_vector_search", False)
        else "exact_cosine",
        "results": results,
    }


def _exists(uri: str) -> bool:
    from apache_beam.io.filesystems import FileSystems

    try:
        return FileSystems.exists(uri)
    except Exception:  # noqa: BLE001 - an unreachable store counts as missing
        return False


def format_table(answer: dict[str, Any]) -> str:
    q = answer["query"]
    head = (
        f"query: {q.get('image') or q.get('object')}  (embedding: {q['embedding_from']}, "
        f"model fingerprint {q['model_fingerprint']}; {answer['method']} over "
        f"{answer['source']})"
    )
    if not answer["results"]:
        return head + "\nno results"
    lines = [head, f"{'rank':>4}  {'distance':>12}  {'size':>11}  {'format':<6}  object"]
    for r in answer["results"]:
        size = f"{r['width']}x{r['height']}" if r.get("width") else ""
        lines.append(
            f"{r['rank']:>4}  {r['distance']:>12.6g}  {size:>11}  "
            f"{r.get('format') or '':<6}  {r['uri']}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.verbose)
    try:
        with cli.quiet_native_stderr(enabled=not args.verbose):
            answer = search(args)
    except FingerprintMismatch as e:
        print(f"embed-search: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (SourceError, ValueError) as e:
        print(f"embed-search: {e}", file=sys.stderr)
        return EXIT_SOURCE
    except Exception as e:  # noqa: BLE001 - e.g. BigQuery NotFound / Forbidden
        from streaming.model.inference import WeightsUnavailableError

        if isinstance(e, WeightsUnavailableError):
            print(f"embed-search: {e}", file=sys.stderr)
            return EXIT_USAGE
        return cli.fail("embed-search", e)
    if args.json:
        print(json.dumps(answer, indent=2, default=str))
    else:
        print(format_table(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
