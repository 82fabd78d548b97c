"""The software update's remote document, install window, signatures and persisted state, alone
(the agent end to end is tests/test_ota.py)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.hashes import SHA256
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agent.config import ConfigError, build_config
from agent.ota.model import SoftwareUpdate
from agent.ota.state import StateFile, UpdateState
from agent.ota.updater import in_window
from agent.ota.verify import VerifyError, check_signature, load_keys, statement, verify_image

pytestmark = pytest.mark.ota

GOOD: dict[str, Any] = {"id": "u-1", "version": "2.0", "url": "https://example.invalid/a.bin", "sha256": "a" * 64,
                        "size": 10, "signature": base64.b64encode(b"s" * 64).decode()}


@pytest.mark.parametrize(("field", "value", "why"), [
    ("id", "../x", "letters, digits"),
    ("url", "http://example.invalid/a.bin", "https://"),
    ("sha256", "A" * 64, "lowercase hex"),
    ("size", 0, "greater than 0"),
    ("signature", "not base64!", "not base64"),
    ("guard", "Speed == ", "syntax error"),
    ("guard", "__import__('os')", "unknown function '__import__'"),
    ("install_window", "25:00-03:00", "HH:MM-HH:MM"),
    ("install_window", "02:00-02:00", "the same time"),
    ("backend", "apt", "rauc"),
    ("reboot", "later", "now"),
])
def test_a_bad_field_is_refused_with_its_reason(field: str, value: Any, why: str) -> None:
    with pytest.raises(ValidationError) as err:
        SoftwareUpdate.model_validate({**GOOD, field: value})
    assert why in str(err.value)


def test_disabled_updates_refuse_the_property(edge_dbc: Path) -> None:
    with pytest.raises(ConfigError) as err:
        build_config({"buses": [{"name": "a", "databases": [str(edge_dbc)]}], "ota": {"enabled": False}, "software_update": GOOD})
    assert "software updates are disabled on this device" in str(err.value)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from([*GOOD, "guard", "install_window", "backend", "reboot", "cancel", "x"]),
                       st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=80),
                                 st.floats(allow_nan=True), st.lists(st.integers(), max_size=3))))
def test_any_document_is_a_valid_update_or_a_validation_error(doc: dict[str, Any]) -> None:
    """The remote document is total: a model, or pydantic's error (which names the field)."""
    try:
        SoftwareUpdate.model_validate({**GOOD, **doc})
    except ValidationError as exc:
        assert exc.errors()


@pytest.mark.parametrize(("window", "hhmm", "inside"), [
    ("01:00-05:00", "00:59", False), ("01:00-05:00", "01:00", True), ("01:00-05:00", "04:59", True),
    ("01:00-05:00", "05:00", False), ("22:00-03:00", "23:30", True), ("22:00-03:00", "02:59", True),
    ("22:00-03:00", "03:00", False), ("22:00-03:00", "21:59", False), (None, "12:00", True),
])
def test_install_window_in_local_time(window: str | None, hhmm: str, inside: bool) -> None:
    h, m = map(int, hhmm.split(":"))
    assert in_window(window, datetime(2026, 11, 29, h, m, 30)) is inside


