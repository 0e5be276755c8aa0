"""Writing a file whole, or not at all, wherever it goes: a local path, a Beam
filesystem URI, or a create-only Cloud Storage object.

The sinks and the model cache both write files that readers must never see half
written (a row file, a .npy, a converted model): one rule for it, here.
"""

from __future__ import annotations

import os
import tempfile

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from streaming.config.names import gcs_parts


def write_atomically(path: str, data: bytes) -> None:
    """Writes `data` to a local path or a Beam filesystem URI, all or nothing."""
    if "://" in path:
        # The object appears only when the upload completes.
        with FileSystems.create(
            path,
            mime_type="application/octet-stream",
            compression_type=CompressionTypes.UNCOMPRESSED,
        ) as f:
            f.write(data)
        return
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def create_object(client, uri: str, data: bytes) -> bool:
    """Creates the gs:// object `uri` unless it exists (`if_generation_match=0`).

    Returns True if this call created it, False if it was already there: a work item
    re-run after a failed bundle or a restarted worker, a redelivery or a re-embed
    writes the same path (it derives from the image's generation). A create-only
    write needs no more than `roles/storage.objectCreator`, which cannot overwrite;
    the row carries its own embedding, so an existing .npy never costs the row.

    Raises:
      google.api_core.exceptions.GoogleAPICallError: any other refusal or failure.
    """
    from google.api_core import exceptions as gexc

    bucket, name = gcs_parts(uri)
    try:
        # No retry inside: write_with_retries bounds the attempts, and an attempt whose
        # answer was lost after the object was created sees 412 on the next one.
        client.bucket(bucket).blob(name).upload_from_string(
            data, content_type="application/octet-stream", if_generation_match=0, retry=None
        )
    except gexc.PreconditionFailed:
        return False
    return True
