"""The map as a PNG (matplotlib, Agg) and as one self-contained HTML page (inline SVG,
base64 JPEG thumbnails, a few lines of inline JavaScript for the hover card; nothing
loaded from anywhere else)."""

from __future__ import annotations

import base64
import collections
import html
import io
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

# matplotlib's tab10, and grey for "other": the same colours in the PNG and the HTML.
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#17becf",
    "#7f7f7f",
)
OTHER = "(other)"
OTHER_COLOR = "#c7c7c7"
MAX_CATEGORIES = len(PALETTE) - 1
# viridis at 0, .25, .5, .75, 1: for dates, an ordered scale
VIRIDIS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))


def sequential_color(t: float) -> str:
    t = min(1.0, max(0.0, t)) * (len(VIRIDIS) - 1)
    i = min(int(t), len(VIRIDIS) - 2)
    a, b = np.array(VIRIDIS[i]), np.array(VIRIDIS[i + 1])
    r, g, bl = (a + (b - a) * (t - i)).round().astype(int)
    return f"#{r:02x}{g:02x}{bl:02x}"


Legend = list[tuple[str, str, int]]


def assign_colors(labels: Sequence[str], ordered: bool = False) -> tuple[list[str], Legend]:
    """A colour per point and the legend [(label, colour, count)]. Categorical: the
    most frequent categories get the palette, the rest are grouped as "(other)".
    Ordered (dates): every value on a sequential scale, in order."""
    counts = collections.Counter(labels)
    if ordered:
        values = sorted(counts)
        span = max(1, len(values) - 1)
        colors = {
            v: sequential_color(i / span) if len(values) > 1 else PALETTE[0]
            for i, v in enumerate(values)
        }
        legend = [(v, colors[v], counts[v]) for v in values]
        if len(legend) > 12:  # keep the legend short: first, some middle, last
            step = (len(legend) - 1) / 10
            legend = [legend[round(i * step)] for i in range(11)]
        return [colors[x] for x in labels], legend
    top = [v for v, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    if len(top) > MAX_CATEGORIES + 1:
        keep = top[:MAX_CATEGORIES]
    else:
        keep = top
    colors = {v: PALETTE[i] for i, v in enumerate(keep)}
    point_colors = [colors.get(x, OTHER_COLOR) for x in labels]
    legend = [(v, colors[v], counts[v]) for v in keep]
    rest = sum(n for v, n in counts.items() if v not in colors)
    if rest:
        legend.append((OTHER, OTHER_COLOR, rest))
    return point_colors, legend


def thumbnail(data: bytes, size: int = 96):
    """A small RGB Pillow image of encoded image bytes (EXIF orientation applied), or
    None when the bytes are not an image."""
    from PIL import Image, ImageOps

    from streaming.stages.load import to_rgb

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.draft("RGB", (size, size))
            img = ImageOps.exif_transpose(img)
            img = to_rgb(img)
            img.thumbnail((size, size))
            return img.copy()
    except Exception:  # noqa: BLE001 - a thumbnail is a nicety, never a failure
        return None


def jpeg_data_uri(img, quality: int = 80) -> str:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def spread_sample(coords: np.ndarray, candidates: Sequence[int], m: int) -> list[int]:
    """Up to m of the candidate point indices, spread over the map (farthest-point
    sampling), so that thumbnails overlap as little as possible."""
    candidates = list(candidates)
    if m <= 0:
        return []
    if len(candidates) <= m:
        return candidates
    pts = coords[candidates]
    centre = pts.mean(axis=0)
    chosen = [int(np.argmax(((pts - centre) ** 2).sum(axis=1)))]
    dist = ((pts - pts[chosen[0]]) ** 2).sum(axis=1)
    while len(chosen) < m:
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, ((pts - pts[nxt]) ** 2).sum(axis=1))
    return [candidates[i] for i in chosen]


