"""The verified, resumable downloader (agent/download.py) against a real HTTPS server with a test CA."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from agent.download import (
    PARTIAL_DIR,
    ContentStore,
    DownloadError,
    FileSpec,
    Policy,
    fetch,
    fetch_async,
    header_int,
    parse_content_range,
    parse_retry_after,
    redact,
)
from tests.conftest import ROOT, wait_for
from tests.https_server import ConnectProxy, HttpsServer

pytestmark = pytest.mark.remote_dbc

SECRET = "sv=2024&sig=SECRETSIGNATURE"
FAST = dict(timeout_s=5.0, deadline_s=30.0, attempts=3, backoff_initial_s=0.05, backoff_cap_s=0.2)


def blob(n: int, seed: int = 1) -> bytes:
    return (hashlib.sha256(str(seed).encode()).digest() * (n // 32 + 1))[:n]


def spec_of(server: HttpsServer, path: str, data: bytes) -> FileSpec:
    return FileSpec(server.url(f"{path}?{SECRET}"), hashlib.sha256(data).hexdigest(), len(data))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[HttpsServer]:
    with HttpsServer(tmp_path / "tls") as s:
        yield s


@pytest.fixture
def policy(server: HttpsServer) -> Policy:
    return Policy(ca_file=server.ca_file, **FAST)


def test_a_file_lands_under_its_sha256_verified(server: HttpsServer, policy: Policy, tmp_path: Path) -> None:
    data = blob(300_000)
    server.put("/db/a.dbc", data)
    seen: list[tuple[int, int]] = []
    path = fetch(spec_of(server, "/db/a.dbc", data), tmp_path / "store", policy,
                 progress=lambda have, total: seen.append((have, total)))
    assert path == tmp_path / "store" / hashlib.sha256(data).hexdigest()
    assert path.read_bytes() == data
    assert seen[-1] == (len(data), len(data))
    assert list((tmp_path / "store" / PARTIAL_DIR).iterdir()) == []
    assert [r.query for r in server.requests] == [SECRET]   # the query is sent (it is the SAS) ...
    again = fetch(spec_of(server, "/db/a.dbc", data), tmp_path / "store", policy)
    assert again == path and len(server.requests) == 1      # ... and a stored file is not fetched again


def test_wrong_sha256_is_refused_and_nothing_is_kept(server: HttpsServer, policy: Policy, tmp_path: Path) -> None:
    data = blob(50_000)
    server.put("/a.dbc", data)
    spec = FileSpec(server.url(f"/a.dbc?{SECRET}"), hashlib.sha256(b"other").hexdigest(), len(data))
    with pytest.raises(DownloadError) as err:
        fetch(spec, tmp_path / "store", policy)
    assert err.value.kind == "sha256" and not err.value.retryable
    assert "sha256 mismatch" in str(err.value)
    assert sorted(p.name for p in (tmp_path / "store").rglob("*") if p.is_file()) == []


@pytest.mark.parametrize("declared", [49_999, 50_001])
def test_wrong_size_is_refused_and_nothing_is_kept(server: HttpsServer, policy: Policy, tmp_path: Path,
                                                   declared: int) -> None:
    data = blob(50_000)
    server.put("/a.dbc", data)
    spec = FileSpec(server.url(f"/a.dbc?{SECRET}"), hashlib.sha256(data).hexdigest(), declared)
    with pytest.raises(DownloadError) as err:
        fetch(spec, tmp_path / "store", policy)
    assert err.value.kind == "size", str(err.value)
    assert "size mismatch" in str(err.value) and "50000" in str(err.value)
    assert len(server.requests) == 1   # final: not retried
    assert [p for p in (tmp_path / "store").rglob("*") if p.is_file()] == []


def test_a_cut_connection_resumes_with_a_range(server: HttpsServer, policy: Policy, tmp_path: Path) -> None:
    data = blob(400_000)
    server.put("/big.dbc", data)
    server.behave("/big.dbc", cut_after=150_000)
    path = fetch(spec_of(server, "/big.dbc", data), tmp_path / "store", policy)
    assert path.read_bytes() == data
    first, second = server.requests
    assert (first.status, first.range) == (200, None)
    assert second.status == 206 and second.range is not None
    resumed_at = int(second.range.removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= 150_000 and second.sent == len(data) - resumed_at


def test_a_server_that_ignores_the_range_sends_it_whole(server: HttpsServer, policy: Policy, tmp_path: Path) -> None:
    data = blob(200_000)
    server.put("/a.dbc", data)
    server.behave("/a.dbc", cut_after=70_000, ignore_range=True)
    assert fetch(spec_of(server, "/a.dbc", data), tmp_path / "store", policy).read_bytes() == data
    assert [r.status for r in server.requests] == [200, 200] and server.requests[1].range is not None


def test_a_kill_mid_download_resumes_where_the_disk_stopped(server: HttpsServer, policy: Policy,
                                                             tmp_path: Path) -> None:
    data = blob(2_000_000)
    server.put("/slow.dbc", data)
    server.behave("/slow.dbc", bytes_per_s=400_000)
    spec = spec_of(server, "/slow.dbc", data)
    store = tmp_path / "store"
    code = ("import sys; from pathlib import Path; from agent.download import FileSpec, Policy, fetch;"
            f"fetch(FileSpec({spec.url!r}, {spec.sha256!r}, {spec.size}), Path({str(store)!r}),"
            f" Policy(ca_file=Path({str(server.ca_file)!r})))")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    partial = ContentStore(store).partial(spec.sha256)
    try:
        wait_for(lambda: partial.exists() and partial.stat().st_size > 100_000, timeout=60, what="a partial file")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    kept = partial.stat().st_size
    assert 0 < kept < len(data)
    server.behave("/slow.dbc")   # full speed now
    assert fetch(spec, store, policy).read_bytes() == data
    assert server.requests[-1].range == f"bytes={kept}-" and server.requests[-1].status == 206
    assert server.requests[-1].sent == len(data) - kept


@pytest.mark.parametrize(("kept", "ranges"), [
    (b"\0" * 40_000, ["bytes=40000-", None]),  # damaged (a power loss after the size, before the data): again from 0
    (blob(100_000) + b"x", [None]),             # longer than the file: dropped
])
def test_a_wrong_partial_is_fetched_again_from_zero(server: HttpsServer, policy: Policy, tmp_path: Path,
                                                    kept: bytes, ranges: list[str | None]) -> None:
    data = blob(100_000)
    server.put("/a.dbc", data)
    spec = spec_of(server, "/a.dbc", data)
    partial = ContentStore(tmp_path / "store").partial(spec.sha256)
    partial.parent.mkdir(parents=True)
    partial.write_bytes(kept)
    assert fetch(spec, tmp_path / "store", policy).read_bytes() == data
    assert [r.range for r in server.requests] == ranges


def test_a_damaged_stored_file_is_replaced(server: HttpsServer, policy: Policy, tmp_path: Path) -> None:
    data = blob(10_000)
    server.put("/a.dbc", data)
    spec = spec_of(server, "/a.dbc", data)
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / spec.sha256).write_bytes(b"x" * len(data))
    assert fetch(spec, tmp_path / "store", policy).read_bytes() == data
    assert len(server.requests) == 1


def test_tls_is_verified(server: HttpsServer, tmp_path: Path) -> None:
    data = blob(1000)
    server.put("/a.dbc", data)
    with pytest.raises(DownloadError) as err:   # the test CA is not one the system trusts
        fetch(spec_of(server, "/a.dbc", data), tmp_path / "store", Policy(**{**FAST, "attempts": 1}))
    assert "TLS verification failed" in str(err.value)
    assert SECRET not in str(err.value) and "sig=" not in str(err.value)


def test_temporary_statuses_are_retried_and_final_ones_are_not(server: HttpsServer, policy: Policy,
                                                               tmp_path: Path) -> None:
    data = blob(1000)
    server.put("/a.dbc", data)
    server.behave("/a.dbc", statuses=[503, 429], retry_after="0")
    assert fetch(spec_of(server, "/a.dbc", data), tmp_path / "store", policy).read_bytes() == data
    assert [r.status for r in server.requests] == [503, 429, 200]
    with pytest.raises(DownloadError) as err:
        fetch(FileSpec(server.url(f"/missing.dbc?{SECRET}"), "0" * 64, 10), tmp_path / "store", policy)
    assert err.value.kind == "http" and "HTTP 404" in str(err.value) and "/missing.dbc" in str(err.value)
    assert SECRET not in str(err.value)
    assert len(server.requests) == 4   # the 404 once


def test_attempts_are_capped(server: HttpsServer, policy: Policy, tmp_path: Path) -> None:
    server.put("/a.dbc", blob(1000))
    server.behave("/a.dbc", statuses=[500] * 10)
    with pytest.raises(DownloadError) as err:
        fetch(spec_of(server, "/a.dbc", blob(1000)), tmp_path / "store", policy)
    assert err.value.kind == "network" and "HTTP 500" in str(err.value)
    assert len(server.requests) == policy.attempts


def test_the_size_cap_refuses_before_any_request(server: HttpsServer, tmp_path: Path) -> None:
    spec = FileSpec(server.url("/a.dbc"), "0" * 64, 2_000_000)
    with pytest.raises(DownloadError) as err:
        fetch(spec, tmp_path / "store", Policy(max_bytes=1_000_000, ca_file=server.ca_file))
    assert err.value.kind == "refused" and "1000000" in str(err.value)
    with pytest.raises(DownloadError, match="https"):
        fetch(FileSpec("http://127.0.0.1/a.dbc", "0" * 64, 10), tmp_path / "store")
    assert server.requests == []


def test_a_slow_server_meets_the_deadline(server: HttpsServer, tmp_path: Path) -> None:
    data = blob(1_000_000)
    server.put("/slow.dbc", data)
    server.behave("/slow.dbc", bytes_per_s=50_000)
    policy = Policy(ca_file=server.ca_file, timeout_s=5, deadline_s=0.5, attempts=2, backoff_initial_s=0.01)
    with pytest.raises(DownloadError) as err:
        fetch(spec_of(server, "/slow.dbc", data), tmp_path / "store", policy)
    assert err.value.kind == "timeout" and "not complete within 0.5 s" in str(err.value)
    assert server.requests[1].range is not None   # the second attempt went on from the first one's bytes


async def test_fetch_async_leaves_the_loop_free_and_cancels(server: HttpsServer, policy: Policy,
                                                            tmp_path: Path) -> None:
    data = blob(2_000_000)
    server.put("/slow.dbc", data)
    server.behave("/slow.dbc", bytes_per_s=200_000)
    task = asyncio.create_task(fetch_async(spec_of(server, "/slow.dbc", data), tmp_path / "store", policy))
    ticks = 0
    while not server.requests or server.requests[0].sent < 50_000:
        await asyncio.sleep(0.01)   # the loop turns while the download runs
        ticks += 1
    assert ticks > 3
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # the worker thread stops at its next chunk: the server sees the connection go
    await asyncio.to_thread(wait_for, lambda: not any(t.name.startswith("download") and t.is_alive()
                                                      and _busy(server) for t in threading.enumerate()),
                            timeout=20, what="the download thread to stop sending")
    assert server.requests[0].sent < len(data)


def _busy(server: HttpsServer) -> bool:
    before = server.requests[0].sent
    time.sleep(0.3)
    return server.requests[0].sent != before


def test_proxy_from_the_environment(server: HttpsServer, policy: Policy, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    data = blob(20_000)
    server.put("/a.dbc", data)
    with ConnectProxy() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        assert fetch(spec_of(server, "/a.dbc", data), tmp_path / "store", policy).read_bytes() == data
    assert proxy.targets == [f"127.0.0.1:{server.port}"]


def test_keep_only_removes_the_rest(tmp_path: Path) -> None:
    store = ContentStore(tmp_path)
    names = [hashlib.sha256(bytes([i])).hexdigest() for i in range(3)]
    for n in names:
        store.path(n).write_bytes(b"x")
    store.partial(names[2]).parent.mkdir()
    store.partial(names[2]).write_bytes(b"x")
    (tmp_path / "README").write_text("not ours")
    assert sorted(store.keep_only({names[0]})) == sorted([names[1], names[2], names[2]])
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == sorted(["README", names[0]])


# ------------------------------------------------------------------------------------------ parsers
@settings(max_examples=300, deadline=None)
@given(first=st.integers(0, 2**61), length=st.integers(1, 2**61), extra=st.integers(0, 2**61))
def test_content_range_round_trips(first: int, length: int, extra: int) -> None:
    last, total = first + length - 1, first + length + extra
    assert parse_content_range(f"bytes {first}-{last}/{total}") == (first, last, total)
    assert parse_content_range(f"bytes {first}-{last}/*") == (first, last, None)
    assert parse_content_range(f"bytes */{total}") == (None, None, total)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=60) | st.from_regex(r"bytes [0-9*]{0,25}-?[0-9]{0,25}/[0-9*]{0,25}", fullmatch=True))
def test_content_range_is_total(value: str) -> None:
    try:
        first, last, total = parse_content_range(value)
    except ValueError:
        return
    assert first is None or last is None or first <= last
    assert last is None or total is None or last < total


@settings(max_examples=300, deadline=None)
@given(st.none() | st.text(max_size=30) | st.integers(-10, 10**15).map(str))
@example("¹")
@example("٣")
@example(" 7 ")
def test_retry_after_is_bounded(value: str | None) -> None:
    got = parse_retry_after(value)
    assert got is None or 0 <= got <= 300
    if value is not None and value.strip().isascii() and value.strip().isdigit() and len(value.strip()) < 12:
        assert got == min(int(value.strip()), 300)   # str.strip also strips \x1c-\x1f, as header_int does


@pytest.mark.parametrize("value, number", [("12", 12), (" 0 ", 0), ("¹", None), ("٣", None), ("-1", None),
                                           ("1e3", None), ("", None), (None, None), ("9" * 20, None)])
def test_header_numbers_are_ascii_decimals(value: str | None, number: int | None) -> None:
    assert header_int(value) == number


@settings(max_examples=300, deadline=None)
@given(host=st.from_regex(r"[a-z0-9]{1,20}(\.[a-z0-9]{1,10}){0,3}", fullmatch=True),
       path=st.lists(st.from_regex(r"[A-Za-z0-9._~-]{1,12}", fullmatch=True), max_size=4),
       query=st.text(st.characters(blacklist_characters="#"), min_size=1, max_size=40),
       user=st.sampled_from(["", "user:pw@"]))
def test_redact_never_shows_the_query_or_credentials(host: str, path: list[str], query: str, user: str) -> None:
    secret = f"sig=S3CR3T{query}"
    url = f"https://{user}{host}/{'/'.join(path)}?{secret}"
    shown = redact(url)
    assert shown == f"https://{host}/{'/'.join(path)}"
    assert "S3CR3T" not in shown and "pw@" not in shown


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_redact_is_total(url: str) -> None:
    assert "?" not in redact(url)



def _fetch_in_thread(spec: FileSpec, dest: Path, policy: Policy,
                     cancel: threading.Event | None = None) -> tuple[threading.Thread, list[BaseException]]:
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            fetch(spec, dest, policy, cancel=cancel)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_a_trickling_server_meets_the_deadline(server: HttpsServer, tmp_path: Path) -> None:
    """A byte every few milliseconds never trips the read timeout; a read waits for a whole chunk.
    The deadline still ends the attempt (it used to wait for 64 KiB at 200 bytes/s: five minutes)."""
    data = blob(200_000)
    server.put("/trickle.dbc", data)
    server.behave("/trickle.dbc", bytes_per_s=200)
    policy = Policy(ca_file=server.ca_file, timeout_s=5, deadline_s=1, attempts=1)
    thread, outcome = _fetch_in_thread(spec_of(server, "/trickle.dbc", data), tmp_path / "store", policy)
    thread.join(60)
    assert not thread.is_alive(), "the download outlived its deadline by a minute"
    assert isinstance(outcome[0], DownloadError) and outcome[0].kind == "timeout"
    assert "not complete within 1 s" in str(outcome[0])


def _headers_trickled(server: HttpsServer, tmp_path: Path, policy: Policy,
                      cancel: threading.Event | None = None) -> tuple[threading.Thread, list[BaseException]]:
    """A fetch in a thread from a server that sends its response's headers a byte at a time."""
    data = blob(10_000)
    server.put("/slow-head.dbc", data)
    server.behave("/slow-head.dbc", header_bytes_per_s=20)
    return _fetch_in_thread(spec_of(server, "/slow-head.dbc", data), tmp_path / "store", policy, cancel)


