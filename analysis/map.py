"""`embed-map`: the embedding space in 2-D, as a PNG and a self-contained HTML page.

  embed-map --output_dir out --png map.png --html map.html --color-by prefix
  embed-map --table my-project:images.embeddings --sample 5000 --color-by date

Reads the current embeddings of one model (the most common fingerprint unless
--model_fingerprint says otherwise; vectors of different weights are not comparable),
a repeatable sample of at most --sample of them, projects them to 2-D (PCA by default;
--method tsne with scikit-learn installed), and draws one point per object coloured by
--color-by, with thumbnails read from the objects themselves (local files or gs://,
through Beam's FileSystems). The HTML page shows each object's thumbnail and fields on
hover and needs nothing but a browser.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from analysis import projection, render
from analysis import rows as rows_mod
from analysis.rows import SourceError
from analysis.search import add_source_args, check_source_args
from streaming.config import cli

COLOR_BY = ("prefix", "bucket", "content_type", "date", "format", "source")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = cli.ArgumentParser(prog="embed-map", description=__doc__.replace("`embed-map`: ", "", 1))
    add_source_args(p)
    p.add_argument(
        "--png",
        default="embedding-map.png",
        help="PNG to write (default embedding-map.png; '' for none)",
    )
    p.add_argument(
        "--html",
        default="embedding-map.html",
        help="HTML page to write (default embedding-map.html; '' for none)",
    )
    p.add_argument(
        "--color-by",
        "--color_by",
        dest="color_by",
        default="prefix",
        choices=COLOR_BY,
        help="colour points by the object's first path "
        "component (prefix, default), bucket, content_type, date (of the "
        "upload event), format or source",
    )
    p.add_argument(
        "--sample",
        type=int,
        default=2000,
        help="at most this many objects (a repeatable sample; default 2000)",
    )
    p.add_argument(
        "--method",
        choices=projection.METHODS,
        default="pca",
        help="pca (default) or tsne (needs scikit-learn)",
    )
    p.add_argument(
        "--model_fingerprint",
        "--model-fingerprint",
        dest="model_fingerprint",
        help="which model's embeddings (default: the most common)",
    )
    p.add_argument(
        "--thumbnails",
        type=int,
        default=200,
        help="objects whose thumbnail the HTML page embeds (default 200)",
    )
    p.add_argument(
        "--png_thumbnails",
        "--png-thumbnails",
        dest="png_thumbnails",
        type=int,
        default=16,
        help="thumbnails drawn on the PNG, spread over the map (default 16)",
    )
    p.add_argument("--title", default=None, help="title of the map")
    args = p.parse_args(argv)
    check_source_args(p, args)
    if args.sample < 1:
        p.error("--sample must be at least 1")
    if not args.png and not args.html:
        p.error("nothing to write: give --png or --html")
    return args


def label_of(row: dict[str, Any], color_by: str) -> str:
    if color_by == "prefix":
        name = row.get("name") or ""
        return name.split("/", 1)[0] + "/" if "/" in name else "(top level)"
    if color_by == "date":
        value = row.get("event_time") or row.get("processing_time")
        if value is None:
            return "(unknown)"
        return value.date().isoformat() if hasattr(value, "date") else str(value)[:10]
    value = row.get(color_by)
    return str(value) if value not in (None, "") else "(none)"


def read_thumbnails(
    rows: Sequence[dict[str, Any]], indices: Sequence[int], max_bytes: int = 32 * 1024 * 1024
) -> dict[int, Any]:
    """Pillow thumbnails of the given rows' objects; unreadable ones are skipped."""
    from streaming.records import Rejected
    from streaming.stages.load import read_bytes

    out = {}
    for i in indices:
        try:
            data = read_bytes(rows_mod.uri_of(rows[i]), max_bytes)
        except Rejected:
            continue
        img = render.thumbnail(data)
        if img is not None:
            out[i] = img
    return out


