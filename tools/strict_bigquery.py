"""A proxy in front of bqemulator that refuses what BigQuery refuses.

bqemulator accepts a streaming insert of any size; BigQuery does not (quotas page,
"Streaming inserts": HTTP request size limit 10 MB, at most 50,000 rows per request).
Above those limits the proxy answers as BigQuery does, a 400 with BigQuery's error
body, and forwards everything else unchanged. It also fronts the emulator's gRPC port
(the Storage Write API): an AppendRows request over 10 MB (quotas page, "Storage Write
API": request size), or one without the `x-goog-request-params` routing header the
service requires, ends its connection with INVALID_ARGUMENT; every other call passes
through as bytes. A gRPC call never meets a REST call at the emulator
(`StrictBigQuery`), and each AppendRows request goes as a call of its own (the job
sends its writer schema with every request). `tests/run.sh` starts it and points
`BIGQUERY_EMULATOR_HOST` and `BIGQUERY_EMULATOR_GRPC_HOST` at it, so every integration
test (and every job they start) talks to BigQuery through it; the benchmarks start it
in-process.

`GET /strict/stats` answers what it has seen since it started or since the last
`POST /strict/mark`: insert and append requests, the largest of each in bytes and rows,
how many it refused, and the bytes and rows of those it forwarded.

Two opt-in behaviours, off until a test turns them on at run time (they change nothing
for anyone else):

- `POST /strict/hold` with `{"contains": TEXT, "count": N, "max_secs": S}` holds the
  next N query requests whose body contains TEXT before they reach the emulator, until
  `POST /strict/release` or S seconds. BigQuery takes a second or more to answer a query
  and the emulator milliseconds: a hold widens that gap on purpose, so a test can change
  the world between a reader's two looks at it. `GET /strict/hold` answers how many are
  held now (`holding`) and have been (`held`).
- `POST /strict/columns` with `{"table": "P.D.T"}`: AppendRows requests to that table
  whose writer schema names a column the table lacks are refused with INVALID_ARGUMENT,
  as BigQuery refuses them ("Input schema has more fields than BigQuery schema");
  bqemulator takes them and drops the values. The table's columns are those a query of
  it returns (bqemulator's ALTER TABLE changes those, not the table's metadata).

    python -m tools.strict_bigquery --target http://127.0.0.1:9050 --port-file F \
        --grpc-target 127.0.0.1:9060 --grpc-port-file G
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import threading

from tools.http_proxy import HttpProxy, Request

MAX_REQUEST_BYTES = 10 * 1024 * 1024  # 10485760, as BigQuery's error message says
MAX_REQUEST_ROWS = 50_000
STATS_PATH = "/strict/stats"
MARK_PATH = "/strict/mark"
HOLD_PATH = "/strict/hold"
RELEASE_PATH = "/strict/release"
COLUMNS_PATH = "/strict/columns"
_QUERY = re.compile(r"/bigquery/v2/projects/[^/]+/(?:jobs|queries)$")
_INSERT_ALL = re.compile(r"/bigquery/v2/projects/[^/]+/datasets/[^/]+/tables/[^/]+/insertAll")


def bigquery_error(
    status: int, message: str, reason: str = "badRequest", state: str = "INVALID_ARGUMENT"
) -> tuple[int, bytes]:
    """An error body shaped like BigQuery's REST errors."""
    return status, json.dumps(
        {
            "error": {
                "code": status,
                "message": message,
                "errors": [{"message": message, "domain": "global", "reason": reason}],
                "status": state,
            }
        }
    ).encode()


class Stats:
    """Requests seen per kind (`insert`, `append`): count, largest, forwarded totals."""

    KINDS = ("insert", "append")

    def __init__(self):
        self._lock = threading.Lock()
        self.mark()

    def seen(self, size: int, rows: int, refused: bool, kind: str = "insert") -> None:
        with self._lock:
            c = self._counts[kind]
            c["requests"] += 1
            self.refused += refused
            c["max_bytes"], c["max_rows"] = max(c["max_bytes"], size), max(c["max_rows"], rows)
            if not refused:
                c["bytes"] += size
                c["rows"] += rows

    def as_dict(self) -> dict:
        with self._lock:
            out = {"refused": self.refused}
            for kind, c in self._counts.items():
                out.update(
                    {
                        f"{kind}_requests": c["requests"],
                        f"max_{kind}_bytes": c["max_bytes"],
                        f"max_{kind}_rows": c["max_rows"],
                        f"{kind}_bytes": c["bytes"],
                        f"{kind}_rows": c["rows"],
                    }
                )
            return out

    def mark(self) -> None:
        with self._lock:
            self.refused = 0
            self._counts = {
                k: dict.fromkeys(("requests", "max_bytes", "max_rows", "bytes", "rows"), 0)
                for k in self.KINDS
            }

    def as_json(self) -> bytes:
        return json.dumps(self.as_dict()).encode()


