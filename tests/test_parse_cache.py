"""Parses kept between starts (issue 19: a production car's databases take about a second to parse):
the kept parse decodes exactly as a fresh one, a changed file is parsed again, and a kept file that is
damaged or that others could have written is never trusted."""

from __future__ import annotations

import hashlib
import os
import pickle
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.decode.cache import _DIGEST_BYTES, _VERSIONS, ParseCache
from agent.decode.database import database_warnings, load_database, load_databases, use_parse_cache
from tests.conftest import DATA


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[ParseCache]:
    kept = use_parse_cache(tmp_path / "cache")
    assert kept is not None
    try:
        yield kept
    finally:
        use_parse_cache(None)


def _copy(source: Path, folder: Path) -> Path:
    """The same bytes under another path (the in-memory cache is by path: this reaches the disk cache)."""
    folder.mkdir(parents=True)
    return Path(shutil.copy(source, folder / source.name))


def _decodes(db, frames: list[tuple[int, bytes]]) -> list:  # noqa: ANN001 - a cantools Database
    out = []
    for fid, data in frames:
        try:
            out.append(sorted((k, v, type(v).__name__) for k, v in db.decode_message(fid, data, decode_choices=False).items()))
        except Exception as exc:  # noqa: BLE001 - cantools' refusals must match too
            out.append(repr(exc))
    return out


def test_a_kept_parse_decodes_every_message_exactly_as_a_fresh_parse(tmp_path: Path, cache: ParseCache) -> None:
    first = _copy(DATA / "oem_sloppy.dbc", tmp_path / "a")  # lenient: overlaps, 64-bit, floats, mux, FD
    load_databases([first], strict=False)
    assert (cache.hits, cache.misses) == (0, 1) and list((tmp_path / "cache").glob("*.pickle"))
    second = _copy(DATA / "oem_sloppy.dbc", tmp_path / "b")
    kept = load_databases([second], strict=False)
    assert (cache.hits, cache.misses) == (1, 1)
    assert database_warnings(second) == database_warnings(first) != []  # the complaints come with it
    fresh = load_database(DATA / "oem_sloppy.dbc", strict=False)
    rng = random.Random(19)
    frames = [(m.frame_id, rng.randbytes(m.length)) for m in fresh.messages for _ in range(3)]
    assert _decodes(kept, frames) == _decodes(fresh, frames)
    assert [(m.name, m.cycle_time, m.is_fd, [(s.name, dict(s.choices or {})) for s in m.signals])
            for m in kept.messages] == [(m.name, m.cycle_time, m.is_fd, [(s.name, dict(s.choices or {})) for s in m.signals])
                                        for m in fresh.messages]


def test_a_changed_file_or_another_strictness_is_parsed_again(tmp_path: Path, cache: ParseCache) -> None:
    path = _copy(DATA / "edge.dbc", tmp_path / "a")
    load_databases([path])
    load_databases([path], strict=False)
    path.write_text(path.read_text().replace("BO_ ", "BO_  ", 1))  # same database, other bytes
    db = load_databases([path])
    assert (cache.hits, cache.misses) == (0, 3) and len(db.messages) > 0


def test_a_damaged_or_foreign_kept_file_is_parsed_instead(tmp_path: Path, cache: ParseCache) -> None:
    load_databases([_copy(DATA / "edge.dbc", tmp_path / "a")])
    (kept,) = (tmp_path / "cache").glob("*.pickle")
    kept.write_bytes(b"\x80\x05garbage")
    with capture_logs() as logs:
        db = load_databases([_copy(DATA / "edge.dbc", tmp_path / "b")])
    assert (cache.hits, cache.misses) == (0, 2) and len(db.messages) > 0
    (unreadable,) = [e for e in logs if e["event"] == "parse_cache_unreadable"]
    assert unreadable == {"event": "parse_cache_unreadable", "log_level": "info", "file": str(kept),
                          "error": "ValueError('digest mismatch: the file is damaged')", "action": "parsing the database"}
    os.chmod(kept, 0o666)  # rewritten by the parse above; now anyone could have planted it
    with capture_logs() as logs:
        db = load_databases([_copy(DATA / "edge.dbc", tmp_path / "c")])
    assert cache.hits == 0 and len(db.messages) > 0
    assert [e for e in logs if e["event"] == "parse_cache_ignored"] == [
        {"event": "parse_cache_ignored", "log_level": "warning", "file": str(kept),
         "reason": "not owned by this user or writable by others"}]
    assert kept.stat().st_mode & 0o022 == 0, "the parse wrote a private file again"
    load_databases([_copy(DATA / "edge.dbc", tmp_path / "d")])
    assert cache.hits == 1
    misses = cache.misses
    shapes = [(_VERSIONS, "not a database", []), ("another version", db, []), (_VERSIONS, db), [_VERSIONS, db, []]]
    for i, shape in enumerate(shapes):
        body = pickle.dumps(shape, protocol=5)  # a whole, undamaged file of another shape: parsed instead
        kept.write_bytes(hashlib.blake2b(body, digest_size=_DIGEST_BYTES).digest() + body)
        assert len(load_databases([_copy(DATA / "edge.dbc", tmp_path / f"s{i}")]).messages) > 0
    assert (cache.hits, cache.misses) == (1, misses + 4)


def test_a_kept_file_with_one_flipped_bit_is_parsed_again(tmp_path: Path, cache: ParseCache) -> None:
    """A bit flipped on the flash may still unpickle (a float in place): the digest catches it."""
    fresh = load_databases([_copy(DATA / "edge.dbc", tmp_path / "a")])
    (kept,) = (tmp_path / "cache").glob("*.pickle")
    good = kept.read_bytes()
    frames = [(m.frame_id, bytes(random.Random(m.frame_id).randrange(256) for _ in range(m.length)))
              for m in fresh.messages]
    for position in range(40, len(good), max(1, len(good) // 60)):  # bits flipped all over the pickle
        damaged = bytearray(good)
        damaged[position] ^= 0x10
        kept.write_bytes(bytes(damaged))
        hits = cache.hits
        db = load_databases([_copy(DATA / "edge.dbc", tmp_path / f"p{position}")])
        assert cache.hits == hits, f"a damaged kept parse was used (bit flipped at byte {position})"
        assert _decodes(db, frames) == _decodes(fresh, frames)
