"""`embed-backfill`: publish storage notifications for objects already in a bucket.

  embed-backfill gs://BUCKET[/prefix] --topic projects/P/topics/T [--dry-run]
      [--rate N] [--content-type image/] [--updated-since T] [--updated-until T]
      [--skip-existing --table P:D.T [--dead-letter-table P:D.T] [--fingerprint FP]]
      [--resume FILE]

Lists the bucket page by page (lexicographic order), publishes one notification per
object in exactly the format the bucket sends (plus `backfill=true`), batched and under
the Pub/Sub client's flow control. Progress is checkpointed to `--resume FILE`: the
name up to which every object has been published (or recorded as failed), so an
interrupted run resumes after it and re-publishes at most what was in flight.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime as dt
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from streaming.config import cli
from streaming.sources.contract import notification_for
from streaming.stages.filters import DEFAULT_EXTENSIONS, split_list, type_accepted
from streaming.support.library_patches import object_resource

if TYPE_CHECKING:  # the catch-up's module loads Beam: only when a run needs it
    from streaming.sources import catch_up


@dataclasses.dataclass
class Filters:
    prefix: str = ""
    content_types: tuple[str, ...] = ()
    extensions: tuple[str, ...] = ()
    updated_since: dt.datetime | None = None
    updated_until: dt.datetime | None = None

    def accepts(self, resource: Mapping[str, Any]) -> bool:
        """Same rule as the job: an accepted extension OR content type, then dates."""
        name = resource.get("name", "")
        if not name.startswith(self.prefix) or name.endswith("/"):
            return False
        if not type_accepted(
            name, resource.get("contentType"), self.extensions, self.content_types
        ):
            return False
        if self.updated_since or self.updated_until:
            updated = parse_time(resource.get("updated") or resource.get("timeCreated"))
            if updated is None:
                return False
            if self.updated_since and updated < self.updated_since:
                return False
            if self.updated_until and updated >= self.updated_until:
                return False
        return True


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


class Checkpoint:
    """The resume state: every name <= `after` is done; `failed` lists names whose
    publish failed (retried first on resume). Saved atomically."""

    def __init__(self, path: str | None, source: str, topic: str, read_only: bool = False):
        self.path, self.source, self.topic = path, source, topic
        self.read_only = read_only  # a dry run reads the checkpoint and never moves it
        self.after: str | None = None
        self.failed: list[str] = []
        self._saved_at = 0.0
        if path and os.path.exists(path):
            with open(path) as f:
                state = json.load(f)
            if state.get("source") != source or state.get("topic") != topic:
                raise ValueError(
                    f"--resume {path} belongs to {state.get('source')} -> "
                    f"{state.get('topic')}, not {source} -> {topic}"
                )
            self.after, self.failed = state.get("after"), list(state.get("failed", []))

    def save(self, force: bool = False) -> None:
        if (
            not self.path
            or self.read_only
            or (not force and time.monotonic() - self._saved_at < 0.5)
        ):
            return
        state = {
            "source": self.source,
            "topic": self.topic,
            "after": self.after,
            "failed": self.failed,
            "saved": dt.datetime.now(dt.UTC).isoformat(),
        }
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".resume-")
        with os.fdopen(fd, "w") as f:
            json.dump(state, f)
        os.replace(tmp, self.path)
        self._saved_at = time.monotonic()


class InFlight:
    """Publishes in listing order, tracks the contiguous prefix that is done."""

    def __init__(self, checkpoint: Checkpoint, counts: collections.Counter):
        self._queue: collections.deque = collections.deque()
        self._checkpoint, self._counts = checkpoint, counts
        self.last_error: BaseException | None = None  # why the latest failure failed

    def add(self, name: str, future, ordered: bool = True) -> None:
        """`ordered`: the name comes from the listing (moves the checkpoint); retries
        of earlier failures do not."""
        self._queue.append((name, future, ordered))

    def __len__(self) -> int:
        return len(self._queue)

    def advance(self, block: bool = False, timeout: float | None = None) -> None:
        """Moves the checkpoint over every finished publish at the head of the queue."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._queue:
            name, future, ordered = self._queue[0]
            if not future.done():
                if not block:
                    break
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    future.result(timeout=remaining)
                except Exception:  # noqa: BLE001 - recorded below
                    pass
                if not future.done():
                    break
            self._queue.popleft()
            failed = self._checkpoint.failed
            if future.exception() is None:
                self._counts["published"] += 1
                if name in failed:
                    failed.remove(name)
            else:
                self._counts["failed"] += 1
                self.last_error = future.exception()
                if name not in failed:
                    failed.append(name)
            if ordered:
                self._checkpoint.after = name
        self._checkpoint.save()