def insert_limits(request: Request, stats: Stats) -> tuple[int, bytes] | None:
    """BigQuery's answer to an insertAll over its request limits, else None."""
    if request.method == "GET" and request.path.split("?", 1)[0] == STATS_PATH:
        return 200, stats.as_json()
    if request.method == "POST" and request.path.split("?", 1)[0] == MARK_PATH:
        stats.mark()
        return 200, stats.as_json()
    if request.method != "POST" or not _INSERT_ALL.search(request.path.split("?", 1)[0]):
        return None
    size = len(request.body)
    if size > MAX_REQUEST_BYTES:
        stats.seen(size, 0, True)
        return bigquery_error(
            400, f"Request payload size exceeds the limit: {MAX_REQUEST_BYTES} bytes."
        )
    try:
        rows = len(json.loads(request.body).get("rows") or [])
    except ValueError:
        rows = 0
    if rows > MAX_REQUEST_ROWS:
        stats.seen(size, rows, True)
        return bigquery_error(
            400,
            f"too many rows present in the request, limit: {MAX_REQUEST_ROWS} row count: {rows}.",
            reason="invalid",
        )
    stats.seen(size, rows, False)
    return None


class QueryHolds:
    """Query requests held before they are forwarded (`HOLD_PATH`), for tests only:
    nothing is held until `arm`, and only the next `count` queries whose body contains
    `contains`. A held query waits until `release` or `max_secs`."""

    def __init__(self):
        self._cond = threading.Condition()
        self._contains, self._left, self._max_secs = "", 0, 0.0
        self._holding = self._held = 0
        self._generation = 0  # bumped by release: wakes the queries held before it

    def arm(self, contains: str, count: int = 1, max_secs: float = 60.0) -> None:
        with self._cond:
            self._contains, self._left, self._max_secs = contains, count, max_secs
            self._held = 0

    def release(self) -> None:
        with self._cond:
            self._left = 0
            self._generation += 1
            self._cond.notify_all()

    def hold(self, request: Request) -> None:
        """Blocks while `request` is a query to hold (returns at once otherwise)."""
        if request.method != "POST" or not _QUERY.search(request.path.split("?", 1)[0]):
            return
        with self._cond:
            if self._left <= 0 or self._contains.encode() not in request.body:
                return
            self._left -= 1
            self._holding += 1
            self._held += 1
            generation = self._generation
            self._cond.wait_for(lambda: self._generation != generation, timeout=self._max_secs)
            self._holding -= 1

    def as_json(self) -> bytes:
        with self._cond:
            return json.dumps(
                {"holding": self._holding, "held": self._held, "armed": self._left}
            ).encode()

    def control(self, request: Request) -> tuple[int, bytes] | None:
        """The answer to a request on `HOLD_PATH` or `RELEASE_PATH`, else None."""
        path = request.path.split("?", 1)[0]
        if path == HOLD_PATH and request.method == "POST":
            spec = json.loads(request.body or b"{}")
            self.arm(spec["contains"], int(spec.get("count", 1)), float(spec.get("max_secs", 60)))
        elif path == RELEASE_PATH and request.method == "POST":
            self.release()
        elif path != HOLD_PATH:
            return None
        return 200, self.as_json()


