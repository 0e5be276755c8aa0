"""The project's only uses of other libraries' private APIs, one small function each.

Each exists because no public API does the job (its docstring says why), and each has a
test in tests/unit/test_adapters.py that fails loudly when an upgrade removes or changes
what it relies on, instead of the pipeline failing quietly at run time.
"""

from __future__ import annotations

import time
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


def pull_more_locally(max_messages: int, wait_secs: float, idle_secs: float = 0.0) -> None:
    """Makes Beam's local runner pull up to `max_messages` per Pub/Sub read, not 10.

    The local runner's Pub/Sub read (`_PubSubReadEvaluator`) pulls a fixed 10 messages
    per bundle, which caps a local job at a few dozen messages a second whatever they
    hold, and waits up to 30 s for a message when there is none, holding back the
    runner's timers (a partial batch's flush) meanwhile. No option changes either. The
    subscriber client it pulls with is wrapped so that each pull asks for more and
    answers "nothing" after `wait_secs`; the rest of the read, acknowledging included,
    is Beam's. A pull that finds nothing may also answer at once (the emulator always
    does), and the runner pulls again at once: an idle job would spin a core. An empty
    pull therefore takes at least `idle_secs`, the most a message waits to be pulled.
    """
    from apache_beam.runners.direct.transform_evaluator import _PubSubReadEvaluator as reader

    original = getattr(reader, "_unwrapped_subscriber_client", None)
    if original is None:
        original = reader._unwrapped_subscriber_client = reader._get_subscriber_client

    class Client:
        def __init__(self, client):
            self._client = client

        def pull(self, **kwargs):
            from google.api_core.exceptions import DeadlineExceeded
            from google.pubsub_v1 import PullResponse

            started = time.monotonic()
            try:
                response = self._client.pull(
                    **{**kwargs, "max_messages": max_messages, "timeout": wait_secs}
                )
            except DeadlineExceeded:
                response = PullResponse()
            if not response.received_messages:
                time.sleep(max(0.0, idle_secs - (time.monotonic() - started)))
            return response

        def __getattr__(self, name):
            return getattr(self._client, name)

    reader._get_subscriber_client = classmethod(lambda _cls, transform: Client(original(transform)))