class RateLimiter:
    """At most `rate` calls per second on average (no limit if rate is falsy)."""

    def __init__(self, rate: float | None):
        self._rate, self._start, self._n = rate, time.monotonic(), 0

    def wait(self) -> None:
        if not self._rate:
            return
        self._n += 1
        ahead = self._n / self._rate - (time.monotonic() - self._start)
        if ahead > 0:
            time.sleep(ahead)


@dataclasses.dataclass
class Plan:
    """One backfill as decided before anything is published: where to list, what the
    filters let through, where the checkpoint resumes and which earlier failures go first."""

    bucket: str
    prefix: str
    filters: Filters
    checkpoint: Checkpoint
    retry_names: set[str]  # the previous run's failures: listed until re-published
    storage: Any  # google.cloud.storage.Client


def run(args: argparse.Namespace, out=sys.stdout) -> collections.Counter:
    """Runs one backfill (plan, publish, report); returns the counts (listed, published,
    failed, skipped...)."""
    from streaming.support import clients

    if args.local_endpoints:
        clients.use_local_endpoints()
    planned = plan(args)
    counts, last_error = publish(args, planned, out)
    report(args, counts, last_error, out)
    return counts


def plan(args: argparse.Namespace) -> Plan:
    """The arguments and the checkpoint, read and checked before any publisher exists.

    Raises:
      ValueError: a malformed source or time, a checkpoint of another source or topic,
        or --skip-existing refinements without it.
    """
    from streaming.config import names
    from streaming.support import clients

    bucket, prefix = names.split_gcs_uri(args.source)
    filters = Filters(
        prefix=prefix,
        content_types=split_list(args.content_type, lower=True),
        extensions=split_list(args.extensions, lower=True),
        updated_since=parse_time(args.updated_since),
        updated_until=parse_time(args.updated_until),
    )
    checkpoint = Checkpoint(args.resume, args.source, args.topic, read_only=args.dry_run)
    if args.skip_existing and not args.table:
        raise ValueError("--skip-existing needs --table P:D.T")
    if (
        args.fingerprint or args.dead_letter_table or args.retry_dead_letters
    ) and not args.skip_existing:
        raise ValueError(
            "--fingerprint, --dead-letter-table and --retry-dead-letters "
            "refine --skip-existing; add it"
        )
    return Plan(
        bucket,
        prefix,
        filters,
        checkpoint,
        set(checkpoint.failed),
        clients.storage_client(args.local_endpoints),
    )


def findings(args: argparse.Namespace, planned: Plan) -> Iterator[catch_up.Finding]:
    """What to publish, in publishing order: the previous run's failures, then the
    listing (with --skip-existing, merged with the table's generations). Lazy, so the
    listing goes page by page as publishing goes."""
    from streaming.sources import catch_up
    from streaming.support import clients

    storage, bucket, checkpoint = planned.storage, planned.bucket, planned.checkpoint
    for name in sorted(planned.retry_names):  # failures of the previous run first
        blob = storage.bucket(bucket).get_blob(name)
        if blob is not None:
            yield catch_up.Finding(object_resource(blob), catch_up.EMBED)
        else:
            checkpoint.failed.remove(name)  # gone since: nothing to publish
    listing = catch_up.list_resources(
        storage, bucket, planned.prefix, checkpoint.after, args.page_size
    )
    if not args.skip_existing:
        yield from (catch_up.Finding(r, catch_up.EMBED) for r in listing)
        return
    # One query, merged with the listing in name order: memory stays bounded.
    known = catch_up.known_generations(
        clients.bigquery_client(args.local_endpoints),
        args.table,
        catch_up.Scope(bucket, planned.prefix),
        fingerprint=args.fingerprint,
        dead_letter_table=args.dead_letter_table,
        after=checkpoint.after,
    )
    yield from catch_up.compare(listing, known, bucket, retry_dead_letters=args.retry_dead_letters)


