"""embed-map on a local output folder: a valid PNG, a self-contained HTML page with
one point per current object, colours, projections and escaping, and the page as an
analyst sees it, in headless Chromium. The embeddings here are random vectors (the map
does not need the model); the thumbnails are real files."""

from __future__ import annotations

import base64
import html.parser
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from analysis import map as map_cli
from analysis import projection, render
from analysis import rows as rows_mod
from streaming.records import object_file_name, row_key
from tools.samples import photo_like

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_folder(root, n=12, hostile_name=False, copies=0):
    """Images under root/images and their rows under root/out, as embed-stream writes
    them (three prefixes, two formats, a deleted object; `copies` more objects with the
    bytes and so the vector of the second)."""
    images, out = os.path.join(root, "images"), os.path.join(root, "out")
    rng = np.random.default_rng(0)
    names = [f"{('cats', 'dogs', 'birds')[i % 3]}/img-{i}.jpg" for i in range(n)]
    if hostile_name:
        names.append('x/</script><script>alert("x")</script>.jpg')
    rows = []
    for i, name in enumerate(names):
        path = os.path.join(images, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(photo_like(96, 64, i)).save(path, quality=85)
        rows.append(row(images, name, 10 + i, rng.normal(size=64) + (i % 3) * 2, day=1 + i % 2))
    for k in range(copies):
        name = f"copies/img-1-{k}.jpg"
        os.makedirs(os.path.join(images, "copies"), exist_ok=True)
        Image.fromarray(photo_like(96, 64, 1)).save(os.path.join(images, name), quality=85)
        rows.append(row(images, name, 100 + k, rows[1]["embedding"], day=2))
        names.append(name)
    rows.append(row(images, names[0], 10, [], event="OBJECT_DELETE", day=3))  # deleted
    for r in rows:
        suffix = ".json" if r["event_type"] == "OBJECT_FINALIZE" else ".deleted.json"
        path = os.path.join(
            out, "rows", object_file_name(r["bucket"], r["name"], r["generation"], suffix)
        )
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(json.dumps(r) + "\n")
    return images, out, names[1:]


def row(bucket, name, generation, embedding, event="OBJECT_FINALIZE", day=1):
    return {
        "row_key": row_key(bucket, name, generation, event),
        "bucket": bucket,
        "name": name,
        "generation": generation,
        "event_type": event,
        "source": "local",
        "content_type": "image/jpeg",
        "width": 96,
        "height": 64,
        "format": "JPEG",
        "embedding": [float(x) for x in embedding],
        "model_fingerprint": "feedfacefeedface" if event == "OBJECT_FINALIZE" else None,
        "event_time": f"2026-11-0{day}T10:00:00+00:00",
        "processing_time": f"2026-11-0{day}T10:00:05+00:00",
    }


class PageParser(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.circles, self.tags, self.external = [], [], []
        self.script_json, self._in_points = None, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "circle" and "data-i" in attrs:
            self.circles.append(attrs)
        for key in ("src", "href"):
            if attrs.get(key) and not attrs[key].startswith("data:"):
                self.external.append((tag, key, attrs[key]))
        if tag == "link":
            self.external.append((tag, "link", attrs))
        self._in_points = tag == "script" and attrs.get("id") == "points"

    def handle_data(self, data):
        if self._in_points:
            self.script_json = (self.script_json or "") + data

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_points = False


def parse_page(path):
    parser = PageParser()
    with open(path, encoding="utf-8") as f:
        text = f.read()
    parser.feed(text)
    return parser, text


def check_png(path, min_size=(400, 300)):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == PNG_SIGNATURE
    img = Image.open(io.BytesIO(data))
    img.load()
    assert img.format == "PNG" and img.size[0] >= min_size[0] and img.size[1] >= min_size[1]
    return img


def test_map_of_a_local_folder_writes_png_and_html(tmp_path, capsys):
    images, out, live = make_folder(str(tmp_path))
    png, page = str(tmp_path / "maps" / "m.png"), str(tmp_path / "maps" / "m.html")
    code = map_cli.main(
        [
            "--output_dir",
            out,
            "--png",
            png,
            "--html",
            page,
            "--color-by",
            "prefix",
            "--png_thumbnails",
            "4",
        ]
    )
    assert code == 0
    assert f"{len(live)} points ({len(live)} thumbnails)" in capsys.readouterr().out
    check_png(png)
    parser, text = parse_page(page)
    assert len(parser.circles) == len(live)  # the deleted object is gone
    assert parser.external == []  # self-contained
    assert "svg" in parser.tags and "script" in parser.tags
    points = json.loads(parser.script_json)
    assert sorted(p["info"]["name"] for p in points) == sorted(live)
    assert all(p["thumb"].startswith("data:image/jpeg;base64,") for p in points)
    thumb = Image.open(io.BytesIO(base64.b64decode(points[0]["thumb"].split(",", 1)[1])))
    assert max(thumb.size) <= 96
    assert {c["fill"] for c in parser.circles} == set(render.PALETTE[:3])
    for prefix in ("cats/", "dogs/", "birds/"):
        assert f"{prefix} (" in text  # legend with counts
    info = points[0]["info"]
    assert info["uri"] == os.path.join(images, info["name"])
    assert info["size"] == "96x64" and info["colour"].startswith("prefix: ")


def test_sample_limits_the_points_repeatably(tmp_path):
    _, out, _ = make_folder(str(tmp_path))
    names = []
    for i in range(2):
        page = str(tmp_path / f"m{i}.html")
        assert (
            map_cli.main(
                [
                    "--output_dir",
                    out,
                    "--png",
                    "",
                    "--html",
                    page,
                    "--sample",
                    "5",
                    "--thumbnails",
                    "0",
                ]
            )
            == 0
        )
        parser, _ = parse_page(page)
        points = json.loads(parser.script_json)
        assert len(points) == 5 and all(p["thumb"] is None for p in points)
        names.append([p["info"]["name"] for p in points])
    assert names[0] == names[1]


def test_names_cannot_break_out_of_the_page(tmp_path):
    _, out, _ = make_folder(str(tmp_path), n=3, hostile_name=True)
    page = str(tmp_path / "m.html")
    assert (
        map_cli.main(["--output_dir", out, "--png", "", "--html", page, "--color-by", "prefix"])
        == 0
    )
    parser, text = parse_page(page)
    assert "<script>alert" not in text
    assert [t for t in parser.tags if t == "script"] == ["script", "script"]
    points = json.loads(parser.script_json)
    assert any("</script>" in p["info"]["name"] for p in points)


def test_date_colours_are_ordered_and_other_groups_the_tail():
    colors, legend = render.assign_colors(["2026-11-02", "2026-11-01", "2026-11-02"], ordered=True)
    assert [label for label, _, _ in legend] == ["2026-11-01", "2026-11-02"]
    assert colors[0] == colors[2] != colors[1]
    labels = [f"c{i}" for i in range(15) for _ in range(15 - i)]
    colors, legend = render.assign_colors(labels)
    assert len(legend) == render.MAX_CATEGORIES + 1 and legend[-1][0] == render.OTHER
    assert legend[0][0] == "c0" and colors[-1] == render.OTHER_COLOR


@pytest.mark.parametrize(
    "color_by,expected",
    [
        ("prefix", "cats/"),
        ("bucket", "/in"),
        ("content_type", "image/jpeg"),
        ("date", "2026-11-01"),
        ("format", "JPEG"),
        ("source", "local"),
    ],
)
def test_labels(color_by, expected):
    r = row("/in", "cats/a.jpg", 1, [1.0])
    assert map_cli.label_of(r, color_by) == expected
    assert map_cli.label_of({**r, "name": "a.jpg"}, "prefix") == "(top level)"


def test_pca_is_deterministic_and_separates_clusters():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(10, 32)) * 0.05 + np.eye(32)[0]
    b = rng.normal(size=(10, 32)) * 0.05 + np.eye(32)[1]
    x = np.vstack([a, b])
    coords, explained = projection.pca(x)
    again, _ = projection.pca(x.copy())
    assert coords.shape == (20, 2) and np.allclose(coords, again)
    assert explained[0] > 0.5
    assert np.sign(coords[:10, 0]).tolist() != np.sign(coords[10:, 0]).tolist()
    assert (np.sign(coords[:10, 0]) == np.sign(coords[0, 0])).all()
    assert projection.pca(x[:1])[0].shape == (1, 2)


def test_tsne_when_scikit_learn_is_installed():
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(2)
    coords = projection.tsne(rng.normal(size=(12, 16)), max_iter=250)
    assert coords.shape == (12, 2) and np.isfinite(coords).all()


def test_no_rows_or_unknown_fingerprint_exit_1(tmp_path, capsys):
    _, out, _ = make_folder(str(tmp_path), n=3)
    assert (
        map_cli.main(
            [
                "--output_dir",
                out,
                "--model_fingerprint",
                "0000000000000000",
                "--png",
                str(tmp_path / "m.png"),
                "--html",
                "",
            ]
        )
        == 1
    )
    assert "no current embeddings of model fingerprint" in capsys.readouterr().err
    (tmp_path / "empty" / "rows").mkdir(parents=True)
    assert map_cli.main(["--output_dir", str(tmp_path / "empty"), "--html", ""]) == 1
    assert not (tmp_path / "m.png").exists()


def test_thumbnail_of_non_images_is_none():
    assert render.thumbnail(b"not an image") is None
    buf = io.BytesIO()
    Image.new("RGBA", (300, 100), (255, 0, 0, 0)).save(buf, "PNG")
    img = render.thumbnail(buf.getvalue())
    assert img.mode == "RGB" and img.size == (96, 32)
    assert img.getpixel((0, 0)) == (255, 255, 255)  # alpha over white, like the pipeline


def test_local_rows_sample_is_by_row_key(tmp_path):
    _, out, live = make_folder(str(tmp_path))
    src = rows_mod.LocalRows(out)
    assert src.fingerprints() == [("feedfacefeedface", len(live))]
    sample = src.sample("feedfacefeedface", 4)
    assert [r["row_key"] for r in sample] == sorted(r["row_key"] for r in src.current())[:4]


# The page in a browser: headless Chromium (Debian's chromium and chromium-driver
# packages; tests/run.sh installs them) driven by Selenium.


def _chromium() -> tuple[str, str] | None:
    """(browser, driver) executables, or None where they are not installed."""
    import shutil

    browser = next(
        filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None
    )
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module; the console log is kept for the tests."""
    found = _chromium()
    if found is None:
        pytest.skip(
            "Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
        )
    import subprocess

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(
        options=options, service=Service(found[1], log_output=subprocess.DEVNULL)
    )
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver, path):
    """Loads the page and returns what its console said while loading."""
    import pathlib

    driver.get(pathlib.Path(path).as_uri())
    return driver.get_log("browser")


def drawn_points(driver):
    """Every point as the browser lays it out: its name (the <title>), centre and size in
    client pixels, whether the centre is inside the map and the point is visible, and
    whether it is the topmost element at its centre (what a hover reaches)."""
    return driver.execute_script("""
      var box = document.getElementById("map").getBoundingClientRect(), out = [];
      document.querySelectorAll("#map circle").forEach(function (c) {
        var r = c.getBoundingClientRect(), x = r.left + r.width / 2, y = r.top + r.height / 2;
        var style = getComputedStyle(c);
        out.push({name: c.querySelector("title").textContent, x: x, y: y,
                  size: r.width, inside: x >= box.left && x <= box.right &&
                                     y >= box.top && y <= box.bottom,
                  visible: style.display !== "none" && style.visibility !== "hidden" &&
                           +style.opacity > 0,
                  topmost: document.elementFromPoint(x, y) === c});
      });
      return out;""")


@pytest.mark.slow
def test_the_page_in_a_browser_draws_every_point_and_names_it_on_hover(tmp_path, browser):
    """What the static checks above cannot see: the script runs without errors, the
    browser draws each object where a pointer reaches it, and hovering shows its card."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.by import By

    _, out, live = make_folder(str(tmp_path), hostile_name=True)
    page = str(tmp_path / "m.html")
    assert map_cli.main(["--output_dir", out, "--png", "", "--html", page]) == 0
    log = open_page(browser, page)
    assert [e for e in log if e["level"] in ("SEVERE", "WARNING")] == []
    points = drawn_points(browser)
    assert len(points) == len(live)
    assert sorted(p["name"] for p in points) == sorted(live)
    assert all(p["inside"] and p["visible"] and p["size"] >= 6 for p in points), points
    assert all(p["topmost"] for p in points), "a point hidden under another cannot be hovered"
    card = browser.find_element(By.ID, "card")
    assert not card.is_displayed()
    for p in points:
        hover = ActionBuilder(browser)
        hover.pointer_action.move_to_location(round(p["x"]), round(p["y"]))
        hover.perform()
        assert card.is_displayed(), p["name"]
        cells = [td.text for td in card.find_elements(By.TAG_NAME, "td")]
        assert dict(zip(cells[::2], cells[1::2])).get("name") == p["name"]
        img = card.find_element(By.TAG_NAME, "img")
        assert browser.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", img
        ), p["name"]
    heading = browser.find_element(By.TAG_NAME, "h1")
    ActionChains(browser).move_to_element(heading).perform()
    assert not card.is_displayed()
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


