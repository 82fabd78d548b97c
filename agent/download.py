"""Verified, resumable HTTPS downloads into a content-addressed store (databases now, images later).

A file is named by what it must be: its SHA-256 and its size. `fetch` brings it into `dest` as
`dest/<sha256>`, or raises `DownloadError` saying why in words safe to report (never the URL's query:
a blob SAS token is a secret). What a vehicle's link needs:

* TLS always verified (the system's CAs, or `ca_file`); proxies from the environment
  (`HTTPS_PROXY`, `NO_PROXY`), as every HTTP client on the device honours them.
* Resume: bytes arrive in `dest/.partial/<sha256>`; the next attempt (after a dropped link, or after
  the process was killed) asks for the rest with an HTTP Range. A server that ignores the Range
  gets the file again from the start.
* Bounded: the declared size is capped (`max_bytes`), a server never writes past it, each read
  waits at most `timeout_s`, an attempt (connect, TLS, the response's headers and its body) ends
  after `deadline_s`, and attempts are capped with the agent's one backoff
  (`agent.liveness.backoff_delay`). `cancel` stops it at once, wherever it waits.
* Atomic: the complete file is checked (size, then SHA-256), fsynced and renamed; a file in the
  store is always whole and right.

HTTP is `requests` (urllib3 underneath): already in the agent's dependency tree (azure-iot-device
needs it), well kept, streaming with read timeouts, `verify=` a CA file and proxy settings from the
environment without code of ours. It is blocking: `fetch` runs in a worker thread (`fetch_async`),
so a download never holds the event loop that collects frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import hashlib
import io
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urljoin, urlsplit

import structlog
from pydantic import AfterValidator

if TYPE_CHECKING:  # requests (and urllib3) cost ~7 MB of RSS: imported at the first download, not at start
    import requests
    import requests.adapters

from agent.durable import sync_dir
from agent.liveness import backoff_delay

log = structlog.get_logger()

SHA256 = re.compile(r"^[0-9a-f]{64}\Z")   # \Z: `$` would let a trailing newline through
PARTIAL_DIR = ".partial"
CHUNK_BYTES = 64 * 1024
RETRY_AFTER_MAX_S = 300.0

ErrorKind = Literal["refused", "http", "network", "timeout", "size", "sha256", "space", "disk", "cancelled", "busy"]
# kinds worth another attempt: the link, the server's temporary state, another process holding the file
RETRYABLE: frozenset[str] = frozenset({"network", "timeout", "busy"})
# kinds about this device's disk (full, read-only, failing): not the file's fault, worth a later round
LOCAL: frozenset[str] = frozenset({"space", "disk"})

Progress = Callable[[int, int], None]   # (bytes present, bytes in all)


class DownloadError(Exception):
    """Why a file could not be fetched. `str()` is safe to log and report (no URL query)."""

    def __init__(self, kind: ErrorKind, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE or self.retry_after is not None


@dataclass(frozen=True, slots=True)
class FileSpec:
    """What the cloud says a file is: where to get it and what it must hash to."""

    url: str
    sha256: str
    size: int

    def problem(self, max_bytes: int) -> str | None:
        """Why this spec cannot be fetched at all, or None."""
        if why := https_url_problem(self.url):
            return f"url: {why}"
        if why := sha256_problem(self.sha256):
            return f"sha256: {why}"
        if not 0 < self.size <= max_bytes:
            return f"size: must be between 1 and {max_bytes} bytes"
        return None


# ------------------------------------------------------------------- what a remote document names
# The cloud's documents that name files (`databases`, `software_update`) check them with these, so a
# file is refused the same way, in the same words, wherever it is named.
MAX_URL_CHARS = 4096


def https_url_problem(url: str) -> str | None:
    """Why `url` cannot be fetched, or None. The words never repeat any part of the URL: its query may
    be a SAS token, its user info a password, and a connection string pasted here is a secret whole."""
    if len(url) > MAX_URL_CHARS:
        return f"must be an https:// URL of at most {MAX_URL_CHARS} characters"
    if " " in url or not url.isprintable():
        return "must be an https:// URL without spaces or control characters"
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port
    except ValueError:
        return "must be an https:// URL: its host or port cannot be read"
    if parts.scheme != "https":
        return "must be an https:// URL" + (", not http://" if parts.scheme == "http" else "")
    if not host:
        return "must be an https:// URL with a host name"
    return None


def sha256_problem(value: str) -> str | None:
    return None if SHA256.match(value) else "must be 64 lowercase hex digits"


def _refuse(problem: Callable[[str], str | None]) -> Callable[[str], str]:
    def check(value: str) -> str:
        if why := problem(value):
            raise ValueError(why)
        return value
    return check


HttpsUrl = Annotated[str, AfterValidator(_refuse(https_url_problem))]
"""A pydantic field: an https:// URL with a host; its refusals say why without repeating the URL."""
Sha256Hex = Annotated[str, AfterValidator(_refuse(sha256_problem))]
"""A pydantic field: a SHA-256 as 64 lowercase hex digits."""


