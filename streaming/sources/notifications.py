"""Parse Cloud Storage Pub/Sub notifications into `ImageRef`s.

The message format is the contract in `schemas/notification.json` (attributes plus a
JSON_API_V1 object resource). Anything that does not fit becomes a dead letter with a
reason code; the stream goes on.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import apache_beam as beam
from apache_beam import pvalue

import schemas
from streaming import failures, metrics
from streaming.records import (
    ERROR_CHARS,
    DeadLetter,
    ImageRef,
    Rejected,
    checked_int,
    checked_time,
    payload_fields,
    rejected_from,
)

DEAD = "dead_letters"

_CONTRACT = schemas.notification_contract()
ATTRIBUTES: dict[str, dict[str, Any]] = _CONTRACT["attributes"]
REQUIRED_ATTRIBUTES = tuple(k for k, v in ATTRIBUTES.items() if v["required"])
EVENT_TYPES = tuple(_CONTRACT["event_types"])
JSON_API_V1 = _CONTRACT["payload_format"]


def parse_notification(data: bytes, attributes: Mapping[str, str]) -> ImageRef:
    """Turns one storage notification into an ImageRef.

    Args:
      data: the message body (the object resource JSON for JSON_API_V1; empty for NONE).
      attributes: the Pub/Sub message attributes.

    Returns:
      The ImageRef of the object generation the event is about.

    Raises:
      Rejected: with reason `not_a_notification`, `missing_attribute`,
        `unknown_event_type`, `unsupported_payload_format`, `not_json`,
        `not_object_resource`, `contradictory_attributes` or `bad_attribute`.
    """
    attributes = dict(attributes or {})
    if not any(k in attributes for k in ("eventType", "bucketId", "objectId")):
        raise Rejected(
            failures.NOT_A_NOTIFICATION, "message has none of eventType/bucketId/objectId"
        )
    missing = [k for k in REQUIRED_ATTRIBUTES if not attributes.get(k)]
    if missing:
        raise Rejected(failures.MISSING_ATTRIBUTE, "missing attributes: " + ", ".join(missing))
    event_type = attributes["eventType"]
    if event_type not in EVENT_TYPES:
        raise Rejected(failures.UNKNOWN_EVENT_TYPE, f"eventType {event_type[:80]!r}")
    payload_format = attributes["payloadFormat"]
    generation = checked_int(attributes["objectGeneration"], "objectGeneration")
    fields: dict[str, Any] = {}
    if payload_format == JSON_API_V1:
        fields = _parse_payload(data)
        for attr, field, value in (
            ("bucketId", "bucket", attributes["bucketId"]),
            ("objectId", "name", attributes["objectId"]),
            ("objectGeneration", "generation", generation),
        ):
            if fields.get(field) is not None and fields[field] != value:
                raise Rejected(
                    failures.CONTRADICTORY_ATTRIBUTES,
                    f"attribute {attr}={str(value)[:200]!r} but payload {field}="
                    f"{str(fields[field])[:200]!r}",
                )
    elif payload_format != "NONE":
        raise Rejected(
            failures.UNSUPPORTED_PAYLOAD_FORMAT, f"payloadFormat {payload_format[:40]!r}"
        )
    return ImageRef(
        bucket=attributes["bucketId"],
        name=attributes["objectId"],
        generation=generation,
        event_type=event_type,
        source="backfill" if attributes.get("backfill") == "true" else "notification",
        metageneration=fields.get("metageneration"),
        content_type=fields.get("content_type"),
        size=fields.get("size"),
        md5_hash=fields.get("md5_hash"),
        crc32c=fields.get("crc32c"),
        time_created=fields.get("time_created"),
        updated=fields.get("updated"),
        event_time=checked_time(attributes.get("eventTime"), "eventTime"),
        payload_format=payload_format,
        metadata=fields.get("metadata"),
        attempt=checked_int(attributes["attempt"], "attempt") if attributes.get("attempt") else 0,
    )


def _parse_payload(data: bytes) -> dict[str, Any]:
    try:
        resource = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise Rejected(failures.NOT_JSON, f"payload is not JSON: {e}") from None
    if (
        not isinstance(resource, dict)
        or not isinstance(resource.get("name"), str)
        or not isinstance(resource.get("bucket"), str)
    ):
        raise Rejected(failures.NOT_OBJECT_RESOURCE, "payload is not a storage object resource")
    return payload_fields(resource)


def raw_prefix(data: bytes, attributes: Mapping[str, str]) -> str:
    """A bounded, printable copy of a message for its dead letter."""
    text = json.dumps(
        {
            "attributes": dict(attributes or {}),
            "data": (data or b"")[:ERROR_CHARS].decode("utf-8", "replace"),
        },
        ensure_ascii=False,
    )
    return text[:ERROR_CHARS]


class _ParseFn(beam.DoFn):
    def process(self, message) -> Iterable[Any]:
        data = getattr(message, "data", message) or b""
        attributes = getattr(message, "attributes", None) or {}
        try:
            ref = parse_notification(data, attributes)
        except Exception as e:  # noqa: BLE001 - no message may fail the bundle
            rejected = rejected_from(e, failures.PARSE_ERROR)
            metrics.dead_letter(rejected.reason)
            yield pvalue.TaggedOutput(
                DEAD,
                DeadLetter(
                    "parse", rejected.reason, str(rejected), raw=raw_prefix(data, attributes)
                ),
            )
            return
        metrics.count(f"event.{ref.event_type}")
        yield ref


class ParseNotifications(beam.PTransform):
    """Pub/Sub storage notifications -> ImageRef; anything else -> dead letters.

    Output is a tuple-like `DoOutputsTuple`: `[None]` the refs, `[DEAD]` the dead letters.
    """

    def expand(self, messages):
        return messages | "Parse" >> beam.ParDo(_ParseFn()).with_outputs(DEAD, main="refs")
