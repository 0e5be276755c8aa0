"""Typed records that travel between the pipeline's stages.

`ImageRef` identifies one object generation (bucket, name, generation) and carries
what the notification said about it; every source (Pub/Sub, backfill, local folder)
produces it, so the later stages have one input shape. `DeadLetter` is the one
shape of every failure, whatever the stage.

Records that cross a shuffle or wait in state (Dataflow persists them between stages
and across a streaming `--update`) travel in one versioned wire form, `encode_record`,
never as pickled class layouts: see "Wire form" below.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import schemas
from streaming import failures

ERROR_CHARS = 1000  # bound on error text and raw message prefixes kept in dead letters
_MAX_ENCODED_NAME = 180  # keeps file names under common 255-byte limits


def utcnow_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def parse_rfc3339(value: str) -> dt.datetime:
    """An RFC 3339 time (`Z` or an offset; naive is taken as UTC) as an aware datetime.

    Raises:
      ValueError: `value` is not such a time (BigQuery would refuse it as a TIMESTAMP).
    """
    parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00").replace("z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


@dataclasses.dataclass(frozen=True)
class ImageRef:
    """One object generation and its notification metadata.

    For local files the input folder is the bucket, the relative path the name and
    the mtime in nanoseconds the generation.
    """

    bucket: str
    name: str
    generation: int
    event_type: str = "OBJECT_FINALIZE"
    source: str = "notification"  # notification | backfill | local
    metageneration: int | None = None
    content_type: str | None = None
    size: int | None = None
    md5_hash: str | None = None
    crc32c: str | None = None
    time_created: str | None = None
    updated: str | None = None
    event_time: str | None = None
    payload_format: str | None = None
    metadata: tuple[tuple[str, str], ...] | None = None  # sorted items, hashable
    # 0 for a first try; n for the n-th embedding again of a generation whose earlier
    # tries ended in retryable dead letters (set by the catch-up and the backfill).
    attempt: int = 0

    @property
    def is_local(self) -> bool:
        return self.source == "local"

    @property
    def uri(self) -> str:
        """Where the bytes are: gs://bucket/name, or the local path."""
        return object_uri(self.bucket, self.name, self.is_local)

    @property
    def key(self) -> str:
        return row_key(self.bucket, self.name, self.generation, self.event_type)


def object_uri(bucket: str, name: str, local: bool) -> str:
    """Where an object's bytes are: the local path (the bucket is the input folder, the
    name the relative path), else gs://bucket/name."""
    if local:
        return bucket.rstrip("/") + "/" + name
    return f"gs://{bucket}/{name}"


def row_key(bucket: str, name: str, generation: int, event_type: str = "OBJECT_FINALIZE") -> str:
    """Deterministic id of an object generation's row (row key and BigQuery insert id).

    The same notification delivered twice gives the same key, so sinks overwrite
    instead of duplicating. A deletion's tombstone has a key of its own.
    """
    ident = [bucket, name, int(generation)]
    if event_type != "OBJECT_FINALIZE":
        ident.append(event_type)
    ident = json.dumps(ident, ensure_ascii=False)
    return hashlib.sha256(ident.encode("utf-8")).hexdigest()


def object_file_name(bucket: str, name: str, generation: int, suffix: str) -> str:
    """A collision-free relative path for per-object output files.

    `<quoted bucket>/<quoted name>@<generation><suffix>`: every character outside
    [A-Za-z0-9_.~-] is percent-encoded, '/' included, so `a/cat.jpg` and
    `b/cat.jpg` differ, and no name (`..`, leading `/`, newlines) can leave the
    output folder. Over-long parts are shortened with a hash of the full value.
    """
    return f"{_encode_part(bucket)}/{_encode_part(name)}@{int(generation)}{suffix}"


