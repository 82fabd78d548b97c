"""DBC text for tests: random layouts (the property tests) and a large, sloppy OEM-like database.

Real OEM databases load only with cantools' strict=False: signals overlap (a multiplexed page over
a plain signal, a status bit inside a counter), signals do not fit their message, 64-bit
diagnostic fields, multiplexers whose value table names values no page uses, CAN FD lengths.
`oem_database` writes such a file (`python -m tests.dbcgen` regenerates tests/data/oem_sloppy.dbc);
`MessageSpec` / `dbc_text` are what the hypothesis tests draw.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

FD_LENGTHS = (1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64)


@dataclass
class SignalSpec:
    name: str
    start: int            # DBC start bit (LSB for little endian, MSB sawtooth for big endian)
    length: int
    little: bool = True
    signed: bool = False
    kind: str = "int"     # int, f32, f64
    scale: float = 1
    offset: float = 0
    page: int | None = None  # multiplexed: the multiplexer value that selects it
    choices: dict[int, str] = field(default_factory=dict)


@dataclass
class MessageSpec:
    name: str
    frame_id: int
    length: int
    signals: list[SignalSpec]
    mux: SignalSpec | None = None       # the multiplexer signal, if any
    extended: bool = False
    cycle_ms: int = 100
    comment: str = ""


def _number(x: float) -> str:
    return repr(x) if not isinstance(x, float) or x == x else "0"


def dbc_text(messages: list[MessageSpec], extra: str = "") -> str:
    """A DBC file of these messages (float signals via SIG_VALTYPE_, value tables via VAL_)."""
    lines = ['VERSION "vehicle-agent tests"', "", "NS_ :", "", "BS_:", "", "BU_: ECU GW DIAG", ""]
    tail: list[str] = []
    for m in messages:
        fid = m.frame_id | (0x80000000 if m.extended else 0)
        lines.append(f"BO_ {fid} {m.name}: {m.length} ECU")
        for s in ([m.mux] if m.mux else []) + m.signals:
            marker = " M" if s is m.mux else (f" m{s.page}" if s.page is not None else "")
            lines.append(f" SG_ {s.name}{marker} : {s.start}|{s.length}@{1 if s.little else 0}{'-' if s.signed else '+'}"
                         f" ({_number(s.scale)},{_number(s.offset)}) [0|0] \"\" GW")
            if s.kind != "int":
                tail.append(f"SIG_VALTYPE_ {fid} {s.name} : {1 if s.kind == 'f32' else 2};")
            if s.choices:
                tail.append(f"VAL_ {fid} {s.name} " + " ".join(f'{k} "{v}"' for k, v in s.choices.items()) + " ;")
        lines.append("")
        if m.comment:
            tail.append(f'CM_ BO_ {fid} "{m.comment}";')
        tail.append(f'BA_ "GenMsgCycleTime" BO_ {fid} {m.cycle_ms};')
    head = ['BA_DEF_ BO_ "GenMsgCycleTime" INT 0 65535;', 'BA_DEF_DEF_ "GenMsgCycleTime" 0;']
    return "\n".join(lines + head + tail) + "\n" + extra


# ---------------------------------------------------------------------------- the large database
_UNITS = ["Speed", "Temp", "Pressure", "Current", "Voltage", "Torque", "Angle", "Rate", "Level", "Counter", "Status",
          "Mode", "Request", "Position", "Flow", "Load"]
_PARTS = ["Eng", "Trans", "Brk", "Steer", "Bat", "Inv", "Mot", "Clim", "Door", "Seat", "Light", "Wiper", "Adas",
          "Radar", "Cam", "Park", "Tpms", "Hvac", "Obc", "Dcdc", "Bms", "Vcu", "Esp", "Eps", "Acc", "Lka"]
_SCALES = [(1, 0), (1, 0), (0.1, 0), (0.01, 0), (0.5, -40), (0.25, 0), (0.001, 0), (2, 0), (0.0625, -273),
           (0.05, -1600), (1, -40), (10, 0), (0.1, -3276.8), (1e-3, -2e3)]


def _packed(rng: random.Random, prefix: str, length: int, count: int, big: bool) -> list[SignalSpec]:
    """Signals laid side by side without overlap, in one byte order, as a careful OEM file has them."""
    out, bit, total = [], 0, 8 * length
    for k in range(count):
        width = min(rng.choice([1, 1, 2, 4, 8, 8, 12, 16, 16, 16, 32]), total - bit)
        if width <= 0:
            break
        scale, offset = rng.choice(_SCALES)
        if big:  # MSB of the field, sawtooth numbering; fields packed in network order
            msb_net = bit
            start = 8 * (msb_net // 8) + 7 - msb_net % 8
        else:
            start = bit
        out.append(SignalSpec(f"{prefix}{rng.choice(_UNITS)}{k}", start, width, not big, rng.random() < 0.3,
                              "int", scale, offset))
        bit += width
    return out


def oem_database(seed: int = 12, messages: int = 700) -> list[MessageSpec]:
    """A large OEM-like database: 700 messages, ~3,400 signals, mostly clean, with the sloppiness of
    real files (see the module docstring); every one of them loads with cantools' strict=False."""
    rng = random.Random(seed)
    out: list[MessageSpec] = []
    used: set[int] = set()
    for n in range(messages):
        part = rng.choice(_PARTS)
        extended = rng.random() < 0.25
        while True:
            fid = rng.randrange(0x18000000, 0x1FFFFFFF) if extended else rng.randrange(0x80, 0x7FF)
            if fid not in used:
                used.add(fid)
                break
        kind = rng.random()
        length = rng.choice([8, 8, 8, 8, 6, 4, 2]) if kind < 0.85 else rng.choice([12, 16, 24, 32, 48, 64])
        name = f"{part}_{'Status' if n % 3 else 'Info'}_{n:03d}"
        big = rng.random() < 0.35
        signals = _packed(rng, part, length, rng.randrange(4, 16), big)
        m = MessageSpec(name, fid, length, signals, extended=extended, cycle_ms=rng.choice([10, 20, 50, 100, 1000]))
        sloppiness = rng.random()
        if sloppiness < 0.06 and signals:  # a status bit inside a wider field (overlap)
            host = rng.choice(signals)
            signals.append(SignalSpec(f"{part}Flag{n}", host.start, 1, host.little))
        elif sloppiness < 0.10:  # a signal that runs past the message's end
            signals.append(SignalSpec(f"{part}Tail{n}", 8 * length - 4, 16, True))
        elif sloppiness < 0.18 and length >= 8:  # a 64-bit diagnostic field on its own (UDS data)
            m.signals = [SignalSpec(f"Diag{n}_Data", 7 if big else 0, 64, not big, rng.random() < 0.3, "int",
                                    rng.choice([1, 1, 10, 0.5]), rng.choice([0, 0, 5]))]
        elif sloppiness < 0.24 and length >= 8:  # IEEE float and double signals
            m.signals = [SignalSpec(f"{part}Float{n}", 0, 32, True, True, "f32", rng.choice([1, 0.1]), 0),
                         SignalSpec(f"{part}Real{n}", 32, 32, True, True, "f32")] if rng.random() < 0.5 else \
                        [SignalSpec(f"{part}Double{n}", 0, 64, True, True, "f64")]
        elif sloppiness < 0.36 and length >= 4:  # multiplexed, with selector values that have no page
            m.mux = SignalSpec(f"{part}Page{n}", 0, 8, True, choices={0: "A", 1: "B", 2: "C", 7: "Reserved"})
            pages = []
            for page in range(rng.randrange(1, 4)):
                for s in _packed(rng, f"{part}P{page}", length - 1, rng.randrange(1, 5), False):
                    s.start += 8
                    s.page = page
                    pages.append(s)
            plain = [SignalSpec(f"{part}Alive{n}", 8 * length - 4, 4, True)]
            if rng.random() < 0.3:  # a page signal over a plain one: loads only with strict=False
                plain.append(SignalSpec(f"{part}Shadow{n}", 8, 8, True))
            m.signals = plain + pages
        if rng.random() < 0.15 and m.signals:
            s = rng.choice(m.signals)
            if s.kind == "int" and s.length <= 8:
                s.choices = {0: "Off", 1: "On", 2: "Error", 3: "NotAvailable"}
        out.append(m)
    return out


if __name__ == "__main__":
    target = Path(__file__).resolve().parent / "data" / "oem_sloppy.dbc"
    target.write_text(dbc_text(oem_database()))
    sys.stdout.write(f"{target}: {sum(len(m.signals) + (m.mux is not None) for m in oem_database())} signals\n")
