"""An HTTP forwarder in front of fake-gcs-server that records every request and can
answer some of them itself.

fake-gcs-server grants everything; a real bucket does not. The proxy plays the parts
of Cloud Storage the emulator lacks, as a real service answering on the wire: a
`rule` sees each request and may answer it with an error status (a 403 for an object
the job may not read, a 403 for an overwrite under `roles/storage.objectCreator`);
everything else goes to fake-gcs-server unchanged. `requests` lists what the clients
sent, so a test can count attempts or check a precondition parameter.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import http.server
import json
import re
import threading
import urllib.parse
from collections.abc import Callable

_OBJECT_PATH = re.compile(r"/b/([^/]+)/o/([^?]+)")
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "content-length",
}


@dataclasses.dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: bytes

    @property
    def bucket_and_object(self) -> tuple[str | None, str | None]:
        """(bucket, object name) the request is about, from the path (reads, metadata)
        or from the upload's query or JSON metadata (creates)."""
        m = _OBJECT_PATH.search(self.path.split("?", 1)[0])
        if m:
            return urllib.parse.unquote(m.group(1)), urllib.parse.unquote(m.group(2))
        m = re.search(r"/upload/storage/v1/b/([^/]+)/o", self.path)
        if not m:
            return None, None
        bucket = urllib.parse.unquote(m.group(1))
        if "name" in self.query:
            return bucket, self.query["name"]
        found = re.search(rb'"name"\s*:\s*("(?:[^"\\]|\\.)*")', self.body)
        return bucket, json.loads(found.group(1)) if found else None

    @property
    def is_upload_start(self) -> bool:
        """The request that creates an object (a multipart upload or the start of a
        resumable one; the resumable session's data PUTs carry `upload_id`)."""
        return (
            self.method == "POST"
            and self.path.startswith("/upload/")
            and "upload_id" not in self.query
        )


def gcs_error(status: int, message: str) -> tuple[int, bytes]:
    """An error body shaped like Cloud Storage's JSON API errors."""
    reason = {403: "forbidden", 412: "conditionNotMet"}.get(status, "error")
    return status, json.dumps(
        {
            "error": {
                "code": status,
                "message": message,
                "errors": [{"message": message, "domain": "global", "reason": reason}],
            }
        }
    ).encode()


class HttpProxy:
    """Forwards http://127.0.0.1:<port>/... to `target` (e.g. http://127.0.0.1:4443)."""

    def __init__(
        self,
        target: str,
        rule: Callable[[Request], tuple[int, bytes] | None] | None = None,
        record: bool = True,
        port: int = 0,
        turn: Callable[[], contextlib.AbstractContextManager] | None = None,
    ):
        parsed = urllib.parse.urlparse(target)
        self._target = (parsed.hostname, parsed.port)
        self.rule = rule
        self.record = record  # a long-lived proxy keeps no request bodies
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        # Entered around each forwarded request when given (`strict_bigquery.Turns`).
        self._turn = turn or contextlib.nullcontext
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
                request = Request(self.command, self.path, query, body)
                if proxy.record:
                    with proxy._lock:
                        proxy.requests.append(request)
                answer = proxy.rule(request) if proxy.rule else None
                if answer is not None:
                    status, payload = answer
                    self._reply(status, [("Content-Type", "application/json")], payload)
                    return
                status, headers, payload = proxy.forward(
                    self.command, self.path, dict(self.headers), body
                )
                self._reply(status, headers, payload)

            def _reply(self, status, headers, payload):
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in _HOP_BY_HOP:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def forward(self, method: str, path: str, headers: dict, body: bytes):
        """Sends one request to the real service: (status, headers, body)."""
        conn = http.client.HTTPConnection(*self._target, timeout=120)
        with self._turn():
            return self._forward(conn, method, path, headers, body)

    def _forward(self, conn, method: str, path: str, headers: dict, body: bytes):
        try:
            headers = {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP}
            # The emulator writes its own address into URLs it returns (resumable
            # session locations): keep the client talking to the proxy.
            conn.request(method, path, body=body or None, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            target = f"{self._target[0]}:{self._target[1]}".encode()
            mine = f"127.0.0.1:{self.port}".encode()
            out_headers = [
                (k, v.replace(target.decode(), mine.decode())) for k, v in resp.getheaders()
            ]
            return (
                resp.status,
                out_headers,
                payload.replace(target, mine)
                if b"application/json" in (resp.getheader("Content-Type") or "").encode()
                else payload,
            )
        finally:
            conn.close()

    def object_exists(self, bucket: str, name: str) -> bool:
        status, _, _ = self.forward(
            "GET",
            f"/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o/"
            f"{urllib.parse.quote(name, safe='')}",
            {},
            b"",
        )
        return status == 200

    def uploads(self, name_prefix: str = "") -> list[Request]:
        """The object-creating requests seen so far for names under `name_prefix`."""
        with self._lock:
            seen = list(self.requests)
        return [
            r
            for r in seen
            if r.is_upload_start and (r.bucket_and_object[1] or "").startswith(name_prefix)
        ]

    def serve(self) -> None:
        """Serves on this thread until the process ends (a proxy of its own process)."""
        self._server.serve_forever()

    def start(self) -> HttpProxy:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def object_creator_rule(proxy: HttpProxy) -> Callable[[Request], tuple[int, bytes] | None]:
    """`roles/storage.objectCreator`: creating an object is allowed, replacing one is
    not (403). A create with `ifGenerationMatch=0` goes through: the service answers
    412 itself if the object exists."""

    def rule(request: Request):
        if not request.is_upload_start or request.query.get("ifGenerationMatch") == "0":
            return None
        bucket, name = request.bucket_and_object
        if bucket and name and proxy.object_exists(bucket, name):
            return gcs_error(
                403,
                f"caller does not have storage.objects.delete access "
                f"to the Google Cloud Storage object {bucket}/{name}",
            )
        return None

    return rule
