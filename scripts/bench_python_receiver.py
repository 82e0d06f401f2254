#!/usr/bin/env python3
"""The receiver a user might write instead of dsevents, for scripts/bench.

Python's standard library only: http.server's ThreadingHTTPServer speaking
HTTP/1.1 with keep-alive, and sqlite3 in WAL mode with synchronous=FULL.
Each POST /hooks/{kind} parses the JSON body, inserts the raw body with its
kind, time and dsid, and commits before responding 200, so it makes the same
durability promise as dsevents but without group commit or per-kind tables.

Usage: bench_python_receiver.py DATABASE [ADDR] [TOKEN]
ADDR defaults to 127.0.0.1:0; an empty TOKEN accepts every delivery. The
script prints "python_receiver listening on http://HOST:PORT" once bound.
"""

import datetime
import json
import sqlite3
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id          INTEGER PRIMARY KEY,
    received_at TEXT NOT NULL,
    kind        TEXT NOT NULL,
    dsid        TEXT,
    body        BLOB NOT NULL
)
"""


class Store:
    """One connection shared by all handler threads, behind a lock."""

    def __init__(self, path):
        self.lock = threading.Lock()
        self.connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.connection.execute("PRAGMA journal_mode = WAL")
        self.connection.execute("PRAGMA synchronous = FULL")
        self.connection.execute(SCHEMA)

    def insert(self, kind, dsid, body):
        received_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
        with self.lock:
            self.connection.execute("BEGIN IMMEDIATE")
            try:
                cursor = self.connection.execute(
                    "INSERT INTO deliveries (received_at, kind, dsid, body) VALUES (?, ?, ?, ?)",
                    (received_at, kind, dsid, body),
                )
                self.connection.execute("COMMIT")
            except sqlite3.Error:
                self.connection.execute("ROLLBACK")
                raise
            return cursor.lastrowid


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # http.server sends the head and the body in separate writes. With
    # Nagle's algorithm on, the body then waits for the client's delayed
    # ACK (40 ms on Linux), which would make this a benchmark of that.
    disable_nagle_algorithm = True
    store = None
    token = ""

    def do_POST(self):
        url = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        if not url.path.startswith("/hooks/"):
            return self.answer(404, {"error": "not found"})
        if self.token and urllib.parse.parse_qs(url.query).get("token") != [self.token]:
            return self.answer(401, {"error": "missing or invalid token"})
        kind = url.path[len("/hooks/"):]
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        dsid = None
        if isinstance(parsed, dict):
            dsid = parsed.get("dsid") or parsed.get("dsId")
        try:
            delivery_id = self.store.insert(kind, dsid, body)
        except sqlite3.Error as error:
            return self.answer(503, {"error": f"store unavailable: {error}"})
        self.answer(200, {"id": delivery_id, "kind": kind})

    def answer(self, status, document):
        data = (json.dumps(document) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        # One line per request on stderr would cost more than the insert.
        pass


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: bench_python_receiver.py DATABASE [ADDR] [TOKEN]")
    host, _, port = (sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1:0").rpartition(":")
    Handler.store = Store(sys.argv[1])
    Handler.token = sys.argv[3] if len(sys.argv) > 3 else ""
    # The default listen backlog of 5 makes a burst of connections wait
    # for SYN retries; a larger one keeps the comparison about requests.
    ThreadingHTTPServer.request_queue_size = 128
    server = ThreadingHTTPServer((host, int(port)), Handler)
    server.daemon_threads = True
    bound_host, bound_port = server.server_address[:2]
    print(f"python_receiver listening on http://{bound_host}:{bound_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
