"""The embedded default's source: files under a local folder become `ImageRef`s.

The folder is the bucket, the path relative to it (with / separators) the name, and
the file's mtime in nanoseconds the generation: touching a file makes a new generation,
rewriting the same bytes with the same mtime does not.
"""

from __future__ import annotations

import datetime as dt
import mimetypes
import os

import apache_beam as beam
from apache_beam.io import fileio

from streaming.records import ImageRef


def local_ref(root: str, path: str) -> ImageRef | None:
    """ImageRef of one local file, or None if it vanished or is not a regular file."""
    root = os.path.abspath(root)
    path = os.path.abspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    if not os.path.isfile(path):
        return None
    name = os.path.relpath(path, root).replace(os.sep, "/")
    mtime = dt.datetime.fromtimestamp(st.st_mtime_ns / 1e9, dt.UTC).isoformat()
    return ImageRef(
        bucket=root,
        name=name,
        generation=st.st_mtime_ns,
        source="local",
        content_type=mimetypes.guess_type(path)[0],
        size=st.st_size,
        updated=mtime,
        event_time=mtime,
    )


class ReadLocalFolder(beam.PTransform):
    """All files under `root` (recursively); with `watch`, also those that appear later."""

    def __init__(self, root: str, watch: bool = False, interval: float = 2.0):
        super().__init__()
        self._root = os.path.abspath(root)
        self._watch, self._interval = watch, interval

    def expand(self, pbegin):
        pattern = os.path.join(self._root, "**")
        if self._watch:
            # match_updated_files: a rewritten file has a new mtime, i.e. a new
            # generation, and a file caught half-copied is embedded again once complete.
            matches = pbegin | "Watch folder" >> fileio.MatchContinuously(
                pattern, interval=self._interval, match_updated_files=True
            )
        else:
            matches = pbegin | "Match files" >> fileio.MatchFiles(pattern)
        root = self._root
        return (
            matches
            | "To ImageRef" >> beam.Map(lambda m: local_ref(root, m.path))
            | "Drop vanished" >> beam.Filter(lambda r: r is not None)
        )