@pytest.mark.slow
def test_copies_of_one_image_on_one_pixel_are_named_by_the_card_on_top(tmp_path, browser):
    """Copies share a vector, so their points cover each other exactly: the one a
    pointer reaches lists the others."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.by import By

    _, out, live = make_folder(str(tmp_path), n=6, copies=2)
    page = str(tmp_path / "m.html")
    assert map_cli.main(["--output_dir", out, "--png", "", "--html", page]) == 0
    assert [e for e in open_page(browser, page) if e["level"] == "SEVERE"] == []
    points = drawn_points(browser)
    assert sorted(p["name"] for p in points) == sorted(live)
    hidden = sorted(p["name"] for p in points if not p["topmost"])
    assert len(hidden) == 2  # three objects on one pixel, one on top
    [top] = [
        p
        for p in points
        if p["topmost"]
        and (p["x"], p["y"]) == next((q["x"], q["y"]) for q in points if not q["topmost"])
    ]
    hover = ActionBuilder(browser)
    hover.pointer_action.move_to_location(round(top["x"]), round(top["y"]))
    hover.perform()
    cells = [td.text for td in browser.find_element(By.ID, "card").find_elements(By.TAG_NAME, "td")]
    fields = dict(zip(cells[::2], cells[1::2]))
    assert fields["name"] == top["name"]
    assert sorted(fields["also here"].splitlines()) == hidden
