"""Checks that run before the model loads: paths, weights, credentials, and (when the
services are reachable) that the subscription, topic, datasets and buckets exist.

A wrong name costs a second and one line naming it, instead of a model load and
then retries of tracebacks at the first image. Nothing is contacted for a Dataflow
dry run (`--dry_run True`), which builds the job offline.
"""
from __future__ import annotations

import os
import tempfile
from typing import Callable, Optional

from streaming import cli, names

_TIMEOUT = 30.0


def weights_problem(spec: str, exists: Callable[[str], bool]) -> Optional[str]:
    """Why `--weights spec` cannot be used, or None. `exists` tells whether a path or
    URI exists (only called for files)."""
    if spec == "imagenet":
        return None
    if spec.startswith("random:"):
        try:
            int(spec.split(":", 1)[1])
        except ValueError:
            return f"--weights {spec!r}: expected random:<integer seed> (random:SEED)"
        return None
    if not spec.endswith((".weights.h5", ".keras", ".h5")):
        return (f"--weights {spec!r}: expected imagenet, random:SEED, or a .weights.h5 / "
                ".keras file (local or gs://)")
    if not exists(spec):
        return (f"--weights {spec!r}: weights file does not exist; pass --weights imagenet, "
                "random:SEED, or an existing .weights.h5 path / gs:// URI")
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


def check_paths(opts) -> None:
    """Local paths: the input folder, the output folder, a local weights file."""
    if opts.input_dir:
        check_local_dir("--input_dir", opts.input_dir)
    if opts.output_dir and "://" not in opts.output_dir:
        check_writable_dir("--output_dir", opts.output_dir)
    if "://" not in opts.weights:
        problem = weights_problem(opts.weights, os.path.exists)
        if problem:
            raise cli.UsageError(problem)


def cloud_names(opts) -> bool:
    """Whether the options name any cloud resource (Pub/Sub, BigQuery, gs://)."""
    return any([opts.input_subscription, opts.input_topic, opts.output_table,
                opts.dead_letter_table, opts.output_gcs,
                (opts.output_dir or "").startswith("gs://"), opts.weights.startswith("gs://")])


def check_services(opts, local: bool) -> None:
    """That every named subscription, topic, dataset, bucket and gs:// weights file
    exists. Raises UsageError for a missing one; other errors (permission denied, an
    unreachable service) propagate for `cli.describe`."""
    from google.api_core import exceptions as gexc

    from streaming import endpoints

    def missing(option: str, value: str, what: str) -> cli.UsageError:
        return cli.UsageError(f"{option} {value}: {what} does not exist")

    if opts.input_subscription or opts.input_topic:
        from google.cloud import pubsub_v1
        try:
            if opts.input_subscription:
                with pubsub_v1.SubscriberClient() as sub:
                    sub.get_subscription(subscription=opts.input_subscription,
                                         timeout=_TIMEOUT)
            else:
                pubsub_v1.PublisherClient().get_topic(topic=opts.input_topic,
                                                      timeout=_TIMEOUT)
        except gexc.NotFound:
            option = "--input_subscription" if opts.input_subscription else "--input_topic"
            raise missing(option, opts.input_subscription or opts.input_topic,
                          option[8:]) from None
    tables = [("--output_table", opts.output_table),
              ("--dead_letter_table", opts.dead_letter_table)]
    if any(t for _, t in tables):
        bq = endpoints.bigquery_client(local)
        for option, table in tables:
            if table:
                project, dataset, _ = names.parse_table_id(table)
                try:
                    bq.get_dataset(f"{project}.{dataset}", timeout=_TIMEOUT)
                except gexc.NotFound:
                    raise missing(option, table, f"dataset {project}:{dataset}") from None
    uris = [("--output_gcs", opts.output_gcs), ("--output_dir", opts.output_dir),
            ("--weights", opts.weights)]
    uris = [(o, u) for o, u in uris if u and u.startswith("gs://")]
    if uris:
        storage = endpoints.storage_client(local)
        for option, uri in uris:
            bucket, name = names.split_gcs_uri(uri)
            if not storage.bucket(bucket).exists(timeout=_TIMEOUT):
                raise missing(option, uri, f"bucket {bucket}")
            if option == "--weights":
                problem = weights_problem(
                    uri, lambda _: storage.bucket(bucket).blob(name).exists(timeout=_TIMEOUT))
                if problem:
                    raise cli.UsageError(problem)


def check(opts, *, local: bool, dry_run: bool) -> None:
    """Every check that can run before the model loads (see the module docstring).

    Args:
      opts: the job's EmbedOptions, after `options.validate`.
      local: --local_endpoints (the emulators; anonymous credentials).
      dry_run: a Dataflow dry run: contact nothing.

    Raises:
      cli.UsageError: a wrong value, named in the message.
    """
    check_paths(opts)
    if dry_run or not cloud_names(opts):
        if opts.weights.startswith("gs://"):
            problem = weights_problem(opts.weights, lambda _: True)
            if problem:
                raise cli.UsageError(problem)
        return
    if not local:
        cli.check_credentials()
    check_services(opts, local)