def _encode_part(value: str) -> str:
    encoded = quote(value, safe="")
    if encoded in ("", ".", ".."):
        encoded = encoded.replace(".", "%2E") or "%00"
    if len(encoded) > _MAX_ENCODED_NAME:
        digest = hashlib.sha256(value.encode("utf-8")).hexdigest()[:16]
        head = encoded[: _MAX_ENCODED_NAME - 17]
        cut = head.rfind("%", len(head) - 2)  # never split a %XX escape
        encoded = (head[:cut] if cut >= 0 else head) + "~" + digest
    return encoded


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """An ImageRef plus what decoding learnt about the image."""

    ref: ImageRef
    width: int
    height: int
    format: str | None


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """A failed element: where it failed, why (a short code) and the error text."""

    stage: str
    reason: str
    error: str
    ref: ImageRef | None = None
    raw: str | None = None

    @property
    def key(self) -> str:
        """The generation's row key (one per attempt: a retry's dead letter is a row of
        its own, so attempts can be counted), else a hash of the raw message."""
        if self.ref is not None:
            if self.ref.attempt:
                return hashlib.sha256(f"{self.ref.key}#{self.ref.attempt}".encode()).hexdigest()
            return self.ref.key
        return hashlib.sha256((self.raw or self.error).encode("utf-8", "replace")).hexdigest()

    @property
    def retryable(self) -> bool:
        """Whether the catch-up embeds the generation again (streaming/failures.py)."""
        return self.ref is not None and failures.is_retryable(self.reason)

    def to_row(self) -> dict[str, Any]:
        ref = self.ref
        return {
            "row_key": self.key,
            "bucket": ref.bucket if ref else None,
            "name": ref.name if ref else None,
            "generation": ref.generation if ref else None,
            "uri": ref.uri if ref else None,
            "stage": self.stage,
            "reason": self.reason,
            "error": redact(self.error or "")[:ERROR_CHARS],
            "raw": redact(self.raw)[:ERROR_CHARS] if self.raw is not None else None,
            "event_time": ref.event_time if ref else None,
            "processing_time": utcnow_iso(),
            "retryable": self.retryable,
            "attempt": ref.attempt if ref else None,
        }


_SECRETS = re.compile(
    r"(?i)((?:x-goog-(?:signature|credential)|x-amz-signature|signature|sig|access_token|"
    r"token|key|password|client_secret)=)[^&\s\"']+"
    r"|(bearer\s+)[A-Za-z0-9._~+/=-]+"
    r"|(\"private_key\"\s*:\s*\")[^\"]+"
)


def redact(text: str) -> str:
    """Masks credentials and signed-URL signatures before text is kept in a dead letter."""
    return _SECRETS.sub(lambda m: (m.group(1) or m.group(2) or m.group(3)) + "REDACTED", text)


