"""Vectors in shards: many embeddings per .npy object, each row saying where its own is.

One object per vector costs one Cloud Storage Class A operation per image. Here the
vectors of a group go into one `(n, 2048)` float32 .npy, and each row carries
`vector_uri` (the shard) and `vector_index` (its row in the shard).

The shards are sized by the traffic. A group closes at `--vectors_per_shard` vectors or
`--shard_wait_secs` after its first vector; while its key gets fewer than BUSY_KEY_RATE
vectors a second, also when none has joined it for `--shard_idle_secs`. So at one image
a second a row waits only the idle gap, and from a few images a second on a shard
gathers what arrives in the wait (benchmarks/results/shards.md: per rate, the shards per
1,000 images and a row's wait).
The vectors are spread over as many keys as the rate needs, one per
`vectors_per_shard / shard_wait_secs` a second, at most `--shard_keys`: more keys at a
low rate would only split the same vectors into emptier shards.

A shard's name derives from the model id and the ordered row keys it holds, and a
gs:// shard is written create-only (`sinks.files.create_object`): a retried group with the
same elements finds its shard already there (same name, same rows at the same indexes)
and emits the same rows; a group regrouped differently after a failure writes another
shard. Rows are emitted only after their shard exists, so no row ever points at an
object that was not written, and a lost group costs at most an orphaned shard.

Between the model and the writer the vectors travel as `Embedded`: the image's record in
its versioned wire form and the vector as raw float32 bytes (`EmbeddedCoder`), never as
pickled arrays, JSON or Python floats.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import random
import struct
import threading
import time
from collections.abc import Iterable

import apache_beam as beam
import numpy as np
from apache_beam import coders, pvalue
from apache_beam.transforms import userstate
from apache_beam.transforms.timeutil import TimeDomain

from streaming import failures, metrics
from streaming.config.flags import VECTOR_LAYOUTS
from streaming.config.names import gcs_parts, is_gcs_uri
from streaming.model.spec import split_model_id
from streaming.records import DeadLetter, ImageInfo, decode_record, encode_record, rejected_from
from streaming.sinks import files
from streaming.support import clients

SHARDS, OBJECTS = VECTOR_LAYOUTS
SHARDS_DIR = "shards"
EMBEDDED_FORMAT = 1


class Embedded:
    """An embedded image on its way to the sinks: (ImageInfo, float32 vector, model id).

    Unpacks as `info, result` with `result.inference` and `result.model_id`, the shape
    of RunInference's keyed output, so the one-object-per-vector writer reads it as is.
    """

    __slots__ = ("info", "vector", "model_id")

    def __init__(self, info: ImageInfo, vector, model_id: str):
        self.info = info
        self.vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        self.model_id = model_id

    @property
    def inference(self) -> np.ndarray:
        return self.vector

    def __iter__(self):
        return iter((self.info, self))

    def __eq__(self, other):
        return (
            isinstance(other, Embedded)
            and self.info == other.info
            and self.model_id == other.model_id
            and np.array_equal(self.vector, other.vector)
        )

    def __hash__(self):
        return hash((self.info, self.model_id))

    def __repr__(self):
        return f"Embedded({self.info.ref.key[:12]}, {self.vector.shape}, {self.model_id!r})"

    def __reduce__(self):
        return decode_embedded, (encode_embedded(self),)


def embedded(info: ImageInfo, result) -> Embedded:
    """(ImageInfo, PredictionResult) -> Embedded: the pixels stay behind."""
    metrics.checkpoint("embedded", info.ref)
    return Embedded(info, result.inference, result.model_id)


_HEADER = struct.Struct("<BIH")  # format, record bytes, model id bytes


def encode_embedded(value: Embedded) -> bytes:
    """Format byte, lengths, the ImageInfo's wire form, the model id, float32 LE bytes."""
    record = encode_record(value.info)
    model_id = (value.model_id or "").encode("utf-8")
    return (
        _HEADER.pack(EMBEDDED_FORMAT, len(record), len(model_id))
        + record
        + model_id
        + value.vector.astype("<f4", copy=False).tobytes()
    )


