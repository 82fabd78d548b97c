"""Fast decoders compiled once per config: only the wanted signals, values as a tuple.

cantools' `Message.decode` costs about 2 µs a frame, mostly in Python wrappers and one conversion
call per signal (the bench's decode stage, docs/performance.md). Here each message (or multiplexer
page) gets, at config time, bitstruct formats *without names* for just the signals the collection
policy wants (laid out here as `Unpacker`s), and a generated function (agent/compiler.py) that
scales the raw tuple with the DBC's factor and offset as literals. The values are exactly cantools' (`raw * scale + offset`, or the raw value where the
conversion is the identity): tests/test_fast_decode.py compares them over random frames.
Anything this does not cover (nested multiplexing, two signals of one name) returns None and the caller uses cantools.

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
from cantools.typechecking import Codec

from agent import compiler
from agent.compiler import Unpacker, ValuesCode

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


Layout = tuple[str, list[Signal]]  # a bitstruct format and the signals it reads, in order


def _layers(signals: Sequence[Signal], first: Callable[[Signal], int]) -> list[list[Signal]]:
    """`signals` in groups of non-overlapping fields, each in field order (`first`: a field's first
    bit in the numbering its format reads). One group unless fields overlap, which a database
    loaded with strict=False may have between a multiplexed page and the message's plain signals."""
    layers: list[list[Signal]] = []
    for s in sorted(signals, key=first):
        layer = next((layer for layer in layers if first(layer[-1]) + layer[-1].length <= first(s)), None)
        if layer is None:
            layers.append([s])
        else:
            layer.append(s)
    return layers


def _big_format(sigs: list[Signal]) -> str:
    fmt, pos = "", 0
    for s in sigs:
        if start_bit(s) > pos:
            fmt += f"p{start_bit(s) - pos}"
        fmt += f"{_kind(s)}{s.length}"
        pos = start_bit(s) + s.length
    return fmt


def _little_format(sigs: list[Signal], total: int) -> tuple[str, list[Signal]]:
    fmt, end = "", total
    for s in reversed(sigs):
        if end > s.start + s.length:
            fmt += f"p{end - (s.start + s.length)}"
        fmt += f"{_kind(s)}{s.length}"
        end = s.start
    return fmt, sigs[::-1]


def _layouts(signals: Sequence[Signal], nbytes: int) -> tuple[list[Layout], list[Layout]]:
    """bitstruct formats (big-endian ones on the data, little-endian ones on the reversed data), one
    per group of non-overlapping signals of each byte order."""
    big = [(_big_format(sigs), sigs) for sigs in _layers(
        [s for s in signals if s.byte_order == "big_endian"], lambda s: sawtooth_to_network_bitnum(s.start))]
    little = [_little_format(sigs, 8 * nbytes) for sigs in _layers(
        [s for s in signals if s.byte_order == "little_endian"], lambda s: s.start)]
    return big, little


def signal_mask(signals: Sequence[Signal], nbytes: int) -> int:
    """The payload bits of `signals`, as an int over the payload read big-endian (int.from_bytes(data, 'big'))."""
    big, little = _layouts(signals, nbytes)
    mask = 0
    for fmt, sigs in big:
        ones = bitstruct.c.compile(fmt.replace("s", "u").replace("f", "u")).pack(*[(1 << s.length) - 1 for s in sigs])
        mask |= int.from_bytes(ones.ljust(nbytes, b"\0")[:nbytes], "big")
    for fmt, sigs in little:
        ones = bitstruct.c.compile(fmt.replace("s", "u").replace("f", "u")).pack(*[(1 << s.length) - 1 for s in sigs])
        mask |= int.from_bytes(ones.ljust(nbytes, b"\0")[:nbytes][::-1], "big")
    return mask


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


def unpackers(signals: Sequence[Signal], nbytes: int) -> list[Unpacker]:
    """The formats reading `signals` from a payload of `nbytes`: `struct` where every field of a group
    is whole bytes, else bitstruct (little-endian ones on the reversed payload), one per group of
    non-overlapping fields of each byte order."""
    index = {id(s): i for i, s in enumerate(signals)}
    big, little = _layouts(signals, nbytes)
    out = []
    for order, code, groups in (("big", ">", big), ("little", "<", little)):
        for fmt, sigs in groups:
            aligned = _byte_aligned(sigs, nbytes, code)
            if aligned is not None:
                unpack, sigs, forward = struct.Struct(aligned[0]).unpack, aligned[1], True
                what = f"struct {aligned[0]!r}"
            else:
                unpack, forward, what = bitstruct.c.compile(fmt).unpack, False, f"bitstruct {fmt!r}"
            out.append(Unpacker(order, unpack, forward, tuple(index[id(s)] for s in sigs), what))
    return out


def values_code(signals: Sequence[Signal], nbytes: int) -> ValuesCode:
    """The statements and value expressions decoding `signals` from a payload of `nbytes` named `data`."""
    return compiler.values_code(unpackers(signals, nbytes), [scaling_of(s) for s in signals])


def compile_values(signals: Sequence[Signal], nbytes: int, name: str) -> Callable[[bytes], tuple]:
    """A function payload -> tuple of the scaled values of `signals`."""
    return compiler.compile_values(values_code(signals, nbytes), name)