def test_a_server_trickling_its_headers_meets_the_deadline(server: HttpsServer, tmp_path: Path) -> None:
    """The deadline covers the whole attempt: a server that sends its response's headers a byte at a
    time (each within the read timeout) held the attempt for as long as it liked, the watchdog only
    started once the headers were read."""
    policy = Policy(ca_file=server.ca_file, timeout_s=5, deadline_s=1, attempts=1)
    thread, outcome = _headers_trickled(server, tmp_path, policy)
    thread.join(60)   # a hang guard only: the attempt ends about a second in
    assert not thread.is_alive(), "the download outlived its deadline by a minute"
    assert isinstance(outcome[0], DownloadError) and outcome[0].kind == "timeout", outcome
    assert str(outcome[0]).startswith(f"{server.url('/slow-head.dbc')}: not complete within 1 s ("), outcome
    assert server.requests[0].status == 200, "the server was trickling, the client did get through"


def test_cancel_reaches_a_download_waiting_for_headers(server: HttpsServer, policy: Policy, tmp_path: Path) -> None:
    cancel = threading.Event()
    thread, outcome = _headers_trickled(server, tmp_path, policy, cancel)
    wait_for(lambda: server.requests, timeout=20, what="the request")
    cancel.set()
    thread.join(60)
    assert not thread.is_alive(), "a cancelled download went on waiting for headers"
    assert isinstance(outcome[0], DownloadError) and outcome[0].kind == "cancelled", outcome


