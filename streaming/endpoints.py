"""Local endpoints: point every client of the job and the CLIs at the emulators.

One switch (`--local_endpoints`) reads the standard variables

  PUBSUB_EMULATOR_HOST=127.0.0.1:8085          (google-cloud-pubsub honours it)
  STORAGE_EMULATOR_HOST=http://127.0.0.1:4443  (google-cloud-storage, Beam's GcsIO)
  BIGQUERY_EMULATOR_HOST=http://127.0.0.1:9050 (google-cloud-bigquery; Beam's apitools
                                                client gets it here)

and makes every Google client use anonymous credentials. Beam's own BigQuery client
(apitools) has a hard-coded endpoint and Beam's credential lookup would retry Google's
default credentials for ~30 s before going anonymous, so both are set here, once, in
the process that runs the pipeline (the DirectRunner runs it in-process). Production
never calls this.
"""
from __future__ import annotations

import os
from typing import Optional

ENV_VARS = ("PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "BIGQUERY_EMULATOR_HOST")
_applied = False


def project_from_env(default: str = "test-project") -> str:
    return (os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("EMU_PROJECT")
            or os.environ.get("PUBSUB_PROJECT_ID") or default)


def use_local_endpoints() -> dict[str, Optional[str]]:
    """Configures this process for the emulators; returns the endpoints in use.

    Raises:
      ValueError: if none of the emulator variables is set.
    """
    global _applied
    endpoints = {k: os.environ.get(k) for k in ENV_VARS}
    if not any(endpoints.values()):
        raise ValueError("--local_endpoints needs at least one of " + ", ".join(ENV_VARS)
                         + " (see emulators/README.md; `. .emulators/env.sh` sets them)")
    if _applied:
        return endpoints
    for var in ("NO_GCE_CHECK",):
        os.environ.setdefault(var, "true")
    for var in ("GCE_METADATA_HOST", "GCE_METADATA_IP", "GCE_METADATA_ROOT"):
        os.environ.setdefault(var, "127.0.0.1:1")

    import google.auth
    from google.auth.credentials import AnonymousCredentials
    project = project_from_env()

    def anonymous_default(*_args, **_kwargs):
        return AnonymousCredentials(), project
    google.auth.default = anonymous_default

    from apache_beam.internal.gcp import auth
    auth._Credentials._credentials = auth._ApitoolsCredentialsAdapter(AnonymousCredentials())
    auth._Credentials._credentials_init = True
    if endpoints["BIGQUERY_EMULATOR_HOST"]:
        from apache_beam.io.gcp.internal.clients.bigquery import bigquery_v2_client
        bigquery_v2_client.BigqueryV2.BASE_URL = (
            endpoints["BIGQUERY_EMULATOR_HOST"].rstrip("/") + "/bigquery/v2/")
    _applied = True
    return endpoints


def storage_client(local: bool, project: Optional[str] = None):
    """A google-cloud-storage client (anonymous against the emulator)."""
    from google.cloud import storage
    if local:
        from google.auth.credentials import AnonymousCredentials
        return storage.Client(project=project or project_from_env(),
                              credentials=AnonymousCredentials())
    return storage.Client(project=project)


def bigquery_client(local: bool, project: Optional[str] = None):
    """A google-cloud-bigquery client (anonymous against the emulator)."""
    from google.cloud import bigquery
    if local:
        from google.auth.credentials import AnonymousCredentials
        return bigquery.Client(project=project or project_from_env(),
                               credentials=AnonymousCredentials())
    return bigquery.Client(project=project)


def beam_storage_client():
    """The google-cloud-storage client inside Beam's GcsIO, for DoFns that need more
    than FileSystems (an exact generation, a create-only precondition): the worker's
    credentials on Dataflow; the emulator (STORAGE_EMULATOR_HOST) and anonymous
    credentials after `use_local_endpoints`."""
    from apache_beam.io.gcp.gcsio import GcsIO
    return GcsIO().client
