"""The project's only uses of other libraries' private APIs, one small function each.

Each exists because no public API does the job (its docstring says why), and each has a
test in tests/unit/test_adapters.py that fails loudly when an upgrade removes or changes
what it relies on, instead of the pipeline failing quietly at run time.
"""
from __future__ import annotations

from typing import Any

def object_resource(blob) -> dict[str, Any]:
    """The JSON API resource of a listed or fetched `google.cloud.storage.Blob`.

    A storage notification carries exactly this resource (string-valued sizes and
    generations, RFC 3339 times); the Blob's public attributes convert those values and
    there is no public `to_api_repr`, so this copies the dict they read from.
    """
    return dict(blob._properties)


def use_anonymous_credentials(project: str) -> None:
    """Makes every Google client of this process, Beam's included, anonymous.

    Beam's own Cloud Storage and Pub/Sub clients (`FileSystems` on gs://, the local
    runner's Pub/Sub read) are built with Google's default credentials and take no
    credentials argument; against the emulators there are none, and the lookup retries
    before giving up. Replacing `google.auth.default` is the one place every such client asks.
    """
    import google.auth
    from google.auth.credentials import AnonymousCredentials

    def anonymous_default(*_args, **_kwargs):
        return AnonymousCredentials(), project
    google.auth.default = anonymous_default
