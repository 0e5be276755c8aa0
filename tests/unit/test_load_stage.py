"""The load stage's decode pool: images decoded ahead of the model, outputs unchanged."""

import os
import threading

import apache_beam as beam
import apache_beam.utils.timestamp
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window
from apache_beam.utils.windowed_value import WindowedValue

from streaming.config import flags
from streaming.sources.local_folder import local_ref
from streaming.stages import load
from streaming.stages.preprocess import decode_image
from tests import fixtures


def write_folder(tmp_path, good=6):
    for i in range(good):
        (tmp_path / f"img-{i}.jpg").write_bytes(fixtures.jpeg(200 + i, 150, seed=i))
    (tmp_path / "broken.jpg").write_bytes(b"not an image at all")
    (tmp_path / "cut.jpg").write_bytes(fixtures.truncated_jpeg())
    return [local_ref(str(tmp_path), str(p)) for p in sorted(tmp_path.iterdir())]


def summarize(result):
    """(name, pixel checksum) for images; (name, reason) for dead letters."""
    if isinstance(result, tuple):
        info, pixels = result
        return info.ref.name, int(pixels.astype(np.int64).sum())
    return result.ref.name, result.reason


@pytest.mark.parametrize("threads,window_size", [(1, 1), (2, 4), (3, 32)])
def test_pooled_loading_gives_the_same_images_and_dead_letters(tmp_path, threads, window_size):
    refs = write_folder(tmp_path)
    expected = []
    for ref in refs:
        try:
            out = decode_image((tmp_path / ref.name).read_bytes())
            expected.append((ref.name, int(out.pixels.astype(np.int64).sum())))
        except load.Rejected as e:
            expected.append((ref.name, e.reason))
    with TestPipeline() as p:
        loaded = p | beam.Create(refs) | load.LoadImages(threads=threads, window=window_size)
        both = (loaded.images, loaded.dead_letters) | beam.Flatten()
        assert_that(both | beam.Map(summarize), equal_to(expected))


class _GatedLoadFn(load._LoadFn):
    """Reads meet at a barrier: it only opens when `parties` reads run at once."""

    def __init__(self, parties, **kw):
        super().__init__("center_crop", flags.DEFAULT_MAX_PIXELS, flags.DEFAULT_MAX_BYTES, **kw)
        self.barrier = threading.Barrier(parties, timeout=10)

    def _read(self, ref):
        self.barrier.wait()
        return super()._read(ref)


def run_fn(fn, refs):
    fn.setup()
    fn.start_bundle()
    outs = []
    try:
        for i, ref in enumerate(refs):
            outs += list(
                fn.process(
                    ref, timestamp=beam.utils.timestamp.Timestamp(i), window=window.GlobalWindow()
                )
            )
        outs += list(fn.finish_bundle())
    finally:
        fn.teardown()
    return outs


def test_images_are_read_and_decoded_in_parallel_ahead_of_the_outputs(tmp_path):
    refs = [r for r in write_folder(tmp_path, good=4) if r.name.startswith("img-")]
    # Two reads must be in flight together, before the DoFn has emitted anything.
    fn = _GatedLoadFn(2, threads=2, window=4)
    outs = run_fn(fn, refs)
    assert [o.value[0].ref.name for o in outs] == [r.name for r in refs]
    serial = _GatedLoadFn(2, threads=1, window=4)
    serial.barrier._timeout = 0.5
    # One read at a time never opens the barrier: each read fails, as a dead letter.
    dead = [o.value.value for o in run_fn(serial, refs)]
    assert dead and all(d.reason == "read_error" and "BrokenBarrierError" in d.error for d in dead)


def test_outputs_keep_their_own_timestamp_and_window(tmp_path):
    refs = write_folder(tmp_path, good=3)
    outs = run_fn(
        load._LoadFn(
            "center_crop", flags.DEFAULT_MAX_PIXELS, flags.DEFAULT_MAX_BYTES, threads=2, window=8
        ),
        refs,
    )
    assert len(outs) == len(refs)
    by_name = {}
    for out in outs:
        value = out.value if isinstance(out, beam.pvalue.TaggedOutput) else out
        assert isinstance(value, WindowedValue)
        record = value.value
        name = record[0].ref.name if isinstance(record, tuple) else record.ref.name
        by_name[name] = value.timestamp.micros
    assert by_name == {r.name: i * 1_000_000 for i, r in enumerate(refs)}


def test_any_read_error_is_a_dead_letter_and_a_late_type_check_a_skip():
    """A read that raises anything (a 403, spent retries, a bug) gives a Rejected, never
    an exception out of the stage; `Skipped` (a NONE-format object that is not an
    image) comes back as such, for the stage to count without a dead letter."""
    from google.api_core import exceptions as gexc

    from streaming.records import ImageRef, Skipped

    ref = ImageRef("bkt", "photo", 1)

    def failing(error):
        def read(_ref):
            raise error

        return read

    load_with = lambda read: load.load_image(ref, read, "center_crop", 10**6, 10**6)
    for error, reason in [
        (gexc.Forbidden("denied"), "permission_denied"),
        (gexc.RetryError("deadline", None), "read_error"),
        (RuntimeError("bug"), "read_error"),
    ]:
        _, stage, decoded, rejected = load_with(failing(error))
        assert (stage, decoded, rejected.reason) == ("load", None, reason)
    _, _, _, skipped = load_with(failing(Skipped("skipped.type", "text/plain")))
    assert isinstance(skipped, Skipped) and skipped.reason == "skipped.type"
    _, stage, _, rejected = load_with(lambda r: (r, fixtures.jpeg(seed=3)))
    assert (stage, rejected) == ("decode", None)


def test_a_file_rewritten_after_listing_is_superseded_and_its_new_version_embedded(tmp_path):
    """What --watch meets when it lists a file mid-write: the listed generation (mtime)
    is dead-lettered `superseded`, the file as it is now loads."""
    path = tmp_path / "img.jpg"
    path.write_bytes(b"")  # listed half-written
    listed = local_ref(str(tmp_path), str(path))
    path.write_bytes(fixtures.jpeg(64, 48, seed=3))
    os.utime(path, ns=(listed.generation + 10**9, listed.generation + 10**9))
    current = local_ref(str(tmp_path), str(path))
    with TestPipeline() as p:
        loaded = p | beam.Create([listed, current]) | load.LoadImages(threads=1, window=1)
        assert_that(
            loaded.dead_letters | beam.Map(lambda d: (d.ref.generation, d.reason)),
            equal_to([(listed.generation, "superseded")]),
            label="dead letters",
        )
        assert_that(
            loaded.images | beam.Map(lambda r: r[0].ref.generation),
            equal_to([current.generation]),
            label="images",
        )
