"""Beam metrics of the pipeline: one namespace, one counter per outcome and reason."""
from __future__ import annotations

from apache_beam.metrics import Metrics

NAMESPACE = "embeddings"
DEAD_PREFIX = "dead_letter."


def count(name: str, n: int = 1) -> None:
    Metrics.counter(NAMESPACE, name).inc(n)


def dead_letter(reason: str) -> None:
    """Counts a dead letter under its reason (the stage is in the row)."""
    count(DEAD_PREFIX + reason)
