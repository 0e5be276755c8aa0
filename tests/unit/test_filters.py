from streaming.records import ImageRef
from streaming.stages.filters import (
    DEFAULT_EXTENSIONS,
    FilterConfig,
    output_prefixes,
    skip_reason,
    split_list,
    type_accepted,
    type_skip_reason,
)

IMAGES = FilterConfig(extensions=(".jpg", ".png"), content_types=("image/",))


def ref(name, **kw):
    return ImageRef("bkt", name, 1, **kw)


def test_only_finalize_events_are_embedded():
    assert skip_reason(ref("a.jpg"), IMAGES) is None
    assert (
        skip_reason(ref("a.jpg", event_type="OBJECT_DELETE"), IMAGES)
        == "skipped.event_OBJECT_DELETE"
    )
    assert (
        skip_reason(ref("a.jpg", event_type="OBJECT_METADATA_UPDATE"), IMAGES)
        == "skipped.event_OBJECT_METADATA_UPDATE"
    )


def test_extension_or_content_type_is_enough():
    assert skip_reason(ref("a.JPG"), IMAGES) is None
    assert skip_reason(ref("noext", content_type="image/webp"), IMAGES) is None
    assert skip_reason(ref("notes.txt", content_type="text/plain"), IMAGES) == "skipped.type"


def test_prefix_filters():
    cfg = FilterConfig(include_prefixes=("in/",), exclude_prefixes=("in/tmp/",))
    assert skip_reason(ref("in/a.jpg"), cfg) is None
    assert skip_reason(ref("out/a.jpg"), cfg) == "skipped.prefix"
    assert skip_reason(ref("in/tmp/a.jpg"), cfg) == "skipped.prefix"


def test_own_outputs_in_the_watched_bucket_are_never_embedded(tmp_path):
    cfg = FilterConfig(own_outputs=output_prefixes(["gs://bkt/embeddings/"], None))
    assert skip_reason(ref("embeddings/x.jpg"), cfg) == "skipped.own_output"
    assert skip_reason(ImageRef("other", "embeddings/x.jpg", 1), cfg) is None
    root = str(tmp_path)
    local = FilterConfig(own_outputs=output_prefixes([str(tmp_path / "out")], root))
    assert (
        skip_reason(ImageRef(root, "out/vectors/x.jpg", 1, source="local"), local)
        == "skipped.own_output"
    )
    assert skip_reason(ImageRef(root, "outside.jpg", 1, source="local"), local) is None


def test_deleting_an_object_the_job_never_embeds_is_not_an_event_for_it():
    """The job's own .npy outputs get overwritten (and so deleted) on redelivery; those
    deletes must not become tombstones."""
    cfg = FilterConfig(
        extensions=(".jpg",), content_types=("image/",), own_outputs=(("bkt", "embeddings/"),)
    )
    npy = ref(
        "embeddings/bkt/x.jpg@1.npy",
        event_type="OBJECT_DELETE",
        content_type="application/octet-stream",
    )
    assert skip_reason(npy, cfg) == "skipped.own_output"
    txt = ref("notes.txt", event_type="OBJECT_DELETE", content_type="text/plain")
    assert skip_reason(txt, cfg) == "skipped.type"
    img = ref("a.jpg", event_type="OBJECT_DELETE")
    assert skip_reason(img, cfg) == "skipped.event_OBJECT_DELETE"


def test_comma_separated_flags_split_one_way():
    assert split_list(" .JPG, .png ,,") == (".JPG", ".png")
    assert split_list(" .JPG, .png ,,", lower=True) == (".jpg", ".png")
    assert split_list("") == () and split_list(None) == ()