class CheckedColumns:
    """The tables whose appends are checked against their columns (`COLUMNS_PATH`): an
    AppendRows request whose writer schema names a column the table lacks is refused,
    as BigQuery refuses it. The columns are read from bqemulator at each append (a
    query of the table, in a REST turn), so a column added meanwhile counts at once."""

    def __init__(self, target: str, turn=None):
        import urllib.parse

        parsed = urllib.parse.urlparse(target)
        self._target = (parsed.hostname, parsed.port)
        self._turn = turn or contextlib.nullcontext
        self._lock = threading.Lock()
        self._tables: set[str] = set()

    def control(self, request: Request) -> tuple[int, bytes] | None:
        if request.path.split("?", 1)[0] != COLUMNS_PATH or request.method != "POST":
            return None
        table = json.loads(request.body)["table"].replace(":", ".", 1)
        with self._lock:
            self._tables.add(table)
        return 200, json.dumps({"checked": sorted(self._tables)}).encode()

    def problem(self, data: bytes) -> str | None:
        """BigQuery's refusal of one AppendRows request (its bytes) for a writer schema
        with a column the table lacks, else None."""
        with self._lock:
            if not self._tables:
                return None
        from google.cloud.bigquery_storage_v1 import types

        request = types.AppendRowsRequest.deserialize(data)
        m = re.match(r"projects/([^/]+)/datasets/([^/]+)/tables/([^/]+)", request.write_stream)
        table = ".".join(m.groups()) if m else ""
        with self._lock:
            if table not in self._tables:
                return None
        fields = request.proto_rows.writer_schema.proto_descriptor.field
        if not fields:
            return None
        have = self.columns(table)
        extra = [f.name for f in fields if f.name not in have]
        if not have or not extra:  # no such table: the emulator answers for itself
            return None
        return (
            "Input schema has more fields than BigQuery schema, extra fields: "
            f"'{','.join(extra)}' Entity: {request.write_stream}"
        )

    def columns(self, table: str) -> set[str]:
        import http.client

        body = json.dumps({"query": f"SELECT * FROM `{table}` LIMIT 0", "useLegacySql": False})
        conn = http.client.HTTPConnection(*self._target, timeout=60)
        try:
            with self._turn():
                conn.request(
                    "POST",
                    f"/bigquery/v2/projects/{table.split('.')[0]}/queries",
                    body=body,
                    headers={"Content-Type": "application/json"},
                )
                answer = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        return {f["name"] for f in answer.get("schema", {}).get("fields", [])}


APPEND_ROWS = "/google.cloud.bigquery.storage.v1.BigQueryWrite/AppendRows"
# Calls of the Storage APIs that stream; every other method is unary.
_STREAMING = {
    APPEND_ROWS: "stream_stream",
    "/google.cloud.bigquery.storage.v1.BigQueryRead/ReadRows": "unary_stream",
}
_MAX_MESSAGE = 64 * 1024 * 1024  # the proxy must see a request over the limit to judge it


def append_limits(data: bytes, metadata, stats: Stats) -> str | None:
    """The Write API's refusal of one AppendRows request (its bytes), else None."""
    from google.cloud.bigquery_storage_v1 import types

    routing = "&".join(v for k, v in metadata or () if k == "x-goog-request-params")
    if "write_stream=" not in routing:
        stats.seen(len(data), 0, True, "append")
        return "AppendRows needs the x-goog-request-params header naming its write_stream"
    if len(data) > MAX_REQUEST_BYTES:
        stats.seen(len(data), 0, True, "append")
        return f"AppendRows request too large: {len(data)} limit {MAX_REQUEST_BYTES}"
    request = types.AppendRowsRequest.deserialize(data)
    stats.seen(len(data), len(request.proto_rows.rows.serialized_rows), False, "append")
    return None


def grpc_proxy(target: str, stats: Stats, deny=None, turn=None, columns=None):
    """A gRPC server (not started) that forwards every call to `target` as bytes, and
    ends an AppendRows connection with INVALID_ARGUMENT at a request `append_limits` (or
    `columns`, a `CheckedColumns`) refuses (the responses to the requests before it are
    delivered first). `deny`, a function of the method's path, answers
    `(grpc.StatusCode, message)` for a call to refuse whole (a permission the caller
    lacks), None to forward it. `turn()` is entered around each forwarded call
    (`Turns.alone`, see `StrictBigQuery`)."""
    import contextlib
    from concurrent import futures

    import grpc

    one = turn or contextlib.nullcontext

    size = [("grpc.max_send_message_length", _MAX_MESSAGE)]
    size.append(("grpc.max_receive_message_length", _MAX_MESSAGE))
    channel = grpc.insecure_channel(target, options=size)

    def fail(context, error: grpc.RpcError):
        context.abort(error.code(), error.details() or "")

    class Forward(grpc.GenericRpcHandler):
        def service(self, details):
            method, metadata = details.method, details.invocation_metadata
            kind = _STREAMING.get(method, "unary_unary")
            refusal = deny(method) if deny else None
            if refusal:
                handler = getattr(grpc, f"{kind}_rpc_method_handler")
                return handler(lambda _request, context: context.abort(*refusal))
            call = getattr(channel, kind)(method)
            if kind == "stream_stream":
                return grpc.stream_stream_rpc_method_handler(
                    lambda requests, context: appends(call, requests, metadata, context)
                )
            if kind == "unary_stream":

                def stream(request, context):
                    try:
                        with one():
                            answers = list(call(request, metadata=metadata, timeout=120))
                    except grpc.RpcError as e:
                        fail(context, e)
                    yield from answers

                return grpc.unary_stream_rpc_method_handler(stream)

            def unary(request, context):
                try:
                    with one():
                        return call(request, metadata=metadata, timeout=120)
                except grpc.RpcError as e:
                    fail(context, e)

            return grpc.unary_unary_rpc_method_handler(unary)

    def appends(call, requests, metadata, context):
        # Each request goes on as a call of its own, whole: bqemulator serves AppendRows
        # on a small thread pool, and a stream left open by a client that was killed
        # mid-append (or timed out) would hold one of its threads for good.
        for data in requests:
            problem = append_limits(data, metadata, stats)
            if not problem and columns is not None:
                problem = columns.problem(data)
            if problem:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
            try:
                with one():
                    answers = list(call(iter([data]), metadata=metadata, timeout=120))
            except grpc.RpcError as e:
                fail(context, e)
            yield from answers

    server = grpc.server(futures.ThreadPoolExecutor(32), options=size)
    server.add_generic_rpc_handlers((Forward(),))
    return server