def decode_embedded(data: bytes) -> Embedded:
    fmt, n_record, n_model = _HEADER.unpack_from(data)
    if fmt != EMBEDDED_FORMAT:
        from streaming.records import RecordFormatError

        raise RecordFormatError(
            f"embedded vector bytes are format {fmt}, this code reads "
            f"format {EMBEDDED_FORMAT}: drain the job and start the new one"
        )
    start = _HEADER.size
    info = decode_record(data[start : start + n_record])
    model_id = data[start + n_record : start + n_record + n_model].decode("utf-8")
    vector = np.frombuffer(data, dtype="<f4", offset=start + n_record + n_model)
    return Embedded(info, vector, model_id)


class EmbeddedCoder(coders.Coder):
    """Beam coder for `Embedded`: about 8 KiB of float32 plus the record per image."""

    def encode(self, value: Embedded) -> bytes:
        return encode_embedded(value)

    def decode(self, encoded: bytes) -> Embedded:
        return decode_embedded(encoded)

    def is_deterministic(self) -> bool:
        return True

    def to_type_hint(self):
        return Embedded

    def __eq__(self, other):
        return type(self) is type(other)

    def __hash__(self):
        return hash(type(self))


coders.registry.register_coder(Embedded, EmbeddedCoder)


def model_tag(model_id: str) -> str:
    """`<fingerprint>.<runtime>` of a model id: weights and what ran them."""
    _, fingerprint, runtime = split_model_id(model_id)
    return ".".join(part for part in (fingerprint, runtime) if part) or "unknown-model"


def shard_path(root: str, model_id: str, row_keys: Iterable[str]) -> str:
    """`<root>/shards/<fingerprint>.<runtime>/<sha256 of the ordered row keys>-<n>.npy`.

    The same rows in the same order always name the same shard; the model id is part of
    the path, so vectors of other weights or another runtime never share a shard.
    """
    keys = list(row_keys)
    digest = hashlib.sha256(("\n".join([model_id or ""] + keys)).encode("utf-8")).hexdigest()
    name = f"{digest[:40]}-{len(keys)}.npy"
    if "://" in root:
        from apache_beam.io.filesystems import FileSystems

        return FileSystems.join(root, SHARDS_DIR, model_tag(model_id), name)
    return os.path.join(root, SHARDS_DIR, model_tag(model_id), name)


