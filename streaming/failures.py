"""What the job does with each failure: retry it, stall on it, or dead-letter it.

One table, in code, that docs/reliability.md shows (a unit test keeps them equal):

- **retried**: a transient cause (a 5xx, a timeout, a rate limit) is tried again with
  backoff, for as long as it lasts where nothing is lost by waiting (BigQuery inserts)
  or a bounded number of times where an element would hold up its neighbours (reads,
  vector writes), after which it becomes a *retryable* dead letter.
- **stalled on**: a configuration problem that no retry of the element can fix and no
  dead letter should hide (a missing dataset, a permission the job lacks). The writer
  waits and tries again, logs one line at most every `STALL_LOG_SECS` and counts
  `<stage>.stalled`, so the operator sees it and nothing is lost when it is fixed.
- **dead-lettered**: the element itself is at fault, or retries ran out. A dead letter
  is *final* (the input is bad: retrying gives the same answer) or *retryable* (the
  cause was transient): the catch-up and `embed-backfill --skip-existing` embed a
  retryable one again, up to `MAX_ATTEMPTS` attempts in all; final ones only with
  `--retry-dead-letters`.
"""

from __future__ import annotations

import dataclasses
import logging
import time

# Attempts at one object generation whose dead letters are all retryable, before the
# catch-up and the reconciliation leave it alone (the first attempt included).
MAX_ATTEMPTS = 3
# A stall logs at most one line per cause this often (and counts every wait).
STALL_LOG_SECS = 60.0

# A catch-up step whose listing or query fails is tried again after this wait, doubling
# up to the most, this many times in all (about 10 minutes); then the pass is abandoned.
CATCH_UP_RETRY_SECS = 5.0
CATCH_UP_MAX_RETRY_SECS = 300.0
CATCH_UP_TRIES = 8

RETRIED, STALLED, DEAD_LETTERED = "retried", "stalled on", "dead-lettered"


@dataclasses.dataclass(frozen=True)
class Reason:
    """A dead-letter reason code: the stage(s) that write it and whether it is final."""

    code: str
    stages: tuple[str, ...]
    retryable: bool
    meaning: str


# The reason codes: stages write these constants, never the strings (a unit test
# checks), so a reason is defined here and nowhere else.
NOT_A_NOTIFICATION = "not_a_notification"
MISSING_ATTRIBUTE = "missing_attribute"
UNKNOWN_EVENT_TYPE = "unknown_event_type"
UNSUPPORTED_PAYLOAD_FORMAT = "unsupported_payload_format"
NOT_JSON = "not_json"
NOT_OBJECT_RESOURCE = "not_object_resource"
CONTRADICTORY_ATTRIBUTES = "contradictory_attributes"
BAD_ATTRIBUTE = "bad_attribute"
PARSE_ERROR = "parse_error"
BUCKET_NOT_ALLOWED = "bucket_not_allowed"
OBJECT_GONE = "object_gone"
SUPERSEDED = "superseded"
TOO_LARGE = "too_large"
PERMISSION_DENIED = "permission_denied"
NOT_FOUND = "not_found"
READ_ERROR = "read_error"
EMPTY_OBJECT = "empty_object"
NOT_AN_IMAGE = "not_an_image"
TRUNCATED_IMAGE = "truncated_image"
DECODE_ERROR = "decode_error"
TOO_MANY_PIXELS = "too_many_pixels"
DECOMPRESSION_BOMB = "decompression_bomb"
INFERENCE_ERROR = "inference_error"
VECTOR_WRITE_ERROR = "vector_write_error"
BIGQUERY_REJECTED = "bigquery_rejected"
ROW_TOO_LARGE = "row_too_large"

REASONS: dict[str, Reason] = {
    r.code: r
    for r in (
        Reason(NOT_A_NOTIFICATION, ("parse",), False, "not a storage notification"),
        Reason(MISSING_ATTRIBUTE, ("parse",), False, "a required attribute is missing"),
        Reason(UNKNOWN_EVENT_TYPE, ("parse",), False, "an event type the contract lacks"),
        Reason(UNSUPPORTED_PAYLOAD_FORMAT, ("parse",), False, "neither JSON_API_V1 nor NONE"),
        Reason(NOT_JSON, ("parse",), False, "the payload is not JSON"),
        Reason(NOT_OBJECT_RESOURCE, ("parse",), False, "the payload is not an object resource"),
        Reason(CONTRADICTORY_ATTRIBUTES, ("parse",), False, "attributes and payload disagree"),
        Reason(BAD_ATTRIBUTE, ("parse",), False, "an attribute of the wrong type"),
        Reason(PARSE_ERROR, ("parse",), False, "anything else unexpected in a message"),
        Reason(BUCKET_NOT_ALLOWED, ("filter",), False, "a bucket not in --buckets"),
        Reason(OBJECT_GONE, ("load",), False, "the generation is deleted, none is live"),
        Reason(SUPERSEDED, ("load",), False, "the generation is replaced by a newer one"),
        Reason(TOO_LARGE, ("load",), False, "more than --max_bytes"),
        Reason(
            PERMISSION_DENIED,
            ("load", "write"),
            False,
            "401/403: fix the role, then --retry-dead-letters",
        ),
        Reason(NOT_FOUND, ("load", "write"), True, "404 for the bucket, after retries"),
        Reason(READ_ERROR, ("load",), True, "a read failed after its retries"),
        Reason(EMPTY_OBJECT, ("decode",), False, "zero bytes"),
        Reason(NOT_AN_IMAGE, ("decode",), False, "bytes Pillow cannot identify"),
        Reason(TRUNCATED_IMAGE, ("decode",), False, "the image data ends early"),
        Reason(DECODE_ERROR, ("decode",), False, "Pillow failed to decode it"),
        Reason(TOO_MANY_PIXELS, ("decode",), False, "more than --max_pixels"),
        Reason(DECOMPRESSION_BOMB, ("decode",), False, "above Pillow's bomb limit"),
        Reason(INFERENCE_ERROR, ("embed",), True, "the model failed on the batch"),
        Reason(VECTOR_WRITE_ERROR, ("write",), True, "the .npy write failed after retries"),
        Reason(BIGQUERY_REJECTED, ("write",), False, "BigQuery refused the row itself"),
        Reason(ROW_TOO_LARGE, ("write",), False, "the row alone exceeds the insert request limit"),
    )
}


