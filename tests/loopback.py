"""A loopback HTTP file server for the download tests: Range requests, dropped connections, 404s.

    with LoopbackServer() as srv:
        srv.files["/a.tar.gz"] = data
        srv.drops["/a.tar.gz"] = [1000]     # the next request sends 1000 bytes, then hangs up
        srv.no_length.add("/a.tar.gz")      # no Content-Length: the body ends when the connection closes
        srv.refusals["/a.tar.gz"] = 2       # after the path's first request, the next two answer 404
        srv.hold["/a.tar.gz"] = threading.Event()  # answers wait until the test sets it
        url = srv.url("/a.tar.gz")

The server runs in a thread of the test process; child processes (`python -m repro ...`) reach it too.
"""

from __future__ import annotations

import hashlib
import io
import re
import socket
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LoopbackServer:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.drops: dict[str, list[int]] = {}
        self.ignore_range: set[str] = set()
        self.no_length: set[str] = set()
        self.refusals: dict[str, int] = {}
        self.hold: dict[str, threading.Event] = {}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                if self.path in server.hold:
                    server.hold[self.path].wait(timeout=300)
                data = server.files.get(self.path)
                served = sum(1 for p, _ in server.requests if p == self.path)
                if server.refusals.get(self.path) and served > 1:  # the first request is answered
                    server.refusals[self.path] -= 1
                    data = None
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = 0
                m = re.match(r"bytes=(\d+)-$", rng or "")
                if m and self.path not in server.ignore_range:
                    start = int(m.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                if self.path in server.no_length:
                    self.send_header("Connection", "close")
                else:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                drops = server.drops.get(self.path)
                cut = drops.pop(0) if drops else None
                self.wfile.write(body if cut is None else body[:cut])
                if cut is not None or self.path in server.no_length:
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def dead_url(path: str = "/dead") -> str:
    """A URL on a local port where nothing listens (connection refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}{path}"


def make_tar_gz(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    """A tar.gz with regular files (and symlinks name -> target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buf.getvalue()


def make_zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