def build_map(args: argparse.Namespace) -> dict[str, Any]:
    if args.local_endpoints:
        from streaming.support import clients

        clients.use_local_endpoints()
    source = rows_mod.open_source(args, args.local_endpoints)
    fingerprints = source.fingerprints()
    if not fingerprints:
        raise SourceError(f"no current embeddings in {source.description}")
    fingerprint = args.model_fingerprint or fingerprints[0][0]
    if fingerprint not in dict(fingerprints):
        raise SourceError(
            f"no current embeddings of model fingerprint {fingerprint} in "
            f"{source.description} (there are: "
            + ", ".join(f"{fp} ({n})" for fp, n in fingerprints)
            + ")"
        )
    others = [(fp, n) for fp, n in fingerprints if fp != fingerprint]
    if others:
        print(
            f"embed-map: mapping model {fingerprint}; not mixing in "
            + ", ".join(f"{n} objects of {fp}" for fp, n in others),
            file=sys.stderr,
        )
    rows = source.sample(fingerprint, args.sample)
    dims = {len(r["embedding"]) for r in rows}
    if len(dims) > 1:
        raise SourceError(f"embeddings of fingerprint {fingerprint} differ in length: {dims}")
    emb = np.array([r["embedding"] for r in rows], np.float64)
    try:
        coords, how = projection.project(emb, args.method)
    except RuntimeError as e:
        raise SourceError(str(e)) from None
    labels = [label_of(r, args.color_by) for r in rows]
    colors, legend = render.assign_colors(labels, ordered=args.color_by == "date")
    total = dict(fingerprints)[fingerprint]
    title = args.title or (
        f"{len(rows)} images of {source.description}"
        if len(rows) == total
        else f"{len(rows)} of {total} images of {source.description}"
    )
    subtitle = f"{how}; model fingerprint {fingerprint}; colour: {args.color_by}"
    thumb_idx = render.spread_sample(coords, range(len(rows)), max(0, args.thumbnails))
    thumbs = read_thumbnails(rows, thumb_idx)
    written = []
    if args.png:
        import matplotlib  # noqa: F401 - fail before any file is written

        png_idx = render.spread_sample(coords, sorted(thumbs), max(0, args.png_thumbnails))
        _makedirs(args.png)
        render.write_png(
            args.png,
            coords,
            colors,
            legend,
            title=title,
            subtitle=subtitle,
            color_by=args.color_by,
            thumbs={i: thumbs[i] for i in png_idx},
        )
        written.append(args.png)
    if args.html:
        infos = [render.info_of(r, rows_mod.uri_of(r)) for r in rows]
        for info, label in zip(infos, labels):
            info["colour"] = f"{args.color_by}: {label}"
        _makedirs(args.html)
        render.write_html(
            args.html,
            coords,
            colors,
            legend,
            infos,
            {i: render.jpeg_data_uri(img) for i, img in thumbs.items()},
            title=title,
            subtitle=subtitle,
            color_by=args.color_by,
        )
        written.append(args.html)
    return {
        "points": len(rows),
        "thumbnails": len(thumbs),
        "written": written,
        "model_fingerprint": fingerprint,
        "projection": how,
    }


def _makedirs(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.verbose)
    try:
        summary = build_map(args)
    except (SourceError, ValueError) as e:
        print(f"embed-map: {e}", file=sys.stderr)
        return 1
    except ImportError as e:
        if "matplotlib" not in str(e):
            raise
        print(
            "embed-map: the PNG needs matplotlib (pip install 'image-embeddings[analysis]'"
            "); --png '' writes the HTML page only",
            file=sys.stderr,
        )
        return 1
    except Exception as e:  # noqa: BLE001 - e.g. BigQuery NotFound / Forbidden
        return cli.fail("embed-map", e)
    print(
        f"{summary['points']} points ({summary['thumbnails']} thumbnails), "
        f"{summary['projection']}: " + ", ".join(summary["written"])
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
