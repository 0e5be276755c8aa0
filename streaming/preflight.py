"""Checks that run before the model loads: paths, weights, credentials, and (when the
services are reachable) that the subscription, topic, datasets and buckets exist.

A wrong name costs a second and one line naming it, instead of a model load and
then retries of tracebacks at the first image. Nothing is contacted for a Dataflow
dry run (`--dry_run True`), which builds the job offline.

The launcher runs with the least privilege infra/ grants, and some checks need more
than that (a bucket's metadata under `roles/storage.objectCreator`, a subscription
for a deployer without Pub/Sub roles): a check the caller may not make (a 403) is
skipped and named, so the launch goes on with one warning line instead of failing.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

from streaming.config import cli, names
from streaming.model import spec as model_spec

_TIMEOUT = 30.0


def weights_problem(spec: str, exists: Callable[[str], bool]) -> str | None:
    """Why `--weights spec` cannot be used, or None. `exists` tells whether a path or
    URI exists (only called for files)."""
    problem = model_spec.weights_syntax_problem(spec)
    if problem or model_spec.is_fixed(spec):
        return problem
    if not exists(spec):
        return (
            f"--weights {spec!r}: weights file does not exist; pass --weights imagenet, "
            "random:SEED, or an existing .weights.h5 path / gs:// URI"
        )
    return None


def check_local_dir(option: str, path: str) -> None:
    """`--input_dir`: an existing folder."""
    if not os.path.isdir(path):
        what = "is not a folder" if os.path.exists(path) else "does not exist"
        raise cli.UsageError(f"{option} {path} {what}")


def check_writable_dir(option: str, path: str) -> None:
    """A local output folder can be created and written; leaves nothing behind."""
    created = []
    target = os.path.abspath(path)
    try:
        missing = []
        probe = target
        while not os.path.exists(probe):
            missing.append(probe)
            probe = os.path.dirname(probe)
        for d in reversed(missing):
            os.mkdir(d)
            created.append(d)
        with tempfile.TemporaryFile(dir=target):
            pass
    except OSError as e:
        raise cli.UsageError(f"{option} {path} is not writable ({e.strerror or e})") from None
    finally:
        for d in reversed(created):
            try:
                os.rmdir(d)
            except OSError:
                pass


def check_paths(opts, remote: bool = False) -> list[str]:
    """Local paths: the input folder, the output folder, a local weights file. With a
    remote runner a local weights path names a file in the worker image: checked only
    where it exists here (the Flex Template launcher runs in that image); returns it
    as not checked otherwise."""
    if opts.input_dir:
        check_local_dir("--input_dir", opts.input_dir)
    if opts.output_dir and "://" not in opts.output_dir:
        check_writable_dir("--output_dir", opts.output_dir)
    if "://" not in opts.weights:
        in_image = remote and opts.weights.startswith("/") and not os.path.exists(opts.weights)
        problem = weights_problem(opts.weights, lambda _: True if in_image else os.path.exists(_))
        if problem:
            raise cli.UsageError(problem)
        if in_image:
            return [f"--weights {opts.weights} (a file of the worker image, not on this machine)"]
    return []


def cloud_names(opts) -> bool:
    """Whether the options name any cloud resource (Pub/Sub, BigQuery, gs://)."""
    return any(
        [
            opts.input_subscription,
            opts.input_topic,
            opts.output_table,
            opts.dead_letter_table,
            opts.output_gcs,
            names.is_gcs_uri(opts.output_dir),
            names.is_gcs_uri(opts.weights),
            names.is_gcs_uri(opts.model_cache_dir),
        ]
    )


def _denied(error: BaseException) -> bool:
    from google.api_core import exceptions as gexc

    return isinstance(error, (gexc.Forbidden, gexc.PermissionDenied))


def bucket_exists(storage, bucket: str) -> bool | None:
    """Whether `bucket` exists, or None when the caller may not tell: its metadata
    (`storage.buckets.get`) is tried first, then a listing (`storage.objects.list`).
    A missing bucket answers 404 to both whatever the caller's roles."""
    from google.api_core import exceptions as gexc

    try:
        return storage.bucket(bucket).exists(timeout=_TIMEOUT)
    except gexc.Forbidden:
        pass
    try:
        next(iter(storage.list_blobs(bucket, max_results=1, timeout=_TIMEOUT)), None)
        return True
    except gexc.NotFound:
        return False
    except gexc.Forbidden:
        return None


def check_services(opts, local: bool) -> list[str]:
    """That every named subscription, topic, dataset, bucket and gs:// weights file
    exists. Raises UsageError for a missing one; returns the checks the caller may not
    make (permission denied), named; other errors (an unreachable service) propagate
    for `cli.describe`."""
    from google.api_core import exceptions as gexc

    from streaming.support import clients

    skipped: list[str] = []

    def missing(option: str, value: str, what: str) -> cli.UsageError:
        return cli.UsageError(f"{option} {value}: {what} does not exist")

    if opts.input_subscription or opts.input_topic:
        from google.cloud import pubsub_v1

        option = "--input_subscription" if opts.input_subscription else "--input_topic"
        name = opts.input_subscription or opts.input_topic
        try:
            if opts.input_subscription:
                with pubsub_v1.SubscriberClient() as sub:
                    sub.get_subscription(subscription=opts.input_subscription, timeout=_TIMEOUT)
            else:
                pubsub_v1.PublisherClient().get_topic(topic=opts.input_topic, timeout=_TIMEOUT)
        except gexc.NotFound:
            raise missing(option, name, option[8:]) from None
        except gexc.GoogleAPICallError as e:
            if not _denied(e):
                raise
            skipped.append(f"{option} {name} (permission denied)")
    tables = [
        ("--output_table", opts.output_table),
        ("--dead_letter_table", opts.dead_letter_table),
    ]
    if any(t for _, t in tables):
        bq = clients.bigquery_client(local)
        for option, table in tables:
            if table:
                project, dataset, _ = names.parse_table_id(table)
                try:
                    bq.get_dataset(f"{project}.{dataset}", timeout=_TIMEOUT)
                except gexc.NotFound:
                    raise missing(option, table, f"dataset {project}:{dataset}") from None
                except gexc.Forbidden:
                    skipped.append(
                        f"{option} {table} (permission denied on dataset {project}:{dataset})"
                    )
    uris = [
        ("--output_gcs", opts.output_gcs),
        ("--output_dir", opts.output_dir),
        ("--model_cache_dir", opts.model_cache_dir),
        ("--weights", opts.weights),
    ]
    uris = [(o, u) for o, u in uris if names.is_gcs_uri(u)]
    if uris:
        storage = clients.storage_client(local)
        for option, uri in uris:
            bucket, name = names.split_gcs_uri(uri)
            if option == "--weights":
                # The object itself (storage.objects.get): a missing bucket or object
                # answers 404 either way.
                try:
                    blob = storage.bucket(bucket).blob(name)
                    problem = weights_problem(
                        uri, lambda _, blob=blob: blob.exists(timeout=_TIMEOUT)
                    )
                except gexc.Forbidden:
                    skipped.append(f"{option} {uri} (permission denied)")
                    continue
                if problem:
                    raise cli.UsageError(problem)
                continue
            exists = bucket_exists(storage, bucket)
            if exists is False:
                raise missing(option, uri, f"bucket {bucket}")
            if exists is None:
                skipped.append(f"{option} {uri} (permission denied on bucket {bucket})")
    return skipped


def check(opts, *, local: bool, dry_run: bool, remote: bool = False) -> list[str]:
    """Every check that can run before the model loads (see the module docstring).

    Args:
      opts: the job's EmbedOptions, after `options.validate`.
      local: --local_endpoints (the emulators; anonymous credentials).
      dry_run: a Dataflow dry run: contact nothing.
      remote: a remote runner: local weights paths name files of the worker image.

    Returns:
      The checks skipped because the caller may not make them, each named.

    Raises:
      cli.UsageError: a wrong value, named in the message.
    """
    skipped = check_paths(opts, remote)
    if dry_run or not cloud_names(opts):
        if names.is_gcs_uri(opts.weights):
            problem = weights_problem(opts.weights, lambda _: True)
            if problem:
                raise cli.UsageError(problem)
        return skipped
    if not local:
        cli.check_credentials()
    return skipped + check_services(opts, local)