def _pem(key: Any) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_ed25519_and_ecdsa_signatures(tmp_path: Path) -> None:
    ed, ecd = ed25519.Ed25519PrivateKey.generate(), ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "ed.pem").write_bytes(_pem(ed))
    (tmp_path / "ec.pem").write_bytes(_pem(ecd))
    keys = load_keys([tmp_path / "ed.pem", tmp_path / "ec.pem"])
    image = tmp_path / "img"
    image.write_bytes(b"firmware")
    digest = hashlib.sha256(b"firmware").hexdigest()
    msg = statement("2.0", digest, 8)
    for sig in (ed.sign(msg), ecd.sign(msg, ec.ECDSA(SHA256()))):
        verify_image(image, version="2.0", sha256=digest, size=8, signature=sig, keys=keys)
    with pytest.raises(VerifyError, match="signature verification failed"):  # signed for another version
        check_signature(keys, ed.sign(statement("2.1", digest, 8)), version="2.0", sha256=digest, size=8)
    image.write_bytes(b"firmwarX")
    with pytest.raises(VerifyError, match="sha256 mismatch"):
        verify_image(image, version="2.0", sha256=digest, size=8, signature=ed.sign(msg), keys=keys)
    image.write_bytes(b"firmware!")
    with pytest.raises(VerifyError, match="size mismatch"):
        verify_image(image, version="2.0", sha256=digest, size=8, signature=ed.sign(msg), keys=keys)
    with pytest.raises(VerifyError, match="no trusted public keys"):
        check_signature([], ed.sign(msg), version="2.0", sha256=digest, size=8)


def test_a_key_of_another_kind_is_refused_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "rsa.pem").write_bytes(_pem(rsa.generate_private_key(65537, 2048)))
    with pytest.raises(VerifyError, match=r"rsa.pem: .*RSAPublicKey keys are not accepted"):
        load_keys([tmp_path / "rsa.pem"])
    (tmp_path / "junk.pem").write_text("-----BEGIN PUBLIC KEY-----\nxx\n")
    with pytest.raises(VerifyError, match="junk.pem: not a PEM public key"):
        load_keys([tmp_path / "junk.pem"])


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=8)
FIELDS = [f.name for f in dataclasses.fields(UpdateState)]
SAVED = st.dictionaries(st.sampled_from(FIELDS), JSON | st.sampled_from(["installing", "rebooting", "installed_pending_reboot", "idle", "failed", "u-1", 150])
                        | st.just({"u-0": "succeeded"}), max_size=6)
AFTER_INSTALL_BEGAN = ("installing", "installed_pending_reboot", "rebooting")


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=200).map(str.encode) | JSON.map(json.dumps).map(str.encode)
       | SAVED.map(json.dumps).map(str.encode))   # json: also NaN and numbers beyond 64 bits
def test_any_state_file_loads_as_a_valid_state_or_is_set_aside(tmp_path_factory: pytest.TempPathFactory,
                                                               raw: bytes) -> None:
    folder = tmp_path_factory.mktemp("ota")
    (folder / "state.json").write_bytes(raw)
    f = StateFile(folder, 1.0)
    state = f.load()
    again = StateFile(folder, 1.0)
    assert again.load() == state and again.damaged == 0     # what is on disk now is a valid state
    if f.damaged:
        assert (folder / "state.damaged").read_bytes() == raw
        assert state.state in ("idle", "failed") and state.progress_percent == 0
        try:
            saved = orjson.loads(raw)
        except orjson.JSONDecodeError:
            saved = None
        said = saved if isinstance(saved, dict) else {}
        if said.get("state") not in ("idle", "downloading", "verifying", "waiting_guard"):
            # it may have been installing: its update never installs again, or the next one is held
            update_id = said.get("id")
            assert (isinstance(update_id, str) and update_id in state.done) or f.unknown
    else:
        assert not (folder / "state.damaged").exists()
        assert dataclasses.asdict(state) == {**dataclasses.asdict(UpdateState()), **orjson.loads(raw)}
    for name in ("id", "version", "backend", "sha256", "error", "waiting_for", "installed_version", "booted_slot"):
        assert isinstance(getattr(state, name), (str, type(None))), name
    assert all(type(getattr(state, n)) is int and getattr(state, n) >= 0 for n in ("bytes", "size", "progress_percent"))
    assert state.progress_percent <= 100 and type(state.changed) in (int, float) and math.isfinite(state.changed)
    assert all(v in ("succeeded", "failed", "rolled_back") for v in state.done.values())


