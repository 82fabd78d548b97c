"""The wire encoding: columnar per signal, delta timestamps, raw-integer value deltas, msgpack, zstd.

Layout beats compressor (the figures: docs/performance.md): per-signal columns with
delta-coded timestamps and delta-coded raw integers let zstd reach well under a byte a sample,
where named JSON needs ~6 compressed. The format is documented in docs/wire-format.md; this module
is its reference decoder.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import accumulate, chain
from math import floor
from operator import sub
from typing import Any

import msgpack
import zstandard

from agent.codec.base import (
    INT_MAX,
    INT_MIN,
    Codec,
    Columns,
    RawValues,
    Scaling,
    Unencodable,
    carried,
    carried_int,
    physical,
    time_ok,
)
from agent.model import Sample

FORMAT_VERSION = 2
READS = (1, 2)  # version 1 is version 2 without RAW columns: batches written before still decode
RAW_DELTA, FLOAT, PLAIN, RAW = 0, 1, 2, 3
TICKS = {"ms": 1000, "us": 1_000_000}
_MAX_DECOMPRESSED = 64 * 1024 * 1024


def _deltas(values: list[int], start: int = 0) -> list[int]:
    """[v0 - start, v1 - v0, v2 - v1, ...] (a C-level map: half the cost of a comprehension)."""
    return list(map(sub, values, chain((start,), values)))


def _as_raw(values: list, scale: float, offset: float) -> list[int] | None:
    """The raw integers behind physical values, if they reproduce them exactly; else None.

    Labels, booleans, NaN and infinities have no raw integer; such columns go as they are; nor have
    values of another type than `raw * scale + offset` gives. Whole numbers scaled by whole numbers
    are divided exactly (64-bit raws are beyond a float's 53 bits).
    """
    whole = type(scale) is int and type(offset) is int  # raw * scale + offset is an int, else a float
    kind = int if whole else float
    if not all(type(v) is kind for v in values):  # 13.0 must not come back as 13
        return None
    try:
        if whole and scale:
            raws = [(v - offset) // scale for v in values]
        else:
            raws = [round((v - offset) / scale) for v in values]
    except (ValueError, OverflowError, ZeroDivisionError):  # NaN, inf, a zero factor
        return None
    if [r * scale + offset for r in raws] != values:
        return None
    return raws


def _in_range(numbers: list) -> bool:
    return not numbers or (INT_MIN <= min(numbers) and max(numbers) <= INT_MAX)


def _wide(number: float) -> float | str:
    """A factor or offset as msgpack carries it: a whole number beyond 64 bits (cantools makes 1e300
    an int) as its decimal digits."""
    return number if carried_int(number) else str(number)


def _number(field: float | str) -> float:
    return int(field) if isinstance(field, str) else field


def _careful_series(key: tuple[str, str, str], idx: int, values: list, scale: float, offset: float) -> list:
    """A series entry for values the quick choice could not pack: 64-bit raws whose deltas overflow
    go as RAW, values without raws as FLOAT or PLAIN; anything else is Unencodable."""
    bus, message, signal = key
    raws = values if type(values) is RawValues else _as_raw(values, scale, offset)
    if raws is not None and _in_range(raws):
        deltas = _deltas(raws)
        factor, shift = _wide(scale), _wide(offset)
        return [bus, message, signal, idx, *((RAW_DELTA, factor, shift, deltas) if _in_range(deltas)
                                            else (RAW, factor, shift, raws))]
    values = physical(key, values, {(message, signal): (scale, offset)})
    if all(type(v) is float for v in values):
        return [bus, message, signal, idx, FLOAT, 1, 0, values]
    if all(map(carried, values)):
        return [bus, message, signal, idx, PLAIN, 1, 0, values]
    raise Unencodable(f"{bus} {message}.{signal}: a value beyond what msgpack carries (an integer beyond 64 bits)")


class ColumnarCodec(Codec):
    name = "columnar"
    content_type = "application/vnd.vehicle-agent.columnar+msgpack"
    content_encoding = "zstd"

    def __init__(self, timestamp_resolution: str = "ms", level: int = 3) -> None:
        self.ticks = TICKS[timestamp_resolution]
        self._compressor = zstandard.ZstdCompressor(level=level)

    def encode(self, columns: Columns, *, vehicle: str, scaling: Scaling | None = None,
               simulated: bool = False, event: Mapping[str, Any] | None = None) -> bytes:
        try:
            return self._encode(columns, vehicle, scaling or {}, simulated, event, careful=False)
        except (OverflowError, ValueError, TypeError):  # msgpack's range, NaN or inf times: choose with care
            return self._encode(columns, vehicle, scaling or {}, simulated, event, careful=True)

    def _encode(self, columns: Columns, vehicle: str, scaling: Scaling, simulated: bool,
                event: Mapping[str, Any] | None, careful: bool) -> bytes:
        ticks = self.ticks
        if careful and not all(len(ts) == len(vs) and all(time_ok(t) for t in ts) for ts, vs in columns.values()):
            raise Unencodable("a timestamp that is not finite or beyond 64-bit ticks, or a column missing values")
        first = [ts[0] for ts, _ in columns.values() if ts]
        t0 = floor(min(first) * ticks + 0.5) if first else 0  # rounding is monotonic: the least first tick
        times: list[list[int]] = []
        time_index: dict[tuple[int, ...], int] = {}  # tick lists -> index in `times`
        seen: dict[tuple[float, ...], int] = {}      # the same for timestamp lists already rounded
        series = []
        for key, (ts, values) in columns.items():
            bus, message, signal = key
            floats = tuple(ts)  # signals of one message kept together share their timestamps
            idx = seen.get(floats)
            if idx is None:
                col = [floor(t * ticks + 0.5) for t in ts]  # to the nearest tick; `round` costs twice as much
                shape = tuple(col)
                idx = time_index.get(shape)
                if idx is None:
                    idx = time_index[shape] = len(times)
                    times.append(_deltas(col, t0))
                seen[floats] = idx
            scale, offset = scaling.get((message, signal), (1, 0))
            if careful:
                series.append(_careful_series(key, idx, values, scale, offset))
                continue
            raws = values if type(values) is RawValues else _as_raw(values, scale, offset)
            if raws is not None:
                series.append([bus, message, signal, idx, RAW_DELTA, scale, offset, _deltas(raws)])
            elif all(isinstance(v, float) for v in values):
                series.append([bus, message, signal, idx, FLOAT, 1, 0, values])
            else:
                series.append([bus, message, signal, idx, PLAIN, 1, 0, values])
        doc = {"v": FORMAT_VERSION, "vehicle": vehicle, "res": ticks, "t0": t0, "times": times, "series": series}
        if simulated:
            doc["sim"] = True
        if event:
            doc["event"] = dict(event)
        return self._compressor.compress(msgpack.packb(doc, use_bin_type=True))

    def carries_column(self, key: tuple[str, str, str], values: list, scaling: Scaling | None) -> bool:
        """A column of raw integers (given, or exactly behind its values) of at most 64 bits: every
        value goes as its raw (RAW_DELTA or RAW), whatever its factor and offset."""
        scale, offset = (scaling or {}).get(key[1:], (1, 0))
        raws = values if type(values) is RawValues else _as_raw(values, scale, offset)
        return raws is not None and _in_range(raws)

    def decode(self, payload: bytes) -> tuple[dict, list[Sample]]:
        try:
            raw = zstandard.ZstdDecompressor().decompress(payload, max_output_size=_MAX_DECOMPRESSED)
            doc = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        except (zstandard.ZstdError, msgpack.ExtraData, msgpack.FormatError, ValueError) as exc:
            raise ValueError(f"not a columnar batch: {exc}") from None
        if not isinstance(doc, dict) or doc.get("v") not in READS:
            raise ValueError(f"unsupported columnar batch version {doc.get('v') if isinstance(doc, dict) else '?'}")
        res, t0 = doc["res"], doc["t0"]
        times = [[(t0 + c) / res for c in accumulate(col)] for col in doc["times"]]
        samples: list[Sample] = []
        for bus, message, signal, idx, kind, scale, offset, values in doc["series"]:
            if kind == RAW_DELTA or kind == RAW:
                scale, offset = _number(scale), _number(offset)
                values = [r * scale + offset for r in (accumulate(values) if kind == RAW_DELTA else values)]
            samples.extend(Sample(t, bus, message, signal, v) for t, v in zip(times[idx], values, strict=True))
        header = {k: doc[k] for k in ("v", "vehicle", "res", "t0", "sim", "event") if k in doc}
        return header, samples