def test_cancel_reaches_a_trickling_download(server: HttpsServer, policy: Policy, tmp_path: Path) -> None:
    data = blob(200_000)
    server.put("/trickle.dbc", data)
    server.behave("/trickle.dbc", bytes_per_s=200)
    cancel = threading.Event()
    thread, outcome = _fetch_in_thread(spec_of(server, "/trickle.dbc", data), tmp_path / "store", policy, cancel)
    wait_for(lambda: server.requests and server.requests[0].sent > 0, timeout=20, what="the body to start")
    cancel.set()
    thread.join(60)
    assert not thread.is_alive(), "a cancelled download went on reading"
    assert isinstance(outcome[0], DownloadError) and outcome[0].kind == "cancelled"


def test_a_compressed_body_is_refused_by_name(server: HttpsServer, policy: Policy, tmp_path: Path) -> None:
    """Asked for identity, a server sends gzip anyway (a blob with Content-Encoding set): its sizes and
    ranges are of the compressed bytes. Refused saying so, not as a size or hash mismatch."""
    data = blob(100_000)
    server.put("/a.dbc", data)
    server.behave("/a.dbc", gzip=True)
    with pytest.raises(DownloadError) as err:
        fetch(spec_of(server, "/a.dbc", data), tmp_path / "store", policy)
    assert err.value.kind == "http" and "Content-Encoding: gzip" in str(err.value)
    assert SECRET not in str(err.value)
    assert not (tmp_path / "store" / hashlib.sha256(data).hexdigest()).exists()