def is_retryable(reason: str) -> bool:
    """Whether a dead letter of `reason` is embedded again by the catch-up (an unknown
    code is final: nothing is retried that no one has classed)."""
    entry = REASONS.get(reason)
    return bool(entry and entry.retryable)


@dataclasses.dataclass(frozen=True)
class Failure:
    """One row of the failure table: where, what, and what the job does."""

    stage: str
    cause: str
    action: str
    reason: str | None = None  # the dead-letter reason, when dead-lettered


FAILURES: tuple[Failure, ...] = (
    Failure("parse", "a malformed or foreign message", DEAD_LETTERED, "(parse reasons)"),
    Failure("filter", "a bucket not in --buckets", DEAD_LETTERED, "bucket_not_allowed"),
    Failure(
        "load",
        "5xx, timeout, connection reset",
        RETRIED + " (bounded time)",
        "read_error (retryable)",
    ),
    Failure("load", "401/403", DEAD_LETTERED, "permission_denied"),
    Failure("load", "404: the generation is gone", DEAD_LETTERED, "object_gone / superseded"),
    Failure("decode", "bytes that are not a usable image", DEAD_LETTERED, "(decode reasons)"),
    Failure("embed", "the model raises on a batch", DEAD_LETTERED, "inference_error (retryable)"),
    Failure(
        "write .npy",
        "5xx, timeout, 404 bucket",
        RETRIED + " (3 retries)",
        "vector_write_error / not_found (retryable)",
    ),
    Failure("write .npy", "401/403", DEAD_LETTERED, "permission_denied"),
    Failure(
        "write rows",
        "5xx, timeout, connection reset, 403 rate or quota limit (gRPC: UNAVAILABLE, "
        "DEADLINE_EXCEEDED, INTERNAL, RESOURCE_EXHAUSTED for a quota)",
        RETRIED + " (backoff up to 30 s, as long as it lasts)",
    ),
    Failure(
        "write rows", "404 / NOT_FOUND table", RETRIED + " (the table is re-created from schemas/)"
    ),
    Failure("write rows", "404 dataset", STALLED),
    Failure("write rows", "401/403 (PERMISSION_DENIED, UNAUTHENTICATED) permission", STALLED),
    Failure(
        "write rows",
        "a column the rows have and the table lacks (insertAll `no such field`; an "
        "append's schema mismatch)",
        STALLED,
    ),
    Failure(
        "write rows",
        "a request over BigQuery's limits (400/413; INVALID_ARGUMENT or "
        "RESOURCE_EXHAUSTED for size)",
        RETRIED + " (split in halves)",
    ),
    Failure("write rows", "one row over the request limit", DEAD_LETTERED, "row_too_large"),
    Failure(
        "write rows",
        "a row BigQuery refuses (invalid; an append's `row_errors`)",
        DEAD_LETTERED,
        "bigquery_rejected",
    ),
    Failure(
        "write dead letters",
        "a dead letter BigQuery refuses (a value copied from the input)",
        "written again reduced (the input's values as text in `raw`); refused again: an "
        "error line and `dead_letters.refused`",
    ),
    Failure(
        "catch-up",
        "a step's listing or query fails (an outage past the client's retries, 403, 400)",
        f"{RETRIED} ({CATCH_UP_RETRY_SECS:.0f} s doubling to {CATCH_UP_MAX_RETRY_SECS:.0f} s, "
        f"{CATCH_UP_TRIES} tries), then the pass is abandoned in an error line; the next "
        "pass covers it",
    ),
)


def reasons_markdown() -> str:
    """The reasons table of docs/reliability.md."""
    lines = ["| reason | stage | retried by the catch-up | what it means |", "|---|---|---|---|"]
    for r in REASONS.values():
        lines.append(
            f"| `{r.code}` | {', '.join(r.stages)} | "
            f"{'yes' if r.retryable else 'no'} | {r.meaning} |"
        )
    return "\n".join(lines)


def failures_markdown() -> str:
    """The failure table of docs/reliability.md."""
    lines = ["| stage | failure | the job | dead letter |", "|---|---|---|---|"]
    for f in FAILURES:
        lines.append(f"| {f.stage} | {f.cause} | {f.action} | {f.reason or ''} |")
    return "\n".join(lines)


class StallLog:
    """One log line per cause at most every `STALL_LOG_SECS`, however often it recurs."""

    def __init__(
        self, logger: logging.Logger, every_secs: float = STALL_LOG_SECS, clock=time.monotonic
    ):
        self._logger, self._every, self._clock = logger, every_secs, clock
        self._last: dict[str, float] = {}

    def error(self, cause: str, message: str) -> bool:
        """Logs `message` unless `cause` was logged within the interval; True if logged."""
        now = self._clock()
        last = self._last.get(cause)
        if last is not None and now - last < self._every:
            return False
        self._last[cause] = now
        self._logger.error("%s", message)
        return True
