"""Streaming batches are formed from object references, never from pixels.

Beam's stateful `BatchElements` (what `max_batch_duration_secs` selects) keys its
input, shuffles it and holds it in state until the batch flushes. Batching the
`ImageRef`s (a few hundred bytes each) instead of decoded images (150 KB each) keeps
the shuffle and the state small. The far side (read, decode, embed) runs fused after
the batching step and batches within bundles (see `pipeline.model_handler`): a ref
batch becomes one forward pass without waiting again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar

import apache_beam as beam

T = TypeVar("T")


def unbatch(batch: Sequence[T]) -> Iterable[T]:
    """A batch back into its elements, in order."""
    yield from batch


class BatchRefs(beam.PTransform):
    """ImageRef -> ImageRef, regrouped so that a worker loads and embeds them together.

    A lone ref waits at most `max_batch_duration_secs` for company.
    """

    def __init__(self, min_batch_size: int, max_batch_size: int, max_batch_duration_secs: int):
        super().__init__()
        self._kwargs = dict(
            min_batch_size=min_batch_size,
            max_batch_size=max_batch_size,
            max_batch_duration_secs=max_batch_duration_secs,
        )

    def expand(self, refs):
        return (
            refs
            | "Batch" >> beam.BatchElements(**self._kwargs)
            | "Unbatch" >> beam.FlatMap(unbatch)
        )
