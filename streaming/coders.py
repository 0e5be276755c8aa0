"""Beam coders for the records that cross a shuffle or wait in state.

`records.encode_record` is the versioned wire form (see there); this registers it with
Beam for each record class, so a job updated in place decodes the buffered records of
the job it replaces, or fails loudly. Kept apart from `records` so that the CLIs'
start-up (`--help`, option checks) never imports Beam.
"""

from __future__ import annotations

from typing import Any

from apache_beam import coders

from streaming.records import RECORD_TYPES, RecordFormatError, decode_record, encode_record


class RecordCoder(coders.Coder):
    """Beam coder for the record classes, registered for each of them below."""

    def __init__(self, record_type: type | None = None):
        self._type = record_type

    @classmethod
    def from_type_hint(cls, typehint, unused_registry):
        return cls(typehint)

    def encode(self, value) -> bytes:
        return encode_record(value)

    def decode(self, encoded: bytes):
        record = decode_record(encoded)
        if self._type is not None and not isinstance(record, self._type):
            raise RecordFormatError(f"expected {self._type.__name__}, got {type(record).__name__}")
        return record

    def is_deterministic(self) -> bool:
        return True

    def to_type_hint(self):
        return self._type or Any

    def __eq__(self, other):
        return type(self) is type(other) and self._type == other._type

    def __hash__(self):
        return hash((type(self), self._type))


for _cls in RECORD_TYPES.values():
    coders.registry.register_coder(_cls, RecordCoder)
