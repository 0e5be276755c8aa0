"""A proxy in front of bqemulator that refuses what BigQuery refuses.

bqemulator accepts a streaming insert of any size; BigQuery does not (quotas page,
"Streaming inserts": HTTP request size limit 10 MB, at most 50,000 rows per request).
Above those limits the proxy answers as BigQuery does, a 400 with BigQuery's error
body, and forwards everything else unchanged. `tests/run.sh` starts it and points
`BIGQUERY_EMULATOR_HOST` at it, so every integration test (and every job they start)
talks to BigQuery through it.

`GET /strict/stats` answers what it has seen since it started or since the last
`POST /strict/mark`: insert requests, the largest one in bytes and rows, how many it
refused, and the bytes and rows of those it forwarded.

    python -m tools.strict_bigquery --target http://127.0.0.1:9050 --port-file F
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
    def __init__(self):
        self._lock = threading.Lock()
        self.inserts = self.refused = self.max_bytes = self.max_rows = 0
        self.total_bytes = self.total_rows = 0

    def seen(self, size: int, rows: int, refused: bool) -> None:
        with self._lock:
            self.inserts += 1
            self.refused += refused
            self.max_bytes, self.max_rows = max(self.max_bytes, size), max(self.max_rows, rows)
            if not refused:
                self.total_bytes += size
                self.total_rows += rows

    def as_dict(self) -> dict:
        with self._lock:
            return {
                "insert_requests": self.inserts,
                "refused": self.refused,
                "max_insert_bytes": self.max_bytes,
                "max_insert_rows": self.max_rows,
                "insert_bytes": self.total_bytes,
                "insert_rows": self.total_rows,
            }

    def mark(self) -> None:
        with self._lock:
            self.inserts = self.refused = self.max_bytes = self.max_rows = 0
            self.total_bytes = self.total_rows = 0

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="bqemulator's REST URL")
    parser.add_argument("--port-file", required=True, help="where to write the chosen port")
    args = parser.parse_args()
    stats = Stats()
    proxy = HttpProxy(args.target, rule=lambda r: insert_limits(r, stats), record=False)
    with open(args.port_file, "w") as f:
        f.write(str(proxy.port))
    print(f"strict BigQuery proxy on {proxy.url} -> {args.target}", flush=True)
    proxy.serve()


if __name__ == "__main__":
    main()