def write_png(
    path: str,
    coords: np.ndarray,
    colors: Sequence[str],
    legend: Sequence[tuple[str, str, int]],
    *,
    title: str,
    subtitle: str,
    color_by: str,
    thumbs: dict[int, Any],
    dpi: int = 100,
) -> None:
    """The scatter plot with a legend and thumbnails (point index -> Pillow image)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    fig = Figure(figsize=(11, 8.5), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.scatter(
        coords[:, 0],
        coords[:, 1],
        c=list(colors),
        s=22,
        alpha=0.85,
        edgecolors="white",
        linewidths=0.4,
        zorder=2,
    )
    for i, img in thumbs.items():
        # beside its point, linked to it by a short line, so the point stays visible
        box = OffsetImage(np.asarray(img), zoom=0.5)
        ab = AnnotationBbox(
            box,
            (coords[i, 0], coords[i, 1]),
            xybox=(0, 34),
            boxcoords="offset points",
            frameon=True,
            pad=0.15,
            bboxprops={"edgecolor": colors[i], "linewidth": 1.5},
            arrowprops={"arrowstyle": "-", "color": colors[i], "lw": 1},
            zorder=3,
        )
        ax.add_artist(ab)
    from matplotlib.lines import Line2D

    handles = [
        Line2D(
            [0],
            [0],
            marker="o",
            linestyle="",
            markerfacecolor=c,
            markeredgecolor="white",
            markersize=8,
            label=f"{label} ({n})",
        )
        for label, c, n in legend
    ]
    if handles:
        ax.legend(
            handles=handles,
            title=color_by,
            fontsize=8,
            title_fontsize=9,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            borderaxespad=0,
        )
    if len(coords):
        span_x = np.ptp(coords[:, 0]) or 1.0
        span_y = np.ptp(coords[:, 1]) or 1.0
        ax.set_xlim(coords[:, 0].min() - 0.1 * span_x, coords[:, 0].max() + 0.1 * span_x)
        # thumbnails sit above their points: more room at the top
        top = 0.25 if thumbs else 0.1
        ax.set_ylim(coords[:, 1].min() - 0.1 * span_y, coords[:, 1].max() + top * span_y)
    ax.set_title(title + "\n" + subtitle, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    fig.tight_layout()
    fig.savefig(path, format="png")


_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 16px; color: #222; }}
h1 {{ font-size: 18px; margin: 0 0 4px; }}
p.sub {{ margin: 0 0 12px; color: #555; }}
#wrap {{ display: flex; gap: 16px; align-items: flex-start; }}
svg {{ border: 1px solid #ddd; background: #fff; max-width: 100%; height: auto; }}
circle {{ stroke: #fff; stroke-width: 0.8; cursor: pointer; }}
circle:hover, circle.on {{ stroke: #000; stroke-width: 2; }}
ul.legend {{ list-style: none; padding: 0; margin: 0; font-size: 13px; }}
ul.legend li {{ margin: 2px 0; white-space: nowrap; }}
ul.legend span {{ display: inline-block; width: 11px; height: 11px; border-radius: 50%;
  margin-right: 6px; vertical-align: middle; }}
#card {{ position: fixed; display: none; pointer-events: none; background: #fff;
  border: 1px solid #999; border-radius: 4px; padding: 6px; font-size: 12px;
  box-shadow: 0 2px 6px rgba(0,0,0,.2); max-width: 320px; z-index: 2; }}
#card img {{ display: block; max-width: 160px; max-height: 160px; margin-bottom: 4px; }}
#card table {{ border-collapse: collapse; }}
#card td {{ padding: 0 6px 0 0; vertical-align: top; word-break: break-all; }}
#card td:first-child {{ color: #777; white-space: nowrap; word-break: normal; }}
</style>
</head>
<body>
<h1>{title}</h1>
<p class="sub">{subtitle}</p>
<div id="wrap">
<svg id="map" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" aria-label="{title}">
{circles}
</svg>
<div><strong>{color_by}</strong>
<ul class="legend">
{legend}
</ul></div>
</div>
<div id="card"></div>
<script type="application/json" id="points">{points_json}</script>
<script>
(function () {{
  var points = JSON.parse(document.getElementById("points").textContent);
  var card = document.getElementById("card");
  function esc(s) {{
    return String(s).replace(/[&<>"']/g, function (c) {{
      return {{"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}}[c];
    }});
  }}
  function show(ev) {{
    var p = points[+ev.target.getAttribute("data-i")];
    if (!p) return;
    var rows = "";
    for (var k in p.info) {{
      if (p.info[k] !== null && p.info[k] !== "") rows += "<tr><td>" + esc(k) + "</td><td>" + esc(p.info[k]) + "</td></tr>";
    }}
    if (p.also.length) rows += "<tr><td>also here</td><td>" + p.also.map(esc).join("<br>") + "</td></tr>";
    card.innerHTML = (p.thumb ? '<img alt="" src="' + p.thumb + '">' : "") + "<table>" + rows + "</table>";
    card.style.display = "block";
    var x = ev.clientX + 14, y = ev.clientY + 14;
    if (x + card.offsetWidth > window.innerWidth) x = ev.clientX - card.offsetWidth - 14;
    if (y + card.offsetHeight > window.innerHeight) y = ev.clientY - card.offsetHeight - 14;
    card.style.left = Math.max(0, x) + "px";
    card.style.top = Math.max(0, y) + "px";
  }}
  var circles = document.querySelectorAll("circle[data-i]");
  for (var i = 0; i < circles.length; i++) {{
    circles[i].addEventListener("mousemove", show);
    circles[i].addEventListener("mouseleave", function () {{ card.style.display = "none"; }});
  }}
}})();
</script>
</body>
</html>
"""


