"""embed-search on a local output folder: ranking of near-duplicates, current rows only,
the fingerprint check, output formats and usage errors.

The rows are made with the pipeline's own functions (decode_image, the ResNet50 of
streaming.model.inference with `random:0` weights, sinks.files.embedding_row), written
where embed-stream writes them, without running a pipeline.

About the images: with random weights every ResNet50 embedding points in almost the
same direction, so cosine distances are tiny (about 1e-5 between an image and its
re-encoded or resized copy, 1e-3 between unrelated photo-like images). The order is
what counts, and it holds with a wide margin: measured on photo-like images of several
seeds, the copies are about 100 times closer than the nearest unrelated image; the test
asks for 10 times. The unrelated images are photo-like images of other seeds, the same
size and format as the original, so size or format alone cannot give the answer, and
one copy sits in another folder than the original, so the name cannot either.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from analysis import rows as rows_mod
from analysis import search
from streaming.records import ImageInfo, ImageRef, object_file_name, row_key
from streaming.sinks.files import embedding_row, tombstone_row
from streaming.stages.load import decode_image
from tools.samples import photo_like

ORIGINAL = "people/original.jpg"
RESIZED = "people/original-small.jpg"
REENCODED = "archive/original-q50.jpg"  # another folder: the name gives nothing away
UNRELATED = [f"places/other-{s}.jpg" for s in range(100, 108)] + ["places/other-120.png"]
SUPERSEDED = "people/replaced.jpg"  # generation 1 is a copy of the original, 2 is not
DELETED = "people/deleted.jpg"  # a copy of the original, then deleted
OTHER_FINGERPRINT = "0123456789abcdef"


def encode(arr: np.ndarray, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **kw)
    return buf.getvalue()


@functools.cache
def image_files(seed: int = 1) -> dict[str, bytes]:
    """name -> bytes: an original, two near-duplicates and unrelated images."""
    orig = photo_like(640, 480, seed)
    small = np.asarray(Image.fromarray(orig).resize((320, 240), Image.LANCZOS))
    files = {
        ORIGINAL: encode(orig, quality=92),
        RESIZED: encode(small, quality=92),
        REENCODED: encode(orig, quality=50),
    }
    for name in UNRELATED:
        s = int(name.rsplit("-", 1)[1].split(".")[0])
        fmt = "PNG" if name.endswith(".png") else "JPEG"
        options = {"quality": 92} if fmt == "JPEG" else {}
        files[name] = encode(photo_like(640, 480, s), fmt, **options)
    return files


def write_images(folder: str, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


_EMBEDDED: dict = {}  # (fingerprint, sha256 of the bytes) -> (decoded, vector), per session


def embed_bytes(model, data: bytes):
    """decode_image + the model, as the pipeline does it; once per image and session."""
    key = (model.fingerprint, hashlib.sha256(data).hexdigest())
    if key not in _EMBEDDED:
        decoded = decode_image(data)
        _EMBEDDED[key] = decoded, model(decoded.pixels[None])[0]
    return _EMBEDDED[key]


def embedding_rows(
    model,
    bucket: str,
    files: dict[str, bytes],
    source: str = "local",
    content_type: str = "image/jpeg",
) -> list[dict]:
    """Rows exactly as the pipeline makes them, plus a superseded generation and a
    deleted object that must never come back from a search."""
    items = [(name, data, 1000 + i) for i, (name, data) in enumerate(sorted(files.items()))]
    items += [
        (SUPERSEDED, files[ORIGINAL], 1),
        (SUPERSEDED, files[UNRELATED[0]], 2),
        (DELETED, files[ORIGINAL], 7),
    ]
    rows = []
    for name, data, generation in items:
        decoded, vector = embed_bytes(model, data)
        ref = ImageRef(
            bucket,
            name,
            generation,
            source=source,
            content_type=content_type,
            size=len(data),
            event_time="2026-11-27T10:00:00+00:00",
        )
        info = ImageInfo(ref, decoded.width, decoded.height, decoded.format)
        rows.append(embedding_row(info, vector, model.model_id, None))
    rows.append(
        tombstone_row(ImageRef(bucket, DELETED, 7, event_type="OBJECT_DELETE", source=source))
    )
    return rows


def write_rows(out: str, rows: list[dict]) -> None:
    for r in rows:
        suffix = ".json" if r["event_type"] == "OBJECT_FINALIZE" else ".deleted.json"
        path = os.path.join(
            out, "rows", object_file_name(r["bucket"], r["name"], r["generation"], suffix)
        )
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(json.dumps(r) + "\n")


def session_embedder(keras_model):
    """The pipeline's EmbeddingModel around the session's random:0 ResNet50 (the
    conftest's), put in the process's model cache as `random:0`: one load per session."""
    from streaming.model import inference as model_mod

    with model_mod._LOAD_LOCK:
        if "random:0" not in model_mod._LOADED:
            model = model_mod.EmbeddingModel(keras_model)
            model.warm_up()
            model_mod._LOADED.clear()
            model_mod._LOADED["random:0"] = model
        return model_mod._LOADED["random:0"]


@pytest.fixture(scope="session")
def embedder(keras_model):
    return session_embedder(keras_model)


@pytest.fixture(scope="session")
def local_folder(tmp_path_factory, embedder):
    root = tmp_path_factory.mktemp("analysis-search")
    images = str(root / "images")
    files = image_files()
    write_images(images, files)
    out = str(root / "out")
    write_rows(out, embedding_rows(embedder, images, files))
    return images, out


def run(capsys, *argv):
    code = search.main([*argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def ranked_names(answer):
    return [r["name"] for r in answer["results"]]


def assert_near_duplicates_first(answer):
    names = ranked_names(answer)
    dist = [r["distance"] for r in answer["results"]]
    assert names[0] == ORIGINAL and abs(dist[0]) < 1e-6
    assert set(names[1:3]) == {RESIZED, REENCODED}, names
    assert set(names[3:]) <= set(UNRELATED) | {SUPERSEDED}, names
    assert max(dist[1:3]) * 10 < min(dist[3:]), dist
    assert DELETED not in names
    assert names.count(SUPERSEDED) <= 1


def test_query_image_finds_itself_then_its_near_duplicates(capsys, local_folder, embedder):
    images, out = local_folder
    code, stdout, _ = run(
        capsys,
        os.path.join(images, ORIGINAL),
        "--output_dir",
        out,
        "--weights",
        "random:0",
        "-k",
        "20",
        "--json",
    )
    assert code == 0
    answer = json.loads(stdout)
    assert answer["query"]["model_fingerprint"] == embedder.fingerprint
    assert answer["query"]["embedding_from"] == "--weights random:0"
    assert_near_duplicates_first(answer)
    # current rows only: one row per live object (the superseded object once, with its
    # generation 2, an unrelated image; the deleted object never)
    assert len(answer["results"]) == 3 + len(UNRELATED) + 1
    replaced = [r for r in answer["results"] if r["name"] == SUPERSEDED]
    assert replaced[0]["generation"] == 2 and replaced[0]["distance"] > 1e-4
    top = answer["results"][0]
    assert top["uri"] == os.path.join(images, ORIGINAL)
    assert (top["width"], top["height"], top["format"]) == (640, 480, "JPEG")


def test_object_uses_its_stored_embedding(capsys, local_folder, monkeypatch):
    images, out = local_folder

    def no_model(weights):
        raise AssertionError("a stored object needs no model")

    from streaming.model import inference

    monkeypatch.setattr(inference, "load_embedding_model", no_model)
    for argv in (
        ["--object", os.path.join(images, ORIGINAL)],
        ["--bucket", images, "--name", ORIGINAL],
    ):
        code, stdout, _ = run(capsys, *argv, "--output_dir", out, "--json")
        assert code == 0
        answer = json.loads(stdout)
        assert answer["query"]["embedding_from"] == "stored row"
        assert_near_duplicates_first(answer)


def test_a_file_not_in_the_folder_is_embedded(capsys, tmp_path, local_folder, embedder):
    _, out = local_folder
    path = tmp_path / "fresh.jpg"
    path.write_bytes(image_files()[RESIZED])
    code, stdout, _ = run(
        capsys,
        "--object",
        str(path),
        "--output_dir",
        out,
        "--weights",
        "random:0",
        "--json",
        "-k",
        "3",
    )
    assert code == 0
    answer = json.loads(stdout)
    assert answer["query"]["embedding_from"] == "--weights random:0"
    assert ranked_names(answer)[0] == RESIZED


def test_table_output(capsys, local_folder, embedder):
    images, out = local_folder
    code, stdout, _ = run(
        capsys,
        os.path.join(images, ORIGINAL),
        "--output_dir",
        out,
        "--weights",
        "random:0",
        "-k",
        "3",
    )
    assert code == 0
    lines = stdout.splitlines()
    assert lines[0].startswith("query: ") and "exact_cosine" in lines[0]
    assert lines[1].split() == ["rank", "distance", "size", "format", "object"]
    assert len(lines) == 5 and lines[2].split()[-1] == os.path.join(images, ORIGINAL)


def test_fingerprint_mismatch_is_refused_with_exit_2(capsys, tmp_path, local_folder, embedder):
    images, out = local_folder
    other = str(tmp_path / "other-model")
    rows = []
    for path in rows_mod.LocalRows(out)._read_all():
        rows.append({**path, "model_fingerprint": OTHER_FINGERPRINT})
    write_rows(other, rows)
    code, stdout, stderr = run(
        capsys, os.path.join(images, ORIGINAL), "--output_dir", other, "--weights", "random:0"
    )
    assert code == 2 and stdout == ""
    assert "model fingerprint mismatch" in stderr
    assert embedder.fingerprint in stderr and OTHER_FINGERPRINT in stderr


def test_problems_with_the_query_or_the_folder_exit_1(capsys, tmp_path, local_folder, embedder):
    images, out = local_folder
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    code, _, stderr = run(capsys, str(text), "--output_dir", out, "--weights", "random:0")
    assert code == 1 and "not_an_image" in stderr
    code, _, stderr = run(capsys, "--object", str(tmp_path / "missing.jpg"), "--output_dir", out)
    assert code == 1 and "neither a current object" in stderr
    code, _, stderr = run(capsys, str(text), "--output_dir", str(tmp_path / "nothing"))
    assert code == 1 and "no rows/ folder" in stderr


@pytest.mark.parametrize(
    "argv",
    [
        [],  # no query
        ["a.jpg", "--object", "gs://b/a.jpg", "--output_dir", "o"],  # two queries
        ["a.jpg"],  # no source
        ["a.jpg", "--output_dir", "o", "--table", "p-roject:d.t"],  # two sources
        ["a.jpg", "--table", "p-roject:d.t`; DROP TABLE x; --"],  # not a table id
        ["--bucket", "b", "--output_dir", "o"],  # --bucket without --name
        ["a.jpg", "--output_dir", "o", "--use-vector-search"],  # vector search needs BigQuery
        ["a.jpg", "--output_dir", "o", "-k", "0"],
    ],
)
def test_usage_errors_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as e:
        search.main(argv)
    assert e.value.code == 2


def view_row(name, generation, event="OBJECT_FINALIZE", t="2026-11-27T00:00:00Z"):
    return {
        "row_key": row_key("b", name, generation, event),
        "bucket": "b",
        "name": name,
        "generation": generation,
        "event_type": event,
        "processing_time": t,
    }


def test_current_rows_follow_the_view_rule():
    """The same cases as tests/integration/test_current_view.py, in Python."""
    rows = [
        view_row("dup.jpg", 1),
        view_row("dup.jpg", 1, t="2026-11-27T00:00:01Z"),
        view_row("over.jpg", 1),
        view_row("over.jpg", 2),
        view_row("gone.jpg", 3),
        view_row("gone.jpg", 3, "OBJECT_DELETE"),
        view_row("back.jpg", 1),
        view_row("back.jpg", 1, "OBJECT_DELETE"),
        view_row("back.jpg", 5),
        view_row("late.jpg", 7, "OBJECT_DELETE"),
        view_row("late.jpg", 7),
    ]
    got = rows_mod.current_rows(rows)
    assert [(r["name"], r["generation"]) for r in got] == [
        ("back.jpg", 5),
        ("dup.jpg", 1),
        ("over.jpg", 2),
    ]
    assert [r["processing_time"] for r in got if r["name"] == "dup.jpg"] == ["2026-11-27T00:00:01Z"]


def test_uri_of_local_and_cloud_rows():
    assert (
        rows_mod.uri_of({"bucket": "/data/in", "name": "a/b.jpg", "source": "local"})
        == "/data/in/a/b.jpg"
    )
    assert (
        rows_mod.uri_of({"bucket": "bkt", "name": "a/b.jpg", "source": "notification"})
        == "gs://bkt/a/b.jpg"
    )
    assert rows_mod.split_gs_uri("gs://bkt/a/b.jpg") == ("bkt", "a/b.jpg")
    with pytest.raises(ValueError):
        rows_mod.split_gs_uri("gs://bkt")


def test_cosine_distances_match_a_direct_computation():
    rng = np.random.default_rng(0)
    m, q = rng.normal(size=(5, 16)), rng.normal(size=16)
    d = rows_mod.cosine_distances(m, q)
    for i in range(5):
        assert d[i] == pytest.approx(1 - m[i] @ q / np.linalg.norm(m[i]) / np.linalg.norm(q))
    assert np.isnan(rows_mod.cosine_distances(np.zeros((1, 16)), q)[0])
