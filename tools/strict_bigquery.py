"""A proxy in front of bqemulator that refuses what BigQuery refuses.

bqemulator accepts a streaming insert of any size; BigQuery does not (quotas page,
"Streaming inserts": HTTP request size limit 10 MB, at most 50,000 rows per request).
Above those limits the proxy answers as BigQuery does, a 400 with BigQuery's error
body, and forwards everything else unchanged. With `--grpc-target` it also fronts the
emulator's gRPC port (the Storage Write API): an AppendRows request over 10 MB
(quotas page, "Storage Write API": request size) or one without the
`x-goog-request-params` routing header the service requires ends its connection with
INVALID_ARGUMENT; every other call passes through as bytes. `tests/run.sh` starts it and
points `BIGQUERY_EMULATOR_HOST` (and `BIGQUERY_EMULATOR_GRPC_HOST`) at it, so every
integration test (and every job they start) talks to BigQuery through it.

`GET /strict/stats` answers what it has seen since it started or since the last
`POST /strict/mark`: insert and append requests, the largest of each in bytes and rows,
how many it refused, and the bytes and rows of those it forwarded.

    python -m tools.strict_bigquery --target http://127.0.0.1:9050 --port-file F \
        [--grpc-target 127.0.0.1:9060 --grpc-port-file G]
"""

from __future__ import annotations

import argparse
import json
import re
import threading

from tools.http_proxy import HttpProxy, Request

MAX_REQUEST_BYTES = 10 * 1024 * 1024  # 10485760, as BigQuery's error message says
MAX_REQUEST_ROWS = 50_000
STATS_PATH = "/strict/stats"
MARK_PATH = "/strict/mark"
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


def grpc_proxy(target: str, stats: Stats, deny=None):
    """A gRPC server (not started) that forwards every call to `target` as bytes, and
    ends an AppendRows connection with INVALID_ARGUMENT at a request `append_limits`
    refuses (the responses to the requests before it are delivered first). `deny`, a
    function of the method's path, answers `(grpc.StatusCode, message)` for a call to
    refuse whole (a permission the caller lacks), None to forward it."""
    from concurrent import futures

    import grpc

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
                        yield from call(request, metadata=metadata)
                    except grpc.RpcError as e:
                        fail(context, e)

                return grpc.unary_stream_rpc_method_handler(stream)

            def unary(request, context):
                try:
                    return call(request, metadata=metadata)
                except grpc.RpcError as e:
                    fail(context, e)

            return grpc.unary_unary_rpc_method_handler(unary)

    def appends(call, requests, metadata, context):
        refusal = []

        def checked():
            for data in requests:
                problem = append_limits(data, metadata, stats)
                if problem:
                    refusal.append(problem)
                    return
                yield data

        try:
            yield from call(checked(), metadata=metadata)
        except grpc.RpcError as e:
            fail(context, e)
        if refusal:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, refusal[0])

    server = grpc.server(futures.ThreadPoolExecutor(32), options=size)
    server.add_generic_rpc_handlers((Forward(),))
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="bqemulator's REST URL")
    parser.add_argument("--port-file", required=True, help="where to write the chosen port")
    parser.add_argument("--grpc-target", help="bqemulator's gRPC host:port (Write API)")
    parser.add_argument("--grpc-port-file", help="where to write the gRPC port")
    args = parser.parse_args()
    stats = Stats()
    proxy = HttpProxy(args.target, rule=lambda r: insert_limits(r, stats), record=False)
    if args.grpc_target:
        server = grpc_proxy(args.grpc_target, stats)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        with open(args.grpc_port_file, "w") as f:
            f.write(str(port))
        print(f"strict BigQuery gRPC proxy on 127.0.0.1:{port} -> {args.grpc_target}")
    with open(args.port_file, "w") as f:
        f.write(str(proxy.port))
    print(f"strict BigQuery proxy on {proxy.url} -> {args.target}", flush=True)
    proxy.serve()


if __name__ == "__main__":
    main()
