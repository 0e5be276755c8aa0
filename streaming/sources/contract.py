"""Build storage notifications exactly as a bucket sends them (schemas/notification.json).

The backfill publishes these, so the streaming job needs no special path: it parses a
backfilled object the same way as a fresh upload; only the `backfill` attribute differs.
The catch-up builds the same message for what it finds and parses it with
`notifications.parse_notification`, so both paths give the same `ImageRef`. It lives
beside the parser, in the pipeline, because dependencies run one way: `publisher/`
imports the pipeline, never the reverse.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import schemas

_CONTRACT = schemas.notification_contract()
JSON_API_V1 = _CONTRACT["payload_format"]
BACKFILL_ATTRIBUTE = "backfill"
ATTEMPT_ATTRIBUTE = "attempt"
assert {BACKFILL_ATTRIBUTE, ATTEMPT_ATTRIBUTE} <= set(_CONTRACT["attributes"])


def notification_for(
    resource: Mapping[str, Any],
    *,
    event_type: str = "OBJECT_FINALIZE",
    config_id: str = "backfill",
    attempt: int = 0,
) -> tuple[bytes, dict[str, str]]:
    """The (data, attributes) of the notification for one object resource.

    Args:
      resource: the object's JSON API resource (`streaming.support.library_patches.object_resource`
        of a google-cloud-storage Blob: name, bucket, generation, size, ... as strings).
      event_type: the event to announce.
      config_id: the notificationConfig id to name.
      attempt: for a generation published again after retryable dead letters, the
        attempt's number (the `attempt` attribute); 0 for a first try.

    Returns:
      The JSON_API_V1 payload and the attributes, with `backfill=true`.
    """
    bucket, name, generation = resource["bucket"], resource["name"], str(resource["generation"])
    attributes = {
        "eventType": event_type,
        "bucketId": bucket,
        "objectId": name,
        "objectGeneration": generation,
        "eventTime": resource.get("updated") or resource.get("timeCreated") or "",
        "payloadFormat": JSON_API_V1,
        "notificationConfig": f"projects/_/buckets/{bucket}/notificationConfigs/{config_id}",
        BACKFILL_ATTRIBUTE: "true",
    }
    if not attributes["eventTime"]:
        del attributes["eventTime"]
    if attempt:
        attributes[ATTEMPT_ATTRIBUTE] = str(int(attempt))
    payload = {k: v for k, v in resource.items() if v is not None}
    payload.setdefault("kind", "storage#object")
    return json.dumps(payload, separators=(",", ":")).encode("utf-8"), attributes
