"""Makes the Google clients (Cloud Storage, BigQuery) of the job and the CLIs, pointed
at the real services or, with `--local_endpoints`, at the emulators.

One switch (`--local_endpoints`) reads the standard variables

  PUBSUB_EMULATOR_HOST=127.0.0.1:8085          (google-cloud-pubsub honours it)
  STORAGE_EMULATOR_HOST=http://127.0.0.1:4443  (google-cloud-storage, Beam's GcsIO)
  BIGQUERY_EMULATOR_HOST=http://127.0.0.1:9050 (google-cloud-bigquery)
  BIGQUERY_EMULATOR_GRPC_HOST=127.0.0.1:9060   (the Storage Write API, `write_client`)

and makes every Google client use anonymous credentials: Beam's credential lookup
would retry Google's default credentials before going anonymous, so it is
set here (through `streaming.support.library_patches`), once, in the process that
runs the pipeline (the DirectRunner runs it in-process). Production never calls this.
"""

from __future__ import annotations

import functools
import os

ENV_VARS = ("PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "BIGQUERY_EMULATOR_HOST")
_applied = False


def project_from_env(default: str = "test-project") -> str:
    return (
        os.environ.get("GOOGLE_CLOUD_PROJECT")
        or os.environ.get("EMU_PROJECT")
        or os.environ.get("PUBSUB_PROJECT_ID")
        or default
    )


def use_local_endpoints() -> dict[str, str | None]:
    """Configures this process for the emulators; returns the endpoints in use.

    Raises:
      ValueError: if none of the emulator variables is set.
    """
    global _applied
    endpoints = {k: os.environ.get(k) for k in ENV_VARS}
    if not any(endpoints.values()):
        raise ValueError(
            "--local_endpoints needs at least one of "
            + ", ".join(ENV_VARS)
            + " (see emulators/README.md; `. .emulators/env.sh` sets them)"
        )
    if _applied:
        return endpoints
    for var in ("NO_GCE_CHECK",):
        os.environ.setdefault(var, "true")
    for var in ("GCE_METADATA_HOST", "GCE_METADATA_IP", "GCE_METADATA_ROOT"):
        os.environ.setdefault(var, "127.0.0.1:1")

    from streaming.support import library_patches

    library_patches.use_anonymous_credentials(project_from_env())
    _applied = True
    return endpoints


def storage_client(local: bool, project: str | None = None):
    """A google-cloud-storage client (anonymous against the emulator)."""
    from google.cloud import storage

    if local:
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(
            project=project or project_from_env(), credentials=AnonymousCredentials()
        )
    return storage.Client(project=project)


def worker_bigquery_client(local: bool, project: str | None = None):
    """`bigquery_client`, one per process and endpoint for DoFns (see
    `worker_storage_client`)."""
    return _bigquery_client_for(local, project, os.environ.get("BIGQUERY_EMULATOR_HOST"))


@functools.cache
def _bigquery_client_for(local: bool, project: str | None, _endpoint: str | None):
    return bigquery_client(local, project)


def bigquery_client(local: bool, project: str | None = None):
    """A google-cloud-bigquery client (anonymous against the emulator)."""
    from google.cloud import bigquery

    if local:
        from google.auth.credentials import AnonymousCredentials

        return bigquery.Client(
            project=project or project_from_env(), credentials=AnonymousCredentials()
        )
    return bigquery.Client(project=project)


def write_client(local: bool):
    """A BigQuery Storage Write API client (gRPC), one per process and endpoint: the
    worker's default credentials, or with `local` an insecure channel to
    BIGQUERY_EMULATOR_GRPC_HOST and anonymous credentials."""
    return _write_client_for(local, os.environ.get("BIGQUERY_EMULATOR_GRPC_HOST"))


@functools.cache
def _write_client_for(local: bool, endpoint: str | None):
    from google.cloud import bigquery_storage_v1

    if not local:
        return bigquery_storage_v1.BigQueryWriteClient()
    if not endpoint:
        raise ValueError(
            "the Storage Write API against the emulator needs BIGQUERY_EMULATOR_GRPC_HOST "
            "(host:port of bqemulator's gRPC port; `. .emulators/env.sh` sets it)"
        )
    import grpc
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud.bigquery_storage_v1.services.big_query_write.transports import (
        BigQueryWriteGrpcTransport,
    )

    return bigquery_storage_v1.BigQueryWriteClient(
        transport=BigQueryWriteGrpcTransport(
            channel=grpc.insecure_channel(endpoint), credentials=AnonymousCredentials()
        ),
        client_options=ClientOptions(api_endpoint=endpoint),
    )


def worker_storage_client():
    """A google-cloud-storage client for DoFns that need more than FileSystems (an exact
    generation, a create-only precondition): the worker's default credentials on
    Dataflow; against the emulator (STORAGE_EMULATOR_HOST) the library goes anonymous by
    itself. Public API only (not the client inside Beam's GcsIO).

    One per process and endpoint, shared by its threads, as Beam's GcsIO shares its own:
    Beam's local runner sets DoFns up again for every bundle, and a client per bundle
    would pay its set-up and a new connection each time."""
    return _storage_client_for(os.environ.get("STORAGE_EMULATOR_HOST"))


@functools.cache
def _storage_client_for(_endpoint: str | None):
    from google.cloud import storage

    return storage.Client()
