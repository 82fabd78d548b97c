"""Fast decoders compiled once per config: only the wanted signals, values as a tuple.

cantools' `Message.decode` costs about 2 µs a frame, mostly in Python wrappers and one conversion
call per signal (shared/reference/perf-building-blocks.md). Here each message (or multiplexer
page) gets, at config time, bitstruct formats *without names* for just the signals the collection
policy wants, and a generated function that scales the raw tuple with the DBC's factor and offset
as literals. The values are exactly cantools' (`raw * scale + offset`, or the raw value where the
conversion is the identity): tests/test_fast_decode.py compares them over random frames.
Anything this does not cover (nested multiplexing) returns None and the caller uses cantools.

`mask` marks the payload bits of the wanted signals (and the multiplexer), so a change-only
collector can skip a frame whose relevant bits did not change without decoding it at all.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import bitstruct.c
from cantools.database.can.message import Message
from cantools.database.can.signal import Signal
from cantools.database.utils import sawtooth_to_network_bitnum, start_bit

Unpack = Callable[[bytes], tuple]


class UnknownPageError(ValueError):
    """A multiplexed frame whose multiplexer value the database does not define."""


def scaling_of(sig: Signal) -> tuple[float, float]:
    """(scale, offset) as cantools applies them: an enum signal's conversion scales through an inner
    numeric one, which turns whole-number factors into ints (so 2.0 gives int values, like cantools)."""
    conversion = getattr(sig.conversion, "_conversion", sig.conversion)
    return conversion.scale, conversion.offset


def one_to_one(sig: Signal) -> bool:
    """Whether distinct raw integers of `sig` always give distinct values (`raw * scale + offset`).

    Then raws compare like values, and an on-change filter can skip the scaling. Whole-number
    scaling is exact; a float factor is one to one while the raw range and the offset leave the
    product more than one rounding step apart for neighbouring raws (48 bits of range, |offset| at
    most 2**48 factors: neighbours differ by |scale|, a rounding error is at most |scale| / 8).
    """
    if sig.is_float:
        return False  # NaN payloads: equal bits, unequal values
    scale, offset = scaling_of(sig)
    if scale == 0:
        return False
    if (scale == 1 and offset == 0) or (isinstance(scale, int) and isinstance(offset, int)):
        return True  # the value is the raw itself (see values_code), or integer arithmetic
    # and every value finite: beyond the float range, distinct raws all scale to inf
    return sig.length <= 48 and abs(offset) <= abs(scale) * 2**48 and math.isfinite(abs(scale) * 2**49 + abs(offset))


def _kind(sig: Signal) -> str:
    return "f" if sig.is_float else ("s" if sig.is_signed else "u")


def _layouts(signals: Sequence[Signal], nbytes: int) -> tuple[tuple[str, list[Signal]], tuple[str, list[Signal]]]:
    """bitstruct format strings (big-endian part on the data, little-endian part on the reversed data)."""
    total = 8 * nbytes
    big, big_sigs, pos = "", [], 0
    for s in sorted((s for s in signals if s.byte_order == "big_endian"),
                    key=lambda s: sawtooth_to_network_bitnum(s.start)):
        if start_bit(s) > pos:
            big += f"p{start_bit(s) - pos}"
        big += f"{_kind(s)}{s.length}"
        big_sigs.append(s)
        pos = start_bit(s) + s.length
    little, little_sigs, end = "", [], total
    for s in sorted((s for s in signals if s.byte_order == "little_endian"), key=lambda s: s.start, reverse=True):
        if end > s.start + s.length:
            little += f"p{end - (s.start + s.length)}"
        little += f"{_kind(s)}{s.length}"
        little_sigs.append(s)
        end = s.start
    return (big, big_sigs), (little, little_sigs)


def signal_mask(signals: Sequence[Signal], nbytes: int) -> int:
    """The payload bits of `signals`, as an int over the payload read big-endian (int.from_bytes(data, 'big'))."""
    (big, big_sigs), (little, little_sigs) = _layouts(signals, nbytes)
    mask = 0
    if big_sigs:
        ones = bitstruct.c.compile(big.replace("s", "u").replace("f", "u")).pack(
            *[(1 << s.length) - 1 for s in big_sigs])
        mask |= int.from_bytes(ones.ljust(nbytes, b"\0"), "big")
    if little_sigs:
        ones = bitstruct.c.compile(little.replace("s", "u").replace("f", "u")).pack(
            *[(1 << s.length) - 1 for s in little_sigs])
        mask |= int.from_bytes(ones.ljust(nbytes, b"\0")[::-1], "big")
    return mask


@dataclass(frozen=True, slots=True)
class ValuesCode:
    """Source that computes a page's scaled values from `data`: statements, then one expression per
    signal. The collector builds its per-message code on it; `compile_values` wraps it in a function."""

    env: dict[str, object]
    lines: list[str]
    values: list[str]
    raws: list[str]      # the raw integer (or float) behind each value, before scaling


_STRUCT_CODES = {("u", 8): "B", ("u", 16): "H", ("u", 32): "I", ("u", 64): "Q", ("s", 8): "b", ("s", 16): "h",
                 ("s", 32): "i", ("s", 64): "q", ("f", 32): "f", ("f", 64): "d"}


def _byte_aligned(signals: Sequence[Signal], nbytes: int, order: str) -> tuple[str, list[Signal]] | None:
    """A `struct` format (and its signals in order) reading `signals` of one byte order from the
    payload, when every one is a whole 1-, 2-, 4- or 8-byte field; else None.

    `struct` reads such fields about twice as fast as bitstruct, which must also reverse the payload
    for little-endian ones; J1939 and most OEM databases are mostly made of them.
    """
    fields = []
    for s in signals:
        code = _STRUCT_CODES.get((_kind(s), s.length))
        first = start_bit(s) if order == ">" else s.start  # MSB (network numbering) / LSB of the field
        if code is None or first % 8:
            return None
        fields.append((first // 8, code, s))
    fields.sort(key=lambda f: f[0])
    fmt, at = order, 0
    for byte, code, s in fields:
        if byte < at:
            return None  # overlapping fields
        fmt += "x" * (byte - at) + code
        at = byte + s.length // 8
    if at > nbytes:
        return None
    return fmt + "x" * (nbytes - at), [s for _, _, s in fields]


def values_code(signals: Sequence[Signal], nbytes: int) -> ValuesCode:
    """The statements and value expressions decoding `signals` from a payload of `nbytes` named `data`."""
    (big, big_sigs), (little, little_sigs) = _layouts(signals, nbytes)
    env: dict[str, object] = {}
    lines = []
    if big_sigs:
        aligned = _byte_aligned(big_sigs, nbytes, ">")
        if aligned is not None:
            env["_big"], big_sigs = struct.Struct(aligned[0]).unpack, aligned[1]
        else:
            env["_big"] = bitstruct.c.compile(big).unpack
        lines.append("b = _big(data)")
    if little_sigs:
        aligned = _byte_aligned(little_sigs, nbytes, "<")
        if aligned is not None:
            env["_little"], little_sigs = struct.Struct(aligned[0]).unpack, aligned[1]
            lines.append("l = _little(data)")
        else:
            env["_little"] = bitstruct.c.compile(little).unpack
            lines.append("l = _little(data[::-1])")
    where = {id(s): f"b[{i}]" for i, s in enumerate(big_sigs)} | {id(s): f"l[{i}]" for i, s in enumerate(little_sigs)}
    values, raws = [], []
    for s in signals:
        raw = where[id(s)]
        scale, offset = scaling_of(s)
        raws.append(raw)
        values.append(raw if scale == 1 and offset == 0 else f"{raw} * {_literal(scale)} + {_literal(offset)}")
    return ValuesCode(env, lines, values, raws)


def _literal(number: float) -> str:
    """Python source for a DBC factor or offset; `repr` of inf and nan is no Python literal."""
    return repr(number) if math.isfinite(number) else f"float('{number!r}')"


def compile_values(code: ValuesCode) -> Callable[[bytes], tuple]:
    """A function payload -> tuple of the scaled values `code` computes, in its order."""
    env = dict(code.env)
    lines = ["def decode(data):", *("    " + line for line in code.lines),
             f"    return ({', '.join(code.values)}{',' if len(code.values) == 1 else ''})"]
    exec("\n".join(lines), env)  # noqa: S102 - code built from numbers in the database, no user strings
    return env["decode"]  # type: ignore[return-value]


@dataclass(slots=True)
class Page:
    """The wanted signals present in frames of one multiplexer value (or of a plain message)."""

    signals: tuple[Signal, ...]
    values: Callable[[bytes], tuple]
    code: ValuesCode


def _page(signals: tuple[Signal, ...], nbytes: int) -> Page:
    code = values_code(signals, nbytes)
    return Page(signals, compile_values(code), code)


class FastDecoder:
    """Decoder of one message, for a chosen set of signal names; `decode(data)` -> (page, values)."""

    def __init__(self, message: Message, wanted: Sequence[str]) -> None:
        self.message = message
        self.length = message.length
        wanted_set = set(wanted)
        mux = [s for s in message.signals if s.is_multiplexer]
        if len(mux) > 1 or any(s.is_multiplexer and s.multiplexer_ids for s in message.signals):
            raise NotImplementedError("nested multiplexing: decoded with cantools")
        self.mux = mux[0] if mux else None
        plain = tuple(s for s in message.signals
                      if s.name in wanted_set and not s.is_multiplexer and s.multiplexer_ids is None)
        self.all_pages: set[int] = set()
        if self.mux is None:
            self.pages: dict[int | None, Page] = {None: _page(plain, self.length)} if plain else {}
            self._mux_value: Callable[[bytes], tuple] | None = None
            masked = list(plain)
        else:
            self._mux_value = compile_values(values_code([self.mux], self.length))
            if self.mux.name in wanted_set:  # cantools reports the multiplexer as a signal of every page
                plain = (self.mux, *plain)
            ids = sorted({i for s in message.signals for i in (s.multiplexer_ids or ())})
            self.all_pages = set(ids)
            self.pages = {}
            masked = [s for s in plain if s is not self.mux] + [self.mux]
            for page in ids:
                sigs = plain + tuple(s for s in message.signals
                                     if s.name in wanted_set and s.multiplexer_ids and page in s.multiplexer_ids)
                if sigs:
                    self.pages[page] = _page(sigs, self.length)
                    masked += [s for s in sigs if s not in masked]
        self.mask = 0  # signal by signal: signals of different pages may share bits
        for s in masked:
            self.mask |= signal_mask([s], self.length)

    def decode(self, data: bytes) -> tuple[int | None, tuple] | None:
        """(page key, values in `pages[key].signals` order) of a payload of at least `length` bytes.

        The key is the multiplexer value (None for a plain message); None if no wanted signal is in it.
        """
        if len(data) != self.length:
            data = bytes(data[:self.length])
        if self._mux_value is None:
            page = self.pages.get(None)
            return (None, page.values(data)) if page is not None else None
        key = self._mux_value(data)[0]
        page = self.pages.get(key)
        if page is None:
            if key not in self.all_pages:
                raise UnknownPageError(f"{self.message.name}: multiplexer value {key} is not defined")
            return None
        return key, page.values(data)
