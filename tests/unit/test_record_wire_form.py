"""Records that cross a shuffle keep one versioned wire form, so a running job's buffered
state decodes in the job that replaces it with `--update`, and a mismatch fails loudly."""

import pickle
import pickletools

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from streaming import records
from streaming.coders import RecordCoder
from streaming.records import (
    DeadLetter,
    ImageInfo,
    ImageRef,
    RecordFormatError,
    decode_record,
    encode_record,
)

REF = ImageRef(
    "photos",
    "cats/ünï 🐱.jpg",
    1795750320437406,
    content_type="image/jpeg",
    size=13,
    event_time="2026-11-27T03:32:00Z",
    metadata=(("owner", "ana"),),
)
INFO = ImageInfo(REF, 640, 480, "JPEG")
DEAD = DeadLetter("load", "not_an_image", "cannot identify image file", ref=REF)
RECORDS = [
    REF,
    ImageRef("b", "n", 1),
    INFO,
    ImageInfo(ImageRef("b", "n", 1), 1, 1, None),
    DEAD,
    DeadLetter("parse", "bad_json", "Expecting value", raw="{oops"),
]

# Format 1 bytes as a running job holds them: they must keep decoding to the same record.
# If this test fails, the wire form changed: bump RECORD_FORMAT (an update then needs a
# drain, docs/dataflow.md) and replace these bytes with the new encoding.
GOLDEN_REF = (
    b'\x01{"f":{"bucket":"photos","content_type":"image/jpeg","event_time":'
    b'"2026-11-27T03:32:00Z","generation":1795750320437406,"metadata":[["owner",'
    b'"ana"]],"name":"cats/\xc3\xbcn\xc3\xaf \xf0\x9f\x90\xb1.jpg","size":13},'
    b'"t":"ImageRef"}'
)


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_every_path_round_trips(record):
    coder = beam.coders.registry.get_coder(type(record))
    assert isinstance(coder, RecordCoder)
    assert coder.decode(coder.encode(record)) == record
    # Untyped PCollections use Beam's default coder, which pickles unknown objects.
    default = beam.coders.FastPrimitivesCoder()
    assert default.decode(default.encode(record)) == record
    assert pickle.loads(pickle.dumps(record)) == record


def test_format_1_bytes_still_decode_and_encoding_is_stable():
    assert decode_record(GOLDEN_REF) == REF
    assert encode_record(REF) == GOLDEN_REF


def test_pickles_name_only_the_decoder_not_the_class_layout():
    globals_used = {
        arg
        for op, arg, _ in pickletools.genops(pickle.dumps(INFO, protocol=3))
        if op.name == "GLOBAL"
    }
    assert globals_used == {"streaming.records decode_record"}


def test_another_format_version_fails_loudly():
    future = bytes([records.RECORD_FORMAT + 1]) + encode_record(REF)[1:]
    with pytest.raises(RecordFormatError, match=r"format 2, this code reads format 1.*drain"):
        decode_record(future)
    with pytest.raises(RecordFormatError, match="drain"):
        pickle.loads(pickle.dumps(REF).replace(encode_record(REF), future))
    with pytest.raises(RecordFormatError):
        decode_record(b"")


def test_a_field_this_code_does_not_know_fails_loudly():
    renamed = encode_record(REF).replace(b'"size":', b'"byte_size":')
    with pytest.raises(RecordFormatError, match="byte_size.*without a RECORD_FORMAT bump"):
        decode_record(renamed)


def test_coder_rejects_another_record_type():
    with pytest.raises(RecordFormatError, match="expected ImageInfo, got ImageRef"):
        RecordCoder(ImageInfo).decode(encode_record(REF))


def test_typed_records_cross_a_shuffle_with_the_registered_coder():
    with TestPipeline(runner="BundleBasedDirectRunner") as p:
        out = (
            p
            | beam.Create([INFO, ImageInfo(REF, 1, 2, "PNG")]).with_output_types(ImageInfo)
            | beam.Reshuffle()
        )
        assert out.element_type is ImageInfo
        assert_that(out, equal_to([INFO, ImageInfo(REF, 1, 2, "PNG")]))
