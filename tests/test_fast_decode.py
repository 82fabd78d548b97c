"""The fast decoder gives exactly cantools' values (same numbers, same int/float types).

Compared over many random frames of the bundled DBCs (multiplexed, big- and little-endian,
signed, float, 29-bit, 64-byte CAN FD), the edge-case DBC of the tests, and databases generated
with random signal layouts, for every signal and for random subsets of them.
"""

from __future__ import annotations

import random
from pathlib import Path

import cantools
import pytest
from cantools.database.can import Database, Message, Signal
from cantools.database.conversion import BaseConversion

from agent.decode.fast import FastDecoder, UnknownPageError

ROOT = Path(__file__).resolve().parent.parent
DBCS = sorted((ROOT / "config" / "dbc").glob("*.dbc")) + [ROOT / "tests" / "data" / "edge.dbc"]


def _check(message: Message, wanted: list[str], rng: random.Random, frames: int) -> int:
    """Decodes `frames` random payloads both ways; returns how many had wanted signals."""
    fast = FastDecoder(message, wanted)
    compared = 0
    for _ in range(frames):
        data = rng.randbytes(message.length)
        try:
            expected = message.decode(data, decode_choices=False)
        except Exception:  # noqa: BLE001 - cantools rejects this payload (undefined mux value)
            with pytest.raises(UnknownPageError):
                fast.decode(data)
            continue
        got = fast.decode(data)
        want = {k: v for k, v in expected.items() if k in wanted}
        if got is None:
            assert want == {}, f"{message.name}: fast path decoded nothing, cantools {want}"
            continue
        key, values = got
        names = [s.name for s in fast.pages[key].signals]
        assert _comparable(dict(zip(names, values, strict=True))) == _comparable(want), f"{message.name} {data.hex()}"
        assert [type(v) for v in values] == [type(want[n]) for n in names], f"{message.name} {data.hex()}"
        compared += 1
    return compared


def _comparable(values: dict[str, float | int]) -> dict[str, object]:
    """NaN (a float signal's raw bits can be one) equals itself here, as a marker."""
    return {k: "nan" if v != v else v for k, v in values.items()}


@pytest.mark.parametrize("path", DBCS, ids=lambda p: p.name)
def test_fast_decoder_matches_cantools_on_real_world_style_dbcs(path: Path) -> None:
    db = cantools.database.load_file(str(path))
    rng = random.Random(path.name)
    compared = 0
    for message in db.messages:
        names = [s.name for s in message.signals]
        compared += _check(message, names, rng, 600)
        for _ in range(3):  # subsets: only what a policy wants is compiled
            compared += _check(message, rng.sample(names, rng.randint(1, len(names))), rng, 200)
    assert compared > 1000