class Turns:
    """REST calls together, each gRPC call alone: a gRPC call waits until no REST call
    is in flight, and REST calls that arrive while one waits wait behind it."""

    def __init__(self):
        self._cond = threading.Condition()
        self._rest = self._waiting = 0
        self._grpc = False

    @contextlib.contextmanager
    def together(self):
        with self._cond:
            self._cond.wait_for(lambda: not self._grpc and not self._waiting)
            self._rest += 1
        try:
            yield
        finally:
            with self._cond:
                self._rest -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def alone(self):
        with self._cond:
            self._waiting += 1
            self._cond.wait_for(lambda: not self._grpc and not self._rest)
            self._waiting -= 1
            self._grpc = True
        try:
            yield
        finally:
            with self._cond:
                self._grpc = False
                self._cond.notify_all()


class StrictBigQuery:
    """Both proxies in this process, in front of bqemulator's REST `target` and gRPC
    `grpc_target`, sharing one `Stats` and one `Turns`: bqemulator 1.4.0 answers REST
    calls and Storage API calls on different threads over one DuckDB connection, and a
    query that meets an append there can deadlock the whole emulator; through the
    proxies a gRPC call never meets a REST call.

    `env` names the proxies for a client (`BIGQUERY_EMULATOR_HOST`,
    `BIGQUERY_EMULATOR_GRPC_HOST`)."""

    def __init__(self, target: str, grpc_target: str, rule=None, deny=None):
        self.stats = Stats()
        self.holds = QueryHolds()
        turns = Turns()
        self.columns = CheckedColumns(target, turn=turns.together)

        def strict(request):
            answer = (
                self.holds.control(request)
                or self.columns.control(request)
                or insert_limits(request, self.stats)
                or (rule(request) if rule else None)
            )
            if answer is None:
                self.holds.hold(request)  # before its turn: a held query holds up no one
            return answer

        self.rest = HttpProxy(target, rule=strict, record=False, turn=turns.together)
        self._grpc = grpc_proxy(
            grpc_target, self.stats, deny, turn=turns.alone, columns=self.columns
        )
        self.grpc_port = self._grpc.add_insecure_port("127.0.0.1:0")
        self.env = {
            "BIGQUERY_EMULATOR_HOST": self.rest.url,
            "BIGQUERY_EMULATOR_GRPC_HOST": f"127.0.0.1:{self.grpc_port}",
        }

    def start(self) -> StrictBigQuery:
        self._grpc.start()
        self.rest.start()
        return self

    def stop(self) -> None:
        self.rest.stop()
        self._grpc.stop(None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="bqemulator's REST URL")
    parser.add_argument("--port-file", required=True, help="where to write the chosen port")
    parser.add_argument("--grpc-target", required=True, help="bqemulator's gRPC host:port")
    parser.add_argument("--grpc-port-file", required=True, help="where to write that port")
    args = parser.parse_args()
    both = StrictBigQuery(args.target, args.grpc_target)
    both._grpc.start()
    with open(args.grpc_port_file, "w") as f:
        f.write(str(both.grpc_port))
    print(f"strict BigQuery gRPC proxy on {both.env['BIGQUERY_EMULATOR_GRPC_HOST']}")
    with open(args.port_file, "w") as f:
        f.write(str(both.rest.port))
    print(f"strict BigQuery proxy on {both.rest.url} -> {args.target}", flush=True)
    both.rest.serve()


if __name__ == "__main__":
    main()
