import os

import pytest

from streaming.records import DeadLetter, ImageRef, object_file_name, object_uri, row_key


def test_same_basename_in_two_folders_gives_two_paths():
    a = object_file_name("bkt", "a/cat.jpg", 1, ".npy")
    b = object_file_name("bkt", "b/cat.jpg", 1, ".npy")
    assert a != b
    assert a == object_file_name("bkt", "a/cat.jpg", 1, ".npy")  # idempotent


def test_generation_and_bucket_are_part_of_the_identity():
    paths = {object_file_name(b, "x.jpg", g, ".npy") for b in ("b1", "b2") for g in (1, 2)}
    keys = {row_key(b, "x.jpg", g) for b in ("b1", "b2") for g in (1, 2)}
    assert len(paths) == 4 and len(keys) == 4


@pytest.mark.parametrize(
    "name",
    [
        "..",
        "../../etc/passwd",
        "/abs/path.jpg",
        "a/../../b.jpg",
        "line\nbreak.jpg",
        "ünï/çødé 🐱.jpg",
        ".",
        "",
        "a" * 1024,
        "%2F..%2F.jpg",
    ],
)
def test_odd_names_stay_inside_the_output_folder(tmp_path, name):
    rel = object_file_name("bucket", name, 7, ".npy")
    root = tmp_path / "out"
    path = os.path.abspath(os.path.join(root, rel))
    assert os.path.commonpath([str(root), path]) == str(root)
    assert "\n" not in rel
    assert all(len(part.encode()) <= 255 for part in rel.split("/"))
    assert rel.count("/") == 1  # bucket folder, then one file name


def test_row_key_is_deterministic_and_distinguishes_names():
    assert row_key("b", "n", 1) == row_key("b", "n", 1)
    assert row_key("b", "n/x", 1) != row_key("b/n", "x", 1)


def test_dead_letter_row_is_bounded_and_keyed():
    ref = ImageRef("b", "x.jpg", 3)
    row = DeadLetter("decode", "not_an_image", "e" * 5000, ref=ref, raw="r" * 5000).to_row()
    assert row["row_key"] == ref.key and row["reason"] == "not_an_image"
    assert len(row["error"]) == 1000 and len(row["raw"]) == 1000
    assert row["uri"] == "gs://b/x.jpg"


def test_object_uri_is_the_one_rule_for_refs_and_rows():
    from analysis.rows import uri_of

    cloud = ImageRef("bkt", "a/b.jpg", 1)
    local = ImageRef("/data/in/", "a/b.jpg", 1, source="local")
    assert cloud.uri == "gs://bkt/a/b.jpg" == object_uri("bkt", "a/b.jpg", local=False)
    assert local.uri == "/data/in/a/b.jpg" == object_uri("/data/in/", "a/b.jpg", local=True)
    assert uri_of({"bucket": "bkt", "name": "a/b.jpg", "source": "backfill"}) == cloud.uri
    assert uri_of({"bucket": "/data/in/", "name": "a/b.jpg", "source": "local"}) == local.uri


def test_unexpected_errors_become_rejections_with_a_reason():
    from google.api_core import exceptions as gexc

    from streaming.records import Rejected, rejected_from

    cases = [
        (gexc.Forbidden("no storage.objects.get"), "permission_denied"),
        (gexc.Unauthorized("expired"), "permission_denied"),
        (PermissionError(13, "Permission denied"), "permission_denied"),
        (gexc.NotFound("no such bucket"), "not_found"),
        (gexc.ServiceUnavailable("backend"), "read_error"),
        (gexc.RetryError("deadline exceeded", None), "read_error"),
        (KeyError("size"), "read_error"),
    ]
    for error, reason in cases:
        rejected = rejected_from(error, "read_error")
        assert rejected.reason == reason, error
        assert type(error).__name__ in str(rejected)
    already = Rejected("too_large", "big")
    assert rejected_from(already, "read_error") is already
