"""The one entry for every document the cloud sends: parsed and checked under fixed limits first.

Desired documents (twin patch, full twin, MQTT desired, the local desired file) and method payloads
are untrusted bytes. Before anything else looks at them they must fit a size limit, a nesting depth,
64-bit integers, finite numbers, unique keys and valid Unicode. Anything outside raises `Rejected`
with a short reason that quotes nothing of the document, so the caller acks 400 and goes on.

Two ways in: `parse` for raw bytes (MQTT, files, sockets: the depth is checked by a scan before the
JSON parser, which would otherwise recurse), and `check` for documents a library already parsed
(the IoT Hub SDK hands over dicts). Both walk iteratively: no document can exhaust the stack.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

MAX_DESIRED_BYTES = 32 * 1024      # IoT Hub's own limit of the desired section
MAX_METHOD_BYTES = 8 * 1024        # a method payload: a level and a duration need a few bytes
MAX_DEPTH = 12                     # nested objects and arrays (a bus's options sit at depth 4)
MAX_KEY_CHARS = 256
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_INT_DIGITS = 20                   # no 64-bit integer needs more; longer digit runs are refused unparsed


UNLIMITED_DEPTH = 2**62           # for a size-only check of a document a library already parsed


@dataclass(frozen=True, slots=True)
class Limits:
    max_bytes: int
    max_depth: int = MAX_DEPTH


DESIRED = Limits(MAX_DESIRED_BYTES)
METHOD = Limits(MAX_METHOD_BYTES)


class Rejected(ValueError):
    """A document outside the limits; the message is short and quotes nothing of the document."""


def _depth_of_text(text: str, limit: int) -> None:
    """Scan the nesting of JSON text without parsing it (strings skipped); refuse beyond `limit`."""
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                raise Rejected(f"nested deeper than {limit} levels")
        elif ch in "]}":
            depth -= 1


def _no_constants(name: str) -> Any:
    raise Rejected(f"{name} is not a number JSON allows")


def _int(text: str) -> int:
    if len(text.lstrip("-")) > _INT_DIGITS:
        raise Rejected("an integer outside 64 bits")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise Rejected("a number too large for a double")
    return value


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise Rejected(f"duplicate key {short(key)}")
        out[key] = value
    return out


def short(key: Any) -> str:
    """A key as it may appear in a reason: printable ASCII, at most 40 characters."""
    text = str(key)
    safe = "".join(c if c.isascii() and c.isprintable() else "?" for c in text[:40])
    return repr(safe + ("..." if len(text) > 40 else ""))


def parse(data: bytes | bytearray | str, limits: Limits = DESIRED) -> Any:
    """Bytes from the cloud -> a checked JSON value, or Rejected."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if len(data) > limits.max_bytes:
        raise Rejected(f"{len(data)} bytes, more than the limit of {limits.max_bytes}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected("not UTF-8") from None
    _depth_of_text(text, limits.max_depth)
    try:
        value = json.loads(text, object_pairs_hook=_unique, parse_int=_int, parse_float=_float,
                           parse_constant=_no_constants)
    except Rejected:
        raise
    except (ValueError, RecursionError) as exc:
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise Rejected(f"not JSON{where}") from None
    check(value, limits, _size_known=True)
    return value


def check(value: Any, limits: Limits = DESIRED, *, _size_known: bool = False, size_only: bool = False) -> Any:
    """A parsed document -> the same document if it is within the limits, else Rejected.

    Walks iteratively; the size is the compact JSON size, counted without building the text.
    `size_only`: the size of a document whose parts are checked one by one afterwards.
    """
    size = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > limits.max_depth:
                raise Rejected(f"nested deeper than {limits.max_depth} levels")
            size += 2 + max(len(node) - 1, 0)
            if isinstance(node, dict):
                for key, item in node.items():
                    if not isinstance(key, str):
                        raise Rejected("an object key that is not a string")
                    if len(key) > MAX_KEY_CHARS:
                        raise Rejected(f"a key longer than {MAX_KEY_CHARS} characters")
                    size += _text_size(key) + 1
                    stack.append((item, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in node)
        elif size_only:
            size += len(node) * 3 + 2 if isinstance(node, str) else \
                node.bit_length() // 3 + 2 if isinstance(node, int) else 24
        elif isinstance(node, str):
            size += _text_size(node)
        elif isinstance(node, bool) or node is None:
            size += 5
        elif isinstance(node, int):
            if not INT64_MIN <= node <= INT64_MAX:
                raise Rejected("an integer outside 64 bits")
            size += 20
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise Rejected("NaN or an infinite number")
            size += 24
        else:
            raise Rejected(f"a value of type {type(node).__name__}, which JSON does not have")
        if not _size_known and size > limits.max_bytes:
            raise Rejected(f"more than the limit of {limits.max_bytes} bytes")
    return value


def _text_size(text: str) -> int:
    try:
        return len(text.encode("utf-8")) + 2
    except UnicodeEncodeError:
        raise Rejected("a string with an unpaired surrogate (not valid Unicode)") from None