def shard_bytes(vectors: np.ndarray) -> bytes:
    """An (n, d) float32 matrix as .npy bytes."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(vectors, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def read_vectors(uri: str, indexes: Iterable[int] | None = None, gcs=None) -> np.ndarray:
    """Rows `indexes` (all if None) of the .npy at `uri` (a path, file:// or gs://), as
    float32. Reads a one-vector .npy too (index 0)."""
    if is_gcs_uri(uri):
        bucket, name = gcs_parts(uri)
        client = gcs or clients.storage_client()
        data = client.bucket(bucket).blob(name).download_as_bytes()
        matrix = np.load(io.BytesIO(data), allow_pickle=False)
    else:
        path = uri[len("file://") :] if uri.startswith("file://") else uri
        matrix = np.load(path, mmap_mode="r", allow_pickle=False)
    matrix = np.atleast_2d(matrix)
    if indexes is None:
        return np.asarray(matrix, dtype=np.float32)
    return np.asarray(matrix[list(indexes)], dtype=np.float32)


# A key whose vectors arrive at least this often (per second) is busy: its partial shard
# waits out `--shard_wait_secs` instead of closing at the idle gap: from this rate on a
# wait gathers several vectors; below it, rows would wait for little gain, so a lone
# upload's row waits only the idle gap.
BUSY_KEY_RATE = 5.0
# The rate meters' memory: arrivals older than about this many seconds hardly count.
RATE_SECS = 5.0


def decayed_rate(rate: float, since: float, arrivals: int = 1, tau: float = RATE_SECS) -> float:
    """A rate estimate (per second) after `arrivals` more, `since` seconds after the last
    update: the old estimate decays by exp(-since/tau) and each arrival adds 1/tau. At a
    steady rate r it settles at r; a burst of n at once adds only n/tau."""
    return rate * math.exp(-max(0.0, since) / tau) + arrivals / tau


def keys_for(rate: float, size: int, wait_secs: float, max_keys: int) -> int:
    """How many shard keys a rate needs: one per `size / wait_secs` vectors a second (the
    rate at which one key fills a full shard within the wait), at least 1, at most
    `max_keys`. Fewer keys than that would leave vectors waiting on a full key's writes;
    more would split the same traffic into emptier shards."""
    return max(1, min(max_keys, math.ceil(rate * wait_secs / size)))


def flush_at(
    first: float, now: float, wait_secs: float, idle_secs: float, busy: bool = False
) -> float:
    """When a partial shard closes: `wait_secs` after its first vector, and, while its key
    is not busy (under BUSY_KEY_RATE), earlier: `idle_secs` after its latest."""
    if busy:
        return first + wait_secs
    return min(first + wait_secs, now + idle_secs)


def on_vector(
    n: int,
    first: float | None,
    rate: tuple[float, float] | None,
    now: float,
    size: int,
    wait_secs: float,
    idle_secs: float,
) -> tuple[float | None, tuple[float, float]]:
    """What a key does when the `n`-th vector of its open shard arrives at `now`:
    (when the shard closes, None for at once; the key's new (rate, time)). `first` is
    when the shard's first vector came (None for the first), `rate` the key's last
    (rate, time). The buffer's whole rule, for the DoFn and for benchmarks/shards.py."""
    last_rate, last_at = rate or (0.0, now)
    key_rate = decayed_rate(last_rate, now - last_at)
    if n >= size:
        return None, (key_rate, now)
    opened = now if first is None else first
    close = flush_at(opened, now, wait_secs, idle_secs, busy=key_rate >= BUSY_KEY_RATE)
    return close, (key_rate, now)


class RateKeys:
    """Picks each vector's shard key at random among as many keys as the rate this
    process has seen needs (`keys_for`). One meter per process (Beam runs a DoFn's
    copies on several threads): the keys follow the process's whole traffic."""

    _lock = threading.Lock()
    _rate, _at = 0.0, None

    def __init__(self, size: int, wait_secs: float, max_keys: int, clock=time.monotonic):
        self._size, self._wait, self._max, self._clock = size, wait_secs, max_keys, clock

    def __call__(self, element):
        now = self._clock()
        cls = type(self)
        with cls._lock:
            since = 0.0 if cls._at is None else now - cls._at
            cls._rate, cls._at = decayed_rate(cls._rate, since), now
            keys = keys_for(cls._rate, self._size, self._wait, self._max)
        return random.randrange(keys), element


class _ShardBufferFn(beam.DoFn):
    """(key, Embedded) -> lists of Embedded: Beam's GroupIntoBatches (same state, same
    window-end flush) with one more way to close a group, the idle gap, taken only
    while the key is not busy (`flush_at`). The key's rate (`decayed_rate`) is kept in
    state across its shards."""

    VALUES = userstate.BagStateSpec("values", EmbeddedCoder())
    COUNT = userstate.CombiningValueStateSpec(
        "count", coders.VarIntCoder(), beam.combiners.CountCombineFn()
    )
    FIRST = userstate.ReadModifyWriteStateSpec("first", coders.FloatCoder())
    # (rate per second, when it was last updated) of the key's vectors.
    RATE = userstate.ReadModifyWriteStateSpec(
        "rate", coders.TupleCoder((coders.FloatCoder(), coders.FloatCoder()))
    )
    WINDOW_END = userstate.TimerSpec("window_end", TimeDomain.WATERMARK)
    FLUSH = userstate.TimerSpec("flush", TimeDomain.REAL_TIME)

    def __init__(self, size: int, wait_secs: float, idle_secs: float, clock=time.time):
        self._size, self._wait, self._idle, self._clock = size, wait_secs, idle_secs, clock

    def process(
        self,
        element,
        window=beam.DoFn.WindowParam,
        values=beam.DoFn.StateParam(VALUES),
        count=beam.DoFn.StateParam(COUNT),
        first=beam.DoFn.StateParam(FIRST),
        rate=beam.DoFn.StateParam(RATE),
        window_end=beam.DoFn.TimerParam(WINDOW_END),
        flush=beam.DoFn.TimerParam(FLUSH),
    ):
        window_end.set(window.end)
        values.add(element[1])
        count.add(1)
        now, n = self._clock(), count.read()
        close, key_rate = on_vector(
            n, first.read() if n > 1 else None, rate.read(), now, self._size, self._wait, self._idle
        )
        rate.write(key_rate)
        if close is None:
            yield from self._flush(values, count, first, flush)
            return
        if n == 1:
            first.write(now)
        flush.set(close)

    @userstate.on_timer(WINDOW_END)
    def on_window_end(
        self,
        values=beam.DoFn.StateParam(VALUES),
        count=beam.DoFn.StateParam(COUNT),
        first=beam.DoFn.StateParam(FIRST),
        flush=beam.DoFn.TimerParam(FLUSH),
    ):
        yield from self._flush(values, count, first, flush)

    @userstate.on_timer(FLUSH)
    def on_flush(
        self,
        values=beam.DoFn.StateParam(VALUES),
        count=beam.DoFn.StateParam(COUNT),
        first=beam.DoFn.StateParam(FIRST),
        flush=beam.DoFn.TimerParam(FLUSH),
    ):
        yield from self._flush(values, count, first, flush)

    @staticmethod
    def _flush(values, count, first, flush):
        batch = list(values.read())
        values.clear()
        count.clear()
        first.clear()
        flush.clear()
        if batch:
            yield batch


class GroupForShards(beam.PTransform):
    """Embedded -> lists of Embedded, one list per shard.

    Streaming: keyed at random over as many keys as the rate needs, at most `keys`
    (`RateKeys`), then grouped per key (`_ShardBufferFn`): one shuffle, and the vectors
    in it are float32 bytes. Bounded: `BatchElements` within bundles, no shuffle.
    """

    def __init__(
        self, size: int, wait_secs: float, keys: int, streaming: bool, idle_secs: float = 0.0
    ):
        super().__init__()
        self._size, self._wait, self._keys, self._streaming = size, wait_secs, keys, streaming
        self._idle = idle_secs or wait_secs

    def expand(self, vectors):
        if not self._streaming:
            return vectors | "Batch" >> beam.BatchElements(
                min_batch_size=self._size, max_batch_size=self._size
            )
        return (
            vectors
            | "Key by shard"
            >> beam.Map(RateKeys(self._size, self._wait, self._keys)).with_output_types(
                tuple[int, Embedded]
            )
            | "Group" >> beam.ParDo(_ShardBufferFn(self._size, self._wait, self._idle))
        )


class _WriteShardFn(beam.DoFn):
    """Writes one shard per list of Embedded, then emits each one's row."""

    def __init__(self, root: str | None, with_embedding: bool = True):
        self._root, self._with_embedding = root, with_embedding

    def setup(self):
        self._gcs = clients.worker_storage_client() if is_gcs_uri(self._root) else None

    def process(self, batch) -> Iterable:
        batch = list(batch)
        if not batch:
            return
        uri = None
        if self._root:
            # One shard per model id: a group can span a change of weights.
            by_model: dict[str, list[Embedded]] = {}
            for e in batch:
                by_model.setdefault(e.model_id, []).append(e)
            for model_id, group in by_model.items():
                yield from self._write(group, model_id)
            return
        for e in batch:
            metrics.count("images_embedded")
            yield files.embedding_row(e.info, e.vector, e.model_id, uri)

    def _write(self, group: list[Embedded], model_id: str) -> Iterable:
        uri = shard_path(self._root, model_id, (e.info.ref.key for e in group))
        try:
            files.write_with_retries(
                uri, shard_bytes(np.stack([e.vector for e in group])), self._gcs
            )
        except Exception as e:  # noqa: BLE001 - after the retries: never fail the bundle
            error = rejected_from(e, failures.VECTOR_WRITE_ERROR)
            for item in group:
                metrics.dead_letter(error.reason)
                yield pvalue.TaggedOutput(
                    files.DEAD, DeadLetter("write", error.reason, str(error), ref=item.info.ref)
                )
            return
        metrics.count("vector_shards_written")
        if "://" not in uri:
            uri = os.path.abspath(uri)
        for index, item in enumerate(group):
            metrics.count("images_embedded")
            metrics.checkpoint("vector_written", item.info.ref)
            yield files.embedding_row(
                item.info, item.vector, item.model_id, uri, index, self._with_embedding
            )


class WriteShards(beam.PTransform):
    """Lists of Embedded -> one .npy shard each under `root`, and the rows that point
    into it (`vector_uri`, `vector_index`); failed writes -> dead letters."""

    def __init__(self, root: str | None, with_embedding: bool = True):
        super().__init__()
        self._fn = _WriteShardFn(root, with_embedding)

    def expand(self, batches):
        return batches | "Write shards" >> beam.ParDo(self._fn).with_outputs(
            files.DEAD, main="rows"
        )
