"""A real HTTPS file server on loopback with its own test CA (and an HTTP CONNECT proxy), for the
downloader's tests: byte ranges, throttling, cut connections, wrong lengths, failing statuses.

    with HttpsServer(tmp_path) as server:
        server.put("/db/a.dbc", data)            # served with Range support
        server.behave("/db/a.dbc", cut_after=1000)  # the next response stops after 1000 body bytes
        fetch(FileSpec(server.url("/db/a.dbc?sig=secret"), ...), dest, Policy(ca_file=server.ca_file))
"""

from __future__ import annotations

import datetime
import gzip
import http.server
import ipaddress
import re
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def make_ca_and_server_cert(folder: Path, name: str = "test") -> tuple[Path, Path, Path]:
    """A CA and a server certificate for localhost / 127.0.0.1 signed by it: (ca.pem, cert.pem, key.pem)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"vehicle-agent {name} CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / f"{name}-ca.pem", folder / f"{name}-cert.pem", folder / f"{name}-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


@dataclass
class Behaviour:
    """How the next responses for a path misbehave (each field applies while it is set)."""

    cut_after: int | None = None       # close the connection after this many body bytes (once)
    bytes_per_s: float | None = None   # throttle the body
    ignore_range: bool = False         # answer 200 with the whole file to a Range request
    statuses: list[int] = field(default_factory=list)  # answer these statuses first, one a request
    retry_after: str | None = None
    content_length: int | None = None  # claim this Content-Length
    location: str | None = None        # answer 302 with this Location
    gzip: bool = False                 # send the file gzip-compressed (Content-Encoding: gzip), whatever was asked
    header_bytes_per_s: float | None = None  # trickle the response's headers (and never end them)


@dataclass
class Request:
    path: str
    query: str
    range: str | None
    status: int = 0
    sent: int = 0


class HttpsServer:
    """A threaded HTTPS server over files put in memory; `requests` lists what it was asked."""

    def __init__(self, folder: Path) -> None:
        self.ca_file, cert, key = make_ca_and_server_cert(folder)
        self.files: dict[str, bytes] = {}
        self.behaviour: dict[str, Behaviour] = {}
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                server._serve(self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> HttpsServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def put(self, path: str, data: bytes) -> None:
        with self.lock:
            self.files[path] = data

    def behave(self, path: str, **kwargs: Any) -> Behaviour:
        with self.lock:
            b = self.behaviour[path] = Behaviour(**kwargs)
        return b

    def _serve(self, h: http.server.BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        req = Request(parts.path, parts.query, h.headers.get("Range"))
        with self.lock:
            self.requests.append(req)
            data = self.files.get(parts.path)
            b = self.behaviour.get(parts.path) or Behaviour()
            status = b.statuses.pop(0) if b.statuses else None
            cut, b.cut_after = b.cut_after, None
        if b.header_bytes_per_s is not None:
            self._trickle_headers(h, req, b.header_bytes_per_s)
            return
        if b.location is not None:
            req.status = 302
            h.send_response(302)
            h.send_header("Location", b.location)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        if data is None or status is not None:
            req.status = status or 404
            h.send_response(req.status)
            if b.retry_after is not None:
                h.send_header("Retry-After", b.retry_after)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        if b.gzip:
            data = gzip.compress(data)
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", req.range or "")
        if m and not b.ignore_range:
            start = int(m[1])
            if start >= len(data):
                req.status = 416
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(data)}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            req.status = 206
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            req.status = 200
            h.send_response(200)
        body = data[start:]
        h.send_header("Content-Length", str(b.content_length if b.content_length is not None else len(body)))
        h.send_header("Accept-Ranges", "bytes")
        if b.gzip:
            h.send_header("Content-Encoding", "gzip")
        h.end_headers()
        limit = len(body) if cut is None else min(cut, len(body))
        step = 16 * 1024 if b.bytes_per_s is None else max(1, int(b.bytes_per_s / 20))
        try:
            while req.sent < limit and not self.stopping.is_set():
                n = min(step, limit - req.sent)
                h.wfile.write(body[req.sent:req.sent + n])
                h.wfile.flush()
                req.sent += n
                if b.bytes_per_s is not None:
                    time.sleep(n / b.bytes_per_s)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            pass
        if cut is not None:
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)


    def _trickle_headers(self, h: http.server.BaseHTTPRequestHandler, req: Request, rate: float) -> None:
        """A status line and then one endless header, a byte at a time: each byte within any read
        timeout, the headers never complete. Until the client goes away or the server stops."""
        req.status = 200
        head = b"HTTP/1.1 200 OK\r\nX-Slow: "
        try:
            for i in range(10**9):
                if self.stopping.is_set():
                    break
                h.wfile.write(head[i:i + 1] if i < len(head) else b"a")
                h.wfile.flush()
                time.sleep(1 / rate)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            pass
        h.close_connection = True


class ConnectProxy:
    """An HTTP CONNECT proxy on loopback that tunnels bytes and records the targets asked for."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> ConnectProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._tunnel, args=(client,), daemon=True).start()

    def _tunnel(self, client: socket.socket) -> None:
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(4096)
                if not chunk:
                    return
                head += chunk
            target = head.split(b" ")[1].decode()
            self.targets.append(target)
            host, port = target.rsplit(":", 1)
            with socket.create_connection((host, int(port))) as upstream:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                pair = {client: upstream, upstream: client}
                while True:
                    ready, _, _ = select.select(list(pair), [], [], 30)
                    if not ready:
                        return
                    for s in ready:
                        data = s.recv(65536)
                        if not data:
                            return
                        pair[s].sendall(data)