@dataclass(slots=True)
class Page:
    """The wanted signals present in frames of one multiplexer value (or of a plain message)."""

    signals: tuple[Signal, ...]
    code: ValuesCode
    length: int
    name: str
    _values: Callable[[bytes], tuple] | None = None

    @property
    def values(self) -> Callable[[bytes], tuple]:
        """A function payload -> tuple of the page's values, compiled at its first use. A plain
        message's frames go through its collector step, which inlines `code`; only payloads of
        another length, campaign events and `debug codegen` call this, so a production car (920
        plain messages of 1,000) no longer compiles and keeps a second function for each (issue 19)."""
        if self._values is None:
            self._values = compiler.compile_values(self.code, self.name)
        return self._values

    @property
    def scaling(self) -> list[tuple[float, float]]:
        return [scaling_of(s) for s in self.signals]

    def subset(self, signals: Sequence[Signal]) -> ValuesCode:
        """The code decoding only some of the page's signals (the step of a partly held message)."""
        return values_code(signals, self.length)


def _page(signals: tuple[Signal, ...], nbytes: int, name: str) -> Page:
    return Page(signals, values_code(signals, nbytes), nbytes, name)


def _decodable(node: Codec, length: int) -> bool:
    """Whether cantools can unpack a node of its codec tree (the message, or one multiplexer page).

    With strict=False cantools loads overlapping signals and signals that do not fit the message,
    but its formats for such a node are longer than the payload, and it refuses every frame of it
    (DecodeError). The agent follows cantools: those frames are decode errors."""
    try:
        node["formats"].big_endian.unpack(bytes(length))
        node["formats"].little_endian.unpack(bytes(length))
    except Exception:  # noqa: BLE001 - bitstruct raises several types
        return False
    return True


def _duplicate_names(node: Codec, above: tuple[str, ...] = ()) -> bool:
    """Whether a frame of `node` (with the signals of the nodes `above` it) decodes two signals of one
    name. cantools (strict=False) keeps one of them by its dict order (byte order, field order, page
    over plain signals); rather than mirror that, such messages are decoded by cantools itself."""
    names = (*above, *(s.name for s in node["signals"]))
    if len(set(names)) < len(names):
        return True
    return any(_duplicate_names(page, names) for pages in node["multiplexers"].values() for page in pages.values())


_NO_PAGES: frozenset[int] = frozenset()


class FastDecoder:
    """Decoder of one message, for a chosen set of signal names; `decode(data)` -> (page, values).

    The pages are cantools' own (`Message._codecs`): the pages of the multiplexer values that
    signals use or that the multiplexer's value table names (a page of the multiplexer alone);
    any other multiplexer value is an error, as in cantools."""

    def __init__(self, message: Message, wanted: Sequence[str]) -> None:
        self.message = message
        self.length = message.length
        wanted_set = set(wanted)
        root = message._codecs  # noqa: SLF001 - cantools' decode tree: the pages exactly as it decodes them
        if root is None or not _decodable(root, self.length):
            raise NotImplementedError(f"{message.name}: cantools refuses this layout's frames: decoded with cantools")
        muxes = root["multiplexers"]
        if _duplicate_names(root):
            raise NotImplementedError(f"{message.name}: two signals of one name: decoded with cantools")
        if len(muxes) > 1 or any(node["multiplexers"] for nodes in muxes.values() for node in nodes.values()):
            raise NotImplementedError("nested multiplexing: decoded with cantools")
        self.mux = next((s for s in message.signals if s.name in muxes), None)
        plain = tuple(s for s in root["signals"] if s.name in wanted_set and s is not self.mux)
        self.all_pages: set[int] | frozenset[int] = _NO_PAGES  # plain messages (most) share one empty set
        self.broken_pages: set[int] | frozenset[int] = _NO_PAGES
        if self.mux is None:
            self.pages: dict[int | None, Page] = {None: _page(plain, self.length, message.name)} if plain else {}
            self.mux_value: Callable[[bytes], tuple] | None = None
            masked = list(plain)
        else:
            self.mux_value = compile_values([self.mux], self.length, f"{message.name} multiplexer")
            if self.mux.name in wanted_set:  # cantools reports the multiplexer as a signal of every page
                plain = (self.mux, *plain)
            nodes = muxes[self.mux.name]
            self.all_pages = set(nodes)
            self.broken_pages = {key for key, node in nodes.items() if not _decodable(node, self.length)}
            self.pages = {}
            masked = [s for s in plain if s is not self.mux] + [self.mux]
            for key in sorted(self.all_pages - self.broken_pages):
                sigs = plain + tuple(s for s in nodes[key]["signals"] if s.name in wanted_set)
                if sigs:
                    self.pages[key] = _page(sigs, self.length, f"{message.name} page {key}")
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
        if self.mux_value is None:
            page = self.pages.get(None)
            return (None, page.values(data)) if page is not None else None
        key = self.mux_value(data)[0]
        if type(key) is not int:  # a scaled multiplexer: cantools takes int() of its value
            try:
                key = int(key)
            except (ValueError, OverflowError):
                raise UnknownPageError(f"{self.message.name}: multiplexer value {key} is not a number") from None
        page = self.pages.get(key)
        if page is None:
            if key not in self.all_pages:
                raise UnknownPageError(f"{self.message.name}: multiplexer value {key} is not defined")
            if key in self.broken_pages:
                raise UnknownPageError(f"{self.message.name}: cantools cannot unpack the page of multiplexer value {key}")
            return None
        return key, page.values(data)