def publish(
    args: argparse.Namespace, planned: Plan, out=sys.stdout
) -> tuple[collections.Counter, BaseException | None]:
    """Publishes the plan's findings (a dry run counts them), moving the checkpoint over
    every confirmed publish; SIGTERM or Ctrl-C stops it with the checkpoint saved.

    Returns:
      The counts, and the error of the latest failed publish (None if none failed).
    """
    from streaming.sources import catch_up

    counts: collections.Counter = collections.Counter()
    bucket, checkpoint, retry_names = planned.bucket, planned.checkpoint, planned.retry_names
    publisher = None if args.dry_run else make_publisher(args.max_in_flight)
    check_targets(planned.storage, publisher, bucket, args.topic)
    in_flight = InFlight(checkpoint, counts)
    limiter = RateLimiter(args.rate)
    started = time.monotonic()
    progress = make_progress(args)
    interrupted = False
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        for finding in findings(args, planned):
            resource = finding.resource
            gone = finding.action == catch_up.GONE
            counts["gone" if gone else "listed"] += 1
            progress.update(1)
            if not gone and not planned.filters.accepts(resource):
                counts["skipped_filter"] += 1
            elif finding.action == catch_up.DONE:
                counts["skipped_existing"] += 1
            elif args.dry_run:
                counts["would_publish"] += 1
                if args.verbose:
                    what = "a deletion of" if gone else "a notification for"
                    print(f"would publish {what} gs://{bucket}/{resource['name']}", file=out)
            else:
                limiter.wait()
                data, attributes = notification_for(
                    resource,
                    event_type="OBJECT_DELETE" if gone else "OBJECT_FINALIZE",
                    attempt=finding.attempt,
                )
                in_flight.add(
                    resource["name"],
                    publisher.publish(args.topic, data, **attributes),
                    ordered=resource["name"] not in retry_names,
                )
            if publisher is None:
                checkpoint.after = resource["name"]
                checkpoint.save()
            else:
                in_flight.advance()
            show_counts(progress, counts)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        signal.signal(signal.SIGTERM, previous)
        in_flight.advance(block=True, timeout=60)
        checkpoint.save(force=True)
        show_counts(progress, counts)  # the bar ends on the summary's numbers
        progress.close()
        if publisher is not None:
            publisher.stop()
    counts["in_flight_abandoned"] = len(in_flight)
    counts["seconds"] = round(time.monotonic() - started, 2)
    counts["interrupted"] = int(interrupted)
    return counts, in_flight.last_error


def report(
    args: argparse.Namespace,
    counts: Mapping[str, int],
    last_error: BaseException | None,
    out=sys.stdout,
) -> None:
    """The summary line on `out`; failed or unconfirmed publishes, and why, on stderr."""
    print(summary(counts, args), file=out)
    if counts.get("failed") or counts.get("in_flight_abandoned"):
        print(
            f"embed-backfill: error: {failure_message(counts, args, last_error)}", file=sys.stderr
        )


def show_counts(progress, counts: Mapping[str, int]) -> None:
    """The bar's counts: the same keys and values as the summary line."""
    progress.set_postfix(
        published=counts["published"],
        failed=counts["failed"],
        skipped=counts["skipped_filter"] + counts["skipped_existing"],
        refresh=False,
    )


def check_targets(storage, publisher, bucket: str, topic: str) -> None:
    """The bucket and (unless a dry run) the topic exist: a wrong name stops the run
    before listing, in one line, instead of one failed publish per object.

    Only with the permissions the backfill's roles grant (roles/storage.objectViewer,
    roles/pubsub.publisher): the bucket by listing one object (`storage.objects.list`,
    not `storage.buckets.get`); the topic by `pubsub.topics.get` where the account has
    it, else the first publish names a missing topic."""
    from google.api_core import exceptions as gexc

    try:
        next(iter(storage.list_blobs(bucket, max_results=1, timeout=30)), None)
    except gexc.NotFound:
        raise cli.UsageError(f"bucket gs://{bucket} not found") from None
    except gexc.Forbidden as e:
        raise cli.UsageError(
            f"cannot list gs://{bucket} ({e.message}): the backfill needs storage.objects.list "
            "(roles/storage.objectViewer)"
        ) from None
    if publisher is not None:
        try:
            publisher.get_topic(topic=topic, timeout=30)
        except gexc.NotFound:
            raise cli.UsageError(f"--topic {topic}: topic not found") from None
        except gexc.PermissionDenied:
            pass  # roles/pubsub.publisher grants publishing only


def _raise_interrupt(*_):
    raise KeyboardInterrupt


def make_publisher(max_in_flight: int):
    from google.cloud import pubsub_v1
    from google.cloud.pubsub_v1.types import (
        BatchSettings,
        LimitExceededBehavior,
        PublisherOptions,
        PublishFlowControl,
    )

    return pubsub_v1.PublisherClient(
        batch_settings=BatchSettings(max_messages=500, max_bytes=5 * 1024 * 1024, max_latency=0.05),
        publisher_options=PublisherOptions(
            flow_control=PublishFlowControl(
                message_limit=max_in_flight,
                byte_limit=64 * 1024 * 1024,
                limit_exceeded_behavior=LimitExceededBehavior.BLOCK,
            )
        ),
    )