class Rejected(Exception):
    """A stage's expected failure: carries the dead-letter reason code."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


# --- Wire form -------------------------------------------------------------------------
# One byte of format version, then JSON: {"t": <record class>, "f": {<non-default fields>}}.
# A running job's buffered records (state, shuffles) must decode in the job that replaces
# it with `--update`. Adding a field with a default keeps the format; removing, renaming
# or retyping one bumps RECORD_FORMAT, and the job is then drained and replaced, not
# updated (docs/dataflow.md). A mismatch fails loudly instead of guessing.
RECORD_FORMAT = 1


class RecordFormatError(ValueError):
    """Bytes that this code cannot decode into a record: another format or class layout."""


RECORD_TYPES: dict[str, type] = {cls.__name__: cls for cls in (ImageRef, ImageInfo, DeadLetter)}


def _to_wire(record) -> dict[str, Any]:
    fields = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if f.default is not dataclasses.MISSING and value == f.default:
            continue  # defaults are implied: a field added later reads old bytes
        fields[f.name] = _to_wire(value) if dataclasses.is_dataclass(value) else value
    return {"t": type(record).__name__, "f": fields}


def _from_wire(obj: dict[str, Any]):
    cls = RECORD_TYPES.get(obj.get("t"))
    if cls is None:
        raise RecordFormatError(f"unknown record type {obj.get('t')!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(obj["f"]) - known)
    if unknown:
        raise RecordFormatError(
            f"{cls.__name__} in format {RECORD_FORMAT} has no field(s) {', '.join(unknown)}: "
            "the record layout changed without a RECORD_FORMAT bump"
        )
    values = {}
    for name, value in obj["f"].items():
        if isinstance(value, dict) and "t" in value:
            value = _from_wire(value)
        elif isinstance(value, list):
            value = _tuples(value)
        values[name] = value
    return cls(**values)


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def encode_record(record) -> bytes:
    """ImageRef / ImageInfo / DeadLetter -> versioned bytes (deterministic)."""
    body = json.dumps(_to_wire(record), ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return bytes([RECORD_FORMAT]) + body.encode("utf-8")


def decode_record(data: bytes):
    """The inverse of `encode_record`.

    Raises:
      RecordFormatError: the bytes are of another format version or record layout
        (a job updated across an incompatible change: drain and replace it instead).
    """
    if not data or data[0] != RECORD_FORMAT:
        found = data[0] if data else "empty"
        raise RecordFormatError(
            f"record bytes are format {found}, this code reads format {RECORD_FORMAT}: "
            "a job cannot be updated across a record format change; drain it and start "
            "the new one"
        )
    try:
        obj = json.loads(data[1:].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecordFormatError(f"record bytes are not format {RECORD_FORMAT}: {e}") from e
    return _from_wire(obj)


def _reduce(record):
    # Beam's default coder pickles objects it has no coder for; this makes that pickle
    # the versioned wire form too, instead of the class's attribute layout.
    return decode_record, (encode_record(record),)


for _cls in RECORD_TYPES.values():
    _cls.__reduce__ = _reduce


class Skipped(Rejected):
    """Not a failure: the element is not one the job embeds, found out late (e.g. the
    content type of a NONE-format notification, known once the metadata is read).
    Counted under its reason; no dead letter."""


# HTTP statuses of Google API errors (google.api_core exceptions carry `.code`).
_REASON_BY_STATUS = {
    401: failures.PERMISSION_DENIED,
    403: failures.PERMISSION_DENIED,
    404: failures.NOT_FOUND,
}


def rejected_from(error: BaseException, default: str) -> Rejected:
    """Any exception as a `Rejected`, so that no per-element failure escapes a stage
    (a failed streaming bundle is retried forever and stalls its key): 401/403 from
    a Google API or a local PermissionError -> `permission_denied`, 404 ->
    `not_found`, anything else `default`.
    """
    if isinstance(error, Rejected):
        return error
    status = getattr(error, "code", None)
    if isinstance(error, PermissionError):  # a local file
        status = 403
    reason = _REASON_BY_STATUS.get(status, default) if isinstance(status, int) else default
    return Rejected(reason, f"{type(error).__name__}: {error}")


# The ImageRef fields a storage object resource carries (the notification contract's
# `payload`): a notification's JSON_API_V1 payload, or an object's metadata read later.
PAYLOAD_FIELDS: dict[str, dict[str, Any]] = schemas.notification_contract()["payload"]


def checked_int(value: Any, what: str) -> int | None:
    """`value` as a non-negative integer (a number or its string), None when empty.

    Raises:
      Rejected: `bad_attribute`, naming `what`, for anything else.
    """
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise Rejected(
            failures.BAD_ATTRIBUTE, f"{what} is not an integer: {str(value)[:80]!r}"
        ) from None
    if number < 0:
        raise Rejected(failures.BAD_ATTRIBUTE, f"{what} is negative: {number}")
    return number


def checked_time(value: Any, what: str, reason: str = failures.BAD_ATTRIBUTE) -> str | None:
    """`value` if it is an RFC 3339 time: a row or dead letter carrying anything else in
    a TIMESTAMP column is refused by BigQuery, so it is refused here, with the message."""
    if value is None or value == "":
        return None
    try:
        parse_rfc3339(value)
    except (TypeError, ValueError):
        raise Rejected(reason, f"{what} is not an RFC 3339 time: {str(value)[:80]!r}") from None
    return value


def payload_fields(resource: Mapping[str, Any]) -> dict[str, Any]:
    """The ImageRef fields of an object resource (the contract's `payload`), typed.

    Raises:
      Rejected: `bad_attribute` or `not_object_resource` for a wrongly typed value.
    """
    fields: dict[str, Any] = {}
    for key, spec in PAYLOAD_FIELDS.items():
        value = resource.get(key)
        if value is None:
            continue
        kind = spec["type"]
        if kind.endswith("-string"):
            value = checked_int(value, key)
        elif kind == "rfc3339":
            value = checked_time(value, key, failures.NOT_OBJECT_RESOURCE)
        elif kind.startswith("map"):
            if not isinstance(value, dict):
                raise Rejected(failures.NOT_OBJECT_RESOURCE, f"{key} is not an object")
            value = tuple(sorted((str(k), str(v)) for k, v in value.items()))
        elif not isinstance(value, str):
            raise Rejected(failures.NOT_OBJECT_RESOURCE, f"{key} is not a string")
        fields[spec["field"]] = value
    return fields