def test_the_job_and_the_backfill_accept_the_same_objects():
    """One rule for both: a backfill publishes exactly what the job would embed."""
    from publisher.backfill import Filters

    exts, types = split_list(DEFAULT_EXTENSIONS, lower=True), ("image/",)
    job = FilterConfig(extensions=exts, content_types=types)
    backfill = Filters(extensions=exts, content_types=types)
    for name, content_type in [
        ("a.JPG", None),
        ("a.tiff", "text/plain"),
        ("noext", "image/png"),
        ("notes.txt", "text/plain"),
        ("a.jpg.txt", None),
        ("x.bin", "IMAGE/webp"),
        ("x.bin", None),
    ]:
        expected = type_accepted(name, content_type, exts, types)
        assert (skip_reason(ref(name, content_type=content_type), job) is None) == expected
        assert backfill.accepts({"name": name, "contentType": content_type}) == expected
    assert type_accepted("notes.txt", "text/plain", (), ())  # no lists: anything goes


def test_none_format_refs_wait_for_their_content_type():
    """A NONE-format notification has no content type: an extension-less name is not
    skipped here; the load stage applies `type_skip_reason` once it has the metadata.
    Prefixes and the job's own outputs are still decided by name, first."""
    cfg = FilterConfig(
        extensions=(".jpg",),
        content_types=("image/",),
        include_prefixes=("in/",),
        own_outputs=(("bkt", "in/out/"),),
    )
    none = dict(payload_format="NONE")
    assert skip_reason(ref("in/photo", **none), cfg) is None
    assert skip_reason(ref("other/photo", **none), cfg) == "skipped.prefix"
    assert skip_reason(ref("in/out/x.npy", **none), cfg) == "skipped.own_output"
    assert skip_reason(ref("in/photo", payload_format="JSON_API_V1"), cfg) == "skipped.type"
    fetched = ref("in/photo", content_type="image/jpeg", **none)
    assert type_skip_reason(fetched, cfg) is None
    assert (
        type_skip_reason(ref("in/notes", content_type="text/plain", **none), cfg) == "skipped.type"
    )
    assert type_skip_reason(ref("in/a.jpg", content_type="text/plain", **none), cfg) is None


def test_a_none_format_deletion_gets_its_tombstone_whatever_the_name():
    """The deleted object's type cannot be read any more: an extension-less image
    must not stay in the current view, so the tombstone is written (a tombstone for a
    never-embedded object only hides what the view never showed)."""
    cfg = FilterConfig(extensions=(".jpg",), content_types=("image/",))
    gone = ref("photo", event_type="OBJECT_DELETE", payload_format="NONE")
    assert skip_reason(gone, cfg) == "skipped.event_OBJECT_DELETE"


def test_a_generation_brought_by_both_a_notification_and_the_catch_up_passes_once():
    from streaming.stages.filters import Claims

    claims = Claims(limit=3)
    assert claims.first("k", "notification") and claims.first("k", "backfill")
    assert not claims.first("k", "catchup")  # the notification owns it
    assert claims.first("j", "catchup") and claims.first("j", "catchup")  # a re-run
    assert not claims.first("j", "notification")
    for key in ("a", "b", "c"):
        claims.first(key, "catchup")
    assert claims.first("k", "catchup")  # forgotten: the bound holds


def test_duplicates_are_skipped_but_retries_and_redeliveries_pass():
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from streaming.records import ImageRef
    from streaming.stages import filters

    filters.CLAIMS = filters.Claims()
    refs = [
        ImageRef("b", "x.jpg", 1, source="notification"),
        ImageRef("b", "x.jpg", 1, source="notification"),  # redelivered
        ImageRef("b", "x.jpg", 1, source="catchup"),  # a duplicate
        ImageRef("b", "y.jpg", 1, source="catchup", attempt=1),
        ImageRef("b", "y.jpg", 1, source="notification", attempt=1),
    ]
    with TestPipeline() as p:
        kept = p | beam.Create(refs) | filters.FilterObjects(filters.FilterConfig())
        assert_that(
            kept.accepted | beam.Map(lambda r: (r.name, r.source)),
            equal_to(
                [
                    ("x.jpg", "notification"),
                    ("x.jpg", "notification"),
                    ("y.jpg", "catchup"),
                    ("y.jpg", "notification"),
                ]
            ),
        )