def make_progress(args):
    from tqdm import tqdm

    return tqdm(
        unit=" objects", desc="backfill", disable=args.no_progress, mininterval=0.5, file=sys.stderr
    )


def summary(counts: Mapping[str, int], args) -> str:
    keys = (
        "listed",
        "published",
        "would_publish",
        "skipped_filter",
        "skipped_existing",
        "gone",
        "failed",
        "in_flight_abandoned",
        "seconds",
    )
    line = " ".join(f"{k}={counts.get(k, 0)}" for k in keys)
    status = "interrupted; resume with --resume" if counts.get("interrupted") else "done"
    return f"backfill {args.source} -> {args.topic}: {status}: {line}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = cli.ArgumentParser(prog="embed-backfill", description=__doc__)
    p.add_argument("source", type=str, help="gs://BUCKET[/prefix] to list.")
    p.add_argument("--topic", type=str, required=True, help="projects/P/topics/T to publish to.")
    p.add_argument("--dry-run", action="store_true", help="List and count; publish nothing.")
    p.add_argument("--rate", type=float, default=None, help="Max messages per second.")
    p.add_argument(
        "--content-type",
        type=str,
        default="image/",
        help="Accepted content-type prefixes, comma-separated ('' = any).",
    )
    p.add_argument(
        "--extensions",
        type=str,
        default=DEFAULT_EXTENSIONS,
        help="Accepted name suffixes, comma-separated ('' = any). An object "
        "passes with an accepted suffix OR content type.",
    )
    p.add_argument("--updated-since", type=str, default=None, help="RFC 3339; inclusive.")
    p.add_argument("--updated-until", type=str, default=None, help="RFC 3339; exclusive.")
    p.add_argument(
        "--skip-existing",
        action="store_true",
        help="Skip object generations that already have a row in --table (or "
        "a final dead letter in --dead-letter-table), and publish a "
        "deletion for every current row whose generation is gone: the "
        "reconciliation that finds what notifications missed. One "
        "listing pass and one query.",
    )
    p.add_argument("--table", type=str, default=None, help="BigQuery table P:D.T of rows.")
    p.add_argument(
        "--dead-letter-table",
        type=str,
        default=None,
        help="With --skip-existing: generations with a final dead letter "
        "here are skipped too; retryable ones are published again, up to "
        "3 attempts in all.",
    )
    p.add_argument(
        "--retry-dead-letters",
        action="store_true",
        help="With --skip-existing: publish dead-lettered generations again, "
        "final ones and those out of attempts included.",
    )
    p.add_argument(
        "--fingerprint",
        type=str,
        default=None,
        help="With --skip-existing: only rows of this model fingerprint count, "
        "so objects embedded by older weights are re-embedded.",
    )
    p.add_argument(
        "--resume",
        type=str,
        default=None,
        help="Checkpoint file: created if missing, continued if present.",
    )
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=1000,
        help="Flow control: most unacknowledged publishes at once.",
    )
    p.add_argument("--page-size", type=int, default=1000, help="Objects per listing page.")
    p.add_argument(
        "--local-endpoints",
        action="store_true",
        help="Use the emulators named by STORAGE_/PUBSUB_/BIGQUERY_EMULATOR_HOST.",
    )
    p.add_argument("--no-progress", action="store_true", help="No progress bar.")
    p.add_argument("--verbose", action="store_true", help="With --dry-run, list each object.")
    return p.parse_args(argv)


def failure_message(counts: Mapping[str, int], args, error: BaseException | None) -> str:
    """One line: how many publishes failed, why, and what happens to them."""
    text = f"{counts['failed']} publishes failed ({counts['in_flight_abandoned']} unconfirmed)"
    if error is not None:
        text += f"; last error: {cli.describe(error, 'pubsub.topics.publish')}"
    if args.resume:
        return text + f"; they are listed in {args.resume} and retried first on the next run"
    return text + "; run again (with --resume FILE to retry only what failed)"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args.verbose)
    from streaming.config import names

    try:
        names.split_gcs_uri(args.source)
        names.pubsub_path(args.topic, "topics")
    except ValueError as e:
        return cli.fail("embed-backfill", e, usage=True)
    if not args.local_endpoints:
        try:
            cli.check_credentials()
        except cli.UsageError as e:
            return cli.fail("embed-backfill", e)
    try:
        counts = run(args)
    except Exception as e:  # noqa: BLE001 - one line; the traceback at debug level
        return cli.fail("embed-backfill", e, usage=isinstance(e, ValueError))
    if counts.get("interrupted"):
        return cli.EXIT_INTERRUPTED
    if counts.get("failed") or counts.get("in_flight_abandoned"):
        return cli.EXIT_RUNTIME
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