@dataclass(frozen=True, slots=True)
class Policy:
    """How hard to try. `timeout_s` bounds connecting and each read; `deadline_s` one attempt."""

    max_bytes: int = 64 * 1024 * 1024
    ca_file: Path | None = None
    timeout_s: float = 30.0
    deadline_s: float = 600.0
    attempts: int = 5
    backoff_initial_s: float = 1.0
    backoff_cap_s: float = 60.0


def redact(url: str) -> str:
    """The URL as it may be logged or reported: scheme, host and path; no query, no user info."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparseable url>"
    return f"{parts.scheme}://{host}{port}{parts.path}"


# ------------------------------------------------------------------------------------------ headers
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:([0-9]{1,19})-([0-9]{1,19})|\*)\s*/\s*([0-9]{1,19}|\*)\s*$", re.IGNORECASE)


def parse_content_range(value: str) -> tuple[int | None, int | None, int | None]:
    """`Content-Range: bytes first-last/total` (RFC 9110 14.4) -> (first, last, total); None for a
    `*` part. Raises ValueError for anything else, or first > last, or last >= total."""
    m = _CONTENT_RANGE.match(value)
    if not m:
        raise ValueError("not a byte Content-Range")
    first = int(m[1]) if m[1] is not None else None
    last = int(m[2]) if m[2] is not None else None
    total = int(m[3]) if m[3] != "*" else None
    if first is not None and last is not None and first > last:
        raise ValueError("first byte after last byte")
    if last is not None and total is not None and last >= total:
        raise ValueError("last byte beyond the total")
    return first, last, total


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` in seconds (capped); an HTTP date or garbage gives None (the backoff decides)."""
    seconds = header_int(value)
    if seconds is None or seconds >= 10**12:
        return None
    return min(float(seconds), RETRY_AFTER_MAX_S)


def header_int(value: str | None) -> int | None:
    """A header's non-negative decimal number, or None. ASCII digits only: `str.isdigit` is true for
    '¹' and `int` refuses it, and a header's bytes come from the server (latin-1 decoded)."""
    text = (value or "").strip()
    return int(text) if 0 < len(text) <= 19 and text.isascii() and text.isdigit() else None


