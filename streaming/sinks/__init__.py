"""Where the job writes: every output the options ask for is a `Sink`, and the pipeline
hands each of them the same PCollections (`streaming.pipeline.embed_refs`). A new output
is a new `Sink` here or beside its peers, its option, and one line in
`streaming.pipeline.sinks_for`.

The .npy vectors are not a sink: they are written first (`vectors`, `files.WriteVectors`)
because each row says where its vector is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class Sink:
    """One output of the job. Rows are written first: a sink may answer with dead
    letters of its own (rows a service refused), which join every other dead letter
    before `write_dead_letters` is called on every sink."""

    def write_rows(self, rows: Mapping[str, Any]) -> dict[str, Any]:
        """Writes the row PCollections (`rows`, `tombstones`, by label).

        Returns:
          Dead-letter PCollections of this sink, by stage name ({} when none).
        """
        return {}

    def write_dead_letters(self, by_stage: Mapping[str, Any], gathered: Any) -> None:
        """Writes the dead letters: by stage, and all of them in one PCollection."""