def write_html(
    path: str,
    coords: np.ndarray,
    colors: Sequence[str],
    legend: Sequence[tuple[str, str, int]],
    infos: Sequence[dict[str, Any]],
    thumbs: dict[int, str],
    *,
    title: str,
    subtitle: str,
    color_by: str,
    width: int = 900,
    height: int = 700,
) -> None:
    """One HTML file: an SVG circle per point (hover: thumbnail and fields)."""
    margin = 24
    xy = _to_pixels(coords, width, height, margin)
    circles = "\n".join(
        f'<circle data-i="{i}" cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{colors[i]}">'
        f"<title>{html.escape(str(infos[i].get('name', '')))}</title></circle>"
        for i, (x, y) in enumerate(xy)
    )
    legend_html = "\n".join(
        f'<li><span style="background:{c}"></span>{html.escape(str(label))} ({n})</li>'
        for label, c, n in legend
    )
    # Copies of one image share a vector and so a pixel: only the point drawn last there
    # can be hovered, so every card names the others at its pixel.
    keys = [f"{x:.1f},{y:.1f}" for x, y in xy]
    at = collections.defaultdict(list)
    for i, key in enumerate(keys):
        at[key].append(i)
    points = [
        {
            "info": infos[i],
            "thumb": thumbs.get(i),
            "also": [str(infos[j].get("name", "")) for j in at[keys[i]] if j != i],
        }
        for i in range(len(infos))
    ]
    points_json = json.dumps(points, default=str, ensure_ascii=True)
    # inside <script>: no "</script>", "<!--" or "]]>" can appear
    points_json = points_json.replace("<", "\\u003c").replace(">", "\\u003e")
    page = _HTML.format(
        title=html.escape(title),
        subtitle=html.escape(subtitle),
        width=width,
        height=height,
        circles=circles,
        legend=legend_html,
        color_by=html.escape(color_by),
        points_json=points_json,
    )
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)


def _to_pixels(coords: np.ndarray, width: int, height: int, margin: int) -> np.ndarray:
    if not len(coords):
        return np.zeros((0, 2))
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    unit = (coords - lo) / span
    unit[:, 1] = 1.0 - unit[:, 1]  # SVG y grows downwards
    if (hi - lo)[0] == 0:
        unit[:, 0] = 0.5
    if (hi - lo)[1] == 0:
        unit[:, 1] = 0.5
    return np.column_stack(
        [margin + unit[:, 0] * (width - 2 * margin), margin + unit[:, 1] * (height - 2 * margin)]
    )


def info_of(row: dict[str, Any], uri: str) -> dict[str, str | None]:
    """What the hover card shows for one row."""
    size = f"{row['width']}x{row['height']}" if row.get("width") else None
    return {
        "name": row.get("name"),
        "bucket": row.get("bucket"),
        "uri": uri,
        "generation": str(row.get("generation")),
        "content_type": row.get("content_type"),
        "format": row.get("format"),
        "size": size,
        "bytes": str(row["size_bytes"]) if row.get("size_bytes") is not None else None,
        "event_time": _iso(row.get("event_time")),
        "processed": _iso(row.get("processing_time")),
    }


def _iso(value) -> str | None:
    if value is None:
        return None
    return value.isoformat() if hasattr(value, "isoformat") else str(value)