# ------------------------------------------------------------------------------------------ store
class ContentStore:
    """Files named by their SHA-256 in one folder; partial downloads beside them in `.partial/`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        return self.root / sha256

    def partial(self, sha256: str) -> Path:
        return self.root / PARTIAL_DIR / sha256

    def verified(self, sha256: str, size: int) -> Path | None:
        """The stored file when it is there, of `size` bytes and hashing to `sha256`; a damaged one is removed."""
        path = self.path(sha256)
        try:
            if path.stat().st_size == size and _sha256_of(path) == sha256:
                return path
        except FileNotFoundError:
            return None
        log.warning("download_store_damaged", sha256=sha256, action="removed; fetched again")
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return None

    def keep_only(self, keep: set[str]) -> list[str]:
        """Remove stored and partial files whose name is not in `keep`; returns the removed names."""
        removed: list[str] = []
        for folder in (self.root, self.root / PARTIAL_DIR):
            if not folder.is_dir():
                continue
            for entry in folder.iterdir():
                if entry.is_file() and SHA256.match(entry.name) and entry.name not in keep:
                    with contextlib.suppress(FileNotFoundError):
                        entry.unlink()
                        removed.append(entry.name)
        return removed


def _sha256_of(path: Path, upto: int | None = None) -> str:
    return _hasher_of(path, upto).hexdigest()


def _hasher_of(path: Path, upto: int | None = None) -> hashlib._Hash:
    h = hashlib.sha256()
    left = upto
    with path.open("rb") as f:
        while left is None or left > 0:
            chunk = f.read(CHUNK_BYTES if left is None else min(CHUNK_BYTES, left))
            if not chunk:
                break
            h.update(chunk)
            if left is not None:
                left -= len(chunk)
    return h


# ------------------------------------------------------------------------------------------ fetch
def fetch(spec: FileSpec, dest: Path, policy: Policy = Policy(), *, progress: Progress | None = None,
          cancel: threading.Event | None = None) -> Path:
    """`dest/<spec.sha256>`, downloaded and verified unless it is there already. Blocking.

    Raises DownloadError: `refused` (the spec itself), `size` / `sha256` (the server's file is not
    the one named: final), `http` (a status that will not change), `space` / `disk` (this device's
    disk failed a read or write: full, read-only, EIO), `cancelled`, or the last `network` /
    `timeout` / `busy` error once `policy.attempts` are spent.
    """
    try:
        return _fetch(spec, dest, policy, progress, cancel)
    except OSError as exc:   # our disk, never the server: a DownloadError like every other failure
        kind: ErrorKind = "space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "disk"
        raise DownloadError(kind, f"the download store's disk: {exc.strerror or type(exc).__name__}") from None


def _fetch(spec: FileSpec, dest: Path, policy: Policy, progress: Progress | None,
           cancel: threading.Event | None) -> Path:
    why = spec.problem(policy.max_bytes)
    if why:
        raise DownloadError("refused", why)
    store = ContentStore(dest)
    done = store.verified(spec.sha256, spec.size)
    if done is not None:
        return done
    cancel = cancel or threading.Event()
    failures = 0
    restarted = False
    while True:
        try:
            return _attempt(spec, store, policy, progress, cancel)
        except DownloadError as exc:
            if exc.kind == "sha256" and not restarted and store.partial(spec.sha256).exists():
                # the bytes kept from an earlier attempt may be what is wrong: once more from zero
                restarted = True
                _remove(store.partial(spec.sha256))
                log.warning("download_restarted", url=redact(spec.url), reason="sha256 mismatch after resume")
                continue
            _remove_if_final(exc, store, spec)
            failures += 1
            if not exc.retryable or failures >= policy.attempts:
                raise
            delay = exc.retry_after if exc.retry_after is not None else \
                backoff_delay(failures, policy.backoff_initial_s, policy.backoff_cap_s)
            log.info("download_retry", url=redact(spec.url), error=str(exc), attempt=failures,
                     delay_s=round(delay, 2))
            if cancel.wait(delay):
                raise DownloadError("cancelled", "cancelled") from None


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _remove_if_final(exc: DownloadError, store: ContentStore, spec: FileSpec) -> None:
    """A partial file of bytes that are known wrong is not kept for a resume."""
    if exc.kind in ("size", "sha256"):
        _remove(store.partial(spec.sha256))


def _attempt(spec: FileSpec, store: ContentStore, policy: Policy, progress: Progress | None,
             cancel: threading.Event) -> Path:
    partial = store.partial(spec.sha256)
    partial.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o600)
    with os.fdopen(fd, "r+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DownloadError("busy", f"{spec.sha256[:12]}: being downloaded by another process") from None
        have = os.fstat(f.fileno()).st_size
        if have > spec.size:
            f.truncate(0)
            have = 0
        if have < spec.size:
            free = shutil.disk_usage(partial.parent).free
            if free < spec.size - have:
                raise DownloadError("space", f"{spec.size - have} bytes needed, {free} free")
            have = _transfer(spec, f, have, policy, progress, cancel)
        if have != spec.size:
            raise DownloadError("size", f"size mismatch: got {have} bytes, expected {spec.size}")
        f.flush()
        os.fsync(f.fileno())
        got = _sha256_of(partial)
        if got != spec.sha256:
            raise DownloadError("sha256", f"sha256 mismatch: got {got[:16]}…, expected {spec.sha256[:16]}…")
        final = store.path(spec.sha256)
        os.replace(partial, final)   # under the lock: no other process appends to it meanwhile
    sync_dir(store.root)
    log.info("download_complete", url=redact(spec.url), sha256=spec.sha256, size=spec.size)
    return final


def _transfer(spec: FileSpec, f: io.BufferedRandom, have: int, policy: Policy,
              progress: Progress | None, cancel: threading.Event) -> int:
    """Append the rest of the file to `f` (open at `have` bytes); returns the bytes present after.

    One session (one connection pool) an attempt: every socket it opens is this attempt's, and the
    watchdog cuts them all, whether the attempt waits on connecting, on TLS, on the response's
    headers or on its body."""
    import requests
    import urllib3.exceptions
    from urllib3.exceptions import ReadTimeoutError

    headers = {"Accept-Encoding": "identity"}   # the bytes as stored: Range and sha256 are about those
    if have:
        headers["Range"] = f"bytes={have}-"
    started = time.monotonic()

    def stopped() -> None:
        """Cancelled or past the deadline (also why the watchdog may have cut the connection)."""
        if cancel.is_set():
            raise DownloadError("cancelled", "cancelled")
        if time.monotonic() - started > policy.deadline_s:
            f.flush()
            raise DownloadError("timeout", f"{redact(spec.url)}: not complete within {policy.deadline_s:g} s "
                                           f"({have} of {spec.size} bytes)")

    with _watched_attempt(cancel, started + policy.deadline_s), requests.Session() as session:
        session.mount("https://", _watched_adapter()())
        try:
            response = session.get(spec.url, headers=headers, stream=True, timeout=policy.timeout_s,
                                   verify=str(policy.ca_file) if policy.ca_file else True,
                                   hooks={"response": _https_redirects_only})
        except requests.exceptions.RequestException as exc:
            stopped()
            where = redact(spec.url)
            if isinstance(exc, requests.exceptions.SSLError):
                raise DownloadError("network", f"{where}: TLS verification failed") from None
            if isinstance(exc, requests.exceptions.Timeout):
                raise DownloadError("timeout", f"{where}: no answer within {policy.timeout_s:g} s") from None
            raise DownloadError("network", f"{where}: {type(exc).__name__}") from None
        with response:
            if urlsplit(response.url).scheme != "https":
                raise DownloadError("refused", f"{redact(spec.url)}: redirected to a URL that is not https")
            have = _position(response, spec, have, f)
            if progress is not None:
                progress(have, spec.size)
            try:
                # read1: what one read of the socket brings, so the bytes before a cut are kept for the resume
                while chunk := response.raw.read1(CHUNK_BYTES, decode_content=False):
                    if have + len(chunk) > spec.size:
                        raise DownloadError("size", f"size mismatch: the server sends more than {spec.size} bytes")
                    f.write(chunk)
                    have += len(chunk)
                    if progress is not None:
                        progress(have, spec.size)
                    stopped()
                if have < spec.size:
                    stopped()
            except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as exc:
                f.flush()
                stopped()
                timed_out = isinstance(exc, ReadTimeoutError) or (bool(exc.args) and isinstance(exc.args[0],
                                                                                               ReadTimeoutError))
                kind: ErrorKind = "timeout" if timed_out else "network"
                raise DownloadError(kind, f"{redact(spec.url)}: interrupted at {have} of {spec.size} bytes "
                                          f"({type(exc).__name__})") from None
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise DownloadError("space", "the disk is full") from None
                raise
            f.flush()
    if have < spec.size:   # the server ended the body early: the link, or a smaller file (retries tell)
        raise DownloadError("network", f"{redact(spec.url)}: ended at {have} of {spec.size} bytes")
    return have


def _https_redirects_only(response: requests.Response, *args: object, **kwargs: object) -> None:
    """requests' response hook, run on each response before its redirect is followed: a redirect to
    anything but https is refused there (checking only the final URL let requests make the plain
    request first, and let https -> http -> https through)."""
    if not response.is_redirect:
        return
    try:
        scheme = urlsplit(urljoin(response.url, response.headers.get("Location", ""))).scheme
    except ValueError:
        scheme = ""
    if scheme != "https":
        response.close()
        raise DownloadError("refused", f"{redact(response.url)}: redirected to a URL that is not https (not followed)")


class _Watch:
    """The sockets of one attempt, shut down once it is cancelled or past its deadline. A read waits
    for a whole chunk, and a server trickling a byte within every read timeout (its TLS handshake,
    its response's headers or its body) would hold it, the thread, and the agent's exit, which joins
    it, for as long as it liked; cut, the read ends at once.

    It keeps a duplicate of each socket's descriptor: TLS takes the socket's own descriptor over
    (the object urllib3 created is left closed), and a descriptor of our own cannot be closed and
    reused for another file under the watchdog. Shutting the duplicate down ends the connection
    for every descriptor of it; the duplicates are closed with the attempt."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []
        self.cut = False
        self.lock = threading.Lock()

    def add(self, sock: socket.socket) -> None:
        with self.lock:
            dup = sock.dup()
            self.sockets.append(dup)
            if not self.cut:
                return
        _shut(dup)   # opened after the cut: it ends as well

    def cut_all(self) -> None:
        with self.lock:
            self.cut = True
            for sock in self.sockets:
                _shut(sock)

    def close(self) -> None:
        with self.lock:
            for sock in self.sockets:
                sock.close()
            self.sockets.clear()


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)   # the connection, under TLS's back: a read waiting on it ends