def test_a_read_only_disk_is_a_download_error(server: HttpsServer, policy: Policy, small_fs: Path) -> None:
    """The store's file system is read-only (as the store's own spill handles): a `disk` DownloadError,
    which the updater retries in a later round, not an OSError out of `fetch` (that ended the task)."""
    data = blob(10_000)
    server.put("/a.dbc", data)
    store = small_fs / "store"
    store.mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    try:
        with pytest.raises(DownloadError) as err:
            fetch(spec_of(server, "/a.dbc", data), store, policy)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)
    assert err.value.kind == "disk" and "Read-only file system" in str(err.value)
    assert server.requests == []


def test_a_redirect_to_plain_http_is_refused_before_it_is_followed(server: HttpsServer, policy: Policy,
                                                                  tmp_path: Path) -> None:
    """https -> http: refused at the redirect, so no plain request is made (the final URL alone was
    checked: requests had already asked the http host, and https -> http -> https got through)."""
    data = blob(1000)
    server.put("/a.dbc", data)
    with socket.create_server(("127.0.0.1", 0)) as plain:
        plain.setblocking(False)
        server.behave("/a.dbc", location=f"http://127.0.0.1:{plain.getsockname()[1]}/a.dbc")
        with pytest.raises(DownloadError) as err:
            fetch(spec_of(server, "/a.dbc", data), tmp_path / "store", policy)
        assert err.value.kind == "refused" and "not https" in str(err.value) and SECRET not in str(err.value)
        with pytest.raises(BlockingIOError):
            plain.accept()   # nobody connected to the plain host
    server.behave("/a.dbc", location=server.url("/b.dbc"))   # https -> https is followed
    server.put("/b.dbc", data)
    assert fetch(spec_of(server, "/a.dbc", data), tmp_path / "store", policy).read_bytes() == data
