"""The load stage: read an object's bytes (local path or the exact gs:// generation) and
decode them with `streaming.stages.preprocess` into the model's 224x224 RGB input; failures become
dead letters with a reason.

Reading and decoding run on a small thread pool, a window of images ahead of the
DoFn's outputs: Pillow and I/O release the GIL, so the next batch is decoded while
RunInference runs the forward pass of the current one. Metrics and outputs stay on the
DoFn's own thread, in input order.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import threading
from collections.abc import Iterable

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.io.filesystems import FileSystems

from streaming import failures, metrics
from streaming.config.flags import (
    DEFAULT_DECODE_THREADS,
    DEFAULT_DECODE_WINDOW,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
)
from streaming.records import (
    DeadLetter,
    ImageInfo,
    ImageRef,
    Rejected,
    Skipped,
    payload_fields,
    rejected_from,
)
from streaming.stages import filters
from streaming.stages.preprocess import (  # noqa: F401 - re-exported: the stage's pure core
    BACKGROUND,
    CENTER_CROP_FRACTION,
    INPUT_SIZE,
    DecodedImage,
    decode_image,
    resize,
    to_rgb,
)
from streaming.support import clients
from streaming.support.library_patches import object_resource
from streaming.support.ordered_pool import WorkAhead

DEAD = "dead_letters"
# What a NONE-payload ref learns from the object's metadata: the payload's fields but
# the identity, which stays the notification's.
METADATA_FIELDS = (
    "metageneration",
    "content_type",
    "size",
    "md5_hash",
    "crc32c",
    "time_created",
    "updated",
    "metadata",
)


class GcsReader:
    """Reads the exact object generation a notification names, through a
    google-cloud-storage client (default credentials; anonymous against
    STORAGE_EMULATOR_HOST), with bounded retries.

    Beam's FileSystems can only open the live generation; a notification is about one
    generation, so an object replaced before the job reads it is dead-lettered as
    `superseded` instead of embedding newer bytes under the old generation.
    """

    def __init__(self, attempts: int = 4, initial_delay: float = 0.5):
        from google.api_core import retry as api_retry

        self._client = clients.worker_storage_client()
        self._retry = api_retry.Retry(
            initial=initial_delay,
            maximum=8.0,
            multiplier=2.0,
            timeout=initial_delay * (2**attempts),
        )

    def metadata(self, ref: ImageRef) -> ImageRef:
        """Fills a NONE-payload ref from the object's metadata (one GET).

        Raises:
          Rejected: `object_gone` or `superseded` if the generation no longer exists,
            `permission_denied` (401/403), else `read_error` once retries are spent.
        """
        try:
            blob = self._client.bucket(ref.bucket).get_blob(
                ref.name, generation=ref.generation or None, retry=self._retry
            )
        except Exception as e:  # noqa: BLE001 - retries exhausted or not retryable
            raise rejected_from(e, failures.READ_ERROR) from None
        if blob is None:
            raise self._gone(ref)
        fields = payload_fields(object_resource(blob))
        return dataclasses.replace(ref, **{k: fields.get(k) for k in METADATA_FIELDS})

    def read(self, ref: ImageRef, max_bytes: int) -> bytes:
        from google.api_core import exceptions as gexc

        blob = self._client.bucket(ref.bucket).blob(ref.name, generation=ref.generation or None)
        try:
            data = blob.download_as_bytes(start=0, end=max_bytes, retry=self._retry, checksum=None)
        except gexc.NotFound:
            raise self._gone(ref) from None
        except gexc.RequestRangeNotSatisfiable:
            return b""  # a zero-byte object has no byte 0
        except Exception as e:  # noqa: BLE001 - retries exhausted or not retryable
            raise rejected_from(e, failures.READ_ERROR) from None
        check_size(len(data), max_bytes)
        return data

    def _gone(self, ref: ImageRef) -> Rejected:
        try:
            live = self._client.bucket(ref.bucket).get_blob(ref.name, retry=self._retry)
        except Exception as e:  # noqa: BLE001 - cannot tell gone from superseded
            return rejected_from(e, failures.READ_ERROR)
        if live is not None and live.generation and live.generation > ref.generation:
            return Rejected(
                failures.SUPERSEDED,
                f"generation {ref.generation} was replaced by {live.generation} before it was read",
            )
        return Rejected(
            failures.OBJECT_GONE, f"gs://{ref.bucket}/{ref.name}#{ref.generation} no longer exists"
        )


def check_size(size: int | None, max_bytes: int) -> None:
    """Rejects an object over --max_bytes, by the size its notification or metadata
    declares (before reading) or by what a read of at most `max_bytes + 1` returned.

    Raises:
      Rejected: `too_large`.
    """
    if size is not None and size > max_bytes:
        raise Rejected(
            failures.TOO_LARGE,
            f"object is larger than the {max_bytes}-byte limit (at least {size} bytes)",
        )


def read_bytes(uri: str, max_bytes: int) -> bytes:
    """Reads at most `max_bytes` from a local path or gs:// URI through FileSystems.

    Raises:
      Rejected: `object_gone` if it does not exist, `too_large` above the limit,
        `permission_denied` if it may not be read, `read_error` for other failures.
    """
    try:
        with FileSystems.open(uri, compression_type="uncompressed") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError as e:
        raise Rejected(failures.OBJECT_GONE, str(e)) from None
    except Exception as e:  # noqa: BLE001 - classified here into a reason
        if _is_not_found(e):
            raise Rejected(failures.OBJECT_GONE, f"{type(e).__name__}: {e}") from None
        raise rejected_from(e, failures.READ_ERROR) from None
    check_size(len(data), max_bytes)
    return data


def _is_not_found(e: BaseException) -> bool:
    text = f"{type(e).__name__} {e}"
    return "NotFound" in text or "404" in text or "No such file" in text


def load_image(ref: ImageRef, read, policy: str, max_pixels: int, max_bytes: int):
    """Reads and decodes one object: (ref, stage, DecodedImage or None, Rejected or None).

    `read(ref)` returns (ref, bytes); it may refresh the ref (NONE-format metadata) and
    raise `Skipped` for an object that turns out not to be an image. Every error
    comes back as a `Rejected` (see `records.rejected_from`): one unreadable object
    must become a dead letter, not a failed bundle that the runner retries forever."""
    stage = "load"
    try:
        check_size(ref.size, max_bytes)
        ref, data = read(ref)
        stage = "decode"
        return ref, stage, decode_image(data, policy=policy, max_pixels=max_pixels), None
    except Exception as e:  # noqa: BLE001 - see the docstring
        return (
            ref,
            stage,
            None,
            rejected_from(e, failures.READ_ERROR if stage == "load" else failures.DECODE_ERROR),
        )


class _LoadFn(WorkAhead):
    def __init__(
        self,
        policy: str,
        max_pixels: int,
        max_bytes: int,
        threads: int,
        window: int,
        accept: filters.FilterConfig = filters.FilterConfig(),
    ):
        # At most `threads` raw objects are in memory at once; the window holds only
        # decoded 224x224 arrays (150 KB each).
        super().__init__(threads, window, "decode")
        self._policy, self._max_pixels, self._max_bytes = policy, max_pixels, max_bytes
        self._accept = accept
        self._gcs: GcsReader | None = None

    def setup(self):
        super().setup()
        self._gcs = None  # created on the first gs:// object: local runs need no client
        self._gcs_lock = threading.Lock()

    def _read(self, ref: ImageRef) -> tuple[ImageRef, bytes]:
        if ref.is_local:
            data = read_bytes(ref.uri, self._max_bytes)
            try:
                mtime = os.stat(ref.uri).st_mtime_ns
            except FileNotFoundError:
                raise Rejected(
                    failures.OBJECT_GONE, f"{ref.uri} was deleted while being read"
                ) from None
            if mtime != ref.generation:  # rewritten since listed: --watch sees the new one
                raise Rejected(
                    failures.SUPERSEDED,
                    f"{ref.uri} changed (mtime {mtime} != generation {ref.generation})",
                )
            return ref, data
        if self._gcs is None:
            with self._gcs_lock:  # one client per DoFn, shared by the pool's threads
                if self._gcs is None:
                    self._gcs = GcsReader()
        if ref.payload_format == "NONE":
            ref = self._gcs.metadata(ref)
            skipped = filters.type_skip_reason(ref, self._accept)
            if skipped:
                raise Skipped(skipped, f"content type {ref.content_type!r}")
            check_size(ref.size, self._max_bytes)
        return ref, self._gcs.read(ref, self._max_bytes)

    def work(self, ref: ImageRef):
        """load_image, and when the read and the decode ended (recorded in `emit`, on
        the DoFn's thread, where Beam's metrics are)."""
        read_at = []

        def read(r: ImageRef) -> tuple[ImageRef, bytes]:
            out = self._read(r)
            read_at.append(datetime.datetime.now(datetime.UTC))
            return out

        result = load_image(ref, read, self._policy, self._max_pixels, self._max_bytes)
        return result, read_at[:1] + [datetime.datetime.now(datetime.UTC)]

    def emit(self, result) -> Iterable:
        (ref, stage, decoded, error), ended = result
        if isinstance(error, Skipped):
            metrics.count(error.reason)
            return
        if error is not None:
            metrics.dead_letter(error.reason)
            yield pvalue.TaggedOutput(DEAD, DeadLetter(stage, error.reason, str(error), ref=ref))
            return
        metrics.count("images_decoded")
        for name, at in zip(("read", "decoded"), ended):
            metrics.checkpoint(name, ref, at)
        yield ImageInfo(ref, decoded.width, decoded.height, decoded.format), decoded.pixels


class LoadImages(beam.PTransform):
    """ImageRef -> (ImageInfo, uint8 224x224x3 pixels); failures -> dead letters.

    `accept` is the job's filter: objects whose type the filter could not know (NONE
    notifications) are checked against it once their metadata is read, and skipped
    (counted, no dead letter) if they are not images."""

    def __init__(
        self,
        policy: str = "center_crop",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        threads: int = DEFAULT_DECODE_THREADS,
        window: int = DEFAULT_DECODE_WINDOW,
        accept: filters.FilterConfig = filters.FilterConfig(),
    ):
        super().__init__()
        self._fn = _LoadFn(policy, max_pixels, max_bytes, threads, window, accept)

    def expand(self, refs):
        return refs | "Read and decode" >> beam.ParDo(self._fn).with_outputs(DEAD, main="images")