def test_a_state_file_that_is_a_directory_is_moved_aside(tmp_path: Path) -> None:
    (tmp_path / "state.json").mkdir()
    f = StateFile(tmp_path, 1.0)
    assert (f.load().state, f.damaged, f.unknown) == ("idle", 1, True)   # it names no update
    assert (tmp_path / "state.damaged").is_dir()
    f.to("downloading")
    assert (StateFile(tmp_path, 1.0).load().state, f.write_errors) == ("downloading", 0)


def test_a_damaged_state_that_was_installing_never_installs_that_id_again(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_bytes(orjson.dumps({"id": "u-9", "state": "installing", "progress_percent": 101}))
    f = StateFile(tmp_path, 1.0)
    state = f.load()
    assert (state.id, state.state, state.done, f.damaged) == ("u-9", "failed", {"u-9": "failed"}, 1)
    assert "whether the install ran is unknown" in (state.error or "")


def test_state_survives_a_restart_and_remembers_finished_ids(tmp_path: Path) -> None:
    f = StateFile(tmp_path, 1.0)
    f.load()
    f.state.id = "u-7"
    f.to("downloading", version="2.0")
    f.progress(50, 200)
    f.to("failed", error="cancelled from the cloud")
    again = StateFile(tmp_path, 1.0).load()
    assert (again.id, again.state, again.error, again.done) == ("u-7", "failed", "cancelled from the cloud",
                                                                {"u-7": "failed"})
    (tmp_path / "state.json").write_text('{"state": "nonsense"}')
    assert StateFile(tmp_path, 1.0).load().state == "idle"
    assert (tmp_path / "state.damaged").exists()


def test_an_install_window_is_two_local_times_or_a_refusal_saying_how() -> None:
    from datetime import time as dtime

    from agent.ota.model import install_window

    assert install_window("01:30-05:45") == (dtime(1, 30), dtime(5, 45))
    assert install_window("23:10-00:05") == (dtime(23, 10), dtime(0, 5)), "across midnight"
    for bad in ("1:30-05:45", "01:30-24:00", "01:60-02:00", "01:30-05:45\n", "01:30 - 05:45"):
        with pytest.raises(ValueError) as err:
            install_window(bad)
        assert str(err.value) == "expected HH:MM-HH:MM in local time, e.g. 01:00-05:00", bad
    with pytest.raises(ValueError) as err:
        install_window("02:00-02:00")
    assert str(err.value) == "start and end are the same time (leave install_window out for any time)"


def test_a_signature_is_base64_of_either_alphabet_padded_or_not() -> None:
    from agent.ota.model import MAX_SIGNATURE_BYTES, signature_bytes

    raw = bytes(range(256)) * 2
    standard = base64.b64encode(raw).decode()
    assert "+" in standard and "/" in standard
    assert signature_bytes(standard) == raw
    assert signature_bytes(base64.urlsafe_b64encode(raw).decode()) == raw, "URL-safe alphabet (- and _)"
    assert signature_bytes("-_8") == b"\xfb\xff" and signature_bytes("+/8=") == b"\xfb\xff", "unpadded too"
    assert signature_bytes("-_-_AQ") == b"\xfb\xff\xbf\x01"
    assert signature_bytes(base64.b64encode(b"\x01").decode()) == b"\x01", "one byte is a signature's least"
    assert len(signature_bytes(base64.b64encode(b"s" * MAX_SIGNATURE_BYTES).decode())) == MAX_SIGNATURE_BYTES
    for text, why in (("c2ln!", "not base64"), ("c2 ln", "not base64"), ("c2ln\n", "not base64"), ("c", "not base64"),
                      ("", "a signature has 1..1024 bytes"),
                      (base64.b64encode(b"s" * (MAX_SIGNATURE_BYTES + 1)).decode(), "a signature has 1..1024 bytes")):
        with pytest.raises(ValueError) as err:
            signature_bytes(text)
        assert str(err.value) == why, text
