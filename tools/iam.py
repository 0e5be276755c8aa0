"""Least privilege, enforced on the wire: what each identity of infra/ may do, and proxies
in front of the emulators that answer 403 to every call its roles would refuse.

The emulators grant everything; Google's services grant what IAM says. Three tables
decide here, each from Google's reference:

* `tools/iam_roles.json`: the permissions of each predefined role infra/ grants
  (custom roles come from infra/ itself);
* `CALLS` below: the permission each API call needs (Cloud Storage JSON API, BigQuery
  REST and Storage API, Pub/Sub, Dataflow), and on which resource;
* infra/*.tf: who holds which role on which resource, with its IAM condition
  (`tools/infra.py` reads them).

`LeastPrivilege(identity, bindings)` starts one proxy per service for one identity
(`job`, `backfill`, `deployer`, `analyst`; the Flex Template launcher runs as the job's
account); `env` points a client at them. A call the table does not know is refused
too, so a new call cannot pass unchecked. `denied` lists every refusal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.parser
import json
import logging
import os
import re
import threading
import urllib.parse
from collections.abc import Callable

from tools import infra
from tools.http_proxy import HttpProxy, Request, gcs_error

ROLES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "iam_roles.json")
BUCKET_TYPE = "storage.googleapis.com/Bucket"
OBJECT_TYPE = "storage.googleapis.com/Object"


def predefined_roles() -> dict[str, set[str]]:
    with open(ROLES_FILE) as f:
        return {role: set(perms) for role, perms in json.load(f)["roles"].items()}


def role_permissions() -> dict[str, set[str]]:
    """Every role infra/ may name: Google's predefined ones and infra's custom roles."""
    return {**predefined_roles(), **infra.custom_roles()}


def roles_granting(permission: str, among: set[str] | None = None) -> list[str]:
    """The roles (of `among`, default all known) that hold `permission`."""
    known = role_permissions()
    return sorted(
        r for r, perms in known.items() if permission in perms and (not among or r in among)
    )


@dataclasses.dataclass(frozen=True)
class Check:
    """One permission on one resource (`projects/p/datasets/d/tables/t`,
    `projects/_/buckets/b/objects/o`, `projects/p/topics/t`, ...)."""

    permission: str
    resource: str

    @property
    def resource_type(self) -> str:
        if "/objects/" in self.resource:
            return OBJECT_TYPE
        if self.resource.startswith("projects/_/buckets/"):
            return BUCKET_TYPE
        return ""


@dataclasses.dataclass(frozen=True)
class Denial:
    identity: str
    check: Check
    granted_by: tuple[str, ...]  # the roles that hold the permission

    def __str__(self) -> str:
        roles = ", ".join(self.granted_by) or "no role infra/ knows"
        return (
            f"{self.identity} lacks {self.check.permission} on {self.check.resource} "
            f"(granted by {roles})"
        )


class Policy:
    """What `identity` may do, from infra/'s grants, with `bindings` naming the
    resources of infra/ (`var.images_bucket`, `google_storage_bucket.vectors`,
    `google_bigquery_dataset.images`, `var.project_id`, ...) as they are here:
    `projects/_/buckets/NAME`, `projects/P/datasets/D`, `projects/P/topics/T`,
    `projects/P`; other values (`var.images_prefix`) are plain strings for conditions."""

    def __init__(self, identity: str, bindings: dict[str, str]):
        self.identity = identity
        self.bindings = dict(bindings)
        roles = role_permissions()
        self.grants = []
        for grant in infra.iam_grants():
            if grant.identity != identity or grant.target not in self.bindings:
                continue
            if grant.role not in roles:
                raise KeyError(f"{grant.role}: not in tools/iam_roles.json nor a custom role")
            self.grants.append((grant, roles[grant.role]))
        self.holds = {g.role for g, _ in self.grants}

    def _covers(self, target: str, resource: str) -> bool:
        if re.fullmatch(r"projects/[^/]+", target):  # a project grant: all of it
            project = target.split("/")[1]
            return resource.startswith((f"projects/{project}", "projects/_/"))
        return resource == target or resource.startswith(target + "/")

    def _condition(self, expression: str) -> Callable[[Check], bool]:
        def value(m):
            ref = m.group(1)
            bound = self.bindings.get(re.sub(r"\.(name|id)$", "", ref), "")
            return bound.rsplit("/", 1)[-1] if bound.startswith("projects/") else bound

        cel = re.sub(r"\$\{([\w.]+)\}", value, expression)
        py = (
            cel.replace("&&", " and ")
            .replace("||", " or ")
            .replace(".startsWith(", ".startswith(")
            .replace("resource.name", "name")
            .replace("resource.type", "type_")
        )
        py = re.sub(r"!(?!=)", " not ", py)
        code = compile(py, "<condition>", "eval")
        return lambda check: bool(
            eval(code, {"__builtins__": {}}, {"name": check.resource, "type_": check.resource_type})
        )

    def allows(self, check: Check) -> bool:
        for grant, perms in self.grants:
            if check.permission not in perms:
                continue
            if not self._covers(self.bindings[grant.target], check.resource):
                continue
            if grant.condition and not self._condition(grant.condition)(check):
                continue
            return True
        return False

    def denial(self, checks: list[Check]) -> Denial | None:
        for check in checks:
            if not self.allows(check):
                return Denial(self.identity, check, tuple(roles_granting(check.permission)))
        return None


# --- The permission each call needs ----------------------------------------------------
# Cloud Storage JSON API (https://cloud.google.com/storage/docs/json_api/v1, each
# method's "Authorization" section).


def _q(s: str) -> str:
    return urllib.parse.unquote(s)


def storage_checks(method: str, path: str, query: dict, body: bytes, exists) -> list[Check]:
    """The checks of one Cloud Storage JSON API request. `exists(bucket, name)` tells
    whether an upload replaces an object (which needs `storage.objects.delete` too)."""
    path = urllib.parse.urlsplit(path).path
    if path.startswith("/batch/"):
        return [c for part in _batch_parts(body) for c in storage_checks(*part, exists)]
    bucket_ = lambda b: f"projects/_/buckets/{_q(b)}"
    object_ = lambda b, o: f"{bucket_(b)}/objects/{_q(o)}"
    m = re.fullmatch(r"/upload/storage/v1/b/([^/]+)/o/?", path)
    if m:
        if "upload_id" in query:  # the rest of a resumable upload its start was checked for
            return []
        name = query.get("name") or _upload_name(body)
        checks = [Check("storage.objects.create", object_(m.group(1), name or ""))]
        if query.get("ifGenerationMatch") != "0" and name and exists(_q(m.group(1)), name):
            checks.append(Check("storage.objects.delete", object_(m.group(1), name)))
        return checks
    m = re.fullmatch(
        r"/(?:download/)?storage/v1/b/([^/]+)/o/(.+?)/(rewriteTo|copyTo)/b/([^/]+)/o/(.+)", path
    )
    if m:
        src, dst = object_(m.group(1), m.group(2)), object_(m.group(4), m.group(5))
        checks = [Check("storage.objects.get", src), Check("storage.objects.create", dst)]
        if query.get("ifGenerationMatch") != "0" and exists(_q(m.group(4)), _q(m.group(5))):
            checks.append(Check("storage.objects.delete", dst))
        return checks
    m = re.fullmatch(r"/storage/v1/b/([^/]+)/o/(.+)/compose", path)
    if m:
        sources = [s["name"] for s in json.loads(body or b"{}").get("sourceObjects", [])]
        return [Check("storage.objects.create", object_(m.group(1), m.group(2)))] + [
            Check("storage.objects.get", object_(m.group(1), s)) for s in sources
        ]
    m = re.fullmatch(r"/(?:download/)?storage/v1/b/([^/]+)/o/(.+)", path)
    if m:
        permission = {
            "GET": "storage.objects.get",
            "HEAD": "storage.objects.get",
            "DELETE": "storage.objects.delete",
        }.get(method, "storage.objects.update")
        return [Check(permission, object_(m.group(1), m.group(2)))]
    m = re.fullmatch(r"/storage/v1/b/([^/]+)/o/?", path)
    if m:
        return [Check("storage.objects.list", bucket_(m.group(1)))]
    m = re.fullmatch(r"/storage/v1/b/([^/]+)/notificationConfigs(/.*)?", path)
    if m:
        permission = "storage.buckets.get" if method == "GET" else "storage.buckets.update"
        return [Check(permission, bucket_(m.group(1)))]
    m = re.fullmatch(r"/storage/v1/b/([^/]+)/?", path)
    if m:
        permission = {"GET": "storage.buckets.get", "DELETE": "storage.buckets.delete"}.get(
            method, "storage.buckets.update"
        )
        return [Check(permission, bucket_(m.group(1)))]
    if re.fullmatch(r"/storage/v1/b/?", path):
        project = f"projects/{query.get('project', '')}"
        return [
            Check("storage.buckets.list" if method == "GET" else "storage.buckets.create", project)
        ]
    return [Check(f"unknown Cloud Storage call {method} {path}", "")]


def _upload_name(body: bytes) -> str | None:
    found = re.search(rb'"name"\s*:\s*("(?:[^"\\]|\\.)*")', body)
    return json.loads(found.group(1)) if found else None


def _batch_parts(body: bytes):
    """(method, path, query, body) of each request of a JSON API batch."""
    for part in re.split(rb"--[^\r\n]+\r?\n", body):
        m = re.search(rb"^(GET|POST|PUT|PATCH|DELETE|HEAD) (\S+) HTTP/1\.1\r?\n", part, re.M)
        if not m:
            continue
        target = urllib.parse.urlsplit(m.group(2).decode())
        rest = part[m.end() :]
        inner = email.parser.BytesParser().parsebytes(rest)
        yield (
            m.group(1).decode(),
            target.path,
            dict(urllib.parse.parse_qsl(target.query)),
            inner.get_payload(decode=True) or b"",
        )


# BigQuery REST (https://cloud.google.com/bigquery/docs/reference/rest, and "Required
# permissions" of each method; https://cloud.google.com/bigquery/docs/access-control).
_TABLE_NAME = re.compile(r"`([\w-]+)\.(\w+)\.(\w+)`|`(\w+)\.(\w+)`|\b([a-z][\w-]*)\.(\w+)\.(\w+)\b")
_DDL = re.compile(
    r"^\s*(ALTER|CREATE|DROP)\s+(?:OR\s+REPLACE\s+)?(?:TABLE|VIEW)\s+(?:IF\s+(?:NOT\s+)?EXISTS\s+)?`?([\w.-]+)`?",
    re.I,
)
_DML = re.compile(r"^\s*(INSERT|UPDATE|DELETE|MERGE)\s+(?:INTO\s+|FROM\s+)?`?([\w.-]+)`?", re.I)


def query_checks(project: str, sql: str, default_dataset: dict | None = None) -> list[Check]:
    """A query job: jobs.create in the project, then per table it names getData (a
    read), updateData (DML), create/update/delete (DDL)."""

    def table(name: str) -> str:
        parts = name.replace(":", ".").split(".")
        if len(parts) == 2:
            parts = [project, *parts]
        if len(parts) == 1 and default_dataset:
            parts = [default_dataset["projectId"], default_dataset["datasetId"], parts[0]]
        return "projects/{}/datasets/{}/tables/{}".format(*parts[-3:]) if len(parts) >= 3 else ""

    checks = [Check("bigquery.jobs.create", f"projects/{project}")]
    ddl, dml = _DDL.match(sql), _DML.match(sql)
    if ddl:
        verb = {"ALTER": "update", "CREATE": "create", "DROP": "delete"}[ddl.group(1).upper()]
        checks.append(Check(f"bigquery.tables.{verb}", table(ddl.group(2))))
    elif dml:
        checks.append(Check("bigquery.tables.updateData", table(dml.group(2))))
    named = {ddl.group(2) if ddl else None, dml.group(2) if dml else None}
    for m in _TABLE_NAME.finditer(sql):
        parts = [p for p in m.groups() if p]
        name = ".".join(parts)
        if name in named or parts[-1].upper() == "INFORMATION_SCHEMA":
            continue
        if ddl or len(parts) >= 2:
            checks.append(Check("bigquery.tables.getData", table(name)))
    return checks


def bigquery_checks(method: str, path: str, body: bytes) -> list[Check]:
    path = urllib.parse.urlsplit(path).path
    if path.startswith("/strict/"):  # the strict proxy's own controls (tests only)
        return []
    path = re.sub(r"^/bigquery/v2", "", path)
    m = re.fullmatch(r"/projects/([^/]+)/(jobs|queries)/?", path)
    if m and method == "POST":
        payload = json.loads(body or b"{}")
        if m.group(2) == "queries":
            return query_checks(m.group(1), payload.get("query", ""), payload.get("defaultDataset"))
        config = payload.get("configuration", {})
        if "query" in config:
            return query_checks(
                m.group(1), config["query"].get("query", ""), config["query"].get("defaultDataset")
            )
        return [Check(f"unknown BigQuery job {sorted(config)}", "")]
    m = re.fullmatch(r"/projects/([^/]+)/(jobs|queries)/[^/]+(/cancel)?", path)
    if m:  # the caller's own job: jobs.create lets it follow what it started
        return [Check("bigquery.jobs.create", f"projects/{m.group(1)}")]
    m = re.fullmatch(r"/projects/([^/]+)/datasets/?", path)
    if m:
        permission = (
            "bigquery.datasets.create" if method == "POST" else "resourcemanager.projects.get"
        )
        return [Check(permission, f"projects/{m.group(1)}")]
    m = re.fullmatch(r"/projects/([^/]+)/datasets/([^/]+)/?", path)
    if m:
        permission = {"GET": "bigquery.datasets.get", "DELETE": "bigquery.datasets.delete"}.get(
            method, "bigquery.datasets.update"
        )
        return [Check(permission, f"projects/{m.group(1)}/datasets/{m.group(2)}")]
    m = re.fullmatch(r"/projects/([^/]+)/datasets/([^/]+)/tables/?", path)
    if m:
        permission = "bigquery.tables.create" if method == "POST" else "bigquery.tables.list"
        return [Check(permission, f"projects/{m.group(1)}/datasets/{m.group(2)}")]
    m = re.fullmatch(r"/projects/([^/]+)/datasets/([^/]+)/tables/([^/]+)(/insertAll|/data)?", path)
    if m:
        table = f"projects/{m.group(1)}/datasets/{m.group(2)}/tables/{m.group(3)}"
        if m.group(4) == "/insertAll":
            return [Check("bigquery.tables.updateData", table)]
        if m.group(4) == "/data":
            return [Check("bigquery.tables.getData", table)]
        permission = {"GET": "bigquery.tables.get", "DELETE": "bigquery.tables.delete"}.get(
            method, "bigquery.tables.update"
        )
        return [Check(permission, table)]
    return [Check(f"unknown BigQuery call {method} {path}", "")]


# gRPC: Pub/Sub (https://cloud.google.com/pubsub/docs/access-control, "Required
# permissions" per method) and the BigQuery Storage API.
def _pubsub(type_name: str, field: str, permission: str):
    def checks(data: bytes) -> list[Check]:
        from google.pubsub_v1 import types

        request = getattr(types, type_name).deserialize(data)
        return [Check(permission, getattr(request, field))]

    return checks


def _write(type_name: str, field: str):
    def checks(data: bytes) -> list[Check]:
        from google.cloud.bigquery_storage_v1 import types

        request = getattr(types, type_name).deserialize(data)
        name = getattr(request, field)
        if not name:  # later requests of an AppendRows stream name no stream
            return []
        return [Check("bigquery.tables.updateData", re.sub(r"/streams/.*$", "", name))]

    return checks


def _create_subscription(data: bytes) -> list[Check]:
    from google.pubsub_v1 import types

    request = types.Subscription.deserialize(data)
    project = "/".join(request.name.split("/")[:2])
    return [
        Check("pubsub.subscriptions.create", project),
        Check("pubsub.topics.attachSubscription", request.topic),
    ]


def _read_session(data: bytes) -> list[Check]:
    from google.cloud.bigquery_storage_v1 import types

    request = types.CreateReadSessionRequest.deserialize(data)
    return [
        Check("bigquery.readsessions.create", request.parent),
        Check("bigquery.tables.getData", request.read_session.table),
    ]


GRPC_CALLS: dict[str, Callable[[bytes], list[Check]]] = {
    "/google.pubsub.v1.Publisher/Publish": _pubsub(
        "PublishRequest", "topic", "pubsub.topics.publish"
    ),
    "/google.pubsub.v1.Publisher/GetTopic": _pubsub(
        "GetTopicRequest", "topic", "pubsub.topics.get"
    ),
    "/google.pubsub.v1.Subscriber/GetSubscription": _pubsub(
        "GetSubscriptionRequest", "subscription", "pubsub.subscriptions.get"
    ),
    "/google.pubsub.v1.Subscriber/Pull": _pubsub(
        "PullRequest", "subscription", "pubsub.subscriptions.consume"
    ),
    "/google.pubsub.v1.Subscriber/StreamingPull": _pubsub(
        "StreamingPullRequest", "subscription", "pubsub.subscriptions.consume"
    ),
    "/google.pubsub.v1.Subscriber/Acknowledge": _pubsub(
        "AcknowledgeRequest", "subscription", "pubsub.subscriptions.consume"
    ),
    "/google.pubsub.v1.Subscriber/ModifyAckDeadline": _pubsub(
        "ModifyAckDeadlineRequest", "subscription", "pubsub.subscriptions.consume"
    ),
    "/google.pubsub.v1.Subscriber/CreateSubscription": _create_subscription,
    "/google.cloud.bigquery.storage.v1.BigQueryWrite/CreateWriteStream": _write(
        "CreateWriteStreamRequest", "parent"
    ),
    "/google.cloud.bigquery.storage.v1.BigQueryWrite/AppendRows": _write(
        "AppendRowsRequest", "write_stream"
    ),
    "/google.cloud.bigquery.storage.v1.BigQueryWrite/GetWriteStream": _write(
        "GetWriteStreamRequest", "name"
    ),
    "/google.cloud.bigquery.storage.v1.BigQueryWrite/FinalizeWriteStream": _write(
        "FinalizeWriteStreamRequest", "name"
    ),
    "/google.cloud.bigquery.storage.v1.BigQueryWrite/FlushRows": _write(
        "FlushRowsRequest", "write_stream"
    ),
    "/google.cloud.bigquery.storage.v1.BigQueryWrite/BatchCommitWriteStreams": _write(
        "BatchCommitWriteStreamsRequest", "parent"
    ),
    "/google.cloud.bigquery.storage.v1.BigQueryRead/CreateReadSession": _read_session,
    # A read session's streams are the caller's own, checked at creation.
    "/google.cloud.bigquery.storage.v1.BigQueryRead/ReadRows": lambda _data: [],
}


# Dataflow (https://cloud.google.com/dataflow/docs/concepts/access-control).
def dataflow_checks(method: str, path: str, body: bytes) -> list[Check]:
    path = urllib.parse.urlsplit(path).path
    m = re.fullmatch(r"/v1b3/projects/([^/]+)/locations/[^/]+/jobs(?:/([^/:]+))?(:\w+)?", path)
    if not m:
        return [Check(f"unknown Dataflow call {method} {path}", "")]
    project = f"projects/{m.group(1)}"
    if m.group(2) is None:
        if method == "GET":
            return [Check("dataflow.jobs.list", project)]
        job = json.loads(body or b"{}")
        account = job.get("environment", {}).get("serviceAccountEmail")
        checks = [Check("dataflow.jobs.create", project)]
        if account:
            checks.append(
                Check("iam.serviceAccounts.actAs", f"{project}/serviceAccounts/{account}")
            )
        return checks
    return [
        Check("dataflow.jobs.get" if method == "GET" else "dataflow.jobs.updateContents", project)
    ]


# --- Proxies ---------------------------------------------------------------------------
def _bigquery_error(denial: Denial) -> tuple[int, bytes]:
    resource = denial.check.resource
    message = (
        f"Access Denied: {resource}: Permission {denial.check.permission} denied on "
        f"{resource} (or it may not exist)."
    )
    return 403, json.dumps(
        {
            "error": {
                "code": 403,
                "message": message,
                "errors": [{"message": message, "domain": "global", "reason": "accessDenied"}],
                "status": "PERMISSION_DENIED",
            }
        }
    ).encode()


class _FakeDataflow:
    """The Dataflow API's jobs.list/create/get, enough for Beam's DataflowRunner: a
    launch (`create`) is recorded; `running` names the jobs `list` answers with."""

    def __init__(self, check: Callable[[str, str, bytes], tuple[int, bytes] | None]):
        self.created: list[dict] = []
        self.running: dict[str, str] = {}  # job name -> id
        # An HttpProxy whose rule answers every request: nothing is forwarded.
        self._server = HttpProxy(
            "http://127.0.0.1:1",
            rule=lambda r: check(r.method, r.path, r.body) or self.answer(r.method, r.path, r.body),
            record=False,
        )
        # Beam's client speaks REST (not gRPC) to an endpoint naming localhost.
        self.url = f"http://localhost:{self._server.port}"

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        if method == "GET" and re.search(r"/jobs/?(\?|$)", path):
            jobs = [
                {"id": job_id, "name": name, "currentState": "JOB_STATE_RUNNING"}
                for name, job_id in self.running.items()
            ]
            return 200, json.dumps({"jobs": jobs}).encode()
        if method == "POST":
            job = json.loads(body or b"{}")
            self.created.append(job)
            job = {**job, "id": f"job-{len(self.created)}", "currentState": "JOB_STATE_PENDING"}
            return 200, json.dumps(job).encode()
        job_id = urllib.parse.urlsplit(path).path.rsplit("/", 1)[-1]
        return 200, json.dumps({"id": job_id, "currentState": "JOB_STATE_RUNNING"}).encode()

    def start(self):
        self._server.start()

    def stop(self):
        self._server.stop()


def _grpc_forwarder(target: str, refuse: Callable[[str, bytes], str | None]):
    """A gRPC server (not started) forwarding every call to `target` as bytes; a request
    `refuse` answers for ends the call with PERMISSION_DENIED and that message."""
    from concurrent import futures

    import grpc

    size = [
        ("grpc.max_send_message_length", 64 << 20),
        ("grpc.max_receive_message_length", 64 << 20),
    ]
    channel = grpc.insecure_channel(target, options=size)
    streams = {"StreamingPull", "AppendRows"}
    server_streams = {"ReadRows"}

    def checked(requests, method, context):
        for data in requests:
            message = refuse(method, data)
            if message:
                context.abort(grpc.StatusCode.PERMISSION_DENIED, message)
            yield data

    class Forward(grpc.GenericRpcHandler):
        def service(self, details):
            method, metadata = details.method, details.invocation_metadata
            name = method.rsplit("/", 1)[-1]
            if name in streams:
                call = channel.stream_stream(method)

                def bidi(requests, context):
                    answers = call(
                        checked(requests, method, context),
                        metadata=metadata,
                        timeout=context.time_remaining(),
                    )
                    context.add_callback(answers.cancel)
                    try:
                        yield from answers
                    except grpc.RpcError as e:
                        context.abort(e.code(), e.details() or "")

                return grpc.stream_stream_rpc_method_handler(bidi)
            if name in server_streams:
                call = channel.unary_stream(method)

                def out(request, context):
                    message = refuse(method, request)
                    if message:
                        context.abort(grpc.StatusCode.PERMISSION_DENIED, message)
                    answers = call(request, metadata=metadata, timeout=context.time_remaining())
                    context.add_callback(answers.cancel)
                    try:
                        yield from answers
                    except grpc.RpcError as e:
                        context.abort(e.code(), e.details() or "")

                return grpc.unary_stream_rpc_method_handler(out)
            call = channel.unary_unary(method)

            def unary(request, context):
                message = refuse(method, request)
                if message:
                    context.abort(grpc.StatusCode.PERMISSION_DENIED, message)
                # The client's deadline and cancellation go on upstream: a pull the
                # client gave up on must not take messages nobody will receive.
                future = call.future(request, metadata=metadata, timeout=context.time_remaining())
                context.add_callback(future.cancel)
                try:
                    return future.result()
                except grpc.RpcError as e:
                    context.abort(e.code(), e.details() or "")

            return grpc.unary_unary_rpc_method_handler(unary)

    server = grpc.server(futures.ThreadPoolExecutor(32), options=size)
    server.add_generic_rpc_handlers((Forward(),))
    return server


class LeastPrivilege:
    """Proxies for one identity in front of the emulators named in `environ`
    (STORAGE_EMULATOR_HOST, BIGQUERY_EMULATOR_HOST and _GRPC_HOST, PUBSUB_EMULATOR_HOST),
    and a Dataflow API of its own (`dataflow`, at `dataflow_endpoint`).

    Args:
      identity: job, backfill, deployer or analyst (the launcher is the job's account).
      bindings: infra/'s resources as they are named here (see `Policy`).
      project: the emulators' project (`var.project_id` when not bound).
    """

    def __init__(self, identity: str, bindings: dict[str, str], project: str, environ=os.environ):
        self.policy = Policy(identity, {"var.project_id": f"projects/{project}", **bindings})
        self.denied: list[Denial] = []
        self._lock = threading.Lock()
        self.storage = HttpProxy(environ["STORAGE_EMULATOR_HOST"], rule=self._storage, record=False)
        self.bigquery = HttpProxy(
            environ["BIGQUERY_EMULATOR_HOST"], rule=self._bigquery, record=False
        )
        self._pubsub = _grpc_forwarder(environ["PUBSUB_EMULATOR_HOST"], self._grpc)
        self._pubsub_port = self._pubsub.add_insecure_port("127.0.0.1:0")
        self._bq_grpc = _grpc_forwarder(environ["BIGQUERY_EMULATOR_GRPC_HOST"], self._grpc)
        self._bq_grpc_port = self._bq_grpc.add_insecure_port("127.0.0.1:0")
        self.dataflow = _FakeDataflow(self._dataflow)
        self.env = {
            "STORAGE_EMULATOR_HOST": self.storage.url,
            "BIGQUERY_EMULATOR_HOST": self.bigquery.url,
            "BIGQUERY_EMULATOR_GRPC_HOST": f"127.0.0.1:{self._bq_grpc_port}",
            "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{self._pubsub_port}",
        }
        self.dataflow_endpoint = self.dataflow.url

    def _judge(self, checks: list[Check]) -> Denial | None:
        denial = self.policy.denial(checks)
        if denial:
            logging.getLogger(__name__).warning("403: %s", denial)
            with self._lock:
                self.denied.append(denial)
        return denial

    def _storage(self, request: Request):
        checks = storage_checks(
            request.method, request.path, request.query, request.body, self.storage.object_exists
        )
        denial = self._judge(checks)
        if denial is None:
            return None
        account = f"{self.policy.identity}@{self.policy.bindings['var.project_id'].split('/')[1]}"
        what = "object" if denial.check.resource_type == OBJECT_TYPE else "bucket"
        return gcs_error(
            403,
            f"{account}.iam.gserviceaccount.com does not have {denial.check.permission} "
            f"access to the Google Cloud Storage {what}. Permission "
            f"'{denial.check.permission}' denied on resource (or it may not exist).",
        )

    def _bigquery(self, request: Request):
        denial = self._judge(bigquery_checks(request.method, request.path, request.body))
        return _bigquery_error(denial) if denial else None

    def _grpc(self, method: str, data: bytes) -> str | None:
        checks = GRPC_CALLS.get(method, lambda _d: [Check(f"unknown gRPC call {method}", "")])(data)
        denial = self._judge(checks)
        if denial is None:
            return None
        if method.startswith("/google.pubsub."):  # Pub/Sub names no permission
            return "User not authorized to perform this action."
        return (
            f"Permission '{denial.check.permission}' denied on resource "
            f"'{denial.check.resource}' (or it may not exist)."
        )

    def _dataflow(self, method: str, path: str, body: bytes):
        denial = self._judge(dataflow_checks(method, path, body))
        if denial is None:
            return None
        message = (
            f"Permission '{denial.check.permission}' denied on project: '{denial.check.resource}'"
        )
        return 403, json.dumps(
            {"error": {"code": 403, "message": message, "status": "PERMISSION_DENIED"}}
        ).encode()

    def refused(self) -> list[str]:
        """The refusals that matter: all but `storage.buckets.get`, which
        google-cloud-storage (3.x) asks in the background to label its own telemetry
        (`_bucket_metadata_cache`) and does without when refused. (A path that needs the
        bucket's metadata, such as Beam's staging, fails on its own.)"""
        return [str(d) for d in self.denied if d.check.permission != "storage.buckets.get"]

    def start(self) -> LeastPrivilege:
        self.storage.start()
        self.bigquery.start()
        self._pubsub.start()
        self._bq_grpc.start()
        self.dataflow.start()
        return self

    def stop(self) -> None:
        self.storage.stop()
        self.bigquery.stop()
        self._pubsub.stop(None)
        self._bq_grpc.stop(None)
        self.dataflow.stop()

    @contextlib.contextmanager
    def running(self):
        self.start()
        try:
            yield self
        finally:
            self.stop()