_ATTEMPT = threading.local()   # .watch: the _Watch of the attempt this thread runs (sockets register there)


@contextlib.contextmanager
def _watched_attempt(cancel: threading.Event, until: float) -> Iterator[_Watch]:
    """A watchdog over every socket this thread opens meanwhile (see _watched_adapter): all are shut
    down once `cancel` is set or `until` (monotonic) passes."""
    watch = _Watch()
    done = threading.Event()

    def watchdog() -> None:
        while not done.wait(0.2):
            if cancel.is_set() or time.monotonic() > until:
                watch.cut_all()
                return

    _ATTEMPT.watch = watch
    threading.Thread(target=watchdog, name="download-watchdog", daemon=True).start()
    try:
        yield watch
    finally:
        done.set()
        _ATTEMPT.watch = None
        watch.close()


@functools.cache
def _watched_adapter() -> type[requests.adapters.HTTPAdapter]:
    """requests' HTTPS adapter whose connections register their socket with the running attempt's
    watch the moment it is created (before connecting through a proxy, TLS and the request), so the
    deadline covers the whole attempt. Built at the first download: requests is imported lazily."""
    import requests.adapters
    from urllib3.connection import HTTPSConnection
    from urllib3.connectionpool import HTTPSConnectionPool
    from urllib3.poolmanager import PoolManager

    class WatchedConnection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:   # urllib3's one place that creates the TCP socket
            sock = super()._new_conn()
            watch = getattr(_ATTEMPT, "watch", None)
            if watch is not None:
                watch.add(sock)
            return sock

    class WatchedPool(HTTPSConnectionPool):
        ConnectionCls = WatchedConnection

    def watched(manager: PoolManager) -> PoolManager:
        manager.pool_classes_by_scheme = {**manager.pool_classes_by_scheme, "https": WatchedPool}
        return manager

    class WatchedAdapter(requests.adapters.HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            watched(self.poolmanager)

        def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:   # HTTPS_PROXY: CONNECT tunnels
            return watched(super().proxy_manager_for(proxy, **kwargs))

    return WatchedAdapter


def _position(response: requests.Response, spec: FileSpec, have: int, f: io.BufferedRandom) -> int:
    """Where this response's body starts in the file; truncates `f` when the server sends it whole."""
    status = response.status_code
    where = redact(spec.url)
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if status in (200, 206) and encoding not in ("", "identity"):
        raise DownloadError("http", f"{where}: the server encoded the body (Content-Encoding: "
                                    f"{encoding[:40].encode('ascii', 'replace').decode()}) though asked for the "
                                    "bytes as stored (identity): sizes, ranges and the SHA-256 are about those")
    if status == 416 and have:  # our partial is beyond the server's file: start over
        f.truncate(0)
        raise DownloadError("network", f"{where}: range not satisfiable at {have} bytes; starting over")
    if status in (408, 429) or status >= 500:
        retry = parse_retry_after(response.headers.get("Retry-After"))
        raise DownloadError("network", f"{where}: HTTP {status}", retry_after=retry)
    if status == 206 and have:
        try:
            first, _, total = parse_content_range(response.headers.get("Content-Range", ""))
        except ValueError:
            first, total = None, None
        if first != have:
            f.truncate(0)
            raise DownloadError("network", f"{where}: the server answered another range; starting over")
        if total is not None and total != spec.size:
            raise DownloadError("size", f"size mismatch: the server's file has {total} bytes, expected {spec.size}")
        f.seek(have)
        return have
    if status == 200:
        length = header_int(response.headers.get("Content-Length"))
        if length is not None and length != spec.size:
            raise DownloadError("size", f"size mismatch: the server's file has {length} bytes, "
                                        f"expected {spec.size}")
        f.seek(0)
        f.truncate(0)
        return 0
    raise DownloadError("http", f"{where}: HTTP {status}")


# downloads wait on the network for minutes: their own threads, not the loop's default executor
_THREADS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="download")


async def fetch_async(spec: FileSpec, dest: Path, policy: Policy = Policy(), *,
                      progress: Progress | None = None, cancel: threading.Event | None = None) -> Path:
    """`fetch` in a worker thread: the event loop goes on. Cancelling the task cancels the download
    (between two chunks, or during a backoff wait); the thread ends soon after. Setting `cancel`
    instead ends it the same way and this returns once the thread has ended (DownloadError
    'cancelled'): the caller may then touch the partial file."""
    cancel = cancel or threading.Event()
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(_THREADS, lambda: fetch(spec, dest, policy, progress=progress,
                                                                  cancel=cancel))
    except asyncio.CancelledError:
        cancel.set()
        raise