def _random_message(rng: random.Random, frame_id: int, aligned: float = 0.0) -> Message:
    """A message with random non-overlapping signals of random byte order, sign, type and scaling;
    a share `aligned` of them whole 1-, 2-, 4- or 8-byte fields (decoded with struct, not bitstruct)."""
    length = rng.choice([1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64])
    used: set[int] = set()  # occupied bits in network (MSB-first) numbering
    signals: list[Signal] = []
    for n in range(rng.randint(1, 12) * 3):
        is_float = rng.random() < 0.1
        whole = rng.random() < aligned
        size = rng.choice([32, 64]) if is_float else rng.choice([8, 16, 32, 64]) if whole else rng.randint(1, 64)
        big = rng.random() < 0.5
        if big:  # start is the MSB in cantools' sawtooth numbering
            first = rng.randrange(length) * 8 if whole else rng.randrange(8 * length)
            bits = set(range(first, first + size))
            start = (first // 8) * 8 + (7 - first % 8)
        else:
            start = rng.randrange(length) * 8 if whole else rng.randrange(8 * length)
            bits = {(b // 8) * 8 + 7 - b % 8 for b in range(start, start + size)}
        if max(bits) >= 8 * length or bits & used:
            continue
        used |= bits
        scale, offset = rng.choice([(1, 0), (1, -40), (0.1, 0), (0.05, -100), (2, 5), (0.001, 0.5), (1e-6, 0)])
        signals.append(Signal(
            name=f"S{n}", start=start, length=size, byte_order="big_endian" if big else "little_endian",
            is_signed=not is_float and size > 1 and rng.random() < 0.4,
            conversion=BaseConversion.factory(scale=scale, offset=offset, is_float=is_float)))
    return Message(frame_id=frame_id, name=f"M{frame_id}", length=length, signals=signals, strict=True)


@pytest.mark.parametrize("aligned", [0.0, 0.8, 1.0], ids=["bit-level", "mostly-whole-bytes", "whole-bytes"])
def test_fast_decoder_matches_cantools_on_random_layouts(aligned: float) -> None:
    rng = random.Random(f"20261126{aligned}")
    messages = [m for m in (_random_message(rng, i, aligned) for i in range(1, 200)) if m.signals]
    db = Database(messages=messages)
    db.refresh()
    compared = 0
    for message in db.messages:
        compared += _check(message, [s.name for s in message.signals], rng, 150)
    assert len(messages) > 150 and compared == 150 * len(messages)


def test_payload_mask_covers_exactly_the_wanted_bits() -> None:
    db = cantools.database.load_file(str(ROOT / "config" / "dbc" / "powertrain.dbc"))
    message = db.messages[0]
    names = [s.name for s in message.signals]
    fast = FastDecoder(message, names[:1])
    rng = random.Random(1)
    for _ in range(200):  # flipping bits outside the mask never changes the wanted value
        data = rng.randbytes(message.length)
        noise = rng.getrandbits(8 * message.length) & ~fast.mask
        other = (int.from_bytes(data, "big") ^ noise).to_bytes(message.length, "big")
        assert fast.decode(data) == fast.decode(other)


OVERLAPPING_PAGES = '''VERSION ""
BS_:
BU_: N
BO_ 100 Big: 8 N
 SG_ Mux M : 0|8@1+ (1,0) [0|0] "" N
 SG_ A m1 : 55|16@0+ (1,0) [0|0] "" N
 SG_ B m2 : 63|8@0+ (1,0) [0|0] "" N
 SG_ C m2 : 15|8@0+ (1,0) [0|0] "" N
BO_ 101 Little: 8 N
 SG_ Mux M : 0|8@1+ (1,0) [0|0] "" N
 SG_ A m1 : 16|8@1+ (1,0) [0|0] "" N
 SG_ B m2 : 8|32@1+ (1,0) [0|0] "" N
BO_ 102 Enum: 8 N
 SG_ Gear : 0|8@1+ (2.0,0) [0|0] "" N
 SG_ Mode : 8|8@1+ (1.0,-1.0) [0|0] "" N
VAL_ 102 Gear 0 "off" 2 "on" ;
VAL_ 102 Mode 0 "a" 1 "b" ;
'''


def test_mask_and_values_with_overlapping_pages_and_enum_factors() -> None:
    """Pages of a multiplexed message share bits: the mask must cover every page's signals. Enum
    signals with a whole-number factor decode to ints, as cantools gives them."""
    db = cantools.database.load_string(OVERLAPPING_PAGES, "dbc")
    rng = random.Random(7)
    for message in db.messages:
        names = [s.name for s in message.signals]
        assert _check(message, names, rng, 500) > 0
        fast = FastDecoder(message, names)
        for _ in range(300):  # bits outside the mask never change what is decoded
            data = bytes([rng.choice([1, 2])]) + rng.randbytes(7)
            noise = rng.getrandbits(64) & ~fast.mask
            other = (int.from_bytes(data, "big") ^ noise).to_bytes(8, "big")
            assert fast.decode(data) == fast.decode(other)
