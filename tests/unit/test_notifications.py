import json

import pytest

import schemas
from streaming.records import Rejected
from streaming.sources.notifications import parse_notification, raw_prefix

CONTRACT = schemas.notification_contract()


def example():
    ex = CONTRACT["example"]
    return json.dumps(ex["data"]).encode(), dict(ex["attributes"])


def test_parses_a_real_format_finalize_notification():
    data, attrs = example()
    ref = parse_notification(data, attrs)
    assert (ref.bucket, ref.name, ref.generation) == (
        "my-images",
        "uploads/2026/cat.jpg",
        1764201600123456,
    )
    assert ref.event_type == "OBJECT_FINALIZE" and ref.source == "notification"
    assert ref.content_type == "image/jpeg" and ref.size == 48213
    assert ref.metageneration == 1 and ref.md5_hash == "1B2M2Y8AsgTpgAmY7PhCfg=="
    assert ref.crc32c == "AAAAAA==" and ref.time_created == "2026-11-27T00:00:00.123Z"
    assert ref.event_time == "2026-11-27T00:00:00.123456Z"
    assert ref.metadata == (("camera", "X100"),)
    assert ref.uri == "gs://my-images/uploads/2026/cat.jpg"


def test_backfill_attribute_marks_the_source_and_unused_attributes_are_ignored():
    """overwroteGeneration and notificationConfig reach no row: they are not parsed, so a
    malformed one costs no embedding."""
    data, attrs = example()
    attrs.update(overwroteGeneration="not-a-number", backfill="true")
    ref = parse_notification(data, attrs)
    assert ref.source == "backfill" and ref.generation == 1764201600123456


def test_payload_format_none_needs_no_body():
    _, attrs = example()
    attrs["payloadFormat"] = "NONE"
    ref = parse_notification(b"", attrs)
    assert ref.name == "uploads/2026/cat.jpg" and ref.size is None


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda d, a: (d, {"hello": "world"}), "not_a_notification"),
        (
            lambda d, a: (d, {k: v for k, v in a.items() if k != "objectGeneration"}),
            "missing_attribute",
        ),
        (lambda d, a: (b"not json{", a), "not_json"),
        (lambda d, a: (b"[1, 2]", a), "not_object_resource"),
        (lambda d, a: (json.dumps({"kind": "x"}).encode(), a), "not_object_resource"),
        (lambda d, a: (d, {**a, "objectId": "other.jpg"}), "contradictory_attributes"),
        (lambda d, a: (d, {**a, "objectGeneration": "12"}), "contradictory_attributes"),
        (lambda d, a: (d, {**a, "objectGeneration": "abc"}), "bad_attribute"),
        (lambda d, a: (d, {**a, "payloadFormat": "PROTOBUF"}), "unsupported_payload_format"),
        (lambda d, a: (d, {**a, "eventType": "OBJECT_EXPLODE"}), "unknown_event_type"),
        (lambda d, a: (b"\xff\xfe\x00", a), "not_json"),
    ],
)
def test_bad_messages_are_rejected_with_a_reason(mutate, reason):
    data, attrs = mutate(*example())
    with pytest.raises(Rejected) as e:
        parse_notification(data, attrs)
    assert e.value.reason == reason


def test_delete_events_parse_too():
    data, attrs = example()
    attrs["eventType"] = "OBJECT_DELETE"
    assert parse_notification(data, attrs).event_type == "OBJECT_DELETE"


def test_raw_prefix_is_bounded():
    assert len(raw_prefix(b"x" * 10_000, {"a": "b" * 5000})) == 1000
